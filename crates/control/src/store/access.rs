//! Access control in the database: tunnel policies (two columns of `tunnels`), the token signing
//! keys and the grants (login sessions that received access tokens, to report their logout).

use super::{Store, StoreResult, TunnelRow};
use kakuremichi_proto::{AccessKey, AccessPolicy};
use std::collections::BTreeSet;

/// A stored signing key.
#[derive(Clone, sqlx::FromRow)]
pub struct AccessKeyRow {
    pub kid: String,
    /// base64url private seed (so no `Debug`).
    pub seed: String,
    pub public_key: String,
    pub sign_from: i64,
}

/// What Gateways are told about access (in every snapshot), to notice when it changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedAccess {
    pub keys: Vec<AccessKey>,
    pub revoked: Vec<String>,
}

/// `(access_mode, access_allow)` columns of a policy.
pub fn encode_policy(policy: &AccessPolicy) -> (&'static str, String) {
    match policy {
        AccessPolicy::Public => ("public", "[]".into()),
        AccessPolicy::Login => ("login", "[]".into()),
        AccessPolicy::Users { allow } => (
            "users",
            serde_json::to_string(allow).unwrap_or_else(|_| "[]".into()),
        ),
    }
}

/// The policy stored in a tunnel row. Only the API writes these columns; an unreadable value
/// fails closed (an empty allow-list admits nobody).
pub fn decode_policy(mode: &str, allow: &str) -> AccessPolicy {
    match mode {
        "public" => AccessPolicy::Public,
        "login" => AccessPolicy::Login,
        _ => AccessPolicy::Users {
            allow: serde_json::from_str::<BTreeSet<String>>(allow).unwrap_or_default(),
        },
    }
}

pub fn policy_of(row: &TunnelRow) -> AccessPolicy {
    decode_policy(&row.access_mode, &row.access_allow)
}

impl Store {
    /// The id and policy of the enabled tunnel serving `hostname`, if there is one, and whether
    /// that tunnel is served over HTTPS only (TLS on and plain HTTP redirected). As in the
    /// Gateways, an exact tunnel wins over the wildcard covering the name.
    pub async fn access_policy(
        &self,
        hostname: &str,
    ) -> StoreResult<Option<(i64, AccessPolicy, bool)>> {
        let wildcard = crate::validate::covering_wildcard(hostname);
        let row: Option<(i64, String, String, String, bool)> = sqlx::query_as(
            "SELECT id, access_mode, access_allow, tls, https_redirect FROM tunnels \
             WHERE (hostname = $1 OR hostname = $2) AND enabled = TRUE \
             ORDER BY hostname = $1 DESC LIMIT 1",
        )
        .bind(hostname)
        .bind(wildcard)
        .fetch_optional(self.pool())
        .await?;
        Ok(row.map(|(id, mode, allow, tls, redirect)| {
            (id, decode_policy(&mode, &allow), tls != "off" && redirect)
        }))
    }

    /// The public keys and the revoked login sessions as of now: what snapshots carry. A store
    /// query (not part of `access`) so that the snapshot layer below `access` can read it.
    pub async fn published_access(&self) -> StoreResult<PublishedAccess> {
        let keys = self
            .access_keys()
            .await?
            .into_iter()
            .map(|k| AccessKey {
                kid: k.kid,
                public_key: k.public_key,
            })
            .collect();
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let revoked = self.revoked_access_sids(now).await?;
        Ok(PublishedAccess { keys, revoked })
    }

    /// Every stored signing key, oldest first.
    pub async fn access_keys(&self) -> StoreResult<Vec<AccessKeyRow>> {
        Ok(sqlx::query_as(
            "SELECT kid, seed, public_key, sign_from FROM access_keys ORDER BY sign_from, kid",
        )
        .fetch_all(self.pool())
        .await?)
    }

    /// Applies a key rotation decided on `current` (see `access::keys`): inserts `new` if given
    /// and deletes `retire`, in one transaction.
    pub async fn rotate_access_keys(
        &self,
        new: Option<&AccessKeyRow>,
        retire: &[String],
    ) -> StoreResult<()> {
        let mut tx = self.write_tx().await?;
        if let Some(k) = new {
            sqlx::query(
                "INSERT INTO access_keys (kid, seed, public_key, sign_from, created_at) \
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(&k.kid)
            .bind(&k.seed)
            .bind(&k.public_key)
            .bind(k.sign_from)
            .bind(super::now())
            .execute(&mut *tx)
            .await?;
        }
        for kid in retire {
            sqlx::query("DELETE FROM access_keys WHERE kid = $1")
                .bind(kid)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Records that session `session_hash` holds tokens of `sid` valid until `expires_at`.
    pub async fn record_access_grant(
        &self,
        sid: &str,
        session_hash: &str,
        user_id: i64,
        expires_at: i64,
    ) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO access_grants (sid, session_hash, user_id, expires_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (sid) DO UPDATE SET expires_at = CASE WHEN access_grants.expires_at > excluded.expires_at THEN access_grants.expires_at ELSE excluded.expires_at END",
        )
        .bind(sid)
        .bind(session_hash)
        .bind(user_id)
        .bind(expires_at)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Session ids whose login session is gone (logout, deleted user) while some of their tokens
    /// are still unexpired at Unix time `now`; sorted.
    pub async fn revoked_access_sids(&self, now: i64) -> StoreResult<Vec<String>> {
        let rows: Vec<(String,)> = sqlx::query_as(
            "SELECT sid FROM access_grants g WHERE g.expires_at > $1 \
             AND NOT EXISTS (SELECT 1 FROM sessions s WHERE s.id_hash = g.session_hash) ORDER BY sid",
        )
        .bind(now)
        .fetch_all(self.pool())
        .await?;
        Ok(rows.into_iter().map(|(sid,)| sid).collect())
    }

    /// Forgets grants whose tokens have all expired.
    pub async fn prune_access_grants(&self, now: i64) -> StoreResult<()> {
        sqlx::query("DELETE FROM access_grants WHERE expires_at <= $1")
            .bind(now)
            .execute(self.pool())
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_round_trip_through_columns() {
        let users = AccessPolicy::Users {
            allow: BTreeSet::from(["a@x.io".to_string(), "b@x.io".to_string()]),
        };
        for p in [AccessPolicy::Public, AccessPolicy::Login, users] {
            let (mode, allow) = encode_policy(&p);
            assert_eq!(decode_policy(mode, &allow), p);
        }
        // Garbage fails closed.
        assert_eq!(
            decode_policy("users", "not json"),
            AccessPolicy::Users {
                allow: BTreeSet::new()
            }
        );
        assert!(!decode_policy("???", "[]").admits("a@x.io"));
    }
}
