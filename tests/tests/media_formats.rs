//! Conversions of the formats users upload, end to end through `flotilla up`: each ends
//! as a job `done` with an MP3 of the source's length, or `failed` with a reason — and
//! exactly one email either way.

mod media_support;

use std::time::Duration;

use media_support::*;

#[tokio::test]
async fn every_format_converts_or_fails_cleanly_with_one_email_each() {
    if !have_ffmpeg() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let fixtures = tempfile::tempdir().expect("tempdir");
    let f = fixtures.path();
    let tone = "sine=frequency=330:duration=2";
    let picture = "testsrc=size=160x120:rate=10:duration=2";
    let cases = [
        (
            make(
                f,
                "clip.mkv",
                &[
                    "-f",
                    "lavfi",
                    "-i",
                    tone,
                    "-f",
                    "lavfi",
                    "-i",
                    picture,
                    "-c:a",
                    "libvorbis",
                    "-c:v",
                    "mpeg4",
                    "-shortest",
                ],
            ),
            Ok(()),
        ),
        (
            make(
                f,
                "clip.webm",
                &["-f", "lavfi", "-i", tone, "-c:a", "libopus"],
            ),
            Ok(()),
        ),
        (
            make(
                f,
                "clip.wav",
                &["-f", "lavfi", "-i", tone, "-c:a", "pcm_s16le"],
            ),
            Ok(()),
        ),
        (
            make(
                f,
                "silent.mp4",
                &["-f", "lavfi", "-i", picture, "-c:v", "mpeg4"],
            ),
            Err("no audio track"),
        ),
        (
            {
                let path = f.join("notes.txt");
                std::fs::write(&path, "this is not a video\n".repeat(50)).expect("write");
                path
            },
            Err("not a media file"),
        ),
    ];

    let system = start(dir.path(), |_| {}).await;
    let token = login(&system, ADMIN_EMAIL, ADMIN_PASSWORD).await;
    let mut jobs = Vec::new();
    for (path, _) in &cases {
        jobs.push(upload_job(&system, &token, path).await);
    }
    for ((path, expected), job_id) in cases.iter().zip(&jobs) {
        let job = wait_for_job(&system, &token, job_id).await;
        let name = path.display();
        match expected {
            Ok(()) => {
                assert_eq!(job["status"], "done", "{name}: {job}");
                let fid = job["mp3_fid"].as_str().expect("mp3_fid");
                let mp3 = system
                    .client
                    .get(system.url(&format!("/download?fid={fid}")))
                    .bearer_auth(&token)
                    .send()
                    .await
                    .expect("download")
                    .bytes()
                    .await
                    .expect("bytes");
                let out = f.join(format!("{fid}.mp3"));
                std::fs::write(&out, &mp3).expect("write");
                assert_eq!(audio_codec(&out), "mp3", "{name}");
                let (source, converted) = (audio_duration(path), audio_duration(&out));
                assert!(
                    (source - converted).abs() <= 0.1,
                    "{name}: source {source} s, mp3 {converted} s"
                );
            }
            Err(reason) => {
                assert_eq!(job["status"], "failed", "{name}: {job}");
                assert_eq!(job["mp3_fid"], serde_json::Value::Null, "{name}");
                let error = job["error"].as_str().expect("error");
                assert!(error.contains(reason), "{name}: {error}");
            }
        }
    }

    // One email per job, and the right kind.
    for ((_, expected), job_id) in cases.iter().zip(&jobs) {
        let email = wait_for_email(system.data_dir(), job_id).await;
        match expected {
            Ok(()) => assert!(email.contains("Subject: Your MP3 is ready"), "{email}"),
            Err(reason) => {
                assert!(
                    email.contains("Subject: Your MP3 could not be made"),
                    "{email}"
                );
                assert!(said_in(&email, reason), "{email}");
            }
        }
    }
    // Exactly one email per job: files are named after the job, so count what the
    // notification service says it sent, too.
    assert_eq!(emails(system.data_dir()).len(), cases.len());
    let metrics = system
        .client
        .get(system.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    let sent: f64 = metrics
        .lines()
        .filter(|line| line.starts_with("notification_emails_sent_total"))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(sent as usize, cases.len(), "{metrics}");
    system.stop().await.expect("stops");
}

/// Trouble that looks transient but never clears — here the converter cannot make its
/// scratch directory, because a file sits where it goes — ends the job `failed` on the
/// bus's last attempt, with the reason and exactly one email, instead of leaving it
/// `converting` forever with the message parked among the dead letters.
#[tokio::test]
async fn a_job_that_fails_on_every_attempt_ends_failed_with_one_email() {
    if !have_ffmpeg() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let fixtures = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("converter-work"), "in the way").expect("block scratch");
    let system = start(dir.path(), |_| {}).await;
    let token = login(&system, ADMIN_EMAIL, ADMIN_PASSWORD).await;
    let video = mp4_with_aac(fixtures.path(), 1);
    let job_id = upload_job(&system, &token, &video).await;

    let job = wait_for_job(&system, &token, &job_id).await;
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(job["mp3_fid"], serde_json::Value::Null);
    let error = job["error"].as_str().expect("error");
    assert!(
        error.starts_with("gave up after 5 attempts: scratch directory"),
        "a reason a person can act on: {error}"
    );
    let email = wait_for_email(system.data_dir(), &job_id).await;
    assert!(
        email.contains("Subject: Your MP3 could not be made"),
        "{email}"
    );
    assert!(said_in(&email, "gave up after 5 attempts"), "{email}");
    // Settled, not parked: nothing more happens to the job.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(emails(system.data_dir()).len(), 1, "exactly one email");
    let again = wait_for_job(&system, &token, &job_id).await;
    assert_eq!(again["error"], job["error"]);
    system.stop().await.expect("stops");
}

/// Issue 14, items 2 and 10, with ffmpeg on PATH so the fallback is active: an upload
/// that is an ffconcat script naming another user's upload, or an HLS playlist naming a
/// media file elsewhere on disk, must not convert what it names; it fails as "not a
/// media file", as random bytes do — each with exactly one email.
#[tokio::test]
async fn playlists_scripts_and_noise_are_not_media_with_one_email_each() {
    if !have_ffmpeg() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let fixtures = tempfile::tempdir().expect("tempdir");
    let f = fixtures.path();
    let system = start(dir.path(), |_| {}).await;
    let admin = login(&system, ADMIN_EMAIL, ADMIN_PASSWORD).await;

    // Another user's upload, converted as usual: its blob is `video-<job>`.
    let victim = mp4_with_aac(f, 2);
    let victim_job = upload_job(&system, &admin, &victim).await;
    let job = wait_for_job(&system, &admin, &victim_job).await;
    assert_eq!(job["status"], "done", "{job}");

    let attacker = new_user(&system, "mallory@example.com").await;
    let concat = f.join("concat.txt");
    std::fs::write(
        &concat,
        format!("ffconcat version 1.0\nfile video-{victim_job}\n"),
    )
    .expect("write");
    let elsewhere = tempfile::tempdir().expect("tempdir");
    let private = mp4_with_aac(elsewhere.path(), 2);
    let playlist = f.join("playlist.m3u8");
    std::fs::write(
        &playlist,
        format!(
            "#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:2,\n{}\n#EXT-X-ENDLIST\n",
            private.display()
        ),
    )
    .expect("write");
    let noise = f.join("noise.bin");
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let bytes: Vec<u8> = (0..256 * 1024)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect();
    std::fs::write(&noise, bytes).expect("write");

    let mut jobs = Vec::new();
    for path in [&concat, &playlist, &noise] {
        jobs.push((path, upload_job(&system, &attacker, path).await));
    }
    for (path, job_id) in &jobs {
        let job = wait_for_job(&system, &attacker, job_id).await;
        let name = path.display();
        assert_eq!(job["status"], "failed", "{name}: {job}");
        assert_eq!(job["mp3_fid"], serde_json::Value::Null, "{name}");
        assert_eq!(job["error"], "not a media file", "{name}: {job}");
        let email = wait_for_email(system.data_dir(), job_id).await;
        assert!(
            email.contains("Subject: Your MP3 could not be made"),
            "{email}"
        );
        // The email words the reason as a sentence ("Not a media file.").
        assert!(email.to_lowercase().contains("not a media file"), "{email}");
    }
    // The victim's one email and one per failed job, no more: give a duplicate time
    // to show up.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(emails(system.data_dir()).len(), 1 + jobs.len());
    system.stop().await.expect("stops");
}

/// The email says `words` (as a sentence: any letter case; quoted-printable soft line
/// breaks joined, as a mail reader shows the text).
fn said_in(email: &str, words: &str) -> bool {
    email
        .replace("=\r\n", "")
        .replace("=\n", "")
        .to_lowercase()
        .contains(&words.to_lowercase())
}
