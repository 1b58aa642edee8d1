//! Per-vault secrets: the repository password and the server key that seals it.
//!
//! Every vault's repository has its own random password ([`VaultKeys::generate_password`],
//! 256 bits, base64url). The control plane stores only the *sealed* password: XChaCha20-Poly1305
//! under the server key, with the vault's id as associated data, so a sealed blob copied to
//! another vault does not open. The server key is 32 random bytes in `DATA_DIR/engine.key`,
//! created once with mode 0600 (write to a temporary file, fsync, `link` to the final name so a
//! concurrent first start cannot overwrite an existing key, fsync the directory).
//!
//! Passwords are carried in [`Secret`], whose `Debug` and `Display` print `***`; nothing in this
//! crate logs them.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;

use crate::error::{EngineError, IoContext, Result};
use sha2::{Digest, Sha256};

/// HMAC-SHA256 (RFC 2104) for keys of at most one block (64 bytes).
fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    debug_assert!(key.len() <= 64);
    let (mut ipad, mut opad) = ([0x36u8; 64], [0x5cu8; 64]);
    for (i, k) in key.iter().enumerate() {
        ipad[i] ^= k;
        opad[i] ^= k;
    }
    let inner = Sha256::new().chain_update(ipad).chain_update(msg).finalize();
    Sha256::new().chain_update(opad).chain_update(inner).finalize().into()
}

/// File name of the server key inside the data directory.
pub const KEY_FILE: &str = "engine.key";
const SEAL_PREFIX: &str = "rsv1:";

/// A secret string (repository password). Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    /// The clear text, for handing to the repository (or to `restic-env`).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// The server key, loaded from (or created in) the data directory.
pub struct VaultKeys {
    cipher: XChaCha20Poly1305,
    /// The key of [`VaultKeys::mac`], derived from the server key (never the key itself).
    mac_key: [u8; 32],
    path: PathBuf,
}

impl std::fmt::Debug for VaultKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultKeys").field("path", &self.path).finish()
    }
}

impl VaultKeys {
    /// Loads a server key file the operator provides (the same file on every node sharing a store);
    /// it must exist and be private (0600).
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = fs::read(path).ctx(|| format!("read {}", path.display()))?;
        Self::from_file_bytes(path, &bytes)
    }

    /// Loads `DATA_DIR/engine.key`, creating it (0600) on first use.
    pub fn load_or_create(data_dir: &Path) -> Result<Self> {
        let path = data_dir.join(KEY_FILE);
        match fs::read(&path) {
            Ok(bytes) => Self::from_file_bytes(&path, &bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut key = [0u8; 32];
                rand::rngs::OsRng.fill_bytes(&mut key);
                let tmp = data_dir.join(format!(".{KEY_FILE}.tmp-{}", std::process::id()));
                let _ = fs::remove_file(&tmp);
                {
                    let mut f = fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(0o600)
                        .open(&tmp)
                        .ctx(|| format!("create {}", tmp.display()))?;
                    f.write_all(URL_SAFE_NO_PAD.encode(key).as_bytes())
                        .and_then(|()| f.sync_all())
                        .ctx(|| format!("write {}", tmp.display()))?;
                }
                // link() fails if another process created the key meanwhile: use theirs.
                let linked = fs::hard_link(&tmp, &path);
                let _ = fs::remove_file(&tmp);
                match linked {
                    Ok(()) => {
                        crate::backend::fsync_dir(data_dir)?;
                        Ok(Self::from_key(&key, path))
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        let bytes = fs::read(&path).ctx(|| format!("read {}", path.display()))?;
                        Self::from_file_bytes(&path, &bytes)
                    }
                    Err(e) => Err(EngineError::io(format!("create {}", path.display()), e)),
                }
            }
            Err(e) => Err(EngineError::io(format!("read {}", path.display()), e)),
        }
    }

    fn from_file_bytes(path: &Path, bytes: &[u8]) -> Result<Self> {
        let mode = fs::metadata(path)
            .ctx(|| format!("stat {}", path.display()))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(EngineError::Key(format!(
                "{} is accessible by group or others (mode {:o}); expected 0600",
                path.display(),
                mode & 0o777
            )));
        }
        let text = std::str::from_utf8(bytes)
            .map_err(|_| EngineError::Key(format!("{} is not a key file", path.display())))?;
        let key = URL_SAFE_NO_PAD
            .decode(text.trim())
            .ok()
            .filter(|k| k.len() == 32)
            .ok_or_else(|| EngineError::Key(format!("{} is not a key file", path.display())))?;
        let key: [u8; 32] = key.try_into().map_err(|_| EngineError::Key("bad key length".into()))?;
        Ok(Self::from_key(&key, path.to_path_buf()))
    }

    fn from_key(key: &[u8; 32], path: PathBuf) -> Self {
        let mac_key = Sha256::new()
            .chain_update(b"rsvault mac key v1\0")
            .chain_update(key)
            .finalize()
            .into();
        Self {
            cipher: XChaCha20Poly1305::new(key.into()),
            mac_key,
            path,
        }
    }

    /// Whether a stored value is in the sealed form [`VaultKeys::seal`] makes.
    pub fn is_sealed(stored: &str) -> bool {
        stored.starts_with(SEAL_PREFIX)
    }

    /// The key file this key was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A fresh random repository password (256 bits, base64url).
    pub fn generate_password() -> Secret {
        let mut raw = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut raw);
        Secret(URL_SAFE_NO_PAD.encode(raw))
    }

    /// Seals `password` for the vault `vault_id`; the result is safe to store in the metadata store.
    pub fn seal(&self, vault_id: &str, password: &Secret) -> Result<String> {
        let mut nonce = [0u8; 24];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let ct = self
            .cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: password.0.as_bytes(),
                    aad: aad(vault_id).as_bytes(),
                },
            )
            .map_err(|_| EngineError::Key("sealing failed".into()))?;
        let mut blob = nonce.to_vec();
        blob.extend_from_slice(&ct);
        Ok(format!("{SEAL_PREFIX}{}", STANDARD.encode(blob)))
    }

    /// HMAC-SHA256 of `msg` under a key derived from the server key: the same on every node that
    /// shares the server key (signed download URLs any node can check).
    pub fn mac(&self, msg: &[u8]) -> [u8; 32] {
        hmac_sha256(&self.mac_key, msg)
    }

    /// Opens a blob made by [`VaultKeys::seal`] for the same vault.
    pub fn open(&self, vault_id: &str, sealed: &str) -> Result<Secret> {
        let bad = || EngineError::Key("sealed vault password cannot be opened".into());
        let blob = sealed
            .strip_prefix(SEAL_PREFIX)
            .and_then(|b| STANDARD.decode(b).ok())
            .filter(|b| b.len() > 24)
            .ok_or_else(bad)?;
        let clear = self
            .cipher
            .decrypt(
                XNonce::from_slice(&blob[..24]),
                Payload {
                    msg: &blob[24..],
                    aad: aad(vault_id).as_bytes(),
                },
            )
            .map_err(|_| bad())?;
        String::from_utf8(clear).map(Secret).map_err(|_| bad())
    }
}

/// Vault ids are case-insensitive in ARM; the seal binds the lower-cased id.
fn aad(vault_id: &str) -> String {
    format!("rsvault-vault:{}", vault_id.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231() {
        let hex: String = hmac_sha256(b"Jefe", b"what do ya want for nothing?")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(hex, "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    }

    #[test]
    fn key_file_is_0600_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let k1 = VaultKeys::load_or_create(dir.path()).unwrap();
        let mode = fs::metadata(dir.path().join(KEY_FILE)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let pw = VaultKeys::generate_password();
        let sealed = k1.seal("/subscriptions/s/vaults/V1", &pw).unwrap();
        assert!(!sealed.contains(pw.expose()));
        let k2 = VaultKeys::load_or_create(dir.path()).unwrap();
        assert_eq!(k2.open("/subscriptions/s/vaults/v1", &sealed).unwrap(), pw);
        assert!(matches!(
            k2.open("/subscriptions/s/vaults/other", &sealed),
            Err(EngineError::Key(_))
        ));
    }

    #[test]
    fn other_server_key_cannot_open() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let ka = VaultKeys::load_or_create(a.path()).unwrap();
        let kb = VaultKeys::load_or_create(b.path()).unwrap();
        let pw = VaultKeys::generate_password();
        let sealed = ka.seal("v", &pw).unwrap();
        assert!(kb.open("v", &sealed).is_err());
        assert_ne!(VaultKeys::generate_password(), pw);
        assert_eq!(format!("{pw:?} {pw}"), "Secret(***) ***");
    }

    #[test]
    fn refuses_world_readable_key() {
        let dir = tempfile::tempdir().unwrap();
        VaultKeys::load_or_create(dir.path()).unwrap();
        let p = dir.path().join(KEY_FILE);
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            VaultKeys::load_or_create(dir.path()),
            Err(EngineError::Key(_))
        ));
    }
}
