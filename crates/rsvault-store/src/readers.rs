//! SQLite's read connections: a small pool beside the one writer, so reads never wait for the writer's
//! mutex (or for one another).
//!
//! The store's file is in WAL mode, where readers and the one writer do not block each other: a read
//! transaction sees the last commit made before it began, whichever connection made it. Each reader is
//! opened `query_only` (a statement that would write fails) and keeps its own prepared statements.
//! At most [`MAX_READERS`] are open at once; a caller beyond that waits for one to come back.

use crate::StoreError;
use rusqlite::Connection;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};

/// How many read connections one SQLite store opens at most.
pub const MAX_READERS: usize = 8;
/// How much of the store's file each reader maps (`PRAGMA mmap_size`); pages past it are read.
const READER_MMAP_BYTES: i64 = 256 << 20;

pub(crate) struct Readers {
    path: PathBuf,
    state: Mutex<State>,
    freed: Condvar,
}

struct State {
    idle: Vec<Connection>,
    open: usize,
}

impl std::fmt::Debug for Readers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Readers")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Readers {
    /// A pool over the SQLite file at `path` (already opened, in WAL mode, by the writer); opens nothing yet.
    pub(crate) fn new(path: &Path) -> Readers {
        Readers {
            path: path.to_path_buf(),
            state: Mutex::new(State {
                idle: Vec::new(),
                open: 0,
            }),
            freed: Condvar::new(),
        }
    }

    fn open(&self) -> Result<Connection, StoreError> {
        let conn = Connection::open(&self.path)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        conn.pragma_update(None, "query_only", "ON")?;
        // Pages of the file are read through a shared mapping instead of being copied into each
        // reader's own cache by `read` (lists of large rows spent ~7 % of their time copying pages).
        conn.pragma_update(None, "mmap_size", READER_MMAP_BYTES)?;
        conn.set_prepared_statement_cache_capacity(64);
        Ok(conn)
    }

    /// An idle reader, a new one while fewer than [`MAX_READERS`] are open, or the next one returned.
    pub(crate) fn get(&self) -> Result<Reader<'_>, StoreError> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(conn) = st.idle.pop() {
                return Ok(Reader {
                    pool: self,
                    conn: Some(conn),
                });
            }
            if st.open < MAX_READERS {
                st.open += 1;
                drop(st);
                return match self.open() {
                    Ok(conn) => Ok(Reader {
                        pool: self,
                        conn: Some(conn),
                    }),
                    Err(e) => {
                        self.state.lock().unwrap_or_else(|p| p.into_inner()).open -= 1;
                        self.freed.notify_one();
                        Err(e)
                    }
                };
            }
            st = self.freed.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// A read connection taken from the pool; returned on drop (dropped instead if left in a transaction).
pub(crate) struct Reader<'p> {
    pool: &'p Readers,
    conn: Option<Connection>,
}

impl std::ops::Deref for Reader<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        self.conn.as_ref().expect("present until drop")
    }
}

impl Drop for Reader<'_> {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else { return };
        let mut st = self.pool.state.lock().unwrap_or_else(|p| p.into_inner());
        if conn.is_autocommit() {
            st.idle.push(conn);
        } else {
            st.open -= 1;
            drop(st);
            drop(conn); // closing rolls back the read transaction a panic left open
        }
        self.pool.freed.notify_one();
    }
}
