//! Full disks. A full blob disk during an upload: the client gets a clear 507 problem,
//! nothing is left behind (no partial file, no job), and uploads work again once there is
//! room. A full database disk: writes answer 507 (not 500), the process stays up, and
//! once space returns writes succeed again. The disks are small tmpfs mounts made by the
//! test (root only; under `CI=true` a failed mount fails the test, elsewhere it is
//! skipped with a note).

mod media_support;

use media_support::*;
use reqwest::StatusCode;
use serde_json::Value;
use test_support::Tmpfs;

/// The files in a directory, hidden staging files included.
fn files_in(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .expect("read the directory")
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect()
}

#[tokio::test]
async fn a_full_blob_disk_answers_507_keeps_nothing_and_recovers() {
    if !have_ffmpeg() {
        return;
    }
    let Some(disk) = Tmpfs::mount("3m") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let fixtures = tempfile::tempdir().expect("tempdir");
    let blob_url = format!("file://{}", disk.path().display());
    let system = start(dir.path(), |services| {
        services.blobs.blob_url = Some(blob_url);
    })
    .await;
    let token = login(&system, ADMIN_EMAIL, ADMIN_PASSWORD).await;

    // 5 MB does not fit on a 3 MiB disk.
    let big = fixtures.path().join("big.mp4");
    std::fs::write(&big, vec![0x5a_u8; 5_000_000]).expect("write fixture");
    let response = upload(&system, &token, &big, true).await;
    assert_eq!(response.status(), StatusCode::INSUFFICIENT_STORAGE);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    assert!(response.headers().contains_key("retry-after"));
    let problem: Value = response.json().await.expect("problem json");
    assert_eq!(problem["status"], 507);
    assert!(
        problem["detail"]
            .as_str()
            .is_some_and(|d| d.contains("no room") && d.contains("nothing was kept")),
        "{problem}"
    );
    assert!(
        files_in(disk.path()).is_empty(),
        "no partial file is left: {:?}",
        files_in(disk.path())
    );
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
    assert_eq!(jobs, serde_json::json!([]), "no job for a refused upload");

    // The space the refused upload took is free again: a real video goes through.
    let video = mp4_with_aac(fixtures.path(), 1);
    let job_id = upload_job(&system, &token, &video).await;
    let job = wait_for_job(&system, &token, &job_id).await;
    assert_eq!(job["status"], "done", "{job}");
}

#[tokio::test]
async fn a_full_database_disk_answers_507_and_writes_resume_when_space_returns() {
    let Some(disk) = Tmpfs::mount("48m") else {
        return;
    };
    // The whole data directory — every service's SQLite database and the embedded bus —
    // on the small disk.
    let system = start(disk.path(), |_| {}).await;
    let signup = |email: &str| {
        system
            .client
            .post(system.url("/signup"))
            .json(&serde_json::json!({"email": email, "password": "a-long-password"}))
            .send()
    };
    let create_post = |title: &str| {
        system
            .client
            .post(system.url("/posts/create"))
            .json(&serde_json::json!({ "title": title }))
            .send()
    };
    assert_eq!(
        signup("before@example.com").await.expect("signup").status(),
        StatusCode::CREATED
    );

    let filler = disk.fill();
    // Writes now fail as the server's condition, clearly, and keep failing that way.
    let mut refused = 0;
    for attempt in 0..20 {
        let response = signup(&format!("during{attempt}@example.com"))
            .await
            .expect("signup answers");
        let status = response.status();
        if status == StatusCode::CREATED {
            // SQLite may still have room in a page; the next ones will not.
            continue;
        }
        assert_eq!(
            status,
            StatusCode::INSUFFICIENT_STORAGE,
            "{:?}",
            response.text().await
        );
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
        let problem: Value = response.json().await.expect("problem json");
        assert!(
            problem["detail"]
                .as_str()
                .is_some_and(|d| d.contains("out of storage")),
            "{problem}"
        );
        refused += 1;
        if refused == 3 {
            break;
        }
    }
    assert_eq!(
        refused, 3,
        "signups on a full disk must be refused with 507"
    );
    let post = create_post("on a full disk").await.expect("post answers");
    assert!(
        post.status() == StatusCode::INSUFFICIENT_STORAGE || post.status() == StatusCode::CREATED,
        "a post on a full disk: {} {:?}",
        post.status(),
        post.text().await
    );

    // Space returns: writes succeed again, without a restart.
    std::fs::remove_file(&filler).expect("remove the filler");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let status = signup("after@example.com").await.expect("signup").status();
        if status == StatusCode::CREATED {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "signups did not resume after space returned: {status}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert_eq!(
        create_post("after the disk emptied")
            .await
            .expect("post")
            .status(),
        StatusCode::CREATED
    );
    let health = system
        .client
        .get(system.url("/readyz"))
        .send()
        .await
        .expect("readyz");
    assert_eq!(health.status(), StatusCode::OK);
    system.stop().await.expect("stops");
}
