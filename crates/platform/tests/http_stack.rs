//! The common HTTP stack, served for real on port 0: problem+json for every error,
//! request ids, limits, and graceful drain on shutdown.

use std::time::Duration;

use axum::{Router, routing::get, routing::post};
use platform::{Problem, ServiceApp, health::Readiness, service::HttpLimits};
use tokio_util::sync::CancellationToken;

struct Served {
    base: String,
    shutdown: CancellationToken,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

async fn serve(app: ServiceApp) -> Served {
    serve_on_threads(app, 0).await
}

/// `threads` > 0: on HTTP threads of their own (`platform::http::serve_on_threads`).
async fn serve_on_threads(app: ServiceApp, threads: usize) -> Served {
    let shutdown = CancellationToken::new();
    let listener = platform::http::bind("127.0.0.1:0".parse().expect("literal"))
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("bound address"));
    let router = app.into_router(shutdown.clone());
    let server = tokio::spawn(platform::http::serve_on_threads(
        listener,
        router,
        shutdown.clone(),
        Duration::from_secs(10),
        platform::http::ConnectionLimits::default(),
        threads,
    ));
    Served {
        base,
        shutdown,
        server,
    }
}

fn test_app() -> ServiceApp {
    let routes = Router::new()
        .route("/hello", get(|| async { "hello" }))
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(400)).await;
                "done"
            }),
        )
        .route(
            "/forever",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                "never"
            }),
        )
        .route("/echo", post(|body: String| async move { body }))
        .route(
            "/thread",
            get(|| async { std::thread::current().name().unwrap_or("").to_owned() }),
        )
        .route(
            "/trace",
            get(
                |axum::Extension(trace): axum::Extension<platform::http::TraceParent>| async move {
                    trace.0
                },
            ),
        )
        .route(
            "/teapot",
            get(|| async { Err::<(), _>(Problem::conflict("the job is already done")) }),
        )
        .route("/panic", get(explode));
    ServiceApp::new("stack-test", routes).with_limits(HttpLimits {
        request_timeout: Some(Duration::from_secs(1)),
        max_body_bytes: 1024,
    })
}

async fn explode() -> &'static str {
    panic!("handler exploded at unwrap")
}

async fn problem(response: reqwest::Response) -> serde_json::Value {
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json",
        "status {}",
        response.status()
    );
    let echoed = response.headers()["x-request-id"]
        .to_str()
        .expect("ascii")
        .to_owned();
    let body: serde_json::Value = response.json().await.expect("json body");
    assert_eq!(body["request_id"], echoed.as_str());
    for member in ["type", "title", "status", "detail"] {
        assert!(body.get(member).is_some(), "missing {member}: {body}");
    }
    body
}

#[tokio::test]
async fn every_error_is_problem_json_with_the_request_id() {
    let served = serve(test_app()).await;
    let client = client();
    let url = |p: &str| format!("{}{p}", served.base);

    let body = problem(client.get(url("/nope")).send().await.expect("sent")).await;
    assert_eq!(body["status"], 404);

    let body = problem(client.delete(url("/hello")).send().await.expect("sent")).await;
    assert_eq!(body["status"], 405);

    let body = problem(client.get(url("/teapot")).send().await.expect("sent")).await;
    assert_eq!(body["status"], 409);
    assert_eq!(body["detail"], "the job is already done");

    let body = problem(client.get(url("/panic")).send().await.expect("sent")).await;
    assert_eq!(body["status"], 500);
    assert!(!body["detail"].as_str().expect("text").contains("unwrap"));

    let big = "x".repeat(4096);
    let body = problem(
        client
            .post(url("/echo"))
            .body(big)
            .send()
            .await
            .expect("sent"),
    )
    .await;
    assert_eq!(body["status"], 413);

    let body = problem(client.get(url("/forever")).send().await.expect("sent")).await;
    assert_eq!(body["status"], 503);

    // The service is still fine after all that.
    let ok = client.get(url("/hello")).send().await.expect("sent");
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.text().await.expect("body"), "hello");
    served.shutdown.cancel();
}

#[tokio::test]
async fn request_ids_are_echoed_or_generated() {
    let served = serve(test_app()).await;
    let client = client();
    let url = format!("{}/hello", served.base);

    let given = fetch(&client, &url, &[("x-request-id", "trace-42")]).await;
    assert_eq!(given.headers()["x-request-id"], "trace-42");

    let generated = client.get(&url).send().await.expect("sent");
    let id = generated.headers()["x-request-id"].to_str().expect("ascii");
    assert_eq!(id.len(), 36, "a uuid: {id}");

    // An id that would corrupt logs is replaced.
    let hostile = fetch(&client, &url, &[("x-request-id", "a b \" c")]).await;
    assert_ne!(hostile.headers()["x-request-id"], "a b \" c");
    served.shutdown.cancel();
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    let failing = Readiness::new().with_check("database", || async {
        Err("connection refused".to_owned())
    });
    let served = serve(test_app().with_readiness(failing)).await;
    let client = client();

    let health = fetch(&client, &format!("{}/healthz", served.base), &[]).await;
    assert_eq!(health.status(), 200);

    let ready = fetch(&client, &format!("{}/readyz", served.base), &[]).await;
    assert_eq!(ready.status(), 503);
    let body = problem(ready).await;
    assert_eq!(body["checks"]["database"], "connection refused");

    fetch(&client, &format!("{}/hello", served.base), &[]).await;
    let metrics = fetch(&client, &format!("{}/metrics", served.base), &[])
        .await
        .text()
        .await
        .expect("body");
    assert!(
        metrics.contains(
            r#"http_requests_total{service="stack-test",method="GET",route="/hello",status="200"}"#
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains("http_request_duration_seconds_bucket"),
        "{metrics}"
    );
    served.shutdown.cancel();
}

#[tokio::test]
async fn shutdown_lets_in_flight_requests_finish_then_stops() {
    let served = serve(test_app()).await;
    drains_then_stops(served, &client()).await;
}

/// Shutdown while `/slow` is in flight: the request completes, the server returns `Ok`,
/// and nothing listens any more.
async fn drains_then_stops(served: Served, client: &reqwest::Client) {
    let in_flight = tokio::spawn({
        let url = format!("{}/slow", served.base);
        let client = client.clone();
        async move { client.get(url).send().await?.text().await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    served.shutdown.cancel();

    let body = in_flight.await.expect("joined").expect("request completed");
    assert_eq!(body, "done");
    served
        .server
        .await
        .expect("joined")
        .expect("server stopped cleanly");
    assert!(
        client
            .get(format!("{}/hello", served.base))
            .send()
            .await
            .is_err(),
        "nothing listens any more"
    );
}

#[tokio::test]
async fn on_threads_of_its_own_the_stack_serves_every_connection_and_drains() {
    let served = serve_on_threads(test_app(), 2).await;
    // A new connection per request: every one is accepted by one of the HTTP threads.
    // (The client's TLS provider first: this test may run alone.)
    platform::tls::install_crypto_provider();
    let fresh = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("client");
    let mut threads = std::collections::BTreeSet::new();
    for _ in 0..20 {
        let response = fetch(&fresh, &format!("{}/thread", served.base), &[]).await;
        assert_eq!(response.status(), 200);
        threads.insert(response.text().await.expect("body"));
    }
    assert!(
        threads
            .iter()
            .all(|name| name == "http-0" || name == "http-1"),
        "{threads:?}"
    );
    // Errors are still problems with the request id.
    let response = fetch(
        &fresh,
        &format!("{}/no-such-route", served.base),
        &[("x-request-id", "threads-1")],
    )
    .await;
    assert_eq!(response.status(), 404);
    assert_eq!(problem(response).await["request_id"], "threads-1");
    drains_then_stops(served, &fresh).await;
}

#[tokio::test]
async fn trace_context_is_continued_or_started() {
    let served = serve(test_app()).await;
    let client = client();
    let url = format!("{}/trace", served.base);
    let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let continued = fetch(&client, &url, &[("traceparent", incoming)])
        .await
        .text()
        .await
        .expect("body");
    // Same trace; the request's own span becomes the parent of what it causes.
    let continued = platform::http::TraceParent::parse(&continued).expect("well formed");
    assert_eq!(continued.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_ne!(continued.span_id(), "00f067aa0ba902b7");

    let started = fetch(&client, &url, &[]).await.text().await.expect("body");
    assert!(
        platform::http::TraceParent::parse(&started).is_some(),
        "{started}"
    );
    assert_ne!(started, incoming);
    served.shutdown.cancel();
}

/// `GET url` with `headers`, answered.
async fn fetch(client: &reqwest::Client, url: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut request = client.get(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.expect("sent")
}

/// A plain HTTP client (installs the process's TLS provider first, see `platform::tls`).
fn client() -> reqwest::Client {
    platform::tls::install_crypto_provider();
    reqwest::Client::new()
}
