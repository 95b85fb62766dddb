//! `/tunnels`: a public hostname served by an Agent. Every change is pushed to the Gateways (routes)
//! and to the Agent concerned (services).

use super::authn::AuthUser;
use super::error::{about, ApiError, ApiJson, Id};
use super::AppState;
use crate::store::{NewTunnel, TunnelPatch, TunnelRow};
use crate::validate;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateTunnel {
    hostname: String,
    agent_id: i64,
    target: String,
    enabled: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatchTunnel {
    hostname: Option<String>,
    agent_id: Option<i64>,
    target: Option<String>,
    enabled: Option<bool>,
}

#[derive(Serialize)]
pub struct TunnelView {
    id: i64,
    hostname: String,
    agent_id: i64,
    target: String,
    port: i64,
    enabled: bool,
    created_at: String,
    updated_at: String,
}

impl From<TunnelRow> for TunnelView {
    fn from(t: TunnelRow) -> Self {
        Self {
            id: t.id,
            hostname: t.hostname,
            agent_id: t.agent_id,
            target: t.target,
            port: t.port,
            enabled: t.enabled,
            created_at: t.created_at,
            updated_at: t.updated_at,
        }
    }
}

fn hostname(input: &str) -> Result<String, ApiError> {
    validate::hostname(input).map_err(|e| ApiError::bad_request(e.0))
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
    };
    let row = state.store.create_tunnel(&new).await?;
    state.hub.changed();
    tracing::info!(tunnel_id = row.id, hostname = %row.hostname, agent_id = row.agent_id, "tunnel created");
    Ok((StatusCode::CREATED, Json(row.into())))
}

pub async fn list(
    State(state): State<AppState>,
    _user: AuthUser,
) -> Result<Json<Vec<TunnelView>>, ApiError> {
    let rows = state.store.list_tunnels().await?;
    Ok(Json(rows.into_iter().map(TunnelView::from).collect()))
}

pub async fn get(
    State(state): State<AppState>,
    _user: AuthUser,
    Id(id): Id,
) -> Result<Json<TunnelView>, ApiError> {
    Ok(Json(
        state
            .store
            .get_tunnel(id)
            .await
            .map_err(about("tunnel"))?
            .into(),
    ))
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
    };
    let row = state
        .store
        .update_tunnel(id, &patch)
        .await
        .map_err(about("tunnel"))?;
    state.hub.changed();
    Ok(Json(row.into()))
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
