//! `flotilla client …`: the command line over [`Client`](crate::Client).
//!
//! The gateway and the token chosen at `login` are kept in one file readable by its
//! owner only (`$XDG_CONFIG_HOME/flotilla/client.json`), so later commands need neither.
//! Every failure is one [`CliError`]: one plain line, and an exit code per [`Failure`].

use std::{
    io::IsTerminal,
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

use crate::{Client, ClientError};

/// The gateway when neither a flag, the environment nor the saved login names one.
pub const DEFAULT_GATEWAY: &str = "http://127.0.0.1:8080";

/// What the exit codes of `flotilla client` mean (also in `--help` and the README).
pub const EXIT_CODES: &str = "Exit codes: 0 success, 1 other error, 2 usage, 3 not logged in or \
     refused (401/403), 4 not found (unknown id, missing file), 5 gateway unreachable or \
     unavailable, 6 a conversion failed.";

#[derive(Debug, Clone, clap::Args)]
#[command(after_help = EXIT_CODES)]
pub struct ClientArgs {
    /// The gateway to talk to; `login` remembers it for the next commands
    /// [default: the one saved by `login`, else http://127.0.0.1:8080].
    #[arg(long, env = "FLOTILLA_GATEWAY_URL", global = true)]
    pub gateway: Option<String>,
    /// A token to use instead of the one saved by `login`.
    #[arg(long, env = "FLOTILLA_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// The file `login` saves the gateway and token to (mode 0600) and other commands
    /// read [default: $XDG_CONFIG_HOME/flotilla/client.json].
    #[arg(long, env = "FLOTILLA_CLIENT_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: ClientCommand,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum ClientCommand {
    /// Log in and save the token with the gateway (password from a prompt on a terminal,
    /// else the first line of stdin; or --password-stdin, --password, FLOTILLA_PASSWORD).
    Login {
        /// The account's email address.
        #[arg(long)]
        email: String,
        /// The password (visible to other users in the process list: prefer the prompt,
        /// FLOTILLA_PASSWORD or --password-stdin).
        #[arg(long, env = "FLOTILLA_PASSWORD", hide_env_values = true)]
        password: Option<String>,
        /// Read the password from the first line of stdin, for scripts.
        #[arg(long, conflicts_with = "password")]
        password_stdin: bool,
    },
    /// Upload videos; prints each job id, or with --wait follows each job to its end.
    Upload {
        /// The video or audio files to convert.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Follow each job until it is done (prints the MP3 id) or failed (the reason;
        /// exit code 6).
        #[arg(long)]
        wait: bool,
        /// Download each MP3 into DIR when done (implies --wait).
        #[arg(long, value_name = "DIR")]
        download: Option<PathBuf>,
        /// Give up waiting for a job after this many seconds.
        #[arg(long, value_name = "SECS", default_value_t = 1800)]
        timeout: u64,
    },
    /// List your conversion jobs (a table), or show one.
    Jobs {
        /// One job's id.
        id: Option<String>,
        /// JSON Lines: one job object per line, as the API answers it.
        #[arg(long)]
        json: bool,
    },
    /// Download an MP3 by its file id (mp3-…) or its job's id.
    Download {
        /// The MP3's file id, or the id `upload` printed.
        id: String,
        /// Output file [default: <MP3 file id>.mp3].
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// List the blog's posts and their comments.
    Posts {
        /// JSON Lines: one post object per line.
        #[arg(long)]
        json: bool,
        /// At most this many posts (1–1000).
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1000))]
        limit: u32,
    },
    /// Create a blog post; prints its id.
    Post {
        /// The post's title (1–10,000 characters).
        title: String,
    },
    /// Comment on a post (moderated: pending, then approved or rejected).
    Comment {
        /// The post's id.
        post_id: String,
        /// The comment (1–10,000 characters).
        text: String,
    },
}

/// The class of a failure, and so the process's exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    Other = 1,
    Usage = 2,
    Auth = 3,
    NotFound = 4,
    Unreachable = 5,
    JobFailed = 6,
}

/// A failed `flotilla client` command: one line for the user, and its class.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct CliError {
    pub failure: Failure,
    pub message: String,
}

impl CliError {
    fn new(failure: Failure, message: impl Into<String>) -> Self {
        Self {
            failure,
            message: message.into(),
        }
    }

    /// The process exit code for this failure.
    pub fn exit_code(&self) -> u8 {
        self.failure as u8
    }
}

impl From<ClientError> for CliError {
    fn from(error: ClientError) -> Self {
        let failure = match &error {
            ClientError::Server {
                status: 401 | 403, ..
            }
            | ClientError::NoToken => Failure::Auth,
            ClientError::Server { status: 404, .. } => Failure::NotFound,
            ClientError::Server {
                status: 502..=504, ..
            }
            | ClientError::Transport { .. } => Failure::Unreachable,
            ClientError::File { reason, .. } if reason == "no such file or directory" => {
                Failure::NotFound
            }
            _ => Failure::Other,
        };
        let message = match &error {
            ClientError::Server { status: 401, .. } => {
                format!("{error}: log in again with `flotilla client login`")
            }
            _ => error.to_string(),
        };
        Self::new(failure, message)
    }
}

/// What `login` saves: the gateway and the token for it.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Saved {
    gateway: Option<String>,
    token: Option<String>,
}

fn default_config_file() -> PathBuf {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|dir| !dir.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".config")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("flotilla").join("client.json")
}

/// The saved login; none when the file is missing. A file we cannot parse is an error,
/// not silently "logged out".
fn load(path: &Path) -> Result<Saved, CliError> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text).map_err(|e| {
            CliError::new(
                Failure::Other,
                format!(
                    "{} is not a saved login ({e}); delete it and log in again",
                    path.display()
                ),
            )
        }),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(Saved::default()),
        Err(error) => Err(CliError::new(
            Failure::Other,
            format!("cannot read {}: {error}", path.display()),
        )),
    }
}

fn bar(total: Option<u64>) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = match total {
        Some(total) => ProgressBar::new(total),
        None => ProgressBar::new_spinner(),
    };
    if let Ok(style) = ProgressStyle::with_template(
        "{bar:40} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
    ) {
        bar.set_style(style);
    }
    bar
}

/// Runs one `flotilla client` command.
/// `flotilla status`: the system as a table (or JSON), once or every `--interval`.
#[derive(Debug, Clone, clap::Args)]
#[command(after_help = EXIT_CODES)]
pub struct StatusArgs {
    /// The gateway [default: the one saved by `flotilla client login`, else
    /// http://127.0.0.1:8080]. An admin's token is needed.
    #[arg(long, env = "FLOTILLA_GATEWAY_URL")]
    pub gateway: Option<String>,
    /// A token to use instead of the one saved by `flotilla client login`.
    #[arg(long, env = "FLOTILLA_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The file `flotilla client login` saved the gateway and token to.
    #[arg(long, env = "FLOTILLA_CLIENT_CONFIG")]
    pub config: Option<PathBuf>,
    /// Refresh until interrupted.
    #[arg(long)]
    pub watch: bool,
    /// Seconds between refreshes with --watch (1–3600).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub interval: u64,
    /// The JSON of GET /admin/system (one object per line with --watch).
    #[arg(long)]
    pub json: bool,
}

/// Runs `flotilla status`.
pub async fn status(args: StatusArgs) -> Result<(), CliError> {
    let (client, _) = connect(args.gateway, args.token, args.config)?;
    loop {
        let view = client.system().await?;
        if args.json {
            println!("{view}");
        } else {
            if args.watch && std::io::stdout().is_terminal() {
                // Clear the screen and go home, as `watch` does.
                print!("\x1b[2J\x1b[H");
            }
            print!("{}", status_table(&view));
        }
        if !args.watch {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs(args.interval)).await;
    }
}

/// The system of `GET /admin/system` as tables (aligned as `jobs` is): services, their
/// instances, queues, then the bus.
pub fn status_table(view: &serde_json::Value) -> String {
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::Null => "-".to_owned(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let number = |v: &serde_json::Value, digits: usize| {
        v.as_f64()
            .map_or_else(|| "-".to_owned(), |n| format!("{n:.digits$}"))
    };
    let list = |v: &serde_json::Value| v.as_array().cloned().unwrap_or_default();
    let heading = |names: &[&str; 5]| names.map(str::to_owned);
    let mut services = vec![heading(&["SERVICE", "INSTANCES", "REQ/S", "ERRORS", "P99"])];
    let mut instances = vec![heading(&[
        "INSTANCE", "SERVICE", "URL", "STATUS", "VERSION",
    ])];
    for service in list(&view["services"]) {
        let listed = list(&service["instances"]);
        let up = listed.iter().filter(|i| i["status"] == "up").count();
        services.push([
            text(&service["name"]),
            format!("{up}/{}", listed.len()),
            number(&service["requests_per_s"], 1),
            service["error_ratio"]
                .as_f64()
                .map_or_else(|| "-".to_owned(), |r| format!("{:.1}%", r * 100.0)),
            service["p99_ms"]
                .as_f64()
                .map_or_else(|| "-".to_owned(), |ms| format!("{ms:.0} ms")),
        ]);
        for instance in &listed {
            instances.push([
                text(&instance["id"]),
                text(&service["name"]),
                text(&instance["url"]),
                text(&instance["status"]),
                format!("v{}", text(&instance["version"])),
            ]);
        }
    }
    let mut queues = vec![
        [
            "QUEUE",
            "ROUTING KEYS",
            "DEPTH",
            "IN FLIGHT",
            "CONSUMERS",
            "DEAD",
            "PUB/S",
            "DLV/S",
        ]
        .map(str::to_owned),
    ];
    for queue in list(&view["queues"]) {
        let keys: Vec<String> = list(&queue["routing_keys"]).iter().map(text).collect();
        queues.push([
            text(&queue["group"]),
            keys.join(","),
            text(&queue["depth"]),
            text(&queue["in_flight"]),
            text(&queue["consumers"]),
            text(&queue["dead_letters"]),
            number(&queue["publish_per_s"], 2),
            number(&queue["deliver_per_s"], 2),
        ]);
    }
    let bus = format!(
        "bus: {} ({}){}\n",
        text(&view["bus"]["backend"]),
        text(&view["bus"]["state"]),
        view["bus"]["detail"]
            .as_str()
            .map(|d| format!(" — {d}"))
            .unwrap_or_default()
    );
    [
        aligned(&services),
        aligned(&instances),
        aligned(&queues),
        bus,
    ]
    .join("\n")
}

/// The client for `gateway` (else the saved one, else the default) with `token` (else
/// the one saved for that gateway), and the config file.
fn connect(
    gateway: Option<String>,
    token: Option<String>,
    config: Option<PathBuf>,
) -> Result<(Client, PathBuf), CliError> {
    let config = config.unwrap_or_else(default_config_file);
    let saved = load(&config)?;
    let gateway = gateway
        .filter(|g| !g.trim().is_empty())
        .or_else(|| saved.gateway.clone())
        .unwrap_or_else(|| DEFAULT_GATEWAY.to_owned());
    if !(gateway.starts_with("http://") || gateway.starts_with("https://")) {
        return Err(CliError::new(
            Failure::Usage,
            format!("--gateway '{gateway}' is not an http:// or https:// URL"),
        ));
    }
    // A token saved for another gateway is not sent to this one.
    let same_gateway = saved.gateway.as_deref().map(|g| g.trim_end_matches('/'))
        == Some(gateway.trim_end_matches('/'));
    let token = token.or_else(|| saved.token.clone().filter(|_| same_gateway));
    Ok((Client::new(&gateway, token)?, config))
}

pub async fn run(args: ClientArgs) -> Result<(), CliError> {
    let (client, config) = connect(args.gateway, args.token, args.config)?;
    match args.command {
        ClientCommand::Login {
            email,
            password,
            password_stdin,
        } => {
            // Before the password, so nobody types one for a gateway that is not there.
            client.check_reachable().await?;
            let password = match password {
                Some(password) => password,
                None if password_stdin || !std::io::stdin().is_terminal() => read_password_line()?,
                None => {
                    rpassword::prompt_password(format!("password for {email}: ")).map_err(|e| {
                        CliError::new(Failure::Other, format!("cannot read the password: {e}"))
                    })?
                }
            };
            let token = client.login(&email, &password).await?;
            save(
                &config,
                &Saved {
                    gateway: Some(client.base_url().to_owned()),
                    token: Some(token),
                },
            )?;
            eprintln!(
                "logged in as {email} at {}; saved to {}",
                client.base_url(),
                config.display()
            );
        }
        ClientCommand::Upload {
            files,
            wait,
            download,
            timeout,
        } => {
            upload_all(
                &client,
                &files,
                wait || download.is_some(),
                download.as_deref(),
                Duration::from_secs(timeout),
            )
            .await?;
        }
        ClientCommand::Jobs { id, json } => {
            let jobs = match id {
                Some(id) => vec![client.job(&id).await?],
                None => match client.jobs().await? {
                    serde_json::Value::Array(jobs) => jobs,
                    other => vec![other],
                },
            };
            if json {
                print_json_lines(&jobs)?;
            } else {
                print!("{}", jobs_table(&jobs, now()));
            }
        }
        ClientCommand::Download { id, output } => {
            let fid = mp3_fid_of(&client, &id).await?;
            let output = output.unwrap_or_else(|| PathBuf::from(format!("{fid}.mp3")));
            let written = download_to(&client, &fid, &output).await?;
            println!("{} ({written} bytes)", output.display());
        }
        ClientCommand::Posts { json, limit } => {
            let posts = client.posts(limit).await?;
            let posts: Vec<serde_json::Value> = match posts {
                serde_json::Value::Object(map) => map.into_iter().map(|(_, v)| v).collect(),
                serde_json::Value::Array(list) => list,
                other => vec![other],
            };
            if json {
                print_json_lines(&posts)?;
            } else {
                print!("{}", posts_text(&posts));
            }
        }
        ClientCommand::Post { title } => {
            check_text("title", &title)?;
            let post = client.create_post(&title).await?;
            println!("{}", text_of(&post, "id"));
        }
        ClientCommand::Comment { post_id, text } => {
            check_text("comment", &text)?;
            client.comment(&post_id, &text).await?;
            eprintln!("comment added to {post_id}; moderation decides in a moment");
        }
    }
    Ok(())
}

/// The service's own limits, checked first so a mistake costs no round trip.
fn check_text(what: &str, text: &str) -> Result<(), CliError> {
    let length = text.chars().count();
    if text.trim().is_empty() || length > 10_000 {
        return Err(CliError::new(
            Failure::Usage,
            format!("the {what} must be 1–10,000 characters (it has {length})"),
        ));
    }
    Ok(())
}

fn print_json_lines(values: &[serde_json::Value]) -> Result<(), CliError> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    for value in values {
        let line = serde_json::to_string(value)
            .map_err(|e| CliError::new(Failure::Other, e.to_string()))?;
        writeln!(out, "{line}").map_err(|e| CliError::new(Failure::Other, e.to_string()))?;
    }
    Ok(())
}

fn text_of<'a>(value: &'a serde_json::Value, key: &str) -> &'a str {
    value.get(key).and_then(|v| v.as_str()).unwrap_or("")
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// "12 s ago", "5 min ago", "3 h ago", "2 days ago".
pub fn ago(then: i64, now: i64) -> String {
    let secs = now.saturating_sub(then).max(0);
    match secs {
        0..60 => format!("{secs} s ago"),
        60..3600 => format!("{} min ago", secs / 60),
        3600..86_400 => format!("{} h ago", secs / 3600),
        _ => match secs / 86_400 {
            1 => "1 day ago".to_owned(),
            days => format!("{days} days ago"),
        },
    }
}

/// The jobs as an aligned table: id, status, file, age, and the MP3 id or the reason.
pub fn jobs_table(jobs: &[serde_json::Value], now: i64) -> String {
    if jobs.is_empty() {
        return "no jobs yet: `flotilla client upload FILE`\n".to_owned();
    }
    let mut rows = vec![[
        "JOB".to_owned(),
        "STATUS".to_owned(),
        "FILE".to_owned(),
        "CREATED".to_owned(),
        "MP3 / REASON".to_owned(),
    ]];
    for job in jobs {
        let status = text_of(job, "status");
        let outcome = match status {
            "failed" => text_of(job, "error").to_owned(),
            _ => text_of(job, "mp3_fid").to_owned(),
        };
        let created = job
            .get("created_at")
            .and_then(serde_json::Value::as_i64)
            .map(|t| ago(t, now))
            .unwrap_or_default();
        rows.push([
            text_of(job, "job_id").to_owned(),
            status.to_owned(),
            text_of(job, "filename").to_owned(),
            created,
            outcome,
        ]);
    }
    aligned(&rows)
}

fn aligned<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [0usize; N];
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            line.push_str(cell);
            if i + 1 < N {
                let pad = widths[i] - cell.chars().count() + 2;
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Posts as text: the title and id, then each comment with its status.
fn posts_text(posts: &[serde_json::Value]) -> String {
    if posts.is_empty() {
        return "no posts yet: `flotilla client post TITLE`\n".to_owned();
    }
    let mut out = String::new();
    for post in posts {
        out.push_str(&format!(
            "{}  ({})\n",
            text_of(post, "title"),
            text_of(post, "id")
        ));
        let comments = post
            .get("comments")
            .and_then(serde_json::Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        for comment in comments {
            out.push_str(&format!(
                "  [{}] {}\n",
                text_of(comment, "status"),
                text_of(comment, "content")
            ));
        }
    }
    out
}

/// The MP3's file id for `id`: itself if it is one, else the id of a job that is done.
async fn mp3_fid_of(client: &Client, id: &str) -> Result<String, CliError> {
    if id.starts_with("mp3-") {
        return Ok(id.to_owned());
    }
    let job = client.job(id).await.map_err(|error| match error {
        ClientError::Server { status: 404, .. } => {
            CliError::new(Failure::NotFound, format!("no job or MP3 {id}"))
        }
        other => other.into(),
    })?;
    match text_of(&job, "status") {
        "done" => Ok(text_of(&job, "mp3_fid").to_owned()),
        "failed" => Err(CliError::new(
            Failure::JobFailed,
            format!("job {id} failed: {}", text_of(&job, "error")),
        )),
        status => Err(CliError::new(
            Failure::Other,
            format!("job {id} is {status}; wait for it with `flotilla client jobs {id}`"),
        )),
    }
}

async fn download_to(client: &Client, fid: &str, output: &Path) -> Result<u64, CliError> {
    let progress = bar(None);
    let written = client
        .download(fid, output, |done, total| {
            if let Some(total) = total {
                progress.set_length(total);
            }
            progress.set_position(done);
        })
        .await;
    progress.finish_and_clear();
    Ok(written?)
}

/// Uploads each file in turn; with `wait`, follows each job to its end. Job failures are
/// counted and reported at the end (exit code 6); any other error stops at once.
async fn upload_all(
    client: &Client,
    files: &[PathBuf],
    wait: bool,
    download: Option<&Path>,
    timeout: Duration,
) -> Result<(), CliError> {
    if let Some(dir) = download {
        std::fs::create_dir_all(dir).map_err(|e| {
            CliError::new(
                Failure::Other,
                format!("cannot create {}: {}", dir.display(), crate::io_reason(&e)),
            )
        })?;
    }
    let mut failed = 0usize;
    for file in files {
        let total = std::fs::metadata(file)
            .map_err(|e| ClientError::File {
                path: file.clone(),
                reason: crate::io_reason(&e),
            })?
            .len();
        let progress = bar(Some(total));
        let ticker = progress.clone();
        let receipt = client
            .upload(file, move |sent| ticker.set_position(sent))
            .await;
        progress.finish_and_clear();
        let receipt = receipt?;
        if !wait {
            println!("{}: job {}", file.display(), receipt.job_id);
            continue;
        }
        eprintln!("{}: job {} queued", file.display(), receipt.job_id);
        let job = follow(client, &receipt.job_id, file, timeout).await?;
        match text_of(&job, "status") {
            "done" => {
                let fid = text_of(&job, "mp3_fid");
                println!("{}: done {fid}", file.display());
                if let Some(dir) = download {
                    let output = dir.join(format!("{fid}.mp3"));
                    let written = download_to(client, fid, &output).await?;
                    eprintln!("{} ({written} bytes)", output.display());
                }
            }
            _ => {
                failed += 1;
                println!("{}: failed: {}", file.display(), text_of(&job, "error"));
            }
        }
    }
    match failed {
        0 => Ok(()),
        n => Err(CliError::new(
            Failure::JobFailed,
            format!("{n} of {} conversions failed", files.len()),
        )),
    }
}

/// Polls the job until it is done or failed, telling each change of status on stderr.
async fn follow(
    client: &Client,
    job_id: &str,
    file: &Path,
    timeout: Duration,
) -> Result<serde_json::Value, CliError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last = String::from("queued");
    let mut pause = Duration::from_millis(200);
    loop {
        let job = client.job(job_id).await?;
        let status = text_of(&job, "status").to_owned();
        if status == "done" || status == "failed" {
            return Ok(job);
        }
        if status != last {
            eprintln!("{}: {status}", file.display());
            last = status;
        }
        if tokio::time::Instant::now() + pause > deadline {
            return Err(CliError::new(
                Failure::Other,
                format!(
                    "job {job_id} is still {last} after {} s; follow it with `flotilla client jobs {job_id}`",
                    timeout.as_secs()
                ),
            ));
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(2));
    }
}

/// The password as the first line of stdin (a script's `echo pw | flotilla client login`).
fn read_password_line() -> Result<String, CliError> {
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).map_err(|e| {
        CliError::new(
            Failure::Other,
            format!("cannot read the password from stdin: {e}"),
        )
    })?;
    let password = line.trim_end_matches(['\r', '\n']);
    if password.is_empty() {
        return Err(CliError::new(Failure::Usage, "no password on stdin"));
    }
    Ok(password.to_owned())
}

/// Saves the login readable by its owner only, replacing the file atomically.
fn save(path: &Path, saved: &Saved) -> Result<(), CliError> {
    let fail = |e: std::io::Error| {
        CliError::new(
            Failure::Other,
            format!("cannot write {}: {}", path.display(), crate::io_reason(&e)),
        )
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(fail)?;
    }
    let text = serde_json::to_string_pretty(saved)
        .map_err(|e| CliError::new(Failure::Other, e.to_string()))?;
    let temporary = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&temporary).map_err(fail)?;
    std::io::Write::write_all(&mut file, text.as_bytes()).map_err(fail)?;
    drop(file);
    std::fs::rename(&temporary, path).map_err(fail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_like_a_person_says_them() {
        assert_eq!(ago(100, 105), "5 s ago");
        assert_eq!(ago(0, 150), "2 min ago");
        assert_eq!(ago(0, 7200), "2 h ago");
        assert_eq!(ago(0, 86_400), "1 day ago");
        assert_eq!(ago(0, 3 * 86_400), "3 days ago");
        assert_eq!(ago(10, 5), "0 s ago");
    }

    #[test]
    fn the_status_tables_are_aligned_like_the_jobs_table() {
        let view = serde_json::json!({
            "services": [
                {"name": "converter", "requests_per_s": 1.25, "error_ratio": 0.5, "p99_ms": 12.4,
                 "instances": [
                    {"id": "c-1", "url": "http://127.0.0.1:1", "status": "up", "version": "0.1.0"},
                    {"id": "c-22", "url": "http://127.0.0.1:2", "status": "expired", "version": "0.1.0"}]},
                {"name": "gateway-with-a-long-name", "instances": []}],
            "queues": [{"group": "video", "routing_keys": ["video", "retry"], "depth": 3,
                        "in_flight": 1, "consumers": 2, "dead_letters": 0,
                        "publish_per_s": 0.5, "deliver_per_s": null}],
            "bus": {"backend": "embedded", "state": "up"},
        });
        let table = status_table(&view);
        let lines: Vec<&str> = table.lines().collect();
        let column = |line: &str, word: &str| line.find(word).expect(word);
        // (heading line, its word, row line, the cell under it)
        for (heading, word, row, cell) in [
            (0, "INSTANCES", 1, "1/2"),
            (0, "INSTANCES", 2, "0/0"),
            (0, "ERRORS", 1, "50.0%"),
            (4, "STATUS", 5, "up"),
            (4, "STATUS", 6, "expired"),
            (8, "DEPTH", 9, "3"),
            (8, "PUB/S", 9, "0.50"),
        ] {
            let (heading, row) = (lines[heading], lines[row]);
            assert_eq!(column(heading, word), column(row, cell), "{cell}: {table}");
        }
        assert!(
            lines[1].ends_with("12 ms") && lines[2].ends_with('-'),
            "{table}"
        );
        assert_eq!(lines[3], "", "{table}");
        assert!(
            lines[9].contains("video,retry") && lines[9].ends_with('-'),
            "{table}"
        );
        assert_eq!(lines[11], "bus: embedded (up)", "{table}");
    }

    #[test]
    fn the_jobs_table_is_aligned() {
        let jobs = vec![
            serde_json::json!({"job_id": "j-1", "status": "done", "filename": "a.mp4",
                "created_at": 1000, "mp3_fid": "mp3-j-1"}),
            serde_json::json!({"job_id": "j-22", "status": "failed", "filename": "long name.txt",
                "created_at": 880, "error": "not a media file"}),
        ];
        let table = jobs_table(&jobs, 1000);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3, "{table}");
        let column = |line: &str, word: &str| line.find(word).expect(word);
        assert_eq!(column(lines[0], "STATUS"), column(lines[1], "done"));
        assert_eq!(column(lines[0], "STATUS"), column(lines[2], "failed"));
        assert_eq!(column(lines[0], "CREATED"), column(lines[2], "2 min ago"));
        assert!(lines[2].ends_with("not a media file"), "{table}");
        assert!(!table.contains("1000"), "no Unix time: {table}");
    }

    #[test]
    fn errors_map_to_their_exit_codes() {
        let server = |status| ClientError::Server {
            status,
            detail: "x".into(),
        };
        assert_eq!(CliError::from(server(401)).exit_code(), 3);
        assert_eq!(CliError::from(ClientError::NoToken).exit_code(), 3);
        assert_eq!(CliError::from(server(404)).exit_code(), 4);
        assert_eq!(CliError::from(server(503)).exit_code(), 5);
        assert_eq!(CliError::from(server(500)).exit_code(), 1);
    }
}
