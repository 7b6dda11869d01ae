//! Test helpers. Tests start the system exactly as `main` does — through
//! `flotilla::up` / `flotilla::serve` — on port 0 with a temporary data directory, and
//! talk to it over real HTTP.
//!
//! Real servers (RabbitMQ, PostgreSQL, MariaDB) are found through
//! `FLOTILLA_TEST_AMQP_URL`, `FLOTILLA_TEST_POSTGRES_URL`, `FLOTILLA_TEST_MYSQL_URL`
//! (`.ci/run` starts them and sets these). Without one a test that needs it is skipped
//! with a note — except under `CI=true`, where a missing server is a failure.

use std::{
    path::{Path, PathBuf},
    sync::OnceLock,
    time::Duration,
};

use flotilla::{Running, ServeArgs, ServiceName, UpArgs};
use platform::config::ServerArgs;
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;

/// The skip-or-fail rule and fixtures shared with the crates' own tests.
pub use test_kit::{available, client, media, real_server_url, s3, under_ci};

/// A whole system started with `up` for one test.
#[derive(Debug)]
pub struct TestSystem {
    pub base_url: String,
    pub client: reqwest::Client,
    running: Running,
    /// Kept alive so the directory is removed when the test ends.
    _data_dir: Option<TempDir>,
}

impl TestSystem {
    /// `GET`-ready URL of `path` on the gateway.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    pub fn data_dir(&self) -> &Path {
        &self.running.data_dir
    }

    /// The test's view of `running`: its URL and a client for it.
    fn on(running: Running) -> Self {
        TestSystem {
            base_url: format!("http://{}", running.addr),
            client: http_client(),
            running,
            _data_dir: None,
        }
    }

    /// Graceful stop: drain and wait.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.running.stop().await
    }
}

/// Starts `flotilla up` on 127.0.0.1:0 in a fresh temporary data directory.
pub async fn spawn_system() -> TestSystem {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().to_owned();
    let mut system = spawn_system_in(&path).await;
    system._data_dir = Some(dir);
    system
}

/// Starts `flotilla up` on 127.0.0.1:0 in `data_dir` (which the caller keeps, e.g. to
/// restart on it).
pub async fn spawn_system_in(data_dir: &Path) -> TestSystem {
    spawn_system_with(data_dir, Default::default()).await
}

/// Starts `flotilla up` on 127.0.0.1:0 in `data_dir` with the given service settings
/// (a seeded admin, a small upload limit, an SMTP server …).
pub async fn spawn_system_with(data_dir: &Path, services: flotilla::ServiceArgs) -> TestSystem {
    platform::telemetry::init_for_tests();
    platform::tls::install_crypto_provider();
    let args = UpArgs {
        server: server_args(data_dir),
        services,
    };
    let running = flotilla::up(args, CancellationToken::new())
        .await
        .expect("flotilla up starts");
    running
        .wait_ready(Duration::from_secs(30))
        .await
        .expect("system becomes ready");
    TestSystem::on(running)
}

/// Starts one service as `flotilla serve` would, on 127.0.0.1:0.
pub async fn spawn_service(service: ServiceName, data_dir: &Path) -> TestSystem {
    spawn_served(serve_args(service, data_dir, Default::default())).await
}

/// Starts `flotilla serve gateway` on 127.0.0.1:0 with the given upstream URLs.
pub async fn spawn_gateway(upstreams: flotilla::GatewayArgs, data_dir: &Path) -> TestSystem {
    spawn_served(serve_args(ServiceName::Gateway, data_dir, upstreams)).await
}

/// `flotilla serve service` settings in `data_dir`, with `gateway`'s upstreams.
fn serve_args(service: ServiceName, data_dir: &Path, gateway: flotilla::GatewayArgs) -> ServeArgs {
    ServeArgs {
        service,
        server: server_args(data_dir),
        database_url: None,
        gateway,
        services: Default::default(),
        // Tests run on the embedded stores unless they say otherwise.
        allow_embedded: true,
    }
}

/// Starts one service from complete `serve` settings, on whatever `args` says.
pub async fn spawn_served(args: ServeArgs) -> TestSystem {
    platform::telemetry::init_for_tests();
    platform::tls::install_crypto_provider();
    let running = flotilla::serve(args, CancellationToken::new())
        .await
        .expect("flotilla serve starts");
    TestSystem::on(running)
}

/// The server settings every test uses: 127.0.0.1:0 and `data_dir`, the rest as defaults.
pub fn server_args(data_dir: &Path) -> ServerArgs {
    ServerArgs {
        listen: "127.0.0.1:0".parse().expect("literal address"),
        data_dir: data_dir.to_owned(),
        http_threads: None,
        http_max_connections_per_client: None,
        http_body_timeout: std::time::Duration::from_secs(10),
        sched_policy: platform::sched::Policy::default(),
    }
}

/// A client that never follows redirects and gives up after 30 s.
pub fn http_client() -> reqwest::Client {
    platform::tls::install_crypto_provider();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .expect("http client")
}

/// The `flotilla` binary of this workspace, for tests that run it as a user does (and
/// kill it): built once per test process, so a stale binary is rebuilt (a no-op when it is
/// current).
pub fn flotilla_binary() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(build_flotilla).clone()
}

fn build_flotilla() -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("target"));
    let binary = target.join("debug/flotilla");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let status = std::process::Command::new(cargo)
        .args(["build", "--quiet", "-p", "flotilla", "--bin", "flotilla"])
        .current_dir(&workspace)
        .status()
        .expect("cargo runs");
    assert!(status.success(), "building the flotilla binary failed");
    assert!(binary.exists(), "no binary at {}", binary.display());
    binary
}

/// The URL in the first line a `flotilla` process prints on `stdout` ("… ready at
/// http://…"); panics if that line is not the ready line.
pub fn ready_url(stdout: impl std::io::Read) -> String {
    use std::io::BufRead;
    let mut line = String::new();
    std::io::BufReader::new(stdout)
        .read_line(&mut line)
        .expect("a line on stdout");
    assert!(line.contains("ready"), "unexpected first line: {line}");
    line.split_whitespace()
        .find(|word| word.starts_with("http://"))
        .expect("the URL in the ready line")
        .trim_end_matches('/')
        .to_owned()
}

/// A small tmpfs mounted on a fresh directory (a disk a test can fill), unmounted when
/// dropped. Mounting needs root: elsewhere [`Tmpfs::mount`] is `None` with a note, and
/// under `CI=true` (where `.ci/run` runs as root) a failed mount is a failure.
#[derive(Debug)]
pub struct Tmpfs {
    dir: TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (`mount -o size=…`: `3m`, `96m`) readable by its owner only.
    pub fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().expect("mount point");
        let mounted = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir.path())
            .output();
        match mounted {
            Ok(output) if output.status.success() => Some(Tmpfs { dir }),
            outcome => {
                let why = match outcome {
                    Ok(output) => String::from_utf8_lossy(&output.stderr).trim().to_owned(),
                    Err(error) => error.to_string(),
                };
                if test_kit::under_ci() {
                    panic!("cannot mount a tmpfs under CI=true (the test needs root): {why}");
                }
                eprintln!("skipped: cannot mount a tmpfs (the test needs root): {why}");
                None
            }
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fills the disk with one file (dd stops at "No space left on device"); remove the
    /// returned file to free the space.
    pub fn fill(&self) -> PathBuf {
        let filler = self.path().join("filler");
        let _ = std::process::Command::new("dd")
            .args(["if=/dev/zero", "bs=64k"])
            .arg(format!("of={}", filler.display()))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
        filler
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: files a stopping server still holds must not keep the mount alive.
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}
