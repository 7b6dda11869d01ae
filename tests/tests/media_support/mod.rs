//! Shared by the media end-to-end tests: fixtures made with the real ffmpeg, and the
//! client side of the reference flow (login, upload, wait, read the email, download).
#![allow(dead_code)]

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use reqwest::{StatusCode, multipart};
use serde_json::Value;
use test_support::TestSystem;

/// The reference system's admin (its README's curl flow logs in with these).
pub const ADMIN_EMAIL: &str = "georgio@email.com";
pub const ADMIN_PASSWORD: &str = "Admin123";

/// How long a small conversion may take end to end on a busy 2-core machine.
pub const PIPELINE_TIMEOUT: Duration = Duration::from_secs(90);

/// True when ffmpeg is on PATH. Locally a missing ffmpeg skips the test; under CI=true
/// it is a failure, because CI must exercise the real thing.
pub fn have_ffmpeg() -> bool {
    let found = Command::new("ffmpeg")
        .arg("-version")
        .output()
        .is_ok_and(|out| out.status.success());
    if !found {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "ffmpeg is not on PATH; CI must install it (apt-get install ffmpeg)"
        );
        eprintln!("skipped: ffmpeg is not on PATH");
    }
    found
}

/// `ffmpeg -y … DIR/NAME`; returns the path.
pub fn make(dir: &Path, name: &str, args: &[&str]) -> PathBuf {
    let out = dir.join(name);
    let status = Command::new("ffmpeg")
        .args(["-nostdin", "-y", "-hide_banner", "-loglevel", "error"])
        .args(args)
        .arg(&out)
        .status()
        .expect("run ffmpeg");
    assert!(status.success(), "ffmpeg failed making {name}");
    out
}

/// A small video: `secs` of a 440 Hz tone in AAC and a test pattern in MPEG-4.
pub fn mp4_with_aac(dir: &Path, secs: u32) -> PathBuf {
    let d = secs.to_string();
    make(
        dir,
        "video.mp4",
        &[
            "-f",
            "lavfi",
            "-i",
            &format!("sine=frequency=440:duration={d}"),
            "-f",
            "lavfi",
            "-i",
            &format!("testsrc=size=160x120:rate=10:duration={d}"),
            "-c:a",
            "aac",
            "-c:v",
            "mpeg4",
            "-shortest",
        ],
    )
}

/// Duration in seconds of the first audio stream (or of the file) as ffprobe sees it.
pub fn audio_duration(path: &Path) -> f64 {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "a:0", "-show_entries"])
        .args([
            "stream=duration:format=duration",
            "-of",
            "default=nw=1:nk=1",
        ])
        .arg(path)
        .output()
        .expect("run ffprobe");
    assert!(out.status.success(), "ffprobe failed on {}", path.display());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|line| line.trim().parse::<f64>().ok())
        .expect("ffprobe printed a duration")
}

/// The codec of the first audio stream (`mp3` for a real MP3).
pub fn audio_codec(path: &Path) -> String {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "a:0", "-show_entries"])
        .args(["stream=codec_name", "-of", "default=nw=1:nk=1"])
        .arg(path)
        .output()
        .expect("run ffprobe");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// `flotilla up` with the reference admin seeded and `tweak` applied to the settings.
pub async fn start(dir: &Path, tweak: impl FnOnce(&mut flotilla::ServiceArgs)) -> TestSystem {
    let mut services = flotilla::ServiceArgs::default();
    services.auth.admin_email = Some(ADMIN_EMAIL.to_owned());
    services.auth.admin_password = Some(ADMIN_PASSWORD.to_owned());
    tweak(&mut services);
    test_support::spawn_system_with(dir, services).await
}

/// `curl -X POST …/login -u EMAIL:PASSWORD` → the token.
pub async fn login(system: &TestSystem, email: &str, password: &str) -> String {
    let response = system
        .client
        .post(system.url("/login"))
        .basic_auth(email, Some(password))
        .send()
        .await
        .expect("login request");
    assert_eq!(response.status(), StatusCode::OK, "login of {email}");
    response.text().await.expect("token").trim().to_owned()
}

/// A new user, logged in.
pub async fn new_user(system: &TestSystem, email: &str) -> String {
    let password = "another-password";
    let response = system
        .client
        .post(system.url("/signup"))
        .json(&serde_json::json!({"email": email, "password": password}))
        .send()
        .await
        .expect("signup request");
    assert_eq!(response.status(), StatusCode::CREATED, "signup of {email}");
    login(system, email, password).await
}

/// `curl -X POST -F 'file=@PATH' -H "Authorization: Bearer TOKEN" …/upload`, the file
/// streamed from disk.
pub async fn upload(
    system: &TestSystem,
    token: &str,
    path: &Path,
    json: bool,
) -> reqwest::Response {
    let file = tokio::fs::File::open(path).await.expect("open fixture");
    let length = file.metadata().await.expect("fixture size").len();
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(file));
    let part = multipart::Part::stream_with_length(body, length).file_name(name);
    let mut request = system
        .client
        .post(system.url("/upload"))
        .bearer_auth(token)
        .multipart(multipart::Form::new().part("file", part));
    if json {
        request = request.header("accept", "application/json");
    }
    request.send().await.expect("upload request")
}

/// Uploads and returns the job id (JSON answer).
pub async fn upload_job(system: &TestSystem, token: &str, path: &Path) -> String {
    let response = upload(system, token, path, true).await;
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "upload of {}",
        path.display()
    );
    let body: Value = response.json().await.expect("json answer");
    assert_eq!(
        body["status_url"],
        format!("/jobs/{}", body["job_id"].as_str().unwrap_or(""))
    );
    body["job_id"].as_str().expect("job_id").to_owned()
}

/// Polls `GET /jobs/{id}` until the job is done or failed.
pub async fn wait_for_job(system: &TestSystem, token: &str, job_id: &str) -> Value {
    let deadline = tokio::time::Instant::now() + PIPELINE_TIMEOUT;
    loop {
        let response = system
            .client
            .get(system.url(&format!("/jobs/{job_id}")))
            .bearer_auth(token)
            .send()
            .await
            .expect("job request");
        assert_eq!(response.status(), StatusCode::OK);
        let job: Value = response.json().await.expect("job json");
        if job["status"] == "done" || job["status"] == "failed" {
            return job;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "job {job_id} still {} after {PIPELINE_TIMEOUT:?}",
            job["status"]
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every `.eml` written by the notification service so far.
pub fn emails(data_dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(data_dir.join("mail")) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "eml"))
        .map(|e| std::fs::read_to_string(e.path()).expect("read eml"))
        .collect()
}

/// Waits for the email mentioning `needle`.
pub async fn wait_for_email(data_dir: &Path, needle: &str) -> String {
    let deadline = tokio::time::Instant::now() + PIPELINE_TIMEOUT;
    loop {
        if let Some(email) = emails(data_dir).into_iter().find(|e| e.contains(needle)) {
            return email;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no email mentioning {needle} after {PIPELINE_TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The fid in the line `mp3 file_id: <FID> is now ready!`.
pub fn fid_in(email: &str) -> String {
    email
        .lines()
        .find_map(|line| {
            line.trim()
                .strip_prefix("mp3 file_id: ")?
                .strip_suffix(" is now ready!")
                .map(str::to_owned)
        })
        .unwrap_or_else(|| panic!("no fid line in the email:\n{email}"))
}
