//! Blob storage for large files (uploaded videos, converted MP3s) over `object_store`,
//! chosen by URL like the databases are:
//!
//! * `file:///abs/dir` — a directory on local disk (the default in `flotilla up`:
//!   `file://<data>/blobs`), written with fsync so a finished write survives a crash;
//! * `s3://bucket[/prefix]` — Amazon S3 or any S3-compatible store, configured by the
//!   standard `AWS_*` variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
//!   `AWS_REGION`, `AWS_ENDPOINT`, `AWS_ALLOW_HTTP`, …);
//! * `memory://` — in this process only, for tests.
//!
//! Writes stream: a [`BlobWriter`] takes chunks as they arrive and uploads them in parts
//! (a multipart upload on S3, a staging file renamed into place on disk), so a file
//! never has to fit in memory and a half-written blob is never visible under its key.
//! Reads stream too, whole or a byte range ([`BlobStore::get`]).

use std::{
    ops::Range,
    path::{Path as FsPath, PathBuf},
    sync::Arc,
};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt, stream::BoxStream};
use object_store::{
    GetOptions, GetRange, ObjectStore, ObjectStoreExt, WriteMultipart, local::LocalFileSystem,
    memory::InMemory, path::Path,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Size of one uploaded part. S3 requires at least 5 MiB for every part but the last.
const PART_BYTES: usize = 5 * 1024 * 1024;
/// Parts uploading at once per writer: bounds a writer's memory to about
/// `PART_BYTES × (PARTS_IN_FLIGHT + 1)` however fast the data arrives.
const PARTS_IN_FLIGHT: usize = 3;
/// The key [`BlobStore::health`] writes or looks up (never a real blob's: those are ids).
const HEALTH_PROBE_KEY: &str = "readyz-probe";
/// Read size when copying a local file into the store.
const FILE_CHUNK_BYTES: usize = 1024 * 1024;

/// The S3 bucket `bucket` (under `prefix`, if any) as a store: the `AWS_*` variables and
/// then `options` (object_store's configuration keys) configure it.
#[cfg(feature = "s3")]
fn s3(
    bucket: &str,
    prefix: &str,
    options: &[(&str, &str)],
) -> Result<Arc<dyn ObjectStore>, BlobError> {
    // reqwest is built without a default TLS provider so that the process carries one
    // crypto library (ring, as sqlx does); make it the default. An error means another
    // part of the process installed one first: fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut builder = object_store::aws::AmazonS3Builder::from_env().with_bucket_name(bucket);
    for (key, value) in options {
        let key = key.parse::<object_store::aws::AmazonS3ConfigKey>()?;
        builder = builder.with_config(key, *value);
    }
    let s3 = builder.build()?;
    let prefix = prefix.trim_matches('/');
    Ok(if prefix.is_empty() {
        Arc::new(s3)
    } else {
        Arc::new(object_store::prefix::PrefixStore::new(s3, prefix))
    })
}

/// This build has no S3 client (the cargo feature `s3` was off).
#[cfg(not(feature = "s3"))]
fn s3(_: &str, _: &str, _: &[(&str, &str)]) -> Result<Arc<dyn ObjectStore>, BlobError> {
    Err(s3_left_out())
}

/// The error for an S3 URL in a build without the cargo feature `s3`.
fn s3_left_out() -> BlobError {
    BlobError::NotBuiltIn(crate::NotBuiltIn {
        backend: "S3",
        feature: "s3",
    })
}

/// What can go wrong with a blob.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error(
        "unsupported blob store URL '{0}': expected file:///absolute/dir, s3://bucket[/prefix] or memory://"
    )]
    UnsupportedUrl(String),
    #[error("{0}")]
    NotBuiltIn(crate::NotBuiltIn),
    #[error("invalid blob key '{0}': use letters, digits, '-', '_' and '.' only")]
    InvalidKey(String),
    #[error("no blob named '{0}'")]
    NotFound(String),
    #[error("the byte range {start}..{end} is outside the blob of {size} bytes")]
    RangeNotSatisfiable { start: u64, end: u64, size: u64 },
    #[error("cannot prepare the blob directory {path}: {source}")]
    Directory {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("blob file i/o failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("blob store error: {0}")]
    Store(#[source] object_store::Error),
}

impl BlobError {
    /// Whether the store ran out of space (a full disk or quota: `ENOSPC`, `EDQUOT`),
    /// wherever in the chain of causes the operating system said so.
    pub fn is_storage_full(&self) -> bool {
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(self);
        while let Some(error) = cause {
            if let Some(io) = error.downcast_ref::<std::io::Error>()
                && matches!(
                    io.kind(),
                    std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
                )
            {
                return true;
            }
            cause = error.source();
        }
        false
    }
}

impl From<object_store::Error> for BlobError {
    fn from(error: object_store::Error) -> Self {
        match error {
            object_store::Error::NotFound { path, .. } => BlobError::NotFound(path),
            other => BlobError::Store(other),
        }
    }
}

/// A place to keep blobs by key. Cheap to clone; clones share the store.
#[derive(Clone, educe::Educe)]
#[educe(Debug)]
pub struct BlobStore {
    #[educe(Debug(ignore))]
    store: Arc<dyn ObjectStore>,
    /// The same store when it is a local directory, to name a blob's file.
    #[educe(Debug(ignore))]
    local: Option<Arc<LocalFileSystem>>,
    /// The URL it was opened from, for logs (it never carries credentials: those come
    /// from the environment).
    #[educe(Debug(name(url)))]
    description: String,
}

impl BlobStore {
    /// Opens the store a URL names (see the module documentation). A local directory is
    /// created when missing.
    pub fn from_url(url: &str) -> Result<Self, BlobError> {
        Self::from_url_with(url, &[])
    }

    /// As [`BlobStore::from_url`], with S3 settings given here on top of the `AWS_*`
    /// variables: object_store's configuration keys (`aws_endpoint`, `aws_access_key_id`,
    /// `aws_allow_http`, …). Ignored for the other backends.
    /// Refuses, before anything is opened, a URL no store could ever open: a scheme
    /// other than `file`, `s3` and `memory`, or S3 in a build without it.
    pub fn check_url(url: &str) -> Result<(), BlobError> {
        let scheme = url.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
        match scheme.as_deref() {
            Some("file" | "memory") => Ok(()),
            Some("s3") if cfg!(feature = "s3") => Ok(()),
            Some("s3") => Err(s3_left_out()),
            _ => Err(BlobError::UnsupportedUrl(crate::redact(url))),
        }
    }

    pub fn from_url_with(url: &str, s3_options: &[(&str, &str)]) -> Result<Self, BlobError> {
        let unsupported = || BlobError::UnsupportedUrl(url.to_owned());
        let (scheme, rest) = url.split_once("://").ok_or_else(unsupported)?;
        match scheme.to_ascii_lowercase().as_str() {
            "file" => {
                if !rest.starts_with('/') {
                    return Err(unsupported());
                }
                Self::local(FsPath::new(rest))
            }
            "s3" => {
                let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                if bucket.is_empty() {
                    return Err(unsupported());
                }
                Ok(Self {
                    store: s3(bucket, prefix, s3_options)?,
                    local: None,
                    description: url.to_owned(),
                })
            }
            "memory" => Ok(Self {
                store: Arc::new(InMemory::new()),
                local: None,
                description: url.to_owned(),
            }),
            _ => Err(unsupported()),
        }
    }

    /// Blobs as files under `dir`, created when missing.
    pub fn local(dir: &FsPath) -> Result<Self, BlobError> {
        let directory_error = |source| BlobError::Directory {
            path: dir.display().to_string(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(directory_error)?;
        let store = Arc::new(LocalFileSystem::new_with_prefix(dir)?.with_fsync(true));
        Ok(Self {
            store: store.clone(),
            local: Some(store),
            description: format!("file://{}", dir.display()),
        })
    }

    pub fn url(&self) -> &str {
        &self.description
    }

    /// Starts writing the blob `key`. Nothing is visible under `key` until
    /// [`BlobWriter::finish`]; an existing blob is replaced then.
    pub async fn writer(&self, key: &str) -> Result<BlobWriter, BlobError> {
        let location = location(key)?;
        let upload = self.store.put_multipart(&location).await?;
        Ok(BlobWriter {
            upload: WriteMultipart::new_with_chunk_size(upload, PART_BYTES),
            written: 0,
        })
    }

    /// Copies a local file into the blob `key` (replacing it), one chunk at a time.
    pub async fn put_file(&self, key: &str, file: &FsPath) -> Result<u64, BlobError> {
        let mut source = tokio::fs::File::open(file).await?;
        let mut writer = self.writer(key).await?;
        loop {
            let mut chunk = Vec::with_capacity(FILE_CHUNK_BYTES);
            let read = (&mut source)
                .take(FILE_CHUNK_BYTES as u64)
                .read_to_end(&mut chunk)
                .await;
            match read {
                Ok(0) => break,
                Ok(_) => {
                    if let Err(error) = writer.write(Bytes::from(chunk)).await {
                        writer.abort().await;
                        return Err(error);
                    }
                }
                Err(error) => {
                    writer.abort().await;
                    return Err(error.into());
                }
            }
        }
        writer.finish().await
    }

    /// The file that holds the blob `key` when the store is a local directory (`None`
    /// for S3 and memory), so a reader can open it in place instead of copying it. The
    /// file may not exist. A finished blob is never rewritten in place (a replacement
    /// is renamed over it), so an open file stays whole.
    pub fn local_path(&self, key: &str) -> Result<Option<PathBuf>, BlobError> {
        let Some(local) = &self.local else {
            return Ok(None);
        };
        Ok(Some(local.path_to_filesystem(&location(key)?)?))
    }

    /// Copies the blob `key` into a local file (created or replaced), streaming.
    pub async fn get_to_file(&self, key: &str, file: &FsPath) -> Result<u64, BlobError> {
        let read = self.get(key, None).await?;
        let mut sink = tokio::fs::File::create(file).await?;
        let mut stream = read.stream;
        let mut copied = 0;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            sink.write_all(&chunk).await?;
            copied += chunk.len() as u64;
        }
        sink.flush().await?;
        Ok(copied)
    }

    /// The size of the blob `key` in bytes.
    pub async fn size(&self, key: &str) -> Result<u64, BlobError> {
        Ok(self.store.head(&location(key)?).await?.size)
    }

    /// Streams the blob `key`, or the byte `range` of it (end exclusive). A range must
    /// lie within the blob ([`BlobError::RangeNotSatisfiable`] otherwise).
    pub async fn get(&self, key: &str, range: Option<Range<u64>>) -> Result<BlobRead, BlobError> {
        let location = location(key)?;
        if let Some(range) = &range {
            // object_store clamps a range that runs past the end; a caller asking for
            // bytes that are not there has made a mistake we should say out loud.
            let size = self.store.head(&location).await?.size;
            if range.start >= range.end || range.end > size {
                return Err(BlobError::RangeNotSatisfiable {
                    start: range.start,
                    end: range.end,
                    size,
                });
            }
        }
        let options = GetOptions {
            range: range.map(GetRange::Bounded),
            ..GetOptions::default()
        };
        let result = self.store.get_opts(&location, options).await?;
        let size = result.meta.size;
        let range = result.range.clone();
        Ok(BlobRead {
            size,
            range,
            stream: result.into_stream().map_err(BlobError::from).boxed(),
        })
    }

    /// `Ok` when the store answers: a local directory takes a write (a read-only or full
    /// volume fails here, not at the next upload), any other store lists its keys (a
    /// missing bucket fails). For readiness checks.
    pub async fn health(&self) -> Result<(), BlobError> {
        if let Some(path) = self.local_path(HEALTH_PROBE_KEY)? {
            tokio::fs::write(&path, b"ok").await?;
            tokio::fs::remove_file(&path).await?;
            return Ok(());
        }
        // A listing, not a HEAD of a key: S3 answers a HEAD with a bodiless 404 whether the
        // key or the whole bucket is missing, while listing a missing bucket fails.
        self.store
            .list_with_delimiter(Some(&location(HEALTH_PROBE_KEY)?))
            .await
            .map(|_| ())
            .map_err(|error| match error {
                object_store::Error::NotFound { path, source } => {
                    BlobError::Store(object_store::Error::Generic {
                        store: "S3",
                        source: format!("the bucket or prefix {path} does not exist: {source}")
                            .into(),
                    })
                }
                other => other.into(),
            })
    }

    /// Removes the blob `key`; a missing blob is not an error.
    pub async fn delete(&self, key: &str) -> Result<(), BlobError> {
        match self.store.delete(&location(key)?).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(error) => Err(error.into()),
        }
    }
}

/// A blob being read: its total size, the range being sent, and the bytes.
#[derive(educe::Educe)]
#[educe(Debug)]
pub struct BlobRead {
    pub size: u64,
    pub range: Range<u64>,
    #[educe(Debug(ignore))]
    pub stream: BoxStream<'static, Result<Bytes, BlobError>>,
}

/// A blob being written. Call [`BlobWriter::finish`] to make it visible, or
/// [`BlobWriter::abort`] to throw it away; dropping it also throws it away.
#[derive(educe::Educe)]
#[educe(Debug)]
pub struct BlobWriter {
    #[educe(Debug(ignore))]
    upload: WriteMultipart,
    written: u64,
}

impl BlobWriter {
    /// Appends `chunk`. Waits while too many parts are in flight, so a fast producer is
    /// slowed to the store's pace instead of filling memory.
    pub async fn write(&mut self, chunk: Bytes) -> Result<(), BlobError> {
        self.upload.wait_for_capacity(PARTS_IN_FLIGHT).await?;
        self.written += chunk.len() as u64;
        self.upload.put(chunk);
        Ok(())
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Completes the upload; the blob is visible under its key from now on.
    pub async fn finish(self) -> Result<u64, BlobError> {
        let written = self.written;
        self.upload.finish().await?;
        Ok(written)
    }

    /// Discards what was written (best effort: a store that cannot abort leaves the
    /// parts to its own expiry rules, e.g. an S3 lifecycle rule).
    pub async fn abort(self) {
        if let Err(error) = self.upload.abort().await {
            tracing::warn!(%error, "could not abort a blob upload");
        }
    }
}

/// Keys are flat names made by the services (`video-…`, `mp3-…`); anything else, in
/// particular `/` and `..`, is refused so that a key can never leave the store's root.
fn location(key: &str) -> Result<Path, BlobError> {
    let valid = !key.is_empty()
        && key.len() <= 200
        && !key.starts_with('.')
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !valid {
        return Err(BlobError::InvalidKey(key.chars().take(64).collect()));
    }
    Ok(Path::from(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn write_all(store: &BlobStore, key: &str, chunks: &[&[u8]]) -> u64 {
        let mut writer = store.writer(key).await.expect("writer");
        for chunk in chunks {
            writer
                .write(Bytes::copy_from_slice(chunk))
                .await
                .expect("write");
        }
        writer.finish().await.expect("finish")
    }

    async fn read_all(read: BlobRead) -> Vec<u8> {
        let chunks: Vec<Bytes> = read.stream.try_collect().await.expect("read");
        chunks.concat()
    }

    #[tokio::test]
    async fn health_needs_a_writable_directory_or_an_answering_store() {
        let dir = tempfile::tempdir().expect("tempdir");
        let blobs = dir.path().join("blobs");
        let store = BlobStore::from_url(&format!("file://{}", blobs.display())).expect("opens");
        store
            .health()
            .await
            .expect("a writable directory is healthy");
        assert!(
            !blobs.join(HEALTH_PROBE_KEY).exists(),
            "the probe is removed"
        );
        std::fs::remove_dir_all(&blobs).expect("removed");
        assert!(store.health().await.is_err(), "a vanished directory is not");
        let memory = BlobStore::from_url("memory://").expect("opens");
        memory
            .health()
            .await
            .expect("an answering store is healthy");
    }

    #[tokio::test]
    async fn local_blobs_stream_in_and_out_with_ranges() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("file://{}", dir.path().join("blobs").display());
        let store = BlobStore::from_url(&url).expect("opens");
        // More than one part, so the multipart path is really taken.
        let big = vec![7u8; PART_BYTES + 123];
        let written = write_all(&store, "video-1", &[b"head", &big, b"tail"]).await;
        assert_eq!(written, 4 + big.len() as u64 + 4);
        assert_eq!(store.size("video-1").await.expect("size"), written);
        assert!(dir.path().join("blobs/video-1").is_file());

        let whole = read_all(store.get("video-1", None).await.expect("get")).await;
        assert_eq!(whole.len() as u64, written);
        assert_eq!(&whole[..4], b"head");
        assert_eq!(&whole[whole.len() - 4..], b"tail");

        let part = store.get("video-1", Some(2..6)).await.expect("range");
        assert_eq!((part.size, part.range.clone()), (written, 2..6));
        assert_eq!(read_all(part).await, b"ad\x07\x07");

        let error = store
            .get("video-1", Some(written..written + 1))
            .await
            .expect_err("past the end");
        assert!(
            matches!(error, BlobError::RangeNotSatisfiable { .. }),
            "{error}"
        );
    }

    #[tokio::test]
    async fn an_aborted_write_leaves_nothing_and_a_rewrite_replaces() {
        let store = BlobStore::from_url("memory://").expect("opens");
        let mut writer = store.writer("mp3-j").await.expect("writer");
        writer
            .write(Bytes::from_static(b"partial"))
            .await
            .expect("write");
        writer.abort().await;
        assert!(matches!(
            store.size("mp3-j").await,
            Err(BlobError::NotFound(_))
        ));

        write_all(&store, "mp3-j", &[b"first"]).await;
        write_all(&store, "mp3-j", &[b"second"]).await;
        let read = store.get("mp3-j", None).await.expect("get");
        assert_eq!(read_all(read).await, b"second");
        store.delete("mp3-j").await.expect("delete");
        store.delete("mp3-j").await.expect("deleting twice is fine");
    }

    #[tokio::test]
    async fn files_copy_in_and_out() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = BlobStore::local(&dir.path().join("blobs")).expect("opens");
        let source = dir.path().join("in.bin");
        let data: Vec<u8> = (0..3 * FILE_CHUNK_BYTES + 5).map(|i| i as u8).collect();
        std::fs::write(&source, &data).expect("write source");
        let put = store.put_file("mp3-x", &source).await.expect("put_file");
        assert_eq!(put, data.len() as u64);
        let target = dir.path().join("out.bin");
        store
            .get_to_file("mp3-x", &target)
            .await
            .expect("get_to_file");
        assert_eq!(std::fs::read(&target).expect("read"), data);
    }

    #[tokio::test]
    async fn local_blobs_name_their_file_and_others_do_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = BlobStore::local(&dir.path().join("blobs")).expect("opens");
        write_all(&store, "video-2", &[b"bytes on disk"]).await;
        let path = store
            .local_path("video-2")
            .expect("valid key")
            .expect("a local store");
        assert_eq!(
            std::fs::read(&path).expect("read in place"),
            b"bytes on disk"
        );
        assert!(store.local_path("../escape").is_err());
        let memory = BlobStore::from_url("memory://").expect("opens");
        assert_eq!(memory.local_path("video-2").expect("valid key"), None);
    }

    #[test]
    fn keys_cannot_escape_the_store() {
        for bad in ["", "../etc/passwd", "a/b", ".hidden", "sp ace", "%2e%2e"] {
            assert!(location(bad).is_err(), "{bad:?} accepted");
        }
        assert!(location("mp3-0192f0c4-7a4e-7c3a-9d1e-2f6c1a2b3c4d").is_ok());
    }

    #[test]
    fn urls_choose_the_backend() {
        assert!(matches!(
            BlobStore::from_url("ftp://x"),
            Err(BlobError::UnsupportedUrl(_))
        ));
        assert!(matches!(
            BlobStore::from_url("file://relative/dir"),
            Err(BlobError::UnsupportedUrl(_))
        ));
        assert!(matches!(
            BlobStore::from_url("s3://"),
            Err(BlobError::UnsupportedUrl(_))
        ));
        let built_in = cfg!(feature = "s3");
        match BlobStore::from_url("s3://bucket/some/prefix") {
            Ok(s3) => {
                assert!(built_in, "s3 opened without its feature");
                assert_eq!(s3.url(), "s3://bucket/some/prefix");
            }
            Err(BlobError::NotBuiltIn(missing)) => {
                assert!(!built_in, "s3 refused with its feature on");
                assert_eq!(missing.feature, "s3");
            }
            Err(other) => panic!("s3: {other}"),
        }
    }
}
