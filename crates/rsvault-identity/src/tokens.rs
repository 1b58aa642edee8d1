//! The token issuer: RS256 JWTs in the shape Entra gives Azure Resource Manager callers.
//!
//! Keys are RSA-2048, generated here ([`generate_key`]) and kept by the caller (the metadata store) as
//! PKCS#8. The newest unretired key signs; a retired key still verifies until every token it signed has
//! expired (retirement time + token lifetime + clock skew), and is published in the JWKS until then.
//! Verification accepts only `RS256` with a known `kid`, checks the signature, `nbf`/`exp` with
//! [`CLOCK_SKEW_SECS`] of leeway, the issuer and the audience.
//!
//! A token that verified is remembered by the issuer that verified it (keyed by the SHA-256 of the
//! whole token, at most [`MAX_VERIFIED`] of them, each until it expires), so the next request bearing
//! it skips the header and claims parsing and the RSA signature check. A remembered token is still
//! refused at once once it expires (or is not yet valid), and once its key is no longer usable; an
//! issuer reloaded with other keys (a rotation) starts with nothing remembered.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use chrono::{DateTime, Duration, Utc};
use ring::signature::{RsaKeyPair, UnparsedPublicKey, RSA_PKCS1_2048_8192_SHA256, RSA_PKCS1_SHA256};
use rsa::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use rsa::traits::PublicKeyParts;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// Leeway for `nbf` and `exp`.
pub const CLOCK_SKEW_SECS: i64 = 300;

/// Audiences ARM accepts (Azure Resource Manager and its classic alias, with and without the slash).
pub const ARM_AUDIENCES: &[&str] = &[
    "https://management.azure.com/",
    "https://management.azure.com",
    "https://management.core.windows.net/",
    "https://management.core.windows.net",
];

/// Key material as the store keeps it.
#[derive(Debug, Clone)]
pub struct KeyMaterial {
    pub kid: String,
    pub created: DateTime<Utc>,
    pub retired: Option<DateTime<Utc>>,
    pub pkcs8: Vec<u8>,
}

/// Makes a new RSA-2048 signing key with a random `kid`.
pub fn generate_key(now: DateTime<Utc>) -> Result<KeyMaterial, TokenError> {
    let key = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).map_err(|e| TokenError::Key(e.to_string()))?;
    let der = key.to_pkcs8_der().map_err(|e| TokenError::Key(e.to_string()))?;
    let kid = B64.encode(&ring::digest::digest(&ring::digest::SHA256, der.as_bytes()).as_ref()[..16]);
    Ok(KeyMaterial {
        kid,
        created: now,
        retired: None,
        pkcs8: der.as_bytes().to_vec(),
    })
}

/// The audience a requested scope asks for, or `None` for a resource rsvault does not serve.
/// Accepts `https://management.azure.com/.default`, the az CLI's `…//.default`, the classic
/// `https://management.core.windows.net//.default`, and the v1 `resource` form.
pub fn audience_for_scope(scope: &str) -> Option<String> {
    let first = scope
        .split_whitespace()
        .find(|s| !matches!(*s, "openid" | "profile" | "offline_access"))?;
    let resource = first.strip_suffix("/.default").unwrap_or(first).trim_end_matches('/');
    ARM_AUDIENCES
        .iter()
        .find(|a| a.trim_end_matches('/').eq_ignore_ascii_case(resource))
        .map(|a| format!("{}/", a.trim_end_matches('/')))
}

/// Claims of an rsvault access token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Claims {
    pub aud: String,
    pub iss: String,
    pub iat: i64,
    pub nbf: i64,
    pub exp: i64,
    /// Tenant id.
    pub tid: String,
    /// Object id of the principal.
    pub oid: String,
    /// Client (application) id.
    pub appid: String,
    pub sub: String,
    #[serde(default)]
    pub idtyp: String,
    #[serde(default)]
    pub ver: String,
    #[serde(default)]
    pub uti: String,
}

/// Why a token could not be issued or was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TokenError {
    #[error("signing key: {0}")]
    Key(String),
    #[error("no signing key is available")]
    NoKey,
    #[error("the token is malformed")]
    Malformed,
    #[error("the token algorithm '{0}' is not accepted")]
    Algorithm(String),
    #[error("the token was signed with an unknown key")]
    UnknownKey,
    #[error("the token signature is invalid")]
    Signature,
    #[error("the token is expired")]
    Expired { exp: DateTime<Utc>, now: DateTime<Utc> },
    #[error("the token is not yet valid")]
    NotYetValid,
    #[error("the token issuer '{0}' is not accepted")]
    Issuer(String),
    #[error("the token audience '{0}' is not accepted")]
    Audience(String),
}

impl From<TokenError> for rsvault_core::Error {
    fn from(e: TokenError) -> Self {
        use rsvault_core::Error as E;
        match e {
            TokenError::Expired { exp, now } => E::ExpiredAuthenticationToken {
                expiry: exp.format("%m/%d/%Y %H:%M:%S").to_string(),
                now: now.format("%m/%d/%Y %H:%M:%S").to_string(),
            },
            TokenError::Audience(aud) => E::InvalidAuthenticationTokenAudience(format!(
                "The access token has been obtained for wrong audience or resource '{aud}'. It should exactly match with one of the allowed audiences '{}'.",
                ARM_AUDIENCES.join("','")
            )),
            TokenError::Issuer(iss) => E::InvalidAuthenticationToken(format!("The access token is from the wrong issuer '{iss}'.")),
            TokenError::Key(_) | TokenError::NoKey => E::internal(e),
            TokenError::NotYetValid => E::InvalidAuthenticationToken("The access token is not yet valid.".into()),
            _ => E::InvalidAuthenticationToken("The access token is invalid.".into()),
        }
    }
}

struct LoadedKey {
    kid: String,
    pair: RsaKeyPair,
    n: Vec<u8>,
    e: Vec<u8>,
    retired: Option<DateTime<Utc>>,
}

/// How many verified tokens an issuer remembers at most.
pub const MAX_VERIFIED: usize = 10_000;

/// A token that verified: its claims and the key that signed it.
struct Verified {
    claims: Claims,
    kid: String,
}

/// Signs and verifies tokens for one issuer URL.
pub struct Issuer {
    keys: Vec<LoadedKey>,
    issuer: String,
    lifetime: Duration,
    /// Tokens that verified, by the SHA-256 of the token.
    verified: std::sync::Mutex<std::collections::HashMap<[u8; 32], Verified>>,
}

impl std::fmt::Debug for Issuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issuer")
            .field("issuer", &self.issuer)
            .field("keys", &self.keys.len())
            .finish()
    }
}

/// An issued token.
#[derive(Debug, Clone)]
pub struct Issued {
    pub access_token: String,
    pub expires_in: i64,
    pub claims: Claims,
}

impl Issuer {
    /// An issuer over the given keys (newest unretired signs). `issuer` is the `iss` it writes and expects.
    pub fn new(keys: &[KeyMaterial], issuer: String, lifetime: Duration) -> Result<Issuer, TokenError> {
        let mut loaded = Vec::new();
        for k in keys {
            let pair = RsaKeyPair::from_pkcs8(&k.pkcs8).map_err(|e| TokenError::Key(e.to_string()))?;
            let private = rsa::RsaPrivateKey::from_pkcs8_der(&k.pkcs8).map_err(|e| TokenError::Key(e.to_string()))?;
            loaded.push(LoadedKey {
                kid: k.kid.clone(),
                pair,
                n: private.n().to_bytes_be(),
                e: private.e().to_bytes_be(),
                retired: k.retired,
            });
        }
        Ok(Issuer {
            keys: loaded,
            issuer,
            lifetime,
            verified: std::sync::Mutex::new(std::collections::HashMap::new()),
        })
    }

    /// The `iss` this issuer writes.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// Token lifetime.
    pub fn lifetime(&self) -> Duration {
        self.lifetime
    }

    fn usable(&self, k: &LoadedKey, now: DateTime<Utc>) -> bool {
        k.retired
            .is_none_or(|r| now < r + self.lifetime + Duration::seconds(CLOCK_SKEW_SECS))
    }

    /// Issues a token for a principal.
    pub fn issue(
        &self,
        tenant: &str,
        object_id: &str,
        client_id: &str,
        audience: &str,
        now: DateTime<Utc>,
    ) -> Result<Issued, TokenError> {
        let key = self
            .keys
            .iter()
            .rev()
            .find(|k| k.retired.is_none())
            .ok_or(TokenError::NoKey)?;
        let claims = Claims {
            aud: audience.to_string(),
            iss: self.issuer.clone(),
            iat: now.timestamp(),
            nbf: now.timestamp(),
            exp: (now + self.lifetime).timestamp(),
            tid: tenant.to_string(),
            oid: object_id.to_string(),
            appid: client_id.to_string(),
            sub: object_id.to_string(),
            idtyp: "app".into(),
            ver: "1.0".into(),
            uti: B64.encode(uuid::Uuid::new_v4().as_bytes()),
        };
        let header = json!({"typ": "JWT", "alg": "RS256", "kid": key.kid, "x5t": key.kid});
        let signing_input = format!(
            "{}.{}",
            B64.encode(header.to_string()),
            B64.encode(serde_json::to_string(&claims).expect("claims serialize"))
        );
        let mut sig = vec![0u8; key.pair.public().modulus_len()];
        key.pair
            .sign(
                &RSA_PKCS1_SHA256,
                &ring::rand::SystemRandom::new(),
                signing_input.as_bytes(),
                &mut sig,
            )
            .map_err(|_| TokenError::Key("signing failed".into()))?;
        Ok(Issued {
            access_token: format!("{signing_input}.{}", B64.encode(sig)),
            expires_in: self.lifetime.num_seconds(),
            claims,
        })
    }

    /// Verifies a bearer token for Azure Resource Manager (a token verified before is checked again for
    /// its times and its key, not parsed and its signature not checked again).
    pub fn verify(&self, token: &str, now: DateTime<Utc>) -> Result<Claims, TokenError> {
        let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
        let id: [u8; 32] = digest.as_ref().try_into().expect("SHA-256 is 32 bytes");
        let mut verified = self.verified.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(v) = verified.get(&id) {
            let out = self.still_valid(v, now);
            if out.is_err() {
                verified.remove(&id);
            }
            return out;
        }
        drop(verified);
        let claims = self.verify_signed(token, now)?;
        let kid = self.kid_of(token).unwrap_or_default();
        let mut verified = self.verified.lock().unwrap_or_else(|p| p.into_inner());
        if verified.len() >= MAX_VERIFIED {
            let skew = CLOCK_SKEW_SECS;
            verified.retain(|_, v| now.timestamp() <= v.claims.exp + skew);
            if verified.len() >= MAX_VERIFIED {
                verified.clear();
            }
        }
        verified.insert(
            id,
            Verified {
                claims: claims.clone(),
                kid,
            },
        );
        Ok(claims)
    }

    /// A remembered token checked again: its key still usable, its times still valid at `now`.
    fn still_valid(&self, v: &Verified, now: DateTime<Utc>) -> Result<Claims, TokenError> {
        if !self.keys.iter().any(|k| k.kid == v.kid && self.usable(k, now)) {
            return Err(TokenError::UnknownKey);
        }
        check_times(&v.claims, now)?;
        Ok(v.claims.clone())
    }

    /// The `kid` of a token's header (of a token that verified).
    fn kid_of(&self, token: &str) -> Option<String> {
        let header: Value = B64
            .decode(token.split('.').next()?)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())?;
        header.get("kid").and_then(Value::as_str).map(String::from)
    }

    /// Verifies a token in full: header, key, signature, times, issuer, audience.
    fn verify_signed(&self, token: &str, now: DateTime<Utc>) -> Result<Claims, TokenError> {
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
            return Err(TokenError::Malformed);
        };
        let header: Value = B64
            .decode(h)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(TokenError::Malformed)?;
        let alg = header.get("alg").and_then(Value::as_str).unwrap_or_default();
        if alg != "RS256" {
            return Err(TokenError::Algorithm(alg.to_string()));
        }
        let kid = header
            .get("kid")
            .and_then(Value::as_str)
            .ok_or(TokenError::UnknownKey)?;
        let key = self
            .keys
            .iter()
            .find(|k| k.kid == kid && self.usable(k, now))
            .ok_or(TokenError::UnknownKey)?;
        let sig = B64.decode(s).map_err(|_| TokenError::Malformed)?;
        let public = rsa_public_der(&key.n, &key.e);
        UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, &public)
            .verify(format!("{h}.{p}").as_bytes(), &sig)
            .map_err(|_| TokenError::Signature)?;
        let claims: Claims = B64
            .decode(p)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(TokenError::Malformed)?;
        check_times(&claims, now)?;
        if claims.iss != self.issuer {
            return Err(TokenError::Issuer(claims.iss));
        }
        if !ARM_AUDIENCES.contains(&claims.aud.as_str()) {
            return Err(TokenError::Audience(claims.aud));
        }
        Ok(claims)
    }

    /// The JWKS document: every key that still verifies.
    pub fn jwks(&self, now: DateTime<Utc>) -> Value {
        let keys: Vec<Value> = self
            .keys
            .iter()
            .filter(|k| self.usable(k, now))
            .map(|k| {
                json!({"kty": "RSA", "use": "sig", "alg": "RS256", "kid": k.kid, "x5t": k.kid,
                       "n": B64.encode(&k.n), "e": B64.encode(&k.e), "issuer": self.issuer})
            })
            .collect();
        json!({ "keys": keys })
    }
}

/// DER of an RSAPublicKey (`SEQUENCE { n INTEGER, e INTEGER }`), what ring's verifier reads.
/// `exp` and `nbf` at `now`, with [`CLOCK_SKEW_SECS`] of leeway.
fn check_times(claims: &Claims, now: DateTime<Utc>) -> Result<(), TokenError> {
    let skew = CLOCK_SKEW_SECS;
    if now.timestamp() > claims.exp + skew {
        return Err(TokenError::Expired {
            exp: DateTime::from_timestamp(claims.exp, 0).unwrap_or_default(),
            now,
        });
    }
    if now.timestamp() + skew < claims.nbf {
        return Err(TokenError::NotYetValid);
    }
    Ok(())
}

fn rsa_public_der(n: &[u8], e: &[u8]) -> Vec<u8> {
    fn int(bytes: &[u8]) -> Vec<u8> {
        let mut v = bytes.to_vec();
        if v.first().is_some_and(|b| b & 0x80 != 0) {
            v.insert(0, 0);
        }
        let mut out = vec![0x02];
        out.extend(len(v.len()));
        out.extend(v);
        out
    }
    fn len(l: usize) -> Vec<u8> {
        if l < 128 {
            vec![l as u8]
        } else {
            let b = l.to_be_bytes();
            let b: Vec<u8> = b.iter().copied().skip_while(|x| *x == 0).collect();
            let mut out = vec![0x80 | b.len() as u8];
            out.extend(b);
            out
        }
    }
    let body: Vec<u8> = [int(n), int(e)].concat();
    let mut out = vec![0x30];
    out.extend(len(body.len()));
    out.extend(body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::OnceLock;

    fn key() -> &'static KeyMaterial {
        static K: OnceLock<KeyMaterial> = OnceLock::new();
        K.get_or_init(|| generate_key(Utc::now()).unwrap())
    }

    fn issuer() -> Issuer {
        Issuer::new(&[key().clone()], "https://x/t/v2.0".into(), Duration::hours(1)).unwrap()
    }

    const AUD: &str = "https://management.azure.com/";

    #[test]
    fn issued_tokens_verify() {
        let i = issuer();
        let now = Utc::now();
        let t = i.issue("t", "o", "c", AUD, now).unwrap();
        let c = i.verify(&t.access_token, now).unwrap();
        assert_eq!((c.tid.as_str(), c.oid.as_str(), c.appid.as_str()), ("t", "o", "c"));
        assert_eq!(i.jwks(now)["keys"][0]["kid"], key().kid);
    }

    #[test]
    fn tampered_expired_and_foreign_tokens_are_refused() {
        let i = issuer();
        let now = Utc::now();
        let t = i.issue("t", "o", "c", AUD, now).unwrap().access_token;
        let mut parts: Vec<String> = t.split('.').map(String::from).collect();
        // alg none
        let none = format!("{}.{}.", B64.encode(r#"{"alg":"none","kid":"x"}"#), parts[1]);
        assert!(matches!(i.verify(&none, now), Err(TokenError::Algorithm(_))));
        // payload swapped (claims of someone else)
        let mut c: Claims = serde_json::from_slice(&B64.decode(&parts[1]).unwrap()).unwrap();
        c.oid = "admin".into();
        parts[1] = B64.encode(serde_json::to_string(&c).unwrap());
        assert_eq!(i.verify(&parts.join("."), now), Err(TokenError::Signature));
        assert!(matches!(
            i.verify(&t, now + Duration::hours(2)),
            Err(TokenError::Expired { .. })
        ));
        assert_eq!(i.verify("garbage", now), Err(TokenError::Malformed));
        let other = Issuer::new(&[key().clone()], "https://elsewhere/t/v2.0".into(), Duration::hours(1)).unwrap();
        assert!(matches!(other.verify(&t, now), Err(TokenError::Issuer(_))));
        let wrong_aud = i
            .issue("t", "o", "c", "https://vault.azure.net", now)
            .unwrap()
            .access_token;
        assert!(matches!(i.verify(&wrong_aud, now), Err(TokenError::Audience(_))));
    }

    #[test]
    fn retired_keys_verify_until_their_tokens_expire() {
        let now = Utc::now();
        let old = key().clone();
        let i_old = Issuer::new(std::slice::from_ref(&old), "i".into(), Duration::hours(1)).unwrap();
        let t = i_old.issue("t", "o", "c", AUD, now).unwrap().access_token;
        let mut retired = old.clone();
        retired.retired = Some(now);
        let mut fresh = generate_key(now).unwrap();
        fresh.created = now;
        let i = Issuer::new(&[retired, fresh.clone()], "i".into(), Duration::hours(1)).unwrap();
        assert!(i.verify(&t, now + Duration::minutes(30)).is_ok());
        assert_eq!(i.jwks(now)["keys"].as_array().unwrap().len(), 2);
        let t2 = i.issue("t", "o", "c", AUD, now).unwrap().access_token;
        assert!(t2.contains('.'));
        assert!(i.verify(&t2, now).is_ok());
        let later = now + Duration::hours(2);
        assert_eq!(i.jwks(later)["keys"].as_array().unwrap().len(), 1);
        assert_eq!(i.verify(&t, later).unwrap_err(), TokenError::UnknownKey);
    }

    /// A remembered token is refused as a fresh one would be: once expired, before its `nbf`, once its
    /// key is retired past its tokens' lifetime; and a tampered copy of it is not taken for it.
    #[test]
    fn remembered_tokens_are_refused_as_fresh_ones_would_be() {
        let now = Utc::now();
        let i = issuer();
        let t = i.issue("t", "o", "c", AUD, now).unwrap().access_token;
        assert_eq!(i.verify(&t, now).unwrap().oid, "o");
        assert_eq!(i.verify(&t, now).unwrap().oid, "o", "remembered");
        assert!(matches!(
            i.verify(&t, now + Duration::hours(1) + Duration::seconds(CLOCK_SKEW_SECS + 1)),
            Err(TokenError::Expired { .. })
        ));
        assert!(i.verify(&t, now).is_ok(), "forgotten once refused, and verified afresh");
        assert_eq!(
            i.verify(&t, now - Duration::seconds(CLOCK_SKEW_SECS + 5)),
            Err(TokenError::NotYetValid)
        );
        let mut tampered = t.clone();
        tampered.push('A');
        assert!(i.verify(&tampered, now).is_err());
        // Its key retired: remembered tokens stop verifying when they would have stopped anyway.
        let mut retired = key().clone();
        retired.retired = Some(now);
        let fresh = generate_key(now).unwrap();
        let r = Issuer::new(&[retired, fresh], "https://x/t/v2.0".into(), Duration::hours(1)).unwrap();
        assert!(r.verify(&t, now).is_ok());
        assert_eq!(
            r.verify(&t, now + Duration::hours(1) + Duration::seconds(CLOCK_SKEW_SECS)),
            Err(TokenError::UnknownKey)
        );
    }

    #[test]
    fn scopes_map_to_arm_audiences() {
        for s in [
            "https://management.azure.com/.default",
            "https://management.azure.com//.default",
            "https://management.core.windows.net//.default offline_access",
            "https://management.azure.com",
        ] {
            assert!(audience_for_scope(s).is_some(), "{s}");
        }
        assert_eq!(
            audience_for_scope("https://management.azure.com//.default").unwrap(),
            "https://management.azure.com/"
        );
        assert!(audience_for_scope("https://graph.microsoft.com/.default").is_none());
        assert!(audience_for_scope("").is_none());
    }
}
