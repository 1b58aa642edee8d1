//! VMs that are running QEMU guests (issue 18): a VM resource whose tag `rsvault-qmp` names the
//! guest's QMP socket (and optionally `rsvault-guest-agent`, its guest agent's socket, and
//! `rsvault-nbd`, the NBD server socket the guest already runs). Each socket is a host path and
//! passes the operator's grants ([`crate::hostaccess::HostGrants::check`]) like a disk image,
//! when the VM is written and again when a job runs. The disks are not declared: they are
//! discovered over QMP (`rsvault_engine::livevm::discover`), when the VM is written (its
//! `storageProfile` shows them) and at every backup. Backups go through
//! `Engine::backup_live_vm` (fleecing, NBD, dirty bitmaps); a restore over the original disks is
//! refused while the guest runs.

use crate::disk::DiskInfo;
use crate::hostaccess::{unavailable, HostGrants};
use crate::inventory::VmDisk;
use crate::{Control, Error, Result};
pub use rsvault_engine::LiveVmSource;
use rsvault_engine::{livevm, LiveDisk};
use rsvault_store::ResourceRow;
use serde_json::{json, Map, Value};
use std::path::{Path, PathBuf};

/// The tag naming a running guest's QMP socket.
pub const QMP_TAG: &str = "rsvault-qmp";
/// The tag naming its guest agent's socket.
pub const AGENT_TAG: &str = "rsvault-guest-agent";
/// The tag naming the NBD server socket the guest already runs (QEMU runs one at most).
pub const NBD_TAG: &str = "rsvault-nbd";

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

impl Control {
    /// The running guest a stored VM row names (sockets checked against the grants now).
    pub fn live_source(&self, row: &ResourceRow) -> Result<Option<LiveVmSource>> {
        let tags = row
            .body
            .get("tags")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        source_of(&self.grants, &row.id, &tags)
    }

    /// Refuses to overwrite the disks of a guest that runs (a restore to the original location).
    pub fn refuse_if_running(&self, vm: &ResourceRow) -> Result<()> {
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
