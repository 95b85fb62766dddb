//! The WireGuard device: one UDP socket, the table of its peers and the loop that routes what
//! arrives on the socket to them. The device owns no lock on the data path: the peer table is
//! swapped atomically on configuration changes, and each peer has its own stack and task.
//!
//! - `table`: the peer table and how a new configuration replaces it.
//! - `receive`: the UDP receive loop and the routing of a datagram to its peer.
//! - `shared`: what the device shares with all its peers (socket, listen ports, accept queue).
//!
//! Streams over TCP/TLS instead of UDP are attached in [`crate::link`].

mod receive;
mod shared;
mod table;

pub(crate) use shared::Shared;
pub(crate) use table::{PeerEntry, PeerTable};

use crate::admission;
use crate::config::DeviceConfig;
use crate::datagram::TunnelUdp;
use crate::guard;
use crate::keys::{PrivateKey, PublicKey};
use crate::peer::{PeerStats, PeerStatus};
use crate::stream::TunnelStream;
use crate::udp::Udp;
use arc_swap::ArcSwap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::AtomicU32;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Established inbound connections waiting for [`Acceptor::accept`].
const ACCEPT_QUEUE: usize = 1024;

pub(crate) struct Inner {
    pub shared: Arc<Shared>,
    pub private_key: PrivateKey,
    pub public_key: PublicKey,
    pub peers: ArcSwap<PeerTable>,
    /// Serialises configuration changes (not traffic).
    update: Mutex<()>,
    next_index: AtomicU32,
    /// The receive loop; set right after the device is built (see [`Device::with_socket`]).
    receiver: std::sync::OnceLock<tokio::task::AbortHandle>,
    /// Cancelled when the device goes away: ends every stream link.
    pub streams: CancellationToken,
    /// Slots of the streams other nodes opened to us.
    pub stream_slots: Arc<admission::StreamSlots>,
    /// Checks every handshake message before any X25519 work is done for it.
    pub guard: guard::HandshakeGuard,
}

impl Inner {
    /// The peer whose tunnel address `dst` is.
    pub(crate) fn peer_for(&self, dst: SocketAddrV4) -> io::Result<Arc<crate::peer::Peer>> {
        let table = self.peers.load();
        let entry = table.by_ip.get(dst.ip()).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::HostUnreachable,
                format!("no WireGuard peer has address {}", dst.ip()),
            )
        })?;
        Ok(entry.peer.clone())
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(receiver) = self.receiver.get() {
            receiver.abort();
        }
        self.streams.cancel();
    }
}

/// A userspace WireGuard interface. Cheap to clone; the last clone dropped stops it.
#[derive(Clone)]
pub struct Device {
    pub(crate) inner: Arc<Inner>,
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
        crate::udp::WIREGUARD.apply(&sock);
        sock.set_nonblocking(true)?;
        let udp = Arc::new(Udp::new(tokio::net::UdpSocket::from_std(sock.into())?));
        let (accept_tx, rx) = mpsc::channel(ACCEPT_QUEUE);
        let shared = Arc::new(Shared::new(
            config.address,
            udp.clone(),
            config.tcp_buffer,
            accept_tx,
        ));
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
        let receiver = tokio::spawn(receive::receive_loop(udp, Arc::downgrade(&inner)));
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

    /// Ports on which inbound connections are accepted; SYNs to other ports are refused (RST).
    pub fn set_listen_ports(&self, ports: impl IntoIterator<Item = u16>) {
        self.inner
            .shared
            .set_listen_ports(ports.into_iter().collect());
    }

    /// Opens a TCP connection to `dst` through the peer whose address it is.
    pub async fn connect(&self, dst: SocketAddrV4) -> io::Result<TunnelStream> {
        let stream = self.inner.peer_for(dst)?.open(dst)?;
        stream.established().await?;
        Ok(stream)
    }

    /// Receives the datagrams any peer sends to UDP `port` of this node (an Agent's `udp`
    /// service); replies go through the peer whose address they are sent to. Binding a port
    /// again takes it over from the earlier binding.
    pub fn bind_udp(&self, port: u16) -> TunnelUdp {
        let (tx, rx) = TunnelUdp::queue();
        self.inner.shared.bind_udp(port, tx.clone());
        let local = SocketAddrV4::new(self.inner.shared.address, port);
        TunnelUdp::new(local, (tx, rx), TunnelUdp::any_peer(&self.inner))
    }

    /// A UDP flow to `dst` through the peer whose address it is, from a fresh local port on
    /// which that peer's replies arrive (a Gateway's flow for one client).
    pub fn connect_udp(&self, dst: SocketAddrV4) -> io::Result<TunnelUdp> {
        let peer = self.inner.peer_for(dst)?;
        let (tx, rx) = TunnelUdp::queue();
        let port = peer.bind_udp_flow(tx.clone())?;
        let local = SocketAddrV4::new(self.inner.shared.address, port);
        Ok(TunnelUdp::new(local, (tx, rx), TunnelUdp::through(peer)))
    }

    pub fn peers(&self) -> Vec<PeerStatus> {
        self.inner
            .peers
            .load()
            .by_key
            .values()
            .map(|e| e.peer.status(e.config.public_key))
            .collect()
    }

    /// Every peer's counters (bytes, last handshake, path), read from atomics: unlike
    /// [`Device::peers`], this takes no peer's lock, so a metrics scrape never waits for (or
    /// holds up) traffic. Sorted by public key.
    pub fn peer_stats(&self) -> Vec<PeerStats> {
        let mut stats: Vec<PeerStats> = self
            .inner
            .peers
            .load()
            .by_key
            .values()
            .map(|e| e.peer.counters.snapshot(e.config.public_key))
            .collect();
        stats.sort_by_key(|s| *s.public_key.as_bytes());
        stats
    }

    /// Paces what is sent to the peer `public_key` at `datagrams_per_ms` from now on, whatever
    /// its losses (the pacing otherwise starts only when a peer drops our bursts). For tests of
    /// what a paced peer's task does; no role calls it.
    #[doc(hidden)]
    pub fn pin_pacing(&self, public_key: &PublicKey, datagrams_per_ms: u32) {
        if let Some(e) = self.inner.peers.load().by_key.get(public_key) {
            e.peer.lock().nic.pacer.pin(datagrams_per_ms);
        }
    }

    /// The status of one peer.
    pub fn peer(&self, public_key: &PublicKey) -> Option<PeerStatus> {
        self.peers()
            .into_iter()
            .find(|p| p.public_key == *public_key)
    }
}

fn bind_udp(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    socket.bind(&addr.into())?;
    Ok(socket.into())
}
