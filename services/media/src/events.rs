//! The pipeline's messages moving jobs along: `converting` (a worker started) and `mp3`
//! (done or failed). Each is applied in one transaction with its inbox record, so a
//! redelivered message is recognised and skipped; the status transitions only move
//! forward besides, so even a message applied twice could not undo anything.

use std::sync::Arc;

use bus::{Consumer, EventBus, Inbox, Message, Nack, Subscription};
use contracts::media::{CONVERTING, ConversionStarted, JobStatus, MP3, Mp3Message};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::jobs::JobStore;

/// The consumer group (and RabbitMQ queue) of the media service.
pub const GROUP: &str = "media-jobs";

/// Starts consuming `converting` and `mp3`.
pub fn spawn(
    bus: Arc<dyn EventBus>,
    jobs: JobStore,
    inbox: Inbox,
    tasks: &TaskTracker,
    shutdown: CancellationToken,
) {
    let subscription = Subscription::new(GROUP, CONVERTING).also(MP3);
    let handler = move |message: Message| {
        let jobs = jobs.clone();
        async move { apply(&jobs, &inbox, &message).await }
    };
    let consumer = Consumer::new(bus, subscription).run(shutdown, handler);
    tasks.spawn(async move {
        if let Err(error) = consumer.await {
            tracing::error!(%error, "media job consumer stopped abnormally");
        }
    });
}

/// Applies one message; an undecodable body can never succeed and is dead-lettered.
pub async fn apply(jobs: &JobStore, inbox: &Inbox, message: &Message) -> Result<(), Nack> {
    let retry = |error: &dyn std::fmt::Display| Nack::Retry(error.to_string());
    let mut tx = jobs.database().begin().await.map_err(|e| retry(&e))?;
    if !inbox
        .record(&mut tx, GROUP, &message.id)
        .await
        .map_err(|e| retry(&e))?
    {
        tracing::debug!(id = %message.id, "already applied; skipped");
        return Ok(());
    }
    let changed = match message.routing_key.as_str() {
        CONVERTING => {
            let started: ConversionStarted = message
                .decode()
                .map_err(|e| Nack::Reject(format!("bad {CONVERTING} body: {e}")))?;
            jobs.mark_converting(&mut tx, &started.job_id)
                .await
                .map_err(|e| retry(&e))?
        }
        MP3 => {
            let finished: Mp3Message = message
                .decode()
                .map_err(|e| Nack::Reject(format!("bad {MP3} body: {e}")))?;
            match (finished.status, finished.mp3_fid.as_deref()) {
                (JobStatus::Done, Some(mp3_fid)) => jobs
                    .mark_done(&mut tx, &finished.job_id, mp3_fid, finished.duration_secs)
                    .await
                    .map_err(|e| retry(&e))?,
                (JobStatus::Done, None) => {
                    return Err(Nack::Reject("a done mp3 message without mp3_fid".into()));
                }
                _ => {
                    let reason = finished.error.as_deref().unwrap_or("the conversion failed");
                    jobs.mark_failed(&mut tx, &finished.job_id, reason)
                        .await
                        .map_err(|e| retry(&e))?
                }
            }
        }
        other => {
            tracing::warn!(routing_key = other, "unexpected message; ignored");
            false
        }
    };
    tx.commit().await.map_err(|e| retry(&e))?;
    tracing::debug!(id = %message.id, key = %message.routing_key, changed, "job message applied");
    Ok(())
}
