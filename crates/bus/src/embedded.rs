//! The embedded bus: a durable SQLite file, no server.
//!
//! Layout: `messages` holds each published body once (with a count of groups still owing
//! it); `deliveries` holds one row per (group, message) — fan-out happens at publish time,
//! for the groups bound to a matching routing key, as a topic exchange does (a publish
//! whose routing key no group is bound to is refused with `BusError::Unroutable`, as a
//! mandatory publish is); `dead_letters`
//! keeps what exhausted its attempts; `bindings` records each group's patterns.
//!
//! Durability and speed: every write goes through one writer thread that owns the
//! connection and commits whatever has queued up meanwhile in one transaction (group
//! commit), so a burst of publishes, leases and acks costs one WAL fsync, not one each. A
//! publish is answered only once its transaction is on disk (by default; `synchronous=
//! normal` in the URL answers at the commit), so an acknowledged publish survives `kill -9`
//! and power loss.
//!
//! The fsync is not in the consumers' way: the writer commits without it, lets consumers
//! take the message at once and hands the answers that must wait for the disk to a
//! syncer thread, which fsyncs the write-ahead log — once for every batch committed
//! meanwhile — and then answers. A consumer may so apply a message before the bus has it
//! on disk. That is safe: if the power goes before the fsync, the bus loses the message
//! and the consumer's acknowledgement together, but its publisher was never answered, so
//! it publishes the same message id again (an outbox has not marked it sent) and the
//! consumer's inbox, which committed the effect with its own fsync, takes it as a
//! duplicate. Nothing is lost and nothing applied twice; the event reaches its consumer
//! an fsync sooner on every hop.
//!
//! Delivery: a consumer *leases* up to `prefetch` deliveries (attempt count +1, lease
//! until now + `lease`). Ack deletes the delivery; nack sets it available again after the
//! backoff, or moves it to `dead_letters` after the last attempt; a lease that expires
//! (the consumer died) makes it available to any consumer of the group — once more after
//! the last attempt, marked exhausted (`Attempt::is_exhausted`) for the handler to settle
//! without redoing the work — and one that expires after that dead-letters it. While a delivery is held — handed out
//! and neither settled nor dropped — this process renews its lease every third of
//! `lease`, so a handler may take as long as it needs (a long conversion) without its
//! message going to a second consumer; a process that dies stops renewing, and its
//! deliveries are leased again once `lease` has passed. A consumer with nothing to do
//! leaves its lease request parked in the writer, which answers it in the very
//! transaction that publishes to its group — no wake-up and second round trip between
//! publish and delivery; work published by another process sharing the file, or whose
//! retry delay has passed, is found by the poll of the parked requests.
//! Opening the same file twice in one process shares one writer.

use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, OnceLock, Weak,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use futures::{StreamExt, future::BoxFuture};
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

mod open_lock;

use open_lock::OpenLock;

use crate::{
    BusError, BusOptions, DeadLetter, Delivery, EventBus, Message, Nack, RetryPolicy, Subscriber,
    Subscription, delivery::Settle, now_ms, topic_matches,
};

/// How many queued commands one transaction may take.
const MAX_BATCH: usize = 2048;
/// How often parked lease requests are tried again, for work published by another
/// process or whose retry delay has passed.
const POLL_INTERVAL: Duration = Duration::from_millis(200);
/// Lease renewals per lease period: two may be late or lost before a lease lapses.
const RENEWALS_PER_LEASE: u32 = 3;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    msg_id TEXT NOT NULL UNIQUE,
    routing_key TEXT NOT NULL,
    headers TEXT NOT NULL,
    body BLOB NOT NULL,
    published_at INTEGER NOT NULL,
    pending INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS deliveries (
    id INTEGER PRIMARY KEY,
    group_name TEXT NOT NULL,
    seq INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    available_at INTEGER NOT NULL,
    lease_until INTEGER NOT NULL DEFAULT 0,
    last_error TEXT
);
CREATE INDEX IF NOT EXISTS deliveries_by_group ON deliveries (group_name, seq);
CREATE INDEX IF NOT EXISTS deliveries_leased ON deliveries (group_name, lease_until) WHERE lease_until > 0;
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY,
    group_name TEXT NOT NULL,
    msg_id TEXT NOT NULL,
    routing_key TEXT NOT NULL,
    headers TEXT NOT NULL,
    body BLOB NOT NULL,
    attempts INTEGER NOT NULL,
    reason TEXT NOT NULL,
    dead_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS dead_letters_by_group ON dead_letters (group_name, id);
CREATE TABLE IF NOT EXISTS bindings (
    group_name TEXT NOT NULL,
    pattern TEXT NOT NULL,
    PRIMARY KEY (group_name, pattern)
);
CREATE TABLE IF NOT EXISTS signals (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    body BLOB NOT NULL,
    sent_at INTEGER NOT NULL
);
";

/// The embedded bus; see the module documentation.
#[derive(Debug)]
pub struct EmbeddedBus {
    shared: Arc<Shared>,
    /// The service using this handle ([`BusOptions::service`]).
    service: Option<Arc<str>>,
}

#[derive(Debug)]
struct Shared {
    path: PathBuf,
    commands: mpsc::Sender<Command>,
    wakeups: Wakeups,
    /// Deliveries handed out by this process and not yet settled or dropped, as
    /// (delivery id, attempt): their leases are renewed until then.
    held: Held,
    /// The attempt after which a failed delivery is dead-lettered.
    max_attempts: u32,
    /// Cancelled when the last handle goes: stops the maintenance task.
    stop: CancellationToken,
    /// The tap of this bus file in this process.
    tap: Arc<crate::tap::Tap>,
}

type Held = Arc<Mutex<HashSet<(i64, i64)>>>;

impl Drop for Shared {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Per-group counters bumped after a commit that made work available to the group.
type Wakeups = Arc<Mutex<HashMap<String, watch::Sender<u64>>>>;

fn wake(wakeups: &Wakeups, group: &str) {
    if let Ok(map) = wakeups.lock()
        && let Some(sender) = map.get(group)
    {
        sender.send_modify(|n| *n = n.wrapping_add(1));
    }
}

fn subscribe_wakeups(wakeups: &Wakeups, group: &str) -> watch::Receiver<u64> {
    match wakeups.lock() {
        Ok(mut map) => map
            .entry(group.to_owned())
            .or_insert_with(|| watch::channel(0).0)
            .subscribe(),
        // A poisoned map only costs promptness: the consumer still polls.
        Err(_) => watch::channel(0).1,
    }
}

/// The wakeup key of a signal topic (beside the groups' names, which have no `!`).
fn signal_wakeup(topic: &str) -> String {
    format!("!signal:{topic}")
}

/// Files opened in this process, so that every service of `flotilla up` shares one
/// writer and wakes the others' consumers at once.
/// A stored message's headers, kept as a JSON object of strings; anything else (a file
/// written by hand, a damaged row) reads as no headers rather than failing the
/// delivery. Public for the fuzz targets (fuzz/).
#[doc(hidden)]
pub fn decode_headers(text: &str) -> BTreeMap<String, String> {
    serde_json::from_str(text).unwrap_or_default()
}

/// Values as a JSON array, for `json_each(?)`: one statement, prepared once, for any
/// number of rows.
fn json<T: serde::Serialize>(values: &[T]) -> String {
    serde_json::to_string(values).unwrap_or_else(|_| "[]".to_owned())
}

fn open_files() -> &'static Mutex<HashMap<PathBuf, Weak<Shared>>> {
    static OPEN: OnceLock<Mutex<HashMap<PathBuf, Weak<Shared>>>> = OnceLock::new();
    OPEN.get_or_init(Default::default)
}

type Reply<T> = oneshot::Sender<Result<T, BusError>>;

struct Leased {
    delivery_id: i64,
    attempts: i64,
    message: Message,
}

/// What the tap is told once a publish has committed: run by the writer before it
/// answers and before it wakes the consumers, so that a watcher sees a message published
/// before anyone takes it.
type OnCommit = Box<dyn FnOnce() + Send>;

enum Command {
    Publish(Vec<Message>, Option<OnCommit>, Reply<()>),
    Bind(String, Vec<String>, Reply<()>),
    /// Up to this many deliveries of the group; when none is available the request waits
    /// in the writer (parked) and is answered as soon as a publish — or, for those of
    /// other processes and retries coming due, the next poll — makes some available.
    Lease(String, usize, Reply<Vec<Leased>>),
    /// Try the parked lease requests again (see [`POLL_INTERVAL`]).
    Poll,
    /// These deliveries are done.
    Ack(Vec<i64>, Reply<()>),
    /// Extend the leases of these (delivery id, attempt)s still held by this process.
    Renew(Vec<(i64, i64)>),
    /// An unsettled delivery was dropped (its handler failed or panicked): make it
    /// available again now instead of when the lease expires. The attempt still counts.
    Release(i64, i64),
    Nack {
        delivery_id: i64,
        attempt: i64,
        nack: Nack,
        reply: Reply<()>,
    },
    DeadLetters(Option<String>, usize, Reply<Vec<DeadLetter>>),
    Replay(Option<String>, Vec<String>, Reply<u64>),
    Depth(String, Reply<u64>),
    /// (waiting, leased, dead letters) of a group.
    Stats(String, Reply<(u64, u64, u64)>),
    /// A signal (see `EventBus::signal`).
    Signal(String, Bytes, Reply<()>),
    /// Signals of a topic after a sequence number (`None`: the last one, to start from).
    Signals(String, Option<i64>, Reply<Vec<(i64, Bytes)>>),
    /// Refresh the queue-depth gauges.
    Maintain,
}

impl Command {
    /// Whether the command's effect must be on disk before it is answered: a publish or
    /// anything a user asked for. Leases, acknowledgements, renewals and releases need
    /// not: losing one only delivers a message again, which inboxes absorb.
    fn must_survive_power_loss(&self) -> bool {
        !matches!(
            self,
            Command::Lease(..)
                | Command::Poll
                | Command::Ack(..)
                | Command::Renew(..)
                | Command::Release(..)
                | Command::DeadLetters(..)
                | Command::Depth(..)
                | Command::Stats(..)
                | Command::Signals(..)
                | Command::Maintain
        )
    }

    /// Answers with an error (the batch's transaction failed).
    fn fail(self, error: &str) {
        let error = || BusError::Embedded(error.to_owned());
        match self {
            Command::Publish(_, _, reply) | Command::Bind(_, _, reply) | Command::Ack(_, reply) => {
                let _ = reply.send(Err(error()));
            }
            Command::Nack { reply, .. } => {
                let _ = reply.send(Err(error()));
            }
            Command::Lease(_, _, reply) => {
                let _ = reply.send(Err(error()));
            }
            Command::DeadLetters(_, _, reply) => {
                let _ = reply.send(Err(error()));
            }
            Command::Replay(_, _, reply) => {
                let _ = reply.send(Err(error()));
            }
            Command::Depth(_, reply) => {
                let _ = reply.send(Err(error()));
            }
            Command::Stats(_, reply) => {
                let _ = reply.send(Err(error()));
            }
            Command::Signal(_, _, reply) => {
                let _ = reply.send(Err(error()));
            }
            Command::Signals(_, _, reply) => {
                let _ = reply.send(Err(error()));
            }
            Command::Maintain | Command::Poll | Command::Release(..) | Command::Renew(_) => {}
        }
    }
}

impl EmbeddedBus {
    /// Opens `sqlite://PATH[?synchronous=full|normal]`.
    pub async fn open_url(url: &str, options: BusOptions) -> Result<Self, BusError> {
        let rest = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
            .ok_or_else(|| BusError::UnsupportedUrl(url.to_owned()))?;
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let mut synchronous = Synchronous::Full;
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("synchronous", "full")) => synchronous = Synchronous::Full,
                Some(("synchronous", "normal")) => synchronous = Synchronous::Normal,
                // sqlx-style options that mean nothing here.
                Some(("mode", _)) => {}
                _ => {
                    return Err(BusError::InvalidSetting(format!(
                        "unknown embedded bus URL parameter '{pair}' (expected synchronous=full|normal)"
                    )));
                }
            }
        }
        if path.is_empty() || path.contains(":memory:") {
            return Err(BusError::InvalidSetting(
                "the embedded bus needs a file path (sqlite://PATH), not an in-memory database"
                    .to_owned(),
            ));
        }
        Self::open(Path::new(path), options, synchronous).await
    }

    /// Opens (creating if missing) the bus in the SQLite file `path`.
    pub async fn open(
        path: &Path,
        options: BusOptions,
        synchronous: Synchronous,
    ) -> Result<Self, BusError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|error| {
                BusError::InvalidSetting(format!("cannot create {}: {error}", parent.display()))
            })?;
        }
        let key = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
        if let Ok(files) = open_files().lock()
            && let Some(shared) = files.get(&key).and_then(Weak::upgrade)
        {
            return Ok(Self {
                shared,
                service: options.service.as_deref().map(Arc::from),
            });
        }
        let path_for_open = key.clone();
        let (conn, open_lock) = tokio::task::spawn_blocking(move || {
            let conn = open_connection(&path_for_open)?;
            let open_lock = OpenLock::acquire(&path_for_open, || release_orphaned_leases(&conn))?;
            Ok::<_, BusError>((conn, open_lock))
        })
        .await
        .map_err(|e| BusError::Embedded(format!("opening the bus file panicked: {e}")))??;

        let (commands, receiver) = mpsc::channel(16 * 1024);
        let wakeups: Wakeups = Arc::default();
        let parked_count = Arc::new(AtomicUsize::new(0));
        let mut writer = Writer {
            conn,
            bindings: Vec::new(),
            data_version: -1,
            retry: options.retry.clone(),
            lease_ms: i64::try_from(options.lease.as_millis()).unwrap_or(i64::MAX),
            wakeups: wakeups.clone(),
            syncer: match synchronous {
                Synchronous::Full => Some(spawn_syncer(&key)?),
                Synchronous::Normal => None,
            },
            parked: Vec::new(),
            parked_count: parked_count.clone(),
        };
        std::thread::Builder::new()
            .name("bus-writer".into())
            .spawn(move || {
                // Held while this process can still lease or settle anything.
                let _open_lock = open_lock;
                writer.run(receiver);
            })
            .map_err(|e| BusError::Embedded(format!("cannot start the writer thread: {e}")))?;

        let stop = CancellationToken::new();
        let held = Held::default();
        let shared = Arc::new(Shared {
            tap: crate::tap::of_bus(&key.to_string_lossy()),
            path: key.clone(),
            commands: commands.clone(),
            wakeups,
            held: held.clone(),
            max_attempts: options.retry.max_attempts,
            stop: stop.clone(),
        });
        let renew_every = (options.lease / RENEWALS_PER_LEASE).max(Duration::from_millis(10));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            let mut renew = tokio::time::interval(renew_every);
            renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut poll = tokio::time::interval(POLL_INTERVAL);
            poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let command = tokio::select! {
                    () = stop.cancelled() => break,
                    _ = tick.tick() => Command::Maintain,
                    _ = poll.tick() => {
                        if parked_count.load(Ordering::Relaxed) == 0 {
                            continue;
                        }
                        Command::Poll
                    }
                    _ = renew.tick() => {
                        let held: Vec<(i64, i64)> = match held.lock() {
                            Ok(held) => held.iter().copied().collect(),
                            Err(_) => continue,
                        };
                        if held.is_empty() {
                            continue;
                        }
                        Command::Renew(held)
                    }
                };
                if commands.send(command).await.is_err() {
                    break;
                }
            }
        });
        if let Ok(mut files) = open_files().lock() {
            files.retain(|_, weak| weak.strong_count() > 0);
            files.insert(key, Arc::downgrade(&shared));
        }
        Ok(Self {
            shared,
            service: options.service.as_deref().map(Arc::from),
        })
    }

    pub fn path(&self) -> &Path {
        &self.shared.path
    }
}

impl Shared {
    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, BusError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(make(reply))
            .await
            .map_err(|_| BusError::Closed)?;
        answer.await.map_err(|_| BusError::Closed)?
    }
}

/// How hard SQLite pushes a commit to the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Synchronous {
    /// fsync on every commit: a committed publish survives power loss.
    Full,
    /// WAL fsync at checkpoints only: survives a process crash, not a power loss.
    Normal,
}

fn open_connection(path: &Path) -> Result<Connection, BusError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    // Another process (the CLI, a second `serve`) may hold the write lock for a moment.
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.set_prepared_statement_cache_capacity(64);
    // A statement whose bound value decides whether a partial index applies (`lease_until
    // <= ?` against `deliveries_leased`) is otherwise prepared again whenever that value
    // changes — every lease, a clock reading. The plan does not need it: those queries
    // name the index's condition themselves.
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )?;
    let mut attempt = 0;
    // Switching to WAL needs exclusive access for an instant; retry if another process
    // is opening the file at the same time.
    loop {
        match conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get::<_, String>(0))
        {
            Ok(_) => break,
            Err(_) if attempt < 50 => {
                attempt += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(error) => return Err(error.into()),
        }
    }
    // FULL for the schema (creating the file and its log durably), then NORMAL: with
    // `Synchronous::Full` the syncer thread fsyncs the log before a publish is answered.
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.execute_batch(SCHEMA)?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    Ok(conn)
}

/// Starts the thread that makes committed batches durable: it takes every batch's
/// waiting answers queued since its last fsync, fsyncs the write-ahead log once (any
/// descriptor of the file syncs what SQLite wrote through its own) and answers them —
/// with the error, if the fsync failed, so their publishers try again.
fn spawn_syncer(path: &Path) -> Result<std::sync::mpsc::Sender<Vec<Outcome>>, BusError> {
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    let wal = PathBuf::from(wal);
    let (sender, receiver) = std::sync::mpsc::channel::<Vec<Outcome>>();
    std::thread::Builder::new()
        .name("bus-syncer".into())
        .spawn(move || {
            while let Ok(mut waiting) = receiver.recv() {
                while let Ok(more) = receiver.try_recv() {
                    waiting.extend(more);
                }
                #[cfg(test)]
                let _held = tests::SYNC_GATE.lock();
                let synced = std::fs::File::open(&wal).and_then(|file| file.sync_data());
                let failure = synced.err().map(|error| {
                    let message = format!("cannot fsync {}: {error}", wal.display());
                    tracing::error!(error = %message, "embedded bus");
                    message
                });
                for outcome in waiting {
                    outcome.answer(failure.as_deref());
                }
            }
        })
        .map_err(|e| BusError::Embedded(format!("cannot start the syncer thread: {e}")))?;
    Ok(sender)
}

/// Makes every leased delivery available again; called only when no other process has
/// the bus open (see [`open_lock`]), so every lease is one of a process that is gone.
/// Like a lease that expired, the attempt still counts, so a message that keeps killing
/// its consumer is still dead-lettered after the last (and the exhausted) attempt.
fn release_orphaned_leases(conn: &Connection) -> Result<(), BusError> {
    let released = conn.execute(
        "UPDATE deliveries SET lease_until = 1 WHERE lease_until > 1",
        [],
    )?;
    if released > 0 {
        tracing::info!(
            released,
            "deliveries leased by a process that is gone are available again"
        );
    }
    Ok(())
}

/// Owns the connection; runs on its own thread.
struct Writer {
    conn: Connection,
    /// (group, pattern), reloaded when another connection changed the file.
    bindings: Vec<(String, String)>,
    data_version: i64,
    retry: RetryPolicy,
    lease_ms: i64,
    wakeups: Wakeups,
    /// With `synchronous=full`: where the answers that must wait for the disk go (the
    /// connection itself commits at NORMAL; see the module's documentation).
    syncer: Option<std::sync::mpsc::Sender<Vec<Outcome>>>,
    /// Lease requests waiting for a delivery, and how many there are (for the poll).
    parked: Vec<Parked>,
    parked_count: Arc<AtomicUsize>,
}

/// A consumer waiting for deliveries of its group: it is answered in the transaction
/// that publishes one, without another round trip from consumer to writer.
struct Parked {
    group: String,
    max: usize,
    reply: Reply<Vec<Leased>>,
    /// Deliveries a publish of this transaction made leased to this request at once
    /// ([`Writer::publish`]): answered at the commit, without a lease's search of the
    /// group's deliveries and read of their messages.
    handed: Vec<Leased>,
}

/// What a command produced, answered after the commit.
enum Outcome {
    Unit(Reply<()>),
    /// A publish: its observer runs once the commit holds it.
    Published(Reply<()>, Option<OnCommit>),
    Leased(Reply<Vec<Leased>>, Vec<Leased>),
    Dead(Reply<Vec<DeadLetter>>, Vec<DeadLetter>),
    Count(Reply<u64>, u64),
    /// Answered with this error; the command wrote nothing.
    Refused(Reply<()>, BusError),
    Stats(Reply<(u64, u64, u64)>, (u64, u64, u64)),
    Signals(Reply<Vec<(i64, Bytes)>>, Vec<(i64, Bytes)>),
    None,
}

impl Outcome {
    /// Answers the command: with what it produced once its transaction committed, or
    /// with `failure` when the transaction was rolled back.
    fn answer(self, failure: Option<&str>) {
        let failed = |message: &str| BusError::Embedded(message.to_owned());
        fn send<T>(reply: Reply<T>, value: T, failure: Option<BusError>) {
            let _ = reply.send(failure.map_or(Ok(value), Err));
        }
        let failure = failure.map(failed);
        match self {
            Outcome::Unit(reply) => send(reply, (), failure),
            Outcome::Published(reply, observe) => {
                if failure.is_none()
                    && let Some(observe) = observe
                {
                    observe();
                }
                send(reply, (), failure);
            }
            Outcome::Leased(reply, rows) => send(reply, rows, failure),
            Outcome::Dead(reply, rows) => send(reply, rows, failure),
            Outcome::Count(reply, n) => send(reply, n, failure),
            Outcome::Refused(reply, error) => {
                let _ = reply.send(Err(failure.unwrap_or(error)));
            }
            Outcome::Stats(reply, stats) => send(reply, stats, failure),
            Outcome::Signals(reply, rows) => send(reply, rows, failure),
            Outcome::None => {}
        }
    }
}

impl Writer {
    fn run(&mut self, mut receiver: mpsc::Receiver<Command>) {
        while let Some(first) = receiver.blocking_recv() {
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match receiver.try_recv() {
                    Ok(command) => batch.push(command),
                    Err(_) => break,
                }
            }
            self.run_batch(batch);
        }
        // Leave a small WAL behind for the next start.
        let _ = self.conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)");
    }

    fn run_batch(&mut self, batch: Vec<Command>) {
        let mut woken: Vec<String> = Vec::new();
        // Each command's outcome, and whether its answer waits for the disk.
        let mut outcomes = Vec::with_capacity(batch.len());
        let mut pending = batch.into_iter();
        let mut poll = false;
        let result = (|| -> Result<(), rusqlite::Error> {
            // Prepared once (cached), as every statement of a batch: a statement prepared
            // again per batch was a third of this thread's parsing.
            self.conn.prepare_cached("BEGIN IMMEDIATE")?.execute([])?;
            self.refresh_bindings()?;
            // The batch's acknowledgements, settled together: before the first command
            // that could see them unsettled (a count, a publish of the same id, a nack
            // or a replay), else after the rest. A lease takes an acknowledged delivery
            // only if its lease had run out, as it would have before the ack came.
            let mut acks = Vec::new();
            for command in pending.by_ref() {
                poll |= matches!(command, Command::Poll);
                if !acks.is_empty()
                    && !matches!(
                        command,
                        Command::Ack(..) | Command::Lease(..) | Command::Renew(..) | Command::Poll
                    )
                {
                    self.ack_all(&std::mem::take(&mut acks))?;
                }
                // Only what must survive a power loss waits for the fsync. Leases and
                // acknowledgements are answered at the commit (a crash keeps them, a
                // power loss may drop them, never corrupts): a lost lease is leased
                // again, a lost ack redelivers a message its consumer's inbox already
                // holds, and the next fsync makes them durable anyway.
                let durable = command.must_survive_power_loss();
                outcomes.push((self.apply(command, &mut woken, &mut acks)?, durable));
            }
            self.ack_all(&acks)?;
            self.serve_parked(&woken, poll, &mut outcomes)?;
            self.conn.prepare_cached("COMMIT")?.execute([]).map(|_| ())
        })();
        self.parked_count
            .store(self.parked.len(), Ordering::Relaxed);
        match result {
            Ok(()) => {
                let mut after_sync = Vec::new();
                let mut unclaimed = Vec::new();
                // The tap hears of a publish before anyone can take it (a parked lease
                // below may hand it out in this very answer).
                for (outcome, _) in &mut outcomes {
                    if let Outcome::Published(_, observe) = outcome
                        && let Some(observe) = observe.take()
                    {
                        observe();
                    }
                }
                for (outcome, durable) in outcomes {
                    match outcome {
                        // A lease whose consumer has gone meanwhile (it stopped while
                        // parked) goes back at once, not when the lease runs out.
                        Outcome::Leased(reply, rows) => {
                            if let Err(Ok(rows)) = reply.send(Ok(rows)) {
                                unclaimed.extend(rows);
                            }
                        }
                        outcome if durable && self.syncer.is_some() => after_sync.push(outcome),
                        outcome => outcome.answer(None),
                    }
                }
                if !after_sync.is_empty()
                    && let Some(syncer) = &self.syncer
                    && let Err(unsent) = syncer.send(after_sync)
                {
                    for outcome in unsent.0 {
                        outcome.answer(Some("the bus's syncer thread is gone"));
                    }
                }
                woken.sort();
                woken.dedup();
                for group in &woken {
                    wake(&self.wakeups, group);
                }
                self.unlease(&unclaimed);
            }
            Err(error) => {
                let _ = self.conn.execute_batch("ROLLBACK");
                // What publishes of this transaction handed to parked requests is gone
                // with it; they wait on.
                for parked in &mut self.parked {
                    parked.handed.clear();
                }
                // A binding added in the failed transaction is gone again.
                self.data_version = -1;
                let message = error.to_string();
                tracing::error!(error = %message, "embedded bus transaction failed");
                for (outcome, _) in outcomes {
                    outcome.answer(Some(&message));
                }
                for command in pending {
                    command.fail(&message);
                }
            }
        }
    }

    /// Reloads the bindings if another connection committed since we last looked.
    fn refresh_bindings(&mut self) -> Result<(), rusqlite::Error> {
        let version: i64 = self
            .conn
            .prepare_cached("PRAGMA data_version")?
            .query_row([], |row| row.get(0))?;
        if version != self.data_version {
            let mut statement = self
                .conn
                .prepare_cached("SELECT group_name, pattern FROM bindings")?;
            self.bindings = statement
                .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
                .collect::<Result<_, _>>()?;
            self.data_version = version;
        }
        Ok(())
    }

    /// Applies `command`, but for an acknowledgement, which goes to `acks` for the
    /// batch to settle with the others ([`Writer::ack_all`]).
    fn apply(
        &mut self,
        command: Command,
        woken: &mut Vec<String>,
        acks: &mut Vec<i64>,
    ) -> Result<Outcome, rusqlite::Error> {
        Ok(match command {
            Command::Publish(messages, observe, reply) => {
                // Like a mandatory publish to an exchange: a message no group is bound
                // to is refused, not confirmed and dropped, so an outbox keeps it.
                if let Some(unbound) = messages.iter().find(|m| !self.bound(&m.routing_key)) {
                    return Ok(Outcome::Refused(
                        reply,
                        BusError::Unroutable(unbound.routing_key.clone()),
                    ));
                }
                for message in &messages {
                    self.publish(message, woken)?;
                }
                Outcome::Published(reply, observe)
            }
            Command::Bind(group, patterns, reply) => {
                for pattern in patterns {
                    self.conn
                        .prepare_cached(
                            "INSERT OR IGNORE INTO bindings (group_name, pattern) VALUES (?1, ?2)",
                        )?
                        .execute(params![group, pattern])?;
                    if !self
                        .bindings
                        .iter()
                        .any(|(g, p)| *g == group && *p == pattern)
                    {
                        self.bindings.push((group.clone(), pattern));
                    }
                }
                Outcome::Unit(reply)
            }
            Command::Lease(group, max, reply) => {
                let rows = self.lease(&group, max)?;
                if rows.is_empty() {
                    self.parked.push(Parked {
                        group,
                        max,
                        reply,
                        handed: Vec::new(),
                    });
                    Outcome::None
                } else {
                    Outcome::Leased(reply, rows)
                }
            }
            Command::Poll => Outcome::None,
            Command::Ack(delivery_ids, reply) => {
                acks.extend(delivery_ids);
                Outcome::Unit(reply)
            }
            Command::Nack {
                delivery_id,
                attempt,
                nack,
                reply,
            } => {
                if let Some(group) = self.nack(delivery_id, attempt, nack)? {
                    woken.push(group);
                }
                Outcome::Unit(reply)
            }
            Command::Renew(held) => {
                // Only a lease still ours: not settled, released or re-leased meanwhile.
                let until = now_ms().saturating_add(self.lease_ms);
                let mut renew = self.conn.prepare_cached(
                    "UPDATE deliveries SET lease_until = ?1 WHERE id = ?2 AND attempts = ?3 AND lease_until > 1",
                )?;
                for (delivery_id, attempt) in held {
                    renew.execute(params![until, delivery_id, attempt])?;
                }
                Outcome::None
            }
            Command::Release(delivery_id, attempt) => {
                // Expire the lease: the next lease takes it, or dead-letters it if this
                // was the last attempt.
                let released = self
                    .conn
                    .prepare_cached(
                        "UPDATE deliveries SET lease_until = 1 WHERE id = ?1 AND attempts = ?2 AND lease_until > 1",
                    )?
                    .execute(params![delivery_id, attempt])?;
                if released > 0
                    && let Ok(group) = self
                        .conn
                        .prepare_cached("SELECT group_name FROM deliveries WHERE id = ?1")?
                        .query_row(params![delivery_id], |row| row.get::<_, String>(0))
                {
                    woken.push(group);
                }
                Outcome::None
            }
            Command::DeadLetters(group, limit, reply) => {
                let rows = self.dead_letters(group.as_deref(), limit)?;
                Outcome::Dead(reply, rows)
            }
            Command::Replay(group, ids, reply) => {
                let n = self.replay(group.as_deref(), &ids, woken)?;
                Outcome::Count(reply, n)
            }
            Command::Depth(group, reply) => {
                let n: i64 = self
                    .conn
                    .prepare_cached("SELECT COUNT(*) FROM deliveries WHERE group_name = ?1")?
                    .query_row(params![group], |row| row.get(0))?;
                Outcome::Count(reply, u64::try_from(n).unwrap_or(0))
            }
            Command::Stats(group, reply) => {
                let now = now_ms();
                let (waiting, leased): (i64, i64) = self
                    .conn
                    .prepare_cached(
                        "SELECT COUNT(*), COALESCE(SUM(lease_until > ?2), 0) FROM deliveries WHERE group_name = ?1",
                    )?
                    .query_row(params![group, now], |row| Ok((row.get(0)?, row.get(1)?)))?;
                let dead: i64 = self
                    .conn
                    .prepare_cached("SELECT COUNT(*) FROM dead_letters WHERE group_name = ?1")?
                    .query_row(params![group], |row| row.get(0))?;
                let count = |n: i64| u64::try_from(n).unwrap_or(0);
                Outcome::Stats(reply, (count(waiting - leased), count(leased), count(dead)))
            }
            Command::Signal(topic, body, reply) => {
                woken.push(signal_wakeup(&topic));
                let now = now_ms();
                self.conn
                    .prepare_cached(
                        "INSERT INTO signals (topic, body, sent_at) VALUES (?1, ?2, ?3)",
                    )?
                    .execute(params![topic, body.as_ref(), now])?;
                // Signals are for whoever listens now; a minute is plenty for a poller.
                self.conn
                    .prepare_cached("DELETE FROM signals WHERE sent_at < ?1")?
                    .execute(params![now - 60_000])?;
                Outcome::Unit(reply)
            }
            Command::Signals(topic, after, reply) => {
                let rows = match after {
                    None => {
                        let last: i64 = self
                            .conn
                            .prepare_cached("SELECT COALESCE(MAX(seq), 0) FROM signals")?
                            .query_row([], |row| row.get(0))?;
                        vec![(last, Bytes::new())]
                    }
                    Some(after) => self
                        .conn
                        .prepare_cached(
                            "SELECT seq, body FROM signals WHERE topic = ?1 AND seq > ?2 ORDER BY seq LIMIT 1000",
                        )?
                        .query_map(params![topic, after], |row| {
                            Ok((row.get::<_, i64>(0)?, Bytes::from(row.get::<_, Vec<u8>>(1)?)))
                        })?
                        .collect::<Result<_, _>>()?,
                };
                Outcome::Signals(reply, rows)
            }
            Command::Maintain => {
                let mut statement = self.conn.prepare_cached(
                    "SELECT b.group_name, (SELECT COUNT(*) FROM deliveries d WHERE d.group_name = b.group_name)
                     FROM (SELECT DISTINCT group_name FROM bindings) b",
                )?;
                let depths = statement
                    .query_map([], |row| {
                        Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
                    })?
                    .collect::<Result<Vec<_>, _>>()?;
                for (group, depth) in depths {
                    #[allow(clippy::cast_precision_loss)]
                    metrics::gauge!("bus_queue_depth", "group" => group).set(depth as f64);
                }
                Outcome::None
            }
        })
    }

    /// Leases, in this transaction, for the parked requests of the groups this batch
    /// published to (all of them on a poll); those still without a delivery stay parked.
    fn serve_parked(
        &mut self,
        woken: &[String],
        all: bool,
        outcomes: &mut Vec<(Outcome, bool)>,
    ) -> Result<(), rusqlite::Error> {
        let mut waiting = std::mem::take(&mut self.parked).into_iter();
        while let Some(mut parked) = waiting.next() {
            if !parked.handed.is_empty() {
                // A consumer gone meanwhile gets them back at the answer (`unclaimed`).
                let rows = std::mem::take(&mut parked.handed);
                outcomes.push((Outcome::Leased(parked.reply, rows), false));
                continue;
            }
            if parked.reply.is_closed() {
                continue;
            }
            if !all && !woken.contains(&parked.group) {
                self.parked.push(parked);
                continue;
            }
            match self.lease(&parked.group, parked.max) {
                Ok(rows) if rows.is_empty() => self.parked.push(parked),
                Ok(rows) => outcomes.push((Outcome::Leased(parked.reply, rows), false)),
                Err(error) => {
                    self.parked.push(parked);
                    self.parked.extend(waiting);
                    return Err(error);
                }
            }
        }
        Ok(())
    }

    /// Hands back deliveries leased to a consumer that was gone by the answer: available
    /// again at once, the attempt not counted (it never reached a handler).
    fn unlease(&mut self, rows: &[Leased]) {
        for row in rows {
            let released = self
                .conn
                .prepare_cached(
                    "UPDATE deliveries SET attempts = attempts - 1, lease_until = 0
                     WHERE id = ?1 AND attempts = ?2",
                )
                .and_then(|mut statement| {
                    statement.execute(params![row.delivery_id, row.attempts])
                });
            if let Err(error) = released {
                tracing::warn!(%error, delivery = row.delivery_id,
                    "cannot hand back a lease; it is available again when it runs out");
            }
        }
    }

    /// Whether some group's pattern matches `routing_key`.
    fn bound(&self, routing_key: &str) -> bool {
        self.bindings
            .iter()
            .any(|(_, pattern)| topic_matches(pattern, routing_key))
    }

    fn publish(
        &mut self,
        message: &Message,
        woken: &mut Vec<String>,
    ) -> Result<(), rusqlite::Error> {
        metrics::counter!("bus_published_total", "routing_key" => message.routing_key.clone())
            .increment(1);
        let groups: Vec<&str> = {
            let mut groups: Vec<&str> = self
                .bindings
                .iter()
                .filter(|(_, pattern)| topic_matches(pattern, &message.routing_key))
                .map(|(group, _)| group.as_str())
                .collect();
            groups.sort_unstable();
            groups.dedup();
            groups
        };
        let now = now_ms();
        let headers = serde_json::to_string(&message.headers).unwrap_or_else(|_| "{}".into());
        let inserted = self
            .conn
            .prepare_cached(
                "INSERT OR IGNORE INTO messages (msg_id, routing_key, headers, body, published_at, pending)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![
                message.id,
                message.routing_key,
                headers,
                message.body.as_ref(),
                now,
                groups.len() as i64
            ])?;
        // The same id again (a publisher retrying) while the first copy is still owed.
        if inserted == 0 {
            return Ok(());
        }
        let seq = self.conn.last_insert_rowid();
        for group in groups {
            // A consumer of the group waiting with room (parked: nothing was available
            // to it) takes the delivery leased as it is made: what a lease in this
            // transaction would give it, without searching the group's deliveries and
            // reading the message back.
            let waiting = self.parked.iter_mut().find(|parked| {
                parked.group == group
                    && parked.handed.len() < parked.max
                    && !parked.reply.is_closed()
            });
            match waiting {
                Some(parked) => {
                    self.conn
                        .prepare_cached(
                            "INSERT INTO deliveries (group_name, seq, available_at, attempts, lease_until)
                             VALUES (?1, ?2, ?3, 1, ?4)",
                        )?
                        .execute(params![group, seq, now, now.saturating_add(self.lease_ms)])?;
                    parked.handed.push(Leased {
                        delivery_id: self.conn.last_insert_rowid(),
                        attempts: 1,
                        message: message.clone(),
                    });
                    metrics::counter!("bus_delivered_total", "group" => group.to_owned())
                        .increment(1);
                }
                None => {
                    self.conn
                        .prepare_cached(
                            "INSERT INTO deliveries (group_name, seq, available_at) VALUES (?1, ?2, ?3)",
                        )?
                        .execute(params![group, seq, now])?;
                }
            }
            woken.push(group.to_owned());
        }
        Ok(())
    }

    fn lease(&mut self, group: &str, max: usize) -> Result<Vec<Leased>, rusqlite::Error> {
        let now = now_ms();
        // Past the last attempt, one more delivery (`Attempt::is_exhausted`) lets the
        // handler settle what it could not finish; when that is not settled either, the
        // consumer keeps dying on it: dead-letter instead of handing it out forever.
        let max_attempts = i64::from(self.retry.max_attempts) + 1;
        let expired: Vec<(i64, i64)> = self
            .conn
            .prepare_cached(
                "SELECT id, attempts FROM deliveries
                 WHERE group_name = ?1 AND lease_until > 0 AND lease_until <= ?2 AND attempts >= ?3
                 LIMIT 100",
            )?
            .query_map(params![group, now, max_attempts], |row| {
                Ok((row.get(0)?, row.get(1)?))
            })?
            .collect::<Result<_, _>>()?;
        for (id, attempts) in expired {
            self.dead_letter(
                id,
                &format!("not acknowledged within the lease on any of {attempts} deliveries"),
            )?;
        }
        let mut leased: Vec<(i64, i64, i64)> = self
            .conn
            .prepare_cached(
                "UPDATE deliveries SET attempts = attempts + 1, lease_until = ?1
                 WHERE id IN (
                     SELECT id FROM deliveries
                     WHERE group_name = ?2 AND lease_until <= ?3 AND available_at <= ?3
                     ORDER BY seq LIMIT ?4)
                 RETURNING id, seq, attempts",
            )?
            .query_map(
                params![now.saturating_add(self.lease_ms), group, now, max as i64],
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
            )?
            .collect::<Result<_, _>>()?;
        leased.sort_by_key(|&(_, seq, _)| seq);
        let mut rows = Vec::with_capacity(leased.len());
        if leased.is_empty() {
            return Ok(rows);
        }
        // The leased messages in one read, in order (a delivery's message is owed
        // until every group settles it, so each is there).
        let seqs: Vec<i64> = leased.iter().map(|&(_, seq, _)| seq).collect();
        let mut messages: BTreeMap<i64, Message> = self
            .conn
            .prepare_cached(
                "SELECT seq, msg_id, routing_key, headers, body FROM messages
                 WHERE seq IN (SELECT value FROM json_each(?1))",
            )?
            .query_map(params![json(&seqs)], |row| {
                let headers: String = row.get(3)?;
                Ok((
                    row.get::<_, i64>(0)?,
                    Message {
                        id: row.get(1)?,
                        routing_key: row.get(2)?,
                        headers: decode_headers(&headers),
                        body: Bytes::from(row.get::<_, Vec<u8>>(4)?),
                    },
                ))
            })?
            .collect::<Result<_, _>>()?;
        for (i, &(delivery_id, seq, attempts)) in leased.iter().enumerate() {
            // A message missing would be a broken file: the same error a read of it
            // alone gave. Two deliveries of one message (not made, but not excluded by
            // the schema) each get it.
            let again = leased.get(i + 1).is_some_and(|&(_, next, _)| next == seq);
            let message = if again {
                messages.get(&seq).cloned()
            } else {
                messages.remove(&seq)
            };
            let Some(message) = message else {
                return Err(rusqlite::Error::QueryReturnedNoRows);
            };
            rows.push(Leased {
                delivery_id,
                attempts,
                message,
            });
        }
        if !rows.is_empty() {
            metrics::counter!("bus_delivered_total", "group" => group.to_owned())
                .increment(rows.len() as u64);
        }
        Ok(rows)
    }

    /// Settles a delivery as `nack` says; returns the group to wake when the message is
    /// available again at once.
    fn nack(
        &mut self,
        delivery_id: i64,
        attempt: i64,
        nack: Nack,
    ) -> Result<Option<String>, rusqlite::Error> {
        let current: Option<(String, i64)> = self
            .conn
            .prepare_cached("SELECT group_name, attempts FROM deliveries WHERE id = ?1")?
            .query_row(params![delivery_id], |row| Ok((row.get(0)?, row.get(1)?)))
            .optional()?;
        // Gone or leased again since (our lease expired): the newer attempt decides.
        let Some((group, attempts)) = current.filter(|(_, attempts)| *attempts == attempt) else {
            return Ok(None);
        };
        match nack {
            Nack::Reject(reason) => self.dead_letter(delivery_id, &reason).map(|()| None),
            Nack::Retry(reason) if attempts >= i64::from(self.retry.max_attempts) => self
                .dead_letter(
                    delivery_id,
                    &format!("failed {attempts} attempts; last error: {reason}"),
                )
                .map(|()| None),
            Nack::Requeue(reason) => {
                // The next lease counts this attempt again.
                self.conn
                    .prepare_cached(
                        "UPDATE deliveries SET attempts = attempts - 1, lease_until = 0, available_at = ?1, last_error = ?2 WHERE id = ?3",
                    )?
                    .execute(params![now_ms(), reason, delivery_id])?;
                Ok(Some(group))
            }
            Nack::Retry(reason) => {
                metrics::counter!("bus_retried_total", "group" => group).increment(1);
                let delay = self
                    .retry
                    .backoff(u32::try_from(attempts).unwrap_or(u32::MAX));
                let available_at =
                    now_ms().saturating_add(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX));
                self.conn
                    .prepare_cached(
                        "UPDATE deliveries SET lease_until = 0, available_at = ?1, last_error = ?2 WHERE id = ?3",
                    )?
                    .execute(params![available_at, reason, delivery_id])?;
                Ok(None)
            }
        }
    }

    fn dead_letter(&mut self, delivery_id: i64, reason: &str) -> Result<(), rusqlite::Error> {
        let row: Option<(String, i64, i64)> = self
            .conn
            .prepare_cached(
                "DELETE FROM deliveries WHERE id = ?1 RETURNING group_name, seq, attempts",
            )?
            .query_row(params![delivery_id], |row| {
                Ok((row.get(0)?, row.get(1)?, row.get(2)?))
            })
            .optional()?;
        let Some((group, seq, attempts)) = row else {
            return Ok(());
        };
        self.conn
            .prepare_cached(
                "INSERT INTO dead_letters (group_name, msg_id, routing_key, headers, body, attempts, reason, dead_at)
                 SELECT ?1, msg_id, routing_key, headers, body, ?2, ?3, ?4 FROM messages WHERE seq = ?5",
            )?
            .execute(params![group, attempts, reason, now_ms(), seq])?;
        tracing::warn!(%group, seq, attempts, %reason, "message dead-lettered");
        metrics::counter!("bus_dead_lettered_total", "group" => group).increment(1);
        self.release_messages(&BTreeMap::from([(seq, 1)]))
    }

    /// Settles these deliveries as done: deletes them, and releases their messages —
    /// three statements for the whole batch, where one acknowledgement at a time took up
    /// to three each.
    fn ack_all(&mut self, delivery_ids: &[i64]) -> Result<(), rusqlite::Error> {
        if delivery_ids.is_empty() {
            return Ok(());
        }
        let seqs: Vec<i64> = self
            .conn
            .prepare_cached(
                "DELETE FROM deliveries WHERE id IN (SELECT value FROM json_each(?1)) RETURNING seq",
            )?
            .query_map(params![json(delivery_ids)], |row| row.get(0))?
            .collect::<Result<_, _>>()?;
        let mut owed: BTreeMap<i64, i64> = BTreeMap::new();
        for seq in seqs {
            *owed.entry(seq).or_default() += 1;
        }
        self.release_messages(&owed)
    }

    /// For each (message, groups): that many groups fewer owe the message; one no group
    /// owes any more is deleted. Two statements whatever the number.
    fn release_messages(&mut self, owed: &BTreeMap<i64, i64>) -> Result<(), rusqlite::Error> {
        if owed.is_empty() {
            return Ok(());
        }
        let pairs: Vec<[i64; 2]> = owed.iter().map(|(&seq, &groups)| [seq, groups]).collect();
        self.conn
            .prepare_cached(
                "UPDATE messages SET pending = pending - owed.groups
                 FROM (SELECT value ->> 0 AS seq, value ->> 1 AS groups FROM json_each(?1)) AS owed
                 WHERE messages.seq = owed.seq",
            )?
            .execute(params![json(&pairs)])?;
        let seqs: Vec<i64> = owed.keys().copied().collect();
        self.conn
            .prepare_cached(
                "DELETE FROM messages WHERE seq IN (SELECT value FROM json_each(?1)) AND pending <= 0",
            )?
            .execute(params![json(&seqs)])?;
        Ok(())
    }

    fn dead_letters(
        &mut self,
        group: Option<&str>,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, rusqlite::Error> {
        let mut statement = self.conn.prepare_cached(
            "SELECT msg_id, group_name, routing_key, attempts, reason, dead_at, body, headers
             FROM dead_letters WHERE ?1 IS NULL OR group_name = ?1 ORDER BY id LIMIT ?2",
        )?;
        statement
            .query_map(params![group, limit as i64], |row| {
                let headers: String = row.get(7)?;
                Ok(DeadLetter {
                    id: row.get(0)?,
                    group: row.get(1)?,
                    routing_key: row.get(2)?,
                    attempts: row.get(3)?,
                    reason: row.get(4)?,
                    dead_at_ms: Some(row.get(5)?),
                    body: Bytes::from(row.get::<_, Vec<u8>>(6)?),
                    headers: decode_headers(&headers),
                })
            })?
            .collect()
    }

    fn replay(
        &mut self,
        group: Option<&str>,
        ids: &[String],
        woken: &mut Vec<String>,
    ) -> Result<u64, rusqlite::Error> {
        let chosen: Vec<(i64, String, String, String, String, Vec<u8>)> = self
            .conn
            .prepare_cached(
                "SELECT id, group_name, msg_id, routing_key, headers, body FROM dead_letters
                 WHERE ?1 IS NULL OR group_name = ?1 ORDER BY id",
            )?
            .query_map(params![group], |row| {
                Ok((
                    row.get(0)?,
                    row.get(1)?,
                    row.get(2)?,
                    row.get(3)?,
                    row.get(4)?,
                    row.get(5)?,
                ))
            })?
            .filter(|row| {
                row.as_ref().map_or(true, |(_, _, msg_id, ..)| {
                    ids.is_empty() || ids.contains(msg_id)
                })
            })
            .collect::<Result<_, _>>()?;
        let now = now_ms();
        let mut replayed = 0;
        for (dead_id, group, msg_id, routing_key, headers, body) in chosen {
            let existing: Option<i64> = self
                .conn
                .prepare_cached("SELECT seq FROM messages WHERE msg_id = ?1")?
                .query_row(params![msg_id], |row| row.get(0))
                .optional()?;
            let seq = match existing {
                Some(seq) => {
                    self.conn
                        .prepare_cached("UPDATE messages SET pending = pending + 1 WHERE seq = ?1")?
                        .execute(params![seq])?;
                    seq
                }
                None => {
                    self.conn
                        .prepare_cached(
                            "INSERT INTO messages (msg_id, routing_key, headers, body, published_at, pending)
                             VALUES (?1, ?2, ?3, ?4, ?5, 1)",
                        )?
                        .execute(params![msg_id, routing_key, headers, body, now])?;
                    self.conn.last_insert_rowid()
                }
            };
            self.conn
                .prepare_cached(
                    "INSERT INTO deliveries (group_name, seq, available_at) VALUES (?1, ?2, ?3)",
                )?
                .execute(params![group, seq, now])?;
            self.conn
                .prepare_cached("DELETE FROM dead_letters WHERE id = ?1")?
                .execute(params![dead_id])?;
            tracing::info!(%group, %msg_id, "dead letter replayed");
            woken.push(group);
            replayed += 1;
        }
        Ok(replayed)
    }
}

impl EventBus for EmbeddedBus {
    fn publish(&self, message: Message) -> BoxFuture<'_, Result<(), BusError>> {
        self.publish_all(vec![message])
    }

    fn publish_all(&self, messages: Vec<Message>) -> BoxFuture<'_, Result<(), BusError>> {
        Box::pin(async move {
            // Told to the tap (only while someone watches) by the writer, after the
            // commit and before the consumers are woken.
            let observe = self.shared.tap.watched().then(|| {
                let (tap, service) = (self.shared.tap.clone(), self.service.clone());
                let (observed, started) = (messages.clone(), now_ms());
                Box::new(move || {
                    for message in &observed {
                        tap.published(message, service.as_deref(), started);
                    }
                }) as OnCommit
            });
            self.shared
                .call(|reply| Command::Publish(messages, observe, reply))
                .await
        })
    }

    /// One transaction for the batch, which is refused whole when one message is
    /// unroutable (nothing written); then one at a time up to that message.
    fn publish_in_order(&self, messages: Vec<Message>) -> BoxFuture<'_, (usize, Option<BusError>)> {
        Box::pin(async move {
            let count = messages.len();
            match self.publish_all(messages.clone()).await {
                Ok(()) => (count, None),
                Err(BusError::Unroutable(_)) if count > 1 => {
                    crate::publish_one_by_one(self, messages).await
                }
                Err(error) => (0, Some(error)),
            }
        })
    }

    fn subscribe(&self, subscription: Subscription) -> BoxFuture<'_, Result<Subscriber, BusError>> {
        Box::pin(async move {
            if subscription.group.is_empty() || subscription.routing_keys.is_empty() {
                return Err(BusError::InvalidSetting(
                    "a subscription needs a group name and at least one routing key".to_owned(),
                ));
            }
            let group = subscription.group.clone();
            self.shared
                .call(|reply| Command::Bind(group, subscription.routing_keys.clone(), reply))
                .await?;
            self.shared.tap.subscribed(
                self.service.as_deref(),
                &subscription.group,
                &subscription.routing_keys,
            );
            Ok(subscriber(self.shared.clone(), subscription))
        })
    }

    fn dead_letters<'a>(
        &'a self,
        group: Option<&'a str>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<DeadLetter>, BusError>> {
        Box::pin(async move {
            let group = group.map(str::to_owned);
            self.shared
                .call(|reply| Command::DeadLetters(group, limit, reply))
                .await
        })
    }

    fn replay_dead_letters<'a>(
        &'a self,
        group: Option<&'a str>,
        ids: &'a [String],
    ) -> BoxFuture<'a, Result<u64, BusError>> {
        Box::pin(async move {
            let group = group.map(str::to_owned);
            self.shared
                .call(|reply| Command::Replay(group, ids.to_vec(), reply))
                .await
        })
    }

    fn queue_depth<'a>(&'a self, group: &'a str) -> BoxFuture<'a, Result<Option<u64>, BusError>> {
        Box::pin(async move {
            let group = group.to_owned();
            let depth = self
                .shared
                .call(|reply| Command::Depth(group, reply))
                .await?;
            Ok(Some(depth))
        })
    }

    fn group_stats<'a>(
        &'a self,
        group: &'a str,
    ) -> BoxFuture<'a, Result<crate::GroupStats, BusError>> {
        Box::pin(async move {
            let group = group.to_owned();
            let (depth, in_flight, dead) = self
                .shared
                .call(|reply| Command::Stats(group, reply))
                .await?;
            Ok(crate::GroupStats {
                depth: Some(depth),
                in_flight: Some(in_flight),
                consumers: None,
                dead_letters: Some(dead),
            })
        })
    }

    fn signal<'a>(&'a self, topic: &'a str, body: Bytes) -> BoxFuture<'a, Result<(), BusError>> {
        Box::pin(async move {
            let topic = topic.to_owned();
            self.shared
                .call(|reply| Command::Signal(topic, body, reply))
                .await
        })
    }

    /// Polls the signals table (every [`POLL_INTERVAL`]; this process's own signals
    /// wake it at once).
    fn listen<'a>(
        &'a self,
        topic: &'a str,
    ) -> BoxFuture<'a, Result<futures::stream::BoxStream<'static, Bytes>, BusError>> {
        Box::pin(async move {
            let start = self
                .shared
                .call(|reply| Command::Signals(topic.to_owned(), None, reply))
                .await?;
            let after = start.first().map_or(0, |(seq, _)| *seq);
            let state = (
                self.shared.clone(),
                topic.to_owned(),
                after,
                VecDeque::<Bytes>::new(),
                subscribe_wakeups(&self.shared.wakeups, &signal_wakeup(topic)),
            );
            let stream = futures::stream::unfold(
                state,
                |(shared, topic, mut after, mut buffered, mut wakeups)| async move {
                    loop {
                        if let Some(body) = buffered.pop_front() {
                            return Some((body, (shared, topic, after, buffered, wakeups)));
                        }
                        wakeups.borrow_and_update();
                        let rows = shared
                            .call(|reply| Command::Signals(topic.clone(), Some(after), reply))
                            .await
                            .ok()?;
                        if rows.is_empty() {
                            tokio::select! {
                                _ = wakeups.changed() => {}
                                () = tokio::time::sleep(POLL_INTERVAL) => {}
                            }
                            continue;
                        }
                        for (seq, body) in rows {
                            after = seq;
                            buffered.push_back(body);
                        }
                    }
                },
            );
            Ok(stream.boxed())
        })
    }

    fn tap(&self) -> Arc<crate::tap::Tap> {
        Arc::clone(&self.shared.tap)
    }

    fn backend(&self) -> &'static str {
        "embedded"
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        // Every write is answered after its commit, so there is nothing to flush; the
        // writer stops when the last handle (and delivery) is dropped.
        Box::pin(async {})
    }
}

struct EmbeddedSettle {
    shared: Arc<Shared>,
    delivery_id: i64,
    attempt: i64,
    settled: bool,
    /// A slot of the consumer's prefetch window, freed when this is settled or dropped.
    _permit: OwnedSemaphorePermit,
}

impl Drop for EmbeddedSettle {
    fn drop(&mut self) {
        if let Ok(mut held) = self.shared.held.lock() {
            held.remove(&(self.delivery_id, self.attempt));
        }
        if !self.settled {
            // Best effort: if the queue is full the lease expiry does the same later.
            let _ = self
                .shared
                .commands
                .try_send(Command::Release(self.delivery_id, self.attempt));
        }
    }
}

impl Settle for EmbeddedSettle {
    fn ack(self: Box<Self>) -> BoxFuture<'static, Result<(), BusError>> {
        self.ack_with(Vec::new())
    }

    fn ack_with(
        mut self: Box<Self>,
        others: Vec<Box<dyn Settle>>,
    ) -> BoxFuture<'static, Result<(), BusError>> {
        self.settled = true;
        let mut ids = Vec::with_capacity(others.len() + 1);
        ids.push(self.delivery_id);
        // Ours, of this bus, go in the one command; anything else is acked on its own.
        let mut ours = Vec::with_capacity(others.len());
        let mut foreign = Vec::new();
        for mut other in others {
            match other
                .as_any()
                .and_then(|other| other.downcast_mut::<EmbeddedSettle>())
            {
                Some(settle) if Arc::ptr_eq(&settle.shared, &self.shared) => {
                    settle.settled = true;
                    ids.push(settle.delivery_id);
                    ours.push(other);
                }
                _ => foreign.push(other.ack()),
            }
        }
        Box::pin(async move {
            let acked = self.shared.call(|reply| Command::Ack(ids, reply)).await;
            // The handles (and their prefetch slots) go once the acks are answered.
            drop(ours);
            let others = futures::future::join_all(foreign).await;
            acked?;
            others.into_iter().collect()
        })
    }

    fn as_any(&mut self) -> Option<&mut dyn std::any::Any> {
        Some(self)
    }

    fn nack(mut self: Box<Self>, nack: Nack) -> BoxFuture<'static, Result<(), BusError>> {
        self.settled = true;
        Box::pin(async move {
            self.shared
                .call(|reply| Command::Nack {
                    delivery_id: self.delivery_id,
                    attempt: self.attempt,
                    nack,
                    reply,
                })
                .await
        })
    }
}

struct Consuming {
    shared: Arc<Shared>,
    group: String,
    window: Arc<Semaphore>,
    prefetch: usize,
    buffered: VecDeque<Delivery>,
}

fn subscriber(shared: Arc<Shared>, subscription: Subscription) -> Subscriber {
    let prefetch = usize::from(subscription.prefetch.max(1));
    let state = Consuming {
        shared,
        group: subscription.group,
        window: Arc::new(Semaphore::new(prefetch)),
        prefetch,
        buffered: VecDeque::new(),
    };
    let stream = futures::stream::unfold(state, |mut state| async move {
        let next = state.next().await;
        Some((next, state))
    });
    Subscriber {
        inner: stream.boxed(),
    }
}

impl Consuming {
    async fn next(&mut self) -> Result<Delivery, BusError> {
        loop {
            if let Some(delivery) = self.buffered.pop_front() {
                return Ok(delivery);
            }
            // Wait for a free slot in the prefetch window, then take every free slot.
            let mut permits = vec![
                self.window
                    .clone()
                    .acquire_owned()
                    .await
                    .map_err(|_| BusError::Closed)?,
            ];
            while permits.len() < self.prefetch {
                match self.window.clone().try_acquire_owned() {
                    Ok(permit) => permits.push(permit),
                    Err(_) => break,
                }
            }
            // Answered once there is something: the writer parks the request until a
            // publish (or a poll) brings deliveries of the group.
            let group = self.group.clone();
            let wanted = permits.len();
            let rows = self
                .shared
                .call(|reply| Command::Lease(group, wanted, reply))
                .await?;
            if rows.is_empty() {
                continue;
            }
            if let Ok(mut held) = self.shared.held.lock() {
                held.extend(rows.iter().map(|row| (row.delivery_id, row.attempts)));
            }
            for (row, permit) in rows.into_iter().zip(permits) {
                let attempt = u32::try_from(row.attempts).unwrap_or(u32::MAX);
                let held = self
                    .shared
                    .tap
                    .delivered(&row.message, &self.group, attempt);
                self.buffered.push_back(Delivery {
                    message: row.message,
                    attempt: u32::try_from(row.attempts).unwrap_or(u32::MAX),
                    max_attempts: self.shared.max_attempts,
                    group: self.group.clone(),
                    held,
                    settle: Box::new(EmbeddedSettle {
                        shared: self.shared.clone(),
                        delivery_id: row.delivery_id,
                        attempt: row.attempts,
                        settled: false,
                        _permit: permit,
                    }),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Held by a test to stop the syncer thread before its fsync.
    pub(super) static SYNC_GATE: Mutex<()> = Mutex::new(());

    /// A consumer takes a published message at once; the publisher is answered only
    /// after the syncer's fsync.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    // The gate is held across awaits on purpose: it stops another thread, not this task.
    #[allow(clippy::await_holding_lock)]
    async fn consumers_do_not_wait_for_the_fsync_but_publishers_do() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let bus = Arc::new(
            EmbeddedBus::open(
                &dir.path().join("bus.db"),
                BusOptions::default(),
                Synchronous::Full,
            )
            .await
            .expect("open"),
        );
        let mut subscriber = bus
            .subscribe(Subscription::new("g", "k"))
            .await
            .expect("subscribe");
        let gate = SYNC_GATE.lock().expect("gate");
        let publishing = tokio::spawn({
            let bus = bus.clone();
            async move { bus.publish(Message::new("k", "hello")).await }
        });
        let delivery = tokio::time::timeout(Duration::from_secs(10), subscriber.next())
            .await
            .expect("delivered before the fsync")
            .expect("a delivery")
            .expect("no error");
        assert_eq!(delivery.message.body.as_ref(), b"hello");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            !publishing.is_finished(),
            "the publish was answered before its fsync"
        );
        drop(gate);
        tokio::time::timeout(Duration::from_secs(10), publishing)
            .await
            .expect("answered after the fsync")
            .expect("join")
            .expect("published");
        delivery.ack().await.expect("ack");
    }

    /// A consumer that stops while its lease request is parked does not take the next
    /// message with it: another consumer of the group gets it at once, not when a lease
    /// (here 60 s) would have run out.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_parked_request_of_a_consumer_that_stopped_takes_nothing() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let options = BusOptions {
            lease: Duration::from_secs(60),
            ..BusOptions::default()
        };
        let bus = EmbeddedBus::open(&dir.path().join("bus.db"), options, Synchronous::Full)
            .await
            .expect("open");
        let subscribe = || async {
            bus.subscribe(Subscription::new("g", "k"))
                .await
                .expect("subscribe")
        };
        let mut gone = subscribe().await;
        // Its request parks in the writer (nothing to take yet), then the consumer goes.
        let waited = tokio::time::timeout(Duration::from_millis(300), gone.next()).await;
        assert!(waited.is_err(), "nothing was published yet");
        drop(gone);
        bus.publish(Message::new("k", "for whoever is there"))
            .await
            .expect("publish");
        let mut next = subscribe().await;
        let delivery = tokio::time::timeout(Duration::from_secs(5), next.next())
            .await
            .expect("delivered at once")
            .expect("a delivery")
            .expect("no error");
        assert_eq!(
            delivery.attempt, 1,
            "the stopped consumer's request took no attempt"
        );
        delivery.ack().await.expect("ack");
    }

    /// A consumer waiting when a batch is published takes, leased as they are made, as
    /// many deliveries as it has room for, in order; the rest wait, available, for its
    /// next request.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_waiting_consumer_takes_what_it_has_room_for_from_the_publish_itself() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let bus = open_default(dir.path()).await;
        let mut subscriber = bus
            .subscribe(Subscription::new("g", "k").with_prefetch(2))
            .await
            .expect("subscribe");
        // Its request parks in the writer: nothing to take yet.
        let waited = tokio::time::timeout(Duration::from_millis(300), subscriber.next()).await;
        assert!(waited.is_err(), "nothing was published yet");
        bus.publish_all((0..5).map(|i| Message::new("k", format!("m{i}"))).collect())
            .await
            .expect("publish");
        let first = take(&mut subscriber, 2).await;
        let bodies = |deliveries: &[Delivery]| -> Vec<String> {
            deliveries
                .iter()
                .map(|d| String::from_utf8_lossy(&d.message.body).into_owned())
                .collect()
        };
        assert_eq!(bodies(&first), ["m0", "m1"]);
        assert!(first.iter().all(|d| d.attempt == 1));
        let stats = bus.group_stats("g").await.expect("stats");
        assert_eq!(
            (stats.depth, stats.in_flight, stats.dead_letters),
            (Some(3), Some(2), Some(0)),
            "(waiting, leased, dead)"
        );
        Delivery::ack_all(first).await.expect("ack");
        // (Two at a time: the prefetch window.)
        let next = take(&mut subscriber, 2).await;
        assert_eq!(bodies(&next), ["m2", "m3"]);
        Delivery::ack_all(next).await.expect("ack");
        let last = take(&mut subscriber, 1).await;
        assert_eq!(bodies(&last), ["m4"]);
        Delivery::ack_all(last).await.expect("ack");
        let stats = bus.group_stats("g").await.expect("stats");
        assert_eq!((stats.depth, stats.in_flight), (Some(0), Some(0)));
    }

    /// A bus file in `dir` with the default options, synced as `flotilla up` syncs it.
    async fn open_default(dir: &Path) -> EmbeddedBus {
        EmbeddedBus::open(
            &dir.join("bus.db"),
            BusOptions::default(),
            Synchronous::Full,
        )
        .await
        .expect("open")
    }

    /// The next `n` deliveries of `subscriber`.
    async fn take(subscriber: &mut Subscriber, n: usize) -> Vec<Delivery> {
        let mut deliveries = Vec::with_capacity(n);
        for _ in 0..n {
            deliveries.push(
                tokio::time::timeout(Duration::from_secs(10), subscriber.next())
                    .await
                    .expect("delivered")
                    .expect("a delivery")
                    .expect("no error"),
            );
        }
        deliveries
    }

    /// `Delivery::ack_all` settles a batch in one command to its bus, and acks the
    /// deliveries of another bus among them on their own: every message is gone from
    /// both files, and the freed prefetch slots take the next deliveries.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ack_all_settles_its_own_together_and_another_bus_s_alone() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let (one_path, other_path) = (dir.path().join("one.db"), dir.path().join("other.db"));
        let one = EmbeddedBus::open(&one_path, BusOptions::default(), Synchronous::Full)
            .await
            .expect("open");
        let other = EmbeddedBus::open(&other_path, BusOptions::default(), Synchronous::Full)
            .await
            .expect("open");
        let mut from_one = one
            .subscribe(Subscription::new("g", "k").with_prefetch(8))
            .await
            .expect("subscribe");
        let mut from_other = other
            .subscribe(Subscription::new("g", "k").with_prefetch(8))
            .await
            .expect("subscribe");
        for bus in [&one, &other] {
            bus.publish_all(
                (0..12)
                    .map(|i| Message::new("k", format!("m{i}")))
                    .collect(),
            )
            .await
            .expect("publish");
        }
        Delivery::ack_all(Vec::new())
            .await
            .expect("nothing to settle");
        // The prefetch windows are full: 8 of each, mixed, in one call.
        let mut batch = take(&mut from_one, 8).await;
        batch.splice(1..1, take(&mut from_other, 8).await);
        Delivery::ack_all(batch).await.expect("acked together");
        // The slots are free again: the last 4 of each come, and go the same way.
        let mut rest = take(&mut from_other, 4).await;
        rest.extend(take(&mut from_one, 4).await);
        Delivery::ack_all(rest).await.expect("acked together");
        for path in [&one_path, &other_path] {
            let (messages, deliveries): (i64, i64) = Connection::open(path)
                .and_then(|conn| {
                    conn.query_row(
                        "SELECT (SELECT COUNT(*) FROM messages), (SELECT COUNT(*) FROM deliveries)",
                        [],
                        |row| Ok((row.get(0)?, row.get(1)?)),
                    )
                })
                .expect("count");
            assert_eq!(
                (messages, deliveries),
                (0, 0),
                "{}: every delivery settled",
                path.display()
            );
        }
    }

    /// Acknowledgements settled together — of several groups, for the same messages, in
    /// one transaction — delete a message only once every group bound to it has
    /// settled it, and then delete it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn acknowledgements_settled_together_delete_a_message_only_after_its_last_group() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("bus.db");
        let bus = EmbeddedBus::open(&path, BusOptions::default(), Synchronous::Full)
            .await
            .expect("open");
        let mut groups = Vec::new();
        for group in ["a", "b", "c"] {
            groups.push(
                bus.subscribe(Subscription::new(group, "k").with_prefetch(64))
                    .await
                    .expect("subscribe"),
            );
        }
        bus.publish_all(
            (0..40)
                .map(|i| Message::new("k", format!("m{i}")))
                .collect(),
        )
        .await
        .expect("publish");
        let messages = || {
            Connection::open(&path)
                .and_then(|conn| {
                    conn.query_row(
                        "SELECT COUNT(*), COALESCE(SUM(pending), 0) FROM messages",
                        [],
                        |row| Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?)),
                    )
                })
                .expect("count messages")
        };
        let mut deliveries = Vec::new();
        for subscriber in &mut groups {
            deliveries.extend(take(subscriber, 40).await);
        }
        // Group c keeps its deliveries of the first half: those messages stay, owed once.
        let kept: Vec<Delivery> = deliveries
            .extract_if(.., |d| {
                d.group == "c" && d.message.body.as_ref() < b"m2".as_slice()
            })
            .collect();
        assert_eq!(kept.len(), 12, "m0, m1 and m10 to m19");
        futures::future::try_join_all(deliveries.into_iter().map(Delivery::ack))
            .await
            .expect("acked together");
        assert_eq!(messages(), (12, 12), "owed by group c alone");
        futures::future::try_join_all(kept.into_iter().map(Delivery::ack))
            .await
            .expect("acked");
        assert_eq!(messages(), (0, 0), "every group settled every message");
    }

    /// Acknowledgements settle before a count sent right behind them, in the same
    /// transaction of the writer: commands keep their order though a batch settles its
    /// acknowledgements together.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn acknowledgements_count_for_the_command_right_behind_them() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let bus = open_default(dir.path()).await;
        let mut subscriber = bus
            .subscribe(Subscription::new("g", "k").with_prefetch(64))
            .await
            .expect("subscribe");
        for round in 0..20 {
            bus.publish_all(
                (0..8)
                    .map(|i| Message::new("k", format!("{round}-{i}")))
                    .collect(),
            )
            .await
            .expect("publish");
            let deliveries = take(&mut subscriber, 8).await;
            // Polled in this order, the acknowledgements are queued before the count.
            let (acked, depth) = tokio::join!(
                futures::future::try_join_all(deliveries.into_iter().map(Delivery::ack)),
                bus.queue_depth("g"),
            );
            acked.expect("acked");
            assert_eq!(depth.expect("depth"), Some(0), "round {round}");
        }
    }

    /// What a publisher or a user is answered about waits for the disk; what only moves
    /// a message along between consumer and bus does not.
    #[test]
    fn only_publishes_and_user_changes_wait_for_the_disk() {
        let (reply, _) = oneshot::channel();
        assert!(Command::Publish(Vec::new(), None, reply).must_survive_power_loss());
        let (reply, _) = oneshot::channel();
        assert!(Command::Bind("g".into(), Vec::new(), reply).must_survive_power_loss());
        let (reply, _) = oneshot::channel();
        assert!(Command::Replay(None, Vec::new(), reply).must_survive_power_loss());
        let (reply, _) = oneshot::channel();
        assert!(
            Command::Nack {
                delivery_id: 1,
                attempt: 1,
                nack: Nack::Reject("bad".into()),
                reply
            }
            .must_survive_power_loss()
        );
        let (reply, _) = oneshot::channel();
        assert!(!Command::Lease("g".into(), 8, reply).must_survive_power_loss());
        let (reply, _) = oneshot::channel();
        assert!(!Command::Ack(vec![1], reply).must_survive_power_loss());
        assert!(!Command::Renew(vec![(1, 1)]).must_survive_power_loss());
        assert!(!Command::Release(1, 1).must_survive_power_loss());
    }
}
