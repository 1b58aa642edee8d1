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

use std::fs;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
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
    pub fn of(path: &Path) -> Result<Self> {
        Ok(Self::of_meta(
            &fs::metadata(path).ctx(|| format!("stat {}", path.display()))?,
        ))
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
    read_path: PathBuf,
    kind: ViewKind,
    before: Stamp,
    clone: Option<PathBuf>,
}

impl View {
    /// Takes the view: a reflink clone if possible, otherwise a guard.
    pub fn take(source: &Path) -> Result<Self> {
        let before = Stamp::of(source)?;
        if let Some(clone) = try_reflink(source) {
            return Ok(Self {
                source: source.to_path_buf(),
                read_path: clone.clone(),
                kind: ViewKind::Reflink,
                before,
                clone: Some(clone),
            });
        }
        Ok(Self {
            source: source.to_path_buf(),
            read_path: source.to_path_buf(),
            kind: ViewKind::Guarded,
            before,
            clone: None,
        })
    }

    /// Where to read the point-in-time content.
    pub fn path(&self) -> &Path {
        &self.read_path
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
        // leave a committed snapshot without its job's record.
        let after = match Stamp::of(&self.source) {
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
        if let Some(c) = self.clone.take() {
            let _ = fs::remove_file(c);
        }
    }
}

fn try_reflink(source: &Path) -> Option<PathBuf> {
    let dir = source.parent()?;
    let name = source.file_name()?.to_string_lossy();
    let dst = dir.join(format!(
        ".{name}.rsvault-snap-{}-{}",
        std::process::id(),
        CLONE_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let src = fs::File::open(source).ok()?;
    let out = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&dst)
        .ok()?;
    // SAFETY: FICLONE takes the source fd as its argument; both fds are owned and open.
    let r = unsafe { libc::ioctl(out.as_raw_fd(), FICLONE as _, src.as_raw_fd()) };
    if r == 0 {
        Some(dst)
    } else {
        let _ = fs::remove_file(&dst);
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
        let v = View::take(&p).unwrap();
        if v.kind() == ViewKind::Reflink {
            // The clone is immune to changes of the source.
            fs::OpenOptions::new()
                .append(true)
                .open(&p)
                .unwrap()
                .write_all(b"x")
                .unwrap();
            assert_eq!(fs::read(v.path()).unwrap(), vec![1u8; 4096]);
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
