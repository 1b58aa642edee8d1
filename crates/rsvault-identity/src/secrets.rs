//! Client secrets: random, shown once, stored only as hashes.
//!
//! Two stored forms coexist, told apart by their prefix:
//! - `$rsv-hmac$v=1$SALT$MAC` — HMAC-SHA256 of the secret under a random per-secret salt. Secrets rsvault
//!   generates carry ~240 bits of randomness, so a slow hash adds nothing against guessing; a fast one
//!   keeps every failed login cheap (no 19 MiB Argon2id run an anonymous caller can trigger at will).
//!   [`hash_generated`] makes this form.
//! - `$argon2id$…` (PHC) — for secrets a person chose and for rows written before the fast form existed.
//!   [`hash`] makes this form.
//!
//! [`verify`] accepts both; [`verify_unknown`] spends the same work as a fast check, for a client id that
//! does not exist, so unknown and wrong credentials take alike.

use argon2::password_hash::{rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::{Rng, RngCore};
use ring::hmac;

/// The prefix of the fast, keyed form.
pub const HMAC_PREFIX: &str = "$rsv-hmac$v=1$";

/// The characters of a generated secret.
const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789~._-";
const GENERATED_LEN: usize = 40;

/// A new client secret in the form Entra uses (40 characters of letters, digits and `~._-`: 241 bits).
pub fn generate() -> String {
    let mut rng = rand::thread_rng();
    (0..GENERATED_LEN)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect()
}

/// The fast keyed hash of a secret [`generate`] made (HMAC-SHA256 under a fresh 128-bit salt).
pub fn hash_generated(secret: &str) -> String {
    let mut salt = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut salt);
    let mac = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &salt), secret.as_bytes());
    format!(
        "{HMAC_PREFIX}{}${}",
        URL_SAFE_NO_PAD.encode(salt),
        URL_SAFE_NO_PAD.encode(mac.as_ref())
    )
}

/// The Argon2id hash of a secret, in PHC string form (for secrets a person chose).
pub fn hash(secret: &str) -> String {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(secret.as_bytes(), &salt)
        .expect("argon2 with default parameters cannot fail")
        .to_string()
}

fn verify_hmac(secret: &str, rest: &str) -> bool {
    let Some((salt, mac)) = rest.split_once('$') else {
        return false;
    };
    let (Ok(salt), Ok(mac)) = (URL_SAFE_NO_PAD.decode(salt), URL_SAFE_NO_PAD.decode(mac)) else {
        return false;
    };
    // `hmac::verify` compares in constant time.
    hmac::verify(&hmac::Key::new(hmac::HMAC_SHA256, &salt), secret.as_bytes(), &mac).is_ok()
}

/// True when `secret` matches the stored `hash`, in either form (both compare in constant time).
pub fn verify(secret: &str, hash: &str) -> bool {
    if let Some(rest) = hash.strip_prefix(HMAC_PREFIX) {
        return verify_hmac(secret, rest);
    }
    PasswordHash::new(hash).is_ok_and(|h| Argon2::default().verify_password(secret.as_bytes(), &h).is_ok())
}

/// True when the stored hash is the slow Argon2id form.
pub fn is_slow(hash: &str) -> bool {
    !hash.starts_with(HMAC_PREFIX)
}

/// True when `secret` has the shape of one [`generate`] made (so a fast hash of it is enough).
pub fn looks_generated(secret: &str) -> bool {
    secret.len() == GENERATED_LEN && secret.bytes().all(|b| ALPHABET.contains(&b))
}

/// The work of one fast check against nothing: what a login for an unknown client id costs, so it
/// answers in the time a wrong secret does. Always false.
pub fn verify_unknown(secret: &str) -> bool {
    const DUMMY: &str = "$rsv-hmac$v=1$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    let _ = verify(secret, DUMMY);
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argon2_hashes_verify_and_do_not_contain_the_secret() {
        let s = generate();
        assert_eq!(s.len(), 40);
        let h = hash(&s);
        assert!(h.starts_with("$argon2id$"));
        assert!(is_slow(&h));
        assert!(!h.contains(&s));
        assert!(verify(&s, &h));
        assert!(!verify("wrong", &h));
        assert!(!verify(&s, "not a hash"));
        assert_ne!(hash(&s), h, "salted");
    }

    #[test]
    fn fast_hashes_verify_and_do_not_contain_the_secret() {
        let s = generate();
        assert!(looks_generated(&s));
        let h = hash_generated(&s);
        assert!(h.starts_with(HMAC_PREFIX), "{h}");
        assert!(!is_slow(&h));
        assert!(!h.contains(&s));
        assert!(verify(&s, &h));
        assert!(!verify(&generate(), &h));
        assert!(!verify(&s[..39], &h));
        assert!(!verify(&s, &format!("{HMAC_PREFIX}garbage")));
        assert!(!verify(&s, &h.replace(HMAC_PREFIX, "$rsv-hmac$v=2$")));
        assert_ne!(hash_generated(&s), h, "salted");
        assert!(!verify_unknown(&s));
        assert!(!looks_generated("hunter2"));
    }
}
