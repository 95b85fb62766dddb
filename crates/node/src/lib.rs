//! What Gateways and Agents share: the session to Control, the on-disk state (WireGuard key and
//! last config snapshot), and reconnect backoff.
//!
//! A node starts from its cached snapshot when it has one, so it serves while Control is down,
//! and keeps a session to Control open forever, reconnecting with jittered exponential backoff.

mod backoff;
mod session;
mod state;

pub use backoff::Backoff;
pub use session::{control_ws_url, ControlSession, SessionConfig, SessionEvent};
pub use state::{load_or_create_key, NodeState, StateError};

use std::fmt;

/// A credential (gateway token or agent API key) that must never reach a log.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.trim().is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Self(s)
    }
}
