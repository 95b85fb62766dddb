//! One WireGuard peer: its noise session and its own userspace TCP/IP stack, driven by one task.
//!
//! Every peer has a separate smoltcp interface behind its own lock, so Agents served by one
//! Gateway (or Gateways serving one Agent) never contend with each other: there is no device-wide
//! lock or poll loop on the data path. Streams touch their peer's lock only for the duration of a
//! buffer copy; a stream's write to an idle connection, and a single datagram arriving while the
//! stack is free ([`receive`]), run the stack from their own task instead of waking the driver.
//!
//! A peer's state ([`PeerState`]) is grouped by concern, one file each:
//! - [`ports`]: listening sockets per served port, and local ports of outgoing connections;
//! - [`connections`]: established connections by port pair, and sockets nobody owns any more;
//! - [`timers`]: when to handshake (initiator, retries, keepalive silence);
//! - [`status`]: what arrived and when, for [`PeerStatus`];
//! - [`counters`]: bytes, last handshake and path, read without the lock ([`PeerStats`]).
//!
//! [`stack`] runs the TCP/IP stack, [`driver`] is the peer's task, and a peer's packets travel
//! over UDP or over a stream when UDP is blocked: see [`path`].

mod connections;
mod counters;
mod driver;
mod path;
mod ports;
mod receive;
mod stack;
mod status;
mod timers;

pub(crate) use counters::Counters;
pub use counters::{PeerStats, Transport, REJECT_AFTER_TIME};
pub(crate) use driver::drive;
pub(crate) use path::{Source, StreamPath};
pub use status::PeerStatus;

use crate::datagram::{DatagramTx, PeerPorts};
use crate::device::Shared;
use crate::nic::Nic;
use crate::stream::TunnelStream;
use boringtun::noise::Tunn;
use connections::Connections;
use ports::{Listeners, Ports};
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr};
use status::RxStats;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex, MutexGuard};
use timers::Handshake;
use tokio::sync::Notify;
use tokio::time::Instant;

/// Ceiling on TCP sockets per peer (streams, listeners and closing ones together).
const MAX_SOCKETS: usize = 16_384;

/// A datagram from the network, routed to this peer by the device's receive loop.
pub(crate) struct Inbound {
    pub src: Source,
    /// One datagram, or a GRO burst of datagrams of `segment` bytes (the last may be shorter).
    pub data: Vec<u8>,
    pub segment: usize,
}

pub(crate) struct Peer {
    pub allowed_ip: Ipv4Addr,
    state: Mutex<PeerState>,
    /// Wakes the driver: a stream queued data or freed receive window.
    pub wake: Notify,
    /// Asks the driver to send what connections' tasks left in the NIC's batch, once the
    /// thread has run every task that was ready (see [`crate::nic::Nic::flush_soon`]).
    pub flush: Notify,
    /// Datagrams queued for the driver and not yet handled: while there are any, a datagram
    /// handled on arrival would overtake them.
    queued: AtomicUsize,
    /// What [`crate::Device::peer_stats`] reads without taking `state`'s lock (the NIC shares it).
    pub counters: Arc<Counters>,
    shared: Arc<Shared>,
}

/// Everything behind a peer's lock: the NIC and the stack on it, and the state around them,
/// grouped by concern.
pub(crate) struct PeerState {
    pub nic: Nic,
    iface: Interface,
    pub sockets: SocketSet<'static>,
    listeners: Listeners,
    ports: Ports,
    connections: Connections,
    /// Local UDP ports of flows to this peer (see [`crate::Device::connect_udp`]).
    pub udp: PeerPorts,
    handshake: Handshake,
    stats: RxStats,
    /// Scratch buffer for decrypted packets and handshake messages.
    decap: Vec<u8>,
    /// When the driver task next polls the stack on its own (its timer); a stream that polls the
    /// stack itself wakes the driver only when it needs polling sooner.
    driver_wakes_at: Instant,
    pub closed: bool,
}

impl Peer {
    pub fn new(
        shared: Arc<Shared>,
        allowed_ip: Ipv4Addr,
        tunn: Tunn,
        endpoint: Option<SocketAddr>,
        keepalive: Option<u16>,
    ) -> Arc<Self> {
        let counters = Arc::new(Counters::new(endpoint.is_some()));
        let mut nic = Nic::new(tunn, endpoint, shared.udp.clone(), counters.clone());
        if !shared.pacing {
            nic.pacer.disable();
        }
        let mut config = Config::new(HardwareAddress::Ip);
        config.random_seed = rand::random();
        let mut iface = Interface::new(config, &mut nic, shared.now());
        iface.update_ip_addrs(|addrs| {
            let _ = addrs.push(IpCidr::new(IpAddress::Ipv4(shared.address), 32));
        });
        // The stack talks to exactly one host: the peer. Route everything to it.
        let _ = iface.routes_mut().add_default_ipv4_route(allowed_ip);
        Arc::new(Self {
            allowed_ip,
            wake: Notify::new(),
            flush: Notify::new(),
            queued: AtomicUsize::new(0),
            counters,
            shared,
            state: Mutex::new(PeerState {
                nic,
                iface,
                sockets: SocketSet::new(Vec::new()),
                listeners: Listeners::default(),
                ports: Ports::new(),
                connections: Connections::default(),
                udp: PeerPorts::default(),
                handshake: Handshake::new(keepalive),
                stats: RxStats::default(),
                decap: vec![0; 65536],
                driver_wakes_at: Instant::now(),
                closed: false,
            }),
        })
    }

    pub fn lock(&self) -> MutexGuard<'_, PeerState> {
        // A panic while holding the lock would be a bug in smoltcp or here; keep serving the
        // other streams rather than poisoning the whole peer.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Opens a TCP connection to `dst` through this peer; the caller awaits establishment.
    pub fn open(self: &Arc<Self>, dst: SocketAddrV4) -> io::Result<TunnelStream> {
        let mut st = self.lock();
        st.check_usable(self.allowed_ip)?;
        if st.sockets.len() >= MAX_SOCKETS {
            return Err(io::Error::other(
                "too many connections through this WireGuard peer",
            ));
        }
        let port = st.ports.alloc()?;
        let mut socket = self.shared.new_socket();
        let PeerState { iface, .. } = &mut *st;
        socket
            .connect(
                iface.context(),
                (IpAddress::Ipv4(*dst.ip()), dst.port()),
                port,
            )
            .map_err(|e| io::Error::other(format!("connect: {e}")))?;
        let handle = st.sockets.add(socket);
        st.ports.bind(handle, port);
        st.connections.add((port, dst.port()), handle);
        // The SYN leaves now, from this task, as a stream's data does: waking the driver for
        // it cost a thread hand-off and a poll of every socket per new connection.
        st.send_from_stream(self, handle);
        drop(st);
        Ok(TunnelStream::new(
            self.clone(),
            handle,
            SocketAddrV4::new(self.shared.address, port),
            dst,
        ))
    }

    /// Registers a UDP flow to this peer: a fresh local port whose datagrams go to `tx`.
    /// Refused while the peer has no path, so the caller can pick another.
    pub fn bind_udp_flow(&self, tx: DatagramTx) -> io::Result<u16> {
        let mut st = self.lock();
        st.check_usable(self.allowed_ip)?;
        st.udp.add(tx)
    }

    /// Sends one UDP datagram from `local` to `to` through this peer, now.
    pub fn send_udp(
        &self,
        local: SocketAddrV4,
        to: SocketAddrV4,
        payload: &[u8],
    ) -> io::Result<()> {
        let mut st = self.lock();
        st.check_usable(self.allowed_ip)?;
        st.nic.send_datagram_to(local, to, payload);
        Ok(())
    }

    /// Sends a handshake initiation now (the initiating side does this when a peer appears).
    pub fn initiate_handshake(&self) {
        self.lock().initiate();
    }

    /// Points the peer at a new endpoint (from configuration).
    pub fn set_endpoint(&self, endpoint: SocketAddr) {
        self.lock().nic.set_endpoint(endpoint);
    }

    /// Aborts every connection; streams see EOF or a broken pipe. Used when the peer is removed.
    pub fn close(self: &Arc<Self>) {
        let mut st = self.lock();
        st.closed = true;
        st.nic.set_stream(None);
        for (_, socket) in st.sockets.iter_mut() {
            #[allow(irrefutable_let_patterns)] // only TCP sockets are compiled in
            if let smoltcp::socket::Socket::Tcp(s) = socket {
                s.abort();
            }
        }
        st.poll(self);
    }
}

impl PeerState {
    /// Whether traffic can go to the peer: not removed, and with a path (UDP or a stream).
    fn check_usable(&mut self, peer: Ipv4Addr) -> io::Result<()> {
        if self.closed {
            return Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "WireGuard peer removed",
            ));
        }
        if !self.nic.has_path() {
            return Err(io::Error::new(
                io::ErrorKind::NotConnected,
                format!("WireGuard peer {peer} has not connected yet (no endpoint known)"),
            ));
        }
        Ok(())
    }

    /// Hands a dropped stream's socket over to be freed once it has closed.
    pub fn orphan(&mut self, handle: SocketHandle) {
        self.connections.orphan(handle);
    }

    /// Gives back the memory a burst of connections left in the socket table and the maps
    /// beside it, once they are mostly empty again.
    fn trim(&mut self) {
        self.sockets.trim();
        self.ports.trim();
        self.connections.trim();
    }
}
