//! A whole Flotilla system as separate `flotilla serve` processes — the production
//! layout — on a real PostgreSQL (one database per service, fresh per test) and a real
//! RabbitMQ (a fresh virtual host per test), the gateway reaching services over HTTP.

#![allow(dead_code)]

pub mod flows;

use std::{
    collections::HashMap,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

pub const BIN: &str = env!("CARGO_BIN_EXE_flotilla");
pub const ADMIN_EMAIL: &str = "georgio@email.com";
pub const ADMIN_PASSWORD: &str = "Admin123";

/// The real servers, or `None` when the test should be skipped (outside CI).
pub struct Servers {
    pub postgres: String,
    pub amqp_base: String,
}

pub fn servers() -> Option<Servers> {
    let postgres = test_support::real_server_url("FLOTILLA_TEST_POSTGRES_URL")?;
    let amqp = test_support::real_server_url("FLOTILLA_TEST_AMQP_URL")?;
    // amqp://user:pw@host:port/%2f → without the vhost
    let amqp_base = amqp
        .rsplit_once('/')
        .map(|(base, _)| base.to_owned())
        .unwrap_or(amqp);
    Some(Servers {
        postgres,
        amqp_base,
    })
}

/// Runs `program ARGS`, which must succeed.
pub fn run(program: &str, args: &[&str]) {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} runs: {e}"));
    assert!(
        output.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// One running service process.
pub struct Process {
    pub name: String,
    pub url: String,
    pub child: Child,
    pub log: PathBuf,
    env: Vec<(String, String)>,
    service: String,
}

impl Process {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn kill_hard(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            if Instant::now() > deadline {
                self.kill_hard();
                panic!("{} did not stop within 30 s of SIGTERM", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill_hard();
    }
}

/// The system: its processes by name, its databases and vhost (dropped at the end).
pub struct System {
    pub dir: tempfile::TempDir,
    pub processes: HashMap<String, Process>,
    pub gateway: String,
    pub client: reqwest::Client,
    pub vhost: String,
    pub amqp_url: String,
    postgres: String,
    prefix: String,
    /// Where blobs live: `FLOTILLA_BLOB_URL` and, for S3, the `AWS_*` settings.
    blob_env: Vec<(String, String)>,
    /// The broker URL the services use (`amqp_url`, or through a relay).
    service_amqp_url: String,
    /// Settings every process gets on top of the usual ones.
    extra_env: Vec<(String, String)>,
    databases: Databases,
}

/// How [`System::start_with`] starts the system.
#[derive(Default)]
pub struct Options<'a> {
    /// Processes not started (start them later with [`System::start_converter`] …).
    pub left_out: &'a [&'a str],
    /// Where blobs live (see [`s3_blobs`]); `None`: a directory shared by the processes.
    pub blob_env: Option<Vec<(String, String)>>,
    /// `host:port` the services reach RabbitMQ at, when not the server's own.
    pub broker_address: Option<String>,
    /// Settings every process gets on top of the usual ones.
    pub extra_env: Vec<(String, String)>,
    /// Where the services keep their databases.
    pub databases: Databases,
}

/// Where each service's database lives.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Databases {
    /// One database per service on the test PostgreSQL.
    #[default]
    Postgres,
    /// One database per service on the MariaDB of this URL (`mysql://user:pw@host:port/db`).
    MariaDb(String),
    /// SQLite in each process's data directory (`FLOTILLA_ALLOW_EMBEDDED`).
    Sqlite,
}

/// Blobs in a fresh bucket of the S3-compatible test server (`FLOTILLA_TEST_S3_ENDPOINT`):
/// the environment a service needs to use it, or `None` when the test should be skipped.
pub async fn s3_blobs() -> Option<Vec<(String, String)>> {
    let test_support::s3::Bucket { endpoint, bucket } = test_support::s3::bucket().await?;
    Some(vec![
        ("FLOTILLA_BLOB_URL".into(), format!("s3://{bucket}/blobs")),
        ("AWS_ENDPOINT".into(), endpoint),
        ("AWS_ALLOW_HTTP".into(), "true".into()),
        ("AWS_ACCESS_KEY_ID".into(), "flotilla-test".into()),
        (
            "AWS_SECRET_ACCESS_KEY".into(),
            "flotilla-test-secret".into(),
        ),
        ("AWS_REGION".into(), "us-east-1".into()),
    ])
}

/// The services behind the gateway, each with its own database.
fn backend_services() -> impl Iterator<Item = &'static str> {
    contracts::SERVICES
        .into_iter()
        .filter(|service| *service != "gateway")
}

impl System {
    /// Starts every service (two converters) and the gateway.
    pub fn start(servers: &Servers) -> System {
        System::start_without(servers, &[])
    }

    /// Starts every process but those named in `left_out` (start them later with
    /// [`System::start_converter`] and friends).
    pub fn start_without(servers: &Servers, left_out: &[&str]) -> System {
        System::start_with(
            servers,
            Options {
                left_out,
                ..Options::default()
            },
        )
    }

    /// As [`System::start_without`], with blobs where `blob_env` says (see [`s3_blobs`]);
    /// `None`: a directory shared by the processes.
    pub fn start_with_blobs(
        servers: &Servers,
        left_out: &[&str],
        blob_env: Option<Vec<(String, String)>>,
    ) -> System {
        System::start_with(
            servers,
            Options {
                left_out,
                blob_env,
                ..Options::default()
            },
        )
    }

    pub fn start_with(servers: &Servers, options: Options<'_>) -> System {
        let Options {
            left_out,
            blob_env,
            broker_address,
            extra_env,
            databases,
        } = options;
        platform::tls::install_crypto_provider();
        let dir = tempfile::tempdir().expect("temporary directory");
        let blob_env = blob_env.unwrap_or_else(|| {
            vec![(
                "FLOTILLA_BLOB_URL".into(),
                format!("file://{}", dir.path().join("blobs").display()),
            )]
        });
        let prefix = format!("t{}", std::process::id()) + &format!("{:x}", fastrand_u32());
        let vhost = format!("flotilla-{prefix}");
        run("rabbitmqctl", &["-q", "add_vhost", &vhost]);
        run(
            "rabbitmqctl",
            &[
                "-q",
                "set_permissions",
                "-p",
                &vhost,
                "guest",
                ".*",
                ".*",
                ".*",
            ],
        );
        let amqp_url = format!("{}/{vhost}", servers.amqp_base);
        // The services may reach the broker through another address (a relay that
        // injects faults): same credentials and virtual host.
        let service_amqp_url = match broker_address {
            Some(address) => {
                let (credentials, _) = servers
                    .amqp_base
                    .rsplit_once('@')
                    .expect("an amqp URL with credentials");
                format!("{credentials}@{address}/{vhost}")
            }
            None => amqp_url.clone(),
        };
        for service in backend_services() {
            let db = format!("{prefix}_{}", service.replace('-', "_"));
            let create = format!("CREATE DATABASE {db}");
            match &databases {
                Databases::Postgres => run("psql", &[&servers.postgres, "-qc", &create]),
                Databases::MariaDb(_) => run("mariadb", &["-e", &create]),
                Databases::Sqlite => {}
            }
        }
        let mut system = System {
            dir,
            processes: HashMap::new(),
            gateway: String::new(),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .expect("client"),
            vhost,
            amqp_url,
            postgres: servers.postgres.clone(),
            prefix,
            blob_env,
            service_amqp_url,
            extra_env,
            databases,
        };
        system.spawn("auth", "auth", &[]);
        let auth = system.url("auth");
        system.spawn("event-bus", "event-bus", &[]);
        let event_bus = system.url("event-bus");
        for (name, service) in [
            ("media", "media"),
            ("converter", "converter"),
            ("converter-2", "converter"),
            ("notification", "notification"),
            ("posts", "posts"),
            ("comments", "comments"),
            ("moderation", "moderation"),
        ] {
            if !left_out.contains(&name) {
                // The comments service learns posts from the event log, as in the
                // manifests (deploy/k8s/base/comments.yaml).
                let mut env = vec![("FLOTILLA_AUTH_URL", auth.clone())];
                if service == "comments" {
                    env.push(("FLOTILLA_EVENT_BUS_URL", event_bus.clone()));
                }
                system.spawn(name, service, &env);
            }
        }
        system.spawn(
            "query",
            "query",
            &[("FLOTILLA_EVENT_BUS_URL", event_bus.clone())],
        );
        let gateway_env: Vec<(&str, String)> = vec![
            ("FLOTILLA_AUTH_URL", auth),
            ("FLOTILLA_MEDIA_URL", system.url("media")),
            ("FLOTILLA_POSTS_URL", system.url("posts")),
            ("FLOTILLA_COMMENTS_URL", system.url("comments")),
            ("FLOTILLA_QUERY_URL", system.url("query")),
            ("FLOTILLA_EVENT_BUS_URL", event_bus),
            ("FLOTILLA_GATEWAY_RESOLVE_INTERVAL", "1s".to_owned()),
        ];
        system.spawn("gateway", "gateway", &gateway_env);
        system.gateway = system.url("gateway");
        system
    }

    /// Starts converter process `name` (one left out at the start).
    pub fn start_converter(&mut self, name: &str) {
        let auth = self.url("auth");
        self.spawn(name, "converter", &[("FLOTILLA_AUTH_URL", auth)]);
    }

    /// Starts a converter without waiting for it to be ready (it may never be); returns
    /// its URL.
    pub fn start_converter_unready(&mut self, name: &str) -> String {
        let mut env = self.base_env(name, "converter");
        env.push(("FLOTILLA_AUTH_URL".to_owned(), self.url("auth")));
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let listen = format!("127.0.0.1:{port}");
        let process = start_process(name, "converter", &listen, &env, self.dir.path(), false);
        let url = process.url.clone();
        self.processes.insert(name.to_owned(), process);
        url
    }

    pub fn url(&self, name: &str) -> String {
        self.processes[name].url.clone()
    }

    /// The PostgreSQL database of `service` (e.g. `media`), to read it directly.
    pub fn database_url(&self, service: &str) -> String {
        let server = match &self.databases {
            Databases::MariaDb(url) => url,
            _ => &self.postgres,
        };
        let (base, _) = server.rsplit_once('/').expect("a database URL");
        format!("{base}/{}_{}", self.prefix, service.replace('-', "_"))
    }

    fn base_env(&self, name: &str, service: &str) -> Vec<(String, String)> {
        let data = self.dir.path().join(name);
        let database = match self.databases {
            Databases::Sqlite => ("FLOTILLA_ALLOW_EMBEDDED".into(), "1".into()),
            _ => ("FLOTILLA_DATABASE_URL".into(), self.database_url(service)),
        };
        let mut env: Vec<(String, String)> = vec![
            ("FLOTILLA_DATA_DIR".into(), data.display().to_string()),
            database,
            ("FLOTILLA_BUS_URL".into(), self.service_amqp_url.clone()),
            (
                "FLOTILLA_JWT_KEY_FILE".into(),
                self.dir
                    .path()
                    .join("jwt-signing.pem")
                    .display()
                    .to_string(),
            ),
            ("FLOTILLA_ADMIN_EMAIL".into(), ADMIN_EMAIL.into()),
            ("FLOTILLA_ADMIN_PASSWORD".into(), ADMIN_PASSWORD.into()),
            ("RUST_LOG".into(), "info".into()),
        ];
        env.extend(self.blob_env.iter().cloned());
        env.extend(self.extra_env.iter().cloned());
        env
    }

    /// Starts `flotilla serve SERVICE` as process `name`; waits for its ready line.
    pub fn spawn(&mut self, name: &str, service: &str, extra: &[(&str, String)]) {
        let mut env = self.base_env(name, service);
        env.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), v.clone())));
        let listen = self
            .processes
            .get(name)
            .map(|p| p.url.trim_start_matches("http://").to_owned())
            .unwrap_or_else(|| "127.0.0.1:0".to_owned());
        let process = start_process(name, service, &listen, &env, self.dir.path(), true);
        self.processes.insert(name.to_owned(), process);
    }

    /// Starts a stopped process again on the same address with the same settings.
    pub fn restart(&mut self, name: &str) {
        let old = self.processes.remove(name).expect("known process");
        let listen = old.url.trim_start_matches("http://").to_owned();
        let (service, env) = (old.service.clone(), old.env.clone());
        drop(old);
        let process = start_process(name, &service, &listen, &env, self.dir.path(), true);
        self.processes.insert(name.to_owned(), process);
    }

    pub async fn login(&self) -> String {
        test_support::client::login(&self.client, &self.gateway, ADMIN_EMAIL, ADMIN_PASSWORD).await
    }

    /// Uploads `bytes` as `name`; returns the job id.
    pub async fn upload(&self, token: &str, name: &str, bytes: Vec<u8>) -> String {
        let form = reqwest::multipart::Form::new().part(
            "file",
            reqwest::multipart::Part::bytes(bytes).file_name(name.to_owned()),
        );
        let response = self
            .client
            .post(format!("{}/upload", self.gateway))
            .bearer_auth(token)
            .header("accept", "application/json")
            .multipart(form)
            .send()
            .await
            .expect("upload answers");
        assert_eq!(response.status(), 200, "{:?}", response.text().await);
        let body: serde_json::Value = response.json().await.expect("json receipt");
        body["job_id"].as_str().expect("job id").to_owned()
    }

    /// `GET /jobs/{job_id}` as the holder of `token`: the job, which must be there.
    pub async fn job(&self, token: &str, job_id: &str) -> serde_json::Value {
        self.try_job(token, job_id)
            .await
            .unwrap_or_else(|| panic!("job {job_id} is not there"))
    }

    /// `GET /jobs/{job_id}`: the job, or `None` when the answer is not a 200.
    async fn try_job(&self, token: &str, job_id: &str) -> Option<serde_json::Value> {
        let response = self
            .client
            .get(format!("{}/jobs/{job_id}", self.gateway))
            .bearer_auth(token)
            .send()
            .await
            .expect("jobs answers");
        if response.status() != 200 {
            return None;
        }
        Some(response.json().await.expect("json job"))
    }

    /// Polls the job until it is done or failed.
    pub async fn wait_for_job(
        &self,
        token: &str,
        job_id: &str,
        limit: Duration,
    ) -> serde_json::Value {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(job) = self.try_job(token, job_id).await
                && (job["status"] == "done" || job["status"] == "failed")
            {
                return job;
            }
            assert!(
                Instant::now() < deadline,
                "job {job_id} not finished within {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Every `.eml` the notification process wrote.
    pub fn emails(&self) -> Vec<String> {
        let dir = self.dir.path().join("notification").join("mail");
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        entries
            .filter_map(Result::ok)
            .filter(|e| e.path().extension().is_some_and(|x| x == "eml"))
            .filter_map(|e| std::fs::read_to_string(e.path()).ok())
            .collect()
    }
}

impl System {
    /// What a failed test shows: the end of every process's log and the broker's queues.
    fn report(&self) {
        let mut names: Vec<&String> = self.processes.keys().collect();
        names.sort();
        for name in names {
            let log = self.processes[name].log_text();
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(40)..];
            eprintln!(
                "----- {name}.log (last {} lines)\n{}",
                tail.len(),
                tail.join("\n")
            );
        }
        if let Ok(output) = Command::new("rabbitmqctl")
            .args([
                "-q",
                "list_queues",
                "-p",
                &self.vhost,
                "name",
                "messages_ready",
                "messages_unacknowledged",
                "consumers",
            ])
            .output()
        {
            eprintln!(
                "----- queues in {}\n{}{}",
                self.vhost,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }
}

impl Drop for System {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.report();
        }
        for process in self.processes.values_mut() {
            process.kill_hard();
        }
        let _ = Command::new("rabbitmqctl")
            .args(["-q", "delete_vhost", &self.vhost])
            .output();
        for service in backend_services() {
            let db = format!("{}_{}", self.prefix, service.replace('-', "_"));
            let _ = match self.databases {
                Databases::Postgres => Command::new("psql")
                    .args([
                        &self.postgres,
                        "-qc",
                        &format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"),
                    ])
                    .output(),
                Databases::MariaDb(_) => Command::new("mariadb")
                    .args(["-e", &format!("DROP DATABASE IF EXISTS {db}")])
                    .output(),
                Databases::Sqlite => continue,
            };
        }
    }
}

/// Starts `flotilla serve SERVICE`; with `wait_ready`, waits for its ready line (and
/// takes its URL from it), else `listen` must name a port.
fn start_process(
    name: &str,
    service: &str,
    listen: &str,
    env: &[(String, String)],
    dir: &Path,
    wait_ready: bool,
) -> Process {
    let log = dir.join(format!("{name}.log"));
    let stderr = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .expect("log file");
    let mut command = Command::new(BIN);
    command
        .args(["serve", service, "--listen", listen])
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr);
    let mut child = command.spawn().expect("flotilla serve starts");
    let stdout = child.stdout.take().expect("piped stdout");
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = sender.send(line);
    });
    let line = if wait_ready {
        receiver
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_default()
    } else {
        format!("listening on http://{listen}")
    };
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .map(str::to_owned)
        .unwrap_or_else(|| {
            let _ = child.kill();
            panic!(
                "{name} did not become ready: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        });
    Process {
        name: name.to_owned(),
        url,
        child,
        log,
        env: env.to_vec(),
        service: service.to_owned(),
    }
}

fn fastrand_u32() -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    nanos ^ std::process::id().rotate_left(16)
}

pub use test_support::media::wav;
