//! The source rustic_core's archiver reads for file shares: a directory tree. (VM disks go
//! through the engine's own pipeline, `diskpipe`.)
//!
//! It wraps its readers so that cancellation and source errors are seen by the engine, not
//! just logged: rustic_core's archiver skips an entry whose read fails and still commits the
//! snapshot, so every failure here is also recorded as a warning, and cancellation stops the
//! walk and fails every further read.
//!
//! Each file is opened by rsvault, not by the walker: through [`crate::safefs`] (no symlink
//! followed anywhere on its path, a regular file), and it must be the file the walk saw (same
//! device and inode). A file swapped for a symlink or another file between the walk and the open
//! is skipped with a warning, never read.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use rustic_core::repofile::NodeType;
use rustic_core::{
    ErrorKind, LocalSource, LocalSourceFilterOptions, LocalSourceSaveOptions, ReadSource, ReadSourceEntry,
    ReadSourceOpen, RusticError, RusticResult,
};

use crate::pit::Stamp;
use crate::progress::Cancel;

/// Collected warnings (capped; the count is exact).
#[derive(Debug, Default, Clone)]
pub(crate) struct Warnings(Arc<Mutex<(Vec<String>, usize)>>, Arc<std::sync::atomic::AtomicBool>);

const MAX_WARNINGS: usize = 50;

impl Warnings {
    pub fn push(&self, w: String) {
        let mut g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        g.1 += 1;
        if g.0.len() < MAX_WARNINGS {
            g.0.push(w);
        }
    }
    /// The kept warnings, plus a summary line if some were dropped.
    pub fn take(&self) -> Vec<String> {
        let g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let mut v = g.0.clone();
        if g.1 > v.len() {
            v.push(format!("... and {} more warnings", g.1 - v.len()));
        }
        v
    }
    /// Records that a source changed while it was read.
    pub fn push_changed(&self, w: String) {
        self.1.store(true, std::sync::atomic::Ordering::Relaxed);
        self.push(w);
    }
    /// Whether a source changed while it was read.
    pub fn changed(&self) -> bool {
        self.1.load(std::sync::atomic::Ordering::Relaxed)
    }
    pub fn count(&self) -> usize {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).1
    }
}

/// A directory tree (a file share), read through rustic_core's `LocalSource`.
pub(crate) struct TreeSource {
    inner: LocalSource,
    cancel: Cancel,
    warnings: Warnings,
    scanned: Arc<AtomicU64>,
}

/// The share as rustic_core reads it (one definition, so the archiver's source and the
/// unchanged-tree check of `crate::unchanged` see the same nodes in the same order).
pub(crate) fn local_source(root: &Path) -> RusticResult<LocalSource> {
    LocalSource::new(
        LocalSourceSaveOptions::default(),
        &rustic_core::Excludes::default(),
        &LocalSourceFilterOptions::default(),
        &[root],
    )
}

impl TreeSource {
    pub fn new(root: &Path, cancel: Cancel, warnings: Warnings) -> RusticResult<Self> {
        let inner = local_source(root)?;
        Ok(Self {
            inner,
            cancel,
            warnings,
            scanned: Arc::default(),
        })
    }
    pub fn scanned(&self) -> Arc<AtomicU64> {
        self.scanned.clone()
    }
}

pub(crate) struct TreeOpen {
    inner: <LocalSource as ReadSource>::Open,
    path: PathBuf,
    before: Option<(u64, Option<i128>, Option<i128>)>,
    /// Device and inode the walk saw (0: not known).
    ident: (u64, u64),
    cancel: Cancel,
    warnings: Warnings,
    scanned: Arc<AtomicU64>,
}

/// Opens a file of the tree as the walk saw it, following no symlink.
fn open_walked(path: &std::path::Path, ident: (u64, u64)) -> std::io::Result<fs::File> {
    use std::os::unix::fs::MetadataExt;
    let f = crate::safefs::open_regular(path)?;
    let m = f.metadata()?;
    // rustic_core records the device only for hard-linked files (0 otherwise).
    let (dev, ino) = ident;
    if (dev != 0 && dev != m.dev()) || (ino != 0 && ino != m.ino()) {
        return Err(std::io::Error::other("it was replaced after the walk saw it"));
    }
    Ok(f)
}

fn ts_ns(t: Option<rustic_core::jiff::Timestamp>) -> Option<i128> {
    t.map(|t| t.as_nanosecond())
}

impl ReadSourceOpen for TreeOpen {
    type Reader = GuardedFile;
    fn open(self) -> RusticResult<GuardedFile> {
        if self.cancel.is_cancelled() {
            return Err(RusticError::new(ErrorKind::InputOutput, "cancelled"));
        }
        // The walker's own open would follow a symlink swapped in after the walk.
        let _ = self.inner;
        match open_walked(&self.path, self.ident) {
            Ok(file) => Ok(GuardedFile {
                file,
                path: self.path,
                before: self.before,
                cancel: self.cancel,
                warnings: self.warnings,
                scanned: self.scanned,
                read: 0,
            }),
            Err(e) => {
                self.warnings
                    .push(format!("{} was not backed up: {e}", self.path.display()));
                Err(
                    RusticError::new(ErrorKind::InputOutput, "{path} was not backed up: {reason}")
                        .attach_context("path", self.path.display().to_string())
                        .attach_context("reason", e.to_string()),
                )
            }
        }
    }
}

/// A file of a tree being read, checked against its walk-time metadata when fully read.
pub(crate) struct GuardedFile {
    file: fs::File,
    path: PathBuf,
    before: Option<(u64, Option<i128>, Option<i128>)>,
    cancel: Cancel,
    warnings: Warnings,
    scanned: Arc<AtomicU64>,
    read: u64,
}

impl std::io::Read for GuardedFile {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.cancel.is_cancelled() {
            return Err(std::io::Error::other("cancelled"));
        }
        let n = match self.file.read(buf) {
            Ok(n) => n,
            Err(e) => {
                self.warnings
                    .push(format!("{} could not be read completely: {e}", self.path.display()));
                return Err(e);
            }
        };
        self.read += n as u64;
        self.scanned.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        if n == 0 && !buf.is_empty() {
            if let (Some(before), Ok(m)) = (self.before.take(), self.file.metadata()) {
                let now = Stamp::of_meta(&m);
                let changed = before.0 != now.size
                    || self.read != before.0
                    || before.1.is_some_and(|t| t != now.mtime_ns)
                    || before.2.is_some_and(|t| t != now.ctime_ns);
                if changed {
                    self.warnings.push_changed(format!(
                        "{} changed while it was read; its copy may be inconsistent",
                        self.path.display()
                    ));
                }
            }
        }
        Ok(n)
    }
}

pub(crate) struct TreeIter {
    inner: <LocalSource as ReadSource>::Iter,
    cancel: Cancel,
    warnings: Warnings,
    scanned: Arc<AtomicU64>,
}

impl Iterator for TreeIter {
    type Item = RusticResult<ReadSourceEntry<TreeOpen>>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.cancel.is_cancelled() {
            return None;
        }
        Some(match self.inner.next()? {
            Ok(e) => {
                let before = (e.node.node_type == NodeType::File)
                    .then(|| (e.node.meta.size, ts_ns(e.node.meta.mtime), ts_ns(e.node.meta.ctime)));
                let ident = (e.node.meta.device_id, e.node.meta.inode);
                Ok(ReadSourceEntry {
                    open: e.open.map(|inner| TreeOpen {
                        inner,
                        path: e.path.clone(),
                        before,
                        ident,
                        cancel: self.cancel.clone(),
                        warnings: self.warnings.clone(),
                        scanned: self.scanned.clone(),
                    }),
                    path: e.path,
                    node: e.node,
                })
            }
            Err(e) => {
                self.warnings.push(format!("an entry was skipped: {}", e.display_log()));
                Err(e)
            }
        })
    }
}

impl ReadSource for TreeSource {
    type Open = TreeOpen;
    type Iter = TreeIter;
    fn size(&self) -> RusticResult<Option<u64>> {
        self.inner.size()
    }
    fn entries(&self) -> TreeIter {
        TreeIter {
            inner: self.inner.entries(),
            cancel: self.cancel.clone(),
            warnings: self.warnings.clone(),
            scanned: self.scanned.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn a_walked_file_is_opened_only_as_the_walk_saw_it() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("f");
        fs::write(&f, b"x").unwrap();
        let m = fs::metadata(&f).unwrap();
        let ident = (m.dev(), m.ino());
        assert!(open_walked(&f, ident).is_ok());
        assert!(open_walked(&f, (0, 0)).is_ok());
        // Replaced by another file, or by a symlink to a file outside: not opened.
        fs::write(d.path().join("other"), b"y").unwrap(); // made first: its inode cannot be f's
        fs::remove_file(&f).unwrap();
        fs::hard_link(d.path().join("other"), &f).unwrap();
        assert!(open_walked(&f, ident).is_err());
        fs::remove_file(&f).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", &f).unwrap();
        assert!(open_walked(&f, (0, 0)).is_err());
    }
}
