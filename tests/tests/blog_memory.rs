//! Reading the blog's event log costs memory by the page, not by the log: a real
//! `flotilla up` process whose log holds 32 MiB of events (32 events of 1 MiB, as a log
//! written before today's 64 KiB limit may) is read whole through the gateway, one
//! client and then four at once, and its resident set is measured from `/proc`. Before
//! paging, one `GET /events` answered the whole log in one body and grew the process by
//! hundreds of MiB (issue 14).

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use serde_json::{Value, json};

const EVENTS: usize = 32;
const EVENT_CHARS: usize = 1024 * 1024;
/// Growth of the peak resident set allowed while the log is read: half the log for one
/// reader, the whole log for four at once.
const ONE_READER_MIB: u64 = 16;
const FOUR_READERS_MIB: u64 = 32;

/// The event-bus's database in `dir`, migrated as the service does, holding the events.
async fn write_log(dir: &Path) {
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.join(format!("{}.db", event_bus::NAME)).display()
    );
    let db = storage::Database::connect(&url).await.expect("connect");
    db.migrate(event_bus::NAME, event_bus::log::MIGRATIONS)
        .await
        .expect("migrate");
    let data = json!({ "blob": "x".repeat(EVENT_CHARS) }).to_string();
    let mut tx = db.begin().await.expect("begin");
    for seq in 1..=EVENTS {
        sqlx::query(
            "INSERT INTO event_log (seq, message_id, event_type, data, provides, appended_at) \
             VALUES (?, ?, 'Filler', ?, NULL, 0)",
        )
        .bind(seq as i64)
        .bind(format!("filler-{seq}"))
        .bind(&data)
        .execute(&mut *tx)
        .await
        .expect("insert");
    }
    tx.commit().await.expect("commit");
    db.close().await;
}

fn start(dir: &Path) -> (Child, String) {
    let mut child = Command::new(test_support::flotilla_binary())
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

/// `VmRSS` or `VmHWM` (the peak) of process `pid`, in KiB.
fn memory_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("procfs");
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"))
}

/// Reads the whole log, following `Link: rel="next"`; returns the events and pages.
async fn read_log(client: &reqwest::Client, base: &str) -> (usize, usize) {
    let (mut events, mut pages) = (0, 0);
    let mut next = Some("/events".to_owned());
    while let Some(path) = next.take() {
        let response = client
            .get(format!("{base}{path}"))
            .send()
            .await
            .expect("sent");
        assert_eq!(response.status(), 200, "GET {path}");
        next = response
            .headers()
            .get("link")
            .and_then(|link| link.to_str().ok())
            .and_then(|link| link.split_once('<'))
            .and_then(|(_, rest)| rest.split_once('>'))
            .map(|(target, _)| target.to_owned());
        let page: Vec<Value> = response.json().await.expect("JSON");
        events += page.len();
        pages += 1;
    }
    (events, pages)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_the_event_log_does_not_grow_memory_with_the_log() {
    let dir = tempfile::tempdir().expect("temporary directory");
    write_log(dir.path()).await;
    let (mut child, base) = start(dir.path());
    let pid = child.id();
    let client = test_support::http_client();
    // Settled: the query service has followed the log (ready says so) and gone idle.
    tokio::time::sleep(Duration::from_secs(3)).await;
    // The peak so far (start-up, the query service's own reading of the log) is reset
    // to the current resident set, so the peak measured next is the reading's.
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").expect("peak RSS reset");
    let before = memory_kib(pid, "VmHWM:");

    let (events, pages) = read_log(&client, &base).await;
    assert_eq!(events, EVENTS);
    assert!(pages > 1, "the log came in {pages} page(s)");
    let one = memory_kib(pid, "VmHWM:").saturating_sub(before);

    let readers: Vec<_> = (0..4)
        .map(|_| {
            let (client, base) = (client.clone(), base.clone());
            tokio::spawn(async move { read_log(&client, &base).await })
        })
        .collect();
    for reader in readers {
        assert_eq!(reader.await.expect("reader").0, EVENTS);
    }
    let four = memory_kib(pid, "VmHWM:").saturating_sub(before);
    child.kill().expect("stopped");
    child.wait().expect("reaped");
    eprintln!(
        "log of {} MiB in {pages} pages: peak RSS +{one} KiB for one reader, +{four} KiB for four",
        EVENTS * EVENT_CHARS / (1024 * 1024)
    );
    assert!(one < ONE_READER_MIB * 1024, "one reader: +{one} KiB");
    assert!(four < FOUR_READERS_MIB * 1024, "four readers: +{four} KiB");
}
