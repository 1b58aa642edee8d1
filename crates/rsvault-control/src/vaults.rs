//! Recovery Services vaults (`Microsoft.RecoveryServices/vaults`) and their vault-level side resources
//! (`extendedInformation/vaultExtendedInfo`, `usages`, `checkNameAvailability`). A new vault gets Azure's
//! default backup policies in the same transaction.
//!
//! A vault is stored as its ARM body. PUT creates (201) or replaces (200) synchronously with
//! `provisioningState: Succeeded`, as the live service does; PATCH merges; DELETE is synchronous (204).

use crate::{body, resources::tags_or_empty, Caller, Control, Error, Result};
use base64::Engine;
use rand::RngCore;
use rsvault_core::{names, time};
use rsvault_store::{OperationRow, Page, ResourceRow};
use serde_json::{json, Map, Value};

pub const VAULT_TYPE: &str = "Microsoft.RecoveryServices/vaults";
const EXTENDED_INFO_TYPE: &str = "Microsoft.RecoveryServices/vaults/extendedInformation";
/// Items that keep a vault from being deleted (protected items, in any container).
pub const PROTECTED_ITEM_TYPE: &str =
    "Microsoft.RecoveryServices/vaults/backupFabrics/protectionContainers/protectedItems";

const SKUS: &[&str] = &["Standard", "RS0"];
const IDENTITY_TYPES: &[&str] = &["SystemAssigned", "None", "UserAssigned", "SystemAssigned, UserAssigned"];
const ENABLED_DISABLED: &[&str] = &["Enabled", "Disabled"];

/// Enum-valued members of a vault body: where they are and what the spec allows. Validation accepts
/// any casing; what is stored and answered is the spec's spelling.
const ENUMS: &[(&str, &[&str])] = &[
    ("/sku/name", SKUS),
    ("/identity/type", IDENTITY_TYPES),
    ("/properties/publicNetworkAccess", ENABLED_DISABLED),
    (
        "/properties/redundancySettings/standardTierStorageRedundancy",
        &["Invalid", "LocallyRedundant", "GeoRedundant", "ZoneRedundant"],
    ),
    ("/properties/redundancySettings/crossRegionRestore", ENABLED_DISABLED),
    (
        "/properties/securitySettings/softDeleteSettings/softDeleteState",
        &["Invalid", "Enabled", "Disabled", "AlwaysON"],
    ),
    (
        "/properties/securitySettings/softDeleteSettings/enhancedSecurityState",
        &["Invalid", "Enabled", "Disabled", "AlwaysON"],
    ),
    (
        "/properties/securitySettings/immutabilitySettings/state",
        &["Disabled", "Unlocked", "Locked"],
    ),
    (
        "/properties/monitoringSettings/azureMonitorAlertSettings/alertsForAllJobFailures",
        ENABLED_DISABLED,
    ),
    (
        "/properties/monitoringSettings/azureMonitorAlertSettings/alertsForAllReplicationIssues",
        ENABLED_DISABLED,
    ),
    (
        "/properties/monitoringSettings/azureMonitorAlertSettings/alertsForAllFailoverIssues",
        ENABLED_DISABLED,
    ),
    (
        "/properties/monitoringSettings/classicAlertSettings/alertsForCriticalOperations",
        ENABLED_DISABLED,
    ),
    (
        "/properties/monitoringSettings/classicAlertSettings/emailNotificationsForSiteRecovery",
        ENABLED_DISABLED,
    ),
    (
        "/properties/restoreSettings/crossSubscriptionRestoreSettings/crossSubscriptionRestoreState",
        &["Enabled", "Disabled", "PermanentlyDisabled"],
    ),
];

/// Object-valued members whose type is checked before their contents.
const OBJECTS: &[&str] = &[
    "/sku",
    "/identity",
    "/identity/userAssignedIdentities",
    "/properties",
    "/properties/redundancySettings",
    "/properties/securitySettings",
    "/properties/securitySettings/softDeleteSettings",
    "/properties/securitySettings/immutabilitySettings",
    "/properties/monitoringSettings",
    "/properties/monitoringSettings/azureMonitorAlertSettings",
    "/properties/monitoringSettings/classicAlertSettings",
    "/properties/restoreSettings",
    "/properties/restoreSettings/crossSubscriptionRestoreSettings",
];

fn dotted(pointer: &str) -> String {
    pointer.trim_start_matches('/').replace('/', ".")
}

/// Checks a vault body's shape and enum values, and rewrites enum values to the spec's spelling.
fn check_vault_body(body: &mut Value) -> Result<()> {
    for p in OBJECTS {
        match body.pointer(p) {
            None | Some(Value::Null) | Some(Value::Object(_)) => {}
            Some(_) => {
                return Err(Error::InvalidRequestContent(format!(
                    "Error converting value at path '{}': expected an object.",
                    dotted(p)
                )))
            }
        }
    }
    for (p, allowed) in ENUMS {
        let Some(v) = body.pointer_mut(p) else {
            continue;
        };
        match v {
            Value::Null => {}
            Value::String(s) => match allowed.iter().find(|a| a.eq_ignore_ascii_case(s)) {
                Some(a) => *v = json!(a),
                None => {
                    return Err(Error::Invalid {
                        code: "BadRequest",
                        message: format!(
                            "The value '{s}' is not valid for '{}'. Allowed values are: {}.",
                            dotted(p),
                            allowed.join(", ")
                        ),
                        target: Some(dotted(p)),
                    })
                }
            },
            _ => {
                return Err(Error::InvalidRequestContent(format!(
                    "Error converting value at path '{}': expected a string.",
                    dotted(p)
                )))
            }
        }
    }
    if body.pointer("/sku").is_some_and(Value::is_object) && body.pointer("/sku/name").is_none_or(Value::is_null) {
        return Err(Error::InvalidRequestContent(
            "The 'sku.name' property is required.".into(),
        ));
    }
    if body.pointer("/identity").is_some_and(Value::is_object)
        && body.pointer("/identity/type").is_none_or(Value::is_null)
    {
        return Err(Error::InvalidRequestContent(
            "The 'identity.type' property is required.".into(),
        ));
    }
    body::opt_str(body::object(body)?, "etag", "")?;
    if let Some(sd) = body
        .pointer("/properties/securitySettings/softDeleteSettings")
        .and_then(Value::as_object)
    {
        let path = "properties.securitySettings.softDeleteSettings.";
        if let Some(days) = body::opt_int(sd, "softDeleteRetentionPeriodInDays", path)? {
            if !(14..=180).contains(&days) {
                return Err(Error::Invalid {
                    code: "BMSUserErrorInvalidSoftDeleteRetentionPeriod",
                    message: "Soft delete retention period must be between 14 and 180 days.".into(),
                    target: Some(format!("{path}softDeleteRetentionPeriodInDays")),
                });
            }
        }
    }
    Ok(())
}

/// The properties Azure fills in for a new vault, under what the client sent.
fn default_properties() -> Value {
    json!({
        "provisioningState": "Succeeded",
        "privateEndpointStateForBackup": "None",
        "privateEndpointStateForSiteRecovery": "None",
        "publicNetworkAccess": "Enabled",
        "backupStorageVersion": "V2",
        "monitoringSettings": {
            "azureMonitorAlertSettings": {"alertsForAllJobFailures": "Enabled", "alertsForAllReplicationIssues": "Enabled", "alertsForAllFailoverIssues": "Enabled"},
            "classicAlertSettings": {"alertsForCriticalOperations": "Disabled", "emailNotificationsForSiteRecovery": "Enabled"}
        },
        "redundancySettings": {"standardTierStorageRedundancy": "GeoRedundant", "crossRegionRestore": "Disabled"},
        "securitySettings": {
            "softDeleteSettings": {"softDeleteState": "Enabled", "softDeleteRetentionPeriodInDays": 14, "enhancedSecurityState": "Enabled"},
            "immutabilitySettings": {"state": "Disabled"},
            "multiUserAuthorization": "Disabled"
        },
        "restoreSettings": {"crossSubscriptionRestoreSettings": {"crossSubscriptionRestoreState": "Enabled"}},
        "secureScore": "Minimum",
        "bcdrSecurityLevel": "Fair",
    })
}

/// Read-only properties a client may not set.
const READ_ONLY: &[&str] = &[
    "provisioningState",
    "privateEndpointConnections",
    "privateEndpointStateForBackup",
    "privateEndpointStateForSiteRecovery",
    "moveState",
    "backupStorageVersion",
    "secureScore",
    "bcdrSecurityLevel",
];

fn client_properties(m: &Map<String, Value>) -> Value {
    let mut p = m.get("properties").cloned().unwrap_or_else(|| json!({}));
    if let Some(o) = p.as_object_mut() {
        for k in READ_ONLY {
            o.remove(*k);
        }
        // Read-only: rsvault has no Resource Guard, so multi-user authorization stays `Disabled`.
        if let Some(sec) = o.get_mut("securitySettings").and_then(Value::as_object_mut) {
            sec.remove("multiUserAuthorization");
        }
    }
    p
}

fn identity_body(tenant: &str, m: &Map<String, Value>, previous: Option<&Value>) -> Option<Value> {
    let id = m.get("identity")?.as_object()?;
    let ty = id.get("type").and_then(Value::as_str).unwrap_or("None");
    let ty = IDENTITY_TYPES
        .iter()
        .find(|t| t.eq_ignore_ascii_case(ty))
        .copied()
        .unwrap_or("None");
    let mut out = json!({"type": ty});
    if ty.contains("SystemAssigned") {
        let principal = previous
            .and_then(|p| p.get("principalId"))
            .cloned()
            .unwrap_or_else(|| json!(uuid::Uuid::new_v4().to_string()));
        out["principalId"] = principal;
        out["tenantId"] = json!(tenant);
    }
    if let Some(u) = id.get("userAssignedIdentities").and_then(Value::as_object) {
        let ids: Map<String, Value> = u
            .keys()
            .map(|k| (k.clone(), json!({"principalId": uuid::Uuid::new_v4().to_string(), "clientId": uuid::Uuid::new_v4().to_string()})))
            .collect();
        out["userAssignedIdentities"] = Value::Object(ids);
    }
    Some(out)
}

fn sku_body(m: &Map<String, Value>) -> Value {
    let name = m
        .get("sku")
        .and_then(|s| s.get("name"))
        .and_then(Value::as_str)
        .and_then(|n| SKUS.iter().find(|s| s.eq_ignore_ascii_case(n)).copied())
        .unwrap_or("RS0");
    json!({"name": name, "tier": "Standard"})
}

fn system_data(caller: &Caller, created: &str, modified: &str, created_by: Option<&Value>) -> Value {
    json!({
        "createdBy": created_by.cloned().unwrap_or_else(|| json!(caller.client_id)),
        "createdByType": "Application",
        "createdAt": created,
        "lastModifiedBy": caller.client_id,
        "lastModifiedByType": "Application",
        "lastModifiedAt": modified,
    })
}

fn random_key() -> String {
    let mut b = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut b);
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// Why a vault that still holds protected items (soft-deleted ones included) cannot be deleted: the
/// answer of its own DELETE and of a DELETE of its resource group.
pub(crate) fn not_empty(name: &str, items: i64) -> Error {
    Error::Invalid {
        code: "ServiceResourceNotEmptyWithBackendMessage",
        message: format!("Vault {name} cannot be deleted as there are existing resources within the vault. Please delete any replicated items, registered servers, Hyper-V sites (Used for Site Recovery), policy associations for storage accounts and Azure Backup items ({items} protected items) and try again."),
        target: None,
    }
}

/// Refuses deleting a vault that still holds protected items (soft-deleted ones included) or
/// registered containers (a storage account registered with no share protected yet), as Azure does.
pub(crate) fn check_vault_empty(db: &rsvault_store::Db, vault: &ResourceRow) -> Result<()> {
    let items = db.count_below(&vault.id, PROTECTED_ITEM_TYPE)?;
    if items > 0 {
        return Err(not_empty(&vault.name, items));
    }
    let containers = db.all_below(&vault.id, crate::backup::CONTAINER_TYPE)?;
    if !containers.is_empty() {
        let names: Vec<&str> = containers
            .iter()
            .map(|c| {
                c.body
                    .pointer("/properties/friendlyName")
                    .and_then(Value::as_str)
                    .unwrap_or(&c.name)
            })
            .collect();
        return Err(containers_registered(&names));
    }
    Ok(())
}

/// In a delete's transaction (the vault's own or its group's), after [`check_vault_empty`]: a vault
/// whose soft delete is on is kept as a deleted vault ([`crate::deletedvaults`]); one whose soft
/// delete is off goes with its rows, and its retired password row is returned for the removals
/// sweeper.
pub(crate) fn delete_vault_rows(
    db: &rsvault_store::Db,
    vault: &ResourceRow,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Option<rsvault_store::VaultSecretRow>> {
    if let Some(days) = crate::deletedvaults::soft_delete_days(vault) {
        crate::deletedvaults::keep_deleted(db, vault, now, days)?;
        return Ok(None);
    }
    let secret = db.retire_vault_secret(&vault.id)?;
    db.delete_resource(&vault.id)?;
    db.delete_operations_below(&vault.id)?;
    Ok(secret)
}

/// The record of an operation on `scope` that finished when it was accepted (a vault's delete, a
/// deleted vault's undelete).
pub(crate) fn done_operation(scope: &str, kind: &str, now: chrono::DateTime<chrono::Utc>) -> OperationRow {
    OperationRow {
        id: uuid::Uuid::new_v4().to_string(),
        scope_key: scope.to_ascii_lowercase(),
        kind: kind.into(),
        status: "Succeeded".into(),
        start: now,
        end: Some(now),
        error: None,
        properties: None,
        target: None,
    }
}

/// Azure's refusal of a vault delete while containers are registered (its words in the live
/// recording `test_backup_item.yaml`, which names the registered items and asks to unregister all
/// containers).
fn containers_registered(names: &[&str]) -> Error {
    Error::Invalid {
        code: "ServiceResourceNotEmptyWithBackendMessage",
        message: format!(
            "Recovery Services vault cannot be deleted as there are existing resources within the vault. The registered items are : {}\nPlease ensure all containers have been unregistered from the vault and all private endpoints associated with the vault have been deleted, and retry operation. For more details, see https://aka.ms/AB-AA4ecq5",
            names.join(",")
        ),
        target: None,
    }
}

impl Control {
    fn vault_id(&self, sub: &str, rg: &str, name: &str) -> String {
        format!("/subscriptions/{sub}/resourceGroups/{rg}/providers/{VAULT_TYPE}/{name}")
    }

    /// The stored vault row, after checking its subscription and group exist.
    ///
    /// One read when the vault exists: a vault row implies its group (a group's delete removes its
    /// resources in the same transaction) and its subscription (subscriptions are never deleted). Only a
    /// missing vault reads on, to answer which of the three is missing, as before.
    pub fn vault_row(&self, sub: &str, rg: &str, name: &str) -> Result<ResourceRow> {
        if let Some(v) = self.store.read_one(|db| db.resource(&self.vault_id(sub, rg, name)))? {
            return Ok(v);
        }
        self.subscription_row(sub)?;
        let group = self.group_row(sub, rg)?;
        self.store
            .read_one(|db| db.resource(&self.vault_id(sub, rg, name)))?
            .ok_or_else(|| Error::ResourceNotFound {
                resource_type: VAULT_TYPE.into(),
                name: name.to_string(),
                group: group.name,
            })
    }

    /// The stored id of a vault, checked as [`Control::vault_row`] checks it, without reading its body
    /// (for requests that only reach below it: a job, the jobs list).
    pub(crate) fn vault_id_checked(&self, sub: &str, rg: &str, name: &str) -> Result<String> {
        match self
            .store
            .read_one(|db| db.resource_id(&self.vault_id(sub, rg, name)))?
        {
            Some(id) => Ok(id),
            None => self.vault_row(sub, rg, name).map(|v| v.id),
        }
    }

    /// `PUT` a vault: 201 with the new vault, or 200 with the replaced one.
    pub fn put_vault(&self, caller: &Caller, sub: &str, rg: &str, name: &str, req: &Value) -> Result<(bool, Value)> {
        self.subscription_row(sub)?;
        let group = self.group_row(sub, rg)?;
        names::vault(name)?;
        let mut req = req.clone();
        body::object(&req)?;
        check_vault_body(&mut req)?;
        let m = body::object(&req)?;
        let location = body::location(m)?;
        let tags = tags_or_empty(m)?;
        let id = self.vault_id(sub, &group.name, name);
        self.check_storage_tag(&id, &tags)?;
        let existing = self.store.read(|db| db.resource(&id))?;
        let now = self.now();
        let stamp = time::rfc3339(now);
        let mut props = default_properties();
        if let Some(e) = &existing {
            let old_loc = e.body["location"].as_str().unwrap_or_default();
            if old_loc != location {
                return Err(Error::Invalid {
                    code: "InvalidResourceLocation",
                    message: format!("The resource '{name}' already exists in location '{old_loc}' in resource group '{}'. A resource with the same name cannot be created in location '{location}'. Please select a new resource name.", group.name),
                    target: None,
                });
            }
            props = e.body["properties"].clone();
        }
        body::merge(&mut props, &client_properties(m));
        let created_at = existing
            .as_ref()
            .and_then(|e| {
                e.body
                    .pointer("/systemData/createdAt")
                    .and_then(Value::as_str)
                    .map(String::from)
            })
            .unwrap_or_else(|| stamp.clone());
        let created_by = existing
            .as_ref()
            .and_then(|e| e.body.pointer("/systemData/createdBy").cloned());
        let stored_id = existing.as_ref().map(|e| e.id.clone()).unwrap_or(id);
        let mut v = json!({
            "id": stored_id,
            "name": existing.as_ref().map(|e| e.name.clone()).unwrap_or_else(|| name.to_string()),
            "type": VAULT_TYPE,
            "location": location,
            "tags": tags,
            "etag": time::datetime_etag(now),
            "sku": sku_body(m),
            "properties": props,
            "systemData": system_data(caller, &created_at, &stamp, created_by.as_ref()),
        });
        // A new vault starts from Azure's defaults (soft delete on, not immutable).
        let before = existing
            .as_ref()
            .map(|e| e.body.clone())
            .unwrap_or_else(|| json!({"properties": default_properties()}));
        crate::immutability::check_settings_change(&before, &v)?;
        let previous_identity = existing.as_ref().and_then(|e| e.body.get("identity"));
        if let Some(identity) =
            identity_body(&self.tenant_id, m, previous_identity).or_else(|| previous_identity.cloned())
        {
            v["identity"] = identity;
        }
        let row = ResourceRow {
            id: stored_id.clone(),
            subscription: sub.to_string(),
            resource_group: Some(group.name.clone()),
            type_key: VAULT_TYPE.to_ascii_lowercase(),
            name: v["name"].as_str().unwrap_or(name).to_string(),
            parent_key: None,
            body: v.clone(),
            etag: v["etag"].as_str().unwrap_or_default().to_string(),
            created: existing.as_ref().map(|e| e.created).unwrap_or(now),
            updated: now,
        };
        let ext = ResourceRow {
            id: format!("{stored_id}/extendedInformation/vaultExtendedInfo"),
            subscription: sub.to_string(),
            resource_group: Some(group.name.clone()),
            type_key: EXTENDED_INFO_TYPE.to_ascii_lowercase(),
            name: "vaultExtendedInfo".into(),
            parent_key: Some(stored_id.clone()),
            body: json!({"integrityKey": random_key(), "algorithm": "None"}),
            etag: uuid::Uuid::new_v4().to_string(),
            created: now,
            updated: now,
        };
        let policies = self.default_policy_rows(&row);
        let created = self.store.write(|db| {
            let created = db.put_resource(&row)?;
            if created {
                db.put_resource(&ext)?;
                for p in &policies {
                    db.put_resource(p)?;
                }
            }
            Ok::<_, Error>(created)
        })?;
        Ok((created, v))
    }

    pub fn get_vault(&self, sub: &str, rg: &str, name: &str) -> Result<Value> {
        Ok(self.vault_row(sub, rg, name)?.body)
    }

    /// [`Control::get_vault`] as wire text: a vault's stored body is its answer, sent as stored.
    pub fn get_vault_text(&self, sub: &str, rg: &str, name: &str) -> Result<String> {
        match self
            .store
            .read_one(|db| db.resource_text(&self.vault_id(sub, rg, name)))?
        {
            Some((_, text)) => Ok(text),
            None => Ok(self.vault_row(sub, rg, name)?.body.to_string()),
        }
    }

    /// `PATCH` a vault: tags replace, properties merge, sku and identity replace.
    /// A vault's `rsvault-storage-target` tag must name a declared target, and cannot move a vault
    /// whose repository already exists (its location is fixed at first use).
    fn check_storage_tag(&self, vault_id: &str, tags: &serde_json::Map<String, Value>) -> Result<()> {
        let Some(dp) = self.data.as_ref() else {
            return Ok(());
        };
        let Some(want) = tags.get(crate::storage::TARGET_TAG) else {
            return Ok(());
        };
        let want = want.as_str().unwrap_or_default();
        dp.storage.check_name(want)?;
        if let Some(row) = self.store.read(|db| db.vault_secret(vault_id))? {
            let now = match row.repo.starts_with('/') {
                true => crate::storage::LOCAL,
                false => row.repo.split(':').next().unwrap_or_default(),
            };
            if now != want {
                return Err(Error::Invalid {
                    code: "BadRequest",
                    message: format!(
                        "The vault's data is stored on '{now}'; tag '{}' cannot move it to '{want}'.",
                        crate::storage::TARGET_TAG
                    ),
                    target: Some("tags".into()),
                });
            }
        }
        Ok(())
    }

    pub fn patch_vault(&self, caller: &Caller, sub: &str, rg: &str, name: &str, req: &Value) -> Result<Value> {
        let mut row = self.vault_row(sub, rg, name)?;
        let mut req = req.clone();
        body::object(&req)?;
        check_vault_body(&mut req)?;
        let m = body::object(&req)?;
        let tags = body::tags(m)?;
        if let Some(t) = &tags {
            self.check_storage_tag(&row.id, t)?;
        }
        let now = self.now();
        let before = row.body.clone();
        let v = &mut row.body;
        if let Some(t) = tags {
            v["tags"] = Value::Object(t);
        }
        if m.contains_key("properties") {
            body::merge(&mut v["properties"], &client_properties(m));
        }
        if m.contains_key("sku") {
            v["sku"] = sku_body(m);
        }
        if let Some(identity) = identity_body(&self.tenant_id, m, v.get("identity")) {
            v["identity"] = identity;
        }
        v["etag"] = json!(time::datetime_etag(now));
        let created_at = v
            .pointer("/systemData/createdAt")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let created_by = v.pointer("/systemData/createdBy").cloned();
        v["systemData"] = system_data(caller, &created_at, &time::rfc3339(now), created_by.as_ref());
        row.etag = v["etag"].as_str().unwrap_or_default().to_string();
        crate::immutability::check_settings_change(&before, &row.body)?;
        row.updated = now;
        self.store.write(|db| db.put_resource(&row))?;
        Ok(row.body)
    }

    /// Deletes a vault (keeping it as a deleted vault while its soft delete is on); refused while it
    /// still holds protected items. Returns the id of the durable
    /// operation record (its status and result URLs live below the vault's id), or `None` when there
    /// was no such vault.
    pub fn delete_vault(&self, sub: &str, rg: &str, name: &str) -> Result<Option<String>> {
        self.subscription_row(sub)?;
        self.group_row(sub, rg)?;
        let id = self.vault_id(sub, rg, name);
        let Some(vault) = self.store.read(|db| db.resource(&id))? else {
            return Ok(None);
        };
        let now = self.now();
        let op = done_operation(&id, "VaultDelete", now);
        let secret = self.store.write(|db| {
            check_vault_empty(db, &vault)?;
            let secret = delete_vault_rows(db, &vault, now)?;
            db.put_operation(&op)?;
            Ok::<_, Error>(secret)
        })?;
        self.vault_retired(secret);
        Ok(Some(op.id))
    }

    /// A vault-scoped operation record (the vault itself may be gone: a delete's record outlives it).
    pub fn vault_operation(&self, sub: &str, rg: &str, name: &str, op: &str) -> Result<OperationRow> {
        self.vault_operation_row(sub, rg, name, op)
    }

    /// The status body every operation URL answers with (`OperationResource`), for the status URL `id`.
    pub fn operation_status_body(id: &str, o: &OperationRow) -> Value {
        let name = id.rsplit('/').next().unwrap_or_default();
        let mut v = json!({"id": id, "name": name, "status": o.status, "startTime": time::timestamp(o.start)});
        if let Some(end) = o.end {
            v["endTime"] = json!(time::timestamp(end));
        }
        if let Some(e) = &o.error {
            v["error"] = e.clone();
        }
        if let Some(p) = &o.properties {
            v["properties"] = p.clone();
        }
        v
    }

    fn vault_operation_row(&self, sub: &str, rg: &str, name: &str, op: &str) -> Result<OperationRow> {
        self.subscription_row(sub)?;
        self.group_row(sub, rg)?;
        let scope = self.vault_id(sub, rg, name).to_ascii_lowercase();
        self.store
            .read(|db| db.operation(op))?
            .filter(|o| o.scope_key == scope)
            .ok_or_else(|| Error::NotFound {
                code: "ResourceNotFound",
                message: format!("The operation '{op}' was not found for vault '{name}'."),
            })
    }

    /// One page of vaults in a subscription or group.
    pub fn list_vaults(&self, sub: &str, rg: Option<&str>, after: Option<&str>) -> Result<Page<Value>> {
        self.subscription_row(sub)?;
        if let Some(rg) = rg {
            self.group_row(sub, rg)?;
        }
        let p = self
            .store
            .read(|db| db.resources(sub, rg, VAULT_TYPE, after, self.settings.page_size))?;
        Ok(Page {
            items: p.items.into_iter().map(|r| r.body).collect(),
            next: p.next,
        })
    }

    /// `RecoveryServices_Capabilities`: which private DNS zones a private endpoint of each vault
    /// sub-resource needs. rsvault has no private endpoints (`absent`), so every sub-resource asked
    /// about is answered with none required; the request is checked as Azure checks it.
    pub fn capabilities(&self, sub: &str, req: &Value) -> Result<Value> {
        self.subscription_row(sub)?;
        let invalid = |message: String, target: &str| Error::Invalid {
            code: "InvalidParameter",
            message,
            target: Some(target.into()),
        };
        let ty = req["type"]
            .as_str()
            .ok_or_else(|| invalid("The request must name the resource type: type.".into(), "type"))?;
        if !ty.eq_ignore_ascii_case(VAULT_TYPE) {
            return Err(invalid(
                format!("Capabilities are known for '{VAULT_TYPE}' only, not '{ty}'."),
                "type",
            ));
        }
        let mut zones = vec![];
        let asked = req.pointer("/properties/dnsZones").and_then(Value::as_array);
        for z in asked.into_iter().flatten() {
            let sub_resource = z["subResource"].as_str().unwrap_or_default();
            let known = ["AzureBackup", "AzureBackup_secondary", "AzureSiteRecovery"]
                .into_iter()
                .find(|k| k.eq_ignore_ascii_case(sub_resource))
                .ok_or_else(|| {
                    invalid(
                        format!("'{sub_resource}' is not a vault sub-resource: AzureBackup, AzureBackup_secondary or AzureSiteRecovery."),
                        "properties.dnsZones.subResource",
                    )
                })?;
            zones.push(json!({"subResource": known, "requiredZoneNames": []}));
        }
        Ok(json!({"type": VAULT_TYPE, "properties": {"dnsZones": zones}}))
    }

    /// `checkNameAvailability` for a vault name in a group.
    pub fn check_vault_name(&self, sub: &str, rg: &str, req: &Value) -> Result<Value> {
        self.subscription_row(sub)?;
        self.group_row(sub, rg)?;
        let m = body::object(req)?;
        let name = body::opt_str(m, "name", "")?
            .ok_or_else(|| Error::InvalidRequestContent("The 'name' property is required.".into()))?;
        if let Some(ty) = body::opt_str(m, "type", "")? {
            if !ty.eq_ignore_ascii_case(VAULT_TYPE) {
                return Err(Error::bad_request(format!(
                    "The resource type '{ty}' is not supported; expected '{VAULT_TYPE}'."
                )));
            }
        }
        if let Err(e) = names::vault(name) {
            return Ok(json!({"nameAvailable": false, "reason": "Invalid", "message": e.to_string()}));
        }
        let taken = self
            .store
            .read(|db| db.resource(&self.vault_id(sub, rg, name)))?
            .is_some();
        Ok(if taken {
            json!({"nameAvailable": false, "reason": "AlreadyExists", "message": "Resource already exists"})
        } else {
            json!({"nameAvailable": true})
        })
    }

    /// `usages` of a vault, counted from what it holds.
    pub fn vault_usages(&self, sub: &str, rg: &str, name: &str) -> Result<Vec<Value>> {
        let row = self.vault_row(sub, rg, name)?;
        let items = self.store.read(|db| db.count_below(&row.id, PROTECTED_ITEM_TYPE))?;
        let next = time::timestamp(self.now() + chrono::Duration::days(1));
        let usage = |value: &str, localized: &str, unit: &str, current: i64| {
            json!({"unit": unit, "quotaPeriod": "P1D", "nextResetTime": next, "currentValue": current, "limit": -1,
                   "name": {"value": value, "localizedValue": localized}})
        };
        Ok(vec![
            usage("ProtectedItemCount", "Protected Items", "Count", items),
            usage("UnhealthyProtectedItemCount", "Unhealthy Protected Items", "Count", 0),
        ])
    }

    fn extended_info_row(&self, sub: &str, rg: &str, name: &str) -> Result<ResourceRow> {
        let v = self.vault_row(sub, rg, name)?;
        let id = format!("{}/extendedInformation/vaultExtendedInfo", v.id);
        self.store.read(|db| db.resource(&id))?.ok_or_else(|| Error::NotFound {
            code: "ResourceNotFound",
            message: format!("The extended information of vault '{name}' was not found."),
        })
    }

    fn extended_info_body(row: &ResourceRow) -> Value {
        json!({
            "id": row.id,
            "name": "vaultExtendedInfo",
            "type": EXTENDED_INFO_TYPE,
            "etag": row.etag,
            "properties": row.body,
        })
    }

    pub fn get_vault_extended_info(&self, sub: &str, rg: &str, name: &str) -> Result<Value> {
        Ok(Self::extended_info_body(&self.extended_info_row(sub, rg, name)?))
    }

    /// PUT (replace) or PATCH (merge) the vault's extended info.
    pub fn set_vault_extended_info(&self, sub: &str, rg: &str, name: &str, req: &Value, merge: bool) -> Result<Value> {
        let mut row = self.extended_info_row(sub, rg, name)?;
        let m = body::object(req)?;
        let props = body::opt_obj(m, "properties", "")?.cloned().unwrap_or_default();
        for k in ["integrityKey", "encryptionKey", "encryptionKeyThumbprint", "algorithm"] {
            body::opt_str(&props, k, "properties.")?;
        }
        if merge {
            body::merge(&mut row.body, &Value::Object(props));
        } else {
            row.body = Value::Object(props);
        }
        row.etag = uuid::Uuid::new_v4().to_string();
        row.updated = self.now();
        self.store.write(|db| db.put_resource(&row))?;
        Ok(Self::extended_info_body(&row))
    }
}
