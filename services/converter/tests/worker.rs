//! The `video` consumer at the edges of its attempts: a job whose converter died during
//! every attempt is failed without converting again (the bus hands the message out once
//! more, exhausted: one `mp3` outcome, so one email); a job interrupted by shutdown is
//! requeued, even on the last attempt.

use std::time::Duration;

use bus::{Attempt, BusOptions, Message, Subscription};
use contracts::media::{CONVERTING, JobStatus, MP3, Mp3Message, VIDEO, VideoMessage};
use converter::{Converter, ConverterConfig, worker::Worker};
use futures::StreamExt;
use storage::blob::BlobStore;
use tokio_util::sync::CancellationToken;

/// A worker on an embedded bus and local blobs in a temporary directory, and a
/// subscription to what it publishes for media (`converting`, `mp3`).
struct Setup {
    dir: tempfile::TempDir,
    worker: Worker,
    media: bus::Subscriber,
}

impl Setup {
    async fn new(shutdown: CancellationToken) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let bus = bus::connect(&bus::default_url(dir.path()), BusOptions::default())
            .await
            .expect("embedded bus");
        let media = bus
            .subscribe(Subscription::new("media", MP3).also(CONVERTING))
            .await
            .expect("subscribe");
        let worker = Worker {
            bus,
            blobs: BlobStore::local(&dir.path().join("blobs")).expect("blob store"),
            converter: Converter::new(ConverterConfig::default(), shutdown),
            work_dir: dir.path().join("work"),
        };
        Self { dir, worker, media }
    }
}

/// The worker on the runner its service uses (a keyed store: no database).
fn runner(worker: Worker) -> bus::Runner<Worker> {
    bus::Runner::new(bus::Store::keyed(worker.bus.clone()), worker)
}

/// The next message the worker published for media (waited for up to 10 s), acknowledged.
async fn next_for_media(media: &mut bus::Subscriber) -> Message {
    let delivery = tokio::time::timeout(Duration::from_secs(10), media.next())
        .await
        .expect("a message in time")
        .expect("stream open")
        .expect("delivery");
    let message = delivery.message.clone();
    delivery.ack().await.expect("ack");
    message
}

/// Nothing more is published for media within half a second.
async fn assert_nothing_more_for_media(media: &mut bus::Subscriber) {
    let next = tokio::time::timeout(Duration::from_millis(500), media.next()).await;
    assert!(next.is_err(), "nothing else was published");
}

/// The `video` message of job `job_id` for the upload `video_fid`.
fn video_message(video_fid: &str, job_id: &str) -> Message {
    let video = VideoMessage {
        video_fid: video_fid.to_owned(),
        mp3_fid: None,
        username: "ada@example.com".to_owned(),
        job_id: job_id.to_owned(),
        filename: Some("clip.mp4".to_owned()),
    };
    Message::json(VIDEO, &video).expect("json")
}

#[tokio::test]
async fn an_exhausted_delivery_fails_the_job_without_converting_again() {
    let setup = Setup::new(CancellationToken::new()).await;
    let (worker, mut media) = (setup.worker, setup.media);
    let message = video_message("never-uploaded", "job-exhausted");

    runner(worker)
        .handle(&message, Attempt { number: 6, max: 5 })
        .await
        .expect("settled, not retried");

    // The first and only message is the outcome: no `converting`, no conversion (which
    // would have failed differently, on the missing upload).
    let message = next_for_media(&mut media).await;
    assert_eq!(message.routing_key, MP3);
    assert_eq!(message.id, "mp3-job-exhausted");
    let outcome: Mp3Message = message.decode().expect("mp3 message");
    assert_eq!(outcome.status, JobStatus::Failed);
    assert_eq!(outcome.job_id, "job-exhausted");
    assert_eq!(
        outcome.error.as_deref(),
        Some("the converter stopped during each of its 5 attempts")
    );
    assert_nothing_more_for_media(&mut media).await;
}

/// A conversion interrupted by shutdown during the last attempt is requeued as the same
/// attempt — neither failed (the job is fine) nor retried (which the bus would
/// dead-letter, leaving the job `converting`).
#[tokio::test]
async fn a_job_interrupted_by_shutdown_on_the_last_attempt_is_requeued_not_failed() {
    let shutdown = CancellationToken::new();
    shutdown.cancel();
    let setup = Setup::new(shutdown).await;
    let upload = setup.dir.path().join("upload.mp4");
    std::fs::write(&upload, b"a video, as far as this test goes").expect("write upload");
    setup
        .worker
        .blobs
        .put_file("video-1", &upload)
        .await
        .expect("store upload");
    let (worker, mut media) = (setup.worker, setup.media);
    let message = video_message("video-1", "job-interrupted");

    let settled = runner(worker)
        .handle(&message, Attempt { number: 5, max: 5 })
        .await;
    assert!(matches!(settled, Err(bus::Nack::Requeue(_))), "{settled:?}");

    // `converting`, and no outcome.
    assert_eq!(next_for_media(&mut media).await.routing_key, CONVERTING);
    assert_nothing_more_for_media(&mut media).await;
}

/// The converter has no inbox: a redelivered `video` redoes the job under the same keys.
/// Both outcomes carry the one message id derived from the job, so media's inbox applies
/// the job's outcome once (and notification's ledger sends one email).
#[tokio::test]
async fn a_redelivered_job_publishes_its_outcome_under_the_same_id() {
    let setup = Setup::new(CancellationToken::new()).await;
    let (worker, mut media) = (setup.worker, setup.media);
    let runner = runner(worker);
    let message = video_message("never-uploaded", "job-twice");
    for _ in 0..2 {
        runner
            .handle(&message, Attempt { number: 1, max: 5 })
            .await
            .expect("a missing upload is a result, not a retry");
    }
    // (The embedded bus keeps one message per id; a broker would deliver both.)
    let mut outcomes = Vec::new();
    while let Ok(Some(Ok(delivery))) =
        tokio::time::timeout(Duration::from_secs(2), media.next()).await
    {
        if delivery.message.routing_key == MP3 {
            outcomes.push(delivery.message.id.clone());
        }
        delivery.ack().await.expect("ack");
    }
    assert!(!outcomes.is_empty(), "an outcome was published");
    assert!(
        outcomes.iter().all(|id| id == "mp3-job-twice"),
        "{outcomes:?}"
    );
}
