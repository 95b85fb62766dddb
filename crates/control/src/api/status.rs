//! `GET /status`: one summary of what is up, for dashboards and scripts — which Gateways and
//! Agents hold a session, and through which Gateways each tunnel can be served.
//!
//! "Can be served" is what Control knows: the tunnel is enabled, one of its Agents (primary or
//! replica) is online, and the
//! Gateway is online and enabled. It does not probe the data path.

use super::openapi::ReadErrors;
use crate::app::AppState;
use crate::auth::AuthUser;
use crate::backups::BackupState;
use crate::error::ApiError;
use crate::store::{NodeKind, NodeRef};
use crate::views::{status, Presence};
use axum::extract::State;
use axum::Json;
use serde::Serialize;

#[derive(Serialize, utoipa::ToSchema)]
pub struct StatusView {
    gateways: NodeCounts,
    agents: NodeCounts,
    tunnels: Vec<TunnelStatus>,
    /// Admins only (`null` for members): the state of Control's backups, as
    /// `GET /api/v1/backups` gives it.
    backups: Option<BackupState>,
}

#[derive(Serialize, utoipa::ToSchema)]
struct NodeCounts {
    total: usize,
    online: usize,
    items: Vec<NodeStatus>,
}

#[derive(Serialize, utoipa::ToSchema)]
struct NodeStatus {
    id: i64,
    name: String,
    #[schema(value_type = Presence)]
    status: &'static str,
    /// Gateways only: disabled Gateways are dropped by the Agents.
    #[serde(skip_serializing_if = "Option::is_none")]
    enabled: Option<bool>,
    /// Why the node is not running its latest config (it rejected it, or it was too large to
    /// send), in which case it keeps serving its previous one; `null` when all is well.
    config_error: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
struct TunnelStatus {
    id: i64,
    hostname: String,
    enabled: bool,
    agent_id: i64,
    #[schema(value_type = Presence)]
    agent_status: &'static str,
    /// Ids of the tunnel's Agents (primary and replicas) that hold a session now.
    agents_online: Vec<i64>,
    /// Ids of the Gateways that can serve this tunnel now.
    gateways: Vec<i64>,
    reachable: bool,
}

/// What is up: the nodes holding a session, and the Gateways that can serve each tunnel.
#[utoipa::path(
    get,
    path = "/api/v1/status",
    tag = "status",
    operation_id = "get_status",
    security(("api_token" = []), ("session_cookie" = [])),
    responses(
        (status = 200, description = "Nodes online and where each tunnel can be served", body = StatusView),
        ReadErrors,
    ),
)]
pub async fn get(
    AuthUser(user): AuthUser,
    State(state): State<AppState>,
) -> Result<Json<StatusView>, ApiError> {
    let online = |kind, id| state.hub.is_online(NodeRef { kind, id });
    let config_error = |kind, id| state.hub.config_error(NodeRef { kind, id });
    let gateways: Vec<NodeStatus> = state
        .store
        .list_gateways()
        .await?
        .into_iter()
        .map(|g| NodeStatus {
            status: status(online(NodeKind::Gateway, g.id)),
            enabled: Some(g.enabled),
            config_error: config_error(NodeKind::Gateway, g.id),
            id: g.id,
            name: g.name,
        })
        .collect();
    let agents: Vec<NodeStatus> = state
        .store
        .list_agents()
        .await?
        .into_iter()
        .map(|a| NodeStatus {
            status: status(online(NodeKind::Agent, a.id)),
            enabled: None,
            config_error: config_error(NodeKind::Agent, a.id),
            id: a.id,
            name: a.name,
        })
        .collect();
    let serving: Vec<i64> = gateways
        .iter()
        .filter(|g| g.status == "online" && g.enabled == Some(true))
        .map(|g| g.id)
        .collect();
    let replicas = state.store.list_replicas().await?;
    let tunnels = state
        .store
        .list_tunnels()
        .await?
        .into_iter()
        .map(|t| {
            let agent_online = online(NodeKind::Agent, t.agent_id);
            let replica_ids = replicas
                .iter()
                .filter(|r| r.tunnel_id == t.id)
                .map(|r| r.agent_id);
            let agents_online: Vec<i64> = std::iter::once(t.agent_id)
                .chain(replica_ids)
                .filter(|&a| online(NodeKind::Agent, a))
                .collect();
            let gateways = if t.enabled && !agents_online.is_empty() {
                serving.clone()
            } else {
                Vec::new()
            };
            TunnelStatus {
                reachable: !gateways.is_empty(),
                gateways,
                agent_status: status(agent_online),
                agents_online,
                agent_id: t.agent_id,
                enabled: t.enabled,
                hostname: t.hostname,
                id: t.id,
            }
        })
        .collect();
    let backups = match state.backups.as_ref().filter(|_| user.is_admin) {
        Some(b) => Some(b.state(time::OffsetDateTime::now_utc()).await?),
        None => None,
    };
    Ok(Json(StatusView {
        gateways: counts(gateways),
        agents: counts(agents),
        tunnels,
        backups,
    }))
}

fn counts(items: Vec<NodeStatus>) -> NodeCounts {
    NodeCounts {
        total: items.len(),
        online: items.iter().filter(|n| n.status == "online").count(),
        items,
    }
}
