//! `POST /upload`: the one file part of a multipart body goes straight into the blob
//! store, chunk by chunk as it arrives, so memory does not grow with the file.
//!
//! Memory does not grow with anything else a client sends either. The body reaches the
//! multipart parser ([`multer`], what axum's `Multipart` wraps) through a [`Gate`] that
//! 1. counts the whole body against the upload limit — bytes before the first boundary
//!    (a preamble), part headers and text fields included — and ends it with 413 the
//!    moment it passes (a body that announces a larger `Content-Length` is refused
//!    before anything is read);
//! 2. lets the parser hold at most [`MAX_UNPARSED_BYTES`] it has not turned into a
//!    part or a chunk of a part: the parser buffers a preamble until the first boundary
//!    and a part's headers until their blank line, so a preamble or a part header that
//!    never ends would otherwise be kept whole. Past that cap the body is refused (400)
//!    at once.
//!
//! Text fields beside the file are read and dropped, each at most
//! [`MAX_TEXT_FIELD_BYTES`] (400 past that). Whatever went wrong, a partly written blob
//! is discarded.

use std::{
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
};

use bytes::Bytes;
use futures::Stream;
use http::{HeaderMap, header};
use platform::Problem;
use storage::blob::{BlobError, BlobStore, BlobWriter};

/// Most bytes the multipart parser may hold without having made a part or a chunk of
/// one out of them: a preamble before the first boundary, one part's headers. Browsers
/// and curl send no preamble and a few hundred bytes of headers.
pub const MAX_UNPARSED_BYTES: u64 = 16 * 1024;
/// Longest text field (a form value beside the file); such fields are read and dropped.
pub const MAX_TEXT_FIELD_BYTES: u64 = 64 * 1024;
/// Longest original file name kept with the job.
const MAX_FILENAME_CHARS: usize = 200;

/// A file that has been stored under its key.
#[derive(Debug)]
pub struct StoredFile {
    pub filename: String,
    pub size: u64,
}

/// Why an upload was refused.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("the upload is larger than the limit of {limit} bytes (the whole request body counts)")]
    TooLarge { limit: u64 },
    #[error("the request must be multipart/form-data with exactly one file part: {0}")]
    NotMultipart(String),
    #[error("no file part in the form: send exactly one (e.g. -F 'file=@video.mp4')")]
    NoFile,
    #[error("more than one file part in the form: send exactly one")]
    SeveralFiles,
    #[error("the file is empty")]
    EmptyFile,
    #[error(
        "the multipart framing is too long: a preamble before the first boundary or a \
         part's headers may take at most {MAX_UNPARSED_BYTES} bytes"
    )]
    FramingTooLong,
    #[error("a text field is longer than {MAX_TEXT_FIELD_BYTES} bytes")]
    TextFieldTooLong,
    #[error("the request body arrived too slowly: {0}")]
    TooSlow(String),
    #[error("the multipart body could not be read: {0}")]
    Malformed(String),
    #[error("storing the file failed: {0}")]
    Store(#[from] BlobError),
}

impl From<UploadError> for Problem {
    fn from(error: UploadError) -> Self {
        match &error {
            UploadError::TooLarge { limit } => {
                Problem::payload_too_large(error.to_string()).with_extension("limit_bytes", *limit)
            }
            UploadError::TooSlow(_) => {
                Problem::new(http::StatusCode::REQUEST_TIMEOUT, error.to_string())
            }
            UploadError::NotMultipart(_)
            | UploadError::NoFile
            | UploadError::SeveralFiles
            | UploadError::EmptyFile
            | UploadError::FramingTooLong
            | UploadError::TextFieldTooLong
            | UploadError::Malformed(_) => Problem::bad_request(error.to_string()),
            // A full disk or quota is the server's condition, not a bug: 507 says so
            // and the client may try again later; a store that does not answer is 503.
            UploadError::Store(cause) if cause.is_storage_full() => Problem::new(
                http::StatusCode::INSUFFICIENT_STORAGE,
                "the server has no room to store this upload right now; nothing was kept, try again later",
            )
            .with_retry_after(60),
            UploadError::Store(cause) => {
                tracing::error!(error = %cause, "storing an upload failed");
                Problem::service_unavailable(
                    "the file store is not available right now; nothing was kept, try again later",
                )
                .with_retry_after(5)
            }
        }
    }
}

/// Refuses a body whose announced length exceeds the limit, before reading it.
pub fn check_announced_length(headers: &HeaderMap, limit: u64) -> Result<(), UploadError> {
    let announced = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse::<u64>().ok());
    match announced {
        Some(length) if length > limit => Err(UploadError::TooLarge { limit }),
        _ => Ok(()),
    }
}

/// The multipart boundary of a `multipart/form-data` content type.
pub fn boundary(headers: &HeaderMap) -> Result<String, UploadError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .ok_or_else(|| UploadError::NotMultipart("no Content-Type".to_owned()))?;
    multer::parse_boundary(content_type)
        .map_err(|error| UploadError::NotMultipart(error.to_string()))
}

/// Reads the whole form from `body`, storing its one file part under `key`. On any
/// error nothing is left under `key`.
pub async fn store_single_file(
    body: axum::body::Body,
    boundary: String,
    blobs: &BlobStore,
    key: &str,
    limit: u64,
) -> Result<StoredFile, UploadError> {
    let progress = Progress::default();
    let gate = Gate::new(body.into_data_stream(), limit, progress.clone());
    let mut multipart = multer::Multipart::new(gate, boundary);
    let mut stored: Option<StoredFile> = None;
    let outcome = async {
        while let Some(field) = multipart.next_field().await.map_err(read_error)? {
            progress.made();
            let Some(filename) = field.file_name().map(clean_filename) else {
                skip_text_field(field, &progress).await?;
                continue;
            };
            if stored.is_some() {
                return Err(UploadError::SeveralFiles);
            }
            let size = copy_field(field, blobs.writer(key).await?, &progress).await?;
            stored = Some(StoredFile { filename, size });
        }
        Ok(())
    }
    .await;
    if let Err(error) = outcome {
        discard(blobs, key, stored.is_some()).await;
        return Err(error);
    }
    match stored {
        Some(file) if file.size == 0 => {
            discard(blobs, key, true).await;
            Err(UploadError::EmptyFile)
        }
        Some(file) => Ok(file),
        None => Err(UploadError::NoFile),
    }
}

/// Reads and drops a text field, refusing one longer than [`MAX_TEXT_FIELD_BYTES`].
async fn skip_text_field(
    mut field: multer::Field<'_>,
    progress: &Progress,
) -> Result<(), UploadError> {
    let mut length = 0u64;
    while let Some(chunk) = field.chunk().await.map_err(read_error)? {
        progress.made();
        length += chunk.len() as u64;
        if length > MAX_TEXT_FIELD_BYTES {
            return Err(UploadError::TextFieldTooLong);
        }
    }
    Ok(())
}

/// Streams one field into `writer`, aborting it on any error. The gate has counted the
/// field's bytes against the limit already.
async fn copy_field(
    mut field: multer::Field<'_>,
    mut writer: BlobWriter,
    progress: &Progress,
) -> Result<u64, UploadError> {
    loop {
        let chunk = match field.chunk().await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => break,
            Err(error) => {
                writer.abort().await;
                return Err(read_error(error));
            }
        };
        progress.made();
        if let Err(error) = writer.write(chunk).await {
            writer.abort().await;
            return Err(error.into());
        }
    }
    Ok(writer.finish().await?)
}

fn read_error(error: multer::Error) -> UploadError {
    match error {
        multer::Error::StreamReadFailed(cause) => match cause.downcast::<GateError>() {
            Ok(gate) => match *gate {
                GateError::TooLarge { limit } => UploadError::TooLarge { limit },
                GateError::Unparsed => UploadError::FramingTooLong,
                GateError::Body(error) => body_error(&error),
            },
            Err(other) => UploadError::Malformed(other.to_string()),
        },
        other => UploadError::Malformed(other.to_string()),
    }
}

/// A body that could not be read: too slow (the connection layer's minimum rate), or
/// broken off.
fn body_error(error: &axum::Error) -> UploadError {
    match platform::http::BodyTooSlow::in_chain(error) {
        Some(slow) => UploadError::TooSlow(slow.to_string()),
        None => UploadError::Malformed(error.to_string()),
    }
}

async fn discard(blobs: &BlobStore, key: &str, written: bool) {
    if written && let Err(error) = blobs.delete(key).await {
        tracing::warn!(%error, key, "could not delete the blob of a refused upload");
    }
}

/// Bytes handed to the parser since it last produced a part or a chunk of one: what it
/// may be holding unparsed. Shared between the [`Gate`] (which adds) and the upload
/// (which resets it each time the parser produces something).
#[derive(Debug, Clone, Default)]
struct Progress(Arc<AtomicU64>);

impl Progress {
    fn made(&self) {
        self.0.store(0, Ordering::Relaxed);
    }

    fn add(&self, bytes: u64) -> u64 {
        self.0.fetch_add(bytes, Ordering::Relaxed) + bytes
    }

    fn pending(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Why the [`Gate`] ended the body.
#[derive(Debug, thiserror::Error)]
enum GateError {
    #[error("the body is larger than {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("the parser holds too many unparsed bytes")]
    Unparsed,
    #[error(transparent)]
    Body(axum::Error),
}

/// The request body on its way to the parser: counted against the limit, and held back
/// while the parser sits on [`MAX_UNPARSED_BYTES`] it has made nothing of.
///
/// The parser reads everything that is ready into its buffer before it looks at it, so
/// the gate stops it at the cap with one `Pending` (waking the task at once): the parser
/// then works through its buffer, and either produces something (the upload resets
/// [`Progress`] and the body flows again) or asks for more with nothing produced — the
/// cap is passed by framing alone, and the body ends with [`GateError::Unparsed`].
struct Gate<S> {
    inner: S,
    limit: u64,
    received: u64,
    progress: Progress,
    held_back: bool,
}

impl<S> Gate<S> {
    fn new(inner: S, limit: u64, progress: Progress) -> Self {
        Self {
            inner,
            limit,
            received: 0,
            progress,
            held_back: false,
        }
    }
}

impl<S> Stream for Gate<S>
where
    S: Stream<Item = Result<Bytes, axum::Error>> + Unpin,
{
    type Item = Result<Bytes, GateError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.progress.pending() >= MAX_UNPARSED_BYTES {
            if this.held_back {
                return Poll::Ready(Some(Err(GateError::Unparsed)));
            }
            this.held_back = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        this.held_back = false;
        match std::task::ready!(Pin::new(&mut this.inner).poll_next(cx)) {
            Some(Ok(chunk)) => {
                this.received += chunk.len() as u64;
                if this.received > this.limit {
                    return Poll::Ready(Some(Err(GateError::TooLarge { limit: this.limit })));
                }
                this.progress.add(chunk.len() as u64);
                Poll::Ready(Some(Ok(chunk)))
            }
            Some(Err(error)) => Poll::Ready(Some(Err(GateError::Body(error)))),
            None => Poll::Ready(None),
        }
    }
}

/// The base name of the client's file name, without control characters, bounded.
fn clean_filename(name: &str) -> String {
    let base = name.rsplit(['/', '\\']).next().unwrap_or(name);
    let cleaned: String = base
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_FILENAME_CHARS)
        .collect();
    if cleaned.trim().is_empty() {
        "upload".to_owned()
    } else {
        cleaned
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_announced_length_over_the_limit_is_refused() {
        let mut headers = HeaderMap::new();
        assert!(check_announced_length(&headers, 10).is_ok());
        headers.insert(header::CONTENT_LENGTH, "10".parse().expect("header"));
        assert!(check_announced_length(&headers, 10).is_ok());
        headers.insert(header::CONTENT_LENGTH, "11".parse().expect("header"));
        assert!(matches!(
            check_announced_length(&headers, 10),
            Err(UploadError::TooLarge { limit: 10 })
        ));
    }

    #[test]
    fn file_names_lose_their_directories_and_control_characters() {
        assert_eq!(clean_filename("C:\\Users\\me\\clip.mp4"), "clip.mp4");
        assert_eq!(clean_filename("../../etc/passwd"), "passwd");
        assert_eq!(clean_filename("a\nb\u{7}.mp4"), "ab.mp4");
        assert_eq!(clean_filename(""), "upload");
        assert_eq!(clean_filename(&"x".repeat(500)).len(), MAX_FILENAME_CHARS);
    }
}
