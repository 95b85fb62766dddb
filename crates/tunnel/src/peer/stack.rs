//! Running a peer's TCP/IP stack: a full poll (the driver's), one socket's egress (a stream's
//! write), or the packets of one connection (a datagram handled on arrival); then handing
//! established inbound connections to the acceptor and freeing sockets nobody owns.

use super::{Peer, PeerState};
use crate::stream::TunnelStream;
use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp;
use smoltcp::wire::IpAddress;
use std::net::SocketAddrV4;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Packets the stack may send per poll before the task yields to others; four GSO sends.
const TX_BATCH: u64 = 256;

/// What one run of the stack covers.
#[derive(Clone, Copy)]
pub(super) enum Pass {
    /// Received packets, then every socket's egress.
    Everything,
    /// One socket's egress.
    Socket(SocketHandle),
    /// Received packets that all belong to established connections, then the egress of one of
    /// them (the others' follow as [`Pass::Egress`]).
    Received(SocketHandle),
    /// One egress pass of one socket, after received packets for it.
    Egress(SocketHandle),
    /// One received packet of no established connection (a SYN, a SYN-ACK, the last ACK of a
    /// handshake, a reset), then the egress of the socket that took it, if one did.
    Handshake,
}

impl PeerState {
    /// Runs the TCP/IP stack, then hands established connections to the acceptor and frees
    /// sockets nobody owns any more. Returns how long until the stack needs polling again.
    pub fn poll(&mut self, peer: &Arc<Peer>) -> Option<Duration> {
        self.stats.full_polls += 1;
        let _ = self.run_stack(peer, Pass::Everything);
        self.listeners.end_batch();
        self.hand_over_accepted(peer);
        self.connections
            .collect_orphans(&mut self.sockets, &mut self.ports);
        let Self { iface, sockets, .. } = self;
        iface
            .poll_delay(peer.shared.now(), sockets)
            .map(|d| Duration::from_micros(d.total_micros()))
    }

    /// Sends from a stream's task, right after it queued data on an idle socket: a request or a
    /// response leaves without waking the driver task (a thread hand-off per message). Only
    /// this socket's egress: the driver has already handed every received packet to the stack,
    /// and other sockets' ACKs and timers are the driver's (asking each of them costs a walk
    /// over every connection per message).
    pub fn send_from_stream(&mut self, peer: &Arc<Peer>, handle: SocketHandle) {
        let _ = self.run_stack(peer, Pass::Socket(handle));
        self.wake_driver_for(peer, handle);
    }

    /// Wakes the driver if the socket `handle`, just run on its own, needs polling before the
    /// driver wakes by itself: the driver re-reads every timer when it wakes, and only this
    /// socket's can have moved since. (A retransmission or a delayed ACK that it armed is
    /// rarely sooner; waking the driver regardless cost a poll of every socket.)
    pub(super) fn wake_driver_for(&mut self, peer: &Peer, handle: SocketHandle) {
        let now = peer.shared.now();
        let Some(at) = self.iface.socket_poll_at(now, &self.sockets, handle) else {
            return;
        };
        let micros = u64::try_from(at.total_micros() - now.total_micros()).unwrap_or(0);
        if Instant::now() + Duration::from_micros(micros) < self.driver_wakes_at {
            peer.wake.notify_one();
        }
    }

    /// Runs the one received packet of a connection being set up (see [`Pass::Handshake`]) on
    /// the receiving task, then hands over a connection it established. A full poll here walked
    /// every socket twice per connection (the SYN and the handshake's last ACK, on each side),
    /// which made opening connections O(sockets): the bulk of the cost at 10,000 connections.
    pub fn run_handshake(&mut self, peer: &Arc<Peer>) {
        let _ = self.run_stack(peer, Pass::Handshake);
        self.listeners.end_batch();
        let Some(handle) = self.iface.last_tcp_socket() else {
            return;
        };
        if let Some(established) = self.listeners.take_if_established(&self.sockets, handle) {
            self.hand_over(peer, established);
        }
        self.wake_driver_for(peer, handle);
    }

    /// One pass of the stack, then more egress passes while full-size segments leave: smoltcp
    /// sends at most one segment per socket per pass, so a window's worth goes out in GSO
    /// batches rather than one datagram per wake-up. A pass that sent only short segments (or
    /// none) means every socket has sent all it may.
    ///
    /// After received packets ([`Pass::Received`]) there is a single egress pass: bulk data
    /// that an ACK lets out is left to the driver, which sends it in batches as before (sending
    /// a window's worth on the receiving task, ACK by ACK, made bursts that a wireguard-go peer
    /// dropped). Returns true when full-size segments left, so more may be waiting.
    pub(super) fn run_stack(&mut self, peer: &Arc<Peer>, pass: Pass) -> bool {
        let now = peer.shared.now();
        let full_before = self.nic.transmitted_full;
        let full_in_before = self.nic.received_full;
        let Self {
            iface,
            nic,
            sockets,
            ..
        } = self;
        // smoltcp has panicked on some packet sequences (an underflow in its window-update check
        // when a zero-window probe lands in buffer space lost to window-scale rounding). Whatever
        // the cause, a panic here must cost this peer's connections, not the whole tunnel.
        let polled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let start = nic.transmitted;
            let mut full = nic.transmitted_full;
            match pass {
                Pass::Received(_) | Pass::Handshake => {
                    while iface.poll_ingress_single(now, nic, sockets)
                        != smoltcp::iface::PollIngressSingleResult::None
                    {}
                    let handle = match pass {
                        Pass::Received(handle) => Some(handle),
                        _ => iface.last_tcp_socket(),
                    };
                    if let Some(handle) = handle {
                        iface.poll_egress_socket(now, nic, sockets, handle);
                    }
                    return; // one pass: the rest of an opened window is the driver's
                }
                Pass::Egress(handle) => {
                    iface.poll_egress_socket(now, nic, sockets, handle);
                    return;
                }
                Pass::Everything => {
                    iface.poll(now, nic, sockets);
                }
                Pass::Socket(handle) => {
                    iface.poll_egress_socket(now, nic, sockets, handle);
                }
            }
            while nic.transmitted_full != full && nic.transmitted.wrapping_sub(start) < TX_BATCH {
                full = nic.transmitted_full;
                match pass {
                    Pass::Socket(handle) => iface.poll_egress_socket(now, nic, sockets, handle),
                    _ => iface.poll_egress(now, nic, sockets),
                };
            }
        }));
        if polled.is_err() {
            tracing::error!(peer = %peer.allowed_ip, "the userspace TCP/IP stack failed on a packet; resetting this peer's connections");
            for (_, socket) in sockets.iter_mut() {
                #[allow(irrefutable_let_patterns)] // only TCP sockets are compiled in
                if let smoltcp::socket::Socket::Tcp(s) = socket {
                    s.abort();
                }
            }
        }
        let bulk = nic.transmitted_full != full_before || nic.received_full != full_in_before;
        match pass {
            // The driver's poll is a batch of its own: it leaves at once. So do bulk data and
            // the ACKs of bulk data, which the sender's window waits for: behind the other
            // ready tasks (a TLS stream encrypting what just arrived) they came later, and one
            // download moved 4 % less, four 8 % less.
            Pass::Everything => nic.flush(),
            _ if bulk => nic.flush(),
            // A long burst of messages leaves in parts: the chain behind the peer starts on
            // the first ones instead of waiting for this thread to get through all of them.
            // HTTP/1.1 through the Gateway, four alternating pairs of runs: 7-33 % more
            // requests a second, 7-21 % less CPU per request (docs/performance.md).
            _ if nic.queued_datagrams() >= crate::nic::EARLY_FLUSH_DATAGRAMS => nic.flush(),
            // A message sent or answered by a connection's own task: other connections' tasks
            // that run before this thread has nothing left to do add theirs to the same send.
            _ => {
                if nic.flush_soon() {
                    peer.flush.notify_one();
                }
            }
        }
        nic.transmitted_full != full_before
    }

    fn hand_over_accepted(&mut self, peer: &Arc<Peer>) {
        let established = self
            .listeners
            .take_established(&mut self.sockets, &peer.shared);
        for handle in established {
            self.hand_over(peer, handle);
        }
    }

    /// Hands a connection that got past the handshake to the acceptor, as a stream.
    fn hand_over(&mut self, peer: &Arc<Peer>, handle: SocketHandle) {
        let socket = self.sockets.get::<tcp::Socket>(handle);
        let (Some(local), Some(remote)) = (socket.local_endpoint(), socket.remote_endpoint())
        else {
            self.orphan(handle);
            return;
        };
        self.connections.add((local.port, remote.port), handle);
        let stream = TunnelStream::new(peer.clone(), handle, v4(local), v4(remote));
        if let Err(e) = peer.shared.accepted(stream) {
            // No one to accept it: refuse the connection. The stream's Drop would take the
            // lock we hold, so take the handle back out of it first.
            let handle = e.into_handle();
            self.sockets.get_mut::<tcp::Socket>(handle).abort();
            self.orphan(handle);
        }
    }
}

fn v4(endpoint: smoltcp::wire::IpEndpoint) -> SocketAddrV4 {
    match endpoint.addr {
        IpAddress::Ipv4(ip) => SocketAddrV4::new(ip, endpoint.port),
    }
}
