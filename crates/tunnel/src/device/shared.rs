//! What a device shares with all its peers: its tunnel address, its UDP socket, the ports it
//! accepts connections (and datagrams) on, the queue of accepted connections, and the clock and socket factory
//! of the peers' TCP/IP stacks.

use crate::datagram::DatagramTx;
use crate::stream::TunnelStream;
use crate::udp::Udp;
use arc_swap::ArcSwap;
use smoltcp::socket::tcp;
use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::Arc;
use tokio::sync::mpsc;

/// State shared by the device and all its peers.
pub(crate) struct Shared {
    pub address: Ipv4Addr,
    pub udp: Arc<Udp>,
    tcp_buffer: usize,
    listen_ports: ArcSwap<HashSet<u16>>,
    /// UDP ports every peer may send to, and where their datagrams go.
    udp_ports: ArcSwap<HashMap<u16, DatagramTx>>,
    accept_tx: mpsc::Sender<TunnelStream>,
    epoch: std::time::Instant,
    /// Whether peers that drop our bursts are paced: `KAKUREMICHI_PACING` = `auto` (default)
    /// or `off` (for a path where the pacing costs more than it saves).
    pub pacing: bool,
}

impl Shared {
    pub fn new(
        address: Ipv4Addr,
        udp: Arc<Udp>,
        tcp_buffer: usize,
        accept_tx: mpsc::Sender<TunnelStream>,
    ) -> Self {
        Self {
            address,
            udp,
            tcp_buffer,
            listen_ports: ArcSwap::from_pointee(HashSet::new()),
            udp_ports: ArcSwap::from_pointee(HashMap::new()),
            accept_tx,
            epoch: std::time::Instant::now(),
            pacing: crate::pacing::enabled(),
        }
    }

    pub fn now(&self) -> smoltcp::time::Instant {
        smoltcp::time::Instant::from_micros(self.epoch.elapsed().as_micros() as i64)
    }

    pub fn listening(&self, port: u16) -> bool {
        self.listen_ports.load().contains(&port)
    }

    pub fn set_listen_ports(&self, ports: HashSet<u16>) {
        self.listen_ports.store(Arc::new(ports));
    }

    /// Sends datagrams to UDP `port` to `tx` from now on, in place of any earlier binding (a
    /// service whose target changed binds again before its old binding is dropped).
    pub fn bind_udp(&self, port: u16, tx: DatagramTx) {
        self.udp_ports.rcu(|m| {
            let mut m = HashMap::clone(m);
            m.insert(port, tx.clone());
            m
        });
    }

    /// Ends the binding of `port` to `tx` (not a newer one of the same port).
    pub fn unbind_udp(&self, port: u16, tx: &DatagramTx) {
        self.udp_ports.rcu(|m| {
            let mut m = HashMap::clone(m);
            if m.get(&port).is_some_and(|t| t.same_channel(tx)) {
                m.remove(&port);
            }
            m
        });
    }

    /// Where datagrams to UDP `port` go, if it is bound.
    pub fn udp_port(&self, port: u16) -> Option<DatagramTx> {
        self.udp_ports.load().get(&port).cloned()
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
