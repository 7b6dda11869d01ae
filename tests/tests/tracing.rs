//! Distributed traces leave the processes over OTLP/HTTP. A receiver in the test (an axum
//! server decoding the protobuf bodies with `opentelemetry-proto`, as a collector would)
//! is named by the standard `OTEL_EXPORTER_OTLP_*` variables; the real `flotilla` binary
//! serves one request carrying a client's `traceparent`, is stopped with SIGTERM right
//! away (the exporter's batch delay is set to a minute, so only the flush on graceful
//! shutdown can deliver the spans), and the spans of the gateway and of the service behind
//! it must have arrived, in the client's trace, chained parent to child.

use std::{
    collections::HashMap,
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
};

use axum::{Router, body::Bytes, extract::State, http::StatusCode, routing::post};
use opentelemetry_proto::tonic::{
    collector::trace::v1::ExportTraceServiceRequest, common::v1::any_value::Value,
};
use prost::Message;

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

/// One exported span, flattened.
#[derive(Debug, Clone)]
struct Exported {
    service_name: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    attributes: HashMap<String, String>,
}

type Received = Arc<Mutex<Vec<Exported>>>;

/// An OTLP/HTTP trace receiver on 127.0.0.1:0; its base URL and what it received.
async fn otlp_receiver() -> (String, Received) {
    let received = Received::default();
    let app = Router::new()
        .route("/v1/traces", post(receive))
        .with_state(received.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("address"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (base, received)
}

async fn receive(State(received): State<Received>, body: Bytes) -> (StatusCode, Vec<u8>) {
    let Ok(request) = ExportTraceServiceRequest::decode(body) else {
        return (StatusCode::BAD_REQUEST, Vec::new());
    };
    let mut spans = received.lock().expect("not poisoned");
    for resource_spans in request.resource_spans {
        let service_name = resource_spans
            .resource
            .iter()
            .flat_map(|r| r.attributes.iter())
            .find(|kv| kv.key == "service.name")
            .map(|kv| text(kv.value.as_ref().and_then(|v| v.value.as_ref())))
            .unwrap_or_default();
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                spans.push(Exported {
                    service_name: service_name.clone(),
                    name: span.name,
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    attributes: span
                        .attributes
                        .iter()
                        .map(|kv| {
                            (
                                kv.key.clone(),
                                text(kv.value.as_ref().and_then(|v| v.value.as_ref())),
                            )
                        })
                        .collect(),
                });
            }
        }
    }
    // An empty ExportTraceServiceResponse: full success.
    (StatusCode::OK, Vec::new())
}

fn text(value: Option<&Value>) -> String {
    match value {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A running `flotilla`, killed if the test fails before stopping it.
struct Running(Option<Child>);

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Starts `flotilla ARGS` with `env`, and returns it with the URL of its `ready` line.
fn start(args: &[&str], env: &[(&str, &str)]) -> (Running, String) {
    let mut command = Command::new(test_support::flotilla_binary());
    command
        .args(args)
        .env("RUST_LOG", "warn")
        // `serve auth` on SQLite in its data directory.
        .env("FLOTILLA_ALLOW_EMBEDDED", "1")
        // Batches would leave every minute: what arrives was flushed at shutdown.
        .env("OTEL_BSP_SCHEDULE_DELAY", "60000")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for name in [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_SERVICE_NAME",
    ] {
        command.env_remove(name);
    }
    for (name, value) in env {
        command.env(name, value);
    }
    let mut child = command.spawn().expect("flotilla starts");
    let stdout = child.stdout.take().expect("stdout");
    let child = Running(Some(child));
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("a line on stdout");
    assert!(line.contains("ready"), "unexpected first line: {line:?}");
    let url = line
        .split_whitespace()
        .find(|word| word.starts_with("http://"))
        .expect("the URL")
        .to_owned();
    (child, url)
}

/// `flotilla up` on `data_dir`, exporting to the receiver at `otlp`.
fn start_up(data_dir: &std::path::Path, otlp: &str) -> (Running, String) {
    tokio::task::block_in_place(|| {
        start(
            &[
                "up",
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
                data_dir.to_str().expect("UTF-8 path"),
            ],
            &[("OTEL_EXPORTER_OTLP_ENDPOINT", otlp)],
        )
    })
}

/// SIGTERM, then the exit status: a graceful stop exits 0.
fn stop(mut running: Running) {
    let Some(mut child) = running.0.take() else {
        return;
    };
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
    let exit = child.wait().expect("reaped");
    assert!(exit.success(), "flotilla exited with {exit}");
}

/// A plain HTTP client (the process's TLS provider installed first, see `platform::tls`).
fn client() -> reqwest::Client {
    platform::tls::install_crypto_provider();
    reqwest::Client::new()
}

/// Every received span of the test's trace.
fn spans_of_trace(received: &Received) -> Vec<Exported> {
    received
        .lock()
        .expect("not poisoned")
        .iter()
        .filter(|span| span.trace_id == TRACE_ID)
        .cloned()
        .collect()
}

fn the_span<'a>(spans: &'a [Exported], service: &str, name: &str) -> &'a Exported {
    let found: Vec<&Exported> = spans
        .iter()
        .filter(|s| s.attributes.get("flotilla.service").map(String::as_str) == Some(service))
        .filter(|s| s.name == name)
        .collect();
    assert_eq!(found.len(), 1, "one {service} span {name:?} in {spans:#?}");
    found[0]
}

#[tokio::test(flavor = "multi_thread")]
async fn production_mode_exports_one_trace_from_the_gateway_to_the_service() {
    let (otlp, received) = otlp_receiver().await;
    let dir = tempfile::tempdir().expect("temporary directory");
    let auth_dir = dir.path().join("auth");
    let gateway_dir = dir.path().join("gateway");
    let (auth, auth_url) = tokio::task::block_in_place(|| {
        start(
            &[
                "serve",
                "auth",
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
                auth_dir.to_str().expect("UTF-8 path"),
            ],
            // The base variable: the exporter appends /v1/traces.
            &[("OTEL_EXPORTER_OTLP_ENDPOINT", &otlp)],
        )
    });
    let traces_url = format!("{otlp}/v1/traces");
    let (gateway, gateway_url) = tokio::task::block_in_place(|| {
        start(
            &[
                "serve",
                "gateway",
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
                gateway_dir.to_str().expect("UTF-8 path"),
            ],
            // The per-signal variable (used as it is) and a chosen service name.
            &[
                ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", &traces_url),
                ("OTEL_SERVICE_NAME", "edge"),
                ("FLOTILLA_AUTH_URL", &auth_url),
            ],
        )
    });

    let response = client()
        .post(format!("{gateway_url}/login"))
        .header("traceparent", format!("00-{TRACE_ID}-{CLIENT_SPAN}-01"))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 401, "no credentials: auth answers 401");

    tokio::task::block_in_place(|| {
        stop(gateway);
        stop(auth);
    });
    let spans = spans_of_trace(&received);
    let edge = the_span(&spans, "gateway", "POST /login");
    assert_eq!(edge.service_name, "edge");
    assert_eq!(
        edge.parent_span_id, CLIENT_SPAN,
        "the client's span is the parent"
    );
    assert_eq!(edge.attributes["http.response.status_code"], "401");
    assert_eq!(edge.attributes["http.route"], "/login");
    let service = the_span(&spans, "auth", "POST /login");
    assert_eq!(service.service_name, "auth", "default: the served service");
    assert_eq!(
        service.parent_span_id, edge.span_id,
        "the service's span is a child of the gateway's: {spans:#?}"
    );
    assert_ne!(service.span_id, edge.span_id);
}

#[tokio::test(flavor = "multi_thread")]
async fn up_mode_exports_one_trace_across_the_in_process_services() {
    let (otlp, received) = otlp_receiver().await;
    let dir = tempfile::tempdir().expect("temporary directory");
    let (system, url) = start_up(dir.path(), &otlp);
    let response = client()
        .get(format!("{url}/posts"))
        .header("traceparent", format!("00-{TRACE_ID}-{CLIENT_SPAN}-01"))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 200);
    // The gateway continues the trace; what it forwards names its own span as parent.
    tokio::task::block_in_place(|| stop(system));
    let spans = spans_of_trace(&received);
    let edge = the_span(&spans, "gateway", "GET /posts");
    assert_eq!(edge.service_name, "flotilla");
    assert_eq!(edge.parent_span_id, CLIENT_SPAN);
    let query = the_span(&spans, "query", "GET /posts");
    assert_eq!(query.parent_span_id, edge.span_id, "{spans:#?}");
    assert_eq!(query.attributes["http.response.status_code"], "200");
    // Only the request's own spans are in its trace (no probe, no background work).
    assert_eq!(spans.len(), 2, "{spans:#?}");
}

/// A trace crosses the bus: the messages a request publishes carry its context, and each
/// consumer's delivery span is a child of the span that published — through two hops
/// (comment → moderation → the comments service applying the decision).
#[tokio::test(flavor = "multi_thread")]
async fn a_trace_follows_the_messages_a_request_causes() {
    const COMMENT_TRACE: &str = "5cf92f3577b34da6a3ce929d0e0e4737";
    let (otlp, received) = otlp_receiver().await;
    let dir = tempfile::tempdir().expect("temporary directory");
    let (system, url) = start_up(dir.path(), &otlp);
    let client = client();
    let post: serde_json::Value = client
        .post(format!("{url}/posts"))
        .header("traceparent", format!("00-{TRACE_ID}-{CLIENT_SPAN}-01"))
        .json(&serde_json::json!({"title": "traced"}))
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("a post");
    let id = post["id"].as_str().expect("post id").to_owned();
    let response = client
        .post(format!("{url}/posts/{id}/comments"))
        .header(
            "traceparent",
            format!("00-{COMMENT_TRACE}-{CLIENT_SPAN}-01"),
        )
        .json(&serde_json::json!({"content": "hello"}))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 201);
    // Moderated (two hops later) means every span of both traces has ended.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let comments: serde_json::Value = client
            .get(format!("{url}/posts/{id}/comments"))
            .send()
            .await
            .expect("sent")
            .json()
            .await
            .expect("comments");
        if comments[0]["status"] == "approved" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not moderated: {comments}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    tokio::task::block_in_place(|| stop(system));

    let delivery = |spans: &[Exported], group: &str, event: &str| -> Exported {
        let found: Vec<&Exported> = spans
            .iter()
            .filter(|s| s.attributes.get("group").map(String::as_str) == Some(group))
            .filter(|s| s.name == format!("blog.{event} process"))
            .collect();
        assert_eq!(
            found.len(),
            1,
            "one {group} delivery of {event} in {spans:#?}"
        );
        found[0].clone()
    };
    let spans = spans_of_trace(&received);
    let created = the_span(&spans, "posts", "POST /posts");
    let projected = delivery(&spans, "query", "PostCreated");
    assert_eq!(projected.parent_span_id, created.span_id, "{spans:#?}");
    assert_eq!(projected.attributes["routing_key"], "blog.PostCreated");

    let spans: Vec<Exported> = received
        .lock()
        .expect("not poisoned")
        .iter()
        .filter(|span| span.trace_id == COMMENT_TRACE)
        .cloned()
        .collect();
    let commented = spans
        .iter()
        .find(|s| {
            s.attributes.get("flotilla.service").map(String::as_str) == Some("comments")
                && s.name.starts_with("POST ")
        })
        .unwrap_or_else(|| panic!("the comments service's span in {spans:#?}"));
    let moderated = delivery(&spans, "moderation", "CommentCreated");
    assert_eq!(moderated.parent_span_id, commented.span_id, "{spans:#?}");
    let applied = delivery(&spans, "comments", "CommentModerated");
    assert_eq!(applied.parent_span_id, moderated.span_id, "{spans:#?}");
}
