//! rsvault's metadata store: one SQLite file in the data dir.
//!
//! # Storage rules
//! - **Migrations** are numbered SQL scripts in [`migrations`]; `PRAGMA user_version` records the last one
//!   applied. Opening a store applies the missing ones in one transaction each; a store written by a newer
//!   rsvault is refused rather than misread.
//! - **Durability**: WAL journal with `synchronous = FULL`, so a commit is fsync'd before [`Store::write`]
//!   returns. Nothing is acknowledged to a client before its commit returns.
//! - **Atomicity**: every [`Store::write`] runs in one `BEGIN IMMEDIATE` transaction; if the closure
//!   returns an error nothing of it is kept. Multi-row changes (a vault and its default policies) belong in
//!   one `write`.
//! - **Locking**: one connection behind a mutex; SQLite statements here are short (no I/O beyond the DB),
//!   so callers on async threads hold it for well under a millisecond plus the commit's fsync.
//! - **Keys**: ids and names are stored as given (responses echo them) with a lower-cased key column
//!   beside them for ARM's case-insensitive lookups.

mod db;
pub mod migrations;
mod rows;

pub use db::Db;
pub use rows::*;

use rusqlite::Connection;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// A failure of the store itself (I/O, corruption, a newer schema).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("stored JSON is corrupt: {0}")]
    Json(#[from] serde_json::Error),
    #[error("the store at {path} has schema version {found}, newer than this rsvault understands ({known})")]
    TooNew { path: PathBuf, found: i64, known: i64 },
}

impl From<StoreError> for rsvault_core::Error {
    fn from(e: StoreError) -> Self {
        match &e {
            // A full disk is the operator's to fix, and the client's to retry: say so, not "internal".
            StoreError::Sqlite(s) if s.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull) => {
                tracing::error!(error = %e, "the metadata store's file system is full");
                rsvault_core::Error::InsufficientStorage(s.to_string())
            }
            _ => rsvault_core::Error::internal(e),
        }
    }
}

/// The metadata store.
#[derive(Debug)]
pub struct Store {
    conn: Mutex<Connection>,
    path: PathBuf,
}

impl Store {
    /// Opens (creating if needed) the store at `path` and brings its schema up to date.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let mut conn = Connection::open(path)?;
        // The store holds secret hashes and signing keys: owner-only, like the data dir.
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
        }
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        migrations::apply(&mut conn, path)?;
        Ok(Store {
            conn: Mutex::new(conn),
            path: path.to_path_buf(),
        })
    }

    /// The file this store lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` against a consistent view (no transaction needed for single statements).
    pub fn read<T, E: From<StoreError>>(&self, f: impl FnOnce(&Db) -> Result<T, E>) -> Result<T, E> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        f(&Db(&conn))
    }

    /// Runs `f` in one immediate transaction; commits (fsync'd) when it returns `Ok`.
    pub fn write<T, E: From<StoreError>>(&self, f: impl FnOnce(&Db) -> Result<T, E>) -> Result<T, E> {
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(StoreError::from)?;
        let out = f(&Db(&tx))?;
        tx.commit().map_err(StoreError::from)?;
        Ok(out)
    }
}
