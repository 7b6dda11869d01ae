//! An upstream configured as `registry` follows the directory it is handed: two systems
//! in one process, each with its own bus and directory, reach only their own instances.

use std::{sync::Arc, time::Duration};

use axum::{body::Body, extract::Request};
use bus::registry::{self, Directory, Instance};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

/// A server on 127.0.0.1:0 that answers every request with `name`.
async fn answering(name: &'static str, shutdown: CancellationToken) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    let app = axum::Router::new().fallback(move || async move { name });
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
    });
    url
}

/// An embedded bus in `dir`, a directory following it, and an instance of `echo` at
/// `url` registered on it.
async fn system(dir: &tempfile::TempDir, url: String, stop: &CancellationToken) -> Arc<Directory> {
    let bus = bus::connect(
        &bus::default_url(dir.path()),
        bus::BusOptions::for_service("tester"),
    )
    .await
    .expect("embedded bus");
    let directory = Directory::start(bus.clone(), registry::EXPIRY, stop.clone());
    let instance = Instance {
        service: "echo".to_owned(),
        // Unique per system, as a process's instance id is.
        id: dir.path().display().to_string(),
        url,
        version: "test".to_owned(),
        started_at_ms: 0,
        consumes: Vec::new(),
    };
    registry::register(bus, instance, Duration::from_millis(100), stop.clone());
    directory
}

async fn answer(upstream: &upstream::Upstream) -> String {
    let request = Request::get("/").body(Body::empty()).expect("request");
    let Ok(response) = upstream.clone().oneshot(request).await;
    let status = response.status();
    let body = axum::body::to_bytes(response.into_body(), 1024)
        .await
        .expect("body");
    format!("{status} {}", String::from_utf8_lossy(&body))
}

#[tokio::test]
async fn each_registry_upstream_follows_the_directory_it_is_given() {
    let stop = CancellationToken::new();
    let (first_dir, second_dir) = (
        tempfile::tempdir().expect("temp dir"),
        tempfile::tempdir().expect("temp dir"),
    );
    let first = system(&first_dir, answering("first", stop.clone()).await, &stop).await;
    let second = system(&second_dir, answering("second", stop.clone()).await, &stop).await;
    let url = upstream::parse_upstream_url("registry").expect("registry");
    let policy = upstream::Policy {
        resolve_interval: Duration::from_millis(100),
        ..upstream::Policy::default()
    };
    let to_first = upstream::remote_upstream("echo", url.clone(), &policy, Some(first));
    let to_second = upstream::remote_upstream("echo", url.clone(), &policy, Some(second));
    let without = upstream::remote_upstream("echo", url, &policy, None);

    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let answers = loop {
        let answers = (answer(&to_first).await, answer(&to_second).await);
        if answers.0.starts_with("200") && answers.1.starts_with("200")
            || tokio::time::Instant::now() > deadline
        {
            break answers;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(answers.0, "200 OK first");
    assert_eq!(answers.1, "200 OK second");
    // No directory: no endpoint, a 503 rather than a wait or another system's instance.
    assert!(answer(&without).await.starts_with("503"));
    stop.cancel();
}
