//! Hostile clients at the connection level, over raw TCP: oversized or too many headers,
//! malformed request lines, slowloris heads and bodies. Each gets a clean 4xx/5xx or a
//! closed connection, promptly, and the server keeps serving everyone else.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use axum::{Router, routing::get, routing::post};
use platform::{
    ServiceApp,
    http::{ConnectionLimits, serve_on_threads},
    service::HttpLimits,
};
use tokio_util::sync::CancellationToken;

/// Tighter than the defaults, so that the tests reach them quickly.
fn tight() -> ConnectionLimits {
    ConnectionLimits {
        header_read_timeout: Duration::from_millis(500),
        max_header_bytes: 16 * 1024,
        max_headers: 50,
        max_connections: 64,
        ..ConnectionLimits::default()
    }
}

/// Runs the blocking client `check` against a server with `limits`, then makes sure the
/// server still serves everyone else.
async fn against(limits: ConnectionLimits, check: impl FnOnce(SocketAddr) + Send + 'static) {
    let (addr, shutdown) = start_with(limits).await;
    tokio::task::spawn_blocking(move || {
        check(addr);
        still_serving(addr);
    })
    .await
    .expect("joined");
    shutdown.cancel();
}

async fn start_with(limits: ConnectionLimits) -> (SocketAddr, CancellationToken) {
    let routes = Router::new()
        .route("/hello", get(|| async { "hello" }))
        .route("/echo", post(|body: String| async move { body }));
    let app = ServiceApp::new("edge-test", routes).with_limits(HttpLimits {
        request_timeout: Some(Duration::from_millis(700)),
        max_body_bytes: 64 * 1024,
    });
    let shutdown = CancellationToken::new();
    let listener = platform::http::bind("127.0.0.1:0".parse().expect("literal"))
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(serve_on_threads(
        listener,
        app.into_router(shutdown.clone()),
        shutdown.clone(),
        Duration::from_secs(1),
        limits,
        0,
    ));
    (addr, shutdown)
}

/// A connection to `addr` whose reads give up after `patience`.
fn connect(addr: SocketAddr, patience: Duration) -> TcpStream {
    let stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(patience)).expect("timeout");
    stream
}

/// Sends raw bytes and reads whatever comes back until the server closes or 3 s pass.
fn exchange(addr: SocketAddr, request: &[u8]) -> String {
    exchange_within(addr, request, Duration::from_secs(3))
}

/// [`exchange`], reading for at most `patience`.
fn exchange_within(addr: SocketAddr, request: &[u8], patience: Duration) -> String {
    let mut stream = connect(addr, patience);
    let _ = stream.write_all(request);
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

fn status_line(answer: &str) -> &str {
    answer.lines().next().unwrap_or("")
}

/// `answer` is a problem+json with `status`.
fn assert_problem(answer: &str, status: u16) {
    let expected = format!("HTTP/1.1 {status}");
    assert!(status_line(answer).starts_with(&expected), "{answer}");
    assert!(answer.contains("application/problem+json"), "{answer}");
}

fn still_serving(addr: SocketAddr) {
    let answer = exchange(
        addr,
        b"GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

/// The default limit (hyper's own, not set explicitly) is 100 header fields.
#[tokio::test(flavor = "multi_thread")]
async fn by_default_the_101st_header_field_gets_431() {
    against(ConnectionLimits::default(), |addr| {
        let request = |fields: usize| {
            let mut head = b"GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n".to_vec();
            for i in 2..fields {
                head.extend(format!("X-H{i}: 1\r\n").as_bytes());
            }
            head.extend(b"\r\n");
            head
        };
        assert!(status_line(&exchange(addr, &request(100))).starts_with("HTTP/1.1 200"));
        assert_eq!(
            status_line(&exchange(addr, &request(101))),
            "HTTP/1.1 431 Request Header Fields Too Large"
        );
    })
    .await;
}

/// The documented default head limit is 64 KiB (request line + headers): a head of
/// 64 KiB is served, one byte more gets 431 — and so does a 100 KB head that arrives in
/// one piece (the read buffer's limit alone let it through).
#[tokio::test(flavor = "multi_thread")]
async fn by_default_the_request_head_is_limited_to_64_kib() {
    against(ConnectionLimits::default(), |addr| {
        let head_of = |size: usize| {
            let start = b"GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Big: ";
            let mut head = start.to_vec();
            head.extend(std::iter::repeat_n(b'a', size - start.len() - 4));
            head.extend(b"\r\n\r\n");
            assert_eq!(head.len(), size);
            head
        };
        let answer = exchange(addr, &head_of(64 * 1024));
        assert!(status_line(&answer).starts_with("HTTP/1.1 200"), "{answer}");
        for size in [64 * 1024 + 1, 100_000] {
            assert_eq!(
                status_line(&exchange(addr, &head_of(size))),
                "HTTP/1.1 431 Request Header Fields Too Large",
                "a head of {size} bytes"
            );
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_and_too_many_headers_get_431() {
    against(tight(), |addr| {
        let mut big = b"GET /hello HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
        big.extend(std::iter::repeat_n(b'a', 100_000));
        big.extend(b"\r\n\r\n");
        assert_eq!(
            status_line(&exchange(addr, &big)),
            "HTTP/1.1 431 Request Header Fields Too Large"
        );

        let mut many = b"GET /hello HTTP/1.1\r\nHost: x\r\n".to_vec();
        for i in 0..200 {
            many.extend(format!("X-H{i}: 1\r\n").as_bytes());
        }
        many.extend(b"\r\n");
        assert_eq!(
            status_line(&exchange(addr, &many)),
            "HTTP/1.1 431 Request Header Fields Too Large"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_requests_get_400() {
    against(tight(), |addr| {
        for bad in [
            &b"GET /he llo HTTP/1.1\r\nHost: x\r\n\r\n"[..],
            b"GET http://[::1 HTTP/1.1\r\nHost: x\r\n\r\n",
            b"\x00\x01\x02 garbage\r\n\r\n",
            b"GET /hello HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n",
        ] {
            let answer = exchange(addr, bad);
            assert!(status_line(&answer).starts_with("HTTP/1.1 400"), "{answer}");
        }
        // A path with invalid percent-encoding is still a request: it gets a problem.
        let answer = exchange(
            addr,
            b"GET /%zz%00 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        );
        assert_problem(&answer, 404);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_request_head_is_cut_off() {
    against(tight(), |addr| {
        let started = Instant::now();
        let head = b"GET /hello HTTP/1.1\r\nHost: x\r\n";
        exchange_within(addr, head, Duration::from_secs(5));
        let waited = started.elapsed();
        // Closed by the server (with or without a 408), well before our 5 s read timeout.
        assert!(waited < Duration::from_secs(4), "held for {waited:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_trickling_body_times_out_with_a_problem() {
    against(tight(), |addr| {
        let head_and_a_little_body =
            b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nabc";
        let answer = exchange_within(addr, head_and_a_little_body, Duration::from_secs(5));
        assert_problem(&answer, 503);
    })
    .await;
}

/// A server that answers before it has read the request body (here: 413 for a declared
/// length over the limit) must not reset the connection under the client: the client
/// is still writing, and its writes would fail. The server lingers — closes its side,
/// reads and drops what the client still sends — so the client's writes go through, it
/// reads the 413 and then an orderly end of the connection.
#[tokio::test(flavor = "multi_thread")]
async fn an_early_answer_reaches_a_client_still_sending_its_body() {
    against(tight(), |addr| {
        for _ in 0..5 {
            let mut stream = connect(addr, Duration::from_secs(5));
            stream
                .write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n\r\n")
                .expect("head");
            // Let the server answer and close before the rest of the body arrives.
            std::thread::sleep(Duration::from_millis(200));
            // Writes into a socket the server has closed fail ("broken pipe" after the
            // reset), and a client that stops at a failed write (reqwest does) never
            // reads the answer.
            let chunk = vec![b'x'; 64 * 1024];
            for i in 0..4 {
                let written = stream.write_all(&chunk);
                assert!(written.is_ok(), "write {i} after the answer: {written:?}");
                std::thread::sleep(Duration::from_millis(20));
            }
            std::thread::sleep(Duration::from_millis(200));
            let mut answer = Vec::new();
            let read = stream.read_to_end(&mut answer);
            let answer = String::from_utf8_lossy(&answer);
            assert!(
                read.is_ok(),
                "the connection was reset: {read:?} after {answer:?}"
            );
            assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
        }
    })
    .await;
}
