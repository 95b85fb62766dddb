//! The device's peer table: each configured peer by static key, by receiver index (data
//! packets) and by tunnel address (outgoing connections). It is replaced as a whole on each
//! configuration change, so the receive loop reads it without a lock; peers whose
//! configuration did not change carry over with their sessions and connections.

use super::Device;
use crate::config::PeerConfig;
use crate::keys::PublicKey;
use crate::peer::{self, Inbound, Peer};
use boringtun::noise::Tunn;
use boringtun::x25519;
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Datagrams waiting for one peer's task; beyond this they are dropped like on a busy NIC.
const PEER_QUEUE: usize = 1024;

pub(crate) struct PeerEntry {
    pub peer: Arc<Peer>,
    index: u32,
    pub config: PeerConfig,
    /// The endpoint last given by configuration (the live one may have roamed since).
    configured_endpoint: Mutex<Option<SocketAddr>>,
    pub inbound: mpsc::Sender<Inbound>,
    driver: JoinHandle<()>,
}

impl Drop for PeerEntry {
    fn drop(&mut self) {
        self.driver.abort();
        self.peer.close();
    }
}

#[derive(Default)]
pub(crate) struct PeerTable {
    pub by_key: HashMap<PublicKey, Arc<PeerEntry>>,
    pub by_index: HashMap<u32, Arc<PeerEntry>>,
    pub by_ip: HashMap<Ipv4Addr, Arc<PeerEntry>>,
}

impl Device {
    /// Replaces the peer set. Unchanged peers keep their sessions and connections; removed
    /// peers have their connections aborted; new peers with an endpoint start a handshake.
    pub fn set_peers(&self, peers: Vec<PeerConfig>) {
        let _guard = self.inner.update.lock().unwrap_or_else(|e| e.into_inner());
        let old = self.inner.peers.load_full();
        let mut table = PeerTable::default();
        for config in peers {
            if table.by_ip.contains_key(&config.allowed_ip)
                || table.by_key.contains_key(&config.public_key)
            {
                tracing::warn!(address = %config.allowed_ip, "duplicate WireGuard peer ignored");
                continue;
            }
            let entry = match old.by_key.get(&config.public_key) {
                Some(e)
                    if e.config.allowed_ip == config.allowed_ip
                        && e.config.persistent_keepalive == config.persistent_keepalive =>
                {
                    let mut configured = e
                        .configured_endpoint
                        .lock()
                        .unwrap_or_else(|p| p.into_inner());
                    if let Some(endpoint) = config.endpoint.filter(|ep| Some(*ep) != *configured) {
                        e.peer.set_endpoint(endpoint);
                        e.peer.initiate_handshake();
                        *configured = Some(endpoint);
                    }
                    drop(configured);
                    e.clone()
                }
                _ => Arc::new(self.new_peer(config)),
            };
            table.by_ip.insert(entry.config.allowed_ip, entry.clone());
            table.by_index.insert(entry.index, entry.clone());
            table.by_key.insert(entry.config.public_key, entry);
        }
        self.inner.peers.store(Arc::new(table));
    }

    fn new_peer(&self, config: PeerConfig) -> PeerEntry {
        let index = self.inner.next_index.fetch_add(1, Ordering::Relaxed) & 0x00ff_ffff;
        let tunn = Tunn::new(
            self.inner.private_key.0.clone(),
            x25519::PublicKey::from(*config.public_key.as_bytes()),
            None,
            config.persistent_keepalive,
            index,
            Some(self.inner.guard.limiter()),
        );
        let peer = Peer::new(
            self.inner.shared.clone(),
            config.allowed_ip,
            tunn,
            config.endpoint,
            config.persistent_keepalive,
        );
        if config.endpoint.is_some() {
            peer.initiate_handshake();
        }
        let (inbound, rx) = mpsc::channel(PEER_QUEUE);
        let driver = tokio::spawn(peer::drive(peer.clone(), rx));
        PeerEntry {
            peer,
            index,
            configured_endpoint: Mutex::new(config.endpoint),
            config,
            inbound,
            driver,
        }
    }
}
