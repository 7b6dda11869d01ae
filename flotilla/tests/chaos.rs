//! Chaos: production mode on this machine — every service its own process, two
//! converters, RabbitMQ, PostgreSQL, an SMTP sink — under a steady mixed load (uploads
//! from several users, non-media files among them, posts, comments with and without the
//! blocked word, downloads, logins), with one fault picked at random in each round:
//! `kill -9` of a service (restarted as a supervisor would), SIGTERM during work, the
//! broker restarted, PostgreSQL restarted, the SMTP sink down, the network to the broker
//! slowed or cut (through a relay the services connect by). Two runs, one after the other:
//! blobs on a small disk that also fills up now and then, and blobs on the S3-compatible
//! server, whose link is slowed or cut too.

//! When the load stops and the system settles, a checker that reads the databases, the
//! maildir, the blob store and the broker's queues — not the API — counts what was
//! lost, duplicated or stuck. The last line:
//!
//! `chaos: R rounds, F faults, U uploads, C comments, lost 0, duplicate 0, stuck 0, unexpected dead letters 0`
//!
//! and a JSON report (`target/tmp/chaos/report-disk.json`, `report-s3.json`) beside the
//! processes' logs (kept when anything is non-zero).
//!
//! Rounds: `FLOTILLA_CHAOS_ROUNDS` (default 20; `scripts/chaos.sh ROUNDS` runs the long
//! form); `FLOTILLA_CHAOS_FAULTS=kill9,broker-cut,…` picks only among those faults.
//! Restarting the shared RabbitMQ and PostgreSQL happens only when
//! `FLOTILLA_TEST_RABBITMQ_RESTART_CMD` / `FLOTILLA_TEST_POSTGRES_RESTART_CMD` say how
//! (`.ci/run` sets both: test binaries run one at a time there); without them those two
//! faults are left out and the report says so. Needs root for the tmpfs (as the
//! disk-full test); under `CI=true` every missing part is a failure.

mod production_support;

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU8, Ordering},
    },
    time::{Duration, Instant},
};

use production_support::{
    ADMIN_EMAIL, ADMIN_PASSWORD, BIN, Databases, Options, System, servers, wav,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tokio_util::sync::CancellationToken;

/// Every service process the system runs.
const PROCESSES: [&str; 11] = [
    "auth",
    "event-bus",
    "media",
    "converter",
    "converter-2",
    "notification",
    "posts",
    "comments",
    "moderation",
    "query",
    "gateway",
];
/// The word the moderation service rejects.
const BLOCKED: &str = "orange";
/// Emails the notification service hands over at once (its consumer's concurrency): what
/// one `kill -9` can leave sent but unrecorded.
const NOTIFICATION_IN_FLIGHT: u64 = 4;
/// Poison messages the run publishes itself: the only dead letters expected.
const POISON: u64 = 1;

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

// ---------------------------------------------------------------------------------------
// Faults between the services and the broker: a TCP relay the services connect through.

const PASS: u8 = 0;
const DELAY: u8 = 1;
const CUT: u8 = 2;

/// Relays TCP to `target`, passing bytes as they come, late, or not at all.
struct Relay {
    address: SocketAddr,
    mode: Arc<AtomicU8>,
    /// Bumped to close every relayed connection.
    cut: tokio::sync::watch::Sender<u64>,
}

impl Relay {
    async fn start(target: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("relay port");
        let address = listener.local_addr().expect("relay address");
        let mode = Arc::new(AtomicU8::new(PASS));
        let (cut, _) = tokio::sync::watch::channel(0u64);
        let accept_mode = mode.clone();
        let accept_cut = cut.clone();
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                if accept_mode.load(Ordering::SeqCst) == CUT {
                    drop(inbound);
                    continue;
                }
                let mode = accept_mode.clone();
                let mut cut = accept_cut.subscribe();
                tokio::spawn(async move {
                    let Ok(outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    let (inbound_read, inbound_write) = inbound.into_split();
                    let (outbound_read, outbound_write) = outbound.into_split();
                    tokio::select! {
                        _ = pass(inbound_read, outbound_write, mode.clone()) => {}
                        _ = pass(outbound_read, inbound_write, mode) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Relay { address, mode, cut }
    }

    fn set(&self, mode: u8) {
        self.mode.store(mode, Ordering::SeqCst);
        if mode == CUT {
            self.cut.send_modify(|generation| *generation += 1);
        }
    }
}

async fn pass(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mode: Arc<AtomicU8>,
) -> std::io::Result<()> {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let read = from.read(&mut buffer).await?;
        if read == 0 {
            return to.shutdown().await;
        }
        if mode.load(Ordering::SeqCst) == DELAY {
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        to.write_all(&buffer[..read]).await?;
    }
}

// ---------------------------------------------------------------------------------------
// The parts around the system: an SMTP sink it can lose, a disk that can fill.

/// An SMTP sink (aiosmtpd) writing every message into a Maildir; it can be stopped and
/// started again on the same port.
struct SmtpSink {
    port: u16,
    maildir: PathBuf,
    child: Option<Child>,
}

impl SmtpSink {
    fn start(maildir: PathBuf) -> SmtpSink {
        let port = free_port();
        let mut sink = SmtpSink {
            port,
            maildir,
            child: None,
        };
        sink.up();
        sink
    }

    fn up(&mut self) {
        let child = Command::new("python3")
            .args(["-m", "aiosmtpd", "-n", "-l"])
            .arg(format!("127.0.0.1:{}", self.port))
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(&self.maildir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 -m aiosmtpd starts (pip install aiosmtpd)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "the SMTP sink did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn down(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Every message's `Message-ID`.
    fn message_ids(&self) -> Vec<String> {
        let mut ids = Vec::new();
        for sub in ["new", "cur"] {
            let Ok(entries) = std::fs::read_dir(self.maildir.join(sub)) else {
                continue;
            };
            for entry in entries.filter_map(Result::ok) {
                let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
                if let Some(id) = text
                    .lines()
                    .find_map(|line| line.strip_prefix("Message-ID: "))
                {
                    ids.push(id.trim().to_owned());
                }
            }
        }
        ids
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        self.down();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

/// Where the run keeps its blobs, and the fault that store can suffer.
enum Blobs {
    /// A small disk (a tmpfs) that can fill up.
    Disk(test_support::Tmpfs),
    /// A bucket of the S3-compatible test server, reached through a relay that can slow
    /// or cut the link.
    S3 {
        endpoint: String,
        bucket: String,
        relay: Relay,
    },
}

impl Blobs {
    /// `FLOTILLA_BLOB_URL` and what else the services need to use the store.
    fn env(&self) -> Vec<(String, String)> {
        match self {
            Blobs::Disk(disk) => vec![(
                "FLOTILLA_BLOB_URL".into(),
                format!("file://{}", disk.path().display()),
            )],
            Blobs::S3 { bucket, relay, .. } => vec![
                ("FLOTILLA_BLOB_URL".into(), format!("s3://{bucket}/blobs")),
                ("AWS_ENDPOINT".into(), format!("http://{}", relay.address)),
                ("AWS_ALLOW_HTTP".into(), "true".into()),
                ("AWS_ACCESS_KEY_ID".into(), "flotilla-test".into()),
                (
                    "AWS_SECRET_ACCESS_KEY".into(),
                    "flotilla-test-secret".into(),
                ),
                ("AWS_REGION".into(), "us-east-1".into()),
            ],
        }
    }

    /// The names of the MP3 blobs (`mp3-…`) the store holds, read from the store itself.
    async fn mp3_files(&self) -> Vec<String> {
        match self {
            Blobs::Disk(disk) => std::fs::read_dir(disk.path())
                .map(|entries| {
                    entries
                        .filter_map(Result::ok)
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .filter(|name| name.starts_with("mp3-"))
                        .collect()
                })
                .unwrap_or_default(),
            Blobs::S3 {
                endpoint, bucket, ..
            } => {
                // ListObjectsV2, page by page, straight from the server.
                let client = reqwest::Client::new();
                let mut names = Vec::new();
                let mut token: Option<String> = None;
                loop {
                    let mut url = format!("{endpoint}/{bucket}?list-type=2&prefix=blobs%2Fmp3-");
                    if let Some(token) = &token {
                        let token = percent_encoding::utf8_percent_encode(
                            token,
                            percent_encoding::NON_ALPHANUMERIC,
                        );
                        url.push_str(&format!("&continuation-token={token}"));
                    }
                    let page = client
                        .get(url)
                        .send()
                        .await
                        .expect("ListObjectsV2")
                        .text()
                        .await
                        .expect("listing");
                    names.extend(
                        xml_values(&page, "Key")
                            .into_iter()
                            .map(|key| key.trim_start_matches("blobs/").to_owned()),
                    );
                    token = xml_values(&page, "NextContinuationToken")
                        .into_iter()
                        .next();
                    if token.is_none() {
                        return names;
                    }
                }
            }
        }
    }
}

/// The text of every `<tag>…</tag>` in `xml`.
fn xml_values(xml: &str, tag: &str) -> Vec<String> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    xml.split(&open)
        .skip(1)
        .filter_map(|rest| rest.split_once(&close).map(|(value, _)| value.to_owned()))
        .collect()
}

// ---------------------------------------------------------------------------------------
// The load, and what it was told.

#[derive(Debug, Clone)]
struct Upload {
    job_id: String,
    media: bool,
}

#[derive(Debug, Clone)]
struct CommentSent {
    post_id: String,
    /// A unique word in the content, to find it again.
    marker: String,
    blocked: bool,
}

/// What the clients were told: only a 2xx counts as accepted; an answer lost in a fault
/// (the request may or may not have been applied) is ambiguous.
#[derive(Debug, Default)]
struct Ledger {
    uploads: Vec<Upload>,
    uploads_ambiguous: u64,
    posts: Vec<(String, String)>,
    posts_ambiguous: u64,
    comments: Vec<CommentSent>,
    comments_ambiguous: u64,
    downloads: u64,
    logins: u64,
    refused: u64,
}

enum Answer {
    Accepted(reqwest::Response),
    /// Answered with an error the client can rely on (nothing was done).
    Refused,
    /// The request may have been applied.
    Ambiguous,
}

fn classify(result: reqwest::Result<reqwest::Response>) -> Answer {
    match result {
        Ok(response) if response.status().is_success() => Answer::Accepted(response),
        // 502/504 and an unknown 500 can come after the service did the work; a 503 or
        // 507 or a 4xx says nothing was done.
        Ok(response)
            if matches!(response.status().as_u16(), 500 | 502 | 504)
                || response.status().as_u16() > 599 =>
        {
            Answer::Ambiguous
        }
        Ok(_) => Answer::Refused,
        Err(error) if error.is_connect() => Answer::Refused,
        Err(_) => Answer::Ambiguous,
    }
}

struct Load {
    gateway: String,
    client: reqwest::Client,
    ledger: Arc<Mutex<Ledger>>,
}

impl Load {
    async fn login(&self, email: &str, password: &str) -> Option<String> {
        let response = self
            .client
            .post(format!("{}/login", self.gateway))
            .basic_auth(email, Some(password))
            .send()
            .await
            .ok()?;
        if !response.status().is_success() {
            return None;
        }
        response.text().await.ok()
    }

    async fn signup(&self, email: &str, password: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let answer = self
                .client
                .post(format!("{}/signup", self.gateway))
                .json(&serde_json::json!({"email": email, "password": password}))
                .send()
                .await;
            if let Ok(response) = answer
                && (response.status() == 201 || response.status() == 409)
            {
                return;
            }
            assert!(Instant::now() < deadline, "signup of {email}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn upload(&self, token: &str, seq: u64) {
        let media = !(seq + 1).is_multiple_of(5);
        let (name, bytes) = if media {
            (format!("tone-{seq}.wav"), wav(1))
        } else {
            (
                format!("notes-{seq}.mp4"),
                b"these are notes, not a video".repeat(40),
            )
        };
        let form = reqwest::multipart::Form::new().part(
            "file",
            reqwest::multipart::Part::bytes(bytes).file_name(name),
        );
        let answer = classify(
            self.client
                .post(format!("{}/upload", self.gateway))
                .bearer_auth(token)
                .header("accept", "application/json")
                .multipart(form)
                .send()
                .await,
        );
        let mut ledger = self.ledger.lock().expect("ledger");
        match answer {
            Answer::Accepted(response) => {
                drop(ledger);
                let body: Option<serde_json::Value> = response.json().await.ok();
                let mut ledger = self.ledger.lock().expect("ledger");
                match body.and_then(|b| b["job_id"].as_str().map(str::to_owned)) {
                    Some(job_id) => ledger.uploads.push(Upload { job_id, media }),
                    None => ledger.uploads_ambiguous += 1,
                }
            }
            Answer::Refused => ledger.refused += 1,
            Answer::Ambiguous => ledger.uploads_ambiguous += 1,
        }
    }

    async fn post(&self, seq: u64) {
        let title = format!("chaos post p{seq}x");
        let answer = classify(
            self.client
                .post(format!("{}/posts/create", self.gateway))
                .json(&serde_json::json!({ "title": title }))
                .send()
                .await,
        );
        match answer {
            Answer::Accepted(response) => {
                let body: Option<serde_json::Value> = response.json().await.ok();
                let mut ledger = self.ledger.lock().expect("ledger");
                match body.and_then(|b| b["id"].as_str().map(str::to_owned)) {
                    Some(id) => ledger.posts.push((id, title)),
                    None => ledger.posts_ambiguous += 1,
                }
            }
            Answer::Refused => self.ledger.lock().expect("ledger").refused += 1,
            Answer::Ambiguous => self.ledger.lock().expect("ledger").posts_ambiguous += 1,
        }
    }

    async fn comment(&self, seq: u64) {
        let post_id = {
            let ledger = self.ledger.lock().expect("ledger");
            if ledger.posts.is_empty() {
                return;
            }
            ledger.posts[fastrand::usize(..ledger.posts.len())]
                .0
                .clone()
        };
        let blocked = seq.is_multiple_of(3);
        let marker = format!("c{seq}x");
        let content = if blocked {
            format!("{marker} I like {BLOCKED}s")
        } else {
            format!("{marker} a fine post")
        };
        let answer = classify(
            self.client
                .post(format!("{}/posts/{post_id}/comments", self.gateway))
                .json(&serde_json::json!({ "content": content }))
                .send()
                .await,
        );
        let mut ledger = self.ledger.lock().expect("ledger");
        match answer {
            Answer::Accepted(_) => ledger.comments.push(CommentSent {
                post_id,
                marker,
                blocked,
            }),
            Answer::Refused => ledger.refused += 1,
            Answer::Ambiguous => ledger.comments_ambiguous += 1,
        }
    }

    async fn download(&self, token: &str) {
        let job = {
            let ledger = self.ledger.lock().expect("ledger");
            let media: Vec<&Upload> = ledger.uploads.iter().filter(|u| u.media).collect();
            if media.is_empty() {
                return;
            }
            media[fastrand::usize(..media.len())].job_id.clone()
        };
        // By job id: the download answers 404/409 until the MP3 exists; either is fine.
        let answer = self
            .client
            .get(format!("{}/jobs/{job}", self.gateway))
            .bearer_auth(token)
            .send()
            .await;
        let fid = match answer {
            Ok(response) if response.status().is_success() => response
                .json::<serde_json::Value>()
                .await
                .ok()
                .and_then(|job| job["mp3_fid"].as_str().map(str::to_owned)),
            _ => None,
        };
        if let Some(fid) = fid
            && let Ok(response) = self
                .client
                .get(format!("{}/download?fid={fid}", self.gateway))
                .bearer_auth(token)
                .send()
                .await
            && response.status().is_success()
            && response.bytes().await.is_ok_and(|b| !b.is_empty())
        {
            self.ledger.lock().expect("ledger").downloads += 1;
        }
    }

    /// One user's steady stream of requests until `stop`.
    async fn run(
        self: Arc<Self>,
        user: usize,
        email: String,
        password: String,
        stop: CancellationToken,
    ) {
        let mut token = None;
        let mut seq = user as u64 * 1_000_000;
        while !stop.is_cancelled() {
            if token.is_none() {
                token = self.login(&email, &password).await;
                if token.is_some() {
                    self.ledger.lock().expect("ledger").logins += 1;
                }
            }
            seq += 1;
            if let Some(token) = &token {
                match fastrand::u8(..10) {
                    0..=3 => self.upload(token, seq).await,
                    4..=5 => self.post(seq).await,
                    6..=8 => self.comment(seq).await,
                    _ => self.download(token).await,
                }
            }
            // Log in again now and then, as clients do.
            if seq.is_multiple_of(25) {
                token = None;
            }
            tokio::select! {
                () = stop.cancelled() => {}
                () = tokio::time::sleep(Duration::from_millis(150 + fastrand::u64(..250))) => {}
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// The checker: reads the stores, not the API.

fn psql(database_url: &str, sql: &str) -> Vec<Vec<String>> {
    let output = Command::new("psql")
        .args([database_url, "-XAtq", "-F", "\t", "-c", sql])
        .output()
        .expect("psql runs");
    assert!(
        output.status.success(),
        "psql: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|line| !line.is_empty())
        .map(|line| line.split('\t').map(str::to_owned).collect())
        .collect()
}

/// Messages in each queue of the system's virtual host.
fn queue_depths(vhost: &str) -> BTreeMap<String, u64> {
    let output = Command::new("rabbitmqctl")
        .args(["-q", "list_queues", "-p", vhost, "name", "messages"])
        .output()
        .expect("rabbitmqctl runs");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| {
            let (name, count) = line.split_once('\t')?;
            Some((name.to_owned(), count.trim().parse().ok()?))
        })
        .collect()
}

#[derive(Debug, Default, serde::Serialize)]
struct Findings {
    lost: u64,
    duplicate: u64,
    stuck: u64,
    unexpected_dead_letters: u64,
    /// Emails handed to the SMTP server twice (same Message-ID) because notification was
    /// killed between the hand-over and its record (see [`Checker::check`]).
    resent_after_kill: u64,
    /// Staging files of blob writes killed mid-way (see [`Checker::check`]).
    partial_files: u64,
    /// What each count is made of, in words.
    details: Vec<String>,
}

impl Findings {
    fn lost(&mut self, n: u64, what: String) {
        if n > 0 {
            self.lost += n;
            self.details.push(format!("lost {n}: {what}"));
        }
    }
    fn duplicate(&mut self, n: u64, what: String) {
        if n > 0 {
            self.duplicate += n;
            self.details.push(format!("duplicate {n}: {what}"));
        }
    }
    fn stuck(&mut self, n: u64, what: String) {
        if n > 0 {
            self.stuck += n;
            self.details.push(format!("stuck {n}: {what}"));
        }
    }
}

struct Checker<'a> {
    system: &'a System,
    smtp: &'a SmtpSink,
}

impl Checker<'_> {
    fn jobs(&self) -> HashMap<String, (String, Option<String>)> {
        psql(
            &self.system.database_url("media"),
            "SELECT id, status, COALESCE(mp3_fid, '') FROM media_jobs",
        )
        .into_iter()
        .map(|row| {
            let mp3 = row.get(2).filter(|fid| !fid.is_empty()).cloned();
            (row[0].clone(), (row[1].clone(), mp3))
        })
        .collect()
    }

    /// Whether everything accepted has reached its end (used to wait for the system to
    /// settle before judging).
    fn settled(&self, ledger: &Ledger) -> bool {
        let jobs = self.jobs();
        let finished = ledger.uploads.iter().all(|upload| {
            jobs.get(&upload.job_id)
                .is_some_and(|(status, _)| status == "done" || status == "failed")
        });
        let emails = self.smtp.message_ids().len() >= jobs.len();
        let depths = queue_depths(&self.system.vhost);
        let queues_empty = depths
            .iter()
            .all(|(name, depth)| name.ends_with(".dead") || *depth == 0);
        // Right after a broker restart a quorum queue can report no messages until its
        // log is replayed: wait for the poison to show in its dead-letter queue again
        // (a dead letter really lost never does, and the check below reports it).
        let dead: u64 = depths
            .iter()
            .filter(|(name, _)| name.ends_with(".dead"))
            .map(|(_, depth)| depth)
            .sum();
        let pending = psql(
            &self.system.database_url("query"),
            "SELECT COUNT(*) FROM query_comments WHERE status = 'pending'",
        );
        let moderated = pending.first().is_some_and(|row| row[0] == "0");
        finished && emails && queues_empty && dead == POISON && moderated
    }

    /// `mp3_files`: the MP3 blobs the store holds.
    ///
    /// `notification_kills`: how many times the notification service was `kill -9`ed. An
    /// email the SMTP server accepted in the instant before the kill recorded it is sent
    /// again after the restart, with the same Message-ID (which mail clients collapse);
    /// SMTP has no way to ask the server whether it has one. Such resends are counted
    /// apart, up to what the kills can explain (one per email in flight: the consumer's
    /// concurrency); any other second copy is a duplicate.
    fn check(&self, ledger: &Ledger, mp3_files: Vec<String>, notification_kills: u64) -> Findings {
        let mut findings = Findings::default();

        // Jobs: every accepted upload has one job that ended as its input deserves.
        let jobs = self.jobs();
        let mut missing = 0;
        let mut unfinished = 0;
        let mut wrong = Vec::new();
        for upload in &ledger.uploads {
            match jobs.get(&upload.job_id) {
                None => missing += 1,
                Some((status, _)) if status != "done" && status != "failed" => unfinished += 1,
                Some((status, _)) => {
                    let expected = if upload.media { "done" } else { "failed" };
                    if status != expected {
                        wrong.push(format!("{} {status}", upload.job_id));
                    }
                }
            }
        }
        findings.lost(missing, "accepted uploads with no job".into());
        findings.lost(
            wrong.len() as u64,
            format!("jobs that ended wrongly: {wrong:?}"),
        );
        findings.stuck(unfinished, "jobs that never finished".into());
        let extra_jobs = (jobs.len() as u64).saturating_sub(ledger.uploads.len() as u64);
        findings.duplicate(
            extra_jobs.saturating_sub(ledger.uploads_ambiguous),
            format!(
                "jobs beyond the {} accepted and {} ambiguous uploads",
                ledger.uploads.len(),
                ledger.uploads_ambiguous
            ),
        );

        // MP3s: exactly the done jobs' files, no more.
        // A write killed mid-way leaves its staging file (`KEY#N` on disk), never a blob
        // under its key: not an MP3 anyone sees, but space to reclaim — reported apart.
        let (partial, files): (Vec<String>, Vec<String>) =
            mp3_files.into_iter().partition(|name| name.contains('#'));
        findings.partial_files = partial.len() as u64;
        if !partial.is_empty() {
            findings.details.push(format!(
                "staging files of writes killed mid-way: {partial:?}"
            ));
        }
        let done_fids: Vec<&String> = jobs
            .values()
            .filter(|(status, _)| status == "done")
            .filter_map(|(_, fid)| fid.as_ref())
            .collect();
        let without_file = done_fids.iter().filter(|fid| !files.contains(fid)).count();
        findings.lost(without_file as u64, "done jobs without their MP3".into());
        let stray: Vec<&String> = files
            .iter()
            .filter(|file| !done_fids.contains(file))
            .collect();
        findings.duplicate(
            stray.len() as u64,
            format!("MP3 files no done job names: {stray:?}"),
        );

        // Emails: exactly one per finished job (the Message-ID names the job).
        let mut emails: HashMap<String, u64> = HashMap::new();
        for id in self.smtp.message_ids() {
            *emails.entry(id).or_default() += 1;
        }
        let mut no_email = 0;
        let mut resent: Vec<(String, u64)> = Vec::new();
        for (job_id, (status, _)) in &jobs {
            if status == "done" || status == "failed" {
                match emails.get(&format!("<mp3-{job_id}@flotilla.invalid>")) {
                    None => no_email += 1,
                    Some(n) if *n > 1 => resent.push((job_id.clone(), n - 1)),
                    Some(_) => {}
                }
            }
        }
        findings.lost(no_email, "finished jobs without an email".into());
        let resends: u64 = resent.iter().map(|(_, n)| n).sum();
        let explained = notification_kills * NOTIFICATION_IN_FLIGHT;
        if resends > explained {
            findings.duplicate(
                resends - explained,
                format!("emails sent twice, more than {notification_kills} kill -9 of notification explain: {resent:?}"),
            );
        }
        findings.resent_after_kill = resends.min(explained);
        if findings.resent_after_kill > 0 {
            findings.details.push(format!(
                "resent with the same Message-ID after a kill -9 of notification (at most {explained} possible): {resent:?}"
            ));
        }

        // Comments: each accepted one stored once, moderated as its words deserve, and
        // shown once in the query view.
        let stored = psql(
            &self.system.database_url("comments"),
            "SELECT content, status FROM comments",
        );
        let view = psql(
            &self.system.database_url("query"),
            "SELECT content, status FROM query_comments",
        );
        let find = |rows: &[Vec<String>], marker: &str| -> Vec<String> {
            rows.iter()
                .filter(|row| row[0].split_whitespace().next() == Some(marker))
                .map(|row| row.get(1).cloned().unwrap_or_default())
                .collect()
        };
        let (mut not_stored, mut not_in_view, mut misjudged, mut pending) = (0, 0, 0, 0);
        for comment in &ledger.comments {
            let expected = if comment.blocked {
                "rejected"
            } else {
                "approved"
            };
            let stored = find(&stored, &comment.marker);
            let shown = find(&view, &comment.marker);
            match stored.len() {
                0 => not_stored += 1,
                1 => {}
                n => {
                    findings.duplicate(n as u64 - 1, format!("stored copies of {}", comment.marker))
                }
            }
            match shown.as_slice() {
                [] => not_in_view += 1,
                [status] if status == "pending" => pending += 1,
                [status] if status != expected => misjudged += 1,
                [_] => {}
                many => findings.duplicate(
                    many.len() as u64 - 1,
                    format!("view copies of {} on {}", comment.marker, comment.post_id),
                ),
            }
        }
        findings.lost(not_stored, "accepted comments not stored".into());
        findings.lost(
            not_in_view,
            "accepted comments missing from the view".into(),
        );
        findings.lost(misjudged, "comments moderated wrongly".into());
        findings.stuck(pending, "comments still pending in the view".into());
        let posts_view = psql(
            &self.system.database_url("query"),
            "SELECT title FROM query_posts",
        );
        let posts_missing = ledger
            .posts
            .iter()
            .filter(|(_, title)| !posts_view.iter().any(|row| &row[0] == title))
            .count();
        findings.lost(
            posts_missing as u64,
            "accepted posts missing from the view".into(),
        );

        // Queues: empty but for dead letters, and those only for the poison message.
        let depths = queue_depths(&self.system.vhost);
        let left: u64 = depths
            .iter()
            .filter(|(name, _)| !name.ends_with(".dead"))
            .map(|(_, depth)| depth)
            .sum();
        findings.stuck(left, format!("messages left in queues: {depths:?}"));
        let dead: u64 = depths
            .iter()
            .filter(|(name, _)| name.ends_with(".dead"))
            .map(|(_, depth)| depth)
            .sum();
        if dead != POISON {
            findings.unexpected_dead_letters = dead.abs_diff(POISON);
            findings.details.push(format!(
                "dead letters {dead}, expected {POISON}: {depths:?}"
            ));
        }
        findings
    }
}

// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
enum Fault {
    Kill9,
    Sigterm,
    BrokerRestart,
    DatabaseRestart,
    SmtpDown,
    BlobDiskFull,
    BlobStoreDelay,
    BlobStoreCut,
    BrokerDelay,
    BrokerCut,
}

fn shell(command: &str) {
    let status = Command::new("bash")
        .args(["-c", command])
        .status()
        .expect("bash runs");
    assert!(status.success(), "`{command}` failed");
}

/// The two runs share the machine's servers: one at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nothing_is_lost_duplicated_or_stuck_under_random_faults_with_blobs_on_disk() {
    let Some(disk) = test_support::Tmpfs::mount("1g") else {
        return;
    };
    let _turn = ONE_AT_A_TIME.lock().await;
    chaos("disk", Blobs::Disk(disk)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nothing_is_lost_duplicated_or_stuck_under_random_faults_with_blobs_on_s3() {
    let Some(env) = production_support::s3_blobs().await else {
        return;
    };
    let value = |key: &str| {
        env.iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .expect("an S3 setting")
    };
    let endpoint = value("AWS_ENDPOINT");
    let bucket = value("FLOTILLA_BLOB_URL")
        .trim_start_matches("s3://")
        .split('/')
        .next()
        .expect("a bucket")
        .to_owned();
    let server: SocketAddr = endpoint
        .trim_start_matches("http://")
        .parse()
        .expect("the S3 server's host:port");
    let _turn = ONE_AT_A_TIME.lock().await;
    let relay = Relay::start(server).await;
    chaos(
        "s3",
        Blobs::S3 {
            endpoint,
            bucket,
            relay,
        },
    )
    .await;
}

/// One chaos run with blobs in `blobs`; its report is `chaos/report-RUN.json`.
async fn chaos(run: &str, blobs: Blobs) {
    let Some(servers) = servers() else { return };
    let rounds: u64 = std::env::var("FLOTILLA_CHAOS_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let broker_restart = std::env::var("FLOTILLA_TEST_RABBITMQ_RESTART_CMD").ok();
    let database_restart = std::env::var("FLOTILLA_TEST_POSTGRES_RESTART_CMD").ok();
    assert!(
        !in_ci() || (broker_restart.is_some() && database_restart.is_some()),
        "under CI=true .ci/run must set FLOTILLA_TEST_RABBITMQ_RESTART_CMD and FLOTILLA_TEST_POSTGRES_RESTART_CMD"
    );
    let mut faults = vec![
        Fault::Kill9,
        Fault::Kill9,
        Fault::Sigterm,
        Fault::SmtpDown,
        Fault::BrokerDelay,
        Fault::BrokerCut,
    ];
    match &blobs {
        Blobs::Disk(_) => faults.push(Fault::BlobDiskFull),
        Blobs::S3 { .. } => faults.extend([Fault::BlobStoreDelay, Fault::BlobStoreCut]),
    }
    let mut left_out = Vec::new();
    match &broker_restart {
        Some(_) => faults.push(Fault::BrokerRestart),
        None => left_out.push("broker-restart (set FLOTILLA_TEST_RABBITMQ_RESTART_CMD)"),
    }
    match &database_restart {
        Some(_) => faults.push(Fault::DatabaseRestart),
        None => left_out.push("database-restart (set FLOTILLA_TEST_POSTGRES_RESTART_CMD)"),
    }
    // `FLOTILLA_CHAOS_FAULTS=broker-restart,kill9` narrows the pick (to reproduce one).
    if let Ok(only) = std::env::var("FLOTILLA_CHAOS_FAULTS") {
        let wanted: Vec<&str> = only.split(',').map(str::trim).collect();
        faults.retain(|fault| {
            let name = serde_json::to_value(fault).expect("a fault's name");
            wanted.iter().any(|w| name == *w)
        });
        assert!(
            !faults.is_empty(),
            "FLOTILLA_CHAOS_FAULTS={only} names no fault of this run"
        );
    }

    let broker: SocketAddr = servers
        .amqp_base
        .rsplit_once('@')
        .map(|(_, address)| address)
        .unwrap_or("127.0.0.1:5672")
        .parse()
        .expect("the broker's host:port");
    let relay = Relay::start(broker).await;
    let maildir = tempfile::tempdir().expect("maildir");
    let mut smtp = SmtpSink::start(maildir.path().join("mail"));
    let mut system = System::start_with(
        &servers,
        Options {
            left_out: &[],
            blob_env: Some(blobs.env()),
            broker_address: Some(relay.address.to_string()),
            databases: Databases::Postgres,
            extra_env: vec![(
                "FLOTILLA_SMTP_URL".into(),
                format!("smtp://127.0.0.1:{}", smtp.port),
            )],
        },
    );

    // The one poison message: undecodable, so the converters dead-letter it at once.
    let poison = Command::new(BIN)
        .args(["bus", "publish", "video", "this is not a video message"])
        .env("FLOTILLA_BUS_URL", &system.amqp_url)
        .output()
        .expect("flotilla bus publish runs");
    assert!(
        poison.status.success(),
        "{}",
        String::from_utf8_lossy(&poison.stderr)
    );

    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let load = Arc::new(Load {
        gateway: system.gateway.clone(),
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("client"),
        ledger: ledger.clone(),
    });
    let users = [
        (ADMIN_EMAIL.to_owned(), ADMIN_PASSWORD.to_owned()),
        ("ada@chaos.example".to_owned(), "ada-password-1".to_owned()),
        ("bob@chaos.example".to_owned(), "bob-password-1".to_owned()),
    ];
    for (email, password) in &users[1..] {
        load.signup(email, password).await;
    }
    let stop = CancellationToken::new();
    let mut clients = Vec::new();
    for (user, (email, password)) in users.iter().cloned().enumerate() {
        clients.push(tokio::spawn(load.clone().run(
            user,
            email,
            password,
            stop.clone(),
        )));
    }

    // The rounds.
    let started = Instant::now();
    let mut applied: Vec<(u64, Fault, String)> = Vec::new();
    for round in 1..=rounds {
        tokio::time::sleep(Duration::from_millis(1_000 + fastrand::u64(..1_500))).await;
        let fault = faults[fastrand::usize(..faults.len())];
        let target = match fault {
            Fault::Kill9 | Fault::Sigterm => {
                PROCESSES[fastrand::usize(..PROCESSES.len())].to_owned()
            }
            _ => String::new(),
        };
        eprintln!("chaos round {round}: {fault:?} {target}");
        tokio::task::block_in_place(|| match fault {
            Fault::Kill9 => {
                system
                    .processes
                    .get_mut(&target)
                    .expect("process")
                    .kill_hard();
                std::thread::sleep(Duration::from_millis(500));
                system.restart(&target);
            }
            Fault::Sigterm => {
                let status = system
                    .processes
                    .get_mut(&target)
                    .expect("process")
                    .terminate();
                assert!(status.success(), "{target} exited {status} on SIGTERM");
                system.restart(&target);
            }
            Fault::BrokerRestart => shell(broker_restart.as_deref().unwrap_or("false")),
            Fault::DatabaseRestart => shell(database_restart.as_deref().unwrap_or("false")),
            Fault::SmtpDown => {
                smtp.down();
                std::thread::sleep(Duration::from_secs(3));
                smtp.up();
            }
            Fault::BlobDiskFull => {
                if let Blobs::Disk(disk) = &blobs {
                    let filler = disk.fill();
                    std::thread::sleep(Duration::from_secs(3));
                    std::fs::remove_file(filler).expect("remove the filler");
                }
            }
            Fault::BlobStoreDelay | Fault::BlobStoreCut => {
                if let Blobs::S3 { relay, .. } = &blobs {
                    relay.set(if fault == Fault::BlobStoreCut {
                        CUT
                    } else {
                        DELAY
                    });
                    std::thread::sleep(Duration::from_secs(3));
                    relay.set(PASS);
                }
            }
            Fault::BrokerDelay => {
                relay.set(DELAY);
                std::thread::sleep(Duration::from_secs(4));
                relay.set(PASS);
            }
            Fault::BrokerCut => {
                relay.set(CUT);
                std::thread::sleep(Duration::from_secs(3));
                relay.set(PASS);
            }
        });
        applied.push((round, fault, target));
    }
    stop.cancel();
    for client in clients {
        client.await.expect("load task");
    }
    let load_seconds = started.elapsed().as_secs_f64();

    // Settle, then judge.
    let checker = Checker {
        system: &system,
        smtp: &smtp,
    };
    let settle_started = Instant::now();
    let settle_limit = Duration::from_secs(600);
    tokio::task::block_in_place(|| {
        let ledger = ledger.lock().expect("ledger");
        while !checker.settled(&ledger) && settle_started.elapsed() < settle_limit {
            std::thread::sleep(Duration::from_millis(500));
        }
    });
    let settle_seconds = settle_started.elapsed().as_secs_f64();
    let ledger = std::mem::take(&mut *ledger.lock().expect("ledger"));
    let notification_kills = applied
        .iter()
        .filter(|(_, fault, target)| *fault == Fault::Kill9 && target == "notification")
        .count() as u64;
    let mut findings = checker.check(&ledger, blobs.mp3_files().await, notification_kills);
    let client = reqwest::Client::new();
    let mut not_ready = Vec::new();
    for name in PROCESSES {
        let ready = client
            .get(format!("{}/readyz", system.url(name)))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if !ready {
            not_ready.push(name);
        }
    }
    findings.stuck(
        not_ready.len() as u64,
        format!("services not ready at the end: {not_ready:?}"),
    );

    let summary = format!(
        "chaos: {rounds} rounds, {} faults, {} uploads, {} comments, lost {}, duplicate {}, stuck {}, unexpected dead letters {}",
        applied.len(),
        ledger.uploads.len(),
        ledger.comments.len(),
        findings.lost,
        findings.duplicate,
        findings.stuck,
        findings.unexpected_dead_letters
    );
    let mut by_fault: BTreeMap<String, u64> = BTreeMap::new();
    for (_, fault, _) in &applied {
        *by_fault.entry(format!("{fault:?}")).or_default() += 1;
    }
    let report = serde_json::json!({
        "summary": summary,
        "rounds": rounds,
        "blobs": run,
        "faults": applied.iter().map(|(round, fault, target)| serde_json::json!({
            "round": round, "fault": fault, "target": target,
        })).collect::<Vec<_>>(),
        "faults_by_kind": by_fault,
        "faults_left_out": left_out,
        "load_seconds": load_seconds,
        "settle_seconds": settle_seconds,
        "accepted": {
            "uploads": ledger.uploads.len(),
            "uploads_non_media": ledger.uploads.iter().filter(|u| !u.media).count(),
            "posts": ledger.posts.len(),
            "comments": ledger.comments.len(),
            "comments_blocked": ledger.comments.iter().filter(|c| c.blocked).count(),
            "downloads": ledger.downloads,
            "logins": ledger.logins,
        },
        "ambiguous": {
            "uploads": ledger.uploads_ambiguous,
            "posts": ledger.posts_ambiguous,
            "comments": ledger.comments_ambiguous,
        },
        "refused": ledger.refused,
        "lost": findings.lost,
        "duplicate": findings.duplicate,
        "stuck": findings.stuck,
        "unexpected_dead_letters": findings.unexpected_dead_letters,
        "resent_after_kill": findings.resent_after_kill,
        "partial_files": findings.partial_files,
        "details": findings.details,
    });
    let out_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("chaos");
    std::fs::create_dir_all(&out_dir).expect("report dir");
    let report_path = out_dir.join(format!("report-{run}.json"));
    std::fs::write(
        &report_path,
        serde_json::to_vec_pretty(&report).expect("report json"),
    )
    .expect("write report");
    let clean = findings.lost == 0
        && findings.duplicate == 0
        && findings.stuck == 0
        && findings.unexpected_dead_letters == 0;
    if !clean {
        // Keep every process's log beside the report.
        for name in PROCESSES {
            let _ = std::fs::write(
                out_dir.join(format!("{run}-{name}.log")),
                system.processes[name].log_text(),
            );
        }
    }
    eprintln!("report (blobs on {run}): {}", report_path.display());
    eprintln!("{summary}");
    assert!(clean, "{summary}\n{:#?}", findings.details);
}
