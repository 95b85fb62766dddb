//! `/tunnels`: a public hostname served by an Agent. Every change is pushed to the Gateways (routes)
//! and to the Agent concerned (services).
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
use crate::store::{CertRow, NewTunnel, TunnelPatch, TunnelRow};
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
    agent_id: i64,
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
    fn new(t: TunnelRow, cert: Option<&CertRow>, gateways_online: bool) -> Self {
        // Only this API writes the column, with a validated value.
        let tls = t.tls.parse().unwrap_or(TlsMode::Off);
        let access = policy_of(&t);
        Self {
            id: t.id,
            hostname: t.hostname,
            agent_id: t.agent_id,
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
    let online = !state.hub.online_gateways().is_empty();
    Ok(TunnelView::new(row, cert.as_ref(), online))
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
    let new = NewTunnel {
        hostname: hostname(&body.hostname)?,
        agent_id: body.agent_id,
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
                TunnelView::new(t, cert, online)
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
    let patch = TunnelPatch {
        hostname: body.hostname.as_deref().map(hostname).transpose()?,
        agent_id: body.agent_id,
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
