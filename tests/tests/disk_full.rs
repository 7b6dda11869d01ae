//! A full blob disk during an upload: the client gets a clear 507 problem, nothing is
//! left behind (no partial file, no job), and uploads work again once there is room.
//! The blob store is a small tmpfs mounted by the test (root only; under `CI=true` a
//! failed mount fails the test, elsewhere it is skipped with a note).

mod media_support;

use std::{path::Path, process::Command};

use media_support::*;
use reqwest::StatusCode;
use serde_json::Value;

/// A tmpfs of `size` mounted on a fresh directory, unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().expect("mount point");
        let mounted = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir.path())
            .output();
        match mounted {
            Ok(output) if output.status.success() => Some(Tmpfs { dir }),
            outcome => {
                let why = match outcome {
                    Ok(output) => String::from_utf8_lossy(&output.stderr).trim().to_owned(),
                    Err(error) => error.to_string(),
                };
                if std::env::var("CI").is_ok_and(|v| v == "true") {
                    panic!("cannot mount a tmpfs under CI=true (the test needs root): {why}");
                }
                eprintln!("skipped: cannot mount a tmpfs (the test needs root): {why}");
                None
            }
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The files in the mount, hidden staging files included.
    fn files(&self) -> Vec<String> {
        std::fs::read_dir(self.path())
            .expect("read the mount")
            .filter_map(|entry| entry.ok())
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .collect()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
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
        disk.files().is_empty(),
        "no partial file is left: {:?}",
        disk.files()
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
