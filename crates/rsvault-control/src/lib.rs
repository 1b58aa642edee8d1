//! rsvault's control plane: what each ARM request means, without HTTP.
//!
//! [`Control`] owns the metadata [`Store`], the clock and the token issuer. Its methods take typed
//! arguments (names already decoded, bodies as JSON) and return ARM wire bodies (`serde_json::Value`) or a
//! domain [`Error`]. The API crate decides nothing about meaning: it parses a request into a call here and
//! renders the result.
//!
//! Modules: [`datadir`] (first start and the files of a data dir), [`access`] (principals, role
//! assignments and definitions, authorization), [`tokens`] (the token endpoint's logic), [`resources`]
//! (subscriptions, resource groups), [`vaults`] (Recovery Services vaults), [`body`] (request body checks), [`disk`] (disk image probes),
//! [`hostaccess`] (the operator's host-path grants: no grant, no host path),
//! [`inventory`] (VMs, storage accounts and file shares), [`backup`] (policies, containers, protected
//! items, jobs, operations, recovery points, backup, restore, backup status and vault backup
//! configuration), [`dataplane`] (vault repositories and their sealed passwords), [`jobwork`] (the
//! backup domain's side of the job engine, `rsvault_jobs`: what a job does), [`node`] (a node's
//! background workers: job runner, scheduler, its report), [`scheduler`] (scheduled backups, retention, the soft-delete
//! purge, garbage collection and the test clock's advance), [`immutability`] (immutable vaults and
//! always-on soft delete: what they refuse), [`absent`] (what rsvault does not have: DPM engines, workload
//! intents, private endpoints …, answered plainly), [`deletedvaults`] (vault soft delete: deleted vaults kept,
//! listed, undeleted, purged).

pub mod absent;
pub mod access;
pub mod backup;
pub mod body;
pub mod datadir;
pub mod dataplane;
pub mod deletedvaults;
pub mod disk;
pub mod faults;
pub mod hostaccess;
pub mod immutability;
pub mod inventory;
pub mod jobwork;
pub mod livevm;
pub mod maintenance;
pub mod node;
pub mod removals;
pub mod resources;
pub mod scheduler;
pub mod storage;
pub mod tokens;
pub mod vaults;
pub mod wirecache;

/// How many bytes of settled jobs' renderings a node keeps (stored text and wire body: about 20 000
/// jobs).
const JOB_WIRE_CACHE_BYTES: usize = 48 << 20;

use rsvault_core::time::SharedClock;
pub use rsvault_core::{Error, Result};
use rsvault_identity::tokens::Issuer;
use rsvault_store::Store;
use std::sync::{Arc, RwLock};

/// Who is calling: taken from a verified token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub tenant_id: String,
    pub object_id: String,
    pub client_id: String,
}

/// Settings of a running control plane.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Items per page in list answers.
    pub page_size: usize,
    /// Token lifetime in seconds.
    pub token_lifetime_secs: i64,
    /// The `iss` of issued tokens.
    pub issuer_url: String,
}

/// The control plane.
pub struct Control {
    store: Arc<Store>,
    clock: SharedClock,
    settings: Settings,
    tenant_id: String,
    /// The token issuer and the key generation it was loaded at; loaded at first use (signing keys
    /// are sealed with the server key, which only a control plane with a data plane holds).
    issuer: RwLock<Option<(String, Arc<Issuer>)>>,
    data: Option<dataplane::DataPlane>,
    /// The job queue of this node (with the data plane).
    jobs: Option<Arc<rsvault_jobs::Jobs>>,
    grants: hostaccess::HostGrants,
    /// Principals' role assignments, kept while the store's access generation stands.
    grant_cache: access::GrantCache,
    /// Settled jobs' wire bodies, reused while their rows read the same.
    job_wires: wirecache::WireCache,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control")
            .field("tenant_id", &self.tenant_id)
            .field("settings", &self.settings)
            .finish()
    }
}

impl Control {
    /// A control plane over an opened, bootstrapped store.
    pub fn new(store: Arc<Store>, clock: SharedClock, settings: Settings) -> Result<Control> {
        let tenant_id = store
            .read(|db| db.meta(datadir::META_TENANT))?
            .ok_or_else(|| Error::internal("the store has no tenant: the data dir was not bootstrapped"))?;
        Ok(Control {
            store,
            clock,
            settings,
            tenant_id,
            issuer: RwLock::new(None),
            data: None,
            jobs: None,
            grants: hostaccess::HostGrants::default(),
            grant_cache: access::GrantCache::default(),
            job_wires: wirecache::WireCache::new(JOB_WIRE_CACHE_BYTES),
        })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The control plane's time: schedules, retention, soft delete, job and resource timestamps. Under
    /// `--test-clock` it is virtual and moves only when told.
    pub fn now(&self) -> chrono::DateTime<chrono::Utc> {
        self.clock.now()
    }

    /// The machine's real time, for what must not follow a virtual clock: token lifetimes (clients
    /// judge expiry by their own clock) and the HTTP `Date` header.
    pub fn wall_now(&self) -> chrono::DateTime<chrono::Utc> {
        chrono::Utc::now()
    }

    /// The virtual clock, when the server runs with `--test-clock`.
    pub fn test_clock(&self) -> Option<&rsvault_core::time::TestClock> {
        self.clock.as_test_clock()
    }

    /// This node's name among the nodes sharing the store (none without a data plane).
    pub fn node_id(&self) -> Option<&str> {
        self.data.as_ref().map(|d| d.node_id())
    }

    pub fn tenant_id(&self) -> &str {
        &self.tenant_id
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The host roots this control plane may use (none unless given: no grant, no host path).
    pub fn with_host_grants(mut self, grants: hostaccess::HostGrants) -> Control {
        self.grants = grants;
        self
    }

    pub fn host_grants(&self) -> &hostaccess::HostGrants {
        &self.grants
    }
}
