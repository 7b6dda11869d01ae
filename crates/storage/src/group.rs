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
//! The commit itself runs in a task of its own, so a caller that goes away (a client that
//! hangs up) can neither leave a batch half-committed nor strand the others waiting on it.
//!
//! *Committed before durable* ([`Database::write_lazy`](crate::Database::write_lazy)): a
//! consumer whose effects may be redone after a power loss (its message is acknowledged
//! only once they are durable, and what it causes carries ids that a second run repeats)
//! need not wait for the fsync to go on. A batch such a write opens commits at
//! `synchronous=NORMAL`; [`Write::commit_lazy`] returns at the commit, with a [`Durable`]
//! to wait on, and a [`Syncer`] thread fsyncs the log off the writer's way. A durable
//! write that joins such a batch is answered after that fsync, as always only once it
//! is on disk. The pool's one connection is set back to `FULL` as it is released, so
//! every other write on it keeps its own fsync.

use std::sync::{
    Arc,
    atomic::{AtomicU64, AtomicUsize, Ordering},
};

use std::sync::atomic::AtomicBool;

use sqlx::{Any, AnyPool, AssertSqlSafe, Transaction};
use tokio::sync::{Mutex, OwnedMutexGuard, watch};

use crate::{StorageError, sync::Syncer};

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
    /// Present when batches may commit before their fsync (a SQLite file on a pool of
    /// one connection).
    relax: Option<Relax>,
    slot: Arc<Mutex<Slot>>,
    /// Writers waiting for the slot: while there are some, a finished write leaves the
    /// commit to them.
    waiting: AtomicUsize,
    /// Writes committed, and the commits that carried them.
    writes: AtomicU64,
    commits: AtomicU64,
}

/// How lazy writes are made durable: the log's fsync thread, and whether the pool's one
/// connection is at `synchronous=NORMAL` right now (set back to FULL on its release).
#[derive(Debug)]
pub(crate) struct Relax {
    pub(crate) syncer: Syncer,
    pub(crate) relaxed: Arc<AtomicBool>,
}

/// How much group commit saved: writes committed and the commits that carried them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupStats {
    pub writes: u64,
    pub commits: u64,
}

#[derive(Debug, Default)]
struct Slot {
    batch: Option<Batch>,
    savepoints: u64,
}

#[derive(Debug)]
struct Batch {
    tx: Tx,
    writes: usize,
    /// The write that was dropped before it finished: rolled back by the next one to take
    /// the slot.
    abandoned: Option<Savepoint>,
    /// Committed at `synchronous=NORMAL`: durable only after the syncer's fsync.
    relaxed: bool,
    /// The commit, and its fsync (the same moment unless `relaxed`).
    outcome: watch::Sender<Outcome>,
    durable: watch::Sender<Outcome>,
}

/// Where a write began: a savepoint of its own, or — the first write of a batch — the
/// start of the transaction, undone by dropping the whole batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Savepoint {
    Whole,
    Named(u64),
}

impl Batches {
    pub(crate) fn new(pool: AnyPool, relax: Option<Relax>) -> Arc<Self> {
        Arc::new(Self {
            pool,
            relax,
            slot: Arc::new(Mutex::new(Slot::default())),
            waiting: AtomicUsize::new(0),
            writes: AtomicU64::new(0),
            commits: AtomicU64::new(0),
        })
    }

    pub(crate) fn stats(&self) -> GroupStats {
        GroupStats {
            writes: self.writes.load(Ordering::Relaxed),
            commits: self.commits.load(Ordering::Relaxed),
        }
    }

    async fn write(self: &Arc<Self>, lazy: bool) -> Result<Write, StorageError> {
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let slot = self.slot.clone().lock_owned().await;
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        let mut turn = Turn {
            batches: self.clone(),
            slot: Some(slot),
        };
        let savepoint = turn.start(lazy).await?;
        Ok(Write {
            inner: Inner::Batched { turn, savepoint },
        })
    }
}

/// One writer's hold on the shared batch. Dropped without [`Turn::finish`] (a failed or
/// cancelled write), it finishes in a task of its own.
struct Turn {
    batches: Arc<Batches>,
    slot: Option<OwnedMutexGuard<Slot>>,
}

impl Turn {
    fn slot(&mut self) -> Result<&mut Slot, StorageError> {
        self.slot.as_deref_mut().ok_or_else(finished)
    }

    fn batch(&mut self) -> Result<&mut Batch, StorageError> {
        self.slot()?.batch.as_mut().ok_or_else(finished)
    }

    /// Cleans up after an abandoned write, opens a batch if there is none (committing
    /// before its fsync when a lazy write opens it), and sets this write's savepoint
    /// (none for the batch's first write).
    async fn start(&mut self, lazy: bool) -> Result<Savepoint, StorageError> {
        self.roll_back_abandoned().await?;
        let batches = self.batches.clone();
        let slot = self.slot()?;
        if slot.batch.is_none() {
            let relax = batches.relax.as_ref().filter(|_| lazy);
            let tx = match relax {
                Some(relax) => {
                    // One statement to the connection's thread for both. The flag is set
                    // once the connection is ours (set earlier, the release of its
                    // previous user would take it); the release after the batch sets the
                    // connection back to FULL (see `Database::connect_with`).
                    let begun = batches
                        .pool
                        .begin_with("PRAGMA synchronous = NORMAL; BEGIN")
                        .await;
                    match begun {
                        Ok(tx) => {
                            relax.relaxed.store(true, Ordering::SeqCst);
                            tx
                        }
                        Err(error) => {
                            // The connection may have been lowered before BEGIN failed.
                            let _ =
                                execute_on_pool(&batches.pool, "PRAGMA synchronous = FULL").await;
                            return Err(error.into());
                        }
                    }
                }
                None => batches.pool.begin().await?,
            };
            slot.batch = Some(Batch {
                tx,
                writes: 0,
                abandoned: None,
                relaxed: relax.is_some(),
                outcome: watch::Sender::new(None),
                durable: watch::Sender::new(None),
            });
        }
        let alone = slot.batch.as_ref().is_some_and(|batch| batch.writes == 0);
        let savepoint = if alone {
            Savepoint::Whole
        } else {
            slot.savepoints += 1;
            Savepoint::Named(slot.savepoints)
        };
        // The batch was opened above when missing.
        let batch = self.batch()?;
        batch.abandoned = Some(savepoint);
        if let Savepoint::Named(n) = savepoint {
            execute(&mut batch.tx, format!("SAVEPOINT w{n}")).await?;
        }
        Ok(savepoint)
    }

    async fn roll_back_abandoned(&mut self) -> Result<(), StorageError> {
        let slot = self.slot()?;
        let Some(batch) = slot.batch.as_mut() else {
            return Ok(());
        };
        match batch.abandoned.take() {
            None => {}
            // The batch held nothing but the abandoned write: dropping its transaction
            // rolls it back, and nobody waits on its outcome.
            Some(Savepoint::Whole) => slot.batch = None,
            Some(savepoint) => {
                if let Err(error) = end_savepoint(&mut batch.tx, savepoint, false).await {
                    // The batch cannot be trusted any more: fail everyone in it.
                    self.fail_batch(&error);
                    return Err(error);
                }
            }
        }
        Ok(())
    }

    /// Ends this write's part: its savepoint is released (`keep`) or rolled back, then
    /// the batch is committed if nobody waits to add to it. Returns the batch's outcome
    /// to wait for.
    async fn finish(&mut self, savepoint: Savepoint, keep: bool) -> Result<Outcomes, StorageError> {
        if savepoint == Savepoint::Whole && !keep {
            // Undoing the batch's only write: the whole transaction goes.
            let slot = self.slot()?;
            let outcome = slot.batch.take().map(|batch| Outcomes::of(&batch));
            self.hand_on();
            return outcome.ok_or_else(finished);
        }
        let batch = self.batch()?;
        if let Err(error) = end_savepoint(&mut batch.tx, savepoint, keep).await {
            self.fail_batch(&error);
            return Err(error);
        }
        let batch = self.batch()?;
        batch.abandoned = None;
        if keep {
            batch.writes += 1;
        }
        let outcome = Outcomes::of(batch);
        self.hand_on();
        Ok(outcome)
    }

    /// Lets the next writer in, or — nobody waiting, or the batch full — commits the
    /// batch in a task that holds the slot until the commit is durable.
    fn hand_on(&mut self) {
        let Some(mut slot) = self.slot.take() else {
            return;
        };
        let full = slot
            .batch
            .as_ref()
            .is_some_and(|batch| batch.writes >= MOST_PER_BATCH);
        if self.batches.waiting.load(Ordering::SeqCst) > 0 && !full {
            return; // the guard drops: the next writer's turn
        }
        let Some(batch) = slot.batch.take() else {
            return;
        };
        let batches = self.batches.clone();
        tokio::spawn(async move {
            let Batch {
                tx,
                writes,
                relaxed,
                outcome,
                durable,
                ..
            } = batch;
            let result = if writes == 0 {
                tx.rollback().await
            } else {
                let committed = tx.commit().await;
                if committed.is_ok() {
                    batches.commits.fetch_add(1, Ordering::Relaxed);
                    batches.writes.fetch_add(writes as u64, Ordering::Relaxed);
                }
                committed
            };
            let result = result.map_err(|e| e.to_string());
            outcome.send_replace(Some(result.clone()));
            // The next batch may start while this one's log is being synced.
            drop(slot);
            match (&result, &batches.relax) {
                (Ok(()), Some(relax)) if relaxed && writes > 0 => {
                    relax.syncer.after_sync(Box::new(move |failure| {
                        durable.send_replace(Some(failure.map_or(Ok(()), |f| Err(f.to_owned()))));
                    }));
                }
                _ => {
                    durable.send_replace(Some(result));
                }
            }
        });
    }

    fn fail_batch(&mut self, error: &StorageError) {
        if let Some(mut slot) = self.slot.take()
            && let Some(batch) = slot.batch.take()
        {
            batch.outcome.send_replace(Some(Err(error.to_string())));
            batch.durable.send_replace(Some(Err(error.to_string())));
            // Dropping the transaction rolls it back.
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

    pub(crate) async fn batched(batches: &Arc<Batches>, lazy: bool) -> Result<Self, StorageError> {
        batches.write(lazy).await
    }

    /// The transaction to run this write's statements on: `.execute(&mut **write.tx()?)`.
    pub fn tx(&mut self) -> Result<&mut Tx, StorageError> {
        match &mut self.inner {
            Inner::Own(tx) => Ok(tx),
            Inner::Batched { turn, .. } => Ok(&mut turn.batch()?.tx),
        }
    }

    /// Makes this write durable: returns once the transaction holding it has committed
    /// and is on disk.
    pub async fn commit(self) -> Result<(), StorageError> {
        self.commit_lazy().await?.wait().await
    }

    /// Commits this write and returns as soon as the commit is visible, with what to
    /// wait on for it to be on disk. The same as [`commit`](Self::commit) unless the
    /// write came from [`Database::write_lazy`](crate::Database::write_lazy) and opened
    /// its batch.
    pub async fn commit_lazy(self) -> Result<Durable, StorageError> {
        match self.inner {
            Inner::Own(tx) => {
                tx.commit().await?;
                Ok(Durable(None))
            }
            Inner::Batched {
                mut turn,
                savepoint,
            } => {
                let Outcomes {
                    mut committed,
                    durable,
                } = turn.finish(savepoint, true).await?;
                drop(turn);
                settled(&mut committed).await?;
                Ok(Durable(Some(durable)))
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
                turn.finish(savepoint, false).await?;
                Ok(())
            }
        }
    }
}

/// A batch's two outcomes, as a write in it waits for them.
struct Outcomes {
    committed: watch::Receiver<Outcome>,
    durable: watch::Receiver<Outcome>,
}

impl Outcomes {
    fn of(batch: &Batch) -> Self {
        Self {
            committed: batch.outcome.subscribe(),
            durable: batch.durable.subscribe(),
        }
    }
}

/// A committed write on its way to the disk ([`Write::commit_lazy`]); the default is one
/// that is there already.
#[derive(Debug, Default)]
pub struct Durable(Option<watch::Receiver<Outcome>>);

impl Durable {
    /// Returns once the write is on disk (at once if it was at its commit).
    pub async fn wait(self) -> Result<(), StorageError> {
        match self.0 {
            None => Ok(()),
            Some(mut durable) => settled(&mut durable).await,
        }
    }
}

async fn settled(outcome: &mut watch::Receiver<Outcome>) -> Result<(), StorageError> {
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

fn finished() -> StorageError {
    StorageError::GroupCommit("the write has already ended".to_owned())
}

fn batch_lost() -> StorageError {
    StorageError::GroupCommit("the batch's commit was interrupted".to_owned())
}

/// Releases `savepoint`, keeping what was done since (`keep`), or undoes it first. The
/// batch's first write has no savepoint: kept, there is nothing to release (undone, see
/// [`Turn::finish`]). Released at once rather than left open for the batch's `COMMIT`:
/// an open savepoint makes SQLite copy every page a later write touches into its
/// statement journal, which measured slower than the statement saved.
async fn end_savepoint(tx: &mut Tx, savepoint: Savepoint, keep: bool) -> Result<(), StorageError> {
    let Savepoint::Named(n) = savepoint else {
        return Ok(());
    };
    if !keep {
        execute(tx, format!("ROLLBACK TO SAVEPOINT w{n}")).await?;
    }
    execute(tx, format!("RELEASE SAVEPOINT w{n}")).await
}

async fn execute_on_pool(pool: &AnyPool, sql: &'static str) -> Result<(), StorageError> {
    use sqlx::Executor;
    pool.execute(sql).await?;
    Ok(())
}

async fn execute(tx: &mut Tx, sql: String) -> Result<(), StorageError> {
    use sqlx::Executor;
    // The statement is built here from a counter, never from input.
    tx.execute(AssertSqlSafe(sql)).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::{Database, PoolSettings, sync::tests::GATE};

    async fn database(dir: &tempfile::TempDir) -> Database {
        let url = format!("sqlite://{}", dir.path().join("lazy.db").display());
        let db = Database::connect_with(&url, &PoolSettings::fair_writers(&url))
            .await
            .expect("connect");
        sqlx::query("CREATE TABLE t (id TEXT PRIMARY KEY)")
            .execute(db.pool())
            .await
            .expect("table");
        db
    }

    async fn insert(db: &Database, write: &mut crate::Write, id: &str) {
        sqlx::query("INSERT INTO t (id) VALUES (?)")
            .bind(id.to_owned())
            .execute(&mut **write.tx().expect("tx"))
            .await
            .expect("insert");
        let _ = db;
    }

    /// A lazy write is committed (visible) before its fsync and durable only after it;
    /// a durable write that joins its batch is answered only after the fsync; and the
    /// connection is back at `synchronous=FULL` for everyone else.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    // The gate is held across awaits on purpose: it stops the syncer thread.
    #[allow(clippy::await_holding_lock)]
    async fn a_lazy_write_is_visible_at_its_commit_and_durable_after_the_fsync() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let db = database(&dir).await;
        let gate = GATE.lock().expect("gate");

        let mut lazy = db.write_lazy().await.expect("write");
        insert(&db, &mut lazy, "lazy").await;
        // A durable write queues behind it and joins its batch.
        let joining = tokio::spawn({
            let db = db.clone();
            async move {
                let mut write = db.write().await.expect("write");
                insert(&db, &mut write, "durable").await;
                write.commit().await
            }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        let durable = tokio::time::timeout(Duration::from_secs(10), lazy.commit_lazy())
            .await
            .expect("committed without the fsync")
            .expect("commit");
        let visible: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM t WHERE id = 'lazy'")
            .fetch_one(db.pool())
            .await
            .expect("count");
        assert_eq!(visible, 1, "visible at the commit");
        let waiting = tokio::spawn(durable.wait());
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!waiting.is_finished(), "durable before the fsync");
        assert!(
            !joining.is_finished(),
            "a durable write answered before the fsync"
        );

        drop(gate);
        tokio::time::timeout(Duration::from_secs(10), waiting)
            .await
            .expect("durable after the fsync")
            .expect("join")
            .expect("durable");
        tokio::time::timeout(Duration::from_secs(10), joining)
            .await
            .expect("answered after the fsync")
            .expect("join")
            .expect("committed");
        let level: i64 = sqlx::query_scalar("PRAGMA synchronous")
            .fetch_one(db.pool())
            .await
            .expect("pragma");
        assert_eq!(level, 2, "the connection is back at FULL");
    }
}
