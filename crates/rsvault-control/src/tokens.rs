//! The token endpoint's logic: client-credentials grants, in the words Entra uses for its errors.
//!
//! The issuer's keys live in the store, sealed with the server key (the one that seals vault
//! passwords, [`rsvault_engine::VaultKeys`]) and bound to their `kid`: whoever reads the store (a
//! database backup, a replica) cannot sign tokens with them. [`Control::issuer`] notices a rotation
//! made by another process or node (`rsvault keys rotate`) through the store's key generation counter
//! and reloads them. Keys kept in clear by older versions are sealed at start
//! ([`Control::seal_signing_keys`]).

use crate::datadir::META_KEYS_GENERATION;
use crate::{Control, Error, Result, Settings};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use chrono::Duration;
use rsvault_engine::{Secret, VaultKeys};
use rsvault_identity::secrets;
use rsvault_identity::tokens::{self, Issued, Issuer, KeyMaterial};
use rsvault_store::{SigningKeyRow, Store};
use std::collections::HashMap;
use std::sync::Arc;

/// An OAuth2 error answer (`{"error","error_description"}`); `unauthorized` selects 401 over 400.
#[derive(Debug, Clone, PartialEq)]
pub struct OAuthError {
    pub unauthorized: bool,
    pub error: &'static str,
    pub description: String,
}

fn oauth(unauthorized: bool, error: &'static str, description: String) -> OAuthError {
    OAuthError {
        unauthorized,
        error,
        description,
    }
}

/// A stored signing key's sealed form, if it is sealed (older versions kept keys in clear).
fn sealed_form(stored: &[u8]) -> Option<&str> {
    std::str::from_utf8(stored).ok().filter(|s| VaultKeys::is_sealed(s))
}

fn signing_key_aad(kid: &str) -> String {
    format!("rsvault-signing-key:{kid}")
}

/// A signing key's private key as it rests in the store: sealed with the server key, bound to its kid.
pub fn seal_signing_key(server_key: &VaultKeys, kid: &str, pkcs8: &[u8]) -> Result<Vec<u8>> {
    let clear = Secret::new(B64.encode(pkcs8));
    Ok(server_key
        .seal(&signing_key_aad(kid), &clear)
        .map_err(|e| Error::internal(format!("sealing a signing key: {e}")))?
        .into_bytes())
}

/// The signing keys of the store, opened (rows from older versions may still be in clear).
pub fn open_signing_keys(rows: Vec<SigningKeyRow>, server_key: Option<&VaultKeys>) -> Result<Vec<KeyMaterial>> {
    rows.into_iter()
        .map(|r| {
            let pkcs8 = match sealed_form(&r.pkcs8) {
                None => r.pkcs8,
                Some(sealed) => {
                    let key = server_key.ok_or_else(|| {
                        Error::internal(
                            "the token-signing keys are sealed with the server key, which this process has not loaded",
                        )
                    })?;
                    let clear = key.open(&signing_key_aad(&r.kid), sealed).map_err(|_| {
                        Error::internal(format!(
                            "signing key {} cannot be opened with this node's server key ({})",
                            r.kid,
                            key.path().display()
                        ))
                    })?;
                    B64.decode(clear.expose())
                        .map_err(|_| Error::internal(format!("signing key {} is damaged", r.kid)))?
                }
            };
            Ok(KeyMaterial {
                kid: r.kid,
                created: r.created,
                retired: r.retired,
                pkcs8,
            })
        })
        .collect()
}

pub(crate) fn load_issuer(
    store: &Store,
    settings: &Settings,
    server_key: Option<&VaultKeys>,
) -> Result<(String, Arc<Issuer>)> {
    let (generation, rows) =
        store.read(|db| Ok::<_, Error>((db.meta(META_KEYS_GENERATION)?.unwrap_or_default(), db.signing_keys()?)))?;
    let keys = open_signing_keys(rows, server_key)?;
    let issuer = Issuer::new(
        &keys,
        settings.issuer_url.clone(),
        Duration::seconds(settings.token_lifetime_secs),
    )
    .map_err(Error::internal)?;
    Ok((generation, Arc::new(issuer)))
}

/// Retires the current signing key and makes a new one, sealed with the server key in the file
/// `server_key` (tokens of the old key stay valid until they expire).
pub fn rotate_keys(store: &Store, server_key: &std::path::Path, now: chrono::DateTime<chrono::Utc>) -> Result<String> {
    let server_key = VaultKeys::load(server_key).map_err(|e| Error::internal(format!("server key: {e}")))?;
    let key = tokens::generate_key(now).map_err(Error::internal)?;
    let sealed = seal_signing_key(&server_key, &key.kid, &key.pkcs8)?;
    store.write(|db| {
        db.retire_signing_keys(now)?;
        db.insert_signing_key(&SigningKeyRow {
            kid: key.kid.clone(),
            created: now,
            retired: None,
            pkcs8: sealed.clone(),
        })?;
        let generation: u64 = db.meta(META_KEYS_GENERATION)?.and_then(|g| g.parse().ok()).unwrap_or(0);
        db.set_meta(META_KEYS_GENERATION, &(generation + 1).to_string())?;
        Ok::<_, Error>(())
    })?;
    Ok(key.kid)
}

impl Control {
    /// The current issuer, reloaded when the store's keys changed.
    pub fn issuer(&self) -> Result<Arc<Issuer>> {
        let generation = self
            .store
            .read_one(|db| db.meta(META_KEYS_GENERATION))?
            .unwrap_or_default();
        {
            let cur = self.issuer.read().unwrap_or_else(|p| p.into_inner());
            if let Some((g, i)) = &*cur {
                if *g == generation {
                    return Ok(i.clone());
                }
            }
        }
        let fresh = load_issuer(&self.store, &self.settings, self.data.as_ref().map(|d| &d.keys))?;
        let out = fresh.1.clone();
        *self.issuer.write().unwrap_or_else(|p| p.into_inner()) = Some(fresh);
        Ok(out)
    }

    /// Seals signing keys an older version kept in clear (at start, with the server key).
    pub fn seal_signing_keys(&self) -> Result<usize> {
        let key = &self.data()?.keys;
        let n = self.store.write(|db| {
            let mut n = 0;
            for r in db.signing_keys()? {
                if sealed_form(&r.pkcs8).is_some() {
                    continue;
                }
                db.set_signing_key_material(&r.kid, &seal_signing_key(key, &r.kid, &r.pkcs8)?)?;
                n += 1;
            }
            Ok::<_, Error>(n)
        })?;
        if n > 0 {
            tracing::info!(keys = n, "sealed token-signing keys kept in clear");
        }
        Ok(n)
    }

    /// True when `tenant` names this server's tenant (its id, or `adfs` for the ADFS-style authority).
    pub fn is_our_tenant(&self, tenant: &str) -> bool {
        tenant.eq_ignore_ascii_case(&self.tenant_id) || tenant.eq_ignore_ascii_case("adfs")
    }

    /// Handles a token request's form fields.
    pub fn token_request(
        &self,
        tenant: &str,
        form: &HashMap<String, String>,
    ) -> std::result::Result<Issued, OAuthError> {
        if !self.is_our_tenant(tenant) {
            return Err(oauth(false, "invalid_request", format!("AADSTS90002: Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud.")));
        }
        let field = |k: &str| form.get(k).map(String::as_str).filter(|v| !v.is_empty());
        let missing = |k: &str| {
            oauth(
                false,
                "invalid_request",
                format!("AADSTS900144: The request body must contain the following parameter: '{k}'."),
            )
        };
        let grant = field("grant_type").ok_or_else(|| missing("grant_type"))?;
        if grant != "client_credentials" {
            return Err(oauth(
                false,
                "unsupported_grant_type",
                format!("AADSTS70003: The app requested an unsupported grant type '{grant}'."),
            ));
        }
        let client_id = field("client_id").ok_or_else(|| missing("client_id"))?;
        if field("client_assertion").is_some() {
            return Err(oauth(
                false,
                "invalid_request",
                "AADSTS700027: Client assertions are not supported by rsvault; use a client secret.".into(),
            ));
        }
        let secret = field("client_secret").ok_or_else(|| missing("client_secret"))?;
        let scope = field("scope")
            .or_else(|| field("resource"))
            .ok_or_else(|| missing("scope"))?;
        let audience = tokens::audience_for_scope(scope).ok_or_else(|| {
            oauth(false, "invalid_scope", format!("AADSTS500011: The resource principal named {scope} was not found in the tenant named {}. rsvault issues tokens for Azure Resource Manager only.", self.tenant_id))
        })?;
        // An unknown client id and a wrong secret answer alike: same status, same words, and the same
        // work (a fast check against nothing), so neither tells whether the client id exists.
        let bad_credentials = || {
            oauth(true, "invalid_client", format!("AADSTS7000215: Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '{client_id}'."))
        };
        let principal = self
            .store
            .read(|db| db.principal(client_id))
            .map_err(|e| oauth(false, "temporarily_unavailable", format!("AADSTS50000: {e}")))?;
        let Some(principal) = principal else {
            secrets::verify_unknown(secret);
            return Err(bad_credentials());
        };
        if !secrets::verify(secret, &principal.secret_hash) {
            return Err(bad_credentials());
        }
        if secrets::is_slow(&principal.secret_hash) && secrets::looks_generated(secret) {
            // A row from before the fast form: the secret is rsvault's own 240-bit kind, so its next
            // checks can be fast. A failure to rewrite only keeps the slow form.
            let fast = secrets::hash_generated(secret);
            if let Err(e) = self
                .store
                .write(|db| db.set_principal_secret(&principal.client_id, &fast))
            {
                tracing::warn!(client_id = %principal.client_id, error = %e, "could not re-hash a client secret");
            }
        }
        let issuer = self
            .issuer()
            .map_err(|e| oauth(false, "temporarily_unavailable", format!("AADSTS50000: {e}")))?;
        issuer
            .issue(
                &self.tenant_id,
                &principal.object_id,
                &principal.client_id,
                &audience,
                self.wall_now(),
            )
            .map_err(|e| oauth(false, "temporarily_unavailable", format!("AADSTS50000: {e}")))
    }

    /// Verifies a bearer token and names its caller.
    pub fn authenticate(&self, token: &str) -> Result<crate::Caller> {
        let claims = self.issuer()?.verify(token, self.wall_now())?;
        if !claims.tid.eq_ignore_ascii_case(&self.tenant_id) {
            return Err(Error::InvalidAuthenticationToken(format!(
                "The access token is from the wrong tenant '{}'.",
                claims.tid
            )));
        }
        Ok(crate::Caller {
            tenant_id: claims.tid,
            object_id: claims.oid,
            client_id: claims.appid,
        })
    }
}
