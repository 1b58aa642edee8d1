//! rsvault's vault engine: the data plane behind "Take Snapshot", "Transfer data to vault" and
//! restore.
//!
//! A vault is one repository in the **restic repository format** (v2, compressed), written
//! through `rustic_core` (pinned `=0.13.0`), so stock `restic` (0.14 or later) can list and
//! restore every recovery point with the vault's password. The job layer talks to the
//! object-safe [`Engine`] trait only; [`ResticEngine`] is the rustic_core implementation.
//!
//! * VM disks ([`Engine::backup_disks`], [`Engine::restore_disks`]): each disk's guest-visible
//!   content (qcow2 through `imago`, raw directly), 2 MiB fixed-size chunks, unallocated regions
//!   not read; hashed, compressed and encrypted on every core by the engine's own pipeline
//!   (`diskpipe`), which writes the restic format itself (`format`), since rustic_core's
//!   archiver chunks and hashes one file on one thread. Compressed blobs are not decompressed
//!   again at backup time (rustic_core's `extra_verify`; restic does not do it either): every
//!   restore checks each blob against its id. Restores read, decrypt and verify in parallel and
//!   write with direct I/O.
//! * File shares ([`Engine::backup_tree`]): the directory tree with metadata, restic's
//!   content-defined chunks (the repository's Rabin polynomial and sizes, cut exactly as
//!   rustic_core cuts them: `cdc`), walked, read, hashed, compressed and encrypted on every core
//!   by the engine's own pipeline (`sharepipe`), which writes data packs, tree blobs, index and
//!   snapshot itself. A file whose size, mtime, ctime and inode equal its node in the parent
//!   snapshot keeps the parent's content without being read, and a directory whose content did
//!   not change gets the parent's tree id again, so a partly changed share writes only the
//!   trees on the path to a change. rustic_core's archiver (with `unchanged`, its fast path for
//!   a share with no change at all) is kept behind [`ResticEngine::with_rustic_tree_archiver`]:
//!   both record the same nodes, so either's snapshot is the other's parent. Share restores
//!   (`treerestore`) write files in parallel from the packs.
//! * Key files: restic's format records the scrypt parameters, so a repository whose password
//!   is a generated 256-bit secret (the control plane's vault passwords) is created with light
//!   ones ([`KeyDerivation::RandomSecret`]: N = 2^10 instead of 2^17; stretching a password that
//!   cannot be guessed adds no security, and it cost ≈0.3–0.5 s and 128 MiB per open); any other
//!   password gets restic's ([`KeyDerivation::Restic`], the default). Stock restic opens both.
//! * A recovery point is a snapshot tagged with vault, item, job and recovery point id, with the
//!   details the API reports in the snapshot's description (JSON, see [`RecoveryPointInfo`]).
//!
//! Modules: [`keyring`] (per-vault passwords sealed with the server key), [`disk`] (image
//! probing/reading/writing), [`backend`] (storage rules: atomic writes, fsync, direct I/O,
//! locking), [`progress`] (progress sink and cancellation); the rest is private (`engine`,
//! `diskpipe`, `sharepipe`, `cdc`, `format`, `iobuf`, `restore`, `treerestore` (symlink-safe,
//! all-or-nothing tree restores), `sources`, `unchanged`, `pit`, `types`).

pub mod backend;
mod cdc;
pub mod disk;
mod diskpipe;
mod engine;
pub mod error;
mod format;
mod iobuf;
pub mod keyring;
pub mod libvirt;
pub mod livevm;
mod nbd;
pub mod objstore;
mod pit;
pub mod progress;
pub mod qmp;
pub mod replicate;
mod restore;
mod safefs;
mod sharepipe;
mod sources;
mod treerestore;
mod types;
mod unchanged;

pub use disk::{probe, DiskInfo, ImageFormat};
pub use engine::ResticEngine;
pub use error::{EngineError, Result};
pub use keyring::{Secret, VaultKeys};
pub use progress::{Cancel, NoProgress, Progress, Task};
pub use treerestore::remove_leftovers as remove_restore_leftovers;
pub use types::*;

/// Returns the heap's free pages to the kernel (glibc otherwise keeps them in its per-thread arenas,
/// and a server that ran a wave of backups would hold their buffers' pages while idle). The job
/// engine calls it after each job.
/// `RSVAULT_MEMORY_TUNING=off` turns this (and the binary's arena limit) off, for the side-by-side
/// benchmark (`scripts/bench-memory`).
pub fn release_free_memory() {
    static OFF: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if *OFF.get_or_init(|| std::env::var("RSVAULT_MEMORY_TUNING").is_ok_and(|v| v == "off")) {
        return;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The narrow interface the job layer calls. All calls block; run them on a blocking thread.
/// Long calls report to `progress` and stop early (committing nothing) when `cancel` is set.
pub trait Engine: Send + Sync {
    /// Creates the vault's repository if it does not exist; opens it (checking the password) if
    /// it does. Idempotent.
    fn init(&self, repo: &RepoSpec) -> Result<()>;

    /// Backs up every disk of a VM as one recovery point.
    fn backup_disks(
        &self,
        repo: &RepoSpec,
        req: &DiskBackupRequest,
        progress: &dyn Progress,
        cancel: &Cancel,
    ) -> Result<BackupOutcome>;

    /// Backs up every disk of a running QEMU guest as one recovery point: all disks at one
    /// instant (copy-before-write fleecing in one QMP transaction, the file systems frozen
    /// when the guest agent answers), read over NBD while the guest runs, only the blocks its
    /// dirty bitmaps mark when the item's latest recovery point was taken the same way
    /// ([`livevm`]).
    fn backup_live_vm(
        &self,
        _repo: &RepoSpec,
        _req: &LiveBackupRequest,
        _progress: &dyn Progress,
        _cancel: &Cancel,
    ) -> Result<BackupOutcome> {
        Err(EngineError::InvalidRequest(
            "this engine does not back up running guests".into(),
        ))
    }

    /// Backs up every disk of a libvirt domain as one recovery point: while it runs, libvirt's
    /// pull-mode backup (all disks at one instant, a checkpoint for the next incremental, the
    /// file systems frozen when its guest agent answers) read over NBD; while it is shut off,
    /// its image files ([`libvirt`]).
    fn backup_libvirt_domain(
        &self,
        _repo: &RepoSpec,
        _req: &LibvirtBackupRequest,
        _progress: &dyn Progress,
        _cancel: &Cancel,
    ) -> Result<BackupOutcome> {
        Err(EngineError::InvalidRequest(
            "this engine does not back up libvirt domains".into(),
        ))
    }

    /// Backs up a directory tree (a file share) as one recovery point.
    fn backup_tree(
        &self,
        repo: &RepoSpec,
        req: &TreeBackupRequest,
        progress: &dyn Progress,
        cancel: &Cancel,
    ) -> Result<BackupOutcome>;

    /// Recovery points matching `filter`, oldest first.
    fn recovery_points(&self, repo: &RepoSpec, filter: &RecoveryPointFilter) -> Result<Vec<RecoveryPointInfo>>;

    /// One recovery point by id ([`EngineError::RecoveryPointNotFound`] if absent).
    fn recovery_point(&self, repo: &RepoSpec, id: &str) -> Result<RecoveryPointInfo>;

    /// Deletes recovery points (their data is reclaimed by the next [`Engine::prune`]). Returns
    /// how many were deleted; unknown ids are ignored.
    fn delete_recovery_points(&self, repo: &RepoSpec, ids: &[String]) -> Result<usize>;

    /// Deletes recovery points whose expiry is at or before `now`, then removes unreferenced
    /// data (including orphans of cancelled or crashed backups).
    fn prune(&self, repo: &RepoSpec, now: chrono::DateTime<chrono::Utc>) -> Result<PruneReport>;

    /// Keeps only the recovery points `keep` accepts (deleting the others' snapshots), then, when
    /// `reclaim`, removes unreferenced data. The control plane's garbage collection: its metadata
    /// store, not the expiry written in each snapshot, decides what lives. `expired` in the report
    /// lists the recovery points deleted.
    fn collect_garbage(
        &self,
        repo: &RepoSpec,
        keep: &dyn Fn(&RecoveryPointInfo) -> bool,
        reclaim: bool,
    ) -> Result<PruneReport>;

    /// Restores VM disks as images, verified against the snapshot's content hashes.
    fn restore_disks(
        &self,
        repo: &RepoSpec,
        req: &DiskRestoreRequest,
        progress: &dyn Progress,
        cancel: &Cancel,
    ) -> Result<RestoreOutcome>;

    /// Restores files of a share (all or chosen paths), verified against the content hashes.
    fn restore_tree(
        &self,
        repo: &RepoSpec,
        req: &TreeRestoreRequest,
        progress: &dyn Progress,
        cancel: &Cancel,
    ) -> Result<RestoreOutcome>;

    /// Checks the vault's integrity: structure always, pack contents if `read_data` asks.
    fn verify(&self, repo: &RepoSpec, read_data: ReadData) -> Result<VerifyReport>;
}
