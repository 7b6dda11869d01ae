//! The ordered, durable log of blog events, kept causally valid.
//!
//! Events reach this service from several publishers (each service's outbox relay), so
//! they can arrive out of causal order: a `CommentCreated` can overtake the
//! `PostCreated` of its post. A reader replaying the log (the query service rebuilding
//! its view, the course's query service) must never see an effect before its cause, so
//! an event is appended only once what it depends on is in the log:
//!
//! | event | needs | provides |
//! |---|---|---|
//! | `PostCreated` | — | `post:<id>` |
//! | `CommentCreated` | `post:<postId>` | `comment:<id>` |
//! | `CommentModerated` | `comment:<id>` | `moderated:<id>:<status>` |
//! | `CommentUpdated` | `moderated:<id>:<status>` | — |
//! | any other type | — | — |
//!
//! An event whose cause is not there yet is parked; appending an event appends, in the
//! same transaction, every parked event that was waiting for it (and so on). Recording
//! transactions are serialised by a lock row (`event_log_writer`), in every process and
//! dialect, so sequence numbers are dense and increase in commit order: a reader paging
//! with `?after=SEQ` never skips an event that commits later with a smaller number.

use std::collections::{HashMap, HashSet, VecDeque};

use contracts::blog::{BlogEvent, Envelope};
use sqlx::{Any, Row, Transaction};
use storage::{Database, Dialect, Migration, Statements, StorageError};

/// An integer column, whichever width the dialect gives it (PostgreSQL's are 32-bit
/// for small expressions).
fn integer(row: &sqlx::any::AnyRow, column: usize) -> Result<i64, sqlx::Error> {
    row.try_get::<i64, _>(column)
        .or_else(|_| row.try_get::<i32, _>(column).map(i64::from))
}

pub const MIGRATIONS: &[Migration] = &[
    Migration::portable(
        1,
        "event log",
        "CREATE TABLE event_log (
            seq BIGINT NOT NULL PRIMARY KEY,
            message_id VARCHAR(255) NOT NULL,
            event_type VARCHAR(100) NOT NULL,
            data TEXT NOT NULL,
            provides VARCHAR(255) NULL,
            appended_at BIGINT NOT NULL
        )",
    ),
    Migration::portable(
        2,
        "event log by message",
        "CREATE UNIQUE INDEX event_log_message ON event_log (message_id)",
    ),
    Migration::portable(
        3,
        "event log by provided key",
        "CREATE INDEX event_log_provides ON event_log (provides)",
    ),
    Migration::portable(
        4,
        "parked events",
        "CREATE TABLE event_log_parked (
            message_id VARCHAR(255) NOT NULL PRIMARY KEY,
            waits_for VARCHAR(255) NOT NULL,
            event_type VARCHAR(100) NOT NULL,
            data TEXT NOT NULL,
            parked_at BIGINT NOT NULL
        )",
    ),
    Migration::portable(
        5,
        "parked events by cause",
        "CREATE INDEX event_log_parked_waits ON event_log_parked (waits_for, parked_at)",
    ),
    Migration::portable(
        6,
        "writer lock",
        "CREATE TABLE event_log_writer (
            id SMALLINT NOT NULL PRIMARY KEY,
            appends BIGINT NOT NULL
        )",
    ),
    Migration::portable(
        7,
        "writer lock row",
        "INSERT INTO event_log_writer (id, appends) VALUES (1, 0)",
    ),
    Migration::portable(
        8,
        "event log trace context",
        "ALTER TABLE event_log ADD COLUMN traceparent VARCHAR(55) NULL",
    ),
    Migration::portable(
        9,
        "parked events trace context",
        "ALTER TABLE event_log_parked ADD COLUMN traceparent VARCHAR(55) NULL",
    ),
];

/// One entry of the log, as `GET /events` shows it: the course's `{"type", "data"}`
/// plus its sequence number, for paging.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct LoggedEvent {
    /// The event's place in the log, from 1.
    #[schema(minimum = 1)]
    pub seq: i64,
    /// The event type (`PostCreated`, `CommentCreated`, `CommentModerated`,
    /// `CommentUpdated`, or another type published to `POST /events`).
    #[serde(rename = "type")]
    pub event_type: String,
    /// The event's fields (see docs/API.md), as they were stored: JSON text, passed on
    /// without being parsed into a tree and written out again.
    #[schema(value_type = serde_json::Value)]
    pub data: Box<serde_json::value::RawValue>,
    /// The W3C trace context the event was published in, when its message carried one:
    /// a reader that acts on the event continues that trace.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")]
    pub traceparent: Option<String>,
}

/// An event handed to the log: its message's id, the event, and the W3C `traceparent`
/// the message was published in (kept beside the event, for the log's readers).
#[derive(Debug, Clone, Copy)]
pub struct Arrival<'a> {
    pub message_id: &'a str,
    pub envelope: &'a Envelope,
    pub traceparent: Option<&'a str>,
}

impl<'a> Arrival<'a> {
    pub fn new(message_id: &'a str, envelope: &'a Envelope) -> Self {
        Self {
            message_id,
            envelope,
            traceparent: None,
        }
    }

    /// In the trace `traceparent` names, if it is well-formed (a malformed one is not
    /// kept: readers would only drop it).
    pub fn in_trace(self, traceparent: Option<&'a str>) -> Self {
        Self {
            traceparent: traceparent.filter(|t| trace_context::TraceParent::parse(t).is_some()),
            ..self
        }
    }
}

/// One page of the log.
#[derive(Debug, Clone, Default)]
pub struct LogPage {
    pub events: Vec<LoggedEvent>,
    /// Whether events follow the last one.
    pub more: bool,
}

/// What happened to an event handed to [`EventLog::record`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// Appended, with this many parked events after it.
    Appended { released: usize },
    /// Its cause is not in the log yet.
    Parked,
    /// Seen before (appended or parked): nothing done.
    Duplicate,
}

/// What an event needs before it and what it lets follow.
fn causality(envelope: &Envelope) -> (Option<String>, Option<String>) {
    match envelope.blog_event() {
        Ok(Some(BlogEvent::PostCreated(e))) => (None, Some(format!("post:{}", e.id))),
        Ok(Some(BlogEvent::CommentCreated(e))) => (
            Some(format!("post:{}", e.post_id)),
            Some(format!("comment:{}", e.id)),
        ),
        Ok(Some(BlogEvent::CommentModerated(e))) => (
            Some(format!("comment:{}", e.id)),
            Some(format!("moderated:{}:{}", e.id, e.status.as_str())),
        ),
        Ok(Some(BlogEvent::CommentUpdated(e))) => (
            Some(format!("moderated:{}:{}", e.id, e.status.as_str())),
            None,
        ),
        // Types the blog does not know, or malformed data of a known type (accepted by
        // the facade only if well-formed, so this is a foreign publisher): no order.
        Ok(None) | Err(_) => (None, None),
    }
}

/// What a batch's recording knows, from its read and from the events before.
#[derive(Debug, Default)]
struct Known {
    /// Message ids appended or parked.
    seen: HashSet<String>,
    /// Keys in the log.
    provided: HashSet<String>,
    /// Keys that events parked before this batch wait for.
    waited_for: HashSet<String>,
    /// Events parked in this batch, by the key they wait for (their index).
    parked_here: HashMap<String, Vec<usize>>,
    /// Events parked before this batch that it appended.
    released: HashSet<String>,
}

#[derive(Debug, Clone)]
pub struct EventLog {
    db: Database,
    /// Counts the commits that appended through this value (or a clone of it), for
    /// readers waiting at the end of the log ([`EventLog::appends`]).
    appended: std::sync::Arc<tokio::sync::watch::Sender<u64>>,
}

impl EventLog {
    pub fn new(db: Database) -> Self {
        Self {
            db,
            appended: std::sync::Arc::new(tokio::sync::watch::Sender::new(0)),
        }
    }

    /// Tells the readers waiting in [`appends`](Self::appends) that a commit appended
    /// events: call it once the transaction that recorded them has committed.
    pub fn committed_appends(&self) {
        self.appended
            .send_modify(|commits| *commits = commits.wrapping_add(1));
    }

    /// Changes when a commit through this log (in this process) appended events: a
    /// reader at the end of the log subscribes before it reads, then waits on it. Appends
    /// by other processes sharing the database are not told here.
    pub fn appends(&self) -> tokio::sync::watch::Receiver<u64> {
        self.appended.subscribe()
    }

    pub fn database(&self) -> &Database {
        &self.db
    }

    /// Records `event` inside `tx`: the reads run there, the
    /// writes go into `last`, to run after them in the same transaction (with the end of
    /// the consumer's write, one request — see [`bus::Handler::apply_with_last`]).
    pub async fn record(
        &self,
        tx: &mut Transaction<'static, Any>,
        last: &mut Statements,
        event: Arrival<'_>,
    ) -> Result<Recorded, StorageError> {
        let recorded = self.record_batch(tx, last, &[event]).await?;
        Ok(recorded.into_iter().next().unwrap_or(Recorded::Duplicate))
    }

    /// Records `events` in order, as [`record`](Self::record) would
    /// one after the other, with one read for all of them: the consumer's batches
    /// ([`bus::Handler::apply_batch`]). What an event of the batch provides counts for
    /// the events after it, and one parked in the batch is released by a later one.
    pub async fn record_batch(
        &self,
        tx: &mut Transaction<'static, Any>,
        last: &mut Statements,
        events: &[Arrival<'_>],
    ) -> Result<Vec<Recorded>, StorageError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let causes: Vec<(Option<String>, Option<String>)> = events
            .iter()
            .map(|event| causality(event.envelope))
            .collect();
        let mut known = self.facts(tx, events, &causes).await?;
        let mut recorded = Vec::with_capacity(events.len());
        for (index, (event, (needs, provides))) in events.iter().zip(&causes).enumerate() {
            let Arrival {
                message_id,
                envelope,
                traceparent,
            } = *event;
            if !known.seen.insert(message_id.to_owned()) {
                recorded.push(Recorded::Duplicate);
                continue;
            }
            let data = envelope.data.to_string();
            if let Some(needs) = needs
                && !known.provided.contains(needs)
            {
                last.push(
                    "INSERT INTO event_log_parked (message_id, waits_for, event_type, data, parked_at, traceparent) VALUES (?, ?, ?, ?, ?, ?)",
                )
                .bind(message_id.to_owned())
                .bind(needs.clone())
                .bind(envelope.event_type.clone())
                .bind(data)
                .bind(unix_millis())
                .bind(traceparent.map(str::to_owned));
                known
                    .parked_here
                    .entry(needs.clone())
                    .or_default()
                    .push(index);
                recorded.push(Recorded::Parked);
                continue;
            }
            append(
                last,
                message_id,
                &envelope.event_type,
                &data,
                provides.as_deref(),
                traceparent,
            );
            let released = match provides {
                Some(key) => {
                    self.release(tx, last, key, events, &causes, &mut known)
                        .await?
                }
                None => 0,
            };
            recorded.push(Recorded::Appended { released });
        }
        Ok(recorded)
    }

    /// Takes the writer lock, then reads in one query what recording `events` needs to
    /// know: which were seen before (appended or parked), which of their causes are in
    /// the log, and which keys they provide have parked events waiting. On SQLite the
    /// lock and the read go in one request to its thread; a server takes them one after
    /// the other. Each list is as long as the batch, rounded up to a power of two (the
    /// first entry repeated), so a few statement texts serve every batch size.
    async fn facts(
        &self,
        tx: &mut Transaction<'static, Any>,
        events: &[Arrival<'_>],
        causes: &[(Option<String>, Option<String>)],
    ) -> Result<Known, StorageError> {
        // Recording is serial: every transaction first writes the one row of
        // `event_log_writer`, which takes SQLite's write lock (so the reads below are not
        // of a stale snapshot) and a row lock on PostgreSQL and MySQL (so an event parked
        // by one transaction cannot be missed by another that appends its cause).
        const LOCK: &str = "UPDATE event_log_writer SET appends = appends + 1 WHERE id = 1";
        let width = events.len().next_power_of_two();
        let list = vec!["?"; width].join(", ");
        let read = format!(
            "SELECT 0, message_id FROM event_log WHERE message_id IN ({list}) \
             UNION ALL SELECT 0, message_id FROM event_log_parked WHERE message_id IN ({list}) \
             UNION ALL SELECT 1, provides FROM event_log WHERE provides IN ({list}) \
             UNION ALL SELECT 2, waits_for FROM event_log_parked WHERE waits_for IN ({list}) GROUP BY waits_for"
        );
        let sql = match self.db.dialect() {
            Dialect::Sqlite => format!("{LOCK}; {read}"),
            Dialect::Postgres | Dialect::MySql => {
                sqlx::query(LOCK).execute(&mut **tx).await?;
                read
            }
        };
        // Padding: a key no event has (keys are `post:…`, `comment:…`, `moderated:…`).
        let padded = |values: Vec<&str>| -> Vec<String> {
            let first = values.first().copied().unwrap_or("");
            (0..width)
                .map(|i| values.get(i).copied().unwrap_or(first).to_owned())
                .collect()
        };
        let ids = padded(events.iter().map(|event| event.message_id).collect());
        let needs = padded(
            causes
                .iter()
                .map(|(n, _)| n.as_deref().unwrap_or(""))
                .collect(),
        );
        let provides = padded(
            causes
                .iter()
                .map(|(_, p)| p.as_deref().unwrap_or(""))
                .collect(),
        );
        let mut query = sqlx::query(self.db.sql(sql));
        for list in [&ids, &ids, &needs, &provides] {
            for value in list {
                query = query.bind(value.clone());
            }
        }
        // All rows: sqlx's first row of a request of several statements is not looked
        // for past the first statement.
        let rows = query.fetch_all(&mut **tx).await?;
        let mut known = Known::default();
        for row in rows {
            let key: Option<String> = row.try_get(1)?;
            let Some(key) = key else { continue };
            match integer(&row, 0)? {
                0 => known.seen.insert(key),
                1 => known.provided.insert(key),
                _ => known.waited_for.insert(key),
            };
        }
        Ok(known)
    }

    /// Appends the events waiting for `provided` — parked before this batch or in it —
    /// then those waiting for them, and so on.
    async fn release(
        &self,
        tx: &mut Transaction<'static, Any>,
        last: &mut Statements,
        provided: &str,
        events: &[Arrival<'_>],
        causes: &[(Option<String>, Option<String>)],
        known: &mut Known,
    ) -> Result<usize, StorageError> {
        let mut released = 0;
        // The first key's waiters before this batch are known from the batch's read;
        // the keys of events released after it are looked up.
        let mut keys: VecDeque<(String, bool)> =
            VecDeque::from([(provided.to_owned(), known.waited_for.contains(provided))]);
        while let Some((key, look)) = keys.pop_front() {
            known.provided.insert(key.clone());
            if look {
                let rows = sqlx::query(self.db.sql(
                    "SELECT message_id, event_type, data, traceparent FROM event_log_parked WHERE waits_for = ? ORDER BY parked_at, message_id",
                ))
                .bind(&key)
                .fetch_all(&mut **tx)
                .await?;
                for row in rows {
                    let message_id: String = row.try_get("message_id")?;
                    if !known.released.insert(message_id.clone()) {
                        continue;
                    }
                    let event_type: String = row.try_get("event_type")?;
                    let data: String = row.try_get("data")?;
                    let traceparent: Option<String> = row.try_get("traceparent")?;
                    let envelope = Envelope {
                        event_type: event_type.clone(),
                        data: serde_json::from_str(&data).unwrap_or_default(),
                    };
                    let (_, provides) = causality(&envelope);
                    append(
                        last,
                        &message_id,
                        &event_type,
                        &data,
                        provides.as_deref(),
                        traceparent.as_deref(),
                    );
                    last.push("DELETE FROM event_log_parked WHERE message_id = ?")
                        .bind(message_id);
                    released += 1;
                    keys.extend(provides.map(|key| (key, true)));
                }
            }
            // Parked by this batch: their rows are among the statements still to run.
            for index in known.parked_here.remove(&key).unwrap_or_default() {
                let event = events[index];
                let provides = causes[index].1.clone();
                append(
                    last,
                    event.message_id,
                    &event.envelope.event_type,
                    &event.envelope.data.to_string(),
                    provides.as_deref(),
                    event.traceparent,
                );
                last.push("DELETE FROM event_log_parked WHERE message_id = ?")
                    .bind(event.message_id.to_owned());
                released += 1;
                keys.extend(provides.map(|key| (key, true)));
            }
        }
        Ok(released)
    }

    /// Events after sequence number `after`, in order: at most `limit`, and no more
    /// once their data reaches `budget` characters. The page's extent is found first
    /// from the events' sizes alone; only its events are then read, so a log of large
    /// events is never read whole (a streamed query would not do: drivers read ahead).
    /// Sequence numbers are dense and events never change, so the two reads agree.
    pub async fn read_page(
        &self,
        after: i64,
        limit: u32,
        budget: usize,
    ) -> Result<LogPage, StorageError> {
        let sizes = sqlx::query(
            self.db
                .sql("SELECT seq, LENGTH(data) FROM event_log WHERE seq > ? ORDER BY seq LIMIT ?"),
        )
        .bind(after)
        // One more than the page: whether it exists says whether a next page does.
        .bind(i64::from(limit) + 1)
        .fetch_all(self.db.pool())
        .await?;
        let mut last = None;
        let (mut count, mut chars) = (0_usize, 0_usize);
        let mut more = false;
        for row in &sizes {
            if count >= limit as usize || chars >= budget {
                more = true;
                break;
            }
            // PostgreSQL's LENGTH is an INTEGER, SQLite's and MySQL's a BIGINT.
            let size = integer(row, 1)?;
            chars = chars.saturating_add(usize::try_from(size).unwrap_or(usize::MAX));
            count += 1;
            last = Some(row.try_get::<i64, _>(0)?);
        }
        let Some(last) = last else {
            return Ok(LogPage::default());
        };
        let rows = sqlx::query(self.db.sql(
            "SELECT seq, event_type, data, traceparent FROM event_log WHERE seq > ? AND seq <= ? ORDER BY seq",
        ))
        .bind(after)
        .bind(last)
        .fetch_all(self.db.pool())
        .await?;
        let events = rows
            .into_iter()
            .map(|row| {
                let data: &str = row.try_get("data")?;
                Ok(LoggedEvent {
                    seq: row.try_get("seq")?,
                    event_type: row.try_get("event_type")?,
                    data: raw_data(data).map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
                    traceparent: row.try_get("traceparent")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()?;
        Ok(LogPage { events, more })
    }

    /// How many events wait for their cause.
    pub async fn parked(&self) -> Result<i64, StorageError> {
        let row = sqlx::query("SELECT COUNT(*) FROM event_log_parked")
            .fetch_one(self.db.pool())
            .await?;
        Ok(row.try_get(0)?)
    }
}

fn unix_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Appends an event at the next sequence number, found by the statement itself when it
/// runs (appends are serialised by `event_log_writer`, and run in the order pushed).
fn append(
    last: &mut Statements,
    message_id: &str,
    event_type: &str,
    data: &str,
    provides: Option<&str>,
    traceparent: Option<&str>,
) {
    last.push(
        "INSERT INTO event_log (seq, message_id, event_type, data, provides, appended_at, traceparent) \
         SELECT COALESCE(MAX(seq), 0) + 1, ?, ?, ?, ?, ?, ? FROM event_log",
    )
    .bind(message_id.to_owned())
    .bind(event_type.to_owned())
    .bind(data.to_owned())
    .bind(provides.map(str::to_owned))
    .bind(unix_millis())
    .bind(traceparent.map(str::to_owned));
}

/// Stored event data as it goes out: the text itself when it is JSON (it always is when
/// written by [`EventLog::record`]), otherwise the text as a JSON string.
fn raw_data(data: &str) -> Result<Box<serde_json::value::RawValue>, serde_json::Error> {
    serde_json::from_str(data).or_else(|_| serde_json::value::to_raw_value(data))
}

#[cfg(test)]
mod tests {
    use contracts::blog::{
        CommentCreated, CommentModerated, CommentStatus, CommentUpdated, PostCreated,
    };
    use storage::scratch::ScratchDatabase;

    use super::*;

    /// A well-formed `traceparent` whose trace id spells `message_id` in hex.
    fn trace_of(message_id: &str) -> String {
        let hex: String = message_id.bytes().map(|b| format!("{b:02x}")).collect();
        format!("00-{hex:0>32}-00f067aa0ba902b7-01")
    }

    /// The log's sequence numbers and event types, in order.
    async fn order(log: &EventLog) -> Vec<String> {
        let page = log.read_page(0, 10, 1 << 20).await.expect("page");
        page.events
            .into_iter()
            .map(|e| format!("{} {}", e.seq, e.event_type))
            .collect()
    }

    /// Runs `test` on a fresh log in SQLite, and in PostgreSQL and MySQL where the
    /// environment names their servers.
    async fn on_every_backend(test: impl AsyncFn(&Database, &EventLog)) {
        let dir = tempfile::tempdir().expect("temporary directory");
        let mut urls = vec![(
            format!("sqlite://{}", dir.path().join("log.db").display()),
            None,
        )];
        for var in ["FLOTILLA_TEST_POSTGRES_URL", "FLOTILLA_TEST_MYSQL_URL"] {
            if let Some(server) = test_kit::real_server_url(var) {
                let scratch = ScratchDatabase::create(&server).await.expect("scratch");
                urls.push((scratch.url().to_owned(), Some(scratch)));
            }
        }
        for (url, scratch) in urls {
            let db = Database::connect(&url).await.expect("connect");
            db.migrate("event-bus", MIGRATIONS).await.expect("migrate");
            test(&db, &EventLog::new(db.clone())).await;
            db.close().await;
            if let Some(scratch) = scratch {
                scratch
                    .drop_database()
                    .await
                    .expect("drop scratch database");
            }
        }
    }

    /// A comment recorded before its post waits, parked, and is appended right after the
    /// post; the sequence numbers stay dense and a repeat is a duplicate — with the
    /// writes run as the consumer runs them, after the reads, with the write's end.
    #[tokio::test]
    async fn a_comment_before_its_post_waits_and_follows_it_on_every_backend() {
        on_every_backend(async |db, log| {
            let record = async |id: &str, event: &BlogEvent| {
                let mut write = db.write().await.expect("write");
                let mut last = db.statements();
                let recorded = log
                    .record(
                        write.tx().expect("tx"),
                        &mut last,
                        Arrival::new(id, &Envelope::from(event)),
                    )
                    .await
                    .expect("record");
                write.commit_with(last).await.expect("commit");
                recorded
            };
            let post = BlogEvent::PostCreated(PostCreated {
                id: "p1".into(),
                title: "Hello".into(),
            });
            let comment = BlogEvent::CommentCreated(CommentCreated {
                id: "c1".into(),
                post_id: "p1".into(),
                content: "first".into(),
                status: CommentStatus::Pending,
            });
            let other = BlogEvent::PostCreated(PostCreated {
                id: "p0".into(),
                title: "Earlier".into(),
            });
            assert_eq!(
                record("m0", &other).await,
                Recorded::Appended { released: 0 }
            );
            assert_eq!(
                record("m2", &comment).await,
                Recorded::Parked,
                "{}",
                db.dialect()
            );
            assert_eq!(record("m2", &comment).await, Recorded::Duplicate);
            assert_eq!(
                record("m1", &post).await,
                Recorded::Appended { released: 1 }
            );
            assert_eq!(record("m1", &post).await, Recorded::Duplicate);
            assert_eq!(
                order(log).await,
                ["1 PostCreated", "2 PostCreated", "3 CommentCreated"],
                "{}",
                db.dialect()
            );
        })
        .await;
    }
    /// One batch recorded as its events would be one by one: an event parked in the
    /// batch is released by a later one, an event parked before the batch by one of
    /// the batch's (and what it releases in turn), a repeat inside the batch or of a
    /// parked event is a duplicate, and the log comes out in causal order.
    #[tokio::test]
    async fn a_batch_records_in_causal_order_with_what_it_releases_on_every_backend() {
        let post = |id: &str| {
            Envelope::from(&BlogEvent::PostCreated(PostCreated {
                id: id.into(),
                title: format!("post {id}"),
            }))
        };
        let comment = CommentCreated {
            id: "c1".into(),
            post_id: "p1".into(),
            content: "first".into(),
            status: CommentStatus::Pending,
        };
        let moderated = Envelope::from(&BlogEvent::CommentModerated(CommentModerated {
            id: "c1".into(),
            post_id: "p1".into(),
            status: CommentStatus::Approved,
            content: "first".into(),
        }));
        let updated = Envelope::from(&BlogEvent::CommentUpdated(CommentUpdated {
            id: "c1".into(),
            status: CommentStatus::Approved,
            post_id: "p1".into(),
            content: "first".into(),
        }));
        let comment = Envelope::from(&BlogEvent::CommentCreated(comment));
        let (p1, p2) = (post("p1"), post("p2"));
        on_every_backend(async |db, log| {
            let record = async |events: &[(&str, &Envelope)]| {
                let mut write = db.write().await.expect("write");
                let mut last = db.statements();
                // Each event in a trace of its own (the message id's digits).
                let traces: Vec<String> = events.iter().map(|(id, _)| trace_of(id)).collect();
                let events: Vec<Arrival<'_>> = events
                    .iter()
                    .zip(&traces)
                    .map(|((id, envelope), trace)| {
                        Arrival::new(id, envelope).in_trace(Some(trace.as_str()))
                    })
                    .collect();
                let recorded = log
                    .record_batch(write.tx().expect("tx"), &mut last, &events)
                    .await
                    .expect("record");
                write.commit_with(last).await.expect("commit");
                recorded
            };
            // Before the batch: the moderation, parked for its comment.
            assert_eq!(record(&[("m-mod", &moderated)]).await, [Recorded::Parked]);
            let recorded = record(&[
                ("m-upd", &updated),
                ("m-c1", &comment),
                ("m-p1", &p1),
                ("m-p1", &p1),
                ("m-mod", &moderated),
                ("m-p2", &p2),
            ])
            .await;
            assert_eq!(
                recorded,
                [
                    Recorded::Parked,
                    Recorded::Parked,
                    Recorded::Appended { released: 3 },
                    Recorded::Duplicate,
                    Recorded::Duplicate,
                    Recorded::Appended { released: 0 },
                ],
                "{}",
                db.dialect()
            );
            assert_eq!(
                order(log).await,
                [
                    "1 PostCreated",
                    "2 CommentCreated",
                    "3 CommentModerated",
                    "4 CommentUpdated",
                    "5 PostCreated",
                ],
                "{}",
                db.dialect()
            );
            assert_eq!(log.parked().await.expect("parked"), 0, "{}", db.dialect());
            // Each keeps its message's trace context, through parking and release.
            let traces: Vec<Option<String>> = log
                .read_page(0, 10, 1 << 20)
                .await
                .expect("page")
                .events
                .into_iter()
                .map(|e| e.traceparent)
                .collect();
            let expected: Vec<Option<String>> = ["m-p1", "m-c1", "m-mod", "m-upd", "m-p2"]
                .map(|id| Some(trace_of(id)))
                .into();
            assert_eq!(traces, expected, "{}", db.dialect());
            // A batch of repeats only: nothing more.
            assert_eq!(
                record(&[("m-c1", &comment), ("m-p2", &p2)]).await,
                [Recorded::Duplicate, Recorded::Duplicate]
            );
            assert_eq!(
                log.read_page(0, 10, 1 << 20)
                    .await
                    .expect("page")
                    .events
                    .len(),
                5
            );
        })
        .await;
    }
}
