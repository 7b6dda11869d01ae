//! The storage layer against every backend: SQLite always, PostgreSQL and MariaDB when
//! `FLOTILLA_TEST_POSTGRES_URL` / `FLOTILLA_TEST_MYSQL_URL` name a server (each test makes
//! its own scratch database there). Under `CI=true` a missing server fails the test.

use sqlx::Row;
use storage::{Database, Dialect, Migration, PoolSettings, StorageError, scratch::ScratchDatabase};

const MIGRATIONS: &[Migration] = &[
    Migration::portable(
        1,
        "notes",
        "CREATE TABLE notes (id VARCHAR(36) PRIMARY KEY, body TEXT NOT NULL, pinned SMALLINT NOT NULL DEFAULT 0);
         CREATE INDEX notes_pinned ON notes (pinned)",
    ),
    Migration::per_dialect(
        2,
        "notes counter",
        "ALTER TABLE notes ADD COLUMN views BIGINT NOT NULL DEFAULT 0",
        "ALTER TABLE notes ADD COLUMN views BIGINT NOT NULL DEFAULT 0",
        "ALTER TABLE notes ADD COLUMN views BIGINT NOT NULL DEFAULT 0",
    ),
];

/// A database of each available backend, and what to do with it afterwards.
enum Backend {
    Sqlite { _dir: tempfile::TempDir },
    Server(ScratchDatabase),
}

impl Backend {
    async fn all() -> Vec<(String, Backend)> {
        let mut backends = Vec::new();
        let dir = tempfile::tempdir().expect("temporary directory");
        let url = format!("sqlite://{}", dir.path().join("test.db").display());
        backends.push((url, Backend::Sqlite { _dir: dir }));
        for var in ["FLOTILLA_TEST_POSTGRES_URL", "FLOTILLA_TEST_MYSQL_URL"] {
            if let Some(server) = test_kit::real_server_url(var) {
                let scratch = ScratchDatabase::create(&server)
                    .await
                    .expect("scratch database");
                backends.push((scratch.url().to_owned(), Backend::Server(scratch)));
            }
        }
        backends
    }

    async fn cleanup(self) {
        if let Backend::Server(scratch) = self {
            scratch
                .drop_database()
                .await
                .expect("drop scratch database");
        }
    }
}

/// Runs `test` on a new database of each backend, then closes and drops it.
async fn on_each_backend(test: impl AsyncFn(&Database)) {
    for (url, backend) in Backend::all().await {
        let db = Database::connect(&url).await.expect("connect");
        test(&db).await;
        db.close().await;
        backend.cleanup().await;
    }
}

/// `aggregate` (`COUNT(*)`, `MAX(version)`) over the migrations recorded for `notes`.
async fn notes_migrations(db: &Database, aggregate: &str) -> i64 {
    let sql = format!("SELECT {aggregate} FROM flotilla_migrations WHERE service = ?");
    sqlx::query_scalar(db.sql(sql))
        .bind("notes")
        .fetch_one(db.pool())
        .await
        .expect("recorded migrations")
}

#[tokio::test]
async fn migrations_apply_once_and_queries_are_portable() {
    on_each_backend(async |db| {
        db.migrate("notes", MIGRATIONS).await.expect("first run");
        db.migrate("notes", MIGRATIONS)
            .await
            .expect("second run is a no-op");

        let recorded = notes_migrations(db, "COUNT(*)").await;
        assert_eq!(recorded, 2, "{:?}", db.dialect());

        // One SQL text, `?` placeholders, on every backend; '?' in a literal is kept.
        sqlx::query(db.sql("INSERT INTO notes (id, body, pinned) VALUES (?, ?, ?)"))
            .bind("n1")
            .bind("why?")
            .bind(1_i16)
            .execute(db.pool())
            .await
            .expect("insert");
        let row =
            sqlx::query(db.sql(
                "SELECT body, pinned, views, '?' AS mark FROM notes WHERE id = ? AND pinned = ?",
            ))
            .bind("n1")
            .bind(1_i16)
            .fetch_one(db.pool())
            .await
            .expect("select");
        assert_eq!(row.try_get::<String, _>(0).expect("body"), "why?");
        assert_eq!(row.try_get::<i64, _>(1).expect("pinned"), 1);
        assert_eq!(row.try_get::<i64, _>(2).expect("views"), 0);
        assert_eq!(row.try_get::<String, _>(3).expect("mark"), "?");
        db.ping().await.expect("ping");
    })
    .await;
}

#[tokio::test]
async fn concurrent_starts_apply_each_migration_once() {
    for (url, backend) in Backend::all().await {
        // Two pools stand for two processes starting at the same moment.
        let (a, b) = tokio::join!(Database::connect(&url), Database::connect(&url));
        let (a, b) = (a.expect("connect a"), b.expect("connect b"));
        let (ra, rb) = tokio::join!(
            a.migrate("notes", MIGRATIONS),
            b.migrate("notes", MIGRATIONS)
        );
        ra.expect("migrate a");
        rb.expect("migrate b");
        let recorded = notes_migrations(&a, "COUNT(*)").await;
        assert_eq!(recorded, 2, "{:?}", a.dialect());
        a.close().await;
        b.close().await;
        backend.cleanup().await;
    }
}

#[tokio::test]
async fn an_edited_migration_is_refused() {
    on_each_backend(async |db| {
        db.migrate("notes", &MIGRATIONS[..1]).await.expect("first");
        let edited = [Migration::portable(
            1,
            "notes",
            "CREATE TABLE notes (id VARCHAR(36) PRIMARY KEY)",
        )];
        let error = db.migrate("notes", &edited).await.expect_err("edited");
        assert!(
            matches!(error, StorageError::MigrationChanged { version: 1, .. }),
            "{error}"
        );
        // Migrations are per service: another service's version 1 is its own.
        db.migrate(
            "other",
            &[Migration::portable(
                1,
                "other",
                "CREATE TABLE other_things (id BIGINT PRIMARY KEY)",
            )],
        )
        .await
        .expect("other service");
    })
    .await;
}

#[tokio::test]
async fn a_failed_migration_is_not_recorded_and_transactions_roll_back() {
    on_each_backend(async |db| {
        db.migrate("notes", MIGRATIONS).await.expect("migrate");
        let broken = [Migration::portable(3, "broken", "CREATE TABLE (")];
        let all: Vec<Migration> = MIGRATIONS.iter().copied().chain(broken).collect();
        let error = db.migrate("notes", &all).await.expect_err("broken");
        assert!(
            matches!(error, StorageError::Migration { version: 3, .. }),
            "{error}"
        );
        let max = notes_migrations(db, "MAX(version)").await;
        assert_eq!(max, 2);

        let mut tx = db.begin().await.expect("begin");
        sqlx::query(db.sql("INSERT INTO notes (id, body) VALUES (?, ?)"))
            .bind("rolled-back")
            .bind("x")
            .execute(&mut *tx)
            .await
            .expect("insert in tx");
        tx.rollback().await.expect("rollback");
        let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM notes")
            .fetch_one(db.pool())
            .await
            .expect("count");
        assert_eq!(count, 0);
    })
    .await;
}

#[tokio::test]
async fn sqlite_is_created_in_wal_mode() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("new.db");
    let db = Database::connect(&format!("sqlite://{}", path.display()))
        .await
        .expect("connect creates the file");
    assert_eq!(db.dialect(), Dialect::Sqlite);
    assert!(path.exists());
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(db.pool())
        .await
        .expect("pragma");
    assert_eq!(mode.to_lowercase(), "wal");
}

#[tokio::test]
async fn unreachable_server_fails_at_connect() {
    let settings = PoolSettings {
        acquire_timeout: std::time::Duration::from_millis(500),
        ..PoolSettings::default()
    };
    let error = Database::connect_with("postgres://nobody:secret@127.0.0.1:1/none", &settings)
        .await
        .expect_err("nothing listens on port 1");
    let message = error.to_string();
    assert!(message.contains("PostgreSQL"), "{message}");
    assert!(!message.contains("secret"), "{message}");
}
