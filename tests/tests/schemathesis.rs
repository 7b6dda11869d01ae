//! Schemathesis against the running system's own description: `flotilla up` (in this
//! process, as `main` starts it) with a seeded admin, then `schemathesis run --checks
//! all` on its `/openapi.json` with the admin's token on every request. Every check
//! must pass on every route: no 5xx, every answer inside its documented status codes,
//! content types, headers and schemas, every schema-valid request accepted and every
//! schema-violating one refused (scripts/ci/schemathesis.toml names 408 and 413 as
//! refusals too), authentication not ignored, 405 with `Allow` for undocumented
//! methods. Only the live streams (`/live/…`, `/admin/system/stream`: endless Server-Sent Events) are left
//! out. The description is generated from the handlers (docs/API.md), so this is a
//! test of the server and of its description at once.
//!
//! Schemathesis (PyPI, 4.x) is installed by scripts/ci/start-servers.sh; outside CI a
//! missing one skips the test, under CI=true it fails it. The run is bounded:
//! `FLOTILLA_SCHEMATHESIS_MAX_EXAMPLES` examples per operation (default 10), a fixed
//! seed, one worker.

use std::{path::Path, time::Duration};

const ADMIN_EMAIL: &str = "schemathesis-admin@example.com";
const ADMIN_PASSWORD: &str = "schemathesis-admin-password";

fn schemathesis_installed() -> bool {
    let found = std::process::Command::new("schemathesis")
        .arg("--version")
        .output()
        .is_ok_and(|out| out.status.success());
    if !found && std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("schemathesis is missing, but CI=true: scripts/ci/start-servers.sh installs it");
    }
    if !found {
        eprintln!("skipped: schemathesis is not installed (pip install 'schemathesis>=4,<5')");
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_failure_on_any_route() {
    if !schemathesis_installed() {
        return;
    }
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut services = flotilla::ServiceArgs::default();
    services.auth.admin_email = Some(ADMIN_EMAIL.to_owned());
    services.auth.admin_password = Some(ADMIN_PASSWORD.to_owned());
    // Random comments are mostly on posts that do not exist: answer 404 at once rather
    // than after the default 10 s wait for the post to arrive.
    services.comments.comments_post_wait = Duration::from_millis(200);
    // Random uploads are not media; symphonia alone says so, faster than ffmpeg.
    services.converter.converter_ffmpeg = Some("off".to_owned());
    let system = test_support::spawn_system_with(dir.path(), services).await;
    let token = system
        .client
        .post(system.url("/login"))
        .basic_auth(ADMIN_EMAIL, Some(ADMIN_PASSWORD))
        .send()
        .await
        .expect("login")
        .text()
        .await
        .expect("token");

    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/ci/schemathesis.toml");
    let examples =
        std::env::var("FLOTILLA_SCHEMATHESIS_MAX_EXAMPLES").unwrap_or_else(|_| "10".to_owned());
    let started = std::time::Instant::now();
    let output = tokio::process::Command::new("schemathesis")
        .arg("--config-file")
        .arg(&config)
        .args(["run", &system.url("/openapi.json")])
        .args(["--url", &system.base_url])
        .args(["--checks", "all"])
        .args([
            "--header",
            &format!("Authorization: Bearer {}", token.trim()),
        ])
        .args(["--max-examples", &examples])
        // The live routes are endless event streams, which Schemathesis would wait on
        // until its request timeout; the gateway's tests cover them.
        .args(["--exclude-path-regex", "^/live/|^/admin/system/stream$"])
        .args(["--seed", "18", "--workers", "1", "--request-timeout", "30"])
        .arg("--no-color")
        .kill_on_drop(true)
        .output()
        .await
        .expect("schemathesis runs");
    let report = String::from_utf8_lossy(&output.stdout);
    eprintln!(
        "schemathesis: {:.0} s, {}",
        started.elapsed().as_secs_f64(),
        report.lines().last().unwrap_or_default()
    );
    assert!(
        output.status.success(),
        "schemathesis found failures:\n{report}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // Every operation of the description was tested.
    assert!(report.contains("Tested: "), "{report}");
    system.stop().await.expect("stop");
}
