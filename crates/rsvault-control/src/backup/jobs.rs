//! Backup job records (`…/backupJobs/{job}`): one per configure-backup, disable-backup, delete-data,
//! undelete, backup and restore action, stored in the `jobs` table in the same transaction as the
//! action they report.
//!
//! Jobs created by protection changes complete with the action; jobs of data-plane work (backup,
//! restore) are created `InProgress` and updated by the job engine.

use super::JOB_TYPE;
use crate::{Control, Error, Result};
use chrono::{DateTime, Utc};
use rsvault_core::time;
use rsvault_store::{JobRow, ResourceRow};
use serde_json::{json, Map, Value};

/// What a new job is about.
#[derive(Debug, Clone)]
pub struct NewJob<'a> {
    /// `ConfigureBackup`, `DisableBackup`, `DeleteBackupData`, `Undelete`, `Backup`, `Restore`, `Register` …
    pub operation: &'a str,
    /// `AzureIaasVM` or `AzureStorage`.
    pub backup_management_type: &'a str,
    /// The VM or share name.
    pub entity: &'a str,
    /// `iaasvmcontainerv2;rg;vm` or the storage container's short name.
    pub container: &'a str,
    pub property_bag: Map<String, Value>,
}

/// The `jobType` discriminator for a backup management type.
pub fn job_type(bmt: &str) -> &'static str {
    match bmt {
        "AzureStorage" => "AzureStorageJob",
        "AzureWorkload" => "AzureWorkloadJob",
        _ => "AzureIaaSVMJob",
    }
}

impl Control {
    /// A completed job (start = end = now) recording an action that finished with the request.
    pub(crate) fn completed_job(&self, vault: &ResourceRow, j: &NewJob) -> JobRow {
        let now = self.now();
        let name = uuid::Uuid::new_v4().to_string();
        let mut props = json!({
            "jobType": job_type(j.backup_management_type),
            "entityFriendlyName": j.entity,
            "backupManagementType": j.backup_management_type,
            "operation": j.operation,
            "status": "Completed",
            "startTime": time::timestamp(now),
            "endTime": time::timestamp(now),
            "duration": time::iso_duration(chrono::Duration::zero()),
            "activityId": uuid::Uuid::new_v4().to_string(),
            "extendedInfo": {"tasksList": [], "propertyBag": j.property_bag},
        });
        if j.backup_management_type == "AzureStorage" {
            props["storageAccountName"] = json!(j.container.rsplit(';').next().unwrap_or_default());
            props["storageAccountVersion"] = json!("Storage");
        } else {
            props["containerName"] = json!(j.container);
            props["virtualMachineVersion"] = json!("Compute");
        }
        JobRow {
            id: format!("{}/backupJobs/{name}", vault.id),
            vault_key: vault.id.to_ascii_lowercase(),
            name,
            operation: j.operation.to_string(),
            status: "Completed".into(),
            backup_management_type: j.backup_management_type.to_string(),
            entity: j.entity.to_string(),
            start: now,
            end: Some(now),
            body: props,
        }
    }

    /// The wire body of a job; a running job's `duration` grows with the clock, as the live service's does.
    pub fn job_body(&self, j: &JobRow) -> Value {
        let mut props = j.body.clone();
        let end: DateTime<Utc> = j.end.unwrap_or_else(|| self.now());
        props["duration"] = json!(time::iso_duration(end - j.start));
        json!({"id": j.id, "name": j.name, "type": JOB_TYPE, "properties": props})
    }

    /// `GET …/backupJobs/{job}`.
    pub fn get_job(&self, sub: &str, rg: &str, vault: &str, name: &str) -> Result<Value> {
        let v = self.vault_row(sub, rg, vault)?;
        let id = format!("{}/backupJobs/{name}", v.id);
        let j = self.store.read(|db| db.job(&id))?.ok_or_else(|| Error::NotFound {
            code: "BMSUserErrorJobNotFound",
            message: format!("The job '{name}' was not found in vault '{vault}'."),
        })?;
        Ok(self.job_body(&j))
    }
}
