//! Messages of the media pipeline (docs/API.md §5). Bodies keep the reference system's
//! shape — `video_fid`, `mp3_fid`, `username` — and add `job_id`; extra fields are
//! additions, never renames, so a consumer written for the reference shape still reads
//! them.
//!
//! Flow: `media` writes the job and a [`VideoMessage`] (routing key [`VIDEO`]) in one
//! transaction; `converter` workers (consumer group [`VIDEO`], so the queue an operator
//! sees is `video`) publish [`ConversionStarted`] ([`CONVERTING`]) when they begin and one
//! [`Mp3Message`] ([`MP3`]) when they finish, done or failed; `media` consumes
//! `converting` and `mp3` to move the job's status; `notification` consumes `mp3` and
//! sends exactly one email per job.

use serde::{Deserialize, Serialize};

/// Routing key / queue of uploaded videos waiting for conversion.
pub const VIDEO: &str = "video";
/// Routing key / queue of finished conversions (done or failed).
pub const MP3: &str = "mp3";
/// Routing key of "a worker has started on this job".
pub const CONVERTING: &str = "converting";

/// A job's state: `queued → converting → done | failed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    Queued,
    Converting,
    Done,
    Failed,
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Converting => "converting",
            JobStatus::Done => "done",
            JobStatus::Failed => "failed",
        }
    }
}

/// An uploaded video to convert (routing key `video`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VideoMessage {
    pub video_fid: String,
    /// Always `null` here; kept for the reference shape.
    pub mp3_fid: Option<String>,
    /// The uploader's email.
    pub username: String,
    pub job_id: String,
    /// The name of the uploaded file (directories and control characters removed), for
    /// the email; absent from messages of earlier versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filename: Option<String>,
}

/// A worker has started converting a job (routing key `converting`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConversionStarted {
    pub job_id: String,
    pub video_fid: String,
}

/// The outcome of a conversion (routing key `mp3`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Mp3Message {
    pub video_fid: String,
    /// Set when `status` is `done`.
    pub mp3_fid: Option<String>,
    pub username: String,
    pub job_id: String,
    /// `done` or `failed`.
    pub status: JobStatus,
    /// Human-readable reason when `failed` ("no audio track", "not a media file", …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Duration of the MP3, when done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_secs: Option<f64>,
    /// The uploaded file's name, copied from the `video` message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filename: Option<String>,
}

/// The MP3 of a job is stored under a key derived from the job, so a redelivered
/// `video` message overwrites the same object instead of making a second one.
pub fn mp3_fid_for_job(job_id: &str) -> String {
    format!("mp3-{job_id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn video_message_has_the_reference_shape() {
        let message = VideoMessage {
            video_fid: "v1".into(),
            mp3_fid: None,
            username: "a@b.c".into(),
            job_id: "j1".into(),
            filename: None,
        };
        let value = serde_json::to_value(&message).expect("serializes");
        assert_eq!(
            value,
            serde_json::json!({"video_fid": "v1", "mp3_fid": null, "username": "a@b.c", "job_id": "j1"})
        );
    }

    #[test]
    fn mp3_message_reads_the_reference_shape_plus_status() {
        let message: Mp3Message = serde_json::from_value(serde_json::json!({
            "video_fid": "v1", "mp3_fid": "m1", "username": "a@b.c", "job_id": "j1", "status": "done"
        }))
        .expect("deserializes");
        assert_eq!(message.status, JobStatus::Done);
        assert_eq!(message.error, None);
    }
}
