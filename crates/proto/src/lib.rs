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
mod snapshot;

pub use access::{AccessConfig, AccessKey, AccessPolicy, RouteAccess};
pub use basic_auth::RouteBasicAuth;
pub use limits::{IpNet, RateLimit, RouteLimits};
pub use message::{
    decode_control, decode_node, probe_config, ControlMessage, DecodeError, NodeMessage, NodeRole,
    OwnPort, PortError, StreamCounters, WebPorts, MAX_MESSAGE_BYTES, MAX_PORT_ERRORS,
    MAX_REASON_CHARS, MAX_STREAM_COUNTERS,
};
pub use snapshot::{
    AcmeChallenges, AgentService, ConfigSnapshot, GatewayRoute, ProxyProtocol, RouteTarget,
    StreamRoute, TlsAlpnChallenge, TlsCertificate, TunnelProtocol, WgPeer,
    DEFAULT_UDP_IDLE_TIMEOUT,
};

/// Version of the node-session protocol. Bump on any incompatible change to the messages or the
/// snapshot; Control refuses a node that speaks another version, with a message naming both.
///
/// 2: routes carry an allow-list digest instead of the list (`RouteAccess`), and nodes report a
/// snapshot they cannot apply (`NodeMessage::Rejected`).
pub const PROTOCOL_VERSION: u32 = 2;

/// Path of the node-session WebSocket on Control.
pub const CONNECT_PATH: &str = "/api/v1/connect";

/// Path of the pull endpoint (seed 003): the same snapshot over plain HTTP.
pub const PULL_CONFIG_PATH: &str = "/api/v1/edge-nodes/me/config";
