//! What a crate's own tests share, without the whole system (that is `test-support`,
//! which needs the `flotilla` binary's crate): it depends on `platform` only, so the tests
//! of `bus`, `storage` and every service can use it.
//!
//! * [`spawn_app`]: a [`ServiceApp`] served over real HTTP on `127.0.0.1:0`, with the
//!   common stack, as `flotilla serve` serves it.
//! * [`TestContext`]: a [`ServiceContext`] whose data directory is a fresh temporary one.
//! * The skip-or-fail rule for what a test needs from the machine ([`real_server_url`],
//!   [`available`]): missing locally, the test is skipped with a note; missing under
//!   `CI=true`, it fails, because CI must run every test.
//! * [`media`]: fixtures made with the real `ffmpeg`, and what `ffprobe` says of a file.
//! * [`client`]: what the system tests do as a gateway's client (log in, read an event
//!   stream, poll the system view), written once.
//! * [`s3`]: a bucket of its own on the S3-compatible test server.

use std::{net::SocketAddr, path::Path, time::Duration};

use platform::{ServiceApp, ServiceContext};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub mod client;
pub mod media;
pub mod s3;

/// True when running under CI (`CI=true`), where nothing may be skipped.
pub fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// The skip-or-fail rule: returns `found`; when it is false, the test is skipped (a note
/// on stderr says why) — or, under `CI=true`, fails with `missing` as the reason.
pub fn available(found: bool, missing: &str) -> bool {
    available_under(found, missing, under_ci())
}

fn available_under(found: bool, missing: &str, ci: bool) -> bool {
    if !found {
        assert!(!ci, "{missing}, but CI=true: CI must provide it");
        eprintln!("skipped: {missing}");
    }
    found
}

/// The URL of a real server from `var` (e.g. `FLOTILLA_TEST_POSTGRES_URL`), or `None`
/// (test skipped) outside CI. Under `CI=true` a missing or empty variable panics.
pub fn real_server_url(var: &str) -> Option<String> {
    let url = std::env::var(var).ok().filter(|url| !url.trim().is_empty());
    available(url.is_some(), &format!("{var} is not set")).then_some(url)?
}

/// A [`ServiceContext`] in a temporary directory, removed (and its shutdown token
/// cancelled) on drop.
#[derive(Debug)]
pub struct TestContext {
    pub context: ServiceContext,
    dir: tempfile::TempDir,
}

impl TestContext {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let context = ServiceContext::new(dir.path().to_owned(), CancellationToken::new());
        Self { context, dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Default for TestContext {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestContext {
    fn drop(&mut self) {
        self.context.shutdown.cancel();
    }
}

/// A [`ServiceApp`] served on a port of its own; stopped (drained) by [`TestApp::stop`]
/// or, abruptly, on drop.
#[derive(Debug)]
pub struct TestApp {
    pub addr: SocketAddr,
    shutdown: CancellationToken,
    server: Option<JoinHandle<std::io::Result<()>>>,
}

/// Serves `app` with the common stack (health, metrics, problem+json, limits) on
/// `127.0.0.1:0`.
pub async fn spawn_app(app: ServiceApp) -> TestApp {
    let shutdown = CancellationToken::new();
    let listener = platform::http::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .expect("bind a free port");
    let addr = listener.local_addr().expect("the bound address");
    let entry = app.into_entry(shutdown.clone());
    let server = tokio::spawn(platform::http::serve(
        listener,
        entry,
        shutdown.clone(),
        Duration::from_secs(5),
    ));
    TestApp {
        addr,
        shutdown,
        server: Some(server),
    }
}

impl TestApp {
    /// `http://127.0.0.1:PORT` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Stops accepting, drains what is in flight and waits for the server to end.
    pub async fn stop(mut self) -> std::io::Result<()> {
        self.shutdown.cancel();
        match self.server.take() {
            Some(server) => server.await.map_err(std::io::Error::other)?,
            None => Ok(()),
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_spawned_app_serves_its_routes_with_the_common_stack_and_stops() {
        let context = TestContext::new();
        assert!(context.path().is_dir());
        assert_eq!(context.context.data_dir, context.path());
        let app = ServiceApp::new(
            "kit",
            axum::Router::new().route("/hello", axum::routing::get(|| async { "hello" })),
        );
        let app = spawn_app(app).await;
        platform::tls::install_crypto_provider();
        let client = reqwest::Client::new();
        let hello = client.get(app.url("/hello")).send().await.expect("GET");
        assert_eq!(hello.text().await.expect("body"), "hello");
        let health = client.get(app.url("/healthz")).send().await.expect("GET");
        assert!(health.status().is_success());
        let missing = client.get(app.url("/nope")).send().await.expect("GET");
        assert_eq!(missing.status(), 404);
        assert_eq!(
            missing.headers()["content-type"],
            "application/problem+json"
        );
        let url = app.url("/hello");
        app.stop().await.expect("a clean stop");
        assert!(client.get(url).send().await.is_err(), "still serving");
    }

    #[test]
    fn a_missing_requirement_is_skipped_locally_and_fails_under_ci() {
        assert!(!available_under(false, "nothing", false));
        assert!(available_under(true, "nothing", false));
        assert!(available_under(true, "nothing", true));
        let failed = std::panic::catch_unwind(|| available_under(false, "nothing", true));
        assert!(
            failed.is_err(),
            "a missing requirement under CI=true must fail"
        );
    }

    #[test]
    fn a_set_variable_is_the_url() {
        // PATH is set wherever tests run; an empty or unset one would skip (or fail).
        let path = std::env::var("PATH").expect("PATH");
        assert_eq!(real_server_url("PATH"), Some(path));
    }
}
