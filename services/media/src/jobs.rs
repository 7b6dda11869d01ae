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
        // (created_at, id) orders the listing; the page after `before` is a range of it.
        let (created_at, id) = before.map_or((i64::MAX, ""), |job| (job.created_at, &job.job_id));
        let rows = sqlx::query(self.db.sql(format!(
            "SELECT {COLUMNS} FROM media_jobs WHERE owner_id = ? \
             AND (created_at < ? OR (created_at = ? AND id < ?)) \
             ORDER BY created_at DESC, id DESC LIMIT ?"
        )))
        .bind(owner_id)
        .bind(created_at)
        .bind(created_at)
        .bind(id)
        .bind(limit)
        .fetch_all(self.db.pool())
        .await?;
        rows.iter().map(job_from_row).collect()
    }

    /// Every user's jobs (an admin's listing), newest first, paged like
    /// [`Self::list_for_owner`].
    pub async fn list_all(
        &self,
        limit: i64,
        before: Option<&Job>,
    ) -> Result<Vec<Job>, StorageError> {
        let (created_at, id) = before.map_or((i64::MAX, ""), |job| (job.created_at, &job.job_id));
        let rows = sqlx::query(self.db.sql(format!(
            "SELECT {COLUMNS} FROM media_jobs \
             WHERE (created_at < ? OR (created_at = ? AND id < ?)) \
             ORDER BY created_at DESC, id DESC LIMIT ?"
        )))
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
        let result =
            sqlx::query(self.db.sql(
                "UPDATE media_jobs SET status = ?, updated_at = ? WHERE id = ? AND status = ?",
            ))
            .bind(JobStatus::Converting.as_str())
            .bind(now())
            .bind(job_id)
            .bind(JobStatus::Queued.as_str())
            .execute(&mut **tx)
            .await?;
        Ok(result.rows_affected() > 0)
    }

    /// `queued | converting → done` with the MP3's fid.
    pub async fn mark_done(
        &self,
        tx: &mut Transaction<'static, Any>,
        job_id: &str,
        mp3_fid: &str,
        duration_secs: Option<f64>,
    ) -> Result<bool, StorageError> {
        let result = sqlx::query(self.db.sql(
            "UPDATE media_jobs SET status = ?, mp3_fid = ?, duration_secs = ?, error = NULL, \
             updated_at = ? WHERE id = ? AND status IN (?, ?)",
        ))
        .bind(JobStatus::Done.as_str())
        .bind(mp3_fid)
        .bind(duration_secs)
        .bind(now())
        .bind(job_id)
        .bind(JobStatus::Queued.as_str())
        .bind(JobStatus::Converting.as_str())
        .execute(&mut **tx)
        .await?;
        Ok(result.rows_affected() > 0)
    }

    /// `queued | converting → failed` with the reason.
    pub async fn mark_failed(
        &self,
        tx: &mut Transaction<'static, Any>,
        job_id: &str,
        error: &str,
    ) -> Result<bool, StorageError> {
        let result = sqlx::query(self.db.sql(
            "UPDATE media_jobs SET status = ?, error = ?, updated_at = ? \
             WHERE id = ? AND status IN (?, ?)",
        ))
        .bind(JobStatus::Failed.as_str())
        .bind(error)
        .bind(now())
        .bind(job_id)
        .bind(JobStatus::Queued.as_str())
        .bind(JobStatus::Converting.as_str())
        .execute(&mut **tx)
        .await?;
        Ok(result.rows_affected() > 0)
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

    /// Every status move, mixed as the consumers mix them (a failure's NULL duration
    /// beside a done job's number), on each backend: a statement shared by moves that
    /// bind different types would fail on PostgreSQL, whose prepared statements keep the
    /// parameter types of their first use. PostgreSQL and MariaDB when
    /// `FLOTILLA_TEST_POSTGRES_URL` / `FLOTILLA_TEST_MYSQL_URL` are set (required under CI).
    #[tokio::test]
    async fn every_move_works_on_every_backend() {
        let (_dir, sqlite) = store().await;
        let mut stores = vec![(None, sqlite)];
        for var in ["FLOTILLA_TEST_POSTGRES_URL", "FLOTILLA_TEST_MYSQL_URL"] {
            let Some(server) = test_kit::real_server_url(var) else {
                continue;
            };
            let scratch = storage::scratch::ScratchDatabase::create(&server)
                .await
                .expect("scratch database");
            let db = Database::connect(scratch.url()).await.expect("connects");
            db.migrate("media", MIGRATIONS).await.expect("migrates");
            stores.push((Some(scratch), JobStore::new(db)));
        }
        for (scratch, store) in stores {
            let backend = store.database().dialect();
            for id in ["failed", "done", "direct"] {
                insert(&store, id, "u1").await;
            }
            for _ in 0..2 {
                // Twice: the second round runs on statements the first one prepared.
                let mut tx = store.database().begin().await.expect("begin");
                store
                    .mark_converting(&mut tx, "failed")
                    .await
                    .expect("converting");
                store
                    .mark_failed(&mut tx, "failed", "no audio")
                    .await
                    .expect("failed");
                store
                    .mark_converting(&mut tx, "done")
                    .await
                    .expect("converting");
                store
                    .mark_done(&mut tx, "done", "mp3-done", Some(3.5))
                    .await
                    .expect("done");
                store
                    .mark_done(&mut tx, "direct", "mp3-direct", None)
                    .await
                    .expect("done");
                tx.commit().await.expect("commit");
            }
            let job = |id: &'static str| {
                let store = &store;
                async move { store.get(id).await.expect("get").expect("exists") }
            };
            let failed = job("failed").await;
            assert_eq!(failed.status, JobStatus::Failed, "{backend}");
            assert_eq!(failed.error.as_deref(), Some("no audio"), "{backend}");
            let done = job("done").await;
            assert_eq!(done.status, JobStatus::Done, "{backend}");
            assert_eq!(done.duration_secs, Some(3.5), "{backend}");
            let direct = job("direct").await;
            assert_eq!(direct.mp3_fid.as_deref(), Some("mp3-direct"), "{backend}");
            assert_eq!(direct.duration_secs, None, "{backend}");
            if let Some(scratch) = scratch {
                store.database().close().await;
                scratch
                    .drop_database()
                    .await
                    .expect("drop scratch database");
            }
        }
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
