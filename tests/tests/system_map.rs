//! The system made visible, in `flotilla up` (embedded bus): the registry lists every
//! service; a second converter process on the same bus file appears within a heartbeat
//! and, killed, expires; an upload's messages appear on the stream in order; a poisoned
//! message becomes a dead letter and is replayed from the API; only admins get in.
//! (The same on RabbitMQ with every service its own process: flotilla/tests/system_map.rs.)

mod media_support;

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use media_support::{ADMIN_EMAIL, ADMIN_PASSWORD};
use reqwest::{StatusCode, multipart};
use serde_json::{Value, json};
use test_support::{
    client::{dead_letter, events, instances, read_until, replay, system_view},
    media::wav,
};

const SERVICES: [&str; 10] = [
    "auth",
    "comments",
    "converter",
    "event-bus",
    "gateway",
    "media",
    "moderation",
    "notification",
    "posts",
    "query",
];

#[tokio::test(flavor = "multi_thread")]
async fn the_system_map_in_up_lists_streams_and_replays() {
    let dir = tempfile::tempdir().expect("temp dir");
    let system = media_support::start(dir.path(), |_| {}).await;
    let base = system.url("");
    let base = base.trim_end_matches('/');
    let client = &system.client;
    let admin = media_support::login(&system, ADMIN_EMAIL, ADMIN_PASSWORD).await;
    let user = media_support::new_user(&system, "someone@example.com").await;

    // Only admins: 401 without a token, 403 for a user, on every /admin route.
    for (method, path, body) in [
        ("GET", "/admin/system", None),
        ("GET", "/admin/system/stream", None),
        ("GET", "/admin/dead-letters?group=video", None),
        (
            "POST",
            "/admin/dead-letters/replay",
            Some(json!({"group": "video", "all": true})),
        ),
    ] {
        for (token, expected) in [
            (None, StatusCode::UNAUTHORIZED),
            (Some(&user), StatusCode::FORBIDDEN),
        ] {
            let mut request =
                client.request(method.parse().expect("method"), format!("{base}{path}"));
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            if let Some(body) = &body {
                request = request.json(body);
            }
            let response = request.send().await.expect("sent");
            assert_eq!(response.status(), expected, "{method} {path}");
            assert_eq!(
                response.headers()["content-type"],
                "application/problem+json"
            );
        }
    }

    // Every service of the process is registered within a heartbeat.
    let deadline = Instant::now() + Duration::from_secs(10);
    let view = loop {
        let view = system_view(client, base, &admin).await;
        let listed: Vec<&str> = view["services"]
            .as_array()
            .expect("services")
            .iter()
            .filter_map(|s| s["name"].as_str())
            .collect();
        if listed == SERVICES {
            break view;
        }
        assert!(Instant::now() < deadline, "registered: {listed:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(view["bus"]["backend"], "embedded");
    assert_eq!(view["bus"]["state"], "up");
    for service in SERVICES {
        let instances = instances(&view, service);
        assert_eq!(instances.len(), 1, "{service}");
        assert_eq!(instances[0]["url"], base, "{service}");
        assert_eq!(instances[0]["status"], "up");
    }
    let video = view["queues"]
        .as_array()
        .expect("queues")
        .iter()
        .find(|q| q["group"] == "video")
        .expect("the video queue");
    assert_eq!(video["consumed_by"], json!(["converter"]));
    assert_eq!(video["depth"], 0);
    let media = view["services"]
        .as_array()
        .expect("services")
        .iter()
        .find(|s| s["name"] == "media")
        .expect("media");
    assert!(
        media["routes"]
            .as_array()
            .expect("routes")
            .contains(&json!("POST /upload"))
    );
    // The query and comments services follow the event log over HTTP: the query has no
    // queue of its own, the comments' queue carries only moderation decisions.
    let service = |name: &str| {
        view["services"]
            .as_array()
            .expect("services")
            .iter()
            .find(|s| s["name"] == name)
            .unwrap_or_else(|| panic!("{name} in {view}"))
            .clone()
    };
    let query = service("query");
    assert_eq!(query["reads_from"], json!(["event-bus"]), "{query}");
    assert_eq!(query["consumes"], json!([]), "{query}");
    let comments = service("comments");
    assert_eq!(comments["reads_from"], json!(["event-bus"]), "{comments}");
    let queue = |group: &str| {
        view["queues"]
            .as_array()
            .expect("queues")
            .iter()
            .find(|q| q["group"] == group)
            .cloned()
    };
    assert_eq!(queue("query"), None, "{view}");
    assert_eq!(
        queue("comments").expect("the comments queue")["routing_keys"],
        json!(["blog.CommentModerated"]),
        "{view}"
    );

    // The stream: an upload's messages in order, gateway → media → video → converter →
    // mp3 → notification.
    // A client without the suite's overall request timeout: the stream is endless.
    let mut stream = reqwest::Client::new()
        .get(format!("{base}/admin/system/stream"))
        .bearer_auth(&admin)
        .send()
        .await
        .expect("stream");
    assert_eq!(stream.status(), StatusCode::OK);
    let mut seen = String::new();
    read_until(&mut stream, &mut seen, Duration::from_secs(10), |s| {
        s.contains("event: hello")
    })
    .await;
    assert!(
        seen.contains("sampled"),
        "the stream says how it is sampled"
    );
    let part = multipart::Part::bytes(wav(1)).file_name("tone.wav");
    let uploaded = client
        .post(format!("{base}/upload"))
        .bearer_auth(&user)
        .multipart(multipart::Form::new().part("file", part))
        .send()
        .await
        .expect("upload");
    assert!(uploaded.status().is_success(), "{}", uploaded.status());
    let is =
        |m: &Value, outcome: &str, key: &str| m["outcome"] == outcome && m["routing_key"] == key;
    read_until(&mut stream, &mut seen, Duration::from_secs(60), |s| {
        events(s, "message")
            .iter()
            .any(|m| is(m, "handled", "mp3") && m["group"] == "notification")
    })
    .await;
    let messages = events(&seen, "message");
    let position = |outcome: &str, key: &str| {
        messages
            .iter()
            .position(|m| is(m, outcome, key))
            .unwrap_or_else(|| panic!("no {outcome} {key} in {messages:?}"))
    };
    let to_notification = |outcome: &str| {
        messages
            .iter()
            .position(|m| is(m, outcome, "mp3") && m["group"] == "notification")
            .unwrap_or_else(|| panic!("no {outcome} mp3 for notification in {messages:?}"))
    };
    // A delivery is settled after its handler's own messages are out: the video is
    // handled once the mp3 is published.
    let steps = [
        position("published", "video"),
        position("delivered", "video"),
        position("published", "mp3"),
        to_notification("delivered"),
        to_notification("handled"),
    ];
    assert!(steps.is_sorted(), "out of order: {steps:?} in {messages:?}");
    assert!(position("handled", "video") > steps[2]);
    assert_eq!(messages[steps[0]]["publisher"], "media");
    assert_eq!(messages[steps[1]]["group"], "video");
    assert_eq!(messages[steps[2]]["publisher"], "converter");
    let trace = messages[steps[0]]["trace_id"].as_str().expect("trace id");
    assert_eq!(trace.len(), 32);
    assert_eq!(
        messages[steps[2]]["trace_id"], trace,
        "the conversion continues the upload's trace"
    );

    // A second converter process on the same bus file appears within one heartbeat;
    // killed with SIGKILL (no last word), it expires within the expiry.
    let bus_url = bus::default_url(dir.path());
    let mut second = Command::new(test_support::flotilla_binary())
        .args(["serve", "converter", "--listen", "127.0.0.1:0"])
        .env("FLOTILLA_DATA_DIR", dir.path().join("converter-2"))
        .env("FLOTILLA_BUS_URL", &bus_url)
        .env(
            "FLOTILLA_BLOB_URL",
            format!("file://{}", dir.path().join("blobs").display()),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("flotilla serve converter");
    let started = Instant::now();
    let appeared = loop {
        let view = system_view(client, base, &admin).await;
        if instances(&view, "converter").len() == 2 {
            break started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the second converter never appeared"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Start-up (a debug binary) plus at most one heartbeat and one poll.
    eprintln!("second converter listed {appeared:?} after its start");
    read_until(&mut stream, &mut seen, Duration::from_secs(5), |s| {
        events(s, "instance")
            .iter()
            .any(|c| c["change"] == "up" && c["service"] == "converter")
    })
    .await;
    let _ = second.kill();
    let _ = second.wait();
    let killed = Instant::now();
    loop {
        let view = system_view(client, base, &admin).await;
        if instances(&view, "converter").len() == 1 {
            break;
        }
        assert!(
            killed.elapsed() < bus::registry::EXPIRY + Duration::from_secs(3),
            "the killed converter is still listed"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let expired_after = killed.elapsed();
    assert!(
        expired_after > bus::registry::EXPIRY - bus::registry::HEARTBEAT - Duration::from_secs(1),
        "expired too early: {expired_after:?}"
    );
    read_until(&mut stream, &mut seen, Duration::from_secs(5), |s| {
        events(s, "instance")
            .iter()
            .any(|c| c["change"] == "down" && c["reason"] == "expired")
    })
    .await;

    // A poisoned message becomes a dead letter, visible and replayable from the API.
    let bus = bus::connect(&bus_url, bus::BusOptions::default())
        .await
        .expect("the bus");
    let poison = bus::Message::new("video", "not a video message");
    bus.publish(poison.clone()).await.expect("published");
    let letter = dead_letter(client, base, &admin, "video", &poison.id).await;
    assert_eq!(letter["body"], "not a video message");
    assert!(
        letter["reason"]
            .as_str()
            .is_some_and(|r| r.contains("bad video body"))
    );
    // The snapshot is at most a second old.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let view = system_view(client, base, &admin).await;
        let video = view["queues"]
            .as_array()
            .expect("queues")
            .iter()
            .find(|q| q["group"] == "video")
            .expect("video")
            .clone();
        if video["dead_letters"] == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "{video}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    for bad in [
        json!({"group": "video"}),
        json!({"group": "video", "all": true, "ids": ["x"]}),
        json!({"group": "", "all": true}),
        json!({"group": "video", "ids": [], "extra": 1}),
    ] {
        let response = client
            .post(format!("{base}/admin/dead-letters/replay"))
            .bearer_auth(&admin)
            .json(&bad)
            .send()
            .await
            .expect("sent");
        // 422: well-formed JSON that is not a replay request (axum's answer).
        assert!(
            [StatusCode::BAD_REQUEST, StatusCode::UNPROCESSABLE_ENTITY]
                .contains(&response.status()),
            "{bad}: {}",
            response.status()
        );
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
    }
    let replayed = replay(client, base, &admin, "video", &[poison.id.as_str()]).await;
    assert_eq!(replayed, 1);
    // Replayed, it is delivered again (and, still poison, parked again).
    read_until(&mut stream, &mut seen, Duration::from_secs(30), |s| {
        events(s, "message")
            .iter()
            .filter(|m| m["message_id"] == poison.id.as_str() && m["outcome"] == "dead_lettered")
            .count()
            == 2
    })
    .await;
    drop(stream);

    // `flotilla status`: the same picture in a terminal, as a table or JSON; admins only.
    let status = |token: &str, json: bool| {
        let mut command = Command::new(test_support::flotilla_binary());
        command
            .args(["status", "--gateway", base, "--token", token])
            .env("FLOTILLA_CLIENT_CONFIG", dir.path().join("no-client.json"));
        if json {
            command.arg("--json");
        }
        command.output().expect("flotilla status runs")
    };
    let table = status(&admin, false);
    assert!(table.status.success(), "{table:?}");
    let table = String::from_utf8_lossy(&table.stdout);
    for needle in [
        "SERVICE",
        "converter",
        "1/1",
        "QUEUE",
        "video",
        "bus: embedded (up)",
    ] {
        assert!(table.contains(needle), "{needle} in {table}");
    }
    let json = status(&admin, true);
    let parsed: Value = serde_json::from_slice(&json.stdout).expect("status --json");
    assert_eq!(instances(&parsed, "converter").len(), 1);
    let refused = status(&user, false);
    assert_eq!(refused.status.code(), Some(3), "{refused:?}");
    system.stop().await.expect("stops");
}
