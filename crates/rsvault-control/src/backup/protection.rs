//! Discovery and protection: `refreshContainers`, protectable items and containers, protection
//! containers (register / get / list / unregister / inquire) and protected items (enable, change
//! policy, stop, delete with soft delete, undelete).
//!
//! Discovery is live: the inventory (VMs, storage accounts, shares) is the source of truth, so
//! `refreshContainers` has nothing to wait for and protectable items always reflect it — except
//! libvirt domains, which a refresh declares as VMs from each granted connection
//! (`Control::discover_libvirt`) before it answers. A VM's
//! container is registered when protection is first enabled; a storage account's container is
//! registered explicitly (PUT), as Azure requires for file shares. Items clients name themselves
//! without discovery (Terraform) work the same.
//!
//! Every change here completes within its request: one store transaction writes the resource, its job
//! and its operation record, and the 202 the API answers points at an operation that is already
//! `Succeeded`.

use super::jobs::NewJob;
use super::{
    check_fabric, container_id, item_id, vault_of, ContainerName, ItemName, CONTAINER_TYPE, PROTECTABLE_ITEM_TYPE,
    PROTECTED_ITEM_TYPE,
};
use crate::immutability::{self, retention_cut, Immutability};
use crate::inventory::{ACCOUNT_TYPE, SHARE_TYPE, VM_TYPE};
use crate::{body, Caller, Control, Error, Result};
use rand::Rng;
use rsvault_core::odata::Filter;
use rsvault_core::time;
use rsvault_store::{JobRow, OperationRow, Page, ResourceRow};
use serde_json::{json, Map, Value};
use std::borrow::Cow;

fn invalid(code: &'static str, message: impl Into<String>) -> Error {
    Error::Invalid {
        code,
        message: message.into(),
        target: None,
    }
}

fn configure_error(message: impl Into<String>) -> Error {
    invalid("BMSUserErrorInvalidConfigureProtectionRequest", message)
}

fn eq_ci(a: Option<&str>, b: &str) -> bool {
    a.is_some_and(|a| a.eq_ignore_ascii_case(b))
}

/// Soft delete as the vault is configured: `(enabled, retention days)`.
fn soft_delete(vault: &ResourceRow) -> (bool, i64) {
    let sd = vault.body.pointer("/properties/securitySettings/softDeleteSettings");
    let state = sd
        .and_then(|s| s.get("softDeleteState"))
        .and_then(Value::as_str)
        .unwrap_or("Enabled");
    let days = sd
        .and_then(|s| s.get("softDeleteRetentionPeriodInDays"))
        .and_then(Value::as_i64)
        .unwrap_or(14);
    (
        state.eq_ignore_ascii_case("Enabled") || state.eq_ignore_ascii_case("AlwaysON"),
        days,
    )
}

/// The workload behind a container and item, resolved against the inventory.
struct Workload {
    /// The id clients know it by (`sourceResourceId`): the VM, or the storage account for shares.
    source_id: String,
    friendly: String,
    bmt: &'static str,
    item_type: &'static str,
    workload_type: &'static str,
}

/// What the items list reads of a stored item body: the fields its `$filter` compares and whether the
/// item is soft-deleted; the rest of the text is skipped, not built.
#[derive(serde::Deserialize)]
struct ItemBody<'a> {
    #[serde(borrow)]
    properties: ItemFields<'a>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct ItemFields<'a> {
    #[serde(borrow)]
    backup_management_type: Option<Cow<'a, str>>,
    #[serde(borrow)]
    workload_type: Option<Cow<'a, str>>,
    #[serde(borrow)]
    policy_name: Option<Cow<'a, str>>,
    #[serde(borrow)]
    friendly_name: Option<Cow<'a, str>>,
    #[serde(borrow)]
    protection_status: Option<Cow<'a, str>>,
    #[serde(borrow)]
    protection_state: Option<Cow<'a, str>>,
    #[serde(rename = "deferredDeleteTimeInUTC", borrow)]
    deferred_delete_time_in_utc: Option<Cow<'a, str>>,
}

impl Control {
    /// The vault, container and item a protected-item URL names.
    fn item_ref(
        &self,
        sub: &str,
        rg: &str,
        vault: &str,
        fabric: &str,
        container: &str,
        item: &str,
    ) -> Result<(ResourceRow, ContainerName, ItemName)> {
        let v = self.fabric_vault(sub, rg, vault, fabric)?;
        Ok((v, ContainerName::parse(container)?, ItemName::parse(item)?))
    }

    fn fabric_vault(&self, sub: &str, rg: &str, vault: &str, fabric: &str) -> Result<ResourceRow> {
        let v = self.vault_row(sub, rg, vault)?;
        check_fabric(fabric)?;
        Ok(v)
    }

    /// `POST backupFabrics/Azure/refreshContainers`: discovery is live, so the operation is done at once.
    pub fn refresh_containers(
        &self,
        sub: &str,
        rg: &str,
        vault: &str,
        fabric: &str,
        filter: Option<&str>,
    ) -> Result<String> {
        let v = self.fabric_vault(sub, rg, vault, fabric)?;
        let f = Filter::parse(filter.unwrap_or_default())?;
        f.only(&["backupManagementType"], &[])?;
        // The granted libvirt connections' domains become VMs (the rest of the inventory is live).
        self.discover_libvirt(sub, v.body["location"].as_str().unwrap_or("westus"))?;
        let op = self.finished_operation(&v, "RefreshContainers", None, None);
        self.store.write(|db| db.put_operation(&op))?;
        Ok(op.id)
    }

    /// Every protected item and every container of a subscription, read once for a lookup across vaults.
    pub(crate) fn subscription_backups(&self, sub: &str) -> Result<(Vec<ResourceRow>, Vec<ResourceRow>)> {
        self.store
            .read(|db| {
                Ok::<_, rsvault_store::StoreError>((
                    db.all_of_type(sub, PROTECTED_ITEM_TYPE)?,
                    db.all_of_type(sub, CONTAINER_TYPE)?,
                ))
            })
            .map_err(Into::into)
    }

    /// `GET backupProtectableItems`: VMs in the vault's region and shares of registered storage accounts
    /// that no vault protects yet.
    pub fn list_protectable_items(
        &self,
        caller: &Caller,
        sub: &str,
        rg: &str,
        vault: &str,
        filter: Option<&str>,
    ) -> Result<Vec<Value>> {
        let v = self.vault_row(sub, rg, vault)?;
        let f = Filter::parse(filter.unwrap_or_default())?;
        f.only(
            &[
                "backupManagementType",
                "workloadType",
                "friendlyName",
                "serverName",
                "fabricName",
            ],
            &[],
        )?;
        let want = |bmt: &str, wl: &str| {
            f.eq("backupManagementType").is_none_or(|b| b.eq_ignore_ascii_case(bmt))
                && f.eq("workloadType").is_none_or(|w| w.eq_ignore_ascii_case(wl))
        };
        let location = v.body["location"].as_str().unwrap_or_default().to_string();
        let (items, _) = self.subscription_backups(sub)?;
        let mut out = Vec::new();
        if want("AzureIaasVM", "VM") {
            for vm in self.store.read(|db| db.all_of_type(sub, VM_TYPE))? {
                if !eq_ci(vm.body["location"].as_str(), &location) || protected_in(&items, &vm.id, None).is_some() {
                    continue;
                }
                let vm_rg = vm.resource_group.clone().unwrap_or_default();
                let c = ContainerName::Vm {
                    rg: vm_rg.to_ascii_lowercase(),
                    vm: vm.name.to_ascii_lowercase(),
                };
                let item = format!(
                    "vm;iaasvmcontainerv2;{};{}",
                    vm_rg.to_ascii_lowercase(),
                    vm.name.to_ascii_lowercase()
                );
                out.push(json!({
                    "id": format!("{}/protectableItems/{item}", container_id(&v.id, &c)),
                    "name": c.short(),
                    "type": PROTECTABLE_ITEM_TYPE,
                    "properties": {
                        "protectableItemType": VM_TYPE,
                        "virtualMachineId": vm.id,
                        "virtualMachineVersion": "Compute",
                        "resourceGroup": vm_rg,
                        "backupManagementType": "AzureIaasVM",
                        "workloadType": "VM",
                        "friendlyName": vm.name,
                        "protectionState": "NotProtected",
                    },
                }));
            }
        }
        if want("AzureStorage", "AzureFileShare") {
            for c in self.store.read(|db| db.all_below(&v.id, CONTAINER_TYPE))? {
                let Ok(ContainerName::Storage { rg: arg, account }) = ContainerName::parse(&c.name) else {
                    continue;
                };
                let Ok(acct) = self.storage_account_row(sub, &arg, &account) else {
                    continue;
                };
                for share in self
                    .store
                    .read(|db| db.children(&acct.id, Some(SHARE_TYPE), None, usize::MAX / 2))?
                    .items
                {
                    if protected_in(&items, &acct.id, Some(&share.name)).is_some() {
                        continue;
                    }
                    let item = format!("azurefileshare;{}", share.name);
                    // Azure writes the container segment of these ids in lower case (the az CLI
                    // compares it with the container's name lower-cased).
                    let cid = match c.id.rsplit_once('/') {
                        Some((up, name)) => format!("{up}/{}", name.to_ascii_lowercase()),
                        None => c.id.clone(),
                    };
                    out.push(json!({
                        "id": format!("{cid}/protectableItems/{item}"),
                        "name": item,
                        "type": PROTECTABLE_ITEM_TYPE,
                        "properties": {
                            "protectableItemType": "AzureFileShare",
                            "parentContainerFabricId": acct.id,
                            "parentContainerFriendlyName": acct.name,
                            "azureFileShareType": "XSMB",
                            "backupManagementType": "AzureStorage",
                            "workloadType": "AzureFileShare",
                            "friendlyName": share.name,
                            "protectionState": "NotProtected",
                        },
                    }));
                }
            }
        }
        if let Some(name) = f.eq("friendlyName") {
            out.retain(|i| eq_ci(i.pointer("/properties/friendlyName").and_then(Value::as_str), name));
        }
        // Only what the caller may read, as Azure lists it.
        let mut visible = Vec::with_capacity(out.len());
        for i in out {
            let (action, source) = match i.pointer("/properties/virtualMachineId").and_then(Value::as_str) {
                Some(vm) => ("Microsoft.Compute/virtualMachines/read", vm),
                None => (
                    "Microsoft.Storage/storageAccounts/read",
                    i.pointer("/properties/parentContainerFabricId")
                        .and_then(Value::as_str)
                        .unwrap_or("/"),
                ),
            };
            if self.may(caller, action, source)? {
                visible.push(i);
            }
        }
        Ok(visible)
    }

    /// The linked access enabling protection of (or registering) what a container names needs: read
    /// and write on the VM or storage account, named from the container alone (nothing looked up).
    fn check_source_access(
        &self,
        caller: &Caller,
        sub: &str,
        c: &ContainerName,
        action: &str,
        scope: &str,
    ) -> Result<()> {
        let (id, read, write) = match c {
            ContainerName::Vm { rg, vm } => (
                format!("/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Compute/virtualMachines/{vm}"),
                "Microsoft.Compute/virtualMachines/read",
                "Microsoft.Compute/virtualMachines/write",
            ),
            ContainerName::Storage { rg, account } => (
                format!(
                    "/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Storage/storageAccounts/{account}"
                ),
                "Microsoft.Storage/storageAccounts/read",
                "Microsoft.Storage/storageAccounts/write",
            ),
        };
        self.authorize_linked(caller, action, scope, &[(read, &id), (write, &id)])
    }

    /// `GET backupFabrics/Azure/protectableContainers`: storage accounts in the vault's region that no
    /// vault has registered.
    pub fn list_protectable_containers(
        &self,
        sub: &str,
        rg: &str,
        vault: &str,
        fabric: &str,
        filter: Option<&str>,
    ) -> Result<Vec<Value>> {
        let v = self.fabric_vault(sub, rg, vault, fabric)?;
        let f = Filter::parse(filter.unwrap_or_default())?;
        f.only(&["backupManagementType", "workloadType"], &[])?;
        if !f
            .eq("backupManagementType")
            .is_none_or(|b| b.eq_ignore_ascii_case("AzureStorage"))
        {
            return Ok(vec![]);
        }
        let location = v.body["location"].as_str().unwrap_or_default();
        let (_, containers) = self.subscription_backups(sub)?;
        let mut out = Vec::new();
        for acct in self.store.read(|db| db.all_of_type(sub, ACCOUNT_TYPE))? {
            if !eq_ci(acct.body["location"].as_str(), location) || registered_in(&containers, &acct.id).is_some() {
                continue;
            }
            let c = ContainerName::Storage {
                rg: acct.resource_group.clone().unwrap_or_default(),
                account: acct.name.clone(),
            };
            out.push(json!({
                "id": format!("{}/backupFabrics/Azure/protectableContainers/{}", v.id, c.canonical()),
                "name": c.canonical(),
                "type": "Microsoft.RecoveryServices/vaults/backupFabrics/protectableContainers",
                "properties": {
                    "friendlyName": acct.name,
                    "backupManagementType": "AzureStorage",
                    "protectableContainerType": "StorageContainer",
                    "healthStatus": "Healthy",
                    "containerId": acct.id,
                },
            }));
        }
        Ok(out)
    }

    fn container_row(&self, v: &ResourceRow, c: &ContainerName, registered_by: &str) -> ResourceRow {
        let now = self.now();
        let id = container_id(&v.id, c);
        let props = match c {
            ContainerName::Vm { rg, vm } => json!({
                "friendlyName": vm,
                "backupManagementType": "AzureIaasVM",
                "registrationStatus": "Registered",
                "healthStatus": "Healthy",
                "containerType": VM_TYPE,
                "protectableObjectType": VM_TYPE,
                "virtualMachineId": registered_by,
                "virtualMachineVersion": "Compute",
                "resourceGroup": rg,
                "sourceResourceId": registered_by,
            }),
            ContainerName::Storage { account, .. } => json!({
                "friendlyName": account,
                "backupManagementType": "AzureStorage",
                "registrationStatus": "Registered",
                "healthStatus": "Healthy",
                "containerType": "StorageContainer",
                "sourceResourceId": registered_by,
                "acquireStorageAccountLock": "Acquire",
            }),
        };
        ResourceRow {
            body: json!({"id": id, "name": c.canonical(), "type": CONTAINER_TYPE, "properties": props}),
            id,
            subscription: v.subscription.clone(),
            resource_group: v.resource_group.clone(),
            type_key: CONTAINER_TYPE.to_ascii_lowercase(),
            name: c.canonical(),
            parent_key: Some(v.id.to_ascii_lowercase()),
            etag: uuid::Uuid::new_v4().to_string(),
            created: now,
            updated: now,
        }
    }

    /// A container as the spec shapes it: storage containers carry `sourceResourceId` and
    /// `protectedItemCount`; VM containers (`IaaSVMContainer`) have neither, so their stored
    /// `sourceResourceId` (used for lookups) is not shown.
    pub(crate) fn render_container(&self, row: &ResourceRow) -> Value {
        let mut b = row.body.clone();
        if b.pointer("/properties/containerType").and_then(Value::as_str) == Some("StorageContainer") {
            let n = self
                .store
                .read(|db| db.count_below(&row.id, PROTECTED_ITEM_TYPE))
                .unwrap_or(0);
            b["properties"]["protectedItemCount"] = json!(n);
        } else if let Some(p) = b["properties"].as_object_mut() {
            p.remove("sourceResourceId");
        }
        b
    }

    /// `PUT backupFabrics/Azure/protectionContainers/{c}`: registers a storage account (or VM) with the
    /// vault. Returns the operation id.
    #[allow(clippy::too_many_arguments)]
    pub fn register_container(
        &self,
        caller: &Caller,
        sub: &str,
        rg: &str,
        vault: &str,
        fabric: &str,
        container: &str,
        req: &Value,
    ) -> Result<String> {
        let v = self.fabric_vault(sub, rg, vault, fabric)?;
        let c = ContainerName::parse(container)?;
        self.check_source_access(
            caller,
            sub,
            &c,
            "Microsoft.RecoveryServices/Vaults/backupFabrics/protectionContainers/write",
            &container_id(&v.id, &c),
        )?;
        let m = if req.is_null() {
            Map::new()
        } else {
            body::object(req)?.clone()
        };
        let props = body::opt_obj(&m, "properties", "")?.cloned().unwrap_or_default();
        let source = match &c {
            ContainerName::Storage { rg, account } => self.storage_account_row(sub, rg, account).map_err(|_| {
                invalid("BMSUserErrorInvalidContainerRegistrationRequest", format!("The storage account '{account}' in resource group '{rg}' was not found. Declare it (Microsoft.Storage/storageAccounts with the tag rsvault-path) before registering it."))
            })?,
            ContainerName::Vm { rg, vm } => self.vm_row(sub, rg, vm).map_err(|_| {
                invalid("BMSUserErrorInvalidContainerRegistrationRequest", format!("The virtual machine '{vm}' in resource group '{rg}' was not found."))
            })?,
        };
        if let Some(s) = body::opt_str(&props, "sourceResourceId", "properties.")? {
            if !s.eq_ignore_ascii_case(&source.id) {
                return Err(invalid(
                    "BMSUserErrorInvalidContainerRegistrationRequest",
                    format!("sourceResourceId '{s}' does not match the container '{container}'."),
                ));
            }
        }
        let id = container_id(&v.id, &c);
        let (_, containers) = self.subscription_backups(sub)?;
        if let Some(other) = registered_in(&containers, &source.id) {
            if !other.id.eq_ignore_ascii_case(&id) {
                let vault_of = vault_of(&other.id).to_string();
                return Err(invalid(
                    "BMSUserErrorContainerAlreadyRegistered",
                    format!("'{}' is already registered with another Recovery Services vault ({vault_of}). Unregister it there, or choose another resource.", source.name),
                ));
            }
        }
        let mut row = self.container_row(&v, &c, &source.id);
        if let Some(lock) = body::opt_enum(
            &props,
            "acquireStorageAccountLock",
            "properties.",
            &["Acquire", "NotAcquire"],
        )? {
            if matches!(c, ContainerName::Storage { .. }) {
                row.body["properties"]["acquireStorageAccountLock"] = json!(lock);
            }
        }
        if let Some(existing) = self.store.read(|db| db.resource(&id))? {
            row.created = existing.created;
        }
        let op = self.finished_operation(&v, "Register", Some(&row.id), None);
        self.store.write(|db| {
            db.put_resource(&row)?;
            db.put_operation(&op)
        })?;
        Ok(op.id)
    }

    pub fn get_container(&self, sub: &str, rg: &str, vault: &str, fabric: &str, container: &str) -> Result<Value> {
        let v = self.fabric_vault(sub, rg, vault, fabric)?;
        let c = ContainerName::parse(container)?;
        let row = self
            .store
            .read(|db| db.resource(&container_id(&v.id, &c)))?
            .filter(|r| !soft_deleted(r))
            .ok_or_else(|| Error::NotFound {
                code: "BMSUserErrorContainerObjectNotFound",
                message: format!("Container '{container}' is not registered with vault '{vault}'."),
            })?;
        Ok(self.render_container(&row))
    }

    /// `DELETE` a container (unregister): refused while it holds items. False when not registered.
    pub fn unregister_container(
        &self,
        sub: &str,
        rg: &str,
        vault: &str,
        fabric: &str,
        container: &str,
    ) -> Result<bool> {
        let v = self.fabric_vault(sub, rg, vault, fabric)?;
        let c = ContainerName::parse(container)?;
        let id = container_id(&v.id, &c);
        let Some(row) = self.store.read(|db| db.resource(&id))?.filter(|r| !soft_deleted(r)) else {
            return Ok(false);
        };
        let items = self.store.read(|db| db.all_below(&id, PROTECTED_ITEM_TYPE))?;
        let live = items
            .iter()
            .filter(|i| i.body["properties"]["isScheduledForDeferredDelete"].as_bool() != Some(true))
            .count();
        if live > 0 {
            return Err(invalid(
                "BMSUserErrorContainerHasDatasources",
                format!("Container '{container}' has {live} backup item(s). Stop protection and delete the backup data of every item before unregistering it."),
            ));
        }
        if items.is_empty() {
            self.store.write(|db| db.delete_resource(&id))?;
        } else {
            // Only soft-deleted items left: the container is soft-deleted with them (listed by
            // `backupDeletedProtectionContainers`) and goes when the last of them is purged.
            let mut kept = row;
            kept.body["properties"]["registrationStatus"] = json!("SoftDeleted");
            kept.updated = self.now();
            self.store.write(|db| db.put_resource(&kept))?;
        }
        Ok(true)
    }

    /// `GET backupDeletedProtectionContainers`: the vault's soft-deleted containers (unregistered while
    /// their items were soft-deleted), with the same `$filter` as the containers list.
    pub fn list_deleted_containers(
        &self,
        sub: &str,
        rg: &str,
        vault: &str,
        filter: Option<&str>,
    ) -> Result<Vec<Value>> {
        self.containers_where(sub, rg, vault, filter, true)
    }

    /// `POST …/protectionContainers/{c}/inquire`: discovery of workloads in a container is live; the
    /// operation completes at once.
    pub fn inquire_container(&self, sub: &str, rg: &str, vault: &str, fabric: &str, container: &str) -> Result<String> {
        self.get_container(sub, rg, vault, fabric, container)?;
        let v = self.vault_row(sub, rg, vault)?;
        let c = ContainerName::parse(container)?;
        let op = self.finished_operation(&v, "Inquire", Some(&container_id(&v.id, &c)), None);
        self.store.write(|db| db.put_operation(&op))?;
        Ok(op.id)
    }

    /// `GET backupProtectionContainers` with `$filter` on `backupManagementType`, `friendlyName`, `status`.
    pub fn list_containers(&self, sub: &str, rg: &str, vault: &str, filter: Option<&str>) -> Result<Vec<Value>> {
        self.containers_where(sub, rg, vault, filter, false)
    }

    fn containers_where(
        &self,
        sub: &str,
        rg: &str,
        vault: &str,
        filter: Option<&str>,
        deleted: bool,
    ) -> Result<Vec<Value>> {
        let v = self.vault_row(sub, rg, vault)?;
        let f = Filter::parse(filter.unwrap_or_default())?;
        f.only(
            &[
                "backupManagementType",
                "friendlyName",
                "status",
                "containerType",
                "fabricName",
            ],
            &[],
        )?;
        let rows = self.store.read(|db| db.all_below(&v.id, CONTAINER_TYPE))?;
        Ok(rows
            .iter()
            .filter(|r| soft_deleted(r) == deleted)
            .filter(|r| {
                let p = &r.body["properties"];
                f.eq("backupManagementType")
                    .is_none_or(|b| eq_ci(p["backupManagementType"].as_str(), b))
                    && f.eq("friendlyName")
                        .is_none_or(|n| eq_ci(p["friendlyName"].as_str(), n))
                    && f.eq("status")
                        .is_none_or(|s| eq_ci(p["registrationStatus"].as_str(), s))
            })
            .map(|r| self.render_container(r))
            .collect())
    }

    // ---- protected items --------------------------------------------------------------------

    fn workload(&self, sub: &str, c: &ContainerName, i: &ItemName) -> Result<Workload> {
        match (c, i) {
            (ContainerName::Vm { rg, vm }, ItemName::Vm { rg: irg, vm: ivm }) => {
                if !rg.eq_ignore_ascii_case(irg) || !vm.eq_ignore_ascii_case(ivm) {
                    return Err(configure_error("Input for configure protection is not in proper format\r\nPlease ensure that container exists and other parameters are in valid format: the item does not belong to the container."));
                }
                let row = self.vm_row(sub, rg, vm).map_err(|_| {
                    invalid(
                        "BMSUserErrorInvalidSourceResourceId",
                        format!("The virtual machine '/subscriptions/{sub}/resourceGroups/{rg}/providers/{VM_TYPE}/{vm}' was not found. Declare it before protecting it."),
                    )
                })?;
                Ok(Workload { source_id: row.id, friendly: row.name, bmt: "AzureIaasVM", item_type: VM_TYPE, workload_type: "VM" })
            }
            (ContainerName::Storage { rg, account }, ItemName::Share { share }) => {
                let acct = self.storage_account_row(sub, rg, account).map_err(|_| {
                    invalid("BMSUserErrorInvalidSourceResourceId", format!("The storage account '{account}' in resource group '{rg}' was not found."))
                })?;
                let row = self.share_row(sub, rg, account, share).map_err(|_| {
                    invalid("BMSUserErrorInvalidSourceResourceId", format!("The file share '{share}' was not found in storage account '{account}'."))
                })?;
                Ok(Workload { source_id: acct.id, friendly: row.name, bmt: "AzureStorage", item_type: "AzureFileShareProtectedItem", workload_type: "AzureFileShare" })
            }
            _ => Err(configure_error("Input for configure protection is not in proper format\r\nPlease ensure that container exists and other parameters are in valid format: VM items live in IaasVM containers and file shares in storage containers.")),
        }
    }

    /// The policy an item PUT names, checked against the workload.
    fn policy_for(&self, v: &ResourceRow, policy: &str, w: &Workload) -> Result<ResourceRow> {
        let (vault_part, name) = policy.rsplit_once("/backupPolicies/").ok_or_else(|| {
            invalid(
                "BMSUserErrorPolicyNotFound",
                format!("'{policy}' is not a backup policy id."),
            )
        })?;
        if !vault_part.eq_ignore_ascii_case(&v.id) {
            return Err(invalid(
                "BMSUserErrorPolicyNotFound",
                format!("Policy '{policy}' does not belong to vault '{}'.", v.name),
            ));
        }
        let row = self
            .policy_row_of(v, name)
            .map_err(|e| invalid("BMSUserErrorPolicyNotFound", e.to_string()))?;
        let bmt = row
            .body
            .pointer("/properties/backupManagementType")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if !bmt.eq_ignore_ascii_case(w.bmt) {
            return Err(invalid(
                "BMSUserErrorPolicyWorkloadMismatch",
                format!(
                    "Policy '{}' is for {bmt} items; '{}' needs a {} policy.",
                    row.name, w.friendly, w.bmt
                ),
            ));
        }
        Ok(row)
    }

    fn new_item_body(&self, v: &ResourceRow, c: &ContainerName, i: &ItemName, w: &Workload) -> Value {
        let id = item_id(&v.id, c, i);
        let data_id: u64 = rand::thread_rng().gen_range(10_000_000_000_000..99_999_999_999_999);
        let mut props = json!({
            "protectedItemType": w.item_type,
            "backupManagementType": w.bmt,
            "workloadType": w.workload_type,
            "containerName": c.short(),
            "sourceResourceId": w.source_id,
            "friendlyName": w.friendly,
            "protectionStatus": "Healthy",
            "protectionState": "IRPending",
            "lastBackupStatus": "",
            "isScheduledForDeferredDelete": false,
            "kpisHealths": {},
        });
        // The two item types differ (AzureIaaSVMProtectedItem vs AzureFileshareProtectedItem).
        if w.bmt == "AzureIaasVM" {
            props["virtualMachineId"] = json!(w.source_id);
            props["healthStatus"] = json!("Passed");
            props["protectedItemDataId"] = json!(data_id.to_string());
            props["extendedInfo"] = json!({"recoveryPointCount": 0, "policyInconsistent": false});
        } else {
            props["extendedInfo"] =
                json!({"recoveryPointCount": 0, "policyState": "Consistent", "resourceState": "Active"});
        }
        json!({"id": id, "name": i.canonical(), "type": PROTECTED_ITEM_TYPE, "properties": props})
    }

    fn item_row(&self, v: &ResourceRow, c: &ContainerName, body: Value, existing: Option<&ResourceRow>) -> ResourceRow {
        let now = self.now();
        ResourceRow {
            id: existing
                .map(|e| e.id.clone())
                .unwrap_or_else(|| body["id"].as_str().unwrap_or_default().to_string()),
            subscription: v.subscription.clone(),
            resource_group: v.resource_group.clone(),
            type_key: PROTECTED_ITEM_TYPE.to_ascii_lowercase(),
            name: body["name"].as_str().unwrap_or_default().to_string(),
            parent_key: Some(container_id(&v.id, c).to_ascii_lowercase()),
            body,
            etag: uuid::Uuid::new_v4().to_string(),
            created: existing.map(|e| e.created).unwrap_or(now),
            updated: now,
        }
    }

    pub(crate) fn render_item(&self, row: &ResourceRow) -> Value {
        self.render_item_body(row.body.clone())
    }

    /// [`Control::render_item`] of a stored body no longer needed elsewhere (taken, not copied).
    fn render_item_body(&self, mut b: Value) -> Value {
        if let Some(at) = b
            .pointer("/properties/deferredDeleteTimeInUTC")
            .and_then(Value::as_str)
            .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
        {
            let left = at.with_timezone(&chrono::Utc) - self.now();
            b["properties"]["deferredDeleteTimeRemaining"] = json!(time::timespan_text(left));
        }
        b
    }

    fn job_for(&self, v: &ResourceRow, operation: &str, p: &Value, policy_name: Option<&str>) -> JobRow {
        let bmt = p["backupManagementType"].as_str().unwrap_or("AzureIaasVM");
        let entity = p["friendlyName"].as_str().unwrap_or_default();
        let mut bag = Map::new();
        if bmt == "AzureIaasVM" {
            bag.insert("VM Name".into(), json!(entity));
        } else {
            bag.insert("File Share Name".into(), json!(entity));
            bag.insert(
                "Storage Account Name".into(),
                json!(p["containerName"].as_str().unwrap_or_default().rsplit(';').next()),
            );
        }
        match operation {
            "DeleteBackupData" => {
                bag.insert(
                    "Number of Recovery Points".into(),
                    json!(p
                        .pointer("/extendedInfo/recoveryPointCount")
                        .and_then(Value::as_i64)
                        .unwrap_or(0)
                        .to_string()),
                );
            }
            _ => {
                bag.insert("Policy Name".into(), json!(policy_name.unwrap_or_default()));
            }
        }
        self.completed_job(
            v,
            &NewJob {
                operation,
                backup_management_type: bmt,
                entity,
                container: p["containerName"].as_str().unwrap_or_default(),
                property_bag: bag,
            },
        )
    }

    /// `PUT` a protected item: enable protection, change its policy, stop protection keeping data
    /// (`protectionState: ProtectionStopped`) or undelete (`isRehydrate: true`). Returns the operation id.
    #[allow(clippy::too_many_arguments)]
    pub fn put_protected_item(
        &self,
        caller: &Caller,
        sub: &str,
        rg: &str,
        vault: &str,
        fabric: &str,
        container: &str,
        item: &str,
        req: &Value,
    ) -> Result<String> {
        let (v, c, i) = self.item_ref(sub, rg, vault, fabric, container, item)?;
        let m = body::object(req)?;
        let props = body::opt_obj(m, "properties", "")?.ok_or_else(|| {
            configure_error("Input for configure protection is not in proper format: 'properties' is required.")
        })?;
        let id = item_id(&v.id, &c, &i);
        let existing = self.store.read(|db| db.resource(&id))?;
        if existing.is_none() {
            self.check_source_access(
                caller,
                sub,
                &c,
                "Microsoft.RecoveryServices/Vaults/backupFabrics/protectionContainers/protectedItems/write",
                &id,
            )?;
        }
        let w = self.workload(sub, &c, &i);
        let declared_type = body::opt_str(props, "protectedItemType", "properties.")?;
        let policy = body::opt_str(props, "policyId", "properties.")?.filter(|p| !p.is_empty());
        let state = body::opt_enum(
            props,
            "protectionState",
            "properties.",
            &[
                "Invalid",
                "IRPending",
                "Protected",
                "ProtectionError",
                "ProtectionStopped",
                "ProtectionPaused",
                "BackupsSuspended",
            ],
        )?;
        let rehydrate = props.get("isRehydrate").and_then(Value::as_bool).unwrap_or(false);
        let Some(existing) = existing else {
            // Enable protection.
            let w = w?;
            if let Some(t) = declared_type {
                if !t.eq_ignore_ascii_case(w.item_type) {
                    return Err(configure_error(format!(
                        "protectedItemType '{t}' does not match the item; expected '{}'.",
                        w.item_type
                    )));
                }
            }
            if let Some(s) = body::opt_str(props, "sourceResourceId", "properties.")? {
                if !s.eq_ignore_ascii_case(&w.source_id) {
                    return Err(configure_error(format!(
                        "sourceResourceId '{s}' does not match the item '{item}'."
                    )));
                }
            }
            let policy = policy.ok_or_else(|| configure_error("Input for configure protection is not in proper format: a policyId is required to enable protection."))?;
            let pol = self.policy_for(&v, policy, &w)?;
            let share = (w.bmt == "AzureStorage").then_some(w.friendly.as_str());
            let (items, containers) = self.subscription_backups(sub)?;
            if let Some(other) = protected_in(&items, &w.source_id, share) {
                let vault_of = vault_of(&other.id).to_string();
                return Err(invalid(
                    "BMSUserErrorAlreadyProtected",
                    format!("'{}' is already protected by the Recovery Services vault '{vault_of}'. An item can be protected by one vault only.", w.friendly),
                ));
            }
            let cid = container_id(&v.id, &c);
            let container_row = self.store.read(|db| db.resource(&cid))?;
            let new_container = match (&c, container_row) {
                (_, Some(_)) => None,
                (ContainerName::Vm { .. }, None) => {
                    if let Some(other) = registered_in(&containers, &w.source_id) {
                        let vault_of = vault_of(&other.id).to_string();
                        return Err(invalid(
                            "BMSUserErrorContainerAlreadyRegistered",
                            format!("Virtual machine '{}' is already registered with another Recovery Services vault ({vault_of}). Please select a different virtual machine.", w.friendly),
                        ));
                    }
                    let vm = self.vm_row(sub, c.resource_group(), c.friendly_name())?;
                    if !eq_ci(
                        vm.body["location"].as_str(),
                        v.body["location"].as_str().unwrap_or_default(),
                    ) {
                        return Err(configure_error(format!("Virtual machine '{}' is in '{}' and vault '{}' in '{}': a VM can only be protected by a vault in its own region.", vm.name, vm.body["location"].as_str().unwrap_or_default(), v.name, v.body["location"].as_str().unwrap_or_default())));
                    }
                    self.vm_with_disks(vm)?;
                    Some(self.container_row(&v, &c, &w.source_id))
                }
                (ContainerName::Storage { account, .. }, None) => {
                    return Err(configure_error(format!("Input for configure protection is not in proper format\r\nPlease ensure that container exists and other parameters are in valid format: register the storage account '{account}' with the vault (PUT its StorageContainer) first.")));
                }
            };
            let mut b = self.new_item_body(&v, &c, &i, &w);
            set_policy(&mut b["properties"], Some(&pol));
            let row = self.item_row(&v, &c, b, None);
            let job = self.job_for(&v, "ConfigureBackup", &row.body["properties"], Some(&pol.name));
            return self.commit_item_change(&v, Some(row), new_container, job, None);
        };
        // Change an existing item.
        let mut b = existing.body.clone();
        let p = &mut b["properties"];
        let deferred = p["isScheduledForDeferredDelete"].as_bool().unwrap_or(false);
        if rehydrate {
            if !deferred {
                return Err(invalid(
                    "BMSUserErrorInvalidInput",
                    format!("Item '{item}' is not soft deleted; there is nothing to undelete."),
                ));
            }
            let o = p.as_object_mut().expect("item properties are an object");
            o.remove("deferredDeleteTimeInUTC");
            o.remove("deferredDeleteTimeRemaining");
            o.insert("isScheduledForDeferredDelete".into(), json!(false));
            o.insert("protectionState".into(), json!("ProtectionStopped"));
            o.insert("isRehydrate".into(), json!(true));
            let job = self.job_for(&v, "Undelete", &b["properties"], Some(""));
            let row = self.item_row(&v, &c, b, Some(&existing));
            return self.commit_item_change(&v, Some(row), None, job, None);
        }
        if deferred {
            return Err(invalid(
                "BMSUserErrorItemSoftDeleted",
                format!("Item '{item}' is soft deleted. Undelete it (PUT with isRehydrate: true) before changing its protection."),
            ));
        }
        let w = w?;
        if state == Some("ProtectionStopped") && policy.is_none() {
            let o = p.as_object_mut().expect("item properties are an object");
            o.insert("protectionState".into(), json!("ProtectionStopped"));
            set_policy(p, None);
            let job = self.job_for(&v, "DisableBackup", &b["properties"], Some(""));
            let row = self.item_row(&v, &c, b, Some(&existing));
            return self.commit_item_change(&v, Some(row), None, job, None);
        }
        let policy = policy.ok_or_else(|| configure_error("Input for configure protection is not in proper format: give a policyId, or protectionState 'ProtectionStopped' to stop protection."))?;
        let pol = self.policy_for(&v, policy, &w)?;
        if Immutability::of(&v.body).enforced() {
            let current = p["policyId"]
                .as_str()
                .filter(|id| !id.is_empty() && !id.eq_ignore_ascii_case(&pol.id));
            if let Some(old) = current
                .map(|id| self.store.read(|db| db.resource(id)))
                .transpose()?
                .flatten()
            {
                if retention_cut(&old.body["properties"], &pol.body["properties"]).is_some() {
                    return Err(immutability::blocked(
                        &format!("Moving '{item}' from policy '{}' to policy '{}', which keeps recovery points for less time,", old.name, pol.name),
                        Some("properties.policyId"),
                    ));
                }
            }
        }
        let was_stopped = p["protectionState"].as_str() == Some("ProtectionStopped");
        set_policy(p, Some(&pol));
        let o = p.as_object_mut().expect("item properties are an object");
        o.remove("isRehydrate");
        if was_stopped {
            let backed_up = o.get("lastBackupTime").is_some_and(|t| t.is_string());
            o.insert(
                "protectionState".into(),
                json!(if backed_up { "Protected" } else { "IRPending" }),
            );
        }
        let job = self.job_for(&v, "ConfigureBackup", &b["properties"], Some(&pol.name));
        let row = self.item_row(&v, &c, b, Some(&existing));
        self.commit_item_change(&v, Some(row), None, job, None)
    }

    fn commit_item_change(
        &self,
        v: &ResourceRow,
        row: Option<ResourceRow>,
        container: Option<ResourceRow>,
        job: JobRow,
        delete: Option<(String, Option<String>)>,
    ) -> Result<String> {
        let props = json!({"objectType": "OperationStatusJobExtendedInfo", "jobId": job.name});
        let target = row.as_ref().map(|r| r.id.clone());
        let op: OperationRow = self.finished_operation(v, job.operation.as_str(), target.as_deref(), Some(props));
        self.store.write(|db| {
            if let Some(c) = &container {
                db.put_resource(c)?;
            }
            if let Some(r) = &row {
                db.put_resource(r)?;
            }
            if let Some((item, empty_container)) = &delete {
                delete_item(db, item, empty_container.as_deref())?;
            }
            db.put_job(&job)?;
            db.put_operation(&op)
        })?;
        Ok(op.id)
    }

    /// The stored item row, or Azure's not-found.
    pub fn protected_item_row(
        &self,
        sub: &str,
        rg: &str,
        vault: &str,
        fabric: &str,
        container: &str,
        item: &str,
    ) -> Result<(ResourceRow, ResourceRow)> {
        let (v, c, i) = self.item_ref(sub, rg, vault, fabric, container, item)?;
        let row = self
            .store
            .read(|db| db.resource(&item_id(&v.id, &c, &i)))?
            .ok_or_else(|| Error::NotFound {
                code: "BMSUserErrorProtectedItemNotFound",
                message: format!(
                    "Protected item '{item}' was not found in container '{container}' of vault '{vault}'."
                ),
            })?;
        Ok((v, row))
    }

    pub fn get_protected_item(
        &self,
        sub: &str,
        rg: &str,
        vault: &str,
        fabric: &str,
        container: &str,
        item: &str,
    ) -> Result<Value> {
        let (_, row) = self.protected_item_row(sub, rg, vault, fabric, container, item)?;
        Ok(self.render_item(&row))
    }

    /// `DELETE` a protected item: stop protection and delete its data. With soft delete on (the vault's
    /// default) the item is kept, scheduled for deletion after the retention period. Returns the
    /// operation id, or `None` when there was no such item.
    pub fn delete_protected_item(
        &self,
        sub: &str,
        rg: &str,
        vault: &str,
        fabric: &str,
        container: &str,
        item: &str,
    ) -> Result<Option<String>> {
        let (v, existing) = match self.protected_item_row(sub, rg, vault, fabric, container, item) {
            Ok(x) => x,
            Err(Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let c = ContainerName::parse(container)?;
        let mut b = existing.body.clone();
        if b.pointer("/properties/isScheduledForDeferredDelete")
            .and_then(Value::as_bool)
            == Some(true)
        {
            return Err(invalid(
                "BMSUserErrorItemSoftDeleted",
                format!("Item '{item}' is already soft deleted. It is purged when its retention period ends, or undelete it first."),
            ));
        }
        if Immutability::of(&v.body).enforced() {
            let now = self.now();
            let points = self.store.read(|db| db.recovery_points(&existing.id))?;
            if points.iter().any(|rp| rp.expiry.is_none_or(|e| e > now)) {
                return Err(immutability::blocked(
                    &format!("Stopping protection of '{item}' and deleting its backup data, whose recovery points have not expired,"),
                    None,
                ));
            }
        }
        let (soft, days) = soft_delete(&v);
        let job = self.job_for(&v, "DeleteBackupData", &b["properties"], None);
        if soft {
            let at = self.now() + chrono::Duration::days(days);
            let o = b["properties"].as_object_mut().expect("item properties are an object");
            o.insert("protectionState".into(), json!("ProtectionStopped"));
            o.insert("isScheduledForDeferredDelete".into(), json!(true));
            o.insert("deferredDeleteTimeInUTC".into(), json!(time::timestamp(at)));
            set_policy(&mut b["properties"], None);
            let row = self.item_row(&v, &c, b, Some(&existing));
            let op = self.commit_item_change(&v, Some(row), None, job, None)?;
            // A soft-deleted item's points are kept, not served: its file recovery sessions end.
            let ended = self.revoke_ilr_below(&existing.id)?;
            if ended > 0 {
                tracing::info!(item = %existing.id, sessions = ended, "soft delete ended the item's file recovery sessions");
            }
            return Ok(Some(op));
        }
        let empty_container = matches!(c, ContainerName::Vm { .. }).then(|| container_id(&v.id, &c));
        let op = self.commit_item_change(&v, None, None, job, Some((existing.id.clone(), empty_container)))?;
        // Its recovery points' rows are gone; the scheduler's next pass deletes their data.
        self.mark_vault(&v.id);
        Ok(Some(op))
    }

    /// `GET backupProtectedItems` with Azure's `$filter`.
    pub fn list_protected_items(
        &self,
        sub: &str,
        rg: &str,
        vault: &str,
        filter: Option<&str>,
        skip_after: Option<&str>,
    ) -> Result<Page<String>> {
        let v = self.vault_row(sub, rg, vault)?;
        let f = Filter::parse(filter.unwrap_or_default())?;
        f.only(
            &[
                "backupManagementType",
                "itemType",
                "policyName",
                "containerName",
                "friendlyName",
                "protectionStatus",
                "protectionState",
                "backupEngineName",
                "fabricName",
                "itemName",
            ],
            &[],
        )?;
        let container = f.eq("containerName").map(ContainerName::parse).transpose()?;
        let container_key = container.map(|c| container_id(&v.id, &c).to_ascii_lowercase());
        let keep = |r: &ResourceRow, p: &ItemFields| {
            let pass =
                |field: &str, have: &Option<Cow<str>>| f.eq(field).is_none_or(|want| eq_ci(have.as_deref(), want));
            pass("backupManagementType", &p.backup_management_type)
                && pass("itemType", &p.workload_type)
                && pass("policyName", &p.policy_name)
                && pass("friendlyName", &p.friendly_name)
                && pass("protectionStatus", &p.protection_status)
                && pass("protectionState", &p.protection_state)
                && f.eq("itemName").is_none_or(|want| eq_ci(Some(&r.name), want))
                && container_key.as_ref().is_none_or(|c| r.parent_key.as_ref() == Some(c))
        };
        // Keyset pages of the vault's items, filtered here, until a page of the answer is full. An
        // item's stored body is its answer, sent as stored, unless it is soft-deleted (its time left
        // follows the clock).
        let size = self.settings.page_size;
        let mut items = Vec::new();
        let mut after = skip_after.map(str::to_string);
        loop {
            let read = self
                .store
                .read_one(|db| db.below_page(&v.id, PROTECTED_ITEM_TYPE, after.as_deref(), size))?;
            for (r, text) in read.items {
                let fields = serde_json::from_str::<ItemBody>(&text)
                    .map_err(|e| Error::internal(format!("item {}: {e}", r.id)))?
                    .properties;
                if !keep(&r, &fields) {
                    continue;
                }
                if items.len() == size {
                    return Ok(Page { items, next: after });
                }
                after = Some(r.id.to_ascii_lowercase());
                let soft_deleted = fields.deferred_delete_time_in_utc.is_some();
                drop(fields);
                items.push(if soft_deleted {
                    let body =
                        serde_json::from_str(&text).map_err(|e| Error::internal(format!("item {}: {e}", r.id)))?;
                    self.render_item_body(body).to_string()
                } else {
                    text
                });
            }
            match read.next {
                Some(next) => after = Some(next),
                None => return Ok(Page { items, next: None }),
            }
        }
    }

    /// An operation of an item, for its `operationResults` / `operationsStatus` URLs.
    #[allow(clippy::too_many_arguments)]
    pub fn item_operation(
        &self,
        sub: &str,
        rg: &str,
        vault: &str,
        fabric: &str,
        container: &str,
        item: &str,
        op: &str,
    ) -> Result<OperationRow> {
        let (v, c, i) = self.item_ref(sub, rg, vault, fabric, container, item)?;
        let o = self.vault_operation(sub, rg, vault, op)?;
        let want = item_id(&v.id, &c, &i).to_ascii_lowercase();
        match o.target.as_deref().map(str::to_ascii_lowercase) {
            Some(t) if t == want => Ok(o),
            // Deleting an item leaves no target; its operation is still the item's.
            None if o.kind == "DeleteBackupData" => Ok(o),
            _ => Err(Error::NotFound {
                code: "ResourceNotFound",
                message: format!("The operation '{op}' was not found for item '{item}'."),
            }),
        }
    }

    /// An operation of a container (register, inquire), for its `operationResults` URL.
    pub fn container_operation(
        &self,
        sub: &str,
        rg: &str,
        vault: &str,
        fabric: &str,
        container: &str,
        op: &str,
    ) -> Result<OperationRow> {
        let v = self.fabric_vault(sub, rg, vault, fabric)?;
        let c = ContainerName::parse(container)?;
        let o = self.vault_operation(sub, rg, vault, op)?;
        if o.target.as_deref().map(str::to_ascii_lowercase) != Some(container_id(&v.id, &c).to_ascii_lowercase()) {
            return Err(Error::NotFound {
                code: "ResourceNotFound",
                message: format!("The operation '{op}' was not found for container '{container}'."),
            });
        }
        Ok(o)
    }
}

/// The item protecting `source_id` (and, for file shares, the share named `share`) among `items`.
/// Deletes a protected item (and, below it, its recovery points), then `container` if that left it
/// empty (a VM's container goes with its last item; a storage account's stays registered).
pub(crate) fn delete_item(
    db: &rsvault_store::Db,
    item: &str,
    container: Option<&str>,
) -> std::result::Result<(), rsvault_store::StoreError> {
    db.delete_resource(item)?;
    if let Some(cid) = container {
        if db.count_below(cid, PROTECTED_ITEM_TYPE)? == 0 {
            db.delete_resource(cid)?;
        }
    }
    // A soft-deleted container goes with the last of its items.
    if let Some((cid, _)) = item.rsplit_once("/protectedItems/") {
        if let Some(c) = db.resource(cid)?.filter(soft_deleted) {
            if db.count_below(&c.id, PROTECTED_ITEM_TYPE)? == 0 {
                db.delete_resource(&c.id)?;
            }
        }
    }
    Ok(())
}

/// Whether a container row is soft-deleted (unregistered while its items were).
pub(crate) fn soft_deleted(container: &ResourceRow) -> bool {
    container
        .body
        .pointer("/properties/registrationStatus")
        .and_then(Value::as_str)
        == Some("SoftDeleted")
}

pub(crate) fn protected_in<'a>(
    items: &'a [ResourceRow],
    source_id: &str,
    share: Option<&str>,
) -> Option<&'a ResourceRow> {
    items.iter().find(|i| {
        let p = &i.body["properties"];
        eq_ci(p["sourceResourceId"].as_str(), source_id) && share.is_none_or(|s| eq_ci(p["friendlyName"].as_str(), s))
    })
}

/// The container registered for `source_id` among `containers`.
pub(crate) fn registered_in<'a>(containers: &'a [ResourceRow], source_id: &str) -> Option<&'a ResourceRow> {
    containers.iter().find(|c| {
        eq_ci(
            c.body.pointer("/properties/sourceResourceId").and_then(Value::as_str),
            source_id,
        )
    })
}

/// An item's policy fields: `policyId` and `policyName` (empty when protection stopped) and, on a
/// VM's item (`AzureIaaSVMProtectedItem`), the policy's `policyType` (`V1`, or `V2` for Enhanced), as
/// Azure always sends it.
fn set_policy(props: &mut Value, pol: Option<&ResourceRow>) {
    let vm = props["protectedItemType"]
        .as_str()
        .is_some_and(|t| t.eq_ignore_ascii_case("Microsoft.Compute/virtualMachines"));
    let Some(o) = props.as_object_mut() else {
        return;
    };
    o.insert("policyId".into(), json!(pol.map_or("", |p| p.id.as_str())));
    o.insert("policyName".into(), json!(pol.map_or("", |p| p.name.as_str())));
    if vm {
        let ty = pol.map_or("", |p| {
            p.body
                .pointer("/properties/policyType")
                .and_then(Value::as_str)
                .unwrap_or("V1")
        });
        o.insert("policyType".into(), json!(ty));
    }
}
