//! Backups encrypted at rest with `KAKUREMICHI_BACKUP_KEY` (issue #18). The passphrase is
//! stretched with Argon2id and a random salt per file into a ChaCha20-Poly1305 key and a key
//! check; the file is
//!
//! ```text
//! "KMBKENC1" | salt (16) | key check (16) | nonce (12) | ciphertext + tag
//! ```
//!
//! with the whole header as associated data. The key check tells a wrong passphrase ("not the
//! key this backup was made with") from an altered file (the tag fails), so each gets its own
//! message. The whole backup is sealed in memory: Control's database is small (megabytes), and
//! one AEAD call leaves no unauthenticated plaintext on disk.

use argon2::{Algorithm, Argon2, Params, Version};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use std::fmt;

/// The first bytes of an encrypted backup.
pub const MAGIC: &[u8; 8] = b"KMBKENC1";
const SALT_LEN: usize = 16;
const CHECK_LEN: usize = 16;
const HEADER_LEN: usize = MAGIC.len() + SALT_LEN + CHECK_LEN + NONCE_LEN;
/// Passphrase length bounds, in bytes.
pub const MIN_LEN: usize = 16;
pub const MAX_LEN: usize = 1024;

/// `KAKUREMICHI_BACKUP_KEY`: a passphrase; `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct BackupKey(String);

impl fmt::Debug for BackupKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BackupKey(***)")
    }
}

impl BackupKey {
    /// A passphrase of [`MIN_LEN`] to [`MAX_LEN`] bytes.
    pub fn new(passphrase: &str) -> Result<Self, String> {
        let len = passphrase.len();
        if !(MIN_LEN..=MAX_LEN).contains(&len) {
            return Err(format!(
                "KAKUREMICHI_BACKUP_KEY must be {MIN_LEN} to {MAX_LEN} characters long (it is \
                 {len}); make one with: openssl rand -base64 32"
            ));
        }
        Ok(Self(passphrase.to_string()))
    }

    /// The AEAD key and the key check for `salt`.
    fn derive(&self, salt: &[u8]) -> Result<(LessSafeKey, [u8; CHECK_LEN]), String> {
        // OWASP's Argon2id minimum (19 MiB, 2 passes): about 50 ms, once per backup.
        let params = Params::new(19 * 1024, 2, 1, Some(32 + CHECK_LEN))
            .map_err(|e| format!("key derivation: {e}"))?;
        let mut out = [0u8; 32 + CHECK_LEN];
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
            .hash_password_into(self.0.as_bytes(), salt, &mut out)
            .map_err(|e| format!("key derivation: {e}"))?;
        let key = UnboundKey::new(&CHACHA20_POLY1305, &out[..32])
            .map_err(|_| "key derivation: bad key length".to_string())?;
        let mut check = [0u8; CHECK_LEN];
        check.copy_from_slice(&out[32..]);
        Ok((LessSafeKey::new(key), check))
    }
}

/// Whether `bytes` are an encrypted backup.
pub fn is_encrypted(bytes: &[u8]) -> bool {
    bytes.starts_with(MAGIC)
}

/// `plain` sealed with `key`.
pub fn encrypt(key: &BackupKey, plain: Vec<u8>) -> Result<Vec<u8>, String> {
    let rng = SystemRandom::new();
    let mut salt = [0u8; SALT_LEN];
    let mut nonce = [0u8; NONCE_LEN];
    rng.fill(&mut salt)
        .and_then(|()| rng.fill(&mut nonce))
        .map_err(|_| "no randomness for the backup's encryption".to_string())?;
    let (aead, check) = key.derive(&salt)?;
    let mut header = Vec::with_capacity(HEADER_LEN);
    header.extend_from_slice(MAGIC);
    header.extend_from_slice(&salt);
    header.extend_from_slice(&check);
    header.extend_from_slice(&nonce);
    let mut body = plain;
    aead.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(&header),
        &mut body,
    )
    .map_err(|_| "cannot encrypt the backup".to_string())?;
    header.extend_from_slice(&body);
    Ok(header)
}

/// The plaintext of an encrypted backup; errors say what is wrong and what to do.
pub fn decrypt(key: Option<&BackupKey>, mut bytes: Vec<u8>) -> Result<Vec<u8>, String> {
    let Some(key) = key else {
        return Err(
            "the backup is encrypted: set KAKUREMICHI_BACKUP_KEY to the key it was \
                    made with"
                .into(),
        );
    };
    if bytes.len() < HEADER_LEN + CHACHA20_POLY1305.tag_len() {
        return Err("the encrypted backup is cut short: the copy is damaged".into());
    }
    let salt = &bytes[MAGIC.len()..MAGIC.len() + SALT_LEN];
    let check = &bytes[MAGIC.len() + SALT_LEN..MAGIC.len() + SALT_LEN + CHECK_LEN];
    let (aead, expected) = key.derive(salt)?;
    if check != expected {
        return Err(
            "KAKUREMICHI_BACKUP_KEY is not the key this backup was encrypted with; nothing was \
             restored"
                .into(),
        );
    }
    let nonce = Nonce::try_assume_unique_for_key(&bytes[HEADER_LEN - NONCE_LEN..HEADER_LEN])
        .map_err(|_| "the encrypted backup's header is damaged".to_string())?;
    let mut body = bytes.split_off(HEADER_LEN);
    let plain_len = aead
        .open_in_place(nonce, Aad::from(&bytes), &mut body)
        .map_err(|_| {
            "the encrypted backup was altered or damaged (its authentication failed); nothing \
             was restored"
                .to_string()
        })?
        .len();
    body.truncate(plain_len);
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_wrong_key_and_tampering_each_say_what_they_are() {
        let key = BackupKey::new("correct horse battery staple").unwrap();
        let plain = b"SQLite format 3\0 and the rest".to_vec();
        let sealed = encrypt(&key, plain.clone()).unwrap();
        assert!(is_encrypted(&sealed) && !is_encrypted(&plain));
        assert!(!sealed.windows(6).any(|w| w == b"SQLite"), "no plaintext");
        assert_eq!(decrypt(Some(&key), sealed.clone()).unwrap(), plain);
        // Two backups of the same data differ (salt and nonce are random).
        assert_ne!(encrypt(&key, plain.clone()).unwrap(), sealed);

        let other = BackupKey::new("another long passphrase").unwrap();
        let wrong = decrypt(Some(&other), sealed.clone()).unwrap_err();
        assert!(wrong.contains("not the key"), "{wrong}");
        let none = decrypt(None, sealed.clone()).unwrap_err();
        assert!(none.contains("set KAKUREMICHI_BACKUP_KEY"), "{none}");
        for at in [HEADER_LEN - 1, HEADER_LEN + 3, sealed.len() - 1] {
            let mut altered = sealed.clone();
            altered[at] ^= 1;
            let e = decrypt(Some(&key), altered).unwrap_err();
            assert!(e.contains("altered"), "byte {at}: {e}");
        }
        let short = decrypt(Some(&key), sealed[..HEADER_LEN].to_vec()).unwrap_err();
        assert!(short.contains("cut short"), "{short}");
    }

    #[test]
    fn a_key_has_bounds_and_never_shows() {
        assert!(BackupKey::new("short").is_err());
        assert!(BackupKey::new(&"x".repeat(MAX_LEN + 1)).is_err());
        let key = BackupKey::new("a passphrase long enough").unwrap();
        assert_eq!(format!("{key:?}"), "BackupKey(***)");
    }
}
