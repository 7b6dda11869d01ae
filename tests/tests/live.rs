//! The gateway's live streams (`/live/blog`, `/live/jobs`, Server-Sent Events): changes
//! arrive without polling, in `up` and with the gateway as its own process; streams are
//! capped per client and end when the system stops.

mod media_support;

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;

/// Reads the event stream until it holds every one of `needles` (or fails after 20 s).
async fn read_until(response: &mut reqwest::Response, seen: &mut String, needles: &[&str]) {
    test_support::client::read_until(response, seen, Duration::from_secs(20), |seen| {
        needles.iter().all(|n| seen.contains(n))
    })
    .await;
}

async fn open(client: &reqwest::Client, url: String) -> reqwest::Response {
    let response = client.get(url).send().await.expect("sent");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["content-type"].to_str().expect("ascii"),
        "text/event-stream"
    );
    response
}

#[tokio::test(flavor = "multi_thread")]
async fn blog_changes_and_decisions_are_pushed_and_the_stream_ends_with_the_system() {
    let dir = tempfile::tempdir().expect("temp dir");
    let system = media_support::start(dir.path(), |_| {}).await;
    let mut stream = open(&system.client, system.url("/live/blog")).await;
    let mut seen = String::new();
    read_until(&mut stream, &mut seen, &["event: ready"]).await;

    let post: serde_json::Value = system
        .client
        .post(system.url("/posts/create"))
        .json(&json!({"title": "pushed, not polled"}))
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("json");
    read_until(
        &mut stream,
        &mut seen,
        &["event: PostCreated", "pushed, not polled"],
    )
    .await;
    let id = post["id"].as_str().expect("id");
    let comment = system
        .client
        .post(system.url(&format!("/posts/{id}/comments")))
        .json(&json!({"content": "an orange comment"}))
        .send()
        .await
        .expect("sent");
    assert_eq!(comment.status(), StatusCode::CREATED);
    read_until(
        &mut stream,
        &mut seen,
        &[
            "event: CommentCreated",
            "event: CommentUpdated",
            "\"rejected\"",
        ],
    )
    .await;

    // An open stream does not hold the drain: the system stops well within its 30 s.
    let started = Instant::now();
    system.stop().await.expect("clean stop");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let rest = tokio::time::timeout(Duration::from_secs(5), stream.chunk()).await;
    assert!(
        matches!(rest, Ok(Ok(None)) | Ok(Err(_))),
        "the stream ended: {rest:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn job_streams_need_a_token_all_jobs_need_an_admin_and_streams_are_capped() {
    let dir = tempfile::tempdir().expect("temp dir");
    let system = media_support::start(dir.path(), |_| {}).await;
    let anonymous = system
        .client
        .get(system.url("/live/jobs"))
        .send()
        .await
        .expect("sent");
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);

    let token = media_support::new_user(&system, "live@example.com").await;
    let all = system
        .client
        .get(system.url("/jobs?all=true"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("sent");
    assert_eq!(all.status(), StatusCode::FORBIDDEN);
    let admin = media_support::login(
        &system,
        media_support::ADMIN_EMAIL,
        media_support::ADMIN_PASSWORD,
    )
    .await;
    let all = system
        .client
        .get(system.url("/jobs?all=true"))
        .bearer_auth(&admin)
        .send()
        .await
        .expect("sent");
    assert_eq!(all.status(), StatusCode::OK);

    // A user's job stream opens with `ready`; 8 streams per client, the 9th is refused
    // until one closes.
    let jobs = system
        .client
        .get(system.url("/live/jobs"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("sent");
    assert_eq!(jobs.status(), StatusCode::OK);
    let mut jobs = jobs;
    read_until(&mut jobs, &mut String::new(), &["event: ready"]).await;
    let mut open_streams = vec![jobs];
    for _ in 1..8 {
        open_streams.push(open(&system.client, system.url("/live/blog")).await);
    }
    let refused = system
        .client
        .get(system.url("/live/blog"))
        .send()
        .await
        .expect("sent");
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(refused.headers().contains_key("retry-after"));
    open_streams.pop();
    // The slot is freed once the server notices the closed connection.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let again = system
            .client
            .get(system.url("/live/blog"))
            .send()
            .await
            .expect("sent");
        if again.status() == StatusCode::OK {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the closed stream's slot was never freed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(open_streams);
    system.stop().await.expect("clean stop");
}

/// With the gateway as its own process, its one upstream stream is the query service's
/// `GET /posts/changes` over HTTP.
#[tokio::test(flavor = "multi_thread")]
async fn the_blog_stream_crosses_processes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let query =
        test_support::spawn_service(flotilla::ServiceName::Query, &dir.path().join("q")).await;
    let upstreams = flotilla::GatewayArgs {
        query_url: Some(flotilla::parse_upstream_url(&query.url("")).expect("url")),
        ..Default::default()
    };
    let gateway = test_support::spawn_gateway(upstreams, &dir.path().join("g")).await;
    let mut stream = open(&gateway.client, gateway.url("/live/blog")).await;
    let mut seen = String::new();
    read_until(&mut stream, &mut seen, &["event: ready"]).await;
    // The gateway subscribes on the first browser's stream: push until it arrives.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut n = 0;
    while !seen.contains("across processes") {
        n += 1;
        let pushed = query
            .client
            .post(query.url("/events"))
            .json(&json!({"type": "PostCreated",
                          "data": {"id": format!("p{n}"), "title": "across processes"}}))
            .send()
            .await
            .expect("sent");
        assert!(pushed.status().is_success(), "{}", pushed.status());
        let chunk = tokio::time::timeout(Duration::from_millis(500), stream.chunk()).await;
        if let Ok(chunk) = chunk {
            let chunk = chunk.expect("read").expect("the stream is open");
            seen.push_str(&String::from_utf8_lossy(&chunk));
        }
        assert!(Instant::now() < deadline, "nothing arrived: {seen}");
    }
    gateway.stop().await.expect("clean stop");
    query.stop().await.expect("clean stop");
}

/// With auth, media and the gateway each in its own process, a user's job stream is
/// media's `GET /jobs/stream` over HTTP, authorised by the user's token (which media
/// checks itself against auth's keys): the upload's `queued` job arrives on it, and
/// another user's stream does not see it.
#[tokio::test(flavor = "multi_thread")]
async fn the_job_stream_crosses_processes_with_the_callers_token() {
    let dir = tempfile::tempdir().expect("temp dir");
    let auth =
        test_support::spawn_service(flotilla::ServiceName::Auth, &dir.path().join("a")).await;
    let auth_url = flotilla::parse_upstream_url(&auth.url("")).expect("url");
    let mut services = flotilla::ServiceArgs::default();
    services.media.auth_url = Some(auth.url(""));
    let media = test_support::spawn_served(flotilla::ServeArgs {
        service: flotilla::ServiceName::Media,
        server: test_support::server_args(&dir.path().join("m")),
        database_url: None,
        gateway: Default::default(),
        services,
        allow_embedded: true,
    })
    .await;
    let upstreams = flotilla::GatewayArgs {
        auth_url: Some(auth_url),
        media_url: Some(flotilla::parse_upstream_url(&media.url("")).expect("url")),
        ..Default::default()
    };
    let gateway = test_support::spawn_gateway(upstreams, &dir.path().join("g")).await;

    let token = media_support::new_user(&gateway, "streamer@example.com").await;
    let other = media_support::new_user(&gateway, "other@example.com").await;
    let stream_of = |token: String| {
        let gateway = &gateway;
        async move {
            let response = gateway
                .client
                .get(gateway.url("/live/jobs"))
                .bearer_auth(token)
                .send()
                .await
                .expect("sent");
            assert_eq!(response.status(), StatusCode::OK);
            response
        }
    };
    let mut mine = stream_of(token.clone()).await;
    let mut theirs = stream_of(other).await;
    let mut seen = String::new();
    read_until(&mut mine, &mut seen, &["event: ready"]).await;
    let mut their_seen = String::new();
    read_until(&mut theirs, &mut their_seen, &["event: ready"]).await;

    let file = dir.path().join("clip.webm");
    std::fs::write(&file, b"not really a video").expect("fixture");
    let job = media_support::upload_job(&gateway, &token, &file).await;
    read_until(
        &mut mine,
        &mut seen,
        &["event: job", &job, "\"queued\"", "clip.webm"],
    )
    .await;
    // The other user's stream carries nothing of it (a keep-alive at most).
    if let Ok(Ok(Some(chunk))) =
        tokio::time::timeout(Duration::from_millis(500), theirs.chunk()).await
    {
        their_seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(!their_seen.contains(&job), "{their_seen}");
    drop((mine, theirs));
    gateway.stop().await.expect("clean stop");
    media.stop().await.expect("clean stop");
    auth.stop().await.expect("clean stop");
}
