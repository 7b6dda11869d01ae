//! The pipeline's messages moving jobs along: `converting` (a worker started) and `mp3`
//! (done or failed). The [`bus::Runner`] applies each in one transaction with its inbox
//! record, so a redelivered message is recognised and skipped; the status transitions
//! only move forward besides, so even a message applied twice could not undo anything.

use bus::{Delivered, Handler, HandlerError, Message, Subscription, Tx};
use contracts::media::{CONVERTING, ConversionStarted, JobStatus, MP3, Mp3Message};

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

/// A message that moves a job along.
#[derive(Debug, Clone)]
pub enum JobEvent {
    /// `converting`: a worker started.
    Started(ConversionStarted),
    /// `mp3`: done or failed.
    Finished(Mp3Message),
    /// Any other routing key: recorded and ignored.
    Other(String),
}

impl JobEvent {
    fn job_id(&self) -> Option<&str> {
        match self {
            JobEvent::Started(started) => Some(&started.job_id),
            JobEvent::Finished(finished) => Some(&finished.job_id),
            JobEvent::Other(_) => None,
        }
    }
}

/// What `converting` and `mp3` mean here: a job's status, announced to the live streams
/// once committed.
#[derive(Debug, Clone)]
pub struct JobEvents {
    pub jobs: JobStore,
    pub changes: Changes,
}

impl Handler for JobEvents {
    type Event = JobEvent;
    type Error = HandlerError;

    fn subscription(&self) -> Subscription {
        Subscription::new(GROUP, CONVERTING).also(MP3)
    }

    // One at a time, as before the runner: a job's `converting` and `mp3` are applied in
    // the order they arrive (the transitions only move forward besides).
    fn concurrency(&self) -> usize {
        1
    }

    fn decode(&self, message: &Message) -> Result<JobEvent, String> {
        match message.routing_key.as_str() {
            CONVERTING => Ok(JobEvent::Started(bus::decode_json(message)?)),
            MP3 => {
                let finished: Mp3Message = bus::decode_json(message)?;
                if finished.status == JobStatus::Done && finished.mp3_fid.is_none() {
                    return Err("a done mp3 message without mp3_fid".into());
                }
                Ok(JobEvent::Finished(finished))
            }
            other => Ok(JobEvent::Other(other.to_owned())),
        }
    }

    async fn apply(
        &self,
        tx: &mut Tx,
        event: &JobEvent,
        delivered: &Delivered,
    ) -> Result<Vec<Message>, HandlerError> {
        let changed = match event {
            JobEvent::Started(started) => self.jobs.mark_converting(tx, &started.job_id).await?,
            JobEvent::Finished(finished) => match (finished.status, finished.mp3_fid.as_deref()) {
                (JobStatus::Done, Some(mp3_fid)) => {
                    self.jobs
                        .mark_done(tx, &finished.job_id, mp3_fid, finished.duration_secs)
                        .await?
                }
                _ => {
                    let reason = finished.error.as_deref().unwrap_or("the conversion failed");
                    self.jobs.mark_failed(tx, &finished.job_id, reason).await?
                }
            },
            JobEvent::Other(routing_key) => {
                tracing::warn!(%routing_key, "unexpected message; ignored");
                false
            }
        };
        tracing::debug!(id = %delivered.message_id, key = %delivered.routing_key, changed, "job message applied");
        Ok(Vec::new())
    }

    async fn after_commit(&self, event: JobEvent) {
        if let Some(job_id) = event.job_id() {
            announce(&self.jobs, &self.changes, job_id).await;
        }
    }
}
