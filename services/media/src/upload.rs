//! `POST /upload`: the one file part of a multipart body goes straight into the blob
//! store, chunk by chunk as it arrives, so memory does not grow with the file. The size
//! limit is checked twice: against `Content-Length` before reading anything (a client
//! that announces 5 GiB is told at once), and by counting while streaming (a chunked
//! body announces nothing). Whatever went wrong, a partly written blob is discarded.

use axum::extract::multipart::{Field, Multipart, MultipartError, MultipartRejection};
use http::{HeaderMap, StatusCode, header};
use platform::Problem;
use storage::blob::{BlobError, BlobStore, BlobWriter};

/// Room for the multipart framing around the file (boundaries, part headers, small
/// text fields) when judging `Content-Length` against the file size limit.
const FRAMING_ALLOWANCE: u64 = 64 * 1024;
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
    #[error("the file is larger than the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("the request must be multipart/form-data with exactly one file part")]
    NotMultipart(#[source] MultipartRejection),
    #[error("no file part in the form: send exactly one (e.g. -F 'file=@video.mp4')")]
    NoFile,
    #[error("more than one file part in the form: send exactly one")]
    SeveralFiles,
    #[error("the file is empty")]
    EmptyFile,
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
            UploadError::NotMultipart(_)
            | UploadError::NoFile
            | UploadError::SeveralFiles
            | UploadError::EmptyFile
            | UploadError::Malformed(_) => Problem::bad_request(error.to_string()),
            UploadError::Store(cause) => Problem::internal(cause),
        }
    }
}

/// Refuses a body whose announced length cannot fit the limit, before reading it.
pub fn check_announced_length(headers: &HeaderMap, limit: u64) -> Result<(), UploadError> {
    let announced = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse::<u64>().ok());
    match announced {
        Some(length) if length > limit.saturating_add(FRAMING_ALLOWANCE) => {
            Err(UploadError::TooLarge { limit })
        }
        _ => Ok(()),
    }
}

/// Reads the whole form, storing its one file part under `key`. On any error nothing
/// is left under `key`.
pub async fn store_single_file(
    multipart: Result<Multipart, MultipartRejection>,
    blobs: &BlobStore,
    key: &str,
    limit: u64,
) -> Result<StoredFile, UploadError> {
    let mut multipart = multipart.map_err(UploadError::NotMultipart)?;
    let mut stored: Option<StoredFile> = None;
    loop {
        let field = match multipart.next_field().await {
            Ok(Some(field)) => field,
            Ok(None) => break,
            Err(error) => {
                discard(blobs, key, stored.is_some()).await;
                return Err(read_error(error, limit));
            }
        };
        let Some(filename) = field.file_name().map(clean_filename) else {
            // A plain text field: allowed alongside the file, and ignored. Its bytes
            // are skipped by the next `next_field`.
            continue;
        };
        if stored.is_some() {
            discard(blobs, key, true).await;
            return Err(UploadError::SeveralFiles);
        }
        let size = copy_field(field, blobs.writer(key).await?, limit).await?;
        stored = Some(StoredFile { filename, size });
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

/// Streams one field into `writer`, aborting it on any error.
async fn copy_field(
    mut field: Field<'_>,
    mut writer: BlobWriter,
    limit: u64,
) -> Result<u64, UploadError> {
    loop {
        let chunk = match field.chunk().await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => break,
            Err(error) => {
                writer.abort().await;
                return Err(read_error(error, limit));
            }
        };
        if writer.written() + chunk.len() as u64 > limit {
            writer.abort().await;
            return Err(UploadError::TooLarge { limit });
        }
        if let Err(error) = writer.write(chunk).await {
            writer.abort().await;
            return Err(error.into());
        }
    }
    Ok(writer.finish().await?)
}

fn read_error(error: MultipartError, limit: u64) -> UploadError {
    if error.status() == StatusCode::PAYLOAD_TOO_LARGE {
        UploadError::TooLarge { limit }
    } else {
        UploadError::Malformed(error.body_text())
    }
}

async fn discard(blobs: &BlobStore, key: &str, written: bool) {
    if written && let Err(error) = blobs.delete(key).await {
        tracing::warn!(%error, key, "could not delete the blob of a refused upload");
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
    fn announced_length_is_judged_with_room_for_framing() {
        let mut headers = HeaderMap::new();
        assert!(check_announced_length(&headers, 10).is_ok());
        headers.insert(header::CONTENT_LENGTH, "1000".parse().expect("header"));
        assert!(check_announced_length(&headers, 10).is_ok());
        let too_long = (10 + FRAMING_ALLOWANCE + 1).to_string();
        headers.insert(header::CONTENT_LENGTH, too_long.parse().expect("header"));
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
