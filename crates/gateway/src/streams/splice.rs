//! Carrying one client connection of a `tcp` or `tls` tunnel to the Agent serving it: admission
//! (IP lists, connection cap), a stream through the tunnel to the first Agent that answers, the
//! PROXY protocol header if the tunnel wants one, then bytes both ways until either side closes
//! or the tunnel goes away.

use super::proxy_header;
use crate::proxy::balance::Balancer;
use crate::proxy::{BoxStream, Dialer};
use arc_swap::ArcSwap;
use bytes::Bytes;
use kakuremichi_proto::StreamRoute;
use std::collections::{BTreeMap, HashMap};
use std::net::{SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

/// Copy buffer per direction (as the Agent's).
const COPY_BUFFER: usize = 64 * 1024;

/// Counters of one stream tunnel on this Gateway, since it started (or since the tunnel came).
/// For a `udp` tunnel a connection is a flow, and bytes are counted per datagram.
#[derive(Debug, Default)]
pub struct StreamStats {
    /// Connections carried to an Agent.
    pub connections: AtomicU64,
    /// Connections open now.
    pub active: AtomicU64,
    /// Bytes from clients to the target, and back (counted when a connection ends).
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    /// Refused by the IP lists, or over `max_connections`.
    pub ip_denied: AtomicU64,
    pub over_capacity: AtomicU64,
    /// No Agent of the tunnel accepted the stream (the client's connection was closed).
    pub upstream_failed: AtomicU64,
    /// `udp`: flows freed after their idle timeout.
    pub flows_expired: AtomicU64,
    /// `udp`: datagrams from clients not carried (too large for the tunnel, no path yet).
    pub datagrams_dropped: AtomicU64,
}

/// One tunnel as its connections see it: the route, its connection slots and counters.
pub(crate) struct StreamTarget {
    pub(crate) route: StreamRoute,
    slots: Arc<Semaphore>,
    stats: Arc<StreamStats>,
    /// Fired when a `tls` tunnel's hostname goes away: its open connections close.
    pub(crate) retired: CancellationToken,
}

impl StreamTarget {
    pub(crate) fn stats(&self) -> &StreamStats {
        &self.stats
    }
}

/// What every stream tunnel shares: the way to Agents, their health, and the counters.
pub struct Splicer {
    dialer: Arc<dyn Dialer>,
    balancer: Balancer,
    connect_timeout: Duration,
    /// Connections one tunnel may hold on this Gateway when it sets no `max_connections`.
    default_cap: usize,
    stats: ArcSwap<HashMap<i64, Arc<StreamStats>>>,
}

impl Splicer {
    pub(crate) fn new(
        dialer: Arc<dyn Dialer>,
        connect_timeout: Duration,
        default_cap: usize,
    ) -> Self {
        Self {
            dialer,
            balancer: Balancer::new(),
            connect_timeout,
            default_cap: default_cap.max(1),
            stats: ArcSwap::from_pointee(HashMap::new()),
        }
    }

    /// The target of `route`, keeping the tunnel's counters.
    pub(crate) fn target(&self, route: StreamRoute) -> Arc<StreamTarget> {
        let cap = route
            .max_connections
            .map_or(self.default_cap, |c| c as usize)
            .clamp(1, Semaphore::MAX_PERMITS);
        let stats = match self.stats.load().get(&route.tunnel_id) {
            Some(s) => s.clone(),
            None => {
                let fresh = Arc::new(StreamStats::default());
                let id = route.tunnel_id;
                self.stats.rcu(|m| {
                    let mut m = HashMap::clone(m);
                    m.entry(id).or_insert_with(|| fresh.clone());
                    m
                });
                self.stats.load().get(&id).cloned().unwrap_or(fresh)
            }
        };
        Arc::new(StreamTarget {
            route,
            slots: Arc::new(Semaphore::new(cap)),
            stats,
            retired: CancellationToken::new(),
        })
    }

    /// Keeps the counters of these tunnels only (the others were deleted or disabled).
    pub(crate) fn retain_stats(&self, tunnels: &std::collections::HashSet<i64>) {
        self.stats.rcu(|m| {
            let mut m = HashMap::clone(m);
            m.retain(|id, _| tunnels.contains(id));
            m
        });
    }

    /// Every stream tunnel's counters, by tunnel id.
    pub fn stats(&self) -> BTreeMap<i64, Arc<StreamStats>> {
        self.stats
            .load()
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .collect()
    }

    /// A slot for a connection from `client`, or `None` (counted) when the IP lists refuse it or
    /// the tunnel has all its connections open.
    pub(crate) fn admit(
        &self,
        target: &Arc<StreamTarget>,
        client: std::net::IpAddr,
    ) -> Option<Admitted> {
        if !target.route.limits.admits_ip(client) {
            target.stats.ip_denied.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(tunnel_id = target.route.tunnel_id, %client, "client refused by the tunnel's IP lists");
            return None;
        }
        match target.slots.clone().try_acquire_owned() {
            Ok(slot) => Some(Admitted {
                target: target.clone(),
                _slot: slot,
            }),
            Err(_) => {
                target.stats.over_capacity.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(tunnel_id = target.route.tunnel_id, %client, "tunnel at max_connections; connection refused");
                None
            }
        }
    }

    /// Carries `client` (whose first bytes, already read, are `prefix`) to the tunnel's target
    /// until either side closes or `stop` fires.
    pub(crate) async fn splice<C>(
        self: Arc<Self>,
        mut client: C,
        peer: SocketAddr,
        local: SocketAddr,
        admitted: Admitted,
        prefix: Bytes,
        stop: CancellationToken,
    ) where
        C: AsyncRead + AsyncWrite + Unpin,
    {
        let target = &admitted.target;
        let tunnel_id = target.route.tunnel_id;
        let Some(mut upstream) = self.connect(&target.route).await else {
            target.stats.upstream_failed.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let stats = &target.stats;
        stats.connections.fetch_add(1, Ordering::Relaxed);
        stats.active.fetch_add(1, Ordering::Relaxed);
        let _active = Decrement(&stats.active);
        let header = proxy_header::encode(target.route.proxy_protocol, peer, local);
        let opening = async {
            if let Some(header) = header {
                upstream.write_all(&header).await?;
            }
            if !prefix.is_empty() {
                upstream.write_all(&prefix).await?;
            }
            std::io::Result::Ok(())
        };
        if let Err(e) = opening.await {
            tracing::debug!(tunnel_id, %peer, error = %e, "the stream to the agent closed at once");
            return;
        }
        stats
            .bytes_in
            .fetch_add(prefix.len() as u64, Ordering::Relaxed);
        let copy = tokio::io::copy_bidirectional_with_sizes(
            &mut client,
            &mut upstream,
            COPY_BUFFER,
            COPY_BUFFER,
        );
        tokio::select! {
            result = copy => match result {
                Ok((sent, received)) => {
                    stats.bytes_in.fetch_add(sent, Ordering::Relaxed);
                    stats.bytes_out.fetch_add(received, Ordering::Relaxed);
                }
                Err(e) => tracing::debug!(tunnel_id, %peer, error = %e, "stream connection ended with an error"),
            },
            () = stop.cancelled() => {
                tracing::debug!(tunnel_id, %peer, "tunnel removed; closing its open connection");
            }
        }
    }

    /// A UDP flow to the first Agent of the tunnel the Gateway has a path to, and its address:
    /// round-robin over replicas, skipping Agents that recently failed (see the proxy's
    /// balancer). An Agent without a WireGuard path refuses at once, so the next one is tried.
    pub(crate) fn open_flow(
        &self,
        target: &StreamTarget,
    ) -> Option<(kakuremichi_tunnel::TunnelUdp, SocketAddrV4)> {
        let route = &target.route;
        for t in self.balancer.order(route.tunnel_id, route.targets.clone()) {
            let addr = SocketAddrV4::new(t.agent_address, t.port);
            match self.dialer.udp(addr) {
                Ok(flow) => {
                    self.balancer.succeeded(t.agent_id);
                    return Some((flow, addr));
                }
                Err(e) => {
                    tracing::debug!(tunnel_id = route.tunnel_id, agent_id = t.agent_id, error = %e, "cannot open a udp flow to the agent");
                    self.balancer.failed(t.agent_id);
                }
            }
        }
        None
    }

    /// A stream to the first Agent of `route` that accepts one, in the balancer's order.
    pub(crate) async fn connect(&self, route: &StreamRoute) -> Option<BoxStream> {
        for t in self.balancer.order(route.tunnel_id, route.targets.clone()) {
            let addr = SocketAddrV4::new(t.agent_address, t.port);
            match tokio::time::timeout(self.connect_timeout, self.dialer.dial(addr)).await {
                Ok(Ok(stream)) => {
                    self.balancer.succeeded(t.agent_id);
                    return Some(stream);
                }
                Ok(Err(e)) => {
                    tracing::debug!(tunnel_id = route.tunnel_id, agent_id = t.agent_id, error = %e, "cannot open a stream to the agent");
                }
                Err(_) => {
                    tracing::debug!(
                        tunnel_id = route.tunnel_id,
                        agent_id = t.agent_id,
                        "the agent did not accept the stream in time"
                    );
                }
            }
            self.balancer.failed(t.agent_id);
        }
        tracing::debug!(
            tunnel_id = route.tunnel_id,
            "no agent of the tunnel accepted the connection; closed"
        );
        None
    }
}

/// A connection let in: its tunnel, and the slot it holds under the tunnel's cap until it ends.
pub(crate) struct Admitted {
    target: Arc<StreamTarget>,
    _slot: OwnedSemaphorePermit,
}

/// Decrements a gauge when dropped.
struct Decrement<'a>(&'a AtomicU64);

impl Drop for Decrement<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
