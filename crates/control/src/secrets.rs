//! Generation and hashing of secrets: node credentials, personal API tokens, login session ids
//! and passwords.
//!
//! Random secrets are 32 bytes from the OS RNG, base64url without padding, behind a prefix that
//! says what they are. Only their SHA-256 (hex) is stored. Passwords use Argon2id.

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use base64::Engine as _;
use rand::RngCore as _;
use sha2::{Digest, Sha256};

/// Prefix of an Agent API key.
pub const AGENT_KEY_PREFIX: &str = "kma_";
/// Prefix of a Gateway token.
pub const GATEWAY_TOKEN_PREFIX: &str = "kmg_";
/// Prefix of a personal API token.
pub const API_TOKEN_PREFIX: &str = "kmt_";

/// A fresh random secret: `prefix` followed by 32 random bytes in base64url (no padding).
pub fn generate(prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    format!(
        "{prefix}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// What is stored for a secret: hex SHA-256. The secrets are 256-bit random, so a fast hash is enough.
pub fn hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Hashing a password failed (only on an internal argon2 error).
#[derive(Debug, thiserror::Error)]
#[error("password hashing failed: {0}")]
pub struct PasswordError(String);

/// Argon2id PHC string for `password`, with the argon2 crate's default parameters.
pub fn hash_password(password: &str) -> Result<String, PasswordError> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| PasswordError(e.to_string()))
}

/// True when `password` matches the PHC string; a malformed stored hash never matches.
pub fn verify_password(password: &str, phc: &str) -> bool {
    match PasswordHash::new(phc) {
        Ok(parsed) => Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_secrets_are_prefixed_and_distinct() {
        let a = generate(AGENT_KEY_PREFIX);
        let b = generate(AGENT_KEY_PREFIX);
        assert!(a.starts_with("kma_"));
        assert_eq!(a.len(), 4 + 43);
        assert_ne!(a, b);
        assert_eq!(hash(&a).len(), 64);
        assert_ne!(hash(&a), hash(&b));
    }

    #[test]
    fn passwords_verify() {
        let phc = hash_password("correct horse").unwrap();
        assert!(phc.starts_with("$argon2id$"));
        assert!(verify_password("correct horse", &phc));
        assert!(!verify_password("wrong", &phc));
        assert!(!verify_password("correct horse", "not a phc string"));
    }
}
