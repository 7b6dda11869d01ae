//! Production mode: services as separate servers (`flotilla serve`), the gateway reaching
//! them over HTTP. The route table is the same as in `up`; only the upstreams differ.

use test_support::{spawn_gateway, spawn_service};

#[tokio::test]
async fn the_gateway_forwards_to_a_remote_service_and_reports_its_readiness() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let auth = spawn_service(flotilla::ServiceName::Auth, dir.path()).await;
    let upstreams = flotilla::GatewayArgs {
        auth_url: Some(flotilla::parse_upstream_url(&auth.base_url).expect("valid URL")),
        ..Default::default()
    };
    let gateway = spawn_gateway(upstreams, dir.path()).await;

    let ready = gateway
        .client
        .get(gateway.url("/readyz"))
        .send()
        .await
        .expect("sent");
    assert_eq!(ready.status(), 200);
    let body: serde_json::Value = ready.json().await.expect("json");
    assert_eq!(body["checks"]["auth"], "ok", "{body}");

    // Forwarded: the answer comes from auth, with the id the client chose.
    let forwarded = gateway
        .client
        .post(gateway.url("/login"))
        .header("x-request-id", "serve-1")
        .send()
        .await
        .expect("sent");
    assert_eq!(forwarded.headers()["x-request-id"], "serve-1");
    assert_ne!(forwarded.status(), 503);

    // An upstream that is not configured is a clear 503, not a hang.
    let unconfigured = gateway
        .client
        .get(gateway.url("/posts"))
        .send()
        .await
        .expect("sent");
    assert_eq!(unconfigured.status(), 503);
    assert_eq!(
        unconfigured.headers()["content-type"],
        "application/problem+json"
    );
    let problem: serde_json::Value = unconfigured.json().await.expect("json");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("FLOTILLA_QUERY_URL"),
        "{problem}"
    );

    // When the upstream goes away the gateway answers 502 promptly and is not ready.
    auth.stop().await.expect("auth stops");
    let gone = gateway
        .client
        .post(gateway.url("/login"))
        .send()
        .await
        .expect("sent");
    assert_eq!(gone.status(), 502);
    let ready = gateway
        .client
        .get(gateway.url("/readyz"))
        .send()
        .await
        .expect("sent");
    assert_eq!(ready.status(), 503);
    gateway.stop().await.expect("gateway stops");
}
