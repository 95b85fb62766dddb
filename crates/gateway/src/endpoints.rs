//! Remembered Agent endpoints. A Gateway learns where each Agent is from its handshakes; kept on
//! disk, that knowledge lets a restarted Gateway initiate handshakes itself instead of waiting up
//! to two minutes for Agents to notice (WireGuard only re-keys an idle session that late).

use kakuremichi_node::NodeState;
use kakuremichi_tunnel::{Device, PublicKey};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;

const FILE: &str = "endpoints.json";

pub(crate) struct EndpointMemory {
    state: NodeState,
    saved: BTreeMap<String, String>,
}

impl EndpointMemory {
    pub fn new(state: NodeState) -> Self {
        Self {
            state,
            saved: BTreeMap::new(),
        }
    }

    /// The endpoints saved by the previous run; damaged files are ignored.
    pub fn load(&mut self) -> HashMap<PublicKey, SocketAddr> {
        let Some(text) = self.state.read(FILE) else {
            return HashMap::new();
        };
        self.saved = serde_json::from_str(&text).unwrap_or_default();
        self.saved
            .iter()
            .filter_map(|(k, v)| Some((PublicKey::from_base64(k).ok()?, v.parse().ok()?)))
            .collect()
    }

    /// Writes the device's current endpoints if they changed since the last write.
    pub fn save(&mut self, device: &Device) {
        let current: BTreeMap<String, String> = device
            .peers()
            .into_iter()
            .filter_map(|p| Some((p.public_key.to_base64(), p.endpoint?.to_string())))
            .collect();
        if current == self.saved {
            return;
        }
        let json = serde_json::to_vec(&current).expect("map serialises");
        match self.state.write(FILE, &json) {
            Ok(()) => self.saved = current,
            Err(e) => tracing::warn!("cannot remember agent endpoints: {e}"),
        }
    }
}
