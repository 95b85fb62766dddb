//! The virtual network card between one peer's smoltcp stack and its WireGuard session.
//!
//! Inbound: decrypted IP packets are queued in `rx` and handed to smoltcp on the next poll.
//! Outbound: smoltcp writes an IP packet into a scratch buffer, which is encrypted straight into
//! a second scratch buffer and sent with a non-blocking `send_to`. A full socket buffer drops the
//! packet, exactly as a NIC would; TCP retransmits. No per-packet allocation on the way out.

use boringtun::noise::{Tunn, TunnResult};
use smoltcp::phy::{self, Checksum, ChecksumCapabilities, DeviceCapabilities, Medium};
use smoltcp::time::Instant;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::UdpSocket;

/// MTU inside the tunnel: the WireGuard default, leaving room for IPv6 + UDP + WireGuard headers
/// on a 1500-byte link.
pub const TUNNEL_MTU: usize = 1420;

/// Largest WireGuard datagram we build: an MTU-sized packet plus the 32-byte data overhead, and
/// never below a handshake initiation (148 bytes).
pub const MAX_DATAGRAM: usize = TUNNEL_MTU + 32 + 16;

/// Bound on decrypted packets waiting for smoltcp, so a flood cannot grow memory.
const RX_QUEUE_LIMIT: usize = 4096;

pub(crate) struct Nic {
    pub tunn: Tunn,
    pub endpoint: Option<SocketAddr>,
    pub udp: Arc<UdpSocket>,
    pub rx: VecDeque<Vec<u8>>,
    tx_plain: Vec<u8>,
    tx_sealed: Vec<u8>,
}

impl Nic {
    pub fn new(tunn: Tunn, endpoint: Option<SocketAddr>, udp: Arc<UdpSocket>) -> Self {
        Self {
            tunn,
            endpoint,
            udp,
            rx: VecDeque::new(),
            tx_plain: vec![0; TUNNEL_MTU],
            tx_sealed: vec![0; MAX_DATAGRAM],
        }
    }

    /// Queues a decrypted packet for smoltcp; false when the queue is full (packet dropped).
    pub fn push_rx(&mut self, packet: &[u8]) -> bool {
        if self.rx.len() >= RX_QUEUE_LIMIT {
            return false;
        }
        self.rx.push_back(packet.to_vec());
        true
    }

    /// Sends an already-sealed WireGuard datagram to the peer's current endpoint.
    pub fn send_datagram(udp: &UdpSocket, endpoint: Option<SocketAddr>, datagram: &[u8]) {
        let Some(to) = endpoint else { return };
        if let Err(e) = udp.try_send_to(datagram, to) {
            if e.kind() != std::io::ErrorKind::WouldBlock {
                tracing::debug!(%to, error = %e, "WireGuard send failed");
            }
        }
    }

    /// Encrypts one IP packet (or, with an empty packet, a keepalive) and sends it.
    pub fn seal_and_send(&mut self, len: usize) {
        let Self {
            tunn,
            tx_plain,
            tx_sealed,
            udp,
            endpoint,
            ..
        } = self;
        match tunn.encapsulate(&tx_plain[..len], tx_sealed) {
            TunnResult::WriteToNetwork(d) => Self::send_datagram(udp, *endpoint, d),
            TunnResult::Err(e) => tracing::debug!(error = ?e, "WireGuard encapsulate failed"),
            _ => {}
        }
    }
}

impl phy::Device for Nic {
    type RxToken<'a> = RxToken;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, _now: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        let packet = self.rx.pop_front()?;
        Some((RxToken(packet), TxToken(self)))
    }

    fn transmit(&mut self, _now: Instant) -> Option<Self::TxToken<'_>> {
        Some(TxToken(self))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ip;
        caps.max_transmission_unit = TUNNEL_MTU;
        // WireGuard authenticates every packet (Poly1305), so verifying IP/TCP checksums on
        // receive is redundant work; real peers still need them on what we send.
        let mut checksum = ChecksumCapabilities::default();
        checksum.ipv4 = Checksum::Tx;
        checksum.tcp = Checksum::Tx;
        checksum.udp = Checksum::Tx;
        checksum.icmpv4 = Checksum::Tx;
        caps.checksum = checksum;
        caps
    }
}

pub(crate) struct RxToken(Vec<u8>);

impl phy::RxToken for RxToken {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

pub(crate) struct TxToken<'a>(&'a mut Nic);

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let len = len.min(TUNNEL_MTU);
        let r = f(&mut self.0.tx_plain[..len]);
        self.0.seal_and_send(len);
        r
    }
}
