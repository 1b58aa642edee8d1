//! Geo-redundancy: a vault's repository copied, file by file, to a second storage target.
//!
//! [`sync`] makes the secondary hold what the primary holds, in restic's commit order, so the
//! secondary is a repository stock `restic` and this engine open with the same password at any
//! moment a reader looks:
//!
//! 1. key files and `config`, then pack files, then index files, then snapshot files (the
//!    commit): a snapshot reaches the secondary only after every pack and index it needs;
//! 2. only what the secondary lacks is copied, so an interrupted copy resumes where it stopped;
//! 3. every file read from the primary is checked against its name (restic names files by the
//!    SHA-256 of their bytes) before it is written, so damage on the primary is not copied;
//! 4. then what the primary no longer holds is removed from the secondary, in the reverse order
//!    (snapshots, then index files, then packs), so a reader of the secondary never sees a
//!    snapshot whose data is gone.
//!
//! The primary is held under its shared lock (backups may go on), the secondary under its
//! exclusive one.

use std::collections::HashMap;

use rustic_core::{FileType, Id, ReadBackend, WriteBackend};
use sha2::{Digest, Sha256};

use crate::backend::{RepoLock, VaultBackend};
use crate::error::{EngineError, Result};
use crate::progress::Cancel;
use crate::types::RepoSpec;

/// What a [`sync`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SyncReport {
    /// Files copied to the secondary.
    pub files_copied: usize,
    /// Bytes copied to the secondary.
    pub bytes_copied: u64,
    /// Files removed from the secondary because the primary no longer holds them.
    pub files_removed: usize,
    /// Snapshots (recovery points) the secondary holds afterwards.
    pub snapshots: usize,
    /// Their ids (hex), as [`crate::RecoveryPointInfo::snapshot_id`] names them.
    pub snapshot_ids: Vec<String>,
}

/// How many files are copied at once.
const COPY_THREADS: usize = 4;

/// Copies `from`'s repository to `to` (see the module doc). Both must use the same password
/// (the secondary is a byte copy, key files included).
pub fn sync(from: &RepoSpec, to: &RepoSpec, cancel: &Cancel) -> Result<SyncReport> {
    let _src_lock = RepoLock::shared(from)?;
    let _dst_lock = RepoLock::exclusive(to)?;
    let src = VaultBackend::of(from, false);
    let dst = VaultBackend::of(to, false);
    if !src.has_config()? {
        return Err(EngineError::Repository(format!("no repository at {}", from.location)));
    }
    dst.prepare()?;
    WriteBackend::create(&dst)?;
    let mut report = SyncReport::default();
    let order = [
        FileType::Key,
        FileType::Config,
        FileType::Pack,
        FileType::Index,
        FileType::Snapshot,
    ];
    // By position in `order`.
    let mut listed = Vec::new();
    for tpe in order {
        let have: HashMap<Id, u32> = dst.list_with_size(tpe)?.into_iter().collect();
        let want = src.list_with_size(tpe)?;
        let missing: Vec<Id> = want
            .iter()
            .filter(|(id, size)| have.get(id) != Some(size))
            .map(|(id, _)| *id)
            .collect();
        copy_all(&src, &dst, tpe, &missing, cancel, &mut report)?;
        listed.push((tpe, want, have));
    }
    for (tpe, want, have) in listed.iter().rev().filter(|(t, ..)| *t != FileType::Config) {
        let tpe = *tpe;
        let keep: std::collections::HashSet<&Id> = want.iter().map(|(id, _)| id).collect();
        for id in have.keys().filter(|id| !keep.contains(id)) {
            if cancel.is_cancelled() {
                return Err(EngineError::Cancelled);
            }
            dst.remove(tpe, id, false)?;
            report.files_removed += 1;
        }
    }
    if let Some((_, want, _)) = listed.last() {
        report.snapshots = want.len();
        report.snapshot_ids = want.iter().map(|(id, _)| id.to_hex().to_string()).collect();
    }
    Ok(report)
}

fn copy_all(
    src: &VaultBackend,
    dst: &VaultBackend,
    tpe: FileType,
    ids: &[Id],
    cancel: &Cancel,
    report: &mut SyncReport,
) -> Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    let per = ids.len().div_ceil(COPY_THREADS);
    let results: Vec<Result<(usize, u64)>> = std::thread::scope(|s| {
        let handles: Vec<_> = ids
            .chunks(per)
            .map(|chunk| {
                s.spawn(move || -> Result<(usize, u64)> {
                    let (mut n, mut bytes) = (0, 0);
                    for id in chunk {
                        if cancel.is_cancelled() {
                            return Err(EngineError::Cancelled);
                        }
                        let data = src.read_full(tpe, id)?;
                        if tpe != FileType::Config && Id::new(Sha256::digest(&data).into()) != *id {
                            return Err(EngineError::Repository(format!(
                                "{} {} on the primary does not match its name: not copied",
                                tpe.dirname(),
                                id
                            )));
                        }
                        bytes += data.len() as u64;
                        dst.write_bytes(tpe, id, false, data.into())?;
                        n += 1;
                    }
                    Ok((n, bytes))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(EngineError::Repository("a copy thread panicked".into())))
            })
            .collect()
    });
    for r in results {
        let (n, b) = r?;
        report.files_copied += n;
        report.bytes_copied += b;
    }
    Ok(())
}
