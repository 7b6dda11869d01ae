//! Statements that run one after the other in one request.
//!
//! SQLite runs on a thread of its own (sqlx's worker): every statement sent to it is a
//! hand-off there and back, and inside a write on the shared transaction
//! ([`crate::Write`]) every other writer waits for each of them. A write that is nothing
//! but statements — no read whose answer decides the next statement — collects them in
//! [`Statements`] and sends them as one: on SQLite one statement string with all the
//! values bound in order (SQLite steps through it and stops at the first error), on
//! PostgreSQL and MySQL one statement after the other as before (a server round trip
//! each, which no thread hand-off makes dearer).

use sqlx::{AnyConnection, Arguments, AssertSqlSafe, Encode, Executor, Type, any::AnyArguments};

use crate::{Dialect, StorageError};

/// Statements to run in order as one request; see the module's documentation.
/// Build with [`crate::Database::statements`], then [`push`](Self::push) each statement
/// and [`bind`](Self::bind) its values.
pub struct Statements {
    dialect: Dialect,
    /// SQLite: one string and one set of values for all; servers: one each.
    parts: Vec<(String, AnyArguments)>,
    /// The first value that could not be bound, reported by `execute`.
    error: Option<String>,
}

impl std::fmt::Debug for Statements {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The values may be anything a client sent: the statements only.
        f.debug_struct("Statements")
            .field("dialect", &self.dialect)
            .field(
                "sql",
                &self.parts.iter().map(|(sql, _)| sql).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl Statements {
    pub(crate) fn new(dialect: Dialect) -> Self {
        Self {
            dialect,
            parts: Vec::new(),
            error: None,
        }
    }

    /// Adds a statement, with `?` placeholders (made right for the dialect as
    /// [`Dialect::sql`] does); its values follow with [`bind`](Self::bind).
    pub fn push(&mut self, sql: &'static str) -> &mut Self {
        let sql = self.dialect.sql(sql);
        self.push_plain(sql.as_str());
        self
    }

    /// Binds the next value of the statement pushed last.
    pub fn bind<'a, T>(&mut self, value: T) -> &mut Self
    where
        T: Encode<'a, sqlx::Any> + Type<sqlx::Any>,
    {
        let Some((_, arguments)) = self.parts.last_mut() else {
            self.error
                .get_or_insert_with(|| "a value bound before any statement".to_owned());
            return self;
        };
        if let Err(error) = arguments.add(value) {
            self.error.get_or_insert_with(|| error.to_string());
        }
        self
    }

    /// Appends SQL as it is: to the one string on SQLite, as a statement of its own on
    /// servers. Also the write's own savepoint handling, which binds no values.
    pub(crate) fn push_plain(&mut self, sql: &str) {
        match (self.dialect, self.parts.last_mut()) {
            (Dialect::Sqlite, Some((joined, _))) => {
                joined.push_str(";\n");
                joined.push_str(sql);
            }
            _ => self.parts.push((sql.to_owned(), AnyArguments::default())),
        }
    }

    /// Adds a copy of `other`'s statements and values after these (group commit sends
    /// several writes' statements as one request, and keeps each to send again alone).
    pub(crate) fn append(&mut self, other: &Statements) {
        if let Some(error) = &other.error {
            self.error.get_or_insert_with(|| error.clone());
        }
        for (sql, arguments) in &other.parts {
            match (self.dialect, self.parts.last_mut()) {
                (Dialect::Sqlite, Some((joined, mine))) => {
                    joined.push_str(";\n");
                    joined.push_str(sql);
                    mine.values.0.extend(arguments.values.0.iter().cloned());
                }
                _ => {
                    let mut copy = AnyArguments::default();
                    copy.values.0.extend(arguments.values.0.iter().cloned());
                    self.parts.push((sql.clone(), copy));
                }
            }
        }
    }

    /// The text of the first statement string (on SQLite, all of it).
    pub(crate) fn text(&self) -> &str {
        self.parts.first().map_or("", |(sql, _)| sql.as_str())
    }

    /// No statement, and no binding that failed.
    pub fn is_empty(&self) -> bool {
        self.parts.is_empty() && self.error.is_none()
    }

    /// Runs the statements in order on `conn` (pass `&mut **write.tx()?`), stopping at
    /// the first that fails.
    pub async fn execute(self, conn: &mut AnyConnection) -> Result<(), StorageError> {
        if let Some(error) = self.error {
            return Err(StorageError::Sqlx(sqlx::Error::Encode(error.into())));
        }
        for (sql, arguments) in self.parts {
            // The text is the service's own SQL (`push` takes `&'static str`) and the
            // write's savepoint names; values are always bound.
            conn.execute(sqlx::query_with(AssertSqlSafe(sql), arguments))
                .await?;
        }
        Ok(())
    }
}
