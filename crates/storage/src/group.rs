//! Group commit: concurrent writers on one SQLite database share a transaction, so a
//! burst of sixteen requests costs one commit — one WAL fsync — instead of sixteen.
//!
//! [`Database::write`](crate::Database::write) hands out a [`Write`]: a transaction to
//! work in. On PostgreSQL and MySQL it is a transaction of its own (the server already
//! merges concurrent commits into one WAL flush). On SQLite, which has one writer at a
//! time anyway, writes take turns on one shared transaction, each inside a savepoint of
//! its own:
//!
//! - a write that fails or is dropped half-way is rolled back to its savepoint, so it
//!   leaves nothing behind and the others in the batch are not affected; the first write
//!   of a batch needs no savepoint (undoing it is undoing the whole transaction, which
//!   holds nothing else), so a writer alone costs no more statements than a plain
//!   transaction — each statement is a hand-off to SQLite's worker thread and back;
//! - [`Write::commit`] releases the savepoint; if nobody else is waiting to write, it
//!   commits the batch (and so everyone's writes in it), otherwise it leaves the commit to
//!   the last writer in line. Either way it returns only once the batch's commit is
//!   durable — nothing is acknowledged before its fsync;
//! - no timer: a batch is exactly the writes that queued up while the previous one was
//!   working or committing, so one writer alone commits at once and pays no delay.
//!
//! The shared transaction has a connection of its own (a second pool of one), so reads on
//! the database's pool never queue behind a write, and it is never idle between batches:
//! the commit and the next `BEGIN` go in one request (`COMMIT; BEGIN`), and the next write
//! finds its transaction open. A deferred `BEGIN` that has run nothing holds no lock and
//! no snapshot. The write that ends a batch sends its last statements, its savepoint's
//! release and the commit together: a write alone is one request to SQLite's thread
//! (plus its reads), where it was three (`BEGIN`, the write, `COMMIT`). If its statements
//! fail, only it is undone and the rest of its batch still commits.
//!
//! A write made only of statements (`Database::commit_statements`: a post's create, the
//! relay's marking, a consumer that reads nothing) does not take a turn of its own: it is
//! queued, and one task ([`Leader`]) takes the slot, takes what is queued by then — all
//! up to 16, above that a multiple of 8, at most what the batch has room for — and sends
//! them, alike ones side by side, as one write of the batch inside a savepoint: one
//! request for all.
//! If their statements fail, the lot is undone and each is sent again alone; if the
//! commit fails, all are told so and none is tried again. The task runs on the runtime
//! the database was opened on, and one stopped before it took the queue fails what is
//! queued rather than leaving it to nobody.
//!
//! On a database file the shared transaction commits at `synchronous = NORMAL` — SQLite
//! writes the batch to its write-ahead log and returns — and [`Syncer`] makes it durable:
//! the slot goes to the next batch at once, and the batch's writers are answered after
//! an `fdatasync` of the log that began after their commit. Each commit starts its sync
//! at once, beside any still running, so a write waits for one sync, not for an earlier
//! batch's and then its own (measured: BENCHMARKS.md, "The sync beside the next batch").
//! A batch is visible to readers from its commit, a moment before its sync: a reader
//! that passes on what it read (the outbox relay) waits for
//! [`Database::durable`](crate::Database::durable) first.
//!
//! The commit itself runs in a task of its own, so a caller that goes away (a client that
//! hangs up) can neither leave a batch half-committed nor strand the others waiting on it.

use std::sync::{
    Arc, PoisonError,
    atomic::{AtomicU64, AtomicUsize, Ordering},
};

use sqlx::{Any, AnyPool, Transaction};
use tokio::{
    runtime::Handle,
    sync::{Mutex, OwnedMutexGuard, oneshot, watch},
};

use crate::{Dialect, StorageError, statements::Statements};

/// The transaction a [`Write`] works in.
pub type Tx = Transaction<'static, Any>;

/// A batch is committed once it holds this many writes even if more are waiting, so one
/// commit's fsync never waits on an unbounded amount of work.
const MOST_PER_BATCH: usize = 64;

/// What a batch's commit came to, for every write in it: `None` while it is open.
type Outcome = Option<Result<(), String>>;

/// The shared transaction of one SQLite database.
#[derive(Debug)]
pub(crate) struct Batches {
    pool: AnyPool,
    /// The pool is this shared transaction's own connection: a commit begins the next
    /// transaction in the same request (`COMMIT; BEGIN`), so the next write finds it
    /// open. Not on an in-memory database, whose one connection the pool shares.
    keep_open: bool,
    slot: Arc<Mutex<Slot>>,
    /// Writers waiting for the slot: while there are some, a finished write leaves the
    /// commit to them.
    waiting: AtomicUsize,
    /// Writes committed, and the commits that carried them.
    writes: AtomicU64,
    commits: AtomicU64,
    /// Statement-only writes sent to SQLite in one request with others.
    joined: AtomicU64,
    /// Writes made only of statements, waiting to go to SQLite together
    /// ([`Batches::commit_statements`]).
    queue: std::sync::Mutex<Queue>,
    /// The runtime the database was opened on, for the tasks that send the queue.
    runtime: Option<Handle>,
    /// On a database file: the shared transaction commits without waiting for the disk,
    /// and a batch's writers are answered once this has synced the write-ahead log.
    syncer: Option<Syncer>,
}

/// Makes the shared transaction's commits durable off its connection. The transaction
/// commits at `synchronous = NORMAL` (SQLite writes the WAL, no fsync), the slot goes to
/// the next batch at once, and a batch's writers are answered after an `fdatasync` of
/// the WAL file that began after their commit. Each commit starts its own sync at once,
/// beside any still running, and is answered when one that began after it has returned:
/// a write waits for one sync, never for the end of an earlier one and then its own.
/// Nothing is acknowledged before it is on disk.
#[derive(Debug)]
pub(crate) struct Syncer {
    wal: std::path::PathBuf,
    /// Commits made, and the most that a finished sync covers.
    committed: AtomicU64,
    synced: AtomicU64,
}

impl Syncer {
    /// For the database file at `path` (its log is `path-wal`).
    pub(crate) fn new(path: &std::path::Path) -> Self {
        let mut wal = path.as_os_str().to_owned();
        wal.push("-wal");
        Self {
            wal: wal.into(),
            committed: AtomicU64::new(0),
            synced: AtomicU64::new(0),
        }
    }

    /// Counts a commit that returned; its number, for [`Syncer::sync_through`].
    fn committed(&self) -> u64 {
        self.committed.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// The number of the last commit that returned.
    pub(crate) fn last(&self) -> u64 {
        self.committed.load(Ordering::Acquire)
    }

    /// Returns once commit number `commit` is on disk.
    pub(crate) async fn sync_through(&self, commit: u64) -> Result<(), String> {
        if self.synced.load(Ordering::Acquire) >= commit {
            return Ok(());
        }
        // Every commit counted by now has written its frames: the sync covers them.
        let covers = self.committed.load(Ordering::Acquire);
        // Opened for each sync, not kept: SQLite deletes the log when its last
        // connection closes and starts a new file, which a kept descriptor would miss.
        let wal = self.wal.clone();
        tokio::task::spawn_blocking(move || sync_log(&wal))
            .await
            .map_err(|error| format!("the write-ahead log's sync stopped: {error}"))?
            .map_err(|error| format!("cannot sync the write-ahead log: {error}"))?;
        self.synced.fetch_max(covers, Ordering::AcqRel);
        Ok(())
    }
}

/// `fdatasync` of the log at `wal`: any descriptor of the file syncs what SQLite wrote
/// through its own. No log means none was needed: SQLite removes it only after copying
/// it into the database file and syncing that.
fn sync_log(wal: &std::path::Path) -> std::io::Result<()> {
    #[cfg(test)]
    let _held = tests::SYNC_GATE
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    match std::fs::File::open(wal) {
        Ok(file) => file.sync_data(),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(error),
    }
}

/// Statement-only writes waiting for the task that sends them.
#[derive(Debug, Default)]
struct Queue {
    entries: Vec<Queued>,
    /// A task is on its way to the slot and takes what is queued when it gets there.
    leading: bool,
}

#[derive(Debug)]
struct Queued {
    statements: Statements,
    reply: oneshot::Sender<Result<(), StorageError>>,
}

/// The task that sends what is queued. While [`Queue::leading`] is set exactly one
/// leader has yet to take the queue; one dropped before it did (its runtime ended) fails
/// what is queued rather than leaving it to nobody.
struct Leader {
    batches: Arc<Batches>,
    drained: bool,
}

impl Drop for Leader {
    fn drop(&mut self) {
        if self.drained {
            return;
        }
        let entries = {
            let mut queue = self
                .batches
                .queue
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            queue.leading = false;
            std::mem::take(&mut queue.entries)
        };
        fail_all(
            entries,
            "the task sending this write was stopped before it ran",
        );
    }
}

/// Answers every one of `entries` with the same failure.
fn fail_all(entries: Vec<Queued>, reason: &str) {
    for entry in entries {
        let _ = entry
            .reply
            .send(Err(StorageError::GroupCommit(reason.to_owned())));
    }
}

impl Leader {
    /// Takes the slot (counted as `waiting` until then), then what is queued by then,
    /// and sends it as one write.
    async fn run(mut self, waiting: Waiting) {
        let batches = self.batches.clone();
        tokio::task::yield_now().await;
        let write = batches.write_after(waiting).await;
        let room = match &write {
            Ok(write) => write.room(),
            Err(_) => MOST_PER_BATCH,
        };
        let (entries, more) = {
            let mut queue = batches.queue.lock().unwrap_or_else(PoisonError::into_inner);
            // At most what the batch has room for, and above 16 a multiple of 8: a
            // request's text is its writes' texts in a row, and sqlx keeps its prepared
            // statements under that whole text, so few sizes keep few of them (the rest
            // of the queue is the next leader's, in the same batch).
            let take = lot_size(queue.entries.len().min(room));
            let entries: Vec<Queued> = queue.entries.drain(..take).collect();
            queue.leading = !queue.entries.is_empty();
            (entries, queue.leading)
        };
        self.drained = true;
        if more {
            batches.spawn_leader();
        }
        let mut write = match write {
            Ok(write) => write,
            Err(error) => return fail_all(entries, &error.to_string()),
        };
        let count = entries.len();
        if count <= 1 {
            match entries.into_iter().next() {
                Some(entry) => {
                    let _ = entry.reply.send(write.commit_with(entry.statements).await);
                }
                None => {
                    let _ = write.rollback().await;
                }
            }
            return;
        }
        // Alike writes side by side (concurrent writes have no order among them; one
        // caller's next write waits for this one), for the same reason as the sizes.
        let mut entries = entries;
        entries.sort_by(|a, b| a.statements.text().cmp(b.statements.text()));
        let mut all = Statements::new(Dialect::Sqlite);
        // Always in a savepoint, even as the batch's first write: a failure in the
        // statements is then undone alone and known to be theirs (see below).
        write.open_savepoint(&mut all);
        for entry in &entries {
            all.append(&entry.statements);
        }
        write.counts_as(count);
        match write.commit_with(all).await {
            Ok(()) => {
                batches.joined.fetch_add(count as u64, Ordering::Relaxed);
                for entry in entries {
                    let _ = entry.reply.send(Ok(()));
                }
            }
            // A statement failed and the lot was undone (nothing of it committed): each
            // again alone, so the one that failed fails by itself.
            Err(StorageError::Sqlx(error)) => {
                tracing::debug!(%error, writes = count, "a write sent with others failed; each again alone");
                for entry in entries {
                    let batches = batches.clone();
                    tokio::spawn(async move {
                        let result = match batches.write().await {
                            Ok(write) => write.commit_with(entry.statements).await,
                            Err(error) => Err(error),
                        };
                        let _ = entry.reply.send(result);
                    });
                }
            }
            // The commit failed, or how it ended is unknown: the same answer for all,
            // never a second try of writes that may be on disk.
            Err(error) => fail_all(entries, &error.to_string()),
        }
    }
}

/// How many of `n` queued writes go in one request: all up to 16, above that the
/// largest multiple of 8 — 22 sizes in all.
fn lot_size(n: usize) -> usize {
    if n <= 16 { n } else { n - n % 8 }
}

impl Drop for Batches {
    fn drop(&mut self) {
        // The transaction kept open holds a connection; returning it to its pool needs a
        // runtime. Without one (the process is ending) it is let go as it is: a
        // deferred `BEGIN` that ran nothing holds nothing.
        if tokio::runtime::Handle::try_current().is_err()
            && let Ok(mut slot) = self.slot.try_lock()
        {
            std::mem::forget(slot.spare.take());
            std::mem::forget(slot.batch.take());
        }
    }
}

/// How much group commit saved: writes committed, the commits that carried them, and the
/// statement-only writes that went to SQLite in one request with others
/// ([`Database::commit_statements`](crate::Database::commit_statements)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupStats {
    pub writes: u64,
    pub commits: u64,
    pub joined: u64,
}

#[derive(Debug, Default)]
struct Slot {
    batch: Option<Batch>,
    /// The transaction begun with the last commit (`keep_open`), for the next batch. A
    /// deferred `BEGIN` that has run nothing holds no lock and no snapshot.
    spare: Option<Tx>,
}

#[derive(Debug)]
struct Batch {
    tx: Tx,
    writes: usize,
    /// The write that was dropped before it finished: rolled back by the next one to take
    /// the slot.
    abandoned: Option<Savepoint>,
    /// A savepoint already set for the next writer: a write that ends while another waits
    /// sets it in the same statement that releases its own, so a writer under load pays
    /// one hand-off to SQLite's thread for the two.
    ready: bool,
    outcome: watch::Sender<Outcome>,
}

/// Where a write began: a savepoint of its own, or — the first write of a batch — the
/// start of the transaction, undone by dropping the whole batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Savepoint {
    Whole,
    /// The savepoint `w`: writers' savepoints never nest (one is released before the
    /// next is set), so one name does, and the statements that set and end it are the
    /// same text every time (SQLite prepares them once).
    Named,
}

impl Batches {
    pub(crate) fn new(pool: AnyPool, keep_open: bool, syncer: Option<Syncer>) -> Arc<Self> {
        Arc::new(Self {
            pool,
            keep_open,
            slot: Arc::new(Mutex::new(Slot::default())),
            waiting: AtomicUsize::new(0),
            writes: AtomicU64::new(0),
            commits: AtomicU64::new(0),
            joined: AtomicU64::new(0),
            queue: std::sync::Mutex::new(Queue::default()),
            runtime: Handle::try_current().ok(),
            syncer,
        })
    }

    /// Returns once every commit made so far is on disk (at once without a syncer:
    /// each commit was).
    pub(crate) async fn durable(&self) -> Result<(), StorageError> {
        match &self.syncer {
            Some(syncer) => syncer
                .sync_through(syncer.last())
                .await
                .map_err(StorageError::GroupCommit),
            None => Ok(()),
        }
    }

    pub(crate) fn stats(&self) -> GroupStats {
        GroupStats {
            writes: self.writes.load(Ordering::Relaxed),
            commits: self.commits.load(Ordering::Relaxed),
            joined: self.joined.load(Ordering::Relaxed),
        }
    }

    /// Ends the transaction kept open and closes this transaction's own connection.
    pub(crate) async fn close(&self) {
        let mut slot = self.slot.lock().await;
        slot.batch = None;
        slot.spare = None;
        drop(slot);
        if self.keep_open {
            self.pool.close().await;
        }
    }

    /// A write made only of `statements` (no read whose answer decides what it writes):
    /// queued, and sent together with the others queued meanwhile in one request, as one
    /// write of the batch — one hand-off to SQLite's thread for all of them, where each
    /// write is one of its own. If the statements of any of them fail, the lot is undone
    /// and each is sent again alone, so one write's failure is its own. Returns once the
    /// commit holding it is durable, as [`Write::commit`] does; a caller that goes away
    /// does not take its write back.
    pub(crate) async fn commit_statements(
        self: &Arc<Self>,
        statements: Statements,
    ) -> Result<(), StorageError> {
        let (reply, answer) = oneshot::channel();
        let lead = {
            let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
            queue.entries.push(Queued { statements, reply });
            !std::mem::replace(&mut queue.leading, true)
        };
        if lead {
            self.spawn_leader();
        }
        answer.await.map_err(|_| batch_lost())?
    }

    /// Starts the task that takes the queue to SQLite: counted as waiting for the slot
    /// from now (a write that finishes meanwhile leaves the batch's commit to it), and
    /// run on the runtime the database was opened on, not the caller's, which may end
    /// first (the HTTP threads' own runtimes). A task of its own: the writes it carries
    /// must not depend on one caller.
    fn spawn_leader(self: &Arc<Self>) {
        let leader = Leader {
            batches: self.clone(),
            drained: false,
        };
        let task: std::pin::Pin<Box<dyn Future<Output = ()> + Send>> =
            Box::pin(leader.run(Waiting::new(self)));
        match self.runtime.clone().or_else(|| Handle::try_current().ok()) {
            // On a runtime that has shut down the task is dropped, and with it the
            // leader, which fails what is queued.
            Some(runtime) => drop(runtime.spawn(task)),
            None => drop(task),
        }
    }

    async fn write(self: &Arc<Self>) -> Result<Write, StorageError> {
        self.write_after(Waiting::new(self)).await
    }

    /// [`write`](Self::write) for a writer already counted as waiting.
    async fn write_after(self: &Arc<Self>, waiting: Waiting) -> Result<Write, StorageError> {
        let slot = self.slot.clone().lock_owned().await;
        waiting.admitted();
        let mut turn = Turn {
            batches: self.clone(),
            slot: Some(slot),
            weight: 1,
        };
        let savepoint = turn.start().await?;
        Ok(Write {
            inner: Inner::Batched { turn, savepoint },
        })
    }
}

/// A writer waiting for the slot, counted in [`Batches::waiting`] until it is let in. If
/// it gives up first (its task is cancelled), the writer before it may have left the
/// batch's commit to it: a task takes the slot and commits unless somebody else waits.
struct Waiting {
    batches: Option<Arc<Batches>>,
}

impl Waiting {
    fn new(batches: &Arc<Batches>) -> Self {
        batches.waiting.fetch_add(1, Ordering::SeqCst);
        Self {
            batches: Some(batches.clone()),
        }
    }

    fn admitted(mut self) {
        if let Some(batches) = self.batches.take() {
            batches.waiting.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        let Some(batches) = self.batches.take() else {
            return;
        };
        batches.waiting.fetch_sub(1, Ordering::SeqCst);
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            let slot = batches.slot.clone().lock_owned().await;
            let mut turn = Turn {
                batches,
                slot: Some(slot),
                weight: 1,
            };
            if turn.roll_back_abandoned().await.is_ok() {
                turn.hand_on();
            }
        });
    }
}

/// One writer's hold on the shared batch. Dropped without [`Turn::finish`] (a failed or
/// cancelled write), it finishes in a task of its own.
struct Turn {
    batches: Arc<Batches>,
    slot: Option<OwnedMutexGuard<Slot>>,
    /// The writes this turn carries (more than one for statement-only writes sent
    /// together): what it takes of the batch's room.
    weight: usize,
}

impl Turn {
    fn slot(&mut self) -> Result<&mut Slot, StorageError> {
        self.slot.as_deref_mut().ok_or_else(finished)
    }

    fn batch(&mut self) -> Result<&mut Batch, StorageError> {
        self.slot()?.batch.as_mut().ok_or_else(finished)
    }

    /// Cleans up after an abandoned write, opens a batch if there is none, and sets this
    /// write's savepoint (none for the batch's first write).
    async fn start(&mut self) -> Result<Savepoint, StorageError> {
        self.roll_back_abandoned().await?;
        let pool = self.batches.pool.clone();
        let slot = self.slot()?;
        if slot.batch.is_none() {
            let tx = match slot.spare.take() {
                Some(tx) => tx,
                None => pool.begin().await?,
            };
            slot.batch = Some(Batch {
                tx,
                writes: 0,
                abandoned: None,
                ready: false,
                outcome: watch::Sender::new(None),
            });
        }
        let (ready, alone) = slot.batch.as_mut().map_or((false, false), |batch| {
            (std::mem::take(&mut batch.ready), batch.writes == 0)
        });
        let savepoint = if alone && !ready {
            Savepoint::Whole
        } else {
            Savepoint::Named
        };
        // The batch was opened above when missing.
        let batch = self.batch()?;
        batch.abandoned = Some(savepoint);
        if savepoint == Savepoint::Named && !ready {
            execute(&mut batch.tx, "SAVEPOINT w").await?;
        }
        Ok(savepoint)
    }

    async fn roll_back_abandoned(&mut self) -> Result<(), StorageError> {
        let batches = self.batches.clone();
        let slot = self.slot()?;
        let Some(batch) = slot.batch.as_mut() else {
            return Ok(());
        };
        match batch.abandoned.take() {
            None => {}
            // The batch held nothing but the abandoned write: rolling its transaction
            // back undoes it, and nobody waits on its outcome.
            Some(Savepoint::Whole) => {
                if let Some(batch) = slot.batch.take() {
                    slot.spare = batches.recover(batch.tx).await;
                }
            }
            Some(savepoint) => {
                let undo = Statements::new(Dialect::Sqlite);
                if let Err(error) =
                    end_savepoint(&mut batch.tx, savepoint, false, false, undo).await
                {
                    // The batch cannot be trusted any more: fail everyone in it.
                    self.fail_batch(&error);
                    return Err(error);
                }
            }
        }
        Ok(())
    }

    /// Ends this write's part: its savepoint is released (`keep`) or rolled back, then
    /// the batch is committed if nobody waits to add to it. Returns what to wait for.
    async fn finish(
        &mut self,
        savepoint: Savepoint,
        keep: bool,
        last: Option<Statements>,
    ) -> Result<Settled, StorageError> {
        if savepoint == Savepoint::Whole && !keep {
            // Undoing the batch's only write: the whole transaction goes.
            let mut slot = self.slot.take().ok_or_else(finished)?;
            let batch = slot.batch.take().ok_or_else(finished)?;
            let outcome = batch.outcome.subscribe();
            discard(self.batches.clone(), slot, batch.tx);
            return Ok(Settled::Batch(outcome));
        }
        // Somebody waits and the batch has room: set their savepoint along with ending
        // this one (a waiter that gives up leaves it unused, which costs nothing).
        let waiting = self.batches.waiting.load(Ordering::SeqCst) > 0;
        let weight = if keep { self.weight } else { 0 };
        let slot = self.slot()?;
        let room = slot
            .batch
            .as_ref()
            .is_some_and(|batch| batch.writes + weight < MOST_PER_BATCH);
        let next = waiting && room;
        if keep && !next {
            // Nobody to leave the commit to (or the batch is full): this write's end and
            // the batch's commit go in one request.
            let slot = self.slot.take().ok_or_else(finished)?;
            let (reply, settled) = oneshot::channel();
            let mine = Mine {
                savepoint,
                last: last.unwrap_or_else(|| Statements::new(Dialect::Sqlite)),
                weight: self.weight,
                reply,
            };
            commit_in_task(self.batches.clone(), slot, Some(mine));
            return Ok(Settled::Own(settled));
        }
        let batch = self.batch()?;
        if let Some(last) = last {
            // This write's last statements go with the savepoint's end. If they fail, the
            // write is undone (its savepoint is still open: SQLite stopped at the error).
            if let Err(error) = end_savepoint(&mut batch.tx, savepoint, keep, next, last).await {
                Box::pin(self.finish(savepoint, false, None)).await?;
                return Err(error);
            }
        } else if let Err(error) = end_savepoint(
            &mut batch.tx,
            savepoint,
            keep,
            next,
            Statements::new(Dialect::Sqlite),
        )
        .await
        {
            self.fail_batch(&error);
            return Err(error);
        }
        let weight = self.weight;
        let batch = self.batch()?;
        batch.abandoned = None;
        batch.ready = next;
        if keep {
            batch.writes += weight;
        }
        let outcome = batch.outcome.subscribe();
        self.hand_on();
        Ok(Settled::Batch(outcome))
    }

    /// Lets the next writer in, or — nobody waiting, or the batch full — commits the
    /// batch in a task that holds the slot until the commit is durable.
    fn hand_on(&mut self) {
        let Some(slot) = self.slot.take() else {
            return;
        };
        let full = slot
            .batch
            .as_ref()
            .is_some_and(|batch| batch.writes >= MOST_PER_BATCH);
        if self.batches.waiting.load(Ordering::SeqCst) > 0 && !full {
            return; // the guard drops: the next writer's turn
        }
        if slot.batch.is_some() {
            commit_in_task(self.batches.clone(), slot, None);
        }
    }

    fn fail_batch(&mut self, error: &StorageError) {
        if let Some(mut slot) = self.slot.take()
            && let Some(batch) = slot.batch.take()
        {
            batch.outcome.send_replace(Some(Err(error.to_string())));
            discard(self.batches.clone(), slot, batch.tx);
        }
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        // Still holding the slot: the write was dropped mid-way. Its savepoint is marked
        // abandoned (set in `start`); whoever is next rolls it back. If nobody is next,
        // a task does, and commits what the batch holds for the writers already waiting.
        let Some(slot) = self.slot.take() else {
            return;
        };
        let batches = self.batches.clone();
        if batches.waiting.load(Ordering::SeqCst) > 0 || slot.batch.is_none() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            let mut turn = Turn {
                batches,
                slot: Some(slot),
                weight: 1,
            };
            if turn.roll_back_abandoned().await.is_ok() {
                turn.hand_on();
            }
        });
    }
}

/// A write in progress: work in [`tx`](Self::tx), then [`commit`](Self::commit).
/// Dropped without `commit`, everything it did is rolled back.
pub struct Write {
    inner: Inner,
}

enum Inner {
    Own(Tx),
    Batched { turn: Turn, savepoint: Savepoint },
}

impl std::fmt::Debug for Write {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.inner {
            Inner::Own(_) => "Write(own transaction)",
            Inner::Batched { .. } => "Write(batched)",
        })
    }
}

impl Write {
    pub(crate) async fn own(pool: &AnyPool) -> Result<Self, StorageError> {
        Ok(Self {
            inner: Inner::Own(pool.begin().await?),
        })
    }

    pub(crate) async fn batched(batches: &Arc<Batches>) -> Result<Self, StorageError> {
        batches.write().await
    }

    /// The transaction to run this write's statements on: `.execute(&mut **write.tx()?)`.
    pub fn tx(&mut self) -> Result<&mut Tx, StorageError> {
        match &mut self.inner {
            Inner::Own(tx) => Ok(tx),
            Inner::Batched { turn, .. } => Ok(&mut turn.batch()?.tx),
        }
    }

    /// How many more writes the batch this write is in has room for (at least one).
    pub(crate) fn room(&self) -> usize {
        match &self.inner {
            Inner::Own(_) => MOST_PER_BATCH,
            Inner::Batched { turn, .. } => {
                let used = turn
                    .slot
                    .as_deref()
                    .and_then(|slot| slot.batch.as_ref())
                    .map_or(0, |batch| batch.writes);
                MOST_PER_BATCH.saturating_sub(used).max(1)
            }
        }
    }

    /// Sets this write's savepoint at the start of `statements` if it has none (the
    /// batch's first write), so that its statements failing is undone alone and told
    /// apart from its batch's commit failing.
    pub(crate) fn open_savepoint(&mut self, statements: &mut Statements) {
        if let Inner::Batched { savepoint, .. } = &mut self.inner
            && *savepoint == Savepoint::Whole
        {
            statements.push_plain("SAVEPOINT w");
            *savepoint = Savepoint::Named;
        }
    }

    /// This write carries `writes` writes (sent together): what it takes of the batch.
    pub(crate) fn counts_as(&mut self, writes: usize) {
        if let Inner::Batched { turn, .. } = &mut self.inner {
            turn.weight = writes.max(1);
        }
    }

    /// Makes this write durable: returns once the transaction holding it has committed.
    pub async fn commit(self) -> Result<(), StorageError> {
        self.commit_with(None).await
    }

    /// Runs `last` — this write's last statements — and makes the write durable, as
    /// [`commit`](Self::commit) does. On SQLite the statements go in one request
    /// together with the end of the write's savepoint: a write made only of statements
    /// costs one hand-off to SQLite's thread. If they fail, the write is undone.
    pub async fn commit_with(
        self,
        last: impl Into<Option<Statements>>,
    ) -> Result<(), StorageError> {
        let last = last.into().filter(|last| !last.is_empty());
        match self.inner {
            Inner::Own(mut tx) => {
                if let Some(last) = last {
                    last.execute(&mut tx).await?;
                }
                Ok(tx.commit().await?)
            }
            Inner::Batched {
                mut turn,
                savepoint,
            } => {
                let settled = turn.finish(savepoint, true, last).await?;
                drop(turn);
                match settled {
                    Settled::Own(reply) => reply.await.map_err(|_| batch_lost())?,
                    Settled::Batch(mut outcome) => {
                        let settled = outcome
                            .wait_for(Option::is_some)
                            .await
                            .map_err(|_| batch_lost())?
                            .clone();
                        match settled {
                            Some(Ok(())) => Ok(()),
                            Some(Err(reason)) => Err(StorageError::GroupCommit(reason)),
                            None => Err(batch_lost()),
                        }
                    }
                }
            }
        }
    }

    /// Gives this write up: everything it did is undone, the rest of the batch stays.
    pub async fn rollback(self) -> Result<(), StorageError> {
        match self.inner {
            Inner::Own(tx) => Ok(tx.rollback().await?),
            Inner::Batched {
                mut turn,
                savepoint,
            } => {
                turn.finish(savepoint, false, None).await?;
                Ok(())
            }
        }
    }
}

/// What a finished write waits for.
enum Settled {
    /// The commit of the batch it is in, done by a later writer or a task.
    Batch(watch::Receiver<Outcome>),
    /// Its own end, sent with the batch's commit ([`commit_in_task`]): its statements
    /// may fail while the rest of the batch commits.
    Own(oneshot::Receiver<Result<(), StorageError>>),
}

/// The write that commits its batch: its savepoint, its last statements, and where its
/// own result goes.
struct Mine {
    savepoint: Savepoint,
    last: Statements,
    weight: usize,
    reply: oneshot::Sender<Result<(), StorageError>>,
}

/// Commits the batch in `slot` — with the end of `mine`, the write that asked, in the
/// same request — in a task that holds the slot until the commit is durable, so a
/// caller that goes away can neither leave a batch half-committed nor strand the
/// writers in it.
fn commit_in_task(batches: Arc<Batches>, mut slot: OwnedMutexGuard<Slot>, mine: Option<Mine>) {
    let Some(batch) = slot.batch.take() else {
        if let Some(mine) = mine {
            let _ = mine.reply.send(Err(finished()));
        }
        return;
    };
    tokio::spawn(async move {
        let Batch {
            tx,
            writes,
            outcome,
            ..
        } = batch;
        let (mine, reply) = match mine {
            Some(Mine {
                savepoint,
                last,
                weight,
                reply,
            }) => (Some((savepoint, last, weight)), Some(reply)),
            None => (None, None),
        };
        let mut settlement = batches.settle(tx, writes, mine).await;
        let committed = settlement.result.is_ok() && settlement.writes > 0;
        if committed {
            batches.commits.fetch_add(1, Ordering::Relaxed);
            batches
                .writes
                .fetch_add(settlement.writes as u64, Ordering::Relaxed);
        }
        slot.spare = settlement.spare.take();
        if let Some(syncer) = batches.syncer.as_ref().filter(|_| committed) {
            // The next batch may work while this one's commit goes to the disk.
            let commit = syncer.committed();
            drop(slot);
            if let Err(error) = syncer.sync_through(commit).await {
                tracing::error!(%error, "a committed batch could not be made durable");
                settlement.result = Err(error);
            }
        } else {
            drop(slot);
        }
        if let Some(reply) = reply {
            let own = match settlement.own {
                Some(own) => own,
                None => settlement.result.clone().map_err(StorageError::GroupCommit),
            };
            let _ = reply.send(own);
        }
        outcome.send_replace(Some(settlement.result));
    });
}

/// Rolls back a batch's transaction in a task that holds the slot meanwhile, and keeps
/// the transaction begun again for the next batch. Never by dropping it: sqlx's own
/// rollback on drop fails when SQLite already ended the transaction (a full disk, an I/O
/// error), and the connection then takes every later `BEGIN` for a nested savepoint
/// ([`Batches::recover`]).
fn discard(batches: Arc<Batches>, mut slot: OwnedMutexGuard<Slot>, tx: Tx) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return; // no runtime left: the process is ending, and the connection with it
    };
    runtime.spawn(async move {
        slot.spare = batches.recover(tx).await;
        drop(slot);
    });
}

/// How a batch ended.
struct Settlement {
    /// For every write in the batch.
    result: Result<(), String>,
    /// For the write that committed it, when that differs (its own statements failed).
    own: Option<Result<(), StorageError>>,
    /// The next transaction, begun with the commit.
    spare: Option<Tx>,
    /// Writes the commit made durable.
    writes: usize,
}

impl Batches {
    /// Ends `mine` (when given) and commits the batch `tx` holding `writes` other writes;
    /// with `keep_open`, in one request that also begins the next transaction.
    async fn settle(
        &self,
        mut tx: Tx,
        mut writes: usize,
        mine: Option<(Savepoint, Statements, usize)>,
    ) -> Settlement {
        let mut own = None;
        if let Some((savepoint, mut last, weight)) = mine {
            if savepoint == Savepoint::Named {
                last.push_plain("RELEASE SAVEPOINT w");
            }
            if self.keep_open {
                last.push_plain("COMMIT");
                last.push_plain("BEGIN");
            }
            match last.execute(&mut tx).await {
                Ok(()) if self.keep_open => {
                    return Settlement {
                        result: Ok(()),
                        own: None,
                        spare: Some(tx),
                        writes: writes + weight,
                    };
                }
                Ok(()) => writes += weight,
                Err(error) => {
                    // SQLite stopped at the error. In this write's statements, its
                    // savepoint is still open: undo it, and the rest of the batch commits.
                    // The batch's first write (no savepoint) was all the batch held; a
                    // failed commit leaves nothing either.
                    let undone = savepoint == Savepoint::Named
                        && execute(&mut tx, "ROLLBACK TO SAVEPOINT w; RELEASE SAVEPOINT w")
                            .await
                            .is_ok();
                    if !undone {
                        let result = Err(error.to_string());
                        // In a savepoint, a failure that cannot be undone is the
                        // commit's (or after it): not this write's statements, and
                        // perhaps on disk. The batch's first write cannot tell.
                        let own = if savepoint == Savepoint::Named {
                            StorageError::GroupCommit(error.to_string())
                        } else {
                            error
                        };
                        return Settlement {
                            result,
                            own: Some(Err(own)),
                            spare: self.recover(tx).await,
                            writes: 0,
                        };
                    }
                    own = Some(Err(error));
                }
            }
        }
        let result = if writes == 0 {
            // Every write in the batch was undone.
            return Settlement {
                result: Ok(()),
                own,
                spare: self.recover(tx).await,
                writes: 0,
            };
        } else if self.keep_open {
            match execute(&mut tx, "COMMIT; BEGIN").await {
                Ok(()) => {
                    return Settlement {
                        result: Ok(()),
                        own,
                        spare: Some(tx),
                        writes,
                    };
                }
                Err(error) => {
                    return Settlement {
                        result: Err(error.to_string()),
                        own,
                        spare: self.recover(tx).await,
                        writes: 0,
                    };
                }
            }
        } else {
            tx.commit().await.map_err(|e| e.to_string())
        };
        Settlement {
            result,
            own,
            spare: None,
            writes,
        }
    }

    /// Rolls back whatever `tx` holds; returns it begun again for the next batch
    /// (`keep_open`). sqlx counts it as open whatever SQLite did (a failed `COMMIT` may
    /// have ended it), so it is made open before it is dropped, or its connection would
    /// take the next `BEGIN` for a nested one.
    async fn recover(&self, mut tx: Tx) -> Option<Tx> {
        if execute(&mut tx, "ROLLBACK; BEGIN").await.is_err()
            // Nothing was open: the ROLLBACK failed, and the BEGIN after it never ran.
            && execute(&mut tx, "BEGIN").await.is_err()
        {
            // Neither: leave it to sqlx's own rollback, and begin afresh next time.
            return None;
        }
        self.keep_open.then_some(tx)
    }
}

fn finished() -> StorageError {
    StorageError::GroupCommit("the write has already ended".to_owned())
}

fn batch_lost() -> StorageError {
    StorageError::GroupCommit("the batch's commit was interrupted".to_owned())
}

/// Releases `savepoint`, keeping what was done since (`keep`), or undoes it first, and
/// sets the savepoint `next` for the writer after — all in one statement string, one
/// hand-off to SQLite's thread. The batch's first write has no savepoint: kept, there is
/// nothing to release (undone, see [`Turn::finish`]). Released at once rather than left
/// open for the batch's `COMMIT`: an open savepoint makes SQLite copy every page a later
/// write touches into its statement journal, which measured slower than the statement
/// saved.
async fn end_savepoint(
    tx: &mut Tx,
    savepoint: Savepoint,
    keep: bool,
    next: bool,
    mut statements: Statements,
) -> Result<(), StorageError> {
    if savepoint == Savepoint::Named {
        if !keep {
            statements.push_plain("ROLLBACK TO SAVEPOINT w");
        }
        statements.push_plain("RELEASE SAVEPOINT w");
    }
    if next {
        statements.push_plain("SAVEPOINT w");
    }
    if statements.is_empty() {
        return Ok(());
    }
    statements.execute(tx).await
}

async fn execute(tx: &mut Tx, sql: &'static str) -> Result<(), StorageError> {
    use sqlx::Executor;
    tx.execute(sql).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::Database;

    /// Held by a test to stop every sync before its `fdatasync`.
    pub(super) static SYNC_GATE: std::sync::Mutex<()> = std::sync::Mutex::new(());

    /// The shared transaction commits at NORMAL, the pool's connections at FULL; a batch
    /// is visible from its commit, but its writers — and `durable` — are answered only
    /// after the sync of the log that began after it; a write after it is not held up
    /// by that sync.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    // The gate is held across awaits on purpose: it stops the syncs, not this task.
    #[allow(clippy::await_holding_lock)]
    async fn a_write_is_answered_after_the_sync_that_began_after_its_commit() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let url = format!("sqlite://{}", dir.path().join("sync.db").display());
        let db = Database::connect(&url).await.expect("connect");
        sqlx::query("CREATE TABLE t (id TEXT PRIMARY KEY)")
            .execute(db.pool())
            .await
            .expect("create");
        let level: i64 = sqlx::query_scalar("PRAGMA synchronous")
            .fetch_one(db.pool())
            .await
            .expect("pragma");
        assert_eq!(level, 2, "the pool commits at FULL");
        let mut write = db.write().await.expect("write");
        let level: i64 = sqlx::query_scalar("PRAGMA synchronous")
            .fetch_one(&mut **write.tx().expect("tx"))
            .await
            .expect("pragma");
        assert_eq!(level, 1, "the shared transaction commits at NORMAL");
        drop(write);

        let insert = |id: &'static str| {
            let db = db.clone();
            tokio::spawn(async move {
                let mut statements = db.statements();
                statements.push("INSERT INTO t (id) VALUES (?)").bind(id);
                db.commit_statements(statements).await
            })
        };
        let count = || async {
            sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM t")
                .fetch_one(db.pool())
                .await
                .expect("count")
        };
        let gate = SYNC_GATE.lock().expect("gate");
        let first = insert("a");
        // Committed and visible, but not answered while its sync cannot run.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while count().await < 1 {
            assert!(tokio::time::Instant::now() < deadline, "the write commits");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!first.is_finished(), "answered before its sync");
        let durable = tokio::spawn({
            let db = db.clone();
            async move { db.durable().await }
        });
        // The next write commits while the first one's sync is held.
        let second = insert("b");
        while count().await < 2 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the next write commits"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!durable.is_finished(), "durable before the sync");
        assert!(!second.is_finished(), "the second answered before its sync");
        drop(gate);
        for write in [first, second] {
            tokio::time::timeout(Duration::from_secs(10), write)
                .await
                .expect("answered after the sync")
                .expect("the task ran")
                .expect("committed");
        }
        tokio::time::timeout(Duration::from_secs(10), durable)
            .await
            .expect("durable after the sync")
            .expect("the task ran")
            .expect("synced");
    }
}
