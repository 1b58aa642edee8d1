//! Vault soft delete: `Microsoft.RecoveryServices/locations/deletedVaults`.
//!
//! A vault whose soft delete is on (`softDeleteState` Enabled or AlwaysON, Azure's default) is not
//! removed by its DELETE (or its group's): in the delete's own transaction it becomes a **deleted
//! vault** — one resource row at `/subscriptions/S/providers/Microsoft.RecoveryServices/locations/L/deletedVaults/NAME`
//! that keeps the vault's row and every row below it (policies, configuration, extended info) as they
//! were, and takes over the vault's sealed password and repository record
//! ([`rsvault_store::Db::rekey_vault_secret`]), so the backup data stays where it is, encrypted, and
//! nothing else can reach it. Jobs, operation records and role assignments below the vault go, as
//! with any delete.
//!
//! * **Undelete** (`POST …/deletedVaults/NAME/undelete` with `recoveryResourceGroupId`) puts the rows
//!   back below the vault's id in that group (the original or another of the subscription), every id
//!   rebased, and hands the password back — one transaction; a vault of that name already in the
//!   group refuses (409). Its operation record answers `…/deletedVaults/NAME/operations/OP`.
//! * **Purge**: at `purgeAt` (deletion + the vault's `softDeleteRetentionPeriodInDays`) the
//!   scheduler's pass retires the record like a hard delete does, and the removals sweeper deletes
//!   the repository ([`Control::purge_deleted_vaults`]).
//! * A vault whose soft delete is Disabled is deleted at once, as before.
//!
//! The name of a deleted vault is its vault's name; a second deleted vault of the same name in the
//! same location (another group, or deleted again) gets the name with a short suffix.

use crate::vaults::VAULT_TYPE;
use crate::{Control, Error, Result};
use chrono::{DateTime, Duration, Utc};
use rsvault_core::time;
use rsvault_store::{Db, OperationRow, ResourceRow};
use serde_json::{json, Value};

/// The ARM type of a deleted vault.
pub const DELETED_VAULT_TYPE: &str = "Microsoft.RecoveryServices/locations/deletedVaults";
/// Where a deleted vault's body keeps what undelete puts back; never rendered.
const STASH: &str = "rsvaultKept";

/// How many days a vault is kept after its delete, or `None` when its soft delete is off.
pub(crate) fn soft_delete_days(vault: &ResourceRow) -> Option<i64> {
    let sd = vault.body.pointer("/properties/securitySettings/softDeleteSettings");
    let state = sd.and_then(|s| s["softDeleteState"].as_str()).unwrap_or("Enabled");
    if state.eq_ignore_ascii_case("Disabled") {
        return None;
    }
    Some(
        sd.and_then(|s| s["softDeleteRetentionPeriodInDays"].as_i64())
            .unwrap_or(14),
    )
}

fn row_json(r: &ResourceRow) -> Value {
    json!({
        "id": r.id, "type": r.type_key, "name": r.name, "parent": r.parent_key, "body": r.body,
        "etag": r.etag, "created": time::timestamp(r.created), "updated": time::timestamp(r.updated),
    })
}

fn row_from_json(v: &Value, sub: &str, rg: &str) -> Result<ResourceRow> {
    let s = |k: &str| {
        v[k].as_str()
            .map(String::from)
            .ok_or_else(|| Error::internal(format!("deleted vault record without {k}")))
    };
    let t = |k: &str| -> Result<DateTime<Utc>> {
        DateTime::parse_from_rfc3339(&s(k)?)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|e| Error::internal(format!("deleted vault record: {k}: {e}")))
    };
    Ok(ResourceRow {
        id: s("id")?,
        subscription: sub.to_string(),
        resource_group: Some(rg.to_string()),
        type_key: s("type")?,
        name: s("name")?,
        parent_key: v["parent"].as_str().map(String::from),
        body: v["body"].clone(),
        etag: s("etag")?,
        created: t("created")?,
        updated: t("updated")?,
    })
}

/// `s` with its leading `from` (compared case-insensitively, as ids are) replaced by `to`.
fn rebase(s: &str, from: &str, to: &str) -> Option<String> {
    let head = s.get(..from.len())?;
    let boundary = s[from.len()..].is_empty() || s[from.len()..].starts_with('/');
    (head.eq_ignore_ascii_case(from) && boundary).then(|| format!("{to}{}", &s[from.len()..]))
}

/// Every string of a body that is an id at or below `from`, rebased on `to`.
fn rebase_json(v: &mut Value, from: &str, to: &str) {
    match v {
        Value::String(s) => {
            if let Some(n) = rebase(s, from, to) {
                *s = n;
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|x| rebase_json(x, from, to)),
        Value::Object(m) => m.values_mut().for_each(|x| rebase_json(x, from, to)),
        _ => {}
    }
}

/// The wire form of a deleted vault (its stored body without what undelete keeps).
fn wire(row: &ResourceRow) -> Value {
    let mut v = row.body.clone();
    if let Some(m) = v.as_object_mut() {
        m.remove(STASH);
    }
    v
}

fn deleted_id(sub: &str, location: &str, name: &str) -> String {
    format!("/subscriptions/{sub}/providers/Microsoft.RecoveryServices/locations/{location}/deletedVaults/{name}")
}

/// In a delete's transaction: keeps `vault` (already checked empty) and what is below it as a
/// deleted vault until `now + days`, takes over its password, and deletes its rows.
pub(crate) fn keep_deleted(db: &Db, vault: &ResourceRow, now: DateTime<Utc>, days: i64) -> Result<()> {
    let location = vault.body["location"].as_str().unwrap_or("westus").to_string();
    let mut name = vault.name.clone();
    if db
        .resource(&deleted_id(&vault.subscription, &location, &name))?
        .is_some()
    {
        name = format!("{}-{}", vault.name, &uuid::Uuid::new_v4().simple().to_string()[..8]);
    }
    let id = deleted_id(&vault.subscription, &location, &name);
    let below: Vec<Value> = db.subtree(&vault.id)?.iter().map(row_json).collect();
    let body = json!({
        "id": id,
        "name": name,
        "type": DELETED_VAULT_TYPE,
        "properties": {
            "vaultId": vault.id,
            "vaultDeletionTime": time::timestamp(now),
            "purgeAt": time::timestamp(now + Duration::days(days)),
        },
        STASH: {"vault": row_json(vault), "below": below, "location": location},
    });
    db.put_resource(&ResourceRow {
        id: id.clone(),
        subscription: vault.subscription.clone(),
        resource_group: None,
        type_key: DELETED_VAULT_TYPE.to_ascii_lowercase(),
        name,
        parent_key: None,
        body,
        etag: time::datetime_etag(now),
        created: now,
        updated: now,
    })?;
    db.rekey_vault_secret(&vault.id, &id)?;
    db.delete_resource(&vault.id)?;
    db.delete_operations_below(&vault.id)?;
    Ok(())
}

fn purge_at(row: &ResourceRow) -> Option<DateTime<Utc>> {
    row.body
        .pointer("/properties/purgeAt")
        .and_then(Value::as_str)
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&Utc))
}

impl Control {
    fn deleted_vault_row(&self, sub: &str, location: &str, name: &str) -> Result<ResourceRow> {
        self.subscription_row(sub)?;
        self.store
            .read(|db| db.resource(&deleted_id(sub, location, name)))?
            .ok_or_else(|| Error::NotFound {
                code: "ResourceNotFound",
                message: format!("The deleted vault '{name}' was not found in location '{location}'."),
            })
    }

    /// The subscription's deleted vaults in one location.
    pub fn list_deleted_vaults(&self, sub: &str, location: &str) -> Result<Vec<Value>> {
        self.subscription_row(sub)?;
        let rows = self.store.read(|db| db.all_of_type(sub, DELETED_VAULT_TYPE))?;
        let prefix = deleted_id(sub, location, "").to_ascii_lowercase();
        Ok(rows
            .iter()
            .filter(|r| r.id.to_ascii_lowercase().starts_with(&prefix))
            .map(wire)
            .collect())
    }

    pub fn get_deleted_vault(&self, sub: &str, location: &str, name: &str) -> Result<Value> {
        Ok(wire(&self.deleted_vault_row(sub, location, name)?))
    }

    /// Puts a deleted vault back into the group `recoveryResourceGroupId` names. Returns the id of
    /// its operation record and the deleted vault as it was.
    pub fn undelete_vault(&self, sub: &str, location: &str, name: &str, req: &Value) -> Result<(String, Value)> {
        let target = req
            .pointer("/properties/recoveryResourceGroupId")
            .and_then(Value::as_str)
            .ok_or_else(|| Error::Invalid {
                code: "InvalidParameter",
                message: "The request must name the resource group to recover the vault into: properties.recoveryResourceGroupId.".into(),
                target: Some("properties.recoveryResourceGroupId".into()),
            })?;
        let parts: Vec<&str> = target.trim_matches('/').split('/').collect();
        let rg = match parts.as_slice() {
            [s, sid, g, rg] if s.eq_ignore_ascii_case("subscriptions")
                && g.eq_ignore_ascii_case("resourceGroups")
                && sid.eq_ignore_ascii_case(sub) => *rg,
            _ => {
                return Err(Error::Invalid {
                    code: "InvalidParameter",
                    message: format!("'{target}' is not a resource group id of subscription '{sub}' (/subscriptions/{sub}/resourceGroups/NAME)."),
                    target: Some("properties.recoveryResourceGroupId".into()),
                })
            }
        };
        let deleted = self.deleted_vault_row(sub, location, name)?;
        self.undelete_as_read(sub, deleted, rg)
    }

    /// The rest of [`Control::undelete_vault`], from the deleted vault's row as it was read: it is
    /// restored only if that row is still there, unchanged, when the restore commits — a purge that
    /// won the race leaves a `ResourceNotFound`, never a vault whose repository is being removed.
    pub fn undelete_as_read(&self, sub: &str, deleted: ResourceRow, rg: &str) -> Result<(String, Value)> {
        let group = self.group_row(sub, rg)?;
        let kept = &deleted.body[STASH];
        let mut vault = row_from_json(&kept["vault"], sub, &group.name)?;
        let old_id = vault.id.clone();
        let new_id = format!(
            "/subscriptions/{sub}/resourceGroups/{}/providers/{VAULT_TYPE}/{}",
            group.name, vault.name
        );
        let mut rows = vec![];
        for r in kept["below"].as_array().into_iter().flatten() {
            rows.push(row_from_json(r, sub, &group.name)?);
        }
        for r in std::iter::once(&mut vault).chain(rows.iter_mut()) {
            r.id = rebase(&r.id, &old_id, &new_id).unwrap_or_else(|| r.id.clone());
            r.parent_key = r
                .parent_key
                .as_deref()
                .map(|p| rebase(p, &old_id, &new_id).map_or(p.to_string(), |n| n.to_ascii_lowercase()));
            rebase_json(&mut r.body, &old_id, &new_id);
        }
        let now = self.now();
        let op = crate::vaults::done_operation(&deleted.id, "VaultUndelete", now);
        self.store.write(|db| {
            if db.resource(&deleted.id)?.as_ref() != Some(&deleted) {
                return Err(Error::NotFound {
                    code: "ResourceNotFound",
                    message: format!("The deleted vault '{}' was purged or changed while it was being recovered.", deleted.name),
                });
            }
            if db.resource(&new_id)?.is_some() {
                return Err(Error::Conflict {
                    code: "ResourceAlreadyExists",
                    message: format!("A vault named '{}' already exists in resource group '{}'; delete or rename it, or recover the deleted vault into another group.", vault.name, group.name),
                });
            }
            db.put_resource(&vault)?;
            for r in &rows {
                db.put_resource(r)?;
            }
            db.rekey_vault_secret(&deleted.id, &new_id)?;
            db.delete_resource(&deleted.id)?;
            db.put_operation(&op)?;
            Ok(())
        })?;
        tracing::info!(vault = %new_id, "deleted vault recovered");
        Ok((op.id, wire(&deleted)))
    }

    /// An undelete's operation record (the deleted vault itself is gone once it succeeded).
    pub fn deleted_vault_operation(&self, sub: &str, location: &str, name: &str, op: &str) -> Result<OperationRow> {
        self.subscription_row(sub)?;
        let scope = deleted_id(sub, location, name).to_ascii_lowercase();
        self.store
            .read(|db| db.operation(op))?
            .filter(|o| o.scope_key == scope)
            .ok_or_else(|| Error::NotFound {
                code: "ResourceNotFound",
                message: format!("The operation '{op}' was not found for deleted vault '{name}'."),
            })
    }

    /// When each deleted vault is due to be purged (the scheduler's next due instant).
    pub(crate) fn deleted_vault_purges(&self) -> Result<Vec<DateTime<Utc>>> {
        Ok(self
            .store
            .read(|db| db.everywhere_of_type(DELETED_VAULT_TYPE))?
            .iter()
            .filter_map(purge_at)
            .collect())
    }

    /// The scheduler's pass: deleted vaults whose `purgeAt` has come are retired as a hard delete
    /// retires a vault, and their repositories handed to the removals sweeper. Returns how many.
    pub fn purge_deleted_vaults(&self, now: DateTime<Utc>) -> Result<usize> {
        let due: Vec<ResourceRow> = self
            .store
            .read(|db| db.everywhere_of_type(DELETED_VAULT_TYPE))?
            .into_iter()
            .filter(|r| purge_at(r).is_some_and(|t| t <= now))
            .collect();
        let mut purged = 0;
        for r in &due {
            purged += usize::from(self.purge_deleted_vault(r, now)?);
        }
        Ok(purged)
    }

    /// Purges one deleted vault, from its row as the pass read it, if that row is still there,
    /// unchanged and due when the purge commits (an undelete that won the race keeps its vault and
    /// repository). Returns whether it was purged.
    pub fn purge_deleted_vault(&self, as_read: &ResourceRow, now: DateTime<Utc>) -> Result<bool> {
        let secret = self.store.write(|db| {
            let current = db.resource(&as_read.id)?;
            if current.as_ref() != Some(as_read) || purge_at(as_read).is_none_or(|t| t > now) {
                return Ok::<_, Error>(None);
            }
            let s = db.retire_vault_secret(&as_read.id)?;
            db.delete_resource(&as_read.id)?;
            Ok(Some(s))
        })?;
        let Some(secret) = secret else {
            tracing::info!(deleted_vault = %as_read.id, "deleted vault changed or recovered before its purge: kept");
            return Ok(false);
        };
        tracing::info!(deleted_vault = %as_read.id, "soft delete period over: deleted vault purged");
        self.vault_retired(secret);
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rebase_moves_ids_at_or_below_only() {
        let from = "/subscriptions/s/resourceGroups/RG/providers/Microsoft.RecoveryServices/vaults/v";
        let to = "/subscriptions/s/resourceGroups/other/providers/Microsoft.RecoveryServices/vaults/v";
        let cases = [
            (from.to_string(), Some(to.to_string())),
            (
                format!("{}/backupPolicies/P", from.to_ascii_lowercase()),
                Some(format!("{to}/backupPolicies/P")),
            ),
            (format!("{from}2"), None),
            ("westus".to_string(), None),
        ];
        for (s, want) in cases {
            assert_eq!(rebase(&s, from, to), want, "{s}");
        }
        let mut body = json!({"id": format!("{from}/backupPolicies/P"), "properties": {"list": [from, "x"]}});
        rebase_json(&mut body, from, to);
        assert_eq!(body["id"], format!("{to}/backupPolicies/P"));
        assert_eq!(body["properties"]["list"][0], to);
    }

    #[test]
    fn soft_delete_is_on_unless_disabled() {
        let row = |sd: Value| ResourceRow {
            id: "x".into(),
            subscription: "s".into(),
            resource_group: None,
            type_key: "t".into(),
            name: "n".into(),
            parent_key: None,
            body: json!({"properties": {"securitySettings": {"softDeleteSettings": sd}}}),
            etag: String::new(),
            created: Utc::now(),
            updated: Utc::now(),
        };
        assert_eq!(soft_delete_days(&row(json!(null))), Some(14));
        assert_eq!(
            soft_delete_days(&row(
                json!({"softDeleteState": "AlwaysON", "softDeleteRetentionPeriodInDays": 30})
            )),
            Some(30)
        );
        assert_eq!(soft_delete_days(&row(json!({"softDeleteState": "Disabled"}))), None);
    }
}
