//! The posts table, and the outbox its events leave through.

use contracts::blog::{BlogEvent, PostCreated, Title};
use sqlx::Row;
use storage::{Database, Migration, StorageError};

use bus::OutboxPublisher as Publisher;

pub const MIGRATIONS: &[Migration] = &[Migration::portable(
    1,
    "posts",
    "CREATE TABLE posts (
        id VARCHAR(64) NOT NULL PRIMARY KEY,
        title TEXT NOT NULL,
        created_at BIGINT NOT NULL
    )",
)];

/// A post as the write side knows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct Post {
    #[schema(format = Uuid)]
    pub id: String,
    pub title: String,
}

#[derive(Debug, thiserror::Error)]
pub enum PostError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Bus(#[from] bus::BusError),
}

impl From<sqlx::Error> for PostError {
    fn from(error: sqlx::Error) -> Self {
        PostError::Storage(error.into())
    }
}

#[derive(Debug, Clone)]
pub struct PostStore {
    db: Database,
    publisher: Publisher,
}

impl PostStore {
    pub fn new(db: Database, publisher: Publisher) -> Self {
        Self { db, publisher }
    }

    pub fn database(&self) -> &Database {
        &self.db
    }

    /// Stores a new post and its `PostCreated` in one transaction: either both exist or
    /// neither does.
    pub async fn create(&self, title: Title) -> Result<Post, PostError> {
        // Time-ordered ids: listing by id is listing by creation, which paging relies on.
        let post = Post {
            id: uuid::Uuid::now_v7().to_string(),
            title: title.into_string(),
        };
        // A write shares its commit with the others arriving at once (group commit):
        // the 201 goes out only after the commit that holds it is on disk.
        let mut statements = self.db.statements();
        statements
            .push("INSERT INTO posts (id, title, created_at) VALUES (?, ?, ?)")
            .bind(&post.id)
            .bind(&post.title)
            .bind(unix_now());
        let event = BlogEvent::PostCreated(PostCreated {
            id: post.id.clone(),
            title: post.title.clone(),
        });
        let message = bus::Message::from(&event);
        self.publisher.stage(&mut statements, message.clone())?;
        // Statements only: sent to the database with the other creates arriving at once,
        // in one request.
        self.db.commit_statements(statements).await?;
        self.publisher.committed_with(vec![message]);
        Ok(post)
    }

    /// Posts in creation order, after the post `after` (exclusive), at most `limit`.
    pub async fn list(
        &self,
        after: Option<&str>,
        limit: Option<u32>,
    ) -> Result<Vec<Post>, PostError> {
        let limit = i64::from(limit.unwrap_or(u32::MAX));
        let rows = sqlx::query(
            self.db
                .sql("SELECT id, title FROM posts WHERE id > ? ORDER BY id LIMIT ?"),
        )
        .bind(after.unwrap_or(""))
        .bind(limit)
        .fetch_all(self.db.pool())
        .await?;
        rows.into_iter()
            .map(|row| {
                Ok(Post {
                    id: row.try_get("id")?,
                    title: row.try_get("title")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(PostError::from)
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}
