//! `kill -9` of `flotilla up` in the middle of conversions, then a restart on the same
//! data directory: every upload still ends with exactly one MP3 and exactly one email.
//! With `FLOTILLA_TEST_SMTP_URL` / `FLOTILLA_TEST_MAILDIR` set (aiosmtpd writing a
//! Maildir) the emails go through real SMTP and are counted as received; otherwise they
//! are `.eml` files and the notification ledger is what is counted.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_flotilla");
const ADMIN: (&str, &str) = ("crash-admin@example.com", "crash-password");
const UPLOADS: usize = 3;
/// Long enough that conversions are still running when the process is killed.
const AUDIO_SECS: u32 = 120;

fn make_video(dir: &Path, n: usize) -> PathBuf {
    let out = dir.join(format!("long-{n}.mp4"));
    let tone = format!("sine=frequency={}:duration={AUDIO_SECS}", 300 + 100 * n);
    let picture = format!("testsrc=size=96x64:rate=5:duration={AUDIO_SECS}");
    let status = Command::new("ffmpeg")
        .args(["-nostdin", "-y", "-hide_banner", "-loglevel", "error"])
        .args(["-f", "lavfi", "-i", &tone, "-f", "lavfi", "-i", &picture])
        .args(["-c:a", "aac", "-c:v", "mpeg4", "-shortest"])
        .arg(&out)
        .status()
        .expect("run ffmpeg");
    assert!(status.success());
    out
}

fn duration_of(path: &Path) -> f64 {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "format=duration",
            "-of",
            "csv=p=0",
        ])
        .arg(path)
        .output()
        .expect("ffprobe");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("a duration")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

/// `flotilla up` on `port`; returns once it printed its ready line.
fn start(data_dir: &Path, port: u16, smtp: Option<&str>, run: usize) -> Child {
    let log = std::fs::File::create(data_dir.with_extension(format!("log{run}"))).expect("log");
    let mut command = Command::new(BIN);
    command
        .args(["up", "--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
        .arg(data_dir)
        .env("RUST_LOG", "info")
        .env("FLOTILLA_ADMIN_EMAIL", ADMIN.0)
        .env("FLOTILLA_ADMIN_PASSWORD", ADMIN.1)
        // Media checks tokens itself too, against the auth keys the gateway serves.
        .env("FLOTILLA_AUTH_URL", format!("http://127.0.0.1:{port}"))
        .env("FLOTILLA_CONVERTER_WORKERS", "2")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log);
    if let Some(url) = smtp {
        command.env("FLOTILLA_SMTP_URL", url);
    }
    let mut child = command.spawn().expect("flotilla starts");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line)
        .expect("ready line");
    assert!(line.contains("ready"), "ready line: {line:?}");
    child
}

struct Api {
    client: reqwest::Client,
    base: String,
}

impl Api {
    async fn login(&self) -> String {
        test_support::client::login(&self.client, &self.base, ADMIN.0, ADMIN.1).await
    }

    async fn upload(&self, token: &str, path: &Path) -> String {
        let bytes = std::fs::read(path).expect("fixture");
        let part = reqwest::multipart::Part::bytes(bytes).file_name("long.mp4");
        let response = self
            .client
            .post(format!("{}/upload", self.base))
            .bearer_auth(token)
            .header("accept", "application/json")
            .multipart(reqwest::multipart::Form::new().part("file", part))
            .send()
            .await
            .expect("upload");
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.expect("json");
        body["job_id"].as_str().expect("job_id").to_owned()
    }

    async fn jobs(&self, token: &str) -> Vec<Value> {
        let response = self
            .client
            .get(format!("{}/jobs", self.base))
            .bearer_auth(token)
            .send()
            .await
            .expect("jobs");
        let jobs: Value = response.json().await.expect("json");
        jobs.as_array().cloned().unwrap_or_default()
    }
}

fn maildir_count(maildir: &Path, needle: &str) -> usize {
    ["new", "cur"]
        .iter()
        .filter_map(|sub| std::fs::read_dir(maildir.join(sub)).ok())
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|entry| std::fs::read_to_string(entry.path()).ok())
        .filter(|text| text.contains(needle))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_conversion_then_restart_gives_one_mp3_and_one_email_per_upload() {
    if !test_support::media::have_ffmpeg() {
        return;
    }
    let smtp = match (
        std::env::var("FLOTILLA_TEST_SMTP_URL"),
        std::env::var("FLOTILLA_TEST_MAILDIR"),
    ) {
        (Ok(url), Ok(maildir)) => {
            for sub in ["tmp", "new", "cur"] {
                std::fs::create_dir_all(Path::new(&maildir).join(sub)).expect("maildir");
            }
            Some((url, PathBuf::from(maildir)))
        }
        _ => None,
    };
    let root = tempfile::tempdir().expect("tempdir");
    let data = root.path().join("data");
    let fixtures: Vec<PathBuf> = (0..UPLOADS).map(|n| make_video(root.path(), n)).collect();
    let port = free_port();
    let api = Api {
        client: test_support::http_client(),
        base: format!("http://127.0.0.1:{port}"),
    };

    let mut first = start(&data, port, smtp.as_ref().map(|(url, _)| url.as_str()), 1);
    let token = api.login().await;
    let mut job_ids = Vec::new();
    for fixture in &fixtures {
        job_ids.push(api.upload(&token, fixture).await);
    }
    // Kill once a conversion is under way (and before all are done).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let jobs = api.jobs(&token).await;
        if jobs.iter().any(|job| job["status"] == "converting") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "nothing started converting: {jobs:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    first.kill().expect("kill -9");
    first.wait().expect("reaped");
    let done_before: usize = api_jobs_done_offline(&data);

    let mut second = start(&data, port, smtp.as_ref().map(|(url, _)| url.as_str()), 2);
    let token = api.login().await;
    // Leases of the killed process expire (30 s) before its deliveries come back.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(240);
    let jobs = loop {
        let jobs = api.jobs(&token).await;
        let finished = jobs
            .iter()
            .filter(|job| job["status"] == "done" || job["status"] == "failed")
            .count();
        if finished == UPLOADS {
            break jobs;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not finished: {jobs:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(
        done_before < UPLOADS,
        "every job finished before the kill; the test proved nothing"
    );

    let blobs: Vec<String> = std::fs::read_dir(data.join("blobs"))
        .expect("blobs")
        .filter_map(Result::ok)
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    for job_id in &job_ids {
        let job = jobs
            .iter()
            .find(|job| job["job_id"] == job_id.as_str())
            .expect("job listed");
        assert_eq!(job["status"], "done", "{job}");
        let fid = format!("mp3-{job_id}");
        assert_eq!(job["mp3_fid"], fid.as_str());
        // Exactly one MP3 object for the job.
        assert_eq!(blobs.iter().filter(|name| **name == fid).count(), 1);
        let mp3 = api
            .client
            .get(format!("{}/download?fid={fid}", api.base))
            .bearer_auth(&token)
            .send()
            .await
            .expect("download")
            .bytes()
            .await
            .expect("mp3");
        let out = root.path().join(format!("{fid}.mp3"));
        std::fs::write(&out, &mp3).expect("write");
        let seconds = duration_of(&out);
        assert!(
            (seconds - f64::from(AUDIO_SECS)).abs() <= 0.1,
            "{fid}: {seconds} s"
        );
    }

    // Exactly one email per upload.
    match &smtp {
        Some((_, maildir)) => {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            while job_ids.iter().any(|id| maildir_count(maildir, id) == 0) {
                assert!(tokio::time::Instant::now() < deadline, "emails missing");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            // Anything sent twice would have arrived by now.
            tokio::time::sleep(Duration::from_secs(3)).await;
            for id in &job_ids {
                assert_eq!(maildir_count(maildir, id), 1, "emails for {id}");
            }
        }
        None => {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            loop {
                let emails = std::fs::read_dir(data.join("mail"))
                    .map(|entries| entries.filter_map(Result::ok).count())
                    .unwrap_or(0);
                if emails == UPLOADS {
                    break;
                }
                assert!(tokio::time::Instant::now() < deadline, "{emails} emails");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }

    Command::new("kill")
        .args(["-TERM", &second.id().to_string()])
        .status()
        .expect("kill -TERM");
    let status = second.wait().expect("exits");
    assert!(status.success(), "graceful stop: {status}");
}

/// How many `.eml`/MP3 results existed when the first process died: counted from the
/// blob directory (an MP3 object is written before its job is marked done).
fn api_jobs_done_offline(data: &Path) -> usize {
    std::fs::read_dir(data.join("blobs"))
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|entry| {
                    let name = entry.file_name();
                    let name = name.to_string_lossy();
                    name.starts_with("mp3-") && !name.contains('#')
                })
                .count()
        })
        .unwrap_or(0)
}
