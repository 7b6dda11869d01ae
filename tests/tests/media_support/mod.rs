//! Shared by the media end-to-end tests: fixtures made with the real ffmpeg, and the
//! client side of the reference flow (login, upload, wait, read the email, download).
//! The fixtures are `test_kit::media`'s (shared with the converter's tests).
#![allow(dead_code, unused_imports)]

use std::{path::Path, time::Duration};

use reqwest::{StatusCode, multipart};
use serde_json::Value;
use test_support::TestSystem;
pub use test_support::media::{audio_codec, audio_duration, have_ffmpeg, make, mp4_with_aac};

/// The reference system's admin (its README's curl flow logs in with these).
pub const ADMIN_EMAIL: &str = "georgio@email.com";
pub const ADMIN_PASSWORD: &str = "Admin123";

/// How long a small conversion may take end to end on a busy 2-core machine.
pub const PIPELINE_TIMEOUT: Duration = Duration::from_secs(90);

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
    test_support::client::login(&system.client, &system.base_url, email, password).await
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
