//! Storage rules of a vault repository, and the backend rustic_core writes through.
//!
//! A vault is one restic repository in a local directory (`config`, `keys/`, `snapshots/`,
//! `index/`, `data/xx/`, as restic lays it out). rustic_core does the format; this module does
//! the bytes on disk, with these rules:
//!
//! * **Atomic, durable writes.** A repository file is written to `tmp/` inside the repository,
//!   `fsync`ed, renamed to its final name, and the directory is `fsync`ed. A reader (rsvault or
//!   stock `restic`) sees a file either complete or not at all; a crash leaves at most a stray
//!   file in `tmp/` (which restic ignores and [`crate::Engine::prune`] removes). Files are 0600,
//!   directories 0700.
//! * **Write order makes a recovery point.** Pack files, then the index that names them, then the
//!   snapshot file. The snapshot file is the commit: a backup that is cancelled, fails or is
//!   killed before it never becomes a recovery point. A backup that fails or is cancelled before
//!   its index is written removes its own packs at once ([`GateBackend::discard_unindexed`]: no
//!   reader can know them, and a full disk gets its space back); later orphans, and those of a
//!   killed backup, are reclaimed by the next prune. [`GateBackend`] refuses the snapshot write when the call was cancelled or
//!   a source failed (rustic_core's archiver skips unreadable entries with a warning; for a disk
//!   that would silently produce a recovery point without it).
//! * **Locking.** `rsvault.lock` in the repository root is `flock`ed: shared by backups, restores
//!   and listings (they only add files or read), exclusive by prune, delete and verify (they remove
//!   files or need a quiet repository). Locks are advisory and per process-open-file, released
//!   when the process dies, so a crash never leaves a stale lock. Stock `restic` does not know this
//!   lock; run it read-only (`snapshots`, `restore`, `check`) while rsvault works.
//! * **Chunking per source kind.** The repository's config keeps restic's content-defined
//!   (Rabin) chunker, used for file shares (through rustic_core) and by stock `restic`. Disk
//!   images are cut by the engine's own pipeline into fixed [`DISK_CHUNK_SIZE`] pieces aligned
//!   to the image's offsets; chunk sizes are a writer's choice in the restic format, so
//!   readers are unaffected and the config file is never changed.

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use rustic_core::{BytesList, ErrorKind, FileType, Id, ReadBackend, RusticError, RusticResult, WriteBackend};

use crate::error::{EngineError, IoContext, Result};
use crate::iobuf::{AlignedBuf, ALIGN};
use crate::objstore::ObjectRepo;
use crate::progress::Cancel;
use crate::types::{RepoLocation, RepoSpec};

/// Chunk size for disk images. Every changed chunk is stored again, so smaller chunks store less
/// after scattered writes (the benchmark's 1 % of 100 KiB writes: 303 MB with 4 MiB chunks,
/// 156 MB with 2 MiB, 83 MB with 1 MiB; restic's content-defined chunks, 1 MiB on average,
/// ≈180 MB) at the same speed; but the in-memory index of a backup has one entry per unique
/// chunk of the vault (≈85 MB per TiB of unique data at 2 MiB, twice that at 1 MiB). Vaults
/// written with 4 MiB chunks (before 2 MiB) stay readable (a restore takes each blob's length
/// from the index), but their chunks do not dedupe with the new ones.
pub const DISK_CHUNK_SIZE: usize = 2 * 1024 * 1024;

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

fn io_err(what: &str, path: &Path, e: std::io::Error) -> Box<RusticError> {
    RusticError::with_source(ErrorKind::Backend, "{what} `{path}` failed", e)
        .attach_context("what", what.to_string())
        .attach_context("path", path.display().to_string())
}

/// `fsync` a directory, so a rename or unlink in it is durable.
pub(crate) fn fsync_dir(dir: &Path) -> Result<()> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .ctx(|| format!("fsync {}", dir.display()))
}

/// The local-directory backend (restic's layout) with the storage rules of this module.
#[derive(Debug)]
pub struct LocalBackend {
    root: PathBuf,
    direct: bool,
}

impl LocalBackend {
    /// A backend for the repository at `root` (nothing is touched until used).
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
            direct: true,
        }
    }

    /// Whether the engine's pack writes and reads may use direct I/O (default: yes; without,
    /// or where the filesystem refuses it, they go through the page cache).
    pub fn with_direct_io(mut self, on: bool) -> Self {
        self.direct = on;
        self
    }

    fn dir(&self, tpe: FileType, id: &Id) -> PathBuf {
        match tpe {
            FileType::Config => self.root.clone(),
            FileType::Pack => self.root.join("data").join(&id.to_hex().as_str()[..2]),
            _ => self.root.join(tpe.dirname()),
        }
    }

    fn path(&self, tpe: FileType, id: &Id) -> PathBuf {
        match tpe {
            FileType::Config => self.root.join("config"),
            _ => self.dir(tpe, id).join(id.to_hex().as_str()),
        }
    }

    /// Reads `buf.len()` bytes of pack `id` at `offset` into `buf` (through the page cache).
    pub(crate) fn read_pack_range(&self, id: &Id, offset: u32, buf: &mut [u8]) -> Result<()> {
        use std::os::unix::fs::FileExt;
        let p = self.path(FileType::Pack, id);
        fs::File::open(&p)
            .and_then(|f| f.read_exact_at(buf, offset.into()))
            .ctx(|| format!("read {}", p.display()))
    }

    /// Writes a repository file by the storage rules: temp file in `tmp/`, `fsync`, rename,
    /// `fsync` of the directory. `direct` opens the temp file with `O_DIRECT` (falling back to
    /// an ordinary open where the filesystem refuses it).
    fn write_with(
        &self,
        tpe: FileType,
        id: &Id,
        direct: bool,
        fill: impl FnOnce(&mut fs::File) -> std::io::Result<()>,
    ) -> RusticResult<()> {
        let dir = self.dir(tpe, id);
        let path = self.path(tpe, id);
        let tmpdir = self.root.join("tmp");
        mkdir(&tmpdir).map_err(|e| io_err("creating", &tmpdir, e))?;
        mkdir(&dir).map_err(|e| io_err("creating", &dir, e))?;
        let tmp = tmpdir.join(format!(
            "{}-{}-{}",
            id.to_hex().as_str(),
            std::process::id(),
            TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let write = || -> std::io::Result<()> {
            let mut opts = fs::OpenOptions::new();
            opts.write(true).create_new(true).mode(0o600);
            let mut f = match direct {
                true => match opts.clone().custom_flags(libc::O_DIRECT).open(&tmp) {
                    Ok(f) => f,
                    Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                        let _ = fs::remove_file(&tmp);
                        opts.open(&tmp)?
                    }
                    Err(e) => return Err(e),
                },
                false => opts.open(&tmp)?,
            };
            fill(&mut f)?;
            f.sync_all()
        };
        if let Err(e) = write() {
            let _ = fs::remove_file(&tmp);
            return Err(io_err("writing", &tmp, e));
        }
        fs::rename(&tmp, &path).map_err(|e| io_err("renaming", &path, e))?;
        fs::File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io_err("fsync", &dir, e))
    }

    /// Writes a pack (or any repository file) from an aligned buffer with direct I/O: the
    /// aligned bulk bypasses the page cache, the unaligned tail is written normally. Same
    /// storage rules as every other write.
    pub(crate) fn write_aligned(&self, tpe: FileType, id: &Id, data: &AlignedBuf) -> RusticResult<()> {
        self.write_with(tpe, id, self.direct, |f| {
            use std::os::unix::fs::FileExt;
            let bytes = data.as_slice();
            let bulk = bytes.len() / ALIGN * ALIGN;
            match f.write_all_at(&bytes[..bulk], 0) {
                Ok(()) => {
                    set_direct(f, false)?;
                    f.write_all_at(&bytes[bulk..], bulk as u64)
                }
                // A filesystem that accepted O_DIRECT at open but refuses the write.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    set_direct(f, false)?;
                    f.write_all_at(bytes, 0)
                }
                Err(e) => Err(e),
            }
        })
    }

    /// Reads `[offset, offset+len)` of pack `id` with direct I/O into `buf`, which it resizes;
    /// returns where the wanted bytes start in `buf` (the read is widened to [`ALIGN`]).
    pub(crate) fn read_pack_direct(&self, id: &Id, offset: u32, len: u32, buf: &mut AlignedBuf) -> Result<usize> {
        use std::os::unix::fs::FileExt;
        let p = self.path(FileType::Pack, id);
        let start = u64::from(offset) / ALIGN as u64 * ALIGN as u64;
        let end = (u64::from(offset) + u64::from(len)).next_multiple_of(ALIGN as u64);
        let skip = (u64::from(offset) - start) as usize;
        let want = skip + len as usize;
        let mut read = || -> std::io::Result<usize> {
            let direct = match self.direct {
                true => fs::OpenOptions::new().read(true).custom_flags(libc::O_DIRECT).open(&p),
                false => Err(std::io::Error::from_raw_os_error(libc::EINVAL)),
            };
            let f = match direct {
                Ok(f) => f,
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    buf.set_len(len as usize);
                    fs::File::open(&p)?.read_exact_at(buf.as_mut_slice(), offset.into())?;
                    return Ok(0);
                }
                Err(e) => return Err(e),
            };
            buf.set_len((end - start) as usize);
            let mut done = 0;
            while done < want {
                let n = match f.read_at(&mut buf.as_mut_slice()[done..], start + done as u64) {
                    Ok(n) => n,
                    // A filesystem that accepted O_DIRECT at open but refuses the read.
                    Err(e) if e.raw_os_error() == Some(libc::EINVAL) && done == 0 => {
                        buf.set_len(len as usize);
                        fs::File::open(&p)?.read_exact_at(buf.as_mut_slice(), offset.into())?;
                        return Ok(0);
                    }
                    Err(e) => return Err(e),
                };
                if n == 0 {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "pack is too short",
                    ));
                }
                done += n;
            }
            Ok(skip)
        };
        read().ctx(|| format!("read {}", p.display()))
    }

    /// Removes leftovers of interrupted writes. Call only under the exclusive lock.
    pub fn clean_tmp(&self) -> Result<usize> {
        let dir = self.root.join("tmp");
        let mut n = 0;
        if let Ok(rd) = fs::read_dir(&dir) {
            for e in rd.flatten() {
                if fs::remove_file(e.path()).is_ok() {
                    n += 1;
                }
            }
        }
        Ok(n)
    }
}

/// Turns `O_DIRECT` on or off for an open file.
pub(crate) fn set_direct(f: &fs::File, on: bool) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: fcntl on an owned, open fd.
    let flags = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GETFL) };
    if flags < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let new = if on {
        flags | libc::O_DIRECT
    } else {
        flags & !libc::O_DIRECT
    };
    // SAFETY: as above.
    if unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETFL, new) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn mkdir(p: &Path) -> std::io::Result<()> {
    fs::DirBuilder::new().recursive(true).mode(0o700).create(p)
}

impl ReadBackend for LocalBackend {
    fn location(&self) -> String {
        format!("local:{}", self.root.display())
    }

    fn list_with_size(&self, tpe: FileType) -> RusticResult<Vec<(Id, u32)>> {
        if tpe == FileType::Config {
            let p = self.root.join("config");
            return Ok(match fs::metadata(&p) {
                Ok(m) => vec![(Id::default(), m.len() as u32)],
                Err(_) => vec![],
            });
        }
        let mut dirs = vec![self.root.join(tpe.dirname())];
        if tpe == FileType::Pack {
            dirs = (0..=255u8)
                .map(|b| self.root.join("data").join(format!("{b:02x}")))
                .collect();
        }
        let mut out = Vec::new();
        for d in dirs {
            let rd = match fs::read_dir(&d) {
                Ok(rd) => rd,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err("listing", &d, e)),
            };
            for e in rd {
                let e = e.map_err(|e| io_err("listing", &d, e))?;
                let name = e.file_name();
                let Some(id) = name.to_str().and_then(|n| n.parse::<Id>().ok()) else {
                    continue;
                };
                let len = e.metadata().map_err(|err| io_err("stat", &e.path(), err))?.len();
                out.push((id, u32::try_from(len).unwrap_or(u32::MAX)));
            }
        }
        Ok(out)
    }

    fn read_full(&self, tpe: FileType, id: &Id) -> RusticResult<Bytes> {
        let p = self.path(tpe, id);
        fs::read(&p).map(Bytes::from).map_err(|e| io_err("reading", &p, e))
    }

    fn read_partial(&self, tpe: FileType, id: &Id, _cacheable: bool, offset: u32, length: u32) -> RusticResult<Bytes> {
        let p = self.path(tpe, id);
        let mut f = fs::File::open(&p).map_err(|e| io_err("opening", &p, e))?;
        f.seek(SeekFrom::Start(offset.into()))
            .map_err(|e| io_err("seeking", &p, e))?;
        let mut buf = vec![0u8; length as usize];
        f.read_exact(&mut buf).map_err(|e| io_err("reading", &p, e))?;
        Ok(buf.into())
    }

    fn warmup_path(&self, tpe: FileType, id: &Id) -> String {
        self.path(tpe, id).display().to_string()
    }
}

impl WriteBackend for LocalBackend {
    fn create(&self) -> RusticResult<()> {
        for d in ["keys", "snapshots", "index", "locks", "data", "tmp"] {
            let p = self.root.join(d);
            mkdir(&p).map_err(|e| io_err("creating", &p, e))?;
        }
        for b in 0..=255u8 {
            let p = self.root.join("data").join(format!("{b:02x}"));
            mkdir(&p).map_err(|e| io_err("creating", &p, e))?;
        }
        Ok(())
    }

    fn write_bytes(&self, tpe: FileType, id: &Id, _cacheable: bool, content: BytesList) -> RusticResult<()> {
        self.write_with(tpe, id, false, |f| {
            for b in content.slice() {
                f.write_all(b)?;
            }
            Ok(())
        })
    }

    fn remove(&self, tpe: FileType, id: &Id, _cacheable: bool) -> RusticResult<()> {
        let p = self.path(tpe, id);
        match fs::remove_file(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("removing", &p, e)),
        }
    }
}

/// Why a gated backup must not commit (first reason wins).
#[derive(Debug, Default, Clone)]
pub(crate) struct Abort(Arc<Mutex<Option<String>>>);

impl Abort {
    pub fn set(&self, why: String) {
        let mut g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if g.is_none() {
            *g = Some(why);
        }
    }
    pub fn get(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// A backend wrapper for one backup: refuses every write once cancelled, the snapshot file
/// (the commit) once aborted, and the config always.
#[derive(Debug)]
pub(crate) struct GateBackend {
    inner: Arc<VaultBackend>,
    cancel: Cancel,
    abort: Abort,
    /// Packs this backup wrote, and whether an index naming them was written.
    written: Mutex<(Vec<Id>, bool)>,
}

impl GateBackend {
    pub fn new(inner: Arc<VaultBackend>, cancel: Cancel, abort: Abort) -> Self {
        Self {
            inner,
            cancel,
            abort,
            written: Mutex::new((Vec::new(), false)),
        }
    }

    fn wrote(&self, tpe: FileType, id: &Id) {
        let mut w = self.written.lock().unwrap_or_else(|p| p.into_inner());
        match tpe {
            FileType::Pack => w.0.push(*id),
            FileType::Index => w.1 = true,
            _ => {}
        }
    }

    /// After a failed or cancelled backup: removes the packs it wrote if no index names them yet
    /// (no reader can know them), so a backup that failed for lack of space gives the space back at
    /// once instead of at the next prune. Returns how many were removed.
    pub fn discard_unindexed(&self) -> usize {
        let mut w = self.written.lock().unwrap_or_else(|p| p.into_inner());
        if w.1 {
            return 0;
        }
        let packs = std::mem::take(&mut w.0);
        packs
            .iter()
            .filter(|id| self.inner.remove(FileType::Pack, id, false).is_ok())
            .count()
    }
}

impl GateBackend {
    /// Whether the vault is on an object store.
    pub fn is_remote(&self) -> bool {
        self.inner.is_remote()
    }

    /// [`VaultBackend::write_aligned`], refused once cancelled (packs, index files; never the
    /// snapshot, which goes through [`WriteBackend::write_bytes`] and its checks).
    pub fn write_aligned(&self, tpe: FileType, id: &Id, data: &AlignedBuf) -> RusticResult<()> {
        if self.cancel.is_cancelled() {
            return Err(RusticError::new(ErrorKind::Backend, "backup cancelled"));
        }
        if matches!(tpe, FileType::Snapshot | FileType::Config) {
            return Err(RusticError::new(ErrorKind::Backend, "only packs are written directly"));
        }
        self.inner.write_aligned(tpe, id, data)?;
        self.wrote(tpe, id);
        Ok(())
    }
}

impl ReadBackend for GateBackend {
    fn location(&self) -> String {
        self.inner.location()
    }
    fn list_with_size(&self, tpe: FileType) -> RusticResult<Vec<(Id, u32)>> {
        self.inner.list_with_size(tpe)
    }
    fn read_full(&self, tpe: FileType, id: &Id) -> RusticResult<Bytes> {
        self.inner.read_full(tpe, id)
    }
    fn read_partial(&self, tpe: FileType, id: &Id, cacheable: bool, offset: u32, length: u32) -> RusticResult<Bytes> {
        self.inner.read_partial(tpe, id, cacheable, offset, length)
    }
    fn warmup_path(&self, tpe: FileType, id: &Id) -> String {
        self.inner.warmup_path(tpe, id)
    }
}

impl WriteBackend for GateBackend {
    fn create(&self) -> RusticResult<()> {
        self.inner.create()
    }
    fn write_bytes(&self, tpe: FileType, id: &Id, cacheable: bool, content: BytesList) -> RusticResult<()> {
        if self.cancel.is_cancelled() {
            // Stop writing anything: the backup ends as soon as rustic_core sees the error.
            return Err(RusticError::new(ErrorKind::Backend, "backup cancelled"));
        }
        if tpe == FileType::Config {
            return Err(RusticError::new(ErrorKind::Backend, "config is read-only here"));
        }
        if tpe == FileType::Snapshot {
            if let Some(why) = self.abort.get() {
                return Err(
                    RusticError::new(ErrorKind::Backend, "backup aborted before commit: {why}")
                        .attach_context("why", why),
                );
            }
        }
        self.inner.write_bytes(tpe, id, cacheable, content)?;
        self.wrote(tpe, id);
        Ok(())
    }
    fn remove(&self, tpe: FileType, id: &Id, cacheable: bool) -> RusticResult<()> {
        self.inner.remove(tpe, id, cacheable)
    }
}

/// Bytes free for an unprivileged writer on the file system holding `path` (or its nearest
/// existing ancestor); `None` when it cannot be told.
pub fn free_space(path: &Path) -> Option<u64> {
    let mut p = Some(path);
    while let Some(cur) = p {
        if let Ok(st) = rustix::fs::statvfs(cur) {
            return Some(st.f_bavail.saturating_mul(st.f_frsize));
        }
        p = cur.parent();
    }
    None
}

/// A repository's lock (see the module doc): an `flock` on `rsvault.lock` in a local
/// repository's root, a per-node lock for one on an object store.
#[derive(Debug)]
pub(crate) enum RepoLock {
    File { _held: fs::File },
    Object { _held: crate::objstore::RepoLease },
}

impl RepoLock {
    pub fn shared(spec: &RepoSpec) -> Result<Self> {
        Self::of(spec, false)
    }
    pub fn exclusive(spec: &RepoSpec) -> Result<Self> {
        Self::of(spec, true)
    }
    fn of(spec: &RepoSpec, exclusive: bool) -> Result<Self> {
        match &spec.location {
            RepoLocation::Local(root) => Self::take(root, if exclusive { libc::LOCK_EX } else { libc::LOCK_SH }),
            RepoLocation::Object(o) => Ok(RepoLock::Object {
                _held: o.lock(exclusive)?,
            }),
        }
    }
    fn take(root: &Path, how: libc::c_int) -> Result<Self> {
        use std::os::fd::AsRawFd;
        let p = root.join("rsvault.lock");
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&p)
            .ctx(|| format!("open {}", p.display()))?;
        loop {
            // SAFETY: flock on a valid, owned file descriptor.
            let r = unsafe { libc::flock(file.as_raw_fd(), how) };
            if r == 0 {
                return Ok(RepoLock::File { _held: file });
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(EngineError::io(format!("lock {}", p.display()), e));
            }
        }
    }
}

/// The backend of one vault's repository, wherever it lives: the engine's pipelines write and
/// read through this, rustic_core through its `ReadBackend` / `WriteBackend` impls.
#[derive(Debug)]
pub enum VaultBackend {
    /// A local directory.
    Local(LocalBackend),
    /// A prefix on an object store.
    Object(ObjectRepo),
}

impl VaultBackend {
    /// The backend of `spec`'s repository (`direct`: direct I/O for a local one).
    pub fn of(spec: &RepoSpec, direct: bool) -> Self {
        match &spec.location {
            RepoLocation::Local(p) => VaultBackend::Local(LocalBackend::new(p).with_direct_io(direct)),
            RepoLocation::Object(o) => VaultBackend::Object(o.clone()),
        }
    }

    /// Makes the repository's place (a local directory; nothing on an object store).
    pub(crate) fn prepare(&self) -> Result<()> {
        match self {
            VaultBackend::Local(l) => fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&l.root)
                .ctx(|| format!("create {}", l.root.display())),
            VaultBackend::Object(_) => Ok(()),
        }
    }

    /// Whether the repository exists (its `config` does).
    pub(crate) fn has_config(&self) -> Result<bool> {
        match self {
            VaultBackend::Local(l) => Ok(l.root.join("config").is_file()),
            VaultBackend::Object(o) => o.has_config(),
        }
    }

    /// Reads `buf.len()` bytes of pack `id` at `offset` into `buf`.
    /// A local pack file, opened for reading (`None` on an object store).
    pub(crate) fn open_local_pack(&self, id: &Id) -> Option<std::io::Result<fs::File>> {
        match self {
            VaultBackend::Local(l) => Some(fs::File::open(l.path(FileType::Pack, id))),
            VaultBackend::Object(_) => None,
        }
    }

    pub(crate) fn read_pack_range(&self, id: &Id, offset: u32, buf: &mut [u8]) -> Result<()> {
        match self {
            VaultBackend::Local(l) => l.read_pack_range(id, offset, buf),
            VaultBackend::Object(o) => {
                let b = o.read_range(id, offset, buf.len() as u32)?;
                buf.copy_from_slice(&b);
                Ok(())
            }
        }
    }

    /// Writes a pack or index from an aligned buffer (direct I/O locally, one PUT remotely).
    pub(crate) fn write_aligned(&self, tpe: FileType, id: &Id, data: &AlignedBuf) -> RusticResult<()> {
        match self {
            VaultBackend::Local(l) => l.write_aligned(tpe, id, data),
            VaultBackend::Object(o) => o.put(tpe, id, Bytes::copy_from_slice(data.as_slice())),
        }
    }

    /// Reads `[offset, offset+len)` of pack `id` into `buf`; returns where the bytes start in it.
    pub(crate) fn read_pack_direct(&self, id: &Id, offset: u32, len: u32, buf: &mut AlignedBuf) -> Result<usize> {
        match self {
            VaultBackend::Local(l) => l.read_pack_direct(id, offset, len, buf),
            VaultBackend::Object(o) => {
                let b = o.read_range(id, offset, len)?;
                buf.set_len(len as usize);
                buf.as_mut_slice().copy_from_slice(&b);
                Ok(0)
            }
        }
    }

    /// Removes leftovers of interrupted writes (a local repository's `tmp/`; an object store has
    /// none). Call only under the exclusive lock.
    pub fn clean_tmp(&self) -> Result<usize> {
        match self {
            VaultBackend::Local(l) => l.clean_tmp(),
            VaultBackend::Object(_) => Ok(0),
        }
    }

    /// Whether deleting unreferenced packs must wait a grace period (object stores, which other
    /// nodes may be reading without this node's lock).
    pub(crate) fn is_remote(&self) -> bool {
        matches!(self, VaultBackend::Object(_))
    }
}

impl ReadBackend for VaultBackend {
    fn location(&self) -> String {
        match self {
            VaultBackend::Local(l) => l.location(),
            VaultBackend::Object(o) => o.location(),
        }
    }
    fn list_with_size(&self, tpe: FileType) -> RusticResult<Vec<(Id, u32)>> {
        match self {
            VaultBackend::Local(l) => l.list_with_size(tpe),
            VaultBackend::Object(o) => o.list_with_size(tpe),
        }
    }
    fn read_full(&self, tpe: FileType, id: &Id) -> RusticResult<Bytes> {
        match self {
            VaultBackend::Local(l) => l.read_full(tpe, id),
            VaultBackend::Object(o) => o.read_full(tpe, id),
        }
    }
    fn read_partial(&self, tpe: FileType, id: &Id, cacheable: bool, offset: u32, length: u32) -> RusticResult<Bytes> {
        match self {
            VaultBackend::Local(l) => l.read_partial(tpe, id, cacheable, offset, length),
            VaultBackend::Object(o) => o.read_partial(tpe, id, cacheable, offset, length),
        }
    }
    fn warmup_path(&self, tpe: FileType, id: &Id) -> String {
        match self {
            VaultBackend::Local(l) => l.warmup_path(tpe, id),
            VaultBackend::Object(o) => o.warmup_path(tpe, id),
        }
    }
}

impl WriteBackend for VaultBackend {
    fn create(&self) -> RusticResult<()> {
        match self {
            VaultBackend::Local(l) => l.create(),
            VaultBackend::Object(o) => o.create(),
        }
    }
    fn write_bytes(&self, tpe: FileType, id: &Id, cacheable: bool, content: BytesList) -> RusticResult<()> {
        match self {
            VaultBackend::Local(l) => l.write_bytes(tpe, id, cacheable, content),
            VaultBackend::Object(o) => o.write_bytes(tpe, id, cacheable, content),
        }
    }
    fn remove(&self, tpe: FileType, id: &Id, cacheable: bool) -> RusticResult<()> {
        match self {
            VaultBackend::Local(l) => l.remove(tpe, id, cacheable),
            VaultBackend::Object(o) => o.remove(tpe, id, cacheable),
        }
    }
}
