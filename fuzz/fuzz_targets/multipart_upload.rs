//! The multipart upload path of `POST /upload`: the boundary from an arbitrary
//! Content-Type (for some inputs), then the media service's gated multipart reading of
//! an arbitrary body and storing of its one file part into a blob store. Whatever the body, the
//! answer is a stored file within the limit or an error that leaves nothing stored.
#![no_main]

use std::sync::OnceLock;

use axum::body::Body;
use libfuzzer_sys::fuzz_target;
use media::upload::{boundary, store_single_file};
use storage::blob::BlobStore;

const LIMIT: u64 = 4096;
const KEY: &str = "video-fuzz";

struct World {
    runtime: tokio::runtime::Runtime,
    blobs: BlobStore,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| World {
        runtime: tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime"),
        blobs: BlobStore::from_url("memory://").expect("memory blobs"),
    })
}

fuzz_target!(|data: &[u8]| {
    let world = world();
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    // Mostly the usual header, so the fuzzer spends its time in the body; sometimes
    // the header is the input's first line.
    let (content_type, body) = match (mode & 7, rest.iter().position(|&b| b == b'\n')) {
        (0, Some(end)) => (rest[..end].to_vec(), &rest[end + 1..]),
        _ => (b"multipart/form-data; boundary=XyZ".to_vec(), rest),
    };
    let mut headers = http::HeaderMap::new();
    let Ok(content_type) = http::HeaderValue::from_bytes(&content_type) else {
        return;
    };
    headers.insert(http::header::CONTENT_TYPE, content_type);
    let Ok(boundary) = boundary(&headers) else {
        return;
    };
    world.runtime.block_on(async {
        let body = Body::from(body.to_vec());
        let result = store_single_file(body, boundary, &world.blobs, KEY, LIMIT).await;
        let stored = world.blobs.size(KEY).await;
        match result {
            Ok(file) => {
                assert!(file.size > 0 && file.size <= LIMIT, "{file:?}");
                assert_eq!(stored.ok(), Some(file.size), "the blob holds the file");
                world.blobs.delete(KEY).await.expect("delete");
            }
            Err(error) => {
                assert!(
                    stored.is_err(),
                    "a refused upload ({error}) left a blob behind"
                );
            }
        }
    });
});
