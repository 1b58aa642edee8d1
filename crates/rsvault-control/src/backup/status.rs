//! Subscription-level questions about a resource's protection:
//! `locations/{region}/backupStatus` (seed `000_…`), `backupValidateFeatures` and
//! `backupPreValidateProtection`.
//!
//! These look across every vault of the subscription: a resource is protected when some vault holds a
//! protected item whose `sourceResourceId` is the resource (and, for file shares, whose share is the
//! one named by `poLogicalName`). Soft-deleted items still count: their data is in the vault.

use super::protection::{protected_in, registered_in};
use super::{vault_of, ContainerName, PROTECTED_ITEM_TYPE};
use crate::{body, Control, Error, Result};
use serde_json::{json, Value};

const RESOURCE_TYPES: &[&str] = &[
    "Invalid",
    "VM",
    "FileFolder",
    "AzureSqlDb",
    "SQLDB",
    "Exchange",
    "Sharepoint",
    "VMwareVM",
    "SystemState",
    "Client",
    "GenericDataSource",
    "SQLDataBase",
    "AzureFileShare",
    "SAPHanaDatabase",
    "SAPAseDatabase",
    "SAPHanaDBInstance",
];

fn input_error(message: impl Into<String>) -> Error {
    Error::Invalid {
        code: "BMSUserErrorInvalidInput",
        message: message.into(),
        target: None,
    }
}

impl Control {
    /// `POST /subscriptions/{s}/providers/Microsoft.RecoveryServices/locations/{region}/backupStatus`.
    pub fn backup_status(&self, sub: &str, _region: &str, req: &Value) -> Result<Value> {
        self.subscription_row(sub)?;
        let m = body::object(req)?;
        let resource_id = body::opt_str(m, "resourceId", "")?
            .filter(|s| !s.is_empty())
            .ok_or_else(|| input_error("The 'resourceId' of the resource whose backup status is asked is required."))?;
        rsvault_core::ids::ResourceId::parse(resource_id)?;
        let ty = body::opt_enum(m, "resourceType", "", RESOURCE_TYPES)?.unwrap_or("VM");
        let logical = body::opt_str(m, "poLogicalName", "")?;
        let (items, containers) = self.subscription_backups(sub)?;
        let item = protected_in(&items, resource_id, logical);
        // The container registered for the resource, in any vault (file shares: the storage account's).
        let container = registered_in(&containers, resource_id);
        let mut out = json!({"protectionStatus": "NotProtected"});
        if ty == "AzureFileShare" {
            out["acquireStorageAccountLock"] = json!("NotAcquire");
        }
        if let Some(c) = container {
            let n = self.store.read(|db| db.count_below(&c.id, PROTECTED_ITEM_TYPE))?;
            out["vaultId"] = json!(vault_of(&c.id));
            out["fabricName"] = json!("Azure");
            out["containerName"] = json!(lower_type_prefix(&c.name));
            out["registrationStatus"] = json!("Registered");
            out["protectedItemsCount"] = json!(n);
            if let Some(lock) = c.body.pointer("/properties/acquireStorageAccountLock") {
                out["acquireStorageAccountLock"] = lock.clone();
            }
        }
        if let Some(i) = item {
            let p = &i.body["properties"];
            out["protectionStatus"] = json!("Protected");
            out["vaultId"] = json!(vault_of(&i.id));
            out["fabricName"] = json!("Azure");
            out["protectedItemName"] = json!(lower_type_prefix(&i.name));
            out["policyName"] = p["policyName"].clone();
            out["errorCode"] = json!("Success");
            out["errorMessage"] = json!("");
            if out.get("containerName").is_none() {
                let parent = i.parent_key.as_deref().unwrap_or_default();
                let cname = parent.rsplit('/').next().unwrap_or_default();
                out["containerName"] = json!(cname);
            }
        }
        Ok(out)
    }

    /// `POST …/locations/{region}/backupValidateFeatures`: rsvault backs up VMs of any Azure size
    /// (its VMs are disk images, so no size limits what it can read); a `vmSize` that is not an
    /// Azure size name is a size Azure does not know, and Azure answers `NotSupported` for it.
    pub fn validate_features(&self, sub: &str, req: &Value) -> Result<Value> {
        self.subscription_row(sub)?;
        let m = body::object(req)?;
        let ty = body::opt_str(m, "featureType", "")?.unwrap_or_default();
        if !ty.eq_ignore_ascii_case("AzureVMResourceBackup") && !ty.eq_ignore_ascii_case("AzureBackupGoals") {
            return Err(input_error(format!(
                "featureType '{ty}' is not supported; use AzureVMResourceBackup or AzureBackupGoals."
            )));
        }
        let size = body::opt_str(m, "vmSize", "")?;
        let status = if size.is_none_or(is_azure_vm_size) {
            "Supported"
        } else {
            "NotSupported"
        };
        Ok(json!({"supportStatus": status}))
    }

    /// `POST …/locations/{region}/backupPreValidateProtection`: would enabling protection of this VM in
    /// this vault work?
    pub fn pre_validate_protection(&self, sub: &str, req: &Value) -> Result<Value> {
        self.subscription_row(sub)?;
        let m = body::object(req)?;
        let resource_id =
            body::opt_str(m, "resourceId", "")?.ok_or_else(|| input_error("'resourceId' is required."))?;
        let rid = rsvault_core::ids::ResourceId::parse(resource_id)?;
        let vault_id = body::opt_str(m, "vaultId", "")?.ok_or_else(|| input_error("'vaultId' is required."))?;
        let ty = body::opt_str(m, "resourceType", "")?.unwrap_or("VM");
        if !ty.eq_ignore_ascii_case("VM") {
            return Err(input_error(format!(
                "Pre-validation is available for VMs; resourceType '{ty}' is not."
            )));
        }
        let rg = rid.resource_group.clone().unwrap_or_default();
        let vm = rid.name().unwrap_or_default().to_string();
        let c = ContainerName::Vm {
            rg: rg.clone(),
            vm: vm.clone(),
        };
        let mut out = json!({
            "containerName": c.short(),
            "protectedItemName": format!("vm;iaasvmcontainerv2;{rg};{vm}"),
        });
        let found = self.vm_row(sub, &rg, &vm).and_then(|row| self.vm_with_disks(row));
        if let Err(e) = found {
            out["status"] = json!("Failed");
            out["errorCode"] = json!("UserErrorVmNotFound");
            out["errorMessage"] = json!(e.to_string());
            out["recommendation"] = json!("Declare the VM with readable disk images before protecting it.");
            return Ok(out);
        }
        let (items, _) = self.subscription_backups(sub)?;
        if let Some(other) = protected_in(&items, resource_id, None) {
            let owner = vault_of(&other.id);
            if !owner.eq_ignore_ascii_case(vault_id) {
                out["status"] = json!("Failed");
                out["errorCode"] = json!("BMSUserErrorAlreadyProtected");
                out["errorMessage"] = json!(format!("The VM is already protected by the vault '{owner}'."));
                out["recommendation"] = json!("Stop protection in that vault, or use that vault.");
                return Ok(out);
            }
        }
        out["status"] = json!("Supported");
        Ok(out)
    }
}

/// Azure answers backupStatus with the type prefix of container and item names in lower case
/// (`iaasvmcontainer;iaasvmcontainerv2;testRg;testVm`, `vm;iaasvmcontainerv2;testRg;testVm`,
/// `azurefileshare;docs`) and keeps the case of group and resource names.
fn lower_type_prefix(name: &str) -> String {
    let parts: Vec<&str> = name.split(';').collect();
    let keep = if parts.len() >= 4 {
        parts.len() - 2
    } else {
        parts.len().saturating_sub(1)
    };
    parts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            if i < keep {
                p.to_ascii_lowercase()
            } else {
                p.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(";")
}

/// An Azure VM size name: a tier (`Standard` or `Basic`), `_`, then a family letter and size
/// (`Standard_D2s_v3`, `Standard_DS1_v2`, `Basic_A0`, `Standard_M416ms_v2`, `Standard_E64-32s_v3`).
pub(crate) fn is_azure_vm_size(size: &str) -> bool {
    let Some((tier, rest)) = size.split_once('_') else {
        return false;
    };
    let tier_ok = tier.eq_ignore_ascii_case("Standard") || tier.eq_ignore_ascii_case("Basic");
    tier_ok
        && rest.starts_with(|c: char| c.is_ascii_alphabetic())
        && rest.chars().any(|c| c.is_ascii_digit())
        && rest.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        && !rest.ends_with(['_', '-'])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_names_lower_the_type_prefix_only() {
        assert_eq!(
            lower_type_prefix("IaasVMContainer;iaasvmcontainerv2;testRg;testVm"),
            "iaasvmcontainer;iaasvmcontainerv2;testRg;testVm"
        );
        assert_eq!(
            lower_type_prefix("VM;iaasvmcontainerv2;testRg;testVm"),
            "vm;iaasvmcontainerv2;testRg;testVm"
        );
        assert_eq!(lower_type_prefix("AzureFileShare;docs"), "azurefileshare;docs");
    }

    /// Issue 16: `backupValidateFeatures` answered Supported for any `vmSize`. A size Azure lists is
    /// Supported (rsvault reads disk images, whatever the VM's size); a name that is no Azure size is
    /// one Azure does not know, and NotSupported.
    #[test]
    fn validate_features_knows_azure_vm_size_names() {
        for (size, known) in [
            ("Standard_D2s_v3", true),
            ("Standard_DS1_v2", true),
            ("Standard_A1", true),
            ("Basic_A0", true),
            ("Standard_E64-32s_v3", true),
            ("Standard_M416ms_v2", true),
            ("standard_d2s_v3", true),
            ("", false),
            ("D2s_v3", false),
            ("Standard_", false),
            ("Standard_Potato", false),
            ("Premium_D2", false),
            ("Standard_D2 ", false),
            ("Standard_D2_", false),
            ("huge", false),
        ] {
            assert_eq!(is_azure_vm_size(size), known, "{size:?}");
        }
    }
}
