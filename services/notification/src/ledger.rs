//! The ledger of emails, one row per job: `sending` before the email is handed over,
//! `sent` after. See the crate docs for why two steps and what a crash in between means.

use std::time::Duration;

use sqlx::Row;
use storage::{Database, Dialect, Migration, StorageError};

pub const MIGRATIONS: &[Migration] = &[Migration::portable(
    1,
    "email ledger",
    "CREATE TABLE notification_emails (
        job_id VARCHAR(64) PRIMARY KEY,
        recipient VARCHAR(320) NOT NULL,
        state VARCHAR(16) NOT NULL,
        attempts BIGINT NOT NULL,
        created_at BIGINT NOT NULL,
        updated_at BIGINT NOT NULL
    )",
)];

/// A `sending` row younger than this is taken as an attempt still in progress (two
/// `mp3` messages for one job handled at once): the second waits and retries instead of
/// sending too. Older, it is an attempt that died. Shorter than the bus's total retry
/// backoff (15 s by default), so the waiting message is not dead-lettered first.
pub const IN_PROGRESS_FOR: Duration = Duration::from_secs(10);

/// What to do about a job's email.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LedgerState {
    /// Never attempted: send it.
    New,
    /// An earlier attempt died between sending and recording: it may have been sent.
    Resending,
    /// Sent already: do nothing.
    Sent,
}

/// Why the ledger could not answer.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("database: {0}")]
    Sqlx(#[from] sqlx::Error),
    #[error("another attempt to email job {0} is in progress")]
    InProgress(String),
}

/// The `notification_emails` table.
#[derive(Debug, Clone)]
pub struct Ledger {
    db: Database,
}

impl Ledger {
    pub fn new(db: Database) -> Self {
        Self { db }
    }

    /// Claims the job's email before sending it.
    pub async fn begin_sending(
        &self,
        job_id: &str,
        recipient: &str,
    ) -> Result<LedgerState, LedgerError> {
        let now = now_ms();
        let insert = match self.db.dialect() {
            Dialect::Sqlite => "INSERT OR IGNORE INTO notification_emails",
            Dialect::MySql => "INSERT IGNORE INTO notification_emails",
            Dialect::Postgres => "INSERT INTO notification_emails",
        };
        let conflict = match self.db.dialect() {
            Dialect::Postgres => " ON CONFLICT DO NOTHING",
            Dialect::Sqlite | Dialect::MySql => "",
        };
        let inserted = sqlx::query(self.db.sql(format!(
            "{insert} (job_id, recipient, state, attempts, created_at, updated_at) \
             VALUES (?, ?, 'sending', 1, ?, ?){conflict}"
        )))
        .bind(job_id)
        .bind(recipient)
        .bind(now)
        .bind(now)
        .execute(self.db.pool())
        .await?;
        if inserted.rows_affected() == 1 {
            return Ok(LedgerState::New);
        }
        let row = sqlx::query(
            self.db
                .sql("SELECT state, updated_at FROM notification_emails WHERE job_id = ?"),
        )
        .bind(job_id)
        .fetch_one(self.db.pool())
        .await?;
        let state: String = row.try_get("state")?;
        let updated_at: i64 = row.try_get("updated_at")?;
        if state == "sent" {
            return Ok(LedgerState::Sent);
        }
        let stale_before = now - i64::try_from(IN_PROGRESS_FOR.as_millis()).unwrap_or(0);
        // Take over the attempt only if it is stale, atomically: of two handlers that
        // both find it stale, one updates the row and the other waits.
        let taken = sqlx::query(self.db.sql(
            "UPDATE notification_emails SET attempts = attempts + 1, updated_at = ? \
             WHERE job_id = ? AND state = 'sending' AND updated_at = ? AND updated_at < ?",
        ))
        .bind(now)
        .bind(job_id)
        .bind(updated_at)
        .bind(stale_before)
        .execute(self.db.pool())
        .await?;
        if taken.rows_affected() == 1 {
            Ok(LedgerState::Resending)
        } else {
            Err(LedgerError::InProgress(job_id.to_owned()))
        }
    }

    /// Gives up a claim whose send failed (the SMTP server was away or refused for now):
    /// the next attempt takes it over at once, as a resend, instead of waiting for the
    /// claim to age. Without this, an SMTP outage longer than a retry or two made every
    /// retry see "in progress" until the message was dead-lettered — an email lost.
    pub async fn release(&self, job_id: &str) -> Result<(), LedgerError> {
        sqlx::query(self.db.sql(
            "UPDATE notification_emails SET updated_at = 0 WHERE job_id = ? AND state = 'sending'",
        ))
        .bind(job_id)
        .execute(self.db.pool())
        .await?;
        Ok(())
    }

    /// Records that the job's email was handed over (in a transaction of its own).
    pub async fn mark_sent(&self, job_id: &str) -> Result<(), LedgerError> {
        let mut tx = self.db.begin().await?;
        self.mark_sent_in(&mut tx, job_id).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Records that the job's email was handed over, inside `tx` (the runner's, with
    /// the message's inbox record).
    pub async fn mark_sent_in(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        job_id: &str,
    ) -> Result<(), LedgerError> {
        sqlx::query(
            self.db.sql(
                "UPDATE notification_emails SET state = 'sent', updated_at = ? WHERE job_id = ?",
            ),
        )
        .bind(now_ms())
        .bind(job_id)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// The state of the job's email, if any (`sending` or `sent`).
    pub async fn state(&self, job_id: &str) -> Result<Option<String>, LedgerError> {
        let row = sqlx::query(
            self.db
                .sql("SELECT state FROM notification_emails WHERE job_id = ?"),
        )
        .bind(job_id)
        .fetch_optional(self.db.pool())
        .await?;
        Ok(row.map(|row| row.try_get("state")).transpose()?)
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn ledger() -> (tempfile::TempDir, Ledger) {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("n.db").display());
        let db = Database::connect(&url).await.expect("connects");
        db.migrate("notification", MIGRATIONS)
            .await
            .expect("migrates");
        (dir, Ledger::new(db))
    }

    #[tokio::test]
    async fn a_job_is_claimed_once_and_then_skipped() {
        let (_dir, ledger) = ledger().await;
        assert_eq!(
            ledger.begin_sending("j1", "a@b.c").await.expect("claim"),
            LedgerState::New
        );
        // A concurrent duplicate while the first attempt is fresh waits.
        assert!(matches!(
            ledger.begin_sending("j1", "a@b.c").await,
            Err(LedgerError::InProgress(_))
        ));
        ledger.mark_sent("j1").await.expect("sent");
        assert_eq!(
            ledger.begin_sending("j1", "a@b.c").await.expect("claim"),
            LedgerState::Sent
        );
        assert_eq!(
            ledger.state("j1").await.expect("state").as_deref(),
            Some("sent")
        );
    }

    #[tokio::test]
    async fn a_released_claim_is_taken_over_at_once() {
        let (_dir, ledger) = ledger().await;
        ledger.begin_sending("j3", "a@b.c").await.expect("claim");
        ledger.release("j3").await.expect("release");
        assert_eq!(
            ledger.begin_sending("j3", "a@b.c").await.expect("claim"),
            LedgerState::Resending
        );
        // A sent email stays sent.
        ledger.mark_sent("j3").await.expect("sent");
        ledger.release("j3").await.expect("release");
        assert_eq!(
            ledger.begin_sending("j3", "a@b.c").await.expect("claim"),
            LedgerState::Sent
        );
    }

    #[tokio::test]
    async fn an_attempt_that_died_is_taken_over() {
        let (_dir, ledger) = ledger().await;
        ledger.begin_sending("j2", "a@b.c").await.expect("claim");
        // As if the process died long ago right after claiming.
        sqlx::query("UPDATE notification_emails SET updated_at = 0 WHERE job_id = 'j2'")
            .execute(ledger.db.pool())
            .await
            .expect("age the row");
        assert_eq!(
            ledger.begin_sending("j2", "a@b.c").await.expect("claim"),
            LedgerState::Resending
        );
    }
}
