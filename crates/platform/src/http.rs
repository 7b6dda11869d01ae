//! The HTTP side of a service: binding (port 0 allowed), serving with graceful drain,
//! and the middlewares of the common stack (request ids, access log, metrics, timeout).

use std::{net::SocketAddr, sync::Arc, time::Duration, time::Instant};

use axum::{
    Router,
    body::Body,
    extract::{ConnectInfo, MatchedPath, Request},
    middleware::Next,
    response::Response,
};
use http::{HeaderName, HeaderValue};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use tracing::Instrument;

use crate::Problem;

/// The header that carries a request's id across services and back to the client.
pub static REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// The id of the request being served, put in the request's extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(pub String);

/// The W3C trace context of the request being served (request extension), so that work
/// it causes — messages published, calls made — carries the same trace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceParent(pub String);

pub static TRACEPARENT_HEADER: HeaderName = HeaderName::from_static("traceparent");

impl TraceParent {
    /// A new root trace context: random trace id and span id, sampled.
    pub fn new_root() -> Self {
        // Trace and span ids must be unique, not secret: a thread-local generator
        // avoids a `getrandom` system call per request.
        let trace = fastrand::u128(1..);
        let span = fastrand::u64(1..);
        Self(format!("00-{trace:032x}-{span:016x}-01"))
    }

    /// Accepts a header value only if it is a well-formed version-00 traceparent.
    pub fn parse(value: &str) -> Option<Self> {
        let parts: Vec<&str> = value.trim().split('-').collect();
        let hex = |s: &str, len: usize| {
            s.len() == len
                && s.bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        };
        let well_formed = parts.len() == 4
            && parts[0] == "00"
            && hex(parts[1], 32)
            && parts[1] != "0".repeat(32)
            && hex(parts[2], 16)
            && parts[2] != "0".repeat(16)
            && hex(parts[3], 2);
        well_formed.then(|| Self(value.trim().to_owned()))
    }

    /// The 32-hex-digit trace id.
    pub fn trace_id(&self) -> &str {
        self.0.get(3..35).unwrap_or("")
    }
}

/// How long in-flight requests get to finish once shutdown starts.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}: {source}")]
pub struct BindError {
    addr: SocketAddr,
    source: std::io::Error,
}

/// Binds a listener; port 0 picks a free port (read it back with `local_addr`).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, BindError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| BindError { addr, source })
}

/// Limits of the connection layer, below HTTP routing: what a client can make the
/// server hold before a request even exists.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// A client must send its complete request head within this time (slowloris).
    pub header_read_timeout: Duration,
    /// Largest request head (request line + headers); larger → 431.
    pub max_header_bytes: usize,
    /// Most header fields in one request; more → 431.
    pub max_headers: usize,
    /// Open connections beyond this are closed at accept.
    pub max_connections: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 64 * 1024,
            max_headers: 100,
            max_connections: 10_000,
        }
    }
}

/// Serves `router` until `shutdown` is cancelled, then stops accepting, lets in-flight
/// requests finish (at most `drain_timeout`) and returns.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
    drain_timeout: Duration,
) -> std::io::Result<()> {
    serve_with_limits(
        listener,
        router,
        shutdown,
        drain_timeout,
        ConnectionLimits::default(),
    )
    .await
}

/// [`serve`] with explicit connection limits.
pub async fn serve_with_limits(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
    drain_timeout: Duration,
    limits: ConnectionLimits,
) -> std::io::Result<()> {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .max_headers(limits.max_headers)
        .keep_alive(true);
    let graceful = GracefulShutdown::new();
    let connections = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "connection limit reached; closing new connection");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let service = hyper::service::service_fn(
            move |mut request: hyper::Request<hyper::body::Incoming>| {
                request.extensions_mut().insert(ConnectInfo(peer));
                let router = router.clone();
                async move { router.oneshot(request.map(Body::new)).await }
            },
        );
        let connection = http.serve_connection(TokioIo::new(stream), service);
        let watched = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = watched.await {
                tracing::debug!(%peer, %error, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(drain_timeout) => {
            tracing::warn!(?drain_timeout, "requests still running after the drain timeout; closing them");
        }
    }
    Ok(())
}

/// Accepts a well-formed incoming `x-request-id` (so a trace spans services) or makes a
/// new one, records it in the request's extensions and echoes it on the response.
pub async fn request_id(mut request: Request, next: Next) -> Response {
    let id = request
        .headers()
        .get(&REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| is_acceptable_request_id(v))
        .map(str::to_owned)
        .unwrap_or_else(new_request_id);
    let header = HeaderValue::from_str(&id).unwrap_or_else(|_| HeaderValue::from_static("invalid"));
    request
        .headers_mut()
        .insert(REQUEST_ID_HEADER.clone(), header.clone());
    request.extensions_mut().insert(RequestId(id));
    let trace = request
        .headers()
        .get(&TRACEPARENT_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(TraceParent::parse)
        .unwrap_or_else(TraceParent::new_root);
    if let Ok(value) = HeaderValue::from_str(&trace.0) {
        request
            .headers_mut()
            .insert(TRACEPARENT_HEADER.clone(), value);
    }
    request.extensions_mut().insert(trace);
    let mut response = next.run(request).await;
    response
        .headers_mut()
        .insert(REQUEST_ID_HEADER.clone(), header);
    response
}

/// A UUID v4 from a thread-local generator (unique, not secret; no system call).
fn new_request_id() -> String {
    uuid::Builder::from_random_bytes(fastrand::u128(..).to_le_bytes())
        .into_uuid()
        .to_string()
}

/// Ids from outside end up in logs and headers: keep them short and plain.
fn is_acceptable_request_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
}

/// Access log and request metrics. The span it opens carries the request id, so every
/// log line written while serving the request has it.
pub async fn observe(service: &'static str, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned());
    let request_id = request
        .extensions()
        .get::<RequestId>()
        .map(|id| id.0.clone())
        .unwrap_or_default();
    let trace_id = request
        .extensions()
        .get::<TraceParent>()
        .map(|t| t.trace_id().to_owned())
        .unwrap_or_default();
    let span = tracing::info_span!("request", service, request_id, trace_id, %method, path);
    let response = next.run(request).instrument(span.clone()).await;
    let status = response.status().as_u16();
    let elapsed = started.elapsed();
    let route_label = route.unwrap_or_else(|| "unmatched".to_owned());
    crate::metrics::record_request(service, method.as_str(), &route_label, status, elapsed);
    span.in_scope(|| {
        let latency_ms = elapsed.as_secs_f64() * 1000.0;
        if is_probe(&path) {
            tracing::debug!(status, latency_ms, "request finished");
        } else if status >= 500 {
            tracing::warn!(status, latency_ms, "request failed");
        } else {
            tracing::info!(status, latency_ms, "request finished");
        }
    });
    response
}

fn is_probe(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz" | "/metrics")
}

/// [`timeout`] as a middleware with state, for per-route limits:
/// `route.layer(middleware::from_fn_with_state(limit, enforce_timeout))`.
pub async fn enforce_timeout(
    axum::extract::State(limit): axum::extract::State<Duration>,
    request: Request,
    next: Next,
) -> Response {
    timeout(limit, request, next).await
}

/// Ends requests that take longer than `limit` to produce response headers with a 503
/// problem. Streaming bodies are not cut: the limit covers time to first byte.
pub async fn timeout(limit: Duration, request: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => axum::response::IntoResponse::into_response(
            Problem::service_unavailable(format!(
                "the request did not complete within {} s",
                limit.as_secs_f64()
            ))
            .with_title("Request timed out"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_contexts_are_parsed_strictly() {
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let parsed = TraceParent::parse(good).expect("valid");
        assert_eq!(parsed.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(
            TraceParent::parse("00-00000000000000000000000000000000-00f067aa0ba902b7-01").is_none()
        );
        assert!(
            TraceParent::parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").is_none()
        );
        assert!(
            TraceParent::parse("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01").is_none()
        );
        assert!(TraceParent::parse("garbage").is_none());
        let root = TraceParent::new_root();
        assert!(TraceParent::parse(&root.0).is_some(), "{}", root.0);
    }

    #[test]
    fn request_ids_from_outside_are_checked() {
        assert!(is_acceptable_request_id("3f2a-11:ab_c.d"));
        assert!(!is_acceptable_request_id(""));
        assert!(!is_acceptable_request_id("a b"));
        assert!(!is_acceptable_request_id("line\nbreak"));
        assert!(!is_acceptable_request_id(&"x".repeat(129)));
    }
}
