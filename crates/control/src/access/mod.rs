//! Per-tunnel access control, Control's half: signing keys, minting host-bound access tokens for
//! signed-in users, and telling Gateways which sessions ended.
//!
//! The flow (the Gateway's half is `kakuremichi_gateway::proxy::access`):
//! 1. A visitor without a valid access cookie on a protected host is sent by the Gateway to
//!    `GET /access/authorize?host=<host>&return=<original URL>` here ([`authorize`]).
//! 2. Not signed in: `302 /login?next=<that same authorize URL>`; the login page brings the
//!    visitor back after signing in.
//! 3. Signed in and admitted by the tunnel's policy: a token bound to that host is minted and the
//!    visitor is sent to `<scheme>://<host>/.kakuremichi/access?token=...&return=<path>`, where
//!    the Gateway verifies it, sets a host-only cookie and redirects to the path. Not admitted: a
//!    403 page that says who is signed in and what the app requires.
//!
//! Tokens live [`crate::ControlConfig::access_ttl`] (default 12 h), never past the login session.
//! Logout or a deleted user removes the session; every Gateway then gets the session's `sid` in
//! its snapshot's revocation list, pushed at once by the logout handler, and in any case within
//! [`MAINTENANCE_EVERY`] by [`run_maintenance`], which also rotates the keys. Gateways never see
//! allow-lists: a token carries the digest of the list it was minted against, a route the digest
//! of the current list, so any change of the list (pushed at once) sends visitors back here.

pub mod authorize;
mod keys;

use crate::hub::Hub;
use crate::store::{PublishedAccess, Store, StoreError, StoreResult, UserRow};
use kakuremichi_proto::access::{sign_token, AccessClaims};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Duration;
use time::format_description::well_known::Rfc3339;

/// How often keys are rotated and ended sessions are looked for.
pub const MAINTENANCE_EVERY: Duration = Duration::from_secs(10);

/// Key handling and minting over the store.
#[derive(Clone)]
pub struct Access {
    store: Store,
    ttl: Duration,
}

impl Access {
    pub fn new(store: Store, ttl: Duration) -> Self {
        Self { store, ttl }
    }

    fn ttl_secs(&self) -> i64 {
        i64::try_from(self.ttl.as_secs()).unwrap_or(i64::MAX / 2)
    }

    /// Rotates keys, forgets expired grants, and returns what Gateways should now hold.
    pub async fn maintain(&self) -> StoreResult<PublishedAccess> {
        let now = unix_now();
        let current = self.store.access_keys().await?;
        let rotation = keys::plan(&current, now, self.ttl_secs());
        if !rotation.is_noop() {
            self.store
                .rotate_access_keys(rotation.new.as_ref(), &rotation.retire)
                .await?;
            tracing::info!(
                new = rotation.new.as_ref().map(|k| k.kid.as_str()),
                retired = rotation.retire.len(),
                "access signing keys rotated"
            );
        }
        self.store.prune_access_grants(now).await?;
        self.store.published_access().await
    }

    /// A token for `user` on `host`, for the login session `session_hash` (which expires at the
    /// RFC 3339 time `session_expires`). `pol` is the digest of the allow-list just checked, for
    /// a tunnel that has one (Gateways then admit the token only while the list is unchanged).
    pub async fn mint(
        &self,
        user: &UserRow,
        session_hash: &str,
        session_expires: &str,
        host: &str,
        pol: Option<String>,
    ) -> StoreResult<String> {
        let now = unix_now();
        let mut stored = self.store.access_keys().await?;
        if keys::signing_key(&stored, now).is_none() {
            self.maintain().await?;
            stored = self.store.access_keys().await?;
        }
        let key = keys::signing_key(&stored, now)
            .ok_or_else(|| StoreError::Invalid("no access signing key".into()))?;
        let pair = keys::key_pair(key).ok_or_else(|| {
            tracing::error!(kid = %key.kid, "corrupt access signing key in the database");
            StoreError::Invalid("corrupt access signing key".into())
        })?;
        let session_end = time::OffsetDateTime::parse(session_expires, &Rfc3339)
            .map(|t| t.unix_timestamp())
            .unwrap_or(now);
        let exp = (now + self.ttl_secs()).min(session_end);
        let sid = session_id(session_hash);
        self.store
            .record_access_grant(&sid, session_hash, user.id, exp)
            .await?;
        let claims = AccessClaims {
            kid: key.kid.clone(),
            host: host.to_string(),
            sub: user.id,
            email: user.email.clone(),
            sid,
            iat: now.max(0) as u64,
            exp: exp.max(0) as u64,
            pol,
        };
        Ok(sign_token(&claims, &pair))
    }
}

/// The `sid` of a login session: derived from the stored session hash, so tokens (which travel in
/// URLs and cookies) never carry the hash itself.
pub fn session_id(session_hash: &str) -> String {
    let digest = Sha256::digest(format!("kakuremichi-access-sid:{session_hash}"));
    hex::encode(&digest[..16])
}

pub fn unix_now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// Every [`MAINTENANCE_EVERY`]: rotates keys and pushes new snapshots when the published keys or
/// revocations changed (a session ended by any path, a key rotated or retired).
pub async fn run_maintenance(access: Access, hub: Arc<Hub>) {
    let mut tick = tokio::time::interval(MAINTENANCE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last: Option<PublishedAccess> = None;
    loop {
        tick.tick().await;
        match access.maintain().await {
            Ok(now) if last.as_ref() != Some(&now) => {
                last = Some(now);
                hub.changed();
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "access maintenance failed; retrying"),
        }
    }
}
