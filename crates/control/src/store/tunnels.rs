//! Tunnels: a public hostname served by one Agent, forwarded to a local target through a port on
//! the Agent's userspace stack.

use super::access::{encode_policy, policy_of};
use super::limits::{self, LimitsPatch, TunnelLimits};
use super::overlap::require_no_foreign_overlap;
use super::quotas::{Owned, OwnerQuota};
use super::Tx;
use super::{
    alloc, is_foreign_key_violation, is_unique_violation, now, replicas, Store, StoreError,
    StoreResult,
};
use kakuremichi_proto::{AccessPolicy, ProxyProtocol, RouteBasicAuth, TunnelProtocol};
use std::collections::HashSet;
use std::ops::RangeInclusive;

pub(crate) const COLUMNS: &str = "id, hostname, agent_id, target, port, enabled, tls, \
     https_redirect, access_mode, access_allow, created_at, updated_at, owner_id, ip_allow, \
     ip_deny, rate_limit_per_second, rate_limit_burst, max_concurrent_requests, protocol, \
     public_port, proxy_protocol, max_connections, udp_idle_timeout, basic_auth_user, basic_auth, \
     log_requests, error_page";

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
    /// `http`, `tcp`, `udp` or `tls` (see [`TunnelProtocol`]).
    pub protocol: String,
    /// The port Gateways bind for a `tcp` or `udp` tunnel.
    pub public_port: Option<i64>,
    /// `off`, `v1` or `v2`.
    pub proxy_protocol: String,
    pub max_connections: Option<i64>,
    /// Seconds a UDP flow may stay idle; NULL = the default.
    pub udp_idle_timeout: Option<i64>,
    /// HTTP Basic authentication: the user name, and the Gateways' check (JSON of
    /// [`RouteBasicAuth`]); NULL = off.
    pub basic_auth_user: Option<String>,
    pub basic_auth: Option<String>,
    /// Gateways keep the tunnel's recent requests in memory (the request log).
    pub log_requests: bool,
    /// `http`: the custom error page (HTML) the Gateways serve instead of their own; NULL =
    /// the global one, if any.
    pub error_page: Option<String>,
}

impl TunnelRow {
    /// Only this module writes the column, with a validated value.
    pub fn protocol(&self) -> TunnelProtocol {
        self.protocol.parse().unwrap_or_default()
    }

    pub fn proxy_protocol(&self) -> ProxyProtocol {
        self.proxy_protocol.parse().unwrap_or_default()
    }

    /// The Gateways' Basic-authentication check, if the tunnel has one.
    pub fn basic_auth(&self) -> Option<RouteBasicAuth> {
        serde_json::from_str(self.basic_auth.as_deref()?).ok()
    }
}

/// How a tunnel is carried: its protocol, public port (for `tcp` and `udp`), PROXY protocol
/// header and connection cap. Values are already validated. Default: plain `http`.
#[derive(Debug, Clone, Default)]
pub struct StreamSettings {
    pub protocol: TunnelProtocol,
    /// `None` for `tcp`/`udp`: the lowest free port of `ports.range`.
    pub public_port: Option<u16>,
    pub proxy_protocol: ProxyProtocol,
    pub max_connections: Option<u32>,
    /// `udp` only: seconds a flow may stay idle (`None`: the default).
    pub udp_idle_timeout: Option<u32>,
}

/// Where public ports may be picked from, and the ones that are never free (the Gateways' own).
#[derive(Debug, Clone)]
pub struct PortRules {
    pub range: RangeInclusive<u16>,
    pub reserved: HashSet<(TunnelProtocol, u16)>,
}

/// Where public ports are picked from by default (`KAKUREMICHI_PORT_RANGE`).
pub const DEFAULT_PORT_RANGE: RangeInclusive<u16> = 20000..=29999;

impl Default for PortRules {
    fn default() -> Self {
        Self {
            range: DEFAULT_PORT_RANGE,
            reserved: HashSet::new(),
        }
    }
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
    pub stream: StreamSettings,
    pub ports: PortRules,
    /// HTTP Basic authentication: the user name and the Gateways' check.
    pub basic_auth: Option<(String, RouteBasicAuth)>,
    pub log_requests: bool,
    pub error_page: Option<String>,
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
    /// A new public port (`tcp`/`udp` tunnels only; checked against `ports`).
    pub public_port: Option<u16>,
    pub proxy_protocol: Option<ProxyProtocol>,
    /// `Some(None)` removes the cap.
    pub max_connections: Option<Option<u32>>,
    /// `Some(None)` goes back to the default.
    pub udp_idle_timeout: Option<Option<u32>>,
    pub ports: Option<PortRules>,
    /// `Some(None)` turns Basic authentication off.
    pub basic_auth: Option<Option<(String, RouteBasicAuth)>>,
    pub log_requests: Option<bool>,
    /// `Some(None)` removes the tunnel's own error page.
    pub error_page: Option<Option<String>>,
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
        let public_port = match new.stream.protocol.has_public_port() {
            true => Some(public_port(&mut tx, &new.stream, &new.ports, None).await?),
            false => None,
        };
        let now = now();
        let sql = format!(
            "INSERT INTO tunnels (hostname, agent_id, target, port, enabled, tls, https_redirect, \
             access_mode, access_allow, created_at, updated_at, owner_id, ip_allow, ip_deny, \
             rate_limit_per_second, rate_limit_burst, max_concurrent_requests, protocol, \
             public_port, proxy_protocol, max_connections, udp_idle_timeout, basic_auth_user, \
             basic_auth, log_requests, error_page) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10, $11, $12, $13, $14, $15, $16, \
             $17, $18, $19, $20, $21, $22, $23, $24, $25) RETURNING {COLUMNS}"
        );
        let (access_mode, access_allow) = encode_policy(&new.access);
        let (ip_allow, ip_deny, per_second, burst, concurrent) = limits::encode(&new.limits);
        let (auth_user, auth) = encode_basic_auth(new.basic_auth.as_ref());
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
            .bind(new.stream.protocol.as_str())
            .bind(public_port.map(i64::from))
            .bind(new.stream.proxy_protocol.as_str())
            .bind(new.stream.max_connections.map(i64::from))
            .bind(new.stream.udp_idle_timeout.map(i64::from))
            .bind(auth_user)
            .bind(auth)
            .bind(new.log_requests)
            .bind(&new.error_page)
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| write_error(e, &new.hostname))?;
        replicas::set(&mut tx, row.id, &new.replicas).await?;
        tx.commit().await?;
        Ok(row)
    }

    /// The distinct custom error pages of the tunnels other than `except`: what they add to
    /// every Gateway's snapshot (each page travels once).
    pub async fn distinct_error_pages(&self, except: Option<i64>) -> StoreResult<Vec<String>> {
        let rows: Vec<(String,)> = sqlx::query_as(
            "SELECT DISTINCT error_page FROM tunnels WHERE error_page IS NOT NULL AND id <> $1",
        )
        .bind(except.unwrap_or(0))
        .fetch_all(self.pool())
        .await?;
        Ok(rows.into_iter().map(|(page,)| page).collect())
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
        let protocol = current.protocol();
        let hostname = patch.hostname.clone().unwrap_or(current.hostname.clone());
        if patch.hostname.is_some() && !patch.by_admin {
            require_no_foreign_overlap(&mut tx, &hostname, current.owner_id, Some(id)).await?;
        }
        let public_port = match (patch.public_port, &patch.ports) {
            (Some(port), Some(rules)) if Some(i64::from(port)) != current.public_port => {
                let wanted = StreamSettings {
                    protocol,
                    public_port: Some(port),
                    proxy_protocol: current.proxy_protocol(),
                    max_connections: None,
                    udp_idle_timeout: None,
                };
                Some(i64::from(
                    public_port(&mut tx, &wanted, rules, Some(id)).await?,
                ))
            }
            _ => current.public_port,
        };
        let proxy_protocol = patch.proxy_protocol.unwrap_or(current.proxy_protocol());
        let max_connections = match patch.max_connections {
            Some(cap) => cap.map(i64::from),
            None => current.max_connections,
        };
        let udp_idle_timeout = match patch.udp_idle_timeout {
            Some(secs) => secs.map(i64::from),
            None => current.udp_idle_timeout,
        };
        let (auth_user, auth) = match &patch.basic_auth {
            Some(change) => encode_basic_auth(change.as_ref()),
            None => (current.basic_auth_user.clone(), current.basic_auth.clone()),
        };
        let sql = format!(
            "UPDATE tunnels SET hostname = $1, agent_id = $2, target = $3, port = $4, enabled = $5, \
             tls = $6, https_redirect = $7, access_mode = $8, access_allow = $9, updated_at = $10, \
             ip_allow = $12, ip_deny = $13, rate_limit_per_second = $14, rate_limit_burst = $15, \
             max_concurrent_requests = $16, public_port = $17, proxy_protocol = $18, \
             max_connections = $19, udp_idle_timeout = $20, basic_auth_user = $21, \
             basic_auth = $22, log_requests = $23, error_page = $24 WHERE id = $11 \
             RETURNING {COLUMNS}"
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
            .bind(public_port)
            .bind(proxy_protocol.as_str())
            .bind(max_connections)
            .bind(udp_idle_timeout)
            .bind(auth_user)
            .bind(auth)
            .bind(patch.log_requests.unwrap_or(current.log_requests))
            .bind(match &patch.error_page {
                Some(page) => page.as_ref(),
                None => current.error_page.as_ref(),
            })
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

/// The columns of Basic authentication: the user name and the check as JSON.
fn encode_basic_auth(auth: Option<&(String, RouteBasicAuth)>) -> (Option<String>, Option<String>) {
    match auth {
        Some((user, check)) => (Some(user.clone()), serde_json::to_string(check).ok()),
        None => (None, None),
    }
}

/// The public port of a `tcp`/`udp` tunnel: the one asked for if free (409 naming the tunnel
/// that has it, or the Gateways' own use of it), else the lowest free one of the range.
async fn public_port(
    tx: &mut Tx,
    stream: &StreamSettings,
    rules: &PortRules,
    except: Option<i64>,
) -> StoreResult<u16> {
    let protocol = stream.protocol;
    let taken: Vec<(i64, String, i64)> = sqlx::query_as(
        "SELECT id, hostname, public_port FROM tunnels \
         WHERE protocol = $1 AND public_port IS NOT NULL AND id != $2",
    )
    .bind(protocol.as_str())
    .bind(except.unwrap_or(0))
    .fetch_all(&mut **tx)
    .await?;
    let proto = protocol.as_str();
    if let Some(port) = stream.public_port {
        if rules.reserved.contains(&(protocol, port)) {
            return Err(StoreError::Conflict(format!(
                "public_port {port}/{proto} is used by the Gateways themselves (HTTP, HTTPS, \
                 WireGuard or admin); choose another port"
            )));
        }
        if let Some((id, host, _)) = taken.iter().find(|(_, _, p)| *p == i64::from(port)) {
            return Err(StoreError::Conflict(format!(
                "public_port {port}/{proto} is already used by tunnel {id} ({host})"
            )));
        }
        return Ok(port);
    }
    let used: HashSet<i64> = taken.iter().map(|(_, _, p)| *p).collect();
    rules
        .range
        .clone()
        .find(|p| !used.contains(&i64::from(*p)) && !rules.reserved.contains(&(protocol, *p)))
        .ok_or_else(|| {
            StoreError::Conflict(format!(
                "no free {proto} port left in {}-{} (KAKUREMICHI_PORT_RANGE); delete unused \
                 tunnels, widen the range, or give public_port",
                rules.range.start(),
                rules.range.end()
            ))
        })
}

pub(super) async fn require_agent(tx: &mut Tx, agent_id: i64) -> StoreResult<()> {
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
