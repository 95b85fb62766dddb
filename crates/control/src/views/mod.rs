//! How Control shows its resources to people: the JSON views of agents, gateways, tunnels and DNS zones,
//! which the API returns and the UI renders into its pages.
//!
//! A layer of its own beside `ops` (reads, where `ops` writes), so the API and the UI share one
//! view without importing each other.

pub mod agents;
pub mod gateways;
pub mod traffic;
pub mod tunnels;
pub mod zones;

/// Whether a node holds a session with Control now: the words [`status`] returns, as the API's
/// OpenAPI document names them (`#[schema(value_type = Presence)]` on the `&'static str` fields).
#[derive(utoipa::ToSchema)]
#[schema(rename_all = "snake_case")]
#[allow(dead_code)] // Never built: `utoipa` only reads its definition.
pub enum Presence {
    Online,
    Offline,
}

/// `"online"` while the node has an open session.
pub fn status(online: bool) -> &'static str {
    if online {
        "online"
    } else {
        "offline"
    }
}
