//! A client for a running Flotilla gateway, and the `flotilla client` command built on it.
//! Uploads and downloads stream from and to disk (memory does not grow with file size)
//! and show progress; errors from the server are its `application/problem+json` detail.

mod cli;

use std::path::{Path, PathBuf};

use futures::TryStreamExt;
use serde::Deserialize;
use tokio::io::AsyncWriteExt;
use tokio_util::io::ReaderStream;

pub use cli::{CliError, ClientArgs, Failure, StatusArgs, run, status, status_table};

/// What went wrong talking to the gateway. Each message is complete in itself (no
/// `source()` chain to print after it), so the command prints it once, as one line.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an error status.
    #[error("{detail} (HTTP {status})")]
    Server { status: u16, detail: String },
    #[error("cannot reach the gateway at {url}: {reason}")]
    Transport { url: String, reason: String },
    #[error("{}: {reason}", path.display())]
    File { path: PathBuf, reason: String },
    #[error("not logged in: run `flotilla client login` or set FLOTILLA_TOKEN")]
    NoToken,
    #[error("the server's answer was not understood: {0}")]
    Unexpected(String),
}

/// What `POST /upload` answers with `Accept: application/json`.
#[derive(Debug, Clone, Deserialize)]
pub struct UploadReceipt {
    pub job_id: String,
    pub video_fid: String,
    #[serde(default)]
    pub status_url: Option<String>,
}

/// A connection to one gateway, with or without a token.
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    http: reqwest::Client,
    token: Option<String>,
}

impl Client {
    pub fn new(base_url: &str, token: Option<String>) -> Result<Self, ClientError> {
        platform::tls::install_crypto_provider();
        let http = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(10))
            .build()
            .map_err(|source| transport(base_url, &source))?;
        Ok(Self {
            base: base_url.trim_end_matches('/').to_owned(),
            http,
            token,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn bearer(&self) -> Result<String, ClientError> {
        self.token
            .as_ref()
            .map(|t| format!("Bearer {t}"))
            .ok_or(ClientError::NoToken)
    }

    async fn send(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ClientError> {
        let response = request
            .send()
            .await
            .map_err(|source| transport(&self.base, &source))?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        // A problem+json detail, else the body itself (a proxy's page), kept to one line.
        let text: String = text
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .chars()
            .take(300)
            .collect();
        let detail = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v.get("detail").and_then(|d| d.as_str()).map(str::to_owned))
            .unwrap_or(text);
        let detail = if detail.is_empty() {
            reqwest::StatusCode::from_u16(status)
                .ok()
                .and_then(|s| s.canonical_reason())
                .unwrap_or("error")
                .to_owned()
        } else {
            detail
        };
        Err(ClientError::Server { status, detail })
    }

    /// The gateway this client talks to.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// `GET /healthz`: whether the gateway answers at all (before asking for a password).
    pub async fn check_reachable(&self) -> Result<(), ClientError> {
        self.send(
            self.http
                .get(self.url("/healthz"))
                .timeout(std::time::Duration::from_secs(10)),
        )
        .await
        .map(drop)
    }

    /// `POST /login` with HTTP Basic; returns the token.
    pub async fn login(&self, email: &str, password: &str) -> Result<String, ClientError> {
        let response = self
            .send(
                self.http
                    .post(self.url("/login"))
                    .basic_auth(email, Some(password)),
            )
            .await?;
        let token = response
            .text()
            .await
            .map_err(|e| ClientError::Unexpected(e.to_string()))?;
        Ok(token.trim().to_owned())
    }

    /// Streams `path` to `POST /upload`; `progress` is told the bytes sent so far.
    pub async fn upload(
        &self,
        path: &Path,
        progress: impl Fn(u64) + Send + Sync + 'static,
    ) -> Result<UploadReceipt, ClientError> {
        let file_error = |source: std::io::Error| ClientError::File {
            path: path.to_owned(),
            reason: io_reason(&source),
        };
        let file = tokio::fs::File::open(path).await.map_err(file_error)?;
        let length = file.metadata().await.map_err(file_error)?.len();
        let mut sent = 0u64;
        let stream = ReaderStream::with_capacity(file, 256 * 1024).inspect_ok(move |chunk| {
            sent += chunk.len() as u64;
            progress(sent);
        });
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "upload".to_owned());
        let part = reqwest::multipart::Part::stream_with_length(
            reqwest::Body::wrap_stream(stream),
            length,
        )
        .file_name(name);
        let form = reqwest::multipart::Form::new().part("file", part);
        let response = self
            .send(
                self.http
                    .post(self.url("/upload"))
                    .header("authorization", self.bearer()?)
                    .header("accept", "application/json")
                    .multipart(form),
            )
            .await?;
        response
            .json::<UploadReceipt>()
            .await
            .map_err(|e| ClientError::Unexpected(e.to_string()))
    }

    /// `GET /admin/system`: the system's services, instances, queues (admins).
    pub async fn system(&self) -> Result<serde_json::Value, ClientError> {
        self.get_json("/admin/system").await
    }

    /// `GET /jobs`: the caller's jobs as the server describes them.
    pub async fn jobs(&self) -> Result<serde_json::Value, ClientError> {
        self.get_json("/jobs").await
    }

    /// `GET /jobs/{id}`.
    pub async fn job(&self, id: &str) -> Result<serde_json::Value, ClientError> {
        self.get_json(&format!("/jobs/{}", path_segment(id))).await
    }

    /// `GET /posts?limit=N`: the blog's posts with their comments, keyed by post id.
    pub async fn posts(&self, limit: u32) -> Result<serde_json::Value, ClientError> {
        let mut request = self
            .http
            .get(self.url(&format!("/posts?limit={limit}")))
            .header("accept", "application/json");
        if let Ok(bearer) = self.bearer() {
            request = request.header("authorization", bearer);
        }
        json_of(self.send(request).await?).await
    }

    /// `POST /posts/create {"title"}`: the new post `{"id","title"}`.
    pub async fn create_post(&self, title: &str) -> Result<serde_json::Value, ClientError> {
        self.post_json("/posts/create", &serde_json::json!({ "title": title }))
            .await
    }

    /// `POST /posts/{id}/comments {"content"}`: the post's comments, the new one pending.
    pub async fn comment(
        &self,
        post_id: &str,
        content: &str,
    ) -> Result<serde_json::Value, ClientError> {
        let path = format!("/posts/{}/comments", path_segment(post_id));
        self.post_json(&path, &serde_json::json!({ "content": content }))
            .await
    }

    async fn post_json(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<serde_json::Value, ClientError> {
        let mut request = self.http.post(self.url(path)).json(body);
        if let Ok(bearer) = self.bearer() {
            request = request.header("authorization", bearer);
        }
        json_of(self.send(request).await?).await
    }

    async fn get_json(&self, path: &str) -> Result<serde_json::Value, ClientError> {
        let response = self
            .send(
                self.http
                    .get(self.url(path))
                    .header("authorization", self.bearer()?)
                    .header("accept", "application/json"),
            )
            .await?;
        json_of(response).await
    }

    /// Streams `GET /download?fid=` into `destination`; `progress` gets (done, total).
    pub async fn download(
        &self,
        fid: &str,
        destination: &Path,
        progress: impl Fn(u64, Option<u64>),
    ) -> Result<u64, ClientError> {
        let url = reqwest::Url::parse_with_params(&self.url("/download"), [("fid", fid)])
            .map_err(|e| ClientError::Unexpected(format!("bad gateway URL: {e}")))?;
        let response = self
            .send(self.http.get(url).header("authorization", self.bearer()?))
            .await?;
        let total = response.content_length();
        // Written beside the destination and renamed at the end, so an interrupted
        // download never leaves a truncated file under the final name. Errors name the
        // destination: the user never typed the `.part` name.
        let partial = destination.with_extension("part");
        let file_error = |source: std::io::Error| ClientError::File {
            path: destination.to_owned(),
            reason: io_reason(&source),
        };
        let mut file = tokio::fs::File::create(&partial)
            .await
            .map_err(file_error)?;
        let mut written = 0u64;
        let mut body = response.bytes_stream();
        while let Some(chunk) = body
            .try_next()
            .await
            .map_err(|source| transport(&self.base, &source))?
        {
            file.write_all(&chunk).await.map_err(file_error)?;
            written += chunk.len() as u64;
            progress(written, total);
        }
        file.flush().await.map_err(file_error)?;
        file.sync_all().await.map_err(file_error)?;
        drop(file);
        tokio::fs::rename(&partial, destination)
            .await
            .map_err(file_error)?;
        Ok(written)
    }
}

async fn json_of(response: reqwest::Response) -> Result<serde_json::Value, ClientError> {
    response
        .json()
        .await
        .map_err(|e| ClientError::Unexpected(e.to_string()))
}

/// Percent-encodes a path segment, so an id typed by the user stays one segment.
fn path_segment(value: &str) -> String {
    // RFC 3986 §2.3: everything but the unreserved characters.
    const ESCAPED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(value, ESCAPED).to_string()
}

/// A transport error as one short reason: the innermost cause ("Connection refused"),
/// not reqwest's chain, whose levels repeat each other.
fn transport(url: &str, error: &reqwest::Error) -> ClientError {
    let mut cause: &dyn std::error::Error = error;
    while let Some(next) = cause.source() {
        cause = next;
    }
    let reason = if error.is_timeout() {
        "no answer in time".to_owned()
    } else {
        cause.to_string()
    };
    ClientError::Transport {
        url: url.to_owned(),
        reason,
    }
}

/// An I/O error without the `(os error N)` suffix.
fn io_reason(error: &std::io::Error) -> String {
    match error.kind() {
        std::io::ErrorKind::NotFound => "no such file or directory".to_owned(),
        std::io::ErrorKind::PermissionDenied => "permission denied".to_owned(),
        _ => {
            let text = error.to_string();
            match text.find(" (os error") {
                Some(at) => text[..at].to_owned(),
                None => text,
            }
        }
    }
}
