//! `/gateways`: create (returns the token, once), list, read, update, delete.

use super::status;
use crate::app::AppState;
use crate::auth::AuthUser;
use crate::error::{about, ApiError, ApiJson, Id};
use crate::ops;
use crate::store::{GatewayRow, NodeKind, NodeRef};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateGateway {
    name: String,
    public_endpoint: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatchGateway {
    name: Option<String>,
    public_endpoint: Option<String>,
    enabled: Option<bool>,
}

/// A gateway as the API shows it; `token` only in the creation response.
#[derive(Serialize)]
pub struct GatewayView {
    id: i64,
    name: String,
    public_endpoint: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<String>,
    wg_address: String,
    public_key: Option<String>,
    enabled: bool,
    status: &'static str,
    last_seen: Option<String>,
    created_at: String,
}

pub fn view(state: &AppState, g: GatewayRow, token: Option<String>) -> GatewayView {
    let online = state.hub.is_online(NodeRef {
        kind: NodeKind::Gateway,
        id: g.id,
    });
    GatewayView {
        id: g.id,
        name: g.name,
        public_endpoint: g.public_endpoint,
        token,
        wg_address: g.wg_address,
        public_key: g.public_key,
        enabled: g.enabled,
        status: status(online),
        last_seen: g.last_seen,
        created_at: g.created_at,
    }
}

pub async fn create(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    ApiJson(body): ApiJson<CreateGateway>,
) -> Result<(StatusCode, Json<GatewayView>), ApiError> {
    let (row, token) =
        ops::gateways::create(&state, &user, &body.name, &body.public_endpoint).await?;
    Ok((StatusCode::CREATED, Json(view(&state, row, Some(token)))))
}

pub async fn list(
    State(state): State<AppState>,
    _user: AuthUser,
) -> Result<Json<Vec<GatewayView>>, ApiError> {
    let rows = state.store.list_gateways().await?;
    Ok(Json(
        rows.into_iter().map(|g| view(&state, g, None)).collect(),
    ))
}

pub async fn get(
    State(state): State<AppState>,
    _user: AuthUser,
    Id(id): Id,
) -> Result<Json<GatewayView>, ApiError> {
    let row = state
        .store
        .get_gateway(id)
        .await
        .map_err(about("gateway"))?;
    Ok(Json(view(&state, row, None)))
}

pub async fn update(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Id(id): Id,
    ApiJson(body): ApiJson<PatchGateway>,
) -> Result<Json<GatewayView>, ApiError> {
    let row = ops::gateways::update(
        &state,
        &user,
        id,
        body.name.as_deref(),
        body.public_endpoint.as_deref(),
        body.enabled,
    )
    .await?;
    Ok(Json(view(&state, row, None)))
}

/// Its open session, if any, is closed with `revoked`.
pub async fn delete(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Id(id): Id,
) -> Result<StatusCode, ApiError> {
    ops::gateways::delete(&state, &user, id).await?;
    Ok(StatusCode::NO_CONTENT)
}
