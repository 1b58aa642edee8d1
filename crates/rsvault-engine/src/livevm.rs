//! Running QEMU guests: "Take Snapshot" as a real point-in-time view, read while the guest runs,
//! with changed-block tracking.
//!
//! **Discovery** ([`discover`]): the guest's disks over QMP. `query-block` gives the devices a
//! QEMU guest has (each disk's format node); a guest without devices (`qemu-storage-daemon`
//! exporting its images) is read from `query-named-block-nodes`: every format node that is not
//! another's backing file, and every protocol node no format node sits on.
//!
//! **Take Snapshot.** For each disk a fleecing image (an empty qcow2 in the job's work directory,
//! attached with `blockdev-add` with the disk as its backing node) and, in **one** QMP
//! `transaction` for all disks, `blockdev-backup sync=none` into it: QEMU inserts a
//! copy-before-write filter above each disk, so from that instant every guest write first copies
//! the old data into the fleecing image, and reading the fleecing node gives the disk as of the
//! instant. When the VM names a guest agent, its file systems are frozen
//! (`guest-fsfreeze-freeze`) just before the transaction and thawed just after:
//! [`Consistency::ApplicationConsistent`]; without an agent, or when the freeze fails (a warning),
//! [`Consistency::CrashConsistent`]. The views are exported over NBD (`block-export-add`, on the
//! guest's own NBD server when the VM names one, else on a server started for the job on a Unix
//! socket in the work directory) and read by the engine's own client ([`crate::nbd`]) into the
//! usual disk pipeline (`diskpipe`: same 2 MiB chunks, same format, deduplicated with image-file
//! VMs). Zero ranges (`base:allocation`) are not read. Then everything is torn down: exports,
//! server, the backup jobs (cancelled: a `sync=none` job runs until then), fleecing nodes and
//! files.
//!
//! **Changed-block tracking.** The same transaction adds a dirty bitmap `rsvault-{recovery
//! point}` to every disk (persistent on qcow2, so it survives the guest's restarts): it records
//! every write after the instant. The next backup of the item finds the bitmap of the item's
//! latest recovery point and, in its own transaction, disables it (frozen at the new instant: it
//! now holds exactly the writes between the two points) and adds its own. The frozen bitmap is
//! exported with the view (`qemu:dirty-bitmap:…`); only 2 MiB chunks it marks are read, the
//! others are the parent's chunks. A missing, inconsistent or not recording bitmap (the guest
//! restarted from another image, a crash mid-backup), a parent without this disk or with another
//! size: that disk is read in full, and the job says why. After a committed backup the parent's
//! bitmap (and any other `rsvault-` bitmap but the new one) is removed; after a failed one the
//! new bitmap is merged back into the parent's, re-enabled in the same transaction, so no write
//! is forgotten.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::backend::{RepoLock, DISK_CHUNK_SIZE};
use crate::disk::{ImageFormat, ImageWriter, ReadStats};
use crate::diskpipe::{ChunkSource, DiskJob};
use crate::engine::{all_points, commit_consistency, new_point_meta, ResticEngine};
use crate::error::{EngineError, Result};
use crate::nbd::{NbdReader, STATE_DIRTY};
use crate::progress::{Cancel, Progress, Task};
use crate::qmp::{GuestAgent, Qmp, QmpError};
use crate::types::*;

/// Prefix of every bitmap, node, job and export rsvault makes in a guest.
const PREFIX: &str = "rsvault-";
/// How long a guest agent may take to freeze or thaw.
const AGENT_TIMEOUT: Duration = Duration::from_secs(60);
/// Protocol drivers (a disk's bottom node); anything else with an image is a format or filter.
const PROTOCOLS: &[&str] = &[
    "file",
    "host_device",
    "host_cdrom",
    "nbd",
    "iscsi",
    "rbd",
    "ssh",
    "http",
    "https",
];
/// Filters and helpers that are never a disk.
const NOT_DISKS: &[&str] = &[
    "copy-before-write",
    "snapshot-access",
    "throttle",
    "blkdebug",
    "null-co",
    "null-aio",
];

fn qmp_err(socket: &Path, e: impl std::fmt::Display) -> EngineError {
    EngineError::Source {
        path: socket.to_path_buf(),
        reason: format!("QMP: {e}"),
    }
}

/// Connects to a guest's QMP socket.
fn connect(socket: &Path) -> Result<Qmp> {
    Qmp::connect(socket).map_err(|e| qmp_err(socket, e))
}

/// The guest's run state (`query-status`: `running`, `paused`, `shutdown`, …; a
/// `qemu-storage-daemon`, which has no run state, serves its disks: `running`). A guest whose QMP
/// socket does not answer is not running: an error.
pub fn guest_status(qmp_socket: &Path) -> Result<String> {
    let mut q = connect(qmp_socket)?;
    match q.execute("query-status", json!({})) {
        Ok(v) => Ok(v["status"].as_str().unwrap_or("unknown").to_string()),
        Err(QmpError::Command { class, .. }) if class == "CommandNotFound" => Ok("running".into()),
        Err(e) => Err(qmp_err(qmp_socket, e)),
    }
}

/// A disk and the bitmaps QEMU reports on it.
struct Found {
    disk: LiveDisk,
    bitmaps: Vec<Value>,
}

/// The disks of the guest behind `qmp_socket` (see the module doc).
pub fn discover(qmp_socket: &Path) -> Result<Vec<LiveDisk>> {
    let mut q = connect(qmp_socket)?;
    Ok(discover_with(&mut q, qmp_socket)?.into_iter().map(|f| f.disk).collect())
}

fn disk_of(name: &str, node: &str, info: &Value) -> Option<Found> {
    let size = info.pointer("/image/virtual-size").and_then(Value::as_u64)?;
    let file = info["file"].as_str().filter(|f| f.starts_with('/')).map(PathBuf::from);
    let name: String = name
        .chars()
        .map(|c| if c == '/' || c == '\0' { '_' } else { c })
        .collect();
    Some(Found {
        disk: LiveDisk {
            name: if name == "." || name == ".." {
                format!("disk{name}")
            } else {
                name
            },
            node: node.to_string(),
            driver: info["drv"].as_str().unwrap_or_default().to_string(),
            virtual_size: size,
            file,
        },
        bitmaps: info["dirty-bitmaps"].as_array().cloned().unwrap_or_default(),
    })
}

fn discover_with(q: &mut Qmp, socket: &Path) -> Result<Vec<Found>> {
    let e = |e: QmpError| qmp_err(socket, e);
    let mut out = Vec::new();
    let blocks = q.execute("query-block", json!({})).map_err(e)?;
    for b in blocks.as_array().into_iter().flatten() {
        let Some(ins) = b.get("inserted") else { continue };
        let device = b["device"].as_str().unwrap_or_default();
        let node = ins["node-name"].as_str().unwrap_or_default();
        // A `-drive` disk's nodes are auto-named (`#block…`): commands take its device name.
        let node_ref = if node.is_empty() || node.starts_with('#') {
            device
        } else {
            node
        };
        if node_ref.is_empty() || node_ref.starts_with(PREFIX) {
            continue;
        }
        let name = if device.is_empty() { node_ref } else { device };
        out.extend(disk_of(name, node_ref, ins));
    }
    if !out.is_empty() {
        return Ok(out);
    }
    let nodes = q.execute("query-named-block-nodes", json!({"flat": true})).map_err(e)?;
    let nodes: Vec<&Value> = nodes
        .as_array()
        .into_iter()
        .flatten()
        .filter(|n| {
            let name = n["node-name"].as_str().unwrap_or_default();
            !name.is_empty() && !name.starts_with('#') && !name.starts_with(PREFIX)
        })
        .filter(|n| !NOT_DISKS.contains(&n["drv"].as_str().unwrap_or_default()))
        .collect();
    let is_protocol = |n: &Value| PROTOCOLS.contains(&n["drv"].as_str().unwrap_or_default());
    // Files some format node reads (its own file, or its backing file).
    let mut used: Vec<&str> = Vec::new();
    for n in nodes.iter().filter(|n| !is_protocol(n)) {
        used.extend(n["file"].as_str());
        used.extend(n["backing_file"].as_str());
        used.extend(n.pointer("/image/full-backing-filename").and_then(Value::as_str));
    }
    let backing: Vec<&str> = nodes
        .iter()
        .filter(|n| !is_protocol(n))
        .filter_map(|n| n["backing_file"].as_str())
        .collect();
    for n in &nodes {
        let file = n["file"].as_str().unwrap_or_default();
        let keep = if is_protocol(n) {
            !used.contains(&file)
        } else {
            !backing.contains(&file)
        };
        if keep {
            let node = n["node-name"].as_str().unwrap_or_default();
            out.extend(disk_of(node, node, n));
        }
    }
    Ok(out)
}

/// One disk's fleecing, as far as it got (torn down in reverse).
struct Fleece {
    disk: LiveDisk,
    node: String,
    file: PathBuf,
    job: String,
    export: String,
    /// The parent's bitmap, frozen at the instant and read for changed blocks.
    parent_bitmap: Option<String>,
    /// Why the disk is read in full (no usable parent bitmap).
    full_read: Option<String>,
    attached: bool,
    backing_up: bool,
    exported: bool,
}

/// A running guest's snapshot session: QMP, the fleecing of every disk, the NBD server.
struct Session {
    q: Qmp,
    socket: PathBuf,
    fleeces: Vec<Fleece>,
    new_bitmap: String,
    /// rsvault's own NBD server socket, when it started one.
    own_server: Option<PathBuf>,
    /// The NBD socket the views are exported on.
    nbd_socket: PathBuf,
    snapshot_taken: bool,
}

impl Session {
    fn exec(&mut self, cmd: &str, args: Value) -> Result<Value> {
        let socket = self.socket.clone();
        self.q.execute(cmd, args).map_err(|e| qmp_err(&socket, e))
    }

    /// Waits until `query` no longer lists an entry whose `key` is `id`.
    fn wait_gone(&mut self, query: &str, key: &str, id: &str) -> Result<()> {
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            let v = self.exec(query, json!({}))?;
            if !v.as_array().into_iter().flatten().any(|j| j[key].as_str() == Some(id)) {
                return Ok(());
            }
            if Instant::now() > end {
                return Err(qmp_err(&self.socket, format!("{id} still listed by {query}")));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Tears down what was set up; `committed`: the recovery point is in the vault. Returns
    /// what could not be cleaned up (warnings).
    fn finish(&mut self, committed: bool) -> Vec<String> {
        let mut warn = Vec::new();
        let mut note = |r: Result<Value>, what: &str| {
            if let Err(e) = r {
                warn.push(format!("Cleaning up the guest's {what} failed: {e}"));
            }
        };
        let ids: Vec<(String, String, String, bool, bool, bool)> = self
            .fleeces
            .iter()
            .map(|f| {
                (
                    f.export.clone(),
                    f.job.clone(),
                    f.node.clone(),
                    f.exported,
                    f.backing_up,
                    f.attached,
                )
            })
            .collect();
        for (export, _, _, exported, _, _) in &ids {
            if *exported {
                let r = self
                    .exec("block-export-del", json!({"id": export}))
                    .and_then(|_| self.wait_gone("query-block-exports", "id", export).map(|_| Value::Null));
                note(r, "NBD export");
            }
        }
        if let Some(sock) = self.own_server.take() {
            let r = self.exec("nbd-server-stop", json!({}));
            note(r, "NBD server");
            let _ = std::fs::remove_file(sock);
        }
        for (_, job, _, _, backing_up, _) in &ids {
            if *backing_up {
                let r = self
                    .exec("block-job-cancel", json!({"device": job, "force": true}))
                    .and_then(|_| self.wait_gone("query-block-jobs", "device", job).map(|_| Value::Null));
                note(r, "fleecing job");
            }
        }
        for (_, _, node, _, _, attached) in &ids {
            if *attached {
                let r = self.exec("blockdev-del", json!({"node-name": node}));
                note(r, "fleecing node");
            }
        }
        for f in &self.fleeces {
            let _ = std::fs::remove_file(&f.file);
        }
        if self.snapshot_taken {
            let disks: Vec<(String, Option<String>)> = self
                .fleeces
                .iter()
                .map(|f| (f.disk.node.clone(), f.parent_bitmap.clone()))
                .collect();
            let new = self.new_bitmap.clone();
            for (node, parent) in disks {
                let r = if committed {
                    // The new bitmap is the next backup's; every older rsvault bitmap goes.
                    self.stale_bitmaps(&node, &new).and_then(|stale| {
                        for b in stale {
                            self.exec("block-dirty-bitmap-remove", json!({"node": node, "name": b}))?;
                        }
                        Ok(Value::Null)
                    })
                } else if let Some(p) = parent {
                    // Nothing is forgotten: the writes since the instant go back into the
                    // parent's bitmap, which records again.
                    self.exec(
                        "transaction",
                        json!({"actions": [
                            {"type": "block-dirty-bitmap-merge", "data": {"node": node, "target": p, "bitmaps": [new]}},
                            {"type": "block-dirty-bitmap-enable", "data": {"node": node, "name": p}},
                            {"type": "block-dirty-bitmap-remove", "data": {"node": node, "name": new}},
                        ]}),
                    )
                } else {
                    self.exec("block-dirty-bitmap-remove", json!({"node": node, "name": new}))
                };
                note(r, "dirty bitmap");
            }
        }
        self.fleeces.clear();
        warn
    }

    /// The `rsvault-` bitmaps on `node` other than `keep`.
    fn stale_bitmaps(&mut self, node: &str, keep: &str) -> Result<Vec<String>> {
        let socket = self.socket.clone();
        let found = discover_with(&mut self.q, &socket)?;
        Ok(found
            .into_iter()
            .filter(|f| f.disk.node == node)
            .flat_map(|f| f.bitmaps)
            .filter_map(|b| b["name"].as_str().map(str::to_string))
            .filter(|n| n.starts_with(PREFIX) && n != keep)
            .collect())
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if !self.fleeces.is_empty() {
            for w in self.finish(false) {
                tracing::warn!("{w}");
            }
        }
    }
}

/// Whether the parent's bitmap on a disk can be used, else why not.
fn usable_bitmap(found: &Found, parent: Option<&(String, Vec<DiskEntry>)>) -> std::result::Result<String, String> {
    let Some((rp, disks)) = parent else {
        return Err("no earlier recovery point of this VM".into());
    };
    let d = &found.disk;
    match disks.iter().find(|e| e.name == d.name) {
        None => return Err(format!("recovery point {rp} has no disk '{}'", d.name)),
        Some(e) if e.virtual_size != d.virtual_size => {
            return Err(format!(
                "disk '{}' is {} bytes now and was {} bytes in recovery point {rp}",
                d.name, d.virtual_size, e.virtual_size
            ))
        }
        Some(_) => {}
    }
    let name = format!("{PREFIX}{rp}");
    let Some(b) = found.bitmaps.iter().find(|b| b["name"].as_str() == Some(&name)) else {
        return Err(format!(
            "disk '{}' has no dirty bitmap since recovery point {rp} (the guest was restarted from another image, or the image was replaced)",
            d.name
        ));
    };
    if b["inconsistent"].as_bool() == Some(true) {
        return Err(format!(
            "the dirty bitmap of disk '{}' is inconsistent (QEMU did not close the image cleanly)",
            d.name
        ));
    }
    if b["recording"].as_bool() != Some(true) || b["busy"].as_bool() == Some(true) {
        return Err(format!(
            "the dirty bitmap of disk '{}' stopped recording (an earlier backup did not finish)",
            d.name
        ));
    }
    Ok(name)
}

/// A short tag for node, job and export names (QEMU node names are at most 31 characters).
fn short(rp: &str) -> String {
    use sha2::Digest;
    crate::restore::hex(&sha2::Sha256::digest(rp.as_bytes()))[..10].to_string()
}

/// Freezes the guest's file systems; `Ok(count)` or why not.
fn freeze(agent: &Path) -> std::result::Result<(GuestAgent, u64), String> {
    let mut g = GuestAgent::connect(agent, AGENT_TIMEOUT).map_err(|e| e.to_string())?;
    let n = g.freeze().map_err(|e| e.to_string())?;
    Ok((g, n))
}

/// The consistency of a snapshot taken with `n` file systems frozen, once the agent thawed them
/// (`Ok`: how many, in words) or did not; the job's words go to `note` and `warnings`.
pub(crate) fn after_freeze(
    n: u64,
    thawed: std::result::Result<String, String>,
    note: &mut Vec<String>,
    warnings: &mut Vec<String>,
) -> Consistency {
    match thawed {
        Ok(t) => note.push(format!(
            "Application consistent: the guest agent froze {n} file system(s) before the snapshot and thawed {t} after it."
        )),
        Err(e) => {
            let w = format!("The guest agent froze the file systems but did not thaw them: {e}. Check the guest.");
            note.push(w.clone());
            warnings.push(w);
        }
    }
    if n > 0 {
        Consistency::ApplicationConsistent
    } else {
        Consistency::CrashConsistent
    }
}

/// Removes what an earlier backup that never finished (rsvault killed mid-job) left in the
/// guest: its NBD exports, fleecing jobs and nodes (and their images), and the NBD server it
/// started (`own_server`: the VM names no server of its own). Its bitmaps stay: the parent's,
/// disabled by that job's snapshot, is no longer trusted, so the next backup reads in full and
/// says why. Returns a note for the job when something was cleaned up.
fn clear_stale(q: &mut Qmp, socket: &Path, own_server: bool) -> Result<Vec<String>> {
    let e = |e: QmpError| qmp_err(socket, e);
    let ids = |v: &Value, key: &str, prefix: &str| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|x| x[key].as_str())
            .filter(|id| id.starts_with(prefix))
            .map(str::to_string)
            .collect()
    };
    let exports = ids(&q.execute("query-block-exports", json!({})).map_err(e)?, "id", PREFIX);
    let jobs = ids(
        &q.execute("query-block-jobs", json!({})).map_err(e)?,
        "device",
        "rsv-bk-",
    );
    let nodes = q.execute("query-named-block-nodes", json!({"flat": true})).map_err(e)?;
    let fleeces: Vec<(String, Option<String>)> = nodes
        .as_array()
        .into_iter()
        .flatten()
        .filter(|n| n["node-name"].as_str().is_some_and(|x| x.starts_with("rsv-fl-")))
        .map(|n| {
            (
                n["node-name"].as_str().unwrap_or_default().to_string(),
                n["file"].as_str().map(str::to_string),
            )
        })
        .collect();
    if exports.is_empty() && jobs.is_empty() && fleeces.is_empty() {
        return Ok(vec![]);
    }
    let wait_gone = |q: &mut Qmp, query: &str, key: &str, id: &str| -> Result<()> {
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            let v = q.execute(query, json!({})).map_err(e)?;
            if !v.as_array().into_iter().flatten().any(|j| j[key].as_str() == Some(id)) {
                return Ok(());
            }
            if Instant::now() > end {
                return Err(qmp_err(socket, format!("{id} still listed by {query}")));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    for id in &exports {
        q.execute("block-export-del", json!({"id": id, "mode": "hard"}))
            .map_err(e)?;
        wait_gone(q, "query-block-exports", "id", id)?;
    }
    if own_server {
        // The server the killed job started; none other runs when the VM names none.
        let _ = q.execute("nbd-server-stop", json!({}));
    }
    for job in &jobs {
        q.execute("block-job-cancel", json!({"device": job, "force": true}))
            .map_err(e)?;
        wait_gone(q, "query-block-jobs", "device", job)?;
    }
    for (node, file) in &fleeces {
        q.execute("blockdev-del", json!({"node-name": node})).map_err(e)?;
        if let Some(f) = file.as_deref().filter(|f| f.contains("/fleece-")) {
            let _ = std::fs::remove_file(f);
        }
    }
    Ok(vec![format!(
        "An earlier backup of this guest did not finish: its {} export(s), {} fleecing job(s) and {} fleecing image(s) were removed from the guest.",
        exports.len(),
        jobs.len(),
        fleeces.len()
    )])
}

/// Which 2 MiB chunks of an export a dirty-bitmap metadata context `ctx` marks (block status of
/// the whole export).
pub(crate) fn dirty_chunks(reader: &NbdReader, ctx: &str, size: u64, socket: &Path) -> Result<Vec<bool>> {
    let chunk = DISK_CHUNK_SIZE as u64;
    let ext = reader
        .with(|c| c.block_status_all(ctx, 0, size))
        .map_err(|e| EngineError::Source {
            path: socket.to_path_buf(),
            reason: e.to_string(),
        })?;
    let mut dirty = vec![false; size.div_ceil(chunk) as usize];
    for e in ext.iter().filter(|e| e.flags & STATE_DIRTY != 0) {
        for c in e.offset / chunk..(e.offset + e.length).div_ceil(chunk).min(dirty.len() as u64) {
            dirty[c as usize] = true;
        }
    }
    Ok(dirty)
}

/// One disk's point-in-time view, open over NBD, as a running-guest backup reads it (QMP fleecing or
/// libvirt's pull-mode backup).
pub(crate) struct NbdView {
    pub name: String,
    /// The disk's image as the hypervisor names it (recorded in the point).
    pub path: PathBuf,
    pub format: ImageFormat,
    pub reader: NbdReader,
    /// The dirty-bitmap metadata context to read only changed chunks by; `None`: read in full.
    pub bitmap_ctx: Option<String>,
    /// Why it is read in full when there is no bitmap context.
    pub full_read: String,
}

impl ResticEngine {
    /// Reads the views of a running guest into a new point (only the chunks each bitmap marks, the
    /// rest reused from `parent`), and says what was read in the transfer task: `bitmap` names the
    /// kind of bitmap, `running` what kept running ("guest", "domain").
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn transfer_views(
        &self,
        spec: &RepoSpec,
        plain: &crate::engine::Repo,
        tags: &RecoveryPointTags,
        time: chrono::DateTime<chrono::Utc>,
        expiry: Option<chrono::DateTime<chrono::Utc>>,
        parent: Option<rustic_core::repofile::SnapshotFile>,
        views: Vec<NbdView>,
        consistency: Consistency,
        (bitmap, running): (&str, &str),
        progress: &dyn Progress,
        cancel: &Cancel,
        socket: &Path,
    ) -> Result<(rustic_core::repofile::SnapshotFile, crate::engine::RpMeta, ReadStats)> {
        let mut jobs = Vec::new();
        let mut readers = Vec::new();
        let mut entries = Vec::new();
        let mut note = Vec::new();
        for v in views {
            let size = v.reader.size();
            let unchanged = match &v.bitmap_ctx {
                Some(ctx) => {
                    let dirty = dirty_chunks(&v.reader, ctx, size, socket)?;
                    let n = dirty.iter().filter(|d| **d).count();
                    note.push(format!(
                        "disk '{}': {n} of {} chunks changed since the last recovery point ({bitmap})",
                        v.name,
                        dirty.len()
                    ));
                    Some(dirty)
                }
                None => {
                    note.push(format!("disk '{}': read in full ({})", v.name, v.full_read));
                    None
                }
            };
            entries.push(DiskEntry {
                name: v.name.clone(),
                source_path: v.path.clone(),
                source_format: v.format,
                virtual_size: size,
            });
            let reader = Arc::new(v.reader);
            readers.push(reader.clone());
            jobs.push(DiskJob {
                name: v.name,
                path: v.path,
                source: ChunkSource::Nbd(reader),
                size,
                mtime: None,
                unchanged,
            });
        }
        let total = jobs.iter().map(|j| j.size).sum();
        let mut meta = new_point_meta(tags, expiry, RecoveryPointKind::Disks);
        meta.consistency = consistency;
        meta.disks = entries;
        meta.total_size = Some(total);
        let snap = crate::engine::new_snapshot(tags, time, &meta)?;
        let stats = ReadStats::default();
        let snap = self.transfer_disks(spec, plain, parent, &jobs, snap, total, progress, cancel, &stats)?;
        drop(jobs);
        for r in readers {
            r.close();
        }
        let read = stats.scanned.load(Ordering::Relaxed) - stats.skipped.load(Ordering::Relaxed);
        progress.detail(
            Task::Transfer,
            &format!(
                "Read {} MiB of {} MiB over NBD while the {running} ran; {}.",
                read >> 20,
                total >> 20,
                note.join("; ")
            ),
        );
        Ok((snap, meta, stats))
    }
}

impl ResticEngine {
    /// [`crate::Engine::backup_live_vm`].
    pub(crate) fn live_backup(
        &self,
        spec: &RepoSpec,
        req: &LiveBackupRequest,
        progress: &dyn Progress,
        cancel: &Cancel,
    ) -> Result<BackupOutcome> {
        let _lock = RepoLock::shared(spec)?;
        let plain = self.open(spec, None)?;
        let points = all_points(&plain)?;
        crate::engine::refuse_existing(&points, &req.tags.recovery_point)?;
        let parent = points
            .into_iter()
            .rfind(|(_, m)| m.item == req.tags.item && m.kind == RecoveryPointKind::Disks);
        let parent_disks = parent
            .as_ref()
            .map(|(_, m)| (m.recovery_point.clone(), m.disks.clone()));
        let qmp_socket = &req.vm.qmp_socket;
        let mut q = connect(qmp_socket)?;
        let mut stale_note = clear_stale(&mut q, qmp_socket, req.vm.nbd_socket.is_none())?;
        let found = discover_with(&mut q, qmp_socket)?;
        if found.is_empty() {
            return Err(EngineError::Source {
                path: qmp_socket.clone(),
                reason: "the guest has no disk".into(),
            });
        }
        let mut names = std::collections::HashSet::new();
        if let Some(d) = found.iter().find(|f| !names.insert(f.disk.name.clone())) {
            return Err(EngineError::Source {
                path: qmp_socket.clone(),
                reason: format!("two disks are named '{}'", d.disk.name),
            });
        }
        let total: u64 = found.iter().map(|f| f.disk.virtual_size).sum();
        progress.update(Task::Snapshot, 0, total);
        std::fs::create_dir_all(&req.work_dir)
            .map_err(|e| EngineError::io(format!("create {}", req.work_dir.display()), e))?;
        let tag = short(&req.tags.recovery_point);
        let nbd_socket = req
            .vm
            .nbd_socket
            .clone()
            .unwrap_or_else(|| req.work_dir.join(format!("nbd-{tag}.sock")));
        let mut s = Session {
            q,
            socket: qmp_socket.clone(),
            fleeces: Vec::new(),
            new_bitmap: format!("{PREFIX}{}", req.tags.recovery_point),
            own_server: None,
            nbd_socket,
            snapshot_taken: false,
        };
        let dir = crate::safefs::open_dir(&req.work_dir)
            .map_err(|e| EngineError::io(format!("open {}", req.work_dir.display()), e))?;
        for (i, f) in found.iter().enumerate() {
            let name = format!("fleece-{tag}-{i}.qcow2");
            let file = req.work_dir.join(&name);
            let (w, _) = ImageWriter::create_in(
                &dir,
                name.as_ref(),
                &file,
                ImageFormat::Qcow2,
                f.disk.virtual_size,
                false,
            )?;
            w.finish()
                .map_err(|e| EngineError::io(format!("write {}", file.display()), e))?;
            let (parent_bitmap, full_read) = match usable_bitmap(f, parent_disks.as_ref()) {
                Ok(b) => (Some(b), None),
                Err(why) => (None, Some(why)),
            };
            s.fleeces.push(Fleece {
                disk: f.disk.clone(),
                node: format!("rsv-fl-{tag}-{i}"),
                file,
                job: format!("rsv-bk-{tag}-{i}"),
                export: format!("{PREFIX}{tag}-{i}"),
                parent_bitmap,
                full_read,
                attached: false,
                backing_up: false,
                exported: false,
            });
        }
        let result = self.live_transfer(spec, &plain, req, &mut s, parent.map(|p| p.0), total, progress, cancel);
        let mut warnings = s.finish(result.is_ok());
        let (snap, mut meta, stats, mut task_warnings) = result?;
        warnings.splice(0..0, task_warnings.drain(..));
        warnings.splice(0..0, stale_note.drain(..));
        let consistency = meta.consistency;
        let snap = commit_consistency(&plain, snap, &mut meta, consistency, warnings.len())?;
        Ok(crate::engine::disk_outcome(
            &snap,
            meta,
            &stats,
            consistency,
            warnings,
            vec![],
        ))
    }

    /// Snapshot, export, read and commit; the session's state says what to tear down.
    #[allow(clippy::too_many_arguments)]
    fn live_transfer(
        &self,
        spec: &RepoSpec,
        plain: &crate::engine::Repo,
        req: &LiveBackupRequest,
        s: &mut Session,
        parent: Option<rustic_core::repofile::SnapshotFile>,
        total: u64,
        progress: &dyn Progress,
        cancel: &Cancel,
    ) -> Result<(
        rustic_core::repofile::SnapshotFile,
        crate::engine::RpMeta,
        ReadStats,
        Vec<String>,
    )> {
        let mut warnings = Vec::new();
        for i in 0..s.fleeces.len() {
            let f = &s.fleeces[i];
            let args = json!({"driver": "qcow2", "node-name": f.node, "file": {"driver": "file", "filename": f.file}, "backing": f.disk.node});
            s.exec("blockdev-add", args)?;
            s.fleeces[i].attached = true;
        }
        if cancel.is_cancelled() {
            return Err(EngineError::Cancelled);
        }
        // One instant for every disk.
        let mut actions = Vec::new();
        for f in &s.fleeces {
            if let Some(p) = &f.parent_bitmap {
                actions.push(json!({"type": "block-dirty-bitmap-disable", "data": {"node": f.disk.node, "name": p}}));
            }
            actions.push(json!({"type": "block-dirty-bitmap-add", "data": {
                "node": f.disk.node, "name": s.new_bitmap, "persistent": f.disk.driver == "qcow2"}}));
            actions.push(json!({"type": "blockdev-backup", "data": {
                "job-id": f.job, "device": f.disk.node, "target": f.node, "sync": "none", "auto-dismiss": true}}));
        }
        let frozen = match &req.vm.agent_socket {
            None => Err("the VM has no guest agent".to_string()),
            Some(a) => freeze(a),
        };
        let taken = s.exec("transaction", json!({"actions": actions}));
        let mut snapshot_note = Vec::new();
        let consistency = match frozen {
            Ok((mut g, n)) => {
                let thawed = g.thaw().map(|t| t.to_string()).map_err(|e| e.to_string());
                after_freeze(n, thawed, &mut snapshot_note, &mut warnings)
            }
            Err(why) if req.vm.agent_socket.is_some() => {
                let w = format!(
                    "The guest agent did not freeze the file systems ({why}): the recovery point is crash consistent."
                );
                snapshot_note.push(w.clone());
                warnings.push(w);
                Consistency::CrashConsistent
            }
            Err(why) => {
                snapshot_note.push(format!("Crash consistent: {why}."));
                Consistency::CrashConsistent
            }
        };
        taken?;
        s.snapshot_taken = true;
        for f in &mut s.fleeces {
            f.backing_up = true;
        }
        snapshot_note.push(format!(
            "{} disk(s) captured at one instant (copy-before-write fleecing in one QMP transaction).",
            s.fleeces.len()
        ));
        progress.update(Task::Snapshot, total, total);
        progress.finished(Task::Snapshot);
        progress.detail(Task::Snapshot, &snapshot_note.join(" "));

        // Export the views.
        if req.vm.nbd_socket.is_none() {
            let path = s.nbd_socket.clone();
            let _ = std::fs::remove_file(&path);
            s.exec(
                "nbd-server-start",
                json!({"addr": {"type": "unix", "data": {"path": path}}}),
            )?;
            s.own_server = Some(path);
        }
        let mut views = Vec::new();
        for i in 0..s.fleeces.len() {
            let f = &s.fleeces[i];
            let mut args =
                json!({"type": "nbd", "id": f.export, "node-name": f.node, "name": f.export, "writable": false});
            if let Some(p) = &f.parent_bitmap {
                args["bitmaps"] = json!([p]);
            }
            s.exec("block-export-add", args)?;
            s.fleeces[i].exported = true;
            let f = &s.fleeces[i];
            let mut contexts = vec!["base:allocation".to_string()];
            let bitmap_ctx = f.parent_bitmap.as_ref().map(|p| format!("qemu:dirty-bitmap:{p}"));
            contexts.extend(bitmap_ctx.clone());
            let reader = NbdReader::open(&s.nbd_socket, &f.export, contexts).map_err(|e| EngineError::Source {
                path: s.nbd_socket.clone(),
                reason: e.to_string(),
            })?;
            if reader.size() != f.disk.virtual_size {
                return Err(EngineError::Source {
                    path: s.socket.clone(),
                    reason: format!(
                        "the view of disk '{}' is {} bytes, not {}",
                        f.disk.name,
                        reader.size(),
                        f.disk.virtual_size
                    ),
                });
            }
            views.push(NbdView {
                name: f.disk.name.clone(),
                path: f.disk.file.clone().unwrap_or_else(|| PathBuf::from(&f.disk.node)),
                format: if f.disk.driver == "qcow2" {
                    ImageFormat::Qcow2
                } else {
                    ImageFormat::Raw
                },
                reader,
                bitmap_ctx,
                full_read: f.full_read.clone().unwrap_or_else(|| "no dirty bitmap".into()),
            });
        }
        let (snap, meta, stats) = self.transfer_views(
            spec,
            plain,
            &req.tags,
            req.time,
            req.expiry,
            parent,
            views,
            consistency,
            ("dirty bitmap", "guest"),
            progress,
            cancel,
            &s.nbd_socket,
        )?;
        Ok((snap, meta, stats, warnings))
    }
}
