//! Tunnels: create, change, delete. A member may only put tunnels on agents they own, own at most
//! `max_tunnels_per_user` tunnels, and list at most `max_allow_list_entries` e-mails per tunnel
//! (that one applies to admins too: it is a property of the tunnel, which an admin can raise).

use super::error_pages;
use super::limits::LimitsInput;
use super::{audit, require_owner};
use crate::app::AppState;
use crate::certs::TlsMode;
use crate::error::{about, ApiError};
use crate::store::limits::limits_of;
use crate::store::{
    NewTunnel, PortRules, StreamSettings, TunnelLimits, TunnelPatch, TunnelRow, UserRow,
    MAX_AGENTS_PER_TUNNEL, MAX_ALLOW_LIST_ENTRIES,
};
use crate::validate;
use kakuremichi_proto::{AccessPolicy, ProxyProtocol, TunnelProtocol};
use serde_json::json;
use std::collections::HashSet;

/// The fields of a tunnel as a caller sends them; `None` = default (create) or unchanged (update).
#[derive(Debug, Default)]
pub struct TunnelInput {
    pub hostname: Option<String>,
    pub agent_id: Option<i64>,
    /// Every Agent serving the tunnel, primary first (replicas); replaces the set on update.
    pub agent_ids: Option<Vec<i64>>,
    pub target: Option<String>,
    pub enabled: Option<bool>,
    pub tls: Option<TlsMode>,
    pub https_redirect: Option<bool>,
    pub access: Option<AccessPolicy>,
    /// IP lists, rate and concurrency limits enforced by the Gateways.
    pub limits: LimitsInput,
    /// `http` (default), `tcp`, `udp` or `tls`; fixed once the tunnel exists.
    pub protocol: Option<TunnelProtocol>,
    /// `tcp`/`udp` only; on create, left out = the lowest free port of the range.
    pub public_port: Option<u16>,
    pub proxy_protocol: Option<ProxyProtocol>,
    /// `Some(None)`: no cap (on update).
    pub max_connections: Option<Option<u32>>,
    /// `udp` only: seconds a flow may stay idle; `Some(None)`: the default (on update).
    pub udp_idle_timeout: Option<Option<u32>>,
    /// `http` only: `user:password` for HTTP Basic authentication; `Some(None)`: off (update).
    pub basic_auth: Option<Option<String>>,
    /// `http` only: the Gateways keep the tunnel's recent requests (default off).
    pub log_requests: Option<bool>,
    /// `http` only: the custom error page (HTML, see [`super::error_pages`]); `Some(None)`:
    /// none, the global page applies (update).
    pub error_page: Option<Option<String>>,
}

/// `user:password` checked, as the stored user name and the Gateways' check (a fresh salt).
fn basic_auth(
    protocol: TunnelProtocol,
    credentials: Option<&str>,
) -> Result<Option<(String, kakuremichi_proto::RouteBasicAuth)>, ApiError> {
    let Some(credentials) = credentials else {
        return Ok(None);
    };
    if protocol != TunnelProtocol::Http {
        return Err(ApiError::bad_request(format!(
            "basic_auth applies to http tunnels, not to a {} tunnel",
            protocol.as_str()
        )));
    }
    kakuremichi_proto::basic_auth::check_credentials(credentials).map_err(ApiError::bad_request)?;
    let mut salt = [0u8; 16];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut salt);
    let user = credentials
        .split_once(':')
        .map_or("", |(u, _)| u)
        .to_string();
    Ok(Some((
        user,
        kakuremichi_proto::RouteBasicAuth::new(credentials, salt),
    )))
}

/// Most connections (UDP: flows) a tunnel's cap may allow per Gateway.
pub const MAX_CONNECTIONS: u32 = 1_000_000;
/// The longest idle timeout a UDP flow may have, in seconds (a day).
pub const MAX_UDP_IDLE_TIMEOUT: u32 = 86_400;

/// Checks the fields that only some protocols take, for a tunnel of `protocol` whose current
/// (or default) `tls` and `access` are given.
fn check_stream(
    protocol: TunnelProtocol,
    input: &TunnelInput,
    access: &AccessPolicy,
    hostname: &str,
) -> Result<(), ApiError> {
    let name = protocol.as_str();
    if input.public_port.is_some() && !protocol.has_public_port() {
        return Err(ApiError::bad_request(format!(
            "public_port applies to tcp and udp tunnels; a {name} tunnel is reached by its hostname"
        )));
    }
    if input.public_port == Some(0) {
        return Err(ApiError::bad_request(
            "public_port must be between 1 and 65535 (or left out to pick a free one)",
        ));
    }
    let proxy = input.proxy_protocol.unwrap_or_default();
    if !proxy.is_off() && !matches!(protocol, TunnelProtocol::Tcp | TunnelProtocol::Tls) {
        return Err(ApiError::bad_request(format!(
            "proxy_protocol applies to tcp and tls tunnels; a {name} tunnel {}",
            if protocol == TunnelProtocol::Http {
                "passes the client's address in X-Forwarded-For"
            } else {
                "cannot carry it"
            }
        )));
    }
    if let Some(Some(cap)) = input.max_connections {
        if protocol == TunnelProtocol::Http {
            return Err(ApiError::bad_request(
                "max_connections applies to tcp, udp and tls tunnels; an http tunnel uses \
                 max_concurrent_requests",
            ));
        }
        if cap == 0 || cap > MAX_CONNECTIONS {
            return Err(ApiError::bad_request(format!(
                "max_connections must be between 1 and {MAX_CONNECTIONS}, or null for no cap"
            )));
        }
    }
    if let Some(Some(secs)) = input.udp_idle_timeout {
        if protocol != TunnelProtocol::Udp {
            return Err(ApiError::bad_request(format!(
                "udp_idle_timeout applies to udp tunnels, not to a {name} tunnel"
            )));
        }
        if secs == 0 || secs > MAX_UDP_IDLE_TIMEOUT {
            return Err(ApiError::bad_request(format!(
                "udp_idle_timeout must be between 1 and {MAX_UDP_IDLE_TIMEOUT} seconds, or null \
                 for the default ({} s)",
                kakuremichi_proto::DEFAULT_UDP_IDLE_TIMEOUT
            )));
        }
    }
    if protocol == TunnelProtocol::Http {
        return Ok(());
    }
    if hostname.starts_with("*.") {
        return Err(ApiError::bad_request(format!(
            "a {name} tunnel needs an exact hostname; wildcards are for http tunnels"
        )));
    }
    // A tcp tunnel with access control is reached over HTTPS (`kakuremichi access tcp`): its
    // hostname needs a certificate, like an http tunnel's.
    let over_https = protocol == TunnelProtocol::Tcp && !access.is_public();
    if input.tls.is_some_and(|t| t != TlsMode::Off) && !over_https {
        return Err(ApiError::bad_request(format!(
            "tls applies to http tunnels (and to tcp tunnels with access control, reached over \
             HTTPS); a {name} tunnel gets no certificate from Control (leave tls out)"
        )));
    }
    if input.https_redirect == Some(true) {
        return Err(ApiError::bad_request(format!(
            "https_redirect applies to http tunnels, not to a {name} tunnel"
        )));
    }
    if input.log_requests == Some(true) {
        return Err(ApiError::bad_request(format!(
            "log_requests applies to http tunnels, not to a {name} tunnel (its connections are \
             counted on the tunnel page)"
        )));
    }
    if input
        .error_page
        .as_ref()
        .is_some_and(|p| p.as_ref().is_some_and(|p| !p.trim().is_empty()))
    {
        return Err(ApiError::bad_request(format!(
            "error_page applies to http tunnels, not to a {name} tunnel (it is not HTTP)"
        )));
    }
    let limits = &input.limits;
    if limits.rate_limit_per_second.flatten().is_some()
        || limits.rate_limit_burst.flatten().is_some()
        || limits.max_concurrent_requests.flatten().is_some()
    {
        return Err(ApiError::bad_request(format!(
            "rate limits and max_concurrent_requests apply to http tunnels; a {name} tunnel \
             takes ip_allow, ip_deny and max_connections"
        )));
    }
    if !matches!(access, AccessPolicy::Public) && protocol != TunnelProtocol::Tcp {
        return Err(ApiError::bad_request(format!(
            "access control needs a signed-in client: http tunnels, or tcp tunnels through \
             `kakuremichi access tcp`; a {name} tunnel must be public"
        )));
    }
    Ok(())
}

/// The ports tunnels may not take: the Gateways' usual and reported own ports (HTTP, HTTPS,
/// admin, WireGuard), and the WireGuard port of every Gateway's `public_endpoint`.
async fn port_rules(state: &AppState) -> Result<PortRules, ApiError> {
    let mut reserved: HashSet<(TunnelProtocol, u16)> = [
        (TunnelProtocol::Tcp, 80),
        (TunnelProtocol::Tcp, 443),
        (TunnelProtocol::Udp, 51820),
    ]
    .into();
    for g in state.store.list_gateways().await? {
        if let Some(port) = g
            .public_endpoint
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse().ok())
        {
            reserved.insert((TunnelProtocol::Udp, port));
        }
    }
    reserved.extend(
        state
            .hub
            .gateway_own_ports()
            .into_iter()
            .map(|p| (p.protocol, p.port)),
    );
    Ok(PortRules {
        range: state.port_range.clone(),
        reserved,
    })
}

fn hostname(input: &str) -> Result<String, ApiError> {
    validate::tunnel_hostname(input).map_err(|e| ApiError::bad_request(e.0))
}

fn target_addr(input: &str) -> Result<String, ApiError> {
    validate::host_port(input, "target").map_err(|e| ApiError::bad_request(e.0))
}

/// Primary and replicas from `agent_id` / `agent_ids`: the list must be non-empty, without
/// duplicates, at most [`MAX_AGENTS_PER_TUNNEL`] long, and start with `agent_id` when both are given.
fn agents(
    agent_id: Option<i64>,
    agent_ids: Option<Vec<i64>>,
) -> Result<Option<(i64, Vec<i64>)>, ApiError> {
    let Some(ids) = agent_ids else {
        return Ok(agent_id.map(|id| (id, Vec::new())));
    };
    let Some((&primary, replicas)) = ids.split_first() else {
        return Err(ApiError::bad_request(
            "agent_ids must list at least one agent",
        ));
    };
    if ids.len() > MAX_AGENTS_PER_TUNNEL {
        return Err(ApiError::bad_request(format!(
            "agent_ids lists {} agents; a tunnel can have at most {MAX_AGENTS_PER_TUNNEL}",
            ids.len()
        )));
    }
    if let Some(dup) = ids
        .iter()
        .enumerate()
        .find_map(|(i, a)| ids[..i].contains(a).then_some(a))
    {
        return Err(ApiError::bad_request(format!(
            "agent_ids lists agent {dup} twice"
        )));
    }
    if agent_id.is_some_and(|a| a != primary) {
        return Err(ApiError::bad_request(
            "agent_id and agent_ids disagree: agent_ids must start with agent_id (the primary); \
             send only agent_ids",
        ));
    }
    Ok(Some((primary, replicas.to_vec())))
}

/// Most e-mails one allow-list may ever hold, whatever `max_allow_list_entries` says.
const MAX_ALLOWED_USERS: usize = MAX_ALLOW_LIST_ENTRIES as usize;

/// Validates and lower-cases the e-mails of a `users` policy, which may list at most `quota`
/// (`max_allow_list_entries`) of them: beyond that a 403 naming the quota.
fn access(policy: AccessPolicy, quota: u32) -> Result<AccessPolicy, ApiError> {
    let AccessPolicy::Users { allow } = policy else {
        return Ok(policy);
    };
    if allow.is_empty() {
        return Err(ApiError::bad_request(
            "access.allow must list at least one e-mail address; use {\"mode\":\"login\"} to admit \
             every signed-in user",
        ));
    }
    if allow.len() > MAX_ALLOWED_USERS {
        return Err(ApiError::bad_request(format!(
            "access.allow may list at most {MAX_ALLOWED_USERS} e-mail addresses"
        )));
    }
    if allow.len() > quota as usize {
        return Err(ApiError::forbidden(format!(
            "quota exceeded: max_allow_list_entries is {quota} and access.allow lists {}; \
             shorten the list or ask an admin to raise max_allow_list_entries in the settings",
            allow.len()
        )));
    }
    let allow = allow
        .iter()
        .map(|e| {
            validate::email(e).map_err(|_| {
                ApiError::bad_request(format!(
                    "access.allow: {e:?} is not an e-mail address (expected name@example.com)"
                ))
            })
        })
        .collect::<Result<_, _>>()?;
    Ok(AccessPolicy::Users { allow })
}

/// A member may only route to an agent they own; unknown agents are the store's 400.
async fn require_agent(state: &AppState, user: &UserRow, agent_id: i64) -> Result<(), ApiError> {
    if user.is_admin {
        return Ok(());
    }
    match state.store.get_agent(agent_id).await {
        Ok(agent) => require_owner(user, agent.owner_id, "tunnels on agents"),
        Err(crate::store::StoreError::NotFound) => Err(ApiError::bad_request(format!(
            "agent_id {agent_id} does not exist; create the agent first"
        ))),
        Err(e) => Err(e.into()),
    }
}

pub async fn create(
    state: &AppState,
    user: &UserRow,
    input: TunnelInput,
) -> Result<TunnelRow, ApiError> {
    let agents = agents(input.agent_id, input.agent_ids.clone())?;
    let (Some(host), Some((agent_id, replicas)), Some(target)) =
        (input.hostname.clone(), agents, input.target.clone())
    else {
        return Err(ApiError::bad_request(
            "hostname, agent_id (or agent_ids) and target are required",
        ));
    };
    let quotas = state.store.quotas().await?;
    let protocol = input.protocol.unwrap_or_default();
    let host = hostname(&host)?;
    let policy = input.access.clone().unwrap_or_default();
    check_stream(protocol, &input, &policy, &host)?;
    let http = protocol == TunnelProtocol::Http;
    let stream = StreamSettings {
        protocol,
        public_port: input.public_port,
        proxy_protocol: input.proxy_protocol.unwrap_or_default(),
        max_connections: input.max_connections.flatten(),
        udp_idle_timeout: input.udp_idle_timeout.flatten(),
    };
    let new = NewTunnel {
        hostname: host,
        agent_id,
        target: target_addr(&target)?,
        enabled: input.enabled.unwrap_or(true),
        // Only http tunnels terminate TLS at the Gateways, and tcp tunnels with access control
        // (their signed-in clients come over HTTPS).
        tls: match http || (protocol == TunnelProtocol::Tcp && !policy.is_public()) {
            true => input.tls.unwrap_or(state.default_tls).as_str().to_string(),
            false => input.tls.unwrap_or(TlsMode::Off).as_str().to_string(),
        },
        https_redirect: http && input.https_redirect.unwrap_or(true),
        owner_id: (!user.is_admin).then_some(user.id),
        max_owned: quotas.max_tunnels_per_user,
        access: access(policy, quotas.max_allow_list_entries)?,
        limits: input
            .limits
            .check(&TunnelLimits::default())?
            .apply(TunnelLimits::default()),
        replicas,
        stream,
        ports: port_rules(state).await?,
        basic_auth: basic_auth(protocol, input.basic_auth.clone().flatten().as_deref())?,
        log_requests: http && input.log_requests.unwrap_or(false),
        error_page: error_pages::check(input.error_page.clone().flatten())?,
    };
    if let Some(page) = &new.error_page {
        error_pages::check_budget(state, error_pages::PageOf::NewTunnel, page).await?;
    }
    require_agent(state, user, agent_id).await?;
    for &replica in &new.replicas {
        require_agent(state, user, replica).await?;
    }
    let row = state.store.create_tunnel(&new).await?;
    state.hub.changed();
    tracing::info!(tunnel_id = row.id, hostname = %row.hostname, agent_id = row.agent_id, tls = %row.tls, protocol = %row.protocol, public_port = ?row.public_port, "tunnel created");
    let limits = limits_of(&row);
    let detail = json!({
        "agent_id": row.agent_id, "target": row.target, "tls": row.tls,
        "limits": (limits != TunnelLimits::default()).then_some(limits),
        "protocol": row.protocol, "public_port": row.public_port,
    });
    audit(state, Some(user), "tunnel.create", label(&row), detail).await;
    Ok(row)
}

pub async fn update(
    state: &AppState,
    user: &UserRow,
    id: i64,
    input: TunnelInput,
) -> Result<TunnelRow, ApiError> {
    let current = state.store.get_tunnel(id).await.map_err(about("tunnel"))?;
    require_owner(user, current.owner_id, "tunnels")?;
    let protocol = current.protocol();
    if input.protocol.is_some_and(|p| p != protocol) {
        return Err(ApiError::bad_request(format!(
            "protocol cannot change (this tunnel is {}); create a new tunnel instead",
            protocol.as_str()
        )));
    }
    let policy = input
        .access
        .clone()
        .unwrap_or_else(|| crate::store::access::policy_of(&current));
    let host = input.hostname.as_deref().unwrap_or(&current.hostname);
    check_stream(protocol, &input, &policy, host)?;
    let quota = state.store.quotas().await?.max_allow_list_entries;
    let replace_set = input.agent_ids.is_some();
    let (agent_id, replicas) = match agents(input.agent_id, input.agent_ids)? {
        Some((primary, replicas)) if replace_set => (Some(primary), Some(replicas)),
        Some((primary, _)) => (Some(primary), None),
        None => (None, None),
    };
    let patch = TunnelPatch {
        hostname: input.hostname.as_deref().map(hostname).transpose()?,
        agent_id,
        replicas,
        access: input.access.map(|a| access(a, quota)).transpose()?,
        target: input.target.as_deref().map(target_addr).transpose()?,
        enabled: input.enabled,
        tls: input.tls.map(|t| t.as_str().to_string()),
        https_redirect: input.https_redirect,
        limits: input.limits.check(&limits_of(&current))?,
        by_admin: user.is_admin,
        public_port: input.public_port,
        proxy_protocol: input.proxy_protocol,
        max_connections: input.max_connections,
        udp_idle_timeout: input.udp_idle_timeout,
        ports: match input.public_port {
            Some(_) => Some(port_rules(state).await?),
            None => None,
        },
        basic_auth: match &input.basic_auth {
            Some(change) => Some(basic_auth(current.protocol(), change.as_deref())?),
            None => None,
        },
        log_requests: input.log_requests,
        error_page: input.error_page.map(error_pages::check).transpose()?,
    };
    if let Some(Some(page)) = &patch.error_page {
        error_pages::check_budget(state, error_pages::PageOf::Tunnel(id), page).await?;
    }
    for agent in touched_agents(state, &current, &patch).await? {
        require_agent(state, user, agent).await?;
    }
    let row = state
        .store
        .update_tunnel(id, &patch)
        .await
        .map_err(about("tunnel"))?;
    state.hub.changed();
    let detail = json!({
        "hostname": patch.hostname, "agent_id": patch.agent_id, "target": patch.target,
        "enabled": patch.enabled, "tls": patch.tls, "https_redirect": patch.https_redirect,
        "replicas": patch.replicas, "access": patch.access,
        "limits": (!patch.limits.is_empty()).then(|| limits_of(&row)),
        "public_port": patch.public_port, "proxy_protocol": patch.proxy_protocol,
        "max_connections": patch.max_connections, "udp_idle_timeout": patch.udp_idle_timeout,
        // Whether it changed, and to which user: never the password nor its hash.
        "basic_auth_user": patch.basic_auth.as_ref().map(|a| a.as_ref().map(|(u, _)| u)),
        "log_requests": patch.log_requests,
        // Whether it changed, and its size: not the page itself.
        "error_page_bytes": patch.error_page.as_ref().map(|p| p.as_ref().map(String::len)),
    });
    audit(state, Some(user), "tunnel.update", label(&row), detail).await;
    Ok(row)
}

/// The Agents whose connections a PATCH changes, each of which the caller must be allowed to
/// route to: a new primary or replica always; and when the hostname or target changes or the
/// tunnel is enabled, every Agent that serves it afterwards (an admin may have added a replica on
/// someone else's Agent: its owner did not agree to be pointed at another target).
async fn touched_agents(
    state: &AppState,
    current: &TunnelRow,
    patch: &TunnelPatch,
) -> Result<Vec<i64>, ApiError> {
    let replicas: Vec<i64> = state
        .store
        .tunnel_replicas(current.id)
        .await?
        .into_iter()
        .map(|r| r.agent_id)
        .collect();
    let primary = patch.agent_id.unwrap_or(current.agent_id);
    let after: Vec<i64> = std::iter::once(primary)
        .chain(patch.replicas.clone().unwrap_or(replicas.clone()))
        .collect();
    let redirects = patch
        .hostname
        .as_ref()
        .is_some_and(|h| *h != current.hostname)
        || patch.target.as_ref().is_some_and(|t| *t != current.target)
        || (patch.enabled == Some(true) && !current.enabled);
    let mut touched: Vec<i64> = if redirects {
        after
    } else {
        let before: Vec<i64> = std::iter::once(current.agent_id).chain(replicas).collect();
        after.into_iter().filter(|a| !before.contains(a)).collect()
    };
    touched.dedup();
    Ok(touched)
}

pub async fn delete(state: &AppState, user: &UserRow, id: i64) -> Result<(), ApiError> {
    let current = state.store.get_tunnel(id).await.map_err(about("tunnel"))?;
    require_owner(user, current.owner_id, "tunnels")?;
    state
        .store
        .delete_tunnel(id)
        .await
        .map_err(about("tunnel"))?;
    state.hub.changed();
    tracing::info!(tunnel_id = id, "tunnel deleted");
    audit(
        state,
        Some(user),
        "tunnel.delete",
        label(&current),
        json!({}),
    )
    .await;
    Ok(())
}

fn label(t: &TunnelRow) -> String {
    format!("tunnel:{} {}", t.id, t.hostname)
}
