//! The route table: every ARM endpoint rsvault serves, the action it needs, and the typed [`Op`] it is
//! dispatched to.
//!
//! *Architecture Invariant*: a route cannot exist without declaring its [`Access`]; the authorization
//! matrix test walks [`ROUTES`], so a new route is covered by it the day it is added.
//!
//! Patterns are matched segment by segment, literals case-insensitively; `{name}` captures one
//! percent-decoded segment and a leading `{*scope}` captures any ARM scope (for
//! `Microsoft.Authorization`).

use rsvault_core::Error;

/// What a caller needs to reach a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Any valid token (listing what the caller may see is the handler's business).
    Authenticated,
    /// A role granting this action at the request's scope.
    Action(&'static str),
    /// rsvault's own server-wide admin endpoints: the Owner role at the root or a subscription. These
    /// routes take no `api-version`.
    Owner(&'static str),
}

/// The typed endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    ListTenants,
    AdvanceClock,
    ListFaults,
    ArmFault,
    ClearFaults,
    ClearFault,
    ListSubscriptions,
    GetSubscription,
    ProviderOperations,
    ListGroups,
    PutGroup,
    GetGroup,
    HeadGroup,
    PatchGroup,
    DeleteGroup,
    ListVaultsBySubscription,
    ListVaultsByGroup,
    PutVault,
    GetVault,
    PatchVault,
    DeleteVault,
    CheckVaultName,
    VaultUsages,
    VaultOperationStatus,
    VaultOperationResult,
    GetVaultExtendedInfo,
    PutVaultExtendedInfo,
    PatchVaultExtendedInfo,
    PutRoleAssignment,
    GetRoleAssignment,
    DeleteRoleAssignment,
    ListRoleAssignments,
    ListRoleDefinitions,
    GetRoleDefinition,
    // Microsoft.Compute and Microsoft.Storage: the local inventory.
    ListVmsBySubscription,
    ListVmsByGroup,
    PutVm,
    GetVm,
    DeleteVm,
    ListAccountsBySubscription,
    ListAccountsByGroup,
    PutAccount,
    GetAccount,
    DeleteAccount,
    ListShares,
    PutShare,
    GetShare,
    DeleteShare,
    // Backup inside a vault.
    RefreshContainers,
    FabricOperationResult,
    FabricOperationStatus,
    ListProtectableContainers,
    PutContainer,
    GetContainer,
    DeleteContainer,
    InquireContainer,
    ContainerOperationResult,
    ContainerOperationStatus,
    PutItem,
    GetItem,
    DeleteItem,
    ItemOperationResult,
    ItemOperationStatus,
    ListProtectableItems,
    ListProtectedItems,
    ListContainers,
    ListPolicies,
    PutPolicy,
    GetPolicy,
    DeletePolicy,
    PolicyOperationStatus,
    PolicyOperationResult,
    BackupOperationStatus,
    BackupOperationResult,
    GetJob,
    ListJobs,
    CancelJob,
    JobOperationResult,
    ExportJobs,
    ExportJobsResult,
    TriggerBackup,
    ListRecoveryPoints,
    GetRecoveryPoint,
    TriggerRestore,
    GetVaultConfig,
    PutVaultConfig,
    PatchVaultConfig,
    GetStorageConfig,
    PutStorageConfig,
    PatchStorageConfig,
    GetEncryptionConfig,
    PutEncryptionConfig,
    ListUsageSummaries,
    ListResourceGuardProxies,
    BackupStatus,
    ValidateFeatures,
    PreValidateProtection,
}

/// One endpoint.
#[derive(Debug, Clone, Copy)]
pub struct Route {
    pub method: &'static str,
    pub pattern: &'static str,
    pub access: Access,
    pub op: Op,
}

const fn r(method: &'static str, pattern: &'static str, access: Access, op: Op) -> Route {
    Route {
        method,
        pattern,
        access,
        op,
    }
}

use Access::*;

const VAULTS: &str = "/subscriptions/{subscriptionId}/resourceGroups/{resourceGroupName}/providers/Microsoft.RecoveryServices/vaults/{vaultName}";

macro_rules! vault {
    ($suffix:expr) => {
        concat!("/subscriptions/{subscriptionId}/resourceGroups/{resourceGroupName}/providers/Microsoft.RecoveryServices/vaults/{vaultName}", $suffix)
    };
}

macro_rules! group {
    ($suffix:expr) => {
        concat!(
            "/subscriptions/{subscriptionId}/resourceGroups/{resourceGroupName}/providers/",
            $suffix
        )
    };
}

macro_rules! fabric {
    ($suffix:expr) => {
        vault!(concat!("/backupFabrics/{fabricName}", $suffix))
    };
}

macro_rules! item {
    ($suffix:expr) => {
        fabric!(concat!(
            "/protectionContainers/{containerName}/protectedItems/{protectedItemName}",
            $suffix
        ))
    };
}

macro_rules! location {
    ($suffix:expr) => {
        concat!(
            "/subscriptions/{subscriptionId}/providers/Microsoft.RecoveryServices/locations/{azureRegion}/",
            $suffix
        )
    };
}

/// Every ARM route rsvault serves.
pub const ROUTES: &[Route] = &[
    r("GET", "/tenants", Authenticated, Op::ListTenants),
    r("POST", "/rsvault/admin/clock/advance", Owner("rsvault/admin/clock/advance/action"), Op::AdvanceClock),
    r("GET", "/rsvault/admin/faults", Owner("rsvault/admin/faults/read"), Op::ListFaults),
    r("POST", "/rsvault/admin/faults", Owner("rsvault/admin/faults/write"), Op::ArmFault),
    r("DELETE", "/rsvault/admin/faults", Owner("rsvault/admin/faults/delete"), Op::ClearFaults),
    r("DELETE", "/rsvault/admin/faults/{faultId}", Owner("rsvault/admin/faults/delete"), Op::ClearFault),
    r("GET", "/subscriptions", Authenticated, Op::ListSubscriptions),
    r("GET", "/subscriptions/{subscriptionId}", Action("Microsoft.Resources/subscriptions/read"), Op::GetSubscription),
    r("GET", "/providers/Microsoft.RecoveryServices/operations", Authenticated, Op::ProviderOperations),
    r("GET", "/subscriptions/{subscriptionId}/resourcegroups", Action("Microsoft.Resources/subscriptions/resourceGroups/read"), Op::ListGroups),
    r("PUT", "/subscriptions/{subscriptionId}/resourcegroups/{resourceGroupName}", Action("Microsoft.Resources/subscriptions/resourceGroups/write"), Op::PutGroup),
    r("GET", "/subscriptions/{subscriptionId}/resourcegroups/{resourceGroupName}", Action("Microsoft.Resources/subscriptions/resourceGroups/read"), Op::GetGroup),
    r("HEAD", "/subscriptions/{subscriptionId}/resourcegroups/{resourceGroupName}", Action("Microsoft.Resources/subscriptions/resourceGroups/read"), Op::HeadGroup),
    r("PATCH", "/subscriptions/{subscriptionId}/resourcegroups/{resourceGroupName}", Action("Microsoft.Resources/subscriptions/resourceGroups/write"), Op::PatchGroup),
    r("DELETE", "/subscriptions/{subscriptionId}/resourcegroups/{resourceGroupName}", Action("Microsoft.Resources/subscriptions/resourceGroups/delete"), Op::DeleteGroup),
    r("GET", "/subscriptions/{subscriptionId}/providers/Microsoft.RecoveryServices/vaults", Action("Microsoft.RecoveryServices/Vaults/read"), Op::ListVaultsBySubscription),
    r("GET", "/subscriptions/{subscriptionId}/resourceGroups/{resourceGroupName}/providers/Microsoft.RecoveryServices/vaults", Action("Microsoft.RecoveryServices/Vaults/read"), Op::ListVaultsByGroup),
    r("PUT", VAULTS, Action("Microsoft.RecoveryServices/Vaults/write"), Op::PutVault),
    r("GET", VAULTS, Action("Microsoft.RecoveryServices/Vaults/read"), Op::GetVault),
    r("PATCH", VAULTS, Action("Microsoft.RecoveryServices/Vaults/write"), Op::PatchVault),
    r("DELETE", VAULTS, Action("Microsoft.RecoveryServices/Vaults/delete"), Op::DeleteVault),
    r(
        "POST",
        "/subscriptions/{subscriptionId}/resourceGroups/{resourceGroupName}/providers/Microsoft.RecoveryServices/locations/{location}/checkNameAvailability",
        Action("Microsoft.RecoveryServices/locations/checkNameAvailability/action"),
        Op::CheckVaultName,
    ),
    r("GET", vault!("/operationStatus/{operationId}"), Action("Microsoft.RecoveryServices/vaults/operationStatus/read"), Op::VaultOperationStatus),
    r("GET", vault!("/operationResults/{operationId}"), Action("Microsoft.RecoveryServices/vaults/operationResults/read"), Op::VaultOperationResult),
    r("GET", vault!("/usages"), Action("Microsoft.RecoveryServices/Vaults/usages/read"), Op::VaultUsages),
    r("GET", vault!("/extendedInformation/vaultExtendedInfo"), Action("Microsoft.RecoveryServices/Vaults/extendedInformation/read"), Op::GetVaultExtendedInfo),
    r("PUT", vault!("/extendedInformation/vaultExtendedInfo"), Action("Microsoft.RecoveryServices/Vaults/extendedInformation/write"), Op::PutVaultExtendedInfo),
    r("PATCH", vault!("/extendedInformation/vaultExtendedInfo"), Action("Microsoft.RecoveryServices/Vaults/extendedInformation/write"), Op::PatchVaultExtendedInfo),
    r("PUT", "{*scope}/providers/Microsoft.Authorization/roleAssignments/{roleAssignmentName}", Action("Microsoft.Authorization/roleAssignments/write"), Op::PutRoleAssignment),
    r("GET", "{*scope}/providers/Microsoft.Authorization/roleAssignments/{roleAssignmentName}", Action("Microsoft.Authorization/roleAssignments/read"), Op::GetRoleAssignment),
    r("DELETE", "{*scope}/providers/Microsoft.Authorization/roleAssignments/{roleAssignmentName}", Action("Microsoft.Authorization/roleAssignments/delete"), Op::DeleteRoleAssignment),
    r("GET", "{*scope}/providers/Microsoft.Authorization/roleAssignments", Action("Microsoft.Authorization/roleAssignments/read"), Op::ListRoleAssignments),
    r("GET", "{*scope}/providers/Microsoft.Authorization/roleDefinitions", Action("Microsoft.Authorization/roleDefinitions/read"), Op::ListRoleDefinitions),
    r("GET", "{*scope}/providers/Microsoft.Authorization/roleDefinitions/{roleDefinitionId}", Action("Microsoft.Authorization/roleDefinitions/read"), Op::GetRoleDefinition),
    // ---- inventory ----
    r("GET", "/subscriptions/{subscriptionId}/providers/Microsoft.Compute/virtualMachines", Action("Microsoft.Compute/virtualMachines/read"), Op::ListVmsBySubscription),
    r("GET", group!("Microsoft.Compute/virtualMachines"), Action("Microsoft.Compute/virtualMachines/read"), Op::ListVmsByGroup),
    r("PUT", group!("Microsoft.Compute/virtualMachines/{vmName}"), Action("Microsoft.Compute/virtualMachines/write"), Op::PutVm),
    r("GET", group!("Microsoft.Compute/virtualMachines/{vmName}"), Action("Microsoft.Compute/virtualMachines/read"), Op::GetVm),
    r("DELETE", group!("Microsoft.Compute/virtualMachines/{vmName}"), Action("Microsoft.Compute/virtualMachines/delete"), Op::DeleteVm),
    r("GET", "/subscriptions/{subscriptionId}/providers/Microsoft.Storage/storageAccounts", Action("Microsoft.Storage/storageAccounts/read"), Op::ListAccountsBySubscription),
    r("GET", group!("Microsoft.Storage/storageAccounts"), Action("Microsoft.Storage/storageAccounts/read"), Op::ListAccountsByGroup),
    r("PUT", group!("Microsoft.Storage/storageAccounts/{accountName}"), Action("Microsoft.Storage/storageAccounts/write"), Op::PutAccount),
    r("GET", group!("Microsoft.Storage/storageAccounts/{accountName}"), Action("Microsoft.Storage/storageAccounts/read"), Op::GetAccount),
    r("DELETE", group!("Microsoft.Storage/storageAccounts/{accountName}"), Action("Microsoft.Storage/storageAccounts/delete"), Op::DeleteAccount),
    r("GET", group!("Microsoft.Storage/storageAccounts/{accountName}/fileServices/default/shares"), Action("Microsoft.Storage/storageAccounts/fileServices/shares/read"), Op::ListShares),
    r("PUT", group!("Microsoft.Storage/storageAccounts/{accountName}/fileServices/default/shares/{shareName}"), Action("Microsoft.Storage/storageAccounts/fileServices/shares/write"), Op::PutShare),
    r("GET", group!("Microsoft.Storage/storageAccounts/{accountName}/fileServices/default/shares/{shareName}"), Action("Microsoft.Storage/storageAccounts/fileServices/shares/read"), Op::GetShare),
    r("DELETE", group!("Microsoft.Storage/storageAccounts/{accountName}/fileServices/default/shares/{shareName}"), Action("Microsoft.Storage/storageAccounts/fileServices/shares/delete"), Op::DeleteShare),
    // ---- discovery and containers ----
    r("POST", fabric!("/refreshContainers"), Action("Microsoft.RecoveryServices/Vaults/backupFabrics/refreshContainers/action"), Op::RefreshContainers),
    r("GET", fabric!("/operationResults/{operationId}"), Action("Microsoft.RecoveryServices/Vaults/backupFabrics/operationResults/read"), Op::FabricOperationResult),
    r("GET", fabric!("/operationsStatus/{operationId}"), Action("Microsoft.RecoveryServices/Vaults/backupFabrics/operationResults/read"), Op::FabricOperationStatus),
    r("GET", fabric!("/protectableContainers"), Action("Microsoft.RecoveryServices/Vaults/backupFabrics/protectableContainers/read"), Op::ListProtectableContainers),
    r("PUT", fabric!("/protectionContainers/{containerName}"), Action("Microsoft.RecoveryServices/Vaults/backupFabrics/protectionContainers/write"), Op::PutContainer),
    r("GET", fabric!("/protectionContainers/{containerName}"), Action("Microsoft.RecoveryServices/Vaults/backupFabrics/protectionContainers/read"), Op::GetContainer),
    r("DELETE", fabric!("/protectionContainers/{containerName}"), Action("Microsoft.RecoveryServices/Vaults/backupFabrics/protectionContainers/delete"), Op::DeleteContainer),
    r("POST", fabric!("/protectionContainers/{containerName}/inquire"), Action("Microsoft.RecoveryServices/Vaults/backupFabrics/protectionContainers/inquire/action"), Op::InquireContainer),
    r("GET", fabric!("/protectionContainers/{containerName}/operationResults/{operationId}"), Action("Microsoft.RecoveryServices/Vaults/backupFabrics/protectionContainers/operationResults/read"), Op::ContainerOperationResult),
    r("GET", fabric!("/protectionContainers/{containerName}/operationsStatus/{operationId}"), Action("Microsoft.RecoveryServices/Vaults/backupFabrics/protectionContainers/operationResults/read"), Op::ContainerOperationStatus),
    // ---- protected items ----
    r("PUT", item!(""), Action("Microsoft.RecoveryServices/Vaults/backupFabrics/protectionContainers/protectedItems/write"), Op::PutItem),
    r("GET", item!(""), Action("Microsoft.RecoveryServices/Vaults/backupFabrics/protectionContainers/protectedItems/read"), Op::GetItem),
    r("DELETE", item!(""), Action("Microsoft.RecoveryServices/Vaults/backupFabrics/protectionContainers/protectedItems/delete"), Op::DeleteItem),
    r("GET", item!("/operationResults/{operationId}"), Action("Microsoft.RecoveryServices/Vaults/backupFabrics/protectionContainers/protectedItems/operationResults/read"), Op::ItemOperationResult),
    r("GET", item!("/operationsStatus/{operationId}"), Action("Microsoft.RecoveryServices/Vaults/backupFabrics/protectionContainers/protectedItems/operationsStatus/read"), Op::ItemOperationStatus),
    r("GET", vault!("/backupProtectableItems"), Action("Microsoft.RecoveryServices/Vaults/backupProtectableItems/read"), Op::ListProtectableItems),
    r("GET", vault!("/backupProtectedItems"), Action("Microsoft.RecoveryServices/Vaults/backupProtectedItems/read"), Op::ListProtectedItems),
    r("GET", vault!("/backupProtectionContainers"), Action("Microsoft.RecoveryServices/Vaults/backupProtectionContainers/read"), Op::ListContainers),
    // ---- policies ----
    r("GET", vault!("/backupPolicies"), Action("Microsoft.RecoveryServices/Vaults/backupPolicies/read"), Op::ListPolicies),
    r("PUT", vault!("/backupPolicies/{policyName}"), Action("Microsoft.RecoveryServices/Vaults/backupPolicies/write"), Op::PutPolicy),
    r("GET", vault!("/backupPolicies/{policyName}"), Action("Microsoft.RecoveryServices/Vaults/backupPolicies/read"), Op::GetPolicy),
    r("DELETE", vault!("/backupPolicies/{policyName}"), Action("Microsoft.RecoveryServices/Vaults/backupPolicies/delete"), Op::DeletePolicy),
    r("GET", vault!("/backupPolicies/{policyName}/operations/{operationId}"), Action("Microsoft.RecoveryServices/Vaults/backupPolicies/operations/read"), Op::PolicyOperationStatus),
    r("GET", vault!("/backupPolicies/{policyName}/operationResults/{operationId}"), Action("Microsoft.RecoveryServices/Vaults/backupPolicies/operationResults/read"), Op::PolicyOperationResult),
    // ---- operations and jobs ----
    r("GET", vault!("/backupOperations/{operationId}"), Action("Microsoft.RecoveryServices/Vaults/backupOperations/read"), Op::BackupOperationStatus),
    r("GET", vault!("/backupOperationResults/{operationId}"), Action("Microsoft.RecoveryServices/Vaults/backupOperationResults/read"), Op::BackupOperationResult),
    r("GET", vault!("/backupJobs"), Action("Microsoft.RecoveryServices/Vaults/backupJobs/read"), Op::ListJobs),
    r("GET", vault!("/backupJobs/{jobName}"), Action("Microsoft.RecoveryServices/Vaults/backupJobs/read"), Op::GetJob),
    r("POST", vault!("/backupJobs/{jobName}/cancel"), Action("Microsoft.RecoveryServices/Vaults/backupJobs/cancel/action"), Op::CancelJob),
    r("GET", vault!("/backupJobs/{jobName}/operationResults/{operationId}"), Action("Microsoft.RecoveryServices/Vaults/backupJobs/operationResults/read"), Op::JobOperationResult),
    r("POST", vault!("/backupJobsExport"), Action("Microsoft.RecoveryServices/Vaults/backupJobsExport/action"), Op::ExportJobs),
    r("GET", vault!("/backupJobs/operationResults/{operationId}"), Action("Microsoft.RecoveryServices/Vaults/backupJobs/operationResults/read"), Op::ExportJobsResult),
    // ---- backup, recovery points, restore ----
    r("POST", item!("/backup"), Action("Microsoft.RecoveryServices/Vaults/backupFabrics/protectionContainers/protectedItems/backup/action"), Op::TriggerBackup),
    r("GET", item!("/recoveryPoints"), Action("Microsoft.RecoveryServices/Vaults/backupFabrics/protectionContainers/protectedItems/recoveryPoints/read"), Op::ListRecoveryPoints),
    r("GET", item!("/recoveryPoints/{recoveryPointId}"), Action("Microsoft.RecoveryServices/Vaults/backupFabrics/protectionContainers/protectedItems/recoveryPoints/read"), Op::GetRecoveryPoint),
    r("POST", item!("/recoveryPoints/{recoveryPointId}/restore"), Action("Microsoft.RecoveryServices/Vaults/backupFabrics/protectionContainers/protectedItems/recoveryPoints/restore/action"), Op::TriggerRestore),
    // ---- vault backup configuration ----
    r("GET", vault!("/backupconfig/vaultconfig"), Action("Microsoft.RecoveryServices/Vaults/backupconfig/vaultconfig/read"), Op::GetVaultConfig),
    r("PUT", vault!("/backupconfig/vaultconfig"), Action("Microsoft.RecoveryServices/Vaults/backupconfig/vaultconfig/write"), Op::PutVaultConfig),
    r("PATCH", vault!("/backupconfig/vaultconfig"), Action("Microsoft.RecoveryServices/Vaults/backupconfig/vaultconfig/write"), Op::PatchVaultConfig),
    r("GET", vault!("/backupstorageconfig/vaultstorageconfig"), Action("Microsoft.RecoveryServices/Vaults/backupstorageconfig/vaultstorageconfig/read"), Op::GetStorageConfig),
    r("PUT", vault!("/backupstorageconfig/vaultstorageconfig"), Action("Microsoft.RecoveryServices/Vaults/backupstorageconfig/vaultstorageconfig/write"), Op::PutStorageConfig),
    r("PATCH", vault!("/backupstorageconfig/vaultstorageconfig"), Action("Microsoft.RecoveryServices/Vaults/backupstorageconfig/vaultstorageconfig/write"), Op::PatchStorageConfig),
    r("GET", vault!("/backupEncryptionConfigs/backupResourceEncryptionConfig"), Action("Microsoft.RecoveryServices/Vaults/read"), Op::GetEncryptionConfig),
    r("PUT", vault!("/backupEncryptionConfigs/backupResourceEncryptionConfig"), Action("Microsoft.RecoveryServices/Vaults/write"), Op::PutEncryptionConfig),
    r("GET", vault!("/backupUsageSummaries"), Action("Microsoft.RecoveryServices/Vaults/backupUsageSummaries/read"), Op::ListUsageSummaries),
    r("GET", vault!("/backupResourceGuardProxies"), Action("Microsoft.RecoveryServices/Vaults/backupResourceGuardProxies/read"), Op::ListResourceGuardProxies),
    // ---- subscription-level questions ----
    r("POST", location!("backupStatus"), Action("Microsoft.RecoveryServices/locations/backupStatus/action"), Op::BackupStatus),
    r("POST", location!("backupValidateFeatures"), Action("Microsoft.RecoveryServices/locations/backupValidateFeatures/action"), Op::ValidateFeatures),
    r("POST", location!("backupPreValidateProtection"), Action("Microsoft.RecoveryServices/locations/backupPreValidateProtection/action"), Op::PreValidateProtection),
];

/// Namespaces rsvault knows; a path in any other is `NoRegisteredProviderFound`.
pub const NAMESPACES: &[&str] = &[
    "Microsoft.RecoveryServices",
    "Microsoft.Resources",
    "Microsoft.Authorization",
    "Microsoft.Compute",
    "Microsoft.Storage",
];

/// Values captured from a path.
#[derive(Debug, Default, Clone)]
pub struct Params(Vec<(&'static str, String)>);

impl Params {
    /// A captured value (routes guarantee the names they declare).
    pub fn get(&self, name: &str) -> &str {
        self.0
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or_default()
    }

    pub fn sub(&self) -> &str {
        self.get("subscriptionId")
    }

    pub fn rg(&self) -> &str {
        self.get("resourceGroupName")
    }

    pub fn vault(&self) -> &str {
        self.get("vaultName")
    }

    /// The `{*scope}` capture, as an ARM scope (`/` when empty).
    pub fn scope(&self) -> String {
        let s = self.get("scope");
        if s.is_empty() {
            "/".into()
        } else {
            s.to_string()
        }
    }
}

fn segments(pattern: &'static str) -> Vec<&'static str> {
    pattern.split('/').filter(|s| !s.is_empty()).collect()
}

/// Each route's pattern split once: whether it starts with `{*scope}`, and its fixed segments.
static PATTERNS: std::sync::LazyLock<Vec<(bool, Vec<&'static str>)>> = std::sync::LazyLock::new(|| {
    ROUTES
        .iter()
        .map(|r| match r.pattern.strip_prefix("{*scope}") {
            Some(rest) => (true, segments(rest)),
            None => (false, segments(r.pattern)),
        })
        .collect()
});

/// Whether `segs` match `pat` (literal segments case-insensitively); captures nothing.
fn fixed_matches(pat: &[&'static str], segs: &[String]) -> bool {
    pat.len() == segs.len()
        && pat
            .iter()
            .zip(segs)
            .all(|(p, s)| (p.starts_with('{') && p.ends_with('}')) || p.eq_ignore_ascii_case(s))
}

/// The parameters of segments that [`fixed_matches`] `pat`.
fn capture(pat: &[&'static str], segs: &[String], out: &mut Params) {
    for (p, s) in pat.iter().zip(segs) {
        if let Some(name) = p.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
            out.0.push((name, s.clone()));
        }
    }
}

fn match_pattern((scoped, pat): &(bool, Vec<&'static str>), segs: &[String]) -> Option<Params> {
    let mut out = Params::default();
    if *scoped {
        let split = segs.len().checked_sub(pat.len())?;
        if !fixed_matches(pat, &segs[split..]) {
            return None;
        }
        capture(pat, &segs[split..], &mut out);
        let scope = segs[..split].join("/");
        out.0.push((
            "scope",
            if scope.is_empty() {
                String::new()
            } else {
                format!("/{scope}")
            },
        ));
        return Some(out);
    }
    if !fixed_matches(pat, segs) {
        return None;
    }
    capture(pat, segs, &mut out);
    Some(out)
}

/// Finds the route for a method and decoded path segments.
pub fn find(method: &str, segs: &[String], api_version: &str) -> Result<(&'static Route, Params), Error> {
    let mut path_matched = false;
    for (route, pattern) in ROUTES.iter().zip(PATTERNS.iter()) {
        if let Some(p) = match_pattern(pattern, segs) {
            if route.method == method {
                return Ok((route, p));
            }
            path_matched = true;
        }
    }
    if path_matched {
        return Err(Error::HttpMethodNotSupported(method.to_string()));
    }
    Err(unknown_route(segs, api_version))
}

/// The ARM error for a path no route serves.
fn unknown_route(segs: &[String], api_version: &str) -> Error {
    let providers = segs.iter().rposition(|s| s.eq_ignore_ascii_case("providers"));
    let (ns, ty) = match providers {
        Some(i) if i + 1 < segs.len() => {
            let ns = segs[i + 1].clone();
            let types: Vec<&str> = segs[i + 2..].iter().step_by(2).map(String::as_str).collect();
            (ns, types.join("/"))
        }
        _ => (String::new(), segs.first().cloned().unwrap_or_default()),
    };
    if NAMESPACES.iter().any(|n| n.eq_ignore_ascii_case(&ns)) {
        Error::InvalidResourceType {
            resource_type: ty,
            namespace: ns,
            version: api_version.to_string(),
        }
    } else {
        let resource_type = if ns.is_empty() { ty } else { format!("{ns}/{ty}") };
        Error::NoRegisteredProviderFound {
            resource_type,
            version: api_version.to_string(),
            supported: String::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segs(p: &str) -> Vec<String> {
        rsvault_core::ids::decode_path(p).unwrap()
    }

    #[test]
    fn routes_match_case_insensitively_and_capture() {
        let (r, p) = find(
            "GET",
            &segs("/Subscriptions/S1/resourcegroups/RG/providers/microsoft.recoveryservices/Vaults/v1"),
            "x",
        )
        .unwrap();
        assert_eq!(r.op, Op::GetVault);
        assert_eq!((p.sub(), p.rg(), p.vault()), ("S1", "RG", "v1"));
    }

    #[test]
    fn scope_routes_capture_the_scope() {
        let (r, p) = find(
            "PUT",
            &segs("/subscriptions/s/resourceGroups/rg/providers/Microsoft.Authorization/roleAssignments/abc"),
            "x",
        )
        .unwrap();
        assert_eq!(r.op, Op::PutRoleAssignment);
        assert_eq!(p.scope(), "/subscriptions/s/resourceGroups/rg");
        assert_eq!(p.get("roleAssignmentName"), "abc");
    }

    #[test]
    fn unknown_routes_get_arm_errors() {
        let cases = [
            (
                "GET",
                "/subscriptions/s/providers/Microsoft.Foo/bars",
                "NoRegisteredProviderFound",
            ),
            (
                "GET",
                "/subscriptions/s/resourceGroups/rg/providers/Microsoft.RecoveryServices/widgets/w",
                "InvalidResourceType",
            ),
            (
                "POST",
                "/subscriptions/s/resourceGroups/rg/providers/Microsoft.RecoveryServices/vaults/v",
                "HttpMethodNotSupported",
            ),
            ("GET", "/nonsense", "NoRegisteredProviderFound"),
        ];
        for (m, p, code) in cases {
            assert_eq!(find(m, &segs(p), "2026-11-01").unwrap_err().code(), code, "{m} {p}");
        }
    }

    #[test]
    fn every_route_declares_a_wellformed_action() {
        for r in ROUTES {
            if let Access::Action(a) = r.access {
                assert!(
                    a.contains('/')
                        && (a.ends_with("/read")
                            || a.ends_with("/write")
                            || a.ends_with("/delete")
                            || a.ends_with("/action")),
                    "{a}"
                );
            }
        }
    }
}
