//! What rsvault does not have, said plainly.
//!
//! The two specs define operations for parts of Azure that have no counterpart on one machine: DPM and
//! Azure Backup Server engines, auto-protection intents and workload items of SQL/SAP HANA in VMs,
//! private endpoints, resource guards, the archive tier, MARS agent registration, Site Recovery. A
//! route for each of them exists (so the caller's access is checked like any other), and its answer
//! follows one rule:
//!
//! * a **list** is a vault's honest answer: it has none ([`Control::absent_list`], 200 with `value: []`);
//! * a **get** of one named thing is a not-found, worded for the kind ([`Control::absent_get`]);
//! * **anything else** (create, change, delete, actions) is `400 OperationNotSupported`, naming the
//!   operation and why ([`Control::absent_action`]),
//!
//! never `InvalidResourceType` for a type the spec defines.

use crate::{Control, Error, Result};
use serde_json::{json, Value};

/// A part of Azure rsvault does not have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Absent {
    /// DPM and Azure Backup Server (`backupEngines`).
    BackupEngines,
    /// Auto-protection intents for SQL and SAP HANA in Azure VMs (`backupProtectionIntent`).
    ProtectionIntents,
    /// Databases and instances found inside a workload container (`protectionContainers/{c}/items`).
    WorkloadItems,
    /// Malware scanning of backup sources (`configureSourceScan`).
    SourceScan,
    /// The archive tier: moving recovery points, their tiering cost.
    ArchiveTier,
    /// Resource guards (multi-user authorization through `Microsoft.DataProtection`).
    ResourceGuards,
    /// The security PIN the MARS agent and Azure Backup Server ask for.
    SecurityPin,
    /// Moving a vault's backup data to another vault (`prepareDataMove`, `triggerDataMove`).
    DataMove,
    /// Private endpoints and private link resources (`Microsoft.Network`).
    PrivateEndpoints,
    /// Vault credentials certificates for MARS agents and Site Recovery (`certificates`).
    VaultCertificates,
    /// Servers registered with the vault by an agent (`registeredIdentities`).
    RegisteredIdentities,
    /// Azure Site Recovery (replication of machines to another region).
    SiteRecovery,
}

impl Absent {
    /// Every part rsvault does not have.
    pub const ALL: [Absent; 12] = [
        Absent::BackupEngines,
        Absent::ProtectionIntents,
        Absent::WorkloadItems,
        Absent::SourceScan,
        Absent::ArchiveTier,
        Absent::ResourceGuards,
        Absent::SecurityPin,
        Absent::DataMove,
        Absent::PrivateEndpoints,
        Absent::VaultCertificates,
        Absent::RegisteredIdentities,
        Absent::SiteRecovery,
    ];

    /// Why rsvault has none of it, in one sentence.
    pub fn reason(self) -> &'static str {
        match self {
            Absent::BackupEngines => "rsvault has no DPM or Azure Backup Server engines; it backs up the VMs and file shares of its own host",
            Absent::ProtectionIntents => "auto-protection intents are for SQL and SAP HANA databases in Azure VMs, which rsvault does not back up",
            Absent::WorkloadItems => "rsvault's containers hold VMs and file shares, not databases or instances of an Azure workload",
            Absent::SourceScan => "rsvault does not scan backup sources for malware",
            Absent::ArchiveTier => "rsvault has one storage tier per vault: there is no archive tier to move recovery points to",
            Absent::ResourceGuards => "rsvault has no resource guards (multi-user authorization through Microsoft.DataProtection); its vaults are guarded by Azure RBAC roles",
            Absent::SecurityPin => "security PINs are for the MARS agent and Azure Backup Server, which rsvault does not have",
            Absent::DataMove => "moving a vault's backup data to another vault is not supported",
            Absent::PrivateEndpoints => "rsvault has no private endpoints (Microsoft.Network); it listens where its operator starts it",
            Absent::VaultCertificates => "vault credentials certificates are for registering MARS agents and Site Recovery servers, which rsvault does not have",
            Absent::RegisteredIdentities => "no agent registers servers with an rsvault vault",
            Absent::SiteRecovery => "rsvault backs up; it does not replicate machines to another region (Azure Site Recovery)",
        }
    }

    /// What a single one of it is called in a not-found answer.
    fn noun(self) -> &'static str {
        match self {
            Absent::BackupEngines => "backup engine",
            Absent::ProtectionIntents => "protection intent",
            Absent::WorkloadItems => "workload item",
            Absent::SourceScan => "source scan configuration",
            Absent::ArchiveTier => "tiering operation",
            Absent::ResourceGuards => "resource guard proxy",
            Absent::SecurityPin => "security PIN",
            Absent::DataMove => "data move operation",
            Absent::PrivateEndpoints => "private endpoint resource",
            Absent::VaultCertificates => "vault certificate",
            Absent::RegisteredIdentities => "registered identity",
            Absent::SiteRecovery => "replication item",
        }
    }
}

/// `400 OperationNotSupported` for `operation` (the spec's operation id) of `what`.
pub fn not_supported(operation: &str, what: Absent) -> Error {
    Error::Invalid {
        code: "OperationNotSupported",
        message: format!("The operation '{operation}' is not supported: {}.", what.reason()),
        target: None,
    }
}

impl Control {
    /// A list of what rsvault has none of, in an existing vault: empty.
    pub fn absent_list(&self, sub: &str, rg: &str, vault: &str, _what: Absent) -> Result<Value> {
        self.vault_row(sub, rg, vault)?;
        Ok(json!({ "value": [] }))
    }

    /// One named thing of a kind rsvault has none of, in an existing vault: not found.
    pub fn absent_get(&self, sub: &str, rg: &str, vault: &str, name: &str, what: Absent) -> Result<Value> {
        self.vault_row(sub, rg, vault)?;
        Err(Error::NotFound {
            code: "ResourceNotFound",
            message: format!(
                "The {} '{name}' was not found in vault '{vault}': {}.",
                what.noun(),
                what.reason()
            ),
        })
    }

    /// Any other operation on what rsvault has none of: refused after the vault is found.
    pub fn absent_action(&self, sub: &str, rg: &str, vault: &str, operation: &str, what: Absent) -> Result<Value> {
        self.vault_row(sub, rg, vault)?;
        Err(not_supported(operation, what))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_is_one_plain_sentence() {
        for a in Absent::ALL {
            let e = not_supported("X_Y", a);
            assert_eq!(e.code(), "OperationNotSupported");
            assert!(e.to_string().starts_with("The operation 'X_Y' is not supported: "));
            assert!(!a.reason().ends_with('.'), "{a:?}");
        }
    }
}
