//! Wire bodies kept per stored row: the JSON rsvault answered for a settled row, reused while the row
//! reads the same.
//!
//! A settled job (it has ended, no task of it is still running, nothing about it can be cancelled)
//! answers a function of its stored row alone: its `duration` is end − start, not end − now. So the
//! text rendered for it once can be sent again as long as the row is unchanged. A lookup hands in
//! the row as just read (its stored body text and the columns the rendering reads) and gets the
//! rendering back only if every one of them is equal to what it was rendered from; a row written since,
//! on this node or any other, reads differently and misses. Nothing is ever invalidated by hand, so no
//! write path can forget to.
//!
//! *Architecture Invariant:* an entry is used only when the row it was rendered from is byte-for-byte
//! the row just read; rows whose answer depends on the clock are never kept.
//!
//! The cache is bounded by the bytes it keeps (stored text plus rendering); when an insert would pass
//! the bound it is emptied first — a listing refills what it touches in one pass, and the hot rows come
//! back at once.

use rsvault_store::JobRow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// What a rendering was made from: the row's columns that its answer reads, and its stored body text.
#[derive(Debug, PartialEq, Eq)]
struct Source {
    start: chrono::DateTime<chrono::Utc>,
    end: Option<chrono::DateTime<chrono::Utc>>,
    status: String,
    phase: Option<String>,
    text: Box<str>,
}

impl Source {
    fn matches(&self, row: &JobRow, text: &str) -> bool {
        self.start == row.start
            && self.end == row.end
            && self.status == row.status
            && self.phase == row.phase
            && *self.text == *text
    }
}

#[derive(Debug, Default)]
struct Inner {
    entries: HashMap<String, (Source, Arc<str>)>,
    bytes: usize,
}

/// Settled rows' renderings by row id (see the module doc).
#[derive(Debug)]
pub struct WireCache {
    inner: Mutex<Inner>,
    cap_bytes: usize,
}

impl WireCache {
    /// A cache that keeps at most about `cap_bytes` of text.
    pub fn new(cap_bytes: usize) -> WireCache {
        WireCache {
            inner: Mutex::new(Inner::default()),
            cap_bytes,
        }
    }

    /// The rendering of `row` (whose body was read as `text`), if it was rendered from exactly this.
    pub fn get(&self, row: &JobRow, text: &str) -> Option<Arc<str>> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        match inner.entries.get(&row.id) {
            Some((src, wire)) if src.matches(row, text) => Some(wire.clone()),
            _ => None,
        }
    }

    /// Keeps `wire` as the rendering of `row` read as `text`. The caller vouches that the rendering
    /// does not depend on the clock (the row is settled).
    pub fn put(&self, row: &JobRow, text: String, wire: Arc<str>) {
        let size = row.id.len() + text.len() + wire.len();
        if size > self.cap_bytes / 4 {
            return;
        }
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if inner.bytes + size > self.cap_bytes {
            inner.entries.clear();
            inner.bytes = 0;
        }
        let src = Source {
            start: row.start,
            end: row.end,
            status: row.status.clone(),
            phase: row.phase.clone(),
            text: text.into_boxed_str(),
        };
        if let Some((old, w)) = inner.entries.insert(row.id.clone(), (src, wire)) {
            inner.bytes -= row.id.len() + old.text.len() + w.len();
        }
        inner.bytes += size;
    }

    /// How many renderings it keeps and their bytes (for tests and operators).
    pub fn usage(&self) -> (usize, usize) {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        (inner.entries.len(), inner.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn row(id: &str, status: &str, end: Option<i64>) -> JobRow {
        JobRow {
            id: id.into(),
            vault_key: "v".into(),
            name: id.into(),
            operation: "Backup".into(),
            status: status.into(),
            backup_management_type: "AzureIaasVM".into(),
            entity: "vm".into(),
            start: chrono::Utc.timestamp_opt(1_000, 0).unwrap(),
            end: end.map(|s| chrono::Utc.timestamp_opt(s, 0).unwrap()),
            body: serde_json::Value::Null,
            phase: Some("done".into()),
            work: None,
        }
    }

    /// A rendering is reused only for the very row it came from: any column or byte of text that
    /// differs misses.
    #[test]
    fn wire_cache_answers_only_for_an_unchanged_row() {
        let c = WireCache::new(1 << 20);
        let r = row("j1", "Completed", Some(2_000));
        c.put(&r, r#"{"a":1}"#.into(), Arc::from("W1"));
        assert_eq!(c.get(&r, r#"{"a":1}"#).as_deref(), Some("W1"));
        assert_eq!(c.get(&r, r#"{"a":2}"#), None, "other text");
        assert_eq!(
            c.get(&row("j1", "Failed", Some(2_000)), r#"{"a":1}"#),
            None,
            "other status"
        );
        assert_eq!(
            c.get(&row("j1", "Completed", Some(2_001)), r#"{"a":1}"#),
            None,
            "other end"
        );
        assert_eq!(c.get(&row("j1", "Completed", None), r#"{"a":1}"#), None, "no end");
        let mut p = r.clone();
        p.phase = Some("running".into());
        assert_eq!(c.get(&p, r#"{"a":1}"#), None, "other phase");
        assert_eq!(
            c.get(&row("j2", "Completed", Some(2_000)), r#"{"a":1}"#),
            None,
            "other id"
        );
        c.put(&r, r#"{"a":2}"#.into(), Arc::from("W2"));
        assert_eq!(c.get(&r, r#"{"a":2}"#).as_deref(), Some("W2"));
        assert_eq!(c.usage().0, 1);
    }

    #[test]
    fn wire_cache_stays_within_its_bound() {
        let c = WireCache::new(4_000);
        for i in 0..1_000 {
            let r = row(&format!("job-{i}"), "Completed", Some(2_000));
            c.put(&r, "x".repeat(50), Arc::from("y".repeat(50)));
            assert!(c.usage().1 <= 4_000, "{:?}", c.usage());
        }
        let last = row("job-999", "Completed", Some(2_000));
        assert!(c.get(&last, &"x".repeat(50)).is_some());
        // A row bigger than a quarter of the bound is not kept at all.
        c.put(&last, "x".repeat(2_000), Arc::from("y"));
        assert!(c.get(&last, &"x".repeat(2_000)).is_none());
    }
}
