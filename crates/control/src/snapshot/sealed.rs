//! A node's snapshot as its session sends it: sealed once for every enabled Gateway, and for
//! an Agent only when what it is made of changed (see [`super::World::sealed`]).

use kakuremichi_proto::{AgentService, ConfigSnapshot, ControlMessage, SharedSnapshot, WgPeer};
use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::sync::Arc;

/// The snapshot every enabled Gateway shares, and the Agents' online states it was made with.
#[derive(Debug)]
pub struct SharedGateway {
    pub(super) snapshot: SharedSnapshot,
    pub(super) hints: Vec<(i64, bool)>,
    pub(super) challenges: Arc<HashSet<String>>,
}

/// Everything an Agent's snapshot is made of. Equal inputs make an equal snapshot, so a session
/// compares them instead of sealing (serialising and hashing) an unchanged snapshot on every
/// change elsewhere in the fleet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentInputs {
    pub(super) wg_address: Ipv4Addr,
    pub(super) peers: Arc<Vec<WgPeer>>,
    pub(super) services: Vec<AgentService>,
}

impl AgentInputs {
    /// The Agent's sealed snapshot.
    pub fn seal(&self, id: i64) -> Sealed {
        Sealed::Own(Box::new(self.snapshot(id).seal()))
    }

    pub(super) fn snapshot(&self, id: i64) -> ConfigSnapshot {
        ConfigSnapshot {
            node_id: id,
            wg_address: self.wg_address,
            peers: self.peers.as_ref().clone(),
            services: self.services.clone(),
            ..ConfigSnapshot::default()
        }
    }
}

/// A node's sealed snapshot, as its session sends it.
pub enum Sealed {
    /// Made for this node alone.
    Own(Box<ConfigSnapshot>),
    /// A Gateway's: the snapshot every enabled Gateway shares, with this one's identity.
    Shared {
        shared: Arc<SharedGateway>,
        node_id: i64,
        wg_address: Ipv4Addr,
        config_hash: String,
    },
}

impl Sealed {
    pub fn config_hash(&self) -> &str {
        match self {
            Sealed::Own(s) => &s.config_hash,
            Sealed::Shared { config_hash, .. } => config_hash,
        }
    }

    /// The ids of the ACME challenges it holds (see `AcmeChallenges::ids`).
    pub fn challenges(&self) -> Arc<HashSet<String>> {
        match self {
            Sealed::Own(s) => Arc::new(s.acme.ids().into_iter().collect()),
            Sealed::Shared { shared, .. } => shared.challenges.clone(),
        }
    }

    /// The `Config` message that carries it.
    pub fn encode(self) -> String {
        match self {
            Sealed::Own(snapshot) => ControlMessage::Config {
                snapshot: *snapshot,
            }
            .encode(),
            Sealed::Shared {
                shared,
                node_id,
                wg_address,
                config_hash,
            } => shared.snapshot.encode(&config_hash, node_id, wg_address),
        }
    }
}
