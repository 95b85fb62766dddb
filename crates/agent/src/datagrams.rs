//! `udp` tunnels on the Agent: the datagrams Gateways send to a service's tunnel port are
//! relayed to its target over real UDP, one socket per flow (a Gateway's flow port: one client
//! there), so the target's replies find their way back to that client. A flow idle for the
//! tunnel's timeout (plus a little, so the Gateway frees it first) is freed; the table is
//! bounded and owned by the service's one task. Opening a flow counts as a connect in the
//! tunnel's metrics; a name that does not resolve, a socket that cannot be opened and each
//! datagram the target refuses (an ICMP port unreachable) count as errors.

use crate::metrics::{TargetError, TargetStats};
use crate::Service;
use kakuremichi_tunnel::{TunnelUdp, UdpSender};
use std::collections::HashMap;
use std::net::{SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;

/// Flows one `udp` service keeps at once; datagrams of further flows are dropped.
const MAX_FLOWS: usize = 16_384;
/// Kept this much longer than the Gateways keep them, so the Gateway's end goes first.
const SLACK: Duration = Duration::from_secs(5);
const SWEEP_EVERY: Duration = Duration::from_millis(500);
/// How long a resolved target address is used before it is looked up again.
const RESOLVE_EVERY: Duration = Duration::from_secs(30);
/// Largest datagram read from the target (more than the tunnel carries: the rest are dropped).
const MAX_DATAGRAM: usize = 65_535;

struct Flow {
    socket: Arc<UdpSocket>,
    /// Milliseconds since the relay's start when a datagram last passed, either way.
    last: Arc<AtomicU64>,
    replies: tokio::task::JoinHandle<()>,
}

impl Drop for Flow {
    fn drop(&mut self) {
        self.replies.abort();
    }
}

/// Relays the datagrams arriving on `port` for `service` until the service is retired.
pub(crate) async fn relay(mut port: TunnelUdp, service: Arc<Service>) {
    let epoch = Instant::now();
    let now_ms = move || epoch.elapsed().as_millis() as u64;
    let idle = (service.udp_idle + SLACK).as_millis() as u64;
    let mut flows: HashMap<SocketAddrV4, Flow> = HashMap::new();
    let mut resolved: Option<(SocketAddr, Instant)> = None;
    let mut sweep = tokio::time::interval(SWEEP_EVERY);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let sender = port.sender();
    loop {
        let (payload, from) = tokio::select! {
            received = port.recv() => match received {
                Some(d) => d,
                None => break,
            },
            _ = sweep.tick() => {
                let now = now_ms();
                flows.retain(|_, f| now.saturating_sub(f.last.load(Ordering::Relaxed)) < idle);
                continue;
            }
            () = service.retired.cancelled() => break,
        };
        if !flows.contains_key(&from) {
            if flows.len() >= MAX_FLOWS {
                tracing::debug!(target = %service.target, "too many udp flows; datagram dropped");
                continue;
            }
            let started = Instant::now();
            let Some(target) = resolve(&service.target, &mut resolved).await else {
                service.stats.failed(TargetError::Unresolved);
                continue;
            };
            match open(target, from, sender.clone(), service.stats.clone(), now_ms).await {
                Ok(flow) => {
                    service.stats.connected(started.elapsed());
                    flows.insert(from, flow);
                }
                Err(e) => {
                    service.stats.failed(TargetError::of(&e));
                    tracing::warn!(%target, error = %e, "cannot open a udp socket toward the tunnel's target");
                    continue;
                }
            }
        }
        let Some(flow) = flows.get(&from) else {
            continue;
        };
        flow.last.store(now_ms(), Ordering::Relaxed);
        if let Err(e) = flow.socket.send(&payload).await {
            service.stats.failed(TargetError::of(&e));
            // ECONNREFUSED after an ICMP port unreachable: the app is not listening (yet).
            tracing::debug!(target = %service.target, error = %e, "udp datagram not delivered to the target; is the app running?");
        }
    }
}

/// The target's address, looked up again every [`RESOLVE_EVERY`] (a container's name may move).
async fn resolve(target: &str, cache: &mut Option<(SocketAddr, Instant)>) -> Option<SocketAddr> {
    if let Some((addr, at)) = *cache {
        if at.elapsed() < RESOLVE_EVERY {
            return Some(addr);
        }
    }
    match tokio::net::lookup_host(target).await {
        Ok(mut addrs) => {
            let addr = addrs.next()?;
            *cache = Some((addr, Instant::now()));
            Some(addr)
        }
        Err(e) => {
            tracing::warn!(%target, error = %e, "cannot resolve the udp tunnel's target");
            cache.map(|(addr, _)| addr)
        }
    }
}

/// A socket connected to `target` for the flow of `from`, whose replies go back through the
/// tunnel to `from`.
async fn open(
    target: SocketAddr,
    from: SocketAddrV4,
    to_gateway: UdpSender,
    stats: Arc<TargetStats>,
    now_ms: impl Fn() -> u64 + Send + 'static,
) -> std::io::Result<Flow> {
    let local: SocketAddr = match target {
        SocketAddr::V4(_) => ([0, 0, 0, 0], 0).into(),
        SocketAddr::V6(_) => ([0u16; 8], 0).into(),
    };
    let socket = Arc::new(UdpSocket::bind(local).await?);
    socket.connect(target).await?;
    let last = Arc::new(AtomicU64::new(now_ms()));
    let (s, seen) = (socket.clone(), last.clone());
    let replies = tokio::spawn(async move {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        loop {
            match s.recv(&mut buf).await {
                Ok(n) => {
                    seen.store(now_ms(), Ordering::Relaxed);
                    if let Err(e) = to_gateway.send_to(&buf[..n], from) {
                        tracing::debug!(%target, bytes = n, error = %e, "udp reply not carried back");
                    }
                }
                // ECONNREFUSED (ICMP) is reported once per refused datagram: keep listening.
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    stats.failed(TargetError::Refused);
                }
                Err(e) => {
                    tracing::debug!(%target, error = %e, "udp receive error");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    });
    Ok(Flow {
        socket,
        last,
        replies,
    })
}
