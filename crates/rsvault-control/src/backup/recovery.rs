//! Backups and restores over the API: trigger a backup (`…/protectedItems/{item}/backup`), list and
//! read recovery points, trigger a restore (`…/recoveryPoints/{rp}/restore`), and what those jobs do
//! when the job engine (`rsvault_jobs`, through [`crate::jobwork`]) runs them.
//!
//! Accepting a backup or restore writes, in one transaction, an operation record that is already
//! `Succeeded` with the job's id (`OperationStatusJobExtendedInfo`, as the live service answers the
//! moment the job exists) and the job itself, `InProgress` and queued. The job's `work` carries
//! everything it needs (disk paths, directories, targets), resolved when the request was accepted.
//! Every host path is checked against the operator's grants ([`crate::hostaccess`]) when the request
//! is accepted and again when the job runs (the grants may have changed at a restart); a path that no
//! longer passes fails the job without touching it.
//!
//! A recovery point exists in the API only once the vault holds its snapshot: the row is written in
//! the transaction that completes the job, after the engine committed the snapshot. A crash between
//! the two is settled at the next start from the snapshot's tags ([`Control::recover_backup`]).

use super::jobs::Window;
use crate::body;
use crate::faults::FaultAction;
use crate::{Caller, Control, Error, Result};
use chrono::{DateTime, Utc};
use rand::Rng;
use rsvault_core::odata::Filter;
use rsvault_core::time;
use rsvault_engine::{
    Cancel, ConflictPolicy, DiskBackupRequest, DiskRestoreRequest, DiskRestoreTarget, DiskSource, EngineError,
    ImageFormat, LibvirtBackupRequest, LiveBackupRequest, RecoveryPointInfo, RecoveryPointTags, RepoSpec, Task,
    TreeBackupRequest, TreeRestoreRequest,
};
use rsvault_jobs::{active_jobs, new_tasks, Failure, Finished, JobError, JobStatus, Phase, Run, TaskSpec};
use rsvault_store::{JobRow, OperationRow, RecoveryPointRow, ResourceRow};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

pub const RECOVERY_POINT_TYPE: &str =
    "Microsoft.RecoveryServices/vaults/backupFabrics/protectionContainers/protectedItems/recoveryPoints";

const BACKUP_TASKS: &[TaskSpec] = &[
    ("Take Snapshot", Task::Snapshot, 0),
    ("Transfer data to vault", Task::Transfer, 100),
];
const RESTORE_TASKS: &[TaskSpec] = &[
    ("Transfer data from vault", Task::Restore, 80),
    ("Verify restored data", Task::Verify, 20),
];

/// What a data-plane job does, kept in its row.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub(crate) enum Work {
    #[serde(rename_all = "camelCase")]
    Backup {
        vault: String,
        item: String,
        recovery_point: String,
        expiry: DateTime<Utc>,
        /// VM disks, or empty for a share.
        disks: Vec<DiskSource>,
        /// The share's directory.
        root: Option<PathBuf>,
        /// The VM or storage account whose paths these are (for the grant check when the job runs;
        /// absent in jobs queued before grants existed: then the item's source).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        resource: Option<String>,
        /// A running guest (then `disks` is empty: they are discovered when the job runs).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        live: Option<rsvault_engine::LiveVmSource>,
        /// A libvirt domain (then `disks` is empty: they are read from its definition when the
        /// job runs).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        libvirt: Option<rsvault_engine::LibvirtDomain>,
    },
    #[serde(rename_all = "camelCase")]
    Restore {
        vault: String,
        item: String,
        recovery_point: String,
        target: RestoreTarget,
        /// The resource whose paths the restore writes (the target storage account, or the source
        /// VM or account for an original-location restore); absent: the item's source.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        resource: Option<String>,
    },
}

impl Work {
    /// The work a job row carries; `None` for a job without one (an export, a control-plane job) or
    /// one this version cannot read. Every reader of a job's work goes through here: the row's JSON
    /// is this type's serde form (camelCase), never indexed by hand.
    pub(crate) fn of(job: &JobRow) -> Option<Work> {
        serde_json::from_value(job.work.clone()?).ok()
    }

    /// The protected item the job is for.
    pub(crate) fn item(&self) -> &str {
        match self {
            Work::Backup { item, .. } | Work::Restore { item, .. } => item,
        }
    }

    /// The recovery point the job makes (a backup) or reads (a restore): its snapshot must stay in
    /// the vault while the job is queued or running.
    pub(crate) fn recovery_point(&self) -> &str {
        match self {
            Work::Backup { recovery_point, .. } | Work::Restore { recovery_point, .. } => recovery_point,
        }
    }
}

/// Where a restore goes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "to", rename_all = "camelCase")]
pub(crate) enum RestoreTarget {
    /// Images into a directory; with `new_vm`, a VM resource is declared over them.
    #[serde(rename_all = "camelCase")]
    Disks {
        dir: PathBuf,
        format: Option<ImageFormat>,
        new_vm: Option<NewVm>,
    },
    /// Replace the VM's disks.
    OriginalDisks,
    /// Files of a share.
    #[serde(rename_all = "camelCase")]
    Tree {
        target: Option<PathBuf>,
        paths: Option<Vec<PathBuf>>,
        conflict: ConflictPolicy,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct NewVm {
    subscription: String,
    resource_group: String,
    name: String,
    location: String,
}

/// A checked restore request: the job it makes ([`Control::plan_restore`]).
pub(crate) struct RestorePlan {
    pub(crate) work: Work,
    bag: Map<String, Value>,
    /// A VM restore's kind, shown as the live service shows it: `internalPropertyBag.restoreLocationType`.
    restore_location: Option<String>,
    bmt: String,
    friendly: String,
    container: String,
}

fn invalid(code: &'static str, target: &str, message: impl Into<String>) -> Error {
    Error::Invalid {
        code,
        message: message.into(),
        target: Some(target.into()),
    }
}

fn bad_input(target: &str, message: impl Into<String>) -> Error {
    invalid("BMSUserErrorInvalidInput", target, message)
}

/// The `properties` of a backup or restore request and its `objectType`.
fn typed_request<'a>(req: &'a Value, what: &str) -> Result<(&'a Map<String, Value>, &'a str)> {
    let m = body::object(req)?;
    let props = body::opt_obj(m, "properties", "")?.ok_or_else(|| {
        bad_input(
            "properties",
            format!("The {what} request needs 'properties' with an 'objectType'."),
        )
    })?;
    let kind = body::opt_str(props, "objectType", "properties.")?.ok_or_else(|| {
        bad_input(
            "properties.objectType",
            format!("The {what} request needs 'properties.objectType'."),
        )
    })?;
    Ok((props, kind))
}

/// The request's `objectType` must be the one for the item's workload.
fn check_kind(kind: &str, want: &str, item: &str, bmt: &str) -> Result<()> {
    if kind.eq_ignore_ascii_case(want) {
        Ok(())
    } else {
        Err(bad_input(
            "properties.objectType",
            format!("'{kind}' does not apply to item '{item}' ({bmt}); use '{want}'."),
        ))
    }
}

/// A recovery point id as Azure writes them: 14 to 15 digits.
fn new_recovery_point_id() -> String {
    rand::thread_rng()
        .gen_range(10_000_000_000_000u64..999_999_999_999_999)
        .to_string()
}

fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    super::jobs::parse_filter_time(s)
}

fn mb(bytes: u64) -> String {
    format!("{} MB", bytes / (1 << 20))
}

/// The engine's error as a job shows it.
fn job_failure(e: EngineError) -> Failure {
    match e {
        EngineError::Cancelled => Failure::Cancelled,
        EngineError::Source { path, reason } => Failure::Failed(JobError::new(
            100_001,
            "The source could not be read",
            format!("'{}' could not be read: {reason}.", path.display()),
            "Check that the disk image or directory exists and that rsvault can read it, then run the backup again.",
        )),
        EngineError::Conflict { count, first } => Failure::Failed(JobError::new(
            100_002,
            "Restore target conflicts",
            format!(
                "{count} file(s) already exist at the target (first: '{}') and the copy option is FailOnConflict. Nothing was restored.",
                first.display()
            ),
            "Restore with copyOptions 'Overwrite' or 'Skip', or to another location.",
        )),
        EngineError::VerificationFailed { path, reason } => Failure::Failed(JobError::new(
            100_003,
            "Restored data did not verify",
            format!("'{}' does not match the recovery point: {reason}.", path.display()),
            "Run the restore again; if it fails again, verify the vault.",
        )),
        EngineError::RecoveryPointNotFound(id) => Failure::Failed(JobError::new(
            100_004,
            "Recovery point not found",
            format!("The vault no longer holds recovery point '{id}'."),
            "Choose another recovery point.",
        )),
        EngineError::Target { path, reason } => Failure::Failed(JobError::new(
            100_005,
            "The restore target cannot be written",
            format!("'{}' cannot be written: {reason}. No existing file was changed by the part of the restore that failed.", path.display()),
            "Check the target directory, its permissions and free space (a restore never follows symbolic links), then run the restore again.",
        )),
        EngineError::Storage { target, reason } => Failure::Failed(JobError::new(
            100_007,
            "The vault's storage is not available",
            format!("The vault's storage '{target}' failed or did not answer: {reason}. Nothing partial was kept: a backup made no recovery point, a restore renamed no file into place."),
            "Check that the object store is reachable and accepts rsvault's credentials, then run the operation again.",
        )),
        e if is_enospc(&e) => Failure::Failed(JobError::new(
            100_006,
            "Not enough space",
            format!("No space left on the device: {e}. The job kept nothing partial: no recovery point was made and no restored file was renamed into place."),
            "Free space on the vault's or the target's file system, then run the operation again.",
        )),
        other => Failure::Failed(JobError::new(
            500_000,
            "Internal error",
            format!("The vault engine failed: {other}."),
            "Run the operation again; report the server log if it happens again.",
        )),
    }
}

/// A job whose host path does not pass the grants any more (the same words as the request's error).
/// A job's host path that the node running it cannot use. Jobs run on any node sharing the store, so
/// the words name the node and the rule: the same paths, granted, on every node.
fn path_failure(path: &Path, node: &str) -> Failure {
    Failure::Failed(JobError::new(
        100_013,
        "The path is not available",
        format!(
            "{} (on rsvault node '{node}', which ran this job)",
            crate::hostaccess::unavailable_message(&path.display().to_string())
        ),
        "Ask the operator to grant the path (rsvault serve --allow-path DIR) on every node that runs jobs, and to make it the same file or directory there (shared storage), then run the operation again.",
    ))
}

/// What a restore request writes beyond the vault, as (action, scope) pairs the caller must hold
/// (`item` is the protected item's `properties`):
/// the target storage account (write), the new VM (write, in its group), or the item's own VM or
/// storage account for an original-location restore. Named from the request alone.
fn restore_linked_scopes(
    item: &Value,
    bmt: &str,
    recovery_type: &str,
    props: &Map<String, Value>,
) -> Vec<(&'static str, String)> {
    const VM_WRITE: &str = "Microsoft.Compute/virtualMachines/write";
    const ACCOUNT_WRITE: &str = "Microsoft.Storage/storageAccounts/write";
    let s = |k: &str| props.get(k).and_then(Value::as_str).map(String::from);
    let source = item["sourceResourceId"].as_str().map(String::from);
    let mut out = Vec::new();
    match (bmt, recovery_type) {
        ("AzureStorage", "AlternateLocation") => {
            if let Some(t) = props
                .get("targetDetails")
                .and_then(|t| t.get("targetResourceId"))
                .and_then(Value::as_str)
            {
                out.push((ACCOUNT_WRITE, t.to_string()));
            }
        }
        ("AzureStorage", _) => out.extend(source.map(|s| (ACCOUNT_WRITE, s))),
        (_, "OriginalLocation") => out.extend(source.map(|s| (VM_WRITE, s))),
        (_, "AlternateLocation") => {
            out.extend(s("storageAccountId").map(|a| (ACCOUNT_WRITE, a)));
            out.extend(s("targetVirtualMachineId").map(|v| (VM_WRITE, v)));
        }
        _ => out.extend(s("storageAccountId").map(|a| (ACCOUNT_WRITE, a))),
    }
    out
}

/// Restores a vault holds queued or running at once; more are refused with 429 and `Retry-After`.
pub const MAX_ACTIVE_RESTORES_PER_VAULT: usize = 8;

/// Free space a backup needs on the vault's file system before it starts.
const MIN_FREE_FOR_BACKUP: u64 = 32 << 20;

/// Fails the job before it writes anything when `dir`'s file system has less than `need` bytes free.
fn check_space(dir: &Path, need: u64, what: &str) -> std::result::Result<(), Failure> {
    match rsvault_engine::backend::free_space(dir) {
        Some(free) if free < need => Err(Failure::Failed(JobError::new(
            100_006,
            "Not enough space",
            format!(
                "The file system of {what} ('{}') has {} MiB free; this job needs at least {} MiB. Nothing was written.",
                dir.display(),
                free >> 20,
                need.div_ceil(1 << 20)
            ),
            "Free space on that file system, then run the operation again.",
        ))),
        _ => Ok(()),
    }
}

/// Fails the job before it writes anything when `dir` does not take a new file (permissions, a
/// read-only or immutable file system): a probe file is made and removed.
fn check_writable(dir: &Path) -> std::result::Result<(), Failure> {
    let probe = dir.join(format!(".rsvault-probe-{}", uuid::Uuid::new_v4().simple()));
    match std::fs::OpenOptions::new().write(true).create_new(true).open(&probe) {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            Ok(())
        }
        Err(e) => Err(Failure::Failed(JobError::new(
            100_005,
            "The restore target cannot be written",
            format!("'{}' does not take new files: {e}. Nothing was written.", dir.display()),
            "Check the target directory, its permissions and its file system, then run the restore again.",
        ))),
    }
}

/// A file system was full (`ENOSPC`, 28 on Linux), however deep in the engine's error it is.
fn is_enospc(e: &EngineError) -> bool {
    match e {
        EngineError::Io { source, .. } if source.raw_os_error() == Some(28) => true,
        other => {
            let text = other.to_string();
            text.contains("No space left on device") || text.contains("os error 28")
        }
    }
}

impl Control {
    /// Copies a geo-redundant vault to its secondary (`None`: not geo-redundant, or no secondary).
    /// A failed copy is the job's warning, in words; the next backup's copy resumes it.
    fn copy_to_secondary(
        &self,
        vault: &str,
        repo: &RepoSpec,
        cancel: &Cancel,
    ) -> Option<std::result::Result<rsvault_engine::replicate::SyncReport, String>> {
        let secondary = match self.secondary_spec(vault, repo) {
            Ok(s) => s?,
            Err(e) => return Some(Err(format!("The copy to the secondary storage could not start: {e}."))),
        };
        let t = std::time::Instant::now();
        let r = rsvault_engine::replicate::sync(repo, &secondary, cancel).map_err(|e| {
            format!("The recovery point was made, but its copy to the secondary storage failed: {e}. The next backup copies what is missing.")
        });
        match &r {
            Ok(rep) => tracing::info!(
                vault,
                files = rep.files_copied,
                bytes = rep.bytes_copied,
                removed = rep.files_removed,
                ms = t.elapsed().as_millis() as u64,
                "vault copied to its secondary"
            ),
            Err(e) => tracing::warn!(vault, error = %e, "vault copy to its secondary failed"),
        }
        Some(r)
    }

    /// The repository a restore reads: the vault's own; or, when that cannot be read (its store
    /// is gone or does not answer) and the vault is geo-redundant with `crossRegionRestoreFlag`
    /// on, its secondary copy (the name of whose target is returned beside it).
    pub(super) fn restore_repo(
        &self,
        vault: &str,
        rp: &str,
    ) -> std::result::Result<(RepoSpec, Option<String>), Failure> {
        let dp = self.data().map_err(internal_failure)?;
        let primary = self.vault_spec(vault).map_err(internal_failure)?;
        let err = match dp.engine.recovery_point(&primary, rp) {
            Ok(_) => return Ok((primary, None)),
            Err(e) => e,
        };
        let crr = self.vault_redundancy(vault).map(|r| r.1).unwrap_or(false);
        if crr {
            if let Ok(Some(sec)) = self.secondary_spec(vault, &primary) {
                match dp.engine.recovery_point(&sec, rp) {
                    Ok(_) => {
                        tracing::warn!(vault, primary_error = %err, "restoring from the vault's secondary copy");
                        let name = match &sec.location {
                            rsvault_engine::RepoLocation::Object(o) => o.store.name().to_string(),
                            other => other.to_string(),
                        };
                        return Ok((sec, Some(name)));
                    }
                    Err(e) => {
                        tracing::warn!(vault, error = %e, "the vault's secondary copy cannot serve the restore either")
                    }
                }
            }
        }
        Err(job_failure(err))
    }

    /// A job's vault repository, made on first use; a storage failure is the job's, in its words.
    fn job_repo(&self, vault: &str) -> std::result::Result<RepoSpec, Failure> {
        let spec = self.vault_spec(vault).map_err(internal_failure)?;
        self.data()
            .map_err(internal_failure)?
            .engine
            .init(&spec)
            .map_err(job_failure)?;
        Ok(spec)
    }
}

/// The key, in a protected item's `kpisHealths`, of the state of its latest recovery point's copy
/// on the secondary target (a geo-redundant vault's; Azure's KPIs are named the same way, e.g.
/// `BackupOperationStatusKPI`).
pub const SECONDARY_COPY_KPI: &str = "SecondaryCopyStatusKPI";

/// Records, in the transaction that ends a geo-redundant vault's backup, how its copy to the
/// secondary went, on the items it concerns: after a copy, every item of the vault whose latest
/// recovery point the secondary now holds is `Healthy` (a copy brings everything missing, other
/// items' earlier failures included); after a failed copy, the backed-up item is
/// `TransientDegraded` (the next backup's copy resumes it), saying why.
fn record_secondary_copy(
    db: &rsvault_store::Db,
    vault: &str,
    item: &str,
    secondary: &str,
    copy: &std::result::Result<Vec<String>, String>,
) -> Result<()> {
    let set = |db: &rsvault_store::Db, item: &str, kpi: Value| -> Result<()> {
        if let Some(mut row) = db.resource(item)? {
            let p = &mut row.body["properties"];
            if !p["kpisHealths"].is_object() {
                p["kpisHealths"] = json!({});
            }
            if p["kpisHealths"][SECONDARY_COPY_KPI] != kpi {
                p["kpisHealths"][SECONDARY_COPY_KPI] = kpi;
                db.put_resource(&row)?;
            }
        }
        Ok(())
    };
    match copy {
        Err(why) => set(
            db,
            item,
            json!({"resourceHealthStatus": "TransientDegraded", "resourceHealthDetails": [{
                "code": 100_008,
                "title": "The copy to the secondary storage failed",
                "message": why,
                "recommendations": [format!("Check that the secondary storage '{secondary}' is reachable; the next backup copies what is missing.")],
            }]}),
        ),
        Ok(snapshots) => {
            let on_secondary: std::collections::HashSet<&str> = snapshots.iter().map(String::as_str).collect();
            // The latest point of each item (rows come oldest first).
            let mut latest = std::collections::HashMap::new();
            for rp in db.vault_recovery_points(vault)? {
                latest.insert(rp.item_key.clone(), rp);
            }
            for (item_key, rp) in latest {
                let copied = rp.engine["snapshotId"]
                    .as_str()
                    .is_some_and(|s| on_secondary.contains(s));
                if copied {
                    set(
                        db,
                        &item_key,
                        json!({"resourceHealthStatus": "Healthy", "resourceHealthDetails": [{
                            "code": 0,
                            "title": "Success",
                            "message": format!("The latest recovery point ({}, {}) is copied to the secondary storage '{secondary}'.", rp.name, time::timestamp(rp.time)),
                            "recommendations": [],
                        }]}),
                    )?;
                }
            }
            Ok(())
        }
    }
}

fn internal_failure(e: Error) -> Failure {
    Failure::Failed(JobError::new(
        500_000,
        "Internal error",
        e.to_string(),
        "Run the operation again; report the server log if it happens again.",
    ))
}

impl Control {
    /// `POST …/protectedItems/{item}/backup`. Returns the operation id.
    #[allow(clippy::too_many_arguments)]
    pub fn trigger_backup(
        &self,
        sub: &str,
        rg: &str,
        vault: &str,
        fabric: &str,
        container: &str,
        item: &str,
        req: &Value,
    ) -> Result<String> {
        let (v, row) = self.protected_item_row(sub, rg, vault, fabric, container, item)?;
        let p = row.body["properties"].clone();
        let bmt = p["backupManagementType"].as_str().unwrap_or_default();
        let (props, kind) = typed_request(req, "backup")?;
        let want = if bmt == "AzureStorage" {
            "AzureFileShareBackupRequest"
        } else {
            "IaasVMBackupRequest"
        };
        if kind.eq_ignore_ascii_case("AzureWorkloadBackupRequest") {
            return Err(invalid(
                "BMSUserErrorWorkloadNotProtected",
                "properties.objectType",
                format!("'{}' is not a SQL or SAP HANA workload: AzureWorkloadBackupRequest applies to workload items, and this vault protects none. Use {want}.", p["friendlyName"].as_str().unwrap_or(item)),
            ));
        }
        check_kind(kind, want, item, bmt)?;
        let now = self.now();
        let expiry = match body::opt_str(props, "recoveryPointExpiryTimeInUTC", "properties.")? {
            Some(s) => parse_time(s).ok_or_else(|| {
                bad_input(
                    "properties.recoveryPointExpiryTimeInUTC",
                    format!("'{s}' is not a valid recoveryPointExpiryTimeInUTC: use ISO-8601 UTC."),
                )
            })?,
            None => now + chrono::Duration::days(30),
        };
        if expiry <= now {
            return Err(invalid(
                "UserErrorInvalidRecoveryPointExpiryTime",
                "properties.recoveryPointExpiryTimeInUTC",
                format!(
                    "The recovery point expiry time {} is in the past; give a time after {}.",
                    time::timestamp(expiry),
                    time::timestamp(now)
                ),
            ));
        }
        if expiry > now + chrono::Duration::days(99 * 365) {
            return Err(invalid(
                "UserErrorInvalidRecoveryPointExpiryTime",
                "properties.recoveryPointExpiryTimeInUTC",
                "The recovery point expiry time can be at most 99 years away.",
            ));
        }
        if p["isScheduledForDeferredDelete"].as_bool() == Some(true) {
            return Err(invalid(
                "BMSUserErrorItemSoftDeleted",
                "",
                format!("Item '{item}' is soft deleted. Undelete it before backing it up."),
            ));
        }
        if p["protectionState"].as_str() == Some("ProtectionStopped") {
            return Err(invalid(
                "BMSUserErrorProtectionStopped",
                "",
                format!(
                    "Protection of '{}' is stopped; resume protection (assign a policy) before taking a backup.",
                    p["friendlyName"].as_str().unwrap_or(item)
                ),
            ));
        }
        self.enqueue_backup(&v, &row, expiry, None, now)
    }

    /// Queues a backup of an item: ad hoc (`slot` is `None`), or scheduled for a schedule slot, which
    /// is claimed in the transaction that queues the job (a slot already claimed, by an earlier run
    /// or another node, queues nothing and answers `Conflict` with code `ScheduleSlotTaken`). Returns
    /// the operation id.
    pub(crate) fn enqueue_backup(
        &self,
        v: &ResourceRow,
        row: &ResourceRow,
        expiry: DateTime<Utc>,
        slot: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<String> {
        let user_triggered = slot.is_none();
        self.data()?;
        let p = &row.body["properties"];
        let bmt = p["backupManagementType"].as_str().unwrap_or("AzureIaasVM").to_string();
        let friendly = p["friendlyName"].as_str().unwrap_or_default().to_string();
        if let Some(j) = self.active_job_for(&row.id, "Backup")? {
            return Err(Error::Conflict {
                code: "UserErrorBackupOperationInProgress",
                message: format!(
                    "Another backup of '{friendly}' is in progress (job {}). Wait for it to finish, or cancel it.",
                    j.name
                ),
            });
        }
        let source = p["sourceResourceId"].as_str().unwrap_or_default();
        let (disks, root, resource, live, libvirt) = if bmt == "AzureStorage" {
            let acct = self.store.read(|db| db.resource(source))?.ok_or_else(|| {
                invalid(
                    "BMSUserErrorInvalidSourceResourceId",
                    "",
                    format!("The storage account '{source}' no longer exists."),
                )
            })?;
            let root = self.share_dir(&acct, &friendly, false)?;
            (vec![], Some(root), acct.id, None, None)
        } else {
            let vm = self.store.read(|db| db.resource(source))?.ok_or_else(|| {
                invalid(
                    "UserErrorVmNotFound",
                    "",
                    format!("The virtual machine '{source}' no longer exists; it cannot be backed up."),
                )
            })?;
            let vm = self.vm_with_disks(vm)?;
            if let Some(d) = self.libvirt_source(&vm.row)? {
                (vec![], None, vm.row.id, None, Some(d))
            } else {
                match self.live_source(&vm.row)? {
                    Some(live) => (vec![], None, vm.row.id, Some(live), None),
                    None => {
                        let disks = vm
                            .disks
                            .iter()
                            .map(|d| DiskSource {
                                name: d.name.clone(),
                                path: d.info.path.clone(),
                            })
                            .collect();
                        (disks, None, vm.row.id, None, None)
                    }
                }
            }
        };
        let rp = new_recovery_point_id();
        let work = Work::Backup {
            vault: v.id.clone(),
            item: row.id.clone(),
            recovery_point: rp,
            expiry,
            disks,
            root,
            resource: Some(resource),
            live,
            libvirt,
        };
        let mut bag = Map::new();
        if bmt == "AzureStorage" {
            bag.insert("Data Transferred (in MB)".into(), json!("0"));
            bag.insert("File Share Name".into(), json!(friendly));
            bag.insert(
                "Whether job is adhoc or scheduled.".into(),
                json!(if user_triggered { "True" } else { "False" }),
            );
        } else {
            bag.insert("VM Name".into(), json!(friendly));
        }
        bag.insert(
            "Recovery Point Expiry Time in UTC".into(),
            json!(time::us_datetime(expiry)),
        );
        let job = self.queued_job(
            v,
            "Backup",
            &bmt,
            &friendly,
            p["containerName"].as_str().unwrap_or_default(),
            bag,
            BACKUP_TASKS,
            &work,
            user_triggered,
            now,
        );
        self.commit_queued(v, job, &row.id, slot)
    }

    /// A queued job of the job engine.
    #[allow(clippy::too_many_arguments)]
    fn queued_job(
        &self,
        v: &ResourceRow,
        operation: &str,
        bmt: &str,
        entity: &str,
        container: &str,
        bag: Map<String, Value>,
        tasks: &[TaskSpec],
        work: &Work,
        user_triggered: bool,
        now: DateTime<Utc>,
    ) -> JobRow {
        let name = uuid::Uuid::new_v4().to_string();
        let mut props = json!({
            "jobType": super::jobs::job_type(bmt),
            "entityFriendlyName": entity,
            "backupManagementType": bmt,
            "operation": operation,
            "status": "InProgress",
            "startTime": time::timestamp(now),
            "activityId": uuid::Uuid::new_v4().to_string(),
            "isUserTriggered": user_triggered,
            "extendedInfo": {"tasksList": new_tasks(tasks), "propertyBag": bag},
        });
        if bmt == "AzureStorage" {
            props["storageAccountName"] = json!(container.rsplit(';').next().unwrap_or_default());
            props["storageAccountVersion"] = json!("Storage");
        } else {
            props["containerName"] = json!(container);
            props["virtualMachineVersion"] = json!("Compute");
            props["extendedInfo"]["progressPercentage"] = json!(0.0);
        }
        JobRow {
            id: format!("{}/{}", v.id, format_args!("backupJobs/{name}")),
            vault_key: v.id.to_ascii_lowercase(),
            name,
            operation: operation.into(),
            status: "InProgress".into(),
            backup_management_type: bmt.into(),
            entity: entity.into(),
            start: now,
            end: None,
            body: props,
            phase: Some(Phase::Queued.as_str().into()),
            work: Some(serde_json::to_value(work).expect("work serializes")),
        }
    }

    fn commit_queued(&self, v: &ResourceRow, job: JobRow, target: &str, slot: Option<DateTime<Utc>>) -> Result<String> {
        let props = json!({"objectType": "OperationStatusJobExtendedInfo", "jobId": job.name});
        let op: OperationRow = self.finished_operation(v, &job.operation, Some(target), Some(props));
        self.store.write(|db| {
            if let Some(slot) = slot {
                if !db.claim_slot(target, slot)? {
                    return Err(Error::Conflict {
                        code: "ScheduleSlotTaken",
                        message: format!(
                            "The schedule slot {} of '{target}' was already backed up.",
                            time::timestamp(slot)
                        ),
                    });
                }
            }
            db.put_job(&job)?;
            db.put_operation(&op)?;
            Ok::<_, Error>(())
        })?;
        self.wake_jobs();
        Ok(op.id)
    }

    /// A queued or running job of `operation` for an item.
    fn active_job_for(&self, item: &str, operation: &str) -> Result<Option<JobRow>> {
        let mut jobs = self.store.read(active_jobs)?;
        jobs.retain(|j| j.operation == operation && Work::of(j).is_some_and(|w| w.item().eq_ignore_ascii_case(item)));
        Ok(jobs.into_iter().next())
    }

    // ---- recovery points ---------------------------------------------------------------------

    /// `GET …/recoveryPoints` with Azure's `$filter` (`startDate`, `endDate`), newest first.
    #[allow(clippy::too_many_arguments)]
    pub fn list_recovery_points(
        &self,
        sub: &str,
        rg: &str,
        vault: &str,
        fabric: &str,
        container: &str,
        item: &str,
        filter: Option<&str>,
    ) -> Result<Vec<Value>> {
        let (v, row) = self.protected_item_row(sub, rg, vault, fabric, container, item)?;
        let f = Filter::parse(filter.unwrap_or_default())?;
        f.only(
            &["startDate", "endDate", "restorePointQueryType", "extendedInfo"],
            &["startDate", "endDate"],
        )?;
        let window = Window::parse(&f, "startDate", "endDate")?;
        let rps = self.store.read(|db| db.recovery_points(&row.id))?;
        Ok(rps
            .into_iter()
            .filter(|r| window.contains(r.time))
            .map(|r| self.with_ilr_state(rendered_point(&v, r)))
            .collect())
    }

    /// `GET …/recoveryPoints/{rp}`.
    #[allow(clippy::too_many_arguments)]
    pub fn get_recovery_point(
        &self,
        sub: &str,
        rg: &str,
        vault: &str,
        fabric: &str,
        container: &str,
        item: &str,
        rp: &str,
    ) -> Result<Value> {
        let (v, _, rp) = self.recovery_point_row(sub, rg, vault, fabric, container, item, rp)?;
        Ok(self.with_ilr_state(rendered_point(&v, rp)))
    }

    /// A VM point's `isInstantIlrSessionActive`: whether item level recovery serves it now.
    fn with_ilr_state(&self, mut point: Value) -> Value {
        if point.pointer("/properties/isInstantIlrSessionActive").is_some() {
            let active = self.ilr_active(point["id"].as_str().unwrap_or_default());
            point["properties"]["isInstantIlrSessionActive"] = json!(active);
        }
        point
    }

    /// `POST …/backupFabrics/{f}/getRPExtendedInfo`: the disks of one VM recovery point (named by
    /// its ARM id, in this vault), answered at once (200) — the OS disk with lun -1, then the data
    /// disks with theirs.
    pub fn rp_extended_info(&self, sub: &str, rg: &str, vault: &str, fabric: &str, req: &Value) -> Result<Value> {
        let bad = |message: String| Error::Invalid {
            code: "BMSUserErrorInvalidInput",
            message,
            target: Some("properties.recoveryPointIds".into()),
        };
        let ids = req
            .pointer("/properties/recoveryPointIds")
            .and_then(Value::as_array)
            .filter(|a| a.len() == 1)
            .ok_or_else(|| bad("Give exactly one recovery point id in properties.recoveryPointIds.".into()))?;
        let id = ids[0].as_str().unwrap_or_default();
        let segs: Vec<&str> = id.trim_matches('/').split('/').collect();
        let at = |i: usize, key: &str| segs.get(i).is_some_and(|s| s.eq_ignore_ascii_case(key));
        let ours = segs.len() == 16
            && at(0, "subscriptions")
            && segs[1].eq_ignore_ascii_case(sub)
            && at(2, "resourceGroups")
            && segs[3].eq_ignore_ascii_case(rg)
            && at(6, "vaults")
            && segs[7].eq_ignore_ascii_case(vault)
            && at(8, "backupFabrics")
            && segs[9].eq_ignore_ascii_case(fabric)
            && at(10, "protectionContainers")
            && at(12, "protectedItems")
            && at(14, "recoveryPoints");
        if !ours {
            return Err(bad(format!(
                "'{id}' is not the id of a recovery point in vault '{vault}', fabric '{fabric}'."
            )));
        }
        let point = self.get_recovery_point(sub, rg, vault, fabric, segs[11], segs[13], segs[15])?;
        let p = &point["properties"];
        if p["objectType"] != "IaasVMRecoveryPoint" {
            return Err(bad(format!(
                "'{id}' is not a virtual machine's recovery point: extended info lists a VM point's disks."
            )));
        }
        let disks: Vec<Value> = p
            .pointer("/recoveryPointDiskConfiguration/includedDiskList")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let (os, data): (Vec<Value>, Vec<Value>) = disks.into_iter().partition(|d| d["lun"] == -1);
        Ok(json!({"value": [{
            "id": point["id"],
            "name": point["name"],
            "type": RECOVERY_POINT_TYPE,
            "properties": {"objectType": "IaasVMRPExtendedInfo", "osDisk": os.first().cloned().unwrap_or(Value::Null), "dataDisks": data},
        }]}))
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn recovery_point_row(
        &self,
        sub: &str,
        rg: &str,
        vault: &str,
        fabric: &str,
        container: &str,
        item: &str,
        rp: &str,
    ) -> Result<(ResourceRow, ResourceRow, RecoveryPointRow)> {
        let (v, row) = self.protected_item_row(sub, rg, vault, fabric, container, item)?;
        let rp_row = self
            .store
            .read(|db| db.recovery_point(&format!("{}/recoveryPoints/{rp}", row.id)))?
            .ok_or_else(|| Error::NotFound {
                code: "BMSUserErrorRecoveryPointNotFound",
                message: format!("Recovery point '{rp}' of item '{item}' was not found."),
            })?;
        Ok((v, row, rp_row))
    }

    /// The recovery point resource of a finished backup.
    fn recovery_point_body(&self, item: &ResourceRow, info: &RecoveryPointInfo, rule: Option<&str>) -> Value {
        let p = &item.body["properties"];
        let id = format!("{}/recoveryPoints/{}", item.id, info.id);
        let mut props_rp = json!({"isSoftDeleted": false});
        if let Some(e) = info.expiry {
            props_rp["expiryTime"] = json!(time::timestamp(e));
        }
        // Azure names the retention rule that governs the point's life; its examples (and a
        // policy's single retention rule) say `DefaultRule`.
        props_rp["ruleName"] = json!(rule.unwrap_or("DefaultRule"));
        let tiers = json!([{"type": "HardenedRP", "status": "Valid"}]);
        let changed = info.consistency == rsvault_engine::Consistency::Inconsistent;
        let props = if info.kind == rsvault_engine::RecoveryPointKind::Tree {
            json!({
                "objectType": "AzureFileShareRecoveryPoint",
                "recoveryPointType": "FileSystemConsistent",
                "recoveryPointTime": time::timestamp(info.time),
                "fileShareSnapshotUri": format!("file://{}", info.source_root.as_deref().unwrap_or(Path::new("")).display()),
                "recoveryPointSizeInGB": info.total_size.div_ceil(1 << 30),
                "recoveryPointProperties": props_rp,
                "recoveryPointTierDetails": tiers,
            })
        } else {
            let vm = self
                .store
                .read(|db| db.resource(p["sourceResourceId"].as_str().unwrap_or_default()))
                .ok()
                .flatten();
            let luns: Vec<Value> = info
                .disks
                .iter()
                .enumerate()
                .map(|(i, d)| {
                    let lun = vm
                        .as_ref()
                        .and_then(|vm| {
                            vm.body
                                .pointer("/properties/storageProfile/dataDisks")
                                .and_then(Value::as_array)
                                .and_then(|a| a.iter().find(|x| x["name"].as_str() == Some(&d.name)))
                                .and_then(|x| x["lun"].as_i64())
                        })
                        .unwrap_or(i as i64 - 1);
                    json!({"lun": lun, "name": d.name})
                })
                .collect();
            let mut v = json!({
                "objectType": "IaasVMRecoveryPoint",
                "recoveryPointType": if info.consistency == rsvault_engine::Consistency::ApplicationConsistent { "AppConsistent" } else { "CrashConsistent" },
                "recoveryPointTime": time::timestamp(info.time),
                "recoveryPointAdditionalInfo": if changed { "A disk changed while it was read: the copy may mix data from before and after the change." } else { "" },
                "sourceVMStorageType": "NormalVMOnStandardStorage",
                "isSourceVMEncrypted": false,
                "isInstantIlrSessionActive": false,
                "recoveryPointTierDetails": tiers,
                "isManagedVirtualMachine": false,
                "virtualMachineSize": vm.as_ref().and_then(|vm| vm.body.pointer("/properties/hardwareProfile/vmSize").and_then(Value::as_str)).unwrap_or(""),
                "originalStorageAccountOption": false,
                "osType": vm.as_ref().and_then(|vm| vm.body.pointer("/properties/storageProfile/osDisk/osType").and_then(Value::as_str)).unwrap_or("Linux"),
                "recoveryPointDiskConfiguration": {
                    "numberOfDisksIncludedInBackup": info.disks.len(),
                    "numberOfDisksAttachedToVm": info.disks.len(),
                    "includedDiskList": luns,
                    "excludedDiskList": [],
                },
                "recoveryPointProperties": props_rp,
                // rsvault has no archive tier: no point is ever ready to move to one.
                "recoveryPointMoveReadinessInfo": {
                    "ArchivedRP": {"isReadyForMove": false, "additionalInfo": "Recovery point cannot be moved to archive tier: this vault has no archive tier."}
                },
            });
            // Azure gives `zones` only for a zone-pinned VM: the VM's zones when it was backed up.
            if let Some(z) = vm
                .as_ref()
                .and_then(|vm| vm.body.get("zones"))
                .filter(|z| z.as_array().is_some_and(|a| !a.is_empty()))
            {
                v["zones"] = z.clone();
            }
            v
        };
        json!({"id": id, "name": info.id, "type": RECOVERY_POINT_TYPE, "properties": props})
    }

    /// What completing a backup writes: the recovery point row, and the item's last-backup fields.
    fn backup_finished(&self, job: &JobRow, item_id: &str, info: RecoveryPointInfo, warnings: Vec<String>) -> Finished {
        let item = self.store.read(|db| db.resource(item_id)).ok().flatten();
        let status = if warnings.is_empty() && info.consistency != rsvault_engine::Consistency::Inconsistent {
            JobStatus::Completed
        } else {
            JobStatus::CompletedWithWarnings
        };
        let mut bag = Map::new();
        if job.backup_management_type == "AzureStorage" {
            bag.insert(
                "Data Transferred (in MB)".into(),
                json!((info.added_size / (1 << 20)).to_string()),
            );
        } else {
            bag.insert("Backup Size".into(), json!(mb(info.total_size)));
        }
        let Some(item) = item else {
            return Finished {
                status,
                bag,
                warnings,
                commit: Box::new(|_| Ok(())),
            };
        };
        let body = self.recovery_point_body(&item, &info, None);
        let rp = RecoveryPointRow {
            id: body["id"].as_str().unwrap_or_default().to_string(),
            vault_key: super::vault_of(&item.id).to_ascii_lowercase(),
            item_key: item.id.to_ascii_lowercase(),
            name: info.id.clone(),
            time: info.time,
            expiry: info.expiry,
            body,
            engine: json!({"snapshotId": info.snapshot_id, "kind": info.kind, "totalSize": info.total_size, "addedSize": info.added_size}),
        };
        let item_id = item.id.clone();
        Finished {
            status,
            bag,
            warnings,
            commit: Box::new(move |db| {
                db.put_recovery_point(&rp)?;
                if let Some(mut item) = db.resource(&item_id)? {
                    let p = &mut item.body["properties"];
                    p["lastBackupStatus"] = json!(status.as_str());
                    p["lastBackupTime"] = json!(time::timestamp(rp.time));
                    p["lastRecoveryPoint"] = json!(time::timestamp(rp.time));
                    if p["protectionState"].as_str() == Some("IRPending") {
                        p["protectionState"] = json!("Protected");
                    }
                    count_points(db, &mut item)?;
                    db.put_resource(&item)?;
                }
                Ok(())
            }),
        }
    }

    /// A crashed backup whose snapshot the vault holds: its completion, from the snapshot.
    pub(crate) fn recover_backup(&self, job: &JobRow) -> Option<Finished> {
        let Some(Work::Backup {
            vault,
            item,
            recovery_point,
            ..
        }) = Work::of(job)
        else {
            return None;
        };
        let repo = self.vault_repo(&vault).ok()?;
        let info = self.data().ok()?.engine.recovery_point(&repo, &recovery_point).ok()?;
        (info.job == job.name).then(|| self.backup_finished(job, &item, info, vec![]))
    }

    /// A restore a crash interrupted: removes the temporary files it left in its target (restores
    /// write under temporary names and rename at the end, so nothing else of it can be half-written).
    /// Returns how many were removed.
    pub(crate) fn remove_restore_leftovers(&self, job: &JobRow) -> usize {
        let Some(Work::Restore {
            vault,
            recovery_point,
            target,
            ..
        }) = Work::of(job)
        else {
            return 0;
        };
        let info = || {
            let repo = self.vault_repo(&vault).ok()?;
            self.data().ok()?.engine.recovery_point(&repo, &recovery_point).ok()
        };
        let dirs: Vec<(PathBuf, bool)> = match target {
            RestoreTarget::Tree { target: Some(t), .. } => vec![(t, true)],
            RestoreTarget::Tree { target: None, .. } => info()
                .and_then(|i| i.source_root)
                .map(|r| vec![(r, true)])
                .unwrap_or_default(),
            RestoreTarget::Disks { dir, .. } => vec![(dir, false)],
            RestoreTarget::OriginalDisks => info()
                .map(|i| {
                    i.disks
                        .iter()
                        .filter_map(|d| d.source_path.parent().map(|p| (p.to_path_buf(), false)))
                        .collect()
                })
                .unwrap_or_default(),
        };
        let mut n = 0;
        for (dir, recursive) in dirs {
            match rsvault_engine::remove_restore_leftovers(&dir, recursive) {
                Ok(k) => n += k,
                Err(e) => {
                    tracing::warn!(job = %job.id, dir = %dir.display(), error = %e, "cannot remove an interrupted restore's temporary files")
                }
            }
        }
        n
    }

    /// After a job ends (in its final transaction, `status` its end): a backup that did not
    /// complete marks its item.
    pub(crate) fn after_job(&self, db: &rsvault_store::Db, job: &JobRow, status: JobStatus) -> Result<()> {
        if job.operation != "Backup" || status.is_completed() {
            return Ok(());
        }
        let Some(work) = Work::of(job) else {
            return Ok(());
        };
        // Whatever an unfinished backup left in the vault (a snapshot committed before a later step
        // failed, packs of a cancelled one) is no recovery point: the vault's next pass collects it.
        db.mark_for_gc(&job.vault_key)?;
        if let Some(mut row) = db.resource(work.item())? {
            row.body["properties"]["lastBackupStatus"] = json!(status.as_str());
            if status == JobStatus::Failed {
                row.body["properties"]["healthStatus"] = json!("ActionRequired");
            }
            db.put_resource(&row)?;
        }
        Ok(())
    }

    /// Carries out a data-plane job (called by a worker of the job engine).
    pub(crate) fn execute_job(&self, job: &JobRow, run: &Run<'_>) -> std::result::Result<Finished, Failure> {
        let cancel = run.cancel();
        let work =
            Work::of(job).ok_or_else(|| internal_failure(Error::internal("the job's work record is unreadable")))?;
        let dp = self.data().map_err(internal_failure)?;
        // On a test clock another node may have moved (a clock advance waits for this job, so the
        // time read now holds until it ends).
        self.resume_test_clock().map_err(internal_failure)?;
        let mut warn = None;
        if let Some(f) = self.take_fault(job, &work) {
            tracing::info!(job = %job.id, fault = %f.id, action = ?f.action, "a rehearsed fault meets the job");
            match f.action {
                FaultAction::Fail => return Err(Failure::Failed(f.job_error())),
                FaultAction::Hang => loop {
                    if cancel.is_cancelled() {
                        return Err(Failure::Cancelled);
                    }
                    std::thread::sleep(std::time::Duration::from_millis(20));
                },
                FaultAction::CompletedWithWarnings => warn = Some(f.message),
            }
        }
        match work {
            Work::Backup {
                vault,
                item,
                recovery_point,
                expiry,
                disks,
                root,
                resource,
                live,
                libvirt,
            } => {
                let resource = self.job_resource(resource, &item);
                if let Some(d) = &libvirt {
                    self.grants
                        .check_libvirt(&d.uri, &resource, None)
                        .map_err(|_| path_failure(Path::new(&d.uri), &dp.node))?;
                }
                let live_sockets = live
                    .iter()
                    .flat_map(|l| [Some(&l.qmp_socket), l.agent_socket.as_ref(), l.nbd_socket.as_ref()])
                    .flatten();
                for p in disks.iter().map(|d| &d.path).chain(root.as_ref()).chain(live_sockets) {
                    self.grants
                        .recheck(p, &resource)
                        .map_err(|_| path_failure(p, &dp.node))?;
                }
                let repo = self.job_repo(&vault)?;
                if let Some(dir) = repo.local_path() {
                    check_space(dir, MIN_FREE_FOR_BACKUP, "the vault's storage")?;
                }
                let tags = RecoveryPointTags {
                    vault: vault.clone(),
                    item: item.clone(),
                    job: job.name.clone(),
                    recovery_point,
                };
                let progress = run.progress(BACKUP_TASKS);
                let now = self.now();
                let vm_job = root.is_none();
                let out = match (root, live) {
                    _ if libvirt.is_some() => dp.engine.backup_libvirt_domain(
                        &repo,
                        &LibvirtBackupRequest {
                            domain: libvirt.expect("checked"),
                            tags,
                            time: now,
                            expiry: Some(expiry),
                        },
                        &progress,
                        cancel,
                    ),
                    (_, Some(vm)) => dp.engine.backup_live_vm(
                        &repo,
                        &LiveBackupRequest {
                            vm,
                            work_dir: self.live_work_dir().map_err(internal_failure)?,
                            tags,
                            time: now,
                            expiry: Some(expiry),
                        },
                        &progress,
                        cancel,
                    ),
                    (Some(root), None) => dp.engine.backup_tree(
                        &repo,
                        &TreeBackupRequest {
                            root,
                            tags,
                            time: now,
                            expiry: Some(expiry),
                            parent: None,
                        },
                        &progress,
                        cancel,
                    ),
                    (None, None) => dp.engine.backup_disks(
                        &repo,
                        &DiskBackupRequest {
                            disks,
                            tags,
                            time: now,
                            expiry: Some(expiry),
                            parent: None,
                        },
                        &progress,
                        cancel,
                    ),
                }
                .map_err(job_failure)?;
                let read = out.bytes_scanned.saturating_sub(out.bytes_skipped_unallocated);
                let mut warnings = out.warnings;
                warnings.extend(warn);
                // A geo-redundant vault's copy, before the job ends: the job says how it went.
                let copy = self.copy_to_secondary(&vault, &repo, cancel);
                if let Some(Err(why)) = &copy {
                    warnings.push(why.clone());
                }
                let mut fin = self.backup_finished(job, &item, out.recovery_point, warnings);
                if vm_job {
                    // What the backup read from the source (an incremental of a running guest:
                    // the changed blocks only), as Azure's VM jobs report their transfer.
                    fin.bag
                        .insert("Data Transferred (in MB)".into(), json!((read >> 20).to_string()));
                    fin.bag
                        .insert("Data Read From Source (in bytes)".into(), json!(read.to_string()));
                }
                if let Some(c) = copy {
                    fin.bag.insert(
                        "Secondary Copy".into(),
                        json!(if c.is_ok() { "Completed" } else { "Failed" }),
                    );
                    // The items show the state of their latest point's copy, in the same transaction.
                    let secondary = dp.storage.secondary().map(|s| s.name().to_string()).unwrap_or_default();
                    let copy = c.map(|report| report.snapshot_ids);
                    let commit = fin.commit;
                    fin.commit = Box::new(move |db| {
                        commit(db)?;
                        record_secondary_copy(db, &vault, &item, &secondary, &copy)
                    });
                }
                Ok(fin)
            }
            Work::Restore {
                vault,
                item,
                recovery_point,
                target,
                resource,
            } => {
                let resource = self.job_resource(resource, &item);
                let (repo, secondary) = self.restore_repo(&vault, &recovery_point)?;
                self.restore_preflight(&repo, &recovery_point, &target, &resource)?;
                let progress = run.progress(RESTORE_TASKS);
                let mut bag = Map::new();
                if let Some(name) = secondary {
                    bag.insert(
                        "Restored From".into(),
                        json!(format!("Secondary storage '{name}' (cross-region restore)")),
                    );
                }
                match target {
                    RestoreTarget::Tree {
                        target,
                        paths,
                        conflict,
                    } => {
                        let out = dp
                            .engine
                            .restore_tree(
                                &repo,
                                &TreeRestoreRequest {
                                    recovery_point,
                                    paths,
                                    target,
                                    conflict,
                                },
                                &progress,
                                cancel,
                            )
                            .map_err(job_failure)?;
                        bag.insert(
                            "Data Transferred (in MB)".into(),
                            json!((out.bytes_restored / (1 << 20)).to_string()),
                        );
                        bag.insert("Number Of Restored Files".into(), json!(out.files_restored.to_string()));
                        bag.insert("Number Of Skipped Files".into(), json!(out.files_skipped.to_string()));
                        bag.insert("Number Of Failed Files".into(), json!("0"));
                    }
                    t => {
                        let mut disks_dir = None;
                        let (target, format, new_vm) = match t {
                            RestoreTarget::Disks { dir, format, new_vm } => {
                                disks_dir = Some(dir.clone());
                                std::fs::create_dir_all(&dir).map_err(|e| {
                                    Failure::Failed(JobError::new(
                                        100_005,
                                        "The restore target cannot be written",
                                        format!("'{}' cannot be created: {e}.", dir.display()),
                                        "Check the storage account's directory and its permissions.",
                                    ))
                                })?;
                                (DiskRestoreTarget::Directory(dir), format, new_vm)
                            }
                            _ => (DiskRestoreTarget::Original, None, None),
                        };
                        let out = dp
                            .engine
                            .restore_disks(
                                &repo,
                                &DiskRestoreRequest {
                                    recovery_point,
                                    disks: None,
                                    target,
                                    format,
                                },
                                &progress,
                                cancel,
                            )
                            .map_err(job_failure)?;
                        bag.insert("Restored Size".into(), json!(mb(out.bytes_restored)));
                        bag.insert(
                            "Restored Disks".into(),
                            json!(out
                                .paths
                                .iter()
                                .map(|p| p.display().to_string())
                                .collect::<Vec<_>>()
                                .join(", ")),
                        );
                        if let Some(vm) = new_vm {
                            self.declare_restored_vm(&vm, &out.paths).map_err(internal_failure)?;
                            bag.insert("Target VM Name".into(), json!(vm.name));
                        } else if let Some(dir) = disks_dir {
                            let named = self
                                .write_vm_config(&dir, &item, &out.paths)
                                .map_err(internal_failure)?;
                            bag.extend(named);
                        }
                    }
                }
                Ok(Finished {
                    status: if warn.is_some() {
                        JobStatus::CompletedWithWarnings
                    } else {
                        JobStatus::Completed
                    },
                    bag,
                    warnings: warn.into_iter().collect(),
                    commit: Box::new(|_| Ok(())),
                })
            }
        }
    }

    /// What a restore checks when its job starts, before it writes anything: every path it writes
    /// passes the grants again (they may have changed at a restart), the directory it writes into
    /// takes a new file, and its file system has room for the whole point (restores write whole
    /// copies before renaming them). Restore validation runs the same checks.
    pub(super) fn restore_preflight(
        &self,
        repo: &RepoSpec,
        recovery_point: &str,
        target: &RestoreTarget,
        resource: &str,
    ) -> std::result::Result<(), Failure> {
        let dp = self.data().map_err(internal_failure)?;
        let info = dp.engine.recovery_point(repo, recovery_point).map_err(job_failure)?;
        let dirs: Vec<PathBuf> = match target {
            RestoreTarget::Disks { dir, .. } => vec![dir.clone()],
            RestoreTarget::Tree { target: Some(t), .. } => vec![t.clone()],
            RestoreTarget::Tree { target: None, .. } => info.source_root.iter().cloned().collect(),
            RestoreTarget::OriginalDisks => info
                .disks
                .iter()
                .filter_map(|d| d.source_path.parent().map(Path::to_path_buf))
                .collect(),
        };
        let written: Vec<&PathBuf> = match target {
            RestoreTarget::Disks { dir, .. } => vec![dir],
            RestoreTarget::Tree { target: Some(t), .. } => vec![t],
            _ => info
                .disks
                .iter()
                .map(|d| &d.source_path)
                .chain(info.source_root.as_ref())
                .collect(),
        };
        for p in written {
            self.grants
                .recheck(p, resource)
                .map_err(|_| path_failure(p, &dp.node))?;
        }
        let Some(dir) = dirs.first() else { return Ok(()) };
        // A disk restore makes its own directory: its parent must take it.
        let existing = dir.ancestors().find(|d| d.exists()).unwrap_or(dir);
        check_writable(existing)?;
        check_space(existing, info.total_size, "the restore target")
    }

    /// The resource a job's paths are checked for: the one its work names, else (jobs queued before
    /// grants existed) the item's source resource.
    fn job_resource(&self, resource: Option<String>, item: &str) -> String {
        resource.unwrap_or_else(|| {
            self.store
                .read(|db| db.resource(item))
                .ok()
                .flatten()
                .and_then(|r| r.body["properties"]["sourceResourceId"].as_str().map(String::from))
                .unwrap_or_default()
        })
    }

    /// `RestoreDisks`: beside the restored images, the VM's configuration and an ARM template that
    /// re-creates it over them (what Azure leaves in the storage account as the config and template
    /// blobs), each written once under a new name; returns the property bag entries naming them, in
    /// Azure's words, with `file://` URIs where Azure gives blob URIs.
    fn write_vm_config(&self, dir: &Path, item: &str, images: &[PathBuf]) -> Result<Map<String, Value>> {
        let item_row = self.store.read(|db| db.resource(item))?;
        let source = item_row
            .as_ref()
            .and_then(|r| r.body.pointer("/properties/sourceResourceId"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let vm = self.store.read(|db| db.resource(&source))?;
        let vm_name = source.rsplit('/').next().unwrap_or("vm").to_string();
        let location = vm
            .as_ref()
            .and_then(|v| v.body["location"].as_str())
            .unwrap_or("westus")
            .to_string();
        let os_type = vm
            .as_ref()
            .and_then(|v| v.body.pointer("/properties/storageProfile/osDisk/osType"))
            .cloned()
            .unwrap_or(json!("Linux"));
        let uri = |p: &Path| format!("file://{}", p.display());
        let size_gb = |p: &Path| std::fs::metadata(p).map(|m| m.len().div_ceil(1 << 30)).unwrap_or(0);
        let name_of = |p: &Path| {
            p.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        };
        let os = images
            .first()
            .ok_or_else(|| Error::internal("the restore wrote no disk"))?;
        let storage = json!({
            "osDisk": {"osType": os_type, "name": name_of(os), "vhd": {"uri": uri(os)}, "diskSizeGB": size_gb(os), "createOption": "Attach"},
            "dataDisks": images.iter().skip(1).enumerate().map(|(i, p)| json!({
                "lun": i, "name": name_of(p), "vhd": {"uri": uri(p)}, "diskSizeGB": size_gb(p), "createOption": "Attach"})).collect::<Vec<_>>(),
        });
        let mut vm_props = vm.as_ref().map(|v| v.body["properties"].clone()).unwrap_or(json!({}));
        vm_props["storageProfile"] = storage.clone();
        let config = json!({"id": source, "name": vm_name, "type": "Microsoft.Compute/virtualMachines", "location": location, "properties": vm_props});
        let template = json!({
            "$schema": "https://schema.management.azure.com/schemas/2019-04-01/deploymentTemplate.json#",
            "contentVersion": "1.0.0.0",
            "parameters": {"VirtualMachineName": {"type": "string", "defaultValue": format!("{vm_name}-restored")}},
            "resources": [{
                "type": "Microsoft.Compute/virtualMachines",
                "apiVersion": "2024-07-01",
                "name": "[parameters('VirtualMachineName')]",
                "location": location,
                "properties": {"storageProfile": storage},
            }],
        });
        let container = name_of(dir);
        let short = container.rsplit('-').next().unwrap_or_default().to_string();
        let config_name = format!("config-{}-{short}.json", vm_name.to_ascii_lowercase());
        let template_name = format!("azuredeploy{short}.json");
        for (name, body) in [(&config_name, &config), (&template_name, &template)] {
            let path = dir.join(name);
            let text = serde_json::to_vec_pretty(body).map_err(|e| Error::internal(e.to_string()))?;
            write_new_private(&path, &text)?;
        }
        let mut bag = Map::new();
        if let Some(vm) = vm.as_ref() {
            if let Some(name) = self.write_domain_definition(dir, vm, &vm_name, &short, images)? {
                bag.insert("Domain Definition Blob Name".into(), json!(name));
                bag.insert("Domain Definition Blob Uri".into(), json!(uri(&dir.join(&name))));
            }
        }
        bag.insert("Config Blob Name".into(), json!(config_name));
        bag.insert("Config Blob Container Name".into(), json!(container));
        bag.insert("Config Blob Uri".into(), json!(uri(&dir.join(&config_name))));
        bag.insert("Template Blob Uri".into(), json!(uri(&dir.join(&template_name))));
        Ok(bag)
    }

    /// For a running guest (a libvirt domain or a QMP guest), a libvirt domain XML over the
    /// restored images, `domain-{vm}-{id}.xml`: a libvirt domain's own definition (as the domain
    /// is defined now) with its disks' sources rewritten, a fresh UUID and the name
    /// `{domain}-restored-{id}`; a QMP guest's a minimal TCG definition. `None` for an image-file
    /// VM. Written as the config is: a new name, 0600.
    fn write_domain_definition(
        &self,
        dir: &Path,
        vm: &ResourceRow,
        vm_name: &str,
        short: &str,
        images: &[PathBuf],
    ) -> Result<Option<String>> {
        let libvirt = self.libvirt_source(vm).ok().flatten();
        if libvirt.is_none() && self.live_source(vm).ok().flatten().is_none() {
            return Ok(None);
        }
        let format_of = |p: &Path| match rsvault_engine::probe(p).map(|i| i.format) {
            Ok(ImageFormat::Qcow2) => "qcow2".to_string(),
            _ => "raw".to_string(),
        };
        let uuid = uuid::Uuid::new_v4().to_string();
        let new_name = format!("{vm_name}-restored-{short}");
        let own = libvirt.and_then(|d| rsvault_engine::libvirt::domain(&d.uri, &d.uuid).ok());
        let xml = match own {
            Some(info) => {
                let restored: Vec<(String, PathBuf, String)> = images
                    .iter()
                    .map(|p| {
                        let n = p
                            .file_name()
                            .map(|n| n.to_string_lossy().into_owned())
                            .unwrap_or_default();
                        (n, p.clone(), format_of(p))
                    })
                    .collect();
                let name = format!("{}-restored-{short}", info.name);
                rsvault_engine::libvirt::restored_definition(&info.xml, &name, &uuid, &restored)
                    .map_err(|e| Error::internal(format!("the domain definition: {e}")))?
            }
            None => {
                let disks: Vec<(PathBuf, String)> = images.iter().map(|p| (p.clone(), format_of(p))).collect();
                rsvault_engine::libvirt::definition_for(&new_name, &uuid, &disks)
            }
        };
        let name = format!("domain-{}-{short}.xml", vm_name.to_ascii_lowercase());
        write_new_private(&dir.join(&name), xml.as_bytes())?;
        Ok(Some(name))
    }

    /// `AlternateLocation`: a new VM resource over the restored images (the first is the OS disk).
    fn declare_restored_vm(&self, vm: &NewVm, images: &[PathBuf]) -> Result<()> {
        let uri = |p: &PathBuf| format!("file://{}", p.display());
        let os = images
            .first()
            .ok_or_else(|| Error::internal("the restore wrote no disk"))?;
        let data: Vec<Value> = images
            .iter()
            .skip(1)
            .enumerate()
            .map(|(i, p)| json!({"lun": i, "name": p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(), "vhd": {"uri": uri(p)}}))
            .collect();
        let body = json!({
            "location": vm.location,
            "properties": {"storageProfile": {"osDisk": {"name": "osDisk", "vhd": {"uri": uri(os)}}, "dataDisks": data}},
        });
        self.put_vm(&vm.subscription, &vm.resource_group, &vm.name, &body)?;
        Ok(())
    }

    // ---- restore -------------------------------------------------------------------------------

    /// `POST …/recoveryPoints/{rp}/restore`. Returns the operation id.
    #[allow(clippy::too_many_arguments)]
    pub fn trigger_restore(
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
        self.data()?;
        let (v, row, rp_row) = self.recovery_point_row(sub, rg, vault, fabric, container, item, rp)?;
        // Each restore writes a whole copy: a vault queues a bounded number (25 copies in 0.2 s was
        // a way to fill a disk).
        let active = self.store.read(active_jobs)?;
        let vkey = v.id.to_ascii_lowercase();
        let restores = active
            .iter()
            .filter(|j| j.vault_key == vkey && j.operation == "Restore")
            .count();
        if restores >= MAX_ACTIVE_RESTORES_PER_VAULT {
            return Err(Error::Throttled {
                message: format!("The vault already has {restores} restores queued or running, the most it takes at once. Retry when one of them has ended."),
                retry_after_secs: 30,
            });
        }
        let plan = self.plan_restore(caller, &v, &row, &rp_row, rp, req)?;
        let now = self.now();
        let mut job = self.queued_job(
            &v,
            "Restore",
            &plan.bmt,
            &plan.friendly,
            &plan.container,
            plan.bag,
            RESTORE_TASKS,
            &plan.work,
            true,
            now,
        );
        if let Some(kind) = plan.restore_location {
            // As the live service shows a VM restore's kind (test_backup_scenario.yaml).
            job.body["extendedInfo"]["internalPropertyBag"] = json!({"restoreLocationType": kind});
        }
        self.commit_queued(&v, job, &row.id, None)
    }

    /// A restore request checked as a restore checks it when it is asked for, before anything is
    /// queued: the request's kind and recovery type, the linked access it needs, its target (names,
    /// grants) and what the job will do. `trigger_restore` queues the plan; restore validation
    /// (`backupValidateOperation`) reports what this refuses instead.
    pub(crate) fn plan_restore(
        &self,
        caller: &Caller,
        v: &ResourceRow,
        row: &ResourceRow,
        rp_row: &RecoveryPointRow,
        rp: &str,
        req: &Value,
    ) -> Result<RestorePlan> {
        let item = row.name.as_str();
        let p = row.body["properties"].clone();
        let bmt = p["backupManagementType"].as_str().unwrap_or("AzureIaasVM").to_string();
        let friendly = p["friendlyName"].as_str().unwrap_or_default().to_string();
        let (props, kind) = typed_request(req, "restore")?;
        let want = if bmt == "AzureStorage" {
            "AzureFileShareRestoreRequest"
        } else {
            "IaasVMRestoreRequest"
        };
        check_kind(kind, want, item, &bmt)?;
        let recovery_type = body::opt_enum(
            props,
            "recoveryType",
            "properties.",
            &[
                "Invalid",
                "OriginalLocation",
                "AlternateLocation",
                "RestoreDisks",
                "Offline",
            ],
        )?
        .ok_or_else(|| {
            bad_input(
                "properties.recoveryType",
                "The restore request needs 'properties.recoveryType'.",
            )
        })?;
        // Linked access: the restore writes into resources beyond the vault's path.
        let linked = restore_linked_scopes(&p, &bmt, recovery_type, props);
        let linked: Vec<(&str, &str)> = linked.iter().map(|(a, s)| (*a, s.as_str())).collect();
        self.authorize_linked(
            caller,
            "Microsoft.RecoveryServices/Vaults/backupFabrics/protectionContainers/protectedItems/recoveryPoints/restore/action",
            &rp_row.id,
            &linked,
        )?;
        let rp_time = time::us_datetime(rp_row.time);
        let mut bag = Map::new();
        let (target, resource) = if bmt == "AzureStorage" {
            let (target, bag_entries, resource) = self.share_restore_target(&p, &friendly, recovery_type, props)?;
            bag.insert("Source File Share Name".into(), json!(friendly));
            bag.insert(
                "Source Storage Account Name".into(),
                json!(p["containerName"].as_str().unwrap_or_default().rsplit(';').next()),
            );
            bag.extend(bag_entries);
            bag.insert("Recovery point time ".into(), json!(rp_time));
            (target, resource)
        } else {
            let source = p["sourceResourceId"].as_str().unwrap_or_default();
            let (target, resource) = self.vm_restore_target(&friendly, source, recovery_type, props, &mut bag)?;
            bag.insert("Recovery point time ".into(), json!(rp_time));
            (target, resource)
        };
        if let RestoreTarget::OriginalDisks = target {
            // The images the restore replaces are the recovery point's sources: granted now?
            let info = self
                .data()?
                .engine
                .recovery_point(&self.vault_repo(&v.id)?, rp)
                .map_err(|e| Error::internal(format!("reading recovery point {rp}: {e}")))?;
            for d in &info.disks {
                self.grants.recheck(&d.source_path, &resource)?;
            }
        }
        Ok(RestorePlan {
            container: p["containerName"].as_str().unwrap_or_default().to_string(),
            work: Work::Restore {
                vault: v.id.clone(),
                item: row.id.clone(),
                recovery_point: rp.to_string(),
                target,
                resource: Some(resource),
            },
            bag,
            restore_location: (bmt != "AzureStorage").then(|| recovery_type.to_string()),
            bmt,
            friendly,
        })
    }

    /// A storage account named by id in a restore request, and its directory.
    fn restore_account(&self, id: &str, target: &str) -> Result<(ResourceRow, PathBuf)> {
        let rid = rsvault_core::ids::ResourceId::parse(id)
            .map_err(|_| bad_input(target, format!("'{id}' is not a storage account id.")))?;
        let ok_type = rid
            .resource_type()
            .is_some_and(|t| t.eq_ignore_ascii_case("Microsoft.Storage/storageAccounts"));
        let (Some(rg), true) = (rid.resource_group.as_deref(), ok_type) else {
            return Err(bad_input(target, format!("'{id}' is not a storage account id.")));
        };
        let acct = self
            .storage_account_row(&rid.subscription, rg, rid.name().unwrap_or_default())
            .map_err(|_| {
                invalid(
                    "UserErrorStorageAccountNotFound",
                    target,
                    format!("The storage account '{id}' was not found."),
                )
            })?;
        let dir = self.account_dir(&acct)?;
        Ok((acct, dir))
    }

    /// Where a VM restore goes, and the resource whose paths it writes.
    fn vm_restore_target(
        &self,
        vm_name: &str,
        source: &str,
        recovery_type: &str,
        props: &Map<String, Value>,
        bag: &mut Map<String, Value>,
    ) -> Result<(RestoreTarget, String)> {
        let short = uuid::Uuid::new_v4().simple().to_string();
        match recovery_type {
            "RestoreDisks" | "AlternateLocation" => {
                let acct_id = body::opt_str(props, "storageAccountId", "properties.")?.ok_or_else(|| {
                    bad_input("properties.storageAccountId", "A disk restore needs 'storageAccountId': the storage account the disks are written to.")
                })?;
                let (acct, dir) = self.restore_account(acct_id, "properties.storageAccountId")?;
                bag.insert("Target Storage Account Name".into(), json!(acct.name));
                if recovery_type == "RestoreDisks" {
                    bag.insert("Job Type".into(), json!("Recover disks"));
                    let dir = dir.join(format!("{}-{}", vm_name.to_ascii_lowercase(), &short[..12]));
                    return Ok((RestoreTarget::Disks { dir, format: None, new_vm: None }, acct.id));
                }
                let vm_id = body::opt_str(props, "targetVirtualMachineId", "properties.")?.ok_or_else(|| {
                    bad_input("properties.targetVirtualMachineId", "An AlternateLocation restore needs 'targetVirtualMachineId': the id of the VM to create.")
                })?;
                let rid = rsvault_core::ids::ResourceId::parse(vm_id)
                    .map_err(|_| bad_input("properties.targetVirtualMachineId", format!("'{vm_id}' is not a virtual machine id.")))?;
                let ok_type = rid
                    .resource_type()
                    .is_some_and(|t| t.eq_ignore_ascii_case("Microsoft.Compute/virtualMachines"));
                let (Some(rg), true, Some(name)) = (rid.resource_group.clone(), ok_type, rid.name().map(String::from)) else {
                    return Err(bad_input("properties.targetVirtualMachineId", format!("'{vm_id}' is not a virtual machine id.")));
                };
                self.group_row(&rid.subscription, &rg)?;
                // The new VM's disks live in the account's directory: a grant must serve it too.
                self.grants.check(&dir, &rid.text)?;
                if self.vm_row(&rid.subscription, &rg, &name).is_ok() {
                    return Err(invalid(
                        "UserErrorVmNameAlreadyExists",
                        "properties.targetVirtualMachineId",
                        format!("A virtual machine '{name}' already exists in resource group '{rg}'. Give the name of a new VM."),
                    ));
                }
                let location = body::opt_str(props, "region", "properties.")?
                    .map(crate::body::normalize_location)
                    .unwrap_or_else(|| acct.body["location"].as_str().unwrap_or("westus").to_string());
                bag.insert("Job Type".into(), json!("Restore to a new virtual machine"));
                bag.insert("Target VM Name".into(), json!(name));
                Ok((
                    RestoreTarget::Disks {
                        dir: dir.join(format!("{}-{}", name.to_ascii_lowercase(), &short[..12])),
                        format: None,
                        new_vm: Some(NewVm {
                            subscription: rid.subscription.clone(),
                            resource_group: rg,
                            name,
                            location,
                        }),
                    },
                    acct.id,
                ))
            }
            "OriginalLocation" => {
                // A running guest's disks are never replaced under it.
                if let Some(vm) = self.store.read(|db| db.resource(source))? {
                    self.refuse_if_running(&vm)?;
                }
                bag.insert("Job Type".into(), json!("Replace existing disks"));
                Ok((RestoreTarget::OriginalDisks, source.to_string()))
            }
            other => Err(bad_input(
                "properties.recoveryType",
                format!("recoveryType '{other}' is not supported for VMs: use RestoreDisks, AlternateLocation or OriginalLocation."),
            )),
        }
    }

    fn share_restore_target(
        &self,
        item_props: &Value,
        share: &str,
        recovery_type: &str,
        props: &Map<String, Value>,
    ) -> Result<(RestoreTarget, Map<String, Value>, String)> {
        let conflict = match body::opt_enum(
            props,
            "copyOptions",
            "properties.",
            &["Invalid", "CreateCopy", "Skip", "Overwrite", "FailOnConflict"],
        )? {
            Some("Skip") => ConflictPolicy::Skip,
            Some("FailOnConflict") => ConflictPolicy::FailOnConflict,
            Some("Overwrite") | None => ConflictPolicy::Overwrite,
            Some(other) => {
                return Err(bad_input(
                    "properties.copyOptions",
                    format!("copyOptions '{other}' is not supported: use Overwrite, Skip or FailOnConflict."),
                ))
            }
        };
        let level = body::opt_enum(
            props,
            "restoreRequestType",
            "properties.",
            &["Invalid", "FullShareRestore", "ItemLevelRestore"],
        )?
        .unwrap_or("FullShareRestore");
        let specs: Vec<Map<String, Value>> = match props.get("restoreFileSpecs") {
            None | Some(Value::Null) => vec![],
            Some(Value::Array(a)) => a
                .iter()
                .map(|s| {
                    s.as_object().cloned().ok_or_else(|| {
                        bad_input(
                            "properties.restoreFileSpecs",
                            "Each restoreFileSpecs entry must be an object.",
                        )
                    })
                })
                .collect::<Result<_>>()?,
            Some(_) => {
                return Err(bad_input(
                    "properties.restoreFileSpecs",
                    "restoreFileSpecs must be an array.",
                ))
            }
        };
        let clean = |s: &str, target: &str| -> Result<PathBuf> {
            let rel = s.trim_start_matches('/');
            let p = PathBuf::from(rel);
            if p.components().any(|c| !matches!(c, std::path::Component::Normal(_))) {
                return Err(bad_input(target, format!("'{s}' is not a path inside the share.")));
            }
            Ok(p)
        };
        let paths = if level == "ItemLevelRestore" {
            if specs.is_empty() {
                return Err(bad_input(
                    "properties.restoreFileSpecs",
                    "An ItemLevelRestore needs restoreFileSpecs naming the files or folders to restore.",
                ));
            }
            Some(
                specs
                    .iter()
                    .map(|s| {
                        let path = s.get("path").and_then(Value::as_str).ok_or_else(|| {
                            bad_input(
                                "properties.restoreFileSpecs.path",
                                "Each restoreFileSpecs entry needs a 'path'.",
                            )
                        })?;
                        clean(path, "properties.restoreFileSpecs.path")
                    })
                    .collect::<Result<Vec<_>>>()?,
            )
        } else {
            None
        };
        let folder = specs
            .iter()
            .find_map(|s| s.get("targetFolderPath").and_then(Value::as_str))
            .filter(|f| !f.is_empty())
            .map(|f| clean(f, "properties.restoreFileSpecs.targetFolderPath"))
            .transpose()?;
        let mut bag = Map::new();
        let acct_name = item_props["containerName"]
            .as_str()
            .unwrap_or_default()
            .rsplit(';')
            .next()
            .unwrap_or_default()
            .to_string();
        let (target, resource) = match recovery_type {
            "OriginalLocation" => {
                bag.insert("Job Type".into(), json!("Recovering to the original file share"));
                bag.insert("RestoreDestination".into(), json!(format!("{acct_name}/{share}/")));
                let source = item_props["sourceResourceId"].as_str().unwrap_or_default();
                let acct = self.store.read(|db| db.resource(source))?.ok_or_else(|| {
                    invalid(
                        "BMSUserErrorInvalidSourceResourceId",
                        "",
                        format!("The storage account '{source}' no longer exists."),
                    )
                })?;
                let d = self.share_dir(&acct, share, false)?;
                let t = match folder {
                    Some(f) => self.grants.check(&d.join(f), &acct.id)?,
                    None => d,
                };
                (Some(t), acct.id)
            }
            "AlternateLocation" => {
                let td = body::opt_obj(props, "targetDetails", "properties.")?.ok_or_else(|| {
                    bad_input("properties.targetDetails", "An AlternateLocation restore needs 'targetDetails' with the target share 'name' and storage account 'targetResourceId'.")
                })?;
                let name = td.get("name").and_then(Value::as_str).ok_or_else(|| bad_input("properties.targetDetails.name", "targetDetails needs the target file share 'name'."))?;
                let acct_id = td.get("targetResourceId").and_then(Value::as_str).ok_or_else(|| {
                    bad_input("properties.targetDetails.targetResourceId", "targetDetails needs 'targetResourceId': the target storage account id.")
                })?;
                let (acct, _) = self.restore_account(acct_id, "properties.targetDetails.targetResourceId")?;
                self.share_row(&acct.subscription, acct.resource_group.as_deref().unwrap_or_default(), &acct.name, name)
                    .map_err(|_| invalid("UserErrorFileShareNotFound", "properties.targetDetails.name", format!("The file share '{name}' was not found in storage account '{}'.", acct.name)))?;
                bag.insert("Job Type".into(), json!("Recovering to an alternate file share"));
                bag.insert("RestoreDestination".into(), json!(format!("{}/{name}/{}", acct.name, folder.as_deref().map(|f| f.display().to_string()).unwrap_or_default())));
                let d = self.share_dir(&acct, name, false)?;
                let t = match folder {
                    Some(f) => self.grants.check(&d.join(f), &acct.id)?,
                    None => d,
                };
                (Some(t), acct.id)
            }
            other => {
                return Err(bad_input(
                    "properties.recoveryType",
                    format!("recoveryType '{other}' is not supported for file shares: use OriginalLocation or AlternateLocation."),
                ))
            }
        };
        Ok((
            RestoreTarget::Tree {
                target,
                paths,
                conflict,
            },
            bag,
            resource,
        ))
    }
}

/// The rendering of a job for the wire, per its type: VM jobs carry task times and durations;
/// storage jobs' tasks are `{taskId, status}` as the spec has them.
/// Writes an item's `recoveryPointCount` and `oldestRecoveryPoint` from its recovery point rows.
/// A recovery point as clients see it: its stored body, with the immutability its vault gives it
/// (`recoveryPointProperties.immutabilityProperties`; immutability follows the point's own expiry,
/// "as per policy": an immutable point's `expiryTime` is the point's, as Azure's RecoveryPoints_Get
/// example shows), and a VM point's `isPrivateAccessEnabledOnAnyDisk` (always false: rsvault's
/// disks have no private access), which Azure always sends.
fn rendered_point(vault: &ResourceRow, rp: RecoveryPointRow) -> Value {
    let mut b = rp.body;
    let immutable = crate::immutability::Immutability::of(&vault.body).enforced();
    if let Some(props) = b
        .pointer_mut("/properties/recoveryPointProperties")
        .and_then(Value::as_object_mut)
    {
        let mut imm = json!({"isImmutable": immutable});
        if let Some(expiry) = props.get("expiryTime").filter(|_| immutable) {
            imm["expiryTime"] = expiry.clone();
        }
        props.insert("immutabilityProperties".into(), imm);
    }
    if let Some(props) = b.get_mut("properties").and_then(Value::as_object_mut) {
        if props.get("objectType").and_then(Value::as_str) == Some("IaasVMRecoveryPoint") {
            props.entry("isPrivateAccessEnabledOnAnyDisk").or_insert(json!(false));
        }
    }
    b
}

pub(crate) fn count_points(
    db: &rsvault_store::Db,
    item: &mut ResourceRow,
) -> std::result::Result<(), rsvault_store::StoreError> {
    let rps = db.recovery_points(&item.id)?;
    let x = &mut item.body["properties"]["extendedInfo"];
    x["recoveryPointCount"] = json!(rps.len());
    match rps.last() {
        Some(oldest) => x["oldestRecoveryPoint"] = json!(time::timestamp(oldest.time)),
        None => {
            if let Some(o) = x.as_object_mut() {
                o.remove("oldestRecoveryPoint");
            }
        }
    }
    Ok(())
}

pub(crate) fn render_tasks(props: &mut Value, now: DateTime<Utc>) {
    let storage = props["jobType"].as_str() != Some("AzureIaaSVMJob");
    if storage {
        if let Some(x) = props.get_mut("extendedInfo").and_then(Value::as_object_mut) {
            x.remove("progressPercentage");
            x.remove("estimatedRemainingDuration");
        }
    }
    let Some(list) = props
        .pointer_mut("/extendedInfo/tasksList")
        .and_then(Value::as_array_mut)
    else {
        return;
    };
    for t in list.iter_mut().filter_map(Value::as_object_mut) {
        if storage {
            t.retain(|k, _| k == "taskId" || k == "status");
            continue;
        }
        let at = |k: &str| t.get(k).and_then(Value::as_str).and_then(parse_time);
        let d = match (at("startTime"), at("endTime")) {
            (Some(s), Some(e)) => e - s,
            (Some(s), None) => now - s,
            _ => chrono::Duration::zero(),
        };
        t.insert("duration".into(), json!(time::iso_duration(d)));
    }
}

/// Writes a file a restore leaves beside the disks: a new name only (an existing file or link
/// there is refused, never written through), private (0600) as the restored images are.
fn write_new_private(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::internal(format!("{}: {e}", path.display())))?;
    std::io::Write::write_all(&mut f, bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| Error::internal(format!("{}: {e}", path.display())))
}
