//! `/agents`: create (returns the API key, once), list, read, rename, rotate the key, delete.

use crate::app::AppState;
use crate::auth::AuthUser;
use crate::error::{about, ApiError, ApiJson, Id};
use crate::ops;
use crate::views::agents::{view, AgentView};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateAgent {
    name: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatchAgent {
    name: Option<String>,
}

pub async fn create(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    ApiJson(body): ApiJson<CreateAgent>,
) -> Result<(StatusCode, Json<AgentView>), ApiError> {
    let (row, key) = ops::agents::create(&state, &user, &body.name).await?;
    Ok((StatusCode::CREATED, Json(view(&state, row, Some(key)))))
}

pub async fn list(
    State(state): State<AppState>,
    _user: AuthUser,
) -> Result<Json<Vec<AgentView>>, ApiError> {
    let rows = state.store.list_agents().await?;
    Ok(Json(
        rows.into_iter().map(|a| view(&state, a, None)).collect(),
    ))
}

pub async fn get(
    State(state): State<AppState>,
    _user: AuthUser,
    Id(id): Id,
) -> Result<Json<AgentView>, ApiError> {
    let row = state.store.get_agent(id).await.map_err(about("agent"))?;
    Ok(Json(view(&state, row, None)))
}

pub async fn update(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Id(id): Id,
    ApiJson(body): ApiJson<PatchAgent>,
) -> Result<Json<AgentView>, ApiError> {
    let row = ops::agents::rename(&state, &user, id, body.name.as_deref()).await?;
    Ok(Json(view(&state, row, None)))
}

/// `POST /agents/{id}/rotate-key`: a new API key (returned once); the old one stops working.
pub async fn rotate_key(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Id(id): Id,
) -> Result<Json<AgentView>, ApiError> {
    let (row, key) = ops::agents::rotate_key(&state, &user, id).await?;
    Ok(Json(view(&state, row, Some(key))))
}

/// Refused while the agent still has tunnels; its open session is closed with `revoked`.
pub async fn delete(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Id(id): Id,
) -> Result<StatusCode, ApiError> {
    ops::agents::delete(&state, &user, id).await?;
    Ok(StatusCode::NO_CONTENT)
}
