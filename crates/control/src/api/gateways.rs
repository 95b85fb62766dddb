//! `/gateways`: create (returns the token, once), list, read, update, delete.

use super::authn::AuthUser;
use super::error::{about, ApiError, ApiJson, Id};
use super::{status, AppState};
use crate::store::{GatewayPatch, GatewayRow, NodeKind, NodeRef};
use crate::{secrets, validate};
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

fn view(state: &AppState, g: GatewayRow, token: Option<String>) -> GatewayView {
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

fn endpoint(input: &str) -> Result<String, ApiError> {
    validate::host_port(input, "public_endpoint").map_err(|e| ApiError::bad_request(e.0))
}

pub async fn create(
    State(state): State<AppState>,
    _user: AuthUser,
    ApiJson(body): ApiJson<CreateGateway>,
) -> Result<(StatusCode, Json<GatewayView>), ApiError> {
    let name = validate::name(&body.name).map_err(|e| ApiError::bad_request(e.0))?;
    let public_endpoint = endpoint(&body.public_endpoint)?;
    let token = secrets::generate(secrets::GATEWAY_TOKEN_PREFIX);
    let row = state
        .store
        .create_gateway(
            &name,
            &public_endpoint,
            &secrets::hash(&token),
            &state.network,
        )
        .await?;
    state.hub.changed();
    tracing::info!(gateway_id = row.id, wg_address = %row.wg_address, "gateway created");
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
    _user: AuthUser,
    Id(id): Id,
    ApiJson(body): ApiJson<PatchGateway>,
) -> Result<Json<GatewayView>, ApiError> {
    let patch = GatewayPatch {
        name: body
            .name
            .as_deref()
            .map(validate::name)
            .transpose()
            .map_err(|e| ApiError::bad_request(e.0))?,
        public_endpoint: body.public_endpoint.as_deref().map(endpoint).transpose()?,
        enabled: body.enabled,
    };
    let row = state
        .store
        .update_gateway(id, &patch)
        .await
        .map_err(about("gateway"))?;
    state.hub.changed();
    Ok(Json(view(&state, row, None)))
}

/// Its open session, if any, is closed with `revoked`.
pub async fn delete(
    State(state): State<AppState>,
    _user: AuthUser,
    Id(id): Id,
) -> Result<StatusCode, ApiError> {
    state
        .store
        .delete_gateway(id)
        .await
        .map_err(about("gateway"))?;
    state.hub.changed();
    tracing::info!(gateway_id = id, "gateway deleted");
    Ok(StatusCode::NO_CONTENT)
}
