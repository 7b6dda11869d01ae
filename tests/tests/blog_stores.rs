//! The blog services on the real PostgreSQL and MariaDB (`FLOTILLA_TEST_POSTGRES_URL`,
//! `FLOTILLA_TEST_MYSQL_URL`), each service run as `flotilla serve` does with
//! `FLOTILLA_DATABASE_URL` set: posts, comments, moderation, the event-bus log and the
//! query view all store their rows and their outbox/inbox on the server. Each run gets
//! a scratch database.

use std::time::Duration;

use flotilla::{ServeArgs, ServiceName};
use serde_json::{Value, json};
use storage::scratch::ScratchDatabase;
use test_support::{TestSystem, real_server_url, spawn_served};

async fn serve(
    service: ServiceName,
    dir: &std::path::Path,
    database_url: &str,
    event_bus: Option<&str>,
) -> TestSystem {
    let mut gateway = flotilla::GatewayArgs::default();
    if let Some(url) = event_bus {
        gateway.event_bus_url = Some(flotilla::parse_upstream_url(url).expect("URL"));
    }
    spawn_served(ServeArgs {
        service,
        server: platform::config::ServerArgs {
            listen: "127.0.0.1:0".parse().expect("address"),
            data_dir: dir.to_owned(),
            http_threads: None,
            http_max_connections_per_client: None,
            http_body_timeout: std::time::Duration::from_secs(10),
            sched_policy: platform::sched::Policy::default(),
        },
        database_url: Some(database_url.to_owned()),
        gateway,
        services: Default::default(),
        // Tests run on the embedded stores unless they say otherwise.
        allow_embedded: true,
    })
    .await
}

async fn blog_on(server_var: &str) {
    let Some(server) = real_server_url(server_var) else {
        return;
    };
    let database = ScratchDatabase::create(&server)
        .await
        .expect("scratch database");
    let url = database.url().to_owned();
    // One data directory: the services share its embedded bus, as in one process.
    let dir = tempfile::tempdir().expect("temporary directory");
    let event_bus = serve(ServiceName::EventBus, dir.path(), &url, None).await;
    let posts = serve(ServiceName::Posts, dir.path(), &url, None).await;
    let comments = serve(ServiceName::Comments, dir.path(), &url, None).await;
    let moderation = serve(ServiceName::Moderation, dir.path(), &url, None).await;
    let query = serve(
        ServiceName::Query,
        dir.path(),
        &url,
        Some(&event_bus.base_url),
    )
    .await;
    let client = test_support::http_client();

    let created: Value = client
        .post(posts.url("/posts/create"))
        .json(&json!({"title": "On a real server"}))
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("JSON");
    let post = created["id"].as_str().expect("id").to_owned();
    for content in ["Fine", "ORANGE"] {
        let response = client
            .post(comments.url(&format!("/posts/{post}/comments")))
            .json(&json!({ "content": content }))
            .send()
            .await
            .expect("sent");
        assert_eq!(response.status(), 201, "{server_var}");
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let view = loop {
        let view: Value = client
            .get(query.url("/posts"))
            .send()
            .await
            .expect("sent")
            .json()
            .await
            .expect("JSON");
        let statuses: Vec<&str> = view[&post]["comments"]
            .as_array()
            .map(|cs| cs.iter().filter_map(|c| c["status"].as_str()).collect())
            .unwrap_or_default();
        if statuses == ["approved", "rejected"] {
            break view;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{server_var}: {view}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    // The log on the server: the four types, each after its cause.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let events: Value = client
            .get(event_bus.url("/events"))
            .send()
            .await
            .expect("sent")
            .json()
            .await
            .expect("JSON");
        let types: Vec<&str> = events
            .as_array()
            .expect("array")
            .iter()
            .filter_map(|e| e["type"].as_str())
            .collect();
        if types.len() == 7 {
            assert_eq!(types[0], "PostCreated", "{events}");
            let first = |t: &str| types.iter().position(|x| *x == t).expect("present");
            assert!(first("CommentCreated") < first("CommentModerated"));
            assert!(first("CommentModerated") < first("CommentUpdated"));
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{server_var}: {events}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A new query instance over an emptied view rebuilds it from the log.
    query.stop().await.expect("stop");
    let cleared = storage::Database::connect(&url).await.expect("connect");
    for table in [
        "query_comments",
        "query_posts",
        "bus_inbox WHERE consumer = 'query'",
    ] {
        sqlx::query(sqlx::AssertSqlSafe(format!("DELETE FROM {table}")))
            .execute(cleared.pool())
            .await
            .expect("cleared");
    }
    sqlx::query("UPDATE query_state SET log_seq = 0")
        .execute(cleared.pool())
        .await
        .expect("cursor reset");
    cleared.close().await;
    let query = serve(
        ServiceName::Query,
        dir.path(),
        &url,
        Some(&event_bus.base_url),
    )
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let rebuilt: Value = client
            .get(query.url("/posts"))
            .send()
            .await
            .expect("sent")
            .json()
            .await
            .expect("JSON");
        if rebuilt == view {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{server_var}: {rebuilt}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    for system in [query, moderation, comments, posts, event_bus] {
        system.stop().await.expect("stop");
    }
    database.drop_database().await.expect("dropped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_blog_runs_on_postgresql() {
    blog_on("FLOTILLA_TEST_POSTGRES_URL").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_blog_runs_on_mariadb() {
    blog_on("FLOTILLA_TEST_MYSQL_URL").await;
}
