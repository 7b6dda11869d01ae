//! The `video` consumer settling a job whose converter died during every attempt: the
//! bus hands the message out once more, exhausted, and the worker fails the job (one
//! `mp3` outcome, so one email) without converting again.

use std::time::Duration;

use bus::{Attempt, BusOptions, Message, Subscription};
use contracts::media::{CONVERTING, JobStatus, MP3, Mp3Message, VIDEO, VideoMessage};
use converter::{Converter, ConverterConfig, worker::Worker};
use futures::StreamExt;
use storage::blob::BlobStore;
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn an_exhausted_delivery_fails_the_job_without_converting_again() {
    let dir = tempfile::tempdir().expect("temp dir");
    let bus = bus::connect(&bus::default_url(dir.path()), BusOptions::default())
        .await
        .expect("embedded bus");
    let mut media = bus
        .subscribe(Subscription::new("media", MP3).also(CONVERTING))
        .await
        .expect("subscribe");
    let worker = Worker {
        bus: bus.clone(),
        blobs: BlobStore::local(&dir.path().join("blobs")).expect("blob store"),
        converter: Converter::new(ConverterConfig::default(), CancellationToken::new()),
        work_dir: dir.path().join("work"),
    };
    let video = VideoMessage {
        video_fid: "never-uploaded".to_owned(),
        mp3_fid: None,
        username: "ada@example.com".to_owned(),
        job_id: "job-exhausted".to_owned(),
    };
    let message = Message::json(VIDEO, &video).expect("json");

    worker
        .handle(&message, Attempt { number: 6, max: 5 })
        .await
        .expect("settled, not retried");

    // The first and only message is the outcome: no `converting`, no conversion (which
    // would have failed differently, on the missing upload).
    let delivery = tokio::time::timeout(Duration::from_secs(10), media.next())
        .await
        .expect("an outcome in time")
        .expect("stream open")
        .expect("delivery");
    assert_eq!(delivery.message.routing_key, MP3);
    assert_eq!(delivery.message.id, "mp3-job-exhausted");
    let outcome: Mp3Message = delivery.message.decode().expect("mp3 message");
    assert_eq!(outcome.status, JobStatus::Failed);
    assert_eq!(outcome.job_id, "job-exhausted");
    assert_eq!(
        outcome.error.as_deref(),
        Some("the converter stopped during each of its 5 attempts")
    );
    delivery.ack().await.expect("ack");
    assert!(
        tokio::time::timeout(Duration::from_millis(500), media.next())
            .await
            .is_err(),
        "nothing else was published"
    );
}
