//! rsvault's identity layer, free of HTTP and SQL.
//!
//! - [`pki`]: the local CA and the server certificate clients trust (`ca.pem`).
//! - [`tokens`]: the Entra-compatible token issuer — RS256 JWTs with `kid`, a JWKS document, verification
//!   of signature, algorithm, issuer, audience and lifetime, and key rotation.
//! - [`secrets`]: client secrets, generated random and kept only as Argon2id hashes.
//! - [`rbac`]: Azure's built-in roles with their published action lists, and the evaluation of role
//!   assignments against an action at a scope, as Azure does it.

pub mod pki;
pub mod rbac;
pub mod secrets;
pub mod tokens;
