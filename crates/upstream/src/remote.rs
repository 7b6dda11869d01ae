//! The innermost part of a remote upstream: pick an endpoint (power of two choices,
//! least outstanding requests, ejected endpoints avoided) and forward the request to it
//! with its body streaming through, hop-by-hop headers removed and `X-Forwarded-*` set.

use std::{
    convert::Infallible,
    future::{Future, Ready, ready},
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::Poll,
};

use axum::{
    extract::Request,
    response::{IntoResponse, Response},
};
use futures::future::{BoxFuture, Either};
use http::{HeaderName, HeaderValue, Uri, header, uri::PathAndQuery};
use platform::Problem;

use crate::{
    discovery::{Endpoint, Endpoints, InFlight},
    pool::SendError,
};

/// Marks a response the gateway made because the upstream could not be reached (the
/// request was not processed), so retries know it is safe to try elsewhere.
#[derive(Debug, Clone, Copy)]
pub struct Unreachable;

/// The endpoint that produced a response a retry may follow (response extension: an
/// overload status, or the gateway's own answer when the endpoint failed).
#[derive(Debug, Clone, Copy)]
pub struct ServedBy(pub SocketAddr);

/// Endpoints a retry should not pick again (request extension).
#[derive(Debug, Clone, Default)]
pub struct AvoidEndpoints(pub Vec<SocketAddr>);

/// Headers that belong to one connection and must not be forwarded (RFC 9110 §7.6.1).
static HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
];

#[derive(Clone)]
pub struct Balancer {
    name: &'static str,
    endpoints: Arc<Endpoints>,
}

impl Balancer {
    pub fn new(name: &'static str, endpoints: Arc<Endpoints>) -> Self {
        Self { name, endpoints }
    }

    /// Power of two choices over the endpoints that are not ejected and not to be
    /// avoided; failing that over those not ejected; failing that over all of them
    /// (better to try than to refuse everything). No allocation: this runs per request.
    fn pick(&self, avoid: &[SocketAddr]) -> Option<Arc<Endpoint>> {
        let all = self.endpoints.snapshot();
        let preferred = |e: &Endpoint| !e.is_ejected() && !avoid.contains(&e.addr);
        let healthy = |e: &Endpoint| !e.is_ejected();
        let any = |_: &Endpoint| true;
        let tiers: [&dyn Fn(&Endpoint) -> bool; 3] = [&preferred, &healthy, &any];
        for tier in tiers {
            let n = all.iter().filter(|e| tier(e)).count();
            let nth = |i: usize| all.iter().filter(|e| tier(e)).nth(i).cloned();
            match n {
                0 => continue,
                1 => return nth(0),
                n => {
                    let a = fastrand::usize(..n);
                    let mut b = fastrand::usize(..n - 1);
                    if b >= a {
                        b += 1;
                    }
                    let (a, b) = (nth(a)?, nth(b)?);
                    return Some(if a.in_flight() <= b.in_flight() { a } else { b });
                }
            }
        }
        None
    }
}

/// A response the gateway answers itself, or a request forwarded to an endpoint.
pub type BalancerFuture = Either<Ready<Result<Response, Infallible>>, Forward>;

impl tower::Service<Request> for Balancer {
    type Response = Response;
    type Error = Infallible;
    type Future = BalancerFuture;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: Request) -> Self::Future {
        let avoid = request.extensions_mut().remove::<AvoidEndpoints>();
        let Some(endpoint) = self.pick(avoid.as_ref().map_or(&[], |a| &a.0)) else {
            let mut response = Problem::service_unavailable(format!(
                "no instance of the {} service is known yet",
                self.name
            ))
            .with_retry_after(1)
            .into_response();
            response.extensions_mut().insert(Unreachable);
            return Either::Left(ready(Ok(response)));
        };
        // Origin-form over HTTP/1.1 (whatever the client spoke, so the upstream keeps the
        // connection): the request goes to the endpoint's connection as `/path?query`.
        *request.uri_mut() = origin_form(request.uri());
        *request.version_mut() = http::Version::HTTP_11;
        prepare_forwarded_headers(&mut request, endpoint.host_header.clone());
        let in_flight = Some(endpoint.start());
        let sent = Box::pin(crate::pool::send(endpoint.addr, request));
        Either::Right(Forward {
            sent,
            endpoint,
            in_flight,
            name: self.name,
        })
    }
}

pin_project_lite::pin_project! {
    /// A request on its way to one endpoint: counts as in flight there until the response
    /// head arrives, then tells the endpoint's health how it went.
    pub struct Forward {
        sent: BoxFuture<'static, Result<Response, SendError>>,
        endpoint: Arc<Endpoint>,
        in_flight: Option<InFlight>,
        name: &'static str,
    }
}

impl Future for Forward {
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let outcome = std::task::ready!(this.sent.as_mut().poll(cx));
        this.in_flight.take();
        Poll::Ready(Ok(settle(this.name, this.endpoint, outcome)))
    }
}

/// The response to a forwarded request, and what it says about the endpoint's health.
fn settle(
    name: &'static str,
    endpoint: &Endpoint,
    outcome: Result<Response, SendError>,
) -> Response {
    match outcome {
        Ok(response) => {
            let (mut parts, body) = response.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            if is_overload(parts.status) {
                endpoint.record_failure();
                // Only a response a retry may follow says where it came from: the first
                // extension of a response allocates its map.
                parts.extensions.insert(ServedBy(endpoint.addr));
            } else {
                endpoint.record_success();
            }
            Response::from_parts(parts, body)
        }
        Err(SendError::ClientBody(error)) => {
            // The client's own body broke off (or was malformed): nothing to hold against
            // the endpoint, and nothing for the breaker either.
            tracing::debug!(upstream = name, %error, "the client's request body failed");
            match platform::http::BodyTooSlow::in_chain(&error) {
                // Below the connection layer's minimum rate: the client's timeout.
                Some(slow) => Problem::new(
                    http::StatusCode::REQUEST_TIMEOUT,
                    format!("the request body arrived too slowly: {slow}"),
                ),
                None => {
                    Problem::bad_request(format!("the request body could not be read: {error}"))
                }
            }
            .into_response()
        }
        Err(error) => {
            // A refused or timed-out connection says the instance is down: take it out
            // at once rather than let four more requests find out.
            if error.is_connect() {
                endpoint.eject();
            } else {
                endpoint.record_failure();
            }
            tracing::warn!(upstream = name, endpoint = %endpoint.addr, %error, "upstream request failed");
            let mut response = if error.is_connect() {
                // Nothing was sent: the service is down (or not up yet). That is the
                // service being unavailable, which a client may try again shortly.
                let mut response = Problem::service_unavailable(format!(
                    "the {name} service is unavailable; try again shortly"
                ))
                .with_retry_after(UNREACHABLE_RETRY_AFTER_SECS)
                .into_response();
                response.extensions_mut().insert(Unreachable);
                response
            } else {
                Problem::new(
                    http::StatusCode::BAD_GATEWAY,
                    format!("the {name} service could not be reached"),
                )
                .into_response()
            };
            response.extensions_mut().insert(ServedBy(endpoint.addr));
            response
        }
    }
}

/// The `Retry-After` of a route whose service refused the connection (it is down or
/// still starting; Kubernetes restarts or the operator brings it back in seconds).
const UNREACHABLE_RETRY_AFTER_SECS: u64 = 2;

/// Statuses that say "this instance cannot serve now", as opposed to "your request failed".
pub fn is_overload(status: http::StatusCode) -> bool {
    matches!(status.as_u16(), 502..=504)
}

/// The path and query of `original`, which is what an origin server is sent.
fn origin_form(original: &Uri) -> Uri {
    let path_and_query = original
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    Uri::from(path_and_query)
}

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

fn strip_hop_by_hop(headers: &mut http::HeaderMap) {
    // One pass over the (few) names, noting which hop-by-hop ones are there: most
    // messages carry none or only `Connection`, and a removal costs a lookup.
    let mut present = [false; HOP_BY_HOP.len()];
    for name in headers.keys() {
        // By the name's text: a `match` on strings compares lengths first, where
        // comparing `HeaderName`s compares every custom name's bytes with each entry.
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
    // Headers named in `Connection` are hop-by-hop too (`keep-alive` and `close` are
    // options, not names, and usually all there is: such a value is not split).
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter(|v| !is_connection_option(v))
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

/// Whether a `Connection` value is only the option `keep-alive` or `close`.
fn is_connection_option(value: &HeaderValue) -> bool {
    let value = value.as_bytes().trim_ascii();
    value.eq_ignore_ascii_case(b"keep-alive") || value.eq_ignore_ascii_case(b"close")
}

/// The client's address as a header value; IPv4 written directly (this runs per request).
fn address_value(ip: std::net::IpAddr) -> Option<HeaderValue> {
    let std::net::IpAddr::V4(v4) = ip else {
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

/// Appends the connection's peer (the client, as this gateway sees it) to `request`'s
/// `X-Forwarded-For`.
pub fn append_client_address(request: &mut Request) {
    let Some(peer) = platform::forwarded::peer_of(request) else {
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

fn prepare_forwarded_headers(request: &mut Request, upstream_host: Option<HeaderValue>) {
    strip_hop_by_hop(request.headers_mut());
    append_client_address(request);
    let headers = request.headers_mut();
    // The client's `Host` comes back from the insert that replaces it: one lookup.
    let original_host = match upstream_host {
        Some(host) => headers.insert(header::HOST, host),
        None => {
            let host = headers.get(header::HOST).cloned();
            // HTTP/1.1 needs a `Host`; an HTTP/1.0 client may not have sent one.
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

#[cfg(test)]
mod tests {
    use axum::body::Body;

    use super::*;
    use axum::extract::ConnectInfo;

    #[test]
    fn the_upstream_gets_the_path_and_query() {
        let target = origin_form(&"/download?fid=abc".parse().expect("valid"));
        assert_eq!(target.to_string(), "/download?fid=abc");
        let absolute = origin_form(&"http://gateway:8080/jobs".parse().expect("valid"));
        assert_eq!(absolute.to_string(), "/jobs");
    }

    /// The names of `headers` left once the hop-by-hop ones are stripped.
    fn stripped(headers: &[(&'static str, &'static str)]) -> Vec<String> {
        let mut map = http::HeaderMap::new();
        for (name, value) in headers {
            map.insert(*name, HeaderValue::from_static(value));
        }
        strip_hop_by_hop(&mut map);
        map.keys().map(ToString::to_string).collect()
    }

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let left = stripped(&[
            ("connection", "close, x-secret-hop"),
            ("x-secret-hop", "1"),
            ("upgrade", "websocket"),
            ("authorization", "Bearer t"),
        ]);
        assert_eq!(left, ["authorization"]);
    }

    #[test]
    fn every_hop_by_hop_header_alone_is_removed() {
        for name in &HOP_BY_HOP {
            let mut headers = http::HeaderMap::new();
            headers.insert(name.clone(), HeaderValue::from_static("x"));
            headers.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
            strip_hop_by_hop(&mut headers);
            assert!(!headers.contains_key(name), "{name}");
            assert!(headers.contains_key(header::ACCEPT));
        }
    }

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "192.0.2.4",
            "10.20.100.255",
            "::1",
            "2001:db8::7",
        ] {
            let ip: std::net::IpAddr = ip.parse().expect("address");
            assert_eq!(address_value(ip).expect("value"), ip.to_string().as_str());
        }
    }

    #[test]
    fn keep_alive_alone_leaves_only_the_connection_header_to_remove() {
        let left = stripped(&[
            ("connection", "keep-alive"),
            ("keep-alive", "timeout=5"),
            ("content-type", "text/plain"),
        ]);
        assert_eq!(left, ["content-type"]);
    }

    #[test]
    fn connection_options_name_no_header() {
        // `close` and `keep-alive` in `Connection` are options, in any case and spacing,
        // not names of headers to remove.
        for value in ["close", " Close ", "KEEP-ALIVE", "keep-alive, close"] {
            let mut map = http::HeaderMap::new();
            map.insert(header::CONNECTION, HeaderValue::from_static(value));
            map.insert("close", HeaderValue::from_static("1"));
            map.insert("keep-alive", HeaderValue::from_static("timeout=5"));
            strip_hop_by_hop(&mut map);
            let left: Vec<_> = map.keys().map(ToString::to_string).collect();
            assert_eq!(left, ["close"], "{value}");
        }
    }

    #[test]
    fn forwarded_headers_name_the_client_and_the_upstream_host() {
        let mut request = Request::builder()
            .uri("/jobs")
            .header(header::HOST, "flotilla.example")
            .header("x-forwarded-for", "203.0.113.9")
            .body(Body::empty())
            .expect("request");
        request.extensions_mut().insert(ConnectInfo::<SocketAddr>(
            "192.0.2.4:5555".parse().expect("addr"),
        ));
        prepare_forwarded_headers(&mut request, Some(HeaderValue::from_static("media:8080")));
        let headers = request.headers();
        assert_eq!(headers["x-forwarded-for"], "203.0.113.9, 192.0.2.4");
        assert_eq!(headers["x-forwarded-host"], "flotilla.example");
        assert_eq!(headers["x-forwarded-proto"], "http");
        assert_eq!(headers[header::HOST], "media:8080");
    }
}
