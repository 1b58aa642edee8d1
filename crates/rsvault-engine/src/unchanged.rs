//! Tree backups: the fast path for a share that has not changed since its parent recovery point.
//!
//! rustic_core's archiver hands every entry of the share from thread to thread, even a file
//! the parent snapshot makes unchanged; for a share of 50 000 small files these hand-offs were
//! most of an unchanged re-backup's time (futex waits and wake-ups, about half the CPU time in
//! a profile). So before the archiver runs, the engine walks the share with the archiver's own
//! source ([`crate::sources::local_source`]: same options, same order) beside the parent
//! snapshot's trees. The parent's trees are reused as they are only if
//!
//! * the parent snapshot has exactly this root as its one path, and the trees down to the root
//!   are the ones the archiver makes for it (one directory node each, mode 0755, no other
//!   metadata: rustic_core's source does not record the root directory's own metadata);
//! * every entry of the share equals its node in the parent tree in name, type (with a
//!   symlink's target or a device's number) and **all** metadata the source records (size,
//!   mtime, ctime, inode, device, mode, owner, link count, extended attributes…), i.e.
//!   everything but the content ids and subtree ids; and no entry is new or gone.
//!
//! That is stricter than the archiver's own test for reusing a file's content (size, mtime,
//! ctime and inode), so the parent's trees record exactly what the archiver would record, and
//! the new snapshot points at the parent's root tree: nothing but the snapshot is written. At
//! the first difference (or an entry that cannot be read, or a parent tree that cannot be
//! loaded) the walk stops and the archiver runs as before, from the start.

use std::ffi::OsStr;
use std::path::{Component, Path, PathBuf};

use rustic_core::repofile::{Metadata, Node, NodeType, SnapshotFile, Tree};
use rustic_core::{ReadSource, TreeId};

use crate::error::{EngineError, Result};
use crate::progress::Cancel;
use crate::sources::local_source;

/// What an unchanged share holds (for the snapshot's summary).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Unchanged {
    pub files: u64,
    pub dirs: u64,
    pub bytes: u64,
}

/// One directory being compared: its path and its parent node list.
struct Frame {
    dir: PathBuf,
    nodes: Vec<Node>,
    next: usize,
}

fn same(a: &Node, b: &Node) -> bool {
    a.name == b.name && a.node_type == b.node_type && a.meta == b.meta
}

/// `Some` if the share under `root` is exactly what `parent` recorded (see the module doc);
/// `None` if anything differs. `load` reads a tree of the repository.
pub(crate) fn check(
    root: &Path,
    parent: &SnapshotFile,
    mut load: impl FnMut(TreeId) -> Option<Tree>,
    cancel: &Cancel,
) -> Result<Option<Unchanged>> {
    match root.to_str() {
        Some(r) if parent.paths.iter().eq([r]) => {}
        _ => return Ok(None),
    }
    let comps: Vec<&OsStr> = root
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n),
            _ => None,
        })
        .collect();
    if comps.is_empty() {
        return Ok(None);
    }
    // The root and the directories above it, as the archiver makes them (rustic_core's source
    // does not record the root directory's own metadata).
    #[allow(clippy::field_reassign_with_default)] // `Metadata` is non-exhaustive.
    let missing_dir = {
        let mut m = Metadata::default();
        m.mode = Some(0o755);
        m
    };
    let Some(mut tree) = load(parent.tree) else {
        return Ok(None);
    };
    for c in comps {
        let [n] = tree.nodes.as_slice() else {
            return Ok(None);
        };
        if n.name() != c || n.node_type != NodeType::Dir || n.meta != missing_dir {
            return Ok(None);
        }
        let Some(t) = n.subtree.and_then(&mut load) else {
            return Ok(None);
        };
        tree = t;
    }
    let mut stack = vec![Frame {
        dir: root.to_path_buf(),
        nodes: tree.nodes,
        next: 0,
    }];
    let mut out = Unchanged::default();
    let source = local_source(root)?;
    for (i, entry) in source.entries().enumerate() {
        if i % 1024 == 0 && cancel.is_cancelled() {
            return Err(EngineError::Cancelled);
        }
        let Ok(e) = entry else {
            return Ok(None);
        };
        let Some(dir) = e.path.parent() else {
            return Ok(None);
        };
        // Leave the directories this entry is not in; each must have been seen completely.
        while stack.last().is_some_and(|f| f.dir != dir) {
            let f = stack.pop().expect("checked");
            if f.next != f.nodes.len() {
                return Ok(None);
            }
        }
        let Some(f) = stack.last_mut() else {
            return Ok(None);
        };
        let Some(p) = f.nodes.get(f.next) else {
            return Ok(None);
        };
        f.next += 1;
        if !same(p, &e.node) {
            return Ok(None);
        }
        match e.node.node_type {
            NodeType::Dir => {
                let Some(t) = p.subtree.and_then(&mut load) else {
                    return Ok(None);
                };
                out.dirs += 1;
                stack.push(Frame {
                    dir: e.path,
                    nodes: t.nodes,
                    next: 0,
                });
            }
            NodeType::File => {
                out.files += 1;
                out.bytes += e.node.meta.size;
            }
            _ => out.files += 1,
        }
    }
    if stack.iter().any(|f| f.next != f.nodes.len()) {
        return Ok(None);
    }
    Ok(Some(out))
}
