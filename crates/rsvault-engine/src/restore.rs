//! Restores: VM disks as images, file share trees; both verified against the snapshot.
//!
//! Disks are written to a temporary file next to the final path (`.NAME.rsvault-restore-…`),
//! created mode 0600 in the target directory opened once without following symlinks
//! ([`crate::safefs`]); the conflict check, the temporary file, the rename and the clean-up all
//! work relative to that descriptor, so a directory swapped for a symlink is never followed (an
//! original-location image keeps the replaced file's owner and mode, set on the open file),
//! all-zero chunks left as holes, by the parallel pipeline of `diskpipe`, which checks every
//! blob's SHA-256 against the content id the snapshot names before it writes the bytes (the
//! bytes handed to the kernel are the verified bytes; a read-back from the page cache would
//! check nothing more). A qcow2 target is also re-read through `imago` after writing, since its
//! bytes went through the format layer's cluster allocation. Images are `fsync`ed and only then
//! renamed over the final path (the directory is `fsync`ed). A VM's disks are all restored and
//! verified before the first rename, so a failure leaves the originals untouched. Trees go through
//! `treerestore`: the share's trees listed through the engine's index, every file written in parallel
//! under a temporary name relative to directories opened without following links, each blob checked
//! against its content id before it is written, then all renamed into place (modes, times, extended
//! attributes and, as root, owners set on the open files; hard links and holes restored).

use std::fs;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use rustic_core::repofile::{Node, Tree};

use crate::backend::VaultBackend;
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

/// The hidden temporary name next to a restored image's final name.
fn tmp_name(name: &std::ffi::OsStr) -> std::ffi::OsString {
    std::ffi::OsString::from(format!(
        ".{}.rsvault-restore-{}-{}",
        name.to_string_lossy(),
        std::process::id(),
        TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ))
}

/// Removes the temporary files it holds (each in its opened directory) unless disarmed.
struct TmpFiles(Vec<(Arc<fs::File>, std::ffi::OsString)>);
impl Drop for TmpFiles {
    fn drop(&mut self) {
        for (dir, name) in &self.0 {
            let _ = crate::safefs::remove_in(dir, name);
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
    let local = VaultBackend::of(spec, engine.direct_io());
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
        /// The final path's directory, opened without following symlinks; the final name in it.
        dir: Arc<fs::File>,
        name: std::ffi::OsString,
        tmp: std::ffi::OsString,
        tmp_path: PathBuf,
        format: ImageFormat,
        chunks: Vec<(u64, usize, Hash)>,
        /// Owner, group and mode to give the image (an original-location restore keeps the
        /// replaced file's); `None`: root's, 0600.
        owner: Option<(u32, u32, u32)>,
    }
    let open_dir = |d: &Path| -> Result<Arc<fs::File>> {
        Ok(Arc::new(
            crate::safefs::open_dir(d).ctx(|| format!("open directory {}", d.display()))?,
        ))
    };
    let target_dir = match &req.target {
        DiskRestoreTarget::Directory(dir) => Some(open_dir(dir)?),
        DiskRestoreTarget::Original => None,
    };
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
        let (final_path, format, dir, owner) = match (&req.target, &target_dir) {
            (DiskRestoreTarget::Directory(d), Some(dirfd)) => {
                let p = d.join(name);
                let there = crate::safefs::stat_in(dirfd, std::ffi::OsStr::new(name))
                    .ctx(|| format!("stat {}", p.display()))?;
                if there.is_some() {
                    return Err(EngineError::Conflict { count: 1, first: p });
                }
                (p, req.format.unwrap_or(ImageFormat::Raw), dirfd.clone(), None)
            }
            _ => {
                let p = entry.source_path.clone();
                let parent = p
                    .parent()
                    .ok_or_else(|| EngineError::InvalidRequest(format!("bad target {}", p.display())))?;
                let dirfd = open_dir(parent)?;
                let file = p
                    .file_name()
                    .ok_or_else(|| EngineError::InvalidRequest(format!("bad target {}", p.display())))?;
                let owner = crate::safefs::stat_in(&dirfd, file)
                    .ctx(|| format!("stat {}", p.display()))?
                    .filter(|st| st.st_mode & libc::S_IFMT == libc::S_IFREG)
                    .map(|st| (st.st_uid, st.st_gid, st.st_mode & 0o777));
                (p, req.format.unwrap_or(entry.source_format), dirfd, owner)
            }
        };
        let chunks = layout(&index, node)?;
        let size: u64 = chunks.iter().map(|c| c.1 as u64).sum();
        if size != node.meta.size {
            return Err(EngineError::Repository(format!(
                "disk '{name}': content is {size} bytes, node says {}",
                node.meta.size
            )));
        }
        let fname = final_path
            .file_name()
            .ok_or_else(|| EngineError::InvalidRequest(format!("bad target {}", final_path.display())))?
            .to_os_string();
        let tmp = tmp_name(&fname);
        let tmp_path = final_path.with_file_name(&tmp);
        jobs.push(Job {
            size,
            final_path,
            dir,
            name: fname,
            tmp,
            tmp_path,
            format,
            chunks,
            owner,
        });
    }
    let total: u64 = jobs.iter().map(|j| j.size).sum();

    // Write, each blob verified against its content id before it is written.
    let counters = Arc::new(Counters::default());
    counters.set_total(total);
    let vcounters = Arc::new(Counters::default());
    vcounters.set_total(total);
    let mut writers = Vec::with_capacity(jobs.len());
    let mut handles = Vec::with_capacity(jobs.len());
    for j in &jobs {
        let (w, h) = ImageWriter::create_in(&j.dir, &j.tmp, &j.tmp_path, j.format, j.size, engine.direct_io())?;
        tmps.0.push((j.dir.clone(), j.tmp.clone()));
        writers.push(w);
        handles.push(h);
    }
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
        w.finish().ctx(|| format!("sync {}", j.tmp_path.display()))?;
    }

    // A qcow2 target is also read back through the format layer: its bytes went through
    // imago's cluster allocation, not straight to the file.
    for (j, h) in jobs
        .iter()
        .zip(&handles)
        .filter(|(j, _)| j.format == ImageFormat::Qcow2)
    {
        let f = h.try_clone().ctx(|| format!("dup {}", j.tmp_path.display()))?;
        let reader = ImageReader::from_file(f, &j.tmp_path, j.format)?;
        parallel(j.chunks.len(), cancel, |i| {
            let (off, len, id) = &j.chunks[i];
            let mut buf = vec![0u8; *len];
            reader
                .read_at(&mut buf, *off)
                .ctx(|| format!("read back {}", j.tmp_path.display()))?;
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

    // Owner and mode, set on the open files: root's 0600, or the replaced image's.
    for (j, h) in jobs.iter().zip(&handles) {
        if let Some((uid, gid, mode)) = j.owner {
            crate::safefs::set_owner_mode(h, uid, gid, mode)
                .ctx(|| format!("set owner and mode of {}", j.tmp_path.display()))?;
        }
    }
    drop(handles);

    // Commit: rename each verified image into place, within its opened directory.
    let mut out = RestoreOutcome::default();
    for j in &jobs {
        crate::safefs::rename_in(&j.dir, &j.tmp, &j.name).ctx(|| format!("rename to {}", j.final_path.display()))?;
        j.dir
            .sync_all()
            .ctx(|| format!("fsync directory of {}", j.final_path.display()))?;
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

/// Every entry below a snapshot's share root, in tree order (a directory before its entries),
/// with paths relative to the root: the trees read through the engine's index, each checked
/// against its id.
fn list_share(
    be: &VaultBackend,
    crypto: &Crypto,
    index: &BlobIndex,
    snap_tree: &rustic_core::TreeId,
    root: &Path,
) -> Result<Vec<(PathBuf, Node)>> {
    let load = |id: &rustic_core::TreeId| -> Result<Tree> {
        let h = id_bytes(&id.into_inner());
        let loc = index
            .tree
            .get(&h)
            .ok_or_else(|| EngineError::Repository("a tree of the recovery point is not in the index".into()))?;
        serde_json::from_slice(&read_blob(be, crypto, loc, &h)?)
            .map_err(|e| EngineError::Repository(format!("tree: {e}")))
    };
    let mut tree = load(snap_tree)?;
    // rustic_core stores an empty share as an empty root tree.
    if tree.nodes.is_empty() {
        return Ok(Vec::new());
    }
    for c in root.components() {
        let Component::Normal(name) = c else { continue };
        let node = tree
            .nodes
            .iter()
            .find(|n| n.name() == name && n.is_dir())
            .ok_or_else(|| EngineError::Repository(format!("'{}' is not in the recovery point", root.display())))?;
        let sub = node
            .subtree
            .ok_or_else(|| EngineError::Repository("a directory without its tree".into()))?;
        tree = load(&sub)?;
    }
    let mut out = Vec::new();
    // (directory, its nodes left, in reverse)
    let mut stack: Vec<(PathBuf, Vec<Node>)> = vec![(PathBuf::new(), tree.nodes.into_iter().rev().collect())];
    while let Some((dir, nodes)) = stack.last_mut() {
        let Some(node) = nodes.pop() else {
            stack.pop();
            continue;
        };
        let path = dir.join(node.name());
        let sub = node.subtree.filter(|_| node.is_dir());
        out.push((path.clone(), node));
        if let Some(sub) = sub {
            stack.push((path, load(&sub)?.nodes.into_iter().rev().collect()));
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
    let repo = engine.open(spec, None)?;
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
    let target = req.target.clone().unwrap_or_else(|| root.clone());
    let local = VaultBackend::of(spec, false);
    let crypto = Crypto::new(&repo.key())?;
    let index = BlobIndex::load(&repo)?;
    let entries = list_share(&local, &crypto, &index, &snap.tree, &root)?;

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
    let blobs = treerestore::Blobs {
        be: &local,
        crypto: &crypto,
        index: &index,
    };
    let vcounters = Arc::new(Counters::default());
    let staged = report_while(progress, Task::Restore, &counters, || {
        treerestore::stage(&blobs, selected, &target, req.conflict, &counters, cancel)
    })?;
    report_while(progress, Task::Verify, &vcounters, || staged.verify(&vcounters, cancel))?;
    let done = staged.commit()?;
    Ok(RestoreOutcome {
        files_restored: done.files_restored,
        files_skipped: done.files_skipped,
        bytes_restored: done.bytes_restored,
        paths: vec![target.clone()],
    })
}
