//! `/agents`: create (returns the API key, once), list, read, rename, rotate the key, delete.

use super::openapi::{ErrorBody, ReadErrors, WriteErrors};
use crate::app::AppState;
use crate::auth::AuthUser;
use crate::error::{about, ApiError, ApiJson, Id};
use crate::ops;
use crate::views::agents::{view, AgentView};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateAgent {
    name: String,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchAgent {
    name: Option<String>,
}

/// Creates an Agent and returns its API key, once.
#[utoipa::path(
    post,
    path = "/api/v1/agents",
    tag = "agents",
    operation_id = "create_agent",
    security(("api_token" = []), ("session_cookie" = [], "csrf_token" = [])),
    request_body = CreateAgent,
    responses(
        (status = 201, description = "Created; `api_key` is shown this once", body = AgentView),
        WriteErrors,
    ),
)]
pub async fn create(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    ApiJson(body): ApiJson<CreateAgent>,
) -> Result<(StatusCode, Json<AgentView>), ApiError> {
    let (row, key) = ops::agents::create(&state, &user, &body.name).await?;
    Ok((StatusCode::CREATED, Json(view(&state, row, Some(key)))))
}

/// Lists the Agents.
#[utoipa::path(
    get,
    path = "/api/v1/agents",
    tag = "agents",
    operation_id = "list_agents",
    security(("api_token" = []), ("session_cookie" = [])),
    responses(
        (status = 200, description = "Every Agent", body = Vec<AgentView>),
        ReadErrors,
    ),
)]
pub async fn list(
    State(state): State<AppState>,
    _user: AuthUser,
) -> Result<Json<Vec<AgentView>>, ApiError> {
    let rows = state.store.list_agents().await?;
    Ok(Json(
        rows.into_iter().map(|a| view(&state, a, None)).collect(),
    ))
}

/// Reads one Agent.
#[utoipa::path(
    get,
    path = "/api/v1/agents/{id}",
    tag = "agents",
    operation_id = "get_agent",
    security(("api_token" = []), ("session_cookie" = [])),
    params(("id" = i64, Path, description = "The Agent's id")),
    responses(
        (status = 200, description = "The Agent", body = AgentView),
        (status = 400, description = "The id is not an integer", body = ErrorBody),
        (status = 404, description = "No such Agent", body = ErrorBody),
        ReadErrors,
    ),
)]
pub async fn get(
    State(state): State<AppState>,
    _user: AuthUser,
    Id(id): Id,
) -> Result<Json<AgentView>, ApiError> {
    let row = state.store.get_agent(id).await.map_err(about("agent"))?;
    Ok(Json(view(&state, row, None)))
}

/// Renames an Agent.
#[utoipa::path(
    patch,
    path = "/api/v1/agents/{id}",
    tag = "agents",
    operation_id = "update_agent",
    security(("api_token" = []), ("session_cookie" = [], "csrf_token" = [])),
    params(("id" = i64, Path, description = "The Agent's id")),
    request_body = PatchAgent,
    responses(
        (status = 200, description = "The Agent as changed", body = AgentView),
        (status = 404, description = "No such Agent", body = ErrorBody),
        WriteErrors,
    ),
)]
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
#[utoipa::path(
    post,
    path = "/api/v1/agents/{id}/rotate-key",
    tag = "agents",
    operation_id = "rotate_agent_key",
    security(("api_token" = []), ("session_cookie" = [], "csrf_token" = [])),
    params(("id" = i64, Path, description = "The Agent's id")),
    responses(
        (status = 200, description = "The Agent with its new `api_key`, shown this once", body = AgentView),
        (status = 404, description = "No such Agent", body = ErrorBody),
        WriteErrors,
    ),
)]
pub async fn rotate_key(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Id(id): Id,
) -> Result<Json<AgentView>, ApiError> {
    let (row, key) = ops::agents::rotate_key(&state, &user, id).await?;
    Ok(Json(view(&state, row, Some(key))))
}

/// Refused while the agent still has tunnels; its open session is closed with `revoked`.
#[utoipa::path(
    delete,
    path = "/api/v1/agents/{id}",
    tag = "agents",
    operation_id = "delete_agent",
    security(("api_token" = []), ("session_cookie" = [], "csrf_token" = [])),
    params(("id" = i64, Path, description = "The Agent's id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such Agent", body = ErrorBody),
        (status = 409, description = "The Agent still serves tunnels", body = ErrorBody),
        WriteErrors,
    ),
)]
pub async fn delete(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Id(id): Id,
) -> Result<StatusCode, ApiError> {
    ops::agents::delete(&state, &user, id).await?;
    Ok(StatusCode::NO_CONTENT)
}
