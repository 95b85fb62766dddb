//! Userspace WireGuard with a userspace TCP/IP stack: dial and accept TCP streams through the
//! tunnel without root, a TUN device or any capability.
//!
//! A [`Device`] owns one UDP socket and any number of peers. Each peer has its own noise session
//! (boringtun) and its own TCP/IP stack (smoltcp) driven by its own task, so peers never contend
//! with each other. One receive loop reads datagrams and routes each to its peer by the receiver
//! index (or, for a handshake initiation, by the initiator's static key); a single datagram is
//! handled right there when its peer's stack is free, a burst is queued for the peer's task.
//! Handshake messages pass the `guard` module (mac1, cookies under load, a rate per source)
//! before any X25519 work is spent on them, so a flood of forged ones cannot stall the loop.
//!
//! Where UDP is blocked, a peer's datagrams can travel over a byte stream instead (TCP/TLS,
//! opened by the caller): [`Device::attach_stream`] on the side that dials (an Agent),
//! [`Device::accept_stream`] on the side that accepts (a Gateway). See the `link` module and [`frame`].
//!
//! The crates doing the work are wrapped here so that replacing one (e.g. boringtun by gotatun)
//! touches only this crate.

mod admission;
pub mod frame;
mod guard;
mod keys;
mod link;
mod nic;
mod peer;
mod stream;
mod udp;

pub use keys::{KeyError, PrivateKey, PublicKey};
pub use link::{AttachedStream, StreamEnd};
pub use nic::TUNNEL_MTU;
pub use stream::TunnelStream;

use arc_swap::ArcSwap;
use boringtun::noise::{Packet, Tunn};
use boringtun::x25519;
use peer::{Inbound, Peer, Source};
use smoltcp::socket::tcp;
use std::collections::{HashMap, HashSet};
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use udp::Udp;

/// Datagrams waiting for one peer's task; beyond this they are dropped like on a busy NIC.
const PEER_QUEUE: usize = 1024;
/// Established inbound connections waiting for [`Acceptor::accept`].
const ACCEPT_QUEUE: usize = 1024;

/// How to build a [`Device`].
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

/// What a peer looks like right now.
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
    /// Datagrams from this peer handled by the task that received them, without a hand-off
    /// to the peer's own task (the rest arrived in bursts or while the stack was busy).
    pub rx_on_arrival: u64,
    /// Slots of the peer's socket table: connections, listeners and free slots. It grows with
    /// a burst of connections and shrinks again within a second or so of their end.
    pub socket_slots: usize,
}

/// State shared by the device and all its peers.
pub(crate) struct Shared {
    pub address: Ipv4Addr,
    pub udp: Arc<Udp>,
    tcp_buffer: usize,
    listen_ports: ArcSwap<HashSet<u16>>,
    accept_tx: mpsc::Sender<TunnelStream>,
    epoch: std::time::Instant,
}

impl Shared {
    pub fn now(&self) -> smoltcp::time::Instant {
        smoltcp::time::Instant::from_micros(self.epoch.elapsed().as_micros() as i64)
    }

    pub fn listening(&self, port: u16) -> bool {
        self.listen_ports.load().contains(&port)
    }

    pub fn new_socket(&self) -> tcp::Socket<'static> {
        let mut s = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; self.tcp_buffer]),
            tcp::SocketBuffer::new(vec![0; self.tcp_buffer]),
        );
        s.set_nagle_enabled(false);
        s.set_congestion_control(tcp::CongestionControl::Cubic);
        s.set_keep_alive(Some(smoltcp::time::Duration::from_secs(30)));
        s.set_timeout(Some(smoltcp::time::Duration::from_secs(120)));
        s
    }

    /// Queues an established inbound connection; gives it back when nobody will accept it.
    pub fn accepted(&self, stream: TunnelStream) -> Result<(), TunnelStream> {
        self.accept_tx.try_send(stream).map_err(|e| match e {
            mpsc::error::TrySendError::Full(s) | mpsc::error::TrySendError::Closed(s) => s,
        })
    }
}

struct PeerEntry {
    peer: Arc<Peer>,
    index: u32,
    config: PeerConfig,
    /// The endpoint last given by configuration (the live one may have roamed since).
    configured_endpoint: Mutex<Option<SocketAddr>>,
    inbound: mpsc::Sender<Inbound>,
    driver: JoinHandle<()>,
}

impl Drop for PeerEntry {
    fn drop(&mut self) {
        self.driver.abort();
        self.peer.close();
    }
}

#[derive(Default)]
struct PeerTable {
    by_key: HashMap<PublicKey, Arc<PeerEntry>>,
    by_index: HashMap<u32, Arc<PeerEntry>>,
    by_ip: HashMap<Ipv4Addr, Arc<PeerEntry>>,
}

struct Inner {
    shared: Arc<Shared>,
    private_key: PrivateKey,
    public_key: PublicKey,
    peers: ArcSwap<PeerTable>,
    /// Serialises configuration changes (not traffic).
    update: Mutex<()>,
    next_index: AtomicU32,
    /// The receive loop; set right after the device is built (see [`Device::with_socket`]).
    receiver: std::sync::OnceLock<tokio::task::AbortHandle>,
    /// Cancelled when the device goes away: ends every stream link.
    streams: CancellationToken,
    /// Slots of the streams other nodes opened to us.
    stream_slots: Arc<admission::StreamSlots>,
    /// Checks every handshake message before any X25519 work is done for it.
    guard: guard::HandshakeGuard,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(receiver) = self.receiver.get() {
            receiver.abort();
        }
        self.streams.cancel();
    }
}

impl Inner {
    /// Routes a datagram (or a GRO burst of `segment`-byte datagrams from one sender) to its
    /// peer's task: by receiver index, or for a handshake initiation by the initiator's static key.
    fn deliver(&self, src: Source, data: &[u8], segment: usize) {
        let first = &data[..segment.min(data.len())];
        if segment < data.len() && data.chunks(segment.max(1)).any(|d| d.first() != Some(&4)) {
            // A burst routed by its first datagram would carry the handshake messages in it
            // past the guard below: those are taken one by one.
            for datagram in data.chunks(segment.max(1)) {
                self.deliver(src.clone(), datagram, datagram.len());
            }
            return;
        }
        // A GRO burst of data packets comes from one sender: route it by its first datagram;
        // the peer checks every datagram cryptographically anyway.
        let table = self.peers.load();
        let entry = match first.first() {
            Some(1 | 2) => self.admit_handshake(&src, first, &table),
            _ => match Tunn::parse_incoming_packet(first) {
                Ok(Packet::PacketCookieReply(p)) => table.by_index.get(&(p.receiver_idx >> 8)),
                Ok(Packet::PacketData(p)) => table.by_index.get(&(p.receiver_idx >> 8)),
                _ => None,
            },
        };
        match entry {
            // A single datagram (a request, a response, an ACK) is handled right here when the
            // peer's stack is free; bursts go to the peer's task, which sends in batches.
            Some(e) if segment >= data.len() && e.peer.receive_now(&src, data) => {}
            Some(e) => {
                e.peer.queued();
                let queued = e.inbound.try_send(Inbound {
                    src,
                    data: data.to_vec(),
                    segment,
                });
                if queued.is_err() {
                    e.peer.handled();
                }
            }
            None => tracing::trace!(?src, "dropped datagram for no known peer"),
        }
    }
}

/// A userspace WireGuard interface. Cheap to clone; the last clone dropped stops it.
#[derive(Clone)]
pub struct Device {
    inner: Arc<Inner>,
}

/// Inbound connections to the ports set with [`Device::set_listen_ports`].
pub struct Acceptor {
    rx: mpsc::Receiver<TunnelStream>,
}

impl Acceptor {
    /// The next established inbound connection; `None` once the device is gone.
    pub async fn accept(&mut self) -> Option<TunnelStream> {
        self.rx.recv().await
    }
}

impl Device {
    /// Binds the UDP socket (`config.listen`) and starts the receive loop.
    pub async fn bind(config: DeviceConfig) -> io::Result<(Device, Acceptor)> {
        let socket = bind_udp(config.listen)?;
        Self::with_socket(config, socket)
    }

    /// Starts on an already bound UDP socket (`config.listen` is ignored). Must be called
    /// within a tokio runtime.
    pub fn with_socket(
        config: DeviceConfig,
        socket: std::net::UdpSocket,
    ) -> io::Result<(Device, Acceptor)> {
        let sock = socket2::Socket::from(socket);
        // Bulk transfers burst many datagrams; small default buffers would drop them.
        let _ = sock.set_recv_buffer_size(8 << 20);
        let _ = sock.set_send_buffer_size(8 << 20);
        sock.set_nonblocking(true)?;
        let udp = Arc::new(Udp::new(tokio::net::UdpSocket::from_std(sock.into())?));
        let (accept_tx, rx) = mpsc::channel(ACCEPT_QUEUE);
        let shared = Arc::new(Shared {
            address: config.address,
            udp: udp.clone(),
            tcp_buffer: config.tcp_buffer,
            listen_ports: ArcSwap::from_pointee(HashSet::new()),
            accept_tx,
            epoch: std::time::Instant::now(),
        });
        let public_key = config.private_key.public_key();
        let inner = Arc::new(Inner {
            shared,
            private_key: config.private_key,
            public_key,
            peers: ArcSwap::from_pointee(PeerTable::default()),
            update: Mutex::new(()),
            next_index: AtomicU32::new(rand::random::<u32>() & 0xffff),
            receiver: std::sync::OnceLock::new(),
            streams: CancellationToken::new(),
            stream_slots: Arc::default(),
            guard: guard::HandshakeGuard::new(&public_key),
        });
        // Spawned only once the device exists: the loop stops when it cannot reach the device,
        // and a datagram already waiting on the socket (a peer that was quicker than our
        // configuration) would otherwise reach a device still under construction and end the
        // loop for good, leaving the device deaf.
        let receiver = tokio::spawn(receive_loop(udp, Arc::downgrade(&inner)));
        let _ = inner.receiver.set(receiver.abort_handle());
        Ok((Device { inner }, Acceptor { rx }))
    }

    pub fn public_key(&self) -> PublicKey {
        self.inner.public_key
    }

    pub fn address(&self) -> Ipv4Addr {
        self.inner.shared.address
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.shared.udp.local_addr()
    }

    /// Replaces the peer set. Unchanged peers keep their sessions and connections; removed
    /// peers have their connections aborted; new peers with an endpoint start a handshake.
    pub fn set_peers(&self, peers: Vec<PeerConfig>) {
        let _guard = self.inner.update.lock().unwrap_or_else(|e| e.into_inner());
        let old = self.inner.peers.load_full();
        let mut table = PeerTable::default();
        for config in peers {
            if table.by_ip.contains_key(&config.allowed_ip)
                || table.by_key.contains_key(&config.public_key)
            {
                tracing::warn!(address = %config.allowed_ip, "duplicate WireGuard peer ignored");
                continue;
            }
            let entry = match old.by_key.get(&config.public_key) {
                Some(e)
                    if e.config.allowed_ip == config.allowed_ip
                        && e.config.persistent_keepalive == config.persistent_keepalive =>
                {
                    let mut configured = e
                        .configured_endpoint
                        .lock()
                        .unwrap_or_else(|p| p.into_inner());
                    if let Some(endpoint) = config.endpoint.filter(|ep| Some(*ep) != *configured) {
                        e.peer.set_endpoint(endpoint);
                        e.peer.initiate_handshake();
                        *configured = Some(endpoint);
                    }
                    drop(configured);
                    e.clone()
                }
                _ => Arc::new(self.new_peer(config)),
            };
            table.by_ip.insert(entry.config.allowed_ip, entry.clone());
            table.by_index.insert(entry.index, entry.clone());
            table.by_key.insert(entry.config.public_key, entry);
        }
        self.inner.peers.store(Arc::new(table));
    }

    /// Ports on which inbound connections are accepted; SYNs to other ports are refused (RST).
    pub fn set_listen_ports(&self, ports: impl IntoIterator<Item = u16>) {
        self.inner
            .shared
            .listen_ports
            .store(Arc::new(ports.into_iter().collect()));
    }

    /// Opens a TCP connection to `dst` through the peer whose address it is.
    pub async fn connect(&self, dst: SocketAddrV4) -> io::Result<TunnelStream> {
        let peer = {
            let table = self.inner.peers.load();
            let entry = table.by_ip.get(dst.ip()).ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::HostUnreachable,
                    format!("no WireGuard peer has address {}", dst.ip()),
                )
            })?;
            entry.peer.clone()
        };
        let stream = peer.open(dst)?;
        stream.established().await?;
        Ok(stream)
    }

    pub fn peers(&self) -> Vec<PeerStatus> {
        self.inner
            .peers
            .load()
            .by_key
            .values()
            .map(|e| {
                let path = e.peer.status();
                PeerStatus {
                    public_key: e.config.public_key,
                    allowed_ip: e.config.allowed_ip,
                    endpoint: path.endpoint,
                    stream: path.stream,
                    since_handshake: path.since_handshake,
                    since_rx: path.since_rx,
                    since_udp_rx: path.since_udp_rx,
                    tx_bytes: path.tx_bytes,
                    rx_bytes: path.rx_bytes,
                    tx_packets: path.tx_packets,
                    tx_udp_sends: path.tx_udp_sends,
                    rx_on_arrival: path.rx_on_arrival,
                    socket_slots: path.socket_slots,
                }
            })
            .collect()
    }

    /// The status of one peer.
    pub fn peer(&self, public_key: &PublicKey) -> Option<PeerStatus> {
        self.peers()
            .into_iter()
            .find(|p| p.public_key == *public_key)
    }

    fn new_peer(&self, config: PeerConfig) -> PeerEntry {
        let index = self.inner.next_index.fetch_add(1, Ordering::Relaxed) & 0x00ff_ffff;
        let tunn = Tunn::new(
            self.inner.private_key.0.clone(),
            x25519::PublicKey::from(*config.public_key.as_bytes()),
            None,
            config.persistent_keepalive,
            index,
            Some(self.inner.guard.limiter()),
        );
        let peer = Peer::new(
            self.inner.shared.clone(),
            config.allowed_ip,
            tunn,
            config.endpoint,
            config.persistent_keepalive,
        );
        if config.endpoint.is_some() {
            peer.initiate_handshake();
        }
        let (inbound, rx) = mpsc::channel(PEER_QUEUE);
        let driver = tokio::spawn(peer::drive(peer.clone(), rx));
        PeerEntry {
            peer,
            index,
            configured_endpoint: Mutex::new(config.endpoint),
            config,
            inbound,
            driver,
        }
    }
}

fn bind_udp(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// Reads datagrams and routes each to its peer's task.
async fn receive_loop(udp: Arc<Udp>, device: std::sync::Weak<Inner>) {
    let mut buf = vec![0u8; 65536];
    loop {
        let (n, src, segment) = match udp.recv(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, "WireGuard receive error");
                tokio::task::yield_now().await;
                continue;
            }
        };
        let Some(device) = device.upgrade() else {
            return;
        };
        device.deliver(Source::Udp(src), &buf[..n], segment);
        drop(device);
        // A socket that is always readable (a flood) would otherwise hold this worker thread
        // for good: waiting for readiness does not count against tokio's cooperative budget.
        tokio::task::consume_budget().await;
    }
}
