//! The bare proxy, with either client and either runtime, forwards every request to its
//! one upstream and keeps the upstream connection for the next request (the keepalive
//! pool the benchmark relies on), and
//! answers 502 when the upstream is unreachable, and refuses arguments it cannot use. Standard library only: a real upstream socket, the
//! real binary.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const BINARY: &str = env!("CARGO_BIN_EXE_hyper-bare");

/// An upstream answering every request with `ok <path>`, counting the connections it accepts.
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
        // The rest of the head; the test sends no bodies.
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            if header == "\r\n" {
                break;
            }
        }
        let body = format!("ok {path}");
        let answer = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
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

/// One request on `stream` (kept alive); returns the response body.
fn get(stream: &mut TcpStream, path: &str) -> String {
    write!(stream, "GET {path} HTTP/1.1\r\nhost: bench\r\n\r\n").expect("send");
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut status = String::new();
    reader.read_line(&mut status).expect("status line");
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    let mut length = 0;
    loop {
        let mut header = String::new();
        reader.read_line(&mut header).expect("header");
        if header == "\r\n" {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().expect("length");
            }
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).expect("body");
    String::from_utf8(body).expect("utf-8")
}

#[test]
fn forwards_to_the_upstream_over_one_kept_connection() {
    for client in ["legacy", "conn"] {
        for runtime in ["steal", "nosteal"] {
            forwards_over_one_connection(runtime, client);
        }
    }
}

/// Starts the proxy in front of `upstream`; returns it and a connection to it.
fn proxy(upstream: SocketAddr, runtime: &str, client: &str) -> (Proxy, TcpStream) {
    let port = free_port();
    let child = Command::new(BINARY)
        .args([
            format!("127.0.0.1:{port}"),
            upstream.to_string(),
            "1".into(),
            runtime.into(),
            client.into(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start hyper-bare");
    let proxy = Proxy(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    let stream = loop {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(stream) => break stream,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => panic!("the proxy did not listen: {e}"),
        }
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    (proxy, stream)
}

fn forwards_over_one_connection(runtime: &str, client: &str) {
    let (upstream, accepted) = upstream();
    let (_proxy, mut stream) = proxy(upstream, runtime, client);
    for i in 0..5 {
        assert_eq!(
            get(&mut stream, &format!("/posts/{i}")),
            format!("ok /posts/{i}")
        );
    }
    // Sequential requests reuse the pooled upstream connection.
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "{runtime} {client}");
}

#[test]
fn answers_502_when_the_upstream_is_unreachable() {
    // A port nothing listens on any more.
    let gone = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port");
    for (runtime, client) in [("steal", "legacy"), ("nosteal", "conn")] {
        let (_proxy, mut stream) = proxy(gone, runtime, client);
        write!(stream, "GET /posts HTTP/1.1\r\nhost: bench\r\n\r\n").expect("send");
        let mut status = String::new();
        BufReader::new(stream)
            .read_line(&mut status)
            .expect("status line");
        assert!(status.starts_with("HTTP/1.1 502"), "{client}: {status}");
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
        vec!["127.0.0.1:1", "127.0.0.1:2", "1", "steal", "sometimes"],
        vec!["127.0.0.1:1", "127.0.0.1:2", "1", "steal", "conn", "more"],
    ] {
        let out = Command::new(BINARY).args(&args).output().expect("run");
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("usage"),
            "{args:?}"
        );
    }
}
