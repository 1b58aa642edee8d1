//! What the background maintenance of vaults shares with the request path, so that the domain
//! modules (protection, recovery, the data plane) depend on this small module and not on the
//! [`crate::scheduler`] that acts on it:
//!
//! * [`Maintenance`], the scheduler's shared state (the pass lock, the vaults this node must collect,
//!   when each was last pruned);
//! * marking a vault for garbage collection ([`Control::mark_vault`]: in the store, so the node that
//!   leads the scheduler collects it, whichever node marked it);
//! * the test clock's time kept in the store ([`META_TEST_CLOCK`], [`Control::resume_test_clock`]).

use crate::{Control, Result};
use chrono::{DateTime, Utc};
use std::collections::BTreeSet;
use std::sync::Mutex;

/// The meta key where a test clock's time is kept across restarts (and for the other nodes).
pub const META_TEST_CLOCK: &str = "test_clock";

/// When each vault's unreferenced data was last pruned.
pub(crate) type LastPrune = std::collections::HashMap<String, DateTime<Utc>>;

/// The scheduler's shared state: the pass lock and the vaults awaiting garbage collection.
#[derive(Debug, Default)]
pub(crate) struct Maintenance {
    pub(crate) pass: Mutex<()>,
    pub(crate) dirty: Mutex<BTreeSet<String>>,
    /// When each vault's unreferenced data was last pruned (this process's memory: a restart prunes
    /// every vault at its first pass), and the vaults whose deleted snapshots left data to prune.
    pub(crate) pruned: Mutex<(LastPrune, BTreeSet<String>)>,
}

impl Control {
    pub(crate) fn maintenance(&self) -> Result<&Maintenance> {
        Ok(&self.data()?.maintenance)
    }

    /// Marks a vault for garbage collection at the next pass of whichever node leads the scheduler
    /// (the mark is kept in the store; inside a transaction, use `Db::mark_for_gc`).
    pub(crate) fn mark_vault(&self, vault_id: &str) {
        if let Err(e) = self.store.write(|db| db.mark_for_gc(vault_id)) {
            tracing::warn!(vault = %vault_id, error = %e, "cannot mark a vault for garbage collection; this node collects it");
            self.mark_vault_here(vault_id);
        }
    }

    /// Marks a vault for this node's next pass only.
    pub(crate) fn mark_vault_here(&self, vault_id: &str) {
        if let Ok(m) = self.maintenance() {
            m.dirty
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(vault_id.to_ascii_lowercase());
        }
    }

    /// With `--test-clock`: the virtual time the store holds (a previous run's, or another node's
    /// advance), if later than the clock's. Called at start, before an advance, before a periodic
    /// pass and when a job starts, so nodes sharing a store move together.
    pub fn resume_test_clock(&self) -> Result<()> {
        if let Some(c) = self.test_clock() {
            if let Some(t) = self
                .store
                .read(|db| db.meta(META_TEST_CLOCK))?
                .and_then(|s| DateTime::parse_from_rfc3339(&s).ok())
            {
                c.move_to(t.with_timezone(&Utc));
            }
        }
        Ok(())
    }
}
