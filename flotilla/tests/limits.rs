//! Request limits of a real `flotilla up` process, attacked over raw TCP the way a hostile
//! client would: multipart framing that never ends (a preamble with no boundary, a part
//! header with no blank line), bodies over the upload limit made of text fields, text
//! fields that do not end, bodies trickled at a few bytes a second, and many connections
//! from one address. Each is refused early — while the client is still sending — and
//! the process's resident memory (read from /proc) stays flat.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::Path,
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

const BIN: &str = env!("CARGO_BIN_EXE_flotilla");
const ADMIN: (&str, &str) = ("limits-admin@example.com", "limits-password");
const MIB: u64 = 1024 * 1024;
const BOUNDARY: &str = "flotilla-limits-boundary";

struct Up {
    child: Child,
    addr: SocketAddr,
    token: String,
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Up {
    /// `flotilla up` on a free port with `env`, and an admin's token.
    fn start(data_dir: &Path, env: &[(&str, &str)]) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let log = std::fs::File::create(data_dir.with_extension("log")).expect("log");
        let mut command = Command::new(BIN);
        command
            .args(["up", "--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
            .arg(data_dir)
            .env("RUST_LOG", "warn")
            .env("FLOTILLA_ADMIN_EMAIL", ADMIN.0)
            .env("FLOTILLA_ADMIN_PASSWORD", ADMIN.1)
            .env("FLOTILLA_AUTH_URL", format!("http://127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log);
        for (name, value) in env {
            command.env(name, value);
        }
        let mut child = command.spawn().expect("flotilla starts");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line)
            .expect("ready line");
        assert!(line.contains("ready"), "ready line: {line:?}");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("address");
        let mut up = Self {
            child,
            addr,
            token: String::new(),
        };
        up.token = up.login();
        up
    }

    fn login(&self) -> String {
        use base64_basic::encode;
        let credentials = encode(format!("{}:{}", ADMIN.0, ADMIN.1).as_bytes());
        let answer = exchange(
            self.addr,
            format!(
                "POST /login HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {credentials}\r\n\
                 Content-Length: 0\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        );
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        answer
            .split("\r\n\r\n")
            .nth(1)
            .map(|body| body.trim().to_owned())
            .expect("a token")
    }

    fn rss_bytes(&self) -> u64 {
        rss_of(self.child.id())
    }

    /// The head of a chunked multipart upload with a valid token.
    fn upload_head(&self) -> String {
        format!(
            "POST /upload HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
             Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n\
             Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
            self.token
        )
    }
}

/// Minimal base64 for the Basic credentials (no dependency for one header).
mod base64_basic {
    pub fn encode(input: &[u8]) -> String {
        const TABLE: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for chunk in input.chunks(3) {
            let b = [
                chunk[0],
                chunk.get(1).copied().unwrap_or(0),
                chunk.get(2).copied().unwrap_or(0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(TABLE[((n >> (18 - 6 * i)) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }
}

fn rss_of(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

/// Sends raw bytes and reads the answer until the server closes or 10 s pass.
fn exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let _ = stream.write_all(request);
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

/// What happened to one streamed attack.
#[derive(Debug)]
struct Outcome {
    answer: String,
    /// Body bytes the client had sent when the first byte of the answer arrived.
    sent_when_answered: Option<u64>,
    /// Largest resident memory growth of the server while the attack ran.
    rss_growth: u64,
}

/// Sends `head`, then `body` (which must not end) as `total` bytes of chunks while
/// reading the answer, and watches the server's memory meanwhile. Sending stops once the
/// answer has arrived, or the server closes the connection.
fn attack(up: &Up, head: &str, mut body: impl FnMut() -> Vec<u8>, total: u64) -> Outcome {
    let baseline = (0..5)
        .map(|_| {
            std::thread::sleep(Duration::from_millis(20));
            up.rss_bytes()
        })
        .max()
        .unwrap_or(0);
    let pid = up.child.id();
    let watching = Arc::new(AtomicBool::new(true));
    let watcher = {
        let watching = Arc::clone(&watching);
        std::thread::spawn(move || {
            let mut peak = 0;
            while watching.load(Ordering::Relaxed) {
                peak = peak.max(rss_of(pid));
                std::thread::sleep(Duration::from_millis(10));
            }
            peak.max(rss_of(pid))
        })
    };

    let mut stream = TcpStream::connect(up.addr).expect("connect");
    let sent = Arc::new(AtomicU64::new(0));
    let answered = Arc::new(AtomicBool::new(false));
    let reader = {
        let mut stream = stream.try_clone().expect("clone");
        let sent = Arc::clone(&sent);
        let answered = Arc::clone(&answered);
        std::thread::spawn(move || {
            stream
                .set_read_timeout(Some(Duration::from_secs(60)))
                .expect("timeout");
            let mut answer = Vec::new();
            let mut first = None;
            let mut buffer = [0u8; 4096];
            while let Ok(n) = stream.read(&mut buffer) {
                if n == 0 {
                    break;
                }
                first.get_or_insert_with(|| sent.load(Ordering::SeqCst));
                answered.store(true, Ordering::SeqCst);
                answer.extend_from_slice(&buffer[..n]);
            }
            answered.store(true, Ordering::SeqCst);
            (String::from_utf8_lossy(&answer).into_owned(), first)
        })
    };
    stream.write_all(head.as_bytes()).expect("head");
    while sent.load(Ordering::SeqCst) < total && !answered.load(Ordering::SeqCst) {
        let chunk = body();
        let mut framed = format!("{:x}\r\n", chunk.len()).into_bytes();
        framed.extend_from_slice(&chunk);
        framed.extend_from_slice(b"\r\n");
        if stream.write_all(&framed).is_err() {
            break;
        }
        sent.fetch_add(chunk.len() as u64, Ordering::SeqCst);
    }
    let (answer, sent_when_answered) = reader.join().expect("reader");
    watching.store(false, Ordering::Relaxed);
    let peak = watcher.join().expect("watcher");
    Outcome {
        answer,
        sent_when_answered,
        rss_growth: peak.saturating_sub(baseline),
    }
}

fn assert_early(outcome: &Outcome, status: &str, detail: &str, total: u64) {
    assert!(
        outcome.answer.starts_with(&format!("HTTP/1.1 {status}")),
        "{outcome:?}"
    );
    assert!(
        outcome.answer.contains("application/problem+json") && outcome.answer.contains(detail),
        "{outcome:?}"
    );
    let sent = outcome.sent_when_answered.expect("an answer");
    assert!(
        sent < total / 4,
        "answered only after {} MiB of {} MiB",
        sent / MIB,
        total / MIB
    );
    assert!(
        outcome.rss_growth < 32 * MIB,
        "memory grew by {} MiB",
        outcome.rss_growth / MIB
    );
    eprintln!(
        "{status}: answered after {} KiB sent; RSS growth {} KiB",
        sent / 1024,
        outcome.rss_growth / 1024
    );
}

/// Issue #14 item 1: 400 MiB of `A` before any boundary used to be buffered whole and
/// answered 400 only at the end (+394 MiB RSS).
#[test]
fn a_preamble_that_never_ends_is_refused_early_without_memory_growth() {
    let dir = tempfile::tempdir().expect("tempdir");
    let up = Up::start(&dir.path().join("data"), &[]);
    let total = 400 * MIB;
    let chunk = vec![b'A'; MIB as usize];
    let outcome = attack(&up, &up.upload_head(), || chunk.clone(), total);
    assert_early(&outcome, "400", "preamble", total);
}

/// Issue #14 item 1: a part header of 150 MiB with no blank line after it.
#[test]
fn a_part_header_that_never_ends_is_refused_early_without_memory_growth() {
    let dir = tempfile::tempdir().expect("tempdir");
    let up = Up::start(&dir.path().join("data"), &[]);
    let total = 150 * MIB;
    let mut first = Some(
        format!(
            "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; \
             filename=\"a.mp4\"\r\nX-Padding: "
        )
        .into_bytes(),
    );
    let padding = vec![b'A'; MIB as usize];
    let outcome = attack(
        &up,
        &up.upload_head(),
        || first.take().unwrap_or_else(|| padding.clone()),
        total,
    );
    assert_early(&outcome, "400", "headers", total);
}

/// Issue #14 item 1: the whole body counts against FLOTILLA_MAX_UPLOAD_BYTES — text
/// fields used to be skipped uncounted, whatever their number.
#[test]
fn text_fields_count_against_the_upload_limit_and_each_is_capped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let up = Up::start(
        &dir.path().join("data"),
        &[("FLOTILLA_MAX_UPLOAD_BYTES", "4MiB")],
    );
    let field = |n: usize| {
        let mut part =
            format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"f{n}\"\r\n\r\n")
                .into_bytes();
        part.extend(std::iter::repeat_n(b'x', 60 * 1024));
        part.extend(b"\r\n");
        part
    };
    let mut n = 0;
    let total = 64 * MIB;
    let outcome = attack(
        &up,
        &up.upload_head(),
        || {
            n += 1;
            field(n)
        },
        total,
    );
    assert_early(&outcome, "413", "limit of 4194304 bytes", total);

    // One text field that does not end: 400 once it passes 64 KiB.
    let mut first = Some(
        format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"title\"\r\n\r\n")
            .into_bytes(),
    );
    let text = vec![b'y'; 16 * 1024];
    let total = 64 * MIB;
    let outcome = attack(
        &up,
        &up.upload_head(),
        || first.take().unwrap_or_else(|| text.clone()),
        total,
    );
    assert_early(&outcome, "400", "text field", total);
}

/// Issue #14 item 7: an upload trickled at a few bytes a second used to hold its
/// connection for the route's one-hour timeout.
#[test]
fn a_trickled_upload_is_ended_by_the_minimum_body_rate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let up = Up::start(
        &dir.path().join("data"),
        &[("FLOTILLA_HTTP_BODY_TIMEOUT", "2s")],
    );
    let mut stream = TcpStream::connect(up.addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_millis(100)))
        .expect("timeout");
    let started = Instant::now();
    let mut request = up.upload_head().into_bytes();
    let part = format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.mp4\"\r\n\r\n"
    );
    request.extend(format!("{:x}\r\n{part}\r\n", part.len()).as_bytes());
    stream.write_all(&request).expect("head");
    let mut answer = Vec::new();
    let mut buffer = [0u8; 4096];
    // Two bytes a second, for up to 20 s.
    while started.elapsed() < Duration::from_secs(20) {
        if stream.write_all(b"1\r\nz\r\n").is_err() {
            break;
        }
        match stream.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buffer[..n]),
            Err(_) => std::thread::sleep(Duration::from_millis(400)),
        }
        if answer.windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    let waited = started.elapsed();
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 408"),
        "after {waited:?}: {answer}"
    );
    assert!(answer.contains("application/problem+json"), "{answer}");
    assert!(waited < Duration::from_secs(6), "held for {waited:?}");
}

/// Issue #14 item 7: the connection cap is per client as well as global. The 9th
/// connection from one address is closed at accept; another address is still served,
/// and a closed connection frees its place.
#[tokio::test]
async fn connections_are_capped_per_client_address() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let dir = tempfile::tempdir().expect("tempdir");
    let up = Up::start(
        &dir.path().join("data"),
        &[("FLOTILLA_HTTP_MAX_CONNECTIONS_PER_CLIENT", "8")],
    );
    let connect_from = |source: &'static str| async move {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind(format!("{source}:0").parse().expect("address"))
            .expect("bind");
        socket.connect(up.addr).await.expect("connect")
    };
    let healthz = |mut stream: tokio::net::TcpStream| async move {
        let request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
        let _ = stream.write_all(request).await;
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
        String::from_utf8_lossy(&answer).into_owned()
    };
    // Eight connections, each shown open by a request on it (kept alive). From an
    // address of their own: `Up::start`'s readiness probes came from 127.0.0.1, and the
    // server may not have counted their connections down yet.
    let mut held = Vec::new();
    for _ in 0..8 {
        let mut stream = connect_from("127.0.0.3").await;
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("request");
        let mut buffer = [0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buffer))
            .await
            .expect("an answer in time")
            .expect("read");
        let answer = String::from_utf8_lossy(&buffer[..n]);
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        held.push(stream);
    }
    let refused = healthz(connect_from("127.0.0.3").await).await;
    assert!(
        refused.is_empty(),
        "the 9th connection was served: {refused}"
    );
    let other = healthz(connect_from("127.0.0.2").await).await;
    assert!(other.starts_with("HTTP/1.1 200"), "{other}");
    drop(held.pop());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let freed = healthz(connect_from("127.0.0.3").await).await;
    assert!(freed.starts_with("HTTP/1.1 200"), "{freed}");
}
