//! A Gateway as people see it, in the API's JSON and on the UI's pages.

use super::status;
use crate::app::AppState;
use crate::store::{GatewayRow, NodeKind, NodeRef};
use serde::Serialize;

/// A gateway as the API shows it; `token` only in the creation response.
#[derive(Serialize, utoipa::ToSchema)]
pub struct GatewayView {
    id: i64,
    name: String,
    public_endpoint: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<String>,
    wg_address: String,
    public_key: Option<String>,
    enabled: bool,
    #[schema(value_type = super::Presence)]
    status: &'static str,
    last_seen: Option<String>,
    created_at: String,
    /// Set addresses for DNS records (`null`: from `public_endpoint`).
    public_ipv4: Option<String>,
    public_ipv6: Option<String>,
    /// The addresses A/AAAA records of managed zones list for this Gateway while it serves.
    dns_addresses: Vec<String>,
    /// The address its last session with Control came from (the default for `dns_addresses`
    /// when `public_endpoint` is a name and this is a public address).
    observed_ip: Option<String>,
}

pub fn view(state: &AppState, g: GatewayRow, token: Option<String>) -> GatewayView {
    let online = state.hub.is_online(NodeRef {
        kind: NodeKind::Gateway,
        id: g.id,
    });
    let (v4, v6) = crate::dns_records::gateway_addresses(&g);
    let dns_addresses = v4
        .map(|a| a.to_string())
        .into_iter()
        .chain(v6.map(|a| a.to_string()))
        .collect();
    GatewayView {
        dns_addresses,
        observed_ip: g.observed_ip,
        public_ipv4: g.public_ipv4,
        public_ipv6: g.public_ipv6,
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
