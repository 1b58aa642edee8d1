//! The statement layer under [`Db`](crate::Db): one SQL text runs on either backend.
//!
//! Statements are written once, in the SQL both dialects share, with SQLite's numbered placeholders
//! (`?1`, `?2` …); on PostgreSQL they become `$1`, `$2` … ([`pg_placeholders`]). Parameters are [`P`]
//! values (text, null text, integer, bytes), rows are read through [`SqlRow`], so a statement and its row
//! mapping exist once. What the shared dialect rules out is listed in the crate's storage rules.

use crate::StoreError;
use chrono::{DateTime, Utc};
use std::borrow::Cow;
use std::cell::{Cell, RefCell};

type R<T> = Result<T, StoreError>;

/// A connection (or an open transaction) of either backend.
pub(crate) enum Conn<'a> {
    Sqlite(&'a rusqlite::Connection),
    Postgres {
        client: RefCell<&'a mut crate::pg::PgConn>,
        /// A statement failed: PostgreSQL has aborted the transaction, so it must not be committed
        /// even if the caller carried on.
        failed: Cell<bool>,
    },
}

/// One statement parameter.
#[derive(Debug, Clone)]
pub(crate) enum P {
    Text(String),
    /// A NULL of a text column (every nullable parameter is text).
    Null,
    Int(i64),
    Bytes(Vec<u8>),
}

impl From<String> for P {
    fn from(s: String) -> P {
        P::Text(s)
    }
}
impl From<&String> for P {
    fn from(s: &String) -> P {
        P::Text(s.clone())
    }
}
impl From<&str> for P {
    fn from(s: &str) -> P {
        P::Text(s.to_string())
    }
}
impl From<Option<String>> for P {
    fn from(s: Option<String>) -> P {
        s.map_or(P::Null, P::Text)
    }
}
impl From<&Option<String>> for P {
    fn from(s: &Option<String>) -> P {
        s.clone().into()
    }
}
impl From<i64> for P {
    fn from(i: i64) -> P {
        P::Int(i)
    }
}
impl From<&Vec<u8>> for P {
    fn from(b: &Vec<u8>) -> P {
        P::Bytes(b.clone())
    }
}

/// `ps![a, b, …]`: a parameter list.
macro_rules! ps {
    ($($p:expr),* $(,)?) => {
        &[$($crate::sql::P::from($p)),*] as &[$crate::sql::P]
    };
}
pub(crate) use ps;

impl rusqlite::ToSql for P {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, Value, ValueRef};
        Ok(match self {
            P::Text(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
            P::Null => ToSqlOutput::Owned(Value::Null),
            P::Int(i) => ToSqlOutput::Owned(Value::Integer(*i)),
            P::Bytes(b) => ToSqlOutput::Borrowed(ValueRef::Blob(b)),
        })
    }
}

static NULL_TEXT: Option<String> = None;

impl P {
    fn pg(&self) -> &(dyn postgres::types::ToSql + Sync) {
        match self {
            P::Text(s) => s,
            P::Null => &NULL_TEXT,
            P::Int(i) => i,
            P::Bytes(b) => b,
        }
    }
}

/// SQLite's `?N` placeholders as PostgreSQL's `$N` (the statements here hold no `?` in literals).
pub(crate) fn pg_placeholders(sql: &str) -> Cow<'_, str> {
    if !sql.contains('?') {
        return Cow::Borrowed(sql);
    }
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '?' && chars.peek().is_some_and(|n| n.is_ascii_digit()) {
            out.push('$');
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// A result row of either backend.
pub(crate) enum SqlRow<'r> {
    Sqlite(&'r rusqlite::Row<'r>),
    Postgres(&'r postgres::Row),
}

impl SqlRow<'_> {
    fn get<T>(&self, i: usize) -> R<T>
    where
        T: rusqlite::types::FromSql + for<'a> postgres::types::FromSql<'a>,
    {
        match self {
            SqlRow::Sqlite(r) => Ok(r.get(i)?),
            SqlRow::Postgres(r) => Ok(r.try_get(i)?),
        }
    }

    pub fn text(&self, i: usize) -> R<String> {
        self.get(i)
    }

    pub fn opt_text(&self, i: usize) -> R<Option<String>> {
        self.get(i)
    }

    pub fn int(&self, i: usize) -> R<i64> {
        self.get(i)
    }

    pub fn bytes(&self, i: usize) -> R<Vec<u8>> {
        self.get(i)
    }

    pub fn time(&self, i: usize) -> R<DateTime<Utc>> {
        parse_ts(self.text(i)?)
    }

    pub fn opt_time(&self, i: usize) -> R<Option<DateTime<Utc>>> {
        self.opt_text(i)?.map(parse_ts).transpose()
    }

    pub fn json(&self, i: usize) -> R<serde_json::Value> {
        Ok(serde_json::from_str(&self.text(i)?)?)
    }

    pub fn opt_json(&self, i: usize) -> R<Option<serde_json::Value>> {
        Ok(self.opt_text(i)?.map(|s| serde_json::from_str(&s)).transpose()?)
    }
}

/// Timestamps are stored as RFC 3339 text with nanoseconds and `Z`: fixed width, so they sort as text
/// and keep full precision on both backends.
pub(crate) fn ts(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

pub(crate) fn parse_ts(s: String) -> R<DateTime<Utc>> {
    match DateTime::parse_from_rfc3339(&s) {
        Ok(t) => Ok(t.with_timezone(&Utc)),
        Err(source) => Err(StoreError::Timestamp { value: s, source }),
    }
}

/// Runs `sql` on a PostgreSQL connection through its prepared form (prepared once per connection); a
/// statement that fails is forgotten, so a stale plan is prepared afresh next time.
fn pg_run<T>(
    conn: &mut crate::pg::PgConn,
    sql: &str,
    params: &[P],
    run: impl FnOnce(
        &mut postgres::Client,
        &postgres::Statement,
        &[&(dyn postgres::types::ToSql + Sync)],
    ) -> Result<T, postgres::Error>,
) -> Result<T, postgres::Error> {
    let text = pg_placeholders(sql);
    let st = conn.prepared(&text)?;
    let p: Vec<_> = params.iter().map(P::pg).collect();
    let out = run(&mut conn.client, &st, &p);
    if out.is_err() {
        conn.forget(&text);
    }
    out
}

impl Conn<'_> {
    /// Notes a PostgreSQL failure, so the transaction it aborted is never committed.
    fn pg_result<T>(&self, r: Result<T, postgres::Error>) -> R<T> {
        if let (Err(_), Conn::Postgres { failed, .. }) = (&r, self) {
            failed.set(true);
        }
        Ok(r?)
    }

    /// Whether a statement failed (PostgreSQL: the transaction is aborted).
    pub(crate) fn failed(&self) -> bool {
        match self {
            Conn::Sqlite(_) => false,
            Conn::Postgres { failed, .. } => failed.get(),
        }
    }

    /// Runs a statement; returns how many rows it changed.
    pub fn exec(&self, sql: &str, params: &[P]) -> R<usize> {
        match self {
            Conn::Sqlite(c) => Ok(c
                .prepare_cached(sql)?
                .execute(rusqlite::params_from_iter(params.iter()))?),
            Conn::Postgres { client, .. } => {
                let r = pg_run(&mut client.borrow_mut(), sql, params, |c, st, p| c.execute(st, p));
                Ok(self.pg_result(r)? as usize)
            }
        }
    }

    /// Runs a query; maps every row.
    pub fn rows<T>(&self, sql: &str, params: &[P], mut f: impl FnMut(&SqlRow) -> R<T>) -> R<Vec<T>> {
        match self {
            Conn::Sqlite(c) => {
                let mut st = c.prepare_cached(sql)?;
                let mut rows = st.query(rusqlite::params_from_iter(params.iter()))?;
                let mut out = Vec::new();
                while let Some(r) = rows.next()? {
                    out.push(f(&SqlRow::Sqlite(r))?);
                }
                Ok(out)
            }
            Conn::Postgres { client, .. } => {
                let r = pg_run(&mut client.borrow_mut(), sql, params, |c, st, p| c.query(st, p));
                self.pg_result(r)?.iter().map(|r| f(&SqlRow::Postgres(r))).collect()
            }
        }
    }

    /// Runs a query; maps its first row, if any.
    pub fn row<T>(&self, sql: &str, params: &[P], f: impl FnOnce(&SqlRow) -> R<T>) -> R<Option<T>> {
        match self {
            Conn::Sqlite(c) => {
                let mut st = c.prepare_cached(sql)?;
                let mut rows = st.query(rusqlite::params_from_iter(params.iter()))?;
                match rows.next()? {
                    Some(r) => Ok(Some(f(&SqlRow::Sqlite(r))?)),
                    None => Ok(None),
                }
            }
            Conn::Postgres { client, .. } => {
                let r = pg_run(&mut client.borrow_mut(), sql, params, |c, st, p| c.query(st, p));
                match self.pg_result(r)?.first() {
                    Some(r) => Ok(Some(f(&SqlRow::Postgres(r))?)),
                    None => Ok(None),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_numbered_for_postgres() {
        assert_eq!(
            pg_placeholders("SELECT a FROM t WHERE b = ?1 AND (CAST(?2 AS TEXT) IS NULL OR c = ?2) LIMIT ?10"),
            "SELECT a FROM t WHERE b = $1 AND (CAST($2 AS TEXT) IS NULL OR c = $2) LIMIT $10"
        );
        assert!(matches!(pg_placeholders("SELECT 1"), Cow::Borrowed(_)));
    }

    #[test]
    fn timestamps_keep_nanoseconds_and_sort_as_text() {
        let a: DateTime<Utc> = "2026-03-01T02:00:00.000000001Z".parse().unwrap();
        let b: DateTime<Utc> = "2026-03-01T02:00:00.1Z".parse().unwrap();
        assert_eq!(ts(&a), "2026-03-01T02:00:00.000000001Z");
        assert_eq!(parse_ts(ts(&a)).unwrap(), a);
        assert!(ts(&a) < ts(&b));
        assert!(matches!(
            parse_ts("yesterday".into()),
            Err(StoreError::Timestamp { .. })
        ));
    }
}
