//! The gateway in front of real HTTP upstreams on loopback: balancing, passive ejection,
//! retries, the circuit breaker, load shedding and per-client rate limits.

use std::{net::SocketAddr, time::Duration};

use axum::{
    Router,
    routing::{get, post},
};
use gateway::{
    Args, Upstreams, parse_upstream_url,
    resilience::{BreakerSettings, Policy},
};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A tiny upstream that answers `GET|POST /posts` with its own name.
struct Instance {
    addr: SocketAddr,
    stop: CancellationToken,
    task: JoinHandle<std::io::Result<()>>,
}

async fn instance(name: &'static str, addr: SocketAddr) -> Instance {
    let routes =
        Router::new()
            .route(
                "/posts",
                get(
                    move |uri: axum::http::Uri,
                          axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<
                        SocketAddr,
                    >| async move {
                        match uri.query() {
                            // `?slow` holds the request for a while, to fill in-flight slots.
                            Some("slow") => {
                                tokio::time::sleep(Duration::from_millis(500)).await;
                                name.into()
                            }
                            // `?peer`: the gateway's end of the connection it came on.
                            Some("peer") => axum::body::Body::from(peer.to_string()),
                            // `?big`: 8 MiB, more than a client reading one chunk gets.
                            Some("big") => axum::body::Body::from(vec![b'x'; 8 << 20]),
                            _ => name.into(),
                        }
                    },
                )
                .post(move || async move { name }),
            )
            // Reads the whole body before it answers.
            .route("/posts/create", post(|body: String| async move { body }))
            .route("/readyz", get(|| async { "ok" }));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .expect("bind upstream");
    let addr = listener.local_addr().expect("address");
    let stop = CancellationToken::new();
    let task = tokio::spawn(platform::http::serve(
        listener,
        routes,
        stop.clone(),
        Duration::from_secs(1),
    ));
    Instance { addr, stop, task }
}

impl Instance {
    async fn shut(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

struct Gateway {
    base: String,
    client: reqwest::Client,
    stop: CancellationToken,
}

/// The gateway as `flotilla serve gateway` serves it: its fast path first, then its router.
async fn gateway(urls: &str, policy: Policy, args: Args) -> Gateway {
    gateway_serving(urls, policy, args, Serving::Entry).await
}

#[derive(Clone, Copy, PartialEq)]
enum Serving {
    /// `ServiceApp::into_entry`: the fast path, then the router.
    Entry,
    /// `ServiceApp::into_router`: the router alone.
    Router,
}

async fn gateway_serving(urls: &str, policy: Policy, args: Args, serving: Serving) -> Gateway {
    let url = parse_upstream_url(urls).expect("valid upstream URLs");
    let upstreams = Upstreams::new()
        .remote("query", url.clone(), &policy)
        .remote("posts", url, &policy);
    let stop = CancellationToken::new();
    let app = gateway::build(upstreams, &args);
    let entry = match serving {
        Serving::Entry => app.into_entry(stop.clone()),
        Serving::Router => app.into_router(stop.clone()).into(),
    };
    let listener = platform::http::bind("127.0.0.1:0".parse().expect("literal"))
        .await
        .expect("bind gateway");
    let base = format!("http://{}", listener.local_addr().expect("address"));
    tokio::spawn(platform::http::serve(
        listener,
        entry,
        stop.clone(),
        Duration::from_secs(1),
    ));
    // Discovery runs in the background; wait for the first resolution.
    tokio::time::sleep(Duration::from_millis(50)).await;
    Gateway {
        base,
        client: client(),
        stop,
    }
}

impl Gateway {
    async fn text(&self, path: &str) -> String {
        self.get(path).await.text().await.expect("body")
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .expect("gateway answers")
    }
}

/// A gateway in front of one upstream, with the default policy and no rate limit.
async fn plain_gateway(upstream: SocketAddr) -> Gateway {
    gateway(
        &format!("http://{upstream}"),
        Policy::default(),
        no_rate_limit(),
    )
    .await
}

fn no_rate_limit() -> Args {
    Args {
        gateway_rate_limit: 0,
        ..Args::default()
    }
}

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().expect("literal")
}

/// A port that nothing listens on (bound, then released).
fn closed_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
}

#[tokio::test]
async fn requests_are_spread_over_every_endpoint() {
    let a = instance("a", any_port()).await;
    let b = instance("b", any_port()).await;
    let gw = gateway(
        &format!("http://{},http://{}", a.addr, b.addr),
        Policy::default(),
        no_rate_limit(),
    )
    .await;
    let mut seen = std::collections::HashMap::new();
    for _ in 0..40 {
        let response = gw.get("/posts").await;
        assert_eq!(response.status(), 200);
        *seen
            .entry(response.text().await.expect("body"))
            .or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 2, "both instances served: {seen:?}");
    gw.stop.cancel();
    a.shut().await;
    b.shut().await;
}

#[tokio::test]
async fn a_dead_endpoint_is_retried_around_and_ejected() {
    let live = instance("live", any_port()).await;
    let dead = closed_port();
    let gw = gateway(
        &format!("http://{dead},http://{}", live.addr),
        Policy::default(),
        no_rate_limit(),
    )
    .await;
    // Idempotent requests never see the dead endpoint: they are retried elsewhere.
    for _ in 0..20 {
        let response = gw.get("/posts").await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.text().await.expect("body"), "live");
    }
    // After enough failures the dead endpoint is ejected, so even POSTs (never retried)
    // stop failing.
    let mut last_failures = 0;
    for round in 0..40 {
        let response = gw
            .client
            .post(format!("{}/posts", gw.base))
            .send()
            .await
            .expect("gateway answers");
        if response.status() != 200 {
            // The refused connection: the instance is unavailable, come back shortly.
            assert_eq!(response.status(), 503);
            assert!(response.headers().contains_key("retry-after"));
            last_failures = round;
        }
    }
    assert!(
        last_failures < 20,
        "dead endpoint still chosen at round {last_failures}"
    );
    gw.stop.cancel();
    live.shut().await;
}

#[tokio::test]
async fn the_breaker_opens_while_the_upstream_is_down_and_closes_when_it_returns() {
    let up = instance("up", any_port()).await;
    let addr = up.addr;
    let policy = Policy {
        max_retries: 0,
        breaker: BreakerSettings {
            min_requests: 5,
            open_for: Duration::from_millis(300),
            ..BreakerSettings::default()
        },
        ..Policy::default()
    };
    let gw = gateway(&format!("http://{addr}"), policy, no_rate_limit()).await;
    assert_eq!(gw.get("/posts").await.status(), 200);

    up.shut().await;
    let mut statuses = Vec::new();
    for _ in 0..10 {
        statuses.push(gw.get("/posts").await.status().as_u16());
    }
    // Refused connections are 503 (with Retry-After) before the breaker opens too.
    assert!(statuses.iter().all(|s| *s == 503), "{statuses:?}");
    let open = gw.get("/posts").await;
    assert_eq!(open.status(), 503, "{statuses:?}");
    assert!(open.headers().contains_key("retry-after"));
    let problem: serde_json::Value = open.json().await.expect("problem+json");
    assert_eq!(problem["title"], "Circuit open");

    // The upstream comes back on the same address; after `open_for` a probe closes the
    // breaker again.
    let back = instance("back", addr).await;
    let mut recovered = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let response = gw.get("/posts").await;
        if response.status() == 200 {
            recovered = true;
            break;
        }
    }
    assert!(recovered, "the breaker never closed");
    gw.stop.cancel();
    back.shut().await;
}

#[tokio::test]
async fn load_beyond_the_in_flight_limit_is_shed_not_queued() {
    let up = instance("up", any_port()).await;
    let policy = Policy {
        max_in_flight: 1,
        ..Policy::default()
    };
    let gw = gateway(&format!("http://{}", up.addr), policy, no_rate_limit()).await;
    let slow = {
        let client = gw.client.clone();
        let url = format!("{}/posts?slow", gw.base);
        tokio::spawn(async move { client.get(url).send().await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let shed = gw.get("/posts").await;
    assert_eq!(shed.status(), 503);
    assert_eq!(shed.headers()["retry-after"], "1");
    let slow = slow.await.expect("joined").expect("answered");
    assert_eq!(slow.status(), 200, "the request holding the slot completes");
    assert_eq!(
        gw.get("/posts").await.status(),
        200,
        "and the slot is free again"
    );
    gw.stop.cancel();
    up.shut().await;
}

#[tokio::test]
async fn a_client_over_its_rate_gets_429_with_retry_after() {
    let up = instance("up", any_port()).await;
    let args = Args {
        gateway_rate_limit: 5,
        ..Args::default()
    };
    let gw = gateway(&format!("http://{}", up.addr), Policy::default(), args).await;
    let mut limited = None;
    for _ in 0..30 {
        let response = gw.get("/posts").await;
        if response.status() == 429 {
            limited = Some(response);
            break;
        }
        assert_eq!(response.status(), 200);
    }
    let limited = limited.expect("the limit was reached");
    assert!(limited.headers().contains_key("retry-after"));
    assert_eq!(
        limited.headers()["content-type"],
        "application/problem+json"
    );
    // Health probes are not rate limited.
    assert_eq!(gw.get("/healthz").await.status(), 200);
    gw.stop.cancel();
    up.shut().await;
}

/// A plain HTTP client (installs the process's TLS provider first, see `platform::tls`).
fn client() -> reqwest::Client {
    platform::tls::install_crypto_provider();
    reqwest::Client::new()
}

#[tokio::test]
async fn the_web_ui_is_served_with_a_strict_content_security_policy() {
    let gw = gateway("http://127.0.0.1:9", Policy::default(), no_rate_limit()).await;
    let page = gw.get("/").await;
    assert_eq!(page.status(), 200);
    assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .expect("ascii")
        .to_owned();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    let etag = page.headers()["etag"].clone();
    assert!(page.text().await.expect("body").contains("/ui/app.js"));

    let script = gw.get("/ui/app.js").await;
    assert_eq!(script.status(), 200);
    assert_eq!(
        script.headers()["content-type"],
        "text/javascript; charset=utf-8"
    );

    let cached = gw
        .client
        .get(format!("{}/", gw.base))
        .header("if-none-match", etag)
        .send()
        .await
        .expect("sent");
    assert_eq!(cached.status(), 304);

    // The system map is the same page under its own path, with the same headers.
    let map = gw.get("/system").await;
    assert_eq!(map.status(), 200);
    assert_eq!(map.headers()["content-type"], "text/html; charset=utf-8");
    assert_eq!(map.headers()["cache-control"], "no-cache");
    assert_eq!(map.headers()["content-security-policy"], csp.as_str());
    assert!(map.text().await.expect("body").contains("/ui/app.js"));

    // The favicon, where the page links it and where browsers look without a link.
    for path in ["/ui/favicon.svg", "/favicon.ico"] {
        let icon = gw.get(path).await;
        assert_eq!(icon.status(), 200, "{path}");
        assert_eq!(icon.headers()["content-type"], "image/svg+xml", "{path}");
    }

    let missing = gw.get("/ui/nope.js").await;
    assert_eq!(missing.status(), 404);
    assert_eq!(
        missing.headers()["content-type"],
        "application/problem+json"
    );
    gw.stop.cancel();
}

/// The fast path answers what the router would: same status, body and headers (bar the
/// date) for proxied routes, guarded ones, other methods, unknown paths and CORS.
#[tokio::test]
async fn the_fast_path_and_the_router_give_the_same_answers() {
    let up = instance("up", any_port()).await;
    let urls = format!("http://{}", up.addr);
    let args = Args {
        gateway_cors_origins: vec!["http://localhost:3000".into()],
        ..no_rate_limit()
    };
    let fast = gateway_serving(&urls, Policy::default(), args.clone(), Serving::Entry).await;
    let routed = gateway_serving(&urls, Policy::default(), args, Serving::Router).await;
    let origin = ("origin", "http://localhost:3000");
    type Headers<'a> = &'a [(&'a str, &'a str)];
    let cases: [(&str, &str, Headers); 11] = [
        ("GET", "/posts", &[]),
        ("POST", "/posts", &[]),
        ("GET", "/posts", &[origin]),
        ("GET", "/posts", &[("origin", "http://elsewhere.example")]),
        (
            "OPTIONS",
            "/posts",
            &[origin, ("access-control-request-method", "POST")],
        ),
        ("HEAD", "/posts", &[]),
        ("DELETE", "/posts", &[]),
        ("GET", "/posts/", &[]),
        ("GET", "/jobs/7", &[]),
        ("GET", "/jobs/7", &[("authorization", "Bearer not-a-token")]),
        ("GET", "/nowhere", &[]),
    ];
    for (method, path, headers) in cases {
        let mut answers = Vec::new();
        for gw in [&fast, &routed] {
            let mut request = gw.client.request(
                method.parse().expect("method"),
                format!("{}{path}", gw.base),
            );
            request = request.header("x-request-id", "same-id");
            for (name, value) in headers {
                request = request.header(*name, *value);
            }
            let response = request.send().await.expect("gateway answers");
            let status = response.status();
            let mut head: Vec<(String, String)> = response
                .headers()
                .iter()
                .filter(|(name, _)| *name != "date")
                .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("?").to_owned()))
                .collect();
            head.sort();
            let body = response.text().await.expect("body");
            answers.push((status, head, body));
        }
        assert_eq!(answers[0], answers[1], "{method} {path} {headers:?}");
    }
    fast.stop.cancel();
    routed.stop.cancel();
    up.shut().await;
}

/// Upstream connections are kept and reused, one after the other; a response whose body
/// the client abandons half-way takes its connection with it (HTTP/1 cannot reuse it),
/// and the next request gets a new one.
#[tokio::test]
async fn upstream_connections_are_reused_and_an_abandoned_body_closes_its_own() {
    let up = instance("up", any_port()).await;
    let gw = plain_gateway(up.addr).await;
    let first = gw.text("/posts?peer").await;
    for _ in 0..5 {
        assert_eq!(
            gw.text("/posts?peer").await,
            first,
            "the idle connection was reused"
        );
    }
    let mut big = gw.get("/posts?big").await;
    assert_eq!(big.status(), 200);
    assert!(big.chunk().await.expect("a chunk").is_some());
    drop(big);
    // The abandoned exchange closed the connection it used (the pooled one).
    let after = gw.text("/posts?peer").await;
    assert_ne!(after, first, "a connection with unread bytes is not reused");
    for _ in 0..3 {
        assert_eq!(gw.text("/posts?peer").await, after);
    }
    gw.stop.cancel();
    up.shut().await;
}

/// An idle upstream connection that the upstream closed (here: it restarted) is not
/// mistaken for a failure: the request goes out on a new connection.
#[tokio::test]
async fn an_upstream_restart_does_not_fail_requests_on_its_old_connections() {
    let up = instance("before", any_port()).await;
    let addr = up.addr;
    let gw = plain_gateway(addr).await;
    assert_eq!(gw.get("/posts").await.text().await.expect("body"), "before");
    up.shut().await;
    let again = instance("after", addr).await;
    for _ in 0..5 {
        let response = gw.get("/posts").await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.text().await.expect("body"), "after");
    }
    gw.stop.cancel();
    again.shut().await;
}

/// A client that breaks off its own request body gets 400, and it is not counted against
/// the upstream: enough of them would otherwise open the breaker for everybody.
#[tokio::test]
async fn a_client_breaking_off_its_body_is_not_an_upstream_failure() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let up = instance("up", any_port()).await;
    let gw = plain_gateway(up.addr).await;
    let gateway_addr = gw.base.trim_start_matches("http://").to_owned();
    for _ in 0..15 {
        let mut stream = tokio::net::TcpStream::connect(&gateway_addr)
            .await
            .expect("connect");
        stream
            .write_all(
                b"POST /posts HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n40\r\nonly-part",
            )
            .await
            .expect("write");
        stream.shutdown().await.expect("half-close");
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 400"),
            "{answer}"
        );
    }
    let response = gw.get("/posts").await;
    assert_eq!(response.status(), 200, "the breaker stayed closed");
    gw.stop.cancel();
    up.shut().await;
}

/// An upload refused at the edge (no valid token) is read before it is answered, so the
/// client, still writing, gets the 401 rather than a connection closed under it (seen as a
/// reset): the proof is that the connection stays usable for the next request.
#[tokio::test]
async fn a_refused_upload_is_read_before_it_is_answered() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// One whole response (head and `Content-Length` body) from `stream`.
    async fn response(stream: &mut tokio::net::TcpStream) -> String {
        let mut buffer = Vec::new();
        loop {
            let text = String::from_utf8_lossy(&buffer).into_owned();
            if let Some(end) = text.find("\r\n\r\n") {
                let length = text[..end]
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                if buffer.len() >= end + 4 + length {
                    return text;
                }
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut chunk))
                .await
                .expect("in time")
                .expect("read");
            assert!(n > 0, "connection closed after {text:?}");
            buffer.extend_from_slice(&chunk[..n]);
        }
    }

    let gw = plain_gateway(closed_port()).await;
    let mut stream = tokio::net::TcpStream::connect(gw.base.trim_start_matches("http://"))
        .await
        .expect("connect");
    let length = 256 * 1024;
    let head = format!(
        "POST /upload HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer not-a-token\r\n\
         Content-Length: {length}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.expect("head");
    stream
        .write_all(&vec![7u8; length])
        .await
        .expect("the whole body");
    assert!(response(&mut stream).await.starts_with("HTTP/1.1 401"));
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("next request");
    assert!(response(&mut stream).await.starts_with("HTTP/1.1 200"));
    gw.stop.cancel();
}

/// Issue #14 item 7: a body trickled through the gateway is ended by the gateway's
/// minimum body rate and answered 408 (it used to wait for the route's timeout), and the
/// upstream is not blamed for it.
#[tokio::test]
async fn a_trickled_body_through_the_gateway_gets_408() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let up = instance("up", any_port()).await;
    let upstreams = Upstreams::new().remote(
        "posts",
        parse_upstream_url(&format!("http://{}", up.addr)).expect("url"),
        &Policy::default(),
    );
    let stop = CancellationToken::new();
    let listener = platform::http::bind(any_port())
        .await
        .expect("bind gateway");
    let gateway_addr = listener.local_addr().expect("address");
    tokio::spawn(platform::http::serve_on_threads(
        listener,
        gateway::build(upstreams, &no_rate_limit()).into_entry(stop.clone()),
        stop.clone(),
        Duration::from_secs(1),
        platform::http::ConnectionLimits {
            body_window: Duration::from_secs(1),
            ..platform::http::ConnectionLimits::default()
        },
        0,
    ));
    tokio::time::sleep(Duration::from_millis(50)).await;

    let started = std::time::Instant::now();
    let mut stream = tokio::net::TcpStream::connect(gateway_addr)
        .await
        .expect("connect");
    stream
        .write_all(b"POST /posts/create HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
        .await
        .expect("head");
    let mut answer = Vec::new();
    let mut buffer = [0u8; 1024];
    while started.elapsed() < Duration::from_secs(10) {
        let _ = stream.write_all(b"z").await;
        if let Ok(read) =
            tokio::time::timeout(Duration::from_millis(300), stream.read(&mut buffer)).await
        {
            match read {
                Ok(n) if n > 0 => answer.extend_from_slice(&buffer[..n]),
                _ => break,
            }
        }
        if answer.windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    stop.cancel();
    up.shut().await;
}
