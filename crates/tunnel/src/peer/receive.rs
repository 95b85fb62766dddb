//! A peer's receive side: datagrams from the network into its TCP/IP stack, either on the
//! task that received them (a datagram, or a GRO burst of them, while the stack is free) or
//! queued for the peer's driver; new connections get a listening socket; packets of
//! established connections are matched to their socket by port.

use super::stack::Pass;
use super::{Inbound, Peer, PeerState, Source};
use crate::datagram::UdpPacket;
use boringtun::noise::TunnResult;
use smoltcp::iface::SocketHandle;
use smoltcp::wire::{IpAddress, IpEndpoint};
use std::net::Ipv4Addr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, TryLockError};
use tokio::time::Instant;

impl Peer {
    /// Handles a datagram, or a GRO burst of `segment`-byte datagrams, on the receiving task if
    /// that can be done at once: nothing is queued for the driver (it would be overtaken) and no
    /// other task holds the stack. A request or a response then reaches its stream without a
    /// hand-off to the driver task (a wake-up, a copy and a queue per datagram). False means the
    /// caller queues it instead.
    pub fn receive_now(self: &Arc<Self>, src: &Source, data: &[u8], segment: usize) -> bool {
        let mut st = match self.state.try_lock() {
            Ok(st) => st,
            Err(TryLockError::Poisoned(e)) => e.into_inner(),
            Err(TryLockError::WouldBlock) => return false,
        };
        if self.queued.load(Ordering::Acquire) != 0 {
            return false;
        }
        st.stats.on_arrival += 1;
        let mut arrived = Arrived::default();
        for datagram in data.chunks(segment.max(1)) {
            arrived.add(st.handle_datagram(self, src, datagram));
        }
        match arrived {
            // UDP datagrams, handed to their flows: nothing for the TCP/IP stack to do.
            Arrived {
                stack: 0,
                other: false,
                ..
            } => {}
            // Packets of established connections: only those sockets can have anything new to
            // send. The driver sends the rest of a window that an ACK opened (one pass here
            // sends one segment per socket).
            Arrived {
                first: Some(first),
                more,
                stack,
                unestablished: 0,
                other: false,
            } if st.nic.rx.len() == stack => {
                let mut full = st.run_stack(self, Pass::Received(first));
                for &socket in &more {
                    full |= st.run_stack(self, Pass::Egress(socket));
                }
                if full {
                    self.wake.notify_one();
                } else {
                    for socket in std::iter::once(first).chain(more) {
                        st.wake_driver_for(self, socket);
                    }
                }
            }
            // A TCP packet of no established connection (opening one, most often): the
            // socket that takes it answers, no other socket is asked.
            Arrived {
                stack: 1,
                unestablished: 1,
                other: false,
                ..
            } if st.nic.rx.len() == 1 => st.run_handshake(self),
            // A WireGuard handshake or keepalive, packets behind others: the whole stack.
            _ => {
                let delay = st.poll(self);
                // The driver sleeps until the stack's next timer as it last saw it; wake it
                // if this datagram armed an earlier one.
                if delay.is_some_and(|d| Instant::now() + d < st.driver_wakes_at) {
                    self.wake.notify_one();
                }
            }
        }
        true
    }

    /// Counts a datagram queued for the driver (see [`Peer::receive_now`]); `handled` undoes it.
    pub fn queued(&self) {
        self.queued.fetch_add(1, Ordering::AcqRel);
    }

    pub fn handled(&self) {
        self.queued.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What a datagram brought, as far as the TCP/IP stack is concerned.
enum Arrival {
    /// A TCP/IP packet, queued for the stack; the established connection it is for, if known.
    Stack(Option<SocketHandle>),
    /// A UDP datagram through the tunnel, delivered to its flow or dropped.
    Delivered,
    /// Anything else: a WireGuard handshake message or keepalive, a packet that did not
    /// decrypt, or one the stack's full queue refused.
    Other,
}

/// What a datagram or a burst brought, as far as the TCP/IP stack is concerned.
#[derive(Default)]
struct Arrived {
    /// Packets queued for the stack.
    stack: usize,
    /// The established connection the first of them is for, and any others (a burst).
    first: Option<SocketHandle>,
    more: Vec<SocketHandle>,
    /// Packets of no established connection.
    unestablished: usize,
    /// Anything else ([`Arrival::Other`]).
    other: bool,
}

impl Arrived {
    fn add(&mut self, arrival: Arrival) {
        match arrival {
            Arrival::Delivered => {}
            Arrival::Other => self.other = true,
            Arrival::Stack(socket) => {
                self.stack += 1;
                match socket {
                    None => self.unestablished += 1,
                    Some(s) if self.first.is_none() => self.first = Some(s),
                    Some(s) if self.first == Some(s) || self.more.contains(&s) => {}
                    // At most a burst's datagrams (64): a short list.
                    Some(s) => self.more.push(s),
                }
            }
        }
    }
}

impl PeerState {
    pub(super) fn handle_inbound(&mut self, peer: &Peer, inbound: &Inbound) {
        for datagram in inbound.data.chunks(inbound.segment.max(1)) {
            let _ = self.handle_datagram(peer, &inbound.src, datagram);
        }
    }

    /// Decrypts one datagram; hands the IP packet to the stack or a UDP datagram to its flow,
    /// or answers handshakes.
    fn handle_datagram(&mut self, peer: &Peer, src: &Source, datagram: &[u8]) -> Arrival {
        let kind = datagram.first().copied().unwrap_or(0);
        let Self { nic, decap, .. } = self;
        let mut tunnel_packet = None;
        let mut authenticated = false;
        let mut handshake_done = false;
        match nic.tunn.decapsulate(Some(src.ip()), datagram, decap) {
            TunnResult::WriteToNetwork(reply) => {
                // A handshake response (92 bytes) proves the initiator holds the peer's key, so
                // its source address is where the peer is now (roaming). A cookie reply does not.
                if kind == 1 && reply.len() == 92 || kind == 2 {
                    authenticated = true;
                }
                nic.reply(src, reply);
                handshake_done = true;
            }
            TunnResult::WriteToTunnelV4(packet, inner_src) => {
                authenticated = true;
                if inner_src == peer.allowed_ip && !packet.is_empty() {
                    tunnel_packet = Some(packet.len());
                }
            }
            TunnResult::WriteToTunnelV6(..) | TunnResult::Done => {
                // `Done` after a handshake response (2), or for an authenticated keepalive (4):
                // a keepalive is often the only packet a roaming peer sends from its new address.
                if kind == 2 || kind == 4 {
                    authenticated = true;
                }
            }
            TunnResult::Err(e) => {
                tracing::trace!(error = ?e, src = ?src, "dropped WireGuard packet")
            }
        }
        if authenticated {
            self.nic.received(datagram.len());
            // An initiation we answered, or the response to ours: a session was established.
            if kind == 1 || kind == 2 {
                self.nic.handshaken();
            }
            self.stats.last_rx = Some(Instant::now());
            self.follow_path(peer, src, kind == 2);
        }
        if handshake_done {
            // Packets queued while the handshake was pending go out now, on the current path.
            let Self { nic, decap, .. } = self;
            while let TunnResult::WriteToNetwork(d) = nic.tunn.decapsulate(None, &[], decap) {
                nic.send_datagram(d);
            }
        }
        let Some(len) = tunnel_packet else {
            return Arrival::Other;
        };
        if let Some(udp) = UdpPacket::parse(&self.decap[..len], peer.shared.address) {
            self.deliver_udp(peer, udp);
            return Arrival::Delivered;
        }
        let segment = Segment::parse(&self.decap[..len], peer.shared.address);
        let mut connection = None;
        if let Some(segment) = segment {
            if segment.opens() {
                // Only packets from the peer's own address get here (`tunnel_packet`).
                let remote = IpEndpoint::new(IpAddress::Ipv4(peer.allowed_ip), segment.remote_port);
                self.listeners
                    .prepare(&mut self.sockets, &peer.shared, segment.local_port, remote);
            } else if !segment.is_syn() {
                connection = self
                    .connections
                    .get((segment.local_port, segment.remote_port));
            }
        }
        if self.nic.push_rx(&self.decap[..len]) {
            Arrival::Stack(connection)
        } else {
            Arrival::Other
        }
    }
}

impl PeerState {
    /// Hands a UDP datagram to the flow or the bound port it is for; drops it when there is
    /// none, or when its reader has fallen behind (a full queue), as a kernel socket would.
    fn deliver_udp(&mut self, peer: &Peer, udp: UdpPacket) {
        let tx = match self.udp.get(udp.dst_port) {
            Some(tx) => Some(tx.clone()),
            None => peer.shared.udp_port(udp.dst_port),
        };
        let Some(tx) = tx else {
            tracing::trace!(port = udp.dst_port, from = %udp.src, "UDP datagram for no bound port; dropped");
            return;
        };
        let payload = bytes::Bytes::copy_from_slice(&self.decap[udp.payload]);
        if tx.try_send((payload, udp.src)).is_err() {
            self.stats.udp_dropped += 1;
        }
    }
}

/// What routing needs of a TCP packet addressed to this node: its ports and flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Segment {
    local_port: u16,
    remote_port: u16,
    flags: u8,
}

impl Segment {
    /// The TCP header of `packet` if it is an IPv4 TCP packet addressed to `local`.
    fn parse(packet: &[u8], local: Ipv4Addr) -> Option<Segment> {
        let ihl = usize::from(packet.first()? & 0x0f) * 4;
        if packet.first()? >> 4 != 4 || ihl < 20 || *packet.get(9)? != 6 {
            return None;
        }
        if packet.get(16..20)? != local.octets() {
            return None;
        }
        let tcp = packet.get(ihl..ihl + 14)?;
        Some(Segment {
            local_port: u16::from_be_bytes([tcp[2], tcp[3]]),
            remote_port: u16::from_be_bytes([tcp[0], tcp[1]]),
            flags: tcp[13],
        })
    }

    /// A SYN without ACK: it opens a connection to `local_port`.
    fn opens(&self) -> bool {
        self.flags & 0x12 == 0x02
    }

    /// Any SYN (a SYN-ACK too): it starts a connection rather than belonging to one.
    fn is_syn(&self) -> bool {
        self.flags & 0x02 != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp_packet(dst: [u8; 4], flags: u8) -> Vec<u8> {
        let mut p = vec![0u8; 40];
        p[0] = 0x45;
        p[9] = 6;
        p[16..20].copy_from_slice(&dst);
        p[20 + 2..20 + 4].copy_from_slice(&8080u16.to_be_bytes());
        p[20 + 13] = flags;
        p
    }

    /// The port a packet opens a connection to, and the (local, remote) ports of a packet
    /// that belongs to one, as `handle_datagram` reads them.
    fn syn_port(packet: &[u8], us: Ipv4Addr) -> Option<u16> {
        Segment::parse(packet, us)
            .filter(Segment::opens)
            .map(|s| s.local_port)
    }

    fn tcp_ports(packet: &[u8], us: Ipv4Addr) -> Option<(u16, u16)> {
        Segment::parse(packet, us)
            .filter(|s| !s.is_syn())
            .map(|s| (s.local_port, s.remote_port))
    }

    #[test]
    fn finds_the_ports_of_segments_to_us_but_not_of_syns() {
        let us = Ipv4Addr::new(10, 77, 0, 2);
        let mut p = tcp_packet(us.octets(), 0x10);
        p[20..22].copy_from_slice(&51000u16.to_be_bytes());
        assert_eq!(tcp_ports(&p, us), Some((8080, 51000)), "ACK");
        p[20 + 13] = 0x18;
        assert_eq!(tcp_ports(&p, us), Some((8080, 51000)), "PSH+ACK");
        p[20 + 13] = 0x02;
        assert_eq!(tcp_ports(&p, us), None, "SYN");
        p[20 + 13] = 0x12;
        assert_eq!(tcp_ports(&p, us), None, "SYN-ACK");
        assert_eq!(
            tcp_ports(&tcp_packet([10, 77, 0, 3], 0x10), us),
            None,
            "other host"
        );
        for n in 0..40 {
            let _ = tcp_ports(&tcp_packet(us.octets(), 0x10)[..n], us);
        }
    }

    #[test]
    fn recognises_only_syns_to_us() {
        let us = Ipv4Addr::new(10, 77, 0, 2);
        assert_eq!(syn_port(&tcp_packet(us.octets(), 0x02), us), Some(8080));
        assert_eq!(
            syn_port(&tcp_packet(us.octets(), 0x12), us),
            None,
            "SYN-ACK"
        );
        assert_eq!(syn_port(&tcp_packet(us.octets(), 0x10), us), None, "ACK");
        assert_eq!(
            syn_port(&tcp_packet([10, 77, 0, 3], 0x02), us),
            None,
            "other host"
        );
        let mut udp = tcp_packet(us.octets(), 0x02);
        udp[9] = 17;
        assert_eq!(syn_port(&udp, us), None);
        for n in 0..40 {
            let _ = syn_port(&tcp_packet(us.octets(), 0x02)[..n], us);
        }
    }
}
