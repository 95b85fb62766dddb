//! The lifecycle of access-token signing keys, as pure functions over the stored keys.
//!
//! - One key signs at a time: the newest whose `sign_from` has passed.
//! - Every [`ROTATE_EVERY`] a successor is created [`PUBLISH_AHEAD`] before it starts signing,
//!   so every Gateway already holds its public key when the first token it signed arrives.
//! - A superseded key stays published until the last token it can have signed has expired
//!   (`successor.sign_from + max token lifetime + clock skew`), then it is deleted.

use crate::store::AccessKeyRow;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use kakuremichi_proto::access::CLOCK_SKEW_SECS;
use rand::RngCore as _;
use ring::signature::{Ed25519KeyPair, KeyPair as _};
use sha2::{Digest, Sha256};

/// How long one key signs.
pub const ROTATE_EVERY: i64 = 24 * 3600;
/// How long before it signs a new key is published.
pub const PUBLISH_AHEAD: i64 = 300;

/// What to change in the stored keys.
pub struct Rotation {
    pub new: Option<AccessKeyRow>,
    pub retire: Vec<String>,
}

impl Rotation {
    pub fn is_noop(&self) -> bool {
        self.new.is_none() && self.retire.is_empty()
    }
}

/// Decides the rotation at Unix time `now` for `keys` (oldest first), given the longest token
/// lifetime `max_ttl` in seconds.
pub fn plan(keys: &[AccessKeyRow], now: i64, max_ttl: i64) -> Rotation {
    let new = match keys.last() {
        None => Some(generate(now)),
        Some(latest)
            if latest.sign_from <= now
                && now >= latest.sign_from + ROTATE_EVERY - PUBLISH_AHEAD =>
        {
            Some(generate(now + PUBLISH_AHEAD))
        }
        Some(_) => None,
    };
    let grace = max_ttl + CLOCK_SKEW_SECS as i64;
    let retire = keys
        .windows(2)
        .filter(|pair| pair[1].sign_from <= now && now > pair[1].sign_from + grace)
        .map(|pair| pair[0].kid.clone())
        .collect();
    Rotation { new, retire }
}

/// The key that signs at `now`: the newest one whose `sign_from` has passed.
pub fn signing_key(keys: &[AccessKeyRow], now: i64) -> Option<&AccessKeyRow> {
    keys.iter()
        .filter(|k| k.sign_from <= now)
        .max_by_key(|k| k.sign_from)
}

/// The key pair of a stored key; `None` for a corrupt row.
pub fn key_pair(key: &AccessKeyRow) -> Option<Ed25519KeyPair> {
    let seed = URL_SAFE_NO_PAD.decode(&key.seed).ok()?;
    Ed25519KeyPair::from_seed_unchecked(&seed).ok()
}

/// A fresh key that signs from `sign_from`. Its id is derived from the public key.
pub fn generate(sign_from: i64) -> AccessKeyRow {
    let mut seed = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut seed);
    let pair = Ed25519KeyPair::from_seed_unchecked(&seed).expect("32-byte seed");
    let public = pair.public_key().as_ref();
    let kid = URL_SAFE_NO_PAD.encode(&Sha256::digest(public)[..9]);
    AccessKeyRow {
        kid,
        seed: URL_SAFE_NO_PAD.encode(seed),
        public_key: URL_SAFE_NO_PAD.encode(public),
        sign_from,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_800_000_000;
    const TTL: i64 = 12 * 3600;

    #[test]
    fn first_key_signs_at_once() {
        let r = plan(&[], T0, TTL);
        let key = r.new.unwrap();
        assert_eq!(key.sign_from, T0);
        assert!(key_pair(&key).is_some());
        assert_eq!(
            signing_key(std::slice::from_ref(&key), T0).unwrap().kid,
            key.kid
        );
    }

    #[test]
    fn successor_is_published_ahead_and_old_key_retired_after_its_tokens() {
        let k1 = generate(T0);
        // Mid-life: nothing to do.
        assert!(plan(std::slice::from_ref(&k1), T0 + 3600, TTL).is_noop());
        // Near the end of its day: a successor that signs only after PUBLISH_AHEAD.
        let now = T0 + ROTATE_EVERY - 10;
        let k2 = plan(std::slice::from_ref(&k1), now, TTL).new.unwrap();
        assert_eq!(k2.sign_from, now + PUBLISH_AHEAD);
        let keys = vec![k1.clone(), k2.clone()];
        assert_eq!(signing_key(&keys, now).unwrap().kid, k1.kid);
        assert!(plan(&keys, now, TTL).is_noop(), "no second successor");
        assert_eq!(signing_key(&keys, k2.sign_from).unwrap().kid, k2.kid);
        // k1 stays published while its tokens can live, then goes.
        let last_token_dies = k2.sign_from + TTL + CLOCK_SKEW_SECS as i64;
        assert!(plan(&keys, last_token_dies, TTL).retire.is_empty());
        assert_eq!(plan(&keys, last_token_dies + 1, TTL).retire, vec![k1.kid]);
    }

    #[test]
    fn keys_are_distinct() {
        let (a, b) = (generate(T0), generate(T0));
        assert_ne!(a.kid, b.kid);
        assert_ne!(a.seed, b.seed);
    }
}
