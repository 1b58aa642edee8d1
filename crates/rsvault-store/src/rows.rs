//! The records the store keeps, as plain structs.

use chrono::{DateTime, Utc};
use serde_json::Value;

/// A subscription of the (single) tenant.
#[derive(Debug, Clone, PartialEq)]
pub struct SubscriptionRow {
    /// The subscription GUID as created.
    pub id: String,
    pub tenant_id: String,
    pub display_name: String,
    pub state: String,
    pub created: DateTime<Utc>,
}

/// A resource group.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupRow {
    pub subscription: String,
    pub name: String,
    /// The full id as created (`/subscriptions/{s}/resourceGroups/{name}`).
    pub id: String,
    pub location: String,
    pub tags: Value,
    pub managed_by: Option<String>,
    pub created: DateTime<Utc>,
}

/// An ARM resource below a resource group (vaults, VMs, policies, items …), kept as its JSON body.
#[derive(Debug, Clone, PartialEq)]
pub struct ResourceRow {
    /// The full id as created; its lower-cased form is the key.
    pub id: String,
    pub subscription: String,
    pub resource_group: Option<String>,
    /// Lower-cased full type, e.g. `microsoft.recoveryservices/vaults`.
    pub type_key: String,
    pub name: String,
    /// Lower-cased id of the parent resource, for child resources.
    pub parent_key: Option<String>,
    pub body: Value,
    pub etag: String,
    pub created: DateTime<Utc>,
    pub updated: DateTime<Utc>,
}

/// A service principal; only the hash of its secret is kept.
#[derive(Debug, Clone, PartialEq)]
pub struct PrincipalRow {
    pub client_id: String,
    pub object_id: String,
    pub tenant_id: String,
    pub display_name: String,
    pub secret_hash: String,
    pub created: DateTime<Utc>,
}

/// A role assignment (`Microsoft.Authorization/roleAssignments`).
#[derive(Debug, Clone, PartialEq)]
pub struct RoleAssignmentRow {
    /// `{scope}/providers/Microsoft.Authorization/roleAssignments/{name}`.
    pub id: String,
    pub name: String,
    pub scope: String,
    /// Full role definition id or bare GUID, as given.
    pub role_definition_id: String,
    /// Object id of the principal.
    pub principal_id: String,
    pub principal_type: String,
    pub created: DateTime<Utc>,
    pub created_by: String,
}

/// A token-signing key; `retired` is set when a newer key took over.
#[derive(Debug, Clone, PartialEq)]
pub struct SigningKeyRow {
    pub kid: String,
    pub created: DateTime<Utc>,
    pub retired: Option<DateTime<Utc>>,
    pub pkcs8: Vec<u8>,
}

/// Which jobs of a vault a listing wants (every field that is set must hold; text compares ignore case).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobQuery {
    pub status: Option<String>,
    pub operation: Option<String>,
    pub backup_management_type: Option<String>,
    /// The job's name (its GUID).
    pub name: Option<String>,
    /// Started at or after (`true`: inclusive) this time.
    pub started_after: Option<(DateTime<Utc>, bool)>,
    /// Started at or before (`true`: inclusive) this time.
    pub started_before: Option<(DateTime<Utc>, bool)>,
}

/// One page of a listing; `next` is the key to continue after, absent on the last page.
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next: Option<String>,
}

/// A long-running operation's durable record.
#[derive(Debug, Clone, PartialEq)]
pub struct OperationRow {
    pub id: String,
    /// Lower-cased id of the resource the operation is about (its status URLs live below it).
    pub scope_key: String,
    /// What it does, e.g. `VaultDelete`.
    pub kind: String,
    /// `InProgress`, `Succeeded`, `Failed` or `Canceled`.
    pub status: String,
    pub start: DateTime<Utc>,
    pub end: Option<DateTime<Utc>>,
    /// ARM error body (`{"code","message"}`) when it failed.
    pub error: Option<Value>,
    pub properties: Option<Value>,
    /// Id of the resource the operation acts on (answered by its `operationResults` URL when done).
    pub target: Option<String>,
}

/// A backup job: the columns `$filter` uses, and the job's ARM `properties` as `body`.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRow {
    /// Full id as created (`{vault}/backupJobs/{name}`).
    pub id: String,
    /// Lower-cased id of the vault.
    pub vault_key: String,
    pub name: String,
    pub operation: String,
    pub status: String,
    pub backup_management_type: String,
    pub entity: String,
    pub start: DateTime<Utc>,
    pub end: Option<DateTime<Utc>>,
    pub body: Value,
    /// For jobs the job engine runs: `queued`, `running` or `done`; `None` for jobs that completed
    /// with their request.
    pub phase: Option<String>,
    /// What the job engine must do (its own JSON), kept for restarts.
    pub work: Option<Value>,
}

/// A job row read with its body left as the stored text: the row's `body` is `Null` and its `work`
/// `None`; the text is the body as written. Lets an answer reuse what it rendered from the same text.
pub type JobText = (JobRow, String);

/// A resource row read with its body left as the stored text (the row's `body` is `Null`): for answers
/// that send stored bodies as they are.
pub type ResourceText = (ResourceRow, String);

/// A recovery point the vault holds: its ARM resource body and the engine's record of it.
#[derive(Debug, Clone, PartialEq)]
pub struct RecoveryPointRow {
    /// Full id (`{item}/recoveryPoints/{name}`).
    pub id: String,
    /// Lower-cased vault id.
    pub vault_key: String,
    /// Lower-cased protected item id.
    pub item_key: String,
    pub name: String,
    pub time: DateTime<Utc>,
    pub expiry: Option<DateTime<Utc>>,
    /// The ARM resource (`id`, `name`, `type`, `properties`).
    pub body: Value,
    /// What the engine knows of it (snapshot id, kind, disks, sizes).
    pub engine: Value,
}

/// A vault's sealed repository password and where its repository is.
#[derive(Debug, Clone, PartialEq)]
pub struct VaultSecretRow {
    pub vault_key: String,
    pub sealed: String,
    pub repo: String,
    pub created: DateTime<Utc>,
}

/// A running job's lease: which node runs it, with which fencing token, until when (wall clock).
#[derive(Debug, Clone, PartialEq)]
pub struct JobLease {
    /// Lower-cased job id.
    pub job_key: String,
    /// Lower-cased vault id (the per-vault limit counts leases).
    pub vault_key: String,
    pub node: String,
    /// The claim's number; a later claim of the same job has a greater one.
    pub fence: i64,
    pub expires: DateTime<Utc>,
}

/// A node of the service, as it last reported itself.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeRow {
    pub node: String,
    pub started: DateTime<Utc>,
    pub seen: DateTime<Utc>,
    /// What the node says of itself (address, version, workers, running jobs).
    pub info: Value,
}
