//! The engine's own parallel pipeline for file shares (directory trees), writing the restic
//! format itself as [`crate::diskpipe`] does for disks (and with its pack writer, sealer and
//! index: [`crate::format`]).
//!
//! **Walk.** [`WORKERS`]` + 1` workers share one stack of tasks: *scan a directory* and *read a
//! file*. The share root is opened from `/` without following links ([`crate::safefs`]); every
//! directory below it is opened from its parent's descriptor (`openat`, `O_NOFOLLOW |
//! O_DIRECTORY`), and every entry is `fstatat`ed without following links, so a component
//! swapped for a symlink is never followed. A directory's entries are sorted by name (restic's
//! order) and become nodes with the metadata rustic_core's local source records (so trees of
//! the older path and this one are byte-identical for the same share): Go-style mode, mtime,
//! atime (= mtime, rustic_core's default), ctime, uid/gid with user and group names, inode,
//! the device for hard-linked files, size, link count, a symlink's target, a device's number,
//! extended attributes.
//!
//! **Files.** A file whose type, size, mtime, ctime and inode equal its node in the parent
//! snapshot's tree at the same path (and whose blobs the index still holds) keeps the parent's
//! content list (and extended attributes: changing them moves the ctime) without being opened.
//! Any other file is opened relative to its directory (`O_NOFOLLOW`, checked to be the regular
//! file the scan saw: same device and inode), read in large blocks, cut by the repository's
//! content-defined chunker ([`crate::cdc`], the same cuts as rustic_core), each chunk hashed and,
//! if neither the vault nor this backup holds it, compressed and encrypted into the current data
//! pack. A file that cannot be opened or read is left out with a warning (as rustic_core's
//! archiver does); one that changed while read is kept and makes the point inconsistent.
//!
//! **Trees.** A directory's tree is complete when its last file and subtree are; the worker that
//! completes it serializes it (restic's JSON, rustic_core's serializer), stores it in a tree pack
//! unless the vault already holds that id, gives the id to the directory's node in its parent,
//! and so on up. So a directory whose content did not change yields its parent tree's id and
//! writes nothing; only the trees on the path to a change are new. Above the share root come
//! the trees of the root's path components (one bare 0755 directory node each, as rustic_core
//! writes them). Packs go to writer threads through a one-slot channel (one writer for a
//! directory with direct I/O, [`REMOTE_WRITERS`] for an object store). Only after every pack is
//! written are the index and last the snapshot written: a cancel, an error or a crash before
//! leaves orphan packs only.
//!
//! Memory: per worker one read buffer (the chunker's maximum plus one read block), one sealing
//! scratch buffer; one data pack and one tree pack being filled, one queued, one per writer; the
//! share's directory nodes until each directory completes (trees complete depth-first, so
//! roughly the nodes of the directories on the current paths).

use std::collections::{HashMap, HashSet};
use std::ffi::{CString, OsStr, OsString};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use rustic_core::jiff::Timestamp;
use rustic_core::repofile::{BlobType, Metadata, Node, NodeType, SnapshotFile, SnapshotId, SnapshotSummary, Tree};
use rustic_core::{FileType, Id};
use rustix::fs::{AtFlags, Mode, OFlags};
use rustix::io::Errno;

use crate::backend::VaultBackend;
use crate::cdc::Chunker;
use crate::diskpipe::{read_blob, secs_between, write_pack, Failure, Sealer, Writer, REMOTE_WRITERS, WORKERS};
use crate::error::{EngineError, Result};
use crate::format::{encode_file, id_bytes, repo_err, sha256, write_file, BlobIndex, Hash, IndexWriter, PackBuilder};
use crate::iobuf::AlignedBuf;
use crate::progress::{Cancel, Counters};
use crate::sources::Warnings;

/// The summary's `command` of a snapshot this pipeline wrote.
pub(crate) const SHARE_COMMAND: &str = "rsvault share pipeline";

/// Bytes read from a file at once.
const READ_BLOCK: usize = 1 << 20;

/// What a share backup reports besides its snapshot.
#[derive(Debug, Default)]
pub(crate) struct ShareStats {
    /// Bytes read from files.
    pub scanned: u64,
    /// Sum of the regular files' sizes.
    pub total_size: u64,
}

/// The parent recovery point: its snapshot id and root tree.
pub(crate) struct ParentSnap {
    pub id: SnapshotId,
    pub tree: rustic_core::TreeId,
}

#[derive(Default)]
struct Stats {
    files_new: AtomicU64,
    files_changed: AtomicU64,
    files_unmodified: AtomicU64,
    dirs_new: AtomicU64,
    dirs_changed: AtomicU64,
    dirs_unmodified: AtomicU64,
    files: AtomicU64,
    dirs: AtomicU64,
    bytes: AtomicU64,
    read: AtomicU64,
    data_blobs: AtomicU64,
    data_plain: AtomicU64,
    data_stored: AtomicU64,
    tree_blobs: AtomicU64,
    tree_plain: AtomicU64,
    tree_stored: AtomicU64,
}

fn bump(a: &AtomicU64, n: u64) {
    a.fetch_add(n, Ordering::Relaxed);
}

fn get(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

/// A directory of the share whose tree is being built.
struct DirState {
    /// Its parent and its node's position there (`None`: the share root).
    up: Option<(Arc<DirState>, usize)>,
    nodes: Mutex<Vec<Node>>,
    /// Children not yet complete, plus one while the directory is being scanned.
    pending: AtomicUsize,
    /// The parent snapshot's tree of this directory.
    parent_tree: Option<Hash>,
}

/// (device, inode, size, mtime ns, ctime ns) of a file as the scan saw it.
type Seen = (u64, u64, u64, i128, i128);

enum Task {
    Dir {
        state: Arc<DirState>,
        /// The directory's parent, opened, and its name there (`None`: `fd` is the root).
        at: Option<(Arc<OwnedFd>, OsString)>,
        root: Option<OwnedFd>,
        rel: PathBuf,
    },
    File {
        dir: Arc<DirState>,
        idx: usize,
        fd: Arc<OwnedFd>,
        name: OsString,
        rel: PathBuf,
        seen: Seen,
    },
}

/// The work stack and how many tasks are being worked on.
struct Queue {
    state: Mutex<(Vec<Task>, usize)>,
    cv: Condvar,
}

impl Queue {
    fn push(&self, t: Task) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).0.push(t);
        self.cv.notify_one();
    }
    fn push_all(&self, ts: Vec<Task>) {
        if ts.is_empty() {
            return;
        }
        self.state.lock().unwrap_or_else(|p| p.into_inner()).0.extend(ts);
        self.cv.notify_all();
    }
    /// The next task; `None` when none is left and none is being worked on (or on failure).
    fn pop(&self, fail: &Failure) -> Option<Task> {
        let mut g = self.state.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if fail.stopped() {
                self.cv.notify_all();
                return None;
            }
            if let Some(t) = g.0.pop() {
                g.1 += 1;
                return Some(t);
            }
            if g.1 == 0 {
                self.cv.notify_all();
                return None;
            }
            g = self
                .cv
                .wait_timeout(g, std::time::Duration::from_millis(100))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
    fn done(&self) {
        let mut g = self.state.lock().unwrap_or_else(|p| p.into_inner());
        g.1 -= 1;
        if g.1 == 0 && g.0.is_empty() {
            self.cv.notify_all();
        }
    }
}

/// The packs being filled (data and tree) and the channel to the writers.
struct Packs<'a> {
    w: &'a Writer<'a>,
    data: Mutex<PackBuilder>,
    tree: Mutex<PackBuilder>,
    spare: Mutex<Vec<AlignedBuf>>,
    cap: usize,
}

type PackTx = crossbeam_channel::Sender<PackBuilder>;

impl Packs<'_> {
    fn add(&self, tx: &PackTx, tpe: BlobType, id: Hash, sealed: &[u8], plain: Option<u32>) -> Result<()> {
        let full = {
            let mut p = match tpe {
                BlobType::Data => self.data.lock(),
                BlobType::Tree => self.tree.lock(),
            }
            .unwrap_or_else(|p| p.into_inner());
            p.add(id, tpe, sealed, plain);
            (p.data.len() >= self.w.pack_size).then(|| {
                let buf = self
                    .spare
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .pop()
                    .unwrap_or_else(|| AlignedBuf::with_capacity(self.cap));
                std::mem::replace(&mut *p, PackBuilder::new(buf))
            })
        };
        if let Some(full) = full {
            tx.send(full).map_err(|_| repo_err("pack writer stopped"))?;
        }
        Ok(())
    }

    /// Sends the partly filled packs to the writers.
    fn flush(&self, tx: &PackTx) -> Result<()> {
        for m in [&self.data, &self.tree] {
            let last = std::mem::replace(
                &mut *m.lock().unwrap_or_else(|p| p.into_inner()),
                PackBuilder::new(AlignedBuf::with_capacity(0)),
            );
            if !last.is_empty() {
                tx.send(last).map_err(|_| repo_err("pack writer stopped"))?;
            }
        }
        Ok(())
    }
}

/// User and group names by id (looked up once each).
#[derive(Default)]
struct Names {
    users: Mutex<HashMap<u32, Option<String>>>,
    groups: Mutex<HashMap<u32, Option<String>>>,
}

fn lookup_name(id: u32, user: bool) -> Option<String> {
    let mut buf = vec![0u8; 16 * 1024];
    // SAFETY: getpwuid_r/getgrgid_r write into the given structs and buffer only; the name
    // pointer they return points into `buf`, read before `buf` is dropped.
    unsafe {
        if user {
            let mut pw: libc::passwd = std::mem::zeroed();
            let mut res: *mut libc::passwd = std::ptr::null_mut();
            let r = libc::getpwuid_r(id, &mut pw, buf.as_mut_ptr().cast(), buf.len(), &mut res);
            if r != 0 || res.is_null() || pw.pw_name.is_null() {
                return None;
            }
            Some(std::ffi::CStr::from_ptr(pw.pw_name).to_string_lossy().into_owned())
        } else {
            let mut gr: libc::group = std::mem::zeroed();
            let mut res: *mut libc::group = std::ptr::null_mut();
            let r = libc::getgrgid_r(id, &mut gr, buf.as_mut_ptr().cast(), buf.len(), &mut res);
            if r != 0 || res.is_null() || gr.gr_name.is_null() {
                return None;
            }
            Some(std::ffi::CStr::from_ptr(gr.gr_name).to_string_lossy().into_owned())
        }
    }
}

impl Names {
    fn get(&self, id: u32, user: bool) -> Option<String> {
        let m = if user { &self.users } else { &self.groups };
        if let Some(n) = m.lock().unwrap_or_else(|p| p.into_inner()).get(&id) {
            return n.clone();
        }
        let n = lookup_name(id, user);
        m.lock().unwrap_or_else(|p| p.into_inner()).insert(id, n.clone());
        n
    }
}

/// `st_mode` in Go's form (rustic_core's and restic's `mode`).
fn go_mode(mode: u32) -> u32 {
    let mut m = mode & 0o777;
    m |= match mode & libc::S_IFMT {
        libc::S_IFSOCK => 1 << 24,
        libc::S_IFLNK => 1 << 27,
        libc::S_IFBLK => 1 << 26,
        libc::S_IFDIR => 1 << 31,
        libc::S_IFCHR => (1 << 21) & (1 << 26),
        libc::S_IFIFO => 1 << 25,
        libc::S_IFREG => 0,
        _ => 1 << 19,
    };
    if mode & libc::S_ISUID != 0 {
        m |= 1 << 23;
    }
    if mode & libc::S_ISGID != 0 {
        m |= 1 << 22;
    }
    if mode & libc::S_ISVTX != 0 {
        m |= 1 << 20;
    }
    m
}

fn ts(sec: i64, nsec: u64) -> Option<Timestamp> {
    Timestamp::new(sec, nsec as i32).ok()
}

/// Extended attributes as (name, value).
type Xattrs = Vec<(String, Vec<u8>)>;

/// As a node's `extended_attributes` (rustic_core does not export their type; its serde form is
/// restic's: name and base64 value).
fn to_attrs<T: serde::de::DeserializeOwned>(x: Xattrs) -> Vec<T> {
    use base64::Engine as _;
    x.into_iter()
        .filter_map(|(name, value)| {
            serde_json::from_value(serde_json::json!({
                "name": name,
                "value": base64::engine::general_purpose::STANDARD.encode(value),
            }))
            .ok()
        })
        .collect()
}

fn ns(t: Option<Timestamp>) -> i128 {
    t.map_or(i128::MIN, |t| t.as_nanosecond())
}

/// Extended attributes through a path (`/proc/self/fd/DIR/NAME`: the opened directory itself,
/// the last component not followed) or an open file.
enum XattrOf<'a> {
    Path(&'a CString),
    Fd(&'a OwnedFd),
}

fn xattrs(of: XattrOf) -> Xattrs {
    let list = |buf: &mut [u8]| -> isize {
        // SAFETY: buf is valid for its length; the path is NUL-terminated, the fd open.
        unsafe {
            match of {
                XattrOf::Path(p) => libc::llistxattr(p.as_ptr(), buf.as_mut_ptr().cast(), buf.len()),
                XattrOf::Fd(f) => libc::flistxattr(f.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()),
            }
        }
    };
    let n = list(&mut []);
    if n <= 0 {
        return Vec::new();
    }
    let mut names = vec![0u8; n as usize + 256];
    let n = list(&mut names);
    if n <= 0 {
        return Vec::new();
    }
    names.truncate(n as usize);
    let mut out = Vec::new();
    for name in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let Ok(cname) = CString::new(name) else { continue };
        let get = |buf: &mut [u8]| -> isize {
            // SAFETY: as above.
            unsafe {
                match of {
                    XattrOf::Path(p) => libc::lgetxattr(p.as_ptr(), cname.as_ptr(), buf.as_mut_ptr().cast(), buf.len()),
                    XattrOf::Fd(f) => {
                        libc::fgetxattr(f.as_raw_fd(), cname.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
                    }
                }
            }
        };
        let len = get(&mut []);
        if len < 0 {
            continue;
        }
        let mut value = vec![0u8; len as usize + 64];
        let len = get(&mut value);
        if len < 0 {
            continue;
        }
        value.truncate(len as usize);
        out.push((String::from_utf8_lossy(name).into_owned(), value));
    }
    out
}

fn proc_path(dir: &OwnedFd, name: &OsStr) -> Option<CString> {
    let mut p = format!("/proc/self/fd/{}/", dir.as_raw_fd()).into_bytes();
    p.extend_from_slice(name.as_bytes());
    CString::new(p).ok()
}

struct Pipe<'a> {
    w: &'a Writer<'a>,
    index: &'a BlobIndex,
    local: &'a VaultBackend,
    chunker: &'a Chunker,
    cancel: &'a Cancel,
    warnings: &'a Warnings,
    counters: &'a Counters,
    packs: Packs<'a>,
    queue: Queue,
    fail: Failure,
    seen_data: Mutex<HashSet<Hash>>,
    seen_tree: Mutex<HashSet<Hash>>,
    names: Names,
    stats: Stats,
    root_tree: Mutex<Option<Hash>>,
    share_root: &'a Path,
}

/// Per-worker state.
struct Worker<'a> {
    sealer: Sealer<'a>,
    buf: Vec<u8>,
    tx: PackTx,
}

impl<'a> Pipe<'a> {
    fn warn(&self, rel: &Path, what: impl std::fmt::Display) {
        self.warnings
            .push(format!("{} {what}", self.share_root.join(rel).display()));
    }

    /// Stores a blob unless the vault or this backup holds it.
    fn store(&self, sealer: &mut Sealer, tx: &PackTx, tpe: BlobType, id: Hash, plain: &[u8]) -> Result<()> {
        let (known, seen) = match tpe {
            BlobType::Data => (self.index.data.contains_key(&id), &self.seen_data),
            BlobType::Tree => (self.index.tree.contains_key(&id), &self.seen_tree),
        };
        if known || !seen.lock().unwrap_or_else(|p| p.into_inner()).insert(id) {
            return Ok(());
        }
        let (n, unc) = sealer.seal(plain)?;
        let (blobs, p, s) = match tpe {
            BlobType::Data => (&self.stats.data_blobs, &self.stats.data_plain, &self.stats.data_stored),
            BlobType::Tree => (&self.stats.tree_blobs, &self.stats.tree_plain, &self.stats.tree_stored),
        };
        bump(blobs, 1);
        bump(p, plain.len() as u64);
        bump(s, n as u64);
        self.packs.add(tx, tpe, id, &sealer.scratch[..n], unc)
    }

    /// A tree of the parent snapshot, by id (`None` if it cannot be read: then nothing is reused).
    fn parent_tree(&self, id: &Hash, rel: &Path) -> Option<Tree> {
        let loc = self.index.tree.get(id)?;
        match read_blob(self.local, self.w.crypto, loc, id)
            .and_then(|b| serde_json::from_slice::<Tree>(&b).map_err(|e| repo_err(format!("tree: {e}"))))
        {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::warn!(
                    "parent tree of {} not read ({e}); its files are read again",
                    rel.display()
                );
                None
            }
        }
    }

    fn run(&self, wk: &mut Worker, task: Task) -> Result<()> {
        match task {
            Task::Dir { state, at, root, rel } => {
                let fd = match (root, at) {
                    (Some(fd), _) => Some(fd),
                    (None, Some((parent, name))) => match rustix::fs::openat(
                        &*parent,
                        &name,
                        OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::RDONLY | OFlags::CLOEXEC,
                        Mode::empty(),
                    ) {
                        Ok(fd) => Some(fd),
                        Err(e) => {
                            self.warn(&rel, format_args!("was not backed up: {e}"));
                            None
                        }
                    },
                    (None, None) => None,
                };
                match fd {
                    Some(fd) => self.scan(wk, state, Arc::new(fd), rel),
                    None => self.complete(wk, state),
                }
            }
            Task::File {
                dir,
                idx,
                fd,
                name,
                rel,
                seen,
            } => {
                let got = self.read_file(wk, &fd, &name, &rel, seen)?;
                {
                    let mut nodes = dir.nodes.lock().unwrap_or_else(|p| p.into_inner());
                    let node = &mut nodes[idx];
                    if let Some((content, xattrs)) = got {
                        node.content = Some(content);
                        node.meta.extended_attributes = to_attrs(xattrs);
                    }
                }
                self.child_done(wk, dir)
            }
        }
    }

    /// One child of `dir` is complete.
    fn child_done(&self, wk: &mut Worker, dir: Arc<DirState>) -> Result<()> {
        if dir.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.complete(wk, dir)?;
        }
        Ok(())
    }

    /// Writes the tree of a complete directory and passes its id up (iteratively).
    fn complete(&self, wk: &mut Worker, dir: Arc<DirState>) -> Result<()> {
        let mut dir = dir;
        loop {
            let mut nodes = std::mem::take(&mut *dir.nodes.lock().unwrap_or_else(|p| p.into_inner()));
            // Files that could not be read are left out (a directory that could not be opened
            // has no subtree: an empty one is recorded, as its entries are unknown).
            nodes.retain(|n| !(n.node_type == NodeType::File && n.content.is_none()));
            for n in &mut nodes {
                if n.node_type == NodeType::Dir && n.subtree.is_none() {
                    let (json, id) = Tree::default()
                        .serialize()
                        .map_err(|e| repo_err(format!("tree: {e}")))?;
                    let h = id_bytes(&id.into_inner());
                    self.store(&mut wk.sealer, &wk.tx, BlobType::Tree, h, &json)?;
                    n.subtree = Some(id);
                }
            }
            let (json, id) = Tree { nodes }.serialize().map_err(|e| repo_err(format!("tree: {e}")))?;
            let h = id_bytes(&id.into_inner());
            // The share root is not counted (as rustic_core counts).
            match dir.parent_tree {
                _ if dir.up.is_none() => {}
                Some(p) if p == h => bump(&self.stats.dirs_unmodified, 1),
                Some(_) => bump(&self.stats.dirs_changed, 1),
                None => bump(&self.stats.dirs_new, 1),
            }
            self.store(&mut wk.sealer, &wk.tx, BlobType::Tree, h, &json)?;
            match &dir.up {
                None => {
                    *self.root_tree.lock().unwrap_or_else(|p| p.into_inner()) = Some(h);
                    return Ok(());
                }
                Some((up, idx)) => {
                    up.nodes.lock().unwrap_or_else(|p| p.into_inner())[*idx].subtree = Some(id);
                    let up = up.clone();
                    if up.pending.fetch_sub(1, Ordering::AcqRel) != 1 {
                        return Ok(());
                    }
                    dir = up;
                }
            }
        }
    }

    /// Lists a directory, makes its nodes, and queues its subdirectories and the files to read.
    #[allow(clippy::field_reassign_with_default)] // `Metadata` is non-exhaustive.
    fn scan(&self, wk: &mut Worker, state: Arc<DirState>, fd: Arc<OwnedFd>, rel: PathBuf) -> Result<()> {
        if self.cancel.is_cancelled() {
            return Err(EngineError::Cancelled);
        }
        let parent: HashMap<OsString, Node> = state
            .parent_tree
            .and_then(|id| self.parent_tree(&id, &rel))
            .map(|t| t.nodes.into_iter().map(|n| (n.name().into_owned(), n)).collect())
            .unwrap_or_default();
        let mut names: Vec<OsString> = Vec::new();
        match rustix::fs::Dir::read_from(&*fd) {
            Ok(d) => {
                for e in d {
                    match e {
                        Ok(e) => {
                            let n = e.file_name().to_bytes();
                            if n != b"." && n != b".." {
                                names.push(OsStr::from_bytes(n).to_os_string());
                            }
                        }
                        Err(e) => {
                            self.warn(&rel, format_args!("could not be listed completely: {e}"));
                            break;
                        }
                    }
                }
            }
            Err(e) => self.warn(&rel, format_args!("could not be listed: {e}")),
        }
        names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        let mut nodes = Vec::with_capacity(names.len());
        // (node index, task) of the children to do.
        let mut subdirs: Vec<(usize, OsString, Option<Hash>)> = Vec::new();
        let mut files: Vec<(usize, OsString, Seen)> = Vec::new();
        let (mut nfiles, mut ndirs, mut bytes) = (0u64, 0u64, 0u64);
        for name in names {
            let st = match rustix::fs::statat(&*fd, &name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => st,
                Err(Errno::NOENT) => continue, // gone since the listing
                Err(e) => {
                    self.warn(&rel.join(&name), format_args!("was not backed up: {e}"));
                    continue;
                }
            };
            let fmt = st.st_mode & libc::S_IFMT;
            let is_dir = fmt == libc::S_IFDIR;
            let mtime = ts(st.st_mtime, st.st_mtime_nsec);
            let mut meta = Metadata::default();
            meta.mode = Some(go_mode(st.st_mode));
            meta.mtime = mtime;
            meta.atime = mtime;
            meta.ctime = ts(st.st_ctime, st.st_ctime_nsec);
            meta.uid = Some(st.st_uid);
            meta.gid = Some(st.st_gid);
            meta.user = self.names.get(st.st_uid, true);
            meta.group = self.names.get(st.st_gid, false);
            meta.inode = st.st_ino;
            meta.device_id = if st.st_nlink > 1 && !is_dir { st.st_dev } else { 0 };
            meta.size = if is_dir { 0 } else { st.st_size as u64 };
            meta.links = if is_dir { 0 } else { st.st_nlink };
            let p = parent.get(&name);
            let xattrs_here = || {
                proc_path(&fd, &name)
                    .map(|c| to_attrs(xattrs(XattrOf::Path(&c))))
                    .unwrap_or_default()
            };
            let node_type = match fmt {
                libc::S_IFDIR => NodeType::Dir,
                libc::S_IFREG => NodeType::File,
                libc::S_IFLNK => match rustix::fs::readlinkat(&*fd, &name, Vec::new()) {
                    Ok(t) => NodeType::from_link(Path::new(OsStr::from_bytes(t.as_bytes()))),
                    Err(e) => {
                        self.warn(&rel.join(&name), format_args!("was not backed up: {e}"));
                        continue;
                    }
                },
                libc::S_IFBLK => NodeType::Dev { device: st.st_rdev },
                libc::S_IFCHR => NodeType::Chardev { device: st.st_rdev },
                libc::S_IFIFO => NodeType::Fifo,
                libc::S_IFSOCK => NodeType::Socket,
                _ => NodeType::File,
            };
            let mut node;
            if node_type == NodeType::File && fmt == libc::S_IFREG {
                nfiles += 1;
                bytes += meta.size;
                let same = p.filter(|p| {
                    p.node_type == NodeType::File
                        && p.meta.size == meta.size
                        && p.meta.mtime.is_some()
                        && p.meta.mtime == meta.mtime
                        && p.meta.ctime == meta.ctime
                        && p.meta.inode == meta.inode
                        && p.content.as_ref().is_some_and(|c| {
                            c.iter()
                                .all(|id| self.index.data.contains_key(&id_bytes(&id.into_inner())))
                        })
                });
                match same {
                    Some(p) => {
                        meta.extended_attributes = p.meta.extended_attributes.clone();
                        node = Node::new_node(&name, NodeType::File, meta);
                        node.content = p.content.clone();
                        bump(&self.stats.files_unmodified, 1);
                        self.counters.add(node.meta.size);
                    }
                    None => {
                        bump(
                            if p.is_some() {
                                &self.stats.files_changed
                            } else {
                                &self.stats.files_new
                            },
                            1,
                        );
                        let seen = (st.st_dev, st.st_ino, meta.size, ns(meta.mtime), ns(meta.ctime));
                        node = Node::new_node(&name, NodeType::File, meta);
                        files.push((nodes.len(), name.clone(), seen));
                    }
                }
            } else {
                if is_dir {
                    ndirs += 1;
                } else {
                    nfiles += 1;
                }
                meta.extended_attributes = xattrs_here();
                node = Node::new_node(&name, node_type, meta);
                if is_dir {
                    let ptree = p
                        .filter(|p| p.node_type == NodeType::Dir)
                        .and_then(|p| p.subtree)
                        .map(|t| id_bytes(&t.into_inner()));
                    subdirs.push((nodes.len(), name.clone(), ptree));
                } else if p.is_some_and(|p| p.node_type == node.node_type && p.meta == node.meta) {
                    bump(&self.stats.files_unmodified, 1);
                } else if p.is_some() {
                    bump(&self.stats.files_changed, 1);
                } else {
                    bump(&self.stats.files_new, 1);
                }
            }
            nodes.push(node);
        }
        bump(&self.stats.files, nfiles);
        bump(&self.stats.dirs, ndirs);
        bump(&self.stats.bytes, bytes);
        self.counters.total.fetch_add(bytes, Ordering::Relaxed);
        *state.nodes.lock().unwrap_or_else(|p| p.into_inner()) = nodes;
        state.pending.fetch_add(subdirs.len() + files.len(), Ordering::AcqRel);
        // Subdirectories first: the stack is LIFO, so this directory's files are read first.
        let mut tasks = Vec::with_capacity(subdirs.len() + files.len());
        for (idx, name, ptree) in subdirs.into_iter().rev() {
            tasks.push(Task::Dir {
                state: Arc::new(DirState {
                    up: Some((state.clone(), idx)),
                    nodes: Mutex::default(),
                    pending: AtomicUsize::new(1),
                    parent_tree: ptree,
                }),
                rel: rel.join(&name),
                at: Some((fd.clone(), name)),
                root: None,
            });
        }
        for (idx, name, seen) in files.into_iter().rev() {
            tasks.push(Task::File {
                dir: state.clone(),
                idx,
                fd: fd.clone(),
                rel: rel.join(&name),
                name,
                seen,
            });
        }
        self.queue.push_all(tasks);
        self.child_done(wk, state)
    }

    /// Reads, chunks and stores one file; `None` if it was left out (with a warning).
    fn read_file(
        &self,
        wk: &mut Worker,
        dir: &OwnedFd,
        name: &OsStr,
        rel: &Path,
        seen: Seen,
    ) -> Result<Option<(Vec<rustic_core::DataId>, Xattrs)>> {
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
        let fd = match rustix::fs::openat(dir, name, flags | OFlags::NOATIME, Mode::empty()) {
            Err(Errno::PERM) => rustix::fs::openat(dir, name, flags, Mode::empty()),
            r => r,
        };
        let fd = match fd {
            Ok(fd) => fd,
            Err(e) => {
                self.warn(rel, format_args!("was not backed up: {e}"));
                return Ok(None);
            }
        };
        let st = match rustix::fs::fstat(&fd) {
            Ok(st) => st,
            Err(e) => {
                self.warn(rel, format_args!("was not backed up: {e}"));
                return Ok(None);
            }
        };
        if st.st_mode & libc::S_IFMT != libc::S_IFREG || st.st_dev != seen.0 || st.st_ino != seen.1 {
            self.warn(rel, "was not backed up: it was replaced after the walk saw it");
            return Ok(None);
        }
        let xattrs = xattrs(XattrOf::Fd(&fd));
        let file = std::fs::File::from(fd);
        let mut content = Vec::new();
        let max = self.chunker.max();
        let want = max + READ_BLOCK;
        if wk.buf.len() < want {
            wk.buf.resize(want, 0);
        }
        let (mut start, mut end, mut eof, mut read) = (0usize, 0usize, false, 0u64);
        loop {
            if self.cancel.is_cancelled() {
                return Err(EngineError::Cancelled);
            }
            if self.fail.stopped() {
                return Ok(None);
            }
            while !eof && end - start < max {
                if end + READ_BLOCK > wk.buf.len() {
                    wk.buf.copy_within(start..end, 0);
                    end -= start;
                    start = 0;
                }
                let room = (wk.buf.len() - end).min(READ_BLOCK.max(max - (end - start)));
                match std::os::unix::fs::FileExt::read_at(&file, &mut wk.buf[end..end + room], read) {
                    Ok(0) => eof = true,
                    Ok(n) => {
                        end += n;
                        read += n as u64;
                        // The size the scan saw: no read to find the end (a file that grew is
                        // seen as changed below).
                        eof = read == seen.2;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        self.warn(rel, format_args!("could not be read completely: {e}"));
                        return Ok(None);
                    }
                }
            }
            if start == end {
                break;
            }
            let n = self.chunker.cut(&wk.buf[start..end]);
            let chunk = &wk.buf[start..start + n];
            let id = sha256(chunk);
            self.store(&mut wk.sealer, &wk.tx, BlobType::Data, id, chunk)?;
            self.counters.add(n as u64);
            content.push(Id::new(id).into());
            start += n;
        }
        bump(&self.stats.read, read);
        if let Ok(now) = rustix::fs::fstat(&file) {
            let changed = now.st_size as u64 != seen.2
                || read != seen.2
                || ns(ts(now.st_mtime, now.st_mtime_nsec)) != seen.3
                || ns(ts(now.st_ctime, now.st_ctime_nsec)) != seen.4;
            if changed {
                self.warnings.push_changed(format!(
                    "{} changed while it was read; its copy may be inconsistent",
                    self.share_root.join(rel).display()
                ));
            }
        }
        Ok(Some((content, xattrs)))
    }
}

/// Backs up the share at `root` (absolute, resolved) and commits the snapshot `snap`; `describe`
/// gives the snapshot's description for the share's total size. See the module doc.
#[allow(clippy::too_many_arguments)]
pub(crate) fn backup(
    w: &Writer,
    local: &VaultBackend,
    index: &BlobIndex,
    chunker: &Chunker,
    root: &Path,
    parent: Option<ParentSnap>,
    mut snap: SnapshotFile,
    describe: &dyn Fn(u64) -> Result<String>,
    cancel: &Cancel,
    warnings: &Warnings,
    counters: &Counters,
) -> Result<(SnapshotFile, ShareStats)> {
    let start = rustic_core::jiff::Zoned::now();
    let comps: Vec<&OsStr> = root
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n),
            _ => None,
        })
        .collect();
    let root_fd: OwnedFd = crate::safefs::open_dir(root)
        .map_err(|e| EngineError::Source {
            path: root.to_path_buf(),
            reason: e.to_string(),
        })?
        .into();

    let (tx, rx) = crossbeam_channel::bounded::<PackBuilder>(1);
    #[allow(clippy::field_reassign_with_default)] // `Metadata` is non-exhaustive.
    let bare_dir = {
        let mut m = Metadata::default();
        m.mode = Some(0o755);
        m
    };
    let cap = w.pack_size + chunker.max() + 256 * 1024;
    let pipe = Pipe {
        w,
        index,
        local,
        chunker,
        cancel,
        warnings,
        counters,
        packs: Packs {
            w,
            data: Mutex::new(PackBuilder::new(AlignedBuf::with_capacity(cap))),
            tree: Mutex::new(PackBuilder::new(AlignedBuf::with_capacity(0))),
            spare: Mutex::default(),
            cap,
        },
        queue: Queue {
            state: Mutex::new((Vec::new(), 0)),
            cv: Condvar::new(),
        },
        fail: Failure::default(),
        seen_data: Mutex::default(),
        seen_tree: Mutex::default(),
        names: Names::default(),
        stats: Stats::default(),
        root_tree: Mutex::new(None),
        share_root: root,
    };

    // The parent's tree of the share root: down its path components.
    let parent_root = parent.as_ref().and_then(|p| {
        let mut id = id_bytes(&p.tree.into_inner());
        for c in &comps {
            let t = pipe.parent_tree(&id, Path::new(""))?;
            let n = t
                .nodes
                .into_iter()
                .find(|n| n.name() == *c && n.node_type == NodeType::Dir)?;
            id = id_bytes(&n.subtree?.into_inner());
        }
        Some(id)
    });
    pipe.queue.push(Task::Dir {
        state: Arc::new(DirState {
            up: None,
            nodes: Mutex::default(),
            pending: AtomicUsize::new(1),
            parent_tree: parent_root,
        }),
        at: None,
        root: Some(root_fd),
        rel: PathBuf::new(),
    });

    let index_out = Mutex::new(IndexWriter::default());
    let spare = &pipe.packs.spare;
    std::thread::scope(|s| {
        let writers: Vec<_> = (0..if w.be.is_remote() { REMOTE_WRITERS } else { 1 })
            .map(|_| {
                let rx = rx.clone();
                let (fail, index_out) = (&pipe.fail, &index_out);
                s.spawn(move || {
                    for pack in rx {
                        if fail.stopped() {
                            continue;
                        }
                        match write_pack(w, index_out, pack) {
                            Ok((_, buf)) => {
                                let mut sp = spare.lock().unwrap_or_else(|p| p.into_inner());
                                if sp.len() < 2 {
                                    sp.push(buf);
                                }
                            }
                            Err(e) => fail.set(e),
                        }
                    }
                })
            })
            .collect();
        drop(rx);
        let workers: Vec<_> = (0..WORKERS + 1)
            .map(|_| {
                let (pipe, tx) = (&pipe, tx.clone());
                s.spawn(move || {
                    let mut wk = match Sealer::new(w) {
                        Ok(sealer) => Worker {
                            sealer,
                            buf: Vec::new(),
                            tx,
                        },
                        Err(e) => return pipe.fail.set(e),
                    };
                    while let Some(task) = pipe.queue.pop(&pipe.fail) {
                        let r = if cancel.is_cancelled() {
                            Err(EngineError::Cancelled)
                        } else {
                            pipe.run(&mut wk, task)
                        };
                        pipe.queue.done();
                        if let Err(e) = r {
                            pipe.fail.set(e);
                            pipe.queue.cv.notify_all();
                            return;
                        }
                    }
                })
            })
            .collect();
        for h in workers {
            if h.join().is_err() {
                pipe.fail.set(repo_err("a backup worker panicked"));
            }
        }
        // The trees above the share root: one bare directory node each, as rustic_core makes them.
        if !pipe.fail.stopped() {
            let r = (|| -> Result<()> {
                if cancel.is_cancelled() {
                    return Err(EngineError::Cancelled);
                }
                let mut wk = Worker {
                    sealer: Sealer::new(w)?,
                    buf: Vec::new(),
                    tx: tx.clone(),
                };
                let mut id = pipe
                    .root_tree
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .ok_or_else(|| repo_err("the share's tree was not completed"))?;
                for c in comps.iter().rev() {
                    let mut node = Node::new_node(c, NodeType::Dir, bare_dir.clone());
                    node.subtree = Some(Id::new(id).into());
                    let (json, tid) = Tree { nodes: vec![node] }
                        .serialize()
                        .map_err(|e| repo_err(format!("tree: {e}")))?;
                    id = id_bytes(&tid.into_inner());
                    pipe.store(&mut wk.sealer, &wk.tx, BlobType::Tree, id, &json)?;
                }
                *pipe.root_tree.lock().unwrap_or_else(|p| p.into_inner()) = Some(id);
                pipe.packs.flush(&wk.tx)
            })();
            if let Err(e) = r {
                pipe.fail.set(e);
            }
        }
        // The last sender: the writers finish what is queued, then stop.
        drop(tx);
        for h in writers {
            if h.join().is_err() {
                pipe.fail.set(repo_err("the pack writer panicked"));
            }
        }
    });
    if cancel.is_cancelled() {
        return Err(EngineError::Cancelled);
    }
    let Pipe {
        fail,
        stats: st,
        root_tree,
        ..
    } = pipe;
    if let Some(e) = fail.take() {
        return Err(e);
    }
    let root_tree = root_tree
        .into_inner()
        .unwrap_or_else(|p| p.into_inner())
        .ok_or_else(|| repo_err("the share's tree was not completed"))?;
    let index_out = index_out.into_inner().unwrap_or_else(|p| p.into_inner());
    index_out.write(w.be, w.crypto, w.zstd)?;

    // The snapshot: the commit.
    let mut sum = snap.summary.take().unwrap_or_default();
    fill_summary(&mut sum, &st);
    sum.command = SHARE_COMMAND.into();
    sum.backup_start = start;
    let end = rustic_core::jiff::Zoned::now();
    sum.backup_duration = secs_between(&sum.backup_start, &end);
    sum.total_duration = secs_between(&snap.time, &end);
    sum.backup_end = end;
    snap.summary = Some(sum);
    snap.tree = Id::new(root_tree).into();
    snap.paths = rustic_core::StringList::default();
    snap.paths.add(root.to_string_lossy().into_owned());
    if let Some(p) = &parent {
        snap.parent = Some(p.id);
        snap.parents = vec![p.id];
    }
    let total_size = get(&st.bytes);
    snap.description = Some(describe(total_size)?);
    snap.id = Default::default();
    let json = serde_json::to_vec(&snap).map_err(|e| repo_err(format!("serializing snapshot: {e}")))?;
    let id = write_file(w.be, FileType::Snapshot, encode_file(w.crypto, &json, w.zstd)?)?;
    snap.id = id.into();
    Ok((
        snap,
        ShareStats {
            scanned: get(&st.read),
            total_size,
        },
    ))
}

fn fill_summary(sum: &mut SnapshotSummary, st: &Stats) {
    sum.files_new = get(&st.files_new);
    sum.files_changed = get(&st.files_changed);
    sum.files_unmodified = get(&st.files_unmodified);
    sum.dirs_new = get(&st.dirs_new);
    sum.dirs_changed = get(&st.dirs_changed);
    sum.dirs_unmodified = get(&st.dirs_unmodified);
    sum.total_files_processed = get(&st.files);
    sum.total_dirs_processed = get(&st.dirs);
    sum.total_bytes_processed = get(&st.bytes);
    sum.data_blobs = get(&st.data_blobs);
    sum.tree_blobs = get(&st.tree_blobs);
    sum.data_added_files = get(&st.data_plain);
    sum.data_added_files_packed = get(&st.data_stored);
    sum.data_added_trees = get(&st.tree_plain);
    sum.data_added_trees_packed = get(&st.tree_stored);
    sum.data_added = sum.data_added_files + sum.data_added_trees;
    sum.data_added_packed = sum.data_added_files_packed + sum.data_added_trees_packed;
}
