//! What a [`crate::Device`] is built from: its own key and addresses, and the peers it talks to.
//! Plain data, filled in by the Gateway and the Agent from Control's configuration.

use crate::keys::{PrivateKey, PublicKey};
use std::net::{Ipv4Addr, SocketAddr};

/// How to build a [`crate::Device`].
#[derive(Debug, Clone)]
pub struct DeviceConfig {
    pub private_key: PrivateKey,
    /// This node's address inside the tunnel network.
    pub address: Ipv4Addr,
    /// UDP address to bind (`0.0.0.0:51820` on a Gateway, `0.0.0.0:0` on an Agent).
    pub listen: SocketAddr,
    /// Receive and send buffer of each TCP connection, in bytes (the largest TCP window).
    pub tcp_buffer: usize,
}

impl DeviceConfig {
    pub fn new(private_key: PrivateKey, address: Ipv4Addr, listen: SocketAddr) -> Self {
        Self {
            private_key,
            address,
            listen,
            tcp_buffer: 256 * 1024,
        }
    }
}

/// One WireGuard peer as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConfig {
    pub public_key: PublicKey,
    /// The peer's tunnel address: its only AllowedIP.
    pub allowed_ip: Ipv4Addr,
    /// Where to send to; `None` to learn it from the peer's handshake (the Gateway side).
    pub endpoint: Option<SocketAddr>,
    /// Persistent keepalive in seconds; the initiating side sets it to hold NAT mappings open.
    pub persistent_keepalive: Option<u16>,
}
