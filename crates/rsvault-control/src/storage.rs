//! Where vaults' repositories live: the storage targets an operator declares.
//!
//! * **Targets come from the operator only**: a TOML file (`rsvault serve --storage FILE`, owner-only
//!   permissions required because it holds credentials) naming object stores — S3-compatible or Azure
//!   Blob ([`rsvault_engine::objstore::ObjectTarget`]) — and the one new vaults use (`default`).
//!   Without a file, or with `default = "local"`, vaults live in the data dir as before.
//! * **Credentials never reach the metadata store or a log.** A vault's row (`vault_secrets.repo`)
//!   keeps only its location: an absolute directory, or `TARGET:vaults/UUID` (the target's name and
//!   the vault's immutable prefix on it). The target's settings are looked up by name at each use, so
//!   rotating a key is an edit of the file and a restart.
//! * **Geo-redundancy**: `secondary = "NAME"` names the target every `GeoRedundant` vault (Azure's
//!   default `storageType`) is copied to after each backup, under the same `vaults/UUID` prefix
//!   ([`rsvault_engine::replicate`]); with `crossRegionRestoreFlag: true`, a restore whose primary
//!   cannot be read reads the secondary.
//! * **A vault chooses at first use**: the tag `rsvault-storage-target` on the vault names a target
//!   (or `local`); otherwise the file's `default`. Once the repository exists, its location is fixed.
//!
//! ```toml
//! default = "offsite"
//! secondary = "blob"         # optional: where GeoRedundant vaults are copied
//! [targets.offsite]
//! kind = "s3"
//! endpoint = "https://s3.example.net"
//! bucket = "backups"
//! prefix = "rsvault"          # optional
//! region = "eu-west-1"        # optional (us-east-1)
//! access_key_id = "…"
//! secret_access_key = "…"
//! [targets.blob]
//! kind = "azblob"
//! endpoint = "https://ACCOUNT.blob.core.windows.net"
//! account = "ACCOUNT"
//! container = "backups"
//! account_key = "…"          # or sas_token = "…"
//! ```

use crate::{Error, Result};
use rsvault_engine::objstore::{ObjectRepo, ObjectStore, ObjectStoreOptions, ObjectTarget};
use rsvault_engine::RepoLocation;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The tag by which a vault names the target its repository goes to.
pub const TARGET_TAG: &str = "rsvault-storage-target";

/// The name that means "the data dir" (it cannot name an object store).
pub const LOCAL: &str = "local";

/// Why a storage file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StorageConfigError {
    /// The file cannot be read.
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    /// Others than the owner can read it.
    #[error("{path} holds credentials: it must not be readable by group or others (chmod 600)")]
    Permissions { path: PathBuf },
    /// It does not parse, or names what is not declared.
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    default: Option<String>,
    #[serde(default)]
    secondary: Option<String>,
    #[serde(default)]
    targets: BTreeMap<String, ObjectTarget>,
}

/// The declared storage targets, connected.
#[derive(Debug, Clone, Default)]
pub struct StorageTargets {
    targets: BTreeMap<String, Arc<ObjectStore>>,
    default: Option<String>,
    secondary: Option<Arc<ObjectStore>>,
}

impl StorageTargets {
    /// Reads and checks a storage file (see the module doc). Nothing is contacted yet.
    pub fn load(path: &Path) -> std::result::Result<StorageTargets, StorageConfigError> {
        use std::os::unix::fs::MetadataExt;
        let read = |source| StorageConfigError::Read {
            path: path.to_path_buf(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(read)?;
        if meta.mode() & 0o077 != 0 {
            return Err(StorageConfigError::Permissions {
                path: path.to_path_buf(),
            });
        }
        let text = std::fs::read_to_string(path).map_err(read)?;
        let invalid = |reason: String| StorageConfigError::Invalid {
            path: path.to_path_buf(),
            reason,
        };
        // toml's messages quote the offending line, which may hold a secret: say only where.
        let file: File = toml::from_str(&text).map_err(|e| {
            invalid(match e.span() {
                Some(s) => format!(
                    "not a valid storage file (line {}): {}",
                    text[..s.start].lines().count().max(1),
                    e.message()
                ),
                None => format!("not a valid storage file: {}", e.message()),
            })
        })?;
        Self::from_targets(file.targets, file.default)
            .and_then(|t| t.with_secondary(file.secondary.as_deref()))
            .map_err(invalid)
    }

    /// The same targets with `secondary` (a declared target's name) as the copy of geo-redundant vaults.
    pub fn with_secondary(mut self, secondary: Option<&str>) -> std::result::Result<StorageTargets, String> {
        self.secondary = match secondary {
            None => None,
            Some(name) => Some(
                self.targets
                    .get(name)
                    .cloned()
                    .ok_or_else(|| format!("secondary target '{name}' is not declared"))?,
            ),
        };
        if self.secondary.is_some() && self.default.is_some() && self.default.as_deref() == secondary {
            return Err("the secondary target must differ from the default one".into());
        }
        Ok(self)
    }

    /// Where geo-redundant vaults are copied, when the operator named a secondary target.
    pub fn secondary(&self) -> Option<&Arc<ObjectStore>> {
        self.secondary.as_ref()
    }

    /// Targets from their settings (`default`: the one new vaults use; `None` or `local`: the data dir).
    pub fn from_targets(
        targets: BTreeMap<String, ObjectTarget>,
        default: Option<String>,
    ) -> std::result::Result<StorageTargets, String> {
        Self::from_targets_with(targets, default, ObjectStoreOptions::default())
    }

    /// [`StorageTargets::from_targets`] with the stores' timeouts and retries (tests shorten them).
    pub fn from_targets_with(
        targets: BTreeMap<String, ObjectTarget>,
        default: Option<String>,
        opts: ObjectStoreOptions,
    ) -> std::result::Result<StorageTargets, String> {
        let mut out = BTreeMap::new();
        for (name, t) in targets {
            if name == LOCAL
                || name.is_empty()
                || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(format!(
                    "target name '{name}': use letters, digits, '-' and '_' ('{LOCAL}' is the data dir)"
                ));
            }
            let store = ObjectStore::connect_with(&name, t, opts).map_err(|e| e.to_string())?;
            out.insert(name, store);
        }
        let default = default.filter(|d| d != LOCAL);
        if let Some(d) = &default {
            if !out.contains_key(d) {
                return Err(format!("default target '{d}' is not declared"));
            }
        }
        Ok(StorageTargets {
            targets: out,
            default,
            secondary: None,
        })
    }

    /// The target a new vault goes to: its tag's, else the default (`None`: the data dir).
    pub fn choose(&self, tag: Option<&str>) -> Result<Option<Arc<ObjectStore>>> {
        match tag.or(self.default.as_deref()) {
            None | Some(LOCAL) => Ok(None),
            Some(name) => self
                .targets
                .get(name)
                .cloned()
                .map(Some)
                .ok_or_else(|| unknown_target(name)),
        }
    }

    /// Whether `name` may be named by a vault's tag.
    pub fn check_name(&self, name: &str) -> Result<()> {
        match name == LOCAL || self.targets.contains_key(name) {
            true => Ok(()),
            false => Err(unknown_target(name)),
        }
    }

    /// The location a vault row names (an absolute directory, or `TARGET:PATH`).
    pub fn resolve(&self, repo: &str) -> Result<RepoLocation> {
        if repo.starts_with('/') {
            return Ok(RepoLocation::Local(PathBuf::from(repo)));
        }
        let (name, path) = repo.split_once(':').ok_or_else(|| {
            Error::internal(format!(
                "vault location '{repo}' is neither a directory nor TARGET:PATH"
            ))
        })?;
        let store = self.targets.get(name).cloned().ok_or_else(|| {
            Error::internal(format!(
                "vault location '{repo}' names storage target '{name}', which the server's storage file does not declare"
            ))
        })?;
        Ok(RepoLocation::Object(ObjectRepo {
            store,
            path: path.to_string(),
        }))
    }

    /// The declared targets, by name.
    pub fn targets(&self) -> impl Iterator<Item = &Arc<ObjectStore>> {
        self.targets.values()
    }
}

fn unknown_target(name: &str) -> Error {
    Error::Invalid {
        code: "BadRequest",
        message: format!("The storage target '{name}' named by tag '{TARGET_TAG}' is not one this server declares."),
        target: Some("tags".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn write(dir: &Path, text: &str, mode: u32) -> PathBuf {
        let p = dir.join("storage.toml");
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    const GOOD: &str = r#"
default = "s3a"
[targets.s3a]
kind = "s3"
endpoint = "http://127.0.0.1:9"
bucket = "b"
access_key_id = "id"
secret_access_key = "TOP-SECRET-1"
[targets.blob]
kind = "azblob"
endpoint = "http://127.0.0.1:9/acct"
account = "acct"
container = "c"
account_key = "VE9QLVNFQ1JFVC0y"
"#;

    #[test]
    fn a_storage_file_is_read_and_locations_resolve() {
        let d = tempfile::tempdir().unwrap();
        let t = StorageTargets::load(&write(d.path(), GOOD, 0o600)).unwrap();
        assert_eq!(t.choose(None).unwrap().unwrap().name(), "s3a");
        assert_eq!(t.choose(Some("blob")).unwrap().unwrap().name(), "blob");
        assert!(t.choose(Some("local")).unwrap().is_none());
        assert_eq!(t.choose(Some("nope")).unwrap_err().code(), "BadRequest");
        assert!(matches!(t.resolve("/srv/v/x").unwrap(), RepoLocation::Local(_)));
        match t.resolve("blob:vaults/u1").unwrap() {
            RepoLocation::Object(o) => assert_eq!(o.location(), "blob:vaults/u1"),
            other => panic!("{other:?}"),
        }
        assert!(t.resolve("gone:vaults/u1").is_err());
        // Debug output of the whole configuration carries no secret.
        let dbg = format!("{t:?}");
        assert!(
            !dbg.contains("TOP-SECRET") && !dbg.contains("VE9QLVNFQ1JFVC0y"),
            "{dbg}"
        );
    }

    #[test]
    fn bad_storage_files_are_refused_without_echoing_secrets() {
        let d = tempfile::tempdir().unwrap();
        for (text, mode, want) in [
            (GOOD, 0o644, "chmod 600"),
            ("default = \"x\"\n", 0o600, "not declared"),
            ("[targets.local]\nkind = \"s3\"\nendpoint=\"e\"\nbucket=\"b\"\naccess_key_id=\"i\"\nsecret_access_key=\"s\"\n", 0o600, "data dir"),
            ("[targets.a]\nkind = \"ftp\"\nsecret_access_key = \"TOP-SECRET-3\"\n", 0o600, "line"),
            ("[targets.a]\nkind = \"s3\"\nendpoint=\"e\"\nbucket=\"b\"\naccess_key_id=\"i\"\nsecret_access_key=\"TOP-SECRET-4\"\nsecret=\"x\"\n", 0o600, "line"),
        ] {
            let e = StorageTargets::load(&write(d.path(), text, mode)).unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
            assert!(!e.contains("TOP-SECRET"), "{e}");
        }
    }
}
