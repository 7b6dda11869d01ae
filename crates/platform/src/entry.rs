//! What the HTTP server calls for each request: a service's router, behind the service's
//! fast path if it has one.
//!
//! A router pays per request for what makes it general: it matches, clones the matched
//! route's boxed service, and runs the common stack that [`ServiceApp::into_router`]
//! wrapped around *each* route (one more boxed, cloned service per layer). For a handler
//! that does real work that is noise; for the gateway, whose proxied routes do little
//! besides forwarding, it was most of the cost. A [`FastPath`] serves the requests it
//! recognises itself — behind the same observe, CORS and panic layers, built once per
//! connection instead of cloned per request — and leaves every other request (other
//! methods, other paths, health) to the router, which has the same routes: answers do
//! not depend on which of the two served a request. (A CORS preflight is answered by
//! whichever of the two gets it, by the same CORS rules.)
//!
//! [`ServiceApp::into_router`]: crate::ServiceApp::into_router

use std::{
    convert::Infallible,
    panic::AssertUnwindSafe,
    sync::Arc,
    task::{Context, Poll},
};

use axum::{
    Router,
    extract::Request,
    response::{IntoResponse as _, Response},
};
use futures::{
    FutureExt as _,
    future::{BoxFuture, Either, Map},
};
use tower::{Layer, Service};
use tower_http::cors::CorsLayer;

pub use crate::observe::MatchedRoute;
use crate::observe::{Observe, ObserveLayer};

/// Requests a service serves ahead of its router (see the module documentation).
pub trait FastPath: Send + Sync + std::fmt::Debug + 'static {
    /// The route serving `request`, if this path serves it; `None` leaves the request to
    /// the router. Runs for every request: matching must be cheap and allocation-free.
    fn route(&self, request: &Request) -> Option<MatchedRoute>;

    /// Serves `request`, which [`FastPath::route`] matched to `route`. Timeouts are the
    /// fast path's own business: no stack-wide timeout is added around it.
    fn call(&self, route: MatchedRoute, request: Request) -> BoxFuture<'static, Response>;
}

/// A service's router behind its fast path; the HTTP server keeps one per connection.
#[derive(Clone)]
pub struct Entry {
    router: Router,
    fast: Option<(Arc<dyn FastPath>, FastStack)>,
}

type FastStack = Observe<tower::util::Either<crate::cors::Cors<FastCall>, FastCall>>;

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entry")
            .field("fast_path", &self.fast.is_some())
            .finish_non_exhaustive()
    }
}

impl Entry {
    /// Every request to `router`.
    pub fn router(router: Router) -> Self {
        Self { router, fast: None }
    }

    /// `fast` first, behind the common stack's observe (as `service`), `cors` and panic
    /// layers; everything else to `router`.
    pub(crate) fn with_fast_path(
        router: Router,
        service: &'static str,
        cors: Option<CorsLayer>,
        fast: Arc<dyn FastPath>,
    ) -> Self {
        let call = FastCall {
            path: fast.clone(),
            route: None,
        };
        let cors = cors.map(crate::cors::CorsLayer::new);
        let stack = ObserveLayer::new(service).layer(tower::util::option_layer(cors).layer(call));
        Self {
            router,
            fast: Some((fast, stack)),
        }
    }
}

impl From<Router> for Entry {
    fn from(router: Router) -> Self {
        Self::router(router)
    }
}

type FastFuture = <FastStack as Service<Request>>::Future;

impl Service<Request> for Entry {
    type Response = Response;
    type Error = Infallible;
    type Future = Either<<Router as Service<Request>>::Future, FastFuture>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> Self::Future {
        if let Some((path, stack)) = &mut self.fast
            && let Some(route) = path.route(&request)
        {
            // The route goes to both ends of the stack directly rather than in the
            // request's extensions, whose map would grow for it.
            fast_call_of(stack).route = Some(route);
            return Either::Right(stack.call_on_route(request, route.pattern));
        }
        // A router is always ready.
        Either::Left(self.router.call(request))
    }
}

/// The innermost service of `stack`.
fn fast_call_of(stack: &mut FastStack) -> &mut FastCall {
    match stack.get_mut() {
        tower::util::Either::Left(cors) => cors.get_mut(),
        tower::util::Either::Right(call) => call,
    }
}

/// The innermost service of the fast stack: hands the request to the fast path, and
/// answers a panic in it with a 500 problem, as the router's panic layer does (without
/// that layer's boxed response body).
#[derive(Clone)]
pub struct FastCall {
    path: Arc<dyn FastPath>,
    /// The route of the request the stack is called with next: set by [`Entry`] just
    /// before it calls the stack, whose layers call this service at once (or answer
    /// themselves, a CORS preflight).
    route: Option<MatchedRoute>,
}

impl Service<Request> for FastCall {
    type Response = Response;
    type Error = Infallible;
    type Future = Map<
        futures::future::CatchUnwind<AssertUnwindSafe<BoxFuture<'static, Response>>>,
        fn(std::thread::Result<Response>) -> Result<Response, Infallible>,
    >;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let path = &self.path;
        let route = self.route.take();
        let called = std::panic::catch_unwind(AssertUnwindSafe(|| {
            match route {
                Some(route) => path.call(route, request),
                // Only `Entry` calls this, after setting the route.
                None => Box::pin(std::future::ready(
                    crate::Problem::not_found("no such route").into_response(),
                )),
            }
        }));
        let future = called.unwrap_or_else(|cause| {
            Box::pin(std::future::ready(crate::problem::panic_to_problem(cause)))
        });
        AssertUnwindSafe(future).catch_unwind().map(answer_panic)
    }
}

fn answer_panic(outcome: std::thread::Result<Response>) -> Result<Response, Infallible> {
    Ok(outcome.unwrap_or_else(crate::problem::panic_to_problem))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;

    /// Serves `GET /fast-test/...` (numbered by its second segment) and nothing else.
    #[derive(Debug)]
    struct Numbered;

    impl FastPath for Numbered {
        fn route(&self, request: &Request) -> Option<MatchedRoute> {
            let id = request.uri().path().strip_prefix("/fast-test/")?;
            Some(MatchedRoute {
                pattern: "/fast-test/{id}",
                index: id.parse().ok()?,
            })
        }

        fn call(&self, route: MatchedRoute, _request: Request) -> BoxFuture<'static, Response> {
            Box::pin(std::future::ready(
                format!("fast {}", route.index).into_response(),
            ))
        }
    }

    async fn answer(entry: &mut Entry, request: Request) -> (http::StatusCode, String) {
        let response = entry.call(request).await.expect("infallible");
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .expect("body");
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    fn get(path: &str) -> Request {
        Request::get(path).body(Body::empty()).expect("request")
    }

    #[tokio::test]
    async fn a_fast_request_reaches_its_own_route_and_is_counted_under_its_pattern() {
        let router = Router::new().route("/routed", axum::routing::get(|| async { "routed" }));
        let cors = CorsLayer::new()
            .allow_origin(http::HeaderValue::from_static("http://localhost:3000"))
            .allow_methods([http::Method::GET]);
        let entry = Entry::with_fast_path(router, "fast-test", Some(cors), Arc::new(Numbered));
        let preflight = Request::options("/fast-test/9")
            .header("origin", "http://localhost:3000")
            .header("access-control-request-method", "GET")
            .body(Body::empty())
            .expect("request");
        // One connection's entry in turn: a preflight the CORS layer answers itself
        // leaves no route behind for the next request.
        let mut entry = entry;
        for (request, expected) in [
            (get("/fast-test/1"), "fast 1"),
            (preflight, ""),
            (get("/fast-test/2"), "fast 2"),
            (get("/routed"), "routed"),
            (get("/fast-test/3"), "fast 3"),
        ] {
            let (status, body) = answer(&mut entry, request).await;
            assert!(status.is_success(), "{status} for {expected:?}");
            assert_eq!(body, expected);
        }
        assert_eq!(
            answer(&mut entry.clone(), get("/fast-test/4")).await.1,
            "fast 4"
        );
        let rendered = crate::metrics::handle().render();
        let counted: u64 = rendered
            .lines()
            .filter(|line| {
                line.starts_with("http_requests_total{")
                    && line.contains("service=\"fast-test\"")
                    && line.contains("method=\"GET\"")
                    && line.contains("route=\"/fast-test/{id}\"")
            })
            .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
            .sum();
        assert_eq!(counted, 4, "{rendered}");
    }
}
