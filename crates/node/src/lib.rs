//! What Gateways and Agents share: start-up and the main loop ([`NodeRuntime`]), the link to
//! Control ([`ControlLink`]), the on-disk state (WireGuard key and last config snapshot), and
//! reconnect backoff, and the metrics both expose ([`metrics`]: build info, the WireGuard
//! families, the encoding helpers).
//!
//! A node starts from its cached snapshot when it has one, so it serves while Control is down,
//! and keeps its link to Control open forever, reconnecting with jittered exponential backoff.

mod backoff;
mod config;
mod link;
pub mod metrics;
mod runtime;
mod secret;
mod state;

pub use backoff::Backoff;
pub use config::{
    control_ws_url, control_ws_urls, first_control_url, ConfigError, NodeConfig, MAX_CONTROL_URLS,
};
pub(crate) use link::HandlerSlot;
pub use link::{ControlLink, LinkConfig, LinkEvent, NodeStatus, QueryHandler};
pub use runtime::{NodeRuntime, StartError, Step};
pub use secret::Secret;
pub use state::{load_or_create_key, NodeState, StateError};
