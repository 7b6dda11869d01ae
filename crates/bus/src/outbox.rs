//! Transactional outbox and inbox on a service's own database (SQLite, PostgreSQL,
//! MySQL/MariaDB through `storage::Database`).
//!
//! *Outbox*: instead of publishing after its commit (a dual write that loses the message
//! if the process dies in between), a service inserts the outgoing [`Message`] into
//! `bus_outbox` inside the transaction that writes its business rows
//! ([`Outbox::enqueue`]). An [`OutboxRelay`] then publishes unsent rows in insertion order
//! and marks them sent. A crash between publish and mark re-publishes the same message id
//! — harmless, because consumers deduplicate.
//!
//! *Inbox*: a consumer inserts `(consumer, message id)` into `bus_inbox` inside the
//! transaction that applies a message's effects — with [`Inbox::record`] first (`false`:
//! already processed, commit nothing and ack), or with [`Inbox::stage`] last, as the
//! handler runner does (a plain insert: for an id processed before it fails on the key
//! and the whole write is undone; [`Inbox::contains`] then tells the duplicate from a
//! failure). Effect and "processed" mark commit together, so a redelivery never repeats
//! an effect.
//!
//! Both tables come from [`migrations`]; apply them with the service's own:
//! `db.migrate("bus", bus::outbox_migrations())`.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use sqlx::{AnyConnection, Row};
use storage::{Database, Dialect, Migration, Statements, StorageError};
use tokio::sync::Notify;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{BusError, EventBus, Message, now_ms};

const MIGRATIONS: &[Migration] = &[
    Migration::per_dialect(
        1,
        "bus outbox",
        "CREATE TABLE IF NOT EXISTS bus_outbox (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            message_id VARCHAR(64) NOT NULL,
            routing_key VARCHAR(255) NOT NULL,
            headers TEXT NOT NULL,
            body BLOB NOT NULL,
            created_at BIGINT NOT NULL,
            sent_at BIGINT
        );
        CREATE INDEX IF NOT EXISTS bus_outbox_unsent ON bus_outbox (sent_at, seq)",
        "CREATE TABLE IF NOT EXISTS bus_outbox (
            seq BIGSERIAL PRIMARY KEY,
            message_id VARCHAR(64) NOT NULL,
            routing_key VARCHAR(255) NOT NULL,
            headers TEXT NOT NULL,
            body BYTEA NOT NULL,
            created_at BIGINT NOT NULL,
            sent_at BIGINT
        );
        CREATE INDEX IF NOT EXISTS bus_outbox_unsent ON bus_outbox (sent_at, seq)",
        "CREATE TABLE IF NOT EXISTS bus_outbox (
            seq BIGINT AUTO_INCREMENT PRIMARY KEY,
            message_id VARCHAR(64) NOT NULL,
            routing_key VARCHAR(255) NOT NULL,
            headers TEXT NOT NULL,
            body LONGBLOB NOT NULL,
            created_at BIGINT NOT NULL,
            sent_at BIGINT,
            INDEX bus_outbox_unsent (sent_at, seq)
        )",
    ),
    Migration::portable(
        2,
        "bus inbox",
        "CREATE TABLE IF NOT EXISTS bus_inbox (
            consumer VARCHAR(128) NOT NULL,
            message_id VARCHAR(64) NOT NULL,
            processed_at BIGINT NOT NULL,
            PRIMARY KEY (consumer, message_id)
        )",
    ),
];

/// The schema of `bus_outbox` and `bus_inbox`, for `Database::migrate("bus", …)`.
pub fn migrations() -> &'static [Migration] {
    MIGRATIONS
}

/// Writes outgoing messages inside a service's transaction.
#[derive(Debug, Clone, Copy)]
pub struct Outbox {
    dialect: Dialect,
}

impl Outbox {
    pub fn new(db: &Database) -> Self {
        Self {
            dialect: db.dialect(),
        }
    }

    /// Adds `message` to the outbox as part of the transaction on `conn` (pass
    /// `&mut *tx`). It is published after the transaction commits, never if it rolls back.
    pub async fn enqueue(
        &self,
        conn: &mut AnyConnection,
        message: &Message,
    ) -> Result<(), BusError> {
        let headers = serde_json::to_string(&message.headers).map_err(BusError::Encode)?;
        sqlx::query(self.dialect.sql(ENQUEUE))
            .bind(message.id.clone())
            .bind(message.routing_key.clone())
            .bind(headers)
            .bind(message.body.to_vec())
            .bind(now_ms())
            .execute(conn)
            .await?;
        Ok(())
    }

    /// Adds `message` to `statements`, to go into the outbox with the write's other
    /// statements ([`storage::Write::commit_with`]): the same as [`enqueue`](Self::enqueue),
    /// without a request of its own.
    pub fn stage(&self, statements: &mut Statements, message: &Message) -> Result<(), BusError> {
        let headers = serde_json::to_string(&message.headers).map_err(BusError::Encode)?;
        statements
            .push(ENQUEUE)
            .bind(message.id.clone())
            .bind(message.routing_key.clone())
            .bind(headers)
            .bind(message.body.to_vec())
            .bind(now_ms());
        Ok(())
    }
}

/// A message into the outbox.
const ENQUEUE: &str = "INSERT INTO bus_outbox (message_id, routing_key, headers, body, created_at) VALUES (?, ?, ?, ?, ?)";

/// The sending side of a service's transactional outbox, as every producing service
/// uses it: [`enqueue`](Self::enqueue) inside the transaction that makes the change,
/// [`committed`](Self::committed) after the commit so the relay publishes at once
/// instead of at its next poll.
#[derive(Debug, Clone)]
pub struct OutboxPublisher {
    outbox: Outbox,
    relay: OutboxRelay,
}

impl OutboxPublisher {
    /// Adds the outbox tables to `db` and spawns, on `tasks`, the relay that publishes
    /// them to `bus` until `shutdown`. `name` labels the relay's metrics and logs.
    pub async fn start(
        name: &str,
        db: &Database,
        bus: Arc<dyn EventBus>,
        tasks: &TaskTracker,
        shutdown: CancellationToken,
    ) -> Result<Self, StorageError> {
        db.migrate("bus", MIGRATIONS).await?;
        let relay = OutboxRelay::new(name, db.clone(), bus);
        tasks.spawn(relay.clone().run(shutdown));
        Ok(Self {
            outbox: Outbox::new(db),
            relay,
        })
    }

    /// Connects to the bus at `bus_url` (default options) and [`start`](Self::start)s the
    /// publisher on it: what a producing service does on start. The bus is returned for
    /// the service's consumers.
    pub async fn connect(
        name: &str,
        db: &Database,
        bus_url: &str,
        tasks: &TaskTracker,
        shutdown: CancellationToken,
    ) -> Result<(Arc<dyn EventBus>, Self), BusError> {
        let bus = crate::connect(bus_url, crate::BusOptions::for_service(name)).await?;
        let publisher = Self::start(name, db, bus.clone(), tasks, shutdown).await?;
        Ok((bus, publisher))
    }

    /// Writes `message` to the outbox as part of the transaction on `conn` (pass
    /// `&mut *tx`); it is published after the commit, never if the transaction rolls back.
    pub async fn enqueue(
        &self,
        conn: &mut AnyConnection,
        message: impl Into<Message>,
    ) -> Result<(), BusError> {
        self.outbox.enqueue(conn, &message.into()).await
    }

    /// Adds `message` to the outbox statements of a write; see [`Outbox::stage`].
    pub fn stage(
        &self,
        statements: &mut Statements,
        message: impl Into<Message>,
    ) -> Result<(), BusError> {
        self.outbox.stage(statements, &message.into())
    }

    /// Call after committing a transaction that enqueued messages.
    pub fn committed(&self) {
        self.relay.wake();
    }

    /// Call after committing a transaction that staged `messages` (and nothing else
    /// for the outbox): on SQLite the relay publishes them as they are, without reading
    /// them back; see [`OutboxRelay::hand`].
    pub fn committed_with(&self, messages: Vec<Message>) {
        self.relay.hand(messages);
    }
}

/// Publishes a database's outbox: in order, in batches, retrying while the bus is away.
#[derive(Debug, Clone)]
pub struct OutboxRelay {
    db: Database,
    bus: Arc<dyn EventBus>,
    wake: Arc<Notify>,
    batch: usize,
    /// How long sent rows are kept (for an operator to look at) before pruning.
    keep_sent: Duration,
    /// A label for metrics and logs (the service name).
    name: String,
    /// The last batch stopped at a message the bus refused.
    refused: Arc<AtomicBool>,
    /// Messages handed over at their commit ([`hand`](Self::hand)), not yet published.
    handed: Arc<std::sync::Mutex<Handed>>,
}

/// What the relay was told since it last looked.
#[derive(Debug, Default)]
struct Handed {
    messages: Vec<Message>,
    /// Something was committed that was not handed over: read the outbox.
    read: bool,
}

impl OutboxRelay {
    pub fn new(name: impl Into<String>, db: Database, bus: Arc<dyn EventBus>) -> Self {
        Self {
            db,
            bus,
            wake: Arc::new(Notify::new()),
            batch: 256,
            keep_sent: Duration::from_secs(3600),
            name: name.into(),
            refused: Arc::default(),
            handed: Arc::default(),
        }
    }

    /// Call after committing a transaction that enqueued messages, to publish them now
    /// instead of at the next poll.
    pub fn wake(&self) {
        if let Ok(mut handed) = self.handed.lock() {
            handed.read = true;
        }
        self.wake.notify_one();
    }

    /// Call after committing a transaction that staged exactly `messages`: on SQLite,
    /// whose outbox only this process relays, they are published as handed over and
    /// then marked sent — no read of the outbox between a commit and its publish. The
    /// rows stay the record: whatever is not published and marked this way (the bus
    /// refused it, the process died) the next read of the outbox finds (at the latest
    /// the relay's poll), and a message published twice is taken once by its consumers'
    /// inboxes. On servers, where replicas share the outbox, it is [`wake`](Self::wake).
    pub fn hand(&self, messages: Vec<Message>) {
        if self.db.dialect() != Dialect::Sqlite || messages.is_empty() {
            return self.wake();
        }
        match self.handed.lock() {
            // A relay that is behind (a slow or absent bus) holds at most a batch in
            // memory; past that the outbox's rows are the queue, read when it catches up.
            Ok(mut handed) if handed.messages.len() + messages.len() > self.batch => {
                handed.messages = Vec::new();
                handed.read = true;
            }
            Ok(mut handed) => handed.messages.extend(messages),
            Err(_) => return self.wake(),
        }
        self.wake.notify_one();
    }

    pub fn with_batch(mut self, batch: usize) -> Self {
        self.batch = batch.max(1);
        self
    }

    /// Runs until `shutdown`; spawn it on the service's task tracker.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut failures = 0u32;
        let mut last_prune = tokio::time::Instant::now();
        // Unsent rows may be waiting in the outbox (at start, after a failure, when
        // something was committed without being handed over, while a read returns full
        // batches): until a read finds them all published, only reads publish, in order,
        // and messages handed over meanwhile are left to them.
        let mut backlog = true;
        // And the outbox is read at least this often whatever is handed over: a row
        // committed without a word to the relay is found as it would be without the
        // handing over.
        let mut last_read = tokio::time::Instant::now();
        while !shutdown.is_cancelled() {
            let handed = match self.handed.lock() {
                Ok(mut handed) => std::mem::take(&mut *handed),
                Err(_) => Handed {
                    messages: Vec::new(),
                    read: true,
                },
            };
            backlog |= handed.read || last_read.elapsed() >= Duration::from_millis(200);
            let mut wait = None;
            if !backlog && !handed.messages.is_empty() {
                match self.relay_handed(handed.messages).await {
                    Ok(true) => {
                        failures = 0;
                        wait = Some(Duration::from_millis(200));
                    }
                    Ok(false) => backlog = true,
                    Err(error) => {
                        tracing::debug!(relay = %self.name, %error, "handed messages left to the outbox's next read");
                        backlog = true;
                    }
                }
            }
            let wait = if let Some(wait) = wait {
                wait
            } else {
                last_read = tokio::time::Instant::now();
                match self.relay_once().await {
                    Ok(n) if n == self.batch => {
                        failures = 0;
                        backlog = true;
                        Duration::ZERO
                    }
                    Ok(_) => {
                        failures = 0;
                        backlog = false;
                        Duration::from_millis(200)
                    }
                    Err(error) => {
                        backlog = true;
                        failures = failures.saturating_add(1);
                        let wait = Duration::from_millis(100)
                            .saturating_mul(2u32.saturating_pow(failures.min(6)))
                            .min(Duration::from_secs(5));
                        tracing::warn!(relay = %self.name, %error, retry_in = ?wait, "outbox relay cannot publish");
                        wait
                    }
                }
            };
            if last_prune.elapsed() > Duration::from_secs(60) {
                last_prune = tokio::time::Instant::now();
                if let Err(error) = self.prune().await {
                    tracing::warn!(relay = %self.name, %error, "cannot prune the outbox");
                }
            }
            if wait.is_zero() {
                continue;
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = self.wake.notified() => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Publishes one batch of unsent messages; returns how many.
    pub async fn relay_once(&self) -> Result<usize, BusError> {
        let dialect = self.db.dialect();
        // The row locks make a second relay (another replica) wait instead of publishing
        // the same rows out of order. SQLite has a single writer anyway.
        let lock = match dialect {
            Dialect::Sqlite => "",
            Dialect::Postgres | Dialect::MySql => " FOR UPDATE",
        };
        // SQLite: no transaction around the read (one hand-off to its worker thread, not
        // three); nothing is held while publishing anyway (below).
        let mut tx = match dialect {
            Dialect::Sqlite => None,
            Dialect::Postgres | Dialect::MySql => Some(self.db.begin().await?),
        };
        let select = sqlx::query(dialect.sql(format!(
            "SELECT seq, message_id, routing_key, headers, body, created_at FROM bus_outbox
             WHERE sent_at IS NULL ORDER BY seq LIMIT {}{lock}",
            self.batch
        )));
        let rows = match tx.as_mut() {
            Some(tx) => select.fetch_all(&mut **tx).await?,
            None => {
                let rows = select.fetch_all(self.db.pool()).await?;
                // What was read is on disk before it is published: on SQLite a batch is
                // visible from its commit, a moment before its sync, and a message out
                // for a write a power loss then undid would be a ghost.
                self.db.durable().await?;
                rows
            }
        };
        let mut seqs = Vec::with_capacity(rows.len());
        let mut messages = Vec::with_capacity(rows.len());
        let mut oldest = None;
        for row in &rows {
            seqs.push(row.try_get::<i64, _>(0)?);
            let headers: String = row.try_get(3)?;
            messages.push(Message {
                id: row.try_get(1)?,
                routing_key: row.try_get(2)?,
                headers: serde_json::from_str(&headers).unwrap_or_default(),
                body: row.try_get::<Vec<u8>, _>(4)?.into(),
            });
            oldest = oldest.or(Some(row.try_get::<i64, _>(5)?));
        }
        #[allow(clippy::cast_precision_loss)]
        {
            let lag_seconds = oldest.map_or(0.0, |t| (now_ms() - t).max(0) as f64 / 1000.0);
            metrics::gauge!("bus_outbox_lag_seconds", "outbox" => self.name.clone())
                .set(lag_seconds);
            metrics::gauge!("bus_outbox_lag", "outbox" => self.name.clone()).set(rows.len() as f64);
        }
        if messages.is_empty() {
            if let Some(tx) = tx {
                tx.rollback().await?;
            }
            return Ok(0);
        }
        let count = messages.len();
        // SQLite: no transaction is held while publishing. Holding the read snapshot makes
        // the UPDATE below fail with SQLITE_BUSY_SNAPSHOT whenever the service committed
        // meanwhile (always, under steady writes), and holding the write lock instead
        // stalls every writer of the service for the publish's fsync. One process relays
        // a SQLite file, so nothing else publishes these rows in between.
        let (published, refused) = self.publish_in_order(messages).await;
        if published == 0 {
            return Err(refused.unwrap_or(BusError::Closed));
        }
        seqs.truncate(published);
        let mut update = self.db.statements();
        // Runs of consecutive sequence numbers (the usual batch is one) as ranges: one
        // statement text whatever the batch's size, so it is prepared once.
        for (first, last) in runs(&seqs) {
            update
                .push("UPDATE bus_outbox SET sent_at = ? WHERE seq BETWEEN ? AND ?")
                .bind(now_ms())
                .bind(first)
                .bind(last);
        }
        match tx.take() {
            Some(mut tx) => {
                update.execute(&mut tx).await?;
                tx.commit().await?;
            }
            None => {
                // Joins the service's group commit instead of paying an fsync of its own,
                // sent with the other statement-only writes.
                self.db.commit_statements(update).await?;
            }
        }
        match refused {
            Some(error) => Err(error),
            None => Ok(count),
        }
    }

    /// Publishes messages handed over at their commit ([`hand`](Self::hand)) and marks
    /// their rows sent. `true` when every one was published.
    async fn relay_handed(&self, messages: Vec<Message>) -> Result<bool, BusError> {
        let ids: Vec<String> = messages.iter().map(|m| m.id.clone()).collect();
        let count = ids.len();
        let (published, refused) = self.publish_in_order(messages).await;
        if published > 0 {
            let mut update = self.db.statements();
            let sent_at = now_ms();
            // Among the unsent rows only (the index on `sent_at, seq`): few, however
            // long the outbox keeps what it sent.
            let ids: Vec<String> = ids.into_iter().take(published).collect();
            if self.db.dialect() == Dialect::Sqlite {
                // One statement text however many were published, so SQLite's
                // connection prepares it once and the requests it joins
                // (`commit_statements`) keep few shapes.
                update
                    .push("UPDATE bus_outbox SET sent_at = ? WHERE sent_at IS NULL AND message_id IN (SELECT value FROM json_each(?))")
                    .bind(sent_at)
                    .bind(serde_json::to_string(&ids).unwrap_or_else(|_| "[]".to_owned()));
            } else {
                for id in ids {
                    update
                        .push("UPDATE bus_outbox SET sent_at = ? WHERE sent_at IS NULL AND message_id = ?")
                        .bind(sent_at)
                        .bind(id);
                }
            }
            self.db.commit_statements(update).await?;
        }
        match refused {
            Some(error) => Err(error),
            None => Ok(published == count),
        }
    }

    /// Publishes `messages` in order, stopping at the first the bus does not take.
    /// After a refusal the head of the next batch goes alone first: while it stays
    /// unroutable, the messages behind it are not published again at every retry.
    async fn publish_in_order(&self, mut messages: Vec<Message>) -> (usize, Option<BusError>) {
        let mut published = 0;
        if self.refused.load(Ordering::Relaxed) && messages.len() > 1 {
            let rest = messages.split_off(1);
            if let Some(head) = messages.pop()
                && let Err(error) = self.bus.publish(head).await
            {
                return (0, Some(error));
            }
            published = 1;
            messages = rest;
        }
        let (more, error) = self.bus.publish_in_order(messages).await;
        self.refused.store(error.is_some(), Ordering::Relaxed);
        (published + more, error)
    }

    /// Messages not yet published.
    pub async fn backlog(&self) -> Result<u64, BusError> {
        let row = sqlx::query("SELECT COUNT(*) FROM bus_outbox WHERE sent_at IS NULL")
            .fetch_one(self.db.pool())
            .await?;
        Ok(u64::try_from(row.try_get::<i64, _>(0)?).unwrap_or(0))
    }

    /// Deletes sent rows older than `keep_sent`. On SQLite in slices, each a write of its
    /// own through the service's group commit: a delete on the pool's connection would
    /// wait on the file's lock behind the writers (and hold that connection meanwhile),
    /// and one delete of everything would hold the writers up.
    async fn prune(&self) -> Result<(), BusError> {
        const SLICE: u64 = 1000;
        let cutoff = now_ms() - i64::try_from(self.keep_sent.as_millis()).unwrap_or(i64::MAX);
        if self.db.dialect() != Dialect::Sqlite {
            sqlx::query(
                self.db
                    .sql("DELETE FROM bus_outbox WHERE sent_at IS NOT NULL AND sent_at < ?"),
            )
            .bind(cutoff)
            .execute(self.db.pool())
            .await?;
            return Ok(());
        }
        loop {
            let mut write = self.db.write().await?;
            let deleted = sqlx::query(
                "DELETE FROM bus_outbox WHERE seq IN (SELECT seq FROM bus_outbox \
                 WHERE sent_at IS NOT NULL AND sent_at < ? ORDER BY seq LIMIT 1000)",
            )
            .bind(cutoff)
            .execute(&mut **write.tx()?)
            .await?
            .rows_affected();
            write.commit().await?;
            if deleted < SLICE {
                return Ok(());
            }
        }
    }
}

/// `seqs` (ascending) as runs of consecutive numbers: `[1, 2, 3, 7]` → `(1, 3), (7, 7)`.
fn runs(seqs: &[i64]) -> Vec<(i64, i64)> {
    let mut runs: Vec<(i64, i64)> = Vec::new();
    for &seq in seqs {
        match runs.last_mut() {
            Some((_, last)) if seq == *last + 1 => *last = seq,
            _ => runs.push((seq, seq)),
        }
    }
    runs
}

/// Records processed message ids inside a consumer's transaction.
#[derive(Debug, Clone, Copy)]
pub struct Inbox {
    dialect: Dialect,
}

impl Inbox {
    pub fn new(db: &Database) -> Self {
        Self {
            dialect: db.dialect(),
        }
    }

    /// Marks `message_id` processed by `consumer` in the transaction on `conn`. `true`:
    /// first time, apply the effects in the same transaction and commit. `false`: already
    /// processed — apply nothing, just ack.
    pub async fn record(
        &self,
        conn: &mut AnyConnection,
        consumer: &str,
        message_id: &str,
    ) -> Result<bool, BusError> {
        // "Insert unless present" without an error, because on PostgreSQL a failed
        // statement would abort the caller's transaction. A concurrent duplicate waits
        // on the key until the first commits, then inserts nothing.
        let sql = match self.dialect {
            Dialect::Sqlite => {
                "INSERT OR IGNORE INTO bus_inbox (consumer, message_id, processed_at) VALUES (?, ?, ?)"
            }
            Dialect::Postgres => {
                "INSERT INTO bus_inbox (consumer, message_id, processed_at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING"
            }
            Dialect::MySql => {
                "INSERT IGNORE INTO bus_inbox (consumer, message_id, processed_at) VALUES (?, ?, ?)"
            }
        };
        let done = sqlx::query(self.dialect.sql(sql))
            .bind(consumer.to_owned())
            .bind(message_id.to_owned())
            .bind(now_ms())
            .execute(conn)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Adds the record of `message_id` for `consumer` to a write's last statements
    /// ([`storage::Write::commit_with`]), as a plain insert: if the inbox holds it
    /// already, the write fails on the key and is undone whole, and
    /// [`contains`](Self::contains) then tells a duplicate from a failure. One request
    /// less than [`record`](Self::record) for every message that is not a duplicate —
    /// nearly all of them.
    pub fn stage(&self, last: &mut Statements, consumer: &str, message_id: &str) {
        last.push("INSERT INTO bus_inbox (consumer, message_id, processed_at) VALUES (?, ?, ?)")
            .bind(consumer.to_owned())
            .bind(message_id.to_owned())
            .bind(now_ms());
    }

    /// Whether `consumer` recorded `message_id` (outside any transaction): how a
    /// delivery past its last attempt learns that it was applied.
    pub async fn contains(
        &self,
        db: &Database,
        consumer: &str,
        message_id: &str,
    ) -> Result<bool, BusError> {
        let row = sqlx::query(
            self.dialect
                .sql("SELECT 1 FROM bus_inbox WHERE consumer = ? AND message_id = ?"),
        )
        .bind(consumer.to_owned())
        .bind(message_id.to_owned())
        .fetch_optional(db.pool())
        .await?;
        Ok(row.is_some())
    }

    /// Which of `message_ids` the inbox holds for `consumer`, in one query per 200 ids
    /// (a catch-up that must skip what was applied already, without a write each).
    pub async fn held<'a>(
        &self,
        db: &Database,
        consumer: &str,
        message_ids: impl IntoIterator<Item = &'a str>,
    ) -> Result<std::collections::HashSet<String>, BusError> {
        let ids: Vec<&str> = message_ids.into_iter().collect();
        let mut held = std::collections::HashSet::new();
        for chunk in ids.chunks(200) {
            let placeholders = vec!["?"; chunk.len()].join(", ");
            let mut query = sqlx::query_scalar::<_, String>(self.dialect.sql(format!(
                "SELECT message_id FROM bus_inbox WHERE consumer = ? AND message_id IN ({placeholders})"
            )))
            .bind(consumer.to_owned());
            for id in chunk {
                query = query.bind((*id).to_owned());
            }
            held.extend(query.fetch_all(db.pool()).await?);
        }
        Ok(held)
    }

    /// Forgets ids processed before `age` ago (after which a redelivery is implausible).
    pub async fn prune(&self, db: &Database, age: Duration) -> Result<u64, BusError> {
        let cutoff = now_ms() - i64::try_from(age.as_millis()).unwrap_or(i64::MAX);
        let done = sqlx::query(db.sql("DELETE FROM bus_inbox WHERE processed_at < ?"))
            .bind(cutoff)
            .execute(db.pool())
            .await?;
        Ok(done.rows_affected())
    }
}

#[cfg(test)]
mod tests {
    use super::runs;

    #[test]
    fn sent_rows_are_marked_in_runs_of_consecutive_numbers() {
        assert_eq!(runs(&[]), vec![]);
        assert_eq!(runs(&[4]), vec![(4, 4)]);
        assert_eq!(runs(&[1, 2, 3, 7, 9, 10]), vec![(1, 3), (7, 7), (9, 10)]);
    }
}
