//! Tunnels: a public hostname served by one Agent, forwarded to a local target through a port on
//! the Agent's userspace stack.

use super::access::{encode_policy, policy_of};
use super::limits::{self, LimitsPatch, TunnelLimits};
use super::overlap::require_no_foreign_overlap;
use super::quotas::{Owned, OwnerQuota};
use super::{
    alloc, is_foreign_key_violation, is_unique_violation, now, replicas, Store, StoreError,
    StoreResult,
};
use kakuremichi_proto::AccessPolicy;
use sqlx::{Sqlite, Transaction};

const COLUMNS: &str = "id, hostname, agent_id, target, port, enabled, tls, https_redirect, \
     access_mode, access_allow, created_at, updated_at, owner_id, ip_allow, ip_deny, \
     rate_limit_per_second, rate_limit_burst, max_concurrent_requests";

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TunnelRow {
    pub id: i64,
    pub hostname: String,
    pub agent_id: i64,
    pub target: String,
    pub port: i64,
    pub enabled: bool,
    /// `acme`, `internal` or `off`.
    pub tls: String,
    pub https_redirect: bool,
    /// `public`, `login` or `users` (see [`super::access`]).
    pub access_mode: String,
    /// JSON array of lower-case e-mails, for `users`.
    pub access_allow: String,
    pub created_at: String,
    pub updated_at: String,
    /// The member who manages it; `None` = admins only. (Absent from queries that do not need it.)
    #[sqlx(default)]
    pub owner_id: Option<i64>,
    /// Gateway limits (see [`super::limits`]): JSON arrays of networks, and NULL = off.
    pub ip_allow: String,
    pub ip_deny: String,
    pub rate_limit_per_second: Option<i64>,
    pub rate_limit_burst: Option<i64>,
    pub max_concurrent_requests: Option<i64>,
}

/// A tunnel to create; values are already validated and normalised.
#[derive(Debug)]
pub struct NewTunnel {
    pub hostname: String,
    pub agent_id: i64,
    pub target: String,
    pub enabled: bool,
    pub tls: String,
    pub https_redirect: bool,
    /// Further Agents serving the tunnel (replicas), primary excluded, no duplicates.
    pub replicas: Vec<i64>,
    pub access: AccessPolicy,
    pub owner_id: Option<i64>,
    /// Most tunnels `owner_id` may own (`max_tunnels_per_user`), checked in the same transaction.
    pub max_owned: u32,
    pub limits: TunnelLimits,
}

/// Fields a PATCH may change; `None` leaves the field as is. Values are already validated.
#[derive(Debug, Default)]
pub struct TunnelPatch {
    pub hostname: Option<String>,
    pub agent_id: Option<i64>,
    pub target: Option<String>,
    pub enabled: Option<bool>,
    pub tls: Option<String>,
    pub https_redirect: Option<bool>,
    /// The new replica set (primary excluded, no duplicates); `None` keeps it, minus the primary.
    pub replicas: Option<Vec<i64>>,
    pub access: Option<AccessPolicy>,
    pub limits: LimitsPatch,
    /// Made by an admin, who may put a wildcard over other users' names (see [`super::overlap`]).
    pub by_admin: bool,
}

impl Store {
    /// Creates a tunnel on the lowest free port of its agent.
    pub async fn create_tunnel(&self, new: &NewTunnel) -> StoreResult<TunnelRow> {
        let mut tx = self.write_tx().await?;
        let quota = OwnerQuota {
            owner: new.owner_id,
            max: new.max_owned,
            what: Owned::Tunnels,
        };
        quota.check(&mut tx).await?;
        require_agent(&mut tx, new.agent_id).await?;
        // Only members' tunnels have an owner; an admin may overlap anyone's names.
        if new.owner_id.is_some() {
            require_no_foreign_overlap(&mut tx, &new.hostname, new.owner_id, None).await?;
        }
        let port = alloc::allocate_port(&mut tx, new.agent_id).await?;
        let now = now();
        let sql = format!(
            "INSERT INTO tunnels (hostname, agent_id, target, port, enabled, tls, https_redirect, \
             access_mode, access_allow, created_at, updated_at, owner_id, ip_allow, ip_deny, \
             rate_limit_per_second, rate_limit_burst, max_concurrent_requests) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10, $11, $12, $13, $14, $15, $16) \
             RETURNING {COLUMNS}"
        );
        let (access_mode, access_allow) = encode_policy(&new.access);
        let (ip_allow, ip_deny, per_second, burst, concurrent) = limits::encode(&new.limits);
        let row: TunnelRow = sqlx::query_as(&sql)
            .bind(&new.hostname)
            .bind(new.agent_id)
            .bind(&new.target)
            .bind(port)
            .bind(new.enabled)
            .bind(&new.tls)
            .bind(new.https_redirect)
            .bind(access_mode)
            .bind(access_allow)
            .bind(&now)
            .bind(new.owner_id)
            .bind(ip_allow)
            .bind(ip_deny)
            .bind(per_second)
            .bind(burst)
            .bind(concurrent)
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| write_error(e, &new.hostname))?;
        replicas::set(&mut tx, row.id, &new.replicas).await?;
        tx.commit().await?;
        Ok(row)
    }

    pub async fn list_tunnels(&self) -> StoreResult<Vec<TunnelRow>> {
        let sql = format!("SELECT {COLUMNS} FROM tunnels ORDER BY id");
        Ok(sqlx::query_as(&sql).fetch_all(self.pool()).await?)
    }

    pub async fn get_tunnel(&self, id: i64) -> StoreResult<TunnelRow> {
        let sql = format!("SELECT {COLUMNS} FROM tunnels WHERE id = $1");
        sqlx::query_as(&sql)
            .bind(id)
            .fetch_optional(self.pool())
            .await?
            .ok_or(StoreError::NotFound)
    }

    /// Applies a PATCH; moving a tunnel to another agent gives it a free port there.
    pub async fn update_tunnel(&self, id: i64, patch: &TunnelPatch) -> StoreResult<TunnelRow> {
        let mut tx = self.write_tx().await?;
        let select = format!("SELECT {COLUMNS} FROM tunnels WHERE id = $1");
        let current: TunnelRow = sqlx::query_as(&select)
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or(StoreError::NotFound)?;
        let (agent_id, port) = match patch.agent_id {
            Some(agent) if agent != current.agent_id => {
                require_agent(&mut tx, agent).await?;
                (agent, alloc::allocate_port(&mut tx, agent).await?)
            }
            _ => (current.agent_id, current.port),
        };
        let access = patch.access.clone().unwrap_or_else(|| policy_of(&current));
        let (access_mode, access_allow) = encode_policy(&access);
        // Merged here, inside the transaction, so concurrent changes of different limits all land.
        let limits = patch.limits.apply(limits::limits_of(&current));
        let (ip_allow, ip_deny, per_second, burst, concurrent) = limits::encode(&limits);
        let hostname = patch.hostname.clone().unwrap_or(current.hostname);
        if patch.hostname.is_some() && !patch.by_admin {
            require_no_foreign_overlap(&mut tx, &hostname, current.owner_id, Some(id)).await?;
        }
        let sql = format!(
            "UPDATE tunnels SET hostname = $1, agent_id = $2, target = $3, port = $4, enabled = $5, \
             tls = $6, https_redirect = $7, access_mode = $8, access_allow = $9, updated_at = $10, \
             ip_allow = $12, ip_deny = $13, rate_limit_per_second = $14, rate_limit_burst = $15, \
             max_concurrent_requests = $16 WHERE id = $11 RETURNING {COLUMNS}"
        );
        let row: TunnelRow = sqlx::query_as(&sql)
            .bind(&hostname)
            .bind(agent_id)
            .bind(patch.target.as_ref().unwrap_or(&current.target))
            .bind(port)
            .bind(patch.enabled.unwrap_or(current.enabled))
            .bind(patch.tls.as_ref().unwrap_or(&current.tls))
            .bind(patch.https_redirect.unwrap_or(current.https_redirect))
            .bind(access_mode)
            .bind(access_allow)
            .bind(now())
            .bind(id)
            .bind(ip_allow)
            .bind(ip_deny)
            .bind(per_second)
            .bind(burst)
            .bind(concurrent)
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| write_error(e, &hostname))?;
        let replicas = match &patch.replicas {
            Some(list) => list.clone(),
            None => replicas::of_tunnel(&mut tx, id)
                .await?
                .into_iter()
                .map(|r| r.agent_id)
                .collect(),
        };
        let replicas: Vec<i64> = replicas.into_iter().filter(|a| *a != agent_id).collect();
        replicas::set(&mut tx, id, &replicas).await?;
        tx.commit().await?;
        Ok(row)
    }

    pub async fn delete_tunnel(&self, id: i64) -> StoreResult<()> {
        let done = sqlx::query("DELETE FROM tunnels WHERE id = $1")
            .bind(id)
            .execute(self.pool())
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }
}

pub(super) async fn require_agent(
    tx: &mut Transaction<'static, Sqlite>,
    agent_id: i64,
) -> StoreResult<()> {
    let found: Option<(i64,)> = sqlx::query_as("SELECT id FROM agents WHERE id = $1")
        .bind(agent_id)
        .fetch_optional(&mut **tx)
        .await?;
    match found {
        Some(_) => Ok(()),
        None => Err(unknown_agent(agent_id)),
    }
}

fn unknown_agent(agent_id: i64) -> StoreError {
    StoreError::Invalid(format!(
        "agent_id {agent_id} does not exist; create the agent first"
    ))
}

/// Maps constraint violations of a tunnel write to user-facing errors.
fn write_error(e: sqlx::Error, hostname: &str) -> StoreError {
    if is_unique_violation(&e) {
        StoreError::Conflict(format!(
            "hostname {hostname} is already used by another tunnel"
        ))
    } else if is_foreign_key_violation(&e) {
        StoreError::Invalid("agent_id does not exist; create the agent first".to_string())
    } else {
        e.into()
    }
}
