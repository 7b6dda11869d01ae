//! The bare monoio proxy, with either driver, forwards every request (head and body) to its
//! one upstream and keeps the upstream connection for the next request (the keepalive pool
//! the benchmark relies on), answers 502 when the upstream is unreachable, and refuses
//! arguments it cannot use. Standard library only: a real upstream socket, the real binary.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const BINARY: &str = env!("CARGO_BIN_EXE_monoio-bare");

/// An upstream answering every request with `ok <path> <body>` (and the request's `x-test`
/// header, if any, in its own `x-test`), counting the connections it accepts.
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
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let path = line.split(' ').nth(1).unwrap_or("?").to_owned();
        let (mut length, mut test) = (0, String::new());
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
                } else if name.eq_ignore_ascii_case("x-test") {
                    test = value.trim().to_owned();
                }
            }
        }
        let mut request_body = vec![0; length];
        if reader.read_exact(&mut request_body).is_err() {
            return;
        }
        let body = format!("ok {path} {}", String::from_utf8_lossy(&request_body));
        let answer = format!(
            "HTTP/1.1 200 OK\r\nx-test: {test}\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
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

/// One request on `stream` (kept alive); returns the response's `x-test` and body.
fn send(stream: &mut TcpStream, path: &str, body: &str) -> (String, String) {
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nhost: bench\r\nx-test: {path}\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("send");
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut status = String::new();
    reader.read_line(&mut status).expect("status line");
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    let (mut length, mut test) = (0, String::new());
    loop {
        let mut header = String::new();
        reader.read_line(&mut header).expect("header");
        if header == "\r\n" {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().expect("length");
            } else if name.eq_ignore_ascii_case("x-test") {
                test = value.trim().to_owned();
            }
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).expect("body");
    (test, String::from_utf8(body).expect("utf-8"))
}

/// Starts the proxy in front of `upstream`; returns it and a connection to it, or None if
/// the driver cannot run on this kernel (io_uring refused: the proxy exits).
fn proxy(upstream: SocketAddr, driver: &str) -> Option<(Proxy, TcpStream)> {
    let port = free_port();
    let child = Command::new(BINARY)
        .args([
            format!("127.0.0.1:{port}"),
            upstream.to_string(),
            "1".into(),
            driver.into(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start monoio-bare");
    let mut proxy = Proxy(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    let stream = loop {
        if let Some(exit) = proxy.0.try_wait().expect("wait") {
            let mut stderr = String::new();
            let _ = proxy.0.stderr.take().expect("stderr").read_to_string(&mut stderr);
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
    Some((proxy, stream))
}

#[test]
fn forwards_to_the_upstream_over_one_kept_connection() {
    for driver in ["legacy", "uring"] {
        let (upstream, accepted) = upstream();
        let Some((_proxy, mut stream)) = proxy(upstream, driver) else {
            continue;
        };
        for i in 0..5 {
            let path = format!("/posts/{i}");
            let body = "x".repeat(i);
            assert_eq!(
                send(&mut stream, &path, &body),
                (path.clone(), format!("ok {path} {body}")),
                "{driver}"
            );
        }
        // Sequential requests reuse the pooled upstream connection.
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "{driver}");
    }
}

#[test]
fn answers_502_when_the_upstream_is_unreachable() {
    // A port nothing listens on any more.
    let gone = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port");
    for driver in ["legacy", "uring"] {
        let Some((_proxy, mut stream)) = proxy(gone, driver) else {
            continue;
        };
        write!(stream, "GET /posts HTTP/1.1\r\nhost: bench\r\n\r\n").expect("send");
        let mut status = String::new();
        BufReader::new(stream)
            .read_line(&mut status)
            .expect("status line");
        assert!(status.starts_with("HTTP/1.1 502"), "{driver}: {status}");
    }
}

#[test]
fn refuses_arguments_it_cannot_use() {
    for args in [
        vec![],
        vec!["127.0.0.1:1"],
        vec!["not-an-address", "127.0.0.1:2"],
        vec!["127.0.0.1:1", "not-an-address"],
        vec!["127.0.0.1:1", "127.0.0.1:2", "0"],
        vec!["127.0.0.1:1", "127.0.0.1:2", "many"],
        vec!["127.0.0.1:1", "127.0.0.1:2", "1", "sometimes"],
        vec!["127.0.0.1:1", "127.0.0.1:2", "1", "legacy", "more"],
    ] {
        let out = Command::new(BINARY).args(&args).output().expect("run");
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("usage"),
            "{args:?}"
        );
    }
}
