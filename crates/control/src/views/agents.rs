//! An Agent as people see it, in the API's JSON and on the UI's pages.

use super::status;
use crate::app::AppState;
use crate::store::{AgentRow, NodeKind, NodeRef};
use serde::Serialize;

/// An agent as the API shows it; `api_key` only in the creation response.
#[derive(Serialize, utoipa::ToSchema)]
pub struct AgentView {
    id: i64,
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    api_key: Option<String>,
    wg_address: String,
    public_key: Option<String>,
    #[schema(value_type = super::Presence)]
    status: &'static str,
    last_seen: Option<String>,
    created_at: String,
    owner_id: Option<i64>,
}

pub fn view(state: &AppState, a: AgentRow, api_key: Option<String>) -> AgentView {
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
        owner_id: a.owner_id,
    }
}
