//! The system made visible with every service its own process on RabbitMQ: the registry
//! lists every instance; a second converter appears within one heartbeat and, killed
//! with SIGKILL, expires; a gateway whose upstream is `registry` follows instances as
//! they come and go; an upload's messages arrive on the stream in order; a poisoned
//! message is dead-lettered and replayed from the API; only admins get in.

mod production_support;

use std::time::{Duration, Instant};

use production_support::{System, servers, wav};
use serde_json::{Value, json};
use test_support::client::{
    dead_letter, events, instances, read_until, replay, system_view, system_view_until,
};

/// `GET /admin/system` of `system`'s gateway.
async fn view(system: &System, token: &str) -> Value {
    system_view(&system.client, &system.gateway, token).await
}

/// Polls `GET /admin/system` until `wanted` holds; returns how long it took.
async fn until(
    system: &System,
    token: &str,
    patience: Duration,
    wanted: impl Fn(&Value) -> bool,
) -> Duration {
    system_view_until(&system.client, &system.gateway, token, patience, wanted).await
}

#[tokio::test(flavor = "multi_thread")]
async fn the_system_map_across_processes_on_rabbitmq() {
    let Some(servers) = servers() else { return };
    let mut system = System::start_without(&servers, &["converter-2"]);
    let admin = system.login().await;
    let signup = system
        .client
        .post(format!("{}/signup", system.gateway))
        .json(&json!({"email": "someone@example.com", "password": "another-password"}))
        .send()
        .await
        .expect("signup");
    assert_eq!(signup.status(), 201);
    let user = system
        .client
        .post(format!("{}/login", system.gateway))
        .basic_auth("someone@example.com", Some("another-password"))
        .send()
        .await
        .expect("login")
        .text()
        .await
        .expect("token");
    for (method, path) in [
        ("GET", "/admin/system"),
        ("GET", "/admin/system/stream"),
        ("GET", "/admin/dead-letters?group=video"),
        ("POST", "/admin/dead-letters/replay"),
    ] {
        for (token, expected) in [(None, 401), (Some(&user), 403)] {
            let mut request = system.client.request(
                method.parse().expect("method"),
                format!("{}{path}", system.gateway),
            );
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            let response = request
                .json(&json!({"group": "video", "all": true}))
                .send()
                .await
                .expect("sent");
            assert_eq!(response.status(), expected, "{method} {path}");
        }
    }

    // Every instance of every process registers.
    until(&system, &admin, Duration::from_secs(20), |view| {
        contracts::SERVICES
            .iter()
            .all(|service| instances(view, service).len() == 1)
    })
    .await;
    let snapshot = view(&system, &admin).await;
    assert_eq!(snapshot["bus"]["backend"], "rabbitmq");
    assert_eq!(
        instances(&snapshot, "converter")[0]["url"],
        system.url("converter").as_str()
    );
    let video = snapshot["queues"]
        .as_array()
        .expect("queues")
        .iter()
        .find(|q| q["group"] == "video")
        .expect("video queue")
        .clone();
    assert_eq!(video["consumers"], 1, "from the broker: {video}");
    assert_eq!(video["depth"], 0);

    let mut stream = reqwest::Client::new()
        .get(format!("{}/admin/system/stream", system.gateway))
        .bearer_auth(&admin)
        .send()
        .await
        .expect("stream");
    assert_eq!(stream.status(), 200);
    let mut seen = String::new();
    read_until(&mut stream, &mut seen, Duration::from_secs(10), |s| {
        s.contains("event: hello")
    })
    .await;

    // A second converter appears within one heartbeat of being ready.
    system.start_converter("converter-2");
    let appeared = until(&system, &admin, Duration::from_secs(20), |view| {
        instances(view, "converter").len() == 2
    })
    .await;
    assert!(
        appeared <= bus::registry::HEARTBEAT + Duration::from_secs(1),
        "listed {appeared:?} after it was ready"
    );
    until(&system, &admin, Duration::from_secs(20), |view| {
        view["queues"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|q| q["group"] == "video" && q["consumers"] == 2)
    })
    .await;

    // An upload's messages, in order, across processes.
    let job = system.upload(&admin, "tone.wav", wav(1)).await;
    let finished = system
        .wait_for_job(&admin, &job, Duration::from_secs(60))
        .await;
    assert_eq!(finished["status"], "done", "{finished}");
    let is =
        |m: &Value, outcome: &str, key: &str| m["outcome"] == outcome && m["routing_key"] == key;
    read_until(&mut stream, &mut seen, Duration::from_secs(30), |s| {
        events(s, "message")
            .iter()
            .any(|m| is(m, "handled", "mp3") && m["group"] == "notification")
    })
    .await;
    let messages = events(&seen, "message");
    let position = |outcome: &str, key: &str, group: Option<&str>| {
        messages
            .iter()
            .position(|m| is(m, outcome, key) && group.is_none_or(|g| m["group"] == g))
            .unwrap_or_else(|| panic!("no {outcome} {key} in {messages:?}"))
    };
    let steps = [
        position("published", "video", None),
        position("delivered", "video", Some("video")),
        position("published", "mp3", None),
        position("delivered", "mp3", Some("notification")),
        position("handled", "mp3", Some("notification")),
    ];
    assert!(steps.is_sorted(), "out of order: {steps:?} in {messages:?}");
    assert_eq!(messages[steps[0]]["publisher"], "media");
    assert_eq!(messages[steps[2]]["publisher"], "converter");

    // SIGKILL: no last word; the registry lets it expire.
    system
        .processes
        .get_mut("converter-2")
        .expect("converter-2")
        .kill_hard();
    let expired = until(
        &system,
        &admin,
        bus::registry::EXPIRY + Duration::from_secs(5),
        |view| instances(view, "converter").len() == 1,
    )
    .await;
    assert!(
        expired >= bus::registry::EXPIRY - bus::registry::HEARTBEAT - Duration::from_secs(1),
        "expired after only {expired:?}"
    );
    read_until(&mut stream, &mut seen, Duration::from_secs(5), |s| {
        events(s, "instance").iter().any(|c| {
            c["change"] == "down" && c["reason"] == "expired" && c["service"] == "converter"
        })
    })
    .await;

    // A poisoned message: dead-lettered, listed, replayed.
    let bus = bus::connect(&system.amqp_url, bus::BusOptions::default())
        .await
        .expect("the broker");
    let poison = bus::Message::new("video", "not a video message");
    bus.publish(poison.clone()).await.expect("published");
    let letter = dead_letter(&system.client, &system.gateway, &admin, "video", &poison.id).await;
    assert_eq!(letter["body"], "not a video message");
    let unknown = system
        .client
        .get(format!(
            "{}/admin/dead-letters?group=no-such-group",
            system.gateway
        ))
        .bearer_auth(&admin)
        .send()
        .await
        .expect("sent");
    assert_eq!(unknown.status(), 404);
    let replayed = replay(
        &system.client,
        &system.gateway,
        &admin,
        "video",
        &[poison.id.as_str()],
    )
    .await;
    assert_eq!(replayed, 1);
    read_until(&mut stream, &mut seen, Duration::from_secs(30), |s| {
        events(s, "message")
            .iter()
            .filter(|m| m["message_id"] == poison.id.as_str() && m["outcome"] == "dead_lettered")
            .count()
            == 2
    })
    .await;
    bus.close().await;
    drop(stream);

    // A gateway that takes posts' endpoints from the registry follows them.
    let auth = system.url("auth");
    system.spawn(
        "gateway-r",
        "gateway",
        &[
            ("FLOTILLA_AUTH_URL", auth),
            ("FLOTILLA_POSTS_URL", "registry".to_owned()),
        ],
    );
    let gateway = system.url("gateway-r");
    let client = system.client.clone();
    let create = |n: u32| {
        let client = client.clone();
        let url = format!("{gateway}/posts/create");
        async move {
            client
                .post(url)
                .json(&json!({"title": format!("via the registry {n}")}))
                .send()
                .await
                .expect("sent")
                .status()
        }
    };
    let started = Instant::now();
    while create(0).await != 201 {
        assert!(
            started.elapsed() < bus::registry::HEARTBEAT + Duration::from_secs(2),
            "posts is not reached through the registry"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A second instance comes; the first stops (gracefully: deregistered at once).
    let posts_auth = system.url("auth");
    system.spawn("posts-2", "posts", &[("FLOTILLA_AUTH_URL", posts_auth)]);
    until(&system, &admin, Duration::from_secs(10), |view| {
        instances(view, "posts").len() == 2
    })
    .await;
    let status = system
        .processes
        .get_mut("posts")
        .expect("posts")
        .terminate();
    assert!(status.success());
    until(&system, &admin, Duration::from_secs(3), |view| {
        instances(view, "posts").len() == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    for n in 1..=10 {
        assert_eq!(
            create(n).await,
            201,
            "request {n} after the first posts stopped"
        );
    }
    // The last one goes: no instance, 503 at once.
    system
        .processes
        .get_mut("posts-2")
        .expect("posts-2")
        .terminate();
    let started = Instant::now();
    while create(99).await != 503 {
        assert!(started.elapsed() < Duration::from_secs(3), "still routed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
