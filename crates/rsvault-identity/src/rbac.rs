//! Azure role-based access control: built-in role definitions and their evaluation.
//!
//! The six built-in roles carry Azure's published action lists (`builtin_roles.json`, copied from
//! Microsoft's role documentation). An action is allowed at a scope when some role assignment at that
//! scope or an ancestor grants a role whose `actions` match it and whose `notActions` do not. Matching is
//! case-insensitive and `*` stands for any run of characters, as in Azure.

use rsvault_core::ids::scope_contains;
use serde::Deserialize;
use std::sync::OnceLock;

/// A role definition.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RoleDefinition {
    /// The role's GUID.
    pub name: String,
    pub role_name: String,
    pub description: String,
    pub permissions: Vec<Permission>,
}

/// One permission block of a role.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Permission {
    pub actions: Vec<String>,
    pub not_actions: Vec<String>,
    #[serde(default)]
    pub data_actions: Vec<String>,
    #[serde(default)]
    pub not_data_actions: Vec<String>,
}

/// The built-in roles, loaded once.
pub fn builtin_roles() -> &'static [RoleDefinition] {
    static ROLES: OnceLock<Vec<RoleDefinition>> = OnceLock::new();
    ROLES.get_or_init(|| {
        let mut roles: Vec<RoleDefinition> =
            serde_json::from_str(include_str!("builtin_roles.json")).expect("builtin_roles.json is valid");
        for r in &mut roles {
            for p in &mut r.permissions {
                // Microsoft's lists repeat some actions; the set is what matters.
                let mut seen = std::collections::HashSet::new();
                p.actions.retain(|a| seen.insert(a.to_ascii_lowercase()));
            }
        }
        roles
    })
}

/// Finds a built-in role by display name (`Backup Reader`), GUID, or full role definition id
/// (`/subscriptions/…/providers/Microsoft.Authorization/roleDefinitions/{guid}`).
pub fn find_role(name_or_id: &str) -> Option<&'static RoleDefinition> {
    let guid = name_or_id.rsplit('/').next().unwrap_or(name_or_id);
    builtin_roles()
        .iter()
        .find(|r| r.role_name.eq_ignore_ascii_case(name_or_id) || r.name.eq_ignore_ascii_case(guid))
}

/// Azure's wildcard match: case-insensitive, `*` matches any run of characters.
pub fn action_matches(pattern: &str, action: &str) -> bool {
    let p = pattern.to_ascii_lowercase();
    let a = action.to_ascii_lowercase();
    let parts: Vec<&str> = p.split('*').collect();
    if parts.len() == 1 {
        return p == a;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !a.starts_with(first) || !a[first.len()..].ends_with(last) || a.len() < first.len() + last.len() {
        return false;
    }
    let mut rest = &a[first.len()..a.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

impl RoleDefinition {
    /// True when this role grants the (control-plane) action.
    pub fn allows(&self, action: &str) -> bool {
        self.permissions.iter().any(|p| {
            p.actions.iter().any(|a| action_matches(a, action))
                && !p.not_actions.iter().any(|a| action_matches(a, action))
        })
    }
}

/// An assignment as the evaluator needs it: where, and which role.
#[derive(Debug, Clone)]
pub struct Grant {
    pub scope: String,
    pub role_definition_id: String,
}

/// True when any grant covering `scope` allows `action`.
pub fn is_allowed(grants: &[Grant], action: &str, scope: &str) -> bool {
    grants
        .iter()
        .filter(|g| scope_contains(&g.scope, scope))
        .filter_map(|g| find_role(&g.role_definition_id))
        .any(|r| r.allows(action))
}

/// True when some grant would allow `action` at `scope` or anywhere below it (used to decide which
/// subscriptions a caller may see in `GET /subscriptions`).
pub fn can_see(grants: &[Grant], scope: &str) -> bool {
    grants
        .iter()
        .any(|g| scope_contains(scope, &g.scope) || scope_contains(&g.scope, scope))
}

#[cfg(test)]
mod tests {
    use super::*;

    const VAULT: &str = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.RecoveryServices/vaults/v";

    fn grant(scope: &str, role: &str) -> Vec<Grant> {
        vec![Grant {
            scope: scope.into(),
            role_definition_id: find_role(role).unwrap().name.clone(),
        }]
    }

    #[test]
    fn the_six_builtin_roles_are_there() {
        for r in [
            "Owner",
            "Contributor",
            "Reader",
            "Backup Contributor",
            "Backup Operator",
            "Backup Reader",
        ] {
            assert!(find_role(r).is_some(), "{r}");
        }
        assert_eq!(find_role("/subscriptions/x/providers/Microsoft.Authorization/roleDefinitions/acdd72a7-3385-48ef-bd42-f606fba81ae7").unwrap().role_name, "Reader");
    }

    #[test]
    fn wildcards_match_as_azure_does() {
        let cases = [
            ("*", "Microsoft.RecoveryServices/Vaults/write", true),
            ("*/read", "Microsoft.RecoveryServices/Vaults/read", true),
            ("*/read", "Microsoft.RecoveryServices/Vaults/write", false),
            (
                "Microsoft.Authorization/*/Write",
                "Microsoft.Authorization/roleAssignments/write",
                true,
            ),
            (
                "Microsoft.RecoveryServices/Vaults/backupJobs/*",
                "microsoft.recoveryservices/vaults/backupjobs/cancel/action",
                true,
            ),
            (
                "Microsoft.RecoveryServices/Vaults/read",
                "Microsoft.RecoveryServices/Vaults/readx",
                false,
            ),
            ("a*b*c", "abc", true),
            ("a*b*c", "ac", false),
        ];
        for (p, a, want) in cases {
            assert_eq!(action_matches(p, a), want, "{p} ~ {a}");
        }
    }

    #[test]
    fn role_table() {
        let write = "Microsoft.RecoveryServices/Vaults/write";
        let read = "Microsoft.RecoveryServices/Vaults/read";
        let backup =
            "Microsoft.RecoveryServices/Vaults/backupFabrics/protectionContainers/protectedItems/backup/action";
        let assign = "Microsoft.Authorization/roleAssignments/write";
        let cases = [
            ("Owner", [true, true, true, true]),
            ("Contributor", [true, true, true, false]),
            ("Reader", [false, true, false, false]),
            ("Backup Contributor", [true, true, true, false]),
            ("Backup Operator", [false, true, true, false]),
            ("Backup Reader", [false, true, false, false]),
        ];
        for (role, want) in cases {
            let g = grant("/subscriptions/s", role);
            let got = [write, read, backup, assign].map(|a| is_allowed(&g, a, VAULT));
            assert_eq!(got, want, "{role}");
        }
    }

    #[test]
    fn scope_limits_grants() {
        let g = grant("/subscriptions/s/resourceGroups/other", "Owner");
        assert!(!is_allowed(&g, "Microsoft.RecoveryServices/Vaults/read", VAULT));
        let g = grant(VAULT, "Backup Reader");
        assert!(is_allowed(&g, "Microsoft.RecoveryServices/Vaults/read", VAULT));
        assert!(!is_allowed(
            &g,
            "Microsoft.RecoveryServices/Vaults/read",
            "/subscriptions/s/resourceGroups/rg/providers/Microsoft.RecoveryServices/vaults/v2"
        ));
        assert!(can_see(&g, "/subscriptions/s"));
        assert!(!can_see(&g, "/subscriptions/t"));
    }
}
