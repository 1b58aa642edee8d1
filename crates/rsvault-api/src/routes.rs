//! The route table: every ARM endpoint rsvault serves, the action it needs, and the typed [`Op`] it is
//! dispatched to.
//!
//! *Architecture Invariant*: a route cannot exist without declaring its [`Access`]; the authorization
//! matrix test walks [`ROUTES`], so a new route is covered by it the day it is added.
//!
//! *Architecture Invariant*: dispatch is exhaustive. [`Op`] holds the endpoints `arm` answers itself
//! and one variant per sub-dispatcher ([`InventoryOp`], [`BackupOp`], [`RestoreToolOp`]); every
//! `match` over them has no catch-all arm, so an endpoint without a handler does not compile.
//!
//! Patterns are matched segment by segment, literals case-insensitively; `{name}` captures one
//! percent-decoded segment and a leading `{*scope}` captures any ARM scope (for
//! `Microsoft.Authorization`).

use rsvault_control::absent::Absent;
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
    RpExtendedInfo,
    RpExtendedInfoResult,
    Capabilities,
    ListDeletedVaults,
    GetDeletedVault,
    UndeleteVault,
    DeletedVaultOperationStatus,
    // What rsvault does not have (`rsvault_control::absent`): a list is empty, a get is a
    // not-found, anything else is `OperationNotSupported` naming the spec's operation id.
    AbsentList(Absent),
    AbsentGet(Absent),
    AbsentAction(Absent, &'static str),
    /// Microsoft.Compute and Microsoft.Storage: the local inventory (`arm::inventory`).
    Inventory(InventoryOp),
    /// Backup inside a vault and at subscription level (`arm::backup`).
    Backup(BackupOp),
    /// Restore validation and item level recovery (`arm::ilr`).
    RestoreTool(RestoreToolOp),
}

/// Microsoft.Compute and Microsoft.Storage: the local inventory (`arm::inventory`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InventoryOp {
    DeleteAccount,
    DeleteShare,
    DeleteVm,
    GetAccount,
    GetShare,
    GetVm,
    ListAccountsByGroup,
    ListAccountsBySubscription,
    ListShares,
    ListVmsByGroup,
    ListVmsBySubscription,
    PutAccount,
    PutShare,
    PutVm,
}

/// Backup inside a vault and at subscription level (`arm::backup`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackupOp {
    BackupOperationResult,
    BackupOperationStatus,
    BackupStatus,
    CancelJob,
    ContainerOperationResult,
    ContainerOperationStatus,
    DeleteContainer,
    DeleteItem,
    DeletePolicy,
    ExportJobs,
    ExportJobsResult,
    FabricOperationResult,
    FabricOperationStatus,
    GetContainer,
    GetEncryptionConfig,
    GetItem,
    GetJob,
    GetPolicy,
    GetRecoveryPoint,
    GetStorageConfig,
    GetVaultConfig,
    InquireContainer,
    ItemOperationResult,
    ItemOperationStatus,
    JobOperationResult,
    ListContainers,
    ListDeletedContainers,
    ListJobs,
    ListPolicies,
    ListProtectableContainers,
    ListProtectableItems,
    ListProtectedItems,
    ListRecoveryPoints,
    ListUsageSummaries,
    PatchStorageConfig,
    PatchVaultConfig,
    PolicyOperationResult,
    PolicyOperationStatus,
    PreValidateProtection,
    PutContainer,
    PutEncryptionConfig,
    PutItem,
    PutPolicy,
    PutStorageConfig,
    PutVaultConfig,
    RefreshContainers,
    TriggerBackup,
    TriggerRestore,
    ValidateFeatures,
}

/// Restore validation and item level recovery (`arm::ilr`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestoreToolOp {
    IlrOperationResult,
    ProvisionIlr,
    RevokeIlr,
    TriggerValidateOperation,
    ValidateOperation,
    ValidateOperationResult,
    ValidateOperationStatus,
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
    r("GET", "/subscriptions/{subscriptionId}/providers/Microsoft.Compute/virtualMachines", Action("Microsoft.Compute/virtualMachines/read"), Op::Inventory(InventoryOp::ListVmsBySubscription)),
    r("GET", group!("Microsoft.Compute/virtualMachines"), Action("Microsoft.Compute/virtualMachines/read"), Op::Inventory(InventoryOp::ListVmsByGroup)),
    r("PUT", group!("Microsoft.Compute/virtualMachines/{vmName}"), Action("Microsoft.Compute/virtualMachines/write"), Op::Inventory(InventoryOp::PutVm)),
    r("GET", group!("Microsoft.Compute/virtualMachines/{vmName}"), Action("Microsoft.Compute/virtualMachines/read"), Op::Inventory(InventoryOp::GetVm)),
    r("DELETE", group!("Microsoft.Compute/virtualMachines/{vmName}"), Action("Microsoft.Compute/virtualMachines/delete"), Op::Inventory(InventoryOp::DeleteVm)),
    r("GET", "/subscriptions/{subscriptionId}/providers/Microsoft.Storage/storageAccounts", Action("Microsoft.Storage/storageAccounts/read"), Op::Inventory(InventoryOp::ListAccountsBySubscription)),
    r("GET", group!("Microsoft.Storage/storageAccounts"), Action("Microsoft.Storage/storageAccounts/read"), Op::Inventory(InventoryOp::ListAccountsByGroup)),
    r("PUT", group!("Microsoft.Storage/storageAccounts/{accountName}"), Action("Microsoft.Storage/storageAccounts/write"), Op::Inventory(InventoryOp::PutAccount)),
    r("GET", group!("Microsoft.Storage/storageAccounts/{accountName}"), Action("Microsoft.Storage/storageAccounts/read"), Op::Inventory(InventoryOp::GetAccount)),
    r("DELETE", group!("Microsoft.Storage/storageAccounts/{accountName}"), Action("Microsoft.Storage/storageAccounts/delete"), Op::Inventory(InventoryOp::DeleteAccount)),
    r("GET", group!("Microsoft.Storage/storageAccounts/{accountName}/fileServices/default/shares"), Action("Microsoft.Storage/storageAccounts/fileServices/shares/read"), Op::Inventory(InventoryOp::ListShares)),
    r("PUT", group!("Microsoft.Storage/storageAccounts/{accountName}/fileServices/default/shares/{shareName}"), Action("Microsoft.Storage/storageAccounts/fileServices/shares/write"), Op::Inventory(InventoryOp::PutShare)),
    r("GET", group!("Microsoft.Storage/storageAccounts/{accountName}/fileServices/default/shares/{shareName}"), Action("Microsoft.Storage/storageAccounts/fileServices/shares/read"), Op::Inventory(InventoryOp::GetShare)),
    r("DELETE", group!("Microsoft.Storage/storageAccounts/{accountName}/fileServices/default/shares/{shareName}"), Action("Microsoft.Storage/storageAccounts/fileServices/shares/delete"), Op::Inventory(InventoryOp::DeleteShare)),
    // ---- discovery and containers ----
    r("POST", fabric!("/refreshContainers"), Action("Microsoft.RecoveryServices/Vaults/backupFabrics/refreshContainers/action"), Op::Backup(BackupOp::RefreshContainers)),
    r("GET", fabric!("/operationResults/{operationId}"), Action("Microsoft.RecoveryServices/Vaults/backupFabrics/operationResults/read"), Op::Backup(BackupOp::FabricOperationResult)),
    r("GET", fabric!("/operationsStatus/{operationId}"), Action("Microsoft.RecoveryServices/Vaults/backupFabrics/operationResults/read"), Op::Backup(BackupOp::FabricOperationStatus)),
    r("GET", fabric!("/protectableContainers"), Action("Microsoft.RecoveryServices/Vaults/backupFabrics/protectableContainers/read"), Op::Backup(BackupOp::ListProtectableContainers)),
    r("PUT", fabric!("/protectionContainers/{containerName}"), Action("Microsoft.RecoveryServices/Vaults/backupFabrics/protectionContainers/write"), Op::Backup(BackupOp::PutContainer)),
    r("GET", fabric!("/protectionContainers/{containerName}"), Action("Microsoft.RecoveryServices/Vaults/backupFabrics/protectionContainers/read"), Op::Backup(BackupOp::GetContainer)),
    r("DELETE", fabric!("/protectionContainers/{containerName}"), Action("Microsoft.RecoveryServices/Vaults/backupFabrics/protectionContainers/delete"), Op::Backup(BackupOp::DeleteContainer)),
    r("POST", fabric!("/protectionContainers/{containerName}/inquire"), Action("Microsoft.RecoveryServices/Vaults/backupFabrics/protectionContainers/inquire/action"), Op::Backup(BackupOp::InquireContainer)),
    r("GET", fabric!("/protectionContainers/{containerName}/operationResults/{operationId}"), Action("Microsoft.RecoveryServices/Vaults/backupFabrics/protectionContainers/operationResults/read"), Op::Backup(BackupOp::ContainerOperationResult)),
    r("GET", fabric!("/protectionContainers/{containerName}/operationsStatus/{operationId}"), Action("Microsoft.RecoveryServices/Vaults/backupFabrics/protectionContainers/operationResults/read"), Op::Backup(BackupOp::ContainerOperationStatus)),
    // ---- protected items ----
    r("PUT", item!(""), Action("Microsoft.RecoveryServices/Vaults/backupFabrics/protectionContainers/protectedItems/write"), Op::Backup(BackupOp::PutItem)),
    r("GET", item!(""), Action("Microsoft.RecoveryServices/Vaults/backupFabrics/protectionContainers/protectedItems/read"), Op::Backup(BackupOp::GetItem)),
    r("DELETE", item!(""), Action("Microsoft.RecoveryServices/Vaults/backupFabrics/protectionContainers/protectedItems/delete"), Op::Backup(BackupOp::DeleteItem)),
    r("GET", item!("/operationResults/{operationId}"), Action("Microsoft.RecoveryServices/Vaults/backupFabrics/protectionContainers/protectedItems/operationResults/read"), Op::Backup(BackupOp::ItemOperationResult)),
    r("GET", item!("/operationsStatus/{operationId}"), Action("Microsoft.RecoveryServices/Vaults/backupFabrics/protectionContainers/protectedItems/operationsStatus/read"), Op::Backup(BackupOp::ItemOperationStatus)),
    r("GET", vault!("/backupProtectableItems"), Action("Microsoft.RecoveryServices/Vaults/backupProtectableItems/read"), Op::Backup(BackupOp::ListProtectableItems)),
    r("GET", vault!("/backupProtectedItems"), Action("Microsoft.RecoveryServices/Vaults/backupProtectedItems/read"), Op::Backup(BackupOp::ListProtectedItems)),
    r("GET", vault!("/backupProtectionContainers"), Action("Microsoft.RecoveryServices/Vaults/backupProtectionContainers/read"), Op::Backup(BackupOp::ListContainers)),
    r("GET", vault!("/backupDeletedProtectionContainers"), Action("Microsoft.RecoveryServices/Vaults/backupDeletedProtectionContainers/read"), Op::Backup(BackupOp::ListDeletedContainers)),
    // ---- policies ----
    r("GET", vault!("/backupPolicies"), Action("Microsoft.RecoveryServices/Vaults/backupPolicies/read"), Op::Backup(BackupOp::ListPolicies)),
    r("PUT", vault!("/backupPolicies/{policyName}"), Action("Microsoft.RecoveryServices/Vaults/backupPolicies/write"), Op::Backup(BackupOp::PutPolicy)),
    r("GET", vault!("/backupPolicies/{policyName}"), Action("Microsoft.RecoveryServices/Vaults/backupPolicies/read"), Op::Backup(BackupOp::GetPolicy)),
    r("DELETE", vault!("/backupPolicies/{policyName}"), Action("Microsoft.RecoveryServices/Vaults/backupPolicies/delete"), Op::Backup(BackupOp::DeletePolicy)),
    r("GET", vault!("/backupPolicies/{policyName}/operations/{operationId}"), Action("Microsoft.RecoveryServices/Vaults/backupPolicies/operations/read"), Op::Backup(BackupOp::PolicyOperationStatus)),
    r("GET", vault!("/backupPolicies/{policyName}/operationResults/{operationId}"), Action("Microsoft.RecoveryServices/Vaults/backupPolicies/operationResults/read"), Op::Backup(BackupOp::PolicyOperationResult)),
    // ---- operations and jobs ----
    r("GET", vault!("/backupOperations/{operationId}"), Action("Microsoft.RecoveryServices/Vaults/backupOperations/read"), Op::Backup(BackupOp::BackupOperationStatus)),
    r("GET", vault!("/backupOperationResults/{operationId}"), Action("Microsoft.RecoveryServices/Vaults/backupOperationResults/read"), Op::Backup(BackupOp::BackupOperationResult)),
    r("GET", vault!("/backupJobs"), Action("Microsoft.RecoveryServices/Vaults/backupJobs/read"), Op::Backup(BackupOp::ListJobs)),
    r("GET", vault!("/backupJobs/{jobName}"), Action("Microsoft.RecoveryServices/Vaults/backupJobs/read"), Op::Backup(BackupOp::GetJob)),
    r("POST", vault!("/backupJobs/{jobName}/cancel"), Action("Microsoft.RecoveryServices/Vaults/backupJobs/cancel/action"), Op::Backup(BackupOp::CancelJob)),
    r("GET", vault!("/backupJobs/{jobName}/operationResults/{operationId}"), Action("Microsoft.RecoveryServices/Vaults/backupJobs/operationResults/read"), Op::Backup(BackupOp::JobOperationResult)),
    r("POST", vault!("/backupJobsExport"), Action("Microsoft.RecoveryServices/Vaults/backupJobsExport/action"), Op::Backup(BackupOp::ExportJobs)),
    r("GET", vault!("/backupJobs/operationResults/{operationId}"), Action("Microsoft.RecoveryServices/Vaults/backupJobs/operationResults/read"), Op::Backup(BackupOp::ExportJobsResult)),
    // ---- backup, recovery points, restore ----
    r("POST", item!("/backup"), Action("Microsoft.RecoveryServices/Vaults/backupFabrics/protectionContainers/protectedItems/backup/action"), Op::Backup(BackupOp::TriggerBackup)),
    r("GET", item!("/recoveryPoints"), Action("Microsoft.RecoveryServices/Vaults/backupFabrics/protectionContainers/protectedItems/recoveryPoints/read"), Op::Backup(BackupOp::ListRecoveryPoints)),
    r("GET", item!("/recoveryPoints/{recoveryPointId}"), Action("Microsoft.RecoveryServices/Vaults/backupFabrics/protectionContainers/protectedItems/recoveryPoints/read"), Op::Backup(BackupOp::GetRecoveryPoint)),
    r("POST", item!("/recoveryPoints/{recoveryPointId}/restore"), Action("Microsoft.RecoveryServices/Vaults/backupFabrics/protectionContainers/protectedItems/recoveryPoints/restore/action"), Op::Backup(BackupOp::TriggerRestore)),
    // ---- restore validation (issue 16) ----
    r("POST", vault!("/backupValidateOperation"), Action("Microsoft.RecoveryServices/Vaults/backupValidateOperation/action"), Op::RestoreTool(RestoreToolOp::ValidateOperation)),
    r("POST", vault!("/backupTriggerValidateOperation"), Action("Microsoft.RecoveryServices/Vaults/backupTriggerValidateOperation/action"), Op::RestoreTool(RestoreToolOp::TriggerValidateOperation)),
    r("GET", vault!("/backupValidateOperationResults/{operationId}"), Action("Microsoft.RecoveryServices/Vaults/backupValidateOperationResults/read"), Op::RestoreTool(RestoreToolOp::ValidateOperationResult)),
    r("GET", vault!("/backupValidateOperationsStatuses/{operationId}"), Action("Microsoft.RecoveryServices/Vaults/backupValidateOperationsStatuses/read"), Op::RestoreTool(RestoreToolOp::ValidateOperationStatus)),
    // ---- item level recovery (issue 16) ----
    r("POST", item!("/recoveryPoints/{recoveryPointId}/provisionInstantItemRecovery"), Action("Microsoft.RecoveryServices/Vaults/backupFabrics/protectionContainers/protectedItems/recoveryPoints/provisionInstantItemRecovery/action"), Op::RestoreTool(RestoreToolOp::ProvisionIlr)),
    r("POST", item!("/recoveryPoints/{recoveryPointId}/revokeInstantItemRecovery"), Action("Microsoft.RecoveryServices/Vaults/backupFabrics/protectionContainers/protectedItems/recoveryPoints/revokeInstantItemRecovery/action"), Op::RestoreTool(RestoreToolOp::RevokeIlr)),
    // The answer carries the session's key: only who may provision reads it.
    r("POST", item!("/recoveryPoints/{recoveryPointId}/listInstantItemRecoveryOperationResult"), Action("Microsoft.RecoveryServices/Vaults/backupFabrics/protectionContainers/protectedItems/recoveryPoints/provisionInstantItemRecovery/action"), Op::RestoreTool(RestoreToolOp::IlrOperationResult)),
    // ---- vault backup configuration ----
    r("GET", vault!("/backupconfig/vaultconfig"), Action("Microsoft.RecoveryServices/Vaults/backupconfig/vaultconfig/read"), Op::Backup(BackupOp::GetVaultConfig)),
    r("PUT", vault!("/backupconfig/vaultconfig"), Action("Microsoft.RecoveryServices/Vaults/backupconfig/vaultconfig/write"), Op::Backup(BackupOp::PutVaultConfig)),
    r("PATCH", vault!("/backupconfig/vaultconfig"), Action("Microsoft.RecoveryServices/Vaults/backupconfig/vaultconfig/write"), Op::Backup(BackupOp::PatchVaultConfig)),
    r("GET", vault!("/backupstorageconfig/vaultstorageconfig"), Action("Microsoft.RecoveryServices/Vaults/backupstorageconfig/vaultstorageconfig/read"), Op::Backup(BackupOp::GetStorageConfig)),
    r("PUT", vault!("/backupstorageconfig/vaultstorageconfig"), Action("Microsoft.RecoveryServices/Vaults/backupstorageconfig/vaultstorageconfig/write"), Op::Backup(BackupOp::PutStorageConfig)),
    r("PATCH", vault!("/backupstorageconfig/vaultstorageconfig"), Action("Microsoft.RecoveryServices/Vaults/backupstorageconfig/vaultstorageconfig/write"), Op::Backup(BackupOp::PatchStorageConfig)),
    r("GET", vault!("/backupEncryptionConfigs/backupResourceEncryptionConfig"), Action("Microsoft.RecoveryServices/Vaults/read"), Op::Backup(BackupOp::GetEncryptionConfig)),
    r("PUT", vault!("/backupEncryptionConfigs/backupResourceEncryptionConfig"), Action("Microsoft.RecoveryServices/Vaults/write"), Op::Backup(BackupOp::PutEncryptionConfig)),
    r("GET", vault!("/backupUsageSummaries"), Action("Microsoft.RecoveryServices/Vaults/backupUsageSummaries/read"), Op::Backup(BackupOp::ListUsageSummaries)),
    r("GET", vault!("/backupResourceGuardProxies"), Action("Microsoft.RecoveryServices/Vaults/backupResourceGuardProxies/read"), Op::AbsentList(Absent::ResourceGuards)),
    // ---- subscription-level questions ----
    r("POST", location!("backupStatus"), Action("Microsoft.RecoveryServices/locations/backupStatus/action"), Op::Backup(BackupOp::BackupStatus)),
    r("POST", location!("backupValidateFeatures"), Action("Microsoft.RecoveryServices/locations/backupValidateFeatures/action"), Op::Backup(BackupOp::ValidateFeatures)),
    r("POST", location!("backupPreValidateProtection"), Action("Microsoft.RecoveryServices/locations/backupPreValidateProtection/action"), Op::Backup(BackupOp::PreValidateProtection)),
    r("POST", fabric!("/getRPExtendedInfo"), Action("Microsoft.RecoveryServices/Vaults/backupFabrics/protectionContainers/protectedItems/recoveryPoints/read"), Op::RpExtendedInfo),
    r("GET", fabric!("/getRPExtendedInfoOperationResult/{operationId}"), Action("Microsoft.RecoveryServices/Vaults/backupFabrics/protectionContainers/protectedItems/recoveryPoints/read"), Op::RpExtendedInfoResult),
    // ---- vault soft delete, capabilities (Microsoft.RecoveryServices/locations) ----
    r("POST", location!("capabilities"), Action("Microsoft.RecoveryServices/locations/capabilities/action"), Op::Capabilities),
    r("GET", location!("deletedVaults"), Action("Microsoft.RecoveryServices/locations/deletedVaults/read"), Op::ListDeletedVaults),
    r("GET", location!("deletedVaults/{deletedVaultName}"), Action("Microsoft.RecoveryServices/locations/deletedVaults/read"), Op::GetDeletedVault),
    r("POST", location!("deletedVaults/{deletedVaultName}/undelete"), Action("Microsoft.RecoveryServices/locations/deletedVaults/undelete/action"), Op::UndeleteVault),
    r("GET", location!("deletedVaults/{deletedVaultName}/operations/{operationId}"), Action("Microsoft.RecoveryServices/locations/deletedVaults/operations/read"), Op::DeletedVaultOperationStatus),
    // ---- what rsvault does not have (rsvault_control::absent) ----
    r("GET", vault!("/backupEngines"), Action("Microsoft.RecoveryServices/Vaults/backupEngines/read"), Op::AbsentList(Absent::BackupEngines)),
    r("GET", vault!("/backupEngines/{backupEngineName}"), Action("Microsoft.RecoveryServices/Vaults/backupEngines/read"), Op::AbsentGet(Absent::BackupEngines)),
    r("GET", vault!("/backupProtectionIntents"), Action("Microsoft.RecoveryServices/Vaults/backupProtectionIntents/read"), Op::AbsentList(Absent::ProtectionIntents)),
    r("GET", fabric!("/backupProtectionIntent/{intentObjectName}"), Action("Microsoft.RecoveryServices/Vaults/backupFabrics/backupProtectionIntent/read"), Op::AbsentGet(Absent::ProtectionIntents)),
    r("PUT", fabric!("/backupProtectionIntent/{intentObjectName}"), Action("Microsoft.RecoveryServices/Vaults/backupFabrics/backupProtectionIntent/write"), Op::AbsentAction(Absent::ProtectionIntents, "ProtectionIntent_CreateOrUpdate")),
    r("DELETE", fabric!("/backupProtectionIntent/{intentObjectName}"), Action("Microsoft.RecoveryServices/Vaults/backupFabrics/backupProtectionIntent/delete"), Op::AbsentAction(Absent::ProtectionIntents, "ProtectionIntent_Delete")),
    r("GET", fabric!("/protectionContainers/{containerName}/items"), Action("Microsoft.RecoveryServices/Vaults/backupFabrics/protectionContainers/items/read"), Op::AbsentList(Absent::WorkloadItems)),
    r("POST", item!("/configureSourceScan"), Action("Microsoft.RecoveryServices/Vaults/backupFabrics/protectionContainers/protectedItems/configureSourceScan/action"), Op::AbsentAction(Absent::SourceScan, "ConfigureSourceScan_Execute")),
    r("POST", item!("/recoveryPoints/{recoveryPointId}/move"), Action("Microsoft.RecoveryServices/Vaults/backupFabrics/protectionContainers/protectedItems/recoveryPoints/move/action"), Op::AbsentAction(Absent::ArchiveTier, "MoveRecoveryPoint")),
    r("POST", item!("/recoveryPointsRecommendedForMove"), Action("Microsoft.RecoveryServices/Vaults/backupFabrics/protectionContainers/protectedItems/recoveryPointsRecommendedForMove/action"), Op::AbsentList(Absent::ArchiveTier)),
    r("POST", vault!("/backupTieringCost/default/fetchTieringCost"), Action("Microsoft.RecoveryServices/Vaults/backupTieringCost/fetchTieringCost/action"), Op::AbsentAction(Absent::ArchiveTier, "FetchTieringCost_Post")),
    r("GET", vault!("/backupTieringCost/default/operationResults/{operationId}"), Action("Microsoft.RecoveryServices/Vaults/backupTieringCost/operationResults/read"), Op::AbsentGet(Absent::ArchiveTier)),
    r("GET", vault!("/backupTieringCost/default/operationsStatus/{operationId}"), Action("Microsoft.RecoveryServices/Vaults/backupTieringCost/operationsStatus/read"), Op::AbsentGet(Absent::ArchiveTier)),
    r("GET", vault!("/backupResourceGuardProxies/{resourceGuardProxyName}"), Action("Microsoft.RecoveryServices/Vaults/backupResourceGuardProxies/read"), Op::AbsentGet(Absent::ResourceGuards)),
    r("PUT", vault!("/backupResourceGuardProxies/{resourceGuardProxyName}"), Action("Microsoft.RecoveryServices/Vaults/backupResourceGuardProxies/write"), Op::AbsentAction(Absent::ResourceGuards, "ResourceGuardProxy_Put")),
    r("DELETE", vault!("/backupResourceGuardProxies/{resourceGuardProxyName}"), Action("Microsoft.RecoveryServices/Vaults/backupResourceGuardProxies/delete"), Op::AbsentAction(Absent::ResourceGuards, "ResourceGuardProxy_Delete")),
    r("POST", vault!("/backupResourceGuardProxies/{resourceGuardProxyName}/unlockDelete"), Action("Microsoft.RecoveryServices/Vaults/backupResourceGuardProxies/unlockDelete/action"), Op::AbsentAction(Absent::ResourceGuards, "ResourceGuardProxy_UnlockDelete")),
    r("POST", vault!("/backupSecurityPIN"), Action("Microsoft.RecoveryServices/Vaults/backupSecurityPIN/action"), Op::AbsentAction(Absent::SecurityPin, "SecurityPINs_Get")),
    r("POST", vault!("/backupstorageconfig/vaultstorageconfig/prepareDataMove"), Action("Microsoft.RecoveryServices/Vaults/backupstorageconfig/vaultstorageconfig/prepareDataMove/action"), Op::AbsentAction(Absent::DataMove, "BMSPrepareDataMove")),
    r("POST", vault!("/backupstorageconfig/vaultstorageconfig/triggerDataMove"), Action("Microsoft.RecoveryServices/Vaults/backupstorageconfig/vaultstorageconfig/triggerDataMove/action"), Op::AbsentAction(Absent::DataMove, "BMSTriggerDataMove")),
    r("GET", vault!("/backupstorageconfig/vaultstorageconfig/operationResults/{operationId}"), Action("Microsoft.RecoveryServices/Vaults/backupstorageconfig/vaultstorageconfig/operationResults/read"), Op::AbsentGet(Absent::DataMove)),
    r("GET", vault!("/backupstorageconfig/vaultstorageconfig/operationStatus/{operationId}"), Action("Microsoft.RecoveryServices/Vaults/backupstorageconfig/vaultstorageconfig/operationStatus/read"), Op::AbsentGet(Absent::DataMove)),
    r("GET", vault!("/privateEndpointConnections/{privateEndpointConnectionName}"), Action("Microsoft.RecoveryServices/Vaults/privateEndpointConnections/read"), Op::AbsentGet(Absent::PrivateEndpoints)),
    r("PUT", vault!("/privateEndpointConnections/{privateEndpointConnectionName}"), Action("Microsoft.RecoveryServices/Vaults/privateEndpointConnections/write"), Op::AbsentAction(Absent::PrivateEndpoints, "PrivateEndpointConnection_Put")),
    r("DELETE", vault!("/privateEndpointConnections/{privateEndpointConnectionName}"), Action("Microsoft.RecoveryServices/Vaults/privateEndpointConnections/delete"), Op::AbsentAction(Absent::PrivateEndpoints, "PrivateEndpointConnection_Delete")),
    r("GET", vault!("/privateEndpointConnections/{privateEndpointConnectionName}/operationsStatus/{operationId}"), Action("Microsoft.RecoveryServices/Vaults/privateEndpointConnections/operationsStatus/read"), Op::AbsentGet(Absent::PrivateEndpoints)),
    r("GET", vault!("/privateLinkResources"), Action("Microsoft.RecoveryServices/Vaults/privateLinkResources/read"), Op::AbsentList(Absent::PrivateEndpoints)),
    r("GET", vault!("/privateLinkResources/{privateLinkResourceName}"), Action("Microsoft.RecoveryServices/Vaults/privateLinkResources/read"), Op::AbsentGet(Absent::PrivateEndpoints)),
    r("PUT", vault!("/certificates/{certificateName}"), Action("Microsoft.RecoveryServices/Vaults/certificates/write"), Op::AbsentAction(Absent::VaultCertificates, "VaultCertificates_Create")),
    r("DELETE", vault!("/registeredIdentities/{identityName}"), Action("Microsoft.RecoveryServices/Vaults/registeredIdentities/delete"), Op::AbsentAction(Absent::RegisteredIdentities, "RegisteredIdentities_Delete")),
    r("GET", vault!("/replicationUsages"), Action("Microsoft.RecoveryServices/Vaults/replicationUsages/read"), Op::AbsentList(Absent::SiteRecovery)),
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

    /// The last value captured (the name a route ends with).
    pub fn last(&self) -> &str {
        self.0.last().map(|(_, v)| v.as_str()).unwrap_or_default()
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
