//! `/tunnels`: a public hostname served by an Agent. Every change is pushed to the Gateways (routes)
//! and to the Agent concerned (services).
//!
//! Replicas: `agent_ids` lists every Agent serving the tunnel, the primary (`agent_id`) first;
//! Gateways spread requests over them and skip one that is down. On create, give `agent_id` or
//! `agent_ids` (or both, agreeing); on PATCH, `agent_ids` replaces the set and `agent_id` alone
//! changes the primary and keeps the other replicas.
//!
//! Access per tunnel: `access` is `{"mode":"public"}` (default), `{"mode":"login"}` (any user
//! signed in to Control) or `{"mode":"users","allow":["alice@example.com"]}` (e-mails, lower-cased;
//! addresses without an account yet are allowed, to pre-authorise). See `crate::access`.
//!
//! HTTPS per tunnel: `tls` (`acme`, `internal` or `off`; default Control's `default_tls`, itself
//! `acme` unless configured), `https_redirect` (default true: plain HTTP gets a 308 to https, and
//! HTTPS responses carry HSTS), and the read-only `certificate` status (null when `tls` is off).

use super::authn::AuthUser;
use super::error::{about, ApiError, ApiJson, Id};
use super::AppState;
use crate::certs::{self, TlsMode};
use crate::store::access::policy_of;
use crate::store::{CertRow, NewTunnel, ReplicaRow, TunnelPatch, TunnelRow, MAX_AGENTS_PER_TUNNEL};
use crate::validate;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use kakuremichi_proto::AccessPolicy;
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateTunnel {
    hostname: String,
    agent_id: Option<i64>,
    agent_ids: Option<Vec<i64>>,
    target: String,
    enabled: Option<bool>,
    tls: Option<TlsMode>,
    https_redirect: Option<bool>,
    access: Option<AccessPolicy>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatchTunnel {
    hostname: Option<String>,
    agent_id: Option<i64>,
    agent_ids: Option<Vec<i64>>,
    target: Option<String>,
    enabled: Option<bool>,
    tls: Option<TlsMode>,
    https_redirect: Option<bool>,
    access: Option<AccessPolicy>,
}

#[derive(Serialize)]
pub struct TunnelView {
    id: i64,
    hostname: String,
    agent_id: i64,
    /// Every Agent serving the tunnel, the primary first.
    agent_ids: Vec<i64>,
    target: String,
    port: i64,
    enabled: bool,
    tls: TlsMode,
    https_redirect: bool,
    access: AccessPolicy,
    certificate: Option<serde_json::Value>,
    created_at: String,
    updated_at: String,
}

impl TunnelView {
    fn new(
        t: TunnelRow,
        replicas: &[ReplicaRow],
        cert: Option<&CertRow>,
        gateways_online: bool,
    ) -> Self {
        // Only this API writes the column, with a validated value.
        let tls = t.tls.parse().unwrap_or(TlsMode::Off);
        let access = policy_of(&t);
        Self {
            id: t.id,
            hostname: t.hostname,
            agent_id: t.agent_id,
            agent_ids: std::iter::once(t.agent_id)
                .chain(
                    replicas
                        .iter()
                        .filter(|r| r.tunnel_id == t.id)
                        .map(|r| r.agent_id),
                )
                .collect(),
            target: t.target,
            port: t.port,
            enabled: t.enabled,
            tls,
            https_redirect: t.https_redirect,
            access,
            certificate: certs::status_view(tls, cert, gateways_online),
            created_at: t.created_at,
            updated_at: t.updated_at,
        }
    }
}

/// The view of one tunnel, with its certificate's state.
async fn view(state: &AppState, row: TunnelRow) -> Result<TunnelView, ApiError> {
    let cert = state.store.get_certificate(&row.hostname).await?;
    let replicas = state.store.tunnel_replicas(row.id).await?;
    let online = !state.hub.online_gateways().is_empty();
    Ok(TunnelView::new(row, &replicas, cert.as_ref(), online))
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

fn hostname(input: &str) -> Result<String, ApiError> {
    validate::hostname(input).map_err(|e| ApiError::bad_request(e.0))
}

/// Most e-mails one allow-list may hold; every Gateway gets each list on every change.
const MAX_ALLOWED_USERS: usize = 1000;

/// Validates and lower-cases the e-mails of a `users` policy.
fn access(policy: AccessPolicy) -> Result<AccessPolicy, ApiError> {
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

fn target(input: &str) -> Result<String, ApiError> {
    validate::host_port(input, "target").map_err(|e| ApiError::bad_request(e.0))
}

pub async fn create(
    State(state): State<AppState>,
    _user: AuthUser,
    ApiJson(body): ApiJson<CreateTunnel>,
) -> Result<(StatusCode, Json<TunnelView>), ApiError> {
    let (agent_id, replicas) = agents(body.agent_id, body.agent_ids)?.ok_or_else(|| {
        ApiError::bad_request("give agent_id (the agent serving the tunnel) or agent_ids")
    })?;
    let new = NewTunnel {
        hostname: hostname(&body.hostname)?,
        agent_id,
        replicas,
        target: target(&body.target)?,
        enabled: body.enabled.unwrap_or(true),
        tls: body.tls.unwrap_or(state.default_tls).as_str().to_string(),
        https_redirect: body.https_redirect.unwrap_or(true),
        access: access(body.access.unwrap_or_default())?,
    };
    let row = state.store.create_tunnel(&new).await?;
    state.hub.changed();
    tracing::info!(tunnel_id = row.id, hostname = %row.hostname, agent_id = row.agent_id, tls = %row.tls, "tunnel created");
    Ok((StatusCode::CREATED, Json(view(&state, row).await?)))
}

pub async fn list(
    State(state): State<AppState>,
    _user: AuthUser,
) -> Result<Json<Vec<TunnelView>>, ApiError> {
    let rows = state.store.list_tunnels().await?;
    let replicas = state.store.list_replicas().await?;
    let certs: std::collections::HashMap<String, CertRow> = state
        .store
        .list_certificates()
        .await?
        .into_iter()
        .map(|c| (c.hostname.clone(), c))
        .collect();
    let online = !state.hub.online_gateways().is_empty();
    Ok(Json(
        rows.into_iter()
            .map(|t| {
                let cert = certs.get(&t.hostname);
                TunnelView::new(t, &replicas, cert, online)
            })
            .collect(),
    ))
}

pub async fn get(
    State(state): State<AppState>,
    _user: AuthUser,
    Id(id): Id,
) -> Result<Json<TunnelView>, ApiError> {
    let row = state.store.get_tunnel(id).await.map_err(about("tunnel"))?;
    Ok(Json(view(&state, row).await?))
}

pub async fn update(
    State(state): State<AppState>,
    _user: AuthUser,
    Id(id): Id,
    ApiJson(body): ApiJson<PatchTunnel>,
) -> Result<Json<TunnelView>, ApiError> {
    let (agent_id, replicas) = match agents(body.agent_id, body.agent_ids.clone())? {
        Some((primary, replicas)) if body.agent_ids.is_some() => (Some(primary), Some(replicas)),
        Some((primary, _)) => (Some(primary), None),
        None => (None, None),
    };
    let patch = TunnelPatch {
        hostname: body.hostname.as_deref().map(hostname).transpose()?,
        agent_id,
        replicas,
        target: body.target.as_deref().map(target).transpose()?,
        enabled: body.enabled,
        tls: body.tls.map(|t| t.as_str().to_string()),
        https_redirect: body.https_redirect,
        access: body.access.map(access).transpose()?,
    };
    let row = state
        .store
        .update_tunnel(id, &patch)
        .await
        .map_err(about("tunnel"))?;
    state.hub.changed();
    Ok(Json(view(&state, row).await?))
}

pub async fn delete(
    State(state): State<AppState>,
    _user: AuthUser,
    Id(id): Id,
) -> Result<StatusCode, ApiError> {
    state
        .store
        .delete_tunnel(id)
        .await
        .map_err(about("tunnel"))?;
    state.hub.changed();
    tracing::info!(tunnel_id = id, "tunnel deleted");
    Ok(StatusCode::NO_CONTENT)
}
