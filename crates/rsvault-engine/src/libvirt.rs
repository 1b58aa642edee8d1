//! libvirt domains (issue 18): discovery, pull-mode backup with checkpoints, and the domain
//! definition offered with a restore.
//!
//! Everything goes through `virsh -c URI` (Debian's `libvirt-clients`): the connection URI is the
//! operator's grant (checked by the control plane), the domain is named by its UUID.
//!
//! **Discovery** ([`list_domains`], [`domain`]): `virsh list --all --uuid`, then each domain's
//! `dumpxml --inactive` (its persistent definition) parsed here ([`parse_domain`]): the
//! `<devices><disk device='disk'>` elements backed by a file or block device, named by their
//! target (`vda`, `sdb`); CD-ROMs, floppies and network disks are not disks rsvault backs up.
//!
//! **A running domain** is backed up with libvirt's **pull-mode backup**: one `virsh
//! backup-begin` with a `<domainbackup mode='pull'>` exporting every disk over NBD on a Unix
//! socket, and a `<domaincheckpoint>` named `rsvault-{recovery point}` created at the same
//! instant (libvirt runs QEMU's copy-before-write fleecing into a scratch image per disk and adds a
//! persistent dirty bitmap per disk, in one QMP transaction). When the domain has a guest agent,
//! its file systems are frozen (`domfsfreeze`) just before and thawed just after
//! (`ApplicationConsistent`), else the point is `CrashConsistent`. The engine reads the exports
//! with its own NBD client into the usual disk pipeline. **Incrementals**: when the checkpoint of
//! the item's latest recovery point exists, the backup names it as `<incremental>` and each disk
//! export carries the bitmap of the blocks written since (`exportbitmap`, read as the
//! `qemu:dirty-bitmap:` metadata context); only 2 MiB chunks it marks are read, the rest are the
//! parent's chunks. No checkpoint, a parent without the disk or with another size, or libvirt
//! refusing the incremental (a broken bitmap): the disk is read in full and the job says why. The
//! job ends with `domjobabort` (libvirt removes the scratch images and the socket). After a
//! committed backup every other `rsvault-` checkpoint is deleted; after a failed one the new
//! checkpoint is deleted (libvirt merges its bitmap back into its parent's, so no write is
//! forgotten). A backup job a crashed rsvault left on the domain (its socket in a `rsvault-libvirt-`
//! directory) is aborted before the next backup.
//!
//! The NBD socket lives in a fresh directory `rsvault-libvirt-{random}` under the system's
//! temporary directory, mode 0733: QEMU (running as libvirt's user) creates the socket and the
//! scratch images there; other users cannot list it to find them.
//!
//! **A shut-off domain** is backed up from its image files (the disk pipeline of image-file VMs).
//!
//! **Restore** ([`restored_definition`]): the domain's XML with each restored disk's source
//! rewritten to the restored image (its driver type set, backing chains dropped), a fresh UUID
//! and a new name, ready for `virsh define`; [`definition_for`] writes a minimal TCG definition
//! over restored disks for a guest known only by QMP.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use quick_xml::events::{BytesStart, BytesText, Event};
use quick_xml::{Reader, Writer};

use crate::engine::{all_points, commit_consistency, ResticEngine};
use crate::error::{EngineError, Result};
use crate::nbd::NbdReader;
use crate::progress::{Cancel, Progress, Task};
use crate::types::*;

/// Prefix of every checkpoint and socket directory rsvault makes.
const PREFIX: &str = "rsvault-";
/// The name of the changed-blocks bitmap each incremental export carries.
const EXPORT_BITMAP: &str = "rsvault-changed";

/// One disk of a domain, from its XML.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainDisk {
    /// The target device (`vda`): the disk's name in recovery points.
    pub target: String,
    /// Its image file or block device.
    pub source: PathBuf,
    /// The driver type (`qcow2`, `raw`).
    pub format: String,
    /// Guest-visible size in bytes (`virsh domblkinfo`; 0 from [`parse_domain`]).
    pub virtual_size: u64,
}

/// A domain as its XML describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainInfo {
    pub name: String,
    pub uuid: String,
    pub disks: Vec<DomainDisk>,
    /// `virsh domstate` says `running` (or paused: QEMU runs).
    pub running: bool,
    /// The persistent definition (`dumpxml --inactive`).
    pub xml: String,
}

fn src_err(uri: &str, reason: impl Into<String>) -> EngineError {
    EngineError::Source {
        path: PathBuf::from(uri),
        reason: reason.into(),
    }
}

/// Runs `virsh -q -c uri args…`; its standard output, or its error message.
pub fn virsh(uri: &str, args: &[&str]) -> Result<String> {
    let out = Command::new("virsh")
        .env("LC_ALL", "C")
        .args(["-q", "-c", uri])
        .args(args)
        .output()
        .map_err(|e| src_err(uri, format!("virsh (Debian's libvirt-clients) could not run: {e}")))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let err = err.trim().trim_start_matches("error: ").replace('\n', " ");
        return Err(src_err(uri, format!("virsh {}: {err}", args.first().unwrap_or(&""))));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The UUIDs of every domain the connection has (running or not).
pub fn list_domains(uri: &str) -> Result<Vec<String>> {
    Ok(virsh(uri, &["list", "--all", "--uuid"])?
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect())
}

/// A domain by UUID or name: its definition, disks and whether it runs.
pub fn domain(uri: &str, dom: &str) -> Result<DomainInfo> {
    let xml = virsh(uri, &["dumpxml", "--inactive", dom])?;
    let (name, uuid, mut disks) = parse_domain(&xml).map_err(|e| src_err(uri, e))?;
    for d in &mut disks {
        let out = virsh(uri, &["domblkinfo", dom, &d.target])?;
        d.virtual_size = out
            .lines()
            .find_map(|l| l.strip_prefix("Capacity:"))
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| {
                src_err(
                    uri,
                    format!("virsh domblkinfo gave no capacity for disk '{}'", d.target),
                )
            })?;
    }
    let state = virsh(uri, &["domstate", dom])?;
    let state = state.trim();
    Ok(DomainInfo {
        name,
        uuid,
        disks,
        running: state == "running" || state == "paused" || state == "pmsuspended",
        xml,
    })
}

fn attr(e: &BytesStart, key: &str) -> Option<String> {
    e.try_get_attribute(key).ok().flatten().and_then(|a| {
        a.normalized_value(quick_xml::XmlVersion::Implicit1_0)
            .ok()
            .map(|v| v.into_owned())
    })
}

/// An entity or character reference (`&amp;`, `&#39;`) as text.
fn ref_of(g: &quick_xml::events::BytesRef) -> String {
    if let Ok(Some(c)) = g.resolve_char_ref() {
        return c.to_string();
    }
    match &**g {
        "amp" => "&",
        "lt" => "<",
        "gt" => ">",
        "quot" => "\"",
        "apos" => "'",
        _ => "",
    }
    .to_string()
}

fn text_of(t: &BytesText) -> String {
    let raw = t.to_string();
    quick_xml::escape::unescape(&raw).map(|c| c.into_owned()).unwrap_or(raw)
}

/// Name, UUID and the file- or block-backed disks (`device='disk'`) of a domain XML.
pub fn parse_domain(xml: &str) -> std::result::Result<(String, String, Vec<DomainDisk>), String> {
    let mut r = Reader::from_str(xml);
    let mut path: Vec<String> = Vec::new();
    let (mut name, mut uuid) = (String::new(), String::new());
    let mut disks = Vec::new();
    // The disk being read: (kind ok, source, target, format).
    let mut cur: Option<(bool, Option<String>, Option<String>, String)> = None;
    loop {
        let ev = r.read_event().map_err(|e| format!("domain XML: {e}"))?;
        let (start, empty) = match &ev {
            Event::Start(e) => (Some(e.clone()), false),
            Event::Empty(e) => (Some(e.clone()), true),
            _ => (None, false),
        };
        if let Some(e) = start {
            let tag = e.name().as_ref().to_string();
            path.push(tag.clone());
            let at = path.iter().map(String::as_str).collect::<Vec<_>>();
            match at.as_slice() {
                ["domain", "devices", "disk"] => {
                    let device = attr(&e, "device").unwrap_or_else(|| "disk".into());
                    let ty = attr(&e, "type").unwrap_or_else(|| "file".into());
                    cur = Some((
                        device == "disk" && (ty == "file" || ty == "block"),
                        None,
                        None,
                        "raw".into(),
                    ));
                }
                ["domain", "devices", "disk", "source"] => {
                    if let Some(c) = cur.as_mut() {
                        c.1 = attr(&e, "file").or_else(|| attr(&e, "dev"));
                    }
                }
                ["domain", "devices", "disk", "target"] => {
                    if let Some(c) = cur.as_mut() {
                        c.2 = attr(&e, "dev");
                    }
                }
                ["domain", "devices", "disk", "driver"] => {
                    if let (Some(c), Some(t)) = (cur.as_mut(), attr(&e, "type")) {
                        c.3 = t;
                    }
                }
                _ => {}
            }
            if !empty {
                continue;
            }
        }
        match ev {
            Event::Text(_) | Event::GeneralRef(_) => {
                let piece = match &ev {
                    Event::Text(t) => text_of(t),
                    Event::GeneralRef(g) => ref_of(g),
                    _ => String::new(),
                };
                match path.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
                    ["domain", "name"] => name.push_str(&piece),
                    ["domain", "uuid"] => uuid.push_str(&piece),
                    _ => {}
                }
            }
            Event::Eof => break,
            _ => {}
        }
        // An end tag, or an empty element's end.
        if matches!(ev, Event::End(_)) || empty {
            if path.len() == 3 && path[2] == "disk" {
                if let Some((true, Some(src), Some(target), format)) = cur.take() {
                    disks.push(DomainDisk {
                        target,
                        source: PathBuf::from(src),
                        format,
                        virtual_size: 0,
                    });
                }
                cur = None;
            }
            path.pop();
        }
    }
    let (name, uuid) = (name.trim().to_string(), uuid.trim().to_string());
    if name.is_empty() || uuid.is_empty() {
        return Err("domain XML without a name or UUID".into());
    }
    Ok((name, uuid, disks))
}

/// The domain XML `xml` over restored disks: the `<disk>` whose target is a key of `restored`
/// now reads that file (type `file`, its driver type the given format, no backing chain); the
/// name is `name`, the UUID `uuid`; the live-only `id` attribute is dropped.
pub fn restored_definition(
    xml: &str,
    name: &str,
    uuid: &str,
    restored: &[(String, PathBuf, String)],
) -> std::result::Result<String, String> {
    parse_domain(xml)?;
    let mut r = Reader::from_str(xml);
    let mut w = Writer::new(Vec::new());
    let mut path: Vec<String> = Vec::new();
    // The events of the `<disk>` being read, written out once its target is known.
    let mut disk: Option<Vec<Event<'static>>> = None;
    // The level of a `<backingStore>` being left out.
    let mut skip: Option<usize> = None;
    let (mut named, mut uuided) = (false, false);
    let put = |w: &mut Writer<Vec<u8>>, ev: Event| w.write_event(ev).map_err(|e| format!("domain XML: {e}"));
    loop {
        let ev = r.read_event().map_err(|e| format!("domain XML: {e}"))?.into_owned();
        // An element's level (domain = 1); a text's is its parent's.
        let (level, tag) = match &ev {
            Event::Eof => break,
            Event::Start(e) | Event::Empty(e) => (path.len() + 1, e.name().as_ref().to_string()),
            Event::End(_) => (path.len(), String::new()),
            _ => (path.len(), String::new()),
        };
        let is_end = matches!(ev, Event::End(_));
        if let Event::Start(_) = &ev {
            path.push(tag.clone());
        }
        if let Some(l) = skip {
            if is_end && level == l {
                skip = None;
            }
        } else if let Some(buf) = disk.as_mut() {
            if level == 4 && tag == "backingStore" {
                if matches!(ev, Event::Start(_)) {
                    skip = Some(4);
                }
            } else {
                buf.push(ev);
                if is_end && level == 3 {
                    for e in rewrite_disk(disk.take().unwrap_or_default(), restored) {
                        put(&mut w, e)?;
                    }
                }
            }
        } else {
            let at: Vec<&str> = path.iter().map(String::as_str).collect();
            match (&ev, at.as_slice()) {
                (Event::Start(e), ["domain"]) => {
                    let mut e2 = BytesStart::new("domain");
                    for a in e.attributes().flatten() {
                        if a.key.as_ref() != "id" {
                            e2.push_attribute(a);
                        }
                    }
                    put(&mut w, Event::Start(e2))?;
                }
                (Event::Start(_), ["domain", "devices", "disk"]) => disk = Some(vec![ev]),
                (Event::Text(_) | Event::GeneralRef(_), ["domain", "name"]) => {
                    if !std::mem::replace(&mut named, true) {
                        put(&mut w, Event::Text(BytesText::new(name)))?
                    }
                }
                (Event::Text(_) | Event::GeneralRef(_), ["domain", "uuid"]) => {
                    if !std::mem::replace(&mut uuided, true) {
                        put(&mut w, Event::Text(BytesText::new(uuid)))?
                    }
                }
                _ => put(&mut w, ev)?,
            }
        }
        if is_end {
            path.pop();
        }
    }
    String::from_utf8(w.into_inner()).map_err(|e| e.to_string())
}

/// One `<disk>`'s events, its source and driver rewritten when its target was restored.
fn rewrite_disk(events: Vec<Event<'static>>, restored: &[(String, PathBuf, String)]) -> Vec<Event<'static>> {
    let target = events.iter().find_map(|e| match e {
        Event::Empty(s) | Event::Start(s) if s.name().as_ref() == "target" => attr(s, "dev"),
        _ => None,
    });
    let Some((_, file, format)) = target.and_then(|t| restored.iter().find(|(n, _, _)| *n == t)) else {
        return events;
    };
    let file = file.display().to_string();
    let with = |s: &BytesStart, name: &str, set: &[(&str, &str)], drop: &[&str]| {
        let mut out = BytesStart::new(name.to_string());
        for a in s.attributes().flatten() {
            let k = a.key.as_ref().to_string();
            if !set.iter().any(|(sk, _)| *sk == k) && !drop.contains(&k.as_str()) {
                out.push_attribute(a);
            }
        }
        for (k, v) in set {
            out.push_attribute((*k, *v));
        }
        out
    };
    let mut depth = 0usize;
    let mut out = Vec::new();
    for ev in events {
        let d = depth;
        match &ev {
            Event::Start(_) => depth += 1,
            Event::End(_) => depth -= 1,
            _ => {}
        }
        let ev = match &ev {
            Event::Start(s) if d == 0 => Event::Start(with(s, "disk", &[("type", "file")], &[])),
            Event::Empty(s) | Event::Start(s) if d == 1 && s.name().as_ref() == "source" => {
                let n = with(s, "source", &[("file", &file)], &["dev", "index"]);
                match ev {
                    Event::Empty(_) => Event::Empty(n),
                    _ => Event::Start(n),
                }
            }
            Event::Empty(s) | Event::Start(s) if d == 1 && s.name().as_ref() == "driver" => {
                let n = with(s, "driver", &[("type", format)], &[]);
                match ev {
                    Event::Empty(_) => Event::Empty(n),
                    _ => Event::Start(n),
                }
            }
            _ => ev,
        };
        out.push(ev);
    }
    out
}

/// A minimal TCG domain over restored disks (first the boot disk), for a guest known only by its
/// QMP socket: `virsh define` it, adjust memory and devices, start it.
pub fn definition_for(name: &str, uuid: &str, disks: &[(PathBuf, String)]) -> String {
    let esc = |s: &str| quick_xml::escape::escape(s).into_owned();
    let mut x = format!(
        "<domain type='qemu'>\n  <name>{}</name>\n  <uuid>{uuid}</uuid>\n  <memory unit='MiB'>1024</memory>\n  <vcpu>1</vcpu>\n  <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>\n  <devices>\n",
        esc(name)
    );
    for (i, (file, format)) in disks.iter().enumerate() {
        let dev = format!("vd{}", (b'a' + (i % 26) as u8) as char);
        x.push_str(&format!(
            "    <disk type='file' device='disk'>\n      <driver name='qemu' type='{}'/>\n      <source file='{}'/>\n      <target dev='{dev}' bus='virtio'/>\n    </disk>\n",
            esc(format),
            esc(&file.display().to_string())
        ));
    }
    x.push_str("  </devices>\n</domain>\n");
    x
}

/// The socket directory of a pull-mode backup job on the domain, if one runs.
fn running_backup_socket(uri: &str, dom: &str) -> Option<PathBuf> {
    let xml = virsh(uri, &["backup-dumpxml", dom]).ok()?;
    let mut r = Reader::from_str(&xml);
    loop {
        match r.read_event().ok()? {
            Event::Empty(e) | Event::Start(e) if e.name().as_ref() == "server" => {
                return attr(&e, "socket").map(PathBuf::from)
            }
            Event::Eof => return None,
            _ => {}
        }
    }
}

/// The checkpoints of a domain (names).
fn checkpoints(uri: &str, dom: &str) -> Result<Vec<String>> {
    Ok(virsh(uri, &["checkpoint-list", "--name", dom])?
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect())
}

/// A pull-mode backup job as far as it got; aborted and cleaned up on drop.
struct PullJob<'a> {
    uri: &'a str,
    dom: &'a str,
    dir: PathBuf,
    started: bool,
    /// The checkpoint it created (deleted unless the recovery point was committed).
    checkpoint: Option<String>,
    committed: bool,
}

impl PullJob<'_> {
    fn end(&mut self) -> Vec<String> {
        let mut warn = Vec::new();
        if std::mem::take(&mut self.started) {
            if let Err(e) = virsh(self.uri, &["domjobabort", self.dom]) {
                warn.push(format!("Ending the domain's backup job failed: {e}"));
            }
        }
        if let Some(cp) = self.checkpoint.take() {
            if !self.committed {
                if let Err(e) = virsh(self.uri, &["checkpoint-delete", self.dom, &cp]) {
                    warn.push(format!("Removing checkpoint {cp} failed: {e}"));
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        warn
    }
}

impl Drop for PullJob<'_> {
    fn drop(&mut self) {
        for w in self.end() {
            tracing::warn!("{w}");
        }
    }
}

/// A private directory QEMU (another user) can create its socket and scratch files in.
fn socket_dir() -> Result<PathBuf> {
    use rand::RngCore;
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let mut raw = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    let tag = u128::from_le_bytes(raw);
    let dir = std::env::temp_dir().join(format!("{PREFIX}libvirt-{tag:032x}"));
    std::fs::DirBuilder::new()
        .mode(0o733)
        .create(&dir)
        .map_err(|e| EngineError::io(format!("create {}", dir.display()), e))?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o733))
        .map_err(|e| EngineError::io(format!("chmod {}", dir.display()), e))?;
    Ok(dir)
}

/// Freezes the domain's file systems through its guest agent: how many, or why not.
fn freeze(uri: &str, dom: &str) -> std::result::Result<u64, String> {
    let out = virsh(uri, &["domfsfreeze", dom]).map_err(|e| e.to_string())?;
    Ok(out.split_whitespace().find_map(|w| w.parse::<u64>().ok()).unwrap_or(0))
}

fn pull_xml(socket: &Path, disks: &[DomainDisk], incremental: Option<&str>) -> String {
    let esc = |s: &str| quick_xml::escape::escape(s).into_owned();
    let mut x = String::from("<domainbackup mode='pull'>\n");
    if let Some(i) = incremental {
        x.push_str(&format!("  <incremental>{}</incremental>\n", esc(i)));
    }
    x.push_str(&format!(
        "  <server transport='unix' socket='{}'/>\n  <disks>\n",
        esc(&socket.display().to_string())
    ));
    let dir = socket.parent().unwrap_or(Path::new("/"));
    for (i, d) in disks.iter().enumerate() {
        let bitmap = if incremental.is_some() {
            format!(" exportbitmap='{EXPORT_BITMAP}'")
        } else {
            String::new()
        };
        x.push_str(&format!(
            "    <disk name='{t}' backup='yes' type='file' exportname='{t}'{bitmap}><scratch file='{}'/></disk>\n",
            esc(&dir.join(format!("scratch-{i}.qcow2")).display().to_string()),
            t = esc(&d.target),
        ));
    }
    x.push_str("  </disks>\n</domainbackup>\n");
    x
}

impl ResticEngine {
    /// [`crate::Engine::backup_libvirt_domain`].
    pub(crate) fn libvirt_backup(
        &self,
        spec: &RepoSpec,
        req: &LibvirtBackupRequest,
        progress: &dyn Progress,
        cancel: &Cancel,
    ) -> Result<BackupOutcome> {
        let uri = req.domain.uri.as_str();
        let dom = req.domain.uuid.as_str();
        let info = domain(uri, dom)?;
        if info.disks.is_empty() {
            return Err(src_err(uri, format!("domain '{}' has no disk", info.name)));
        }
        let mut names = HashSet::new();
        if let Some(d) = info.disks.iter().find(|d| !names.insert(d.target.clone())) {
            return Err(src_err(uri, format!("two disks have the target '{}'", d.target)));
        }
        if !info.running {
            let disks = info
                .disks
                .iter()
                .map(|d| DiskSource {
                    name: d.target.clone(),
                    path: d.source.clone(),
                })
                .collect();
            let mut out = crate::Engine::backup_disks(
                self,
                spec,
                &DiskBackupRequest {
                    disks,
                    tags: req.tags.clone(),
                    time: req.time,
                    expiry: req.expiry,
                    parent: None,
                },
                progress,
                cancel,
            )?;
            progress.detail(
                Task::Snapshot,
                &format!("Domain '{}' is shut off: its image files were read.", info.name),
            );
            out.consistency = Consistency::CrashConsistent;
            return Ok(out);
        }
        let _lock = crate::backend::RepoLock::shared(spec)?;
        let plain = self.open(spec, None)?;
        let points = all_points(&plain)?;
        crate::engine::refuse_existing(&points, &req.tags.recovery_point)?;
        let parent = points
            .into_iter()
            .rfind(|(_, m)| m.item == req.tags.item && m.kind == RecoveryPointKind::Disks);

        // A backup job a crashed rsvault left behind.
        if let Some(sock) = running_backup_socket(uri, dom) {
            let ours = sock
                .parent()
                .and_then(Path::file_name)
                .is_some_and(|n| n.to_string_lossy().starts_with(&format!("{PREFIX}libvirt-")));
            if ours {
                virsh(uri, &["domjobabort", dom])?;
                if let Some(d) = sock.parent() {
                    let _ = std::fs::remove_dir_all(d);
                }
            }
        }
        let existing = checkpoints(uri, dom)?;
        let new_cp = format!("{PREFIX}{}", req.tags.recovery_point);
        // Whether the parent's checkpoint can give this backup's changed blocks, else why not.
        let incremental: std::result::Result<String, String> = match &parent {
            None => Err("this is the first recovery point of this VM".into()),
            Some((_, m)) => {
                let cp = format!("{PREFIX}{}", m.recovery_point);
                if !existing.contains(&cp) {
                    Err(format!(
                        "the domain has no checkpoint since recovery point {} (it was backed up while shut off, or the checkpoint was removed)",
                        m.recovery_point
                    ))
                } else if let Some(d) = info.disks.iter().find(|d| !m.disks.iter().any(|e| e.name == d.target)) {
                    Err(format!(
                        "recovery point {} has no disk '{}'",
                        m.recovery_point, d.target
                    ))
                } else {
                    Ok(cp)
                }
            }
        };
        let dir = socket_dir()?;
        let socket = dir.join("nbd.sock");
        let mut job = PullJob {
            uri,
            dom,
            dir: dir.clone(),
            started: false,
            checkpoint: None,
            committed: false,
        };
        let cp_xml = format!("<domaincheckpoint><name>{new_cp}</name></domaincheckpoint>\n");
        let cp_file = dir.join("checkpoint.xml");
        std::fs::write(&cp_file, &cp_xml).map_err(|e| EngineError::io(format!("write {}", cp_file.display()), e))?;
        let begin = |inc: Option<&str>| -> Result<()> {
            let f = dir.join("backup.xml");
            std::fs::write(&f, pull_xml(&socket, &info.disks, inc))
                .map_err(|e| EngineError::io(format!("write {}", f.display()), e))?;
            virsh(
                uri,
                &[
                    "backup-begin",
                    dom,
                    &f.display().to_string(),
                    &cp_file.display().to_string(),
                ],
            )
            .map(|_| ())
        };
        progress.update(Task::Snapshot, 0, 1);
        if cancel.is_cancelled() {
            return Err(EngineError::Cancelled);
        }
        let mut warnings = Vec::new();
        let mut note = Vec::new();
        let frozen = freeze(uri, dom);
        let mut full_read = incremental.clone().err();
        let mut began = match &incremental {
            Ok(cp) => begin(Some(cp)),
            Err(_) => begin(None),
        };
        if let (Err(e), Ok(_)) = (&began, &incremental) {
            // libvirt refused the incremental (a broken or missing bitmap): a full backup.
            full_read = Some(format!("libvirt refused an incremental backup ({e})"));
            began = begin(None);
        }
        let consistency = match frozen {
            Ok(n) => {
                let thawed = virsh(uri, &["domfsthaw", dom])
                    .map(|_| "them".to_string())
                    .map_err(|e| e.to_string());
                crate::livevm::after_freeze(n, thawed, &mut note, &mut warnings)
            }
            Err(why) => {
                note.push(format!(
                    "Crash consistent: the guest agent did not freeze the file systems ({why})."
                ));
                Consistency::CrashConsistent
            }
        };
        began?;
        job.started = true;
        job.checkpoint = Some(new_cp.clone());
        note.push(format!(
            "{} disk(s) captured at one instant (libvirt pull-mode backup, checkpoint {new_cp}).",
            info.disks.len()
        ));
        progress.update(Task::Snapshot, 1, 1);
        progress.finished(Task::Snapshot);
        progress.detail(Task::Snapshot, &note.join(" "));

        let mut views = Vec::new();
        for d in &info.disks {
            let ctx = full_read
                .is_none()
                .then(|| format!("qemu:dirty-bitmap:{EXPORT_BITMAP}"));
            let mut contexts = vec!["base:allocation".to_string()];
            contexts.extend(ctx.clone());
            let reader = NbdReader::open(&socket, &d.target, contexts).map_err(|e| EngineError::Source {
                path: socket.clone(),
                reason: e.to_string(),
            })?;
            let same_size = parent
                .as_ref()
                .and_then(|(_, m)| m.disks.iter().find(|e| e.name == d.target))
                .map(|e| e.virtual_size == reader.size());
            let (bitmap_ctx, why) = match (ctx, same_size) {
                (Some(ctx), Some(true)) => (Some(ctx), String::new()),
                (Some(_), _) => (None, "its size changed".to_string()),
                (None, _) => (None, full_read.clone().unwrap_or_else(|| "no checkpoint".into())),
            };
            views.push(crate::livevm::NbdView {
                name: d.target.clone(),
                path: d.source.clone(),
                format: if d.format == "qcow2" {
                    crate::disk::ImageFormat::Qcow2
                } else {
                    crate::disk::ImageFormat::Raw
                },
                reader,
                bitmap_ctx,
                full_read: why,
            });
        }
        let (snap, mut meta, stats) = self.transfer_views(
            spec,
            &plain,
            &req.tags,
            req.time,
            req.expiry,
            parent.map(|p| p.0),
            views,
            consistency,
            ("checkpoint bitmap", "domain"),
            progress,
            cancel,
            &socket,
        )?;
        job.committed = true;
        warnings.extend(job.end());
        // Older checkpoints are no longer needed: the new one records every write from now on.
        for cp in existing.iter().filter(|c| c.starts_with(PREFIX) && **c != new_cp) {
            if let Err(e) = virsh(uri, &["checkpoint-delete", dom, cp]) {
                warnings.push(format!("Removing checkpoint {cp} failed: {e}"));
            }
        }
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
}

#[cfg(test)]
mod tests {
    use super::*;

    const XML: &str = r#"<domain type='qemu' id='3'>
  <name>web &amp; db</name>
  <uuid>0b6f4c8e-1c1a-4a55-9a0e-4f1f2b1e7c11</uuid>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/img/os.qcow2' index='2'/>
      <backingStore type='file' index='3'>
        <format type='raw'/>
        <source file='/img/base.raw'/>
      </backingStore>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='block' device='disk'>
      <driver name='qemu' type='raw'/>
      <source dev='/dev/vg/data'/>
      <target dev='vdb' bus='virtio'/>
    </disk>
    <disk type='file' device='cdrom'>
      <source file='/iso/install.iso'/>
      <target dev='sda' bus='sata'/>
    </disk>
  </devices>
</domain>"#;

    #[test]
    fn parses_disks_of_a_domain() {
        let (name, uuid, disks) = parse_domain(XML).unwrap();
        assert_eq!(name, "web & db");
        assert_eq!(uuid, "0b6f4c8e-1c1a-4a55-9a0e-4f1f2b1e7c11");
        assert_eq!(
            disks,
            vec![
                DomainDisk {
                    target: "vda".into(),
                    source: "/img/os.qcow2".into(),
                    format: "qcow2".into(),
                    virtual_size: 0,
                },
                DomainDisk {
                    target: "vdb".into(),
                    source: "/dev/vg/data".into(),
                    format: "raw".into(),
                    virtual_size: 0,
                },
            ]
        );
        assert!(parse_domain("<domain><devices/></domain>").is_err());
        assert!(parse_domain("<domain><name>x</name").is_err());
    }

    #[test]
    fn restored_definition_points_at_the_restored_disks() {
        let restored = vec![
            ("vda".to_string(), PathBuf::from("/restore/vda"), "qcow2".to_string()),
            ("vdb".to_string(), PathBuf::from("/restore/vdb"), "raw".to_string()),
        ];
        let x = restored_definition(XML, "web-restored", "11111111-2222-3333-4444-555555555555", &restored).unwrap();
        let (name, uuid, disks) = parse_domain(&x).unwrap();
        assert_eq!(name, "web-restored");
        assert_eq!(uuid, "11111111-2222-3333-4444-555555555555");
        assert_eq!(disks.len(), 2);
        assert_eq!(disks[0].source, PathBuf::from("/restore/vda"));
        assert_eq!(disks[1].source, PathBuf::from("/restore/vdb"));
        assert_eq!(disks[1].format, "raw");
        assert!(!x.contains("backingStore"), "{x}");
        assert!(!x.contains("/dev/vg/data"), "{x}");
        assert!(!x.contains("id='3'"), "{x}");
        assert!(x.contains("/iso/install.iso"), "the CD-ROM stays: {x}");
        assert!(
            x.contains("<disk type=\"file\" device=\"disk\">") || x.contains("type=\"file\""),
            "{x}"
        );
    }

    #[test]
    fn a_definition_for_a_qmp_guest_parses() {
        let x = definition_for(
            "g<1>",
            "11111111-2222-3333-4444-555555555555",
            &[
                (PathBuf::from("/r/disk0"), "qcow2".into()),
                (PathBuf::from("/r/d'1"), "raw".into()),
            ],
        );
        let (name, _, disks) = parse_domain(&x).unwrap();
        assert_eq!(name, "g<1>");
        assert_eq!(disks[1].source, PathBuf::from("/r/d'1"));
        assert_eq!(disks[1].target, "vdb");
    }
}
