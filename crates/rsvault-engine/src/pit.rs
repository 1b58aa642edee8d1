//! "Take Snapshot": a point-in-time view of a source file.
//!
//! First choice is a reflink clone (`ioctl(FICLONE)`) next to the source (same filesystem, hidden
//! name `.NAME.rsvault-snap-PID-N`, mode 0600, removed when the view is dropped): a copy-on-write
//! copy of the whole file as of one instant, costing no data I/O. Where the filesystem cannot
//! clone (ext4, tmpfs, overlayfs, or a cross-device attempt) the engine reads the source itself,
//! guarded: size, mtime, change time and inode are recorded before the read and compared after
//! it. A guarded read that saw no change is as good as a point-in-time copy; one that saw a
//! change is reported as [`crate::Consistency::Inconsistent`] with a warning, and the job ends
//! `CompletedWithWarnings`.
//!
//! A view starts from the source already opened (no symlink followed, see [`crate::safefs`]): the
//! clone is made from that descriptor, in the source's directory as opened, and a guarded read
//! reads that descriptor; the path is only looked at again to tell whether it was replaced.

use std::ffi::OsString;
use std::fs;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{IoContext, Result};

/// `_IOW(0x94, 9, int)`.
const FICLONE: libc::c_ulong = 0x4004_9409;

static CLONE_COUNTER: AtomicU64 = AtomicU64::new(0);

/// The identity and version of a file, as far as `stat` can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stamp {
    pub size: u64,
    pub mtime_ns: i128,
    pub ctime_ns: i128,
    pub ino: u64,
    pub dev: u64,
}

impl Stamp {
    pub fn of_meta(m: &fs::Metadata) -> Self {
        Self {
            size: m.len(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
            ctime_ns: i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec()),
            ino: m.ino(),
            dev: m.dev(),
        }
    }
    /// The stamp of an open file, with the identity the path has now (not following a final
    /// symlink; a path that is gone or is a symlink now reads as another file).
    pub fn of_open(f: &fs::File, path: &Path) -> Result<Self> {
        let mut s = Self::of_meta(&f.metadata().ctx(|| format!("stat {}", path.display()))?);
        match fs::symlink_metadata(path) {
            Ok(m) if m.is_file() => (s.ino, s.dev) = (m.ino(), m.dev()),
            _ => (s.ino, s.dev) = (0, 0),
        }
        Ok(s)
    }
    /// Describes what differs between `self` (before) and `after`, if anything.
    pub fn changes(&self, after: &Stamp) -> Option<String> {
        let mut what = Vec::new();
        if self.ino != after.ino || self.dev != after.dev {
            what.push("replaced");
        }
        if self.size != after.size {
            what.push("size");
        }
        if self.mtime_ns != after.mtime_ns {
            what.push("modification time");
        }
        if self.ctime_ns != after.ctime_ns {
            what.push("change time");
        }
        (!what.is_empty()).then(|| what.join(", "))
    }
}

/// How a [`View`] was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ViewKind {
    Reflink,
    Guarded,
}

/// A point-in-time view of one source file.
#[derive(Debug)]
pub(crate) struct View {
    source: PathBuf,
    file: fs::File,
    read: fs::File,
    kind: ViewKind,
    before: Stamp,
    /// The clone's directory (as opened) and name, removed on drop.
    clone: Option<(fs::File, OsString)>,
}

impl View {
    /// Takes the view of the opened source `file` (found at `source`): a reflink clone if
    /// possible, otherwise a guard.
    pub fn take(source: &Path, file: fs::File) -> Result<Self> {
        let before = Stamp::of_meta(&file.metadata().ctx(|| format!("stat {}", source.display()))?);
        if let Some((dir, name, clone)) = try_reflink(source, &file) {
            return Ok(Self {
                source: source.to_path_buf(),
                file,
                read: clone,
                kind: ViewKind::Reflink,
                before,
                clone: Some((dir, name)),
            });
        }
        let read = file.try_clone().ctx(|| format!("dup {}", source.display()))?;
        Ok(Self {
            source: source.to_path_buf(),
            file,
            read,
            kind: ViewKind::Guarded,
            before,
            clone: None,
        })
    }

    /// A descriptor of the point-in-time content.
    pub fn reader(&self) -> Result<fs::File> {
        self.read.try_clone().ctx(|| format!("dup {}", self.source.display()))
    }

    /// The source's stamp when the view was taken.
    pub fn before(&self) -> Stamp {
        self.before
    }

    pub fn kind(&self) -> ViewKind {
        self.kind
    }

    /// After the read: `Some(warning)` if a guarded source changed while it was read.
    pub fn check(&self) -> Result<Option<String>> {
        if self.kind == ViewKind::Reflink {
            return Ok(None);
        }
        // Called after the snapshot is committed: a source that vanished is a warning on a complete
        // recovery point (what was read is what the open file held), never an error that would
        // leave a committed snapshot without its job's record. The open descriptor gives the
        // content's stamp; the path (not followed) tells whether the file there is still the one read.
        let after = match Stamp::of_open(&self.file, &self.source) {
            Ok(a) => a,
            Err(e) => {
                return Ok(Some(format!(
                    "{} vanished or became unreadable while it was read ({e}); the copy may be inconsistent",
                    self.source.display()
                )))
            }
        };
        Ok(self.before.changes(&after).map(|what| {
            format!(
                "{} changed while it was read ({what}); the copy may be inconsistent",
                self.source.display()
            )
        }))
    }
}

impl Drop for View {
    fn drop(&mut self) {
        if let Some((dir, name)) = self.clone.take() {
            let _ = crate::safefs::remove_in(&dir, &name);
        }
    }
}

/// A reflink clone of the opened `src`, next to `source` (its directory opened without following
/// symlinks): the directory, the clone's name and the clone opened for reading.
fn try_reflink(source: &Path, src: &fs::File) -> Option<(fs::File, OsString, fs::File)> {
    let (dir, name) = crate::safefs::open_parent(source).ok()?;
    let clone_name = OsString::from(format!(
        ".{}.rsvault-snap-{}-{}",
        name.to_string_lossy(),
        std::process::id(),
        CLONE_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let out = crate::safefs::open_in(&dir, &clone_name, libc::O_RDWR | libc::O_CREAT | libc::O_EXCL, 0o600).ok()?;
    // SAFETY: FICLONE takes the source fd as its argument; both fds are owned and open.
    let r = unsafe { libc::ioctl(out.as_raw_fd(), FICLONE as _, src.as_raw_fd()) };
    if r == 0 {
        Some((dir, clone_name, out))
    } else {
        let _ = crate::safefs::remove_in(&dir, &clone_name);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn guarded_view_detects_change() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.img");
        fs::write(&p, vec![1u8; 4096]).unwrap();
        let v = View::take(&p, crate::safefs::open_regular(&p).unwrap()).unwrap();
        if v.kind() == ViewKind::Reflink {
            // The clone is immune to changes of the source.
            fs::OpenOptions::new()
                .append(true)
                .open(&p)
                .unwrap()
                .write_all(b"x")
                .unwrap();
            let mut got = Vec::new();
            std::io::Read::read_to_end(&mut v.reader().unwrap(), &mut got).unwrap();
            assert_eq!(got, vec![1u8; 4096]);
            assert_eq!(v.check().unwrap(), None);
            return;
        }
        assert_eq!(v.check().unwrap(), None);
        fs::OpenOptions::new()
            .append(true)
            .open(&p)
            .unwrap()
            .write_all(b"x")
            .unwrap();
        let w = v.check().unwrap().expect("change must be seen");
        assert!(w.contains("size"), "{w}");
    }
}
