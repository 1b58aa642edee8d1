//! VMs that are running QEMU guests (issue 18): a VM resource whose tag `rsvault-qmp` names the
//! guest's QMP socket (and optionally `rsvault-guest-agent`, its guest agent's socket, and
//! `rsvault-nbd`, the NBD server socket the guest already runs). Each socket is a host path and
//! passes the operator's grants ([`crate::hostaccess::HostGrants::check`]) like a disk image,
//! when the VM is written and again when a job runs. The disks are not declared: they are
//! discovered over QMP (`rsvault_engine::livevm::discover`), when the VM is written (its
//! `storageProfile` shows them) and at every backup. Backups go through
//! `Engine::backup_live_vm` (fleecing, NBD, dirty bitmaps); a restore over the original disks is
//! refused while the guest runs.
//!
//! A VM can also be a **libvirt domain**: tags `rsvault-libvirt` (the connection URI, which must
//! be granted: [`crate::hostaccess::LibvirtGrant`]) and `rsvault-libvirt-domain` (its UUID). A
//! container refresh declares every domain of each granted connection as a VM in the grant's
//! resource group ([`Control::discover_libvirt`]); its disks come from the domain's XML; backups
//! go through `Engine::backup_libvirt_domain` (pull-mode backup and checkpoints while it runs,
//! the image files while it is shut off, `rsvault_engine::libvirt`).

use crate::disk::DiskInfo;
use crate::hostaccess::{unavailable, HostGrants};
use crate::inventory::VmDisk;
use crate::{Control, Error, Result};
pub use rsvault_engine::LiveVmSource;
use rsvault_engine::{libvirt, livevm, LibvirtDomain, LiveDisk};
use rsvault_store::ResourceRow;
use serde_json::{json, Map, Value};
use std::path::{Path, PathBuf};

/// The tag naming a running guest's QMP socket.
pub const QMP_TAG: &str = "rsvault-qmp";
/// The tag naming its guest agent's socket.
pub const AGENT_TAG: &str = "rsvault-guest-agent";
/// The tag naming the NBD server socket the guest already runs (QEMU runs one at most).
pub const NBD_TAG: &str = "rsvault-nbd";

/// The tag naming a libvirt domain's connection URI.
pub const LIBVIRT_TAG: &str = "rsvault-libvirt";
/// The tag naming the domain (its UUID).
pub const DOMAIN_TAG: &str = "rsvault-libvirt-domain";

/// The libvirt domain a VM's tags name, its connection checked against the grants; `None` when
/// the VM is not a libvirt domain.
pub fn libvirt_of(grants: &HostGrants, vm_id: &str, tags: &Map<String, Value>) -> Result<Option<LibvirtDomain>> {
    let Some(uri) = tags.get(LIBVIRT_TAG) else {
        return Ok(None);
    };
    let target = format!("tags.{LIBVIRT_TAG}");
    let uri = uri.as_str().ok_or_else(|| Error::Invalid {
        code: "InvalidParameter",
        message: format!("The tag '{LIBVIRT_TAG}' must be a libvirt connection URI."),
        target: Some(target.clone()),
    })?;
    grants.check_libvirt(uri, vm_id, Some(&target))?;
    let uuid = tags
        .get(DOMAIN_TAG)
        .and_then(Value::as_str)
        .filter(|u| uuid::Uuid::parse_str(u).is_ok())
        .ok_or_else(|| Error::Invalid {
            code: "InvalidParameter",
            message: format!("The tag '{DOMAIN_TAG}' must be the UUID of a domain of '{uri}'."),
            target: Some(format!("tags.{DOMAIN_TAG}")),
        })?;
    Ok(Some(LibvirtDomain {
        uri: uri.to_string(),
        uuid: uuid.to_string(),
    }))
}

/// A libvirt domain's definition and disks; a connection or domain that does not answer is the
/// generic "not available".
pub fn libvirt_domain(d: &LibvirtDomain) -> Result<(libvirt::DomainInfo, Vec<LiveDisk>)> {
    let fail = |e: rsvault_engine::EngineError| {
        tracing::info!(uri = %d.uri, domain = %d.uuid, reason = %e, "libvirt domain refused");
        unavailable(&d.uri, Some(&format!("tags.{LIBVIRT_TAG}")))
    };
    let info = libvirt::domain(&d.uri, &d.uuid).map_err(fail)?;
    if info.disks.is_empty() {
        return Err(Error::Invalid {
            code: "InvalidParameter",
            message: format!("The libvirt domain '{}' has no disk.", info.name),
            target: Some(format!("tags.{DOMAIN_TAG}")),
        });
    }
    let disks = info
        .disks
        .iter()
        .map(|x| LiveDisk {
            name: x.target.clone(),
            node: x.target.clone(),
            driver: x.format.clone(),
            virtual_size: x.virtual_size,
            file: Some(x.source.clone()),
        })
        .collect();
    Ok((info, disks))
}

/// A socket tag's path, checked against the grants for `vm_id` and resolved.
fn socket(grants: &HostGrants, tags: &Map<String, Value>, tag: &str, vm_id: &str) -> Result<Option<PathBuf>> {
    let Some(v) = tags.get(tag) else { return Ok(None) };
    let target = format!("tags.{tag}");
    let s = v
        .as_str()
        .filter(|s| s.starts_with('/'))
        .ok_or_else(|| Error::Invalid {
            code: "InvalidParameter",
            message: format!("The tag '{tag}' must be the absolute path of a Unix socket."),
            target: Some(target.clone()),
        })?;
    grants.check_named(Path::new(s), s, vm_id, Some(&target)).map(Some)
}

/// The running guest a VM's tags name, its sockets granted and resolved; `None` for an
/// image-file VM.
pub fn source_of(grants: &HostGrants, vm_id: &str, tags: &Map<String, Value>) -> Result<Option<LiveVmSource>> {
    let Some(qmp) = socket(grants, tags, QMP_TAG, vm_id)? else {
        return Ok(None);
    };
    Ok(Some(LiveVmSource {
        qmp_socket: qmp,
        agent_socket: socket(grants, tags, AGENT_TAG, vm_id)?,
        nbd_socket: socket(grants, tags, NBD_TAG, vm_id)?,
    }))
}

/// The guest's disks over QMP; a guest that does not answer is the generic "not available".
pub fn discover(src: &LiveVmSource, shown: &str) -> Result<Vec<LiveDisk>> {
    let disks = livevm::discover(&src.qmp_socket).map_err(|e| {
        tracing::info!(socket = %src.qmp_socket.display(), reason = %e, "running guest refused");
        unavailable(shown, Some(&format!("tags.{QMP_TAG}")))
    })?;
    if disks.is_empty() {
        return Err(Error::Invalid {
            code: "InvalidParameter",
            message: format!("The guest behind '{shown}' has no disk."),
            target: Some(format!("tags.{QMP_TAG}")),
        });
    }
    Ok(disks)
}

/// The `storageProfile` of a running guest (OS disk first, then data disks at LUN 0, 1, …) and
/// its disks as the data plane sees them.
pub fn profile(disks: &[LiveDisk]) -> (Value, Vec<VmDisk>) {
    let entry = |d: &LiveDisk| {
        let mut e = json!({
            "name": d.name,
            "createOption": "Attach",
            "caching": "None",
            "diskSizeGB": d.virtual_size.div_ceil(1 << 30),
            "rsvaultNode": d.node,
        });
        if let Some(f) = &d.file {
            e["vhd"] = json!({"uri": format!("file://{}", f.display())});
        }
        e
    };
    let vm_disks = disks
        .iter()
        .enumerate()
        .map(|(i, d)| VmDisk {
            name: d.name.clone(),
            lun: (i > 0).then(|| i as i64 - 1),
            info: DiskInfo {
                path: d.file.clone().unwrap_or_else(|| PathBuf::from(&d.node)),
                format: if d.driver == "qcow2" {
                    crate::disk::DiskFormat::Qcow2
                } else {
                    crate::disk::DiskFormat::Raw
                },
                virtual_size: d.virtual_size,
            },
        })
        .collect();
    let data: Vec<Value> = disks
        .iter()
        .skip(1)
        .enumerate()
        .map(|(i, d)| {
            let mut e = entry(d);
            e["lun"] = json!(i);
            e
        })
        .collect();
    (json!({"osDisk": entry(&disks[0]), "dataDisks": data}), vm_disks)
}

/// A resource row's tags.
fn tags_of(row: &ResourceRow) -> Map<String, Value> {
    row.body
        .get("tags")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default()
}

impl Control {
    /// The running guest a stored VM row names (sockets checked against the grants now).
    pub fn live_source(&self, row: &ResourceRow) -> Result<Option<LiveVmSource>> {
        let tags = tags_of(row);
        source_of(&self.grants, &row.id, &tags)
    }

    /// The libvirt domain a stored VM row names (its connection checked against the grants now).
    pub fn libvirt_source(&self, row: &ResourceRow) -> Result<Option<LibvirtDomain>> {
        let tags = tags_of(row);
        libvirt_of(&self.grants, &row.id, &tags)
    }

    /// Refuses to overwrite the disks of a guest that runs (a restore to the original location).
    pub fn refuse_if_running(&self, vm: &ResourceRow) -> Result<()> {
        if let Some(d) = self.libvirt_source(vm)? {
            let (info, _) = libvirt_domain(&d)?;
            if info.running {
                return Err(Error::Invalid {
                    code: "UserErrorVmNotInDesirableState",
                    message: format!(
                        "Virtual machine '{}' is running (libvirt domain '{}'): its disks cannot be replaced while it runs. Shut the domain down and retry, or restore the disks to a storage account (RestoreDisks).",
                        vm.name, info.name
                    ),
                    target: None,
                });
            }
            return Ok(());
        }
        let Some(src) = self.live_source(vm)? else {
            return Ok(());
        };
        match livevm::guest_status(&src.qmp_socket) {
            // A guest whose QMP socket does not answer is not running.
            Err(_) => Ok(()),
            Ok(state) if state == "shutdown" || state == "guest-panicked" => Ok(()),
            Ok(state) => Err(Error::Invalid {
                code: "UserErrorVmNotInDesirableState",
                message: format!(
                    "Virtual machine '{}' is running (QEMU state '{state}'): its disks cannot be replaced while it runs. Shut the guest down and retry, or restore the disks to a storage account (RestoreDisks).",
                    vm.name
                ),
                target: None,
            }),
        }
    }

    /// Where this node's running-guest jobs keep their fleecing images and NBD socket.
    pub(crate) fn live_work_dir(&self) -> Result<PathBuf> {
        Ok(self.data()?.live_dir())
    }
}

/// A domain name as a VM name (letters, digits, `-`, `_`, `.`; at most 64; not ending in `.`).
fn vm_name_of(domain: &str) -> String {
    let mut n: String = domain
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect();
    while n.ends_with('.') {
        n.pop();
    }
    if n.is_empty() {
        n = "domain".into();
    }
    n
}

impl Control {
    /// Container refresh: every domain of each libvirt connection granted in subscription `sub`
    /// is declared (or refreshed) as a VM of the grant's resource group, named after the domain
    /// (the group is made in `location` when missing). A connection that does not answer is
    /// logged and skipped; a VM of that name that is not this domain is left alone. Returns how
    /// many domains were declared.
    pub fn discover_libvirt(&self, sub: &str, location: &str) -> Result<usize> {
        let mut n = 0;
        for g in self.grants.libvirt() {
            let (gsub, group) = g.group();
            if !gsub.eq_ignore_ascii_case(sub) {
                continue;
            }
            let uuids = match libvirt::list_domains(g.uri()) {
                Ok(u) => u,
                Err(e) => {
                    tracing::warn!(uri = g.uri(), reason = %e, "libvirt connection did not answer; its domains are not refreshed");
                    continue;
                }
            };
            for uuid in uuids {
                let info = match libvirt::domain(g.uri(), &uuid) {
                    Ok(i) => i,
                    Err(e) => {
                        tracing::warn!(uri = g.uri(), domain = %uuid, reason = %e, "libvirt domain skipped");
                        continue;
                    }
                };
                let name = vm_name_of(&info.name);
                let loc = match self.group_row(sub, group) {
                    Ok(r) => r.location,
                    Err(_) => location.to_string(),
                };
                if let Ok(existing) = self.vm_row(sub, group, &name) {
                    let same = existing
                        .body
                        .pointer(&format!("/tags/{DOMAIN_TAG}"))
                        .and_then(Value::as_str)
                        == Some(uuid.as_str());
                    if !same {
                        tracing::warn!(vm = %existing.id, domain = %info.name, "a VM of this name exists and is not this libvirt domain; skipped");
                        continue;
                    }
                }
                let tags = json!({LIBVIRT_TAG: g.uri(), DOMAIN_TAG: uuid});
                match self.declare_vm_body(sub, group, &name, &loc, &json!({"location": loc, "tags": tags})) {
                    Ok(_) => n += 1,
                    Err(e) => tracing::warn!(domain = %info.name, reason = %e, "libvirt domain not declared"),
                }
            }
        }
        Ok(n)
    }
}
