//! Tunnels: create, change, delete. A member may only put tunnels on agents they own.

use super::{audit, require_owner};
use crate::api::{about, ApiError, AppState};
use crate::certs::TlsMode;
use crate::store::{NewTunnel, TunnelPatch, TunnelRow, UserRow};
use crate::validate;
use serde_json::json;

/// The fields of a tunnel as a caller sends them; `None` = default (create) or unchanged (update).
#[derive(Debug, Default)]
pub struct TunnelInput {
    pub hostname: Option<String>,
    pub agent_id: Option<i64>,
    pub target: Option<String>,
    pub enabled: Option<bool>,
    pub tls: Option<TlsMode>,
    pub https_redirect: Option<bool>,
}

fn hostname(input: &str) -> Result<String, ApiError> {
    validate::hostname(input).map_err(|e| ApiError::bad_request(e.0))
}

fn target_addr(input: &str) -> Result<String, ApiError> {
    validate::host_port(input, "target").map_err(|e| ApiError::bad_request(e.0))
}

/// A member may only route to an agent they own; unknown agents are the store's 400.
async fn require_agent(state: &AppState, user: &UserRow, agent_id: i64) -> Result<(), ApiError> {
    if user.is_admin {
        return Ok(());
    }
    match state.store.get_agent(agent_id).await {
        Ok(agent) => require_owner(user, agent.owner_id, "tunnels on agents"),
        Err(crate::store::StoreError::NotFound) => Err(ApiError::bad_request(format!(
            "agent_id {agent_id} does not exist; create the agent first"
        ))),
        Err(e) => Err(e.into()),
    }
}

pub async fn create(
    state: &AppState,
    user: &UserRow,
    input: TunnelInput,
) -> Result<TunnelRow, ApiError> {
    let (Some(host), Some(agent_id), Some(target)) = (input.hostname, input.agent_id, input.target)
    else {
        return Err(ApiError::bad_request(
            "hostname, agent_id and target are required",
        ));
    };
    let new = NewTunnel {
        hostname: hostname(&host)?,
        agent_id,
        target: target_addr(&target)?,
        enabled: input.enabled.unwrap_or(true),
        tls: input.tls.unwrap_or(state.default_tls).as_str().to_string(),
        https_redirect: input.https_redirect.unwrap_or(true),
        owner_id: (!user.is_admin).then_some(user.id),
    };
    require_agent(state, user, agent_id).await?;
    let row = state.store.create_tunnel(&new).await?;
    state.hub.changed();
    tracing::info!(tunnel_id = row.id, hostname = %row.hostname, agent_id = row.agent_id, tls = %row.tls, "tunnel created");
    let detail = json!({"agent_id": row.agent_id, "target": row.target, "tls": row.tls});
    audit(state, Some(user), "tunnel.create", label(&row), detail).await;
    Ok(row)
}

pub async fn update(
    state: &AppState,
    user: &UserRow,
    id: i64,
    input: TunnelInput,
) -> Result<TunnelRow, ApiError> {
    let current = state.store.get_tunnel(id).await.map_err(about("tunnel"))?;
    require_owner(user, current.owner_id, "tunnels")?;
    let patch = TunnelPatch {
        hostname: input.hostname.as_deref().map(hostname).transpose()?,
        agent_id: input.agent_id,
        target: input.target.as_deref().map(target_addr).transpose()?,
        enabled: input.enabled,
        tls: input.tls.map(|t| t.as_str().to_string()),
        https_redirect: input.https_redirect,
    };
    if let Some(agent) = patch.agent_id.filter(|a| *a != current.agent_id) {
        require_agent(state, user, agent).await?;
    }
    let row = state
        .store
        .update_tunnel(id, &patch)
        .await
        .map_err(about("tunnel"))?;
    state.hub.changed();
    let detail = json!({
        "hostname": patch.hostname, "agent_id": patch.agent_id, "target": patch.target,
        "enabled": patch.enabled, "tls": patch.tls, "https_redirect": patch.https_redirect,
    });
    audit(state, Some(user), "tunnel.update", label(&row), detail).await;
    Ok(row)
}

pub async fn delete(state: &AppState, user: &UserRow, id: i64) -> Result<(), ApiError> {
    let current = state.store.get_tunnel(id).await.map_err(about("tunnel"))?;
    require_owner(user, current.owner_id, "tunnels")?;
    state
        .store
        .delete_tunnel(id)
        .await
        .map_err(about("tunnel"))?;
    state.hub.changed();
    tracing::info!(tunnel_id = id, "tunnel deleted");
    audit(
        state,
        Some(user),
        "tunnel.delete",
        label(&current),
        json!({}),
    )
    .await;
    Ok(())
}

fn label(t: &TunnelRow) -> String {
    format!("tunnel:{} {}", t.id, t.hostname)
}
