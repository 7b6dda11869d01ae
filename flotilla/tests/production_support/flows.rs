//! The flows every production-mode test runs through the gateway, whatever the backends:
//! the media flow (an upload past S3's 5 MiB part size → one MP3 → whole and ranged
//! downloads → exactly one email) and the blog flow (a post, an approved and a rejected
//! comment, both moderated in the view).

use std::time::{Duration, Instant};

use super::{ADMIN_EMAIL, ADMIN_PASSWORD, System, wav};

/// What a flow needs of a running system.
pub struct Target<'a> {
    pub gateway: String,
    pub client: reqwest::Client,
    /// Every email the system wrote so far (as files).
    pub emails: Box<dyn Fn() -> Vec<String> + 'a>,
}

impl<'a> Target<'a> {
    /// A system of `serve` processes.
    pub fn of(system: &'a System) -> Target<'a> {
        Target {
            gateway: system.gateway.clone(),
            client: system.client.clone(),
            emails: Box::new(|| system.emails()),
        }
    }
}

async fn login(target: &Target<'_>) -> String {
    test_support::client::login(&target.client, &target.gateway, ADMIN_EMAIL, ADMIN_PASSWORD).await
}

pub async fn media_flow(target: &Target<'_>) {
    let token = login(target).await;
    // 70 s of 16-bit mono: 6.2 MB, more than one 5 MiB part.
    let video = wav(70);
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(video).file_name("long.wav"),
    );
    let receipt: serde_json::Value = target
        .client
        .post(format!("{}/upload", target.gateway))
        .bearer_auth(&token)
        .header("accept", "application/json")
        .multipart(form)
        .send()
        .await
        .expect("upload answers")
        .json()
        .await
        .expect("json receipt");
    let job_id = receipt["job_id"].as_str().expect("job id").to_owned();

    let deadline = Instant::now() + Duration::from_secs(180);
    let job = loop {
        let job: serde_json::Value = target
            .client
            .get(format!("{}/jobs/{job_id}", target.gateway))
            .bearer_auth(&token)
            .send()
            .await
            .expect("job answers")
            .json()
            .await
            .expect("json job");
        if job["status"] == "done" || job["status"] == "failed" {
            break job;
        }
        assert!(Instant::now() < deadline, "job not finished: {job}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(job["status"], "done", "{job}");
    let fid = job["mp3_fid"].as_str().expect("mp3 fid").to_owned();

    let get = |range: Option<&'static str>| {
        let mut request = target
            .client
            .get(format!("{}/download?fid={fid}", target.gateway))
            .bearer_auth(&token);
        if let Some(range) = range {
            request = request.header("range", range);
        }
        request.send()
    };
    let whole = get(None).await.expect("download answers");
    assert_eq!(whole.status(), 200);
    assert_eq!(whole.headers()["content-type"], "audio/mpeg");
    let whole = whole.bytes().await.expect("mp3 bytes");
    assert!(whole.len() > 200_000, "70 s of MP3: {} bytes", whole.len());
    let part = get(Some("bytes=100-4099")).await.expect("ranged download");
    assert_eq!(part.status(), 206);
    assert_eq!(part.bytes().await.expect("range"), whole[100..4100]);

    let deadline = Instant::now() + Duration::from_secs(60);
    let marker = format!("<mp3-{job_id}@flotilla.invalid>");
    loop {
        let emails: Vec<String> = (target.emails)()
            .into_iter()
            .filter(|email| email.contains(&marker))
            .collect();
        if !emails.is_empty() {
            // A moment more, to see that no second one follows.
            tokio::time::sleep(Duration::from_millis(500)).await;
            let again = (target.emails)()
                .into_iter()
                .filter(|email| email.contains(&marker))
                .count();
            assert_eq!(again, 1, "exactly one email for the job");
            break;
        }
        assert!(Instant::now() < deadline, "no email for job {job_id}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub async fn blog_flow(target: &Target<'_>) {
    let post: serde_json::Value = target
        .client
        .post(format!("{}/posts/create", target.gateway))
        .json(&serde_json::json!({"title": "On every backend"}))
        .send()
        .await
        .expect("post answers")
        .json()
        .await
        .expect("json post");
    let post_id = post["id"].as_str().expect("post id").to_owned();
    for content in ["a fine post", "I like oranges"] {
        let response = target
            .client
            .post(format!("{}/posts/{post_id}/comments", target.gateway))
            .json(&serde_json::json!({ "content": content }))
            .send()
            .await
            .expect("comment answers");
        assert_eq!(response.status(), 201);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let view: serde_json::Value = target
            .client
            .get(format!("{}/posts", target.gateway))
            .send()
            .await
            .expect("posts answer")
            .json()
            .await
            .expect("json view");
        let statuses: Vec<(String, String)> = view[&post_id]["comments"]
            .as_array()
            .map(|comments| {
                comments
                    .iter()
                    .map(|c| {
                        (
                            c["content"].as_str().unwrap_or_default().to_owned(),
                            c["status"].as_str().unwrap_or_default().to_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let expected = vec![
            ("a fine post".to_owned(), "approved".to_owned()),
            ("I like oranges".to_owned(), "rejected".to_owned()),
        ];
        if statuses == expected {
            assert_eq!(view[&post_id]["title"], "On every backend");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "view never moderated both comments: {statuses:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
