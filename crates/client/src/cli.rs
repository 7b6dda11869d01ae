//! `flotilla client …`: the command line over [`Client`](crate::Client).

use std::{io::IsTerminal, path::PathBuf};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};

use crate::Client;

#[derive(Debug, Clone, clap::Args)]
pub struct ClientArgs {
    /// The gateway to talk to.
    #[arg(
        long,
        env = "FLOTILLA_GATEWAY_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    pub gateway: String,
    /// A token to use instead of the one saved by `login`.
    #[arg(long, env = "FLOTILLA_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// Where `login` saves the token and other commands read it.
    #[arg(long, env = "FLOTILLA_TOKEN_FILE", global = true)]
    pub token_file: Option<PathBuf>,
    #[command(subcommand)]
    pub command: ClientCommand,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum ClientCommand {
    /// Log in and save the token (password from a prompt on a terminal, else the first
    /// line of stdin; or --password-stdin, --password, FLOTILLA_PASSWORD).
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
    /// Upload a video; prints the job id.
    Upload { file: PathBuf },
    /// List your conversion jobs, or show one.
    Jobs { id: Option<String> },
    /// Download an MP3 by its file id.
    Download {
        fid: String,
        /// Output file (default: <FID>.mp3).
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
}

fn default_token_file() -> PathBuf {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".config")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("flotilla").join("token")
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
pub async fn run(args: ClientArgs) -> anyhow::Result<()> {
    let token_file = args.token_file.clone().unwrap_or_else(default_token_file);
    let saved = || {
        std::fs::read_to_string(&token_file)
            .ok()
            .map(|t| t.trim().to_owned())
    };
    let token = args.token.clone().or_else(saved);
    let client = Client::new(&args.gateway, token)?;
    match args.command {
        ClientCommand::Login {
            email,
            password,
            password_stdin,
        } => {
            let password = match password {
                Some(password) => password,
                None if password_stdin || !std::io::stdin().is_terminal() => read_password_line()?,
                None => rpassword::prompt_password(format!("password for {email}: "))
                    .context("cannot read the password")?,
            };
            let token = client.login(&email, &password).await?;
            save_token(&token_file, &token)?;
            eprintln!(
                "logged in as {email}; token saved to {}",
                token_file.display()
            );
        }
        ClientCommand::Upload { file } => {
            let total = std::fs::metadata(&file)
                .with_context(|| format!("cannot read {}", file.display()))?
                .len();
            let progress = bar(Some(total));
            let ticker = progress.clone();
            let receipt = client
                .upload(&file, move |sent| ticker.set_position(sent))
                .await;
            progress.finish_and_clear();
            let receipt = receipt?;
            println!("job {} (video {})", receipt.job_id, receipt.video_fid);
        }
        ClientCommand::Jobs { id } => {
            let jobs = match id {
                Some(id) => client.job(&id).await?,
                None => client.jobs().await?,
            };
            println!("{}", serde_json::to_string_pretty(&jobs)?);
        }
        ClientCommand::Download { fid, output } => {
            let output = output.unwrap_or_else(|| PathBuf::from(format!("{fid}.mp3")));
            let progress = bar(None);
            let written = client
                .download(&fid, &output, |done, total| {
                    if let Some(total) = total {
                        progress.set_length(total);
                    }
                    progress.set_position(done);
                })
                .await;
            progress.finish_and_clear();
            let written = written?;
            println!("{} ({written} bytes)", output.display());
        }
    }
    Ok(())
}

/// The password as the first line of stdin (a script's `echo pw | flotilla client login`).
fn read_password_line() -> anyhow::Result<String> {
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .context("cannot read the password from stdin")?;
    let password = line.trim_end_matches(['\r', '\n']);
    anyhow::ensure!(!password.is_empty(), "no password on stdin");
    Ok(password.to_owned())
}

/// Saves the token readable by its owner only.
fn save_token(path: &std::path::Path, token: &str) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    std::io::Write::write_all(&mut file, token.as_bytes())?;
    Ok(())
}
