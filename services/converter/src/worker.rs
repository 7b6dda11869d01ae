//! The `video` consumer: open the upload (in place on local disk; from S3, fetched
//! into a scratch file first), convert it on a blocking thread, store the MP3 under the key derived from the job,
//! and publish the outcome on `mp3`.
//!
//! Redelivery is safe by construction: the MP3 key ([`mp3_fid_for_job`]) and the ids of
//! the messages published (`converting-<job>`, `mp3-<job>`) are derived from the job, so
//! doing a job twice overwrites the same object and publishes the same message ids,
//! which the consumers' inboxes drop. Unusable input is a *result* (a `failed` message
//! with the reason), acknowledged once — never retried; only transient trouble (the blob
//! store or the bus away, shutdown, a crashed decoder thread) is retried by the bus.
//!
//! Giving up is also a result: when transient trouble is still there on the bus's last
//! attempt, the worker publishes a `failed` outcome ("gave up after N attempts: …")
//! and acknowledges, so the job ends `failed` and the user gets one email,
//! instead of the bus dead-lettering the message and the job staying `converting`. The
//! one exception is shutdown: an interrupted job is requeued ([`bus::Retry::Requeue`]) as the
//! same attempt, not failed and not counted — even on the last attempt. A converter
//! killed during the last attempt cannot do that; the bus then delivers the message once
//! more as exhausted ([`Attempt::is_exhausted`]), and the worker fails the job ("the
//! converter stopped during each of its N attempts") without converting again.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use bus::{
    Attempt, Delivered, EventBus, Handler, HandlerError, Message, Runner, Store, Subscription, Tx,
};
use contracts::media::{
    CONVERTING, ConversionStarted, JobStatus, MP3, Mp3Message, VIDEO, VideoMessage, mp3_fid_for_job,
};
use storage::blob::{BlobError, BlobStore};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{ConvertError, Converter};

/// The consumer group: its RabbitMQ queue is named `video`, as in the reference system.
pub const GROUP: &str = VIDEO;

/// What a worker needs.
#[derive(Debug, Clone)]
pub struct Worker {
    pub bus: Arc<dyn EventBus>,
    pub blobs: BlobStore,
    pub converter: Converter,
    /// Scratch space for inputs and outputs being converted.
    pub work_dir: PathBuf,
}

impl Worker {
    /// Starts consuming `video`, as many at once as the converter has workers, on the
    /// [`bus::Runner`] with a [`Store::keyed`] (the worker has no database: redoing a
    /// job redoes the same keys). The returned health is the service's `consumers`
    /// readiness.
    pub fn spawn(self, tasks: &TaskTracker, shutdown: CancellationToken) -> bus::ConsumerHealth {
        let store = Store::keyed(self.bus.clone());
        let bus = self.bus.clone();
        Arc::new(Runner::new(store, self)).serve(bus, tasks, shutdown)
    }

    /// Converts the video of one `video` message, delivered for the `attempt`-th time;
    /// returns the outcome to publish (`mp3`).
    async fn convert_job(
        &self,
        video: &VideoMessage,
        attempt: Attempt,
    ) -> Result<Vec<Message>, HandlerError> {
        tracing::info!(job_id = %video.job_id, attempt = attempt.number, "conversion started");
        let started = ConversionStarted {
            job_id: video.job_id.clone(),
            video_fid: video.video_fid.clone(),
        };
        // Only a status for the job list: a lost one is overtaken by the outcome.
        match Message::json(CONVERTING, &started) {
            Ok(started) => {
                let started = started.with_id(format!("converting-{}", video.job_id));
                if let Err(error) = self.bus.publish(started).await {
                    tracing::warn!(%error, job_id = %video.job_id, "could not publish converting");
                }
            }
            Err(error) => tracing::warn!(%error, "could not encode converting"),
        }

        let scratch = self.work_dir.join(safe_name(&video.job_id));
        let outcome = self.convert(video, &scratch).await;
        if let Err(error) = tokio::fs::remove_dir_all(&scratch).await
            && error.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(%error, dir = %scratch.display(), "could not remove scratch files");
        }
        let finished = match outcome {
            Ok(finished) => finished,
            Err(Outcome::Retry(reason)) if attempt.is_last() => {
                tracing::warn!(job_id = %video.job_id, %reason, attempts = attempt.number, "giving up on the job");
                Self::failed(
                    video,
                    format!("gave up after {} attempts: {reason}", attempt.number),
                )
            }
            Err(Outcome::Retry(reason)) => return Err(HandlerError::Transient(reason)),
            // Not the job's fault and not a try: the same attempt again, even the last.
            Err(Outcome::Interrupted(reason)) => return Err(HandlerError::Interrupted(reason)),
            Err(Outcome::Failed(reason)) => Self::failed(video, reason),
        };
        Ok(vec![Self::outcome(video, &finished)?])
    }

    /// The job's outcome message (`mp3`), one id per job.
    fn outcome(video: &VideoMessage, finished: &Mp3Message) -> Result<Message, HandlerError> {
        Ok(Message::json(MP3, finished)?.with_id(format!("mp3-{}", video.job_id)))
    }

    /// The `failed` outcome of a job, with the reason the user is told.
    fn failed(video: &VideoMessage, reason: String) -> Mp3Message {
        tracing::info!(job_id = %video.job_id, %reason, "conversion failed");
        metrics::counter!("converter_jobs_total", "outcome" => "failed").increment(1);
        Mp3Message {
            video_fid: video.video_fid.clone(),
            mp3_fid: None,
            username: video.username.clone(),
            job_id: video.job_id.clone(),
            status: JobStatus::Failed,
            error: Some(reason),
            duration_secs: None,
            filename: video.filename.clone(),
        }
    }

    async fn convert(&self, video: &VideoMessage, scratch: &Path) -> Result<Mp3Message, Outcome> {
        let transient =
            |what: &str, e: &dyn std::fmt::Display| Outcome::Retry(format!("{what}: {e}"));
        tokio::fs::create_dir_all(scratch)
            .await
            .map_err(|e| transient("scratch directory", &e))?;
        let missing = || Outcome::Failed("the uploaded file is missing".to_owned());
        let output = scratch.join("output.mp3");
        let input = match self.blobs.local_path(&video.video_fid) {
            // Blobs on local disk: read the upload where it lies (no second copy of a
            // file that may be gigabytes); the engine streams it either way.
            Ok(Some(path)) => match tokio::fs::metadata(&path).await {
                Ok(_) => path,
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                    return Err(missing());
                }
                Err(error) => return Err(transient("reading the upload", &error)),
            },
            // S3 (or memory): the decoder seeks, so fetch a local copy first.
            Ok(None) => {
                let input = scratch.join("input");
                match self.blobs.get_to_file(&video.video_fid, &input).await {
                    Ok(_) => input,
                    Err(BlobError::NotFound(_)) => return Err(missing()),
                    Err(error) => return Err(transient("fetching the upload", &error)),
                }
            }
            Err(error @ BlobError::InvalidKey(_)) => {
                return Err(Outcome::Failed(format!(
                    "the upload cannot be read: {error}"
                )));
            }
            Err(error) => return Err(transient("locating the upload", &error)),
        };
        let report = match self.converter.convert_file(&input, &output).await {
            Ok(report) => report,
            // A job that ran out of time would run out of time again: say so once
            // rather than spend the timeout again on every retry.
            Err(error) if error.is_permanent() || matches!(error, ConvertError::Timeout(_)) => {
                return Err(Outcome::Failed(error.to_string()));
            }
            Err(ConvertError::Cancelled) => {
                return Err(Outcome::Interrupted(ConvertError::Cancelled.to_string()));
            }
            Err(error) => return Err(Outcome::Retry(error.to_string())),
        };
        let mp3_fid = mp3_fid_for_job(&video.job_id);
        self.blobs
            .put_file(&mp3_fid, &output)
            .await
            .map_err(|e| transient("storing the mp3", &e))?;
        tracing::info!(
            job_id = %video.job_id,
            %mp3_fid,
            duration_secs = report.duration_secs,
            engine = ?report.engine,
            "conversion done"
        );
        metrics::counter!("converter_jobs_total", "outcome" => "done").increment(1);
        Ok(Mp3Message {
            video_fid: video.video_fid.clone(),
            mp3_fid: Some(mp3_fid),
            username: video.username.clone(),
            job_id: video.job_id.clone(),
            status: JobStatus::Done,
            error: None,
            duration_secs: Some(report.duration_secs),
            filename: video.filename.clone(),
        })
    }
}

impl Handler for Worker {
    type Event = VideoMessage;
    type Error = HandlerError;

    fn subscription(&self) -> Subscription {
        let prefetch = u16::try_from(self.converter.config().workers).unwrap_or(u16::MAX);
        Subscription::new(GROUP, VIDEO).with_prefetch(prefetch)
    }

    fn concurrency(&self) -> usize {
        self.converter.config().workers
    }

    fn decode(&self, message: &Message) -> Result<VideoMessage, String> {
        bus::decode_json(message)
    }

    /// The conversion: outside any database, keyed by the job.
    async fn effect(
        &self,
        video: &VideoMessage,
        delivered: &Delivered,
    ) -> Result<Vec<Message>, HandlerError> {
        self.convert_job(video, delivered.attempt).await
    }

    /// Never called: the worker's store is keyed, without a transaction.
    async fn apply(
        &self,
        _tx: &mut Tx,
        _video: &VideoMessage,
        _delivered: &Delivered,
    ) -> Result<Vec<Message>, HandlerError> {
        Ok(Vec::new())
    }

    /// Every attempt ended with the converter gone mid-way (killed, out of memory, the
    /// machine lost): no new try, but the job must not stay "converting".
    async fn exhausted(
        &self,
        video: &VideoMessage,
        delivered: &Delivered,
    ) -> Result<Option<Vec<Message>>, HandlerError> {
        let attempts = delivered.attempt.max;
        tracing::warn!(job_id = %video.job_id, attempts, "the converter stopped during every attempt; failing the job");
        let failed = Self::failed(
            video,
            format!("the converter stopped during each of its {attempts} attempts"),
        );
        Ok(Some(vec![Self::outcome(video, &failed)?]))
    }
}

enum Outcome {
    /// Worth another attempt later; on the last attempt, the job fails with it.
    Retry(String),
    /// Stopped by shutdown: the job is picked up again, never failed for it.
    Interrupted(String),
    /// The job is over: this is the reason to tell the user.
    Failed(String),
}

/// A directory name from a job id (ids are UUIDs; anything else is filtered).
fn safe_name(job_id: &str) -> String {
    let name: String = job_id
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .take(64)
        .collect();
    if name.is_empty() {
        "job".to_owned()
    } else {
        name
    }
}
