//! Comments, the posts this service has heard of, and the events both cause.

use contracts::blog::{
    BlogEvent, CommentCreated, CommentModerated, CommentStatus, CommentText, CommentUpdated,
    PostCreated,
};
use sqlx::{Any, Row, Transaction};
use storage::{Database, Dialect, Migration, Statements, StorageError};

use bus::OutboxPublisher as Publisher;

pub const MIGRATIONS: &[Migration] = &[
    Migration::portable(
        1,
        "known posts",
        "CREATE TABLE comments_known_posts (
            id VARCHAR(64) NOT NULL PRIMARY KEY,
            learned_at BIGINT NOT NULL
        )",
    ),
    Migration::portable(
        2,
        "comments",
        "CREATE TABLE comments (
            id VARCHAR(64) NOT NULL PRIMARY KEY,
            post_id VARCHAR(64) NOT NULL,
            content TEXT NOT NULL,
            status VARCHAR(16) NOT NULL,
            created_at BIGINT NOT NULL
        )",
    ),
    Migration::portable(
        3,
        "comments by post",
        "CREATE INDEX comments_by_post ON comments (post_id, id)",
    ),
    Migration::portable(
        4,
        "event log cursor",
        "CREATE TABLE comments_log_cursor (
            id SMALLINT NOT NULL PRIMARY KEY,
            log_seq BIGINT NOT NULL
        )",
    ),
    Migration::portable(
        5,
        "event log cursor row",
        "INSERT INTO comments_log_cursor (id, log_seq) VALUES (1, 0)",
    ),
];

/// A comment as the course's client shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct Comment {
    /// A UUID for comments made here; an event pushed to the log may carry any id.
    pub id: String,
    pub content: String,
    pub status: CommentStatus,
}

#[derive(Debug, thiserror::Error)]
pub enum CommentError {
    #[error("no post {0}")]
    UnknownPost(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Bus(#[from] bus::BusError),
}

impl bus::Failure for CommentError {
    fn retry(&self) -> bus::Retry {
        match self {
            CommentError::UnknownPost(_) => bus::Retry::Never,
            CommentError::Storage(_) | CommentError::Bus(_) => bus::Retry::Later,
        }
    }
}

impl From<sqlx::Error> for CommentError {
    fn from(error: sqlx::Error) -> Self {
        CommentError::Storage(error.into())
    }
}

#[derive(Debug, Clone)]
pub struct CommentStore {
    db: Database,
    publisher: Publisher,
}

impl CommentStore {
    pub fn new(db: Database, publisher: Publisher) -> Self {
        Self { db, publisher }
    }

    pub fn database(&self) -> &Database {
        &self.db
    }

    /// How far into the event-bus service's log this service has learned posts: the
    /// sequence number of the last event read.
    pub async fn log_cursor(&self) -> Result<i64, StorageError> {
        let row = sqlx::query("SELECT log_seq FROM comments_log_cursor WHERE id = 1")
            .fetch_one(self.db.pool())
            .await?;
        Ok(row.try_get(0)?)
    }

    /// Learns the posts of a page of the event log and moves the cursor to `last_seq`,
    /// in one write. A post already known stays as it was, so a page read again (after
    /// a crash before this commit, or by another replica) changes nothing twice.
    pub async fn learn_from_log(&self, posts: &[&str], last_seq: i64) -> Result<(), StorageError> {
        let mut last = self.db.statements();
        let learned_at = unix_now();
        for id in posts {
            self.learn(&mut last, id, learned_at);
        }
        last.push("UPDATE comments_log_cursor SET log_seq = ? WHERE id = 1")
            .bind(last_seq);
        self.db.commit_statements(last).await
    }

    /// Knows post `id` from now on (once: a post already known stays as it was).
    fn learn(&self, last: &mut Statements, id: &str, learned_at: i64) {
        last.push(if self.db.dialect() == Dialect::MySql {
            "INSERT INTO comments_known_posts (id, learned_at) VALUES (?, ?) ON DUPLICATE KEY UPDATE id = id"
        } else {
            "INSERT INTO comments_known_posts (id, learned_at) VALUES (?, ?) ON CONFLICT (id) DO NOTHING"
        })
        .bind(id.to_owned())
        .bind(learned_at);
    }

    pub async fn post_is_known(&self, post_id: &str) -> Result<bool, StorageError> {
        let mut conn = self.db.pool().acquire().await?;
        Ok(is_known(&mut conn, self.db.dialect(), post_id).await?)
    }

    /// Adds a pending comment to a known post and emits `CommentCreated`, in one
    /// transaction; returns every comment of the post, the new one last.
    pub async fn create(
        &self,
        post_id: &str,
        content: CommentText,
    ) -> Result<Vec<Comment>, CommentError> {
        // Written before the post is checked: on SQLite a transaction that reads first
        // and writes later cannot wait for the write lock (its snapshot may be stale), so
        // every transaction here starts with its write. An unknown post rolls it back.
        let content = content.into_string();
        // A write shares its commit with the others arriving at once (group commit).
        let mut write = self.db.write().await?;
        let tx = write.tx()?;
        let id = uuid::Uuid::now_v7().to_string();
        // Inserted only for a post this service knows (its id is the key: one row or
        // none), in one request instead of an insert and a check.
        let inserted = sqlx::query(self.db.sql(
            "INSERT INTO comments (id, post_id, content, status, created_at) \
             SELECT ?, ?, ?, ?, ? FROM comments_known_posts WHERE id = ?",
        ))
        .bind(&id)
        .bind(post_id)
        .bind(&content)
        .bind(CommentStatus::Pending.as_str())
        .bind(unix_now())
        .bind(post_id)
        .execute(&mut **tx)
        .await?;
        if inserted.rows_affected() == 0 {
            write.rollback().await?;
            return Err(CommentError::UnknownPost(post_id.to_owned()));
        }
        let event = BlogEvent::CommentCreated(CommentCreated {
            id,
            content,
            post_id: post_id.to_owned(),
            status: CommentStatus::Pending,
        });
        let comments = list_in(tx, self.db.dialect(), post_id).await?;
        // The event goes in with the write's end, in one request.
        let mut statements = self.db.statements();
        let message = bus::Message::from(&event);
        self.publisher.stage(&mut statements, message.clone())?;
        write.commit_with(statements).await?;
        self.publisher.committed_with(vec![message]);
        Ok(comments)
    }

    pub async fn list(&self, post_id: &str) -> Result<Vec<Comment>, StorageError> {
        let mut conn = self.db.pool().acquire().await?;
        Ok(list_conn(&mut conn, self.db.dialect(), post_id).await?)
    }

    /// Applies a consumed event inside `tx` (the [`bus::Runner`]'s, which holds its
    /// inbox record); returns the events it causes.
    pub async fn apply(
        &self,
        tx: &mut Transaction<'static, Any>,
        event: &BlogEvent,
    ) -> Result<Vec<bus::Message>, CommentError> {
        let mut last = self.db.statements();
        let caused = self.apply_with_last(tx, &mut last, event).await?;
        last.execute(tx).await?;
        Ok(caused)
    }

    /// [`apply`](Self::apply), leaving the changes that need no answer from the database
    /// in `last`, for the runner to send with the end of its write.
    pub async fn apply_with_last(
        &self,
        tx: &mut Transaction<'static, Any>,
        last: &mut Statements,
        event: &BlogEvent,
    ) -> Result<Vec<bus::Message>, CommentError> {
        match event {
            BlogEvent::CommentModerated(moderated) => Ok(self
                .apply_moderation(tx, last, moderated)
                .await?
                .into_iter()
                .collect()),
            _ => Ok(self.apply_statements(last, event).unwrap_or_default()),
        }
    }

    /// The events applied with statements alone (no read): their statements pushed to
    /// `last`, and the events they cause; `None` for one that needs a transaction.
    pub fn apply_statements(
        &self,
        last: &mut Statements,
        event: &BlogEvent,
    ) -> Option<Vec<bus::Message>> {
        match event {
            BlogEvent::PostCreated(PostCreated { id, .. }) => {
                self.learn(last, id, unix_now());
                Some(Vec::new())
            }
            BlogEvent::CommentModerated(_) => None,
            // Our own events come back to us only through a push; nothing to do.
            BlogEvent::CommentCreated(_) | BlogEvent::CommentUpdated(_) => Some(Vec::new()),
        }
    }

    /// The course's rule: take the moderator's status and announce the updated comment.
    async fn apply_moderation(
        &self,
        tx: &mut Transaction<'static, Any>,
        last: &mut Statements,
        moderated: &CommentModerated,
    ) -> Result<Option<bus::Message>, CommentError> {
        let row = sqlx::query(
            self.db
                .sql("SELECT post_id, content FROM comments WHERE id = ?"),
        )
        .bind(&moderated.id)
        .fetch_optional(&mut **tx)
        .await?;
        let Some(row) = row else {
            // Possible only for an event posted by hand to the event bus.
            tracing::warn!(comment = %moderated.id, "moderation of an unknown comment ignored");
            return Ok(None);
        };
        let post_id: String = row.try_get("post_id")?;
        let content: String = row.try_get("content")?;
        last.push("UPDATE comments SET status = ? WHERE id = ?")
            .bind(moderated.status.as_str())
            .bind(moderated.id.clone());
        let event = BlogEvent::CommentUpdated(CommentUpdated {
            id: moderated.id.clone(),
            status: moderated.status,
            post_id,
            content,
        });
        Ok(Some(bus::Message::from(&event)))
    }
}

/// Whether this service has heard of post `post_id` (its `PostCreated` was applied).
async fn is_known(
    conn: &mut sqlx::AnyConnection,
    dialect: Dialect,
    post_id: &str,
) -> Result<bool, sqlx::Error> {
    let row = sqlx::query(dialect.sql("SELECT 1 FROM comments_known_posts WHERE id = ?"))
        .bind(post_id)
        .fetch_optional(conn)
        .await?;
    Ok(row.is_some())
}

async fn list_in(
    tx: &mut Transaction<'static, Any>,
    dialect: Dialect,
    post_id: &str,
) -> Result<Vec<Comment>, sqlx::Error> {
    list_conn(tx, dialect, post_id).await
}

async fn list_conn(
    conn: &mut sqlx::AnyConnection,
    dialect: Dialect,
    post_id: &str,
) -> Result<Vec<Comment>, sqlx::Error> {
    let rows = sqlx::query(
        dialect.sql("SELECT id, content, status FROM comments WHERE post_id = ? ORDER BY id"),
    )
    .bind(post_id)
    .fetch_all(&mut *conn)
    .await?;
    rows.into_iter()
        .map(|row| {
            let status: String = row.try_get("status")?;
            Ok(Comment {
                id: row.try_get("id")?,
                content: row.try_get("content")?,
                status: CommentStatus::parse(&status).unwrap_or(CommentStatus::Pending),
            })
        })
        .collect()
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}
