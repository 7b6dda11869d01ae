//! bench/gateway/monoio-bare with the gateway's per-request work added: how much do the
//! gateway's features cost on monoio (issue 21, docs/gateway-pingora.md "Next steps" 5)?
//!
//!   monoio-features LISTEN_ADDR UPSTREAM_ADDR [THREADS] [legacy|uring] [full|lean]
//!
//! `full` (the default) does the work below the way the hyper gateway's layers do it;
//! `lean` does the same work — same answers, headers, metrics and spans — written for
//! this engine: no request extensions, one header-map reservation, one lookup per
//! forwarded header, the `X-Forwarded-For` value made once per connection, the route
//! patterns split at compile time, no boxed futures (`handle_lean`; docs/gateway-pingora.md,
//! "A lean feature layer on monoio + io_uring"). `MONOIO_FEATURES_URING=coop|defer` sets
//! io_uring's task-run flags (measured: no gain); `MONOIO_FEATURES_ROUTE_TIMEOUT_MS` sets
//! every route's timeout (for the tests).
//!
//! The engine is monoio-bare's, unchanged: monoio-http's HTTP/1 server codec in front of
//! monoio-transports' `HttpConnector` (per-thread keep-alive pool; it reads the upstream's
//! whole response before handing it on). Every route of the gateway's table goes to the one
//! UPSTREAM_ADDR. Between the two, per request, what the gateway does on its fast path
//! (`platform::entry::Entry` → `platform::observe::Observe` → `platform::cors::Cors` →
//! `gateway::routes::Proxy` → `upstream::remote::Balancer`), in that order:
//!
//! * the connection's peer as a request extension (`platform::http` inserts `ConnectInfo`);
//! * the route: the gateway's 14-row table and its `matches`, first row whose method and
//!   pattern fit (copied from services/gateway/src/routes.rs: both are private to the
//!   gateway crate); a request no row names gets a 404 problem (the gateway's router would
//!   answer it; off the measured path);
//! * observe: the request id (a well-formed `x-request-id` kept, else a UUID v4 from
//!   fastrand, set on the request — `accept_or_make_request_id`, private to platform, so
//!   copied, calling uuid and fastrand as it does); the `traceparent` continued or a trace
//!   started with the trace-context crate (`TraceContext::parse`, `child`, `new_root`,
//!   `to_traceparent`) and set on the forwarded request; the request span (`tracing`,
//!   filtered by `platform::telemetry::init` as the gateway's is: `RUST_LOG`, default `warn`
//!   here as in the gateway's benchmarks); the trace context in scope for the call
//!   (`trace_context::scope`, a task-local that needs no runtime); after the response, the
//!   error check, `http_requests_total` and `http_request_duration_seconds` by service,
//!   method, route and status (`platform::metrics::RequestMetrics`, the gateway's own, with
//!   the Prometheus recorder it installs and its upkeep thread), the echoed `x-request-id`
//!   and the log line (filtered out at `warn`, as in the gateway's benchmarks);
//! * CORS without `Origin`: `Vary` appended to the response (platform::cors);
//! * the guard: `Guard::Token` and `Guard::Admin` rows check the Bearer token with
//!   `identity::bearer_token` and `identity::Verifier::verify` (the gateway's verifier:
//!   fixed key set, default settings — the 16 Ki-token cache of `FLOTILLA_GATEWAY_TOKEN_CACHE`'s
//!   default; with `MONOIO_FEATURES_TOKEN_CACHE=0` every signature is checked) and put the
//!   `identity::Caller` in the extensions, as `identity::authenticate[_admin]` does (they
//!   take an axum `Request`, so their three lines are repeated here for monoio's body type);
//!   401 / 403 otherwise;
//! * the route's timeout around the upstream call (30 s, upload 1 h: `TimeoutLayer`; here
//!   monoio's timer);
//! * forwarding (upstream::remote, private there, so copied): origin-form target,
//!   HTTP/1.1, hop-by-hop headers stripped from the request (RFC 9110 §7.6.1, the ones
//!   `Connection` names too), `X-Forwarded-For` (peer appended), `X-Forwarded-Host`,
//!   `X-Forwarded-Proto`, `Host` set to the upstream's authority; hop-by-hop headers
//!   stripped from the response.
//!
//! Not here (the gateway does them; see the report in docs): the resilience stack around
//! each remote upstream (load-shed semaphore, circuit breaker, retry budget and retry head
//! copy, power-of-two balancer with in-flight counts), the rate limit (off in the
//! gateway's benchmarks too), the trusted-proxy client resolution (off by default), the
//! slowloris head timer and connection limits, and the error body's problem+json rewrite
//! beyond a minimal one (no error is answered on the measured path).
//!
//! At start-up the proxy makes an Ed25519 signing key, installs its public half in the
//! verifier and signs one token (a day valid) which it prints on stdout as
//! `token <JWT>` — and writes to `$MONOIO_FEATURES_TOKEN_FILE` when that is set — so that
//! `wrk -H "Authorization: Bearer <JWT>"` can call the guarded routes.
//!
//! SIGINT or SIGTERM ends it at once (the process exits, so callgrind writes its file).

use std::future::{poll_fn, Future};
use std::net::{IpAddr, SocketAddr};
use std::pin::pin;
use std::process::ExitCode;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::uri::PathAndQuery;
use http::{header, HeaderName, HeaderValue, Method, StatusCode, Uri};
use identity::{Caller, Claims, SigningKey, Verifier, VerifierSettings};
use jsonwebtoken::jwk::JwkSet;
use monoio::io::sink::SinkExt;
use monoio::io::stream::Stream;
use monoio::io::Splitable;
use monoio::net::{TcpListener, TcpStream};
use monoio_http::common::body::{FixedBody, HttpBody};
use monoio_http::h1::codec::decoder::{FillPayload, RequestDecoder};
use monoio_http::h1::codec::encoder::GenericEncoder;
use monoio_transports::connectors::{Connector, TcpConnector};
use monoio_transports::http::HttpConnector;
use platform::ids::{RequestId, TraceContext, REQUEST_ID_HEADER, TRACEPARENT_HEADER};
use platform::metrics::RequestMetrics;
use tracing::Instrument;

/// monolake's `PooledHttpConnector`, HTTP/1 only (`HttpVersion::Http11`).
type Upstream = HttpConnector<TcpConnector, SocketAddr, TcpStream>;
type Request = http::Request<HttpBody>;
type Response = http::Response<HttpBody>;

// ---------------------------------------------------------------------------------------
// The route table: services/gateway/src/routes.rs (`TABLE`, `matches`, `Methods::allow`),
// copied because they are private to the gateway crate. Same rows, same order.

/// Time to response headers for ordinary routes.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// An upload's response comes after its whole body has been stored.
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(60 * 60);

#[derive(Debug, Clone, Copy)]
struct Route {
    methods: Methods,
    pattern: &'static str,
    #[allow(dead_code)] // every row goes to the one upstream here
    upstream: &'static str,
    timeout: Duration,
    guard: Guard,
}

#[derive(Debug, Clone, Copy)]
enum Methods {
    Get,
    Post,
    Any,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Guard {
    Open,
    Token,
    Admin,
}

const fn route(methods: Methods, pattern: &'static str, upstream: &'static str) -> Route {
    Route {
        methods,
        pattern,
        upstream,
        timeout: DEFAULT_TIMEOUT,
        guard: Guard::Open,
    }
}

impl Route {
    const fn guarded(self, guard: Guard) -> Self {
        Route { guard, ..self }
    }

    const fn within(self, timeout: Duration) -> Self {
        Route { timeout, ..self }
    }
}

use Methods::{Any, Get, Post};

const TABLE: [Route; 14] = [
    route(Post, "/signup", "auth"),
    route(Post, "/login", "auth"),
    route(Post, "/validate", "auth"),
    route(Get, "/.well-known/jwks.json", "auth"),
    route(Post, "/upload", "media")
        .guarded(Guard::Token)
        .within(UPLOAD_TIMEOUT),
    route(Get, "/download", "media").guarded(Guard::Token),
    route(Get, "/jobs", "media").guarded(Guard::Token),
    route(Get, "/jobs/{id}", "media").guarded(Guard::Token),
    route(Post, "/posts/create", "posts"),
    route(Post, "/posts", "posts"),
    route(Get, "/posts", "query"),
    route(Any, "/posts/{id}/comments", "comments"),
    route(Get, "/events", "event-bus"),
    route(Post, "/events", "event-bus").guarded(Guard::Admin),
];

impl Methods {
    fn allow(self, method: &Method) -> bool {
        match self {
            Get => method == Method::GET,
            Post => method == Method::POST,
            Any => true,
        }
    }
}

fn matches(pattern: &str, path: &str) -> bool {
    let Some(open) = pattern.find('{') else {
        return pattern == path;
    };
    let Some(close) = pattern[open..].find('}').map(|i| open + i) else {
        return false;
    };
    let (prefix, suffix) = (&pattern[..open], &pattern[close + 1..]);
    let Some(rest) = path.strip_prefix(prefix) else {
        return false;
    };
    let end = rest.find('/').unwrap_or(rest.len());
    end > 0 && matches(suffix, &rest[end..])
}

/// Where a pattern's first `{…}` is (byte offsets of the braces), found at compile time:
/// the lean path does not search the pattern on every request (the gateway's fast path
/// splits its patterns once at start-up for the same reason).
const fn brace(pattern: &str) -> Option<(usize, usize)> {
    let bytes = pattern.as_bytes();
    let mut open = 0;
    while open < bytes.len() {
        if bytes[open] == b'{' {
            let mut close = open;
            while close < bytes.len() {
                if bytes[close] == b'}' {
                    return Some((open, close));
                }
                close += 1;
            }
            return None;
        }
        open += 1;
    }
    None
}

const BRACES: [Option<(usize, usize)>; TABLE.len()] = {
    let mut braces = [None; TABLE.len()];
    let mut i = 0;
    while i < TABLE.len() {
        braces[i] = brace(TABLE[i].pattern);
        i += 1;
    }
    braces
};

/// `route_of` with the patterns split at compile time: the same answers.
#[inline(never)]
fn lean_route_of(method: &Method, path: &str) -> Option<usize> {
    TABLE.iter().zip(BRACES).position(|(r, braces)| {
        r.methods.allow(method)
            && match braces {
                None => r.pattern == path,
                Some((open, close)) => {
                    let (prefix, suffix) = (&r.pattern[..open], &r.pattern[close + 1..]);
                    path.strip_prefix(prefix).is_some_and(|rest| {
                        let end = rest.find('/').unwrap_or(rest.len());
                        end > 0 && matches(suffix, &rest[end..])
                    })
                }
            }
    })
}

/// `FastPath::route` of the gateway's `Proxy`.
#[inline(never)]
fn route_of(method: &Method, path: &str) -> Option<usize> {
    TABLE
        .iter()
        .position(|r| r.methods.allow(method) && matches(r.pattern, path))
}

/// platform::observe::MatchedRoute's content (request extension).
#[derive(Debug, Clone, Copy)]
struct MatchedRoute {
    #[allow(dead_code)]
    pattern: &'static str,
    #[allow(dead_code)]
    index: usize,
}

/// The connection's peer (the gateway's `ConnectInfo<SocketAddr>` extension).
#[derive(Debug, Clone, Copy)]
struct Peer(SocketAddr);

// ---------------------------------------------------------------------------------------
// The request id: platform::observe's `accept_or_make_request_id`, `new_request_id` and
// `is_acceptable_request_id` (private there), on the same crates.

#[inline(never)]
fn accept_or_make_request_id(request: &mut Request) -> RequestId {
    if let Some(id) = request
        .headers()
        .get(&REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| is_acceptable_request_id(v))
    {
        return RequestId(id.to_owned());
    }
    let id = new_request_id();
    let header = HeaderValue::from_maybe_shared(Bytes::from(id.clone()))
        .unwrap_or_else(|_| HeaderValue::from_static("invalid"));
    request
        .headers_mut()
        .insert(REQUEST_ID_HEADER.clone(), header);
    RequestId(id)
}

fn new_request_id() -> String {
    let id = uuid::Builder::from_random_bytes(fastrand::u128(..).to_le_bytes()).into_uuid();
    id.hyphenated()
        .encode_lower(&mut uuid::Uuid::encode_buffer())
        .to_owned()
}

fn is_acceptable_request_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
}

const ROUTINE_HEADER: HeaderName = HeaderName::from_static("x-flotilla-routine");

fn is_probe(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz" | "/metrics")
}

// ---------------------------------------------------------------------------------------
// Forwarding: upstream::remote's `origin_form`, `strip_hop_by_hop`, `address_value`,
// `append_client_address`, `prepare_forwarded_headers` (private there), on the same
// `http` types.

static HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
];

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

fn origin_form(original: &Uri) -> Uri {
    let path_and_query = original
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    Uri::from(path_and_query)
}

#[inline(never)]
fn strip_hop_by_hop(headers: &mut http::HeaderMap) {
    let mut present = [false; HOP_BY_HOP.len()];
    for name in headers.keys() {
        let i = match name.as_str() {
            "connection" => 0,
            "keep-alive" => 1,
            "proxy-authenticate" => 2,
            "proxy-authorization" => 3,
            "te" => 4,
            "trailer" => 5,
            "upgrade" => 6,
            _ => continue,
        };
        present[i] = true;
    }
    if !present.contains(&true) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|name| {
            !name.eq_ignore_ascii_case("keep-alive") && !name.eq_ignore_ascii_case("close")
        })
        .filter_map(|name| HeaderName::from_bytes(name.as_bytes()).ok())
        .collect();
    for name in &named {
        headers.remove(name);
    }
    for (name, present) in HOP_BY_HOP.iter().zip(present) {
        if present {
            headers.remove(name);
        }
    }
}

fn address_value(ip: IpAddr) -> Option<HeaderValue> {
    let IpAddr::V4(v4) = ip else {
        return HeaderValue::from_str(&ip.to_string()).ok();
    };
    let mut text = [0u8; 15];
    let mut len = 0;
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            text[len] = b'.';
            len += 1;
        }
        let digits = [octet / 100, octet / 10 % 10, octet % 10];
        let skip = if octet >= 100 {
            0
        } else if octet >= 10 {
            1
        } else {
            2
        };
        for digit in &digits[skip..] {
            text[len] = b'0' + digit;
            len += 1;
        }
    }
    HeaderValue::from_bytes(&text[..len]).ok()
}

fn append_client_address(request: &mut Request) {
    let Some(Peer(peer)) = request.extensions().get::<Peer>().copied() else {
        return;
    };
    let client = peer.ip();
    let headers = request.headers_mut();
    let forwarded_for = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(previous) => HeaderValue::from_str(&format!("{previous}, {client}")).ok(),
        None => address_value(client),
    };
    if let Some(value) = forwarded_for {
        headers.insert(X_FORWARDED_FOR.clone(), value);
    }
}

#[inline(never)]
fn prepare_forwarded_headers(request: &mut Request, upstream_host: Option<HeaderValue>) {
    strip_hop_by_hop(request.headers_mut());
    append_client_address(request);
    let original_host = request.headers().get(header::HOST).cloned();
    let headers = request.headers_mut();
    if let Some(host) = original_host {
        headers.insert(X_FORWARDED_HOST.clone(), host);
    }
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("http"));
    match upstream_host {
        Some(host) => {
            headers.insert(header::HOST, host);
        }
        None if !headers.contains_key(header::HOST) => {
            headers.insert(header::HOST, HeaderValue::from_static("localhost"));
        }
        None => {}
    }
}

// ---------------------------------------------------------------------------------------
// The proxy.

/// What a thread's requests share.
struct State {
    lean: bool,
    upstream: Upstream,
    addr: SocketAddr,
    /// The `Host` the upstream gets (its configured authority), made once.
    host_header: Option<HeaderValue>,
    verifier: Verifier,
    metrics: Arc<RequestMetrics>,
    /// Every route's timeout, if `MONOIO_FEATURES_ROUTE_TIMEOUT_MS` is set (for the test).
    timeout: Option<Duration>,
}

/// The gateway's own answers (a refusal, an unknown route, the upstream unreachable), as a
/// minimal problem+json. None is on the measured path.
fn problem(code: StatusCode, detail: &str, request_id: Option<&str>) -> Response {
    let body = format!(
        "{{\"type\":\"about:blank\",\"title\":\"{}\",\"status\":{},\"detail\":\"{}\",\"request_id\":\"{}\"}}",
        code.canonical_reason().unwrap_or(""),
        code.as_u16(),
        detail,
        request_id.unwrap_or("")
    );
    let mut response = http::Response::new(HttpBody::fixed_body(Some(Bytes::from(body.clone()))));
    *response.status_mut() = code;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    response
}

/// `identity::authenticate` (and `_admin`), for monoio's request type: the same calls.
#[inline(never)]
async fn authenticate(
    verifier: &Verifier,
    request: &mut Request,
    admin: bool,
) -> Result<(), Response> {
    request.extensions_mut().remove::<Caller>();
    let token = match identity::bearer_token(request.headers()) {
        Ok(token) => token,
        Err(error) => return Err(unauthorized(&error.to_string(), identity::BEARER_CHALLENGE)),
    };
    match verifier.verify(token).await {
        Ok(claims) => {
            let caller = Caller::from(claims);
            let is_admin = caller.admin;
            request.extensions_mut().insert(caller);
            if admin && !is_admin {
                return Err(problem(
                    StatusCode::FORBIDDEN,
                    "only an admin may do this",
                    None,
                ));
            }
            Ok(())
        }
        Err(error) => {
            tracing::debug!(%error, "token rejected");
            Err(unauthorized(
                &error.to_string(),
                identity::INVALID_TOKEN_CHALLENGE,
            ))
        }
    }
}

/// The balancer's forwarding and the pool's send: the request on a pooled upstream
/// connection, hop-by-hop headers stripped from the answer; 502 if it fails.
async fn forward(state: &State, mut request: Request) -> Response {
    *request.uri_mut() = origin_form(request.uri());
    *request.version_mut() = http::Version::HTTP_11;
    prepare_forwarded_headers(&mut request, state.host_header.clone());
    exchange(state, request).await
}

/// The request on a pooled upstream connection, hop-by-hop headers stripped from the
/// answer; 503 if no connection, 502 if the exchange fails.
async fn exchange(state: &State, request: Request) -> Response {
    let mut connection = match state.upstream.connect(state.addr).await {
        Ok(connection) => connection,
        Err(_) => {
            return problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "the upstream is unavailable",
                None,
            )
        }
    };
    match connection.send_request(request).await {
        (Ok(response), _) => {
            let (mut parts, body) = response.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            Response::from_parts(parts, body)
        }
        (Err(_), _) => problem(
            StatusCode::BAD_GATEWAY,
            "the upstream could not be reached",
            None,
        ),
    }
}

/// CORS's `Vary` on every answer (platform::cors).
static VARY: HeaderValue = HeaderValue::from_static(
    "origin, access-control-request-method, access-control-request-headers",
);

/// The route's timeout passed before the upstream's answer: 503 problem.
fn too_long() -> Response {
    problem(
        StatusCode::SERVICE_UNAVAILABLE,
        "the upstream took too long",
        None,
    )
}

/// A 401 problem with its `WWW-Authenticate` challenge.
fn unauthorized(detail: &str, challenge: &'static str) -> Response {
    let mut refusal = problem(StatusCode::UNAUTHORIZED, detail, None);
    refusal.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static(challenge),
    );
    refusal
}

/// The fast path's call (`routes::Proxy::call`) inside CORS: the guard, then the upstream
/// within the route's timeout; `Vary` on the answer.
async fn fast_call(state: &State, route: &'static Route, mut request: Request) -> Response {
    let checked = match route.guard {
        Guard::Open => Ok(()),
        Guard::Token => authenticate(&state.verifier, &mut request, false).await,
        Guard::Admin => authenticate(&state.verifier, &mut request, true).await,
    };
    let mut response = match checked {
        // Boxed, as the gateway's fast path boxes its call: the wrappers around it (timer,
        // trace scope, span) then move a pointer, not the upstream call's large future.
        Ok(()) => {
            let timeout = state.timeout.unwrap_or(route.timeout);
            match monoio::time::timeout(timeout, Box::pin(forward(state, request))).await {
                Ok(response) => response,
                Err(_) => too_long(),
            }
        }
        Err(refusal) => refusal,
    };
    response.headers_mut().append(header::VARY, VARY.clone());
    response
}

/// One request, as the gateway's entry and observe layers handle it.
async fn handle(state: &State, peer: SocketAddr, mut request: Request) -> Response {
    request.extensions_mut().insert(Peer(peer));
    let Some(index) = route_of(request.method(), request.uri().path()) else {
        return problem(StatusCode::NOT_FOUND, "no such route", None);
    };
    let route: &'static Route = &TABLE[index];
    request.extensions_mut().insert(MatchedRoute {
        pattern: route.pattern,
        index,
    });

    // observe
    let started = Instant::now();
    let request_id = accept_or_make_request_id(&mut request);
    let incoming = request
        .headers()
        .get(&TRACEPARENT_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(TraceContext::parse);
    let method = request.method().clone();
    let route_label = route.pattern;
    let context = match incoming {
        Some(incoming) => incoming.child(),
        None => TraceContext::new_root(),
    };
    let span = tracing::info_span!(
        "request",
        service = "gateway",
        request_id = %request_id.0,
        trace_id = %context.trace_id_hex(),
        method = %method,
        path = %request.uri().path(),
    );
    let traceparent = context.to_traceparent();
    if let Ok(value) = HeaderValue::from_maybe_shared(Bytes::from(traceparent.0.clone())) {
        request
            .headers_mut()
            .insert(TRACEPARENT_HEADER.clone(), value);
    }
    let current: Arc<str> = Arc::from(traceparent.0.as_str());
    request.extensions_mut().insert(traceparent);
    let echoed_id = request.headers().get(&REQUEST_ID_HEADER).cloned();
    let path_is_probe =
        is_probe(request.uri().path()) || request.headers().contains_key(ROUTINE_HEADER);
    let uri = request.uri().clone();
    request.extensions_mut().insert(request_id);

    let mut response = trace_context::scope(current, Box::pin(fast_call(state, route, request)))
        .instrument(span.clone())
        .await;
    let status = response.status();
    if (status.is_client_error() || status.is_server_error())
        && response
            .headers()
            .get(header::CONTENT_TYPE)
            .is_none_or(|t| t.as_bytes() != b"application/problem+json")
    {
        // The upstream's own error: the gateway makes it a problem carrying the request id.
        let id = echoed_id.as_ref().and_then(|id| id.to_str().ok());
        response = problem(status, &format!("{} {} failed", method, uri.path()), id);
    }
    let elapsed = started.elapsed();
    state
        .metrics
        .record(&method, route_label, status.as_u16(), elapsed);
    if let Some(id) = echoed_id {
        response.headers_mut().insert(REQUEST_ID_HEADER.clone(), id);
    }
    log_finished(&span, path_is_probe, status.as_u16(), elapsed);
    response
}

/// observe's log line at the end of a request (filtered out at `warn` but for a failure,
/// as in the gateway's benchmarks; entering a span filtered out costs a branch).
fn log_finished(span: &tracing::Span, probe: bool, status: u16, elapsed: Duration) {
    let latency_ms = elapsed.as_secs_f64() * 1000.0;
    let _entered = span.enter();
    if probe {
        tracing::debug!(status, latency_ms, "request finished");
    } else if status >= 500 {
        tracing::warn!(status, latency_ms, "request failed");
    } else {
        tracing::info!(status, latency_ms, "request finished");
    }
}

// ---------------------------------------------------------------------------------------
// The same work, written lean (`lean` on the command line): what a data plane built for
// this engine would do per request. Same headers out, same answers, same metrics; the
// difference is only how: no request extensions (the peer, the route, the caller and the
// ids are locals), no boxed futures, the request id and `traceparent` made in stack
// buffers, the forwarded head edited with one lookup per header (the old `Host` comes
// back from the insert that replaces it), the map's room reserved once, the echoed id
// cloned from the value made, not looked up again.

/// The request id the answer echoes and the upstream gets: the client's if well-formed,
/// else a UUID v4 (as `new_request_id`, written into a stack buffer).
#[inline(never)]
fn lean_request_id(request: &mut Request) -> HeaderValue {
    if let Some(value) = request.headers().get(&REQUEST_ID_HEADER) {
        if value.to_str().is_ok_and(is_acceptable_request_id) {
            return value.clone();
        }
    }
    let id = uuid::Builder::from_random_bytes(fastrand::u128(..).to_le_bytes()).into_uuid();
    let mut buffer = uuid::Uuid::encode_buffer();
    let text = id.hyphenated().encode_lower(&mut buffer);
    let value = HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static("invalid"));
    request
        .headers_mut()
        .insert(REQUEST_ID_HEADER.clone(), value.clone());
    value
}

/// The connection's client, and its address as an `X-Forwarded-For` value, made once per
/// connection: every request on it that arrives without the header gets a copy.
struct ClientAddress {
    ip: IpAddr,
    value: Option<HeaderValue>,
}

impl ClientAddress {
    fn new(peer: SocketAddr) -> Self {
        Self {
            ip: peer.ip(),
            value: address_value(peer.ip()),
        }
    }
}

#[inline(never)]
fn lean_forwarded_headers(
    headers: &mut http::HeaderMap,
    client: &ClientAddress,
    upstream_host: &Option<HeaderValue>,
) {
    strip_hop_by_hop(headers);
    let forwarded_for = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(previous) => HeaderValue::from_str(&format!("{previous}, {}", client.ip)).ok(),
        None => client.value.clone(),
    };
    if let Some(value) = forwarded_for {
        headers.insert(X_FORWARDED_FOR.clone(), value);
    }
    let original_host = match upstream_host {
        Some(host) => headers.insert(header::HOST, host.clone()),
        None => {
            let host = headers.get(header::HOST).cloned();
            if host.is_none() {
                headers.insert(header::HOST, HeaderValue::from_static("localhost"));
            }
            host
        }
    };
    if let Some(host) = original_host {
        headers.insert(X_FORWARDED_HOST.clone(), host);
    }
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("http"));
}

/// The guard, without extensions: the caller's claims are checked and dropped (the
/// gateway's fast path passes nothing of them upstream).
async fn lean_authenticate(
    verifier: &Verifier,
    request: &Request,
    admin: bool,
) -> Result<(), Response> {
    let token = match identity::bearer_token(request.headers()) {
        Ok(token) => token,
        Err(error) => return Err(unauthorized(&error.to_string(), identity::BEARER_CHALLENGE)),
    };
    match verifier.verify(token).await {
        Ok(claims) if admin && !claims.admin => Err(problem(
            StatusCode::FORBIDDEN,
            "only an admin may do this",
            None,
        )),
        Ok(_) => Ok(()),
        Err(error) => {
            tracing::debug!(%error, "token rejected");
            Err(unauthorized(
                &error.to_string(),
                identity::INVALID_TOKEN_CHALLENGE,
            ))
        }
    }
}

async fn lean_forward(state: &State, client: &ClientAddress, mut request: Request) -> Response {
    if request.uri().scheme().is_some() {
        *request.uri_mut() = origin_form(request.uri());
    }
    *request.version_mut() = http::Version::HTTP_11;
    lean_forwarded_headers(request.headers_mut(), client, &state.host_header);
    exchange(state, request).await
}

async fn handle_lean(state: &State, client: &ClientAddress, mut request: Request) -> Response {
    let Some(index) = lean_route_of(request.method(), request.uri().path()) else {
        return problem(StatusCode::NOT_FOUND, "no such route", None);
    };
    let route: &'static Route = &TABLE[index];
    let started = Instant::now();
    // Room for what is added (request id, traceparent, the three X-Forwarded-*), once.
    request.headers_mut().reserve(5);
    let request_id = lean_request_id(&mut request);
    let context = match request
        .headers()
        .get(&TRACEPARENT_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(TraceContext::parse)
    {
        Some(incoming) => incoming.child(),
        None => TraceContext::new_root(),
    };
    let traceparent = context.to_traceparent();
    let method = request.method().clone();
    let span = tracing::info_span!(
        "request",
        service = "gateway",
        request_id = request_id.to_str().unwrap_or(""),
        trace_id = %context.trace_id_hex(),
        method = %method,
        path = %request.uri().path(),
    );
    if let Ok(value) = HeaderValue::from_maybe_shared(Bytes::from(traceparent.0)) {
        request
            .headers_mut()
            .insert(TRACEPARENT_HEADER.clone(), value);
    }
    let probe = request.headers().contains_key(ROUTINE_HEADER);
    let checked = match route.guard {
        Guard::Open => Ok(()),
        Guard::Token => lean_authenticate(&state.verifier, &request, false).await,
        Guard::Admin => lean_authenticate(&state.verifier, &request, true).await,
    };
    // For an error's detail (a reference-counted copy, not the text).
    let uri = request.uri().clone();
    let mut response = match checked {
        Ok(()) => {
            let forwarded = monoio::time::timeout(
                state.timeout.unwrap_or(route.timeout),
                lean_forward(state, client, request),
            );
            // A span filtered out (RUST_LOG=warn) is not entered around every poll.
            let outcome = if span.is_disabled() {
                forwarded.await
            } else {
                forwarded.instrument(span.clone()).await
            };
            match outcome {
                Ok(response) => response,
                Err(_) => too_long(),
            }
        }
        Err(refusal) => refusal,
    };
    let status = response.status();
    if (status.is_client_error() || status.is_server_error())
        && response
            .headers()
            .get(header::CONTENT_TYPE)
            .is_none_or(|t| t.as_bytes() != b"application/problem+json")
    {
        let id = request_id.to_str().ok();
        response = problem(status, &format!("{} {} failed", method, uri.path()), id);
    }
    let elapsed = started.elapsed();
    state
        .metrics
        .record(&method, route.pattern, status.as_u16(), elapsed);
    let headers = response.headers_mut();
    headers.reserve(2);
    headers.append(header::VARY, VARY.clone());
    headers.insert(REQUEST_ID_HEADER.clone(), request_id);
    log_finished(&span, probe, status.as_u16(), elapsed);
    response
}

/// Polls `main` to its end while also driving `fill` (the request body's reader) until it
/// ends; returns `main`'s output. What monolake's `AccompanyPair` does, without moving a
/// polled future.
async fn accompanied<M: Future, F: Future>(
    main: M,
    fill: &mut std::pin::Pin<&mut F>,
    filled: &mut Option<F::Output>,
) -> M::Output {
    let mut main = pin!(main);
    poll_fn(|cx| {
        if filled.is_none() {
            if let Poll::Ready(output) = fill.as_mut().poll(cx) {
                *filled = Some(output);
            }
        }
        main.as_mut().poll(cx)
    })
    .await
}

/// One client connection: monoio-bare's loop, with `handle` in place of the bare forward.
async fn serve_connection(stream: TcpStream, peer: SocketAddr, state: Rc<State>) {
    let (reader, writer) = stream.into_split();
    let client = ClientAddress::new(peer);
    let mut decoder = RequestDecoder::new(reader);
    let mut encoder = GenericEncoder::new(writer);
    loop {
        let request = match decoder.next().await {
            Some(Ok(request)) => HttpBody::request(request),
            Some(Err(_)) | None => return,
        };
        let mut fill = pin!(decoder.fill_payload());
        let mut filled = None;
        let response = if state.lean {
            accompanied(
                handle_lean(&state, &client, request),
                &mut fill,
                &mut filled,
            )
            .await
        } else {
            accompanied(handle(&state, peer, request), &mut fill, &mut filled).await
        };
        let sent = accompanied(encoder.send_and_flush(response), &mut fill, &mut filled).await;
        if sent.is_err() {
            return;
        }
        let filled = match filled {
            Some(filled) => filled,
            None => fill.await,
        };
        if filled.is_err() {
            return;
        }
    }
}

/// What every thread shares: the verifier (one token cache, as the gateway's) and the
/// request metrics (one per service).
#[derive(Clone)]
struct Shared {
    lean: bool,
    verifier: Verifier,
    metrics: Arc<RequestMetrics>,
}

async fn serve(
    listener: TcpListener,
    addr: SocketAddr,
    shared: Shared,
    stop: Option<Arc<AtomicBool>>,
) {
    if let Some(stop) = stop {
        monoio::spawn(async move {
            loop {
                monoio::time::sleep(Duration::from_millis(100)).await;
                if stop.load(Ordering::Relaxed) {
                    std::process::exit(0);
                }
            }
        });
    }
    let state = Rc::new(State {
        lean: shared.lean,
        upstream: Upstream::build_tcp_http1_only(),
        addr,
        host_header: HeaderValue::from_str(&addr.to_string()).ok(),
        verifier: shared.verifier,
        metrics: shared.metrics,
        timeout: std::env::var("MONOIO_FEATURES_ROUTE_TIMEOUT_MS")
            .ok()
            .and_then(|ms| ms.parse().ok())
            .map(Duration::from_millis),
    });
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(_) => {
                monoio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        monoio::spawn(serve_connection(stream, peer, state.clone()));
    }
}

#[derive(Clone, Copy)]
enum Driver {
    Legacy,
    Uring,
}

/// One HTTP thread: a monoio runtime with `driver` and timers serving `listener` (see
/// monoio-bare for why io_uring's thread watches `stop` itself).
fn thread(
    listener: std::net::TcpListener,
    addr: SocketAddr,
    driver: Driver,
    shared: Shared,
    stop: Arc<AtomicBool>,
) -> std::io::Result<()> {
    match driver {
        Driver::Legacy => monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()?
            .block_on(async move {
                serve(TcpListener::from_std(listener)?, addr, shared, None).await;
                Ok(())
            }),
        Driver::Uring => monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .enable_timer()
            .uring_builder(uring_setup())
            .build()?
            .block_on(async move {
                serve(TcpListener::from_std(listener)?, addr, shared, Some(stop)).await;
                Ok(())
            }),
    }
}

/// The ring's setup flags, from `MONOIO_FEATURES_URING` (monoio's default is none):
/// `coop` = `COOP_TASKRUN` + `TASKRUN_FLAG` (the kernel does not interrupt the thread to
/// post completions; it posts them when the thread next enters the kernel);
/// `defer` = those, `SINGLE_ISSUER` and `DEFER_TASKRUN` (completions are worked only when
/// the thread waits for them — the settings io_uring's authors recommend for one ring
/// per thread).
fn uring_setup() -> io_uring::Builder {
    let mut builder = io_uring::IoUring::builder();
    match std::env::var("MONOIO_FEATURES_URING").as_deref() {
        Ok("coop") => {
            builder.setup_coop_taskrun().setup_taskrun_flag();
        }
        Ok("defer") => {
            builder
                .setup_coop_taskrun()
                .setup_taskrun_flag()
                .setup_single_issuer()
                .setup_defer_taskrun();
        }
        _ => {}
    }
    builder
}

/// A signing key, the verifier of its tokens (the gateway's settings: a token cache of
/// `MONOIO_FEATURES_TOKEN_CACHE`, default the gateway's 16 Ki) and one token for a user.
fn identity() -> Result<(Verifier, String), String> {
    let (key, _pem) = SigningKey::generate().map_err(|e| e.to_string())?;
    let keys = JwkSet {
        keys: vec![key.public_jwk().clone()],
    };
    let cache_capacity = match std::env::var("MONOIO_FEATURES_TOKEN_CACHE") {
        Ok(value) => value
            .parse()
            .map_err(|_| format!("MONOIO_FEATURES_TOKEN_CACHE must be a number, got {value:?}"))?,
        Err(_) => 16 * 1024,
    };
    let verifier = Verifier::with_settings(
        identity::JwksSource::fixed(keys.clone()),
        VerifierSettings {
            cache_capacity,
            ..VerifierSettings::default()
        },
    );
    let now = i64::try_from(jsonwebtoken::get_current_timestamp()).unwrap_or(0);
    let claims = Claims {
        sub: "6f1c3c5e-4a8e-4f43-9a55-0d5b8f0e2a11".to_owned(),
        username: "bench@example.com".to_owned(),
        admin: false,
        iat: now,
        exp: now + 24 * 60 * 60,
        iss: identity::ISSUER.to_owned(),
    };
    let token = key.sign(&claims).map_err(|e| e.to_string())?;
    // The first verification fetches the (fixed) key set; do it here, off any thread's
    // loop, with a one-shot executor: the fixed source's future is ready at once.
    let first = poll_once(verifier.verify(&token))
        .ok_or("the verifier wanted to wait")?
        .map_err(|e| format!("the token does not verify: {e}"))?;
    debug_assert_eq!(first.sub, claims.sub);
    Ok((verifier, token))
}

/// Polls `future` once with a no-op waker.
fn poll_once<F: Future>(future: F) -> Option<F::Output> {
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    match pin!(future).poll(&mut cx) {
        Poll::Ready(output) => Some(output),
        Poll::Pending => None,
    }
}

fn run(
    listen: SocketAddr,
    addr: SocketAddr,
    threads: usize,
    driver: Driver,
    lean: bool,
) -> Result<(), String> {
    let stopping = [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM];
    let mut signals = signal_hook::iterator::Signals::new(stopping).map_err(|e| e.to_string())?;
    let stop = Arc::new(AtomicBool::new(false));
    for signal in stopping {
        signal_hook::flag::register(signal, stop.clone()).map_err(|e| e.to_string())?;
    }
    // As the gateway's benchmarks run it (RUST_LOG=warn): the span and log line are
    // filtered out, not absent.
    if std::env::var_os("RUST_LOG").is_none() {
        std::env::set_var("RUST_LOG", "warn");
    }
    let _telemetry = platform::telemetry::init("gateway");
    let (verifier, token) = identity()?;
    if let Ok(path) = std::env::var("MONOIO_FEATURES_TOKEN_FILE") {
        std::fs::write(&path, &token).map_err(|e| format!("{path}: {e}"))?;
    }
    println!("token {token}");
    let shared = Shared {
        lean,
        verifier,
        metrics: Arc::new(RequestMetrics::new("gateway")),
    };
    let listener = std::net::TcpListener::bind(listen).map_err(|e| e.to_string())?;
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    for index in 0..threads {
        let listener = listener.try_clone().map_err(|e| e.to_string())?;
        let stop = stop.clone();
        let shared = shared.clone();
        std::thread::Builder::new()
            .name(format!("http-{index}"))
            .spawn(move || {
                if let Err(error) = thread(listener, addr, driver, shared, stop) {
                    eprintln!("monoio-features: HTTP thread {index}: {error}");
                    std::process::exit(1);
                }
            })
            .map_err(|e| e.to_string())?;
    }
    if std::env::var_os("MONOIO_FEATURES_PRINT_METRICS").is_some() {
        // For the test: the exposition after the signal, then exit.
        let _ = signals.forever().next();
        print!("{}", platform::metrics::render());
        std::process::exit(0);
    }
    let _ = signals.forever().next();
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage =
        "usage: monoio-features LISTEN_ADDR UPSTREAM_ADDR [THREADS] [legacy|uring] [full|lean]";
    let (Some(listen), Some(upstream)) = (args.first(), args.get(1)) else {
        eprintln!("{usage}");
        return ExitCode::from(2);
    };
    let Ok(listen) = listen.parse::<SocketAddr>() else {
        eprintln!("LISTEN_ADDR must be IP:PORT, got {listen:?}\n{usage}");
        return ExitCode::from(2);
    };
    let Ok(upstream) = upstream.parse::<SocketAddr>() else {
        eprintln!("UPSTREAM_ADDR must be IP:PORT, got {upstream:?}\n{usage}");
        return ExitCode::from(2);
    };
    let threads = match args.get(2).map(|t| t.parse::<usize>()) {
        None => 1,
        Some(Ok(n)) if (1..=256).contains(&n) => n,
        Some(_) => {
            eprintln!("THREADS must be 1..=256\n{usage}");
            return ExitCode::from(2);
        }
    };
    let driver = match args.get(3).map(String::as_str) {
        None | Some("legacy") => Driver::Legacy,
        Some("uring") => Driver::Uring,
        Some(other) => {
            eprintln!("the driver is legacy or uring, got {other:?}\n{usage}");
            return ExitCode::from(2);
        }
    };
    let lean = match args.get(4).map(String::as_str) {
        None | Some("full") => false,
        Some("lean") => true,
        Some(other) => {
            eprintln!("the feature layer is full or lean, got {other:?}\n{usage}");
            return ExitCode::from(2);
        }
    };
    if args.len() > 5 {
        eprintln!("{usage}");
        return ExitCode::from(2);
    }
    match run(listen, upstream, threads, driver, lean) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("monoio-features: {error}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lean_route_match_gives_the_same_rows() {
        let paths = [
            "/",
            "/signup",
            "/login",
            "/validate",
            "/.well-known/jwks.json",
            "/upload",
            "/download",
            "/jobs",
            "/jobs/",
            "/jobs/42",
            "/jobs/42/",
            "/jobs/42/x",
            "/posts",
            "/posts/create",
            "/posts/7",
            "/posts/7/comments",
            "/posts//comments",
            "/posts/7/comments/",
            "/posts/7/commentsx",
            "/events",
            "/eventsx",
            "/nowhere",
            "/jobs42",
            "",
            "/posts/a/b/comments",
        ];
        for method in [
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::DELETE,
            Method::HEAD,
        ] {
            for path in paths {
                assert_eq!(
                    lean_route_of(&method, path),
                    route_of(&method, path),
                    "{method} {path}"
                );
            }
        }
        assert_eq!(lean_route_of(&Method::GET, "/jobs/42"), Some(7));
        assert_eq!(lean_route_of(&Method::PUT, "/posts/1/comments"), Some(11));
    }
}
