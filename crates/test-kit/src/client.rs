//! What the system tests do as a client of a running gateway, written once: log in, read
//! a Server-Sent Events stream until it holds what the test waits for, read or poll the
//! system view (`GET /admin/system`), find and replay a dead letter.

use std::time::{Duration, Instant};

use serde_json::Value;

/// `POST {base}/login -u EMAIL:PASSWORD` → the token; panics unless it answers 200.
pub async fn login(client: &reqwest::Client, base: &str, email: &str, password: &str) -> String {
    let response = client
        .post(format!("{base}/login"))
        .basic_auth(email, Some(password))
        .send()
        .await
        .expect("login request");
    assert_eq!(response.status(), 200, "login of {email}");
    response.text().await.expect("token").trim().to_owned()
}

/// Reads the event stream into `seen` until `done(seen)`; panics after `patience` or
/// when the stream ends first.
pub async fn read_until(
    response: &mut reqwest::Response,
    seen: &mut String,
    patience: Duration,
    done: impl Fn(&str) -> bool,
) {
    let deadline = Instant::now() + patience;
    while !done(seen) {
        let left = deadline.saturating_duration_since(Instant::now());
        let chunk = tokio::time::timeout(left, response.chunk())
            .await
            .unwrap_or_else(|_| panic!("not in the stream in time: {seen}"))
            .expect("stream read");
        let chunk = chunk.unwrap_or_else(|| panic!("the stream ended: {seen}"));
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
}

/// The `data` of every `event: NAME` in the stream so far, as JSON.
pub fn events(seen: &str, name: &str) -> Vec<Value> {
    seen.split("\n\n")
        .filter(|block| block.lines().any(|l| l == format!("event: {name}")))
        .filter_map(|block| {
            let data: String = block
                .lines()
                .filter_map(|l| l.strip_prefix("data: "))
                .collect();
            serde_json::from_str(&data).ok()
        })
        .collect()
}

/// `GET {base}/admin/system` with `token`; panics unless it answers 200 with JSON.
pub async fn system_view(client: &reqwest::Client, base: &str, token: &str) -> Value {
    let response = client
        .get(format!("{base}/admin/system"))
        .bearer_auth(token)
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 200);
    response.json().await.expect("json")
}

/// Polls the system view until `wanted` holds; returns how long it took. Panics with the
/// last view after `patience`.
pub async fn system_view_until(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    patience: Duration,
    wanted: impl Fn(&Value) -> bool,
) -> Duration {
    let started = Instant::now();
    loop {
        let view = system_view(client, base, token).await;
        if wanted(&view) {
            return started.elapsed();
        }
        assert!(started.elapsed() < patience, "not in time: {view}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls `GET {base}/admin/dead-letters?group=GROUP` until the message `id` is listed;
/// returns its entry. Panics with the last listing after 30 s.
pub async fn dead_letter(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    group: &str,
    id: &str,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let listed = json(
            client
                .get(format!("{base}/admin/dead-letters?group={group}"))
                .bearer_auth(token),
        )
        .await;
        if let Some(letter) = listed["dead_letters"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|l| l["id"] == id)
        {
            return letter.clone();
        }
        assert!(Instant::now() < deadline, "no dead letter {id}: {listed}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `POST {base}/admin/dead-letters/replay` of the dead letters `ids` of `group`; returns
/// how many were replayed.
pub async fn replay(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    group: &str,
    ids: &[&str],
) -> Value {
    let answer = json(
        client
            .post(format!("{base}/admin/dead-letters/replay"))
            .bearer_auth(token)
            .json(&serde_json::json!({"group": group, "ids": ids})),
    )
    .await;
    answer["replayed"].clone()
}

/// Sends `request`; its answer's body as JSON.
async fn json(request: reqwest::RequestBuilder) -> Value {
    let response = request.send().await.expect("sent");
    response.json().await.expect("json")
}

/// The instances of `service` in a system view.
pub fn instances<'a>(view: &'a Value, service: &str) -> Vec<&'a Value> {
    view["services"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["name"] == service)
        .flat_map(|s| s["instances"].as_array().into_iter().flatten())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_the_data_of_the_named_blocks() {
        let seen = "event: a\ndata: {\"n\":1}\n\nevent: b\ndata: {\"n\":2}\n\n\
                    event: a\ndata: {\"n\":\ndata: 3}\n\nevent: a\ndata: not json\n\n";
        assert_eq!(
            events(seen, "a"),
            vec![serde_json::json!({"n": 1}), serde_json::json!({"n": 3})]
        );
    }

    #[test]
    fn instances_are_those_of_the_named_service() {
        let view = serde_json::json!({"services": [
            {"name": "media", "instances": [{"id": "m1"}]},
            {"name": "converter", "instances": [{"id": "c1"}, {"id": "c2"}]},
        ]});
        let ids: Vec<&Value> = instances(&view, "converter")
            .into_iter()
            .map(|i| &i["id"])
            .collect();
        assert_eq!(ids, ["c1", "c2"]);
        assert!(instances(&view, "query").is_empty());
    }
}
