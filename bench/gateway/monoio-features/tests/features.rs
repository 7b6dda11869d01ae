//! The monoio proxy with the gateway's features, with either driver and either way of
//! writing them (`full`, as the hyper gateway's layers do it, and `lean`): a guarded route needs
//! the start-up token (401 without it, 200 with it); the upstream gets the gateway's
//! forwarded head (hop-by-hop headers gone, `X-Forwarded-*`, its own `Host`, a request id,
//! the continued `traceparent`); the client gets the request id echoed, `Vary`, no
//! hop-by-hop header from the upstream; one upstream connection serves sequential requests;
//! an unknown route is a 404 problem; the request metrics count by route. Standard library
//! only: a real upstream socket, the real binary.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const BINARY: &str = env!("CARGO_BIN_EXE_monoio-features");

/// An upstream answering every request with the request line and head it received as its
/// body, with `connection: keep-alive` and `keep-alive: timeout=5` (hop-by-hop, which the
/// proxy must not pass on); counts the connections it accepts.
fn upstream() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind upstream");
    let addr = listener.local_addr().expect("address");
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            count.fetch_add(1, Ordering::SeqCst);
            std::thread::spawn(move || serve(stream));
        }
    });
    (addr, accepted)
}

fn serve(stream: TcpStream) {
    let mut writer = stream.try_clone().expect("clone");
    let mut reader = BufReader::new(stream);
    loop {
        let mut head = String::new();
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        head.push_str(&line);
        let mut length = 0;
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            if header == "\r\n" {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().expect("length");
                }
            }
            head.push_str(&header.to_ascii_lowercase());
        }
        let mut request_body = vec![0; length];
        if reader.read_exact(&mut request_body).is_err() {
            return;
        }
        // A request for a path with `slow` in it is answered after 3 s.
        if head.lines().next().is_some_and(|l| l.contains("slow")) {
            std::thread::sleep(Duration::from_secs(3));
        }
        let answer = format!(
            "HTTP/1.1 200 OK\r\nconnection: keep-alive\r\nkeep-alive: timeout=5\r\ncontent-length: {}\r\n\r\n{head}",
            head.len()
        );
        if writer.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

struct Proxy(Child);

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// One request on `stream` (kept alive).
fn send(stream: &mut TcpStream, head: &str) -> Answer {
    write!(stream, "{head}\r\n").expect("send");
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut status = String::new();
    reader.read_line(&mut status).expect("status line");
    let status = status
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    let (mut length, mut headers) = (0, Vec::new());
    loop {
        let mut header = String::new();
        reader.read_line(&mut header).expect("header");
        if header == "\r\n" {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            let (name, value) = (name.to_ascii_lowercase(), value.trim().to_owned());
            if name == "content-length" {
                length = value.parse().expect("length");
            }
            headers.push((name, value));
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).expect("body");
    Answer {
        status,
        headers,
        body: String::from_utf8(body).expect("utf-8"),
    }
}

/// Starts the proxy in front of `upstream`; returns it, a connection to it and the
/// start-up token, or None if the driver cannot run on this kernel.
fn proxy(
    upstream: SocketAddr,
    driver: &str,
    layer: &str,
    metrics: bool,
) -> Option<(Proxy, TcpStream, String)> {
    proxy_with(upstream, driver, layer, metrics, &[])
}

fn proxy_with(
    upstream: SocketAddr,
    driver: &str,
    layer: &str,
    metrics: bool,
    env: &[(&str, &str)],
) -> Option<(Proxy, TcpStream, String)> {
    let port = free_port();
    let token_file = std::env::temp_dir().join(format!("monoio-features-token-{port}"));
    let mut command = Command::new(BINARY);
    command
        .args([
            format!("127.0.0.1:{port}"),
            upstream.to_string(),
            "1".into(),
            driver.into(),
            layer.into(),
        ])
        .env("MONOIO_FEATURES_TOKEN_FILE", &token_file)
        .envs(env.iter().copied())
        .stdout(if metrics {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stderr(Stdio::piped());
    if metrics {
        command.env("MONOIO_FEATURES_PRINT_METRICS", "1");
    }
    let mut proxy = Proxy(command.spawn().expect("start monoio-features"));
    let deadline = Instant::now() + Duration::from_secs(20);
    let stream = loop {
        if let Some(exit) = proxy.0.try_wait().expect("wait") {
            let mut stderr = String::new();
            let _ = proxy
                .0
                .stderr
                .take()
                .expect("stderr")
                .read_to_string(&mut stderr);
            assert_eq!(driver, "uring", "the proxy exited ({exit}): {stderr}");
            eprintln!("skipped: io_uring is not available here ({exit}): {stderr}");
            return None;
        }
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(stream) => break stream,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => panic!("the proxy did not listen: {e}"),
        }
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let token = std::fs::read_to_string(&token_file).expect("token file");
    let _ = std::fs::remove_file(&token_file);
    Some((proxy, stream, token))
}

#[test]
fn forwards_as_the_gateway_does() {
    for (driver, layer) in [
        ("legacy", "full"),
        ("uring", "full"),
        ("legacy", "lean"),
        ("uring", "lean"),
    ] {
        let label = format!("{driver}, {layer}");
        let (upstream, accepted) = upstream();
        let Some((_proxy, mut stream, token)) = proxy(upstream, driver, layer, false) else {
            continue;
        };
        // A guarded route without a token: refused before the upstream is called.
        let refused = send(&mut stream, "GET /jobs/7 HTTP/1.1\r\nhost: bench\r\n");
        assert_eq!(refused.status, 401, "{label}");
        assert_eq!(
            refused.header("www-authenticate"),
            Some("Bearer"),
            "{label}"
        );
        assert_eq!(accepted.load(Ordering::SeqCst), 0, "{label}");
        // A bad token: refused too.
        let forged = send(
            &mut stream,
            &format!("GET /jobs/7 HTTP/1.1\r\nhost: bench\r\nauthorization: Bearer {token}x\r\n"),
        );
        assert_eq!(forged.status, 401, "{label}");
        for i in 0..5 {
            let trace = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
            let answer = send(
                &mut stream,
                &format!(
                    "GET /jobs/{i}?x=1 HTTP/1.1\r\nhost: bench\r\nauthorization: Bearer {token}\r\n\
                     traceparent: {trace}\r\nconnection: keep-alive, x-hop\r\nx-hop: 1\r\n\
                     x-forwarded-for: 203.0.113.9\r\n"
                ),
            );
            assert_eq!(answer.status, 200, "{label}: {}", answer.body);
            let seen = &answer.body;
            assert!(
                seen.starts_with(&format!("GET /jobs/{i}?x=1 HTTP/1.1\r\n")),
                "{seen}"
            );
            assert!(seen.contains(&format!("host: {upstream}\r\n")), "{seen}");
            assert!(seen.contains("x-forwarded-host: bench\r\n"), "{seen}");
            assert!(seen.contains("x-forwarded-proto: http\r\n"), "{seen}");
            assert!(
                seen.contains("x-forwarded-for: 203.0.113.9, 127.0.0.1\r\n"),
                "{seen}"
            );
            assert!(!seen.contains("connection:"), "{seen}");
            assert!(!seen.contains("x-hop"), "{seen}");
            assert!(
                seen.contains(&format!(
                    "authorization: bearer {}",
                    token.to_ascii_lowercase()
                )),
                "{seen}"
            );
            // The trace continued: same trace id, a span id of the gateway's.
            let forwarded = seen
                .lines()
                .find_map(|l| l.strip_prefix("traceparent: "))
                .expect("traceparent");
            assert!(
                forwarded.starts_with("00-0af7651916cd43dd8448eb211c80319c-"),
                "{forwarded}"
            );
            assert!(!forwarded.contains("b7ad6b7169203331"), "{forwarded}");
            // A request id was made, sent on and echoed.
            let id = answer.header("x-request-id").expect("x-request-id");
            assert_eq!(id.len(), 36, "{id}");
            assert!(seen.contains(&format!("x-request-id: {id}\r\n")), "{seen}");
            assert_eq!(
                answer.header("vary"),
                Some("origin, access-control-request-method, access-control-request-headers")
            );
            assert_eq!(answer.header("connection"), None, "{label}");
            assert_eq!(answer.header("keep-alive"), None, "{label}");
        }
        // An open route needs no token; a client's well-formed request id is kept.
        let open = send(
            &mut stream,
            "GET /posts HTTP/1.1\r\nhost: bench\r\nx-request-id: abc-1\r\n",
        );
        assert_eq!(open.status, 200, "{label}");
        assert_eq!(open.header("x-request-id"), Some("abc-1"));
        assert!(
            open.body.contains("x-request-id: abc-1\r\n"),
            "{}",
            open.body
        );
        // No row names it: 404, the upstream not called.
        let unknown = send(&mut stream, "GET /nowhere HTTP/1.1\r\nhost: bench\r\n");
        assert_eq!(unknown.status, 404, "{label}");
        // Sequential requests reuse the pooled upstream connection.
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "{label}");
    }
}

#[test]
fn an_upstream_slower_than_the_route_timeout_is_a_503_problem() {
    for layer in ["full", "lean"] {
        let (upstream, _) = upstream();
        let (_proxy, mut stream, _) = proxy_with(
            upstream,
            "legacy",
            layer,
            false,
            &[("MONOIO_FEATURES_ROUTE_TIMEOUT_MS", "300")],
        )
        .expect("legacy runs");
        let started = Instant::now();
        let answer = send(&mut stream, "GET /posts?slow=1 HTTP/1.1\r\nhost: bench\r\n");
        let took = started.elapsed();
        assert_eq!(answer.status, 503, "{layer}: {}", answer.body);
        assert_eq!(
            answer.header("content-type"),
            Some("application/problem+json"),
            "{layer}"
        );
        assert!(
            answer.body.contains("took too long"),
            "{layer}: {}",
            answer.body
        );
        assert!(
            took >= Duration::from_millis(300) && took < Duration::from_millis(2500),
            "{layer}: answered after {took:?}"
        );
    }
}

#[test]
fn counts_requests_by_route_method_and_status() {
    for layer in ["full", "lean"] {
        counts_requests_with(layer);
    }
}

fn counts_requests_with(layer: &str) {
    let (upstream, _) = upstream();
    let (mut proxy, mut stream, token) =
        proxy(upstream, "legacy", layer, true).expect("legacy runs");
    for _ in 0..3 {
        let answer = send(
            &mut stream,
            &format!("GET /jobs/1 HTTP/1.1\r\nhost: bench\r\nauthorization: Bearer {token}\r\n"),
        );
        assert_eq!(answer.status, 200);
    }
    assert_eq!(
        send(&mut stream, "GET /download HTTP/1.1\r\nhost: bench\r\n").status,
        401
    );
    let pid = proxy.0.id().to_string();
    Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    let mut text = String::new();
    proxy
        .0
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut text)
        .expect("metrics");
    let line = |route: &str, status: &str| {
        text.lines()
            .find(|l| {
                l.starts_with("http_requests_total{")
                    && l.contains("service=\"gateway\"")
                    && l.contains("method=\"GET\"")
                    && l.contains(&format!("route=\"{route}\""))
                    && l.contains(&format!("status=\"{status}\""))
            })
            .map(|l| l.rsplit(' ').next().unwrap_or_default().to_owned())
    };
    assert_eq!(line("/jobs/{id}", "200").as_deref(), Some("3"), "{text}");
    assert_eq!(line("/download", "401").as_deref(), Some("1"), "{text}");
    assert!(
        text.contains("http_request_duration_seconds_bucket{"),
        "{text}"
    );
}

#[test]
fn refuses_arguments_it_cannot_use() {
    for args in [
        vec![],
        vec!["127.0.0.1:1"],
        vec!["not-an-address", "127.0.0.1:2"],
        vec!["127.0.0.1:1", "not-an-address"],
        vec!["127.0.0.1:1", "127.0.0.1:2", "0"],
        vec!["127.0.0.1:1", "127.0.0.1:2", "1", "sometimes"],
        vec!["127.0.0.1:1", "127.0.0.1:2", "1", "legacy", "more"],
        vec!["127.0.0.1:1", "127.0.0.1:2", "1", "legacy", "lean", "more"],
    ] {
        let out = Command::new(BINARY).args(&args).output().expect("run");
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("usage"),
            "{args:?}"
        );
    }
}
