//! Vault repositories in object storage: S3-compatible stores and Azure Blob Storage.
//!
//! An operator declares [`ObjectTarget`]s (endpoint, bucket or container, an optional prefix,
//! credentials); a vault's repository lives on one of them under its own immutable prefix, laid
//! out as restic lays out a repository in object storage (`config`, `keys/ID`, `index/ID`,
//! `snapshots/ID`, `data/XX/ID`), so stock `restic` reads it (`s3:` repositories).
//!
//! # Storage rules on an object store
//! * **One PUT per file, named by its content.** Every repository file but `config` is named by
//!   the hash of its bytes, and is written whole with one PUT; a PUT is atomic and durable when
//!   it returns, so a reader sees a file complete or not at all, and a retried PUT writes the same
//!   bytes again. No rename, no `fsync`, no temporary names: nothing half-written to clean up.
//! * **Write order still makes a recovery point**: packs, then the index naming them, then the
//!   snapshot (the commit), as on a local directory ([`crate::backend`]).
//! * **Retries with backoff and timeouts** on every request (opendal's retry and timeout
//!   layers, set by [`ObjectStoreOptions`]); a store that keeps refusing (`503`, `SlowDown`,
//!   `ServerBusy`) or does not answer in time fails the call with [`EngineError::Storage`], which
//!   names the target and says why — also when rustic_core met the failure (a pack, index or
//!   snapshot upload: [`StorageFailure`] carries it through rustic_core's error). A burst of
//!   refusals shorter than the retry budget is absorbed. No credentials or metadata-service probing: only the keys
//!   the operator gave are used, and only the configured endpoint is contacted.
//! * **Locking** across threads and nodes ([`ObjectRepo::lock`]): shared for backups, restores
//!   and listings, exclusive for prune, delete and verify; a node's own lock first, then a lease
//!   object in `rsvault-locks/` that every node sees, renewed while held and valid for
//!   [`LEASE_TIME`] after its holder dies.
//! * **Requests run on the store's own small runtime**, entered from the engine's blocking
//!   threads; an engine call must never be made from an async task.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use bytes::Bytes;
use opendal::blocking;
use opendal::layers::{RetryLayer, TimeoutLayer};
use opendal::{ErrorKind as OdErrorKind, Operator};
use rustic_core::{BytesList, ErrorKind, FileType, Id, ReadBackend, RusticError, RusticResult, WriteBackend};
use serde::Deserialize;

use crate::error::{EngineError, Result};

/// What kind of object store a target is, with its credentials.
#[derive(Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum ObjectTarget {
    /// An S3-compatible store (path-style requests to `endpoint`).
    S3 {
        /// `http(s)://host:port` of the S3 API.
        endpoint: String,
        /// The bucket (it must exist).
        bucket: String,
        /// The region the store expects in signatures (`us-east-1` when it does not care).
        #[serde(default = "default_region")]
        region: String,
        /// Where the target's vaults live inside the bucket (may be empty).
        #[serde(default)]
        prefix: String,
        /// The access key id.
        access_key_id: String,
        /// The secret access key.
        secret_access_key: String,
    },
    /// Azure Blob Storage (or Azurite).
    Azblob {
        /// The blob endpoint, e.g. `https://ACCOUNT.blob.core.windows.net` or Azurite's
        /// `http://127.0.0.1:10000/devstoreaccount1`.
        endpoint: String,
        /// The storage account.
        account: String,
        /// The container (it must exist).
        container: String,
        /// Where the target's vaults live inside the container (may be empty).
        #[serde(default)]
        prefix: String,
        /// The account key (base64), or
        #[serde(default)]
        account_key: Option<String>,
        /// a SAS token.
        #[serde(default)]
        sas_token: Option<String>,
    },
}

fn default_region() -> String {
    "us-east-1".into()
}

impl fmt::Debug for ObjectTarget {
    // Credentials never reach a log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ObjectTarget::S3 {
                endpoint,
                bucket,
                prefix,
                region,
                ..
            } => f
                .debug_struct("S3")
                .field("endpoint", endpoint)
                .field("bucket", bucket)
                .field("prefix", prefix)
                .field("region", region)
                .finish_non_exhaustive(),
            ObjectTarget::Azblob {
                endpoint,
                account,
                container,
                prefix,
                ..
            } => f
                .debug_struct("Azblob")
                .field("endpoint", endpoint)
                .field("account", account)
                .field("container", container)
                .field("prefix", prefix)
                .finish_non_exhaustive(),
        }
    }
}

impl ObjectTarget {
    /// The target's own prefix (inside its bucket or container), without slashes at the ends.
    pub fn prefix(&self) -> &str {
        match self {
            ObjectTarget::S3 { prefix, .. } | ObjectTarget::Azblob { prefix, .. } => prefix.trim_matches('/'),
        }
    }

    /// The key of `path` (relative to the target) inside the bucket or container.
    pub fn key(&self, path: &str) -> String {
        join(self.prefix(), path)
    }

    /// What stock `restic` needs to open the repository at `path` on this target: its
    /// repository string and environment (credentials included: for the operator only).
    pub fn restic_env(&self, path: &str) -> Vec<(String, String)> {
        match self {
            ObjectTarget::S3 {
                endpoint,
                bucket,
                region,
                access_key_id,
                secret_access_key,
                ..
            } => vec![
                (
                    "RESTIC_REPOSITORY".into(),
                    format!("s3:{}/{}/{}", endpoint.trim_end_matches('/'), bucket, self.key(path)),
                ),
                ("AWS_ACCESS_KEY_ID".into(), access_key_id.clone()),
                ("AWS_SECRET_ACCESS_KEY".into(), secret_access_key.clone()),
                ("AWS_DEFAULT_REGION".into(), region.clone()),
            ],
            ObjectTarget::Azblob {
                account,
                container,
                account_key,
                sas_token,
                ..
            } => {
                let mut v = vec![
                    (
                        "RESTIC_REPOSITORY".into(),
                        format!("azure:{}:/{}", container, self.key(path)),
                    ),
                    ("AZURE_ACCOUNT_NAME".into(), account.clone()),
                ];
                if let Some(k) = account_key {
                    v.push(("AZURE_ACCOUNT_KEY".into(), k.clone()));
                }
                if let Some(s) = sas_token {
                    v.push(("AZURE_ACCOUNT_SAS".into(), s.clone()));
                }
                v
            }
        }
    }
}

fn join(a: &str, b: &str) -> String {
    let (a, b) = (a.trim_matches('/'), b.trim_matches('/'));
    match (a.is_empty(), b.is_empty()) {
        (true, _) => b.to_string(),
        (_, true) => a.to_string(),
        _ => format!("{a}/{b}"),
    }
}

/// A connected object store: one declared target, its operator, and its runtime.
pub struct ObjectStore {
    name: String,
    target: ObjectTarget,
    op: blocking::Operator,
    /// The runtime opendal's requests run on; shut down without blocking when the store is
    /// dropped (which may happen on an async thread).
    rt: Option<tokio::runtime::Runtime>,
    locks: ObjectLocks,
}

impl Drop for ObjectStore {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl fmt::Debug for ObjectStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObjectStore")
            .field("name", &self.name)
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

/// How an [`ObjectStore`] times out and retries its requests.
///
/// The defaults suit a real store (a pack is at most a few tens of MiB); tests that inject faults
/// shorten them. A request that fails in a way worth retrying (a timeout, a broken connection,
/// `503`/`SlowDown`/`ServerBusy`, `500`) is tried again after a growing, jittered pause; after
/// `retries` more attempts the call fails with [`EngineError::Storage`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectStoreOptions {
    /// How long one request (other than reading or writing a body) may take before it is retried.
    pub request_timeout: Duration,
    /// How long reading or writing a body may wait for progress before it is retried.
    pub io_timeout: Duration,
    /// Attempts after the first.
    pub retries: usize,
    /// The first pause before a retry (it doubles, up to `max_backoff`).
    pub min_backoff: Duration,
    /// The longest pause between attempts.
    pub max_backoff: Duration,
}

impl Default for ObjectStoreOptions {
    fn default() -> Self {
        ObjectStoreOptions {
            request_timeout: Duration::from_secs(120),
            io_timeout: Duration::from_secs(30),
            retries: 4,
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
        }
    }
}

impl ObjectStore {
    /// Connects to `target` (nothing is sent until used). `name` is the operator's name for it.
    pub fn connect(name: &str, target: ObjectTarget) -> Result<Arc<ObjectStore>> {
        Self::connect_with(name, target, ObjectStoreOptions::default())
    }

    /// [`ObjectStore::connect`] with its own timeouts and retries.
    pub fn connect_with(name: &str, target: ObjectTarget, opts: ObjectStoreOptions) -> Result<Arc<ObjectStore>> {
        // The project's TLS provider (ring), for HTTPS endpoints; a no-op when one is installed.
        let _ = rustls::crypto::ring::default_provider().install_default();
        // opendal's reqwest transport (installed once per process; later calls are no-ops).
        opendal_http_transport_reqwest::install_default();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(format!("objstore-{name}"))
            .enable_all()
            .build()
            .map_err(|e| EngineError::io("start the object store runtime", e))?;
        let bad = |e: opendal::Error| EngineError::Storage {
            target: name.to_string(),
            reason: e.to_string(),
        };
        let op = match &target {
            ObjectTarget::S3 {
                endpoint,
                bucket,
                region,
                access_key_id,
                secret_access_key,
                ..
            } => {
                let b = opendal::services::S3::default()
                    .endpoint(endpoint)
                    .bucket(bucket)
                    .region(region)
                    .access_key_id(access_key_id)
                    .secret_access_key(secret_access_key)
                    .disable_config_load()
                    .disable_ec2_metadata();
                Operator::new(b).map_err(bad)?
            }
            ObjectTarget::Azblob {
                endpoint,
                account,
                container,
                account_key,
                sas_token,
                ..
            } => {
                let mut b = opendal::services::Azblob::default()
                    .endpoint(endpoint)
                    .account_name(account)
                    .container(container);
                if let Some(k) = account_key {
                    b = b.account_key(k);
                }
                if let Some(s) = sas_token {
                    b = b.sas_token(s);
                }
                Operator::new(b).map_err(bad)?
            }
        };
        let op = op
            .layer(
                TimeoutLayer::new()
                    .with_timeout(opts.request_timeout)
                    .with_io_timeout(opts.io_timeout),
            )
            .layer(
                RetryLayer::new()
                    .with_max_times(opts.retries)
                    .with_min_delay(opts.min_backoff)
                    .with_max_delay(opts.max_backoff)
                    .with_jitter(),
            );
        let op = {
            let _g = rt.enter();
            blocking::Operator::new(op).map_err(bad)?
        };
        Ok(Arc::new(ObjectStore {
            name: name.to_string(),
            target,
            op,
            rt: Some(rt),
            locks: ObjectLocks::default(),
        }))
    }

    /// The operator's name for this target.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The target's settings.
    pub fn target(&self) -> &ObjectTarget {
        &self.target
    }

    fn err(&self, what: &str, key: &str, e: opendal::Error) -> EngineError {
        EngineError::Storage {
            target: self.name.clone(),
            reason: format!("{what} '{key}': {e}"),
        }
    }

    /// Whether the store answers and the bucket or container can be listed.
    pub fn check(&self) -> Result<()> {
        let key = format!("{}/", self.target.prefix());
        let key = if key == "/" { String::new() } else { key };
        self.op
            .lister(&key)
            .and_then(|mut l| l.next().transpose())
            .map(|_| ())
            .map_err(|e| self.err("list", &key, e))
    }

    /// The keys of every object under `path` (a vault's prefix).
    fn keys_under(&self, path: &str) -> Result<Vec<String>> {
        let dir = format!("{}/", self.target.key(path));
        let mut keys = Vec::new();
        let lister = self
            .op
            .lister_options(
                &dir,
                opendal::options::ListOptions {
                    recursive: true,
                    ..Default::default()
                },
            )
            .map_err(|e| self.err("list", &dir, e))?;
        for entry in lister {
            let entry = entry.map_err(|e| self.err("list", &dir, e))?;
            if !entry.path().ends_with('/') {
                keys.push(entry.path().to_string());
            }
        }
        Ok(keys)
    }

    /// How many objects there are under `path` (a vault's prefix).
    pub fn count(&self, path: &str) -> Result<usize> {
        self.keys_under(path).map(|k| k.len())
    }

    /// Deletes every object under `path` (a vault's prefix). Returns how many went.
    pub fn remove_all(&self, path: &str) -> Result<usize> {
        let keys = self.keys_under(path)?;
        for k in &keys {
            match self.op.delete(k) {
                Ok(()) => {}
                Err(e) if e.kind() == OdErrorKind::NotFound => {}
                Err(e) => return Err(self.err("delete", k, e)),
            }
        }
        Ok(keys.len())
    }
}

/// Why an object-store call failed, as the cause of the `RusticError` it becomes inside
/// rustic_core; [`EngineError`]'s conversion finds it in the error's chain and makes the failure
/// [`EngineError::Storage`] again, however deep in rustic_core it surfaced.
#[derive(Debug, thiserror::Error)]
#[error("vault storage '{target}': {reason}")]
pub(crate) struct StorageFailure {
    pub(crate) target: String,
    pub(crate) reason: String,
}

/// One vault's repository on an object store: the store and the vault's path on it.
#[derive(Debug, Clone)]
pub struct ObjectRepo {
    /// The store.
    pub store: Arc<ObjectStore>,
    /// The vault's path on the target (below the target's prefix), e.g. `vaults/UUID`.
    pub path: String,
}

impl ObjectRepo {
    /// `store:path`, the form kept in the metadata store (no credentials).
    pub fn location(&self) -> String {
        format!("{}:{}", self.store.name, self.path)
    }

    fn root(&self) -> String {
        self.store.target.key(&self.path)
    }

    fn key(&self, tpe: FileType, id: &Id) -> String {
        let root = self.root();
        match tpe {
            FileType::Config => join(&root, "config"),
            FileType::Pack => {
                let hex = id.to_hex();
                join(&root, &format!("data/{}/{}", &hex.as_str()[..2], hex.as_str()))
            }
            _ => join(&root, &format!("{}/{}", tpe.dirname(), id.to_hex().as_str())),
        }
    }

    fn rerr(&self, what: &str, key: &str, e: opendal::Error) -> Box<RusticError> {
        RusticError::with_source(
            ErrorKind::Backend,
            "{what} `{key}` on object store `{target}` failed",
            StorageFailure {
                target: self.store.name.clone(),
                reason: format!("{what} '{key}': {e}"),
            },
        )
        .attach_context("what", what.to_string())
        .attach_context("key", key.to_string())
        .attach_context("target", self.store.name.clone())
    }

    /// Whether the repository's `config` exists.
    pub(crate) fn has_config(&self) -> Result<bool> {
        let k = self.key(FileType::Config, &Id::default());
        match self.store.op.stat(&k) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == OdErrorKind::NotFound => Ok(false),
            Err(e) => Err(self.store.err("stat", &k, e)),
        }
    }

    /// Reads `[offset, offset + len)` of pack `id` (one ranged GET).
    pub(crate) fn read_range(&self, id: &Id, offset: u32, len: u32) -> Result<Bytes> {
        let k = self.key(FileType::Pack, id);
        let start = u64::from(offset);
        let buf = self
            .store
            .op
            .read_options(
                &k,
                opendal::options::ReadOptions {
                    range: (start..start + u64::from(len)).into(),
                    ..Default::default()
                },
            )
            .map_err(|e| self.store.err("read", &k, e))?;
        if buf.len() != len as usize {
            return Err(EngineError::Storage {
                target: self.store.name.clone(),
                reason: format!("read '{k}': {} bytes instead of {len}", buf.len()),
            });
        }
        Ok(buf.to_bytes())
    }

    /// Writes one whole repository file (one PUT).
    pub(crate) fn put(&self, tpe: FileType, id: &Id, data: Bytes) -> RusticResult<()> {
        let k = self.key(tpe, id);
        self.store
            .op
            .write(&k, data)
            .map(|_| ())
            .map_err(|e| self.rerr("writing", &k, e))
    }

    /// This repository's lock: the node's own (threads of this process), then a lease object in
    /// the repository that other nodes see (see [`Lease`]). Shared for backups, restores and
    /// listings; exclusive for prune, delete and verify.
    pub fn lock(&self, exclusive: bool) -> Result<RepoLease> {
        let local = self.store.locks.take(&self.root(), exclusive);
        let lease = Lease::take(self, exclusive)?;
        Ok(RepoLease {
            _lease: lease,
            _local: local,
        })
    }
}

/// A held repository lock on an object store (see [`ObjectRepo::lock`]); released when dropped.
#[derive(Debug)]
pub struct RepoLease {
    // Field order: the lease object goes before the node's own lock is released.
    _lease: Lease,
    _local: ObjectLockGuard,
}

/// How long a lease object stays valid without renewal (a crashed node's lock blocks others at most
/// this long); renewed every third of it while held.
pub const LEASE_TIME: Duration = Duration::from_secs(30);

/// A lock several nodes see: an object `rsvault-locks/RANDOM` in the repository holding whether it
/// is exclusive and until when it is valid (seconds since the epoch; the nodes' clocks are assumed
/// to agree within a few seconds). A node takes one by writing its object, then listing the others:
/// if any valid one conflicts (exclusive against anything, anything against exclusive), it removes
/// its own and tries again after a random pause, so two nodes never both hold conflicting locks
/// (each sees the other's object, written before it listed). Expired objects are ignored, and
/// removed once they are a whole lease time past. Stock restic ignores the folder.
#[derive(Debug)]
struct Lease {
    store: Arc<ObjectStore>,
    key: String,
    stop: Arc<(Mutex<bool>, Condvar)>,
    renewer: Option<std::thread::JoinHandle<()>>,
}

#[derive(serde::Serialize, Deserialize)]
struct LeaseBody {
    exclusive: bool,
    expires: u64,
    node: String,
}

fn epoch_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Lease {
    fn take(repo: &ObjectRepo, exclusive: bool) -> Result<Lease> {
        use rand::Rng;
        let dir = format!("{}/", join(&repo.root(), "rsvault-locks"));
        let node = format!(
            "{}:{}",
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .unwrap_or_default()
                .trim(),
            std::process::id()
        );
        let body = |exclusive| {
            serde_json::to_vec(&LeaseBody {
                exclusive,
                expires: epoch_secs() + LEASE_TIME.as_secs(),
                node: node.clone(),
            })
            .unwrap_or_default()
        };
        let op = &repo.store.op;
        let mut pause = Duration::from_millis(50);
        loop {
            let key = format!("{dir}{:016x}", rand::thread_rng().gen::<u64>());
            op.write(&key, body(exclusive))
                .map_err(|e| repo.store.err("write lock", &key, e))?;
            let mut conflict = false;
            let entries = op.list(&dir).map_err(|e| repo.store.err("list locks", &dir, e))?;
            for e in entries.iter().filter(|e| e.path() != key && !e.path().ends_with('/')) {
                let other = match op.read(e.path()) {
                    Ok(b) => serde_json::from_slice::<LeaseBody>(&b.to_vec()).ok(),
                    Err(err) if err.kind() == OdErrorKind::NotFound => continue,
                    Err(err) => return Err(repo.store.err("read lock", e.path(), err)),
                };
                let Some(other) = other else { continue };
                let now = epoch_secs();
                if other.expires + LEASE_TIME.as_secs() < now {
                    let _ = op.delete(e.path());
                } else if other.expires >= now && (exclusive || other.exclusive) {
                    conflict = true;
                }
            }
            if !conflict {
                let stop = Arc::new((Mutex::new(false), Condvar::new()));
                let renewer = {
                    let (store, key, stop) = (repo.store.clone(), key.clone(), stop.clone());
                    let node = node.clone();
                    std::thread::Builder::new()
                        .name("objstore-lease".into())
                        .spawn(move || {
                            let (m, cv) = &*stop;
                            let mut stopped = m.lock().unwrap_or_else(|p| p.into_inner());
                            while !*stopped {
                                let (g, t) = cv
                                    .wait_timeout(stopped, LEASE_TIME / 3)
                                    .unwrap_or_else(|p| p.into_inner());
                                stopped = g;
                                if *stopped || !t.timed_out() {
                                    continue;
                                }
                                let b = serde_json::to_vec(&LeaseBody {
                                    exclusive,
                                    expires: epoch_secs() + LEASE_TIME.as_secs(),
                                    node: node.clone(),
                                })
                                .unwrap_or_default();
                                if let Err(e) = store.op.write(&key, b) {
                                    tracing::warn!(key, error = %e, "could not renew a vault lock");
                                }
                            }
                        })
                        .ok()
                };
                return Ok(Lease {
                    store: repo.store.clone(),
                    key,
                    stop,
                    renewer,
                });
            }
            let _ = op.delete(&key);
            let jitter = rand::thread_rng().gen_range(0..=pause.as_millis() as u64);
            std::thread::sleep(pause + Duration::from_millis(jitter));
            pause = (pause * 2).min(Duration::from_secs(2));
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        {
            let (m, cv) = &*self.stop;
            *m.lock().unwrap_or_else(|p| p.into_inner()) = true;
            cv.notify_all();
        }
        if let Some(h) = self.renewer.take() {
            let _ = h.join();
        }
        if let Err(e) = self.store.op.delete(&self.key) {
            tracing::warn!(key = self.key, error = %e, "could not remove a vault lock (it expires by itself)");
        }
    }
}

impl ReadBackend for ObjectRepo {
    fn location(&self) -> String {
        format!("object:{}", self.location())
    }

    fn list_with_size(&self, tpe: FileType) -> RusticResult<Vec<(Id, u32)>> {
        if tpe == FileType::Config {
            let k = self.key(FileType::Config, &Id::default());
            return match self.store.op.stat(&k) {
                Ok(m) => Ok(vec![(Id::default(), m.content_length() as u32)]),
                Err(e) if e.kind() == OdErrorKind::NotFound => Ok(vec![]),
                Err(e) => Err(self.rerr("stat", &k, e)),
            };
        }
        let dir = format!("{}/", join(&self.root(), tpe.dirname()));
        let lister = match self.store.op.lister_options(
            &dir,
            opendal::options::ListOptions {
                recursive: true,
                ..Default::default()
            },
        ) {
            Ok(l) => l,
            Err(e) if e.kind() == OdErrorKind::NotFound => return Ok(vec![]),
            Err(e) => return Err(self.rerr("listing", &dir, e)),
        };
        let mut out = Vec::new();
        for entry in lister {
            let entry = match entry {
                Ok(e) => e,
                Err(e) if e.kind() == OdErrorKind::NotFound => break,
                Err(e) => return Err(self.rerr("listing", &dir, e)),
            };
            let Some(id) = entry.name().parse::<Id>().ok() else {
                continue;
            };
            let len = entry.metadata().content_length();
            out.push((id, u32::try_from(len).unwrap_or(u32::MAX)));
        }
        Ok(out)
    }

    fn read_full(&self, tpe: FileType, id: &Id) -> RusticResult<Bytes> {
        let k = self.key(tpe, id);
        self.store
            .op
            .read(&k)
            .map(|b| b.to_bytes())
            .map_err(|e| self.rerr("reading", &k, e))
    }

    fn read_partial(&self, tpe: FileType, id: &Id, _cacheable: bool, offset: u32, length: u32) -> RusticResult<Bytes> {
        let k = self.key(tpe, id);
        let start = u64::from(offset);
        self.store
            .op
            .read_options(
                &k,
                opendal::options::ReadOptions {
                    range: (start..start + u64::from(length)).into(),
                    ..Default::default()
                },
            )
            .map(|b| b.to_bytes())
            .map_err(|e| self.rerr("reading", &k, e))
    }

    fn warmup_path(&self, tpe: FileType, id: &Id) -> String {
        self.key(tpe, id)
    }
}

impl WriteBackend for ObjectRepo {
    fn create(&self) -> RusticResult<()> {
        // Object stores have no directories; the bucket or container must exist.
        Ok(())
    }

    fn write_bytes(&self, tpe: FileType, id: &Id, _cacheable: bool, content: BytesList) -> RusticResult<()> {
        let parts = content.slice();
        let data = match parts.len() {
            1 => parts[0].clone(),
            _ => {
                let mut v = Vec::with_capacity(parts.iter().map(|b| b.len()).sum());
                for b in parts {
                    v.extend_from_slice(b);
                }
                Bytes::from(v)
            }
        };
        self.put(tpe, id, data)
    }

    fn remove(&self, tpe: FileType, id: &Id, _cacheable: bool) -> RusticResult<()> {
        let k = self.key(tpe, id);
        match self.store.op.delete(&k) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == OdErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.rerr("removing", &k, e)),
        }
    }
}

/// Repository root → (readers, writer held), and the condition waiters sleep on.
type LockTable = (Mutex<HashMap<String, (usize, bool)>>, Condvar);

/// Per-node reader/writer locks of object-store repositories, by repository root.
#[derive(Debug, Default)]
pub(crate) struct ObjectLocks {
    // root → (readers, writer held)
    state: Arc<LockTable>,
}

impl ObjectLocks {
    fn take(&self, root: &str, exclusive: bool) -> ObjectLockGuard {
        let (m, cv) = &*self.state;
        let mut g = m.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            let e = g.entry(root.to_string()).or_insert((0, false));
            let free = match exclusive {
                true => e.0 == 0 && !e.1,
                false => !e.1,
            };
            if free {
                match exclusive {
                    true => e.1 = true,
                    false => e.0 += 1,
                }
                break;
            }
            g = cv.wait(g).unwrap_or_else(|p| p.into_inner());
        }
        ObjectLockGuard {
            state: self.state.clone(),
            root: root.to_string(),
            exclusive,
        }
    }
}

/// A held [`ObjectLocks`] lock; released when dropped.
#[derive(Debug)]
pub struct ObjectLockGuard {
    state: Arc<LockTable>,
    root: String,
    exclusive: bool,
}

impl Drop for ObjectLockGuard {
    fn drop(&mut self) {
        let (m, cv) = &*self.state;
        let mut g = m.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = g.get_mut(&self.root) {
            match self.exclusive {
                true => e.1 = false,
                false => e.0 = e.0.saturating_sub(1),
            }
            if *e == (0, false) {
                g.remove(&self.root);
            }
        }
        cv.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_join_prefixes_without_doubled_slashes() {
        for (a, b, want) in [
            ("", "vaults/x", "vaults/x"),
            ("/p/", "vaults/x", "p/vaults/x"),
            ("p", "/vaults/x/", "p/vaults/x"),
            ("p", "", "p"),
        ] {
            assert_eq!(join(a, b), want, "{a:?} + {b:?}");
        }
    }

    #[test]
    fn debug_never_shows_credentials() {
        let t = ObjectTarget::S3 {
            endpoint: "http://127.0.0.1:1".into(),
            bucket: "b".into(),
            region: "r".into(),
            prefix: String::new(),
            access_key_id: "AKID-SECRET-ID".into(),
            secret_access_key: "VERY-SECRET".into(),
        };
        let s = format!("{t:?}");
        assert!(!s.contains("VERY-SECRET") && !s.contains("AKID-SECRET-ID"), "{s}");
        let t = ObjectTarget::Azblob {
            endpoint: "http://127.0.0.1:1/a".into(),
            account: "a".into(),
            container: "c".into(),
            prefix: String::new(),
            account_key: Some("KEY-SECRET".into()),
            sas_token: Some("SAS-SECRET".into()),
        };
        let s = format!("{t:?}");
        assert!(!s.contains("KEY-SECRET") && !s.contains("SAS-SECRET"), "{s}");
    }

    #[test]
    fn a_lock_excludes_writers_while_readers_hold_it() {
        let locks = ObjectLocks::default();
        let r1 = locks.take("a", false);
        let r2 = locks.take("a", false);
        let other = locks.take("b", true); // another repository is independent
        let (tx, rx) = std::sync::mpsc::channel();
        let l2 = ObjectLocks {
            state: locks.state.clone(),
        };
        let t = std::thread::spawn(move || {
            let _w = l2.take("a", true);
            tx.send(()).unwrap();
        });
        std::thread::sleep(Duration::from_millis(50));
        assert!(rx.try_recv().is_err(), "the writer got in while readers held the lock");
        drop((r1, r2, other));
        rx.recv_timeout(Duration::from_secs(5))
            .expect("the writer got the lock after the readers left");
        t.join().unwrap();
    }
}
