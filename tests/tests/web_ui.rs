//! The web UI in a real headless Chromium: the page loads under its Content-Security-Policy,
//! its script runs, calls the API and renders what the blog holds.

use std::{process::Command, time::Duration};

use test_support::spawn_system;

fn chromium() -> Option<&'static str> {
    let found = ["chromium", "chromium-browser"].into_iter().find(|name| {
        Command::new(name)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if found.is_none() {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("chromium is missing, but CI=true: .ci/run must install it");
        }
        eprintln!("skipped: chromium is not installed");
    }
    found
}

/// The DOM after the page's scripts ran (Chromium's virtual time lets timers and fetches
/// settle before the dump).
fn rendered_dom(browser: &str, url: &str) -> String {
    let profile = tempfile::tempdir().expect("temporary profile");
    let output = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--virtual-time-budget=5000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(url)
        .output()
        .expect("chromium runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_page_renders_the_blog_from_the_api() {
    let Some(browser) = chromium() else { return };
    let system = spawn_system().await;
    let title = "Rendered by the browser";
    let created = system
        .client
        .post(system.url("/posts/create"))
        .json(&serde_json::json!({"title": title}))
        .send()
        .await
        .expect("sent");
    assert_eq!(created.status(), 201);
    // The read model is eventually consistent: wait until the post is in the view.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let view = system
            .client
            .get(system.url("/posts"))
            .send()
            .await
            .expect("sent")
            .text()
            .await
            .expect("body");
        if view.contains(title) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "post never reached the view"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let url = system.url("/");
    let dom = tokio::task::spawn_blocking(move || rendered_dom(browser, &url))
        .await
        .expect("joined");
    assert!(dom.contains("<h1>Flotilla</h1>"), "{dom}");
    assert!(
        dom.contains(title),
        "the script did not render the post: {dom}"
    );
    assert!(dom.contains("not logged in"), "{dom}");
    system.stop().await.expect("clean stop");
}
