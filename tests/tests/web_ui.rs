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

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

const CHROMIUM: &str = "/usr/bin/chromium";

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
        !test_support::under_ci(),
        "CI=true but {} is missing: scripts/ci/start-servers.sh must install it",
        missing.join(" and ")
    );
    eprintln!("skipped: {} is missing", missing.join(" and "));
    None
}

/// `up` with the admin in a temporary directory, and a video (2 s, AAC) in it to upload;
/// `None` (skip) without the browser tools or ffmpeg.
async fn browser_system() -> Option<(tempfile::TempDir, PathBuf, test_support::TestSystem)> {
    if browser_tools().is_none() || !media_support::have_ffmpeg() {
        return None;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let video = media_support::mp4_with_aac(dir.path(), 2);
    let system = media_support::start(&dir.path().join("data"), |_| {}).await;
    Some((dir, video, system))
}

/// Where a test's screenshots go: target/NAME, emptied first and kept after the run,
/// for people to look at.
fn output_dir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target")
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("output dir");
    dir
}

/// Runs `tests/browser/SCRIPT` against the system at `url` in Chromium, with the admin
/// account, `video` to upload and `out` for screenshots (the command line of
/// tests/browser/chromium.py); panics unless it ends within `patience`, succeeds and
/// prints `passed`.
async fn run_browser_script(
    script: &str,
    url: &str,
    video: &Path,
    out: &Path,
    patience: Duration,
    passed: &str,
) {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("browser")
        .join(script);
    let run = tokio::process::Command::new("python3")
        // The scripts import tests/browser/chromium.py: no __pycache__ left in the tree.
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .arg(&script)
        .arg("--url")
        .arg(url)
        .arg("--video")
        .arg(video)
        .arg("--out")
        .arg(out)
        .args(["--chromium", CHROMIUM])
        .args(["--admin-email", media_support::ADMIN_EMAIL])
        .args(["--admin-password", media_support::ADMIN_PASSWORD])
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(patience, run)
        .await
        .unwrap_or_else(|_| panic!("{} did not finish within {patience:?}", script.display()))
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "{} failed (screenshots in {}):\n{stdout}\n{stderr}",
        script.display(),
        out.display()
    );
    assert!(stdout.contains(passed), "{stdout}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_web_app_works_in_a_real_browser() {
    let Some((_dir, video, system)) = browser_system().await else {
        return;
    };
    let out = output_dir("web-ui");
    let url = system.url("/");

    // The script's last step needs the server gone: it asks by creating `stop-now`.
    let stop_now = out.join("stop-now");
    let stopper = tokio::spawn(async move {
        while !stop_now.exists() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        system.stop().await
    });
    run_browser_script(
        "web_app.py",
        &url,
        &video,
        &out,
        Duration::from_secs(600),
        "all browser checks passed",
    )
    .await;
    stopper.await.expect("the stopper ran").expect("clean stop");
}

/// The system map (`/system`) in the same Chromium: every service and the `video` queue,
/// an upload in another tab moving along the arrows, a service's details, a queue's
/// dead letters, a message's trace; every title and caption readable in full, no box over
/// another, no arrow across a box, at 1280 and 1600 px wide (`tests/browser/system_map.py`).
/// Screenshots: target/system-map/ (docs/system-map.png is `flow.png`).
#[tokio::test(flavor = "multi_thread")]
async fn the_system_map_works_in_a_real_browser() {
    let Some((_dir, video, system)) = browser_system().await else {
        return;
    };
    let out = output_dir("system-map");
    run_browser_script(
        "system_map.py",
        &system.url("/"),
        &video,
        &out,
        Duration::from_secs(300),
        "all system map checks passed",
    )
    .await;
    system.stop().await.expect("clean stop");
}
