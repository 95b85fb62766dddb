//! Wire types shared by every kakuremichi role.
//!
//! Two things cross the network between Control and its nodes:
//! - a [`ConfigSnapshot`]: everything one node needs (its WireGuard address, its peers, the routes a
//!   Gateway serves, the services an Agent forwards), identified by a content hash;
//! - [`NodeMessage`] / [`ControlMessage`]: the JSON messages of the node session (a WebSocket).
//!
//! This crate does no I/O. Every message carries [`PROTOCOL_VERSION`] in the first exchange so that
//! a node and a Control of incompatible versions fail with a message that says what to upgrade.

pub mod access;
pub mod basic_auth;
pub mod limits;
pub mod message;
pub mod query;
mod snapshot;
pub mod traffic;

pub use access::{AccessConfig, AccessKey, AccessPolicy, RouteAccess};
pub use basic_auth::RouteBasicAuth;
pub use limits::{IpNet, RateLimit, RouteLimits};
pub use message::{
    decode_control, decode_node, probe_config, ControlMessage, DecodeError, NodeMessage, NodeRole,
    OwnPort, PortError, StreamCounters, WebPorts, MAX_MESSAGE_BYTES, MAX_PORT_ERRORS,
    MAX_REASON_CHARS, MAX_STREAM_COUNTERS,
};
pub use query::{Answer, Query, RequestFilter, RequestRecord, TargetCheck};
pub use snapshot::error_page_digest;
pub use snapshot::{
    AcmeChallenges, AgentService, ConfigSnapshot, GatewayRoute, ProxyProtocol, RouteTarget,
    SharedSnapshot, StreamRoute, TlsAlpnChallenge, TlsCertificate, TunnelProtocol, WgPeer,
    DEFAULT_UDP_IDLE_TIMEOUT, MAX_ERROR_PAGE_BYTES,
};
pub use traffic::{TunnelTraffic, LATENCY_BUCKETS, MAX_TRAFFIC};

/// The newest version of the node-session protocol this release speaks. Bump on any change to
/// the messages or the snapshot; a release speaks its own version and the one before
/// ([`OLDEST_PROTOCOL_VERSION`]), so Control and nodes one release apart work together
/// (docs/backups.md, "Mixed versions").
///
/// 2: routes carry an allow-list digest instead of the list (`RouteAccess`), and nodes report a
/// snapshot they cannot apply (`NodeMessage::Rejected`).
/// 3: versions are negotiated. A node writes its `Hello` in the oldest version it speaks (a
/// Control of that version reads it as always) and names the newest in the [`PROTOCOL_HEADER`]
/// of its upgrade request; Control answers `Welcome` with the newest version both speak
/// ([`negotiate`]), and the session uses it. A release that adds snapshot fields bumps the
/// version and leaves them out of the snapshots of older sessions (or leaves out a route that
/// cannot be served safely without them, reporting it), so a node never meets a field it does
/// not know; nodes still refuse unknown fields rather than ignore one that might restrict access.
/// Also in 3 (the release that introduced it is not out yet): Control may ask a node a
/// [`Query`] (`ControlMessage::Query`, answered by `NodeMessage::Answer`), and routes may carry
/// `log_requests` and `error_page` (a digest into the snapshot's `error_pages`, which holds each
/// custom error page once, with `default_error_page` naming Control's global one), and Gateways
/// report their tunnels' traffic (`NodeMessage::Status::traffic`); a protocol-2 session gets
/// and sends none of them.
pub const PROTOCOL_VERSION: u32 = 3;

/// The oldest version of the node-session protocol this release speaks: that of the release
/// before it.
pub const OLDEST_PROTOCOL_VERSION: u32 = 2;

/// Header of a node's WebSocket upgrade request naming the newest protocol version it speaks.
/// A Control that predates it ignores it and answers in the hello's version.
pub const PROTOCOL_HEADER: &str = "x-kakuremichi-protocol";

/// The version of a session with a peer that speaks `peer_oldest..=peer_newest`: the newest
/// version both speak, `None` when the ranges do not meet.
pub fn negotiate(peer_oldest: u32, peer_newest: u32) -> Option<u32> {
    let version = peer_newest.min(PROTOCOL_VERSION);
    (version >= OLDEST_PROTOCOL_VERSION && version >= peer_oldest).then_some(version)
}

/// Whether this release speaks `version`.
pub fn speaks(version: u32) -> bool {
    (OLDEST_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&version)
}

/// Path of the node-session WebSocket on Control.
pub const CONNECT_PATH: &str = "/api/v1/connect";

/// Path of the pull endpoint (seed 003): the same snapshot over plain HTTP.
pub const PULL_CONFIG_PATH: &str = "/api/v1/edge-nodes/me/config";
