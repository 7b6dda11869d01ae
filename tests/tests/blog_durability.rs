//! The blog survives `kill -9`: the real `flotilla` binary is killed with SIGKILL, once
//! when everything has settled (the view comes back identical) and then three times in
//! the middle of a burst of writes, at different moments (every acknowledged post and
//! comment comes back exactly once, and the asynchronous side finishes its work after
//! the restart).

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use serde_json::{Value, json};

/// How long the view may take to settle after a restart. Shorter than the bus's lease
/// (30 s), so a delivery left leased by the killed process that only comes back when its
/// lease expires fails the test instead of slipping in just in time.
const SETTLE: Duration = Duration::from_secs(20);

/// When, after the start of a burst of writes, each kill comes.
const KILL_AFTER_MS: [u64; 3] = [700, 1_500, 2_300];

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
    let url = test_support::ready_url(child.stdout.take().expect("stdout"));
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
        let seen = comments_of(&view);
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

fn comments_of(view: &Value) -> Vec<&Value> {
    view.as_object()
        .expect("map")
        .values()
        .filter_map(|p| p["comments"].as_array())
        .flatten()
        .collect()
}

/// The posts and comments whose creation was acknowledged (201 and its body received).
#[derive(Debug, Default)]
struct Acknowledged {
    posts: Vec<String>,
    comments: Vec<String>,
}

/// Writes `n` posts with two comments each, until the first failure (the process may be
/// killed meanwhile); returns what was acknowledged.
async fn write(client: &reqwest::Client, base: &str, n: usize, tag: &str) -> Acknowledged {
    let mut acknowledged = Acknowledged::default();
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
        // Cut between the head and the body: not acknowledged (it may have committed,
        // as may any request in flight at the kill).
        let Ok(post) = response.json::<Value>().await else {
            break;
        };
        let id = post["id"].as_str().expect("id").to_owned();
        acknowledged.posts.push(id.clone());
        for content in ["kept", "Orange"] {
            let Ok(response) = client
                .post(format!("{base}/posts/{id}/comments"))
                .json(&json!({ "content": content }))
                .send()
                .await
            else {
                return acknowledged;
            };
            if response.status() != 201 {
                return acknowledged;
            }
            // The post's comments, the new one last (this is the only writer).
            let Ok(comments) = response.json::<Value>().await else {
                return acknowledged;
            };
            let new = comments
                .as_array()
                .and_then(|all| all.last())
                .and_then(|c| c["id"].as_str())
                .expect("the new comment last");
            acknowledged.comments.push(new.to_owned());
        }
    }
    acknowledged
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_blog_survives_kill_9() {
    let binary = test_support::flotilla_binary();
    // Kept on failure, for a look at the databases.
    let dir = tempfile::Builder::new()
        .prefix("blog-kill-")
        .tempdir()
        .expect("temporary directory");
    let client = test_support::http_client();

    // Settled, killed, restarted: the same view.
    let (child, base) = start(&binary, dir.path());
    let settled = write(&client, &base, 5, "settled").await;
    assert_eq!((settled.posts.len(), settled.comments.len()), (5, 10));
    let before = settled_view(&client, &base, 5, 10).await;
    kill_9(child);
    let (mut child, mut base) = start(&binary, dir.path());
    assert_eq!(view(&client, &base).await, before, "after kill -9");

    // Killed in the middle of bursts: what was acknowledged is there once, and the events
    // still in outboxes and queues (or leased by the killed process) are delivered after
    // the restart.
    let mut after = before.clone();
    for (round, kill_after) in KILL_AFTER_MS.into_iter().enumerate() {
        let (posts_before, comments_before) = (
            after.as_object().expect("map").len(),
            comments_of(&after).len(),
        );
        let writer = {
            let client = client.clone();
            let base = base.clone();
            tokio::spawn(
                async move { write(&client, &base, 1_000, &format!("burst {round}")).await },
            )
        };
        tokio::time::sleep(Duration::from_millis(kill_after)).await;
        kill_9(child);
        let acknowledged = writer.await.expect("writer task");
        assert!(
            !acknowledged.posts.is_empty(),
            "round {round}: nothing was written before the kill"
        );
        (child, base) = start(&binary, dir.path());
        // Every acknowledged write, plus at most the one request in flight at the kill
        // (committed, its answer lost).
        let (posts_min, comments_min) = (
            posts_before + acknowledged.posts.len(),
            comments_before + acknowledged.comments.len(),
        );
        let deadline = tokio::time::Instant::now() + SETTLE;
        after = loop {
            let view = view(&client, &base).await;
            let all = view.as_object().expect("map");
            let comments = comments_of(&view);
            let missing_posts: Vec<&String> = acknowledged
                .posts
                .iter()
                .filter(|id| !all.contains_key(id.as_str()))
                .collect();
            let missing_comments: Vec<&String> = acknowledged
                .comments
                .iter()
                .filter(|id| !comments.iter().any(|c| c["id"] == id.as_str()))
                .collect();
            let pending = comments.iter().filter(|c| c["status"] == "pending").count();
            let extra = (all.len() + comments.len()).saturating_sub(posts_min + comments_min);
            if missing_posts.is_empty()
                && missing_comments.is_empty()
                && pending == 0
                && all.len() >= posts_min
                && comments.len() >= comments_min
                && extra <= 1
            {
                break view;
            }
            if tokio::time::Instant::now() >= deadline {
                let kept = dir.keep();
                panic!(
                    "round {round}, {SETTLE:?} after the restart (data kept in {}): {} posts \
                     (acknowledged {posts_min}), {} comments (acknowledged {comments_min}), \
                     {pending} pending; acknowledged but missing: posts {missing_posts:?}, \
                     comments {missing_comments:?}",
                    kept.display(),
                    all.len(),
                    comments.len(),
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        // Exactly once, with the moderation rule applied to each.
        let mut ids = std::collections::HashSet::new();
        for comment in comments_of(&after) {
            assert!(ids.insert(comment["id"].to_string()), "duplicate {comment}");
            let expected = if comment["content"] == "Orange" {
                "rejected"
            } else {
                "approved"
            };
            assert_eq!(comment["status"], expected, "{comment}");
        }
        for (id, post) in before.as_object().expect("map") {
            assert_eq!(&after[id], post, "settled posts unchanged");
        }
    }
    kill_9(child);
    drop(dir);
}
