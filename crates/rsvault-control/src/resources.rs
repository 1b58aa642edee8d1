//! Tenants, subscriptions and resource groups (`Microsoft.Resources`).

use crate::{body, Caller, Control, Error, Result};
use rsvault_core::names;
use rsvault_store::{GroupRow, Page, SubscriptionRow};
use serde_json::{json, Map, Value};

fn subscription_body(s: &SubscriptionRow) -> Value {
    json!({
        "id": format!("/subscriptions/{}", s.id),
        "authorizationSource": "RoleBased",
        "managedByTenants": [],
        "subscriptionId": s.id,
        "tenantId": s.tenant_id,
        "displayName": s.display_name,
        "state": s.state,
        "subscriptionPolicies": {"locationPlacementId": "Public_2014-09-01", "quotaId": "PayAsYouGo_2014-09-01", "spendingLimit": "Off"},
    })
}

fn group_body(g: &GroupRow) -> Value {
    let mut v = json!({
        "id": g.id,
        "name": g.name,
        "type": "Microsoft.Resources/resourceGroups",
        "location": g.location,
        "properties": {"provisioningState": "Succeeded"},
    });
    if g.tags.as_object().is_some_and(|t| !t.is_empty()) {
        v["tags"] = g.tags.clone();
    }
    if let Some(m) = &g.managed_by {
        v["managedBy"] = json!(m);
    }
    v
}

impl Control {
    /// The subscription, or `SubscriptionNotFound`.
    pub fn subscription_row(&self, id: &str) -> Result<SubscriptionRow> {
        self.store
            .read_one(|db| db.subscription(id))?
            .ok_or_else(|| Error::SubscriptionNotFound(id.to_string()))
    }

    /// The resource group, or `ResourceGroupNotFound`.
    pub fn group_row(&self, sub: &str, name: &str) -> Result<GroupRow> {
        self.store
            .read_one(|db| db.group(sub, name))?
            .ok_or_else(|| Error::ResourceGroupNotFound(name.to_string()))
    }

    /// The tenant list (`GET /tenants`).
    pub fn list_tenants(&self) -> Vec<Value> {
        vec![json!({
            "id": format!("/tenants/{}", self.tenant_id),
            "tenantId": self.tenant_id,
            "tenantCategory": "Home",
            "displayName": "rsvault",
            "defaultDomain": "rsvault.local",
            "domains": ["rsvault.local"],
            "tenantType": "AAD",
        })]
    }

    /// Subscriptions the caller holds any role in.
    pub fn list_subscriptions(&self, caller: &Caller) -> Result<Vec<Value>> {
        let subs = self.store.read(|db| db.subscriptions())?;
        let mut out = vec![];
        for s in subs {
            if self.can_see(caller, &format!("/subscriptions/{}", s.id))? {
                out.push(subscription_body(&s));
            }
        }
        Ok(out)
    }

    pub fn get_subscription(&self, id: &str) -> Result<Value> {
        Ok(subscription_body(&self.subscription_row(id)?))
    }

    /// `PUT` a resource group; returns (created, body).
    pub fn put_group(&self, sub: &str, name: &str, req: &Value) -> Result<(bool, Value)> {
        self.subscription_row(sub)?;
        names::resource_group(name)?;
        let m = body::object(req)?;
        let location = body::location(m)?;
        let tags = body::tags(m)?.unwrap_or_default();
        let managed_by = body::opt_str(m, "managedBy", "")?.map(String::from);
        let existing = self.store.read(|db| db.group(sub, name))?;
        if let Some(e) = &existing {
            if e.location != location {
                return Err(Error::Conflict {
                    code: "InvalidResourceGroupLocation",
                    message: format!("Invalid resource group location '{location}'. The Resource group already exists in location '{}'.", e.location),
                });
            }
        }
        let row = GroupRow {
            subscription: sub.to_string(),
            name: existing
                .as_ref()
                .map(|e| e.name.clone())
                .unwrap_or_else(|| name.to_string()),
            id: existing
                .as_ref()
                .map(|e| e.id.clone())
                .unwrap_or_else(|| format!("/subscriptions/{sub}/resourceGroups/{name}")),
            location,
            tags: Value::Object(tags),
            managed_by,
            created: existing.as_ref().map(|e| e.created).unwrap_or_else(|| self.now()),
        };
        let created = self.store.write(|db| db.put_group(&row))?;
        Ok((created, group_body(&row)))
    }

    pub fn get_group(&self, sub: &str, name: &str) -> Result<Value> {
        self.subscription_row(sub)?;
        Ok(group_body(&self.group_row(sub, name)?))
    }

    /// `PATCH` a resource group: tags and managedBy.
    pub fn patch_group(&self, sub: &str, name: &str, req: &Value) -> Result<Value> {
        self.subscription_row(sub)?;
        let mut row = self.group_row(sub, name)?;
        let m = body::object(req)?;
        if let Some(t) = body::tags(m)? {
            row.tags = Value::Object(t);
        }
        if let Some(mb) = body::opt_str(m, "managedBy", "")? {
            row.managed_by = Some(mb.to_string());
        }
        self.store.write(|db| db.put_group(&row))?;
        Ok(group_body(&row))
    }

    /// Deletes a group and everything in it, each resource the way its own DELETE does: a vault that
    /// still holds protected items (soft-deleted ones included) refuses, as its own DELETE does, and
    /// then nothing is deleted; every other vault is kept as a deleted vault while its soft delete is
    /// on (`deletedvaults`), else goes with its rows, jobs, operation records, recovery point rows,
    /// sealed password and repository. VMs, storage accounts and shares are
    /// declarations and just go. One transaction decides and deletes.
    pub fn delete_group(&self, sub: &str, name: &str) -> Result<()> {
        self.subscription_row(sub)?;
        self.group_row(sub, name)?;
        let vault_type = crate::vaults::VAULT_TYPE;
        let now = self.now();
        let secrets = self.store.write(|db| {
            let vaults: Vec<_> = db
                .all_of_type(sub, vault_type)?
                .into_iter()
                .filter(|v| {
                    v.resource_group
                        .as_deref()
                        .is_some_and(|g| g.eq_ignore_ascii_case(name))
                })
                .collect();
            for v in &vaults {
                crate::vaults::check_vault_empty(db, v)?;
            }
            let mut secrets = vec![];
            for v in &vaults {
                secrets.push(crate::vaults::delete_vault_rows(db, v, now)?);
            }
            db.delete_group(sub, name)?;
            Ok::<_, Error>(secrets)
        })?;
        for s in secrets {
            self.vault_retired(s);
        }
        Ok(())
    }

    /// One page of the subscription's groups.
    pub fn list_groups(&self, sub: &str, after: Option<&str>) -> Result<Page<Value>> {
        self.subscription_row(sub)?;
        let p = self.store.read(|db| db.groups(sub, after, self.settings.page_size))?;
        Ok(Page {
            items: p.items.iter().map(group_body).collect(),
            next: p.next,
        })
    }
}

/// Shared by PUT handlers: a body's `tags` or an empty map.
pub(crate) fn tags_or_empty(m: &Map<String, Value>) -> Result<Map<String, Value>> {
    Ok(body::tags(m)?.unwrap_or_default())
}
