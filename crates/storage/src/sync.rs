//! Making SQLite commits durable off the writer's way: a [`Syncer`] thread fsyncs a
//! database's write-ahead log after commits made at `synchronous=NORMAL` (which write the
//! log but do not sync it), and only then tells whoever waits for durability.
//!
//! One fsync covers every commit made before it, whoever made it — any descriptor of the
//! file syncs what SQLite wrote through its own — so the thread takes every request that
//! queued up while it was syncing and pays one fsync for all of them. A checkpoint at
//! NORMAL syncs the log before it copies it into the database and resets it, so a commit
//! that a checkpoint overtook is durable already.
//!
//! The embedded bus answers its publishers through one; a service database's group
//! commit ([`crate::Write`]) through another, for batches a consumer opened.

use std::{
    path::{Path, PathBuf},
    sync::mpsc,
};

/// What to run once the log is on disk: given the error if the fsync failed.
pub type AfterSync = Box<dyn FnOnce(Option<&str>) + Send>;

/// The fsync thread of one database file. Dropping every handle ends it.
#[derive(Debug, Clone)]
pub struct Syncer {
    requests: mpsc::Sender<AfterSync>,
}

impl Syncer {
    /// Starts the thread for the SQLite database at `database` (its log is
    /// `DATABASE-wal`), named `thread` in profiles.
    pub fn start(database: &Path, thread: &str) -> std::io::Result<Self> {
        let mut wal = database.as_os_str().to_owned();
        wal.push("-wal");
        let wal = PathBuf::from(wal);
        let (requests, receiver) = mpsc::channel::<AfterSync>();
        std::thread::Builder::new()
            .name(thread.to_owned())
            .spawn(move || {
                while let Ok(first) = receiver.recv() {
                    let mut waiting = vec![first];
                    waiting.extend(receiver.try_iter());
                    #[cfg(test)]
                    let _held = tests::GATE.lock();
                    let synced = std::fs::File::open(&wal).and_then(|file| file.sync_data());
                    let failure = synced.err().map(|error| {
                        let message = format!("cannot fsync {}: {error}", wal.display());
                        tracing::error!(error = %message, "write-ahead log not synced");
                        message
                    });
                    for then in waiting {
                        then(failure.as_deref());
                    }
                }
            })?;
        Ok(Self { requests })
    }

    /// Runs `then` after the next fsync of the log, which starts after this call: what
    /// was committed before the call is durable by then. If the thread is gone, `then`
    /// runs at once with the error.
    pub fn after_sync(&self, then: AfterSync) {
        if let Err(unsent) = self.requests.send(then) {
            (unsent.0)(Some("the database's fsync thread is gone"));
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    /// Held by a test to stop every syncer thread before its fsync.
    pub(crate) static GATE: std::sync::Mutex<()> = std::sync::Mutex::new(());
}
