//! `Database::write`: concurrent writes share commits on SQLite (group commit), and every
//! write is still all-or-nothing on its own — a failed or abandoned one leaves nothing and
//! spares the others. On PostgreSQL and MariaDB (when `FLOTILLA_TEST_POSTGRES_URL` /
//! `FLOTILLA_TEST_MYSQL_URL` name a server) each write is its own transaction; the same
//! guarantees are checked there.

use std::{sync::Arc, time::Duration};

use sqlx::Row;
use storage::{Database, Migration, StorageError, Write, scratch::ScratchDatabase};

const MIGRATIONS: &[Migration] = &[Migration::portable(
    1,
    "entries",
    "CREATE TABLE entries (id VARCHAR(36) PRIMARY KEY, body TEXT NOT NULL)",
)];

struct Backend {
    db: Database,
    _dir: Option<tempfile::TempDir>,
    scratch: Option<ScratchDatabase>,
}

async fn backends() -> Vec<Backend> {
    let dir = tempfile::tempdir().expect("temporary directory");
    let url = format!("sqlite://{}", dir.path().join("group.db").display());
    let mut all = vec![(url, Some(dir), None)];
    for var in ["FLOTILLA_TEST_POSTGRES_URL", "FLOTILLA_TEST_MYSQL_URL"] {
        if let Some(server) = test_kit::real_server_url(var) {
            let scratch = ScratchDatabase::create(&server)
                .await
                .expect("scratch database");
            all.push((scratch.url().to_owned(), None, Some(scratch)));
        }
    }
    let mut backends = Vec::new();
    for (url, dir, scratch) in all {
        // One connection, as the blog services use SQLite.
        let settings = storage::PoolSettings::fair_writers(&url);
        let db = Database::connect_with(&url, &settings)
            .await
            .expect("connect");
        db.migrate("group", MIGRATIONS).await.expect("migrate");
        backends.push(Backend {
            db,
            _dir: dir,
            scratch,
        });
    }
    backends
}

/// Runs `test` on each backend's database, then closes and drops it.
async fn on_each_backend(test: impl AsyncFn(Database)) {
    for backend in backends().await {
        test(backend.db.clone()).await;
        backend.cleanup().await;
    }
}

impl Backend {
    async fn cleanup(self) {
        self.db.close().await;
        if let Some(scratch) = self.scratch {
            scratch
                .drop_database()
                .await
                .expect("drop scratch database");
        }
    }
}

async fn insert(write: &mut Write, db: &Database, id: &str) -> Result<(), StorageError> {
    sqlx::query(db.sql("INSERT INTO entries (id, body) VALUES (?, ?)"))
        .bind(id.to_owned())
        .bind(format!("body of {id}"))
        .execute(&mut **write.tx()?)
        .await?;
    Ok(())
}

async fn ids(db: &Database) -> Vec<String> {
    sqlx::query("SELECT id FROM entries ORDER BY id")
        .fetch_all(db.pool())
        .await
        .expect("select")
        .iter()
        .map(|row| row.try_get::<String, _>("id").expect("id"))
        .collect()
}

#[tokio::test]
async fn concurrent_writes_all_land_and_share_commits_on_sqlite() {
    on_each_backend(async |db| {
        let before = db.group_stats();
        let writers: Vec<_> = (0..64)
            .map(|n| {
                let db = db.clone();
                tokio::spawn(async move {
                    let mut write = db.write().await?;
                    insert(&mut write, &db, &format!("r{n:02}")).await?;
                    write.commit().await
                })
            })
            .collect();
        for writer in writers {
            writer.await.expect("join").expect("write commits");
        }
        let expected: Vec<String> = (0..64).map(|n| format!("r{n:02}")).collect();
        assert_eq!(ids(&db).await, expected, "{:?}", db.dialect());
        if let (Some(before), Some(after)) = (before, db.group_stats()) {
            let writes = after.writes - before.writes;
            let commits = after.commits - before.commits;
            assert_eq!(writes, 64);
            // 64 writers queued at once: far fewer commits than writes.
            assert!(commits <= 8, "{commits} commits for 64 writes");
        }
    })
    .await;
}

#[tokio::test]
async fn a_failed_write_leaves_nothing_and_spares_the_rest_of_its_batch() {
    on_each_backend(async |db| {
        let mut seed = db.write().await.expect("write");
        insert(&mut seed, &db, "taken").await.expect("insert");
        seed.commit().await.expect("commit");

        // Alone, a write has no savepoint of its own (the batch is its transaction):
        // undoing it must still leave nothing, and the next write must find a clean slot.
        let mut alone = db.write().await.expect("write");
        insert(&mut alone, &db, "alone").await.expect("insert");
        assert!(insert(&mut alone, &db, "taken").await.is_err(), "duplicate");
        alone.rollback().await.expect("rollback");

        let gate = Arc::new(tokio::sync::Barrier::new(3));
        let spawn = |ids: &'static [&'static str]| {
            let db = db.clone();
            let gate = gate.clone();
            tokio::spawn(async move {
                gate.wait().await;
                let mut write = db.write().await?;
                for id in ids {
                    if let Err(error) = insert(&mut write, &db, id).await {
                        write.rollback().await?;
                        return Err(error);
                    }
                }
                write.commit().await
            })
        };
        let good = spawn(&["a1", "a2"]);
        // Its first row goes in, its second collides: neither may stay.
        let bad = spawn(&["b1", "taken"]);
        let also_good = spawn(&["c1"]);
        good.await.expect("join").expect("a commits");
        assert!(bad.await.expect("join").is_err(), "the duplicate must fail");
        also_good.await.expect("join").expect("c commits");
        assert_eq!(ids(&db).await, ["a1", "a2", "c1", "taken"]);
    })
    .await;
}

#[tokio::test]
async fn an_abandoned_write_is_undone_whoever_comes_next() {
    on_each_backend(async |db| {
        // Dropped with nobody waiting: undone by the next write.
        {
            let mut write = db.write().await.expect("write");
            insert(&mut write, &db, "dropped-alone")
                .await
                .expect("insert");
        }
        let mut next = db.write().await.expect("write");
        insert(&mut next, &db, "after-drop").await.expect("insert");
        next.commit().await.expect("commit");

        // A write cancelled mid-way (its task aborted) while others wait behind it: the
        // others commit, the cancelled one leaves nothing.
        let mut held = db.write().await.expect("write");
        insert(&mut held, &db, "cancelled").await.expect("insert");
        let waiting: Vec<_> = ["w1", "w2"]
            .into_iter()
            .map(|id| {
                let db = db.clone();
                tokio::spawn(async move {
                    let mut write = db.write().await?;
                    insert(&mut write, &db, id).await?;
                    write.commit().await
                })
            })
            .collect();
        let cancelled = tokio::spawn(async move {
            // Holds the write until it is aborted.
            std::future::pending::<()>().await;
            held.commit().await
        });
        tokio::task::yield_now().await;
        cancelled.abort();
        assert!(cancelled.await.is_err(), "aborted");
        for writer in waiting {
            writer.await.expect("join").expect("commits");
        }
        // Dropped last, with nobody behind it: the batch it was in still commits what the
        // earlier writes in it did.
        let mut first = db.write().await.expect("write");
        insert(&mut first, &db, "x1").await.expect("insert");
        let committed = tokio::spawn(async move { first.commit().await });
        committed.await.expect("join").expect("x1 commits");
        let mut last = db.write().await.expect("write");
        insert(&mut last, &db, "dropped-last")
            .await
            .expect("insert");
        drop(last);
        // The slot comes free again: a write after it works.
        let mut after = tokio::time::timeout(std::time::Duration::from_secs(10), db.write())
            .await
            .expect("the slot is freed")
            .expect("write");
        insert(&mut after, &db, "z").await.expect("insert");
        after.commit().await.expect("commit");
        assert_eq!(ids(&db).await, ["after-drop", "w1", "w2", "x1", "z"]);
    })
    .await;
}

/// `commit_with`: a write made of statements sent as one request. Its statements land
/// together; when one fails, none of them stays and the writes around it in the batch
/// are not touched.
#[tokio::test]
async fn statements_committed_as_one_land_together_or_not_at_all() {
    on_each_backend(async |db| {
        let entries = |ids: &[&'static str]| {
            let mut statements = db.statements();
            for id in ids {
                statements
                    .push("INSERT INTO entries (id, body) VALUES (?, ?)")
                    .bind(*id)
                    .bind(format!("body of {id}"));
            }
            statements
        };
        let mut before = db.write().await.expect("write");
        insert(&mut before, &db, "a-before").await.expect("insert");
        // Queue the others behind `before` so they share its batch on SQLite.
        let both = tokio::spawn({
            let db = db.clone();
            let statements = entries(&["b1", "b2"]);
            async move { db.write().await?.commit_with(statements).await }
        });
        // The second statement repeats the first one's key: the write fails whole.
        let failing = tokio::spawn({
            let db = db.clone();
            let statements = entries(&["c1", "c1"]);
            async move { db.write().await?.commit_with(statements).await }
        });
        let after = tokio::spawn({
            let db = db.clone();
            let statements = entries(&["d1"]);
            async move { db.write().await?.commit_with(statements).await }
        });
        tokio::task::yield_now().await;
        before.commit().await.expect("commit");
        both.await.expect("join").expect("both statements commit");
        assert!(
            failing.await.expect("join").is_err(),
            "a duplicate key fails"
        );
        after.await.expect("join").expect("the write after commits");
        assert_eq!(
            ids(&db).await,
            ["a-before", "b1", "b2", "d1"],
            "{:?}",
            db.dialect()
        );
        // A value that cannot be bound is an error too, before anything runs.
        let mut nothing = db.statements();
        nothing.bind(1_i64);
        let write = db.write().await.expect("write");
        assert!(write.commit_with(nothing).await.is_err());
        assert_eq!(ids(&db).await.len(), 4);
    })
    .await;
}

/// A writer that gives up while waiting for its turn (a client that hangs up under load)
/// must not stall the ones around it: the write before it still commits, and so does
/// every write after.
#[tokio::test]
async fn a_writer_that_gives_up_waiting_for_its_turn_stalls_nobody() {
    on_each_backend(async |db| {
        let within = std::time::Duration::from_secs(10);
        let mut first = db.write().await.expect("write");
        insert(&mut first, &db, "first").await.expect("insert");
        let gave_up = tokio::spawn({
            let db = db.clone();
            async move {
                // On SQLite it waits here for `first`'s turn to end; on servers, which
                // have no turns, it gets a transaction of its own and waits below.
                let mut write = db.write().await?;
                insert(&mut write, &db, "never").await?;
                std::future::pending::<()>().await;
                write.commit().await
            }
        });
        // Let it queue behind `first`, then cancel it while it waits.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        gave_up.abort();
        assert!(gave_up.await.is_err(), "aborted");
        tokio::time::timeout(within, first.commit())
            .await
            .expect("the write before it commits")
            .expect("commit");
        for id in ["second", "third"] {
            let write = async {
                let mut write = db.write().await?;
                insert(&mut write, &db, id).await?;
                write.commit().await
            };
            tokio::time::timeout(within, write)
                .await
                .expect("a later write commits")
                .expect("commit");
        }
        assert_eq!(ids(&db).await, ["first", "second", "third"]);
    })
    .await;
}

/// Every connection but the shared write transaction's commits at FULL (2): a commit
/// returns after the WAL's fsync. The shared transaction commits at NORMAL (1) and its
/// writers are answered after a sync of the log of their own (the unit test
/// `a_write_is_answered_after_the_sync_that_began_after_its_commit` in `group.rs`, and
/// `tests/tests/blog_power_loss.rs` on the running system).
#[tokio::test]
async fn sqlite_commits_wait_for_the_disk() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let url = format!("sqlite://{}", dir.path().join("sync.db").display());
    let db = Database::connect(&url).await.expect("connect");
    let level: i64 = sqlx::query_scalar("PRAGMA synchronous")
        .fetch_one(db.pool())
        .await
        .expect("pragma");
    assert_eq!(level, 2);
    let mut write = db.write().await.expect("write");
    let level: i64 = sqlx::query_scalar("PRAGMA synchronous")
        .fetch_one(&mut **write.tx().expect("tx"))
        .await
        .expect("pragma");
    assert_eq!(level, 1);
    write.commit().await.expect("commit");
    db.durable().await.expect("durable");
}

/// The write that ends its batch sends its last statements with the batch's commit. When
/// they fail, only that write is undone: the batch's other writes commit, a write alone
/// leaves nothing, and the connection is as good as before for every later write (a
/// failed request must not leave SQLite's transaction and sqlx's count of it apart).
#[tokio::test]
async fn the_write_that_ends_a_batch_can_fail_alone() {
    on_each_backend(async |db| {
        let duplicate = |id: &'static str| {
            let mut statements = db.statements();
            for _ in 0..2 {
                statements
                    .push("INSERT INTO entries (id, body) VALUES (?, ?)")
                    .bind(id)
                    .bind("twice");
            }
            statements
        };
        // Behind a write in progress, so on SQLite it is the batch's last writer.
        let mut first = db.write().await.expect("write");
        insert(&mut first, &db, "kept").await.expect("insert");
        let failing = tokio::spawn({
            let db = db.clone();
            let statements = duplicate("twice-in-batch");
            async move { db.write().await?.commit_with(statements).await }
        });
        tokio::task::yield_now().await;
        first
            .commit()
            .await
            .expect("the batch's other write commits");
        assert!(
            failing.await.expect("join").is_err(),
            "a duplicate key fails"
        );
        // Alone: nothing else is in its transaction.
        let alone = db.write().await.expect("write");
        assert!(alone.commit_with(duplicate("twice-alone")).await.is_err());
        // Later writes, alone and together, land and are seen from the pool.
        for round in 0..3 {
            let mut write = db.write().await.expect("write");
            insert(&mut write, &db, &format!("later-{round}"))
                .await
                .expect("insert");
            write.commit().await.expect("commit");
        }
        assert_eq!(
            ids(&db).await,
            ["kept", "later-0", "later-1", "later-2"],
            "{:?}",
            db.dialect()
        );
    })
    .await;
}

/// A write in progress holds the writer's transaction, not the pool: a read on the pool
/// goes ahead and sees what is committed (on SQLite the shared transaction has a
/// connection of its own; WAL readers do not wait for the writer).
#[tokio::test]
async fn reads_do_not_wait_for_a_write_in_progress() {
    on_each_backend(async |db| {
        let mut committed = db.write().await.expect("write");
        insert(&mut committed, &db, "committed")
            .await
            .expect("insert");
        committed.commit().await.expect("commit");
        let mut open = db.write().await.expect("write");
        insert(&mut open, &db, "in-progress").await.expect("insert");
        let read = tokio::time::timeout(std::time::Duration::from_secs(5), ids(&db))
            .await
            .expect("the read waited for the write");
        assert_eq!(read, ["committed"], "{:?}", db.dialect());
        open.commit().await.expect("commit");
        assert_eq!(ids(&db).await, ["committed", "in-progress"]);
    })
    .await;
}

/// Writes made only of statements, arriving together, go to SQLite as one request; each
/// is still all-or-nothing on its own: one that fails half-way leaves nothing and the
/// others land.
#[tokio::test]
async fn statement_only_writes_go_together_and_one_that_fails_fails_alone() {
    on_each_backend(async |db| {
        let mut seed = db.write().await.expect("write");
        insert(&mut seed, &db, "taken").await.expect("insert");
        seed.commit().await.expect("commit");
        let before = db.group_stats();

        let writers: Vec<_> = (0..40)
            .map(|n| {
                let db = db.clone();
                tokio::spawn(async move {
                    let mut statements = db.statements();
                    statements
                        .push("INSERT INTO entries (id, body) VALUES (?, ?)")
                        .bind(format!("s{n:02}"))
                        .bind("first".to_owned());
                    // Write 7's second statement collides with the seed.
                    let second = if n == 7 {
                        "taken".to_owned()
                    } else {
                        format!("s{n:02}b")
                    };
                    statements
                        .push("INSERT INTO entries (id, body) VALUES (?, ?)")
                        .bind(second)
                        .bind("second".to_owned());
                    db.commit_statements(statements).await
                })
            })
            .collect();
        for (n, writer) in writers.into_iter().enumerate() {
            let result = writer.await.expect("join");
            assert_eq!(result.is_err(), n == 7, "write {n}: {result:?}");
        }
        let mut expected: Vec<String> = (0..40)
            .filter(|n| *n != 7)
            .flat_map(|n| [format!("s{n:02}"), format!("s{n:02}b")])
            .collect();
        expected.push("taken".to_owned());
        expected.sort();
        assert_eq!(ids(&db).await, expected, "{:?}", db.dialect());

        if let (Some(before), Some(after)) = (before, db.group_stats()) {
            assert_eq!(
                after.writes - before.writes,
                39,
                "the failed one is not counted"
            );
        }

        // Without a failure, a lot that arrives together is counted as one request.
        let before = db.group_stats();
        let writers: Vec<_> = (0..16)
            .map(|n| {
                let db = db.clone();
                tokio::spawn(
                    async move { db.commit_statements(entry(&db, &format!("t{n:02}"))).await },
                )
            })
            .collect();
        for writer in writers {
            writer.await.expect("join").expect("write commits");
        }
        assert_eq!(ids(&db).await.len(), expected.len() + 16);
        if let (Some(before), Some(after)) = (before, db.group_stats()) {
            assert_eq!(after.writes - before.writes, 16);
            assert!(
                after.joined - before.joined >= 15,
                "{} of 16 writes sent with others",
                after.joined - before.joined
            );
        }
    })
    .await;
}

/// One SQLite database for the tests of what only SQLite's group commit does.
async fn sqlite() -> (Database, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let url = format!("sqlite://{}", dir.path().join("group.db").display());
    let settings = storage::PoolSettings::fair_writers(&url);
    let db = Database::connect_with(&url, &settings)
        .await
        .expect("connect");
    db.migrate("group", MIGRATIONS).await.expect("migrate");
    (db, dir)
}

fn entry(db: &Database, id: &str) -> storage::Statements {
    let mut statements = db.statements();
    statements
        .push("INSERT INTO entries (id, body) VALUES (?, ?)")
        .bind(id.to_owned())
        .bind(format!("body of {id}"));
    statements
}

/// A statement-only write queued from a runtime that then ends (an HTTP thread's own
/// runtime at shutdown) still lands, and the writes after it are not stranded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statement_only_writes_outlive_the_runtime_they_were_queued_on() {
    let (db, _dir) = sqlite().await;
    let hold = db.write().await.expect("write");
    let other = db.clone();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let db = other.clone();
            // Queued while the slot is held; the caller's runtime ends before it is sent.
            let _caller = tokio::spawn(async move { db.commit_statements(entry(&db, "a")).await });
            tokio::time::sleep(Duration::from_millis(200)).await;
        });
        drop(runtime);
    })
    .join()
    .expect("thread");
    hold.commit().await.expect("commit");
    tokio::time::timeout(
        Duration::from_secs(5),
        db.commit_statements(entry(&db, "b")),
    )
    .await
    .expect("a later statement-only write is not stranded")
    .expect("it commits");
    assert_eq!(ids(&db).await, ["a", "b"]);
}

/// Statement-only writes sent together count as the writes they are: no commit carries
/// more than a batch's worth (64), however many are queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_commit_carries_more_than_a_batch_of_writes() {
    let (db, _dir) = sqlite().await;
    let before = db.group_stats().expect("sqlite");
    let hold = db.write().await.expect("write");
    let queued: Vec<_> = (0..1024)
        .map(|n| {
            let db = db.clone();
            tokio::spawn(async move { db.commit_statements(entry(&db, &format!("q{n:04}"))).await })
        })
        .collect();
    let plain: Vec<_> = (0..256)
        .map(|n| {
            let db = db.clone();
            tokio::spawn(async move {
                db.write()
                    .await?
                    .commit_with(entry(&db, &format!("p{n:04}")))
                    .await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    hold.commit().await.expect("commit");
    for writer in queued.into_iter().chain(plain) {
        writer.await.expect("join").expect("write commits");
    }
    let after = db.group_stats().expect("sqlite");
    let writes = after.writes - before.writes;
    let commits = after.commits - before.commits;
    assert_eq!(
        writes,
        1024 + 256 + 1,
        "the queued, the plain and the one held"
    );
    assert!(
        commits * 64 >= writes,
        "{writes} writes in {commits} commits"
    );
    assert!(
        after.joined - before.joined >= 512,
        "most were sent with others"
    );
}

/// A lot sent in the middle of a batch (behind another write, with one waiting behind
/// it), one of its writes failing: the others, and the batch's other writes, land.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_lot_in_the_middle_of_a_batch_fails_only_its_failing_write() {
    let (db, _dir) = sqlite().await;
    db.commit_statements(entry(&db, "taken"))
        .await
        .expect("seed");
    let hold = db.write().await.expect("write");
    let lot: Vec<_> = (0..10)
        .map(|n| {
            let db = db.clone();
            let id = if n == 5 {
                "taken".to_owned()
            } else {
                format!("g{n:02}")
            };
            tokio::spawn(async move { db.commit_statements(entry(&db, &id)).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let plain = {
        let db = db.clone();
        tokio::spawn(async move { db.write().await?.commit_with(entry(&db, "plain")).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    hold.commit_with(entry(&db, "hold")).await.expect("hold");
    for (n, writer) in lot.into_iter().enumerate() {
        let result = writer.await.expect("join");
        assert_eq!(result.is_err(), n == 5, "write {n}: {result:?}");
    }
    plain.await.expect("join").expect("plain");
    assert_eq!(ids(&db).await.len(), 1 + 9 + 1 + 1);
}
