//! The web app in a real Chromium (Debian's `/usr/bin/chromium`), driven by Playwright
//! from PyPI (`tests/browser/web_app.py`; `PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 pip
//! install playwright` — no browser is downloaded). It signs up and logs in, uploads a
//! video and watches it reach `done` without a reload, downloads `sample.mp3`, sees a
//! non-media upload fail with its reason, posts and comments and sees the moderation
//! decisions arrive live, types a comment through 10 s of another client's changes,
//! checks the layout at 390 px with a 400-character word, the admin's view of every
//! job, 30 s of idling, an invalid token, and that nothing left the origin and nothing
//! was logged as an error. Screenshots of each step: target/web-ui/.
//!
//! Without Python's playwright, chromium or ffmpeg the test is skipped with a message —
//! except under CI=true, where that is a failure.

mod media_support;

use std::{path::PathBuf, process::Command};

const CHROMIUM: &str = "/usr/bin/chromium";

fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Python with playwright, and chromium; `None` (skip) when missing outside CI.
fn browser_tools() -> Option<()> {
    let playwright = Command::new("python3")
        .args(["-c", "import playwright.sync_api"])
        .output()
        .is_ok_and(|o| o.status.success());
    let chromium = Command::new(CHROMIUM)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let missing: Vec<&str> = [
        (!playwright).then_some("python3's playwright (pip install playwright)"),
        (!chromium).then_some(CHROMIUM),
    ]
    .into_iter()
    .flatten()
    .collect();
    if missing.is_empty() {
        return Some(());
    }
    assert!(
        !under_ci(),
        "CI=true but {} is missing: scripts/ci/start-servers.sh must install it",
        missing.join(" and ")
    );
    eprintln!("skipped: {} is missing", missing.join(" and "));
    None
}

/// Where screenshots go: target/web-ui (kept after the run, for people to look at).
fn output_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/web-ui");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("output dir");
    dir
}

#[tokio::test(flavor = "multi_thread")]
async fn the_web_app_works_in_a_real_browser() {
    if browser_tools().is_none() || !media_support::have_ffmpeg() {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let video = media_support::mp4_with_aac(dir.path(), 2);
    let system = media_support::start(&dir.path().join("data"), |_| {}).await;
    let out = output_dir();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("browser/web_app.py");
    let url = system.url("/");

    // The script's last step needs the server gone: it asks by creating `stop-now`.
    let stop_now = out.join("stop-now");
    let stopper = tokio::spawn(async move {
        while !stop_now.exists() {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        system.stop().await
    });
    let run = tokio::process::Command::new("python3")
        .arg(&script)
        .arg("--url")
        .arg(&url)
        .arg("--video")
        .arg(&video)
        .arg("--out")
        .arg(&out)
        .args(["--chromium", CHROMIUM])
        .args(["--admin-email", media_support::ADMIN_EMAIL])
        .args(["--admin-password", media_support::ADMIN_PASSWORD])
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(std::time::Duration::from_secs(600), run)
        .await
        .expect("the browser test finished within 10 minutes")
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "the browser test failed (screenshots in {}):\n{stdout}\n{stderr}",
        out.display()
    );
    assert!(stdout.contains("all browser checks passed"), "{stdout}");
    stopper.await.expect("the stopper ran").expect("clean stop");
}

/// The system map (`/system`) in the same Chromium: every service and the `video` queue,
/// an upload in another tab moving along the arrows, a service's details, a queue's
/// dead letters, a message's trace; every title and caption readable in full, no box over
/// another, no arrow across a box, at 1280 and 1600 px wide (`tests/browser/system_map.py`).
/// Screenshots: target/system-map/ (docs/system-map.png is `flow.png`).
#[tokio::test(flavor = "multi_thread")]
async fn the_system_map_works_in_a_real_browser() {
    if browser_tools().is_none() || !media_support::have_ffmpeg() {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let video = media_support::mp4_with_aac(dir.path(), 2);
    let system = media_support::start(&dir.path().join("data"), |_| {}).await;
    let out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/system-map");
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).expect("output dir");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("browser/system_map.py");
    let run = tokio::process::Command::new("python3")
        .arg(&script)
        .arg("--url")
        .arg(system.url("/"))
        .arg("--video")
        .arg(&video)
        .arg("--out")
        .arg(&out)
        .args(["--chromium", CHROMIUM])
        .args(["--admin-email", media_support::ADMIN_EMAIL])
        .args(["--admin-password", media_support::ADMIN_PASSWORD])
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(std::time::Duration::from_secs(300), run)
        .await
        .expect("the browser test finished within 5 minutes")
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "the system map test failed (screenshots in {}):\n{stdout}\n{stderr}",
        out.display()
    );
    assert!(stdout.contains("all system map checks passed"), "{stdout}");
    system.stop().await.expect("clean stop");
}
