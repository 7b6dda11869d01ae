//! Production mode with the broker down: uploads and blog writes are still accepted
//! (the outbox holds their messages) and complete once RabbitMQ is back. Alone in its
//! test binary because it stops the shared RabbitMQ application for a while.

mod production_support;

use std::{process::Command, time::Duration};

use production_support::{System, servers, wav};

fn rabbitmq(action: &str) {
    let status = Command::new("rabbitmqctl")
        .args(["-q", action])
        .status()
        .expect("rabbitmqctl runs");
    assert!(status.success(), "rabbitmqctl {action}");
}

/// Restarts the broker application even if the test fails half-way.
struct BrokerGuard;

impl Drop for BrokerGuard {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl")
            .args(["-q", "start_app"])
            .status();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn uploads_made_while_the_broker_is_down_complete_when_it_returns() {
    let Some(servers) = servers() else { return };
    let system = System::start(&servers);
    let token = system.login().await;

    let guard = BrokerGuard;
    rabbitmq("stop_app");
    let job_id = system.upload(&token, "while-down.wav", wav(2)).await;
    let post = system
        .client
        .post(format!("{}/posts/create", system.gateway))
        .json(&serde_json::json!({"title": "written while the broker was down"}))
        .send()
        .await
        .expect("posts answers");
    assert_eq!(post.status(), 201);
    // Readiness tells operators the broker is gone, yet stays 200: the service still
    // takes writes (that is the point of the outbox), so it must stay in rotation.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ready = system
        .client
        .get(format!("{}/readyz", system.url("media")))
        .send()
        .await
        .expect("media answers");
    assert_eq!(ready.status(), 200);
    let report: serde_json::Value = ready.json().await.expect("json readiness");
    assert_eq!(report["status"], "degraded", "{report}");
    assert_ne!(report["checks"]["broker"], "ok", "{report}");

    rabbitmq("start_app");
    drop(guard);
    let job = system
        .wait_for_job(&token, &job_id, Duration::from_secs(180))
        .await;
    assert_eq!(job["status"], "done", "{job}");
}
