//! Relational storage shared by every service: a [`Database`] is a sqlx `AnyPool` plus the
//! [`Dialect`] chosen from its URL (`sqlite://…`, `postgres://…`, `mysql://…`/`mariadb://…`).
//!
//! Services write one SQL text for every backend: `?` placeholders, portable types
//! (`VARCHAR`, `BIGINT`, `SMALLINT`, `TEXT`), and [`Database::sql`] (or [`Dialect::sql`])
//! rewrites the placeholders to `$1, $2, …` when the backend is PostgreSQL. Queries are
//! built at run time with `sqlx::query`/`query_as` — never the compile-time macros, which
//! would tie a build to one database. Values bound through `Any` are limited to what every
//! driver shares: `bool`, integers, floats, strings and bytes (so ids are text, instants
//! are Unix seconds, flags are `SMALLINT` 0/1 because MySQL has no real boolean).
//!
//! [`Database::migrate`] applies a service's ordered [`Migration`]s once each, recorded in
//! the `flotilla_migrations` table, under a lock so that two processes starting at once
//! do not race. SQLite files are opened in WAL mode with a busy timeout and created when
//! missing. [`scratch`] makes throwaway databases on real servers for tests.
//!
//! Transactions: [`Database::begin`] gives a `sqlx::Transaction` on the same pool, so a
//! service can write its own rows and, say, an outbox record atomically.

pub mod blob;
mod group;
mod migrate;
mod placeholders;
pub mod scratch;
mod statements;

use std::{borrow::Cow, str::FromStr, time::Duration};

use sqlx::{
    Any, AnyPool, AssertSqlSafe, ConnectOptions, Executor, SqlSafeStr, SqlStr, Transaction,
    any::{AnyConnectOptions, AnyPoolOptions},
};

pub use group::{GroupStats, Tx, Write};
pub use migrate::{Migration, MigrationSql};
pub use statements::Statements;

/// What can go wrong talking to a database.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error(
        "unsupported database URL '{0}': expected sqlite://, postgres://, postgresql://, mysql:// or mariadb://"
    )]
    UnsupportedUrl(String),
    #[error("{0}")]
    NotBuiltIn(NotBuiltIn),
    #[error("cannot connect to the {dialect} database: {source}")]
    Connect {
        dialect: Dialect,
        #[source]
        source: sqlx::Error,
    },
    #[error(
        "migration {service}/{version} ({name}) was changed after it was applied; add a new migration instead of editing an applied one"
    )]
    MigrationChanged {
        service: String,
        version: i64,
        name: String,
    },
    #[error("migration {service}/{version} ({name}) failed: {source}")]
    Migration {
        service: String,
        version: i64,
        name: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("could not take the migration lock: {0}")]
    MigrationLock(String),
    #[error("the write's transaction did not commit: {0}")]
    GroupCommit(String),
    #[error(transparent)]
    Sqlx(#[from] sqlx::Error),
}

/// A URL named a backend this build was compiled without (its cargo feature was off):
/// said as such, instead of the driver's "no driver found for the scheme".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotBuiltIn {
    /// The backend, as a user knows it ("PostgreSQL").
    pub backend: &'static str,
    /// The cargo feature that builds it in (on by default in the `flotilla` binary).
    pub feature: &'static str,
}

impl std::fmt::Display for NotBuiltIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "this build has no {} support: it was compiled without the cargo feature `{}` \
             (on by default; build with `--features {}`)",
            self.backend, self.feature, self.feature
        )
    }
}

/// The SQL dialect of a backend, for the few places where dialects differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dialect {
    Sqlite,
    Postgres,
    /// MySQL and MariaDB.
    MySql,
}

impl std::fmt::Display for Dialect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Dialect::Sqlite => "SQLite",
            Dialect::Postgres => "PostgreSQL",
            Dialect::MySql => "MySQL",
        })
    }
}

impl Dialect {
    /// The dialect named by a database URL's scheme.
    pub fn from_url(url: &str) -> Result<Self, StorageError> {
        let scheme = url.split_once(':').map(|(scheme, _)| scheme);
        match scheme.map(str::to_ascii_lowercase).as_deref() {
            Some("sqlite") => Ok(Dialect::Sqlite),
            Some("postgres" | "postgresql") if cfg!(feature = "postgres") => Ok(Dialect::Postgres),
            Some("postgres" | "postgresql") => Err(StorageError::NotBuiltIn(NotBuiltIn {
                backend: "PostgreSQL",
                feature: "postgres",
            })),
            Some("mysql" | "mariadb") if cfg!(feature = "mysql") => Ok(Dialect::MySql),
            Some("mysql" | "mariadb") => Err(StorageError::NotBuiltIn(NotBuiltIn {
                backend: "MySQL/MariaDB",
                feature: "mysql",
            })),
            _ => Err(StorageError::UnsupportedUrl(redact(url))),
        }
    }

    /// `sql` with `?` placeholders made right for this dialect: `$1, $2, …` for
    /// PostgreSQL, unchanged otherwise. `?` inside quotes and comments is left alone.
    pub fn sql(self, sql: impl Into<Cow<'static, str>>) -> SqlStr {
        let sql = sql.into();
        let sql = match self {
            Dialect::Postgres => Cow::Owned(placeholders::numbered(&sql)),
            Dialect::Sqlite | Dialect::MySql => sql,
        };
        match sql {
            Cow::Borrowed(text) => text.into_sql_str(),
            // The text is the service's own SQL with its placeholders renumbered; values
            // are always bound, never spliced in, so this is as safe as the original.
            Cow::Owned(text) => AssertSqlSafe(text).into_sql_str(),
        }
    }
}

/// Pool sizing and timeouts.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub max_connections: u32,
    /// How long a query waits for a free connection before failing.
    pub acquire_timeout: Duration,
    /// How long SQLite waits on a locked database before giving up.
    pub sqlite_busy_timeout: Duration,
}

impl PoolSettings {
    /// Settings for a service whose writes come in bursts: on SQLite a single connection
    /// for the pool; writes through [`Database::write`] have one more of their own.
    /// SQLite has one writer at a time and its busy handler sleeps and retries rather
    /// than queueing, which under load starves a writer for seconds: so the busy paths
    /// write through [`Database::write`] (requests, consumers, the outbox relay and its
    /// pruning), and the pool's own writes are the rare ones (sign-ups, the notification
    /// ledger, migrations, a rebuild of the view), which wait on the file's lock. Servers
    /// get the default pool.
    pub fn fair_writers(url: &str) -> Self {
        let sqlite = Dialect::from_url(url).is_ok_and(|d| d == Dialect::Sqlite);
        Self {
            max_connections: if sqlite { 1 } else { 10 },
            ..Self::default()
        }
    }
}

impl Default for PoolSettings {
    fn default() -> Self {
        Self {
            max_connections: 10,
            acquire_timeout: Duration::from_secs(10),
            sqlite_busy_timeout: Duration::from_secs(10),
        }
    }
}

/// A pool of connections to one database, and its dialect.
#[derive(Debug, Clone)]
pub struct Database {
    pool: AnyPool,
    dialect: Dialect,
    /// SQLite's shared write transaction ([`Database::write`]); `None` on servers.
    batches: Option<std::sync::Arc<group::Batches>>,
}

impl Database {
    /// Opens a pool on `url` with default settings. The connection is tried at once, so
    /// a wrong URL or an unreachable server fails here, at start-up.
    pub async fn connect(url: &str) -> Result<Self, StorageError> {
        Self::connect_with(url, &PoolSettings::default()).await
    }

    pub async fn connect_with(url: &str, settings: &PoolSettings) -> Result<Self, StorageError> {
        sqlx::any::install_default_drivers();
        let dialect = Dialect::from_url(url)?;
        let url = match dialect {
            Dialect::Sqlite => sqlite_url_creating_file(url),
            Dialect::Postgres => url.to_owned(),
            // sqlx names the scheme `mysql`; MariaDB speaks the same protocol.
            Dialect::MySql => url
                .strip_prefix("mariadb:")
                .map(|rest| format!("mysql:{rest}"))
                .unwrap_or_else(|| url.to_owned()),
        };
        let connect_error = |source| StorageError::Connect { dialect, source };
        let options = AnyConnectOptions::from_str(&url)
            .map_err(connect_error)?
            // Statements are logged at debug level; slow ones at warn.
            .log_statements(log::LevelFilter::Debug)
            .log_slow_statements(log::LevelFilter::Warn, Duration::from_secs(1));
        let in_memory = dialect == Dialect::Sqlite && url.contains(":memory:");
        let busy_ms = settings.sqlite_busy_timeout.as_millis();
        // Every connection to an in-memory SQLite database is a different database.
        let max_connections = if in_memory {
            1
        } else {
            settings.max_connections
        };
        let pool = Self::pool_options(dialect, settings, max_connections, busy_ms, "FULL")
            .connect_with(options.clone())
            .await
            .map_err(connect_error)?;
        if dialect == Dialect::Sqlite && !in_memory {
            enable_wal(&pool).await.map_err(connect_error)?;
        }
        tracing::debug!(%dialect, "database connected");
        // SQLite's shared write transaction gets a connection of its own (a file's
        // database only: an in-memory one exists on its one connection), so it can keep
        // the next transaction begun while other queries use the pool.
        let batches = match dialect {
            Dialect::Sqlite if in_memory => Some(group::Batches::new(pool.clone(), false, None)),
            Dialect::Sqlite => {
                // The shared transaction commits without an fsync; its syncer makes each
                // batch durable before its writers are answered, while the next batch
                // works (`group.rs`, `Syncer`). Every other connection commits at FULL.
                let file: String =
                    sqlx::query_scalar("SELECT file FROM pragma_database_list WHERE name = 'main'")
                        .fetch_one(&pool)
                        .await
                        .map_err(connect_error)?;
                let syncer =
                    (!file.is_empty()).then(|| group::Syncer::new(std::path::Path::new(&file)));
                let synchronous = if syncer.is_some() { "NORMAL" } else { "FULL" };
                let writer = Self::pool_options(dialect, settings, 1, busy_ms, synchronous)
                    .connect_with(options)
                    .await
                    .map_err(connect_error)?;
                Some(group::Batches::new(writer, true, syncer))
            }
            Dialect::Postgres | Dialect::MySql => None,
        };
        Ok(Self {
            pool,
            dialect,
            batches,
        })
    }

    fn pool_options(
        dialect: Dialect,
        settings: &PoolSettings,
        max_connections: u32,
        busy_ms: u128,
        synchronous: &'static str,
    ) -> AnyPoolOptions {
        AnyPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(settings.acquire_timeout)
            // A SQLite connection is a file in this process, not a socket that can go
            // stale: pinging it before every use is a needless hand-off to its thread.
            .test_before_acquire(dialect != Dialect::Sqlite)
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if dialect == Dialect::Sqlite {
                        // FULL: a commit returns once the WAL is on disk, so an
                        // acknowledged write survives a power loss, not only a crash.
                        // Writers share commits ([`Database::write`]), so the fsync is
                        // paid once per batch, not once per request; the shared
                        // transaction's own connection commits at NORMAL and its syncer
                        // makes each batch durable before answering its writers.
                        // temp_store MEMORY: the statement journals a batch's savepoints
                        // keep (a copy of each page a write changes, so it can be undone
                        // alone) stay in memory, where past 64 KiB they went to a file in
                        // /var/tmp — a write per page, for data that lives one batch.
                        let pragmas = format!(
                            "PRAGMA busy_timeout = {busy_ms}; PRAGMA synchronous = {synchronous}; PRAGMA foreign_keys = ON; PRAGMA temp_store = MEMORY"
                        );
                        conn.execute(sqlx::raw_sql(AssertSqlSafe(pragmas))).await?;
                    }
                    Ok(())
                })
            })
    }

    /// The pool, for queries: `sqlx::query(db.sql("…")).bind(…).fetch_one(db.pool())`.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// See [`Dialect::sql`].
    pub fn sql(&self, sql: impl Into<Cow<'static, str>>) -> SqlStr {
        self.dialect.sql(sql)
    }

    /// A transaction on a pooled connection; it rolls back if dropped without
    /// `commit()`. Run statements on it with `.execute(&mut *tx)`.
    pub async fn begin(&self) -> Result<Transaction<'static, Any>, StorageError> {
        Ok(self.pool.begin().await?)
    }

    /// Returns once every write committed so far is on disk. Writes are answered only
    /// then anyway; this is for a reader that passes on what it read (the outbox relay
    /// publishing rows): on SQLite a batch is visible to readers from its commit, a
    /// moment before its sync.
    pub async fn durable(&self) -> Result<(), StorageError> {
        match &self.batches {
            Some(batches) => batches.durable().await,
            None => Ok(()),
        }
    }

    /// A write to make durable with [`Write::commit`]: the way request handlers and
    /// consumers write. On SQLite concurrent writes share one transaction and so one
    /// fsync (group commit, see `crates/storage/src/group.rs`), each in a savepoint of its
    /// own; on servers it is a transaction of its own. Don't hold one while waiting on
    /// this database's pool or on another write: on SQLite it holds the only writer.
    pub async fn write(&self) -> Result<Write, StorageError> {
        match &self.batches {
            Some(batches) => Write::batched(batches).await,
            None => Write::own(&self.pool).await,
        }
    }

    /// A write made only of `statements` — nothing it writes depends on a read — made
    /// durable as [`Write::commit_with`] does. On SQLite the statement-only writes
    /// arriving together go to SQLite's thread as one request (see
    /// `crates/storage/src/group.rs`); if one fails, it fails alone. A caller that goes
    /// away before the answer does not take the write back: once called, the write
    /// happens (a request whose client hangs up still creates its post). As with
    /// [`write`](Self::write), don't call it while holding a [`Write`] of this database:
    /// on SQLite it waits for the writer that `Write` holds. An error that is not the
    /// statements' own (`StorageError::GroupCommit`: the commit failed, or how it ended
    /// is unknown) is never retried here, so a write may be on disk although its caller
    /// was told otherwise — make writes whose retry matters idempotent by a key, as every
    /// caller here is (a post's id, an inbox record, `sent_at IS NULL`).
    pub async fn commit_statements(&self, statements: Statements) -> Result<(), StorageError> {
        match &self.batches {
            Some(batches) => batches.commit_statements(statements).await,
            None => Write::own(&self.pool).await?.commit_with(statements).await,
        }
    }

    /// Statements to run as one request, on a write ([`Write::commit_with`]) or a
    /// connection ([`Statements::execute`]).
    pub fn statements(&self) -> Statements {
        Statements::new(self.dialect)
    }

    /// On SQLite, how many writes [`write`](Self::write) committed in how many commits.
    pub fn group_stats(&self) -> Option<GroupStats> {
        self.batches.as_ref().map(|batches| batches.stats())
    }

    /// A round trip to the database, for readiness checks.
    pub async fn ping(&self) -> Result<(), StorageError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Applies the `migrations` of `service` that this database has not seen yet, in
    /// version order, each exactly once even when several processes start together.
    pub async fn migrate(
        &self,
        service: &str,
        migrations: &[Migration],
    ) -> Result<(), StorageError> {
        migrate::run(self, service, migrations).await
    }

    /// Closes every connection (waits for those in use to be returned).
    pub async fn close(&self) {
        if let Some(batches) = &self.batches {
            batches.close().await;
        }
        self.pool.close().await;
    }
}

/// `sqlite://path` opens an existing file only; services expect their file to be
/// created on first start, which is `mode=rwc`.
fn sqlite_url_creating_file(url: &str) -> String {
    if url.contains(":memory:") || url.contains("mode=") {
        return url.to_owned();
    }
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}mode=rwc")
}

/// Switching to WAL needs a moment of exclusive access that SQLite's busy handler does
/// not wait for, so a second process opening the same file at the same instant may see
/// "database is locked"; retry briefly. The mode is stored in the file, so this is a
/// no-op after the first start.
async fn enable_wal(pool: &AnyPool) -> Result<(), sqlx::Error> {
    let mut attempt = 0;
    loop {
        match sqlx::query("PRAGMA journal_mode = WAL").execute(pool).await {
            Ok(_) => return Ok(()),
            Err(error) if attempt < 50 && is_busy(&error) => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(error) => return Err(error),
        }
    }
}

/// SQLITE_BUSY (5) or SQLITE_LOCKED (6).
fn is_busy(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .and_then(|e| e.code())
        .is_some_and(|code| code == "5" || code == "6")
}

/// A URL with its password replaced, for messages and logs.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
            format!("{scheme}://{user}:***@{host}{tail}")
        }
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dialect_follows_the_scheme() {
        assert_eq!(
            Dialect::from_url("sqlite:///tmp/a.db").ok(),
            Some(Dialect::Sqlite)
        );
        // A backend compiled out is refused by name, with the feature that builds it in.
        let built = |url: &str, dialect, feature: &str| match Dialect::from_url(url) {
            Ok(found) => {
                assert!(cfg_feature(feature), "{url} opened without its feature");
                assert_eq!(found, dialect);
            }
            Err(StorageError::NotBuiltIn(missing)) => {
                assert!(!cfg_feature(feature), "{url} refused with its feature on");
                assert_eq!(missing.feature, feature);
                assert!(
                    missing
                        .to_string()
                        .contains(&format!("--features {feature}"))
                );
            }
            Err(other) => panic!("{url}: {other}"),
        };
        built("postgres://u:p@h/db", Dialect::Postgres, "postgres");
        built("postgresql://h/db", Dialect::Postgres, "postgres");
        built("mysql://h/db", Dialect::MySql, "mysql");
        built("MariaDB://h/db", Dialect::MySql, "mysql");
        assert!(Dialect::from_url("redis://h").is_err());
        assert!(Dialect::from_url("no scheme").is_err());
    }

    fn cfg_feature(name: &str) -> bool {
        match name {
            "postgres" => cfg!(feature = "postgres"),
            "mysql" => cfg!(feature = "mysql"),
            _ => unreachable!("no feature {name}"),
        }
    }

    #[test]
    fn unsupported_url_message_hides_the_password() {
        let error = Dialect::from_url("oracle://scott:tiger@db/x").expect_err("unsupported");
        let message = error.to_string();
        assert!(!message.contains("tiger"), "{message}");
        assert!(message.contains("scott:***@db/x"), "{message}");
    }

    #[test]
    fn placeholders_are_numbered_only_for_postgres() {
        let sql = "SELECT a FROM t WHERE b = ? AND c = ?";
        assert_eq!(Dialect::Sqlite.sql(sql).as_str(), sql);
        assert_eq!(Dialect::MySql.sql(sql).as_str(), sql);
        assert_eq!(
            Dialect::Postgres.sql(sql).as_str(),
            "SELECT a FROM t WHERE b = $1 AND c = $2"
        );
    }

    #[test]
    fn sqlite_files_are_created_when_missing() {
        assert_eq!(
            sqlite_url_creating_file("sqlite:///tmp/a.db"),
            "sqlite:///tmp/a.db?mode=rwc"
        );
        assert_eq!(
            sqlite_url_creating_file("sqlite:///tmp/a.db?cache=shared"),
            "sqlite:///tmp/a.db?cache=shared&mode=rwc"
        );
        assert_eq!(
            sqlite_url_creating_file("sqlite:///tmp/a.db?mode=ro"),
            "sqlite:///tmp/a.db?mode=ro"
        );
        assert_eq!(
            sqlite_url_creating_file("sqlite::memory:"),
            "sqlite::memory:"
        );
    }
}
