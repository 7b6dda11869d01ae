//! Throwaway databases on a real PostgreSQL or MySQL/MariaDB server, for tests that share
//! one server and run in parallel: each gets its own database, named
//! `flotilla_test_<random>`, dropped by [`ScratchDatabase::drop_database`]. (One left
//! behind by a failed test is harmless and recognisable by its prefix.)

use sqlx::{AnyConnection, AssertSqlSafe, Connection};

use crate::{Dialect, StorageError};

/// A fresh, empty database on a server.
#[derive(Debug)]
pub struct ScratchDatabase {
    server_url: String,
    name: String,
    url: String,
}

impl ScratchDatabase {
    /// Creates a new database on the server of `server_url` (whose user may create
    /// databases) and returns it; connect to [`ScratchDatabase::url`].
    pub async fn create(server_url: &str) -> Result<Self, StorageError> {
        sqlx::any::install_default_drivers();
        let dialect = Dialect::from_url(server_url)?;
        if dialect == Dialect::Sqlite {
            return Err(StorageError::UnsupportedUrl(format!(
                "{} (scratch databases are for servers; use a temporary file for SQLite)",
                crate::redact(server_url)
            )));
        }
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        let name = format!("flotilla_test_{}", &suffix[..16]);
        let mut conn = AnyConnection::connect(server_url).await?;
        // The name is ours (a fixed prefix and hex digits), never user input.
        sqlx::raw_sql(AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await?;
        conn.close().await?;
        Ok(Self {
            url: with_database(server_url, &name),
            server_url: server_url.to_owned(),
            name,
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Drops the database; connections to it must be closed first.
    pub async fn drop_database(self) -> Result<(), StorageError> {
        let dialect = Dialect::from_url(&self.server_url)?;
        let statement = match dialect {
            // FORCE ends sessions a test forgot to close.
            Dialect::Postgres => format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
            _ => format!("DROP DATABASE IF EXISTS {}", self.name),
        };
        let mut conn = AnyConnection::connect(&self.server_url).await?;
        // A session the test closed a moment ago may still be ending on the server, and
        // FORCE may only end it for a role allowed to signal backends: try again shortly.
        let mut attempt = 0;
        loop {
            match sqlx::raw_sql(AssertSqlSafe(statement.clone()))
                .execute(&mut conn)
                .await
            {
                Ok(_) => break,
                Err(_) if attempt < 50 => {
                    attempt += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                Err(error) => return Err(error.into()),
            }
        }
        conn.close().await?;
        Ok(())
    }
}

/// `url` with its database (the path) replaced by `name`, keeping the query.
fn with_database(url: &str, name: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let query = tail.find('?').map_or("", |at| &tail[at..]);
    format!("{scheme}://{authority}/{name}{query}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_is_replaced_and_query_kept() {
        assert_eq!(
            with_database("postgres://app:app@127.0.0.1:5432/app", "x"),
            "postgres://app:app@127.0.0.1:5432/x"
        );
        assert_eq!(
            with_database("mysql://app:app@h:3306/app?ssl-mode=disabled", "x"),
            "mysql://app:app@h:3306/x?ssl-mode=disabled"
        );
        assert_eq!(with_database("postgres://h", "x"), "postgres://h/x");
        assert_eq!(with_database("postgres://h?a=b", "x"), "postgres://h/x?a=b");
    }
}
