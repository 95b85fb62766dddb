//! HTTP Basic authentication in front of a tunnel (`basic_auth: "user:password"`, e.g.
//! `kakuremichi share 3000 --basic-auth user:pass`): Control keeps, and sends the Gateways, only a
//! salted SHA-256 of `user:password`; a Gateway admits a request whose `Authorization: Basic`
//! credentials hash to it, and strips the header before the app sees it.
//!
//! A fast hash is enough here only because the password never leaves Control and the Gateways
//! (never the API, the UI or the logs); it is a gate for a shared link, not an account — the
//! tunnels' access control (sign-in through Control) is that.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// What a Gateway checks credentials against.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RouteBasicAuth {
    /// Hex of 16 random bytes.
    pub salt: String,
    /// Hex of SHA-256(salt bytes ‖ `user:password`).
    pub sha256: String,
}

impl RouteBasicAuth {
    /// The check for `user:password` with `salt` (16 random bytes, chosen by the caller).
    pub fn new(credentials: &str, salt: [u8; 16]) -> RouteBasicAuth {
        RouteBasicAuth {
            salt: hex::encode(salt),
            sha256: hex::encode(digest(&salt, credentials.as_bytes())),
        }
    }

    /// True when `authorization` (an `Authorization` header value) carries the credentials.
    pub fn admits(&self, authorization: &[u8]) -> bool {
        let Some(encoded) = authorization
            .strip_prefix(b"Basic ")
            .or_else(|| authorization.strip_prefix(b"basic "))
        else {
            return false;
        };
        let (Ok(given), Ok(salt), Ok(want)) = (
            STANDARD.decode(encoded.trim_ascii()),
            hex::decode(&self.salt),
            hex::decode(&self.sha256),
        ) else {
            return false;
        };
        let got = digest(&salt, &given);
        // Constant time: every byte is compared whatever the first difference.
        want.len() == got.len()
            && want
                .iter()
                .zip(got.iter())
                .fold(0u8, |d, (a, b)| d | (a ^ b))
                == 0
    }
}

fn digest(salt: &[u8], credentials: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(salt);
    h.update(credentials);
    h.finalize().into()
}

/// `user:password` checked: a user of 1 to 64 characters without `:`, a password of 8 to 128;
/// no control characters. The error says what to fix.
pub fn check_credentials(credentials: &str) -> Result<(), &'static str> {
    let Some((user, password)) = credentials.split_once(':') else {
        return Err("basic_auth must be user:password");
    };
    if user.is_empty() || user.chars().count() > 64 {
        return Err("basic_auth's user must be 1 to 64 characters");
    }
    if !(8..=128).contains(&password.chars().count()) {
        return Err("basic_auth's password must be 8 to 128 characters");
    }
    if credentials.chars().any(char::is_control) {
        return Err("basic_auth must not contain control characters");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_right_credentials_pass_and_nothing_else() {
        let check = RouteBasicAuth::new("ann:correct horse", [7; 16]);
        let header = |c: &str| format!("Basic {}", STANDARD.encode(c));
        assert!(check.admits(header("ann:correct horse").as_bytes()));
        for wrong in ["ann:correct hors", "bob:correct horse", "ann:", ""] {
            assert!(!check.admits(header(wrong).as_bytes()), "{wrong}");
        }
        for junk in ["", "Basic", "Basic !!!", "Bearer x", "Digest abc"] {
            assert!(!check.admits(junk.as_bytes()), "{junk}");
        }
        // Another salt, another hash: the same password does not give the same check.
        assert_ne!(
            RouteBasicAuth::new("ann:correct horse", [8; 16]).sha256,
            check.sha256
        );
        let json = serde_json::to_string(&check).unwrap();
        assert_eq!(
            serde_json::from_str::<RouteBasicAuth>(&json).unwrap(),
            check
        );
    }

    #[test]
    fn credentials_are_checked() {
        assert!(check_credentials("ann:longenough").is_ok());
        for bad in [
            "nocolon",
            ":password1",
            "ann:short",
            "ann:pass\nword1",
            &format!("{}:password1", "u".repeat(65)),
        ] {
            assert!(check_credentials(bad).is_err(), "{bad}");
        }
    }
}
