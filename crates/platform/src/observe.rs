//! The outermost layer of every service's stack, one tower layer doing what every request
//! needs before and after its handler:
//!
//! * request id — a well-formed incoming `x-request-id` is kept, else one is made; it is
//!   put in the extensions ([`RequestId`]) and echoed on the response;
//! * trace context — the request's W3C `traceparent` is continued (or a trace started) and
//!   this request gets its own span id; the extension [`crate::ids::TraceParent`] and the forwarded
//!   header carry *this* span as the parent of whatever the request causes;
//! * a tracing span around the request (request id and trace id in every log line), which
//!   is also the exported OpenTelemetry server span when export is on (see
//!   [`crate::telemetry`]): same trace id, the caller's span as parent;
//! * every error response (4xx, 5xx; the framework's own too) leaves as problem+json
//!   carrying the request id ([`crate::problem::normalize`]);
//! * an access-log line and the request metrics (`http_requests_total`,
//!   `http_request_duration_seconds` by service, method, route and status).
//!
//! One layer instead of several `from_fn` middlewares: one boxed future per request, and
//! nothing is formatted or allocated for a log line or span that nobody listens to.

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Instant,
};

use axum::{
    extract::{MatchedPath, Request},
    response::Response,
};
use bytes::Bytes;
use http::HeaderValue;
use tower::{Layer, Service};
use tracing::Instrument;

use crate::{
    ids::{REQUEST_ID_HEADER, RequestId, TRACEPARENT_HEADER, TraceContext},
    metrics::RequestMetrics,
    telemetry::export_under,
};

/// The route a fast path matched: the pattern is the route label of the request's
/// metrics and span, as axum's `MatchedPath` is for routed requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MatchedRoute {
    /// The route's pattern, e.g. `/jobs/{id}`.
    pub pattern: &'static str,
    /// The fast path's own number for the route.
    pub index: usize,
}

/// See the module documentation.
#[derive(Debug, Clone)]
pub struct ObserveLayer {
    service: &'static str,
    metrics: Arc<RequestMetrics>,
}

impl ObserveLayer {
    pub fn new(service: &'static str) -> Self {
        Self {
            service,
            metrics: Arc::new(RequestMetrics::new(service)),
        }
    }
}

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Observe<S> {
        Observe {
            inner,
            service: self.service,
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Observe<S> {
    inner: S,
    service: &'static str,
    metrics: Arc<RequestMetrics>,
}

impl<S> Service<Request> for Observe<S>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let route = RouteLabel::of(&request);
        self.observe(request, route)
    }
}

impl<S> Observe<S> {
    /// The service inside.
    pub(crate) fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }
}

impl<S> Observe<S>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    /// [`Service::call`] for a request that a fast path matched to the route `pattern`.
    pub(crate) fn call_on_route(
        &mut self,
        request: Request,
        pattern: &'static str,
    ) -> <Self as Service<Request>>::Future {
        self.observe(request, RouteLabel::Fast(pattern))
    }

    fn observe(
        &mut self,
        mut request: Request,
        route: RouteLabel,
    ) -> <Self as Service<Request>>::Future {
        let started = Instant::now();
        let service = self.service;
        let metrics = self.metrics.clone();

        // Room, made once, for the headers added on the way: the request id and the
        // `traceparent` here, `X-Forwarded-For/-Host/-Proto` where a gateway forwards. The
        // map a request arrives with is full, so each insert would grow it again.
        request.headers_mut().reserve(5);
        let (request_id, echoed_id) = accept_or_make_request_id(&mut request);
        let incoming = request
            .headers()
            .get(&TRACEPARENT_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(TraceContext::parse);
        let exporting = crate::telemetry::exporting();
        let method = request.method().clone();
        let route_label = route.as_str();

        // Without export the trace id is known now (continued, or a new random one);
        // with export and no incoming context the exporter picks it (read back below).
        let mut context = match (incoming, exporting) {
            (Some(incoming), _) => Some(incoming.child()),
            (None, false) => Some(TraceContext::new_root()),
            (None, true) => None,
        };
        let span = tracing::info_span!(
            "request",
            service,
            request_id = %request_id.0,
            trace_id = context.as_ref().map(|c| tracing::field::display(c.trace_id_hex())),
            method = %method,
            path = %request.uri().path(),
            otel.name = tracing::field::Empty,
            otel.kind = tracing::field::Empty,
        );
        if exporting {
            context = Some(export_server_span(
                &span,
                incoming.as_ref(),
                service,
                &method,
                route_label,
                &request,
            ));
        }
        let context = context.unwrap_or_else(TraceContext::new_root);
        let traceparent = context.to_traceparent();
        if let Ok(value) = HeaderValue::from_maybe_shared(Bytes::from(traceparent.0.clone())) {
            request
                .headers_mut()
                .insert(TRACEPARENT_HEADER.clone(), value);
        }
        let current = std::sync::Arc::from(traceparent.0.as_str());
        request.extensions_mut().insert(traceparent);
        let path_is_probe =
            is_probe(request.uri().path()) || request.headers().contains_key(ROUTINE_HEADER);
        let uri = request.uri().clone();
        request.extensions_mut().insert(request_id);

        // Called here, not inside the future: the inner service needs no clone. Messages
        // the request publishes carry its trace context.
        let future = trace_context::scope(current, self.inner.call(request));
        Box::pin(async move {
            let Ok(mut response) = future.instrument(span.clone()).await;
            if crate::problem::is_error(&response) {
                let id = echoed_id.to_str().ok();
                response = crate::problem::to_problem(response, id, &method, uri.path()).await;
            }
            let status = response.status().as_u16();
            let elapsed = started.elapsed();
            let route_label = route.as_str();
            metrics.record(&method, route_label, status, elapsed);
            response
                .headers_mut()
                .insert(REQUEST_ID_HEADER.clone(), echoed_id);
            if exporting {
                record_outcome(&span, status);
            }
            let latency_ms = elapsed.as_secs_f64() * 1000.0;
            let _entered = span.enter();
            if path_is_probe {
                tracing::debug!(status, latency_ms, "request finished");
            } else if status >= 500 {
                tracing::warn!(status, latency_ms, "request failed");
            } else {
                tracing::info!(status, latency_ms, "request finished");
            }
            Ok(response)
        })
    }
}

/// The route pattern of a request: matched by the router, by a fast path, or neither.
enum RouteLabel {
    Routed(MatchedPath),
    Fast(&'static str),
    Unmatched,
}

impl RouteLabel {
    /// The router's match, if any (a fast path's is given to [`Observe::call_on_route`]).
    fn of(request: &Request) -> Self {
        match request.extensions().get::<MatchedPath>() {
            Some(path) => Self::Routed(path.clone()),
            None => Self::Unmatched,
        }
    }

    fn as_str(&self) -> &str {
        match self {
            Self::Routed(path) => path.as_str(),
            Self::Fast(pattern) => pattern,
            Self::Unmatched => "unmatched",
        }
    }
}

/// Keeps a well-formed incoming `x-request-id`, else makes one and sets the header (so an
/// in-process or remote upstream reuses it). Returns the id and the request's
/// `x-request-id` value after that, which the response echoes.
fn accept_or_make_request_id(request: &mut Request) -> (RequestId, HeaderValue) {
    if let Some(value) = request.headers().get(&REQUEST_ID_HEADER)
        && let Some(id) = value.to_str().ok().filter(|v| is_acceptable_request_id(v))
    {
        return (RequestId(id.to_owned()), value.clone());
    }
    let id = new_request_id();
    let header = HeaderValue::from_maybe_shared(Bytes::from(id.clone()))
        .unwrap_or_else(|_| HeaderValue::from_static("invalid"));
    request
        .headers_mut()
        .insert(REQUEST_ID_HEADER.clone(), header.clone());
    (RequestId(id), header)
}

/// A UUID v4 from a thread-local generator (unique, not secret; no system call).
fn new_request_id() -> String {
    let id = uuid::Builder::from_random_bytes(fastrand::u128(..).to_le_bytes()).into_uuid();
    id.hyphenated()
        .encode_lower(&mut uuid::Uuid::encode_buffer())
        .to_owned()
}

/// Ids from outside end up in logs and headers: keep them short and plain.
pub(crate) fn is_acceptable_request_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
}

/// A request a service makes to another on a timer (the query service following the
/// event log) carries this header, so it is logged at debug like a probe: an idle system
/// logs nothing. Anyone may send it; it only lowers a log line's level.
pub const ROUTINE_HEADER: http::HeaderName = http::HeaderName::from_static("x-flotilla-routine");

fn is_probe(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz" | "/metrics")
}

/// Turns `span` into this request's exported server span: the caller's context as its
/// parent (so it keeps the incoming trace id), named after the route, with the HTTP
/// attributes of the OpenTelemetry conventions. Returns the span's own context.
fn export_server_span(
    span: &tracing::Span,
    incoming: Option<&TraceContext>,
    service: &'static str,
    method: &http::Method,
    route: &str,
    request: &Request,
) -> TraceContext {
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;

    span.record("otel.name", format!("{} {route}", method.as_str()));
    span.record("otel.kind", "server");
    span.set_attribute("flotilla.service", service);
    span.set_attribute("http.request.method", method.as_str().to_owned());
    span.set_attribute("http.route", route.to_owned());
    span.set_attribute("url.path", request.uri().path().to_owned());
    let Some(context) = export_under(span, incoming) else {
        // The span is disabled for the exporter: continue the trace without it.
        return incoming.map_or_else(TraceContext::new_root, TraceContext::child);
    };
    if incoming.is_none() {
        span.record("trace_id", tracing::field::display(context.trace_id_hex()));
    }
    context
}

fn record_outcome(span: &tracing::Span, status: u16) {
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    span.set_attribute("http.response.status_code", i64::from(status));
    if status >= 500 {
        span.set_status(opentelemetry::trace::Status::error(format!(
            "HTTP {status}"
        )));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_from_outside_are_checked() {
        assert!(is_acceptable_request_id("3f2a-11:ab_c.d"));
        assert!(!is_acceptable_request_id(""));
        assert!(!is_acceptable_request_id("a b"));
        assert!(!is_acceptable_request_id("line\nbreak"));
        assert!(!is_acceptable_request_id(&"x".repeat(129)));
    }
}
