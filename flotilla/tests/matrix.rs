//! The backend matrix: the media flow (an upload past S3's 5 MiB part size → one MP3 →
//! whole and ranged downloads → one email) and the blog flow (post, approved and rejected
//! comments in the view) on every combination Flotilla runs on:
//!
//! | bus | databases | blobs |
//! |---|---|---|
//! | embedded (`up`, one process) | SQLite | local disk, S3 |
//! | RabbitMQ (`serve`, a process per service) | PostgreSQL, MariaDB, SQLite | local disk, S3 |
//!
//! The embedded bus lives inside one process, so it runs with `up`, whose services keep
//! SQLite databases; a process per service needs the broker. S3 is moto's server
//! (`FLOTILLA_TEST_S3_ENDPOINT`). Each combination is its own test, so the list shows it
//! running; under `CI=true` a missing server fails it.

mod production_support;

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use production_support::{
    ADMIN_EMAIL, ADMIN_PASSWORD, BIN, Databases, Options, System, s3_blobs, servers, wav,
};

/// What a flow needs of a running system.
struct Target<'a> {
    gateway: String,
    client: reqwest::Client,
    /// Every email the system wrote so far (as files).
    emails: Box<dyn Fn() -> Vec<String> + 'a>,
}

async fn login(target: &Target<'_>) -> String {
    let response = target
        .client
        .post(format!("{}/login", target.gateway))
        .basic_auth(ADMIN_EMAIL, Some(ADMIN_PASSWORD))
        .send()
        .await
        .expect("login answers");
    assert_eq!(response.status(), 200);
    response.text().await.expect("token")
}

async fn media_flow(target: &Target<'_>) {
    let token = login(target).await;
    // 70 s of 16-bit mono: 6.2 MB, more than one 5 MiB part.
    let video = wav(70);
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(video).file_name("long.wav"),
    );
    let receipt: serde_json::Value = target
        .client
        .post(format!("{}/upload", target.gateway))
        .bearer_auth(&token)
        .header("accept", "application/json")
        .multipart(form)
        .send()
        .await
        .expect("upload answers")
        .json()
        .await
        .expect("json receipt");
    let job_id = receipt["job_id"].as_str().expect("job id").to_owned();

    let deadline = Instant::now() + Duration::from_secs(180);
    let job = loop {
        let job: serde_json::Value = target
            .client
            .get(format!("{}/jobs/{job_id}", target.gateway))
            .bearer_auth(&token)
            .send()
            .await
            .expect("job answers")
            .json()
            .await
            .expect("json job");
        if job["status"] == "done" || job["status"] == "failed" {
            break job;
        }
        assert!(Instant::now() < deadline, "job not finished: {job}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(job["status"], "done", "{job}");
    let fid = job["mp3_fid"].as_str().expect("mp3 fid").to_owned();

    let get = |range: Option<&'static str>| {
        let mut request = target
            .client
            .get(format!("{}/download?fid={fid}", target.gateway))
            .bearer_auth(&token);
        if let Some(range) = range {
            request = request.header("range", range);
        }
        request.send()
    };
    let whole = get(None).await.expect("download answers");
    assert_eq!(whole.status(), 200);
    assert_eq!(whole.headers()["content-type"], "audio/mpeg");
    let whole = whole.bytes().await.expect("mp3 bytes");
    assert!(whole.len() > 200_000, "70 s of MP3: {} bytes", whole.len());
    let part = get(Some("bytes=100-4099")).await.expect("ranged download");
    assert_eq!(part.status(), 206);
    assert_eq!(part.bytes().await.expect("range"), whole[100..4100]);

    let deadline = Instant::now() + Duration::from_secs(60);
    let marker = format!("<mp3-{job_id}@flotilla.invalid>");
    loop {
        let emails: Vec<String> = (target.emails)()
            .into_iter()
            .filter(|email| email.contains(&marker))
            .collect();
        if !emails.is_empty() {
            // A moment more, to see that no second one follows.
            tokio::time::sleep(Duration::from_millis(500)).await;
            let again = (target.emails)()
                .into_iter()
                .filter(|email| email.contains(&marker))
                .count();
            assert_eq!(again, 1, "exactly one email for the job");
            break;
        }
        assert!(Instant::now() < deadline, "no email for job {job_id}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn blog_flow(target: &Target<'_>) {
    let post: serde_json::Value = target
        .client
        .post(format!("{}/posts/create", target.gateway))
        .json(&serde_json::json!({"title": "On every backend"}))
        .send()
        .await
        .expect("post answers")
        .json()
        .await
        .expect("json post");
    let post_id = post["id"].as_str().expect("post id").to_owned();
    for content in ["a fine post", "I like oranges"] {
        let response = target
            .client
            .post(format!("{}/posts/{post_id}/comments", target.gateway))
            .json(&serde_json::json!({ "content": content }))
            .send()
            .await
            .expect("comment answers");
        assert_eq!(response.status(), 201);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let view: serde_json::Value = target
            .client
            .get(format!("{}/posts", target.gateway))
            .send()
            .await
            .expect("posts answer")
            .json()
            .await
            .expect("json view");
        let statuses: Vec<(String, String)> = view[&post_id]["comments"]
            .as_array()
            .map(|comments| {
                comments
                    .iter()
                    .map(|c| {
                        (
                            c["content"].as_str().unwrap_or_default().to_owned(),
                            c["status"].as_str().unwrap_or_default().to_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let expected = vec![
            ("a fine post".to_owned(), "approved".to_owned()),
            ("I like oranges".to_owned(), "rejected".to_owned()),
        ];
        if statuses == expected {
            assert_eq!(view[&post_id]["title"], "On every backend");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "view never moderated both comments: {statuses:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client")
}

/// Production mode (`serve` per service, RabbitMQ) on `databases`, blobs on S3 or disk.
async fn serve_combination(databases: Option<Databases>, s3: bool) {
    let Some(servers) = servers() else { return };
    let Some(databases) = databases else { return };
    let blob_env = if s3 {
        match s3_blobs().await {
            Some(env) => Some(env),
            None => return,
        }
    } else {
        None
    };
    let system = System::start_with(
        &servers,
        Options {
            left_out: &["converter-2"],
            blob_env,
            databases,
            ..Options::default()
        },
    );
    let target = Target {
        gateway: system.gateway.clone(),
        client: http(),
        emails: Box::new(|| system.emails()),
    };
    media_flow(&target).await;
    blog_flow(&target).await;
}

fn mariadb() -> Option<Databases> {
    test_support::real_server_url("FLOTILLA_TEST_MYSQL_URL").map(Databases::MariaDb)
}

/// `flotilla up` as a user runs it, with `env` on top.
struct Up {
    child: Child,
    url: String,
    data: tempfile::TempDir,
}

impl Up {
    fn start(env: &[(String, String)]) -> Up {
        let data = tempfile::tempdir().expect("data dir");
        let mut child = Command::new(BIN)
            .args(["up", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data.path())
            .env("FLOTILLA_ADMIN_EMAIL", ADMIN_EMAIL)
            .env("FLOTILLA_ADMIN_PASSWORD", ADMIN_PASSWORD)
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("flotilla up starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("the ready line");
        let url = line
            .split_whitespace()
            .find(|word| word.starts_with("http://"))
            .unwrap_or_else(|| panic!("no ready line: {line:?}"))
            .to_owned();
        Up { child, url, data }
    }

    fn mail_dir(&self) -> PathBuf {
        self.data.path().join("mail")
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn emails_in(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| e.path().extension().is_some_and(|x| x == "eml"))
                .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                .collect()
        })
        .unwrap_or_default()
}

/// `up` (embedded bus, SQLite), blobs on S3 or on disk.
async fn up_combination(s3: bool) {
    let env = if s3 {
        match s3_blobs().await {
            Some(env) => env,
            None => return,
        }
    } else {
        Vec::new()
    };
    let up = Up::start(&env);
    let mail = up.mail_dir();
    let target = Target {
        gateway: up.url.clone(),
        client: http(),
        emails: Box::new(move || emails_in(&mail)),
    };
    media_flow(&target).await;
    blog_flow(&target).await;
    if !s3 {
        assert!(up.data.path().join("blobs").is_dir(), "blobs on disk");
    } else {
        assert!(!up.data.path().join("blobs").exists(), "blobs on S3 only");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn embedded_bus_sqlite_local_disk() {
    up_combination(false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn embedded_bus_sqlite_s3() {
    up_combination(true).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rabbitmq_postgres_local_disk() {
    serve_combination(Some(Databases::Postgres), false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rabbitmq_postgres_s3() {
    serve_combination(Some(Databases::Postgres), true).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rabbitmq_mariadb_local_disk() {
    serve_combination(mariadb(), false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rabbitmq_mariadb_s3() {
    serve_combination(mariadb(), true).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rabbitmq_sqlite_local_disk() {
    serve_combination(Some(Databases::Sqlite), false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rabbitmq_sqlite_s3() {
    serve_combination(Some(Databases::Sqlite), true).await;
}
