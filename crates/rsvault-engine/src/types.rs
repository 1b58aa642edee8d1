//! The request and answer types of [`crate::Engine`].

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::disk::ImageFormat;
use crate::keyring::Secret;

/// Where a vault's repository lives.
#[derive(Debug, Clone)]
pub enum RepoLocation {
    /// A local directory (restic's layout; [`crate::backend`]'s storage rules).
    Local(PathBuf),
    /// A prefix on an object store ([`crate::objstore`]'s storage rules).
    Object(crate::objstore::ObjectRepo),
}

impl RepoLocation {
    /// What stock `restic` needs to find the repository (`RESTIC_REPOSITORY`, and an object
    /// store's credentials): for the operator only, never for a log.
    pub fn restic_env(&self) -> Vec<(String, String)> {
        match self {
            RepoLocation::Local(p) => vec![("RESTIC_REPOSITORY".into(), p.display().to_string())],
            RepoLocation::Object(o) => o.store.target().restic_env(&o.path),
        }
    }
}

impl std::fmt::Display for RepoLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RepoLocation::Local(p) => write!(f, "{}", p.display()),
            RepoLocation::Object(o) => f.write_str(&o.location()),
        }
    }
}

/// Where a vault's repository is and how to open it.
#[derive(Debug, Clone)]
pub struct RepoSpec {
    /// Where the repository is.
    pub location: RepoLocation,
    /// The repository password (clear; see [`crate::VaultKeys`]).
    pub password: Secret,
    /// How [`crate::Engine::init`] stretches the password when it creates the repository's
    /// key file. Opening reads the parameters from the key file, so this matters only at
    /// creation; an existing repository keeps the key file it has.
    pub kdf: KeyDerivation,
}

/// The scrypt parameters of a new repository's key file (restic's key format records N, r
/// and p, so stock `restic` opens either kind).
///
/// scrypt's cost exists to slow down guessing a password a person chose. A password that is
/// itself a uniformly random 256-bit secret cannot be guessed whatever the KDF costs (2^256
/// candidates; the key file's 64-byte salt rules out precomputation), so stretching it only
/// costs every open ≈0.3 s of one core and 128 MiB. [`KeyDerivation::RandomSecret`] is
/// therefore safe **only** for such passwords: those [`crate::VaultKeys::generate_password`]
/// makes (the control plane's vault passwords). Anything a person typed or chose, or that
/// came from elsewhere, must use [`KeyDerivation::Restic`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum KeyDerivation {
    /// The parameters of restic and rustic_core (N = 2^17, r = 8, p = 1: 128 MiB, ≈0.3 s).
    #[default]
    Restic,
    /// Light parameters (N = 2^10, r = 8, p = 1: 1 MiB, about a millisecond) for a random
    /// secret of at least 256 bits. `init` refuses it for a password shorter than the 43
    /// characters of a base64 256-bit secret (a guard against misuse, not a proof of entropy).
    RandomSecret,
}

impl RepoSpec {
    /// A repository opened with a password of any origin (restic's scrypt parameters).
    pub fn new(path: impl Into<PathBuf>, password: Secret) -> Self {
        Self {
            location: RepoLocation::Local(path.into()),
            password,
            kdf: KeyDerivation::Restic,
        }
    }

    /// A repository whose password is a random 256-bit secret from
    /// [`crate::VaultKeys::generate_password`] (light scrypt parameters, see
    /// [`KeyDerivation::RandomSecret`]).
    pub fn with_random_secret(path: impl Into<PathBuf>, password: Secret) -> Self {
        Self {
            kdf: KeyDerivation::RandomSecret,
            ..Self::new(path, password)
        }
    }

    /// A repository on an object store whose password is a random 256-bit secret (see
    /// [`RepoSpec::with_random_secret`]).
    pub fn in_object_store(repo: crate::objstore::ObjectRepo, password: Secret) -> Self {
        Self {
            location: RepoLocation::Object(repo),
            password,
            kdf: KeyDerivation::RandomSecret,
        }
    }

    /// The repository's directory, when it is a local one.
    pub fn local_path(&self) -> Option<&std::path::Path> {
        match &self.location {
            RepoLocation::Local(p) => Some(p),
            RepoLocation::Object(_) => None,
        }
    }
}

/// One disk of a VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskSource {
    /// Name of the disk inside the recovery point (a file name: no `/`, not `.` or `..`).
    pub name: String,
    /// Path of the raw or qcow2 image.
    pub path: PathBuf,
}

/// The identity of a recovery point, stored as snapshot tags and in its description.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecoveryPointTags {
    /// The vault's ARM id.
    pub vault: String,
    /// The protected item's name or id.
    pub item: String,
    /// The job that made the recovery point.
    pub job: String,
    /// The recovery point's id (unique in the vault).
    pub recovery_point: String,
}

/// A VM backup.
#[derive(Debug, Clone)]
pub struct DiskBackupRequest {
    /// Every disk of the VM (at least one, unique names).
    pub disks: Vec<DiskSource>,
    /// Identity of the new recovery point.
    pub tags: RecoveryPointTags,
    /// The recovery point's time (from the control plane's clock).
    pub time: DateTime<Utc>,
    /// When the recovery point expires (pruned by [`crate::Engine::prune`] after this).
    pub expiry: Option<DateTime<Utc>>,
    /// Recovery point to use as parent (unchanged disks are not re-read); `None` = the item's
    /// latest disk recovery point.
    pub parent: Option<String>,
}

/// A file share backup.
#[derive(Debug, Clone)]
pub struct TreeBackupRequest {
    /// The directory to back up (absolute).
    pub root: PathBuf,
    /// Identity of the new recovery point.
    pub tags: RecoveryPointTags,
    /// The recovery point's time.
    pub time: DateTime<Utc>,
    /// Expiry, as for disks.
    pub expiry: Option<DateTime<Utc>>,
    /// Parent recovery point (unchanged files are not re-read); `None` = the item's latest tree
    /// recovery point of the same root.
    pub parent: Option<String>,
}

/// What a recovery point holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RecoveryPointKind {
    /// The disks of a VM.
    Disks,
    /// A directory tree.
    Tree,
}

/// How consistent the copy in a recovery point is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Consistency {
    /// Every disk as of one instant, taken while the guest's file systems were frozen through
    /// its guest agent (`guest-fsfreeze-freeze`): what the guest's applications flushed is in it.
    ApplicationConsistent,
    /// Every disk as of one instant (reflink clone, or a guarded read that saw no change): what
    /// the guest would find after a power loss. No guest cooperation (no fsfreeze).
    CrashConsistent,
    /// Every file of a tree read without changing during its own read (files are not all from
    /// the same instant).
    FileSystemConsistent,
    /// The source changed while it was read; the copy may mix old and new data.
    Inconsistent,
}

/// One disk inside a recovery point.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskEntry {
    /// Name inside the recovery point.
    pub name: String,
    /// The image it was read from.
    pub source_path: PathBuf,
    /// The format of that image.
    pub source_format: ImageFormat,
    /// Guest-visible size in bytes.
    pub virtual_size: u64,
}

/// A recovery point, as the API reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecoveryPointInfo {
    /// The recovery point id (from [`RecoveryPointTags::recovery_point`]).
    pub id: String,
    /// The restic snapshot id holding it.
    pub snapshot_id: String,
    /// Its time.
    pub time: DateTime<Utc>,
    /// Disks or tree.
    pub kind: RecoveryPointKind,
    /// Vault, item and job.
    pub vault: String,
    /// Protected item.
    pub item: String,
    /// Job that made it.
    pub job: String,
    /// Total (logical) size of the data it holds, in bytes.
    pub total_size: u64,
    /// New data this backup added to the vault (compressed, encrypted), in bytes.
    pub added_size: u64,
    /// The disks (for [`RecoveryPointKind::Disks`]).
    pub disks: Vec<DiskEntry>,
    /// The backed-up directory (for [`RecoveryPointKind::Tree`]).
    pub source_root: Option<PathBuf>,
    /// Expiry time, if any.
    pub expiry: Option<DateTime<Utc>>,
    /// Consistency of the copy.
    pub consistency: Consistency,
    /// Number of warnings the backup had.
    pub warnings: usize,
}

/// Which recovery points to list.
#[derive(Debug, Clone, Default)]
pub struct RecoveryPointFilter {
    /// Only this protected item.
    pub item: Option<String>,
    /// Only this kind.
    pub kind: Option<RecoveryPointKind>,
}

/// The result of a backup.
#[derive(Debug, Clone)]
pub struct BackupOutcome {
    /// The new recovery point.
    pub recovery_point: RecoveryPointInfo,
    /// Bytes read from the source (guest-visible bytes for disks).
    pub bytes_scanned: u64,
    /// Bytes not read because the image marks them unallocated.
    pub bytes_skipped_unallocated: u64,
    /// New bytes written to the vault (after dedup and compression).
    pub bytes_added: u64,
    /// Consistency of the copy.
    pub consistency: Consistency,
    /// Disks whose point-in-time view was a reflink clone (the others were read guarded).
    pub reflinked_disks: Vec<String>,
    /// Warnings for the job (`CompletedWithWarnings` if not empty).
    pub warnings: Vec<String>,
}

/// Where restored disks go.
#[derive(Debug, Clone)]
pub enum DiskRestoreTarget {
    /// New images `DIR/{disk name}`; existing files are never overwritten.
    Directory(PathBuf),
    /// Replace each disk's original image (atomically: temp file, fsync, rename, fsync dir).
    Original,
}

/// A VM disk restore.
#[derive(Debug, Clone)]
pub struct DiskRestoreRequest {
    /// The recovery point.
    pub recovery_point: String,
    /// Disks to restore by name (`None` = all).
    pub disks: Option<Vec<String>>,
    /// Where.
    pub target: DiskRestoreTarget,
    /// Image format to write; `None` = raw for a directory, the original format for `Original`.
    pub format: Option<ImageFormat>,
}

/// What to do when a restored file already exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConflictPolicy {
    /// Replace it.
    Overwrite,
    /// Keep the existing one.
    Skip,
    /// Fail before writing anything.
    FailOnConflict,
}

/// A file share restore.
#[derive(Debug, Clone)]
pub struct TreeRestoreRequest {
    /// The recovery point.
    pub recovery_point: String,
    /// Paths relative to the share root (`None` = everything).
    pub paths: Option<Vec<PathBuf>>,
    /// Target directory (`None` = the original root).
    pub target: Option<PathBuf>,
    /// Conflict option.
    pub conflict: ConflictPolicy,
}

/// The result of a restore.
#[derive(Debug, Clone, Default)]
pub struct RestoreOutcome {
    /// Files (or images) written.
    pub files_restored: u64,
    /// Files skipped because of [`ConflictPolicy::Skip`].
    pub files_skipped: u64,
    /// Bytes restored and verified.
    pub bytes_restored: u64,
    /// The restored images or the target directory.
    pub paths: Vec<PathBuf>,
}

/// How much pack data [`crate::Engine::verify`] reads.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ReadData {
    /// Structure only (index, trees, snapshots).
    None,
    /// A random subset of about this percentage of the pack data.
    Percent(f64),
    /// All pack data.
    All,
}

/// The result of a verify.
#[derive(Debug, Clone, Default)]
pub struct VerifyReport {
    /// No error found.
    pub ok: bool,
    /// Errors and warnings found.
    pub problems: Vec<String>,
}

/// The result of a prune.
#[derive(Debug, Clone, Default)]
pub struct PruneReport {
    /// Recovery points deleted because they expired.
    pub expired: Vec<String>,
    /// Pack files removed.
    pub packs_removed: u64,
    /// Bytes removed from the vault.
    pub bytes_removed: u64,
}

/// A running QEMU guest, reached through its sockets ([`crate::Engine::backup_live_vm`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LiveVmSource {
    /// The guest's QMP socket.
    pub qmp_socket: PathBuf,
    /// The guest agent's socket, if it has one (file systems frozen around the snapshot).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_socket: Option<PathBuf>,
    /// The guest's own NBD server (a Unix socket), when it already runs one (QEMU runs one
    /// server at most); otherwise rsvault starts one in `work_dir` for the job and stops it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbd_socket: Option<PathBuf>,
}

/// A libvirt domain, reached through `virsh -c uri` ([`crate::Engine::backup_libvirt_domain`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LibvirtDomain {
    /// The libvirt connection URI (`qemu:///system`, `qemu+unix:///session?socket=…`).
    pub uri: String,
    /// The domain's UUID (stable across renames).
    pub uuid: String,
}

/// A backup of a libvirt domain: pull-mode backup with checkpoints while it runs, its image
/// files while it is shut off ([`crate::libvirt`]).
#[derive(Debug, Clone)]
pub struct LibvirtBackupRequest {
    /// The domain.
    pub domain: LibvirtDomain,
    /// Identity of the new recovery point.
    pub tags: RecoveryPointTags,
    /// The recovery point's time.
    pub time: DateTime<Utc>,
    /// When it expires.
    pub expiry: Option<DateTime<Utc>>,
}

/// One disk of a running guest, as QMP describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LiveDisk {
    /// Its name in recovery points: the block device's name, else its node name.
    pub name: String,
    /// The block node backed up (the guest's format node).
    pub node: String,
    /// QEMU's format driver (`qcow2`, `raw`, …).
    pub driver: String,
    /// Guest-visible size in bytes.
    pub virtual_size: u64,
    /// The image file QEMU has open, when it says.
    pub file: Option<PathBuf>,
}

/// A backup of a running guest.
#[derive(Debug, Clone)]
pub struct LiveBackupRequest {
    /// The guest.
    pub vm: LiveVmSource,
    /// A private directory (the data dir's) for the job's fleecing images and NBD socket; QEMU
    /// must be able to create files in it.
    pub work_dir: PathBuf,
    /// Identity of the new recovery point.
    pub tags: RecoveryPointTags,
    /// The recovery point's time.
    pub time: DateTime<Utc>,
    /// When it expires.
    pub expiry: Option<DateTime<Utc>>,
}
