//! Azure Backup inside a vault: the names Azure gives workloads, and the shared plumbing of the
//! backup resources (operations, rendering).
//!
//! Submodules: [`policies`] (backup policies and Azure's defaults), [`protection`] (discovery,
//! containers, protectable and protected items), [`jobs`] (job records), [`status`] (`backupStatus`,
//! `backupValidateFeatures`, `backupPreValidateProtection`), [`config`] (vault backup, storage and
//! encryption configuration, usage summaries), [`recovery`] (trigger backup, recovery points,
//! restore, and what those jobs do).
//!
//! Every backup resource is a row of the generic resource table below its vault's id, so deleting a
//! vault deletes them. Ids are built from the vault's stored id (the casing it was created with).
//! Container and item names are parsed from any form clients send (`IaasVMContainer;iaasvmcontainerv2;rg;vm`,
//! the short `iaasvmcontainerv2;rg;vm`, any casing) and stored under Azure's canonical form, so
//! every spelling reaches the same resource.
//!
//! *Architecture Invariant*: every accepted backup action writes one durable operation record whose
//! `scope_key` is its vault's key, so the vault-level `backupOperations/{op}` URL finds all of them,
//! in the same store transaction as the change it reports.

pub mod config;
pub mod ilr;
pub mod jobs;
pub mod policies;
pub mod protection;
pub mod recovery;
pub mod status;
pub mod validate;

use crate::{Control, Error, Result};
use rsvault_core::time;
use rsvault_store::{OperationRow, ResourceRow};
use serde_json::{json, Value};

pub const POLICY_TYPE: &str = "Microsoft.RecoveryServices/vaults/backupPolicies";
pub const CONTAINER_TYPE: &str = "Microsoft.RecoveryServices/vaults/backupFabrics/protectionContainers";
pub use crate::vaults::PROTECTED_ITEM_TYPE;
pub const PROTECTABLE_ITEM_TYPE: &str =
    "Microsoft.RecoveryServices/vaults/backupFabrics/protectionContainers/protectableItems";
pub const JOB_TYPE: &str = "Microsoft.RecoveryServices/vaults/backupJobs";
/// The only fabric rsvault has.
pub const FABRIC: &str = "Azure";

/// What a container holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContainerName {
    /// A VM's container: `IaasVMContainer;iaasvmcontainerv2;{rg};{vm}`.
    Vm { rg: String, vm: String },
    /// A storage account's container: `StorageContainer;Storage;{rg};{account}`.
    Storage { rg: String, account: String },
}

impl ContainerName {
    /// Parses every form clients send: full or short, any casing.
    pub fn parse(s: &str) -> Result<ContainerName> {
        let parts: Vec<&str> = s.split(';').collect();
        let lower: Vec<String> = parts.iter().map(|p| p.to_ascii_lowercase()).collect();
        let l: Vec<&str> = lower.iter().map(String::as_str).collect();
        let named = |rg: &str, n: &str| !rg.is_empty() && !n.is_empty();
        match l.as_slice() {
            ["iaasvmcontainer", "iaasvmcontainerv2", _, _] if named(parts[2], parts[3]) => Ok(ContainerName::Vm {
                rg: parts[2].into(),
                vm: parts[3].into(),
            }),
            ["iaasvmcontainerv2", _, _] if named(parts[1], parts[2]) => Ok(ContainerName::Vm {
                rg: parts[1].into(),
                vm: parts[2].into(),
            }),
            ["storagecontainer", "storage", _, _] if named(parts[2], parts[3]) => Ok(ContainerName::Storage {
                rg: parts[2].into(),
                account: parts[3].into(),
            }),
            ["storage", _, _] if named(parts[1], parts[2]) => Ok(ContainerName::Storage {
                rg: parts[1].into(),
                account: parts[2].into(),
            }),
            _ => Err(Error::Invalid {
                code: "BMSUserErrorInvalidInput",
                message: format!("The container name '{s}' is not valid. Expected 'IaasVMContainer;iaasvmcontainerv2;{{resourceGroup}};{{vmName}}' or 'StorageContainer;Storage;{{resourceGroup}};{{storageAccount}}'."),
                target: Some("containerName".into()),
            }),
        }
    }

    /// Azure's full name (`IaasVMContainer;iaasvmcontainerv2;rg;vm`).
    pub fn canonical(&self) -> String {
        match self {
            ContainerName::Vm { rg, vm } => format!("IaasVMContainer;iaasvmcontainerv2;{rg};{vm}"),
            ContainerName::Storage { rg, account } => format!("StorageContainer;Storage;{rg};{account}"),
        }
    }

    /// The form items carry in `properties.containerName` (`iaasvmcontainerv2;rg;vm`).
    pub fn short(&self) -> String {
        match self {
            ContainerName::Vm { rg, vm } => format!("iaasvmcontainerv2;{rg};{vm}"),
            ContainerName::Storage { rg, account } => format!("Storage;{rg};{account}"),
        }
    }

    pub fn backup_management_type(&self) -> &'static str {
        match self {
            ContainerName::Vm { .. } => "AzureIaasVM",
            ContainerName::Storage { .. } => "AzureStorage",
        }
    }

    pub fn resource_group(&self) -> &str {
        match self {
            ContainerName::Vm { rg, .. } | ContainerName::Storage { rg, .. } => rg,
        }
    }

    pub fn friendly_name(&self) -> &str {
        match self {
            ContainerName::Vm { vm, .. } => vm,
            ContainerName::Storage { account, .. } => account,
        }
    }
}

/// A protected item's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ItemName {
    /// `VM;iaasvmcontainerv2;{rg};{vm}`.
    Vm { rg: String, vm: String },
    /// `AzureFileShare;{share}`.
    Share { share: String },
}

impl ItemName {
    pub fn parse(s: &str) -> Result<ItemName> {
        let parts: Vec<&str> = s.split(';').collect();
        let lower: Vec<String> = parts.iter().map(|p| p.to_ascii_lowercase()).collect();
        let l: Vec<&str> = lower.iter().map(String::as_str).collect();
        match l.as_slice() {
            ["vm", "iaasvmcontainerv2", _, _] if !parts[2].is_empty() && !parts[3].is_empty() => Ok(ItemName::Vm {
                rg: parts[2].into(),
                vm: parts[3].into(),
            }),
            ["azurefileshare", _] if !parts[1].is_empty() => Ok(ItemName::Share {
                share: parts[1].into(),
            }),
            _ => Err(Error::Invalid {
                code: "BMSUserErrorInvalidInput",
                message: format!("The protected item name '{s}' is not valid. Expected 'VM;iaasvmcontainerv2;{{resourceGroup}};{{vmName}}' or 'AzureFileShare;{{shareName}}'."),
                target: Some("protectedItemName".into()),
            }),
        }
    }

    pub fn canonical(&self) -> String {
        match self {
            ItemName::Vm { rg, vm } => format!("VM;iaasvmcontainerv2;{rg};{vm}"),
            ItemName::Share { share } => format!("AzureFileShare;{share}"),
        }
    }
}

/// The fabric must be `Azure`.
pub fn check_fabric(fabric: &str) -> Result<()> {
    if fabric.eq_ignore_ascii_case(FABRIC) {
        Ok(())
    } else {
        Err(Error::NotFound {
            code: "BMSUserErrorFabricNotFound",
            message: format!("The fabric '{fabric}' was not found. rsvault has one fabric: 'Azure'."),
        })
    }
}

/// The vault id of a container or item id.
pub(crate) fn vault_of(id: &str) -> &str {
    id.split("/backupFabrics/").next().unwrap_or_default()
}

pub fn container_id(vault_id: &str, c: &ContainerName) -> String {
    format!(
        "{vault_id}/backupFabrics/{FABRIC}/protectionContainers/{}",
        c.canonical()
    )
}

pub fn item_id(vault_id: &str, c: &ContainerName, i: &ItemName) -> String {
    format!("{}/protectedItems/{}", container_id(vault_id, c), i.canonical())
}

pub fn policy_id(vault_id: &str, name: &str) -> String {
    format!("{vault_id}/backupPolicies/{name}")
}

/// What an operation's result URL answers.
#[derive(Debug, Clone, PartialEq)]
pub enum OperationOutcome {
    /// Still running: 202.
    Running,
    /// Done: the target resource as it is now (200), or nothing (204).
    Done(Option<Value>),
    /// Failed: the status body, with its `error`.
    Failed(Value),
}

impl Control {
    /// A new operation record for an action in a vault that completed in the same transaction.
    pub(crate) fn finished_operation(
        &self,
        vault: &ResourceRow,
        kind: &str,
        target: Option<&str>,
        properties: Option<Value>,
    ) -> OperationRow {
        let now = self.now();
        OperationRow {
            id: uuid::Uuid::new_v4().to_string(),
            scope_key: vault.id.to_ascii_lowercase(),
            kind: kind.to_string(),
            status: "Succeeded".into(),
            start: now,
            end: Some(now),
            error: None,
            properties,
            target: target.map(String::from),
        }
    }

    /// The body of the backup operation status URLs (`backupOperations/{op}`, `operationsStatus/{op}`):
    /// `id` and `name` are the operation id, an unfinished `endTime` is `0001-01-01T00:00:00` as the
    /// live service writes it.
    pub fn backup_operation_status_body(o: &OperationRow) -> Value {
        let mut v = json!({
            "id": o.id,
            "name": o.id,
            "status": o.status,
            "startTime": time::timestamp(o.start),
            "endTime": o.end.map(time::timestamp).unwrap_or_else(|| "0001-01-01T00:00:00".into()),
        });
        if let Some(e) = &o.error {
            v["error"] = e.clone();
        }
        if let Some(p) = &o.properties {
            v["properties"] = p.clone();
        }
        v
    }

    /// A backup operation of a vault, for any of its status or result URLs.
    pub fn backup_operation(&self, sub: &str, rg: &str, vault: &str, op: &str) -> Result<OperationRow> {
        self.vault_row(sub, rg, vault)?;
        self.vault_operation(sub, rg, vault, op)
    }

    /// What a result URL answers for an operation: running, failed, or done with its target as it is now.
    pub fn backup_operation_outcome(&self, o: &OperationRow) -> Result<OperationOutcome> {
        Ok(match o.status.as_str() {
            "InProgress" => OperationOutcome::Running,
            // A backup's or restore's result is its job; the result URL has no body to give.
            "Succeeded"
                if matches!(
                    o.kind.as_str(),
                    "Backup" | "Restore" | "CancelJob" | "ProvisionInstantItemRecovery" | "RevokeInstantItemRecovery"
                ) =>
            {
                OperationOutcome::Done(None)
            }
            "Succeeded" => OperationOutcome::Done(match &o.target {
                Some(id) => self.store.read(|db| db.resource(id))?.map(|r| self.render(&r)),
                None => None,
            }),
            _ => OperationOutcome::Failed(Self::backup_operation_status_body(o)),
        })
    }

    /// The wire body of a stored backup resource, with the fields computed at read time.
    pub(crate) fn render(&self, row: &ResourceRow) -> Value {
        if row.type_key == POLICY_TYPE.to_ascii_lowercase() {
            self.render_policy(row)
        } else if row.type_key == PROTECTED_ITEM_TYPE.to_ascii_lowercase() {
            self.render_item(row)
        } else if row.type_key == CONTAINER_TYPE.to_ascii_lowercase() {
            self.render_container(row)
        } else {
            row.body.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_names_in_every_form_reach_one_canonical_name() {
        let cases = [
            (
                "IaasVMContainer;iaasvmcontainerv2;RG;vm1",
                "IaasVMContainer;iaasvmcontainerv2;RG;vm1",
            ),
            (
                "iaasvmcontainer;iaasvmcontainerv2;RG;vm1",
                "IaasVMContainer;iaasvmcontainerv2;RG;vm1",
            ),
            ("iaasvmcontainerv2;RG;vm1", "IaasVMContainer;iaasvmcontainerv2;RG;vm1"),
            ("StorageContainer;Storage;rg;acct", "StorageContainer;Storage;rg;acct"),
            ("storagecontainer;storage;rg;acct", "StorageContainer;Storage;rg;acct"),
        ];
        for (given, want) in cases {
            assert_eq!(ContainerName::parse(given).unwrap().canonical(), want, "{given}");
        }
        for bad in [
            "",
            "vm1",
            "IaasVMContainer;iaasvmcontainerv2;;vm",
            "Foo;a;b;c",
            "iaasvmcontainerv2;rg",
        ] {
            assert_eq!(
                ContainerName::parse(bad).unwrap_err().code(),
                "BMSUserErrorInvalidInput",
                "{bad}"
            );
        }
    }

    #[test]
    fn item_names_parse() {
        assert_eq!(
            ItemName::parse("vm;iaasvmcontainerv2;rg;VM1").unwrap().canonical(),
            "VM;iaasvmcontainerv2;rg;VM1"
        );
        assert_eq!(
            ItemName::parse("azurefileshare;docs").unwrap().canonical(),
            "AzureFileShare;docs"
        );
        assert!(ItemName::parse("VM;rg;vm").is_err());
        assert!(ItemName::parse("AzureFileShare;").is_err());
    }
}
