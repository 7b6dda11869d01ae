//! The media pipeline end to end through the gateway of `flotilla up`: the reference
//! curl flow (login, upload, email with the fid, download a valid MP3), who may see
//! what, and the refusals (400, 401, 413, 416).

mod media_support;

use media_support::*;
use reqwest::StatusCode;
use serde_json::Value;

#[tokio::test]
async fn the_reference_flow_uploads_emails_and_downloads_an_mp3() {
    if !have_ffmpeg() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let fixtures = tempfile::tempdir().expect("tempdir");
    let system = start(dir.path(), |_| {}).await;
    let video = mp4_with_aac(fixtures.path(), 3);

    // curl -X POST http://localhost:8080/login -u georgio@email.com:Admin123
    let token = login(&system, ADMIN_EMAIL, ADMIN_PASSWORD).await;
    // curl -X POST -F 'file=@./video.mp4' -H 'Authorization: Bearer …' …/upload
    let response = upload(&system, &token, &video, false).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .expect("ascii")
            .starts_with("text/plain")
    );
    assert_eq!(response.text().await.expect("body"), "success!");

    // The email names the fid.
    let email = wait_for_email(system.data_dir(), "is now ready!").await;
    assert!(email.contains("Subject: Your MP3 is ready"), "{email}");
    assert!(email.contains(&format!("To: {ADMIN_EMAIL}")), "{email}");
    let fid = fid_in(&email);

    // curl --output mp3_download.mp3 -X GET -H 'Authorization: Bearer …' "…/download?fid=$FID"
    let response = system
        .client
        .get(system.url(&format!("/download?fid={fid}")))
        .bearer_auth(&token)
        .send()
        .await
        .expect("download");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "audio/mpeg");
    // Named after the upload (video.mp4 → video.mp3), not after the fid.
    assert_eq!(
        response.headers()["content-disposition"],
        "attachment; filename=\"video.mp3\"; filename*=UTF-8''video.mp3"
    );
    assert_eq!(response.headers()["accept-ranges"], "bytes");
    let mp3 = response.bytes().await.expect("mp3 bytes");
    let out = fixtures.path().join("mp3_download.mp3");
    std::fs::write(&out, &mp3).expect("write mp3");
    assert_eq!(audio_codec(&out), "mp3");
    let (source, converted) = (audio_duration(&video), audio_duration(&out));
    assert!(
        (source - converted).abs() <= 0.1,
        "source audio {source} s, mp3 {converted} s"
    );

    // The job list shows it done, with the fid.
    let jobs: Value = system
        .client
        .get(system.url("/jobs"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("jobs")
        .json()
        .await
        .expect("jobs json");
    let jobs = jobs.as_array().expect("a list");
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0]["status"], "done");
    assert_eq!(jobs[0]["mp3_fid"], fid);
    assert_eq!(jobs[0]["filename"], "video.mp4");

    // Ranges: the first 100 bytes, the last 10, and one past the end.
    let ranged = |range: String| {
        system
            .client
            .get(system.url(&format!("/download?fid={fid}")))
            .bearer_auth(&token)
            .header("range", range)
            .send()
    };
    let part = ranged("bytes=0-99".into()).await.expect("range");
    assert_eq!(part.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        part.headers()["content-range"],
        format!("bytes 0-99/{}", mp3.len())
    );
    assert_eq!(part.bytes().await.expect("bytes"), mp3.slice(0..100));
    let tail = ranged("bytes=-10".into()).await.expect("range");
    assert_eq!(tail.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        tail.bytes().await.expect("bytes"),
        mp3.slice(mp3.len() - 10..)
    );
    let past = ranged(format!("bytes={}-", mp3.len()))
        .await
        .expect("range");
    assert_eq!(past.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(
        past.headers()["content-range"],
        format!("bytes */{}", mp3.len())
    );

    // Exactly one email for the one upload.
    assert_eq!(emails(system.data_dir()).len(), 1);
    system.stop().await.expect("stops");
}

#[tokio::test]
async fn another_user_cannot_list_see_or_download_a_job_but_an_admin_can() {
    if !have_ffmpeg() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let fixtures = tempfile::tempdir().expect("tempdir");
    let system = start(dir.path(), |_| {}).await;
    let video = mp4_with_aac(fixtures.path(), 1);

    let alice = new_user(&system, "alice@example.com").await;
    let bob = new_user(&system, "bob@example.com").await;
    let admin = login(&system, ADMIN_EMAIL, ADMIN_PASSWORD).await;
    let job_id = upload_job(&system, &alice, &video).await;
    let job = wait_for_job(&system, &alice, &job_id).await;
    assert_eq!(job["status"], "done", "{job}");
    let fid = job["mp3_fid"].as_str().expect("mp3_fid").to_owned();

    let get = |path: String, token: String| {
        let request = system.client.get(system.url(&path)).bearer_auth(token);
        async move { request.send().await.expect("request") }
    };
    // Bob sees nothing of it.
    let listed: Value = get("/jobs".into(), bob.clone())
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(listed, serde_json::json!([]));
    let seen = get(format!("/jobs/{job_id}"), bob.clone()).await;
    assert_eq!(seen.status(), StatusCode::NOT_FOUND);
    let downloaded = get(format!("/download?fid={fid}"), bob.clone()).await;
    assert_eq!(downloaded.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        downloaded.headers()["content-type"],
        "application/problem+json"
    );
    // The admin may read everything; the owner too.
    let seen = get(format!("/jobs/{job_id}"), admin.clone()).await;
    assert_eq!(seen.status(), StatusCode::OK);
    let downloaded = get(format!("/download?fid={fid}"), admin).await;
    assert_eq!(downloaded.status(), StatusCode::OK);
    let downloaded = get(format!("/download?fid={fid}"), alice.clone()).await;
    assert_eq!(downloaded.status(), StatusCode::OK);
    // Unknown fids and jobs are 404 for everyone; a missing fid is 400.
    let unknown = get("/download?fid=mp3-nope".into(), alice.clone()).await;
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    let missing = get("/download".into(), alice.clone()).await;
    assert_eq!(missing.status(), StatusCode::BAD_REQUEST);
    let unknown = get("/jobs/nope".into(), alice).await;
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    system.stop().await.expect("stops");
}

#[tokio::test]
async fn bad_uploads_are_refused_and_leave_nothing_behind() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fixtures = tempfile::tempdir().expect("tempdir");
    let limit: u64 = 1 << 20;
    let system = start(dir.path(), |services| {
        services.media.max_upload_bytes = limit;
    })
    .await;
    let token = login(&system, ADMIN_EMAIL, ADMIN_PASSWORD).await;
    let small = fixtures.path().join("small.bin");
    std::fs::write(&small, vec![1u8; 1000]).expect("write");

    // No token, and a bad one: 401.
    let response = system
        .client
        .post(system.url("/upload"))
        .multipart(reqwest::multipart::Form::new().text("x", "y"))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let response = upload(&system, "not-a-token", &small, false).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);

    let post = |form: reqwest::multipart::Form| {
        system
            .client
            .post(system.url("/upload"))
            .bearer_auth(&token)
            .multipart(form)
            .send()
    };
    let file_part =
        |name: &str| reqwest::multipart::Part::bytes(vec![2u8; 100]).file_name(name.to_owned());
    // No file part, two file parts, not multipart at all, an empty file: 400.
    let none = post(reqwest::multipart::Form::new().text("title", "no file"))
        .await
        .expect("request");
    assert_eq!(none.status(), StatusCode::BAD_REQUEST);
    let two = post(
        reqwest::multipart::Form::new()
            .part("a", file_part("a.mp4"))
            .part("b", file_part("b.mp4")),
    )
    .await
    .expect("request");
    assert_eq!(two.status(), StatusCode::BAD_REQUEST);
    let problem: Value = two.json().await.expect("problem json");
    assert!(
        problem["detail"]
            .as_str()
            .is_some_and(|d| d.contains("more than one file")),
        "{problem}"
    );
    let plain = system
        .client
        .post(system.url("/upload"))
        .bearer_auth(&token)
        .body("just bytes")
        .send()
        .await
        .expect("request");
    assert_eq!(plain.status(), StatusCode::BAD_REQUEST);
    let empty = post(reqwest::multipart::Form::new().part(
        "f",
        reqwest::multipart::Part::bytes(Vec::new()).file_name("e.mp4"),
    ))
    .await
    .expect("request");
    assert_eq!(empty.status(), StatusCode::BAD_REQUEST);

    // Over the limit: 413, whether the length is announced or only counted.
    let big = fixtures.path().join("big.bin");
    std::fs::write(&big, vec![3u8; (limit + 1) as usize]).expect("write");
    let announced = upload(&system, &token, &big, false).await;
    assert_eq!(announced.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..20).map(|_| Ok(vec![4u8; 64 * 1024])).collect();
    let streamed =
        reqwest::multipart::Part::stream(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
            .file_name("chunked.mp4");
    let counted = post(reqwest::multipart::Form::new().part("file", streamed))
        .await
        .expect("request");
    assert_eq!(counted.status(), StatusCode::PAYLOAD_TOO_LARGE);

    // Nothing was accepted: no job, no blob.
    let jobs: Value = system
        .client
        .get(system.url("/jobs"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("jobs")
        .json()
        .await
        .expect("json");
    assert_eq!(jobs, serde_json::json!([]));
    let blobs: Vec<_> = std::fs::read_dir(system.data_dir().join("blobs"))
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.file_name())
                .collect()
        })
        .unwrap_or_default();
    assert!(blobs.is_empty(), "left behind: {blobs:?}");

    // A file within the limit is taken.
    let response = upload(&system, &token, &small, false).await;
    assert_eq!(response.status(), StatusCode::OK);
    system.stop().await.expect("stops");
}
