//! The read model: posts with their comments, built only from events.
//!
//! Every change is keyed by the post's or comment's id, so a post or comment is stored
//! once however many copies of its event arrive (a page of the log folded again, a
//! push, a bus delivery); deliveries and pushes also go through the [`bus::Runner`]'s
//! inbox as consumer `query`, and the log's pages are folded without it
//! ([`ViewStore::fold_log_page`]). Folding is order-independent: a
//! comment that arrives before its post is kept and shows once the post is there, and a
//! `CommentUpdated` that overtakes its `CommentCreated` is not undone by it.
//!
//! `query_state` holds the log cursor (the last event-log sequence number folded in)
//! and a version bumped by every change, which lets `GET /posts` reuse the last
//! rendering while nothing changed — across replicas too, as it lives in the database.

use std::collections::BTreeMap;

use contracts::blog::{BlogEvent, CommentStatus};
use serde::Serialize;
use sqlx::{Any, Row, Transaction};
use storage::{Database, Dialect, Migration, Statements, StorageError};

pub const MIGRATIONS: &[Migration] = &[
    Migration::portable(
        1,
        "posts",
        "CREATE TABLE query_posts (
            id VARCHAR(64) NOT NULL PRIMARY KEY,
            title TEXT NOT NULL
        )",
    ),
    Migration::portable(
        2,
        "comments",
        "CREATE TABLE query_comments (
            id VARCHAR(64) NOT NULL PRIMARY KEY,
            post_id VARCHAR(64) NOT NULL,
            content TEXT NOT NULL,
            status VARCHAR(16) NOT NULL
        )",
    ),
    Migration::portable(
        3,
        "comments by post",
        "CREATE INDEX query_comments_by_post ON query_comments (post_id, id)",
    ),
    Migration::portable(
        4,
        "applied messages",
        "CREATE TABLE query_applied (
            message_id VARCHAR(255) NOT NULL PRIMARY KEY
        )",
    ),
    Migration::portable(
        5,
        "state",
        "CREATE TABLE query_state (
            id SMALLINT NOT NULL PRIMARY KEY,
            log_seq BIGINT NOT NULL,
            version BIGINT NOT NULL
        )",
    ),
    // The view's own inbox becomes the bus inbox the runner keeps (the bus tables are
    // migrated first, see `ViewStore::open`); longer ids were never bus message ids.
    Migration::portable(
        6,
        "applied messages in the bus inbox",
        "INSERT INTO bus_inbox (consumer, message_id, processed_at)
            SELECT 'query', message_id, 0 FROM query_applied WHERE LENGTH(message_id) <= 64",
    ),
    Migration::portable(7, "no own inbox", "DROP TABLE query_applied"),
];

/// A comment in the view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ViewComment {
    pub id: String,
    pub content: String,
    pub status: CommentStatus,
}

/// A post in the view, with its comments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ViewPost {
    pub id: String,
    pub title: String,
    pub comments: Vec<ViewComment>,
}

/// The course's `GET /posts` body: posts by id.
pub type View = BTreeMap<String, ViewPost>;

#[derive(Debug, Clone)]
pub struct ViewStore {
    db: Database,
    /// For reads only; may be the same pool as `db`.
    reader: Database,
}

impl ViewStore {
    /// Opens the view: writes go through `db`, reads of the view through `reader` (the
    /// same database, possibly another pool).
    pub async fn open(db: Database, reader: Database) -> Result<Self, StorageError> {
        db.migrate("bus", bus::outbox_migrations()).await?;
        db.migrate(crate::NAME, MIGRATIONS).await?;
        let store = Self { db, reader };
        store.ensure_state().await?;
        Ok(store)
    }

    pub fn database(&self) -> &Database {
        &self.db
    }

    async fn ensure_state(&self) -> Result<(), StorageError> {
        let mut tx = self.db.begin().await?;
        let row = sqlx::query("SELECT 1 FROM query_state WHERE id = 1")
            .fetch_optional(&mut *tx)
            .await?;
        if row.is_none() {
            sqlx::query("INSERT INTO query_state (id, log_seq, version) VALUES (1, 0, 0)")
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Folds a page of the event log into the view and moves the cursor to `last_seq`, in
    /// one write; returns how many events it folded in. The cursor alone says what of the
    /// log is in the view: every change is one that leaves the view as it is when made
    /// again ([`change`](Self::change)), so an event also pushed to `POST /events`, or a
    /// page read again after a crash before its commit, changes nothing twice.
    pub async fn fold_log_page(
        &self,
        events: &[BlogEvent],
        last_seq: i64,
    ) -> Result<usize, StorageError> {
        let mut last = self.db.statements();
        let mut applied = 0;
        for event in events {
            if !matches!(event, BlogEvent::CommentModerated(_)) {
                self.change(&mut last, event);
                applied += 1;
            }
        }
        // A new version only when the view changed: a bump makes every reader render
        // the whole view again.
        last.push(if applied > 0 {
            "UPDATE query_state SET log_seq = ?, version = version + 1 WHERE id = 1"
        } else {
            "UPDATE query_state SET log_seq = ? WHERE id = 1"
        })
        .bind(last_seq);
        self.db.commit_statements(last).await?;
        Ok(applied)
    }

    /// Applies a delivered (or pushed) event inside the runner's transaction, which
    /// holds its inbox record, and bumps the view's version.
    pub async fn apply(
        &self,
        tx: &mut Transaction<'static, Any>,
        event: &BlogEvent,
    ) -> Result<(), StorageError> {
        let mut last = self.db.statements();
        self.apply_last(&mut last, event);
        last.execute(tx).await
    }

    /// [`apply`](Self::apply) as statements for the runner to send with the end of its
    /// write ([`bus::Handler::apply_with_last`]): folding an event in needs no answer
    /// from the database, so it costs the consumer no request of its own.
    pub fn apply_last(&self, last: &mut Statements, event: &BlogEvent) {
        self.change(last, event);
        last.push("UPDATE query_state SET version = version + 1 WHERE id = 1");
    }

    /// The view's change for `event`, whatever arrived before it: a post or comment
    /// already there is kept (a `CommentUpdated` may overtake its `CommentCreated`, and
    /// the newer status stays), an update of a comment not yet there inserts it.
    fn change(&self, last: &mut Statements, event: &BlogEvent) {
        let mysql = self.db.dialect() == Dialect::MySql;
        match event {
            BlogEvent::PostCreated(post) => {
                last.push(if mysql {
                    "INSERT INTO query_posts (id, title) VALUES (?, ?) ON DUPLICATE KEY UPDATE id = id"
                } else {
                    "INSERT INTO query_posts (id, title) VALUES (?, ?) ON CONFLICT (id) DO NOTHING"
                })
                .bind(post.id.clone())
                .bind(post.title.clone());
            }
            BlogEvent::CommentCreated(comment) => {
                last.push(if mysql {
                    "INSERT INTO query_comments (id, post_id, content, status) VALUES (?, ?, ?, ?) ON DUPLICATE KEY UPDATE id = id"
                } else {
                    "INSERT INTO query_comments (id, post_id, content, status) VALUES (?, ?, ?, ?) ON CONFLICT (id) DO NOTHING"
                })
                .bind(comment.id.clone())
                .bind(comment.post_id.clone())
                .bind(comment.content.clone())
                .bind(comment.status.as_str());
            }
            BlogEvent::CommentUpdated(update) => {
                last.push(if mysql {
                    "INSERT INTO query_comments (id, post_id, content, status) VALUES (?, ?, ?, ?) ON DUPLICATE KEY UPDATE status = VALUES(status), content = VALUES(content)"
                } else {
                    "INSERT INTO query_comments (id, post_id, content, status) VALUES (?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET status = excluded.status, content = excluded.content"
                })
                .bind(update.id.clone())
                .bind(update.post_id.clone())
                .bind(update.content.clone())
                .bind(update.status.as_str());
            }
            // The course's query service ignores it too: CommentUpdated follows.
            BlogEvent::CommentModerated(_) => {}
        }
    }

    /// The last event-log sequence number folded in.
    pub async fn log_cursor(&self) -> Result<i64, StorageError> {
        let row = sqlx::query("SELECT log_seq FROM query_state WHERE id = 1")
            .fetch_one(self.db.pool())
            .await?;
        Ok(row.try_get(0)?)
    }

    /// Changes whenever the view changes.
    pub async fn version(&self) -> Result<i64, StorageError> {
        let row = sqlx::query("SELECT version FROM query_state WHERE id = 1")
            .fetch_one(self.reader.pool())
            .await?;
        Ok(row.try_get(0)?)
    }

    /// Empties the view, its inbox and its cursor, so that it is rebuilt from the log.
    pub async fn clear(&self) -> Result<(), StorageError> {
        let mut tx = self.db.begin().await?;
        // The view's inbox records too (the group is a constant name, no input).
        let inbox = format!("bus_inbox WHERE consumer = '{}'", crate::GROUP);
        for table in ["query_comments", "query_posts", inbox.as_str()] {
            sqlx::query(sqlx::AssertSqlSafe(format!("DELETE FROM {table}")))
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query("UPDATE query_state SET log_seq = 0 WHERE id = 1")
            .execute(&mut *tx)
            .await?;
        bump_version(&mut tx).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Posts created after post `after`, at most `limit` (all when `None`), with their
    /// comments.
    pub async fn view(
        &self,
        after: Option<&str>,
        limit: Option<u32>,
    ) -> Result<View, StorageError> {
        let after = after.unwrap_or("");
        let limit = i64::from(limit.unwrap_or(u32::MAX));
        let mut conn = self.reader.pool().acquire().await?;
        let posts = sqlx::query(
            self.db
                .sql("SELECT id, title FROM query_posts WHERE id > ? ORDER BY id LIMIT ?"),
        )
        .bind(after)
        .bind(limit)
        .fetch_all(&mut *conn)
        .await?;
        let mut view = View::new();
        for row in posts {
            let id: String = row.try_get("id")?;
            let post = ViewPost {
                id: id.clone(),
                title: row.try_get("title")?,
                comments: Vec::new(),
            };
            view.insert(id, post);
        }
        let Some(last) = view.keys().next_back().cloned() else {
            return Ok(view);
        };
        // The comments of exactly those posts: a range of the (post_id, id) index.
        let comments = sqlx::query(self.db.sql(
            "SELECT id, post_id, content, status FROM query_comments WHERE post_id > ? AND post_id <= ? ORDER BY post_id, id",
        ))
        .bind(after)
        .bind(&last)
        .fetch_all(&mut *conn)
        .await?;
        for row in comments {
            let post_id: String = row.try_get("post_id")?;
            let status: String = row.try_get("status")?;
            if let Some(post) = view.get_mut(&post_id) {
                post.comments.push(ViewComment {
                    id: row.try_get("id")?,
                    content: row.try_get("content")?,
                    status: CommentStatus::parse(&status).unwrap_or(CommentStatus::Pending),
                });
            }
        }
        Ok(view)
    }
}

async fn bump_version(tx: &mut Transaction<'static, Any>) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE query_state SET version = version + 1 WHERE id = 1")
        .execute(&mut **tx)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A view written before the runner kept its message ids in `query_applied`; after
    /// the upgrade they are the runner's inbox records, so an event applied then is not
    /// applied again when it is redelivered or replayed from the log.
    #[tokio::test]
    async fn an_upgraded_view_keeps_what_it_applied_in_the_bus_inbox() {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("query.db").display());
        let db = Database::connect(&url).await.expect("connect");
        db.migrate(crate::NAME, &MIGRATIONS[..5])
            .await
            .expect("the old schema");
        sqlx::query("INSERT INTO query_applied (message_id) VALUES ('PostCreated:p1')")
            .execute(db.pool())
            .await
            .expect("an applied message");

        let store = ViewStore::open(db.clone(), db.clone())
            .await
            .expect("upgraded");
        let inbox = bus::Inbox::new(&db);
        assert!(
            inbox
                .contains(&db, crate::GROUP, "PostCreated:p1")
                .await
                .expect("inbox")
        );
        let post = BlogEvent::PostCreated(contracts::blog::PostCreated {
            id: "p1".into(),
            title: "Hello".into(),
        });
        // The log's copy of an event the view holds (here pushed before the upgrade, its
        // post row written then) leaves the view as it is.
        sqlx::query("INSERT INTO query_posts (id, title) VALUES ('p1', 'Hello')")
            .execute(db.pool())
            .await
            .expect("the post");
        assert_eq!(
            store
                .fold_log_page(std::slice::from_ref(&post), 1)
                .await
                .expect("replayed"),
            1
        );
        let view = store.view(None, None).await.expect("view");
        assert_eq!(view.len(), 1, "{view:?}");
        assert_eq!(view["p1"].title, "Hello");
        assert_eq!(store.log_cursor().await.expect("cursor"), 1);
        let version = store.version().await.expect("version");
        store.clear().await.expect("cleared");
        assert_eq!(
            store.log_cursor().await.expect("cursor"),
            0,
            "the log is read again"
        );
        assert_eq!(
            store.version().await.expect("version"),
            version + 1,
            "readers see that the view changed"
        );
        assert!(
            !inbox
                .contains(&db, crate::GROUP, "PostCreated:p1")
                .await
                .expect("inbox"),
            "a rebuild forgets the view's inbox"
        );
    }
}
