//! The node endpoints: the session WebSocket ([`CONNECT_PATH`](kakuremichi_proto::CONNECT_PATH))
//! and the pull endpoint of seed 003 ([`PULL_CONFIG_PATH`](kakuremichi_proto::PULL_CONFIG_PATH)).

use super::openapi::{ErrorBody, NodeErrors};
use crate::app::AppState;
use crate::auth::{bearer, AuthNode, PeerIp};
use crate::error::ApiError;
use crate::hub;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::State;
use axum::http::header::{CACHE_CONTROL, ETAG, IF_NONE_MATCH};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use kakuremichi_proto::{OLDEST_PROTOCOL_VERSION, PROTOCOL_HEADER, PROTOCOL_VERSION};

/// Largest frame or message a node may send; a Hello is a few hundred bytes.
const MAX_NODE_MESSAGE: usize = 64 * 1024;

/// What a node session reads from its socket at once.
const NODE_READ_BUFFER: usize = 8 * 1024;

/// Upgrades an authenticated node's request to its session.
///
/// A WebSocket of JSON text messages (`kakuremichi_proto::message`): the node says hello, Control
/// pushes its config snapshot whenever it changes.
#[utoipa::path(
    get,
    path = kakuremichi_proto::CONNECT_PATH,
    tag = "nodes",
    operation_id = "node_connect",
    security(("node_credential" = [])),
    responses(
        (status = 101, description = "Switched to the node session's WebSocket"),
        (status = 400, description = "Not a WebSocket upgrade, or an X-Kakuremichi-Protocol that is not a number", body = ErrorBody),
        NodeErrors,
    ),
)]
pub async fn connect(
    State(state): State<AppState>,
    AuthNode(node): AuthNode,
    PeerIp(peer): PeerIp,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let upgrade = upgrade.map_err(|r| {
        ApiError::bad_request(format!(
            "this endpoint expects a WebSocket upgrade: {}",
            r.body_text()
        ))
    })?;
    // Read the epoch, then check the credential again: a key rotated after the extractor's check
    // is either seen here or moves the epoch on, so an old key never keeps a session.
    let epoch = state.hub.credential_epoch(node);
    let still_valid = match bearer(&headers) {
        Some(secret) => state.store.authenticate_node(secret).await? == Some(node),
        None => false,
    };
    if !still_valid {
        return Err(ApiError::unauthorized());
    }
    // Where a Gateway is seen from: the default address of its DNS records (docs/dns.md).
    if let (crate::store::NodeKind::Gateway, Some(ip)) = (node.kind, peer) {
        if state
            .store
            .record_gateway_address(node.id, &ip.to_string())
            .await?
        {
            tracing::info!(gateway_id = node.id, %ip, "Gateway connects from a new address");
        }
    }
    let offered = offered_protocol(&headers)?;
    let hub = state.hub.clone();
    Ok(upgrade
        // Nodes send small messages; the default (128 KiB per session) was most of Control's
        // memory with 10,000 sessions.
        .read_buffer_size(NODE_READ_BUFFER)
        .max_message_size(MAX_NODE_MESSAGE)
        .max_frame_size(MAX_NODE_MESSAGE)
        .on_upgrade(move |socket| hub::serve(socket, node, epoch, offered, hub)))
}

/// The newest protocol version the node speaks, from its [`PROTOCOL_HEADER`] (absent on nodes
/// that predate version negotiation).
fn offered_protocol(headers: &HeaderMap) -> Result<Option<u32>, ApiError> {
    let Some(value) = headers.get(PROTOCOL_HEADER) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse::<u32>().ok())
        .map(Some)
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "{PROTOCOL_HEADER} must be a protocol version number, e.g. {PROTOCOL_VERSION}"
            ))
        })
}

/// The node's snapshot with its hash as ETag; `304` when `If-None-Match` already names it.
#[utoipa::path(
    get,
    path = kakuremichi_proto::PULL_CONFIG_PATH,
    tag = "nodes",
    operation_id = "node_pull_config",
    security(("node_credential" = [])),
    params(("If-None-Match" = Option<String>, Header, description = "The ETag of the snapshot the node holds")),
    responses(
        (status = 200, description = "The node's config snapshot", body = kakuremichi_proto::ConfigSnapshot,
            headers(("ETag" = String, description = "The snapshot's `config_hash`, quoted"))),
        (status = 304, description = "The node already holds this snapshot",
            headers(("ETag" = String, description = "The snapshot's `config_hash`, quoted"))),
        NodeErrors,
    ),
)]
pub async fn pull_config(
    State(state): State<AppState>,
    AuthNode(node): AuthNode,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let world = state.hub.world().await?;
    let online = |a| state.hub.agent_online(a);
    // A client that names no protocol version gets what the oldest one knows.
    let protocol =
        offered_protocol(&headers)?.map_or(OLDEST_PROTOCOL_VERSION, |v| v.min(PROTOCOL_VERSION));
    // The node may have been deleted since it authenticated.
    let sealed = world
        .sealed_in(node, online, protocol)
        .ok_or_else(ApiError::unauthorized)?;
    if let Err(e) = state.store.touch_node(node).await {
        tracing::warn!(%node, error = %e, "could not record last_seen");
    }
    let cache = |hash: &str| {
        [
            (ETAG, format!("\"{hash}\"")),
            (CACHE_CONTROL, "no-cache".into()),
        ]
    };
    if etag_matches(&headers, sealed.config_hash()) {
        // Known from the hash alone (a Gateway's is cheap: its snapshot is shared).
        return Ok((StatusCode::NOT_MODIFIED, cache(sealed.config_hash())).into_response());
    }
    let snapshot = world
        .snapshot_in(node, online, protocol)
        .ok_or_else(ApiError::unauthorized)?;
    let cache = cache(&snapshot.config_hash);
    Ok((cache, Json(snapshot)).into_response())
}

/// True when any `If-None-Match` entry is `*` or names `hash` (quoted or not, weak or strong).
fn etag_matches(headers: &HeaderMap, hash: &str) -> bool {
    headers
        .get_all(IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|tag| tag.trim())
        .map(|tag| tag.strip_prefix("W/").unwrap_or(tag))
        .map(|tag| tag.trim_matches('"'))
        .any(|tag| tag == "*" || tag == hash)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn if_none_match_forms() {
        let check = |value: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(IF_NONE_MATCH, HeaderValue::from_static(value));
            etag_matches(&h, "abc")
        };
        assert!(check("\"abc\""));
        assert!(check("abc"));
        assert!(check("*"));
        assert!(check("W/\"abc\""));
        assert!(check("\"x\", \"abc\""));
        assert!(!check("\"abcd\""));
        assert!(!check(""));
        assert!(!etag_matches(&HeaderMap::new(), "abc"));
    }
}
