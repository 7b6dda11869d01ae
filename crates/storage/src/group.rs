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

use std::sync::{
    Arc,
    atomic::{AtomicU64, AtomicUsize, Ordering},
};

use sqlx::{Any, AnyPool, Transaction};
use tokio::sync::{Mutex, OwnedMutexGuard, watch};

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
    slot: Arc<Mutex<Slot>>,
    /// Writers waiting for the slot: while there are some, a finished write leaves the
    /// commit to them.
    waiting: AtomicUsize,
    /// Writes committed, and the commits that carried them.
    writes: AtomicU64,
    commits: AtomicU64,
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
    pub(crate) fn new(pool: AnyPool) -> Arc<Self> {
        Arc::new(Self {
            pool,
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

    async fn write(self: &Arc<Self>) -> Result<Write, StorageError> {
        let waiting = Waiting::new(self);
        let slot = self.slot.clone().lock_owned().await;
        waiting.admitted();
        let mut turn = Turn {
            batches: self.clone(),
            slot: Some(slot),
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
            slot.batch = Some(Batch {
                tx: pool.begin().await?,
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
    /// the batch is committed if nobody waits to add to it. Returns the batch's outcome
    /// to wait for.
    async fn finish(
        &mut self,
        savepoint: Savepoint,
        keep: bool,
        last: Option<Statements>,
    ) -> Result<watch::Receiver<Outcome>, StorageError> {
        if savepoint == Savepoint::Whole && !keep {
            // Undoing the batch's only write: the whole transaction goes.
            let slot = self.slot()?;
            let outcome = slot.batch.take().map(|batch| batch.outcome.subscribe());
            self.hand_on();
            return outcome.ok_or_else(finished);
        }
        // Somebody waits and the batch has room: set their savepoint along with ending
        // this one (a waiter that gives up leaves it unused, which costs nothing).
        let waiting = self.batches.waiting.load(Ordering::SeqCst) > 0;
        let slot = self.slot()?;
        let room = slot
            .batch
            .as_ref()
            .is_some_and(|batch| batch.writes + usize::from(keep) < MOST_PER_BATCH);
        let next = waiting && room;
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
        let batch = self.batch()?;
        batch.abandoned = None;
        batch.ready = next;
        if keep {
            batch.writes += 1;
        }
        let outcome = batch.outcome.subscribe();
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
                outcome,
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
            outcome.send_replace(Some(result.map_err(|e| e.to_string())));
            drop(slot);
        });
    }

    fn fail_batch(&mut self, error: &StorageError) {
        if let Some(mut slot) = self.slot.take()
            && let Some(batch) = slot.batch.take()
        {
            batch.outcome.send_replace(Some(Err(error.to_string())));
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
                let mut outcome = turn.finish(savepoint, true, last).await?;
                drop(turn);
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
