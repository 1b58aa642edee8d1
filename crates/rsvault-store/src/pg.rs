//! PostgreSQL connections: a small blocking pool, and the one-writer transaction.
//!
//! The synchronous `postgres` client runs each connection on a runtime of its own and panics when called
//! on an async task, so the store is only ever called from blocking threads (the request pipeline's
//! `spawn_blocking`, the job workers, the scheduler).
//!
//! A connection goes back to the pool only when it is idle and healthy: one that a write left in a
//! transaction (a panic in the caller's closure, a failed `ROLLBACK`) or that the server closed is
//! dropped, which ends its session and so rolls back whatever it held.
//!
//! Each connection keeps the statements it prepared ([`PgConn`]), so a statement run again costs one
//! round trip (bind and execute) rather than two (parse, then bind and execute).

use crate::StoreError;
use std::collections::HashMap;
use std::sync::{Condvar, Mutex};
use std::time::Duration;

/// The advisory lock every write transaction takes first (`rsvault` and 2, as bytes): PostgreSQL writes
/// are serialised as SQLite's `BEGIN IMMEDIATE` serialises them, across every node on the database.
pub const WRITE_LOCK: i64 = 0x7273_7661_756c_7402;

/// How many connections one `Store` opens at most.
pub const POOL_SIZE: usize = 16;

/// How long a caller waits for a free connection before the store reports itself unavailable.
const POOL_WAIT: Duration = Duration::from_secs(30);

pub(crate) struct Pool {
    config: postgres::Config,
    state: Mutex<State>,
    freed: Condvar,
    max: usize,
}

struct State {
    idle: Vec<PgConn>,
    open: usize,
}

/// How many prepared statements a connection keeps (the store's statements are a fixed set, well below).
const MAX_STATEMENTS: usize = 256;

/// A pooled connection and the statements it has prepared, by SQL text.
pub(crate) struct PgConn {
    pub(crate) client: postgres::Client,
    statements: HashMap<String, postgres::Statement>,
}

impl PgConn {
    fn new(client: postgres::Client) -> PgConn {
        PgConn {
            client,
            statements: HashMap::new(),
        }
    }

    /// `sql` prepared on this connection (once; later calls reuse it).
    pub(crate) fn prepared(&mut self, sql: &str) -> Result<postgres::Statement, postgres::Error> {
        if let Some(st) = self.statements.get(sql) {
            return Ok(st.clone());
        }
        let st = self.client.prepare(sql)?;
        if self.statements.len() >= MAX_STATEMENTS {
            self.statements.clear();
        }
        self.statements.insert(sql.to_string(), st.clone());
        Ok(st)
    }

    /// Forgets a statement whose execution failed (a schema change may have made its plan stale).
    pub(crate) fn forget(&mut self, sql: &str) {
        self.statements.remove(sql);
    }
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").field("max", &self.max).finish_non_exhaustive()
    }
}

impl Pool {
    /// A pool for `url` (a `postgres://` URL, credentials included); connects nothing yet.
    pub(crate) fn new(url: &str, max: usize) -> Result<Pool, StoreError> {
        let mut config: postgres::Config = url.parse()?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        if config.get_application_name().is_none() {
            config.application_name("rsvault");
        }
        Ok(Pool {
            config,
            state: Mutex::new(State {
                idle: Vec::new(),
                open: 0,
            }),
            freed: Condvar::new(),
            max: max.max(1),
        })
    }

    /// A connection of its own, outside the pool (migrations hold a session lock on it, then drop it).
    pub(crate) fn connect(&self) -> Result<postgres::Client, StoreError> {
        // TLS to the database is not built yet: `sslmode=require` URLs fail here rather than go plain.
        Ok(self.config.connect(postgres::NoTls)?)
    }

    /// An idle connection, a new one while fewer than `max` are open, or the next one freed.
    pub(crate) fn get(&self) -> Result<Pooled<'_>, StoreError> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(c) = st.idle.pop() {
                if c.client.is_closed() {
                    st.open -= 1;
                    continue;
                }
                return Ok(Pooled {
                    pool: self,
                    client: Some(c),
                    clean: true,
                });
            }
            if st.open < self.max {
                st.open += 1;
                drop(st);
                return match self.connect() {
                    Ok(c) => Ok(Pooled {
                        pool: self,
                        client: Some(PgConn::new(c)),
                        clean: true,
                    }),
                    Err(e) => {
                        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
                        st.open -= 1;
                        self.freed.notify_one();
                        Err(e)
                    }
                };
            }
            let (next, timeout) = self
                .freed
                .wait_timeout(st, POOL_WAIT)
                .unwrap_or_else(|p| p.into_inner());
            st = next;
            if timeout.timed_out() && st.idle.is_empty() && st.open >= self.max {
                return Err(StoreError::Busy(POOL_WAIT));
            }
        }
    }
}

impl Drop for Pool {
    /// Closes the idle connections on a thread of their own: closing blocks on the client's runtime,
    /// which panics on an async task (where the last `Arc<Store>` may well be dropped).
    fn drop(&mut self) {
        let st = self.state.get_mut().unwrap_or_else(|p| p.into_inner());
        let idle = std::mem::take(&mut st.idle);
        if !idle.is_empty() {
            let _ = std::thread::spawn(move || drop(idle)).join();
        }
    }
}

/// A connection taken from the pool; returned to it on drop when `clean`.
pub(crate) struct Pooled<'p> {
    pool: &'p Pool,
    client: Option<PgConn>,
    /// Idle, outside any transaction: fit for the next caller.
    pub(crate) clean: bool,
}

impl Pooled<'_> {
    pub(crate) fn client(&mut self) -> &mut postgres::Client {
        &mut self.conn().client
    }

    pub(crate) fn conn(&mut self) -> &mut PgConn {
        self.client.as_mut().expect("present until drop")
    }
}

impl Drop for Pooled<'_> {
    fn drop(&mut self) {
        let Some(c) = self.client.take() else { return };
        let mut st = self.pool.state.lock().unwrap_or_else(|p| p.into_inner());
        if self.clean && !c.client.is_closed() {
            st.idle.push(c);
        } else {
            st.open -= 1;
            drop(st);
            drop(c); // ends the session (and its transaction) outside the pool's lock
        }
        self.pool.freed.notify_one();
    }
}
