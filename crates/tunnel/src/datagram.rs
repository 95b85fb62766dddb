//! UDP through the tunnel, as datagrams: each one crosses WireGuard as one IPv4/UDP packet,
//! exactly as a kernel WireGuard interface would carry it, so a lost datagram costs only itself
//! (no head-of-line blocking behind a TCP stream) and a wireguard-go peer sees plain UDP.
//!
//! The TCP/IP stack (smoltcp) is not involved: a UDP packet has no state to keep, so the
//! receive path recognises one addressed to us after decryption and hands its payload to the
//! [`TunnelUdp`] bound to its port, and a send writes the two headers in front of the payload
//! and seals it straight away. That is a few dozen lines against smoltcp's UDP sockets, which
//! would add per-socket buffers, polling and wakers for no gain.
//!
//! Two ways to get a [`TunnelUdp`]:
//! - [`crate::Device::bind_udp`]: a port of this node that every peer may send to (an Agent's
//!   `udp` service);
//! - [`crate::Device::connect_udp`]: a fresh local port talking to one peer's address and
//!   port (a Gateway's flow for one client), registered on that peer only.
//!
//! Datagrams larger than [`MAX_UDP_PAYLOAD`] do not fit one tunnel packet and are refused
//! (IP fragmentation inside the tunnel is not supported); fragments that arrive are dropped.
//! Each receiver has a bounded queue: when its reader is slower than its senders, datagrams
//! are dropped, as a kernel socket buffer would.

use crate::device::Inner;
use crate::nic::TUNNEL_MTU;
use crate::peer::Peer;
use bytes::Bytes;
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::{Arc, Weak};
use tokio::sync::mpsc;

/// The largest UDP payload one tunnel packet carries: the MTU less the IPv4 and UDP headers.
pub const MAX_UDP_PAYLOAD: usize = TUNNEL_MTU - 28;

/// Datagrams waiting for one [`TunnelUdp::recv`]; more are dropped.
const RECV_QUEUE: usize = 512;

/// A received datagram: its payload and who sent it.
pub type Datagram = (Bytes, SocketAddrV4);

pub(crate) type DatagramTx = mpsc::Sender<Datagram>;

/// A UDP port of this node inside the tunnel. Dropping it frees the port.
pub struct TunnelUdp {
    rx: mpsc::Receiver<Datagram>,
    sender: UdpSender,
}

/// The sending half of a [`TunnelUdp`]; cheap to clone, usable from any task.
#[derive(Clone)]
pub struct UdpSender {
    local: SocketAddrV4,
    route: Route,
    _binding: Arc<Binding>,
}

/// Where a sender's datagrams go.
#[derive(Clone)]
pub(crate) enum Route {
    /// Through the peer whose address the destination is (looked up per datagram).
    AnyPeer(Weak<Inner>),
    /// Through this one peer.
    Peer(Arc<Peer>),
}

/// Unregisters the port when the last half of a [`TunnelUdp`] goes.
struct Binding {
    port: u16,
    on: Route,
    tx: DatagramTx,
}

impl Drop for Binding {
    fn drop(&mut self) {
        match &self.on {
            Route::AnyPeer(device) => {
                if let Some(device) = device.upgrade() {
                    device.shared.unbind_udp(self.port, &self.tx);
                }
            }
            Route::Peer(peer) => peer.lock().udp.remove(self.port),
        }
    }
}

impl TunnelUdp {
    pub(crate) fn new(
        local: SocketAddrV4,
        (tx, rx): (DatagramTx, mpsc::Receiver<Datagram>),
        route: Route,
    ) -> TunnelUdp {
        let binding = Arc::new(Binding {
            port: local.port(),
            on: route.clone(),
            tx,
        });
        TunnelUdp {
            rx,
            sender: UdpSender {
                local,
                route,
                _binding: binding,
            },
        }
    }

    pub(crate) fn queue() -> (DatagramTx, mpsc::Receiver<Datagram>) {
        mpsc::channel(RECV_QUEUE)
    }

    pub(crate) fn any_peer(device: &Arc<Inner>) -> Route {
        Route::AnyPeer(Arc::downgrade(device))
    }

    pub(crate) fn through(peer: Arc<Peer>) -> Route {
        Route::Peer(peer)
    }

    /// The next datagram, waiting while none comes (a [`TunnelUdp`] outlives neither its
    /// device nor its peer in practice: its owner drops it when the tunnel goes).
    pub async fn recv(&mut self) -> Option<Datagram> {
        self.rx.recv().await
    }

    pub fn local_addr(&self) -> SocketAddrV4 {
        self.sender.local
    }

    /// A sending half, for another task.
    pub fn sender(&self) -> UdpSender {
        self.sender.clone()
    }

    /// See [`UdpSender::send_to`].
    pub fn send_to(&self, payload: &[u8], to: SocketAddrV4) -> io::Result<()> {
        self.sender.send_to(payload, to)
    }
}

impl UdpSender {
    /// Sends one datagram to `to` through the tunnel, now. Errors: too large for one tunnel
    /// packet, no peer with that address, or the peer has no path yet.
    pub fn send_to(&self, payload: &[u8], to: SocketAddrV4) -> io::Result<()> {
        if payload.len() > MAX_UDP_PAYLOAD {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "a {}-byte datagram does not fit one tunnel packet (at most {MAX_UDP_PAYLOAD})",
                    payload.len()
                ),
            ));
        }
        let peer = match &self.route {
            Route::Peer(peer) => peer.clone(),
            Route::AnyPeer(device) => device.upgrade().ok_or_else(gone)?.peer_for(to)?,
        };
        peer.send_udp(self.local, to, payload)
    }
}

fn gone() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "the WireGuard device is gone")
}

/// The UDP ports one peer's flows use (see [`crate::Device::connect_udp`]).
#[derive(Default)]
pub(crate) struct PeerPorts {
    ports: std::collections::HashMap<u16, DatagramTx>,
}

/// Local ports for flows to one peer: the IANA dynamic range.
const FLOW_PORTS: std::ops::RangeInclusive<u16> = 49152..=65535;
/// Flows to one peer at most.
const MAX_FLOWS_PER_PEER: usize = 16_384;

impl PeerPorts {
    /// A free local port registered for `tx`.
    pub fn add(&mut self, tx: DatagramTx) -> io::Result<u16> {
        if self.ports.len() >= MAX_FLOWS_PER_PEER {
            return Err(io::Error::other(
                "too many UDP flows through this WireGuard peer",
            ));
        }
        let span = u32::from(FLOW_PORTS.end() - FLOW_PORTS.start()) + 1;
        let start = rand::random::<u32>() % span;
        for i in 0..span {
            let port = *FLOW_PORTS.start() + ((start + i) % span) as u16;
            if let std::collections::hash_map::Entry::Vacant(slot) = self.ports.entry(port) {
                slot.insert(tx);
                return Ok(port);
            }
        }
        Err(io::Error::other("no free UDP port toward this peer"))
    }

    pub fn remove(&mut self, port: u16) {
        self.ports.remove(&port);
        if self.ports.capacity() > 64 && self.ports.len() < self.ports.capacity() / 4 {
            self.ports.shrink_to_fit();
        }
    }

    pub fn get(&self, port: u16) -> Option<&DatagramTx> {
        self.ports.get(&port)
    }
}

/// A UDP packet addressed to us: who sent it, the port it is for, and where its payload lies.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct UdpPacket {
    pub src: SocketAddrV4,
    pub dst_port: u16,
    pub payload: std::ops::Range<usize>,
}

impl UdpPacket {
    /// The UDP packet in `packet` if it is an unfragmented IPv4/UDP packet addressed to
    /// `local`. A packet that claims more bytes than it has is `None`.
    pub fn parse(packet: &[u8], local: Ipv4Addr) -> Option<UdpPacket> {
        let first = *packet.first()?;
        let ihl = usize::from(first & 0x0f) * 4;
        if first >> 4 != 4 || ihl < 20 || *packet.get(9)? != 17 {
            return None;
        }
        if packet.get(16..20)? != local.octets() {
            return None;
        }
        // More fragments, or a fragment offset: not a whole datagram.
        let frag = u16::from_be_bytes([*packet.get(6)?, *packet.get(7)?]);
        if frag & 0x3fff != 0 {
            return None;
        }
        let total = usize::from(u16::from_be_bytes([packet[2], packet[3]]));
        if total > packet.len() || total < ihl + 8 {
            return None;
        }
        let udp = &packet[ihl..ihl + 8];
        let udp_len = usize::from(u16::from_be_bytes([udp[4], udp[5]]));
        if udp_len < 8 || ihl + udp_len > total {
            return None;
        }
        let src_ip = Ipv4Addr::new(packet[12], packet[13], packet[14], packet[15]);
        Some(UdpPacket {
            src: SocketAddrV4::new(src_ip, u16::from_be_bytes([udp[0], udp[1]])),
            dst_port: u16::from_be_bytes([udp[2], udp[3]]),
            payload: ihl + 8..ihl + udp_len,
        })
    }
}

/// Writes an IPv4/UDP packet from `src` to `dst` carrying `payload` into `buf`; returns its
/// length. `buf` must hold `28 + payload.len()` bytes.
pub(crate) fn emit(buf: &mut [u8], src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8]) -> usize {
    use smoltcp::phy::ChecksumCapabilities;
    use smoltcp::wire::{IpAddress, IpProtocol, Ipv4Packet, Ipv4Repr, UdpPacket, UdpRepr};
    let len = 28 + payload.len();
    let caps = ChecksumCapabilities::default();
    let ip = Ipv4Repr {
        src_addr: *src.ip(),
        dst_addr: *dst.ip(),
        next_header: IpProtocol::Udp,
        payload_len: 8 + payload.len(),
        hop_limit: 64,
    };
    ip.emit(&mut Ipv4Packet::new_unchecked(&mut buf[..len]), &caps);
    let udp = UdpRepr {
        src_port: src.port(),
        dst_port: dst.port(),
    };
    udp.emit(
        &mut UdpPacket::new_unchecked(&mut buf[20..len]),
        &IpAddress::Ipv4(*src.ip()),
        &IpAddress::Ipv4(*dst.ip()),
        payload.len(),
        |b| b.copy_from_slice(payload),
        &caps,
    );
    len
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_emitted_parses_back_with_valid_checksums() {
        let src = SocketAddrV4::new(Ipv4Addr::new(10, 77, 0, 1), 50000);
        let dst = SocketAddrV4::new(Ipv4Addr::new(10, 77, 0, 2), 53);
        let mut buf = vec![0; TUNNEL_MTU];
        let len = emit(&mut buf, src, dst, b"query");
        assert_eq!(len, 33);
        let ip = smoltcp::wire::Ipv4Packet::new_checked(&buf[..len]).unwrap();
        assert!(ip.verify_checksum());
        let udp = smoltcp::wire::UdpPacket::new_checked(ip.payload()).unwrap();
        assert!(udp.verify_checksum(
            &smoltcp::wire::IpAddress::Ipv4(*src.ip()),
            &smoltcp::wire::IpAddress::Ipv4(*dst.ip())
        ));
        let parsed = UdpPacket::parse(&buf[..len], *dst.ip()).unwrap();
        assert_eq!(parsed.src, src);
        assert_eq!(parsed.dst_port, 53);
        assert_eq!(&buf[parsed.payload], b"query");
        assert_eq!(UdpPacket::parse(&buf[..len], *src.ip()), None, "not for us");
    }

    #[test]
    fn refuses_fragments_truncations_and_other_protocols() {
        let src = SocketAddrV4::new(Ipv4Addr::new(10, 77, 0, 1), 50000);
        let us = Ipv4Addr::new(10, 77, 0, 2);
        let mut buf = vec![0; 64];
        let len = emit(&mut buf, src, SocketAddrV4::new(us, 53), b"0123456789");
        for n in 0..len {
            assert_eq!(UdpPacket::parse(&buf[..n], us), None, "cut at {n}");
        }
        let mut frag = buf[..len].to_vec();
        frag[6] = 0x20; // more fragments
        assert_eq!(UdpPacket::parse(&frag, us), None);
        let mut tcp = buf[..len].to_vec();
        tcp[9] = 6;
        assert_eq!(UdpPacket::parse(&tcp, us), None);
        let mut long = buf[..len].to_vec();
        long[20 + 5] = 200; // UDP length beyond the packet
        assert_eq!(UdpPacket::parse(&long, us), None);
    }

    #[test]
    fn flow_ports_are_distinct_and_bounded() {
        let mut ports = PeerPorts::default();
        let (tx, _rx) = TunnelUdp::queue();
        let a = ports.add(tx.clone()).unwrap();
        let b = ports.add(tx.clone()).unwrap();
        assert_ne!(a, b);
        assert!(FLOW_PORTS.contains(&a) && FLOW_PORTS.contains(&b));
        ports.remove(a);
        assert!(ports.get(a).is_none() && ports.get(b).is_some());
        for _ in 1..MAX_FLOWS_PER_PEER {
            ports.add(tx.clone()).unwrap();
        }
        assert!(ports.add(tx).is_err());
    }
}
