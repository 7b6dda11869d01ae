//! Production mode end to end: every service its own process on PostgreSQL + RabbitMQ,
//! through the gateway over HTTP (issue: gateway and production mode).

mod production_support;

use std::time::{Duration, Instant};

use production_support::{System, flows, servers, wav};

#[tokio::test(flavor = "multi_thread")]
async fn media_and_blog_flows_work_across_processes_and_the_gateway_survives_an_upstream_outage() {
    let Some(servers) = servers() else { return };
    let mut system = System::start(&servers);
    let target = flows::Target::of(&system);
    flows::media_flow(&target).await;
    flows::blog_flow(&target).await;
    drop(target);

    // An upstream goes away: the gateway answers quickly with 502/503, never hangs, and
    // recovers once the upstream is back.
    system
        .processes
        .get_mut("query")
        .expect("query")
        .kill_hard();
    for _ in 0..15 {
        let started = Instant::now();
        let response = system
            .client
            .get(format!("{}/posts", system.gateway))
            .send()
            .await
            .expect("gateway answers");
        assert!(
            matches!(response.status().as_u16(), 502 | 503),
            "{}",
            response.status()
        );
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
    }
    system.restart("query");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let response = system
            .client
            .get(format!("{}/posts", system.gateway))
            .send()
            .await
            .expect("gateway answers");
        if response.status() == 200 {
            let view: serde_json::Value = response.json().await.expect("json view");
            assert_eq!(view.as_object().map(|posts| posts.len()), Some(1), "{view}");
            break;
        }
        assert!(Instant::now() < deadline, "the gateway never recovered");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_converter_killed_mid_job_leaves_the_job_to_the_other_one() {
    let Some(servers) = servers() else { return };
    let mut system = System::start(&servers);
    let token = system.login().await;
    // Long enough that the conversion is still running when we kill its worker.
    let job_id = system.upload(&token, "long.wav", wav(240)).await;

    // Find which converter took it (its log names the job) and kill it hard.
    let deadline = Instant::now() + Duration::from_secs(60);
    let victim = loop {
        let found = ["converter", "converter-2"]
            .into_iter()
            .find(|name| system.processes[*name].log_text().contains(&job_id));
        if let Some(name) = found {
            break name;
        }
        assert!(Instant::now() < deadline, "no converter picked up {job_id}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let before = system.job(&token, &job_id).await;
    assert_ne!(
        before["status"], "done",
        "input too short to kill the worker mid-job"
    );
    system
        .processes
        .get_mut(victim)
        .expect("converter")
        .kill_hard();

    let job = system
        .wait_for_job(&token, &job_id, Duration::from_secs(300))
        .await;
    assert_eq!(job["status"], "done", "{job}");
    let survivor = if victim == "converter" {
        "converter-2"
    } else {
        "converter"
    };
    assert!(
        system.processes[survivor].log_text().contains(&job_id),
        "the surviving converter finished it"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while system.emails().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(system.emails().len(), 1, "exactly one email");
    let blobs: Vec<_> = walk(&system.dir.path().join("blobs"))
        .into_iter()
        .filter(|p| p.to_string_lossy().contains("mp3"))
        .collect();
    assert_eq!(blobs.len(), 1, "exactly one MP3: {blobs:?}");
}

/// On a fresh broker nothing has declared the `video` queue until a converter first
/// subscribes. An upload accepted before that must not be lost: RabbitMQ would confirm
/// and drop a message no queue is bound for, so media's outbox keeps it until a
/// converter is there.
#[tokio::test(flavor = "multi_thread")]
async fn an_upload_accepted_before_any_converter_ran_is_converted_when_one_starts() {
    let Some(servers) = servers() else { return };
    let mut system = System::start_without(&servers, &["converter", "converter-2"]);
    let token = system.login().await;
    let job_id = system.upload(&token, "early.wav", wav(2)).await;
    // The relay has tried (and been refused) for a while: the message is still owed.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !system.processes["media"]
        .log_text()
        .contains("bound to routing key 'video'")
    {
        assert!(Instant::now() < deadline, "media never tried to publish");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let job = system.job(&token, &job_id).await;
    assert_ne!(job["status"], "done", "{job}");

    system.start_converter("converter");
    let job = system
        .wait_for_job(&token, &job_id, Duration::from_secs(120))
        .await;
    assert_eq!(job["status"], "done", "{job}");
    assert!(system.processes["converter"].log_text().contains(&job_id));
}

/// A `video` queue the broker holds with other arguments (here: declared with other
/// retry settings; in life, by an earlier version) cannot be consumed. The converter
/// says so where an operator looks — `/readyz` answers 503 with a `consumers` check
/// naming the queue to delete — and, once it is deleted, subscribes and converts.
#[tokio::test(flavor = "multi_thread")]
async fn a_converter_facing_a_queue_declared_otherwise_is_not_ready_until_it_is_deleted() {
    let Some(servers) = servers() else { return };
    let mut system = System::start_without(&servers, &["converter", "converter-2"]);
    let stale = bus::BusOptions {
        retry: bus::RetryPolicy {
            max_attempts: 2,
            ..bus::RetryPolicy::default()
        },
        ..bus::BusOptions::default()
    };
    let other = bus::connect(&system.amqp_url, stale)
        .await
        .expect("connect to the system's vhost");
    drop(
        other
            .subscribe(bus::Subscription::new("video", "video"))
            .await
            .expect("declare video the other way"),
    );
    other.close().await;

    let readyz = format!("{}/readyz", system.start_converter_unready("converter"));
    let readiness = |system: &System| {
        let request = system.client.get(readyz.clone());
        async move {
            let Ok(response) = request.send().await else {
                return (0, serde_json::Value::Null);
            };
            let status = response.status().as_u16();
            let body: serde_json::Value = response.json().await.expect("json");
            (status, body)
        }
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let body = loop {
        let (status, body) = readiness(&system).await;
        if status == 503 {
            break body;
        }
        assert!(Instant::now() < deadline, "still {status}: {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let consumers = body["checks"]["consumers"].as_str().unwrap_or_default();
    assert!(
        consumers.contains("rabbitmqctl delete_queue video"),
        "{body}"
    );
    assert_eq!(body["checks"]["broker"], "ok", "{body}");

    production_support::run(
        "rabbitmqctl",
        &["-q", "delete_queue", "-p", &system.vhost, "video"],
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = readiness(&system).await;
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "still {status}: {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let token = system.login().await;
    let job_id = system.upload(&token, "after.wav", wav(1)).await;
    let job = system
        .wait_for_job(&token, &job_id, Duration::from_secs(120))
        .await;
    assert_eq!(job["status"], "done", "{job}");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.filter_map(Result::ok) {
            let path = entry.path();
            if path.is_dir() {
                found.extend(walk(&path));
            } else {
                found.push(path);
            }
        }
    }
    found
}
