//! The `flotilla` binary as a user runs it: the ready line, HTTP on the printed URL,
//! SIGTERM → exit 0, one clear line for a bad setting.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

const BIN: &str = env!("CARGO_BIN_EXE_flotilla");

struct Up {
    child: Child,
    url: String,
    stderr: std::process::ChildStderr,
    started_in: Duration,
}

fn start_up(data_dir: &std::path::Path) -> Up {
    let started = Instant::now();
    let mut child = Command::new(BIN)
        .args(["up", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("flotilla starts");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("reads the ready line");
    let started_in = started.elapsed();
    assert!(line.contains("ready"), "ready line: {line:?}");
    let url = line
        .split_whitespace()
        .find(|word| word.starts_with("http://"))
        .expect("the ready line names the gateway URL")
        .to_owned();
    let stderr = child.stderr.take().expect("piped stderr");
    Up {
        child,
        url,
        stderr,
        started_in,
    }
}

fn terminate(child: &Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
}

fn wait_with_limit(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("waitable") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("flotilla did not exit within {limit:?} of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test]
async fn up_prints_ready_serves_and_exits_zero_on_sigterm() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut up = start_up(dir.path());
    eprintln!(
        "ready line after {:?} (includes process start)",
        up.started_in
    );

    let client = client();
    for path in ["/healthz", "/readyz"] {
        let response = client
            .get(format!("{}{path}", up.url))
            .send()
            .await
            .expect("sent");
        assert_eq!(response.status(), 200, "{path}");
    }
    // Probes are logged at debug; a request that the gateway forwards to auth is logged
    // by both, and both lines must carry the id.
    let forwarded = client
        .post(format!("{}/login", up.url))
        .header("x-request-id", "cli-test-7")
        .send()
        .await
        .expect("sent");
    assert_eq!(forwarded.headers()["x-request-id"], "cli-test-7");

    terminate(&up.child);
    let status = wait_with_limit(&mut up.child, Duration::from_secs(20));
    assert_eq!(status.code(), Some(0));

    // Logs are JSON lines (stderr is not a terminal) and every line of a request
    // carries its id.
    let lines: Vec<String> = BufReader::new(up.stderr)
        .lines()
        .map_while(Result::ok)
        .collect();
    let of_request: Vec<&String> = lines.iter().filter(|l| l.contains("cli-test-7")).collect();
    assert!(
        !of_request.is_empty(),
        "no log line with the request id: {lines:#?}"
    );
    let mut services = Vec::new();
    for line in of_request {
        let value: serde_json::Value = serde_json::from_str(line).expect("a JSON log line");
        assert_eq!(value["span"]["request_id"], "cli-test-7", "{line}");
        services.push(
            value["span"]["service"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        );
    }
    assert!(services.iter().any(|s| s == "gateway"), "{services:?}");
    assert!(services.iter().any(|s| s == "auth"), "{services:?}");

    // A second start on the same data directory works.
    let mut again = start_up(dir.path());
    terminate(&again.child);
    assert_eq!(
        wait_with_limit(&mut again.child, Duration::from_secs(20)).code(),
        Some(0)
    );
}

#[test]
fn a_bad_setting_exits_non_zero_with_one_line_naming_the_variable() {
    let output = Command::new(BIN)
        .arg("up")
        .env("FLOTILLA_LISTEN", "nonsense")
        .stdin(Stdio::null())
        .output()
        .expect("flotilla runs");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("FLOTILLA_LISTEN"), "{stderr}");
    assert!(output.stdout.is_empty());
}

/// The registry's timings are settings; an expiry under two heartbeats would drop live
/// instances between their announcements, so it is refused before anything starts.
#[test]
fn registry_timings_are_settings_and_an_expiry_under_two_heartbeats_is_refused() {
    let output = Command::new(BIN)
        .args(["up", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(tempfile::tempdir().expect("temporary directory").path())
        .env("FLOTILLA_REGISTRY_HEARTBEAT", "2s")
        .env("FLOTILLA_REGISTRY_EXPIRY", "3s")
        .stdin(Stdio::null())
        .output()
        .expect("flotilla runs");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(
            "FLOTILLA_REGISTRY_EXPIRY (3s) must be at least twice FLOTILLA_REGISTRY_HEARTBEAT (2s)"
        ),
        "{stderr}"
    );
    let help = Command::new(BIN)
        .args(["up", "--help"])
        .output()
        .expect("flotilla runs");
    let help = String::from_utf8_lossy(&help.stdout);
    for variable in ["FLOTILLA_REGISTRY_HEARTBEAT", "FLOTILLA_REGISTRY_EXPIRY"] {
        assert!(help.contains(variable), "{variable} missing from --help");
    }
}

#[test]
fn an_unusable_listen_address_fails_clearly() {
    // Port 1 needs privileges we do not give; binding a foreign address fails too.
    let output = Command::new(BIN)
        .args(["up", "--listen", "192.0.2.1:8080", "--data-dir"])
        .arg(tempfile::tempdir().expect("temporary directory").path())
        .stdin(Stdio::null())
        .output()
        .expect("flotilla runs");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("cannot listen on 192.0.2.1:8080"),
        "{stderr}"
    );
}

/// A plain HTTP client (installs the process's TLS provider first, see `platform::tls`).
fn client() -> reqwest::Client {
    platform::tls::install_crypto_provider();
    reqwest::Client::new()
}

/// Idle means silent: after the banner (stderr not a terminal, so JSON logs at the default
/// `info`), 30 s without a request log nothing — no poller, no timer. The banner names
/// the web app, the API docs, the metrics and where data and mail live.
#[test]
fn up_is_silent_when_idle_after_its_banner() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut child = Command::new(BIN)
        .args(["up", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env_remove("RUST_LOG")
        .env_remove("FLOTILLA_SMTP_URL")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("flotilla starts");
    let stderr = child.stderr.take().expect("piped stderr");
    let (lines_tx, lines_rx) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
    let mut banner = String::new();
    while !banner.contains("  mail ") {
        let mut line = String::new();
        assert!(
            stdout.read_line(&mut line).expect("reads the banner") > 0,
            "the banner ended early: {banner}"
        );
        banner.push_str(&line);
    }
    assert!(
        banner.starts_with("flotilla ready at http://127.0.0.1:"),
        "{banner}"
    );
    let url = banner
        .split_whitespace()
        .nth(3)
        .expect("the ready line names the URL")
        .to_owned();
    for expected in [
        format!("{url}/docs"),
        format!("{url}/metrics"),
        dir.path().join("mail").display().to_string(),
    ] {
        assert!(banner.contains(&expected), "{expected} in {banner}");
    }
    // What was logged up to the banner (written before it) arrives within a moment.
    std::thread::sleep(Duration::from_secs(1));
    let before: Vec<String> = lines_rx.try_iter().collect();
    assert!(
        !before.iter().any(|l| l.contains("migration applied")),
        "migrations are not routine news: {before:#?}"
    );
    std::thread::sleep(Duration::from_secs(30));
    let after: Vec<String> = lines_rx.try_iter().collect();
    assert!(after.is_empty(), "logged while idle: {after:#?}");
    terminate(&child);
    assert_eq!(
        wait_with_limit(&mut child, Duration::from_secs(20)).code(),
        Some(0)
    );
    reader.join().expect("reader ends");
}
