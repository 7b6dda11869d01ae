//! The pipeline's messages moving jobs along: `converting` (a worker started) and `mp3`
//! (done or failed). Each is applied in one transaction with its inbox record, so a
//! redelivered message is recognised and skipped; the status transitions only move
//! forward besides, so even a message applied twice could not undo anything.

use std::sync::Arc;

use bus::{Consumer, EventBus, Inbox, Message, Nack, Subscription};
use contracts::media::{CONVERTING, ConversionStarted, JobStatus, MP3, Mp3Message};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::jobs::{Job, JobStore};

/// Jobs whose status changed in this instance, for the live streams (`GET /jobs/stream`).
pub type Changes = tokio::sync::broadcast::Sender<Job>;

/// Sends the job as it is now to the live streams (if any listen).
pub async fn announce(jobs: &JobStore, changes: &Changes, job_id: &str) {
    if changes.receiver_count() == 0 {
        return;
    }
    match jobs.get(job_id).await {
        Ok(Some(job)) => {
            let _ = changes.send(job);
        }
        Ok(None) => {}
        Err(error) => tracing::warn!(%error, %job_id, "changed job not announced"),
    }
}

/// The consumer group (and RabbitMQ queue) of the media service.
pub const GROUP: &str = "media-jobs";

/// Starts consuming `converting` and `mp3`.
pub fn spawn(
    bus: Arc<dyn EventBus>,
    jobs: JobStore,
    inbox: Inbox,
    changes: Changes,
    tasks: &TaskTracker,
    shutdown: CancellationToken,
) {
    let subscription = Subscription::new(GROUP, CONVERTING).also(MP3);
    let handler = move |message: Message| {
        let jobs = jobs.clone();
        let changes = changes.clone();
        async move {
            if let Some(job_id) = apply(&jobs, &inbox, &message).await? {
                announce(&jobs, &changes, &job_id).await;
            }
            Ok(())
        }
    };
    let consumer = Consumer::new(bus, subscription).run(shutdown, handler);
    tasks.spawn(async move {
        if let Err(error) = consumer.await {
            tracing::error!(%error, "media job consumer stopped abnormally");
        }
    });
}

/// Applies one message; an undecodable body can never succeed and is dead-lettered.
/// Returns the id of the job it moved, if it moved one.
pub async fn apply(
    jobs: &JobStore,
    inbox: &Inbox,
    message: &Message,
) -> Result<Option<String>, Nack> {
    let retry = |error: &dyn std::fmt::Display| Nack::Retry(error.to_string());
    let mut tx = jobs.database().begin().await.map_err(|e| retry(&e))?;
    if !inbox
        .record(&mut tx, GROUP, &message.id)
        .await
        .map_err(|e| retry(&e))?
    {
        tracing::debug!(id = %message.id, "already applied; skipped");
        return Ok(None);
    }
    let (changed, job_id) = match message.routing_key.as_str() {
        CONVERTING => {
            let started: ConversionStarted = message
                .decode()
                .map_err(|e| Nack::Reject(format!("bad {CONVERTING} body: {e}")))?;
            let changed = jobs
                .mark_converting(&mut tx, &started.job_id)
                .await
                .map_err(|e| retry(&e))?;
            (changed, started.job_id)
        }
        MP3 => {
            let finished: Mp3Message = message
                .decode()
                .map_err(|e| Nack::Reject(format!("bad {MP3} body: {e}")))?;
            let changed = match (finished.status, finished.mp3_fid.as_deref()) {
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
            };
            (changed, finished.job_id)
        }
        other => {
            tracing::warn!(routing_key = other, "unexpected message; ignored");
            (false, String::new())
        }
    };
    tx.commit().await.map_err(|e| retry(&e))?;
    tracing::debug!(id = %message.id, key = %message.routing_key, changed, "job message applied");
    Ok(changed.then_some(job_id))
}
