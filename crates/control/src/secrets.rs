//! Generation, hashing and sealing of secrets: node credentials, personal API tokens, login
//! session ids, passwords, and the credentials Control must be able to read back (DNS providers).
//!
//! Random secrets are 32 bytes from the OS RNG, base64url without padding, behind a prefix that
//! says what they are. Only their SHA-256 (hex) is stored. Passwords use Argon2id. Credentials
//! that Control itself has to use are sealed ([`Sealer`]) with a key kept in the data directory,
//! so a copy of the database alone does not hand them out.

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

/// The key file's name inside the data directory.
pub const SEALING_KEY_FILE: &str = "secrets.key";
/// First byte of every sealed value: the format (ChaCha20-Poly1305, 96-bit random nonce).
const SEALED_V1: u8 = 1;

/// Why a sealed value could not be opened, or the key could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("cannot read or create the sealing key {path}: {reason}")]
    Key { path: String, reason: String },
    /// Wrong key (another data directory's), a value bound to another context, or tampering.
    #[error(
        "a sealed secret cannot be opened: it was written with another data directory's \
         secrets.key, or it was altered"
    )]
    Open,
}

/// Authenticated encryption of stored credentials with one 256-bit key (ChaCha20-Poly1305). Every
/// value is bound to a context (e.g. the DNS zone it belongs to), so a sealed value copied to
/// another row does not open there. The key never leaves this type and is not in `Debug`.
pub struct Sealer {
    key: ring::aead::LessSafeKey,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(..)")
    }
}

impl Sealer {
    /// The key in `dir/secrets.key` (32 random bytes, created owner-only when missing).
    pub fn load_or_create(dir: &std::path::Path) -> Result<Self, SealError> {
        let path = dir.join(SEALING_KEY_FILE);
        let fail = |reason: String| SealError::Key {
            path: path.display().to_string(),
            reason,
        };
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut key = [0u8; 32];
                rand::rngs::OsRng.fill_bytes(&mut key);
                write_new_private(&path, &key).map_err(|e| fail(e.to_string()))?;
                tracing::info!(path = %path.display(), "created the key that seals stored credentials; back it up with the database");
                key.to_vec()
            }
            Err(e) => return Err(fail(e.to_string())),
        };
        if bytes.len() != 32 {
            return Err(fail(format!(
                "it holds {} bytes, not 32; restore it from the backup",
                bytes.len()
            )));
        }
        Ok(Self::from_key(&bytes))
    }

    /// A sealer with a random key nobody else has (tests; values do not survive it).
    pub fn ephemeral() -> Self {
        let mut key = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut key);
        Self::from_key(&key)
    }

    fn from_key(bytes: &[u8]) -> Self {
        let unbound = ring::aead::UnboundKey::new(&ring::aead::CHACHA20_POLY1305, bytes)
            .expect("a 32-byte key is a valid ChaCha20-Poly1305 key");
        Self {
            key: ring::aead::LessSafeKey::new(unbound),
        }
    }

    /// `plain` encrypted and authenticated, bound to `context`.
    pub fn seal(&self, context: &str, plain: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; ring::aead::NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let mut body = plain.to_vec();
        self.key
            .seal_in_place_append_tag(
                ring::aead::Nonce::assume_unique_for_key(nonce),
                ring::aead::Aad::from(context.as_bytes()),
                &mut body,
            )
            .expect("sealing fails only on absurd lengths");
        let mut out = Vec::with_capacity(1 + nonce.len() + body.len());
        out.push(SEALED_V1);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&body);
        out
    }

    /// The plaintext of a value [`Sealer::seal`]ed with this key and `context`.
    pub fn open(&self, context: &str, sealed: &[u8]) -> Result<Vec<u8>, SealError> {
        let rest = match sealed.split_first() {
            Some((&SEALED_V1, rest)) if rest.len() >= ring::aead::NONCE_LEN => rest,
            _ => return Err(SealError::Open),
        };
        let (nonce, body) = rest.split_at(ring::aead::NONCE_LEN);
        let nonce =
            ring::aead::Nonce::try_assume_unique_for_key(nonce).map_err(|_| SealError::Open)?;
        let mut body = body.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, ring::aead::Aad::from(context.as_bytes()), &mut body)
            .map_err(|_| SealError::Open)?;
        Ok(plain.to_vec())
    }
}

/// Writes `bytes` to a new file readable by its owner only; fails if the file exists.
fn write_new_private(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Hides the user-info part of a URL (`scheme://user:password@host`), which may hold a password.
pub(crate) fn mask_url_password(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(start), Some(at)) if at > start => {
            format!("{}<redacted>{}", &url[..start + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_with_their_key_and_context_only() {
        let dir = tempfile::tempdir().unwrap();
        let sealer = Sealer::load_or_create(dir.path()).unwrap();
        let sealed = sealer.seal("dns-zone:example.com", b"top secret");
        assert!(!sealed.windows(10).any(|w| w == b"top secret"));
        assert_eq!(
            sealer.open("dns-zone:example.com", &sealed).unwrap(),
            b"top secret"
        );
        // The same key from the file opens it; another context, another key or a flipped bit not.
        let again = Sealer::load_or_create(dir.path()).unwrap();
        assert_eq!(
            again.open("dns-zone:example.com", &sealed).unwrap(),
            b"top secret"
        );
        assert!(again.open("dns-zone:example.org", &sealed).is_err());
        assert!(Sealer::ephemeral()
            .open("dns-zone:example.com", &sealed)
            .is_err());
        let mut flipped = sealed.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(sealer.open("dns-zone:example.com", &flipped).is_err());
        assert!(sealer.open("dns-zone:example.com", &[]).is_err());
        assert!(sealer.open("dns-zone:example.com", &[1, 2, 3]).is_err());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(dir.path().join(SEALING_KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert_eq!(format!("{sealer:?}"), "Sealer(..)");
    }

    #[test]
    fn a_damaged_key_file_is_refused_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(SEALING_KEY_FILE), b"short").unwrap();
        let err = Sealer::load_or_create(dir.path()).unwrap_err().to_string();
        assert!(err.contains("5 bytes, not 32"), "{err}");
        assert_eq!(
            std::fs::read(dir.path().join(SEALING_KEY_FILE)).unwrap(),
            b"short"
        );
    }

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
