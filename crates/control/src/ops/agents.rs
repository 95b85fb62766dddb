//! Agents: create (the API key is returned once), rename, rotate the key, delete.

use super::{audit, require_owner};
use crate::app::AppState;
use crate::error::{about, ApiError};
use crate::store::{AgentRow, NodeKind, NodeRef, UserRow};
use crate::{secrets, validate};
use serde_json::json;

/// Creates an agent owned by `user`; returns it with its API key (shown once). A member may own
/// at most `max_agents_per_user` agents (403 naming the quota, nothing written).
pub async fn create(
    state: &AppState,
    user: &UserRow,
    name: &str,
) -> Result<(AgentRow, String), ApiError> {
    let name = validate::name(name).map_err(|e| ApiError::bad_request(e.0))?;
    let key = secrets::generate(secrets::AGENT_KEY_PREFIX);
    let owner = (!user.is_admin).then_some(user.id);
    let max = state.store.quotas().await?.max_agents_per_user;
    let row = state
        .store
        .create_agent(&name, &secrets::hash(&key), &state.network, owner, max)
        .await?;
    state.hub.changed();
    tracing::info!(agent_id = row.id, wg_address = %row.wg_address, "agent created");
    audit(state, Some(user), "agent.create", target(&row), json!({})).await;
    Ok((row, key))
}

pub async fn rename(
    state: &AppState,
    user: &UserRow,
    id: i64,
    name: Option<&str>,
) -> Result<AgentRow, ApiError> {
    let current = state.store.get_agent(id).await.map_err(about("agent"))?;
    require_owner(user, current.owner_id, "agents")?;
    let name = name
        .map(validate::name)
        .transpose()
        .map_err(|e| ApiError::bad_request(e.0))?;
    let row = state
        .store
        .update_agent(id, name.as_deref())
        .await
        .map_err(about("agent"))?;
    state.hub.changed();
    if name.is_some() {
        let detail = json!({"name": [current.name, row.name]});
        audit(state, Some(user), "agent.update", target(&row), detail).await;
    }
    Ok(row)
}

/// A new API key; the old one no longer opens a session, and its open session is closed.
pub async fn rotate_key(
    state: &AppState,
    user: &UserRow,
    id: i64,
) -> Result<(AgentRow, String), ApiError> {
    let current = state.store.get_agent(id).await.map_err(about("agent"))?;
    require_owner(user, current.owner_id, "agents")?;
    let key = secrets::generate(secrets::AGENT_KEY_PREFIX);
    let row = state
        .store
        .rotate_agent_key(id, &secrets::hash(&key))
        .await
        .map_err(about("agent"))?;
    // The old key's open session ends too, not only its next connection.
    state.hub.credential_replaced(NodeRef {
        kind: NodeKind::Agent,
        id,
    });
    tracing::info!(agent_id = id, "agent key rotated");
    audit(
        state,
        Some(user),
        "agent.rotate_key",
        target(&row),
        json!({}),
    )
    .await;
    Ok((row, key))
}

/// Refused while the agent still has tunnels; its open session is closed with `revoked`.
pub async fn delete(state: &AppState, user: &UserRow, id: i64) -> Result<(), ApiError> {
    let current = state.store.get_agent(id).await.map_err(about("agent"))?;
    require_owner(user, current.owner_id, "agents")?;
    state.store.delete_agent(id).await.map_err(about("agent"))?;
    state.hub.changed();
    tracing::info!(agent_id = id, "agent deleted");
    audit(
        state,
        Some(user),
        "agent.delete",
        target(&current),
        json!({}),
    )
    .await;
    Ok(())
}

fn target(a: &AgentRow) -> String {
    format!("agent:{} {}", a.id, a.name)
}
