//! A bucket of its own on the S3-compatible test server (`FLOTILLA_TEST_S3_ENDPOINT`,
//! e.g. moto's server started by `scripts/ci/start-servers.sh`), for the blob store's
//! tests and the system's.

use std::sync::atomic::{AtomicU32, Ordering};

/// A fresh bucket and the server it is on.
#[derive(Debug, Clone)]
pub struct Bucket {
    /// The server's URL, without a trailing slash.
    pub endpoint: String,
    pub bucket: String,
}

/// Creates a fresh bucket on the test server; `None` (test skipped) when
/// `FLOTILLA_TEST_S3_ENDPOINT` is unset outside CI (see [`crate::real_server_url`]).
pub async fn bucket() -> Option<Bucket> {
    let endpoint = crate::real_server_url("FLOTILLA_TEST_S3_ENDPOINT")?
        .trim_end_matches('/')
        .to_owned();
    let bucket = unique_name();
    // reqwest is built without a TLS provider; this installs the process's.
    platform::tls::install_crypto_provider();
    // CreateBucket: the test server takes it unsigned (object_store has no bucket API).
    let created = reqwest::Client::new()
        .put(format!("{endpoint}/{bucket}"))
        .send()
        .await
        .expect("the S3 server answers");
    assert!(
        created.status().is_success(),
        "CreateBucket: {}",
        created.status()
    );
    Some(Bucket { endpoint, bucket })
}

/// A bucket name no other test (in this process or another) uses: the process id, the
/// clock's nanoseconds and a counter, in the lower-case hex S3 allows.
fn unique_name() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "flotilla-test-{:x}-{nanos:x}-{:x}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_differ_and_are_valid_bucket_names() {
        let (a, b) = (super::unique_name(), super::unique_name());
        assert_ne!(a, b);
        for name in [a, b] {
            assert!(name.len() <= 63, "{name}");
            assert!(
                name.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
                "{name}"
            );
        }
    }
}
