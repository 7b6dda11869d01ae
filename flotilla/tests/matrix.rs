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
    time::Duration,
};

use production_support::{
    ADMIN_EMAIL, ADMIN_PASSWORD, BIN, Databases, Options, System,
    flows::{Target, blog_flow, media_flow},
    s3_blobs, servers,
};

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
    let target = Target::of(&system);
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
