//! Restores: VM disks as images, file share trees; both verified against the snapshot.
//!
//! Disks are written to a temporary file next to the final path (`.NAME.rsvault-restore-…`),
//! all-zero chunks left as holes, by the parallel pipeline of `diskpipe`, which checks every
//! blob's SHA-256 against the content id the snapshot names before it writes the bytes (the
//! bytes handed to the kernel are the verified bytes; a read-back from the page cache would
//! check nothing more). A qcow2 target is also re-read through `imago` after writing, since its
//! bytes went through the format layer's cluster allocation. Images are `fsync`ed and only then
//! renamed over the final path (the directory is `fsync`ed). A VM's disks are all restored and
//! verified before the first rename, so a failure leaves the originals untouched. Trees go through
//! `treerestore`: every file under a temporary name relative to directories opened without following
//! links, re-read and compared with its content ids, then all renamed into place (modes, times and,
//! as root, owners set on the open files).

use std::fs;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use rustic_core::repofile::{Node, Tree};
use rustic_core::{LsOptions, RusticResult};

use crate::backend::{fsync_dir, LocalBackend};
use crate::disk::{ImageFormat, ImageReader, ImageWriter};
use crate::diskpipe::{self, read_blob, Target};
use crate::engine::{find_point, ResticEngine};
use crate::error::{EngineError, IoContext, Result};
use crate::format::{id_bytes, sha256, BlobIndex, Crypto, Hash, CRYPTO_OVERHEAD};
use crate::progress::{report_while, Cancel, Counters, Progress, Task};
use crate::treerestore;
use crate::types::*;

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

const WORKERS: usize = 2;

pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// A disk's content as (offset, length, content id) triples.
fn layout(index: &BlobIndex, node: &Node) -> Result<Vec<(u64, usize, Hash)>> {
    let mut off = 0u64;
    let mut out = Vec::new();
    for id in node.content.iter().flatten() {
        let h = id_bytes(&id.into_inner());
        let loc = index.data.get(&h).ok_or_else(|| {
            EngineError::Repository(format!(
                "blob {} is not in the index",
                id.into_inner().to_hex().as_str()
            ))
        })?;
        let len = loc
            .uncompressed
            .map_or(loc.length as usize - CRYPTO_OVERHEAD, |n| n as usize);
        out.push((off, len, h));
        off += len as u64;
    }
    Ok(out)
}

fn tmp_name(final_path: &Path) -> Result<PathBuf> {
    let dir = final_path
        .parent()
        .ok_or_else(|| EngineError::InvalidRequest(format!("bad target {}", final_path.display())))?;
    let name = final_path
        .file_name()
        .ok_or_else(|| EngineError::InvalidRequest(format!("bad target {}", final_path.display())))?;
    Ok(dir.join(format!(
        ".{}.rsvault-restore-{}-{}",
        name.to_string_lossy(),
        std::process::id(),
        TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    )))
}

/// Removes the temporary files it holds unless disarmed.
struct TmpFiles(Vec<PathBuf>);
impl Drop for TmpFiles {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = fs::remove_file(p);
        }
    }
}

/// Runs `f(i)` for i in 0..n on [`WORKERS`] threads; stops at the first error.
fn parallel(n: usize, cancel: &Cancel, f: impl Fn(usize) -> Result<()> + Sync) -> Result<()> {
    let next = AtomicUsize::new(0);
    let err: Mutex<Option<EngineError>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..WORKERS {
            s.spawn(|| loop {
                if err.lock().unwrap_or_else(|p| p.into_inner()).is_some() {
                    return;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return;
                }
                let r = if cancel.is_cancelled() {
                    Err(EngineError::Cancelled)
                } else {
                    f(i)
                };
                if let Err(e) = r {
                    let mut g = err.lock().unwrap_or_else(|p| p.into_inner());
                    if g.is_none() {
                        *g = Some(e);
                    }
                    return;
                }
            });
        }
    });
    match err.into_inner().unwrap_or_else(|p| p.into_inner()) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

pub(crate) fn restore_disks(
    engine: &ResticEngine,
    spec: &RepoSpec,
    req: &DiskRestoreRequest,
    progress: &dyn Progress,
    cancel: &Cancel,
) -> Result<RestoreOutcome> {
    let repo = engine.open(spec, None)?;
    let (snap, meta) = find_point(&repo, &req.recovery_point)?;
    if meta.kind != RecoveryPointKind::Disks {
        return Err(EngineError::InvalidRequest(format!(
            "recovery point '{}' holds no disks",
            req.recovery_point
        )));
    }
    let local = LocalBackend::new(&spec.path).with_direct_io(engine.direct_io());
    let crypto = Crypto::new(&repo.key())?;
    let index = BlobIndex::load(&repo)?;
    let tree_id = id_bytes(&snap.tree.into_inner());
    let tree_loc = index
        .tree
        .get(&tree_id)
        .ok_or_else(|| EngineError::Repository("the recovery point's tree is not in the index".into()))?;
    let tree: Tree = serde_json::from_slice(&read_blob(&local, &crypto, tree_loc, &tree_id)?)
        .map_err(|e| EngineError::Repository(format!("tree: {e}")))?;
    let names: Vec<String> = match &req.disks {
        Some(n) => n.clone(),
        None => meta.disks.iter().map(|d| d.name.clone()).collect(),
    };
    struct Job {
        size: u64,
        final_path: PathBuf,
        tmp: PathBuf,
        format: ImageFormat,
        chunks: Vec<(u64, usize, Hash)>,
    }
    let mut jobs = Vec::new();
    let mut tmps = TmpFiles(Vec::new());
    for name in &names {
        let entry = meta
            .disks
            .iter()
            .find(|d| &d.name == name)
            .ok_or_else(|| EngineError::InvalidRequest(format!("no disk '{name}' in the recovery point")))?;
        let node = tree
            .nodes
            .iter()
            .find(|n| n.name() == std::ffi::OsStr::new(name))
            .ok_or_else(|| EngineError::Repository(format!("disk '{name}' missing from tree")))?;
        let (final_path, format) = match &req.target {
            DiskRestoreTarget::Directory(dir) => {
                let p = dir.join(name);
                if fs::symlink_metadata(&p).is_ok() {
                    return Err(EngineError::Conflict { count: 1, first: p });
                }
                (p, req.format.unwrap_or(ImageFormat::Raw))
            }
            DiskRestoreTarget::Original => (entry.source_path.clone(), req.format.unwrap_or(entry.source_format)),
        };
        let chunks = layout(&index, node)?;
        let size: u64 = chunks.iter().map(|c| c.1 as u64).sum();
        if size != node.meta.size {
            return Err(EngineError::Repository(format!(
                "disk '{name}': content is {size} bytes, node says {}",
                node.meta.size
            )));
        }
        let tmp = tmp_name(&final_path)?;
        tmps.0.push(tmp.clone());
        jobs.push(Job {
            size,
            final_path,
            tmp,
            format,
            chunks,
        });
    }
    let total: u64 = jobs.iter().map(|j| j.size).sum();

    // Write, each blob verified against its content id before it is written.
    let counters = Arc::new(Counters::default());
    counters.set_total(total);
    let vcounters = Arc::new(Counters::default());
    vcounters.set_total(total);
    let writers = jobs
        .iter()
        .map(|j| ImageWriter::create(&j.tmp, j.format, j.size, engine.direct_io()))
        .collect::<Result<Vec<_>>>()?;
    report_while(progress, Task::Restore, &counters, || {
        report_while(progress, Task::Verify, &vcounters, || -> Result<()> {
            let targets: Vec<Target> = jobs
                .iter()
                .zip(&writers)
                .map(|(j, w)| Target {
                    writer: w,
                    chunks: &j.chunks,
                    path: &j.final_path,
                })
                .collect();
            diskpipe::restore(&local, &crypto, &index, &targets, cancel, &counters, &vcounters)
        })
    })?;
    for (j, w) in jobs.iter().zip(writers) {
        w.finish().ctx(|| format!("sync {}", j.tmp.display()))?;
    }

    // A qcow2 target is also read back through the format layer: its bytes went through
    // imago's cluster allocation, not straight to the file.
    for j in jobs.iter().filter(|j| j.format == ImageFormat::Qcow2) {
        let reader = ImageReader::open(&j.tmp, j.format)?;
        parallel(j.chunks.len(), cancel, |i| {
            let (off, len, id) = &j.chunks[i];
            let mut buf = vec![0u8; *len];
            reader
                .read_at(&mut buf, *off)
                .ctx(|| format!("read back {}", j.tmp.display()))?;
            if sha256(&buf) != *id {
                return Err(EngineError::VerificationFailed {
                    path: j.final_path.clone(),
                    reason: format!("bytes at offset {off} do not match the snapshot"),
                });
            }
            Ok(())
        })?;
    }
    if cancel.is_cancelled() {
        return Err(EngineError::Cancelled);
    }

    // Commit: rename each verified image into place.
    let mut out = RestoreOutcome::default();
    for j in &jobs {
        fs::rename(&j.tmp, &j.final_path).ctx(|| format!("rename to {}", j.final_path.display()))?;
        if let Some(dir) = j.final_path.parent() {
            fsync_dir(dir)?;
        }
        out.files_restored += 1;
        out.bytes_restored += j.size;
        out.paths.push(j.final_path.clone());
    }
    tmps.0.clear();
    Ok(out)
}

/// A path relative to the share root, without `..`.
fn relative(p: &Path) -> Result<PathBuf> {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::RootDir | Component::CurDir => {}
            _ => {
                return Err(EngineError::InvalidRequest(format!(
                    "path '{}' must stay inside the share",
                    p.display()
                )))
            }
        }
    }
    Ok(out)
}

pub(crate) fn restore_tree(
    engine: &ResticEngine,
    spec: &RepoSpec,
    req: &TreeRestoreRequest,
    progress: &dyn Progress,
    cancel: &Cancel,
) -> Result<RestoreOutcome> {
    let counters = Arc::new(Counters::default());
    let repo = engine.open(spec, Some(counters.clone()))?.to_indexed()?;
    let (snap, meta) = find_point(&repo, &req.recovery_point)?;
    let root = match (meta.kind, &meta.source_root) {
        (RecoveryPointKind::Tree, Some(r)) => r.clone(),
        _ => {
            return Err(EngineError::InvalidRequest(format!(
                "recovery point '{}' holds no file share",
                req.recovery_point
            )))
        }
    };
    let root_str = root
        .to_str()
        .ok_or_else(|| EngineError::Repository("share root is not UTF-8".into()))?;
    let target = req.target.clone().unwrap_or_else(|| root.clone());
    // rustic_core stores an empty share as an empty root tree.
    let entries: Vec<(PathBuf, Node)> = if repo.get_tree(&snap.tree)?.nodes.is_empty() {
        Vec::new()
    } else {
        let node = repo.node_from_snapshot_and_path(&snap, root_str)?;
        repo.ls(&node, &LsOptions::default())?.collect::<RusticResult<_>>()?
    };

    let selected: Vec<(PathBuf, Node)> = match &req.paths {
        None => entries,
        Some(paths) => {
            let sels = paths.iter().map(|p| relative(p)).collect::<Result<Vec<_>>>()?;
            for s in &sels {
                if !entries.iter().any(|(p, _)| p == s) {
                    return Err(EngineError::InvalidRequest(format!(
                        "'{}' is not in the recovery point",
                        s.display()
                    )));
                }
            }
            entries
                .into_iter()
                .filter(|(p, _)| sels.iter().any(|s| p.starts_with(s) || s.starts_with(p)))
                .collect()
        }
    };

    if cancel.is_cancelled() {
        return Err(EngineError::Cancelled);
    }
    // Written under temporary names relative to opened directories, verified, then renamed into
    // place (the rules are in `treerestore`).
    let vcounters = Arc::new(Counters::default());
    let staged = report_while(progress, Task::Restore, &counters, || {
        treerestore::stage(&repo, selected, &target, req.conflict, &counters, cancel)
    })?;
    report_while(progress, Task::Verify, &vcounters, || {
        staged.verify(&repo, &vcounters, cancel)
    })?;
    let done = staged.commit()?;
    Ok(RestoreOutcome {
        files_restored: done.files_restored,
        files_skipped: done.files_skipped,
        bytes_restored: done.bytes_restored,
        paths: vec![target.clone()],
    })
}
