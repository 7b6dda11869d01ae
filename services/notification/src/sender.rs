//! Where emails go: an SMTP server (lettre over rustls) when `FLOTILLA_SMTP_URL` is set,
//! otherwise `.eml` files under `<data>/mail/` — one per job, named after it, written
//! to a temporary file and renamed, so writing the same email again replaces it.

use std::path::{Path, PathBuf};

use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

/// Why an email was not handed over.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("invalid SMTP URL: {0}")]
    Url(String),
    /// The server refused for good (e.g. unknown mailbox): retrying cannot help.
    #[error("the SMTP server refused the email: {0}")]
    Refused(String),
    /// Unreachable server, timeout, temporary refusal: try again later.
    #[error("the SMTP server could not take the email now: {0}")]
    Unavailable(String),
    #[error("writing the mail file failed: {0}")]
    File(#[from] std::io::Error),
}

impl SendError {
    pub fn is_permanent(&self) -> bool {
        matches!(self, SendError::Refused(_) | SendError::Url(_))
    }
}

/// An email transport.
#[derive(Clone)]
pub enum Sender {
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
    Files(PathBuf),
}

impl std::fmt::Debug for Sender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Sender::Smtp(_) => f.write_str("Sender::Smtp"),
            Sender::Files(dir) => write!(f, "Sender::Files({})", dir.display()),
        }
    }
}

impl Sender {
    /// SMTP at `url` (`smtp://host:port`, `smtps://user:pw@host`, `?tls=required` …),
    /// or files in `mail_dir` when there is no URL.
    pub fn new(url: Option<&str>, mail_dir: &Path) -> Result<Self, SendError> {
        match url.map(str::trim).filter(|url| !url.is_empty()) {
            Some(url) => {
                let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
                    .map_err(|error| SendError::Url(error.to_string()))?
                    .build();
                Ok(Sender::Smtp(transport))
            }
            None => {
                std::fs::create_dir_all(mail_dir)?;
                Ok(Sender::Files(mail_dir.to_owned()))
            }
        }
    }

    /// Hands `email` (the email of job `job_id`) over.
    pub async fn send(&self, job_id: &str, email: &Message) -> Result<(), SendError> {
        match self {
            Sender::Smtp(transport) => match transport.send(email.clone()).await {
                Ok(_) => Ok(()),
                Err(error) if error.is_permanent() => Err(SendError::Refused(error.to_string())),
                Err(error) => Err(SendError::Unavailable(error.to_string())),
            },
            Sender::Files(dir) => write_eml(dir, job_id, &email.formatted()).await,
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Sender::Smtp(_) => "smtp".to_owned(),
            Sender::Files(dir) => format!("files in {}", dir.display()),
        }
    }
}

/// `<dir>/<job_id>.eml`, replaced atomically.
async fn write_eml(dir: &Path, job_id: &str, bytes: &[u8]) -> Result<(), SendError> {
    let safe: String = job_id
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .collect();
    let target = dir.join(format!("{safe}.eml"));
    let temporary = dir.join(format!(".{safe}.eml.tmp"));
    let bytes = bytes.to_vec();
    tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        use std::io::Write;
        let mut file = std::fs::File::create(&temporary)?;
        file.write_all(&bytes)?;
        file.sync_all()?;
        std::fs::rename(&temporary, &target)
    })
    .await
    .map_err(std::io::Error::other)??;
    Ok(())
}
