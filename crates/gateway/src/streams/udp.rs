//! A `udp` tunnel's public port: a flow table keyed by client address. A client's first
//! datagram (admitted by the tunnel's IP lists and `max_connections`, which counts flows) opens
//! a flow: a UDP port of this Gateway inside the tunnel, talking to one Agent of the tunnel,
//! whose replies go back to that client from the public port. Datagrams cross the tunnel one
//! for one (see `kakuremichi_tunnel::TunnelUdp`), never queued behind each other in a stream.
//!
//! A flow that sees no datagram either way for the tunnel's `udp_idle_timeout` (default 60 s)
//! is freed, with its slot and its tunnel port; so are flows to an Agent the tunnel no longer
//! uses. The table is owned by the port's one task: no lock on the path of a datagram.

use super::splice::{Admitted, Splicer, StreamTarget};
use arc_swap::ArcSwap;
use kakuremichi_tunnel::{SocketBuffers, UdpSender};
use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

/// Largest datagram read from a client (the most UDP allows; the tunnel carries less and the
/// rest are dropped, counted).
const MAX_DATAGRAM: usize = 65_535;
/// The buffers of a tunnel's public port.
static PUBLIC_BUFFERS: SocketBuffers = SocketBuffers::new("a UDP tunnel's public socket", 4 << 20);
/// How often idle flows are looked for.
const SWEEP_EVERY: Duration = Duration::from_millis(500);

/// Binds a tunnel's public UDP port. No `SO_REUSEADDR`: for UDP it would let a second socket
/// share the port, and a port taken must be reported, not shared.
pub(super) fn bind(addr: SocketAddr) -> io::Result<Arc<UdpSocket>> {
    let socket = std::net::UdpSocket::bind(addr)?;
    let socket = socket2::Socket::from(socket);
    // Bursts (a game tick to many players, iperf) would overflow the small default buffers.
    PUBLIC_BUFFERS.apply(&socket);
    socket.set_nonblocking(true)?;
    Ok(Arc::new(UdpSocket::from_std(socket.into())?))
}

/// One client's flow.
struct Flow {
    to_agent: UdpSender,
    agent: SocketAddrV4,
    /// Milliseconds since the port's start when a datagram last passed, either way.
    last: Arc<AtomicU64>,
    replies: tokio::task::JoinHandle<()>,
    /// The tunnel the flow was opened for (a change of Agents retires it).
    target: Arc<StreamTarget>,
    _admitted: Admitted,
    _active: Active,
}

impl Drop for Flow {
    fn drop(&mut self) {
        self.replies.abort();
    }
}

/// Counts a flow as active while it lives.
struct Active(Arc<StreamTarget>);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.stats().active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves one public UDP port until `stop` fires.
pub(super) async fn serve(
    socket: Arc<UdpSocket>,
    target: Arc<ArcSwap<StreamTarget>>,
    splicer: Arc<Splicer>,
    stop: CancellationToken,
) {
    let epoch = Instant::now();
    let now_ms = move || epoch.elapsed().as_millis() as u64;
    let mut flows: HashMap<SocketAddr, Flow> = HashMap::new();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut sweep = tokio::time::interval(SWEEP_EVERY);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let (n, client) = tokio::select! {
            received = socket.recv_from(&mut buf) => match received {
                Ok(r) => r,
                Err(e) => {
                    // ICMP errors of earlier sends surface here on Linux; nothing to do.
                    tracing::trace!(error = %e, "udp tunnel port receive error");
                    continue;
                }
            },
            _ = sweep.tick() => {
                expire(&mut flows, &target.load(), now_ms());
                continue;
            }
            () = stop.cancelled() => break,
        };
        let current = target.load_full();
        let flow = match flows.get(&client) {
            Some(f) if Arc::ptr_eq(&f.target, &current) => f,
            _ => {
                flows.remove(&client);
                let Some(flow) = open(&splicer, &current, &socket, client, now_ms) else {
                    continue;
                };
                flows.entry(client).or_insert(flow)
            }
        };
        flow.last.store(now_ms(), Ordering::Relaxed);
        let stats = current.stats();
        match flow.to_agent.send_to(&buf[..n], flow.agent) {
            Ok(()) => {
                stats.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(e) => {
                stats.datagrams_dropped.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%client, bytes = n, error = %e, "udp datagram not carried to the agent");
            }
        }
    }
    // Dropping the table ends every flow and frees its tunnel port.
}

/// Opens a flow for `client`, or `None` (counted) when it is not admitted or no Agent of the
/// tunnel can be reached.
fn open(
    splicer: &Arc<Splicer>,
    target: &Arc<StreamTarget>,
    socket: &Arc<UdpSocket>,
    client: SocketAddr,
    now_ms: impl Fn() -> u64 + Send + 'static,
) -> Option<Flow> {
    let admitted = splicer.admit(target, client.ip())?;
    let stats = target.stats();
    let Some((mut udp, agent)) = splicer.open_flow(target) else {
        stats.upstream_failed.fetch_add(1, Ordering::Relaxed);
        return None;
    };
    stats.connections.fetch_add(1, Ordering::Relaxed);
    stats.active.fetch_add(1, Ordering::Relaxed);
    let last = Arc::new(AtomicU64::new(now_ms()));
    let to_agent = udp.sender();
    let (socket, seen, t) = (socket.clone(), last.clone(), target.clone());
    let replies = tokio::spawn(async move {
        while let Some((payload, _)) = udp.recv().await {
            seen.store(now_ms(), Ordering::Relaxed);
            match socket.send_to(&payload, client).await {
                Ok(n) => {
                    t.stats().bytes_out.fetch_add(n as u64, Ordering::Relaxed);
                }
                Err(e) => tracing::trace!(%client, error = %e, "udp reply not sent to the client"),
            }
        }
    });
    tracing::debug!(%client, %agent, tunnel_id = target.route.tunnel_id, "udp flow opened");
    Some(Flow {
        to_agent,
        agent,
        last,
        replies,
        target: target.clone(),
        _admitted: admitted,
        _active: Active(target.clone()),
    })
}

/// Frees the flows idle for longer than the tunnel's timeout, and those of a tunnel whose
/// Agents changed.
fn expire(flows: &mut HashMap<SocketAddr, Flow>, current: &Arc<StreamTarget>, now_ms: u64) {
    let idle = current.route.udp_idle_timeout().as_millis() as u64;
    flows.retain(|client, f| {
        let fresh = Arc::ptr_eq(&f.target, current);
        let alive = now_ms.saturating_sub(f.last.load(Ordering::Relaxed)) < idle;
        if fresh && !alive {
            current
                .stats()
                .flows_expired
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%client, tunnel_id = current.route.tunnel_id, "udp flow idle; freed");
        }
        fresh && alive
    });
    if flows.capacity() > 64 && flows.len() < flows.capacity() / 4 {
        flows.shrink_to_fit();
    }
}
