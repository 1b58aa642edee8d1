//! Principals, role assignments, role definitions and the authorization decision.
//!
//! *Invariant*: every ARM request is authorized by [`Control::authorize`] with the action its route
//! declares, at the scope its path names, before it is carried out.
//!
//! A principal's assignments are read from the store once and kept in memory ([`GrantCache`]) for as
//! long as the store's access generation ([`rsvault_store::ACCESS_GENERATION`], moved by every change of
//! role assignments in that change's transaction, on any node) stays the same: each decision reads only
//! that counter (one indexed row), so an assignment removed on any node that shares the store stops
//! access from the next request on.

use crate::{body, Caller, Control, Error, Result};
use rsvault_core::ids::{key, scope_contains, ResourceId};
use rsvault_identity::rbac::{self, Grant, RoleDefinition};
use rsvault_identity::secrets;
use rsvault_store::{PrincipalRow, RoleAssignmentRow};
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// How many principals' assignments a [`GrantCache`] keeps at most.
const MAX_CACHED_PRINCIPALS: usize = 10_000;

/// Principals' role assignments as the evaluator needs them, valid at one access generation.
#[derive(Debug, Default)]
pub struct GrantCache {
    state: Mutex<CachedGrants>,
}

#[derive(Debug, Default)]
struct CachedGrants {
    /// The access generation these grants were read at (or after).
    generation: String,
    by_object_id: HashMap<String, Arc<Vec<Grant>>>,
}

impl GrantCache {
    fn get(&self, generation: &str, object_id: &str) -> Option<Arc<Vec<Grant>>> {
        let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        (st.generation == generation)
            .then(|| st.by_object_id.get(object_id).cloned())
            .flatten()
    }

    /// Keeps `grants`, read after `generation` was: any later change moves the generation past it.
    fn put(&self, generation: &str, object_id: &str, grants: Arc<Vec<Grant>>) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.generation != generation || st.by_object_id.len() >= MAX_CACHED_PRINCIPALS {
            st.by_object_id.clear();
            st.generation = generation.to_string();
        }
        st.by_object_id.insert(object_id.to_string(), grants);
    }
}

/// A principal just created (the only time its secret is shown).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NewPrincipal {
    pub tenant_id: String,
    pub client_id: String,
    pub client_secret: String,
    pub object_id: String,
    pub display_name: String,
}

const ASSIGNMENTS: &str = "/providers/Microsoft.Authorization/roleAssignments/";
const DEFINITIONS: &str = "/providers/Microsoft.Authorization/roleDefinitions/";

fn scope_prefix(scope: &str) -> &str {
    scope.trim_end_matches('/')
}

fn definition_body(scope: &str, r: &RoleDefinition) -> Value {
    let base = if scope_prefix(scope).is_empty() {
        String::new()
    } else {
        scope_prefix(scope).to_string()
    };
    json!({
        "id": format!("{base}{DEFINITIONS}{}", r.name),
        "name": r.name,
        "type": "Microsoft.Authorization/roleDefinitions",
        "properties": {
            "roleName": r.role_name,
            "type": "BuiltInRole",
            "description": r.description,
            "assignableScopes": ["/"],
            "permissions": r.permissions.iter().map(|p| json!({
                "actions": p.actions, "notActions": p.not_actions,
                "dataActions": p.data_actions, "notDataActions": p.not_data_actions,
            })).collect::<Vec<_>>(),
            "createdOn": "2015-02-02T21:55:09.8806423Z",
            "updatedOn": "2025-01-01T00:00:00.0000000Z",
            "createdBy": null,
            "updatedBy": null,
        }
    })
}

fn assignment_body(a: &RoleAssignmentRow) -> Value {
    let t = rsvault_core::time::timestamp(a.created);
    json!({
        "id": a.id,
        "name": a.name,
        "type": "Microsoft.Authorization/roleAssignments",
        "properties": {
            "roleDefinitionId": a.role_definition_id,
            "principalId": a.principal_id,
            "principalType": a.principal_type,
            "scope": a.scope,
            "condition": null,
            "conditionVersion": null,
            "createdOn": t,
            "updatedOn": t,
            "createdBy": a.created_by,
            "updatedBy": a.created_by,
            "delegatedManagedIdentityResourceId": null,
            "description": null,
        }
    })
}

/// Reads `$filter` values such as `principalId eq '…'`, `assignedTo('…')`, `roleName eq '…'`, `atScope()`.
fn filter_value<'a>(filter: &'a str, name: &str) -> Option<&'a str> {
    let f = filter.trim();
    let lower = f.to_ascii_lowercase();
    let i = lower.find(&name.to_ascii_lowercase())?;
    let rest = &f[i + name.len()..];
    let start = rest.find('\'')? + 1;
    let end = rest[start..].find('\'')? + start;
    Some(&rest[start..end])
}

impl Control {
    /// The principal's assignments: from memory while the access generation is unchanged, else read.
    fn grants(&self, object_id: &str) -> Result<Arc<Vec<Grant>>> {
        let generation = self.store.read_one(|db| db.access_generation())?;
        if let Some(g) = self.grant_cache.get(&generation, object_id) {
            return Ok(g);
        }
        let grants: Arc<Vec<Grant>> = Arc::new(
            self.store
                .read_one(|db| db.role_assignments_of(object_id))?
                .into_iter()
                .map(|a| Grant {
                    scope: a.scope,
                    role_definition_id: a.role_definition_id,
                })
                .collect(),
        );
        self.grant_cache.put(&generation, object_id, grants.clone());
        Ok(grants)
    }

    /// Allows the caller to perform `action` at `scope`, or answers `AuthorizationFailed`.
    pub fn authorize(&self, caller: &Caller, action: &str, scope: &str) -> Result<()> {
        if rbac::is_allowed(&self.grants(&caller.object_id)?, action, scope) {
            return Ok(());
        }
        Err(Error::AuthorizationFailed {
            client: caller.client_id.clone(),
            object_id: caller.object_id.clone(),
            action: action.to_string(),
            scope: scope.to_string(),
        })
    }

    /// ARM's linked access check: a caller allowed `action` on `scope` (checked by the pipeline) must
    /// also hold each `(linked_action, linked_scope)` for the resources the request reaches beyond its
    /// own path (the VM a vault protects, the storage account a restore writes). Otherwise
    /// `LinkedAuthorizationFailed` (403), as ARM answers; nothing is looked up first, so the answer
    /// says nothing about whether the linked resource exists.
    pub fn authorize_linked(&self, caller: &Caller, action: &str, scope: &str, linked: &[(&str, &str)]) -> Result<()> {
        let grants = self.grants(&caller.object_id)?;
        for (linked_action, linked_scope) in linked {
            if !rbac::is_allowed(&grants, linked_action, linked_scope) {
                return Err(Error::LinkedAuthorizationFailed(format!(
                    "The client '{}' with object id '{}' has permission to perform action '{action}' on scope '{scope}'; however, it does not have permission to perform action(s) '{linked_action}' on the linked scope(s) '{linked_scope}' (respectively) or the linked scope(s) are invalid.",
                    caller.client_id, caller.object_id
                )));
            }
        }
        Ok(())
    }

    /// True when the caller may perform `action` at `scope`.
    pub fn may(&self, caller: &Caller, action: &str, scope: &str) -> Result<bool> {
        Ok(rbac::is_allowed(&self.grants(&caller.object_id)?, action, scope))
    }

    /// Allows a server-wide administrative `action` (rsvault's own admin endpoints) only to a caller
    /// holding the Owner role at the root or a whole subscription; otherwise `AuthorizationFailed`.
    pub fn authorize_owner(&self, caller: &Caller, action: &str) -> Result<()> {
        let owner = rbac::find_role("Owner").map(|r| r.name.as_str());
        let ok = self.grants(&caller.object_id)?.iter().any(|g| {
            let depth = g.scope.split('/').filter(|s| !s.is_empty()).count();
            depth <= 2 && rbac::find_role(&g.role_definition_id).map(|r| r.name.as_str()) == owner
        });
        if ok {
            return Ok(());
        }
        Err(Error::AuthorizationFailed {
            client: caller.client_id.clone(),
            object_id: caller.object_id.clone(),
            action: action.to_string(),
            scope: "/".to_string(),
        })
    }

    /// True when the caller holds any assignment at, above or below `scope`.
    pub fn can_see(&self, caller: &Caller, scope: &str) -> Result<bool> {
        Ok(rbac::can_see(&self.grants(&caller.object_id)?, scope))
    }

    // ---- principals (CLI) ----------------------------------------------------------------------

    /// Creates a service principal, optionally with a role at a scope.
    pub fn create_principal(&self, display_name: &str, role: Option<(&str, &str)>) -> Result<NewPrincipal> {
        let now = self.now();
        let client_id = uuid::Uuid::new_v4().to_string();
        let object_id = uuid::Uuid::new_v4().to_string();
        let secret = secrets::generate();
        let hash = secrets::hash_generated(&secret);
        self.store.write(|db| {
            db.insert_principal(&PrincipalRow {
                client_id: client_id.clone(),
                object_id: object_id.clone(),
                tenant_id: self.tenant_id.clone(),
                display_name: display_name.to_string(),
                secret_hash: hash,
                created: now,
            })?;
            Ok::<_, Error>(())
        })?;
        if let Some((role, scope)) = role {
            let result = self.assign_role(&object_id, role, scope, &object_id);
            if let Err(e) = result {
                self.store.write(|db| db.delete_principal(&client_id))?;
                return Err(e);
            }
        }
        Ok(NewPrincipal {
            tenant_id: self.tenant_id.clone(),
            client_id,
            client_secret: secret,
            object_id,
            display_name: display_name.to_string(),
        })
    }

    /// Assigns a built-in role (by name or id) to a principal (object id) at a scope.
    pub fn assign_role(&self, object_id: &str, role: &str, scope: &str, created_by: &str) -> Result<RoleAssignmentRow> {
        let def = rbac::find_role(role).ok_or_else(|| Error::Invalid {
            code: "RoleDefinitionDoesNotExist",
            message: format!("The specified role definition with ID '{role}' does not exist."),
            target: None,
        })?;
        let scope = self.check_scope(scope)?;
        let sub = ResourceId::parse(&scope).map(|i| i.subscription).unwrap_or_default();
        let name = uuid::Uuid::new_v4().to_string();
        let row = RoleAssignmentRow {
            id: format!("{scope}{ASSIGNMENTS}{name}"),
            name,
            scope: scope.clone(),
            role_definition_id: format!("/subscriptions/{sub}{DEFINITIONS}{}", def.name),
            principal_id: object_id.to_string(),
            principal_type: "ServicePrincipal".into(),
            created: self.now(),
            created_by: created_by.to_string(),
        };
        self.store.write(|db| db.insert_role_assignment(&row))?;
        Ok(row)
    }

    /// Principals as JSON for the CLI (never with secrets).
    pub fn list_principals(&self) -> Result<Vec<Value>> {
        let (ps, assignments) = self
            .store
            .read(|db| Ok::<_, Error>((db.principals()?, db.role_assignments()?)))?;
        Ok(ps
            .iter()
            .map(|p| {
                let roles: Vec<Value> = assignments
                    .iter()
                    .filter(|a| a.principal_id == p.object_id)
                    .map(|a| json!({"role": rbac::find_role(&a.role_definition_id).map(|r| r.role_name.as_str()).unwrap_or("?"), "scope": a.scope}))
                    .collect();
                json!({"clientId": p.client_id, "objectId": p.object_id, "displayName": p.display_name, "created": rsvault_core::time::timestamp(p.created), "roles": roles})
            })
            .collect())
    }

    /// Deletes a principal and its role assignments.
    pub fn delete_principal(&self, client_id: &str) -> Result<()> {
        if self.store.write(|db| db.delete_principal(client_id))? {
            Ok(())
        } else {
            Err(Error::NotFound {
                code: "PrincipalNotFound",
                message: format!("Principal with client id '{client_id}' does not exist."),
            })
        }
    }

    /// Gives a principal a new secret; the old one stops working at once.
    pub fn reset_secret(&self, client_id: &str) -> Result<NewPrincipal> {
        let secret = secrets::generate();
        let hash = secrets::hash_generated(&secret);
        let p = self
            .store
            .read(|db| db.principal(client_id))?
            .ok_or_else(|| Error::NotFound {
                code: "PrincipalNotFound",
                message: format!("Principal with client id '{client_id}' does not exist."),
            })?;
        self.store.write(|db| db.set_principal_secret(client_id, &hash))?;
        Ok(NewPrincipal {
            tenant_id: self.tenant_id.clone(),
            client_id: p.client_id,
            client_secret: secret,
            object_id: p.object_id,
            display_name: p.display_name,
        })
    }

    // ---- ARM: role assignments and definitions -------------------------------------------------

    /// A scope must be a subscription, group or resource that exists; returns its canonical text.
    fn check_scope(&self, scope: &str) -> Result<String> {
        let id = ResourceId::parse(scope)?;
        self.subscription_row(&id.subscription)?;
        if let Some(rg) = &id.resource_group {
            self.group_row(&id.subscription, rg)?;
        }
        if id.namespace.is_some() && self.store.read(|db| db.resource(&id.text))?.is_none() {
            return Err(Error::NotFound {
                code: "ResourceNotFound",
                message: format!("The scope '{}' does not exist.", id.text),
            });
        }
        Ok(id.text)
    }

    /// `PUT {scope}/providers/Microsoft.Authorization/roleAssignments/{name}`.
    pub fn put_role_assignment(&self, caller: &Caller, scope: &str, name: &str, req: &Value) -> Result<(bool, Value)> {
        let m = body::object(req)?;
        let props = body::opt_obj(m, "properties", "")?
            .ok_or_else(|| Error::InvalidRequestContent("The 'properties' member is required.".into()))?;
        let role_id = body::opt_str(props, "roleDefinitionId", "properties.")?.ok_or_else(|| Error::Invalid {
            code: "InvalidRoleDefinitionId",
            message: "The role definition ID '' is not valid.".into(),
            target: Some("properties.roleDefinitionId".into()),
        })?;
        let principal = body::opt_str(props, "principalId", "properties.")?.ok_or_else(|| Error::Invalid {
            code: "InvalidPrincipalId",
            message: "A valid principal ID must be provided for role assignment.".into(),
            target: Some("properties.principalId".into()),
        })?;
        uuid::Uuid::parse_str(name).map_err(|_| Error::Invalid {
            code: "InvalidRoleAssignmentId",
            message: format!("The role assignment ID '{name}' is not valid. The role assignment ID must be a GUID."),
            target: None,
        })?;
        let def = rbac::find_role(role_id).ok_or_else(|| Error::Invalid {
            code: "RoleDefinitionDoesNotExist",
            message: format!(
                "The specified role definition with ID '{}' does not exist.",
                role_id.rsplit('/').next().unwrap_or(role_id)
            ),
            target: None,
        })?;
        let scope = self.check_scope(scope)?;
        if self.store.read(|db| db.principal_by_object_id(principal))?.is_none() {
            return Err(Error::Invalid {
                code: "PrincipalNotFound",
                message: format!(
                    "Principal {} does not exist in the directory {}. Check that you have the correct principal ID.",
                    principal.replace('-', ""),
                    self.tenant_id
                ),
                target: None,
            });
        }
        if let Some(existing) = self.store.read(|db| db.role_assignment_by_name(name))? {
            let same = key(&existing.scope) == key(&scope)
                && rbac::find_role(&existing.role_definition_id).map(|r| &r.name) == Some(&def.name)
                && key(&existing.principal_id) == key(principal);
            if same {
                return Ok((false, assignment_body(&existing)));
            }
            return Err(Error::Conflict {
                code: "RoleAssignmentUpdateNotPermitted",
                message: "Tenant ID, application ID, principal ID, and scope are not allowed to be updated.".into(),
            });
        }
        let duplicate = self
            .store
            .read(|db| db.role_assignments_of(principal))?
            .into_iter()
            .any(|a| {
                key(&a.scope) == key(&scope)
                    && rbac::find_role(&a.role_definition_id).map(|r| &r.name) == Some(&def.name)
            });
        if duplicate {
            return Err(Error::Conflict {
                code: "RoleAssignmentExists",
                message: "The role assignment already exists.".into(),
            });
        }
        let row = RoleAssignmentRow {
            id: format!("{scope}{ASSIGNMENTS}{name}"),
            name: name.to_string(),
            scope: scope.clone(),
            role_definition_id: role_id.to_string(),
            principal_id: principal.to_ascii_lowercase(),
            principal_type: body::opt_str(props, "principalType", "properties.")?
                .unwrap_or("ServicePrincipal")
                .to_string(),
            created: self.now(),
            created_by: caller.object_id.clone(),
        };
        self.store.write(|db| db.insert_role_assignment(&row))?;
        Ok((true, assignment_body(&row)))
    }

    fn assignment_at(&self, scope: &str, name: &str) -> Result<RoleAssignmentRow> {
        let id = format!("{}{ASSIGNMENTS}{name}", scope_prefix(scope));
        self.store
            .read(|db| db.role_assignment(&id))?
            .ok_or_else(|| Error::NotFound {
                code: "RoleAssignmentNotFound",
                message: format!("The role assignment '{name}' is not found."),
            })
    }

    pub fn get_role_assignment(&self, scope: &str, name: &str) -> Result<Value> {
        Ok(assignment_body(&self.assignment_at(scope, name)?))
    }

    /// Deletes an assignment; `None` when there was none (ARM answers 204).
    pub fn delete_role_assignment(&self, scope: &str, name: &str) -> Result<Option<Value>> {
        match self.assignment_at(scope, name) {
            Ok(a) => {
                self.store.write(|db| db.delete_role_assignment(&a.id))?;
                Ok(Some(assignment_body(&a)))
            }
            Err(_) => Ok(None),
        }
    }

    /// Assignments relevant to a scope: at it, above it or below it; `$filter` narrows them
    /// (`atScope()`, `principalId eq '…'`, `assignedTo('…')`).
    pub fn list_role_assignments(&self, scope: &str, filter: Option<&str>) -> Result<Vec<Value>> {
        let all = self.store.read(|db| db.role_assignments())?;
        let f = filter.unwrap_or("");
        let at_scope = f.to_ascii_lowercase().contains("atscope()");
        let principal = filter_value(f, "principalId").or_else(|| filter_value(f, "assignedTo("));
        Ok(all
            .iter()
            .filter(|a| scope_contains(&a.scope, scope) || (!at_scope && scope_contains(scope, &a.scope)))
            .filter(|a| principal.is_none_or(|p| a.principal_id.eq_ignore_ascii_case(p)))
            .map(assignment_body)
            .collect())
    }

    /// Built-in role definitions, optionally `$filter=roleName eq '…'`.
    pub fn list_role_definitions(&self, scope: &str, filter: Option<&str>) -> Vec<Value> {
        let wanted = filter.and_then(|f| filter_value(f, "roleName"));
        rbac::builtin_roles()
            .iter()
            .filter(|r| wanted.is_none_or(|w| r.role_name.eq_ignore_ascii_case(w)))
            .map(|r| definition_body(scope, r))
            .collect()
    }

    pub fn get_role_definition(&self, scope: &str, id: &str) -> Result<Value> {
        rbac::find_role(id)
            .map(|r| definition_body(scope, r))
            .ok_or_else(|| Error::NotFound {
                code: "RoleDefinitionDoesNotExist",
                message: format!("The role definition '{id}' could not be found."),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::filter_value;

    #[test]
    fn filters_are_read() {
        assert_eq!(filter_value("principalId eq 'abc'", "principalId"), Some("abc"));
        assert_eq!(
            filter_value("atScope() and assignedTo('x-y')", "assignedTo("),
            Some("x-y")
        );
        assert_eq!(
            filter_value("roleName eq 'Backup Reader'", "roleName"),
            Some("Backup Reader")
        );
        assert_eq!(filter_value("atScope()", "principalId"), None);
    }
}
