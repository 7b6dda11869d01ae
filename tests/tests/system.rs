//! The whole system started as `flotilla up` does, driven over HTTP through the gateway.

use test_support::{spawn_system, spawn_system_in};

#[tokio::test]
async fn gateway_is_healthy_and_every_service_ready() {
    let system = spawn_system().await;
    let health = system
        .client
        .get(system.url("/healthz"))
        .send()
        .await
        .expect("sent");
    assert_eq!(health.status(), 200);

    let ready = system
        .client
        .get(system.url("/readyz"))
        .send()
        .await
        .expect("sent");
    assert_eq!(ready.status(), 200);
    let body: serde_json::Value = ready.json().await.expect("json");
    assert_eq!(body["status"], "ready");
    // Every service but the gateway, which is the one answering.
    for service in contracts::SERVICES.into_iter().filter(|s| *s != "gateway") {
        assert_eq!(body["checks"][service], "ok", "{service} in {body}");
    }
    system.stop().await.expect("clean stop");
}

#[tokio::test]
async fn unknown_routes_and_methods_are_problems_with_the_request_id() {
    let system = spawn_system().await;
    let response = system
        .client
        .get(system.url("/no/such/thing"))
        .header("x-request-id", "e2e-1")
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 404);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    assert_eq!(response.headers()["x-request-id"], "e2e-1");
    let body: serde_json::Value = response.json().await.expect("json");
    assert_eq!(body["status"], 404);
    assert_eq!(body["request_id"], "e2e-1");

    let response = system
        .client
        .delete(system.url("/login"))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 405);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    system.stop().await.expect("clean stop");
}

#[tokio::test]
async fn the_gateway_exposes_prometheus_metrics() {
    let system = spawn_system().await;
    let metrics_before = system
        .client
        .get(system.url("/metrics"))
        .send()
        .await
        .expect("sent")
        .text()
        .await
        .expect("body");
    assert!(metrics_before.contains("# TYPE http_requests_total counter"));
    system.stop().await.expect("clean stop");
}

#[tokio::test]
async fn a_second_start_on_the_same_data_dir_works() {
    let dir = tempfile_dir();
    let first = spawn_system_in(dir.path()).await;
    first.stop().await.expect("clean stop");
    let second = spawn_system_in(dir.path()).await;
    let ready = second
        .client
        .get(second.url("/readyz"))
        .send()
        .await
        .expect("sent");
    assert_eq!(ready.status(), 200);
    second.stop().await.expect("clean stop");
}

fn tempfile_dir() -> tempfile::TempDir {
    tempfile::tempdir().expect("temporary directory")
}
