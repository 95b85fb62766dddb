//! The public ports of `tcp` and `udp` tunnels: bound on `--ports-listen-ip` when a snapshot
//! brings them, unbound (and their connections or flows closed) when a snapshot drops them, no
//! restart either way. A port this Gateway cannot bind (in use, privileged) is reported to
//! Control and bound again on the next try; the other Gateways serve it meanwhile. One
//! [`PublicPorts`] per protocol; what happens on a bound port is `serve` here for TCP, and
//! [`super::udp`] for UDP.

use super::splice::{Splicer, StreamTarget};
use arc_swap::ArcSwap;
use kakuremichi_proto::{PortError, StreamRoute, TunnelProtocol};
use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpSocket};
use tokio_util::sync::CancellationToken;

/// Backlog of a tunnel port's listener.
const BACKLOG: u32 = 1024;
/// Pause after an accept error such as EMFILE, so the loop does not spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// One bound port: the tunnel it serves now (swapped on config changes), and its stop.
struct Bound {
    target: Arc<ArcSwap<StreamTarget>>,
    stop: CancellationToken,
}

/// The tunnel ports of one protocol (`tcp` or `udp`) on this Gateway.
pub struct PublicPorts {
    protocol: TunnelProtocol,
    listen_ip: IpAddr,
    splicer: Arc<Splicer>,
    bound: HashMap<u16, Bound>,
    /// Ports of the current config that could not be bound, and why.
    failed: BTreeMap<u16, (StreamRoute, String)>,
}

impl PublicPorts {
    /// `protocol`: `tcp` or `udp`.
    pub(crate) fn new(protocol: TunnelProtocol, listen_ip: IpAddr, splicer: Arc<Splicer>) -> Self {
        debug_assert!(protocol.has_public_port());
        Self {
            protocol,
            listen_ip,
            splicer,
            bound: HashMap::new(),
            failed: BTreeMap::new(),
        }
    }

    /// Serves exactly the ports of `routes`: binds new ones, re-targets kept ones, and closes
    /// the others with their connections.
    pub(crate) fn apply(&mut self, routes: &BTreeMap<u16, StreamRoute>) {
        self.bound.retain(|port, b| {
            let keep = routes.contains_key(port);
            if !keep {
                b.stop.cancel();
                tracing::info!(
                    port,
                    protocol = self.protocol.as_str(),
                    "tunnel port closed"
                );
            }
            keep
        });
        self.failed.clear();
        for (&port, route) in routes {
            match self.bound.get(&port) {
                Some(b) if b.target.load().route == *route => {}
                Some(b) => b.target.store(self.splicer.target(route.clone())),
                None => self.bind(port, route.clone()),
            }
        }
    }

    /// Tries the ports that could not be bound again; true when any is bound now.
    pub(crate) fn retry(&mut self) -> bool {
        if self.failed.is_empty() {
            return false;
        }
        let before = self.failed.len();
        for (port, (route, _)) in std::mem::take(&mut self.failed) {
            self.bind(port, route);
        }
        self.failed.len() != before
    }

    /// The ports that could not be bound, for Control.
    pub(crate) fn errors(&self) -> Vec<PortError> {
        self.failed
            .iter()
            .map(|(&port, (_, error))| PortError {
                protocol: self.protocol,
                port,
                error: error.clone(),
            })
            .collect()
    }

    /// Closes every port (the Gateway stops).
    pub(crate) fn close_all(&mut self) {
        for (_, b) in self.bound.drain() {
            b.stop.cancel();
        }
    }

    fn bind(&mut self, port: u16, route: StreamRoute) {
        let addr = SocketAddr::new(self.listen_ip, port);
        let protocol = self.protocol.as_str();
        let target = Arc::new(ArcSwap::new(self.splicer.target(route.clone())));
        let stop = CancellationToken::new();
        let (splicer, t, s) = (self.splicer.clone(), target.clone(), stop.clone());
        let bound = match self.protocol {
            TunnelProtocol::Udp => super::udp::bind(addr)
                .map(|socket| drop(tokio::spawn(super::udp::serve(socket, t, splicer, s)))),
            _ => listen(addr).map(|listener| drop(tokio::spawn(serve(listener, t, splicer, s)))),
        };
        match bound {
            Ok(()) => {
                tracing::info!(%addr, protocol, "tunnel port open");
                self.bound.insert(port, Bound { target, stop });
            }
            Err(e) => {
                // Once per config or change: the retries stay quiet until it works.
                if !self.failed.contains_key(&port) {
                    tracing::warn!(%addr, protocol, error = %e, "cannot bind a tunnel port; the other gateways serve it, and it is retried");
                }
                self.failed.insert(port, (route, e.to_string()));
            }
        }
    }
}

impl Drop for PublicPorts {
    fn drop(&mut self) {
        self.close_all();
    }
}

fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    // A port just closed may still have connections in TIME_WAIT: binding it again must work.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

async fn serve(
    listener: TcpListener,
    target: Arc<ArcSwap<StreamTarget>>,
    splicer: Arc<Splicer>,
    stop: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = stop.cancelled() => break,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                if !matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
                ) {
                    tracing::warn!(error = %e, "accept failed on a tcp tunnel port");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                }
                continue;
            }
        };
        let target = target.load_full();
        let Some(admitted) = splicer.admit(&target, peer.ip()) else {
            // A reset: no TIME_WAIT left here, and the client knows at once.
            let _ = stream.set_zero_linger();
            continue;
        };
        let Ok(local) = stream.local_addr() else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let splice = splicer.clone().splice(
            stream,
            peer,
            local,
            admitted,
            bytes::Bytes::new(),
            stop.child_token(),
        );
        tokio::spawn(splice);
    }
}
