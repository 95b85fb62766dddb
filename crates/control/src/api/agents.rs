//! `/agents`: create (returns the API key, once), list, read, rename, delete.

use super::authn::AuthUser;
use super::error::{about, ApiError, ApiJson, Id};
use super::{status, AppState};
use crate::store::{AgentRow, NodeKind, NodeRef};
use crate::{secrets, validate};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};

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

/// An agent as the API shows it; `api_key` only in the creation response.
#[derive(Serialize)]
pub struct AgentView {
    id: i64,
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    api_key: Option<String>,
    wg_address: String,
    public_key: Option<String>,
    status: &'static str,
    last_seen: Option<String>,
    created_at: String,
}

fn view(state: &AppState, a: AgentRow, api_key: Option<String>) -> AgentView {
    let online = state.hub.is_online(NodeRef {
        kind: NodeKind::Agent,
        id: a.id,
    });
    AgentView {
        id: a.id,
        name: a.name,
        api_key,
        wg_address: a.wg_address,
        public_key: a.public_key,
        status: status(online),
        last_seen: a.last_seen,
        created_at: a.created_at,
    }
}

pub async fn create(
    State(state): State<AppState>,
    _user: AuthUser,
    ApiJson(body): ApiJson<CreateAgent>,
) -> Result<(StatusCode, Json<AgentView>), ApiError> {
    let name = validate::name(&body.name).map_err(|e| ApiError::bad_request(e.0))?;
    let key = secrets::generate(secrets::AGENT_KEY_PREFIX);
    let row = state
        .store
        .create_agent(&name, &secrets::hash(&key), &state.network)
        .await?;
    state.hub.changed();
    tracing::info!(agent_id = row.id, wg_address = %row.wg_address, "agent created");
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
    _user: AuthUser,
    Id(id): Id,
    ApiJson(body): ApiJson<PatchAgent>,
) -> Result<Json<AgentView>, ApiError> {
    let name = body
        .name
        .as_deref()
        .map(validate::name)
        .transpose()
        .map_err(|e| ApiError::bad_request(e.0))?;
    let row = state
        .store
        .update_agent(id, name.as_deref())
        .await
        .map_err(about("agent"))?;
    state.hub.changed();
    Ok(Json(view(&state, row, None)))
}

/// Refused while the agent still has tunnels; its open session is closed with `revoked`.
pub async fn delete(
    State(state): State<AppState>,
    _user: AuthUser,
    Id(id): Id,
) -> Result<StatusCode, ApiError> {
    state.store.delete_agent(id).await.map_err(about("agent"))?;
    state.hub.changed();
    tracing::info!(agent_id = id, "agent deleted");
    Ok(StatusCode::NO_CONTENT)
}
