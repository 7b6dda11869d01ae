//! Which processes have a bus file open, so that the leases of a process that died are
//! given back when the bus is opened again, instead of when they expire.
//!
//! A lease says "this delivery is being worked on". A process killed with `kill -9` (or
//! a power loss) leaves its leases behind, and without this its restarted self would not
//! see those deliveries for a whole lease period: a comment acknowledged just before the
//! kill would be missing from the blog's view for up to 30 s after the restart.
//!
//! Every process that opens the bus holds a read lock (SQLite's SHARED lock) on a small
//! side file, `<bus file>-open`, for as long as its writer runs; the operating system
//! drops the lock when the process ends, however it ends. Opening, a process first tries
//! to take that file's EXCLUSIVE lock without waiting. If it gets it, no other process
//! has the bus open, so every lease in the file belongs to a process that is gone and
//! nobody is working on those deliveries: they are released at once. Otherwise leases
//! are left alone — they may be a live process's — and expire as before.

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    time::Duration,
};

use rusqlite::{Connection, ErrorCode, OpenFlags};

use crate::BusError;

/// This process's mark on a bus file; the mark goes when this is dropped.
pub(super) struct OpenLock {
    _conn: Connection,
}

impl OpenLock {
    /// Marks `bus_file` as open by this process. `alone` runs first, while no other
    /// process can open the bus, if no other process has it open.
    pub(super) fn acquire(
        bus_file: &Path,
        alone: impl FnOnce() -> Result<(), BusError>,
    ) -> Result<Self, BusError> {
        let mut name: OsString = bus_file.as_os_str().to_owned();
        name.push("-open");
        let conn = Connection::open_with_flags(
            PathBuf::from(name),
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        // Never put in WAL mode: the main file's SHARED and EXCLUSIVE locks of the
        // rollback journal are what this relies on.
        conn.busy_timeout(Duration::ZERO)?;
        match conn.execute_batch("BEGIN EXCLUSIVE") {
            Ok(()) => {
                let outcome = alone();
                // Something to read below, so that the read takes its lock.
                conn.execute_batch("CREATE TABLE IF NOT EXISTS open_lock (unused INTEGER)")?;
                conn.execute_batch(if outcome.is_ok() {
                    "COMMIT"
                } else {
                    "ROLLBACK"
                })?;
                outcome?;
            }
            Err(error) if is_busy(&error) => {}
            Err(error) => return Err(error.into()),
        }
        // Another process may be between its EXCLUSIVE and its SHARED: wait for it.
        conn.busy_timeout(Duration::from_secs(10))?;
        // A read inside an open transaction keeps its SHARED lock until the connection
        // closes.
        conn.execute_batch("BEGIN")?;
        conn.query_row("SELECT COUNT(*) FROM sqlite_master", [], |row| {
            row.get::<_, i64>(0)
        })?;
        Ok(Self { _conn: conn })
    }
}

fn is_busy(error: &rusqlite::Error) -> bool {
    matches!(
        error.sqlite_error_code(),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
    )
}
