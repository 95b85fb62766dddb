//! `/gateways`: create (returns the token, once), list, read, update, delete.

use crate::app::AppState;
use crate::auth::AuthUser;
use crate::error::{about, ApiError, ApiJson, Id};
use crate::ops;
use crate::views::gateways::{view, GatewayView};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;

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
