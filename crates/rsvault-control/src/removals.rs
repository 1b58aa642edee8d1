//! Deleted vaults' repositories, removed in the background.
//!
//! * **The delete records, the sweeper removes.** A vault's DELETE (or its group's) retires the
//!   vault's `vault_secrets` row in the transaction that removes the vault's rows
//!   ([`rsvault_store::Db::retire_vault_secret`]): the sealed password is dropped and the row stays,
//!   under a key no resource has, as the durable record of the repository still to remove. The
//!   request then answers without waiting for any object-store call.
//! * **A local directory goes at once** (it is a local file-system call): right after the commit,
//!   and the record with it unless a secondary target may hold a copy.
//! * **Object-store prefixes go in the background**: [`Sweeper`], a thread started with the job
//!   engine, removes every recorded repository — its primary prefix (or directory) and its
//!   geo-redundant copy under the same `vaults/UUID` on the secondary target — and deletes the
//!   record only once both are gone. A store that refuses or does not answer leaves the record;
//!   the sweeper tries again after a pause that doubles up to [`MAX_PAUSE`]. A DELETE wakes it.
//! * **Crashes and restarts lose nothing**: the record is in the store, so whatever a crash
//!   interrupted is removed after the next start (several nodes may sweep one record: removing
//!   what is gone is no error). A vault re-created with the same name has a new row, a new
//!   password and a new prefix.

use crate::{Control, Result};
use rsvault_engine::RepoLocation;
use rsvault_store::VaultSecretRow;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// The first pause after a pass that could not remove everything.
pub const FIRST_PAUSE: Duration = Duration::from_millis(500);
/// The longest pause between passes while removals fail; also how often an idle sweeper looks for
/// records other nodes (or an earlier run) left.
pub const MAX_PAUSE: Duration = Duration::from_secs(30);

/// How long stopping waits for a removal under way.
const STOP_WAIT: Duration = Duration::from_secs(5);

/// The sweeper's wake-up signal (part of the data plane).
#[derive(Debug, Default)]
pub(crate) struct Removals {
    state: Mutex<(bool, bool)>, // (woken, stopping)
    cv: Condvar,
}

impl Removals {
    fn wake(&self) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).0 = true;
        self.cv.notify_all();
    }

    /// Waits until woken, stopped or `pause` has passed; returns false when stopping.
    fn wait(&self, pause: Duration) -> bool {
        let mut g = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if !g.0 && !g.1 {
            g = self
                .cv
                .wait_timeout_while(g, pause, |(woken, stop)| !*woken && !*stop)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        g.0 = false;
        !g.1
    }
}

/// The running sweeper thread (see the module doc); [`Sweeper::stop`] ends it.
#[derive(Debug)]
pub struct Sweeper {
    control: Arc<Control>,
    thread: Option<JoinHandle<()>>,
}

impl Sweeper {
    /// Starts the sweeper of `control`'s data plane.
    pub fn start(control: Arc<Control>) -> Result<Sweeper> {
        control.data()?;
        let c = control.clone();
        let thread = std::thread::Builder::new()
            .name("rsvault-removals".into())
            .spawn(move || c.sweep_loop())
            .map_err(|e| crate::Error::internal(format!("cannot start the removal sweeper: {e}")))?;
        Ok(Sweeper {
            control,
            thread: Some(thread),
        })
    }

    /// Stops the thread, waiting a few seconds for a removal under way; dropping it does too.
    pub fn stop(self) {}
}

impl Drop for Sweeper {
    fn drop(&mut self) {
        if let Ok(dp) = self.control.data() {
            dp.removals.state.lock().unwrap_or_else(|p| p.into_inner()).1 = true;
            dp.removals.cv.notify_all();
        }
        // A removal blocked on a store that does not answer must not hold up a shutdown: wait a
        // little, then leave the thread (its record stays; the next start removes the rest).
        if let Some(t) = self.thread.take() {
            let deadline = std::time::Instant::now() + STOP_WAIT;
            while !t.is_finished() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            match t.is_finished() {
                true => {
                    let _ = t.join();
                }
                false => tracing::warn!("the removal sweeper is still waiting for an object store; not waiting for it"),
            }
        }
    }
}

impl Control {
    fn sweep_loop(&self) {
        let Ok(dp) = self.data() else { return };
        let mut pause = FIRST_PAUSE;
        loop {
            let pending = match self.sweep_removals() {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the vault removals");
                    1
                }
            };
            let wait = match pending {
                0 => {
                    pause = FIRST_PAUSE;
                    MAX_PAUSE
                }
                _ => {
                    let p = pause;
                    pause = (pause * 2).min(MAX_PAUSE);
                    p
                }
            };
            if !dp.removals.wait(wait) {
                return;
            }
        }
    }

    /// One pass: removes every recorded repository it can. Returns how many are still pending.
    pub fn sweep_removals(&self) -> Result<usize> {
        let records = self.store.read(|db| db.orphaned_vault_secrets())?;
        let mut pending = 0;
        for r in records {
            if self.remove_repository(&r, true) {
                self.store.write(|db| db.delete_vault_secret(&r.vault_key))?;
            } else {
                pending += 1;
            }
        }
        Ok(pending)
    }

    /// What a vault's delete does after its transaction retired `row`: removes a local directory
    /// at once (and the record, when no secondary target may hold a copy) and wakes the sweeper
    /// for the rest. Makes no object-store call.
    pub(crate) fn vault_retired(&self, row: Option<VaultSecretRow>) {
        let Some(r) = row else { return };
        let Ok(dp) = self.data() else { return };
        let done = r.repo.starts_with('/') && self.remove_repository(&r, false) && dp.storage.secondary().is_none();
        if done {
            let key = rsvault_store::retired_key(&r.repo);
            if let Err(e) = self.store.write(|db| db.delete_vault_secret(&key)) {
                tracing::warn!(repo = %r.repo, error = %e, "cannot delete a vault removal record (the sweeper will)");
            }
        } else {
            dp.removals.wake();
        }
    }

    /// Removes a deleted vault's repository: its directory, or every object under its prefix, and
    /// (`objects`) its copy on the secondary target. Returns whether all of it is gone; a failure
    /// is logged, and the caller keeps the record. Without `objects`, makes no object-store call
    /// (an object-store repository is then not removed).
    fn remove_repository(&self, r: &VaultSecretRow, objects: bool) -> bool {
        let Ok(dp) = self.data() else { return false };
        let mut gone = true;
        if objects {
            // A geo-redundant vault's copy goes too (whatever the vault's settings were).
            if let Some(sec) = dp.storage.secondary() {
                let name = r.repo.rsplit('/').next().unwrap_or_default();
                if !name.is_empty() {
                    match sec.remove_all(&format!("vaults/{name}")) {
                        Ok(0) => {}
                        Ok(n) => {
                            tracing::info!(repo = %r.repo, secondary = sec.name(), objects = n, "removed a deleted vault's secondary copy")
                        }
                        Err(e) => {
                            tracing::warn!(repo = %r.repo, secondary = sec.name(), error = %e, "cannot remove a deleted vault's secondary copy yet");
                            gone = false;
                        }
                    }
                }
            }
        }
        match dp.storage.resolve(&r.repo) {
            Ok(RepoLocation::Local(dir)) => match std::fs::remove_dir_all(&dir) {
                Ok(()) => tracing::info!(repo = %r.repo, "removed a deleted vault's repository"),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(repo = %r.repo, error = %e, "cannot remove a deleted vault's repository yet");
                    gone = false;
                }
            },
            Ok(RepoLocation::Object(_)) if !objects => gone = false,
            Ok(RepoLocation::Object(o)) => match o.store.remove_all(&o.path) {
                Ok(n) => tracing::info!(repo = %r.repo, objects = n, "removed a deleted vault's repository"),
                Err(e) => {
                    tracing::warn!(repo = %r.repo, error = %e, "cannot remove a deleted vault's repository yet");
                    gone = false;
                }
            },
            Err(e) => {
                tracing::warn!(repo = %r.repo, error = %e, "cannot remove a deleted vault's repository");
                gone = false;
            }
        }
        gone
    }
}
