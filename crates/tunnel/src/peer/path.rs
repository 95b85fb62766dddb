//! A peer's path: UDP, or a stream when UDP is blocked (see [`crate::link`]), and how it follows
//! the packets. Like WireGuard's roaming, the path of the last authenticated packet is the
//! peer's path, with one exception: the side that opened a stream (an Agent) keeps it until a
//! handshake response arrives over UDP, which proves that UDP works both ways again.

use super::{Peer, PeerState};
use crate::link::StreamLink;
use boringtun::noise::TunnResult;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Where a datagram came from, and so where an answer to it goes.
#[derive(Debug, Clone)]
pub(crate) enum Source {
    Udp(SocketAddr),
    Stream(Arc<StreamLink>),
}

impl Source {
    pub(crate) fn ip(&self) -> std::net::IpAddr {
        match self {
            Source::Udp(addr) => addr.ip(),
            Source::Stream(link) => link.remote.ip(),
        }
    }
}

/// A peer's path and counters, for [`crate::PeerStatus`].
pub(crate) struct PeerPath {
    pub endpoint: Option<SocketAddr>,
    pub stream: Option<SocketAddr>,
    pub since_handshake: Option<Duration>,
    pub since_rx: Option<Duration>,
    pub since_udp_rx: Option<Duration>,
    pub tx_bytes: usize,
    pub rx_bytes: usize,
    pub tx_packets: u64,
    pub tx_udp_sends: u64,
    pub rx_on_arrival: u64,
    pub socket_slots: usize,
}

impl Peer {
    /// What [`crate::PeerStatus`] reports about this peer.
    pub fn status(&self) -> PeerPath {
        let mut st = self.lock();
        let (since_handshake, tx_bytes, rx_bytes, _, _) = st.nic.tunn.stats();
        PeerPath {
            endpoint: st.nic.endpoint,
            stream: st.nic.stream().map(|l| l.remote),
            since_handshake,
            since_rx: st.last_rx.map(|t| t.elapsed()),
            since_udp_rx: st.last_udp_rx.map(|t| t.elapsed()),
            tx_bytes,
            rx_bytes,
            tx_packets: st.nic.transmitted,
            tx_udp_sends: st.nic.udp_sends,
            rx_on_arrival: st.rx_on_arrival,
            socket_slots: st.sockets.slots(),
        }
    }

    /// Carries this peer's traffic over `link`, a stream this side opened, and handshakes over
    /// it at once. A stream opened before is closed.
    pub fn attach(&self, link: Arc<StreamLink>) {
        let mut st = self.lock();
        if let Some(old) = st.nic.stream.replace(link) {
            if st.nic.stream_owned {
                old.close();
            }
        }
        st.nic.stream_owned = true;
        st.initiator = true;
        st.send_initiation();
    }

    /// Sends a handshake initiation over UDP even while a stream is in use: if the answer comes
    /// back over UDP, the peer returns to UDP (see [`PeerState::handle_datagram`]).
    pub fn probe_udp(&self) {
        let mut st = self.lock();
        let PeerState { nic, decap, .. } = &mut *st;
        if let TunnResult::WriteToNetwork(d) = nic.tunn.format_handshake_initiation(decap, true) {
            nic.send_udp(d);
        }
    }
}

impl PeerState {
    /// Makes the path of an authenticated packet the peer's path (see the module comment).
    pub(super) fn follow_path(&mut self, peer: &Peer, src: &Source, handshake_response: bool) {
        let nic = &mut self.nic;
        match src {
            Source::Udp(addr) => {
                self.last_udp_rx = self.last_rx;
                if let Some(link) = nic.stream().cloned() {
                    if !nic.stream_owned {
                        tracing::info!(peer = %peer.allowed_ip, stream = %link.remote, udp = %addr, "WireGuard peer back on UDP: an authenticated packet arrived over UDP");
                        nic.stream = None;
                    } else if handshake_response {
                        tracing::info!(peer = %peer.allowed_ip, stream = %link.remote, udp = %addr, "UDP works again (a handshake answered over UDP); WireGuard back on UDP, closing the stream");
                        link.close();
                        nic.stream = None;
                        nic.stream_owned = false;
                    }
                }
                if nic.endpoint != Some(*addr) {
                    tracing::info!(peer = %peer.allowed_ip, from = ?nic.endpoint, to = %addr, "WireGuard peer endpoint changed");
                    nic.endpoint = Some(*addr);
                }
            }
            Source::Stream(link) => {
                if !link.authenticate() {
                    return;
                }
                if !nic.stream.as_ref().is_some_and(|s| s.same(link)) {
                    tracing::info!(peer = %peer.allowed_ip, stream = %link.remote, udp = ?nic.endpoint, "WireGuard peer now over a TCP/TLS stream: an authenticated packet arrived on it");
                    if let Some(old) = nic.stream.replace(link.clone()) {
                        if nic.stream_owned {
                            old.close();
                        }
                    }
                    nic.stream_owned = false;
                }
            }
        }
    }
}
