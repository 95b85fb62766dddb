//! Per-tunnel access control on the wire: a route's [`AccessPolicy`], the verification keys and
//! revocations every Gateway receives in its snapshot ([`AccessConfig`]), and the access token.
//!
//! Design (the Gateway admits visitors without asking Control per request):
//! - Control holds Ed25519 signing keys and mints tokens; Gateways only ever get the *public*
//!   keys, so a Gateway can verify but never mint.
//! - A token is `base64url(JSON claims) "." base64url(Ed25519 signature over the first part)`.
//!   The claims name the signing key (`kid`), the one host the token is good for, the user
//!   (`sub`, `email`), a session id (`sid`, derived from Control's login session) and
//!   `iat`/`exp` in Unix seconds.
//! - The same token is handed to the Gateway once in the hand-off URL (accepted there only within
//!   [`HANDOFF_MAX_AGE_SECS`] of `iat`) and then lives in a host-only cookie until `exp`.
//! - Logout reaches Gateways as a revoked `sid` in the snapshot (kept until every token of that
//!   session has expired).
//! - Allow-lists never leave Control: a route carries a [`RouteAccess`], where a `users` policy is
//!   only a short digest of its list ([`AccessPolicy::digest`]). Control checks the list when it
//!   mints a token and puts that digest in the token (`pol`); a Gateway admits a `users` route only
//!   with a token whose digest is the route's current one. So a route's size does not grow with
//!   its list (a member's lists cannot swell every Gateway's snapshot past the message limit),
//!   and any change of the list sends visitors back through Control, which checks it again.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ring::signature::{Ed25519KeyPair, UnparsedPublicKey, ED25519};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeSet, HashMap};

/// Tokens longer than this are rejected before any decoding (a cookie is at most ~4 KiB anyway).
pub const MAX_TOKEN_LEN: usize = 4096;
/// A token is accepted at the hand-off URL only this long after it was issued.
pub const HANDOFF_MAX_AGE_SECS: u64 = 60;
/// Tolerated clock difference between Control and a Gateway for `iat`.
pub const CLOCK_SKEW_SECS: u64 = 60;

/// Who may use a tunnel. JSON: `{"mode":"public"}`, `{"mode":"login"}` or
/// `{"mode":"users","allow":["alice@example.com"]}` (lower-case e-mails).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "mode", rename_all = "snake_case", deny_unknown_fields)]
pub enum AccessPolicy {
    /// Anyone; the Gateway checks nothing.
    #[default]
    Public,
    /// Any user signed in to Control.
    Login,
    /// Only the listed users, by e-mail.
    Users { allow: BTreeSet<String> },
}

impl AccessPolicy {
    pub fn is_public(&self) -> bool {
        matches!(self, AccessPolicy::Public)
    }

    /// Whether a signed-in user with this (lower-case) e-mail may use the tunnel.
    pub fn admits(&self, email: &str) -> bool {
        match self {
            AccessPolicy::Public | AccessPolicy::Login => true,
            AccessPolicy::Users { allow } => allow.contains(email),
        }
    }

    /// The digest of tunnel `tunnel_id`'s allow-list (`None` unless the policy is `users`):
    /// base64url of the first 16 bytes of SHA-256 over the tunnel id and the sorted e-mails.
    /// The tunnel id is mixed in so equal lists on two tunnels do not share tokens' digests.
    pub fn digest(&self, tunnel_id: i64) -> Option<String> {
        let AccessPolicy::Users { allow } = self else {
            return None;
        };
        let mut hash = Sha256::new();
        hash.update(format!("kakuremichi-access-policy-v1:{tunnel_id}\n"));
        for email in allow {
            hash.update(email.as_bytes());
            hash.update(b"\n");
        }
        Some(URL_SAFE_NO_PAD.encode(&hash.finalize()[..16]))
    }

    /// What a Gateway gets of this policy for tunnel `tunnel_id`.
    pub fn for_gateway(&self, tunnel_id: i64) -> RouteAccess {
        match self {
            AccessPolicy::Public => RouteAccess::Public,
            AccessPolicy::Login => RouteAccess::Login,
            AccessPolicy::Users { .. } => RouteAccess::Users {
                digest: self.digest(tunnel_id).unwrap_or_default(),
            },
        }
    }
}

/// Who may use a route, as a Gateway needs to know it. JSON: `{"mode":"public"}`,
/// `{"mode":"login"}` or `{"mode":"users","digest":"..."}`. The allow-list itself stays with
/// Control (see the module header).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "mode", rename_all = "snake_case", deny_unknown_fields)]
pub enum RouteAccess {
    /// Anyone; the Gateway checks nothing.
    #[default]
    Public,
    /// Any user signed in to Control.
    Login,
    /// The users on the tunnel's list, as Control checked when it minted the token: the token's
    /// `pol` must equal `digest`.
    Users { digest: String },
}

impl RouteAccess {
    pub fn is_public(&self) -> bool {
        matches!(self, RouteAccess::Public)
    }

    /// Whether a valid token with these claims may use the route.
    pub fn admits(&self, claims: &AccessClaims) -> bool {
        match self {
            RouteAccess::Public | RouteAccess::Login => true,
            RouteAccess::Users { digest } => {
                !digest.is_empty() && claims.pol.as_deref() == Some(digest.as_str())
            }
        }
    }
}

/// What a Gateway needs to check access tokens itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct AccessConfig {
    /// Control's base URL as browsers reach it (its `public_url`); empty: the Gateway uses the
    /// URL it reaches Control by.
    #[serde(default)]
    pub control_url: String,
    /// Public keys tokens may be signed with: the current one, the next one (published ahead of
    /// use) and retired ones until their last tokens expire.
    #[serde(default)]
    pub keys: Vec<AccessKey>,
    /// Session ids (`sid`) whose tokens are no longer honoured (logout, deleted user), sorted.
    #[serde(default)]
    pub revoked: Vec<String>,
}

impl AccessConfig {
    pub fn is_empty(&self) -> bool {
        self.control_url.is_empty() && self.keys.is_empty() && self.revoked.is_empty()
    }
}

/// One verification key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct AccessKey {
    pub kid: String,
    /// base64url (no padding) of the 32-byte Ed25519 public key.
    pub public_key: String,
}

/// The signed content of an access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessClaims {
    /// Id of the key that signed the token.
    pub kid: String,
    /// The only host (lower case, no port) the token is good for.
    pub host: String,
    /// User id in Control's database.
    pub sub: i64,
    /// The user's e-mail (lower case), matched against allow-lists and sent to the app.
    pub email: String,
    /// Id of the Control login session the token was minted for; revoked on logout.
    pub sid: String,
    /// Issued at, Unix seconds.
    pub iat: u64,
    /// Expires at, Unix seconds.
    pub exp: u64,
    /// For a tunnel with an allow-list: the list's digest ([`AccessPolicy::digest`]) when Control
    /// checked it. Absent in tokens of older Controls, which such routes then send back to Control.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pol: Option<String>,
}

/// Why a token was refused. Messages are for logs; visitors only see "sign in again".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("malformed token")]
    Malformed,
    #[error("token signed by an unknown key")]
    UnknownKey,
    #[error("bad token signature")]
    BadSignature,
    #[error("token is for another host")]
    WrongHost,
    #[error("token expired")]
    Expired,
    #[error("token issued in the future")]
    NotYetValid,
    #[error("token's session was revoked")]
    Revoked,
}

/// Signs `claims` with `key` (whose id must be `claims.kid`).
pub fn sign_token(claims: &AccessClaims, key: &Ed25519KeyPair) -> String {
    let json = serde_json::to_vec(claims).expect("claims serialise");
    let payload = URL_SAFE_NO_PAD.encode(json);
    let signature = key.sign(payload.as_bytes());
    format!("{payload}.{}", URL_SAFE_NO_PAD.encode(signature.as_ref()))
}

/// The verification keys of an [`AccessConfig`], decoded once per snapshot.
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    keys: HashMap<String, Vec<u8>>,
}

impl KeySet {
    /// Keys that are not 32 bytes of base64url are skipped (tokens naming them fail as unknown).
    pub fn new(keys: &[AccessKey]) -> Self {
        let keys = keys
            .iter()
            .filter_map(|k| {
                let bytes = URL_SAFE_NO_PAD.decode(&k.public_key).ok()?;
                (bytes.len() == 32).then(|| (k.kid.clone(), bytes))
            })
            .collect();
        Self { keys }
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Checks the signature, the host and the validity period of `token` at Unix time `now`.
    /// `host` is the request's host, already lower case without port. Never panics on input.
    pub fn verify(&self, token: &str, host: &str, now: u64) -> Result<AccessClaims, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed);
        }
        let (payload, signature) = token.split_once('.').ok_or(TokenError::Malformed)?;
        let json = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| TokenError::Malformed)?;
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| TokenError::Malformed)?;
        let claims: AccessClaims =
            serde_json::from_slice(&json).map_err(|_| TokenError::Malformed)?;
        let key = self.keys.get(&claims.kid).ok_or(TokenError::UnknownKey)?;
        UnparsedPublicKey::new(&ED25519, key)
            .verify(payload.as_bytes(), &signature)
            .map_err(|_| TokenError::BadSignature)?;
        if claims.host != host {
            return Err(TokenError::WrongHost);
        }
        if now >= claims.exp {
            return Err(TokenError::Expired);
        }
        if claims.iat > now.saturating_add(CLOCK_SKEW_SECS) {
            return Err(TokenError::NotYetValid);
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests;
