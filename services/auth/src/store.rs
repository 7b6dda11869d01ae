//! Where accounts live: the [`UserStore`] trait, and its one implementation over any
//! database `storage` supports (SQLite, PostgreSQL, MySQL/MariaDB) with the same SQL.

use futures::future::BoxFuture;
use sqlx::Row;
use storage::{Database, Migration, StorageError};

use crate::domain::Email;

/// The auth service's schema. `auth_` prefixed: in production several services may
/// share one database.
pub const MIGRATIONS: &[Migration] = &[Migration::portable(
    1,
    "users",
    "CREATE TABLE auth_users (
        id VARCHAR(36) NOT NULL PRIMARY KEY,
        email VARCHAR(254) NOT NULL,
        password_hash VARCHAR(255) NOT NULL,
        is_admin SMALLINT NOT NULL DEFAULT 0,
        created_at BIGINT NOT NULL
    );
    CREATE UNIQUE INDEX auth_users_email ON auth_users (email)",
)];

/// An account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: String,
    pub email: String,
    pub password_hash: String,
    pub admin: bool,
    pub created_at: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("an account with this email already exists")]
    DuplicateEmail,
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        let unique = error
            .as_database_error()
            .is_some_and(|e| e.is_unique_violation());
        if unique {
            StoreError::DuplicateEmail
        } else {
            StoreError::Storage(error.into())
        }
    }
}

/// Accounts, whatever holds them.
pub trait UserStore: Send + Sync {
    fn find_by_email<'a>(
        &'a self,
        email: &'a Email,
    ) -> BoxFuture<'a, Result<Option<User>, StoreError>>;

    /// Adds `user`; [`StoreError::DuplicateEmail`] if the email is taken.
    fn insert<'a>(&'a self, user: &'a User) -> BoxFuture<'a, Result<(), StoreError>>;

    /// For readiness checks.
    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>>;
}

/// [`UserStore`] over a relational database.
#[derive(Debug, Clone)]
pub struct SqlUserStore {
    db: Database,
}

impl SqlUserStore {
    /// Connects and applies the migrations.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let db = Database::connect(url).await?;
        db.migrate(crate::NAME, MIGRATIONS).await?;
        Ok(Self { db })
    }

    pub fn database(&self) -> &Database {
        &self.db
    }
}

impl UserStore for SqlUserStore {
    fn find_by_email<'a>(
        &'a self,
        email: &'a Email,
    ) -> BoxFuture<'a, Result<Option<User>, StoreError>> {
        Box::pin(async move {
            let row = sqlx::query(self.db.sql(
                "SELECT id, email, password_hash, is_admin, created_at FROM auth_users WHERE email = ?",
            ))
            .bind(email.as_str())
            .fetch_optional(self.db.pool())
            .await?;
            let Some(row) = row else {
                return Ok(None);
            };
            Ok(Some(User {
                id: row.try_get(0)?,
                email: row.try_get(1)?,
                password_hash: row.try_get(2)?,
                admin: row.try_get::<i64, _>(3)? != 0,
                created_at: row.try_get(4)?,
            }))
        })
    }

    fn insert<'a>(&'a self, user: &'a User) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            sqlx::query(self.db.sql(
                "INSERT INTO auth_users (id, email, password_hash, is_admin, created_at) VALUES (?, ?, ?, ?, ?)",
            ))
            .bind(&user.id)
            .bind(&user.email)
            .bind(&user.password_hash)
            .bind(i16::from(user.admin))
            .bind(user.created_at)
            .execute(self.db.pool())
            .await?;
            Ok(())
        })
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move { Ok(self.db.ping().await?) })
    }
}
