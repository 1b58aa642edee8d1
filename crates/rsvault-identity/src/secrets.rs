//! Client secrets: random, shown once, stored only as Argon2id PHC hashes.

use argon2::password_hash::{rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use rand::Rng;

/// A new client secret in the form Entra uses (40 characters of letters, digits and `~._-`).
pub fn generate() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789~._-";
    let mut rng = rand::thread_rng();
    (0..40)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect()
}

/// The Argon2id hash of a secret, in PHC string form.
pub fn hash(secret: &str) -> String {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(secret.as_bytes(), &salt)
        .expect("argon2 with default parameters cannot fail")
        .to_string()
}

/// True when `secret` matches the stored `hash` (constant-time inside argon2).
pub fn verify(secret: &str, hash: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|h| Argon2::default().verify_password(secret.as_bytes(), &h).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_and_do_not_contain_the_secret() {
        let s = generate();
        assert_eq!(s.len(), 40);
        let h = hash(&s);
        assert!(h.starts_with("$argon2id$"));
        assert!(!h.contains(&s));
        assert!(verify(&s, &h));
        assert!(!verify("wrong", &h));
        assert!(!verify(&s, "not a hash"));
        assert_ne!(hash(&s), h, "salted");
    }
}
