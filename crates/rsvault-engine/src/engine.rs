//! [`ResticEngine`]: the rustic_core implementation of [`crate::Engine`].
//!
//! Every call opens the repository afresh (no long-lived state, so the engine is trivially
//! `Send + Sync` and several vaults can be worked on at once) under the repository lock of
//! [`crate::backend`]. A recovery point's details live in its snapshot's `description` as JSON
//! (`{"rsvault":1,…}`); the tags `rsvault`, `vault=…`, `item=…`, `job=…`, `rp=…` make them
//! findable with stock `restic snapshots --tag`.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use rustic_core::repofile::{MasterKey, SnapshotFile, Tree};
use rustic_core::{
    BackupOptions, CheckOptions, ConfigOptions, Credentials, KeyOptions, OpenStatus, ParentOptions, PruneOptions,
    ReadSubsetOption, Repository, RepositoryBackends, RepositoryOptions, StringList,
};
use serde::{Deserialize, Serialize};

use crate::backend::{Abort, GateBackend, RepoLock, VaultBackend};
use crate::cdc::Chunker;
use crate::disk::ReadStats;
use crate::diskpipe::{self, ChunkSource, DiskJob, Writer};
use crate::error::{EngineError, Result};
use crate::format::{
    encode_file, id_bytes, key_file, write_file, BlobIndex, Crypto, RANDOM_SECRET_MIN_LEN, RANDOM_SECRET_SCRYPT,
};
use crate::pit::{View, ViewKind};
use crate::progress::{report_while, Cancel, Counters, Progress, RusticBars, Task};
use crate::sharepipe;
use crate::sources::{TreeSource, Warnings};
use crate::types::*;
use crate::unchanged;
use crate::Engine;

/// The restic-format engine, written through rustic_core.
///
/// Opening a repository with its password costs a scrypt derivation with the parameters its key
/// file records: about 0.3 s and 128 MiB with restic's, about a millisecond for a repository
/// made with [`crate::KeyDerivation::RandomSecret`] (for generated 256-bit passwords only; see
/// there why that is safe). The engine remembers each repository's master key after the first
/// successful open, keyed by path and a SHA-256 of the password, so later calls skip it.
///
/// Disk backups and restores use direct I/O (`O_DIRECT`) for pack files and restored raw
/// images where the filesystem allows it; [`ResticEngine::with_direct_io`] turns that off.
#[derive(Debug, Clone)]
pub struct ResticEngine {
    keys: Arc<std::sync::Mutex<KeyCache>>,
    direct_io: bool,
    cache_dir: Option<PathBuf>,
    rustic_archiver: bool,
}

impl Default for ResticEngine {
    fn default() -> Self {
        Self {
            keys: Arc::default(),
            direct_io: true,
            cache_dir: None,
            rustic_archiver: false,
        }
    }
}

type KeyCache = std::collections::HashMap<(String, String), rustic_core::repofile::MasterKey>;

impl ResticEngine {
    /// A new engine.
    pub fn new() -> Self {
        Self::default()
    }

    /// The same engine with direct I/O on or off (on by default; off, every write goes
    /// through the page cache, as for filesystems where direct I/O misbehaves).
    pub fn with_direct_io(mut self, on: bool) -> Self {
        self.direct_io = on;
        self
    }

    /// The same engine backing up shares through rustic_core's archiver (the path before the
    /// engine's own share pipeline, `sharepipe`), when `on`. Kept to compare the two and to test
    /// that vaults written by it keep working: its snapshots are parents of the pipeline's, and
    /// both cut files alike.
    pub fn with_rustic_tree_archiver(mut self, on: bool) -> Self {
        self.rustic_archiver = on;
        self
    }

    pub(crate) fn direct_io(&self) -> bool {
        self.direct_io
    }

    /// The same engine with a per-node cache of object-store repositories' index, snapshot and
    /// tree files under `dir` (rustic_core's cache, one directory per repository id; files the
    /// store no longer lists are dropped from it at each open). Local repositories are read
    /// directly.
    pub fn with_cache_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cache_dir = Some(dir.into());
        self
    }

    /// Repository options for `spec`: the cache for an object store, none for a directory.
    fn repo_options(&self, spec: &RepoSpec) -> RepositoryOptions {
        match (&spec.location, &self.cache_dir) {
            (crate::RepoLocation::Object(_), Some(dir)) => RepositoryOptions::default().cache_dir(dir.clone()),
            _ => RepositoryOptions::default().no_cache(true),
        }
    }
}

/// What the snapshot description carries.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct RpMeta {
    pub rsvault: u32,
    pub vault: String,
    pub item: String,
    pub job: String,
    pub recovery_point: String,
    pub kind: RecoveryPointKind,
    pub expiry: Option<DateTime<Utc>>,
    pub consistency: Consistency,
    #[serde(default)]
    pub disks: Vec<DiskEntry>,
    #[serde(default)]
    pub source_root: Option<PathBuf>,
    #[serde(default)]
    pub warnings: usize,
    /// Logical size (sum of regular file sizes for trees, virtual sizes for disks).
    #[serde(default)]
    pub total_size: Option<u64>,
}

pub(crate) type Repo = Repository<OpenStatus>;

impl ResticEngine {
    fn cache_key(spec: &RepoSpec) -> (String, String) {
        use sha2::Digest;
        (
            spec.location.to_string(),
            crate::restore::hex(&sha2::Sha256::digest(spec.password.expose().as_bytes())),
        )
    }

    pub(crate) fn open_with(
        &self,
        spec: &RepoSpec,
        be: Arc<dyn rustic_core::WriteBackend>,
        counters: Option<Arc<Counters>>,
    ) -> Result<Repo> {
        let backends = RepositoryBackends::new(be, None);
        let opts = self.repo_options(spec);
        let repo = match counters {
            Some(c) => Repository::new_with_progress(&opts, &backends, RusticBars(c))?,
            None => Repository::new(&opts, &backends)?,
        };
        let ck = Self::cache_key(spec);
        let cached = self.keys.lock().unwrap_or_else(|p| p.into_inner()).get(&ck).cloned();
        let repo = match cached {
            Some(k) => repo.open(&Credentials::Masterkey(k))?,
            None => {
                let repo = repo.open(&Credentials::password(spec.password.expose()))?;
                self.keys
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(ck, repo.key());
                repo
            }
        };
        Ok(repo)
    }

    pub(crate) fn open(&self, spec: &RepoSpec, counters: Option<Arc<Counters>>) -> Result<Repo> {
        let be = VaultBackend::of(spec, false);
        if !be.has_config()? {
            return Err(EngineError::Repository(format!("no repository at {}", spec.location)));
        }
        self.open_with(spec, Arc::new(be), counters)
    }
}

impl ResticEngine {
    /// "Transfer data to vault" for VM disks (image files and running guests alike): the
    /// engine's own parallel pipeline (see `diskpipe`) into `snap`, with `parent`'s tree for
    /// unchanged disks and chunks. Returns the committed snapshot.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn transfer_disks(
        &self,
        spec: &RepoSpec,
        plain: &Repo,
        parent: Option<SnapshotFile>,
        jobs: &[DiskJob],
        snap: SnapshotFile,
        total: u64,
        progress: &dyn Progress,
        cancel: &Cancel,
        stats: &ReadStats,
    ) -> Result<SnapshotFile> {
        let abort = Abort::default();
        let counters = Arc::new(Counters::default());
        counters.set_total(total);
        let local = Arc::new(VaultBackend::of(spec, self.direct_io));
        let gate = GateBackend::new(local.clone(), cancel.clone(), abort.clone());
        let crypto = Crypto::new(&plain.key())?;
        let config = plain.config();
        let writer = Writer::for_repo(&gate, &crypto, config)?;
        let result = report_while(progress, Task::Transfer, &counters, || -> Result<SnapshotFile> {
            let index = BlobIndex::load(plain)?;
            let parent = match parent {
                Some(p) => Some((p.id, parent_tree(&local, &crypto, &index, &p)?)),
                None => None,
            };
            diskpipe::backup(&writer, &index, parent, jobs, snap, cancel, &abort, stats, &counters)
        });
        result.map_err(|e| {
            gate.discard_unindexed();
            classify(e, cancel, &abort)
        })
    }
}

/// The root tree of a disk recovery point (empty when the index does not hold it).
pub(crate) fn parent_tree(be: &VaultBackend, crypto: &Crypto, index: &BlobIndex, p: &SnapshotFile) -> Result<Tree> {
    let h = id_bytes(&p.tree.into_inner());
    match index.tree.get(&h) {
        Some(loc) => serde_json::from_slice::<Tree>(&diskpipe::read_blob(be, crypto, loc, &h)?)
            .map_err(|e| EngineError::Repository(format!("parent tree: {e}"))),
        None => Ok(Tree::default()),
    }
}

fn meta_of(snap: &SnapshotFile) -> Option<RpMeta> {
    let d = snap.description.as_deref()?;
    let m: RpMeta = serde_json::from_str(d).ok()?;
    (m.rsvault == 1).then_some(m)
}

fn to_jiff(t: DateTime<Utc>) -> Result<rustic_core::jiff::Zoned> {
    let ts = rustic_core::jiff::Timestamp::from_nanosecond(i128::from(
        t.timestamp_nanos_opt()
            .ok_or_else(|| EngineError::InvalidRequest("time out of range".into()))?,
    ))
    .map_err(|e| EngineError::InvalidRequest(format!("time: {e}")))?;
    Ok(ts.to_zoned(rustic_core::jiff::tz::TimeZone::UTC))
}

fn from_jiff(t: &rustic_core::jiff::Zoned) -> DateTime<Utc> {
    let ns = t.timestamp().as_nanosecond();
    DateTime::from_timestamp(
        (ns.div_euclid(1_000_000_000)) as i64,
        (ns.rem_euclid(1_000_000_000)) as u32,
    )
    .unwrap_or_default()
}

/// The metadata of a new recovery point (crash consistent, no disks yet).
pub(crate) fn new_point_meta(
    tags: &RecoveryPointTags,
    expiry: Option<DateTime<Utc>>,
    kind: RecoveryPointKind,
) -> RpMeta {
    RpMeta {
        rsvault: 1,
        vault: tags.vault.clone(),
        item: tags.item.clone(),
        job: tags.job.clone(),
        recovery_point: tags.recovery_point.clone(),
        kind,
        expiry,
        consistency: Consistency::CrashConsistent,
        disks: vec![],
        source_root: None,
        warnings: 0,
        total_size: None,
    }
}

pub(crate) fn info_of(snap: &SnapshotFile, m: RpMeta) -> RecoveryPointInfo {
    let (total, added) = snap
        .summary
        .as_ref()
        .map(|s| (s.total_bytes_processed, s.data_added_packed))
        .unwrap_or_default();
    RecoveryPointInfo {
        id: m.recovery_point,
        snapshot_id: snap.id.to_hex().to_string(),
        time: from_jiff(&snap.time),
        kind: m.kind,
        vault: m.vault,
        item: m.item,
        job: m.job,
        total_size: m.total_size.unwrap_or(total),
        added_size: added,
        disks: m.disks,
        source_root: m.source_root,
        expiry: m.expiry,
        consistency: m.consistency,
        warnings: m.warnings,
    }
}

/// All recovery points (snapshot + meta), oldest first. If a crash left two snapshots for one
/// recovery point (see `commit_consistency`), the less consistent one wins.
pub(crate) fn all_points<S: rustic_core::Open>(repo: &Repository<S>) -> Result<Vec<(SnapshotFile, RpMeta)>> {
    let mut snaps: Vec<(SnapshotFile, RpMeta)> = repo
        .get_all_snapshots()?
        .into_iter()
        .filter_map(|s| meta_of(&s).map(|m| (s, m)))
        .collect();
    snaps.sort_by(|a, b| a.0.time.cmp(&b.0.time).then(a.0.id.cmp(&b.0.id)));
    let mut out: Vec<(SnapshotFile, RpMeta)> = Vec::with_capacity(snaps.len());
    for (s, m) in snaps {
        if let Some(prev) = out.iter_mut().find(|(_, pm)| pm.recovery_point == m.recovery_point) {
            if m.consistency == Consistency::Inconsistent {
                *prev = (s, m);
            }
        } else {
            out.push((s, m));
        }
    }
    Ok(out)
}

pub(crate) fn find_point<S: rustic_core::Open>(repo: &Repository<S>, id: &str) -> Result<(SnapshotFile, RpMeta)> {
    all_points(repo)?
        .into_iter()
        .find(|(_, m)| m.recovery_point == id)
        .ok_or_else(|| EngineError::RecoveryPointNotFound(id.to_string()))
}

pub(crate) fn validate_tags(t: &RecoveryPointTags) -> Result<()> {
    for (what, v) in [
        ("vault", &t.vault),
        ("item", &t.item),
        ("job", &t.job),
        ("recovery point", &t.recovery_point),
    ] {
        if v.is_empty() || v.contains(',') || v.contains('\n') {
            return Err(EngineError::InvalidRequest(format!(
                "{what} must be non-empty without ',' or newlines"
            )));
        }
    }
    Ok(())
}

pub(crate) fn new_snapshot(tags: &RecoveryPointTags, time: DateTime<Utc>, meta: &RpMeta) -> Result<SnapshotFile> {
    let mut snap = SnapshotFile {
        time: to_jiff(time)?,
        hostname: "rsvault".into(),
        label: tags.recovery_point.clone(),
        description: Some(serde_json::to_string(meta).map_err(|e| EngineError::Repository(e.to_string()))?),
        ..SnapshotFile::default()
    };
    let tag_list = [
        "rsvault".to_string(),
        format!("vault={}", tags.vault),
        format!("item={}", tags.item),
        format!("job={}", tags.job),
        format!("rp={}", tags.recovery_point),
    ];
    // No tag contains ',' (validate_tags), so the comma-joined form splits back exactly.
    snap.tags = tag_list
        .join(",")
        .parse::<StringList>()
        .map_err(|e| EngineError::InvalidRequest(format!("tags: {e}")))?;
    Ok(snap)
}

/// Runs a rustic_core archive and maps its failure to the engine's reasons.
fn classify(err: EngineError, cancel: &Cancel, abort: &Abort) -> EngineError {
    if cancel.is_cancelled() {
        EngineError::Cancelled
    } else if let Some(why) = abort.get() {
        EngineError::Source {
            path: PathBuf::new(),
            reason: why,
        }
    } else {
        err
    }
}

/// If the copy turned out less consistent than the committed snapshot says, replace the snapshot
/// by one that says so (save the new one first, then delete the old; a crash in between leaves
/// both, and listings prefer the inconsistent one).
pub(crate) fn commit_consistency(
    repo: &Repo,
    mut snap: SnapshotFile,
    meta: &mut RpMeta,
    consistency: Consistency,
    warnings: usize,
) -> Result<SnapshotFile> {
    if meta.consistency == consistency && meta.warnings == warnings {
        return Ok(snap);
    }
    meta.consistency = consistency;
    meta.warnings = warnings;
    let old = snap.id;
    snap.description = Some(serde_json::to_string(&meta).map_err(|e| EngineError::Repository(e.to_string()))?);
    snap.id = Default::default();
    repo.save_snapshots(vec![snap])?;
    let new = repo
        .get_all_snapshots()?
        .into_iter()
        .find(|s| s.id != old && meta_of(s).is_some_and(|m| m.recovery_point == meta.recovery_point))
        .ok_or_else(|| EngineError::Repository("re-saved snapshot not found".into()))?;
    repo.delete_snapshots(&[old])?;
    Ok(new)
}

/// Writes the snapshot of a share found unchanged since `parent`: the parent's root tree, a
/// summary saying every entry was unmodified (and who made it).
#[allow(clippy::field_reassign_with_default)] // `SnapshotSummary` is non-exhaustive.
fn commit_unchanged<S: rustic_core::Open>(
    repo: &Repository<S>,
    be: &dyn rustic_core::WriteBackend,
    mut snap: SnapshotFile,
    parent: &SnapshotFile,
    root: &Path,
    u: unchanged::Unchanged,
    start: rustic_core::jiff::Zoned,
) -> Result<SnapshotFile> {
    let mut sum = rustic_core::repofile::SnapshotSummary::default();
    sum.command = UNCHANGED_COMMAND.into();
    sum.files_unmodified = u.files;
    sum.total_files_processed = u.files;
    sum.dirs_unmodified = u.dirs;
    sum.total_dirs_processed = u.dirs;
    sum.total_bytes_processed = u.bytes;
    sum.backup_start = start;
    let end = rustic_core::jiff::Zoned::now();
    let secs =
        |a: &rustic_core::jiff::Zoned| (end.timestamp().as_nanosecond() - a.timestamp().as_nanosecond()) as f64 / 1e9;
    sum.backup_duration = secs(&sum.backup_start);
    sum.total_duration = secs(&snap.time);
    sum.backup_end = end;
    snap.summary = Some(sum);
    // `check` made sure the root is UTF-8 and the parent's one path (rustic_core's form).
    snap.paths = StringList::default();
    snap.paths.add(root.to_string_lossy().into_owned());
    snap.tree = parent.tree;
    snap.parent = Some(parent.id);
    snap.parents = vec![parent.id];
    snap.id = Default::default();
    let json = serde_json::to_vec(&snap).map_err(|e| EngineError::Repository(format!("snapshot: {e}")))?;
    let crypto = Crypto::new(&repo.key())?;
    let id = write_file(
        be,
        rustic_core::FileType::Snapshot,
        encode_file(&crypto, &json, repo.config().zstd()?)?,
    )?;
    snap.id = id.into();
    Ok(snap)
}

/// The summary's `command` of a tree snapshot made by reusing its parent's trees.
pub(crate) const UNCHANGED_COMMAND: &str = "rsvault: unchanged since the parent, its trees reused";

/// Sum of the sizes of the regular files under `dir` (symlinks not followed).
fn regular_file_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(e.path()),
                Ok(t) if t.is_file() => total += e.metadata().map(|m| m.len()).unwrap_or(0),
                _ => {}
            }
        }
    }
    total
}

fn latest_parent(repo: &Repo, item: &str, kind: RecoveryPointKind, root: Option<&Path>) -> Result<Option<String>> {
    Ok(all_points(repo)?
        .into_iter()
        .rfind(|(_, m)| m.item == item && m.kind == kind && (root.is_none() || m.source_root.as_deref() == root))
        .map(|(s, _)| s.id.to_string()))
}

fn parent_id(repo: &Repo, explicit: Option<&str>, fallback: Option<String>) -> Result<Option<String>> {
    match explicit {
        Some(rp) => Ok(Some(find_point(repo, rp)?.0.id.to_string())),
        None => Ok(fallback),
    }
}

/// Refuses a recovery point id the vault already holds.
/// What a committed disk backup reports.
pub(crate) fn disk_outcome(
    snap: &SnapshotFile,
    meta: RpMeta,
    stats: &ReadStats,
    consistency: Consistency,
    warnings: Vec<String>,
    reflinked_disks: Vec<String>,
) -> BackupOutcome {
    let rp = info_of(snap, meta);
    BackupOutcome {
        reflinked_disks,
        bytes_scanned: stats.scanned.load(Ordering::Relaxed),
        bytes_skipped_unallocated: stats.skipped.load(Ordering::Relaxed),
        bytes_added: rp.added_size,
        consistency,
        warnings,
        recovery_point: rp,
    }
}

pub(crate) fn refuse_existing(points: &[(SnapshotFile, RpMeta)], rp: &str) -> Result<()> {
    if points.iter().any(|(_, m)| m.recovery_point == rp) {
        return Err(EngineError::InvalidRequest(format!(
            "recovery point '{rp}' already exists"
        )));
    }
    Ok(())
}

/// A share's recovery point details.
fn tree_meta(req: &TreeBackupRequest, root: &Path, total_size: Option<u64>) -> RpMeta {
    RpMeta {
        rsvault: 1,
        vault: req.tags.vault.clone(),
        item: req.tags.item.clone(),
        job: req.tags.job.clone(),
        recovery_point: req.tags.recovery_point.clone(),
        kind: RecoveryPointKind::Tree,
        expiry: req.expiry,
        consistency: Consistency::FileSystemConsistent,
        disks: vec![],
        source_root: Some(root.to_path_buf()),
        warnings: 0,
        total_size,
    }
}

/// The outcome of a share backup whose snapshot is committed: inconsistent if a file changed
/// while it was read (the snapshot re-saved to say so).
fn tree_outcome(
    plain: &Repo,
    snap: SnapshotFile,
    mut meta: RpMeta,
    warnings: &Warnings,
    bytes_scanned: u64,
) -> Result<BackupOutcome> {
    let list = warnings.take();
    let consistency = if warnings.changed() {
        Consistency::Inconsistent
    } else {
        Consistency::FileSystemConsistent
    };
    let snap = commit_consistency(plain, snap, &mut meta, consistency, warnings.count())?;
    let rp = info_of(&snap, meta);
    Ok(BackupOutcome {
        bytes_scanned,
        bytes_skipped_unallocated: 0,
        bytes_added: rp.added_size,
        consistency,
        reflinked_disks: vec![],
        warnings: list,
        recovery_point: rp,
    })
}

impl ResticEngine {
    /// A share backup through the engine's own pipeline (`sharepipe`).
    fn backup_share(
        &self,
        spec: &RepoSpec,
        req: &TreeBackupRequest,
        root: &Path,
        progress: &dyn Progress,
        cancel: &Cancel,
    ) -> Result<BackupOutcome> {
        let _lock = RepoLock::shared(spec)?;
        let plain = self.open(spec, None)?;
        let points = all_points(&plain)?;
        refuse_existing(&points, &req.tags.recovery_point)?;
        // A tree has no whole-tree snapshot here: "Take Snapshot" is the per-file guard.
        progress.update(Task::Snapshot, 1, 1);
        let mut meta = tree_meta(req, root, None);
        let snap = new_snapshot(&req.tags, req.time, &meta)?;
        let parent = match req.parent.as_deref() {
            Some(rp) => Some(find_point(&plain, rp)?.0),
            None => points
                .into_iter()
                .rfind(|(_, m)| {
                    m.item == req.tags.item
                        && m.kind == RecoveryPointKind::Tree
                        && m.source_root.as_deref() == Some(root)
                })
                .map(|(s, _)| s),
        }
        .map(|s| sharepipe::ParentSnap { id: s.id, tree: s.tree });
        let warnings = Warnings::default();
        let abort = Abort::default();
        let counters = Arc::new(Counters::default());
        let local = Arc::new(VaultBackend::of(spec, self.direct_io));
        let gate = GateBackend::new(local.clone(), cancel.clone(), abort.clone());
        let crypto = Crypto::new(&plain.key())?;
        let config = plain.config();
        let chunker = Chunker::of_config(config)?;
        let writer = Writer::for_repo(&gate, &crypto, config)?;
        let describe = |total: u64| -> Result<String> {
            let mut m = meta.clone();
            m.total_size = Some(total);
            serde_json::to_string(&m).map_err(|e| EngineError::Repository(e.to_string()))
        };
        let result = report_while(progress, Task::Transfer, &counters, || {
            let index = BlobIndex::load(&plain)?;
            sharepipe::backup(
                &writer, &local, &index, &chunker, root, parent, snap, &describe, cancel, &warnings, &counters,
            )
        });
        let (snap, stats) = result.map_err(|e| {
            gate.discard_unindexed();
            classify(e, cancel, &abort)
        })?;
        meta.total_size = Some(stats.total_size);
        tree_outcome(&plain, snap, meta, &warnings, stats.scanned)
    }
}

impl Engine for ResticEngine {
    fn init(&self, spec: &RepoSpec) -> Result<()> {
        if spec.kdf == KeyDerivation::RandomSecret && spec.password.expose().len() < RANDOM_SECRET_MIN_LEN {
            return Err(EngineError::InvalidRequest(format!(
                "light key derivation needs a random password of at least {RANDOM_SECRET_MIN_LEN} characters"
            )));
        }
        let be = Arc::new(VaultBackend::of(spec, false));
        be.prepare()?;
        let _lock = RepoLock::exclusive(spec)?;
        if be.has_config()? {
            self.open(spec, None)?;
            return Ok(());
        }
        // Key files without a config are left by an init that crashed in between; they can
        // open nothing, and a stale one with the same password would be tried first.
        for (id, _) in rustic_core::ReadBackend::list_with_size(be.as_ref(), rustic_core::FileType::Key)? {
            rustic_core::WriteBackend::remove(be.as_ref(), rustic_core::FileType::Key, &id, false)?;
        }
        let backends = RepositoryBackends::new(be.clone(), None);
        let repo = Repository::new(&RepositoryOptions::default().no_cache(true), &backends)?;
        match spec.kdf {
            KeyDerivation::Restic => {
                let _ = repo.init(
                    &Credentials::password(spec.password.expose()),
                    &KeyOptions::default(),
                    &ConfigOptions::default(),
                )?;
            }
            KeyDerivation::RandomSecret => {
                // rustic_core writes key files with N = 2^17 only: the key file is written
                // here (first, as restic does, so a config never exists without a key), then
                // rustic_core writes the config under the same master key.
                let master = MasterKey::new();
                let kf = key_file(&master, spec.password.expose(), RANDOM_SECRET_SCRYPT)?;
                let json = serde_json::to_vec(&kf).map_err(|e| EngineError::Repository(format!("key file: {e}")))?;
                rustic_core::WriteBackend::create(be.as_ref())?;
                write_file(be.as_ref(), rustic_core::FileType::Key, json)?;
                let _ = repo.init(
                    &Credentials::Masterkey(master.clone()),
                    &KeyOptions::default(),
                    &ConfigOptions::default(),
                )?;
                self.keys
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(Self::cache_key(spec), master);
            }
        }
        Ok(())
    }

    fn backup_disks(
        &self,
        spec: &RepoSpec,
        req: &DiskBackupRequest,
        progress: &dyn Progress,
        cancel: &Cancel,
    ) -> Result<BackupOutcome> {
        validate_tags(&req.tags)?;
        if req.disks.is_empty() {
            return Err(EngineError::InvalidRequest(
                "a VM backup needs at least one disk".into(),
            ));
        }
        let mut names = HashSet::new();
        for d in &req.disks {
            if d.name.is_empty() || d.name == "." || d.name == ".." || d.name.contains('/') || d.name.contains('\0') {
                return Err(EngineError::InvalidRequest(format!("bad disk name '{}'", d.name)));
            }
            if !names.insert(d.name.as_str()) {
                return Err(EngineError::InvalidRequest(format!("duplicate disk name '{}'", d.name)));
            }
        }
        let _lock = RepoLock::shared(spec)?;
        let plain = self.open(spec, None)?;
        if all_points(&plain)?
            .iter()
            .any(|(_, m)| m.recovery_point == req.tags.recovery_point)
        {
            return Err(EngineError::InvalidRequest(format!(
                "recovery point '{}' already exists",
                req.tags.recovery_point
            )));
        }

        // Take Snapshot. Each source is opened once (no symlink followed, a regular file); the
        // probe, the view and the read all use that descriptor.
        let mut files = Vec::with_capacity(req.disks.len());
        let mut infos = Vec::with_capacity(req.disks.len());
        for d in &req.disks {
            let f = crate::disk::open_source(&d.path)?;
            infos.push((d, crate::disk::probe_file(&f, &d.path)?));
            files.push(f);
        }
        let total: u64 = infos.iter().map(|(_, i)| i.virtual_size).sum();
        progress.update(Task::Snapshot, 0, total);
        let mut views = Vec::new();
        let mut done = 0;
        for ((d, i), f) in infos.iter().zip(files) {
            if cancel.is_cancelled() {
                return Err(EngineError::Cancelled);
            }
            views.push(View::take(&d.path, f)?);
            done += i.virtual_size;
            progress.update(Task::Snapshot, done, total);
        }

        let mut meta = RpMeta {
            rsvault: 1,
            vault: req.tags.vault.clone(),
            item: req.tags.item.clone(),
            job: req.tags.job.clone(),
            recovery_point: req.tags.recovery_point.clone(),
            kind: RecoveryPointKind::Disks,
            expiry: req.expiry,
            consistency: Consistency::CrashConsistent,
            disks: infos
                .iter()
                .map(|(d, i)| DiskEntry {
                    name: d.name.clone(),
                    source_path: d.path.clone(),
                    source_format: i.format,
                    virtual_size: i.virtual_size,
                })
                .collect(),
            source_root: None,
            warnings: 0,
            total_size: Some(infos.iter().map(|(_, i)| i.virtual_size).sum()),
        };
        let snap = new_snapshot(&req.tags, req.time, &meta)?;
        let parent = match req.parent.as_deref() {
            Some(rp) => Some(find_point(&plain, rp)?.0),
            None => all_points(&plain)?
                .into_iter()
                .rfind(|(_, m)| m.item == req.tags.item && m.kind == RecoveryPointKind::Disks)
                .map(|(s, _)| s),
        };

        // Transfer data to vault: the engine's own parallel pipeline (see `diskpipe`).
        let stats = ReadStats::default();
        let jobs = infos
            .iter()
            .zip(&views)
            .map(|((d, i), v)| {
                let mtime = rustic_core::jiff::Timestamp::from_nanosecond(v.before().mtime_ns).ok();
                Ok(DiskJob {
                    name: d.name.clone(),
                    path: d.path.clone(),
                    source: ChunkSource::Image(v.reader()?, i.format),
                    size: i.virtual_size,
                    mtime,
                    unchanged: None,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let snap = self.transfer_disks(spec, &plain, parent, &jobs, snap, total, progress, cancel, &stats)?;
        // A cancel that arrives after the commit is too late: the recovery point is complete.

        let mut warnings = Vec::new();
        for v in &views {
            if let Some(w) = v.check()? {
                warnings.push(w);
            }
        }
        let consistency = if warnings.is_empty() {
            Consistency::CrashConsistent
        } else {
            Consistency::Inconsistent
        };
        let snap = commit_consistency(&plain, snap, &mut meta, consistency, warnings.len())?;
        let reflinked_disks = req
            .disks
            .iter()
            .zip(&views)
            .filter(|(_, v)| v.kind() == ViewKind::Reflink)
            .map(|(d, _)| d.name.clone())
            .collect();
        Ok(disk_outcome(
            &snap,
            meta,
            &stats,
            consistency,
            warnings,
            reflinked_disks,
        ))
    }

    fn backup_live_vm(
        &self,
        spec: &RepoSpec,
        req: &LiveBackupRequest,
        progress: &dyn Progress,
        cancel: &Cancel,
    ) -> Result<BackupOutcome> {
        validate_tags(&req.tags)?;
        self.live_backup(spec, req, progress, cancel)
    }

    fn backup_libvirt_domain(
        &self,
        spec: &RepoSpec,
        req: &LibvirtBackupRequest,
        progress: &dyn Progress,
        cancel: &Cancel,
    ) -> Result<BackupOutcome> {
        validate_tags(&req.tags)?;
        self.libvirt_backup(spec, req, progress, cancel)
    }

    fn backup_tree(
        &self,
        spec: &RepoSpec,
        req: &TreeBackupRequest,
        progress: &dyn Progress,
        cancel: &Cancel,
    ) -> Result<BackupOutcome> {
        validate_tags(&req.tags)?;
        let root = std::fs::canonicalize(&req.root).map_err(|e| EngineError::Source {
            path: req.root.clone(),
            reason: e.to_string(),
        })?;
        if !root.is_dir() {
            return Err(EngineError::Source {
                path: root,
                reason: "not a directory".into(),
            });
        }
        if !self.rustic_archiver {
            return self.backup_share(spec, req, &root, progress, cancel);
        }
        // The logical size is measured by a walk of its own (see below); it runs while the
        // repository is opened (the key derivation keeps one core busy).
        let walk = {
            let root = root.clone();
            std::thread::spawn(move || regular_file_bytes(&root))
        };
        let _lock = RepoLock::shared(spec)?;
        let plain = self.open(spec, None)?;
        refuse_existing(&all_points(&plain)?, &req.tags.recovery_point)?;
        // A tree has no whole-tree snapshot here: "Take Snapshot" is the per-file guard.
        progress.update(Task::Snapshot, 1, 1);
        // rustic_core's summary counts symlink lengths for unchanged entries only, so the
        // logical size is measured here: regular files, walked just before the backup.
        let total = walk
            .join()
            .map_err(|_| EngineError::Repository("the size walk panicked".into()))?;
        let meta = tree_meta(req, &root, Some(total));
        let snap = new_snapshot(&req.tags, req.time, &meta)?;
        let parent = parent_id(
            &plain,
            req.parent.as_deref(),
            latest_parent(&plain, &req.tags.item, RecoveryPointKind::Tree, Some(&root))?,
        )?;
        let warnings = Warnings::default();
        let abort = Abort::default();
        let source = TreeSource::new(&root, cancel.clone(), warnings.clone())?;
        let scanned = source.scanned();
        let counters = Arc::new(Counters::default());
        // The walk above gives the total; rustic_core's own size scan (a third walk) is off.
        counters.set_total(meta.total_size.unwrap_or(0));
        let gate = Arc::new(GateBackend::new(
            Arc::new(VaultBackend::of(spec, false)),
            cancel.clone(),
            abort.clone(),
        ));
        let opts = BackupOptions::default()
            .no_scan(true)
            .parent_opts(ParentOptions::default().parents(parent.iter().cloned().collect::<Vec<_>>()));
        let paths = vec![root.clone()];
        let parent_snap = match &parent {
            Some(id) => plain.get_snapshots(&[id])?.pop(),
            None => None,
        };
        let result = report_while(progress, Task::Transfer, &counters, || -> Result<SnapshotFile> {
            let repo = self
                .open_with(spec, gate.clone(), Some(counters.clone()))?
                .to_indexed_ids()?;
            // A share unchanged since its parent: the parent's trees are reused and only the
            // snapshot is written (see `unchanged`); otherwise rustic_core's archiver.
            if let Some(p) = &parent_snap {
                let start = rustic_core::jiff::Zoned::now();
                if let Some(u) = unchanged::check(&root, p, |id| repo.get_tree(&id).ok(), cancel)? {
                    counters.add(u.bytes);
                    return commit_unchanged(&repo, gate.as_ref(), snap, p, &root, u, start);
                }
            }
            Ok(repo.archive(&opts, &source, snap, &paths)?)
        });
        let snap = result.map_err(|e| {
            gate.discard_unindexed();
            classify(e, cancel, &abort)
        })?;
        tree_outcome(&plain, snap, meta, &warnings, scanned.load(Ordering::Relaxed))
    }

    fn recovery_points(&self, spec: &RepoSpec, filter: &RecoveryPointFilter) -> Result<Vec<RecoveryPointInfo>> {
        let _lock = RepoLock::shared(spec)?;
        let repo = self.open(spec, None)?;
        Ok(all_points(&repo)?
            .into_iter()
            .filter(|(_, m)| filter.item.as_ref().is_none_or(|i| *i == m.item))
            .filter(|(_, m)| filter.kind.is_none_or(|k| k == m.kind))
            .map(|(s, m)| info_of(&s, m))
            .collect())
    }

    fn recovery_point(&self, spec: &RepoSpec, id: &str) -> Result<RecoveryPointInfo> {
        let _lock = RepoLock::shared(spec)?;
        let repo = self.open(spec, None)?;
        let (s, m) = find_point(&repo, id)?;
        Ok(info_of(&s, m))
    }

    fn delete_recovery_points(&self, spec: &RepoSpec, ids: &[String]) -> Result<usize> {
        let _lock = RepoLock::exclusive(spec)?;
        let repo = self.open(spec, None)?;
        let wanted: HashSet<&str> = ids.iter().map(String::as_str).collect();
        // Every snapshot of a wanted recovery point (including crash duplicates).
        let snaps: Vec<_> = repo
            .get_all_snapshots()?
            .into_iter()
            .filter_map(|s| meta_of(&s).map(|m| (s.id, m.recovery_point)))
            .filter(|(_, rp)| wanted.contains(rp.as_str()))
            .collect();
        let n = snaps.iter().map(|(_, rp)| rp.as_str()).collect::<HashSet<_>>().len();
        let ids: Vec<_> = snaps.into_iter().map(|(id, _)| id).collect();
        repo.delete_snapshots(&ids)?;
        Ok(n)
    }

    fn prune(&self, spec: &RepoSpec, now: DateTime<Utc>) -> Result<PruneReport> {
        let _lock = RepoLock::exclusive(spec)?;
        let repo = self.open(spec, None)?;
        let mut report = PruneReport::default();
        let mut expired = Vec::new();
        for s in repo.get_all_snapshots()? {
            if let Some(m) = meta_of(&s) {
                if m.expiry.is_some_and(|e| e <= now) {
                    expired.push(s.id);
                    if !report.expired.contains(&m.recovery_point) {
                        report.expired.push(m.recovery_point);
                    }
                }
            }
        }
        repo.delete_snapshots(&expired)?;
        remove_unreferenced(&repo, spec, &mut report)?;
        Ok(report)
    }

    fn collect_garbage(
        &self,
        spec: &RepoSpec,
        keep: &dyn Fn(&RecoveryPointInfo) -> bool,
        reclaim: bool,
    ) -> Result<PruneReport> {
        let _lock = RepoLock::exclusive(spec)?;
        let repo = self.open(spec, None)?;
        let mut report = PruneReport::default();
        let mut gone = Vec::new();
        for s in repo.get_all_snapshots()? {
            if let Some(m) = meta_of(&s) {
                if !keep(&info_of(&s, m.clone())) {
                    gone.push(s.id);
                    if !report.expired.contains(&m.recovery_point) {
                        report.expired.push(m.recovery_point);
                    }
                }
            }
        }
        repo.delete_snapshots(&gone)?;
        if reclaim {
            remove_unreferenced(&repo, spec, &mut report)?;
        }
        Ok(report)
    }

    fn restore_disks(
        &self,
        spec: &RepoSpec,
        req: &DiskRestoreRequest,
        progress: &dyn Progress,
        cancel: &Cancel,
    ) -> Result<RestoreOutcome> {
        let _lock = RepoLock::shared(spec)?;
        crate::restore::restore_disks(self, spec, req, progress, cancel)
    }

    fn restore_tree(
        &self,
        spec: &RepoSpec,
        req: &TreeRestoreRequest,
        progress: &dyn Progress,
        cancel: &Cancel,
    ) -> Result<RestoreOutcome> {
        let _lock = RepoLock::shared(spec)?;
        crate::restore::restore_tree(self, spec, req, progress, cancel)
    }

    fn verify(&self, spec: &RepoSpec, read_data: ReadData) -> Result<VerifyReport> {
        let _lock = RepoLock::exclusive(spec)?;
        let repo = self.open(spec, None)?;
        let opts = match read_data {
            ReadData::None => CheckOptions::default(),
            ReadData::All => CheckOptions::default().read_data(true),
            ReadData::Percent(p) => CheckOptions::default()
                .read_data(true)
                .read_data_subset(ReadSubsetOption::Percentage(p)),
        };
        let results = repo.check(opts)?;
        let problems: Vec<String> = results.0.iter().map(|(level, e)| format!("{level:?}: {e}")).collect();
        // rustic_core does not export the level type; its Debug form is `Warn` or `Error`.
        let ok = !results.0.iter().any(|(l, _)| format!("{l:?}") == "Error");
        Ok(VerifyReport { ok, problems })
    }
}

/// Removes the data no snapshot references (the second half of a prune), under the caller's
/// exclusive lock.
/// How long a pack marked unreferenced stays on an object store before a prune deletes it.
pub const OBJECT_DELETE_GRACE: std::time::Duration = std::time::Duration::from_secs(3600);

fn remove_unreferenced(repo: &Repo, spec: &RepoSpec, report: &mut PruneReport) -> Result<()> {
    // Locally, the exclusive lock keeps rsvault's writers out, so unreferenced packs can go at
    // once. On an object store, which other nodes may read without this node's lock, they go in
    // two phases: marked now (the index records them), deleted by a prune at least
    // `OBJECT_DELETE_GRACE` later, and kept if an index references them again meanwhile.
    let be = VaultBackend::of(spec, false);
    let opts = match be.is_remote() {
        false => PruneOptions::default().instant_delete(true),
        true => PruneOptions::default()
            .instant_delete(false)
            .keep_delete(rustic_core::jiff::Span::new().seconds(OBJECT_DELETE_GRACE.as_secs() as i64)),
    };
    let plan = repo.prune_plan(&opts)?;
    let st = &plan.stats;
    report.packs_removed = st.packs.unused + st.packs_to_delete.remove + st.packs_unref;
    let sizes = st.size_sum();
    report.bytes_removed = sizes.remove + sizes.repackrm + st.size_to_delete.remove + st.size_unref;
    repo.prune(&opts, plan)?;
    be.clean_tmp()?;
    Ok(())
}
