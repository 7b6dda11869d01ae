//! Production mode: services as separate servers (`flotilla serve`), the gateway reaching
//! them over HTTP. The route table is the same as in `up`; only the upstreams differ.

use test_support::{spawn_gateway, spawn_service};

#[tokio::test]
async fn the_gateway_forwards_to_a_remote_service_and_reports_its_readiness() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let auth = spawn_service(flotilla::ServiceName::Auth, dir.path()).await;
    let upstreams = flotilla::GatewayArgs {
        auth_url: Some(flotilla::parse_upstream_url(&auth.base_url).expect("valid URL")),
        ..Default::default()
    };
    let gateway = spawn_gateway(upstreams, dir.path()).await;

    let ready = gateway
        .client
        .get(gateway.url("/readyz"))
        .send()
        .await
        .expect("sent");
    assert_eq!(ready.status(), 200);
    let body: serde_json::Value = ready.json().await.expect("json");
    assert_eq!(body["checks"]["auth"], "ok", "{body}");

    // Forwarded: the answer comes from auth, with the id the client chose.
    let forwarded = gateway
        .client
        .post(gateway.url("/login"))
        .header("x-request-id", "serve-1")
        .send()
        .await
        .expect("sent");
    assert_eq!(forwarded.headers()["x-request-id"], "serve-1");
    assert_ne!(forwarded.status(), 503);

    // An upstream that is not configured is a clear 503, not a hang.
    let unconfigured = gateway
        .client
        .get(gateway.url("/posts"))
        .send()
        .await
        .expect("sent");
    assert_eq!(unconfigured.status(), 503);
    assert_eq!(
        unconfigured.headers()["content-type"],
        "application/problem+json"
    );
    let problem: serde_json::Value = unconfigured.json().await.expect("json");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("FLOTILLA_QUERY_URL"),
        "{problem}"
    );

    // When the upstream goes away its routes answer 503 + Retry-After promptly, and the
    // gateway stays ready (it serves everything else), showing the upstream's state.
    auth.stop().await.expect("auth stops");
    let gone = gateway
        .client
        .post(gateway.url("/login"))
        .send()
        .await
        .expect("sent");
    assert_eq!(gone.status(), 503);
    assert!(gone.headers().contains_key("retry-after"));
    let ready = gateway
        .client
        .get(gateway.url("/readyz"))
        .send()
        .await
        .expect("sent");
    assert_eq!(ready.status(), 200);
    let body: serde_json::Value = ready.json().await.expect("json");
    assert_eq!(body["status"], "degraded", "{body}");
    assert_ne!(body["checks"]["auth"], "ok", "{body}");
    gateway.stop().await.expect("gateway stops");
}

// ---------------------------------------------------------------------------------------
// The real binary, as containers run it: refusal without URLs, a gateway that stays up
// while an upstream is down or not there yet, and SIGTERM honoured while waiting.

mod processes {
    use std::{
        io::{BufRead, BufReader},
        path::Path,
        process::{Child, Command, Stdio},
        time::{Duration, Instant},
    };

    /// Every variable that would configure a store or an upstream, so the environment
    /// of whoever runs the tests cannot leak into them.
    const CONFIGURING: [&str; 11] = [
        "FLOTILLA_DATABASE_URL",
        "FLOTILLA_BUS_URL",
        "FLOTILLA_BLOB_URL",
        "FLOTILLA_ALLOW_EMBEDDED",
        "FLOTILLA_AUTH_URL",
        "FLOTILLA_MEDIA_URL",
        "FLOTILLA_POSTS_URL",
        "FLOTILLA_COMMENTS_URL",
        "FLOTILLA_QUERY_URL",
        "FLOTILLA_EVENT_BUS_URL",
        "FLOTILLA_LISTEN",
    ];

    /// `flotilla serve SERVICE` in `dir` on `listen`, with exactly `env` configured.
    fn command(service: &str, dir: &Path, listen: &str, env: &[(&str, &str)]) -> Command {
        let mut command = Command::new(test_support::flotilla_binary());
        command
            .args(["serve", service, "--listen", listen, "--data-dir"])
            .arg(dir.join(service))
            .env("RUST_LOG", "warn");
        for name in CONFIGURING {
            command.env_remove(name);
        }
        for (name, value) in env {
            command.env(name, value);
        }
        command
    }

    /// A started process, killed when dropped.
    struct Process(Child);

    impl Drop for Process {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    /// Starts it and waits for its "ready at URL" line; returns the URL.
    fn start_ready(
        service: &str,
        dir: &Path,
        listen: &str,
        env: &[(&str, &str)],
    ) -> (Process, String) {
        let mut child = command(service, dir, listen, env)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("flotilla starts");
        let stdout = child.stdout.take().expect("stdout");
        let process = Process(child);
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("a line on stdout");
        assert!(
            line.contains("ready at"),
            "{service}: unexpected first line: {line:?}"
        );
        let url = line
            .split_whitespace()
            .find(|word| word.starts_with("http://"))
            .expect("the URL")
            .to_owned();
        (process, url)
    }

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port()
    }

    fn sigterm(child: &Child) {
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
    }

    /// Waits at most `limit` for the process to exit; its status and how long it took.
    fn exit_within(child: &mut Child, limit: Duration) -> (std::process::ExitStatus, Duration) {
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return (status, started.elapsed());
            }
            assert!(
                started.elapsed() < limit,
                "still running {limit:?} after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn serve_without_urls_refuses_to_start_and_names_the_missing_variables() {
        let dir = tempfile::tempdir().expect("temporary directory");
        for (service, variables) in [
            ("auth", &["FLOTILLA_DATABASE_URL"][..]),
            (
                "media",
                &[
                    "FLOTILLA_DATABASE_URL",
                    "FLOTILLA_BUS_URL",
                    "FLOTILLA_BLOB_URL",
                ],
            ),
            ("converter", &["FLOTILLA_BUS_URL", "FLOTILLA_BLOB_URL"]),
            ("posts", &["FLOTILLA_DATABASE_URL", "FLOTILLA_BUS_URL"]),
        ] {
            let output = command(service, dir.path(), "127.0.0.1:0", &[])
                .output()
                .expect("flotilla runs");
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(!output.status.success(), "{service} started without URLs");
            let line = stderr
                .lines()
                .find(|line| line.starts_with("flotilla: "))
                .unwrap_or_else(|| panic!("{service}: no error line in {stderr}"));
            for variable in variables {
                assert!(line.contains(variable), "{service}: {line}");
            }
            assert!(line.contains("FLOTILLA_ALLOW_EMBEDDED=1"), "{line}");
            assert!(
                !dir.path()
                    .join(service)
                    .join(format!("{service}.db"))
                    .exists(),
                "{service} created an embedded database before refusing"
            );
        }
        // A URL no attempt could open is refused at once, not waited for.
        let output = command(
            "auth",
            dir.path(),
            "127.0.0.1:0",
            &[("FLOTILLA_DATABASE_URL", "oracle://db/auth")],
        )
        .output()
        .expect("flotilla runs");
        assert!(!output.status.success());
        assert!(String::from_utf8_lossy(&output.stderr).contains("FLOTILLA_DATABASE_URL"));
        // Named on purpose, the embedded stores are used.
        let (_auth, url) = start_ready(
            "auth",
            dir.path(),
            "127.0.0.1:0",
            &[("FLOTILLA_ALLOW_EMBEDDED", "1")],
        );
        assert!(url.starts_with("http://127.0.0.1:"));
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn readiness_checks_the_blob_store() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let blobs = dir.path().join("blobs");
        let blob_url = format!("file://{}", blobs.display());
        let (_media, url) = tokio::task::block_in_place(|| {
            start_ready(
                "media",
                dir.path(),
                "127.0.0.1:0",
                &[
                    ("FLOTILLA_ALLOW_EMBEDDED", "1"),
                    ("FLOTILLA_BLOB_URL", &blob_url),
                ],
            )
        });
        let client = test_support::http_client();
        let ready: serde_json::Value = client
            .get(format!("{url}/readyz"))
            .send()
            .await
            .expect("sent")
            .json()
            .await
            .expect("json");
        assert_eq!(ready["checks"]["blobs"], "ok", "{ready}");
        // The volume goes away: media is not ready, and says why.
        std::fs::remove_dir_all(&blobs).expect("removed");
        let response = client
            .get(format!("{url}/readyz"))
            .send()
            .await
            .expect("sent");
        assert_eq!(response.status(), 503);
        let problem: serde_json::Value = response.json().await.expect("json");
        assert_ne!(problem["checks"]["blobs"], "ok", "{problem}");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn the_gateway_stays_ready_with_an_upstream_down_and_serves_one_that_comes_late() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let client = test_support::http_client();
        // query (GET /posts) never comes; auth comes after the gateway.
        let query = format!("http://127.0.0.1:{}", free_port());
        let auth_listen = format!("127.0.0.1:{}", free_port());
        let auth_url = format!("http://{auth_listen}");
        let (mut gateway, gw) = tokio::task::block_in_place(|| {
            start_ready(
                "gateway",
                dir.path(),
                "127.0.0.1:0",
                &[
                    ("FLOTILLA_AUTH_URL", &auth_url),
                    ("FLOTILLA_QUERY_URL", &query),
                    ("FLOTILLA_GATEWAY_RESOLVE_INTERVAL", "1s"),
                ],
            )
        });
        // Ready although no upstream is: it can serve, and says what is down.
        let ready = client
            .get(format!("{gw}/readyz"))
            .send()
            .await
            .expect("sent");
        assert_eq!(ready.status(), 200);
        let body: serde_json::Value = ready.json().await.expect("json");
        assert_eq!(body["status"], "degraded", "{body}");
        assert_ne!(body["checks"]["query"], "ok", "{body}");
        assert_ne!(body["checks"]["auth"], "ok", "{body}");
        for (method, path) in [("GET", "/posts"), ("POST", "/login")] {
            let response = client
                .request(method.parse().expect("method"), format!("{gw}{path}"))
                .send()
                .await
                .expect("sent");
            assert_eq!(response.status(), 503, "{path}");
            assert!(response.headers().contains_key("retry-after"), "{path}");
            assert_eq!(
                response.headers()["content-type"],
                "application/problem+json"
            );
        }
        // Its own routes are served meanwhile.
        let health = client
            .get(format!("{gw}/healthz"))
            .send()
            .await
            .expect("sent");
        assert_eq!(health.status(), 200);

        // Long enough for a process that gave up after a deadline to have done so.
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(
            gateway.0.try_wait().expect("try_wait").is_none(),
            "the gateway exited"
        );

        // auth comes: its routes are served within a few seconds, posts' still 503.
        let (_auth, _) = tokio::task::block_in_place(|| {
            start_ready(
                "auth",
                dir.path(),
                &auth_listen,
                &[("FLOTILLA_ALLOW_EMBEDDED", "1")],
            )
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let login = client
                .post(format!("{gw}/login"))
                .send()
                .await
                .expect("sent");
            if login.status() != 503 {
                // auth's own answer to a login without credentials.
                assert!(login.status().is_client_error(), "{}", login.status());
                break;
            }
            assert!(
                Instant::now() < deadline,
                "auth never served through the gateway"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let query_down = client
            .get(format!("{gw}/posts"))
            .send()
            .await
            .expect("sent");
        assert_eq!(query_down.status(), 503);
        let body: serde_json::Value = client
            .get(format!("{gw}/readyz"))
            .send()
            .await
            .expect("sent")
            .json()
            .await
            .expect("json");
        assert_eq!(body["checks"]["auth"], "ok", "{body}");
        assert_ne!(body["checks"]["query"], "ok", "{body}");

        sigterm(&gateway.0);
        let (status, _) = exit_within(&mut gateway.0, Duration::from_secs(5));
        assert!(status.success(), "{status}");
    }

    #[test]
    fn a_service_waits_for_its_database_without_exiting_and_sigterm_stops_it_at_once() {
        let dir = tempfile::tempdir().expect("temporary directory");
        // Nothing listens there: the database is "not up yet".
        let database = format!("postgres://app:app@127.0.0.1:{}/app", free_port());
        let mut auth = Process(
            command(
                "auth",
                dir.path(),
                "127.0.0.1:0",
                &[("FLOTILLA_DATABASE_URL", &database)],
            )
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("flotilla starts"),
        );
        // Several attempts later it is still there, waiting.
        std::thread::sleep(Duration::from_secs(3));
        assert!(
            auth.0.try_wait().expect("try_wait").is_none(),
            "auth exited"
        );
        sigterm(&auth.0);
        let (status, took) = exit_within(&mut auth.0, Duration::from_secs(5));
        assert!(status.success(), "{status}");
        assert!(took < Duration::from_secs(1), "SIGTERM took {took:?}");
    }
}
