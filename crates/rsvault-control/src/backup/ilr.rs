//! File-level restore from a VM recovery point (Azure's "item level recovery", ILR):
//! `provisionInstantItemRecovery`, `listInstantItemRecoveryOperationResult` and
//! `revokeInstantItemRecovery` on a recovery point.
//!
//! Provisioning makes the point's disks readable for [`SESSION_HOURS`] hours (Azure's 12): the node
//! restores them (the engine's verified disk restore) into a staging directory of its data dir
//! (`DATA_DIR/ilr/{uuid}`, 0700) and serves each image read-only with `qemu-nbd` over NBD, on
//! `RSVAULT_ILR_ADDRESS` (default `127.0.0.1`), behind TLS with a pre-shared key: a random
//! 256-bit key and identity per session, in a 0600 `keys.psk` beside the images. Only a holder of
//! the key reads a byte; a client without TLS, or with another key, fails the handshake. The key
//! rests in the store sealed with the server key, bound to the session's id, like vault passwords.
//!
//! The answer (`InstantItemRecoveryTarget`) carries one Linux client script (base64 in
//! `scriptContent`, `.sh`, as Azure's answer carries its script with a password): it writes the key
//! to a private temporary directory and copies (`copy DIR`), describes (`info`) or attaches as a
//! block device (`connect`, root) each disk with `qemu-img` / `qemu-nbd`. Any NBD client with TLS-PSK
//! (nbdfuse, nbdcopy) can use the same host, port, export name, identity and key.
//!
//! A session is a row of the resource table below its recovery point (so deleting the vault drops
//! it) holding [`Session`]; the provision and revoke requests write the row and an operation record
//! (`InProgress`) in one transaction, and the node's [`IlrKeeper`] thread does the rest: it claims
//! an unclaimed session, restores, starts the exports and marks the operations `Succeeded` (or
//! `Failed`, with the reason); it ends a session at its expiry or at a revoke (exports stopped,
//! staging removed, row deleted, the revoke's operation `Succeeded`); it removes staging
//! directories and exports no row names. A restart resumes: the keeper restarts the exports of its
//! ready sessions (same port when free) and the restores that were under way; `qemu-nbd` dies with
//! the keeper thread (`PR_SET_PDEATHSIG`), so a crashed node leaves no export behind. A second
//! provision of a live session renews it (12 hours from now) and answers the same target.

use crate::{body, Caller, Control, Error, Result};
use chrono::{DateTime, Duration as Span, Utc};
use rand::RngCore;
use rsvault_engine::{Cancel, DiskRestoreRequest, DiskRestoreTarget, NoProgress, Secret};
use rsvault_store::{OperationRow, ResourceRow};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// The type key of a session row (rsvault's own; no ARM route lists it).
pub const SESSION_TYPE: &str =
    "Microsoft.RecoveryServices/vaults/backupFabrics/protectionContainers/protectedItems/recoveryPoints/instantItemRecoverySessions";
/// How long a provisioned session lasts (Azure's default), renewed by a second provision.
pub const SESSION_HOURS: i64 = 12;
/// Sessions a vault holds at once (each is a full copy of a point's disks on the node).
pub const MAX_SESSIONS_PER_VAULT: usize = 4;
const PROVISION_KIND: &str = "ProvisionInstantItemRecovery";
const REVOKE_KIND: &str = "RevokeInstantItemRecovery";
const PROVISION_ACTION: &str =
    "Microsoft.RecoveryServices/Vaults/backupFabrics/protectionContainers/protectedItems/recoveryPoints/provisionInstantItemRecovery/action";
const VM_READ: &str = "Microsoft.Compute/virtualMachines/read";

/// Where a session is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum State {
    Provisioning,
    Ready,
    Revoking,
    Failed,
}

/// One disk served.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Export {
    pub disk: String,
    pub name: String,
    pub port: u16,
    pub size: u64,
}

/// A session's row body.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Session {
    pub vault: String,
    pub item: String,
    pub recovery_point: String,
    pub vm_name: String,
    pub os_type: String,
    pub state: State,
    /// The node serving it (`None` until a keeper claims it); `address` is that node's.
    pub node: Option<String>,
    pub expiry: DateTime<Utc>,
    /// Provision operations answered by this session.
    pub operations: Vec<String>,
    pub revoke_operation: Option<String>,
    /// The staging directory's name under `DATA_DIR/ilr`.
    pub staging: String,
    pub identity: String,
    pub sealed_key: String,
    pub address: String,
    pub exports: Vec<Export>,
    pub error: Option<Value>,
}

/// Wakes the keeper (a provision or revoke was written).
#[derive(Debug, Default)]
pub struct Signal {
    state: Mutex<(u64, bool)>,
    cv: Condvar,
}

impl Signal {
    pub(crate) fn wake(&self) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.0 += 1;
        self.cv.notify_all();
    }

    /// Clears a stop asked of an earlier keeper of the same data plane.
    fn restart(&self) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).1 = false;
    }

    fn stop(&self) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.1 = true;
        self.cv.notify_all();
    }

    /// Waits up to `d` for a wake; true when stopping.
    fn wait(&self, seen: &mut u64, d: Duration) -> bool {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (s, _) = self
            .cv
            .wait_timeout_while(s, d, |s| s.0 == *seen && !s.1)
            .unwrap_or_else(|p| p.into_inner());
        *seen = s.0;
        s.1
    }
}

fn session_id(rp_id: &str) -> String {
    format!("{rp_id}/instantItemRecoverySessions/current")
}

fn bad(target: &str, message: impl Into<String>) -> Error {
    Error::Invalid {
        code: "BMSUserErrorInvalidInput",
        message: message.into(),
        target: Some(target.into()),
    }
}

fn session_of(row: &ResourceRow) -> Option<Session> {
    serde_json::from_value(row.body.clone()).ok()
}

/// The address exports listen on and scripts connect to.
fn ilr_address() -> String {
    std::env::var("RSVAULT_ILR_ADDRESS")
        .ok()
        .filter(|a| !a.trim().is_empty())
        .unwrap_or_else(|| Ipv4Addr::LOCALHOST.to_string())
}

fn mkdir_private(p: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(p)
}

impl Control {
    /// `POST …/recoveryPoints/{rp}/provisionInstantItemRecovery`: returns the operation id.
    #[allow(clippy::too_many_arguments)]
    pub fn provision_ilr(
        &self,
        caller: &Caller,
        sub: &str,
        rg: &str,
        vault: &str,
        fabric: &str,
        container: &str,
        item: &str,
        rp: &str,
        req: &Value,
    ) -> Result<String> {
        let dp = self.data()?;
        let (v, row, rp_row) = self.recovery_point_row(sub, rg, vault, fabric, container, item, rp)?;
        let p = &row.body["properties"];
        if p["isScheduledForDeferredDelete"].as_bool() == Some(true) {
            return Err(Error::Invalid {
                code: "BMSUserErrorItemSoftDeleted",
                message: format!(
                    "Item '{item}' is soft deleted: its recovery points cannot be mounted. Undelete it first."
                ),
                target: None,
            });
        }
        if p["backupManagementType"].as_str() == Some("AzureStorage") {
            return Err(bad(
                "properties.objectType",
                "File shares need no item level recovery: restore the files with an ItemLevelRestore request.",
            ));
        }
        let m = body::object(req)?;
        let props = body::opt_obj(m, "properties", "")?.ok_or_else(|| {
            bad(
                "properties",
                "The request needs 'properties' with 'objectType' IaasVMILRRegistrationRequest.",
            )
        })?;
        let kind = body::opt_str(props, "objectType", "properties.")?.unwrap_or_default();
        if !kind.eq_ignore_ascii_case("IaasVMILRRegistrationRequest") {
            return Err(bad(
                "properties.objectType",
                format!("'{kind}' does not apply to a VM's recovery point: use IaasVMILRRegistrationRequest."),
            ));
        }
        if let Some(named) = body::opt_str(props, "recoveryPointId", "properties.")? {
            if !named.is_empty() && !named.eq_ignore_ascii_case(rp) {
                return Err(bad(
                    "properties.recoveryPointId",
                    format!("'recoveryPointId' ('{named}') is not the recovery point of the URL ('{rp}')."),
                ));
            }
        }
        let mut linked: Vec<(&str, String)> = Vec::new();
        let source = p["sourceResourceId"].as_str().unwrap_or_default().to_string();
        if !source.is_empty() {
            linked.push((VM_READ, source));
        }
        if let Some(vm) = body::opt_str(props, "virtualMachineId", "properties.")?.filter(|s| !s.is_empty()) {
            linked.push((VM_READ, vm.to_string()));
        }
        let linked: Vec<(&str, &str)> = linked.iter().map(|(a, s)| (*a, s.as_str())).collect();
        self.authorize_linked(caller, PROVISION_ACTION, &rp_row.id, &linked)?;
        let size = rp_row.engine["totalSize"].as_u64().unwrap_or(0);
        let sid = session_id(&rp_row.id);
        let now = self.now();
        let expiry = now + Span::hours(SESSION_HOURS);
        let existing = self.store.read(|db| db.resource(&sid))?.and_then(|r| session_of(&r));
        let live = existing
            .as_ref()
            .is_some_and(|s| matches!(s.state, State::Provisioning | State::Ready));
        if !live {
            let others = self
                .store
                .read(|db| db.all_below(&v.id, SESSION_TYPE))?
                .iter()
                .filter_map(session_of)
                .filter(|s| s.state != State::Failed)
                .count();
            if others >= MAX_SESSIONS_PER_VAULT {
                return Err(Error::Throttled {
                    message: format!("The vault already has {others} item level recovery sessions, the most it holds at once. Revoke one, then provision again."),
                    retry_after_secs: 60,
                });
            }
            let dir = dp.ilr_dir();
            if let Some(free) = rsvault_engine::backend::free_space(&dir) {
                if free < size {
                    return Err(Error::Invalid {
                        code: "UserErrorNotEnoughSpace",
                        message: format!(
                            "The node's data directory has {} MiB free; the recovery point's disks take {} MiB.",
                            free >> 20,
                            size.div_ceil(1 << 20)
                        ),
                        target: None,
                    });
                }
            }
        }
        if existing.as_ref().is_some_and(|s| s.state == State::Revoking) {
            return Err(Error::Conflict {
                code: "UserErrorIlrSessionBeingRevoked",
                message: "The item level recovery session of this recovery point is being revoked. Provision again when the revoke has ended.".into(),
            });
        }
        let op_id = uuid::Uuid::new_v4().to_string();
        let session = match existing.filter(|_| live) {
            Some(mut s) => {
                s.expiry = expiry;
                s.operations.push(op_id.clone());
                s
            }
            None => {
                let mut raw = [0u8; 32];
                rand::rngs::OsRng.fill_bytes(&mut raw);
                let key = Secret::new(raw.iter().map(|b| format!("{b:02x}")).collect::<String>());
                let vm = self
                    .store
                    .read(|db| db.resource(p["sourceResourceId"].as_str().unwrap_or_default()))?;
                Session {
                    vault: v.id.clone(),
                    item: row.id.clone(),
                    recovery_point: rp_row.name.clone(),
                    vm_name: p["friendlyName"].as_str().unwrap_or_default().to_string(),
                    os_type: vm
                        .as_ref()
                        .and_then(|vm| {
                            vm.body
                                .pointer("/properties/storageProfile/osDisk/osType")
                                .and_then(Value::as_str)
                        })
                        .unwrap_or("Linux")
                        .to_string(),
                    state: State::Provisioning,
                    node: None,
                    expiry,
                    operations: vec![op_id.clone()],
                    revoke_operation: None,
                    staging: uuid::Uuid::new_v4().simple().to_string(),
                    identity: format!("rsvault-ilr-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]),
                    sealed_key: dp.keys.seal(&sid, &key).map_err(crate::dataplane::engine_error)?,
                    address: ilr_address(),
                    exports: vec![],
                    error: None,
                }
            }
        };
        let ready = session.state == State::Ready;
        let op = OperationRow {
            id: op_id.clone(),
            scope_key: v.id.to_ascii_lowercase(),
            kind: PROVISION_KIND.into(),
            status: if ready { "Succeeded" } else { "InProgress" }.into(),
            start: now,
            end: ready.then_some(now),
            error: None,
            properties: None,
            target: Some(row.id.clone()),
        };
        let srow = self.session_row(&rp_row.id, &v.subscription, v.resource_group.as_deref(), &session, now);
        self.store.write(|db| {
            db.put_resource(&srow)?;
            db.put_operation(&op)
        })?;
        dp.ilr.wake();
        Ok(op_id)
    }

    fn session_row(&self, rp_id: &str, sub: &str, rg: Option<&str>, s: &Session, now: DateTime<Utc>) -> ResourceRow {
        ResourceRow {
            id: session_id(rp_id),
            subscription: sub.to_string(),
            resource_group: rg.map(String::from),
            type_key: SESSION_TYPE.to_ascii_lowercase(),
            name: "current".into(),
            parent_key: Some(rp_id.to_ascii_lowercase()),
            body: serde_json::to_value(s).unwrap_or_default(),
            etag: uuid::Uuid::new_v4().to_string(),
            created: now,
            updated: now,
        }
    }

    /// `POST …/recoveryPoints/{rp}/revokeInstantItemRecovery`: returns the operation id (done at
    /// once when the point has no session).
    #[allow(clippy::too_many_arguments)]
    pub fn revoke_ilr(
        &self,
        sub: &str,
        rg: &str,
        vault: &str,
        fabric: &str,
        container: &str,
        item: &str,
        rp: &str,
    ) -> Result<String> {
        let dp = self.data()?;
        let (v, row, rp_row) = self.recovery_point_row(sub, rg, vault, fabric, container, item, rp)?;
        let sid = session_id(&rp_row.id);
        let now = self.now();
        let op_id = uuid::Uuid::new_v4().to_string();
        let mut op = OperationRow {
            id: op_id.clone(),
            scope_key: v.id.to_ascii_lowercase(),
            kind: REVOKE_KIND.into(),
            status: "InProgress".into(),
            start: now,
            end: None,
            error: None,
            properties: None,
            target: Some(row.id.clone()),
        };
        self.store.write(|db| {
            match db.resource(&sid)? {
                Some(mut r) => {
                    if let Some(mut s) = session_of(&r) {
                        // A second revoke takes over the first one's answer.
                        if let Some(prev) = s.revoke_operation.take() {
                            if let Some(mut o) = db.operation(&prev)? {
                                o.status = "Succeeded".into();
                                o.end = Some(now);
                                db.put_operation(&o)?;
                            }
                        }
                        s.state = State::Revoking;
                        s.revoke_operation = Some(op_id.clone());
                        r.body = serde_json::to_value(&s).unwrap_or_default();
                        r.updated = now;
                        db.put_resource(&r)?;
                    }
                }
                None => {
                    op.status = "Succeeded".into();
                    op.end = Some(now);
                }
            }
            db.put_operation(&op)
        })?;
        dp.ilr.wake();
        Ok(op_id)
    }

    /// Ends every live session of an item's recovery points (the item was soft deleted: its data
    /// stays in the vault, but is no longer served). Each goes as a revoke does: the keeper stops its
    /// exports, removes its staged disks and settles any provision still waiting. Returns how many.
    pub(crate) fn revoke_ilr_below(&self, item_id: &str) -> Result<usize> {
        let now = self.now();
        let n = self.store.write(|db| {
            let mut n = 0;
            for mut r in db.all_below(item_id, SESSION_TYPE)? {
                let Some(mut s) = session_of(&r) else { continue };
                if matches!(s.state, State::Provisioning | State::Ready) {
                    s.state = State::Revoking;
                    r.body = serde_json::to_value(&s).unwrap_or_default();
                    r.updated = now;
                    db.put_resource(&r)?;
                    n += 1;
                }
            }
            Ok::<_, Error>(n)
        })?;
        if n > 0 {
            if let Some(dp) = self.data.as_ref() {
                dp.ilr.wake();
            }
        }
        Ok(n)
    }

    /// `POST …/recoveryPoints/{rp}/listInstantItemRecoveryOperationResult`: the client script of a
    /// ready session (`InstantItemRecoveryTarget`), for a provision operation of it.
    #[allow(clippy::too_many_arguments)]
    pub fn ilr_operation_result(
        &self,
        sub: &str,
        rg: &str,
        vault: &str,
        fabric: &str,
        container: &str,
        item: &str,
        rp: &str,
        req: &Value,
    ) -> Result<Value> {
        let dp = self.data()?;
        let (_, row, rp_row) = self.recovery_point_row(sub, rg, vault, fabric, container, item, rp)?;
        let m = body::object(req)?;
        let op_id = body::opt_str(m, "provisionInstantItemRecoveryOperationId", "")?.ok_or_else(|| {
            bad(
                "provisionInstantItemRecoveryOperationId",
                "The request needs 'provisionInstantItemRecoveryOperationId': the operation id of the provision.",
            )
        })?;
        let not_found = || Error::NotFound {
            code: "UserErrorIlrOperationNotFound",
            message: format!("The provision operation '{op_id}' was not found for recovery point '{rp}'."),
        };
        let op = self
            .store
            .read(|db| db.operation(op_id))?
            .filter(|o| {
                o.kind == PROVISION_KIND && o.target.as_deref().is_some_and(|t| t.eq_ignore_ascii_case(&row.id))
            })
            .ok_or_else(not_found)?;
        let sid = session_id(&rp_row.id);
        let session = self.store.read(|db| db.resource(&sid))?.and_then(|r| session_of(&r));
        let Some(s) = session.filter(|s| s.operations.iter().any(|o| o.eq_ignore_ascii_case(op_id))) else {
            return Err(Error::NotFound {
                code: "UserErrorIlrSessionNotFound",
                message: format!("The item level recovery session of operation '{op_id}' has ended (revoked or expired). Provision again."),
            });
        };
        match (s.state, op.status.as_str()) {
            (State::Ready, _) => {}
            (_, "Failed") | (State::Failed, _) => {
                return Err(Error::Conflict {
                    code: "UserErrorIlrProvisionFailed",
                    message: format!(
                        "Provisioning failed: {}",
                        s.error.as_ref().and_then(|e| e["message"].as_str()).unwrap_or("see the operation's error")
                    ),
                })
            }
            (State::Revoking, _) => return Err(Error::Conflict {
                code: "UserErrorIlrSessionBeingRevoked",
                message: "The item level recovery session is being revoked.".into(),
            }),
            _ => {
                return Err(Error::Conflict {
                    code: "UserErrorIlrProvisionInProgress",
                    message: format!("The recovery point's disks are still being made available: poll the operation '{op_id}' until it has Succeeded."),
                })
            }
        }
        let key = dp
            .keys
            .open(&sid, &s.sealed_key)
            .map_err(crate::dataplane::engine_error)?;
        let script = client_script(&s, key.expose());
        use base64::Engine as _;
        Ok(json!({"clientScripts": [{
            "scriptContent": base64::engine::general_purpose::STANDARD.encode(script),
            "scriptExtension": ".sh",
            "osType": "Linux",
            "scriptNameSuffix": format!("{}_{}_rsvault_ilr", s.vm_name, s.recovery_point),
        }]}))
    }

    /// Whether a recovery point has a live session (`isInstantIlrSessionActive`).
    pub(crate) fn ilr_active(&self, rp_id: &str) -> bool {
        self.store
            .read(|db| db.resource(&session_id(rp_id)))
            .ok()
            .flatten()
            .and_then(|r| session_of(&r))
            .is_some_and(|s| matches!(s.state, State::Provisioning | State::Ready))
    }
}

/// The Linux client script of a session.
fn client_script(s: &Session, key: &str) -> String {
    let exports: Vec<String> = s
        .exports
        .iter()
        .map(|e| {
            format!(
                "  \"{} {} {}\"",
                e.name,
                e.port,
                e.disk.replace(['"', '\\', '$', '`', ' '], "_")
            )
        })
        .collect();
    format!(
        r#"#!/bin/bash
# rsvault item level recovery: recovery point {rp} of VM '{vm}', read-only until {expiry} UTC.
# Each disk is an NBD export behind TLS with a pre-shared key (qemu-img / qemu-nbd from qemu-utils).
# Usage: bash THIS_SCRIPT [copy [DIR] | info | connect DISK_NAME /dev/nbdN]
#   copy    copies every disk to DIR/DISK_NAME.img (default: the current directory), to mount or read
#           with debugfs, 7z, guestmount …
#   info    shows every disk's size
#   connect attaches one disk, read-only, as a block device (root, the nbd kernel module)
set -euo pipefail
HOST="{host}"
IDENTITY="{identity}"
TargetPassword="{key}"
EXPORTS=(
{exports}
)
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
chmod 700 "$work"
( umask 077; printf '%s:%s\n' "$IDENTITY" "$TargetPassword" > "$work/keys.psk" )
creds="tls-creds-psk,id=tls0,endpoint=client,dir=$work,username=$IDENTITY"
opts() {{ echo "driver=nbd,host=$HOST,port=$1,export=$2,tls-creds=tls0"; }}
action="${{1:-copy}}"
for e in "${{EXPORTS[@]}}"; do
  read -r name port disk <<< "$e"
  case "$action" in
    info) echo "== $disk"; qemu-img info --object "$creds" --image-opts "$(opts "$port" "$name")" ;;
    copy)
      dest="${{2:-.}}/$disk.img"
      qemu-img convert -O raw --object "$creds" --image-opts "$(opts "$port" "$name")" "$dest"
      echo "$dest" ;;
    connect)
      if [ "${{2:-}}" = "$disk" ]; then
        qemu-nbd --read-only --object "$creds" --image-opts "$(opts "$port" "$name")" --connect "${{3:?a /dev/nbdN device}}"
        echo "$disk attached to $3 (disconnect: qemu-nbd --disconnect $3)"
      fi ;;
    *) echo "unknown action '$action': use copy, info or connect" >&2; exit 2 ;;
  esac
done
"#,
        rp = s.recovery_point,
        vm = s.vm_name.replace(['\'', '\n'], "_"),
        expiry = s.expiry.format("%Y-%m-%d %H:%M:%S"),
        host = s.address,
        identity = s.identity,
        key = key,
        exports = exports.join("\n"),
    )
}

// ---- the keeper ------------------------------------------------------------------------------

/// A restore into a staging directory under way on the keeper's node.
struct Staging {
    cancel: Cancel,
    thread: JoinHandle<std::result::Result<Vec<(String, PathBuf)>, String>>,
}

/// What the keeper holds for its sessions.
#[derive(Default)]
struct Local {
    staging: HashMap<String, Staging>,
    exports: HashMap<String, Vec<Child>>,
}

/// The node's ILR keeper thread (see the module doc); dropping it stops the exports it serves
/// (their sessions stay, and the next start serves them again).
pub struct IlrKeeper {
    control: Arc<Control>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for IlrKeeper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IlrKeeper")
    }
}

impl IlrKeeper {
    /// Starts the keeper of `control`'s data plane.
    pub fn start(control: Arc<Control>) -> Result<IlrKeeper> {
        control.data()?.ilr.restart();
        let c = control.clone();
        let thread = std::thread::Builder::new()
            .name("rsvault-ilr".into())
            .spawn(move || c.ilr_loop())
            .map_err(|e| Error::internal(format!("cannot start the item level recovery keeper: {e}")))?;
        Ok(IlrKeeper {
            control,
            thread: Some(thread),
        })
    }

    /// Stops the keeper and its exports.
    pub fn stop(self) {}
}

impl Drop for IlrKeeper {
    fn drop(&mut self) {
        if let Ok(dp) = self.control.data() {
            dp.ilr.stop();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Kills and reaps exports.
fn stop_exports(children: Vec<Child>) {
    for mut c in children {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// The `qemu-nbd` exports run: `RSVAULT_QEMU_NBD`, else the one on `PATH`.
fn qemu_nbd() -> PathBuf {
    std::env::var_os("RSVAULT_QEMU_NBD")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("qemu-nbd"))
}

/// A free port on `addr` (the listener is closed before `qemu-nbd` binds it: a start that loses
/// the race is retried with another port).
fn free_port(addr: &str, prefer: Option<u16>) -> Option<u16> {
    if let Some(p) = prefer.filter(|p| *p != 0) {
        if TcpListener::bind((addr, p)).is_ok() {
            return Some(p);
        }
    }
    TcpListener::bind((addr, 0)).ok()?.local_addr().ok().map(|a| a.port())
}

/// Starts one `qemu-nbd` serving `image` read-only on `addr:port` with TLS-PSK from `psk_dir`;
/// returns once it accepts connections.
fn spawn_export(
    program: &Path,
    addr: &str,
    port: u16,
    name: &str,
    image: &Path,
    psk_dir: &Path,
) -> std::result::Result<Child, String> {
    let mut cmd = Command::new(program);
    cmd.arg("--read-only")
        .arg("--persistent")
        .arg("--shared=8")
        .arg(format!("--bind={addr}"))
        .arg(format!("--port={port}"))
        .arg(format!("--export-name={name}"))
        .arg("--format=raw")
        .arg("--object")
        .arg(format!(
            "tls-creds-psk,id=tls0,endpoint=server,dir={}",
            psk_dir.display()
        ))
        .arg("--tls-creds=tls0")
        .arg(image)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // The export dies with the keeper thread that started it: a crashed node leaves none behind.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("qemu-nbd cannot be started on this node: {e}"))?;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                use std::io::Read;
                let _ = e.read_to_string(&mut err);
            }
            return Err(format!("qemu-nbd ended ({status}): {}", err.trim()));
        }
        if greets(&(addr, port).to_socket_addrs_first()?) {
            return Ok(child);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err("qemu-nbd did not start listening within 10 s".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether an NBD server at `to` is serving: it opens its socket before its image, so a listening
/// port is not enough; a server that greets (`NBDMAGIC`, before any TLS) has its export open.
fn greets(to: &std::net::SocketAddr) -> bool {
    use std::io::Read;
    let Ok(mut c) = TcpStream::connect_timeout(to, Duration::from_millis(200)) else {
        return false;
    };
    let _ = c.set_read_timeout(Some(Duration::from_secs(1)));
    let mut magic = [0u8; 8];
    c.read_exact(&mut magic).is_ok() && &magic == b"NBDMAGIC"
}

trait FirstAddr {
    fn to_socket_addrs_first(&self) -> std::result::Result<std::net::SocketAddr, String>;
}

impl FirstAddr for (&str, u16) {
    fn to_socket_addrs_first(&self) -> std::result::Result<std::net::SocketAddr, String> {
        use std::net::ToSocketAddrs;
        self.to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .ok_or_else(|| format!("'{}' is not an address", self.0))
    }
}

impl Control {
    fn ilr_loop(&self) {
        let Ok(dp) = self.data() else { return };
        let mut local = Local::default();
        let mut seen = 0;
        loop {
            if let Err(e) = self.ilr_pass(&mut local) {
                tracing::warn!(error = %e, "item level recovery pass failed");
            }
            if dp.ilr.wait(&mut seen, Duration::from_secs(1)) {
                break;
            }
        }
        for (_, s) in local.staging.drain() {
            s.cancel.cancel();
            let _ = s.thread.join();
        }
        for (_, c) in local.exports.drain() {
            stop_exports(c);
        }
    }

    /// Writes a session back (and, when it ends its operations, their outcome), if its row is
    /// still the one read (`None` body: delete it).
    fn ilr_settle(
        &self,
        id: &str,
        s: Option<&Session>,
        outcome: Option<(&[String], std::result::Result<(), Value>)>,
    ) -> Result<()> {
        let now = self.now();
        self.store.write(|db| {
            if let Some((ops, result)) = &outcome {
                for op in ops.iter() {
                    if let Some(mut o) = db.operation(op)? {
                        if o.status == "InProgress" {
                            match result {
                                Ok(()) => o.status = "Succeeded".into(),
                                Err(e) => {
                                    o.status = "Failed".into();
                                    o.error = Some(e.clone());
                                }
                            }
                            o.end = Some(now);
                            db.put_operation(&o)?;
                        }
                    }
                }
            }
            match s {
                Some(s) => {
                    if let Some(mut r) = db.resource(id)? {
                        r.body = serde_json::to_value(s).unwrap_or_default();
                        r.updated = now;
                        db.put_resource(&r)?;
                    }
                }
                None => {
                    db.delete_resource(id)?;
                }
            }
            Ok(())
        })
    }

    /// One round of the keeper over every session row.
    fn ilr_pass(&self, local: &mut Local) -> Result<()> {
        let dp = self.data()?;
        let me = dp.node.clone();
        let root = dp.ilr_dir();
        let now = self.now();
        let rows = self.store.read(|db| db.everywhere_of_type(SESSION_TYPE))?;
        let mut mine = std::collections::HashSet::new();
        for row in rows {
            let Some(mut s) = session_of(&row) else { continue };
            if s.node.is_none() && s.state == State::Provisioning {
                // Claim it: one keeper of the nodes sharing the store serves it.
                let claimed = self.store.write(|db| {
                    let Some(mut r) = db.resource(&row.id)? else {
                        return Ok::<_, Error>(None);
                    };
                    let Some(mut cur) = session_of(&r) else { return Ok(None) };
                    if cur.node.is_some() {
                        return Ok(None);
                    }
                    cur.node = Some(me.clone());
                    // The serving node's address (`RSVAULT_ILR_ADDRESS`), not the one of the node
                    // that took the request.
                    cur.address = ilr_address();
                    r.body = serde_json::to_value(&cur).unwrap_or_default();
                    db.put_resource(&r)?;
                    Ok(Some(cur))
                })?;
                match claimed {
                    Some(c) => s = c,
                    None => continue,
                }
            }
            if s.node.as_deref() != Some(me.as_str()) {
                continue;
            }
            mine.insert(s.staging.clone());
            let dir = root.join(&s.staging);
            let ended = s.state == State::Revoking || s.expiry <= now;
            if ended {
                if let Some(st) = local.staging.remove(&row.id) {
                    st.cancel.cancel();
                    let _ = st.thread.join();
                }
                stop_exports(local.exports.remove(&row.id).unwrap_or_default());
                let _ = std::fs::remove_dir_all(&dir);
                let mut ops: Vec<String> = s.revoke_operation.iter().cloned().collect();
                let revoked = s.state == State::Revoking;
                if revoked {
                    self.ilr_settle(&row.id, None, Some((&ops, Ok(()))))?;
                }
                ops = s.operations.clone();
                let why = json!({"code": "UserErrorIlrSessionEnded", "message": if revoked { "The session was revoked before its disks were ready." } else { "The session expired before its disks were ready." }});
                self.ilr_settle(&row.id, None, Some((&ops, Err(why))))?;
                tracing::info!(session = %row.id, revoked, "item level recovery session ended");
                continue;
            }
            match s.state {
                State::Provisioning => {
                    match local.staging.get(&row.id).map(|st| st.thread.is_finished()) {
                        None => {
                            // New, or a restart interrupted it: (re)start the restore.
                            let _ = std::fs::remove_dir_all(&dir);
                            let cancel = Cancel::new();
                            let c2 = cancel.clone();
                            let engine = dp.engine.clone();
                            let repo = self.vault_repo(&s.vault);
                            let rp = s.recovery_point.clone();
                            let d2 = dir.clone();
                            let thread = std::thread::Builder::new()
                                .name("rsvault-ilr-restore".into())
                                .spawn(move || {
                                    let repo = repo.map_err(|e| e.to_string())?;
                                    mkdir_private(&d2.join("disks")).map_err(|e| e.to_string())?;
                                    let out = engine
                                        .restore_disks(
                                            &repo,
                                            &DiskRestoreRequest {
                                                recovery_point: rp,
                                                disks: None,
                                                target: DiskRestoreTarget::Directory(d2.join("disks")),
                                                format: None,
                                            },
                                            &NoProgress,
                                            &c2,
                                        )
                                        .map_err(|e| e.to_string())?;
                                    Ok(out
                                        .paths
                                        .into_iter()
                                        .map(|p| {
                                            (
                                                p.file_name()
                                                    .map(|n| n.to_string_lossy().into_owned())
                                                    .unwrap_or_default(),
                                                p,
                                            )
                                        })
                                        .collect())
                                })
                                .map_err(|e| Error::internal(format!("cannot start a staging restore: {e}")))?;
                            local.staging.insert(row.id.clone(), Staging { cancel, thread });
                        }
                        Some(false) => {}
                        Some(true) => {
                            let st = local.staging.remove(&row.id).expect("present");
                            let result = st
                                .thread
                                .join()
                                .unwrap_or_else(|_| Err("the staging restore panicked".into()));
                            let served = result.and_then(|disks| self.ilr_serve(&s, &row.id, &dir, disks, local));
                            match served {
                                Ok(exports) => {
                                    s.exports = exports;
                                    s.state = State::Ready;
                                    let ops = s.operations.clone();
                                    self.ilr_settle(&row.id, Some(&s), Some((&ops, Ok(()))))?;
                                }
                                Err(why) => {
                                    tracing::warn!(session = %row.id, error = %why, "item level recovery provisioning failed");
                                    stop_exports(local.exports.remove(&row.id).unwrap_or_default());
                                    let _ = std::fs::remove_dir_all(&dir);
                                    let e = json!({"code": "UserErrorIlrProvisionFailed", "message": format!("The recovery point's disks could not be made available on node '{me}': {why}")});
                                    s.state = State::Failed;
                                    s.error = Some(e.clone());
                                    let ops = s.operations.clone();
                                    self.ilr_settle(&row.id, Some(&s), Some((&ops, Err(e))))?;
                                }
                            }
                        }
                    }
                }
                State::Ready => {
                    let running = local
                        .exports
                        .get_mut(&row.id)
                        .is_some_and(|cs| cs.iter_mut().all(|c| matches!(c.try_wait(), Ok(None))));
                    if !running {
                        // A restart (or an export that died): serve the staged images again.
                        stop_exports(local.exports.remove(&row.id).unwrap_or_default());
                        let disks: Vec<(String, PathBuf)> = s
                            .exports
                            .iter()
                            .map(|e| (e.disk.clone(), dir.join("disks").join(&e.disk)))
                            .collect();
                        let prefer: Vec<u16> = s.exports.iter().map(|e| e.port).collect();
                        match self.ilr_serve_on(&s, &row.id, &dir, disks, &prefer, local) {
                            Ok(exports) => {
                                if exports.iter().map(|e| e.port).ne(prefer.iter().copied()) {
                                    s.exports = exports;
                                    self.ilr_settle(&row.id, Some(&s), None)?;
                                }
                            }
                            Err(why) => {
                                tracing::warn!(session = %row.id, error = %why, "cannot serve an item level recovery session again");
                                s.state = State::Failed;
                                s.error = Some(json!({"code": "UserErrorIlrProvisionFailed", "message": why}));
                                let _ = std::fs::remove_dir_all(&dir);
                                self.ilr_settle(&row.id, Some(&s), None)?;
                            }
                        }
                    }
                }
                State::Failed | State::Revoking => {}
            }
        }
        // What no session of this node names any more (a deleted vault, a row removed elsewhere).
        let live: std::collections::HashSet<String> =
            local.exports.keys().chain(local.staging.keys()).cloned().collect();
        let rows_now: std::collections::HashSet<String> = self
            .store
            .read(|db| db.everywhere_of_type(SESSION_TYPE))?
            .into_iter()
            .map(|r| r.id)
            .collect();
        for id in live.difference(&rows_now) {
            if let Some(st) = local.staging.remove(id) {
                st.cancel.cancel();
                let _ = st.thread.join();
            }
            stop_exports(local.exports.remove(id).unwrap_or_default());
        }
        if let Ok(entries) = std::fs::read_dir(&root) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if !mine.contains(&name) {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        Ok(())
    }

    /// Writes the session's key file and starts one export per staged image.
    fn ilr_serve(
        &self,
        s: &Session,
        id: &str,
        dir: &Path,
        disks: Vec<(String, PathBuf)>,
        local: &mut Local,
    ) -> std::result::Result<Vec<Export>, String> {
        self.ilr_serve_on(s, id, dir, disks, &[], local)
    }

    fn ilr_serve_on(
        &self,
        s: &Session,
        id: &str,
        dir: &Path,
        disks: Vec<(String, PathBuf)>,
        prefer: &[u16],
        local: &mut Local,
    ) -> std::result::Result<Vec<Export>, String> {
        let dp = self.data().map_err(|e| e.to_string())?;
        let key = dp.keys.open(id, &s.sealed_key).map_err(|e| e.to_string())?;
        let psk = dir.join("psk");
        mkdir_private(&psk).map_err(|e| e.to_string())?;
        {
            use std::io::Write;
            let path = psk.join("keys.psk");
            let _ = std::fs::remove_file(&path);
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .map_err(|e| e.to_string())?;
            writeln!(f, "{}:{}", s.identity, key.expose()).map_err(|e| e.to_string())?;
        }
        let mut children = Vec::new();
        let mut exports = Vec::new();
        for (i, (disk, path)) in disks.into_iter().enumerate() {
            let size = std::fs::metadata(&path)
                .map(|m| m.len())
                .map_err(|e| format!("{}: {e}", path.display()))?;
            let name = format!("disk{i}");
            let mut last = String::new();
            let mut started = None;
            for attempt in 0..3 {
                let want = if attempt == 0 { prefer.get(i).copied() } else { None };
                let Some(port) = free_port(&s.address, want) else {
                    last = format!("no free port on {}", s.address);
                    continue;
                };
                match spawn_export(&qemu_nbd(), &s.address, port, &name, &path, &psk) {
                    Ok(c) => {
                        started = Some((c, port));
                        break;
                    }
                    Err(e) => last = e,
                }
            }
            let Some((child, port)) = started else {
                stop_exports(children);
                return Err(last);
            };
            children.push(child);
            exports.push(Export { disk, name, port, size });
        }
        local.exports.insert(id.to_string(), children);
        Ok(exports)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_carries_what_a_client_needs() {
        let s = Session {
            vault: "v".into(),
            item: "i".into(),
            recovery_point: "123".into(),
            vm_name: "vm1".into(),
            os_type: "Linux".into(),
            state: State::Ready,
            node: Some("n".into()),
            expiry: Utc::now(),
            operations: vec![],
            revoke_operation: None,
            staging: "x".into(),
            identity: "rsvault-ilr-abc".into(),
            sealed_key: String::new(),
            address: "127.0.0.1".into(),
            exports: vec![Export {
                disk: "os disk.img".into(),
                name: "disk0".into(),
                port: 10809,
                size: 1,
            }],
            error: None,
        };
        let text = client_script(&s, "00ff");
        assert!(text.contains("HOST=\"127.0.0.1\""));
        assert!(text.contains("IDENTITY=\"rsvault-ilr-abc\""));
        assert!(text.contains("TargetPassword=\"00ff\""));
        assert!(text.contains("\"disk0 10809 os_disk.img\""), "{text}");
    }

    #[test]
    fn an_export_accepts_connections_once_started_and_a_missing_program_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let img = tmp.path().join("disk.img");
        std::fs::write(&img, vec![7u8; 1 << 20]).unwrap();
        let psk = tmp.path().join("psk");
        mkdir_private(&psk).unwrap();
        std::fs::write(psk.join("keys.psk"), format!("id:{}\n", "00".repeat(32))).unwrap();
        let e = spawn_export(Path::new("/nonexistent/qemu-nbd"), "127.0.0.1", 1, "d", &img, &psk).unwrap_err();
        assert!(e.contains("cannot be started"), "{e}");
        // An image that is not there: qemu-nbd ends, and says why.
        let port = free_port("127.0.0.1", None).unwrap();
        let e = spawn_export(&qemu_nbd(), "127.0.0.1", port, "d", &tmp.path().join("none.img"), &psk).unwrap_err();
        assert!(e.contains("qemu-nbd ended"), "{e}");
        let port = free_port("127.0.0.1", None).unwrap();
        let child = spawn_export(&qemu_nbd(), "127.0.0.1", port, "d", &img, &psk).unwrap();
        assert!(TcpStream::connect(("127.0.0.1", port)).is_ok());
        stop_exports(vec![child]);
        assert!(TcpStream::connect(("127.0.0.1", port)).is_err(), "stopped");
    }

    #[test]
    fn sessions_round_trip_through_their_rows() {
        let v = json!({"vault":"v","item":"i","recoveryPoint":"1","vmName":"vm","osType":"Linux","state":"Ready","node":null,
            "expiry":"2026-01-01T00:00:00Z","operations":["a"],"revokeOperation":null,"staging":"s","identity":"id","sealedKey":"k",
            "address":"127.0.0.1","exports":[],"error":null});
        let s: Session = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(s.state, State::Ready);
        assert_eq!(serde_json::to_value(&s).unwrap(), v);
    }
}
