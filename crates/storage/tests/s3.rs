//! The blob store on a real S3-compatible server (`FLOTILLA_TEST_S3_ENDPOINT`, e.g. moto's
//! server started by `scripts/ci/start-servers.sh`): the same promises as on local disk —
//! streamed multipart writes past S3's 5 MiB part minimum, whole and ranged reads, an
//! aborted write that leaves nothing, copies to and from files, a key prefix, health.
//! Each test works in a bucket of its own. Under `CI=true` a missing server fails.

use bytes::Bytes;
use futures::TryStreamExt;
use storage::blob::{BlobError, BlobRead, BlobStore};

/// S3 requires every part but the last to be at least this big.
const PART: usize = 5 * 1024 * 1024;

struct S3 {
    endpoint: String,
    bucket: String,
}

impl S3 {
    /// A fresh bucket on the test server, or `None` when the test should be skipped.
    async fn bucket() -> Option<S3> {
        let test_kit::s3::Bucket { endpoint, bucket } = test_kit::s3::bucket().await?;
        Some(S3 { endpoint, bucket })
    }

    fn store(&self, prefix: &str) -> BlobStore {
        let url = if prefix.is_empty() {
            format!("s3://{}", self.bucket)
        } else {
            format!("s3://{}/{prefix}", self.bucket)
        };
        BlobStore::from_url_with(
            &url,
            &[
                ("aws_endpoint", &self.endpoint),
                ("aws_allow_http", "true"),
                ("aws_access_key_id", "flotilla-test"),
                ("aws_secret_access_key", "flotilla-test-secret"),
                ("aws_region", "us-east-1"),
                ("aws_virtual_hosted_style_request", "false"),
            ],
        )
        .expect("an s3:// store")
    }

    /// The keys in the bucket, as the server lists them (ListObjectsV2).
    async fn keys(&self) -> Vec<String> {
        let listing = http()
            .get(format!("{}/{}?list-type=2", self.endpoint, self.bucket))
            .send()
            .await
            .expect("ListObjectsV2")
            .text()
            .await
            .expect("listing body");
        listing
            .split("<Key>")
            .skip(1)
            .filter_map(|rest| rest.split_once("</Key>").map(|(key, _)| key.to_owned()))
            .collect()
    }
}

/// A plain HTTP client for the bucket operations object_store does not have.
fn http() -> reqwest::Client {
    // reqwest is built without a TLS provider (see storage's Cargo.toml); the store installs
    // ring when it opens, and so does this.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

async fn read_all(read: BlobRead) -> Vec<u8> {
    let chunks: Vec<Bytes> = read.stream.try_collect().await.expect("read");
    chunks.concat()
}

#[tokio::test]
async fn blobs_stream_through_s3_in_parts_with_ranges() {
    let Some(s3) = S3::bucket().await else { return };
    let store = s3.store("");
    store.health().await.expect("the server answers");

    // Two full parts and a tail: a real multipart upload, written in uneven chunks.
    let data: Vec<u8> = (0..2 * PART + 12_345).map(|i| (i % 251) as u8).collect();
    let mut writer = store.writer("video-s3").await.expect("writer");
    for chunk in data.chunks(700_001) {
        writer
            .write(Bytes::copy_from_slice(chunk))
            .await
            .expect("write");
    }
    assert_eq!(writer.finish().await.expect("finish"), data.len() as u64);

    assert_eq!(
        store.size("video-s3").await.expect("size"),
        data.len() as u64
    );
    assert_eq!(
        read_all(store.get("video-s3", None).await.expect("get")).await,
        data
    );

    // A range across the first part boundary.
    let range = (PART as u64 - 10)..(PART as u64 + 10);
    let part = store
        .get("video-s3", Some(range.clone()))
        .await
        .expect("ranged get");
    assert_eq!((part.size, part.range.clone()), (data.len() as u64, range));
    assert_eq!(read_all(part).await, &data[PART - 10..PART + 10]);

    let past_end = data.len() as u64..data.len() as u64 + 1;
    assert!(matches!(
        store.get("video-s3", Some(past_end)).await,
        Err(BlobError::RangeNotSatisfiable { .. })
    ));
    assert!(matches!(
        store.get("mp3-none", None).await,
        Err(BlobError::NotFound(_))
    ));

    store.delete("video-s3").await.expect("delete");
    store
        .delete("video-s3")
        .await
        .expect("deleting twice is fine");
    assert!(s3.keys().await.is_empty(), "the bucket is empty again");
}

#[tokio::test]
async fn an_aborted_s3_write_leaves_nothing_and_a_rewrite_replaces() {
    let Some(s3) = S3::bucket().await else { return };
    let store = s3.store("");
    let mut writer = store.writer("mp3-aborted").await.expect("writer");
    writer
        .write(Bytes::from(vec![1u8; PART + 1]))
        .await
        .expect("write a first part");
    writer.abort().await;
    assert!(matches!(
        store.size("mp3-aborted").await,
        Err(BlobError::NotFound(_))
    ));
    assert!(
        s3.keys().await.is_empty(),
        "no object after an abort: {:?}",
        s3.keys().await
    );

    for body in [&b"first"[..], b"second"] {
        let mut writer = store.writer("mp3-j").await.expect("writer");
        writer
            .write(Bytes::copy_from_slice(body))
            .await
            .expect("write");
        writer.finish().await.expect("finish");
    }
    let read = store.get("mp3-j", None).await.expect("get");
    assert_eq!(read_all(read).await, b"second");
}

#[tokio::test]
async fn s3_files_copy_in_and_out_under_a_prefix() {
    let Some(s3) = S3::bucket().await else { return };
    let store = s3.store("media/blobs");
    let dir = tempfile::tempdir().expect("tempdir");
    let source = dir.path().join("in.bin");
    let data: Vec<u8> = (0..PART + 3 * 1024 * 1024 + 5)
        .map(|i| (i % 241) as u8)
        .collect();
    std::fs::write(&source, &data).expect("write source");
    let put = store.put_file("mp3-x", &source).await.expect("put_file");
    assert_eq!(put, data.len() as u64);
    assert_eq!(
        s3.keys().await,
        ["media/blobs/mp3-x"],
        "the key is prefixed"
    );
    assert!(
        store.local_path("mp3-x").expect("valid key").is_none(),
        "an S3 blob has no local file"
    );

    let target = dir.path().join("out.bin");
    let copied = store
        .get_to_file("mp3-x", &target)
        .await
        .expect("get_to_file");
    assert_eq!(copied, data.len() as u64);
    assert_eq!(std::fs::read(&target).expect("read"), data);
}

#[tokio::test]
async fn a_missing_bucket_is_unhealthy() {
    let Some(s3) = S3::bucket().await else { return };
    let missing = S3 {
        endpoint: s3.endpoint.clone(),
        bucket: format!("{}-absent", s3.bucket),
    };
    assert!(
        missing.store("").health().await.is_err(),
        "readiness must fail when the bucket does not exist"
    );
}
