//! Power loss: an acknowledged blog write is on the disk before it is acknowledged, not
//! only in the operating system's cache (which a `kill -9` keeps but a power loss does
//! not). The real `flotilla up` runs under `strace`, which records, in order, the request
//! read from the client's socket, SQLite's writes to the service's write-ahead log, its
//! `fsync`/`fdatasync` of that log, and the `201` written back. For every acknowledged
//! post and comment, the log's write and then its sync must come between the request and
//! the answer. With `synchronous=NORMAL` (the old setting) there is no such sync and this
//! test fails. Needs `strace` (installed by `scripts/ci/start-servers.sh`).

use std::{
    collections::HashMap,
    process::{Command, Stdio},
    time::Duration,
};

use serde_json::{Value, json};

/// One thing the trace shows, in the order it happened.
#[derive(Debug, PartialEq)]
enum Event {
    /// A `POST` of a post (`true`) or a comment read from a client.
    Request { post: bool },
    /// Bytes written to this log file.
    LogWrite(String),
    /// This log file's sync returned.
    LogSynced(String),
    /// A `201` written to a client.
    Created,
}

/// The events of an `strace -f -yy -s 64` output.
fn events(trace: &str) -> Vec<Event> {
    // A syscall that blocks shows as "PID name(args <unfinished ...>" and later
    // "PID <... name resumed>) = 0": its file is on the first line, its end on the second.
    let mut pending: HashMap<String, String> = HashMap::new();
    let mut events = Vec::new();
    for line in trace.lines() {
        let Some((pid, call)) = line.split_once(' ') else {
            continue;
        };
        let call = call.trim_start();
        if call.contains("\"POST /posts/create ") {
            events.push(Event::Request { post: true });
        } else if call.contains("\"POST /posts/") && call.contains("/comments ") {
            events.push(Event::Request { post: false });
        } else if call.contains("\"HTTP/1.1 201 ") {
            events.push(Event::Created);
        }
        // strace pads a result to a column: "<... fsync resumed>)      = 0".
        let succeeded = |call: &str| {
            call.rsplit_once(')')
                .is_some_and(|(_, result)| result.trim() == "= 0")
        };
        let log = |call: &str| {
            call.split_once('<')
                .and_then(|(_, rest)| rest.split_once('>'))
                .map(|(path, _)| path.to_owned())
                .filter(|path| path.ends_with(".db-wal"))
        };
        if call.starts_with("pwrite64(") || call.starts_with("write(") {
            if let Some(path) = log(call) {
                events.push(Event::LogWrite(path));
            }
        } else if call.starts_with("fsync(") || call.starts_with("fdatasync(") {
            if let Some(path) = log(call) {
                if call.ends_with("<unfinished ...>") {
                    pending.insert(pid.to_owned(), path);
                } else if succeeded(call) {
                    events.push(Event::LogSynced(path));
                }
            }
        } else if (call.starts_with("<... fsync resumed>")
            || call.starts_with("<... fdatasync resumed>"))
            && succeeded(call)
            && let Some(path) = pending.remove(pid)
        {
            events.push(Event::LogSynced(path));
        }
    }
    events
}

/// How many requests were acknowledged, and how many of them without their service's
/// log being written and then synced between the request and its answer. (A sync makes
/// every write before it durable, whoever wrote it; an answer that leaves before the sync
/// of its commit, or a commit that is never synced, shows as unsynced.)
fn unsynced_acknowledgements(events: &[Event]) -> (usize, usize) {
    let (mut acknowledged, mut unsynced) = (0, 0);
    let mut current: Option<(&str, bool, bool)> = None; // (log, written, synced after)
    for event in events {
        match event {
            Event::Request { post } => {
                let log = if *post {
                    "posts.db-wal"
                } else {
                    "comments.db-wal"
                };
                current = Some((log, false, false));
            }
            Event::LogWrite(path) => {
                // Not "unsynced again": another writer of the same file (the outbox
                // relay marking the event sent) may append after this write's sync.
                if let Some((log, written, _)) = current.as_mut()
                    && path.ends_with(*log)
                {
                    *written = true;
                }
            }
            Event::LogSynced(path) => {
                if let Some((log, written, synced)) = current.as_mut()
                    && path.ends_with(*log)
                    && *written
                {
                    *synced = true;
                }
            }
            Event::Created => {
                if let Some((_, _, synced)) = current.take() {
                    acknowledged += 1;
                    if !synced {
                        unsynced += 1;
                    }
                }
            }
        }
    }
    (acknowledged, unsynced)
}

#[test]
fn the_trace_reader_tells_a_synced_write_from_an_unsynced_one() {
    let synced = "\
1 recvfrom(9<TCP:[1->2]>, \"POST /posts/create HTTP/1.1\\r\\n\"..., 8192) = 90
2 pwrite64(7</d/posts.db-wal>, \"\\0\"..., 4096, 0) = 4096
2 fdatasync(7</d/posts.db-wal> <unfinished ...>
3 epoll_wait(4<anon_inode:[eventpoll]>, [], 1024, 0) = 0
2 <... fdatasync resumed>)               = 0
1 writev(9<TCP:[1->2]>, [{iov_base=\"HTTP/1.1 201 Created\\r\\n\"...}], 2) = 200
";
    let unsynced = "\
1 recvfrom(9<TCP:[1->2]>, \"POST /posts/create HTTP/1.1\\r\\n\"..., 8192) = 90
2 fdatasync(8</d/comments.db-wal>) = 0
2 pwrite64(7</d/posts.db-wal>, \"\\0\"..., 4096, 0) = 4096
1 writev(9<TCP:[1->2]>, [{iov_base=\"HTTP/1.1 201 Created\\r\\n\"...}], 2) = 200
2 fdatasync(7</d/posts.db-wal>) = 0
";
    assert_eq!(unsynced_acknowledgements(&events(synced)), (1, 0));
    assert_eq!(unsynced_acknowledgements(&events(unsynced)), (1, 1));
}

#[tokio::test]
async fn every_acknowledged_blog_write_is_synced_to_disk_before_its_answer() {
    let strace = Command::new("strace").arg("-V").output();
    if !test_support::available(
        strace.is_ok_and(|out| out.status.success()),
        "strace is not installed",
    ) {
        return;
    }
    let dir = tempfile::tempdir().expect("temporary directory");
    let trace_file = dir.path().join("trace.txt");
    let data = dir.path().join("data");
    let binary = test_support::flotilla_binary();
    let strace = Command::new("strace")
        .args(["-f", "-qq", "-yy", "-s", "64", "-e"])
        .arg("trace=read,recvfrom,write,writev,sendto,sendmsg,pwrite64,fsync,fdatasync")
        .arg("-o")
        .arg(&trace_file)
        .arg(&binary)
        .args(["up", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("strace starts");
    // Killed however the test ends, so a failed assertion leaves no process behind.
    let mut strace = Traced(strace);
    let base = test_support::ready_url(strace.0.stdout.take().expect("stdout"));

    // One request at a time on one connection, so each answer pairs with its request.
    platform::tls::install_crypto_provider();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client");
    let mut written = 0;
    for n in 0..8 {
        let response = client
            .post(format!("{base}/posts/create"))
            .json(&json!({ "title": format!("durable {n}") }))
            .send()
            .await
            .expect("sent");
        assert_eq!(response.status(), 201);
        written += 1;
        let post: Value = response.json().await.expect("JSON");
        let id = post["id"].as_str().expect("id").to_owned();
        // The comments service learns of the post from its event: wait for that.
        let mut tries = 0;
        loop {
            let response = client
                .post(format!("{base}/posts/{id}/comments"))
                .json(&json!({ "content": format!("comment {n}") }))
                .send()
                .await
                .expect("sent");
            if response.status() == 201 {
                written += 1;
                break;
            }
            tries += 1;
            assert!(
                tries < 200,
                "the post never reached comments: {}",
                response.status()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    drop(strace);
    let trace = std::fs::read_to_string(&trace_file).expect("the trace");
    let (acknowledged, unsynced) = unsynced_acknowledgements(&events(&trace));
    assert_eq!(
        acknowledged, written,
        "every 201 the client got shows in the trace"
    );
    assert_eq!(
        unsynced, 0,
        "{unsynced} of {acknowledged} writes were acknowledged before their log was synced"
    );
}

/// strace and the traced `flotilla up`; dropping it ends flotilla with SIGKILL — what a
/// power loss does to a process — and waits for strace to write the rest of its trace.
struct Traced(std::process::Child);

impl Drop for Traced {
    fn drop(&mut self) {
        let children = std::fs::read_to_string(format!(
            "/proc/{pid}/task/{pid}/children",
            pid = self.0.id()
        ))
        .unwrap_or_default();
        for child in children.split_whitespace() {
            let _ = Command::new("kill").args(["-KILL", child]).status();
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
