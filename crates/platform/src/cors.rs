//! Cross-origin rules where they mean something. A browser sends `Origin` with every
//! cross-origin request (and every preflight); a request without one is answered as if
//! there were no CORS rules at all, except for `Vary`, which tells caches that the answer
//! would differ for a request that has an `Origin` — so a response cached for a plain
//! request is never reused for a cross-origin one. An `OPTIONS` request without `Origin`
//! is not a preflight either: it goes to the routes like any other request (tower-http
//! alone would answer every `OPTIONS` with 200).
//!
//! The `Vary` value is tower-http's default; a service that set its own with
//! `CorsLayer::vary` would have to set it here too. Working out the full set of CORS
//! headers for every request (several header values built and merged per response)
//! cost more than the rest of a proxied request's own bookkeeping.

use std::task::{Context, Poll};

use futures::FutureExt as _;
use futures::future::{Either, Map};
use http::{HeaderValue, Request, Response, header};
use tower::{Layer, Service};

/// What tower-http's CORS layer sends in `Vary` (its default): the request headers a
/// CORS answer depends on.
static VARY: HeaderValue = HeaderValue::from_static(
    "origin, access-control-request-method, access-control-request-headers",
);

/// `cors` for requests with an `Origin` header; only `Vary` for the others.
#[derive(Debug, Clone)]
pub struct CorsLayer {
    cors: tower_http::cors::CorsLayer,
}

impl CorsLayer {
    pub fn new(cors: tower_http::cors::CorsLayer) -> Self {
        Self { cors }
    }
}

impl<S> Layer<S> for CorsLayer {
    type Service = Cors<S>;

    fn layer(&self, inner: S) -> Cors<S> {
        Cors {
            cors: self.cors.layer(inner),
        }
    }
}

/// See [`CorsLayer`].
#[derive(Debug, Clone)]
pub struct Cors<S> {
    cors: tower_http::cors::Cors<S>,
}

impl<S> Cors<S> {
    /// The service inside.
    pub fn get_mut(&mut self) -> &mut S {
        self.cors.get_mut()
    }
}

type AddVary<B, E> = fn(Result<Response<B>, E>) -> Result<Response<B>, E>;
type Varied<F, B, E> = Map<F, AddVary<B, E>>;

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Cors<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Default,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = Either<
        <tower_http::cors::Cors<S> as Service<Request<ReqBody>>>::Future,
        Varied<S::Future, ResBody, S::Error>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.cors.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        if request.headers().contains_key(header::ORIGIN) {
            return Either::Left(self.cors.call(request));
        }
        let add_vary: AddVary<ResBody, S::Error> = |outcome| {
            outcome.map(|mut response| {
                response.headers_mut().append(header::VARY, VARY.clone());
                response
            })
        };
        Either::Right(self.cors.get_mut().call(request).map(add_vary))
    }
}
