//! The vaults' data as the control plane reaches it: one restic repository per vault, written
//! through the engine ([`rsvault_engine::Engine`]), and the job engine's limits.
//!
//! * Each vault's repository is `DATA_DIR/vaults/{uuid}`, opened with the vault's own random password
//!   (256 bits, so new repositories' key files use light scrypt parameters: `KeyDerivation::RandomSecret`).
//!   The password is stored only *sealed* with the server key (`DATA_DIR/engine.key`, see
//!   [`rsvault_engine::keyring`]), in the `vault_secrets` table; it is never logged and never returned
//!   by the ARM API (`rsvault restic-env` prints it, for the operator, on the machine).
//! * A vault's password and repository are made on first use (its first backup job, or
//!   `rsvault restic-env`). The sealed row is inserted with `INSERT OR IGNORE` and read back, so two
//!   first uses (the server and the CLI) agree on one password.
//! * Deleting a vault (its own DELETE, or its resource group's) drops its sealed password in the
//!   transaction that removes its rows, keeping the row as the record of the repository still to
//!   remove; a local directory goes right after, an object-store prefix (and a geo-redundant copy)
//!   in the background ([`crate::removals`]). A vault re-created with the same name gets a new
//!   password and a new repository. Leftovers of deleted vaults from older data dirs become such
//!   records at start (`remove_orphaned_vault_data`).

use crate::{Control, Error, Result};
use rsvault_engine::{Engine, EngineError, RepoLocation, RepoSpec, ResticEngine, Secret, VaultKeys};
use rsvault_store::VaultSecretRow;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// How many data-plane jobs run at once (the job engine's, `rsvault_jobs`).
pub use rsvault_jobs::JobLimits;

/// An engine to run instead of the restic-format one: how tests put a fault (a pause, an error) at
/// an exact point of a job, around the real engine.
#[derive(Clone)]
pub struct EngineOverride(pub Arc<dyn Engine>);

impl std::fmt::Debug for EngineOverride {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EngineOverride")
    }
}

/// The data plane of a running server: the engine, the key that seals vault passwords, where the
/// repositories live, and the limits of this node's job queue (the queue itself is
/// [`rsvault_jobs::Jobs`], made when the data plane joins a [`Control`]).
pub struct DataPlane {
    pub(crate) engine: Arc<dyn Engine>,
    pub(crate) keys: VaultKeys,
    vaults_dir: PathBuf,
    pub(crate) limits: JobLimits,
    pub(crate) maintenance: crate::maintenance::Maintenance,
    pub(crate) faults: crate::faults::Armed,
    pub(crate) storage: crate::storage::StorageTargets,
    /// This node's name among the nodes sharing the store (job leases, the scheduler's leadership).
    pub(crate) node: String,
    pub(crate) removals: crate::removals::Removals,
    /// Wakes this node's item level recovery keeper.
    pub(crate) ilr: crate::backup::ilr::Signal,
}

impl DataPlane {
    /// The data plane of a data dir with the restic-format engine.
    pub fn open(data_dir: &Path, limits: JobLimits) -> Result<DataPlane> {
        // Object-store vaults' index and snapshot files are cached on this node.
        Self::with_engine(
            Arc::new(ResticEngine::new().with_cache_dir(data_dir.join("cache"))),
            data_dir,
            limits,
        )
    }

    /// The data plane of a data dir with a given engine.
    pub fn with_engine(engine: Arc<dyn Engine>, data_dir: &Path, limits: JobLimits) -> Result<DataPlane> {
        let keys = VaultKeys::load_or_create(data_dir).map_err(engine_error)?;
        Ok(DataPlane {
            engine,
            keys,
            vaults_dir: data_dir.join("vaults"),
            limits: limits.normalized(),
            node: load_node_id(data_dir)?,
            maintenance: Default::default(),
            faults: Default::default(),
            storage: Default::default(),
            removals: Default::default(),
            ilr: Default::default(),
        })
    }

    /// Where running-guest backups keep their fleecing images and NBD sockets
    /// (`DATA_DIR/live`, beside the vaults).
    pub(crate) fn live_dir(&self) -> PathBuf {
        self.vaults_dir.with_file_name("live")
    }

    /// The same data plane under another node name (`--node-id`; by default the one kept in
    /// `DATA_DIR/node-id`, made at the first start).
    pub fn with_node_id(mut self, node: Option<String>) -> DataPlane {
        if let Some(n) = node.filter(|n| !n.trim().is_empty()) {
            self.node = n.trim().to_string();
        }
        self
    }

    /// The same data plane with the server key from `path` (`--server-key`) instead of
    /// `DATA_DIR/engine.key`: nodes sharing a store must seal and open vault passwords with one key.
    pub fn with_server_key(mut self, path: Option<&Path>) -> Result<DataPlane> {
        if let Some(p) = path {
            self.keys = VaultKeys::load(p).map_err(|e| Error::internal(format!("server key: {e}")))?;
        }
        Ok(self)
    }

    /// Where item level recovery stages restored disks (`DATA_DIR/ilr`, 0700).
    pub(crate) fn ilr_dir(&self) -> PathBuf {
        self.vaults_dir.with_file_name("ilr")
    }

    /// This node's name.
    pub fn node_id(&self) -> &str {
        &self.node
    }

    /// The same data plane with the operator's storage targets (new vaults go where they say).
    pub fn with_storage(mut self, storage: crate::storage::StorageTargets) -> DataPlane {
        self.storage = storage;
        self
    }
}

/// The meta key holding a value sealed with the server key: a node whose key cannot open it uses
/// another key than the store's first node did, and refuses to start.
const META_SERVER_KEY_CHECK: &str = "server_key_check";
const SERVER_KEY_CHECK_AAD: &str = "rsvault-server-key-check";

impl Control {
    /// Checks that this node's server key is the one the store's vault passwords are sealed with
    /// (the first start records a value sealed with it). A different key would make every vault
    /// unreadable on this node, so it refuses to start instead.
    pub fn check_server_key(&self) -> Result<()> {
        let dp = self.data()?;
        let probe = Secret::new("rsvault");
        let sealed = dp.keys.seal(SERVER_KEY_CHECK_AAD, &probe).map_err(engine_error)?;
        let stored = self.store.write(|db| {
            if let Some(v) = db.meta(META_SERVER_KEY_CHECK)? {
                return Ok::<_, Error>(v);
            }
            db.set_meta(META_SERVER_KEY_CHECK, &sealed)?;
            Ok(sealed.clone())
        })?;
        match dp.keys.open(SERVER_KEY_CHECK_AAD, &stored) {
            Ok(s) if s.expose() == probe.expose() => Ok(()),
            _ => Err(Error::internal(format!(
                "this node's server key ({}) is not the key this store's vault passwords are sealed with: every node sharing a store must use the same server key file (copy the first node's engine.key, or pass --server-key)",
                dp.keys.path().display()
            ))),
        }
    }
}

/// The node name kept in `DATA_DIR/node-id` (made at the first start), so a restarted node knows
/// the jobs its previous run held and settles them at once instead of waiting for their leases.
fn load_node_id(data_dir: &Path) -> Result<String> {
    let path = data_dir.join("node-id");
    match std::fs::read_to_string(&path) {
        Ok(s) if !s.trim().is_empty() => return Ok(s.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::internal(format!("{}: {e}", path.display()))),
    }
    let id = format!("node-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let tmp = data_dir.join(format!(".node-id.tmp-{}", std::process::id()));
    std::fs::create_dir_all(data_dir)
        .and_then(|()| std::fs::write(&tmp, format!("{id}\n")))
        .and_then(|()| std::fs::rename(&tmp, &path))
        .map_err(|e| Error::internal(format!("{}: {e}", path.display())))?;
    Ok(id)
}

/// An engine error met outside a job (a job reports its errors in the job instead).
pub(crate) fn engine_error(e: EngineError) -> Error {
    match e {
        EngineError::RecoveryPointNotFound(id) => Error::NotFound {
            code: "BMSUserErrorRecoveryPointNotFound",
            message: format!("Recovery point '{id}' was not found in the vault."),
        },
        EngineError::Storage { target, reason } => Error::StorageUnavailable(format!(
            "The vault's storage '{target}' is not available: {reason}. Retry the request later."
        )),
        other => Error::internal(format!("vault engine: {other}")),
    }
}

impl Control {
    /// This control plane with a data plane (backups, restores and the job engine).
    pub fn with_data_plane(mut self, dp: DataPlane) -> Control {
        let store: Arc<dyn rsvault_jobs::JobStore> = self.store.clone();
        self.jobs = Some(rsvault_jobs::Jobs::new(store, &dp.node, dp.limits));
        self.data = Some(dp);
        self
    }

    pub(crate) fn data(&self) -> Result<&DataPlane> {
        self.data
            .as_ref()
            .ok_or_else(|| Error::internal("this rsvault process has no data plane (backups run in `rsvault serve`)"))
    }

    /// The repository of a vault, made on first use (password sealed and stored, repository initialised).
    pub(crate) fn vault_repo(&self, vault_id: &str) -> Result<RepoSpec> {
        let spec = self.vault_spec(vault_id)?;
        self.data()?.engine.init(&spec).map_err(engine_error)?;
        Ok(spec)
    }

    /// Where a vault's repository is and how to open it, its location and password chosen and
    /// stored on first use; the repository itself is not touched.
    pub(crate) fn vault_spec(&self, vault_id: &str) -> Result<RepoSpec> {
        let dp = self.data()?;
        let row = match self.store.read(|db| db.vault_secret(vault_id))? {
            Some(r) => r,
            None => {
                let password = VaultKeys::generate_password();
                let sealed = dp
                    .keys
                    .seal(&vault_id.to_ascii_lowercase(), &password)
                    .map_err(engine_error)?;
                // The vault's tag, else the server's default, picks where it lives; then it stays.
                let tag = self
                    .store
                    .read(|db| db.resource(vault_id))?
                    .and_then(|r| r.body["tags"][crate::storage::TARGET_TAG].as_str().map(str::to_string));
                let name = uuid::Uuid::new_v4().to_string();
                let repo = match dp.storage.choose(tag.as_deref())? {
                    None => dp.vaults_dir.join(name).to_string_lossy().into_owned(),
                    Some(store) => format!("{}:vaults/{name}", store.name()),
                };
                let fresh = VaultSecretRow {
                    vault_key: vault_id.to_ascii_lowercase(),
                    sealed,
                    repo,
                    created: self.now(),
                };
                self.store
                    .write(|db| {
                        db.insert_vault_secret(&fresh)?;
                        db.vault_secret(vault_id)
                    })?
                    .ok_or_else(|| Error::internal("vault secret vanished after insert"))?
            }
        };
        let password = dp
            .keys
            .open(&vault_id.to_ascii_lowercase(), &row.sealed)
            .map_err(engine_error)?;
        // The password is a random 256-bit secret (`generate_password` above), so a new
        // repository's key file gets light scrypt parameters (see `KeyDerivation::RandomSecret`);
        // repositories made before keep theirs.
        Ok(match dp.storage.resolve(&row.repo)? {
            RepoLocation::Local(path) => {
                std::fs::create_dir_all(&dp.vaults_dir)
                    .map_err(|e| Error::internal(format!("cannot create {}: {e}", dp.vaults_dir.display())))?;
                RepoSpec::with_random_secret(path, password)
            }
            RepoLocation::Object(o) => RepoSpec::in_object_store(o, password),
        })
    }

    /// Where a geo-redundant vault's copy lives: the operator's secondary target, under the same
    /// `vaults/UUID` as the primary, with the same password. `None` when the vault is not
    /// `GeoRedundant`, no secondary is declared, or the vault's primary is that very target.
    pub(crate) fn secondary_spec(&self, vault_id: &str, primary: &RepoSpec) -> Result<Option<RepoSpec>> {
        let Some(store) = self.data()?.storage.secondary().cloned() else {
            return Ok(None);
        };
        if self.vault_redundancy(vault_id)?.0 != "GeoRedundant" {
            return Ok(None);
        }
        let path = match &primary.location {
            RepoLocation::Object(o) if o.store.name() == store.name() => return Ok(None),
            RepoLocation::Object(o) => o.path.clone(),
            RepoLocation::Local(dir) => format!(
                "vaults/{}",
                dir.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default()
            ),
        };
        Ok(Some(RepoSpec::in_object_store(
            rsvault_engine::objstore::ObjectRepo { store, path },
            primary.password.clone(),
        )))
    }

    /// Where a vault's repository is and its password, for stock `restic` (`rsvault restic-env`).
    pub fn restic_env(&self, vault_id: &str) -> Result<(RepoLocation, Secret)> {
        let v = self
            .store
            .read(|db| db.resource(vault_id))?
            .filter(|r| r.type_key == crate::vaults::VAULT_TYPE.to_ascii_lowercase())
            .ok_or_else(|| Error::NotFound {
                code: "ResourceNotFound",
                message: format!("The vault '{vault_id}' was not found."),
            })?;
        let spec = self.vault_repo(&v.id)?;
        Ok((spec.location, spec.password))
    }

    /// Settles deleted vaults' leftovers at start, before the job workers: drops recovery point
    /// rows whose vault row is gone, and retires sealed passwords left by group deletes of older
    /// versions (which removed the rows only) as [`crate::removals`] records, so a vault
    /// re-created with the same name starts empty. Local repositories go at once; object-store
    /// prefixes go with the sweeper. Returns how many vaults' leftovers were found.
    pub(crate) fn remove_orphaned_vault_data(&self) -> Result<usize> {
        let legacy = self.store.write(|db| {
            let mut legacy = vec![];
            for o in db.orphaned_vault_secrets()? {
                // Rows retired by a delete are already the sweeper's records.
                if o.vault_key != rsvault_store::retired_key(&o.repo).to_ascii_lowercase() {
                    db.retire_vault_secret(&o.vault_key)?;
                    legacy.push(o);
                }
            }
            let points = db.delete_orphaned_recovery_points()?;
            if points > 0 {
                tracing::warn!(points, "removed recovery point rows of deleted vaults");
            }
            Ok::<_, Error>(legacy)
        })?;
        let n = legacy.len();
        for o in legacy {
            tracing::warn!(vault = %o.vault_key, repo = %o.repo, "removing the password and repository of a deleted vault");
            self.vault_retired(Some(o));
        }
        Ok(n)
    }
}
