//! The blog through the gateway of `flotilla up`, as the course's React client uses it:
//! posts created both ways, comments moderated, the event log in causal order, bad
//! input refused, restarts and a lost query store survived, many concurrent clients.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    path::Path,
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use test_support::{TestSystem, spawn_system, spawn_system_in};

/// Where the gateway is, and a client for it.
struct Blog {
    base: String,
    client: reqwest::Client,
}

impl Blog {
    fn of(system: &TestSystem) -> Self {
        Self {
            base: system.base_url.clone(),
            client: system.client.clone(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

/// How long the asynchronous side (bus, moderation, view) may take in these tests.
const SETTLE: Duration = Duration::from_secs(20);

async fn post_json(system: &Blog, path: &str, body: Value) -> reqwest::Response {
    system
        .client
        .post(system.url(path))
        .json(&body)
        .send()
        .await
        .expect("request sent")
}

async fn get_json(system: &Blog, path: &str) -> Value {
    let response = system
        .client
        .get(system.url(path))
        .send()
        .await
        .expect("request sent");
    assert_eq!(response.status(), 200, "GET {path}");
    response.json().await.expect("JSON body")
}

/// Polls `GET /posts` until `done` holds, and returns that view.
async fn view_until(system: &Blog, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + SETTLE;
    loop {
        let view = get_json(system, "/posts").await;
        if done(&view) {
            return view;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the view never showed {what}: {view}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn create_post(system: &Blog, path: &str, title: &str) -> String {
    let response = post_json(system, path, json!({ "title": title })).await;
    assert_eq!(response.status(), 201, "{path}");
    let body: Value = response.json().await.expect("JSON body");
    assert_eq!(body["title"], title);
    assert_eq!(body.as_object().map(|o| o.len()), Some(2), "{body}");
    body["id"].as_str().expect("id").to_owned()
}

fn comment_status(view: &Value, post: &str, content: &str) -> Option<String> {
    view[post]["comments"]
        .as_array()?
        .iter()
        .find(|c| c["content"] == content)
        .and_then(|c| c["status"].as_str())
        .map(str::to_owned)
}

#[tokio::test]
async fn the_course_flow_works_through_the_gateway() {
    let system = spawn_system().await;
    let blog = Blog::of(&system);

    let first = create_post(&blog, "/posts/create", "First post").await;
    let second = create_post(&blog, "/posts", "Second post").await;

    // Commented at once: the comments service may not have heard of the post yet.
    let response = post_json(
        &blog,
        &format!("/posts/{first}/comments"),
        json!({"content": "Nice post"}),
    )
    .await;
    assert_eq!(response.status(), 201);
    let comments: Value = response.json().await.expect("JSON");
    assert_eq!(comments.as_array().map(Vec::len), Some(1), "{comments}");
    assert_eq!(comments[0]["content"], "Nice post");
    assert_eq!(comments[0]["status"], "pending");
    assert!(comments[0]["id"].is_string());

    let response = post_json(
        &blog,
        &format!("/posts/{first}/comments"),
        json!({"content": "I prefer an Orange"}),
    )
    .await;
    assert_eq!(response.status(), 201);
    let comments: Value = response.json().await.expect("JSON");
    assert_eq!(
        comments.as_array().map(Vec::len),
        Some(2),
        "the post's full array"
    );
    assert_eq!(comments[1]["status"], "pending");

    let view = view_until(&blog, "both comments moderated", |view| {
        comment_status(view, &first, "Nice post").as_deref() == Some("approved")
            && comment_status(view, &first, "I prefer an Orange").as_deref() == Some("rejected")
    })
    .await;
    assert_eq!(view[&first]["title"], "First post");
    assert_eq!(view[&first]["id"], first.as_str());
    assert_eq!(
        view[&second],
        json!({"id": second, "title": "Second post", "comments": []})
    );

    let listed = get_json(&blog, &format!("/posts/{first}/comments")).await;
    let statuses: Vec<&str> = listed
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|c| c["status"].as_str())
        .collect();
    assert_eq!(statuses, ["approved", "rejected"]);

    // The log holds the four types, each event after the one it follows from.
    let deadline = tokio::time::Instant::now() + SETTLE;
    let events = loop {
        let events = get_json(&blog, "/events").await;
        if events.as_array().map(Vec::len) == Some(8) {
            break events;
        }
        assert!(tokio::time::Instant::now() < deadline, "log: {events}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let types: HashSet<&str> = events
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|e| e["type"].as_str())
        .collect();
    assert_eq!(
        types,
        HashSet::from([
            "PostCreated",
            "CommentCreated",
            "CommentModerated",
            "CommentUpdated"
        ])
    );
    assert_causally_ordered(&events);

    system.stop().await.expect("clean stop");
}

/// Every event of `events` comes after its cause, and sequence numbers increase.
fn assert_causally_ordered(events: &Value) {
    let mut seen: HashSet<String> = HashSet::new();
    let mut last_seq = 0;
    for event in events.as_array().expect("array") {
        let seq = event["seq"].as_i64().expect("seq");
        assert!(seq > last_seq, "sequence numbers increase: {events}");
        last_seq = seq;
        let data = &event["data"];
        let id = data["id"].as_str().unwrap_or_default();
        let status = data["status"].as_str().unwrap_or_default();
        let (needs, provides) = match event["type"].as_str() {
            Some("PostCreated") => (None, Some(format!("post:{id}"))),
            Some("CommentCreated") => (
                Some(format!(
                    "post:{}",
                    data["postId"].as_str().unwrap_or_default()
                )),
                Some(format!("comment:{id}")),
            ),
            Some("CommentModerated") => (
                Some(format!("comment:{id}")),
                Some(format!("moderated:{id}:{status}")),
            ),
            Some("CommentUpdated") => (Some(format!("moderated:{id}:{status}")), None),
            _ => (None, None),
        };
        if let Some(needs) = needs {
            assert!(seen.contains(&needs), "{event} before {needs}");
        }
        if let Some(provides) = provides {
            seen.insert(provides);
        }
    }
}

#[tokio::test]
async fn bad_input_is_refused_and_unknown_posts_are_404() {
    let system = spawn_system().await;
    let blog = Blog::of(&system);
    let longest = "x".repeat(10_000);
    let too_long = "x".repeat(10_001);
    for body in [
        json!({}),
        json!({"title": ""}),
        json!({"title": "   "}),
        json!({"title": 42}),
        json!({ "title": too_long }),
    ] {
        let response = post_json(&blog, "/posts/create", body.clone()).await;
        assert_eq!(response.status(), 400, "{body}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
    }
    let not_json = blog
        .client
        .post(blog.url("/posts"))
        .body("title=hello")
        .send()
        .await
        .expect("sent");
    assert_eq!(not_json.status(), 400);

    let post = create_post(&blog, "/posts/create", &longest).await;
    for body in [
        json!({}),
        json!({"content": ""}),
        json!({ "content": too_long }),
    ] {
        let response = post_json(&blog, &format!("/posts/{post}/comments"), body.clone()).await;
        assert_eq!(response.status(), 400, "{body}");
    }
    let response = post_json(
        &blog,
        &format!("/posts/{post}/comments"),
        json!({ "content": longest }),
    )
    .await;
    assert_eq!(response.status(), 201);

    let response = post_json(
        &blog,
        "/posts/no-such-post/comments",
        json!({"content": "hello?"}),
    )
    .await;
    assert_eq!(response.status(), 404);
    let problem: Value = response.json().await.expect("JSON");
    assert_eq!(problem["status"], 404);

    // Refused input left nothing behind: one post, one comment.
    let view = view_until(&blog, "the accepted comment", |view| {
        view[&post]["comments"].as_array().map(Vec::len) == Some(1)
    })
    .await;
    assert_eq!(view.as_object().map(|o| o.len()), Some(1), "{view}");
    system.stop().await.expect("clean stop");
}

/// The admin seeded by [`spawn_with_admin`].
const ADMIN_EMAIL: &str = "georgio@email.com";
const ADMIN_PASSWORD: &str = "Admin123";

/// `flotilla up` with an admin account, that admin's token, and the data directory
/// (removed when dropped).
async fn spawn_with_admin() -> (TestSystem, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut services = flotilla::ServiceArgs::default();
    services.auth.admin_email = Some(ADMIN_EMAIL.to_owned());
    services.auth.admin_password = Some(ADMIN_PASSWORD.to_owned());
    let system = test_support::spawn_system_with(dir.path(), services).await;
    let token = login(&system, ADMIN_EMAIL, ADMIN_PASSWORD).await;
    (system, token, dir)
}

/// `POST /login -u EMAIL:PASSWORD` → the token.
async fn login(system: &TestSystem, email: &str, password: &str) -> String {
    test_support::client::login(&system.client, &system.base_url, email, password).await
}

/// `POST /events` with `token`.
async fn post_event(system: &Blog, token: &str, body: &Value) -> reqwest::Response {
    system
        .client
        .post(system.url("/events"))
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .expect("request sent")
}

#[tokio::test]
async fn the_event_bus_facade_publishes_and_pages() {
    let (system, admin, _dir) = spawn_with_admin().await;
    let blog = Blog::of(&system);
    // An admin publishing an event by hand: it reaches every consumer.
    let response = post_event(
        &blog,
        &admin,
        &json!({"type": "PostCreated", "data": {"id": "hand-made", "title": "By hand"}}),
    )
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.json::<Value>().await.expect("JSON"),
        json!({"status": "OK"})
    );
    view_until(&blog, "the hand-made post", |view| {
        view["hand-made"]["title"] == "By hand"
    })
    .await;
    // Known to the comments service too, through the same bus.
    let response = post_json(
        &blog,
        "/posts/hand-made/comments",
        json!({"content": "works"}),
    )
    .await;
    assert_eq!(response.status(), 201);

    // Unknown types travel too; malformed envelopes do not.
    let response = post_event(&blog, &admin, &json!({"type": "Hello", "data": {"x": 1}})).await;
    assert_eq!(response.status(), 200);
    for bad in [
        json!({"data": {}}),
        json!({"type": "a.b", "data": {}}),
        json!({"type": "PostCreated", "data": {"id": 3}}),
    ] {
        let response = post_event(&blog, &admin, &bad).await;
        assert_eq!(response.status(), 400, "{bad}");
    }

    let deadline = tokio::time::Instant::now() + SETTLE;
    let all = loop {
        let all = get_json(&blog, "/events").await;
        if all.as_array().map(Vec::len) == Some(5) {
            break all;
        }
        assert!(tokio::time::Instant::now() < deadline, "log: {all}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_causally_ordered(&all);
    let mut paged = Vec::new();
    let mut after = 0;
    loop {
        let page = get_json(&blog, &format!("/events?after={after}&limit=2")).await;
        let page = page.as_array().expect("array").clone();
        let Some(last) = page.last() else { break };
        after = last["seq"].as_i64().expect("seq");
        assert!(page.len() <= 2);
        paged.extend(page);
    }
    assert_eq!(Value::Array(paged), all);
    system.stop().await.expect("clean stop");
}

#[tokio::test]
async fn posts_can_be_paged_in_creation_order() {
    let system = spawn_system().await;
    let blog = Blog::of(&system);
    let mut ids = Vec::new();
    for n in 0..5 {
        ids.push(create_post(&blog, "/posts/create", &format!("post {n}")).await);
    }
    view_until(&blog, "five posts", |view| {
        view.as_object().map(|o| o.len()) == Some(5)
    })
    .await;
    let page = blog
        .client
        .get(blog.url("/posts?limit=2"))
        .send()
        .await
        .expect("sent");
    assert_eq!(page.status(), 200);
    let link = page.headers()["link"].to_str().expect("text").to_owned();
    assert!(link.contains(&format!("after={}", ids[1])), "{link}");
    let page: BTreeMap<String, Value> = page.json().await.expect("JSON");
    assert_eq!(page.keys().cloned().collect::<Vec<_>>(), ids[..2]);
    let rest: BTreeMap<String, Value> =
        serde_json::from_value(get_json(&blog, &format!("/posts?limit=10&after={}", ids[1])).await)
            .expect("map");
    assert_eq!(rest.keys().cloned().collect::<Vec<_>>(), ids[2..]);
    system.stop().await.expect("clean stop");
}

/// Creates posts and comments and waits until every comment is moderated; returns the
/// settled view.
async fn write_some_blog(system: &Blog) -> Value {
    let mut posts = Vec::new();
    for n in 0..3 {
        posts.push(create_post(system, "/posts/create", &format!("durable {n}")).await);
    }
    for (n, post) in posts.iter().enumerate() {
        for content in ["fine", "orange juice"] {
            let response = post_json(
                system,
                &format!("/posts/{post}/comments"),
                json!({ "content": format!("{content} {n}") }),
            )
            .await;
            assert_eq!(response.status(), 201);
        }
    }
    view_until(system, "every comment moderated", |view| {
        posts.iter().all(|post| {
            view[post]["comments"].as_array().is_some_and(|comments| {
                comments.len() == 2 && comments.iter().all(|c| c["status"] != "pending")
            })
        })
    })
    .await
}

fn remove_database(dir: &Path, name: &str) {
    for suffix in ["", "-wal", "-shm"] {
        let path = dir.join(format!("{name}.db{suffix}"));
        if path.exists() {
            std::fs::remove_file(&path).expect("database file removed");
        }
    }
}

#[tokio::test]
async fn the_view_survives_a_restart_and_is_rebuilt_when_its_store_is_lost() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let system = spawn_system_in(dir.path()).await;
    let blog = Blog::of(&system);
    let before = write_some_blog(&blog).await;
    system.stop().await.expect("clean stop");

    let system = spawn_system_in(dir.path()).await;
    let blog = Blog::of(&system);
    assert_eq!(get_json(&blog, "/posts").await, before, "after a restart");
    system.stop().await.expect("clean stop");

    remove_database(dir.path(), "query");
    let system = spawn_system_in(dir.path()).await;
    let blog = Blog::of(&system);
    // Ready means caught up with the log: no waiting needed.
    assert_eq!(
        get_json(&blog, "/posts").await,
        before,
        "rebuilt from the event log"
    );
    system.stop().await.expect("clean stop");

    // The comments service forgets the posts it learned and its place in the log: it
    // learns them again from the log before it is ready, so a comment on an old post
    // is taken at once — not after `FLOTILLA_COMMENTS_POST_WAIT`, not a 404.
    let comments = storage::Database::connect(&format!(
        "sqlite://{}",
        dir.path().join("comments.db").display()
    ))
    .await
    .expect("the comments database");
    for forget in [
        "DELETE FROM comments_known_posts",
        "UPDATE comments_log_cursor SET log_seq = 0",
    ] {
        sqlx::query(forget)
            .execute(comments.pool())
            .await
            .expect(forget);
    }
    comments.close().await;
    let system = spawn_system_in(dir.path()).await;
    let blog = Blog::of(&system);
    let post = before
        .as_object()
        .and_then(|posts| posts.keys().next())
        .expect("a post")
        .clone();
    let started = std::time::Instant::now();
    let response = post_json(
        &blog,
        &format!("/posts/{post}/comments"),
        json!({ "content": "after the replay" }),
    )
    .await;
    assert_eq!(
        response.status(),
        201,
        "the post was learned again from the log"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "ready means caught up: {:?}",
        started.elapsed()
    );
    system.stop().await.expect("clean stop");
}

/// `flotilla up` without the per-client rate limit: 32 clients from one address are
/// not an attack here.
async fn spawn_unthrottled(dir: &Path) -> (flotilla::Running, Blog) {
    let mut args = flotilla::UpArgs {
        server: platform::config::ServerArgs {
            listen: "127.0.0.1:0".parse().expect("address"),
            data_dir: dir.to_owned(),
            http_threads: None,
            http_max_connections_per_client: None,
            http_body_timeout: std::time::Duration::from_secs(10),
            sched_policy: platform::sched::Policy::default(),
        },
        services: Default::default(),
    };
    args.services.gateway.gateway_rate_limit = 0;
    let running = flotilla::up(args, tokio_util::sync::CancellationToken::new())
        .await
        .expect("flotilla up starts");
    running
        .wait_ready(Duration::from_secs(30))
        .await
        .expect("system becomes ready");
    let blog = Blog {
        base: format!("http://{}", running.addr),
        client: test_support::http_client(),
    };
    (running, blog)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_clients_each_write_exactly_once() {
    const CLIENTS: usize = 32;
    const POSTS: usize = 500;
    const COMMENTS: usize = 1_000;
    let dir = tempfile::tempdir().expect("temporary directory");
    let (running, blog) = spawn_unthrottled(dir.path()).await;
    let started = std::time::Instant::now();

    let post_ids: Vec<String> = futures::future::join_all((0..CLIENTS).map(|client| {
        let system = &blog;
        async move {
            let mut ids = Vec::new();
            for n in (client..POSTS).step_by(CLIENTS) {
                ids.push(create_post(system, "/posts/create", &format!("post {n}")).await);
            }
            ids
        }
    }))
    .await
    .into_iter()
    .flatten()
    .collect();
    assert_eq!(post_ids.len(), POSTS);
    let posts_took = started.elapsed();

    let written: Vec<(String, String)> = futures::future::join_all((0..CLIENTS).map(|client| {
        let system = &blog;
        let post_ids = &post_ids;
        async move {
            let mut written = Vec::new();
            for n in (client..COMMENTS).step_by(CLIENTS) {
                let post = &post_ids[n % POSTS];
                let content = format!("comment {n}");
                let response = post_json(
                    system,
                    &format!("/posts/{post}/comments"),
                    json!({ "content": content }),
                )
                .await;
                assert_eq!(response.status(), 201, "comment {n}");
                written.push((post.clone(), content));
            }
            written
        }
    }))
    .await
    .into_iter()
    .flatten()
    .collect();
    let writes_took = started.elapsed();

    let view = view_until(&blog, "every post and moderated comment", |view| {
        view.as_object().is_some_and(|posts| {
            posts.len() == POSTS
                && posts
                    .values()
                    .map(|p| p["comments"].as_array().map_or(0, Vec::len))
                    .sum::<usize>()
                    == COMMENTS
                && posts.values().all(|p| {
                    p["comments"]
                        .as_array()
                        .is_some_and(|cs| cs.iter().all(|c| c["status"] == "approved"))
                })
        })
    })
    .await;
    let settled_took = started.elapsed();
    eprintln!(
        "{POSTS} posts + {COMMENTS} comments by {CLIENTS} clients: posts written in {posts_took:?}, comments by {writes_took:?}, all in the view after {settled_took:?}"
    );

    // Each exactly once: every written comment is in its post, no id twice.
    let mut expected: HashMap<String, Vec<String>> = HashMap::new();
    for (post, content) in written {
        expected.entry(post).or_default().push(content);
    }
    let mut comment_ids = HashSet::new();
    for post in &post_ids {
        let comments = view[post]["comments"].as_array().expect("comments");
        let mut contents: Vec<String> = comments
            .iter()
            .map(|c| c["content"].as_str().expect("content").to_owned())
            .collect();
        for comment in comments {
            assert!(
                comment_ids.insert(comment["id"].to_string()),
                "duplicate {comment}"
            );
        }
        contents.sort();
        let mut wanted = expected.remove(post).unwrap_or_default();
        wanted.sort();
        assert_eq!(contents, wanted, "comments of {post}");
    }
    assert_eq!(comment_ids.len(), COMMENTS);
    running.stop().await.expect("clean stop");
}

#[tokio::test]
async fn the_course_client_origin_may_call_the_gateway() {
    let system = spawn_system().await;
    let blog = Blog::of(&system);
    let preflight = blog
        .client
        .request(reqwest::Method::OPTIONS, blog.url("/posts/create"))
        .header("origin", "http://localhost:3000")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type")
        .send()
        .await
        .expect("sent");
    assert!(preflight.status().is_success(), "{}", preflight.status());
    assert_eq!(
        preflight.headers()["access-control-allow-origin"],
        "http://localhost:3000"
    );
    let listed = blog
        .client
        .get(blog.url("/posts"))
        .header("origin", "http://localhost:3000")
        .send()
        .await
        .expect("sent");
    assert_eq!(listed.status(), 200);
    assert_eq!(
        listed.headers()["access-control-allow-origin"],
        "http://localhost:3000"
    );
    let stranger = blog
        .client
        .get(blog.url("/posts"))
        .header("origin", "http://evil.example")
        .send()
        .await
        .expect("sent");
    assert!(
        !stranger
            .headers()
            .contains_key("access-control-allow-origin")
    );
    system.stop().await.expect("clean stop");
}

/// `POST /signup` then `POST /login`: a user who is not an admin.
async fn new_user(system: &TestSystem, email: &str) -> String {
    let password = "another-password";
    let response = system
        .client
        .post(system.url("/signup"))
        .json(&json!({"email": email, "password": password}))
        .send()
        .await
        .expect("signup request");
    assert_eq!(response.status(), 201, "signup of {email}");
    login(system, email, password).await
}

async fn assert_problem(response: reqwest::Response, status: u16, what: &str) -> Value {
    assert_eq!(response.status(), status, "{what}");
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json",
        "{what}"
    );
    response.json().await.expect("problem JSON")
}

#[tokio::test]
async fn only_an_admin_may_write_the_event_log_through_the_gateway() {
    let (system, admin, _dir) = spawn_with_admin().await;
    let blog = Blog::of(&system);
    let user = new_user(&system, "mallory@example.com").await;
    let post = create_post(&blog, "/posts/create", "Fruit").await;
    let response = post_json(
        &blog,
        &format!("/posts/{post}/comments"),
        json!({"content": "orange"}),
    )
    .await;
    assert_eq!(response.status(), 201);
    let view = view_until(&blog, "the comment rejected", |view| {
        comment_status(view, &post, "orange").as_deref() == Some("rejected")
    })
    .await;
    let comment = view[&post]["comments"][0]["id"]
        .as_str()
        .expect("comment id")
        .to_owned();

    // The attack of issue 14: approving one's own rejected comment by hand.
    let forged = json!({"type": "CommentModerated", "data": {
        "id": comment, "postId": post, "status": "approved", "content": "orange"}});
    let anonymous = blog
        .client
        .post(blog.url("/events"))
        .json(&forged)
        .send()
        .await
        .expect("sent");
    assert_eq!(anonymous.headers()["www-authenticate"], "Bearer");
    assert_problem(anonymous, 401, "no token").await;
    assert_problem(post_event(&blog, &user, &forged).await, 403, "not an admin").await;
    assert_problem(
        post_event(&blog, "not-a-token", &forged).await,
        401,
        "bad token",
    )
    .await;

    // An admin's events are checked as the services check their own input.
    let title =
        |title: String| json!({"type": "PostCreated", "data": {"id": "p-x", "title": title}});
    assert_problem(
        post_event(&blog, &admin, &title("x".repeat(200_000))).await,
        413,
        "a 200,000-character title (a body over 64 KiB)",
    )
    .await;
    for (bad, what) in [
        (title("x".repeat(10_001)), "a title over 10,000 characters"),
        (title("\u{200B}\u{200D}".into()), "an invisible title"),
        (title("nul\u{0}".into()), "a title with NUL"),
        (
            json!({"type": "PostCreated", "data": {"id": "p-x", "title": "t", "extra": 1}}),
            "an unknown field",
        ),
        (
            json!({"type": "CommentUpdated", "data": {"id": comment, "postId": post, "status": "approved"}}),
            "a missing field",
        ),
    ] {
        assert_problem(post_event(&blog, &admin, &bad).await, 400, what).await;
    }
    let response = post_event(&blog, &admin, &title("x".repeat(10_000))).await;
    assert_eq!(response.status(), 200, "the longest title");

    // Nothing the others sent reached the log: the admin's event is there, the forged
    // decision is not, and the comment is still rejected.
    let deadline = tokio::time::Instant::now() + SETTLE;
    let log = loop {
        let log = get_json(&blog, "/events").await;
        if log.to_string().contains("p-x") {
            break log;
        }
        assert!(tokio::time::Instant::now() < deadline, "log: {log}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let approvals = log
        .as_array()
        .expect("array")
        .iter()
        .filter(|e| e["data"]["status"] == "approved")
        .count();
    assert_eq!(approvals, 0, "{log}");
    let view = get_json(&blog, "/posts").await;
    assert_eq!(
        comment_status(&view, &post, "orange").as_deref(),
        Some("rejected")
    );
    system.stop().await.expect("clean stop");
}

#[tokio::test]
async fn titles_and_comments_need_visible_text_without_control_characters() {
    let system = spawn_system().await;
    let blog = Blog::of(&system);
    let post = create_post(&blog, "/posts/create", "Visible").await;
    for text in [
        "\u{200B}",
        "\u{200B}\u{200C}\u{200D}\u{2060}\u{FEFF}",
        " \u{00AD}\u{3164} ",
        "bell\u{7}",
        "nul\u{0}byte",
        "\u{1b}[31mred",
    ] {
        assert_problem(
            post_json(&blog, "/posts/create", json!({ "title": text })).await,
            400,
            &format!("title {text:?}"),
        )
        .await;
        assert_problem(
            post_json(
                &blog,
                &format!("/posts/{post}/comments"),
                json!({ "content": text }),
            )
            .await,
            400,
            &format!("comment {text:?}"),
        )
        .await;
    }
    // Lines, accents and emoji sequences are text.
    let response = post_json(
        &blog,
        &format!("/posts/{post}/comments"),
        json!({"content": "first line\nsecond: cafe\u{301} 👩\u{200D}💻"}),
    )
    .await;
    assert_eq!(response.status(), 201);
    system.stop().await.expect("clean stop");
}

/// Appends `count` events of `size` characters straight into the event-bus's log in
/// `dir` (its database must exist), as a log written before today's limits would hold.
async fn fill_event_log(dir: &Path, count: usize, size: usize) {
    let url = format!("sqlite://{}", dir.join("event-bus.db").display());
    let db = storage::Database::connect(&url).await.expect("connect");
    let data = json!({ "blob": "x".repeat(size) }).to_string();
    let mut tx = db.begin().await.expect("begin");
    for _ in 0..count {
        sqlx::query(
            "INSERT INTO event_log (seq, message_id, event_type, data, provides, appended_at) \
             SELECT COALESCE(MAX(seq), 0) + 1, 'filled-' || (COALESCE(MAX(seq), 0) + 1), 'Filler', ?, NULL, 0 FROM event_log",
        )
        .bind(&data)
        .execute(&mut *tx)
        .await
        .expect("insert");
    }
    tx.commit().await.expect("commit");
    db.close().await;
}

async fn events_page(system: &TestSystem, path: &str) -> (Vec<Value>, Option<String>) {
    let response = system
        .client
        .get(system.url(path))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 200, "GET {path}");
    let link = response
        .headers()
        .get("link")
        .map(|link| link.to_str().expect("text").to_owned());
    let page: Vec<Value> = response.json().await.expect("JSON");
    (page, link)
}

#[tokio::test]
async fn the_event_bus_port_pages_its_log_and_limits_events() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let bus = test_support::spawn_service(flotilla::ServiceName::EventBus, dir.path()).await;
    // Inside the cluster the port keeps the course's open contract: no token.
    let response = bus
        .client
        .post(bus.url("/events"))
        .json(&json!({"type": "Hello", "data": {}}))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 200);
    // …with the same limits.
    let response = bus
        .client
        .post(bus.url("/events"))
        .json(&json!({"type": "Hello", "data": {"x": "x".repeat(70_000)}}))
        .send()
        .await
        .expect("sent");
    assert_problem(response, 413, "a 70,000-byte event").await;
    let response = bus
        .client
        .post(bus.url("/events"))
        .json(&json!({"type": "PostCreated", "data": {"id": "p", "title": "\u{200B}"}}))
        .send()
        .await
        .expect("sent");
    assert_problem(response, 400, "an invisible title").await;

    // 1,500 events: the default answer is a page of 1,000 with a link to the rest.
    let deadline = tokio::time::Instant::now() + SETTLE;
    while events_page(&bus, "/events").await.0.is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "Hello never logged");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    fill_event_log(dir.path(), 1_499, 10).await;
    let (first, link) = events_page(&bus, "/events").await;
    assert_eq!(first.len(), 1_000);
    assert_eq!(
        link.as_deref(),
        Some("</events?after=1000&limit=1000>; rel=\"next\"")
    );
    let (rest, link) = events_page(&bus, "/events?after=1000&limit=1000").await;
    assert_eq!((rest.len(), link), (500, None));
    assert_eq!(rest[0]["seq"], 1001);
    for bad in ["/events?limit=1001", "/events?limit=0", "/events?after=x"] {
        let response = bus.client.get(bus.url(bad)).send().await.expect("sent");
        assert_problem(response, 400, bad).await;
    }

    // Large events end a page early: about 1 MiB of data per page.
    fill_event_log(dir.path(), 8, 300_000).await;
    let (page, link) = events_page(&bus, "/events?after=1500").await;
    assert_eq!(
        page.len(),
        4,
        "four events of 300,000 characters reach 1 MiB"
    );
    assert_eq!(
        link.as_deref(),
        Some("</events?after=1504&limit=1000>; rel=\"next\"")
    );
    bus.stop().await.expect("clean stop");
}

/// `GET /events?wait=S` at the end of the log answers as soon as an event is appended,
/// an empty page after S seconds if none is, and refuses a wait above 20 s.
#[tokio::test]
async fn a_reader_at_the_end_of_the_log_waits_for_the_next_event() {
    let system = spawn_system().await;
    let blog = Blog::of(&system);
    let first = create_post(&blog, "/posts/create", "first").await;
    let end = loop {
        let log = get_json(&blog, "/events").await;
        if let Some(last) = log.as_array().and_then(|events| events.last()) {
            assert_eq!(last["data"]["id"], first.as_str(), "{log}");
            break last["seq"].as_i64().expect("seq");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };

    // Nothing follows: the page is empty, after the wait and not before it.
    let asked = Instant::now();
    let page = get_json(&blog, &format!("/events?after={end}&wait=1")).await;
    assert_eq!(page, json!([]));
    let waited = asked.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
        "{waited:?}"
    );

    // A reader waiting up to 20 s is answered by the next append, with it.
    let waiting = {
        let blog = Blog::of(&system);
        tokio::spawn(async move {
            let asked = Instant::now();
            let page = get_json(&blog, &format!("/events?after={end}&wait=20")).await;
            (page, asked.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiting.is_finished(),
        "answered before anything was appended"
    );
    let second = create_post(&blog, "/posts/create", "second").await;
    let (page, waited) = waiting.await.expect("the reader");
    assert_eq!(page[0]["type"], "PostCreated", "{page}");
    assert_eq!(page[0]["data"]["id"], second.as_str(), "{page}");
    assert_eq!(page[0]["seq"], end + 1, "{page}");
    assert!(
        waited < Duration::from_secs(5),
        "woken by the append: {waited:?}"
    );

    for bad in ["/events?wait=21", "/events?wait=-1", "/events?wait=x"] {
        let response = blog.client.get(blog.url(bad)).send().await.expect("sent");
        assert_eq!(response.status(), 400, "{bad}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json",
            "{bad}"
        );
    }
    system.stop().await.expect("clean stop");
}

#[tokio::test]
async fn a_large_view_streams_and_is_rebuilt_across_pages_of_the_log() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let system = spawn_system_in(dir.path()).await;
    let blog = Blog::of(&system);
    // 250 posts of 9,000 characters: a log of more than two of its size-limited pages,
    // and a view larger than the rendering the query service keeps.
    let mut ids = Vec::new();
    for n in 0..250 {
        let title = format!("{n:03} {}", "t".repeat(8_996));
        ids.push(create_post(&blog, "/posts/create", &title).await);
    }
    let before = view_until(&blog, "250 posts", |view| {
        view.as_object().map(|o| o.len()) == Some(250)
    })
    .await;
    let response = blog
        .client
        .get(blog.url("/posts"))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 200);
    assert!(
        response.headers().get("content-length").is_none(),
        "a view over {} bytes is streamed",
        query::KEPT_RENDERING_BYTES
    );
    assert_eq!(response.json::<Value>().await.expect("JSON"), before);
    system.stop().await.expect("clean stop");

    remove_database(dir.path(), "query");
    let system = spawn_system_in(dir.path()).await;
    let blog = Blog::of(&system);
    // Ready means caught up with the whole log, every page of it.
    assert_eq!(get_json(&blog, "/posts").await, before);
    system.stop().await.expect("clean stop");
}
