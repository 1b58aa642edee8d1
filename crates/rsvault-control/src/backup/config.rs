//! Vault-level backup configuration clients read and write: `backupconfig/vaultconfig` (soft delete,
//! enhanced security), `backupstorageconfig/vaultstorageconfig` (storage redundancy),
//! `backupEncryptionConfigs/backupResourceEncryptionConfig`, `backupUsageSummaries` and the (always
//! empty) `backupResourceGuardProxies`.
//!
//! Soft delete has one source of truth: the vault's `securitySettings.softDeleteSettings`. The
//! vaultconfig resource reads and writes it, so `az backup vault backup-properties set
//! --soft-delete-feature-state Disable` and a vault PATCH agree. Storage redundancy locks
//! (`storageTypeState: Locked`) once the vault protects an item, as Azure's does.

use super::{CONTAINER_TYPE, POLICY_TYPE, PROTECTED_ITEM_TYPE};
use crate::{body, Control, Error, Result};
use rsvault_store::ResourceRow;
use serde_json::{json, Map, Value};

const STORAGE_CONFIG_TYPE: &str = "Microsoft.RecoveryServices/vaults/backupstorageconfig";
const ENCRYPTION_TYPE: &str = "Microsoft.RecoveryServices/vaults/backupEncryptionConfigs";
const SOFT_DELETE_STATES: &[&str] = &["Invalid", "Enabled", "Disabled", "AlwaysON"];
const STORAGE_TYPES: &[&str] = &[
    "Invalid",
    "GeoRedundant",
    "LocallyRedundant",
    "ZoneRedundant",
    "ReadAccessGeoZoneRedundant",
];

/// The id of a vault singleton: always `/subscriptions/…` whatever the request's casing, as Azure does.
fn singleton_id(vault: &ResourceRow, suffix: &str) -> String {
    let id = &vault.id;
    let rest = id.split_once('/').map(|x| x.1).unwrap_or(id);
    let rest = rest.split_once('/').map(|x| x.1).unwrap_or(rest);
    format!("/subscriptions/{rest}/{suffix}")
}

impl Control {
    /// `GET backupconfig/vaultconfig`.
    pub fn get_vault_config(&self, sub: &str, rg: &str, vault: &str) -> Result<Value> {
        let v = self.vault_row(sub, rg, vault)?;
        Ok(vault_config_body(&v))
    }

    /// `PUT` / `PATCH backupconfig/vaultconfig`: writes the vault's soft delete settings.
    pub fn set_vault_config(&self, sub: &str, rg: &str, vault: &str, req: &Value) -> Result<Value> {
        let mut v = self.vault_row(sub, rg, vault)?;
        let m = body::object(req)?;
        let props = body::opt_obj(m, "properties", "")?.cloned().unwrap_or_default();
        let sd = v
            .body
            .pointer("/properties/securitySettings/softDeleteSettings")
            .cloned()
            .unwrap_or_else(|| json!({}));
        let before = v.body.clone();
        let mut sd = sd;
        if let Some(state) = body::opt_enum(&props, "softDeleteFeatureState", "properties.", SOFT_DELETE_STATES)? {
            sd["softDeleteState"] = json!(state);
        }
        if let Some(state) = body::opt_enum(&props, "enhancedSecurityState", "properties.", SOFT_DELETE_STATES)? {
            sd["enhancedSecurityState"] = json!(state);
        }
        if let Some(days) = body::opt_int(&props, "softDeleteRetentionPeriodInDays", "properties.")? {
            if !(14..=180).contains(&days) {
                return Err(Error::Invalid {
                    code: "BMSUserErrorInvalidSoftDeleteRetentionPeriod",
                    message: "Soft delete retention period must be between 14 and 180 days.".into(),
                    target: Some("properties.softDeleteRetentionPeriodInDays".into()),
                });
            }
            sd["softDeleteRetentionPeriodInDays"] = json!(days);
        }
        let p = &mut v.body["properties"];
        if !p["securitySettings"].is_object() {
            p["securitySettings"] = json!({});
        }
        p["securitySettings"]["softDeleteSettings"] = sd;
        // AlwaysON stays on; an immutable vault keeps soft delete (the vault PATCH's own rules).
        crate::immutability::check_settings_change(&before, &v.body).map_err(|e| match e {
            Error::Invalid { code, message, .. } => Error::Invalid {
                code,
                message,
                target: Some("properties.softDeleteFeatureState".into()),
            },
            other => other,
        })?;
        v.updated = self.now();
        v.body["etag"] = json!(rsvault_core::time::datetime_etag(v.updated));
        v.etag = v.body["etag"].as_str().unwrap_or_default().to_string();
        self.store.write(|db| db.put_resource(&v))?;
        Ok(vault_config_body(&v))
    }

    fn storage_config_row(&self, v: &ResourceRow) -> Result<Option<ResourceRow>> {
        let id = format!("{}/backupstorageconfig/vaultstorageconfig", v.id);
        Ok(self.store.read(|db| db.resource(&id))?)
    }

    /// A vault's redundancy as its storage configuration says: its `storageType` and whether
    /// cross-region restore is on.
    pub(crate) fn vault_redundancy(&self, vault_id: &str) -> Result<(String, bool)> {
        let Some(v) = self.store.read(|db| db.resource(vault_id))? else {
            return Ok(("LocallyRedundant".into(), false));
        };
        let b = self.storage_config_body(&v)?;
        Ok((
            b["properties"]["storageType"]
                .as_str()
                .unwrap_or("GeoRedundant")
                .to_string(),
            b["properties"]["crossRegionRestoreFlag"].as_bool().unwrap_or(false),
        ))
    }

    /// `GET backupstorageconfig/vaultstorageconfig`.
    pub fn get_storage_config(&self, sub: &str, rg: &str, vault: &str) -> Result<Value> {
        let v = self.vault_row(sub, rg, vault)?;
        self.storage_config_body(&v)
    }

    fn storage_config_body(&self, v: &ResourceRow) -> Result<Value> {
        let stored = self.storage_config_row(v)?.map(|r| r.body).unwrap_or_else(|| {
            let redundancy = v
                .body
                .pointer("/properties/redundancySettings/standardTierStorageRedundancy")
                .and_then(Value::as_str)
                .unwrap_or("GeoRedundant");
            json!({"storageModelType": redundancy, "storageType": redundancy, "crossRegionRestoreFlag": false, "dedupState": "Disabled", "xcoolState": "Disabled"})
        });
        let locked = self.store.read(|db| db.count_below(&v.id, PROTECTED_ITEM_TYPE))? > 0;
        let mut props = stored;
        props["storageTypeState"] = json!(if locked { "Locked" } else { "Unlocked" });
        Ok(json!({
            "id": singleton_id(v, "backupstorageconfig/vaultstorageconfig"),
            "name": "vaultstorageconfig",
            "type": STORAGE_CONFIG_TYPE,
            "properties": props,
        }))
    }

    /// `PUT` / `PATCH backupstorageconfig/vaultstorageconfig`: the redundancy can change until the
    /// vault protects its first item.
    pub fn set_storage_config(&self, sub: &str, rg: &str, vault: &str, req: &Value) -> Result<Value> {
        let v = self.vault_row(sub, rg, vault)?;
        let m = body::object(req)?;
        let props = body::opt_obj(m, "properties", "")?.cloned().unwrap_or_default();
        let current = self.storage_config_body(&v)?;
        let mut next: Map<String, Value> = current["properties"].as_object().cloned().unwrap_or_default();
        let locked = next.get("storageTypeState").and_then(Value::as_str) == Some("Locked");
        for key in ["storageModelType", "storageType"] {
            if let Some(t) = body::opt_enum(&props, key, "properties.", STORAGE_TYPES)? {
                if locked && next.get(key).and_then(Value::as_str) != Some(t) {
                    return Err(Error::Invalid {
                        code: "BMSUserErrorStorageTypeLocked",
                        message:
                            "The storage replication type cannot be changed once items are protected in the vault."
                                .into(),
                        target: Some(format!("properties.{key}")),
                    });
                }
                next.insert("storageModelType".into(), json!(t));
                next.insert("storageType".into(), json!(t));
            }
        }
        if let Some(crr) = props.get("crossRegionRestoreFlag") {
            let b = crr.as_bool().ok_or_else(|| {
                Error::InvalidRequestContent(
                    "Error converting value at path 'properties.crossRegionRestoreFlag': expected a boolean.".into(),
                )
            })?;
            next.insert("crossRegionRestoreFlag".into(), json!(b));
        }
        for k in ["dedupState", "xcoolState"] {
            if let Some(s) = body::opt_enum(&props, k, "properties.", &["Invalid", "Enabled", "Disabled"])? {
                next.insert(k.into(), json!(s));
            }
        }
        next.remove("storageTypeState");
        let now = self.now();
        let row = ResourceRow {
            id: format!("{}/backupstorageconfig/vaultstorageconfig", v.id),
            subscription: v.subscription.clone(),
            resource_group: v.resource_group.clone(),
            type_key: STORAGE_CONFIG_TYPE.to_ascii_lowercase(),
            name: "vaultstorageconfig".into(),
            parent_key: Some(v.id.to_ascii_lowercase()),
            body: Value::Object(next),
            etag: uuid::Uuid::new_v4().to_string(),
            created: now,
            updated: now,
        };
        self.store.write(|db| db.put_resource(&row))?;
        self.storage_config_body(&v)
    }

    /// `GET backupEncryptionConfigs/backupResourceEncryptionConfig`: vault data is encrypted with a key
    /// rsvault manages (the restic repository key), which is Azure's `MicrosoftManaged`.
    pub fn get_encryption_config(&self, sub: &str, rg: &str, vault: &str) -> Result<Value> {
        let v = self.vault_row(sub, rg, vault)?;
        let id = format!("{}/backupEncryptionConfigs/backupResourceEncryptionConfig", v.id);
        let props = self
            .store
            .read(|db| db.resource(&id))?
            .map(|r| r.body)
            .unwrap_or_else(|| {
                json!({"useSystemAssignedIdentity": true, "encryptionAtRestType": "MicrosoftManaged", "lastUpdateStatus": "NotEnabled", "infrastructureEncryptionState": "Disabled"})
            });
        Ok(
            json!({"id": singleton_id(&v, "backupEncryptionConfigs/backupResourceEncryptionConfig"), "name": "backupResourceEncryptionConfig", "type": ENCRYPTION_TYPE, "properties": props}),
        )
    }

    /// `PUT backupEncryptionConfigs/backupResourceEncryptionConfig`: customer-managed keys are not
    /// available in rsvault (it has no key vault), so only `MicrosoftManaged` is accepted.
    pub fn set_encryption_config(&self, sub: &str, rg: &str, vault: &str, req: &Value) -> Result<()> {
        let v = self.vault_row(sub, rg, vault)?;
        let m = body::object(req)?;
        let props = body::opt_obj(m, "properties", "")?.cloned().unwrap_or_default();
        let ty = body::opt_enum(
            &props,
            "encryptionAtRestType",
            "properties.",
            &["Invalid", "MicrosoftManaged", "CustomerManaged"],
        )?;
        if ty == Some("CustomerManaged") {
            return Err(Error::Invalid {
                code: "BMSUserErrorCustomerManagedKeyNotSupported",
                message: "rsvault encrypts vault data with keys it manages; customer-managed keys (Azure Key Vault) are not available.".into(),
                target: Some("properties.encryptionAtRestType".into()),
            });
        }
        let infra = body::opt_enum(
            &props,
            "infrastructureEncryptionState",
            "properties.",
            &["Invalid", "Disabled", "Enabled"],
        )?
        .unwrap_or("Disabled");
        let now = self.now();
        let row = ResourceRow {
            id: format!("{}/backupEncryptionConfigs/backupResourceEncryptionConfig", v.id),
            subscription: v.subscription.clone(),
            resource_group: v.resource_group.clone(),
            type_key: ENCRYPTION_TYPE.to_ascii_lowercase(),
            name: "backupResourceEncryptionConfig".into(),
            parent_key: Some(v.id.to_ascii_lowercase()),
            body: json!({"useSystemAssignedIdentity": true, "encryptionAtRestType": "MicrosoftManaged", "lastUpdateStatus": "Succeeded", "infrastructureEncryptionState": infra}),
            etag: uuid::Uuid::new_v4().to_string(),
            created: now,
            updated: now,
        };
        self.store.write(|db| db.put_resource(&row))?;
        Ok(())
    }

    /// `GET backupUsageSummaries`: counts of what the vault holds.
    pub fn usage_summaries(&self, sub: &str, rg: &str, vault: &str) -> Result<Vec<Value>> {
        let v = self.vault_row(sub, rg, vault)?;
        let items = self.store.read(|db| db.count_below(&v.id, PROTECTED_ITEM_TYPE))?;
        let containers = self.store.read(|db| db.count_below(&v.id, CONTAINER_TYPE))?;
        let policies = self.store.read(|db| db.count_below(&v.id, POLICY_TYPE))?;
        let usage = |value: &str, localized: &str, current: i64| json!({"unit": "Count", "quotaPeriod": "P1D", "currentValue": current, "limit": -1, "name": {"value": value, "localizedValue": localized}});
        Ok(vec![
            usage("ProtectedItemCount", "Protected Items", items),
            usage("ProtectionContainerCount", "Protection Containers", containers),
            usage("PolicyCount", "Backup Policies", policies),
        ])
    }
}

fn vault_config_body(v: &ResourceRow) -> Value {
    let sd = v.body.pointer("/properties/securitySettings/softDeleteSettings");
    let get = |k: &str, d: &str| {
        sd.and_then(|s| s.get(k))
            .and_then(Value::as_str)
            .unwrap_or(d)
            .to_string()
    };
    let state = get("softDeleteState", "Enabled");
    let days = sd
        .and_then(|s| s.get("softDeleteRetentionPeriodInDays"))
        .and_then(Value::as_i64)
        .unwrap_or(14);
    json!({
        "id": singleton_id(v, "backupconfig/vaultconfig"),
        "name": "vaultconfig",
        "type": "Microsoft.RecoveryServices/vaults/backupconfig",
        "properties": {
            "enhancedSecurityState": get("enhancedSecurityState", "Enabled"),
            "softDeleteFeatureState": state,
            "softDeleteRetentionPeriodInDays": days,
            "isSoftDeleteFeatureStateEditable": state != "AlwaysON",
        },
    })
}
