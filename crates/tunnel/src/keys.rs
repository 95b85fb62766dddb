//! WireGuard key pairs: generation and the base64 text form used in configs and by `wg`.
//!
//! A private key never leaves the host that generated it; its `Debug` output is masked.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use boringtun::x25519;
use std::fmt;

/// An X25519 private key.
#[derive(Clone)]
pub struct PrivateKey(pub(crate) x25519::StaticSecret);

/// An X25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey(pub(crate) [u8; 32]);

/// A key that is not 32 bytes of standard base64.
#[derive(Debug, thiserror::Error)]
#[error("not a WireGuard key: expected 44 characters of base64 encoding 32 bytes")]
pub struct KeyError;

impl PrivateKey {
    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
        Self(x25519::StaticSecret::from(bytes))
    }

    pub fn from_base64(text: &str) -> Result<Self, KeyError> {
        Ok(Self(x25519::StaticSecret::from(decode32(text)?)))
    }

    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0.to_bytes())
    }

    pub fn public_key(&self) -> PublicKey {
        PublicKey(x25519::PublicKey::from(&self.0).to_bytes())
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrivateKey(***)")
    }
}

impl PublicKey {
    pub fn from_base64(text: &str) -> Result<Self, KeyError> {
        decode32(text).map(Self)
    }

    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_base64())
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64())
    }
}

fn decode32(text: &str) -> Result<[u8; 32], KeyError> {
    let bytes = STANDARD.decode(text.trim()).map_err(|_| KeyError)?;
    bytes.try_into().map_err(|_| KeyError)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trip_and_public_derivation() {
        let k = PrivateKey::generate();
        let back = PrivateKey::from_base64(&k.to_base64()).unwrap();
        assert_eq!(back.public_key(), k.public_key());
        let p = PublicKey::from_base64(&k.public_key().to_base64()).unwrap();
        assert_eq!(p, k.public_key());
        assert_eq!(format!("{k:?}"), "PrivateKey(***)");
    }

    #[test]
    fn rejects_bad_keys() {
        for bad in ["", "abc", &"A".repeat(44), &STANDARD.encode([0u8; 31])] {
            assert!(PublicKey::from_base64(bad).is_err(), "{bad}");
        }
    }
}
