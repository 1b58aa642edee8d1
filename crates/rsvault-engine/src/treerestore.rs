//! File share restores that never leave a file half-written and never follow a link they did not make.
//!
//! Storage rules (what a crash, a cancel or a hostile local user can and cannot cause):
//!
//! * **Relative to opened directories.** The target root is reached from `/` one component at a time,
//!   each opened with `O_DIRECTORY | O_NOFOLLOW`, and every directory below it the same way from its
//!   parent's descriptor. A symbolic link met on the way (a directory swapped for a link after the
//!   backup, or after the request was checked) is refused, never followed; no write, `chmod` or
//!   `chown` ever goes through a path string.
//! * **Temporary name, then rename.** Each file (and symbolic link) is written under a temporary name in
//!   its final directory (`.NAME.rsvault-restore-PID-N`, created `O_EXCL | O_NOFOLLOW`, mode 0600), by
//!   several writers at once, each blob decrypted and checked against the snapshot's content id before
//!   its bytes are written (all-zero blobs are left as holes, so sparse files stay sparse); the file's
//!   length is checked, then owner, mode, times and extended attributes go onto the open temporary
//!   (`fchown`, `fchmod`, `futimens`, `fsetxattr`). Files that were hard links of one another are linked
//!   again between their temporaries. Only when *every* file of the restore is written, checked and made
//!   durable (one `syncfs` of the target's file system, not one `fsync` per file) is each temporary
//!   renamed over its final name (`renameat`), and the file system synced again. So an interrupted
//!   restore leaves every file either as it was or as restored, never mixed: a failure or cancel before
//!   the renames changes no existing file, and a crash during them leaves whole files on both sides of
//!   the line.
//! * **New subtrees whole.** A directory that does not exist yet is made under a temporary name in its
//!   (existing) parent, and everything below it under its own names; at commit it is renamed into
//!   place once (`RENAME_NOREPLACE`), after the files of existing directories. A restore into an empty
//!   target so renames its top-level directories, not every file (the per-file renames were 15 % of a
//!   50 004-file restore's samples, single-threaded).
//! * **Leftovers.** A crash leaves temporaries (files, links, staged directories);
//!   [`remove_leftovers`] removes them, a staged directory with everything in it (the job engine calls
//!   it for every restore a crash interrupted, at start). A failure or cancel removes its own.
//! * Directories are created 0700 and get their snapshot mode, owner and times after their contents.
//!   Owners are restored only when running as root. Entries that are not files, directories or
//!   symbolic links (devices, FIFOs, sockets) are not restored.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use rustic_core::repofile::Node;
use rustic_core::Id;
use rustix::fs::{AtFlags, Gid, Mode, OFlags, Timespec, Timestamps, Uid};
use rustix::io::Errno;

use crate::backend::VaultBackend;
use crate::diskpipe::Failure;
use crate::error::{EngineError, Result};
use crate::format::{id_bytes, open_blob, BlobIndex, BlobLoc, Crypto, Hash, CRYPTO_OVERHEAD};
use crate::progress::{Cancel, Counters};
use crate::types::ConflictPolicy;

/// The part of a temporary file's name that marks it as a restore's.
pub(crate) const TMP_MARK: &str = ".rsvault-restore-";

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

fn target_err(path: &Path, e: impl std::fmt::Display) -> EngineError {
    EngineError::Target {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

fn io_of(e: Errno) -> std::io::Error {
    std::io::Error::from_raw_os_error(e.raw_os_error())
}

/// A temporary name next to `name`.
pub(crate) fn tmp_name(name: &OsStr) -> OsString {
    let bytes = name.as_bytes();
    let keep = &bytes[..bytes.len().min(180)];
    let mut s = OsString::from(".");
    s.push(OsStr::from_bytes(keep));
    s.push(format!(
        "{TMP_MARK}{}-{}",
        std::process::id(),
        TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    s
}

/// Whether `name` is one [`tmp_name`] makes: `.`, a name, the mark, then `PID-N` (digits only, so a
/// user's file or directory that merely contains the mark is never taken for a leftover).
fn is_tmp_name(name: &OsStr) -> bool {
    let b = name.as_bytes();
    let mark = TMP_MARK.as_bytes();
    let Some(at) = b.windows(mark.len()).rposition(|w| w == mark) else {
        return false;
    };
    let tail = &b[at + mark.len()..];
    let mut parts = tail.split(|c| *c == b'-');
    let digits = |p: Option<&[u8]>| p.is_some_and(|p| !p.is_empty() && p.iter().all(u8::is_ascii_digit));
    b.first() == Some(&b'.') && at > 0 && digits(parts.next()) && digits(parts.next()) && parts.next().is_none()
}

/// Removes the directory `name` below `dir` and everything in it, never following a link.
fn remove_tree(dir: &OwnedFd, name: &OsStr, depth: usize) -> std::result::Result<(), Errno> {
    if depth > 256 {
        return Err(Errno::LOOP);
    }
    let sub = open_dir_at(dir, name)?;
    let mut subdirs = Vec::new();
    for entry in rustix::fs::Dir::read_from(&sub)? {
        let entry = entry?;
        let n = OsStr::from_bytes(entry.file_name().to_bytes());
        if n == "." || n == ".." {
            continue;
        }
        if entry.file_type() == rustix::fs::FileType::Directory {
            subdirs.push(n.to_os_string());
        } else {
            rustix::fs::unlinkat(&sub, n, AtFlags::empty())?;
        }
    }
    for n in subdirs {
        remove_tree(&sub, &n, depth + 1)?;
    }
    rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR)
}

fn open_dir_at(dir: &OwnedFd, name: &OsStr) -> std::result::Result<OwnedFd, Errno> {
    rustix::fs::openat(
        dir,
        name,
        OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

/// Opens an absolute directory path from `/`, one component at a time, never following a link;
/// creates missing components (0700) when `create`.
pub(crate) fn open_root(path: &Path, create: bool) -> Result<OwnedFd> {
    if !path.is_absolute() {
        return Err(target_err(path, "the restore target must be an absolute path"));
    }
    let root = rustix::fs::open("/", OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| target_err(path, io_of(e)))?;
    walk(&root, path, create, path)
}

/// Opens `rel` below `dir` (components `..` refused), never following a link.
fn walk(dir: &OwnedFd, rel: &Path, create: bool, shown: &Path) -> Result<OwnedFd> {
    let mut cur = rustix::fs::openat(
        dir,
        ".",
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| target_err(shown, io_of(e)))?;
    for c in rel.components() {
        let name = match c {
            Component::Normal(n) => n,
            Component::RootDir | Component::CurDir => continue,
            _ => return Err(target_err(shown, "'..' is not allowed in a restore path")),
        };
        cur = match open_dir_at(&cur, name) {
            Ok(fd) => fd,
            Err(Errno::NOENT) if create => {
                match rustix::fs::mkdirat(&cur, name, Mode::from_raw_mode(0o700)) {
                    Ok(()) | Err(Errno::EXIST) => {}
                    Err(e) => return Err(target_err(shown, io_of(e))),
                }
                open_dir_at(&cur, name).map_err(|e| unsafe_component(shown, name, e))?
            }
            Err(e) => return Err(unsafe_component(shown, name, e)),
        };
    }
    Ok(cur)
}

fn unsafe_component(shown: &Path, name: &OsStr, e: Errno) -> EngineError {
    match e {
        Errno::LOOP | Errno::NOTDIR => target_err(
            shown,
            format!(
                "'{}' on the way is a symbolic link or not a directory; restores never follow links",
                name.to_string_lossy()
            ),
        ),
        e => target_err(shown, io_of(e)),
    }
}

/// Lower-level file type of an existing entry, without following a link.
fn existing(dir: &OwnedFd, name: &OsStr) -> Option<rustix::fs::FileType> {
    rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
        .ok()
        .map(|st| rustix::fs::FileType::from_raw_mode(st.st_mode))
}

/// A path's parent (relative, possibly empty) and its last component.
fn split(rel: &Path) -> Result<(PathBuf, OsString)> {
    let name = rel
        .file_name()
        .ok_or_else(|| EngineError::InvalidRequest(format!("bad entry path '{}'", rel.display())))?;
    Ok((
        rel.parent().map(Path::to_path_buf).unwrap_or_default(),
        name.to_os_string(),
    ))
}

/// Directory descriptors by relative path, the last one reused (entries come in tree order).
struct Dirs<'a> {
    root: &'a OwnedFd,
    target: &'a Path,
    last: Option<(PathBuf, OwnedFd)>,
}

impl Dirs<'_> {
    fn get(&mut self, rel: &Path, create: bool) -> Result<&OwnedFd> {
        if self.last.as_ref().is_none_or(|(p, _)| p != rel) {
            let fd = walk(self.root, rel, create, &self.target.join(rel))?;
            self.last = Some((rel.to_path_buf(), fd));
        }
        Ok(&self.last.as_ref().expect("just set").1)
    }
}

/// A written and verified entry waiting for its rename.
struct Pending {
    /// The final parent (relative to the target).
    parent: PathBuf,
    /// Where it is written: `parent`, or, below a directory this restore made, that directory's
    /// temporary path.
    at: PathBuf,
    /// Its name in `at`: a temporary name in a directory that existed, its own name in a new one.
    tmp: OsString,
    name: OsString,
    node: Node,
    /// The content's length (0 for a symbolic link).
    size: u64,
    /// For a hard link: the entry in `pending` whose file it links to.
    link_to: Option<usize>,
}

/// What a tree restore did.
#[derive(Debug, Default)]
pub(crate) struct TreeOutcome {
    pub files_restored: u64,
    pub files_skipped: u64,
    pub bytes_restored: u64,
}

fn go_mode_to_unix(go: u32) -> u32 {
    let mut m = go & 0o777;
    if go & (1 << 23) != 0 {
        m |= 0o4000;
    }
    if go & (1 << 22) != 0 {
        m |= 0o2000;
    }
    if go & (1 << 20) != 0 {
        m |= 0o1000;
    }
    m
}

fn times_of(node: &Node) -> Option<Timestamps> {
    let ts = |t: &rustic_core::jiff::Timestamp| Timespec {
        tv_sec: t.as_second(),
        tv_nsec: t.subsec_nanosecond().into(),
    };
    let m = *node.meta.mtime.as_ref()?;
    let a = node.meta.atime.unwrap_or(m);
    Some(Timestamps {
        last_access: ts(&a),
        last_modification: ts(&m),
    })
}

fn owner_of(node: &Node) -> (Option<Uid>, Option<Gid>) {
    (node.meta.uid.map(Uid::from_raw), node.meta.gid.map(Gid::from_raw))
}

/// Sets owner, mode and times on an open file or directory (owner first: `chown` clears set-id bits).
fn apply_meta(fd: &OwnedFd, node: &Node, as_root: bool, shown: &Path) -> Result<()> {
    if as_root {
        let (u, g) = owner_of(node);
        rustix::fs::fchown(fd, u, g).map_err(|e| target_err(shown, io_of(e)))?;
    }
    if let Some(mode) = node.meta.mode {
        rustix::fs::fchmod(fd, Mode::from_raw_mode(go_mode_to_unix(mode))).map_err(|e| target_err(shown, io_of(e)))?;
    }
    if let Some(t) = times_of(node) {
        rustix::fs::futimens(fd, &t).map_err(|e| target_err(shown, io_of(e)))?;
    }
    Ok(())
}

fn id_hex(id: &rustic_core::DataId) -> String {
    id.into_inner().to_hex().as_str().to_string()
}

/// A restore whose files are written under temporary names and not yet renamed. Dropped without
/// [`Staged::commit`], it removes its temporaries (a failure or cancel changes no existing file).
pub(crate) struct Staged<'a> {
    target: &'a Path,
    root: OwnedFd,
    as_root: bool,
    pending: Vec<Pending>,
    dirs: Vec<(PathBuf, Node)>,
    /// The directories this restore made whose parent it did not make: (final path, temporary
    /// name in the same parent). Everything below them is written under its own name.
    new_tops: Vec<(PathBuf, OsString)>,
    out: TreeOutcome,
}

impl Drop for Staged<'_> {
    fn drop(&mut self) {
        for p in self.pending.iter().filter(|p| p.tmp != p.name) {
            if let Ok(d) = walk(&self.root, &p.at, false, self.target) {
                let _ = rustix::fs::unlinkat(&d, &p.tmp, AtFlags::empty());
            }
        }
        for (rel, tmp) in &self.new_tops {
            let parent = rel.parent().unwrap_or(Path::new(""));
            if let Ok(d) = walk(&self.root, parent, false, self.target) {
                let _ = remove_tree(&d, tmp, 0);
            }
        }
    }
}

/// Where a restore's directories are while it is staged: a directory it makes in one that exists
/// gets a temporary name (renamed at commit), and what is below it its own names.
#[derive(Default)]
struct NewDirs {
    /// Final path of every directory made by this restore.
    made: std::collections::HashSet<PathBuf>,
    /// Final path to temporary name, for the top ones.
    tops: HashMap<PathBuf, OsString>,
}

impl NewDirs {
    /// The path a directory's contents are written below while staged.
    fn staged(&self, rel: &Path) -> PathBuf {
        for a in rel.ancestors() {
            if let Some(tmp) = self.tops.get(a) {
                let rest = rel.strip_prefix(a).expect("an ancestor");
                return a.parent().unwrap_or(Path::new("")).join(tmp).join(rest);
            }
        }
        rel.to_path_buf()
    }
}

/// Where a restore reads file contents: the vault's packs through the engine's own index.
pub(crate) struct Blobs<'a> {
    pub be: &'a VaultBackend,
    pub crypto: &'a Crypto,
    pub index: &'a BlobIndex,
}

impl Blobs<'_> {
    fn loc(&self, id: &rustic_core::DataId) -> Result<(Hash, BlobLoc)> {
        let h = id_bytes(&id.into_inner());
        let loc = self
            .index
            .data
            .get(&h)
            .ok_or_else(|| EngineError::Repository(format!("blob {} is not in the index", id_hex(id))))?;
        Ok((h, *loc))
    }

    /// The plain length of a blob.
    fn len(&self, id: &rustic_core::DataId) -> Result<u64> {
        let (_, loc) = self.loc(id)?;
        Ok(loc
            .uncompressed
            .map_or(u64::from(loc.length).saturating_sub(CRYPTO_OVERHEAD as u64), u64::from))
    }

    /// A blob, decrypted, decompressed and checked against its id. `packs` keeps the local pack
    /// files last read open, most recent first (the share pipeline's packers fill several packs at
    /// once, so the files of one directory lie in a few packs in turn: measured, keeping only the
    /// last one reopened a pack for 42 341 of 50 004 files).
    fn get(
        &self,
        id: &rustic_core::DataId,
        dctx: &mut zstd::bulk::Decompressor<'static>,
        buf: &mut Vec<u8>,
        packs: &mut Vec<(Hash, std::fs::File)>,
    ) -> Result<Vec<u8>> {
        use std::os::unix::fs::FileExt;
        let (h, loc) = self.loc(id)?;
        buf.resize(loc.length as usize, 0);
        match packs.iter().position(|(p, _)| *p == loc.pack) {
            Some(0) => {}
            Some(i) => packs[..=i].rotate_right(1),
            None => {
                if let Some(f) = self.be.open_local_pack(&Id::new(loc.pack)) {
                    let f = f.map_err(|e| EngineError::io("open a pack", e))?;
                    packs.truncate(PACKS_OPEN - 1);
                    packs.insert(0, (loc.pack, f));
                }
            }
        }
        match packs.first() {
            Some((p, f)) if *p == loc.pack => f
                .read_exact_at(buf, loc.offset.into())
                .map_err(|e| EngineError::io("read a pack", e))?,
            _ => self.be.read_pack_range(&Id::new(loc.pack), loc.offset, buf)?,
        }
        open_blob(self.crypto, dctx, buf, &loc, &h)
    }
}

/// Parallel file writers of a restore: a restore waits mostly for reads and writes.
const WRITERS: usize = 2 * crate::diskpipe::WORKERS + 1;
/// Files of one directory a writer claims at once.
const BATCH: usize = 256;
/// Local pack files each writer keeps open (see [`Blobs::get`]).
const PACKS_OPEN: usize = 16;

/// Checks conflicts (before anything is written), then writes `entries` (paths relative to the share
/// root, in tree order) under temporary names below `target`, creating directories: directories
/// and symbolic links in order, regular files by [`WRITERS`] threads (each blob checked against its
/// id before it is written, all-zero blobs left as holes, owner, mode, times and extended
/// attributes set on the open file), hard links of files restored together made between their
/// temporaries; then the file system is synced once.
pub(crate) fn stage<'a>(
    blobs: &Blobs,
    entries: Vec<(PathBuf, Node)>,
    target: &'a Path,
    conflict: ConflictPolicy,
    transfer: &Counters,
    cancel: &Cancel,
) -> Result<Staged<'a>> {
    // SAFETY: geteuid has no preconditions.
    let as_root = unsafe { libc::geteuid() } == 0;
    let root = open_root(target, true)?;
    let mut out = TreeOutcome::default();
    let mut selected = Vec::with_capacity(entries.len());
    {
        let mut dirs = Dirs {
            root: &root,
            target,
            last: None,
        };
        let mut conflicts: Vec<PathBuf> = Vec::new();
        // The last directory found missing (its entries are not looked up one by one).
        let mut missing: Option<PathBuf> = None;
        for (rel, node) in entries {
            if node.is_dir() {
                selected.push((rel, node));
                continue;
            }
            if !(node.is_file() || node.is_symlink()) {
                continue; // devices, FIFOs, sockets: not restored
            }
            let (parent, name) = split(&rel)?;
            let there = if missing.as_ref() == Some(&parent) {
                None
            } else {
                match dirs.get(&parent, false) {
                    Ok(d) => existing(d, &name),
                    // A missing parent: made (or refused) later.
                    Err(EngineError::Target { .. }) => {
                        missing = Some(parent.clone());
                        None
                    }
                    Err(e) => return Err(e),
                }
            };
            match there {
                Some(rustix::fs::FileType::Directory) => {
                    return Err(EngineError::Conflict {
                        count: 1,
                        first: target.join(&rel),
                    })
                }
                Some(_) => match conflict {
                    ConflictPolicy::Skip => {
                        out.files_skipped += 1;
                        continue;
                    }
                    ConflictPolicy::FailOnConflict => conflicts.push(target.join(&rel)),
                    ConflictPolicy::Overwrite => {}
                },
                None => {}
            }
            selected.push((rel, node));
        }
        if let Some(first) = conflicts.first() {
            return Err(EngineError::Conflict {
                count: conflicts.len(),
                first: first.clone(),
            });
        }
    }
    transfer.set_total(
        selected
            .iter()
            .filter(|(_, n)| n.is_file())
            .map(|(_, n)| n.meta.size)
            .sum(),
    );
    let mut staged = Staged {
        target,
        root,
        as_root,
        pending: Vec::new(),
        dirs: Vec::new(),
        new_tops: Vec::new(),
        out,
    };
    let root = rustix::io::dup(&staged.root).map_err(|e| target_err(target, io_of(e)))?;
    let mut dirs = Dirs {
        root: &root,
        target,
        last: None,
    };
    // Directories and symbolic links in tree order; the files to write listed. A directory that
    // does not exist yet is made under a temporary name (its parent existed) or its own name (its
    // parent is new too), and the entries below it under their own names: one rename at commit
    // for a whole new subtree instead of one per file (measured: the per-file renames were 15 %
    // of a restore's samples, single-threaded, each a linear search of the directory).
    let mut files: Vec<usize> = Vec::new();
    let mut first_link: HashMap<(u64, u64), usize> = HashMap::new();
    let mut new = NewDirs::default();
    for (rel, node) in selected {
        if cancel.is_cancelled() {
            return Err(EngineError::Cancelled);
        }
        if node.is_dir() {
            make_dir(&mut dirs, &mut new, &mut staged.new_tops, &rel)?;
            staged.dirs.push((rel, node));
            continue;
        }
        let (parent, name) = split(&rel)?;
        let shown = target.join(&rel);
        let at = new.staged(&parent);
        let tmp = if new.made.contains(&parent) {
            name.clone()
        } else {
            tmp_name(&name)
        };
        let dir = dirs.get(&at, true)?;
        if node.is_symlink() {
            rustix::fs::symlinkat(node.node_type.to_link(), dir, &tmp).map_err(|e| target_err(&shown, io_of(e)))?;
            staged.pending.push(Pending {
                parent,
                at,
                tmp,
                name,
                node,
                size: 0,
                link_to: None,
            });
            continue;
        }
        let mut size = 0;
        for id in node.content.iter().flatten() {
            size += blobs.len(id)?;
        }
        // restic records a hard-linked file's device; files of one inode are one file again.
        let key = (node.meta.links > 1 && node.meta.device_id != 0).then_some((node.meta.device_id, node.meta.inode));
        let link_to = key.and_then(|k| first_link.get(&k).copied());
        match (key, link_to) {
            (_, Some(_)) => {}
            (Some(k), None) => {
                first_link.insert(k, staged.pending.len());
                files.push(staged.pending.len());
            }
            (None, _) => files.push(staged.pending.len()),
        }
        staged.pending.push(Pending {
            parent,
            at,
            tmp,
            name,
            node,
            size,
            link_to,
        });
    }
    drop(dirs);

    // The files, in parallel, one directory's files (up to a batch) per claim: writers creating
    // files in one directory at once wait for its lock (measured: most of the restore's system
    // time). The first failure stops every writer.
    let mut batches: Vec<std::ops::Range<usize>> = Vec::new();
    for (k, i) in files.iter().enumerate() {
        match batches.last_mut() {
            Some(b) if b.len() < BATCH && staged.pending[files[b.start]].at == staged.pending[*i].at => b.end = k + 1,
            _ => batches.push(k..k + 1),
        }
    }
    let next = AtomicUsize::new(0);
    let fail = Failure::default();
    std::thread::scope(|s| {
        for _ in 0..WRITERS.min(batches.len()) {
            s.spawn(|| {
                let mut dirs = Dirs {
                    root: &staged.root,
                    target,
                    last: None,
                };
                let mut dctx = match zstd::bulk::Decompressor::new() {
                    Ok(d) => d,
                    Err(e) => return fail.set(EngineError::Repository(format!("zstd: {e}"))),
                };
                let mut buf = Vec::new();
                let mut packs = Vec::with_capacity(PACKS_OPEN);
                loop {
                    let b = next.fetch_add(1, Ordering::Relaxed);
                    if b >= batches.len() || fail.stopped() {
                        return;
                    }
                    for &i in &files[batches[b].clone()] {
                        let p = &staged.pending[i];
                        let r = write_file(
                            blobs,
                            &mut dirs,
                            p,
                            as_root,
                            (&mut dctx, &mut buf, &mut packs),
                            transfer,
                            cancel,
                        );
                        if let Err(e) = r {
                            return fail.set(e);
                        }
                    }
                }
            });
        }
    });
    if let Some(e) = fail.take() {
        return Err(e);
    }
    // Hard links between the temporaries (one inode: its metadata is already set).
    let mut dirs = Dirs {
        root: &root,
        target,
        last: None,
    };
    for p in staged.pending.iter().filter(|p| p.link_to.is_some()) {
        let first = &staged.pending[p.link_to.expect("filtered")];
        let shown = target.join(&p.parent).join(&p.name);
        let from = walk(&root, &first.at, false, &shown)?;
        let to = dirs.get(&p.at, false)?;
        rustix::fs::linkat(&from, &first.tmp, to, &p.tmp, AtFlags::empty())
            .map_err(|e| target_err(&shown, io_of(e)))?;
    }
    if cancel.is_cancelled() {
        return Err(EngineError::Cancelled);
    }
    // Durable before any rename (one sync of the file system instead of one per file).
    rustix::fs::syncfs(&root).map_err(|e| target_err(target, io_of(e)))?;
    Ok(staged)
}

/// Opens or makes the directory `rel` (see [`stage`]): in a directory this restore made, under its
/// own name; in one that existed, an existing directory is used as it is and a missing one is
/// made under a temporary name (listed in `tops` for the commit's rename).
fn make_dir(dirs: &mut Dirs, new: &mut NewDirs, tops: &mut Vec<(PathBuf, OsString)>, rel: &Path) -> Result<()> {
    if rel.as_os_str().is_empty() {
        return Ok(()); // the target itself, opened (or made) first
    }
    let (parent, name) = split(rel)?;
    let shown = dirs.target.join(rel);
    let at = new.staged(&parent);
    let made = |dir: &OwnedFd, name: &OsStr| {
        rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(0o700)).map_err(|e| target_err(&shown, io_of(e)))
    };
    let dir = dirs.get(&at, true)?;
    if new.made.contains(&parent) {
        made(dir, &name)?;
    } else {
        match open_dir_at(dir, &name) {
            Ok(_) => return Ok(()),
            Err(Errno::NOENT) => {
                let tmp = tmp_name(&name);
                made(dir, &tmp)?;
                // Listed before anything is written below it, so a failure removes it.
                tops.push((rel.to_path_buf(), tmp.clone()));
                new.tops.insert(rel.to_path_buf(), tmp);
            }
            Err(e) => return Err(unsafe_component(&shown, &name, e)),
        }
    }
    new.made.insert(rel.to_path_buf());
    Ok(())
}

/// A writer's decompressor, read buffer and open pack files.
type Scratch<'s> = (
    &'s mut zstd::bulk::Decompressor<'static>,
    &'s mut Vec<u8>,
    &'s mut Vec<(Hash, std::fs::File)>,
);

/// Writes one file's temporary (see [`stage`]).
#[allow(clippy::too_many_arguments)]
fn write_file(
    blobs: &Blobs,
    dirs: &mut Dirs,
    p: &Pending,
    as_root: bool,
    (dctx, buf, packs): Scratch,
    transfer: &Counters,
    cancel: &Cancel,
) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let shown = dirs.target.join(&p.parent).join(&p.name);
    let dir = dirs.get(&p.at, false)?;
    let fd = rustix::fs::openat(
        dir,
        &p.tmp,
        OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )
    .map_err(|e| target_err(&shown, io_of(e)))?;
    let f = std::fs::File::from(fd);
    let (mut off, mut written) = (0u64, 0u64);
    for id in p.node.content.iter().flatten() {
        if cancel.is_cancelled() {
            return Err(EngineError::Cancelled);
        }
        let data = blobs
            .get(id, dctx, buf, packs)
            .map_err(|e| EngineError::VerificationFailed {
                path: shown.clone(),
                reason: format!("vault blob {}: {e}", id_hex(id)),
            })?;
        // All zeros: a hole (restic restores sparse files so too).
        if data.iter().any(|b| *b != 0) {
            f.write_all_at(&data, off).map_err(|e| target_err(&shown, e))?;
            written = off + data.len() as u64;
        }
        off += data.len() as u64;
        transfer.add(data.len() as u64);
    }
    if off != p.size {
        return Err(EngineError::VerificationFailed {
            path: shown,
            reason: format!("{off} bytes written, the snapshot's content is {}", p.size),
        });
    }
    if written < off {
        f.set_len(off).map_err(|e| target_err(&shown, e))?; // a hole at the end
    }
    let fd = OwnedFd::from(f);
    for x in &p.node.meta.extended_attributes {
        let (Ok(name), Some(value)) = (std::ffi::CString::new(x.name.as_bytes()), x.value.as_ref()) else {
            continue;
        };
        // SAFETY: an open fd, a NUL-terminated name, a value valid for its length.
        let r = unsafe {
            libc::fsetxattr(
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                name.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            )
        };
        if r != 0 {
            tracing::warn!(
                "{}: extended attribute {} not restored: {}",
                shown.display(),
                x.name,
                std::io::Error::last_os_error()
            );
        }
    }
    apply_meta(&fd, &p.node, as_root, &shown)
}

impl Staged<'_> {
    /// Checks every temporary against the snapshot: a file's length (its bytes were checked
    /// against their ids before they were written), a symbolic link's target.
    pub(crate) fn verify(&self, verify: &Counters, cancel: &Cancel) -> Result<()> {
        verify.set_total(self.pending.iter().map(|p| p.size).sum());
        let mut dirs = Dirs {
            root: &self.root,
            target: self.target,
            last: None,
        };
        for p in &self.pending {
            if cancel.is_cancelled() {
                return Err(EngineError::Cancelled);
            }
            let shown = self.target.join(&p.parent).join(&p.name);
            let dir = dirs.get(&p.at, false)?;
            if p.node.is_symlink() {
                let got = rustix::fs::readlinkat(dir, &p.tmp, Vec::new()).map_err(|e| target_err(&shown, io_of(e)))?;
                if Path::new(OsStr::from_bytes(got.as_bytes())) != p.node.node_type.to_link() {
                    return Err(EngineError::VerificationFailed {
                        path: shown,
                        reason: "symlink target differs".into(),
                    });
                }
                continue;
            }
            let st =
                rustix::fs::statat(dir, &p.tmp, AtFlags::SYMLINK_NOFOLLOW).map_err(|e| target_err(&shown, io_of(e)))?;
            if st.st_mode & libc::S_IFMT != libc::S_IFREG || st.st_size as u64 != p.size {
                return Err(EngineError::VerificationFailed {
                    path: shown,
                    reason: format!("{} bytes, the snapshot's content is {}", st.st_size, p.size),
                });
            }
            verify.add(p.size);
        }
        Ok(())
    }

    /// Owners and times onto the symbolic links, then every rename; then the directories' own
    /// metadata, deepest first.
    pub(crate) fn commit(mut self) -> Result<TreeOutcome> {
        let root = rustix::io::dup(&self.root).map_err(|e| target_err(self.target, io_of(e)))?;
        let target = self.target;
        let mut dirs = Dirs {
            root: &root,
            target,
            last: None,
        };
        for p in self.pending.iter().filter(|p| p.node.is_symlink()) {
            let shown = target.join(&p.parent).join(&p.name);
            let dir = dirs.get(&p.at, false)?;
            if self.as_root {
                let (u, g) = owner_of(&p.node);
                rustix::fs::chownat(dir, &p.tmp, u, g, AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(|e| target_err(&shown, io_of(e)))?;
            }
            if let Some(t) = times_of(&p.node) {
                rustix::fs::utimensat(dir, &p.tmp, &t, AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(|e| target_err(&shown, io_of(e)))?;
            }
        }
        // The renames: from here on each file (and each new subtree) is either as it was or as
        // restored. Files in directories that existed first, then the new directories (a new
        // directory never replaces one someone made meanwhile).
        let pending = std::mem::take(&mut self.pending);
        for (i, p) in pending.iter().enumerate().filter(|(_, p)| p.tmp != p.name) {
            let shown = target.join(&p.parent).join(&p.name);
            let res = dirs.get(&p.at, false).and_then(|dir| {
                rustix::fs::renameat(dir, &p.tmp, dir, &p.name).map_err(|e| target_err(&shown, io_of(e)))
            });
            if let Err(e) = res {
                self.pending = pending.into_iter().skip(i).collect();
                return Err(e);
            }
        }
        let tops = std::mem::take(&mut self.new_tops);
        for (i, (rel, tmp)) in tops.iter().enumerate() {
            let shown = target.join(rel);
            let res = split(rel).and_then(|(parent, name)| {
                let dir = dirs.get(&parent, false)?;
                match rustix::fs::renameat_with(dir, tmp, dir, &name, rustix::fs::RenameFlags::NOREPLACE) {
                    // A file system without RENAME_NOREPLACE: a directory still never replaces
                    // a non-empty one.
                    Err(Errno::INVAL) => rustix::fs::renameat(dir, tmp, dir, &name),
                    r => r,
                }
                .map_err(|e| target_err(&shown, io_of(e)))
            });
            if let Err(e) = res {
                self.new_tops = tops.into_iter().skip(i).collect();
                return Err(e);
            }
        }
        for p in &pending {
            if p.node.is_file() {
                self.out.bytes_restored += p.node.meta.size;
            }
            self.out.files_restored += 1;
        }
        let _ = rustix::fs::syncfs(&root);
        let mut made = std::mem::take(&mut self.dirs);
        made.sort_by_key(|(p, _)| std::cmp::Reverse(p.components().count()));
        for (rel, node) in &made {
            let shown = target.join(rel);
            let fd = walk(&root, rel, false, &shown)?;
            apply_meta(&fd, node, self.as_root, &shown)?;
        }
        Ok(std::mem::take(&mut self.out))
    }
}

/// Removes the temporaries an interrupted restore left under `dir` (recursively when `recursive`;
/// links are never followed). Returns how many were removed. A missing `dir` has none.
pub fn remove_leftovers(dir: &Path, recursive: bool) -> Result<usize> {
    let fd = match open_root(dir, false) {
        Ok(fd) => fd,
        Err(_) => return Ok(0),
    };
    let mut n = 0;
    sweep(&fd, dir, recursive, 0, &mut n)?;
    Ok(n)
}

fn sweep(dir: &OwnedFd, shown: &Path, recursive: bool, depth: usize, n: &mut usize) -> Result<()> {
    if depth > 256 {
        return Ok(());
    }
    let mut subdirs = Vec::new();
    {
        let d = rustix::fs::Dir::read_from(dir).map_err(|e| target_err(shown, io_of(e)))?;
        for entry in d {
            let entry = entry.map_err(|e| target_err(shown, io_of(e)))?;
            let name = OsStr::from_bytes(entry.file_name().to_bytes()).to_os_string();
            if name == "." || name == ".." {
                continue;
            }
            let ft = entry.file_type();
            if is_tmp_name(&name) && ft == rustix::fs::FileType::Directory {
                // A new subtree that was never renamed into place.
                if remove_tree(dir, &name, depth).is_ok() {
                    *n += 1;
                }
            } else if is_tmp_name(&name) {
                if rustix::fs::unlinkat(dir, &name, AtFlags::empty()).is_ok() {
                    *n += 1;
                }
            } else if recursive && ft == rustix::fs::FileType::Directory {
                subdirs.push(name);
            }
        }
    }
    for name in subdirs {
        if let Ok(sub) = open_dir_at(dir, &name) {
            sweep(&sub, &shown.join(&name), recursive, depth + 1, n)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temporary_names_are_recognised_and_bounded() {
        let long = OsString::from("x".repeat(255));
        for name in [OsStr::new("a.txt"), OsStr::new(".hidden"), long.as_os_str()] {
            let t = tmp_name(name);
            assert!(is_tmp_name(&t), "{t:?}");
            assert!(t.len() <= 255, "{}", t.len());
        }
        assert!(!is_tmp_name(OsStr::new("report.rsvault-restore-notes")));
        assert!(!is_tmp_name(OsStr::new(".report.rsvault-restore-notes")));
        assert!(!is_tmp_name(OsStr::new(".report.rsvault-restore-1-2-3")));
        assert!(!is_tmp_name(OsStr::new(".rsvault-restore-1-2")));
        assert!(is_tmp_name(OsStr::new(".a.rsvault-restore-41-7")));
        assert!(!is_tmp_name(OsStr::new("plain")));
    }

    #[test]
    fn open_root_refuses_a_symlink_on_the_way() {
        let tmp = tempfile::tempdir().unwrap();
        let real = tmp.path().join("real");
        std::fs::create_dir(&real).unwrap();
        std::os::unix::fs::symlink(&real, tmp.path().join("link")).unwrap();
        assert!(open_root(&real.join("a/b"), true).is_ok());
        assert!(real.join("a/b").is_dir());
        let err = open_root(&tmp.path().join("link/a"), true).unwrap_err();
        assert!(matches!(err, EngineError::Target { .. }), "{err}");
        assert!(open_root(Path::new("relative"), true).is_err());
    }

    #[test]
    fn leftovers_are_removed_and_links_not_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("share");
        let outside = tmp.path().join("outside");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(root.join(tmp_name(OsStr::new("a"))), b"x").unwrap();
        std::fs::write(root.join("sub").join(tmp_name(OsStr::new("b"))), b"x").unwrap();
        std::fs::write(root.join("keep.txt"), b"x").unwrap();
        std::fs::write(outside.join(tmp_name(OsStr::new("c"))), b"x").unwrap();
        std::os::unix::fs::symlink(&outside, root.join("out")).unwrap();
        // A new subtree staged under a temporary name, with a link out of it; a user's
        // directory whose name only contains the mark.
        let staged = root.join("sub").join(tmp_name(OsStr::new("newdir")));
        std::fs::create_dir_all(staged.join("deeper")).unwrap();
        std::fs::write(staged.join("deeper/f"), b"x").unwrap();
        std::os::unix::fs::symlink(&outside, staged.join("deeper/out")).unwrap();
        let users = root.join(".notes.rsvault-restore-ideas");
        std::fs::create_dir_all(&users).unwrap();
        std::fs::write(users.join("f"), b"x").unwrap();
        assert_eq!(remove_leftovers(&root, false).unwrap(), 1);
        assert_eq!(remove_leftovers(&root, true).unwrap(), 2);
        assert!(!staged.exists());
        assert!(root.join("keep.txt").exists() && users.join("f").exists());
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 1, "a link was followed");
        assert_eq!(remove_leftovers(&tmp.path().join("missing"), true).unwrap(), 0);
    }
}
