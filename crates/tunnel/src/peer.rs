//! One WireGuard peer: its noise session and its own userspace TCP/IP stack, driven by one task.
//!
//! Every peer has a separate smoltcp interface behind its own lock, so Agents served by one
//! Gateway (or Gateways serving one Agent) never contend with each other: there is no device-wide
//! lock or poll loop on the data path. Streams touch their peer's lock only for the duration of a
//! buffer copy; a stream's write to an idle connection, and a single datagram arriving while the
//! stack is free ([`receive`]), run the stack from their own task instead of waking the driver.
//!
//! A peer's packets travel over UDP, or over a stream when UDP is blocked: see [`path`].

mod path;
mod receive;

use crate::nic::Nic;
use crate::stream::TunnelStream;
use crate::Shared;
use boringtun::noise::{Tunn, TunnResult};
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr};
use std::collections::{HashMap, HashSet};
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;

/// How often boringtun's timers run (handshake retries, keepalives, session expiry).
const TIMER_TICK: Duration = Duration::from_millis(250);
/// While an initiating peer has no session, its handshake is retried after this delay, doubling
/// up to [`INITIATION_RETRY_MAX`] (boringtun alone waits the protocol's 5 s REKEY_TIMEOUT, which
/// makes a lost first initiation cost 5 s).
const INITIATION_RETRY: Duration = Duration::from_secs(1);
const INITIATION_RETRY_MAX: Duration = Duration::from_secs(2);
/// Silence beyond one keepalive interval plus this margin means the path is gone.
const SILENCE_MARGIN: Duration = Duration::from_secs(4);
/// A session older than this is dead (WireGuard's REJECT_AFTER_TIME).
const SESSION_LIFETIME: Duration = Duration::from_secs(180);
/// Packets handed to the stack per poll; bounds the time the lock is held and, with at most one
/// GRO burst (64 datagrams) on top, stays below the NIC's receive queue limit.
const RX_BATCH: usize = 512;
/// Packets the stack may send per poll before the task yields to others; four GSO sends.
const TX_BATCH: u64 = 256;
/// smoltcp's smallest retransmission timeout: no timer armed by sending data fires sooner.
const MIN_RTO: Duration = Duration::from_millis(10);
/// Ceiling on TCP sockets per peer (streams, listeners and closing ones together).
const MAX_SOCKETS: usize = 16_384;
/// Idle listening sockets kept per port between bursts of connections.
const IDLE_LISTENERS: usize = 8;
/// A dropped stream's socket is forcibly aborted after this long if it has not closed.
const ORPHAN_DEADLINE: Duration = Duration::from_secs(60);
const EPHEMERAL_PORTS: std::ops::RangeInclusive<u16> = 49152..=65535;

pub(crate) use path::Source;

/// What one run of the stack covers.
#[derive(Clone, Copy)]
enum Pass {
    /// Received packets, then every socket's egress.
    Everything,
    /// One socket's egress.
    Socket(SocketHandle),
    /// Received packets that all belong to one established connection, then its egress.
    Received(SocketHandle),
}

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
    /// Datagrams queued for the driver and not yet handled: while there are any, a datagram
    /// handled on arrival would overtake them.
    queued: AtomicUsize,
    shared: Arc<Shared>,
}

pub(crate) struct PeerState {
    pub nic: Nic,
    iface: Interface,
    pub sockets: SocketSet<'static>,
    listeners: HashMap<u16, Vec<SocketHandle>>,
    syns_in_batch: HashMap<u16, usize>,
    client_ports: HashMap<SocketHandle, u16>,
    used_ports: HashSet<u16>,
    /// Established connections by (local port, remote port): finds the socket a received
    /// packet is for without asking every socket. `connection_keys` is the reverse.
    connections: HashMap<(u16, u16), SocketHandle>,
    connection_keys: HashMap<SocketHandle, (u16, u16)>,
    next_port: u16,
    orphans: Vec<(SocketHandle, Instant)>,
    decap: Vec<u8>,
    /// This side initiates (it was given the peer's endpoint); it keeps trying until a session exists.
    initiator: bool,
    last_initiation: Option<Instant>,
    /// Persistent keepalive; with it, silence from the peer for two intervals means the path or
    /// the peer is gone (a restarted peer drops our old session silently), so re-handshake.
    keepalive: Option<Duration>,
    /// When the peer last sent us anything authenticated.
    last_rx: Option<Instant>,
    /// The same, over UDP only: whether UDP works while a stream is in use.
    last_udp_rx: Option<Instant>,
    initiation_retry: Duration,
    /// When the driver task next polls the stack on its own (its timer); a stream that polls the
    /// stack itself wakes the driver only when it needs polling sooner.
    driver_wakes_at: Instant,
    /// Datagrams handled by [`Peer::receive_now`].
    rx_on_arrival: u64,
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
        let mut nic = Nic::new(tunn, endpoint, shared.udp.clone());
        let mut config = Config::new(HardwareAddress::Ip);
        config.random_seed = rand::random();
        let mut iface = Interface::new(config, &mut nic, shared.now());
        iface.update_ip_addrs(|addrs| {
            let _ = addrs.push(IpCidr::new(IpAddress::Ipv4(shared.address), 32));
        });
        // The stack talks to exactly one host: the peer. Route everything to it.
        let _ = iface.routes_mut().add_default_ipv4_route(allowed_ip);
        let span = EPHEMERAL_PORTS.end() - EPHEMERAL_PORTS.start();
        let next_port = EPHEMERAL_PORTS.start() + rand::random::<u16>() % span;
        Arc::new(Self {
            allowed_ip,
            wake: Notify::new(),
            queued: AtomicUsize::new(0),
            shared,
            state: Mutex::new(PeerState {
                nic,
                iface,
                sockets: SocketSet::new(Vec::new()),
                listeners: HashMap::new(),
                syns_in_batch: HashMap::new(),
                client_ports: HashMap::new(),
                used_ports: HashSet::new(),
                connections: HashMap::new(),
                connection_keys: HashMap::new(),
                next_port,
                orphans: Vec::new(),
                decap: vec![0; 65536],
                initiator: false,
                last_initiation: None,
                keepalive: keepalive.map(|k| Duration::from_secs(u64::from(k))),
                last_rx: None,
                last_udp_rx: None,
                initiation_retry: INITIATION_RETRY,
                driver_wakes_at: Instant::now(),
                rx_on_arrival: 0,
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
        if st.closed {
            return Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "WireGuard peer removed",
            ));
        }
        if !st.nic.has_path() {
            return Err(io::Error::new(
                io::ErrorKind::NotConnected,
                format!(
                    "WireGuard peer {} has not connected yet (no endpoint known)",
                    self.allowed_ip
                ),
            ));
        }
        if st.sockets.iter().count() >= MAX_SOCKETS {
            return Err(io::Error::other(
                "too many connections through this WireGuard peer",
            ));
        }
        let port = st.alloc_port()?;
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
        st.client_ports.insert(handle, port);
        st.used_ports.insert(port);
        st.add_connection((port, dst.port()), handle);
        drop(st);
        self.wake.notify_one();
        Ok(TunnelStream::new(
            self.clone(),
            handle,
            SocketAddrV4::new(self.shared.address, port),
            dst,
        ))
    }

    /// Sends a handshake initiation now (the initiating side does this when a peer appears).
    pub fn initiate_handshake(&self) {
        let mut st = self.lock();
        st.initiator = true;
        st.send_initiation();
    }

    /// Points the peer at a new endpoint (from configuration).
    pub fn set_endpoint(&self, endpoint: SocketAddr) {
        self.lock().nic.endpoint = Some(endpoint);
    }

    /// Aborts every connection; streams see EOF or a broken pipe. Used when the peer is removed.
    pub fn close(self: &Arc<Self>) {
        let mut st = self.lock();
        st.closed = true;
        if let Some(link) = st.nic.stream.take() {
            if st.nic.stream_owned {
                link.close();
            }
        }
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
    fn alloc_port(&mut self) -> io::Result<u16> {
        for _ in EPHEMERAL_PORTS {
            let port = self.next_port;
            self.next_port = if port == *EPHEMERAL_PORTS.end() {
                *EPHEMERAL_PORTS.start()
            } else {
                port + 1
            };
            if !self.used_ports.contains(&port) {
                return Ok(port);
            }
        }
        Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            "no free local port",
        ))
    }

    fn send_initiation(&mut self) {
        self.last_initiation = Some(Instant::now());
        let Self { nic, decap, .. } = self;
        if let TunnResult::WriteToNetwork(d) = nic.tunn.format_handshake_initiation(decap, true) {
            nic.send_datagram(d);
        }
    }

    pub fn update_timers(&mut self) {
        let Self { nic, decap, .. } = self;
        match nic.tunn.update_timers(decap) {
            TunnResult::WriteToNetwork(d) => nic.send_datagram(d),
            TunnResult::Err(e) => tracing::trace!(error = ?e, "WireGuard timer"),
            _ => {}
        }
        if self.initiator && self.nic.has_path() {
            let (since_handshake, ..) = self.nic.tunn.stats();
            let no_session = since_handshake.is_none_or(|d| d > SESSION_LIFETIME);
            // Both sides send keepalives, so on a healthy path something arrives at least once a
            // keepalive interval. Longer silence means the path (or the peer's state) is gone: a
            // restarted Gateway, a NAT that flushed its mappings. Handshake until it answers.
            let silent = self.keepalive.is_some_and(|k| {
                self.last_rx
                    .is_some_and(|rx| rx.elapsed() > k + SILENCE_MARGIN)
            });
            if !no_session && !silent {
                self.initiation_retry = INITIATION_RETRY;
            } else if self
                .last_initiation
                .is_none_or(|t| t.elapsed() >= self.initiation_retry)
            {
                if silent && self.initiation_retry == INITIATION_RETRY {
                    tracing::debug!(peer = %self.nic.endpoint.map(|e| e.to_string()).unwrap_or_default(), "peer silent; re-handshaking");
                }
                self.send_initiation();
                self.initiation_retry = (self.initiation_retry * 2).min(INITIATION_RETRY_MAX);
            }
        }
    }

    /// Runs the TCP/IP stack, then hands established connections to the acceptor and frees
    /// sockets nobody owns any more. Returns how long until the stack needs polling again.
    pub fn poll(&mut self, peer: &Arc<Peer>) -> Option<Duration> {
        let _ = self.run_stack(peer, Pass::Everything);
        self.syns_in_batch.clear();
        self.hand_over_accepted(peer);
        self.collect_orphans();
        let Self { iface, sockets, .. } = self;
        iface
            .poll_delay(peer.shared.now(), sockets)
            .map(|d| Duration::from_micros(d.total_micros()))
    }

    /// Sends from a stream's task, right after it queued data on an idle socket: a request or a
    /// response leaves without waking the driver task (a thread hand-off per message). Only
    /// this socket's egress: the driver has already handed every received packet to the stack,
    /// and other sockets' ACKs and timers are the driver's (asking each of them costs a walk
    /// over every connection per message). Sending data arms no timer sooner than the minimum
    /// retransmission timeout, so the driver, which re-reads every timer when it wakes, needs
    /// waking only when it sleeps longer than that.
    pub fn send_from_stream(&mut self, peer: &Arc<Peer>, handle: SocketHandle) {
        let _ = self.run_stack(peer, Pass::Socket(handle));
        if self.driver_wakes_at > Instant::now() + MIN_RTO {
            peer.wake.notify_one();
        }
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
    fn run_stack(&mut self, peer: &Arc<Peer>, pass: Pass) -> bool {
        let now = peer.shared.now();
        let full_before = self.nic.transmitted_full;
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
                Pass::Received(handle) => {
                    while iface.poll_ingress_single(now, nic, sockets)
                        != smoltcp::iface::PollIngressSingleResult::None
                    {}
                    iface.poll_egress_socket(now, nic, sockets, handle);
                    return; // one pass: the rest of an opened window is the driver's
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
        nic.flush();
        nic.transmitted_full != full_before
    }

    fn hand_over_accepted(&mut self, peer: &Arc<Peer>) {
        let mut established = Vec::new();
        for (port, handles) in self.listeners.iter_mut() {
            let serving = peer.shared.listening(*port);
            let mut idle = 0;
            handles.retain(|h| {
                let socket = self.sockets.get_mut::<tcp::Socket>(*h);
                match socket.state() {
                    tcp::State::Listen => {
                        idle += 1;
                        if serving && idle <= IDLE_LISTENERS {
                            true
                        } else {
                            self.sockets.remove(*h);
                            false
                        }
                    }
                    tcp::State::SynReceived => true,
                    tcp::State::Closed => {
                        // The handshake failed (RST); listen again rather than reallocate.
                        let ok = serving && socket.listen(*port).is_ok();
                        if !ok {
                            self.sockets.remove(*h);
                        }
                        ok
                    }
                    _ => {
                        established.push(*h);
                        false
                    }
                }
            });
        }
        self.listeners.retain(|_, v| !v.is_empty());
        for handle in established {
            let socket = self.sockets.get::<tcp::Socket>(handle);
            let (Some(local), Some(remote)) = (socket.local_endpoint(), socket.remote_endpoint())
            else {
                self.orphan(handle);
                continue;
            };
            self.add_connection((local.port, remote.port), handle);
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

    /// Gives back the memory a burst of connections left in the socket table and the maps
    /// beside it, once they are mostly empty again.
    fn trim(&mut self) {
        self.sockets.trim();
        shrink_map(&mut self.client_ports);
        shrink_map(&mut self.connections);
        shrink_map(&mut self.connection_keys);
        if self.used_ports.len() * 4 <= self.used_ports.capacity() {
            self.used_ports.shrink_to_fit();
        }
        if self.orphans.len() * 4 <= self.orphans.capacity() {
            self.orphans.shrink_to_fit();
        }
    }

    pub fn orphan(&mut self, handle: SocketHandle) {
        self.orphans.push((handle, Instant::now()));
    }

    fn collect_orphans(&mut self) {
        let now = Instant::now();
        let Self {
            orphans,
            sockets,
            client_ports,
            used_ports,
            connections,
            connection_keys,
            ..
        } = self;
        orphans.retain(|(handle, since)| {
            let socket = sockets.get_mut::<tcp::Socket>(*handle);
            if now.duration_since(*since) > ORPHAN_DEADLINE {
                socket.abort();
            }
            if matches!(socket.state(), tcp::State::Closed | tcp::State::TimeWait) {
                if let Some(key) = connection_keys.remove(handle) {
                    if connections.get(&key) == Some(handle) {
                        connections.remove(&key);
                    }
                }
                sockets.remove(*handle);
                if let Some(port) = client_ports.remove(handle) {
                    used_ports.remove(&port);
                }
                false
            } else {
                true
            }
        });
    }
}

/// Shrinks a map that is at most a quarter full (hash maps never shrink on their own).
fn shrink_map<K: Eq + std::hash::Hash, V>(map: &mut HashMap<K, V>) {
    if map.len() * 4 <= map.capacity() {
        map.shrink_to_fit();
    }
}

fn v4(endpoint: smoltcp::wire::IpEndpoint) -> SocketAddrV4 {
    match endpoint.addr {
        IpAddress::Ipv4(ip) => SocketAddrV4::new(ip, endpoint.port),
    }
}

/// The peer's task: feeds it datagrams, runs its timers and its stack, forever.
pub(crate) async fn drive(peer: Arc<Peer>, mut inbound: mpsc::Receiver<Inbound>) {
    let mut next_tick = Instant::now();
    let mut pending: Option<Inbound> = None;
    loop {
        let (deadline, more) = {
            let mut st = peer.lock();
            if let Some(d) = pending.take() {
                st.handle_inbound(&peer, &d);
                peer.handled();
            }
            // Count packets, not bursts: a GRO burst holds up to 64 of them.
            while st.nic.rx.len() < RX_BATCH {
                match inbound.try_recv() {
                    Ok(d) => {
                        st.handle_inbound(&peer, &d);
                        peer.handled();
                    }
                    Err(_) => break,
                }
            }
            let handled = st.nic.rx.len();
            if Instant::now() >= next_tick {
                st.update_timers();
                st.trim();
                next_tick = Instant::now() + TIMER_TICK;
            }
            let delay = st.poll(&peer);
            let more = handled >= RX_BATCH;
            let deadline = match delay {
                _ if more => Instant::now(),
                Some(d) => (Instant::now() + d).min(next_tick),
                None => next_tick,
            };
            st.driver_wakes_at = deadline;
            (deadline, more)
        };
        if more {
            tokio::task::yield_now().await;
            continue;
        }
        tokio::select! {
            d = inbound.recv() => match d {
                Some(d) => pending = Some(d),
                None => return,
            },
            _ = peer.wake.notified() => {}
            _ = tokio::time::sleep_until(deadline) => {}
        }
    }
}
