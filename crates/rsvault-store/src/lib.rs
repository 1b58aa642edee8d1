//! rsvault's metadata store: one SQLite file in the data dir (the default), or a PostgreSQL database
//! that several nodes share.
//!
//! Callers see one contract whatever the backend: [`Store::read`] and [`Store::write`] run a closure
//! against a [`Db`], whose typed statements are the same SQL on both ([`sql`] runs them), returning the
//! row structs. [`Store::connect`] picks the backend from a [`StoreLocation`].
//!
//! # Storage rules
//! - **Migrations** are one numbered list in [`migrations`], applied in order, each in its own
//!   transaction; SQLite records the last one in `PRAGMA user_version`, PostgreSQL in a
//!   `schema_migrations` table, applied under an advisory lock so nodes starting at once are safe. A store
//!   written by a newer rsvault is refused ([`StoreError::TooNew`]) rather than misread.
//! - **Durability**: a write has committed before [`Store::write`] returns, and nothing is acknowledged
//!   to a client before that. SQLite: WAL journal with `synchronous = FULL` (the commit is fsync'd).
//!   PostgreSQL: `COMMIT` returns after the server flushed its WAL (the server's `synchronous_commit`).
//! - **Atomicity**: every [`Store::write`] runs in one transaction; if the closure returns an error
//!   nothing of it is kept. Multi-row changes (a vault and its default policies) belong in one `write`.
//!   On PostgreSQL a failed statement aborts the transaction, so a write in which any statement failed is
//!   rolled back even if the closure carried on and returned `Ok` ([`StoreError::Aborted`]).
//! - **One writer at a time**: SQLite's `BEGIN IMMEDIATE` (one connection behind a mutex in this
//!   process, the file lock across processes); PostgreSQL's `BEGIN` then
//!   `pg_advisory_xact_lock(`[`pg::WRITE_LOCK`]`)`, across every node on the database. A write sees every
//!   write committed before it (read-modify-write in one `write` loses no update).
//! - **Reads** take no lock and never wait for the writer: SQLite reads run on a pool of read-only
//!   connections beside the writer ([`readers`], WAL), PostgreSQL reads on a pooled connection (at most
//!   [`pg::POOL_SIZE`] per store). [`Store::read`] gives its closure one snapshot (SQLite: one read
//!   transaction; PostgreSQL: `REPEATABLE READ`), for reads whose statements must agree (garbage
//!   collection's keep-set: recovery points, then active jobs). [`Store::read_one`] opens no
//!   transaction: each statement sees what was committed when it ran, at one round trip a statement on
//!   PostgreSQL, for the request path's point reads (a generation counter, a row by key, a page).
//!   Statements are short (no I/O beyond the database). The PostgreSQL client is synchronous and panics on
//!   an async task: call the store from blocking threads only.
//! - **Portable SQL**: `?N` placeholders (`$N` on PostgreSQL), `ON CONFLICT` upserts (never `INSERT OR
//!   REPLACE` / `OR IGNORE`), no bare reserved words as columns (`"end"` is quoted), a parameter that may
//!   be NULL is `CAST(? AS TEXT)` before `IS NULL`, bytes are `BLOB`/`BYTEA`.
//! - **Keys**: ids and names are stored as given (responses echo them) with a lower-cased key column
//!   beside them for ARM's case-insensitive lookups. Every PostgreSQL text column is `COLLATE "C"`, so
//!   keys sort byte by byte on both backends and keyset paging (`> after ORDER BY key`) walks the same
//!   pages.
//! - **Timestamps** are RFC 3339 text with nanoseconds and `Z` (fixed width: they sort as text), on both
//!   backends, so nothing loses precision.
//! - **Credentials**: a PostgreSQL URL's password is never shown: [`StoreLocation`]'s `Display` and
//!   `Debug` redact it, and so do errors.

mod db;
pub mod migrations;
pub mod pg;
pub mod readers;
mod rows;
pub(crate) mod sql;

pub use db::{retired_key, Db};
pub use rows::*;

use rusqlite::Connection;
use std::cell::{Cell, RefCell};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// A failure of the store itself (I/O, corruption, a newer schema, the database unreachable).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("postgres: {0}")]
    Postgres(#[from] postgres::Error),
    #[error("stored JSON is corrupt: {0}")]
    Json(#[from] serde_json::Error),
    #[error("stored timestamp {value:?} is corrupt: {source}")]
    Timestamp { value: String, source: chrono::ParseError },
    #[error("the store at {location} has schema version {found}, newer than this rsvault understands ({known})")]
    TooNew { location: String, found: i64, known: i64 },
    #[error("a statement failed inside the transaction; nothing of it was kept")]
    Aborted,
    #[error("no database connection became free within {0:?}")]
    Busy(std::time::Duration),
}

impl From<StoreError> for rsvault_core::Error {
    fn from(e: StoreError) -> Self {
        let disk_full = match &e {
            StoreError::Sqlite(s) => s.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull),
            StoreError::Postgres(p) => p.code() == Some(&postgres::error::SqlState::DISK_FULL),
            _ => false,
        };
        if disk_full {
            // A full disk is the operator's to fix, and the client's to retry: say so, not "internal".
            tracing::error!(error = %e, "the metadata store's file system is full");
            return rsvault_core::Error::InsufficientStorage(e.to_string());
        }
        rsvault_core::Error::internal(e)
    }
}

/// Where a store lives: a SQLite file, or a PostgreSQL database (`postgres://` or `postgresql://` URL).
///
/// `Display` and `Debug` redact the URL's password, so a location can be logged.
#[derive(Clone, PartialEq, Eq)]
pub enum StoreLocation {
    Sqlite(PathBuf),
    Postgres(String),
}

impl StoreLocation {
    /// A `postgres://` / `postgresql://` URL is PostgreSQL; anything else is a SQLite file path.
    pub fn parse(s: &str) -> StoreLocation {
        let lower = s.trim_start().to_ascii_lowercase();
        if lower.starts_with("postgres://") || lower.starts_with("postgresql://") {
            StoreLocation::Postgres(s.trim().to_string())
        } else {
            StoreLocation::Sqlite(PathBuf::from(s))
        }
    }

    /// The location with any password replaced by `***`.
    pub fn redacted(&self) -> String {
        match self {
            StoreLocation::Sqlite(p) => p.display().to_string(),
            StoreLocation::Postgres(url) => redact_url(url),
        }
    }
}

impl std::fmt::Display for StoreLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl std::fmt::Debug for StoreLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreLocation::Sqlite(p) => f.debug_tuple("Sqlite").field(p).finish(),
            StoreLocation::Postgres(_) => f.debug_tuple("Postgres").field(&self.redacted()).finish(),
        }
    }
}

/// `scheme://user:secret@host/db?password=secret` → `scheme://user:***@host/db?password=***`.
fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return "***".into();
    };
    let (head, rest) = url.split_at(scheme_end);
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rfind('@') {
        Some(at) => match authority[..at].find(':') {
            Some(colon) => format!("{}:***{}", &authority[..colon], &authority[at..]),
            None => authority.to_string(),
        },
        None => authority.to_string(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let q: Vec<String> = query
                .split('&')
                .map(|kv| match kv.split_once('=') {
                    Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                    _ => kv.to_string(),
                })
                .collect();
            format!("{path}?{}", q.join("&"))
        }
        None => tail.to_string(),
    };
    format!("{head}{authority}{tail}")
}

/// The metadata store.
#[derive(Debug)]
pub struct Store {
    backend: Backend,
    location: StoreLocation,
}

#[derive(Debug)]
enum Backend {
    Sqlite {
        writer: Mutex<Connection>,
        readers: readers::Readers,
    },
    Postgres(Box<pg::Pool>),
}

impl Store {
    /// Opens (creating if needed) the SQLite store at `path` and brings its schema up to date.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        Store::connect(&StoreLocation::Sqlite(path.to_path_buf()))
    }

    /// Opens the store a path or `postgres://` URL names (see [`StoreLocation::parse`]).
    pub fn open_url(location: &str) -> Result<Store, StoreError> {
        Store::connect(&StoreLocation::parse(location))
    }

    /// Opens the store at `location`, creating its schema or bringing it up to date.
    pub fn connect(location: &StoreLocation) -> Result<Store, StoreError> {
        let backend = match location {
            StoreLocation::Sqlite(path) => Backend::Sqlite {
                writer: Mutex::new(open_sqlite(path)?),
                readers: readers::Readers::new(path),
            },
            StoreLocation::Postgres(url) => {
                let pool = pg::Pool::new(url, pg::POOL_SIZE)?;
                let mut c = pool.connect()?;
                migrations::apply_postgres(&mut c, &location.redacted())?;
                Backend::Postgres(Box::new(pool))
            }
        };
        Ok(Store {
            backend,
            location: location.clone(),
        })
    }

    /// Where this store lives.
    pub fn location(&self) -> &StoreLocation {
        &self.location
    }

    /// The file this store lives in (SQLite only).
    pub fn path(&self) -> Option<&Path> {
        match &self.location {
            StoreLocation::Sqlite(p) => Some(p),
            StoreLocation::Postgres(_) => None,
        }
    }

    /// Runs `f` against one consistent view of the store: every statement sees the same snapshot (SQLite:
    /// one read transaction; PostgreSQL: `REPEATABLE READ`).
    pub fn read<T, E: From<StoreError>>(&self, f: impl FnOnce(&Db) -> Result<T, E>) -> Result<T, E> {
        match &self.backend {
            Backend::Sqlite { readers, .. } => {
                let conn = readers.get()?;
                // One snapshot for every statement (WAL: a read transaction sees the commits made before
                // its first statement). The guard ends it; a panic leaves it open and the reader is dropped.
                conn.execute_batch("BEGIN DEFERRED").map_err(StoreError::from)?;
                let out = f(&Db(sql::Conn::Sqlite(&conn)));
                conn.execute_batch(if out.is_ok() { "COMMIT" } else { "ROLLBACK" })
                    .map_err(StoreError::from)?;
                out
            }
            // One snapshot for every statement of the read (REPEATABLE READ), as SQLite's read transaction
            // gives: a read of recovery points and then of running jobs must not see a backup's commit
            // fall between them (garbage collection's keep-set would miss its point).
            Backend::Postgres(pool) => {
                let mut c = pool.get()?;
                c.clean = false; // until COMMIT or ROLLBACK has gone through
                c.client()
                    .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
                    .map_err(StoreError::from)?;
                let out = f(&pg_db(c.conn()));
                let end = if out.is_ok() { "COMMIT" } else { "ROLLBACK" };
                if c.client().batch_execute(end).is_ok() {
                    c.clean = true;
                }
                out
            }
        }
    }

    /// Runs `f` outside any transaction: each statement sees what was committed when it ran, and no two
    /// need agree. For reads of one statement (a row by key, a page, a generation counter) or whose
    /// statements are independent; on PostgreSQL it saves the `BEGIN` and `COMMIT` round trips of
    /// [`Store::read`].
    pub fn read_one<T, E: From<StoreError>>(&self, f: impl FnOnce(&Db) -> Result<T, E>) -> Result<T, E> {
        match &self.backend {
            Backend::Sqlite { readers, .. } => {
                let conn = readers.get()?;
                f(&Db(sql::Conn::Sqlite(&conn)))
            }
            Backend::Postgres(pool) => {
                let mut c = pool.get()?;
                f(&pg_db(c.conn()))
            }
        }
    }

    /// Runs `f` in one write transaction (one writer at a time); commits when it returns `Ok`, and has
    /// committed (durably) when this returns.
    pub fn write<T, E: From<StoreError>>(&self, f: impl FnOnce(&Db) -> Result<T, E>) -> Result<T, E> {
        match &self.backend {
            Backend::Sqlite { writer, .. } => {
                let mut conn = writer.lock().unwrap_or_else(|p| p.into_inner());
                let tx = conn
                    .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                    .map_err(StoreError::from)?;
                let out = f(&Db(sql::Conn::Sqlite(&tx)))?;
                tx.commit().map_err(StoreError::from)?;
                Ok(out)
            }
            Backend::Postgres(pool) => {
                let mut c = pool.get()?;
                c.clean = false; // until COMMIT or ROLLBACK has gone through
                c.client()
                    .batch_execute(&format!("BEGIN; SELECT pg_advisory_xact_lock({})", pg::WRITE_LOCK))
                    .map_err(StoreError::from)?;
                let (out, failed) = {
                    let db = pg_db(c.conn());
                    let out = f(&db);
                    (out, db.0.failed())
                };
                match out {
                    Ok(v) if !failed => {
                        c.client().batch_execute("COMMIT").map_err(StoreError::from)?;
                        c.clean = true;
                        Ok(v)
                    }
                    other => {
                        if c.client().batch_execute("ROLLBACK").is_ok() {
                            c.clean = true;
                        }
                        match other {
                            Ok(_) => Err(StoreError::Aborted.into()),
                            Err(e) => Err(e),
                        }
                    }
                }
            }
        }
    }
}

fn pg_db(conn: &mut pg::PgConn) -> Db<'_> {
    Db(sql::Conn::Postgres {
        client: RefCell::new(conn),
        failed: Cell::new(false),
    })
}

fn open_sqlite(path: &Path) -> Result<Connection, StoreError> {
    let mut conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    // The store holds secret hashes and signing keys: owner-only, like the data dir.
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
    }
    // Switching a new file to WAL answers SQLITE_BUSY without waiting while another process does the
    // same (two nodes' first start): retry it within the busy timeout.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match conn.pragma_update(None, "journal_mode", "WAL") {
            Err(e)
                if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy)
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            other => break other?,
        }
    }
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    migrations::apply_sqlite(&mut conn, &path.display().to_string())?;
    Ok(conn)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_parse_and_never_show_a_password() {
        assert_eq!(
            StoreLocation::parse("/var/lib/rsvault/meta.db"),
            StoreLocation::Sqlite("/var/lib/rsvault/meta.db".into())
        );
        let l = StoreLocation::parse("postgres://rsvault:s3cr%40t@db.example:5432/rsvault?sslmode=disable");
        assert!(matches!(l, StoreLocation::Postgres(_)));
        assert_eq!(
            l.to_string(),
            "postgres://rsvault:***@db.example:5432/rsvault?sslmode=disable"
        );
        assert!(!format!("{l:?}").contains("s3cr"));
        let q = StoreLocation::parse("postgresql://db/rsvault?user=u&password=hunter2&application_name=x");
        assert_eq!(
            q.to_string(),
            "postgresql://db/rsvault?user=u&password=***&application_name=x"
        );
        assert_eq!(
            StoreLocation::parse("POSTGRES://u@h/d").to_string(),
            "POSTGRES://u@h/d",
            "no password, nothing to hide"
        );
    }
}
