//! The data dir: what first start creates and what every start reopens.
//!
//! Layout: `meta.db` (the metadata store, unless [`DataDir::with_store`] names another, e.g. a PostgreSQL
//! database), `ca.pem` / `ca-key.pem` / `server.pem` / `server-key.pem`
//! (TLS, see `rsvault_identity::pki`), `bootstrap.json` (0600: tenant, default subscription, URLs and the
//! first Owner's credentials). The dir itself is 0700.
//!
//! *Invariant*: first-start records (tenant, subscription, Owner principal and assignment, first signing
//! key) are committed in one transaction, and `bootstrap.json` is written (atomically) before that commit,
//! so a crash leaves either nothing or a usable dir.

use crate::{Error, Result};
use chrono::{DateTime, Utc};
use rsvault_identity::{pki, rbac, secrets, tokens};
use rsvault_store::{PrincipalRow, RoleAssignmentRow, SigningKeyRow, Store, StoreLocation, SubscriptionRow};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub const META_TENANT: &str = "tenant_id";
pub const META_DEFAULT_SUBSCRIPTION: &str = "default_subscription_id";
pub const META_KEYS_GENERATION: &str = "signing_keys_generation";

/// What `bootstrap.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Bootstrap {
    pub tenant_id: String,
    pub subscription_id: String,
    pub resource_manager: String,
    pub authority: String,
    pub client_id: String,
    pub client_secret: String,
    pub ca_file: String,
}

/// Paths inside a data dir, and where its metadata store is.
#[derive(Debug, Clone)]
pub struct DataDir {
    pub root: PathBuf,
    /// The store, when it is not the dir's own SQLite file.
    store: Option<StoreLocation>,
}

fn io_err(path: &Path, e: std::io::Error) -> Error {
    Error::internal(format!("{}: {e}", path.display()))
}

impl DataDir {
    pub fn new(root: impl Into<PathBuf>) -> DataDir {
        DataDir {
            root: root.into(),
            store: None,
        }
    }

    /// The same dir with its metadata store elsewhere (a PostgreSQL database several nodes share).
    pub fn with_store(mut self, store: StoreLocation) -> DataDir {
        self.store = Some(store);
        self
    }

    /// The default store: the SQLite file in the dir.
    pub fn store_path(&self) -> PathBuf {
        self.root.join("meta.db")
    }

    /// Where the metadata store is.
    pub fn store_location(&self) -> StoreLocation {
        self.store
            .clone()
            .unwrap_or_else(|| StoreLocation::Sqlite(self.store_path()))
    }

    pub fn bootstrap_path(&self) -> PathBuf {
        self.root.join("bootstrap.json")
    }

    pub fn ca_path(&self) -> PathBuf {
        self.root.join("ca.pem")
    }

    /// Opens an existing data dir's store (for CLI commands); refuses a dir that was never started.
    pub fn open_existing(&self) -> Result<Arc<Store>> {
        let location = self.store_location();
        if let StoreLocation::Sqlite(path) = &location {
            if !path.exists() {
                return Err(Error::internal(format!(
                    "{} is not an rsvault data dir (no meta.db); start `rsvault serve --data-dir {}` once first",
                    self.root.display(),
                    self.root.display()
                )));
            }
        }
        let store = Arc::new(Store::connect(&location)?);
        if store.read(|db| db.meta(META_TENANT))?.is_none() {
            return Err(Error::internal(format!(
                "the store at {location} was never started; start `rsvault serve` on it once first"
            )));
        }
        Ok(store)
    }

    /// Creates the dir and its first records if it is empty; opens it otherwise.
    /// Opens the store, bootstrapping it on first use: tenant, subscription, the first Owner (its
    /// secret in `bootstrap.json`) and the first signing key, sealed with the server key (`server_key`,
    /// else `DATA_DIR/engine.key`, made here if missing).
    pub fn init(&self, now: DateTime<Utc>, server_key: Option<&Path>) -> Result<Arc<Store>> {
        create_private_dir(&self.root)?;
        let store = Arc::new(Store::connect(&self.store_location())?);
        if store.read(|db| db.meta(META_TENANT))?.is_some() {
            return Ok(store);
        }
        let sealer = match server_key {
            Some(p) => rsvault_engine::VaultKeys::load(p),
            None => rsvault_engine::VaultKeys::load_or_create(&self.root),
        }
        .map_err(|e| Error::internal(format!("server key: {e}")))?;
        let tenant = uuid::Uuid::new_v4().to_string();
        let subscription = uuid::Uuid::new_v4().to_string();
        let client_id = uuid::Uuid::new_v4().to_string();
        let object_id = uuid::Uuid::new_v4().to_string();
        let secret = secrets::generate();
        let key = tokens::generate_key(now).map_err(Error::internal)?;
        let owner = rbac::find_role("Owner").expect("Owner is built in");
        store.write(|db| {
            db.set_meta(META_TENANT, &tenant)?;
            db.set_meta(META_DEFAULT_SUBSCRIPTION, &subscription)?;
            db.set_meta(META_KEYS_GENERATION, "1")?;
            db.insert_subscription(&SubscriptionRow {
                id: subscription.clone(),
                tenant_id: tenant.clone(),
                display_name: "rsvault default subscription".into(),
                state: "Enabled".into(),
                created: now,
            })?;
            db.insert_principal(&PrincipalRow {
                client_id: client_id.clone(),
                object_id: object_id.clone(),
                tenant_id: tenant.clone(),
                display_name: "rsvault-bootstrap-owner".into(),
                secret_hash: secrets::hash_generated(&secret),
                created: now,
            })?;
            let scope = format!("/subscriptions/{subscription}");
            let name = uuid::Uuid::new_v4().to_string();
            db.insert_role_assignment(&RoleAssignmentRow {
                id: format!("{scope}/providers/Microsoft.Authorization/roleAssignments/{name}"),
                name,
                scope: scope.clone(),
                role_definition_id: format!(
                    "{scope}/providers/Microsoft.Authorization/roleDefinitions/{}",
                    owner.name
                ),
                principal_id: object_id.clone(),
                principal_type: "ServicePrincipal".into(),
                created: now,
                created_by: object_id.clone(),
            })?;
            db.insert_signing_key(&SigningKeyRow {
                kid: key.kid.clone(),
                created: key.created,
                retired: None,
                pkcs8: crate::tokens::seal_signing_key(&sealer, &key.kid, &key.pkcs8)?,
            })?;
            self.write_bootstrap(&Bootstrap {
                tenant_id: tenant.clone(),
                subscription_id: subscription.clone(),
                resource_manager: String::new(),
                authority: String::new(),
                client_id: client_id.clone(),
                client_secret: secret.clone(),
                ca_file: self.ca_path().display().to_string(),
            })?;
            Ok::<_, Error>(())
        })?;
        tracing::info!(tenant = %tenant, subscription = %subscription, client_id = %client_id, "initialised a new data dir");
        Ok(store)
    }

    /// Reads `bootstrap.json`.
    pub fn read_bootstrap(&self) -> Result<Bootstrap> {
        let p = self.bootstrap_path();
        let text = std::fs::read_to_string(&p).map_err(|e| io_err(&p, e))?;
        serde_json::from_str(&text).map_err(|e| Error::internal(format!("{}: {e}", p.display())))
    }

    /// Writes `bootstrap.json` atomically with mode 0600.
    pub fn write_bootstrap(&self, b: &Bootstrap) -> Result<()> {
        let p = self.bootstrap_path();
        let text = serde_json::to_string_pretty(b).expect("bootstrap serializes");
        pki::write_private(&p, format!("{text}\n").as_bytes(), 0o600).map_err(|e| io_err(&p, e))
    }

    /// Records the URLs the server answers on in `bootstrap.json`.
    /// `None` for a node that joined a store another node bootstrapped (its data dir has no
    /// `bootstrap.json`: the first Owner's secret exists only where the store was first started).
    pub fn publish_urls(&self, base_url: &str) -> Result<Option<Bootstrap>> {
        if !self.bootstrap_path().exists() {
            return Ok(None);
        }
        let mut b = self.read_bootstrap()?;
        b.resource_manager = base_url.to_string();
        b.authority = base_url.to_string();
        b.ca_file = self.ca_path().display().to_string();
        self.write_bootstrap(&b)?;
        Ok(Some(b))
    }
}

fn create_private_dir(p: &Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if !p.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(p)
            .map_err(|e| io_err(p, e))?;
    }
    let meta = std::fs::metadata(p).map_err(|e| io_err(p, e))?;
    if meta.permissions().mode() & 0o077 != 0 {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o700)).map_err(|e| io_err(p, e))?;
    }
    Ok(())
}
