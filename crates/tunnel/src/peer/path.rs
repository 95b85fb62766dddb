//! A peer's path: UDP, or a stream when UDP is blocked (see [`crate::link`]), and how it follows
//! the packets. Like WireGuard's roaming, the path of the last authenticated packet is the
//! peer's path, with one exception: the side that opened a stream (an Agent) keeps it until a
//! handshake response arrives over UDP, which proves that UDP works both ways again.

use super::{Peer, PeerState};
use crate::link::StreamLink;
use boringtun::noise::TunnResult;
use std::net::SocketAddr;
use std::sync::Arc;

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

/// A stream carrying a peer's traffic instead of UDP, and whose it is to close: see
/// [`crate::nic::Nic::set_stream`], the one place that closes a stream the peer leaves.
#[derive(Debug, Clone)]
pub(crate) enum StreamPath {
    /// This side opened it ([`Peer::attach`], an Agent falling back): it closes it when UDP
    /// works again or another stream replaces it.
    Opened(Arc<StreamLink>),
    /// The peer's authenticated packets arrived on it (a stream the other side opened): the
    /// peer leaves it without closing it.
    Accepted(Arc<StreamLink>),
}

impl StreamPath {
    pub fn link(&self) -> &Arc<StreamLink> {
        match self {
            StreamPath::Opened(link) | StreamPath::Accepted(link) => link,
        }
    }
}

impl Peer {
    /// Carries this peer's traffic over `link`, a stream this side opened, and handshakes over
    /// it at once. A stream opened before is closed.
    pub fn attach(&self, link: Arc<StreamLink>) {
        let mut st = self.lock();
        st.nic.set_stream(Some(StreamPath::Opened(link)));
        st.initiate();
    }

    /// Sends a handshake initiation over UDP even while a stream is in use: if the answer comes
    /// back over UDP, the peer returns to UDP (see [`PeerState::follow_path`]).
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
                self.stats.last_udp_rx = self.stats.last_rx;
                let back_on_udp = match nic.stream() {
                    Some(StreamPath::Accepted(link)) => {
                        tracing::info!(peer = %peer.allowed_ip, stream = %link.remote, udp = %addr, "WireGuard peer back on UDP: an authenticated packet arrived over UDP");
                        true
                    }
                    Some(StreamPath::Opened(link)) if handshake_response => {
                        tracing::info!(peer = %peer.allowed_ip, stream = %link.remote, udp = %addr, "UDP works again (a handshake answered over UDP); WireGuard back on UDP, closing the stream");
                        true
                    }
                    _ => false,
                };
                if back_on_udp {
                    nic.set_stream(None);
                }
                if nic.endpoint != Some(*addr) {
                    tracing::info!(peer = %peer.allowed_ip, from = ?nic.endpoint, to = %addr, "WireGuard peer endpoint changed");
                    nic.set_endpoint(*addr);
                }
            }
            Source::Stream(link) => {
                if !link.authenticate() {
                    return;
                }
                if !nic.is_on(link) {
                    tracing::info!(peer = %peer.allowed_ip, stream = %link.remote, udp = ?nic.endpoint, "WireGuard peer now over a TCP/TLS stream: an authenticated packet arrived on it");
                    nic.set_stream(Some(StreamPath::Accepted(link.clone())));
                }
            }
        }
    }
}
