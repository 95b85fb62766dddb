//! What a peer looks like from outside: its path and its counters, as [`crate::Device::peers`]
//! reports them (the Gateway's admin `/metrics` and the status it sends Control are built from
//! it), and the receive-side counters the peer keeps for it.

use super::Peer;
use crate::keys::PublicKey;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;
use tokio::time::Instant;

/// What a peer looks like right now: its path (UDP endpoint or stream) and its counters.
#[derive(Debug, Clone)]
pub struct PeerStatus {
    pub public_key: PublicKey,
    pub allowed_ip: Ipv4Addr,
    /// The UDP endpoint (configured, or learned from the peer's packets).
    pub endpoint: Option<SocketAddr>,
    /// The remote address of the TCP/TLS stream carrying the peer's traffic instead of UDP,
    /// while one does.
    pub stream: Option<SocketAddr>,
    pub since_handshake: Option<Duration>,
    /// Time since the peer last sent anything authenticated (a keepalive at least every 15 s on
    /// a healthy path with keepalives).
    pub since_rx: Option<Duration>,
    /// The same, counting packets that arrived over UDP only.
    pub since_udp_rx: Option<Duration>,
    pub tx_bytes: usize,
    pub rx_bytes: usize,
    /// IP packets sent through the tunnel to this peer.
    pub tx_packets: u64,
    /// UDP sends that carried them: with UDP GSO one send carries a burst of packets.
    pub tx_udp_sends: u64,
    /// Flushes of queued packets left to the peer's own task, which sends them once its thread
    /// has run the other ready tasks, so that lone messages of many connections leave together.
    /// Bulk data and the ACKs of bulk data leave at once, without one.
    pub tx_deferred_flushes: u64,
    /// TCP segments of 512 bytes of data or more that the stack sent again (wrapping): losses
    /// of bulk data on the way to the peer, which pace what is sent to it (see the `pacing`
    /// module). Short segments sent again (keep-alives, lone messages) are not counted.
    pub tx_retransmits: u64,
    /// Datagrams from this peer handled by the task that received them, without a hand-off
    /// to the peer's own task (the rest arrived in bursts or while the stack was busy).
    pub rx_on_arrival: u64,
    /// Polls of the peer's whole TCP/IP stack, every socket asked: its own task's (timers,
    /// bursts, handshakes of the tunnel) and a received packet's when it was not alone.
    /// Opening or accepting a connection and carrying a message need none.
    pub full_polls: u64,
    /// Slots of the peer's socket table: connections, listeners and free slots. It grows with
    /// a burst of connections and shrinks again within a second or so of their end.
    pub socket_slots: usize,
    /// UDP datagrams from this peer dropped because their reader had fallen behind.
    pub udp_dropped: u64,
}

/// The receive side's part of [`PeerStatus`] (the send side's counters are the NIC's).
#[derive(Default)]
pub(super) struct RxStats {
    /// When the peer last sent us anything authenticated.
    pub last_rx: Option<Instant>,
    /// The same, over UDP only: whether UDP works while a stream is in use.
    pub last_udp_rx: Option<Instant>,
    /// Datagrams (a GRO burst counts once) handled by [`Peer::receive_now`].
    pub on_arrival: u64,
    /// Polls of the whole stack ([`PeerState::poll`]).
    pub full_polls: u64,
    /// UDP datagrams dropped on a full receive queue.
    pub udp_dropped: u64,
}

impl Peer {
    /// The status of this peer, whose static key is `public_key`.
    pub fn status(&self, public_key: PublicKey) -> PeerStatus {
        let mut st = self.lock();
        let (since_handshake, tx_bytes, rx_bytes, _, _) = st.nic.tunn.stats();
        PeerStatus {
            public_key,
            allowed_ip: self.allowed_ip,
            endpoint: st.nic.endpoint,
            stream: st.nic.stream().map(|s| s.link().remote),
            since_handshake,
            since_rx: st.stats.last_rx.map(|t| t.elapsed()),
            since_udp_rx: st.stats.last_udp_rx.map(|t| t.elapsed()),
            tx_bytes,
            rx_bytes,
            tx_packets: st.nic.transmitted,
            tx_udp_sends: st.nic.udp_sends,
            tx_deferred_flushes: st.nic.deferred_flushes,
            tx_retransmits: self.counters.tcp_retransmits(),
            rx_on_arrival: st.stats.on_arrival,
            full_polls: st.stats.full_polls,
            socket_slots: st.sockets.slots(),
            udp_dropped: st.stats.udp_dropped,
        }
    }
}
