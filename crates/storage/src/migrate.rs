//! The migration runner: a service's ordered schema changes, applied once each.
//!
//! Applied migrations are recorded in `flotilla_migrations (service, version, name,
//! checksum, applied_at)`, keyed by service so that services may share one database in
//! production. Concurrency: the whole run holds a lock — `pg_advisory_lock` on
//! PostgreSQL, `GET_LOCK` on MySQL/MariaDB, `BEGIN IMMEDIATE` (the write lock) on SQLite —
//! so when two replicas start at once one applies and the other then sees them applied.
//! Each migration runs in a transaction (a savepoint inside SQLite's outer one).
//! MySQL commits DDL implicitly, so there a failed multi-statement migration can leave
//! its first statements applied; keep MySQL-affecting migrations to one DDL statement
//! each, or make them idempotent.

use std::collections::BTreeMap;

use sqlx::{Any, AnyConnection, Connection, Row, pool::PoolConnection};

use crate::{Database, Dialect, StorageError, placeholders};

/// One schema change of a service.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// Unique and increasing within the service; applied in this order.
    pub version: i64,
    pub name: &'static str,
    pub sql: MigrationSql,
}

/// The SQL of a migration: one script, or one per dialect where the dialects force it.
/// A script may hold several statements separated by `;`.
#[derive(Debug, Clone, Copy)]
pub enum MigrationSql {
    Portable(&'static str),
    PerDialect {
        sqlite: &'static str,
        postgres: &'static str,
        mysql: &'static str,
    },
}

impl Migration {
    /// A migration whose SQL runs unchanged on every backend.
    pub const fn portable(version: i64, name: &'static str, sql: &'static str) -> Self {
        Self {
            version,
            name,
            sql: MigrationSql::Portable(sql),
        }
    }

    /// A migration with a script per dialect.
    pub const fn per_dialect(
        version: i64,
        name: &'static str,
        sqlite: &'static str,
        postgres: &'static str,
        mysql: &'static str,
    ) -> Self {
        Self {
            version,
            name,
            sql: MigrationSql::PerDialect {
                sqlite,
                postgres,
                mysql,
            },
        }
    }

    fn script(&self, dialect: Dialect) -> &'static str {
        match (self.sql, dialect) {
            (MigrationSql::Portable(sql), _) => sql,
            (MigrationSql::PerDialect { sqlite, .. }, Dialect::Sqlite) => sqlite,
            (MigrationSql::PerDialect { postgres, .. }, Dialect::Postgres) => postgres,
            (MigrationSql::PerDialect { mysql, .. }, Dialect::MySql) => mysql,
        }
    }
}

const CREATE_TABLE: &str = "CREATE TABLE IF NOT EXISTS flotilla_migrations (
    service VARCHAR(64) NOT NULL,
    version BIGINT NOT NULL,
    name VARCHAR(255) NOT NULL,
    checksum VARCHAR(16) NOT NULL,
    applied_at BIGINT NOT NULL,
    PRIMARY KEY (service, version)
)";

/// Arbitrary but fixed: the PostgreSQL advisory lock key of migrations ("flotmigr").
const POSTGRES_LOCK_KEY: i64 = 0x666c_6f74_6d69_6772;
const MYSQL_LOCK_NAME: &str = "flotilla_migrations";
const MYSQL_LOCK_WAIT_SECS: i64 = 120;

pub(crate) async fn run(
    db: &Database,
    service: &str,
    migrations: &[Migration],
) -> Result<(), StorageError> {
    if let Some(pair) = migrations.windows(2).find(|w| w[0].version >= w[1].version) {
        return Err(StorageError::MigrationLock(format!(
            "migrations of {service} are not in increasing version order ({} then {})",
            pair[0].version, pair[1].version
        )));
    }
    let dialect = db.dialect();
    let mut conn = db.pool().acquire().await?;
    match dialect {
        Dialect::Sqlite => {
            // The write lock for the whole run; the busy timeout makes a second process
            // wait for it instead of failing.
            let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
            apply_pending(&mut tx, dialect, service, migrations).await?;
            tx.commit().await?;
            Ok(())
        }
        Dialect::Postgres | Dialect::MySql => {
            lock(&mut conn, dialect).await?;
            let outcome = apply_pending(&mut conn, dialect, service, migrations).await;
            if let Err(error) = unlock(&mut conn, dialect).await {
                // A session lock ends with its session: close this connection rather
                // than return it to the pool still holding the lock.
                tracing::warn!(%error, "could not release the migration lock; closing the connection");
                conn.close_on_drop();
            }
            outcome
        }
    }
}

async fn lock(conn: &mut PoolConnection<Any>, dialect: Dialect) -> Result<(), StorageError> {
    let take = match dialect {
        // Selected FROM the function because its `void` result has no `Any` type.
        Dialect::Postgres => {
            sqlx::query(dialect.sql("SELECT 1 FROM pg_advisory_lock(?)")).bind(POSTGRES_LOCK_KEY)
        }
        Dialect::MySql => sqlx::query("SELECT GET_LOCK(?, ?)")
            .bind(MYSQL_LOCK_NAME)
            .bind(MYSQL_LOCK_WAIT_SECS),
        Dialect::Sqlite => return Ok(()),
    };
    let row = take.fetch_one(&mut **conn).await?;
    // GET_LOCK answers 1 when it got the lock, 0 or NULL when it timed out.
    if dialect == Dialect::MySql && row.try_get::<Option<i64>, _>(0)? != Some(1) {
        return Err(StorageError::MigrationLock(format!(
            "another process held it for {MYSQL_LOCK_WAIT_SECS} s"
        )));
    }
    Ok(())
}

async fn unlock(conn: &mut PoolConnection<Any>, dialect: Dialect) -> Result<(), StorageError> {
    let release = match dialect {
        Dialect::Postgres => {
            sqlx::query(dialect.sql("SELECT 1 FROM pg_advisory_unlock(?)")).bind(POSTGRES_LOCK_KEY)
        }
        Dialect::MySql => sqlx::query("SELECT RELEASE_LOCK(?)").bind(MYSQL_LOCK_NAME),
        Dialect::Sqlite => return Ok(()),
    };
    release.fetch_one(&mut **conn).await?;
    Ok(())
}

async fn apply_pending(
    conn: &mut AnyConnection,
    dialect: Dialect,
    service: &str,
    migrations: &[Migration],
) -> Result<(), StorageError> {
    sqlx::query(CREATE_TABLE).execute(&mut *conn).await?;
    let applied: BTreeMap<i64, String> = sqlx::query(
        dialect.sql("SELECT version, checksum FROM flotilla_migrations WHERE service = ?"),
    )
    .bind(service)
    .fetch_all(&mut *conn)
    .await?
    .into_iter()
    .map(|row| Ok((row.try_get::<i64, _>(0)?, row.try_get::<String, _>(1)?)))
    .collect::<Result<_, sqlx::Error>>()?;

    for migration in migrations {
        let script = migration.script(dialect);
        let checksum = checksum(script);
        if let Some(recorded) = applied.get(&migration.version) {
            if *recorded != checksum {
                return Err(StorageError::MigrationChanged {
                    service: service.to_owned(),
                    version: migration.version,
                    name: migration.name.to_owned(),
                });
            }
            continue;
        }
        let failed = |source| StorageError::Migration {
            service: service.to_owned(),
            version: migration.version,
            name: migration.name.to_owned(),
            source,
        };
        let mut tx = conn.begin().await.map_err(failed)?;
        for statement in placeholders::statements(script) {
            sqlx::raw_sql(sqlx::AssertSqlSafe(statement))
                .execute(&mut *tx)
                .await
                .map_err(failed)?;
        }
        sqlx::query(dialect.sql(
            "INSERT INTO flotilla_migrations (service, version, name, checksum, applied_at) VALUES (?, ?, ?, ?, ?)",
        ))
        .bind(service)
        .bind(migration.version)
        .bind(migration.name)
        .bind(&checksum)
        .bind(unix_now())
        .execute(&mut *tx)
        .await
        .map_err(failed)?;
        tx.commit().await.map_err(failed)?;
        // Routine at every first start (dozens of lines before `ready`): debug.
        tracing::debug!(
            service,
            version = migration.version,
            name = migration.name,
            "migration applied"
        );
    }
    if let Some(newest) = applied.keys().next_back()
        && migrations.last().is_none_or(|m| m.version < *newest)
    {
        // A newer release already migrated this database (a rolling deploy or a
        // rollback): carry on, the schema is ahead of what this code needs.
        tracing::warn!(
            service,
            newest,
            "the database has migrations this release does not know"
        );
    }
    Ok(())
}

/// FNV-1a, 64 bits: enough to notice an edited migration, no dependency needed.
fn checksum(script: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in script.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{hash:016x}")
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}
