//! Conversion jobs: one row per upload, moved along `queued → converting → done | failed`
//! by the pipeline's messages. Transitions only go forward (a late or redelivered
//! `converting` never undoes a `done`), so applying a message twice changes nothing.

use contracts::media::JobStatus;
use serde::Serialize;
use sqlx::{Any, Row, Transaction, any::AnyRow};
use storage::{Database, Migration, StorageError};

/// One DDL statement each: MySQL commits DDL implicitly, so a migration that failed
/// half-way could not be re-run.
pub const MIGRATIONS: &[Migration] = &[
    Migration::portable(
        1,
        "conversion jobs",
        "CREATE TABLE media_jobs (
            id VARCHAR(64) PRIMARY KEY,
            owner_id VARCHAR(128) NOT NULL,
            owner_email VARCHAR(320) NOT NULL,
            video_fid VARCHAR(128) NOT NULL,
            filename VARCHAR(255) NOT NULL,
            size_bytes BIGINT NOT NULL,
            status VARCHAR(16) NOT NULL,
            mp3_fid VARCHAR(128),
            error TEXT,
            duration_secs DOUBLE PRECISION,
            created_at BIGINT NOT NULL,
            updated_at BIGINT NOT NULL
        )",
    ),
    Migration::portable(
        2,
        "jobs by owner",
        "CREATE INDEX media_jobs_owner ON media_jobs (owner_id, created_at)",
    ),
    Migration::portable(
        3,
        "jobs by mp3",
        "CREATE INDEX media_jobs_mp3 ON media_jobs (mp3_fid)",
    ),
];

/// A conversion job as clients see it (`GET /jobs`, `GET /jobs/{id}`).
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Job {
    #[schema(format = Uuid)]
    pub job_id: String,
    pub status: JobStatus,
    /// The uploaded video's file id (`video-<job_id>`).
    pub video_fid: String,
    /// The MP3's file id once `done`: `GET /download?fid=…`.
    pub mp3_fid: Option<String>,
    /// Why the job `failed`, in words.
    pub error: Option<String>,
    /// The uploaded file's name (directories and control characters removed).
    pub filename: String,
    #[schema(minimum = 0)]
    pub size_bytes: i64,
    /// The MP3's duration once `done`.
    pub duration_secs: Option<f64>,
    #[serde(skip)]
    #[schema(ignore)]
    pub owner_id: String,
    /// The owner's email, shown to admins only (see `routes::JobView`).
    #[serde(skip)]
    #[schema(ignore)]
    pub owner_email: String,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds.
    pub updated_at: i64,
}

/// A job about to be created by an upload.
#[derive(Debug, Clone)]
pub struct NewJob<'a> {
    pub job_id: &'a str,
    pub owner_id: &'a str,
    pub owner_email: &'a str,
    pub video_fid: &'a str,
    pub filename: &'a str,
    pub size_bytes: i64,
}

/// The `media_jobs` table.
#[derive(Debug, Clone)]
pub struct JobStore {
    db: Database,
}

const COLUMNS: &str = "id, owner_id, owner_email, video_fid, filename, size_bytes, status, mp3_fid, error, \
     duration_secs, created_at, updated_at";

impl JobStore {
    pub fn new(db: Database) -> Self {
        Self { db }
    }

    pub fn database(&self) -> &Database {
        &self.db
    }

    /// Inserts a `queued` job inside `tx` (the upload's transaction, which also holds
    /// the outgoing `video` message).
    pub async fn insert(
        &self,
        tx: &mut Transaction<'static, Any>,
        job: &NewJob<'_>,
    ) -> Result<(), StorageError> {
        let now = now();
        sqlx::query(self.db.sql(
            "INSERT INTO media_jobs (id, owner_id, owner_email, video_fid, filename, size_bytes, \
             status, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        ))
        .bind(job.job_id)
        .bind(job.owner_id)
        .bind(job.owner_email)
        .bind(job.video_fid)
        .bind(job.filename)
        .bind(job.size_bytes)
        .bind(JobStatus::Queued.as_str())
        .bind(now)
        .bind(now)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    pub async fn get(&self, job_id: &str) -> Result<Option<Job>, StorageError> {
        let row = sqlx::query(
            self.db
                .sql(format!("SELECT {COLUMNS} FROM media_jobs WHERE id = ?")),
        )
        .bind(job_id)
        .fetch_optional(self.db.pool())
        .await?;
        row.map(|row| job_from_row(&row)).transpose()
    }

    /// The jobs of `owner_id`, newest first, at most `limit`; with `before`, only those
    /// listed after that job (a page of a listing that `before` ended).
    pub async fn list_for_owner(
        &self,
        owner_id: &str,
        limit: i64,
        before: Option<&Job>,
    ) -> Result<Vec<Job>, StorageError> {
        self.list(Some(owner_id), limit, before).await
    }

    /// Every user's jobs (an admin's listing), newest first, paged like
    /// [`Self::list_for_owner`].
    pub async fn list_all(
        &self,
        limit: i64,
        before: Option<&Job>,
    ) -> Result<Vec<Job>, StorageError> {
        self.list(None, limit, before).await
    }

    /// The jobs of `owner_id` (every user's without one), paged as the listings are.
    async fn list(
        &self,
        owner_id: Option<&str>,
        limit: i64,
        before: Option<&Job>,
    ) -> Result<Vec<Job>, StorageError> {
        // (created_at, id) orders the listing; the page after `before` is a range of it.
        let (created_at, id) = before.map_or((i64::MAX, ""), |job| (job.created_at, &job.job_id));
        let of_owner = if owner_id.is_some() {
            "owner_id = ? AND"
        } else {
            ""
        };
        let mut select = sqlx::query(self.db.sql(format!(
            "SELECT {COLUMNS} FROM media_jobs WHERE {of_owner} \
             (created_at < ? OR (created_at = ? AND id < ?)) \
             ORDER BY created_at DESC, id DESC LIMIT ?"
        )));
        if let Some(owner_id) = owner_id {
            select = select.bind(owner_id);
        }
        let rows = select
            .bind(created_at)
            .bind(created_at)
            .bind(id)
            .bind(limit)
            .fetch_all(self.db.pool())
            .await?;
        rows.iter().map(job_from_row).collect()
    }

    /// The finished job whose MP3 is `mp3_fid`.
    pub async fn find_by_mp3(&self, mp3_fid: &str) -> Result<Option<Job>, StorageError> {
        let row = sqlx::query(self.db.sql(format!(
            "SELECT {COLUMNS} FROM media_jobs WHERE mp3_fid = ? AND status = ?"
        )))
        .bind(mp3_fid)
        .bind(JobStatus::Done.as_str())
        .fetch_optional(self.db.pool())
        .await?;
        row.map(|row| job_from_row(&row)).transpose()
    }

    /// `queued → converting`; anything else is left alone.
    pub async fn mark_converting(
        &self,
        tx: &mut Transaction<'static, Any>,
        job_id: &str,
    ) -> Result<bool, StorageError> {
        let to = Transition::to(JobStatus::Converting);
        self.transition(tx, job_id, &[JobStatus::Queued], to).await
    }

    /// `queued | converting → done` with the MP3's fid.
    pub async fn mark_done(
        &self,
        tx: &mut Transaction<'static, Any>,
        job_id: &str,
        mp3_fid: &str,
        duration_secs: Option<f64>,
    ) -> Result<bool, StorageError> {
        let to = Transition {
            mp3_fid: Some(mp3_fid),
            duration_secs,
            ..Transition::to(JobStatus::Done)
        };
        self.transition(tx, job_id, UNFINISHED, to).await
    }

    /// `queued | converting → failed` with the reason.
    pub async fn mark_failed(
        &self,
        tx: &mut Transaction<'static, Any>,
        job_id: &str,
        error: &str,
    ) -> Result<bool, StorageError> {
        let to = Transition {
            error: Some(error),
            ..Transition::to(JobStatus::Failed)
        };
        self.transition(tx, job_id, UNFINISHED, to).await
    }

    /// Moves the job to `to` (with its outcome columns) if its status is one of `from`;
    /// false when it is not (a late or repeated outcome), so statuses only move forward.
    /// The outcome columns are written on every move: a job that has not ended has none.
    async fn transition(
        &self,
        tx: &mut Transaction<'static, Any>,
        job_id: &str,
        from: &[JobStatus],
        to: Transition<'_>,
    ) -> Result<bool, StorageError> {
        let from_placeholders = vec!["?"; from.len()].join(", ");
        let mut update = sqlx::query(self.db.sql(format!(
            "UPDATE media_jobs SET status = ?, mp3_fid = ?, duration_secs = ?, error = ?, \
             updated_at = ? WHERE id = ? AND status IN ({from_placeholders})"
        )))
        .bind(to.status.as_str())
        .bind(to.mp3_fid)
        .bind(to.duration_secs)
        .bind(to.error)
        .bind(now())
        .bind(job_id);
        for status in from {
            update = update.bind(status.as_str());
        }
        let result = update.execute(&mut **tx).await?;
        Ok(result.rows_affected() > 0)
    }
}

/// The statuses a job can still leave.
const UNFINISHED: &[JobStatus] = &[JobStatus::Queued, JobStatus::Converting];

/// A job's new status and the outcome columns that go with it.
struct Transition<'a> {
    status: JobStatus,
    mp3_fid: Option<&'a str>,
    duration_secs: Option<f64>,
    error: Option<&'a str>,
}

impl Transition<'_> {
    fn to(status: JobStatus) -> Self {
        Self {
            status,
            mp3_fid: None,
            duration_secs: None,
            error: None,
        }
    }
}

fn job_from_row(row: &AnyRow) -> Result<Job, StorageError> {
    let status: String = row.try_get("status")?;
    let status = parse_status(&status).ok_or_else(|| {
        StorageError::Sqlx(sqlx::Error::Decode(
            format!("unknown job status '{status}'").into(),
        ))
    })?;
    Ok(Job {
        job_id: row.try_get("id")?,
        owner_id: row.try_get("owner_id")?,
        owner_email: row.try_get("owner_email")?,
        status,
        video_fid: row.try_get("video_fid")?,
        mp3_fid: row.try_get("mp3_fid")?,
        error: row.try_get("error")?,
        filename: row.try_get("filename")?,
        size_bytes: row.try_get("size_bytes")?,
        duration_secs: row.try_get("duration_secs")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

fn parse_status(text: &str) -> Option<JobStatus> {
    [
        JobStatus::Queued,
        JobStatus::Converting,
        JobStatus::Done,
        JobStatus::Failed,
    ]
    .into_iter()
    .find(|status| status.as_str() == text)
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn store() -> (tempfile::TempDir, JobStore) {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("media.db").display());
        let db = Database::connect(&url).await.expect("connects");
        db.migrate("media", MIGRATIONS).await.expect("migrates");
        (dir, JobStore::new(db))
    }

    async fn insert(store: &JobStore, id: &str, owner: &str) {
        let mut tx = store.database().begin().await.expect("begin");
        let job = NewJob {
            job_id: id,
            owner_id: owner,
            owner_email: "a@b.c",
            video_fid: &format!("video-{id}"),
            filename: "clip.mp4",
            size_bytes: 42,
        };
        store.insert(&mut tx, &job).await.expect("insert");
        tx.commit().await.expect("commit");
    }

    #[tokio::test]
    async fn statuses_only_move_forward() {
        let (_dir, store) = store().await;
        insert(&store, "j1", "u1").await;
        let job = store.get("j1").await.expect("get").expect("exists");
        assert_eq!(job.status, JobStatus::Queued);

        let mut tx = store.database().begin().await.expect("begin");
        assert!(store.mark_converting(&mut tx, "j1").await.expect("update"));
        assert!(
            store
                .mark_done(&mut tx, "j1", "mp3-j1", Some(3.5))
                .await
                .expect("update")
        );
        // Late and repeated messages change nothing.
        assert!(!store.mark_converting(&mut tx, "j1").await.expect("update"));
        assert!(
            !store
                .mark_failed(&mut tx, "j1", "late")
                .await
                .expect("update")
        );
        tx.commit().await.expect("commit");

        let job = store.get("j1").await.expect("get").expect("exists");
        assert_eq!(job.status, JobStatus::Done);
        assert_eq!(job.mp3_fid.as_deref(), Some("mp3-j1"));
        assert_eq!(job.duration_secs, Some(3.5));
        assert_eq!(job.error, None);
        let found = store.find_by_mp3("mp3-j1").await.expect("find");
        assert_eq!(found.map(|job| job.job_id), Some("j1".to_owned()));
    }

    #[tokio::test]
    async fn owners_see_their_own_jobs_newest_first() {
        let (_dir, store) = store().await;
        insert(&store, "a1", "alice").await;
        insert(&store, "b1", "bob").await;
        insert(&store, "a2", "alice").await;
        insert(&store, "a3", "alice").await;
        let ids =
            |jobs: Vec<Job>| -> Vec<String> { jobs.into_iter().map(|job| job.job_id).collect() };
        let all = store.list_for_owner("alice", 10, None).await.expect("list");
        assert_eq!(ids(all.clone()), ["a3", "a2", "a1"]);
        // Paged: each page continues after the last job of the one before.
        let first = store.list_for_owner("alice", 2, None).await.expect("list");
        assert_eq!(ids(first.clone()), ["a3", "a2"]);
        let rest = store
            .list_for_owner("alice", 2, first.last())
            .await
            .expect("list");
        assert_eq!(ids(rest), ["a1"]);
        let mut tx = store.database().begin().await.expect("begin");
        store
            .mark_failed(&mut tx, "b1", "no audio track")
            .await
            .expect("fail");
        tx.commit().await.expect("commit");
        let job = store.get("b1").await.expect("get").expect("exists");
        assert_eq!(job.status, JobStatus::Failed);
        assert_eq!(job.error.as_deref(), Some("no audio track"));
        assert!(store.find_by_mp3("mp3-b1").await.expect("find").is_none());
    }
}
