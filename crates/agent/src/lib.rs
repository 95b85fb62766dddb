//! kakuremichi Agent: runs next to the apps. Outbound connections only: a WebSocket to Control
//! and WireGuard (UDP, in userspace) to every enabled Gateway. Streams that Gateways open to a
//! tunnel's port are forwarded to that tunnel's target (`localhost:8080`, `app:3000`); the
//! datagrams of `udp` tunnels are relayed to theirs over UDP (see [`datagrams`]).
//!
//! No root, no TUN device, no listening port on the host. Where UDP to a Gateway is blocked,
//! WireGuard to it goes over TLS to its HTTPS port instead (see [`fallback`]). Prometheus
//! metrics ([`metrics`]) are served only on request, on a listener of their own.

mod check;
mod datagrams;
mod fallback;
mod forward;
mod metrics;

use anyhow::Context;
use arc_swap::ArcSwap;
use kakuremichi_node::{ConfigError, NodeConfig, NodeRuntime, Secret, Step};
use kakuremichi_proto::{AgentService, ConfigSnapshot, NodeRole, TunnelProtocol};
use kakuremichi_tunnel::{Device, DeviceConfig, PeerConfig, PrivateKey, PublicKey};
use std::collections::HashMap;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Keepalive towards Gateways, in seconds: holds NAT mappings open and detects a lost path.
/// Shorter than WireGuard's usual 25 s so that a changed NAT mapping (whose first keepalive may
/// still leave through the stale one) recovers within 30 s.
const PERSISTENT_KEEPALIVE: u16 = 15;
/// How often Gateway endpoints are resolved again (DNS changes, a Gateway that moved).
const RESOLVE_INTERVAL: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Control's base URL (`CONTROL_URL`).
    pub control_url: String,
    /// The agent's API key (`API_KEY`), created in Control.
    pub api_key: Secret,
    /// Where the WireGuard key and the last config are kept; `None` keeps nothing on disk.
    pub data_dir: Option<PathBuf>,
    /// How long to wait for a tunnel's target to accept a connection.
    pub target_connect_timeout: Duration,
    /// Gateways' HTTPS port, where WireGuard goes over TLS when UDP gets no answer; 0 turns the
    /// fallback off.
    pub wg_fallback_port: u16,
    /// Where to serve Prometheus `/metrics` (plain HTTP, no authentication: keep it private);
    /// `None`, the default: nowhere, and the Agent listens on no port at all.
    pub metrics_listen: Option<SocketAddr>,
}

impl AgentConfig {
    pub fn new(control_url: impl Into<String>, api_key: Secret) -> Self {
        Self {
            control_url: control_url.into(),
            api_key,
            data_dir: None,
            target_connect_timeout: Duration::from_secs(10),
            wg_fallback_port: 443,
            metrics_listen: None,
        }
    }

    /// Checks the settings, with messages that say what to fix.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.node().validate()
    }

    /// The settings every node has.
    fn node(&self) -> NodeConfig {
        NodeConfig {
            role: NodeRole::Agent,
            control_url: self.control_url.clone(),
            credential: self.api_key.clone(),
            data_dir: self.data_dir.clone(),
        }
    }
}

/// Runs the Agent until `shutdown` resolves.
pub async fn run(
    config: AgentConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let metrics = Arc::new(metrics::AgentMetrics::default());
    let metrics_listener = match config.metrics_listen {
        Some(addr) => Some(metrics::bind(addr).await?),
        None => None,
    };
    let mut node = NodeRuntime::start(config.node(), shutdown, RESOLVE_INTERVAL)?;
    tracing::info!(public_key = %node.key().public_key(), "agent starting");
    // Served until `run` returns.
    let _metrics_served = metrics_listener.map(|l| metrics::serve(l, metrics.clone()));
    let mut agent = Agent::new(
        node.key().clone(),
        config.target_connect_timeout,
        config.wg_fallback_port,
    );
    node.answer_queries(check::handler(
        agent.current.clone(),
        config.target_connect_timeout,
    ));
    agent.metrics = metrics;
    if let Some(snapshot) = node.take_cached() {
        tracing::info!("starting from cached config while Control is contacted");
        agent.apply(Arc::new(snapshot)).await?;
    }
    loop {
        match node.next().await {
            Step::Apply(snapshot) => agent.apply(snapshot).await?,
            Step::Tick => agent.refresh_peers().await,
            Step::Stop => break,
        }
    }
    drop(node); // ends the link to Control
    agent.metrics.clear_device();
    tracing::info!("agent stopped");
    Ok(())
}

/// One tunnel as the forwarding tasks see it. `retired` fires when the tunnel's target changes
/// or the tunnel goes away: its open connections are then cut, so that no pooled connection on
/// a Gateway keeps reaching the old target.
#[derive(Debug)]
pub(crate) struct Service {
    pub tunnel_id: i64,
    pub target: String,
    /// `udp`: datagrams relayed over UDP (`datagrams`); otherwise TCP streams (`forward`).
    pub udp: bool,
    /// `udp`: how long the Gateways keep an idle flow.
    pub udp_idle: Duration,
    pub retired: tokio_util::sync::CancellationToken,
    /// The tunnel's connects and target errors (kept across a change of target).
    pub stats: Arc<metrics::TargetStats>,
}

impl Service {
    fn new(s: &AgentService, stats: Arc<metrics::TargetStats>) -> Self {
        Service {
            tunnel_id: s.tunnel_id,
            target: s.target.clone(),
            udp: s.protocol == TunnelProtocol::Udp,
            udp_idle: s.udp_idle_timeout(),
            retired: Default::default(),
            stats,
        }
    }

    /// True when `s` is served by this as it is (same target, protocol and timeout).
    fn serves(&self, s: &AgentService) -> bool {
        self.tunnel_id == s.tunnel_id
            && self.target == s.target
            && self.udp == (s.protocol == TunnelProtocol::Udp)
            && self.udp_idle == s.udp_idle_timeout()
    }
}

/// Port → service, shared with the forwarding tasks.
pub(crate) type Services = Arc<ArcSwap<HashMap<u16, Arc<Service>>>>;

struct Agent {
    key: PrivateKey,
    device: Option<Device>,
    services: Services,
    snapshot: Option<Arc<ConfigSnapshot>>,
    /// The snapshot applied, for Control's target checks.
    current: Arc<arc_swap::ArcSwapOption<ConfigSnapshot>>,
    target_connect_timeout: Duration,
    wg_fallback_port: u16,
    /// The TLS fallback's supervisor of each Gateway peer.
    fallbacks: HashMap<PublicKey, fallback::Supervisor>,
    metrics: Arc<metrics::AgentMetrics>,
}

impl Agent {
    fn new(key: PrivateKey, target_connect_timeout: Duration, wg_fallback_port: u16) -> Self {
        Self {
            key,
            device: None,
            services: Arc::default(),
            snapshot: None,
            current: Default::default(),
            target_connect_timeout,
            wg_fallback_port,
            fallbacks: HashMap::new(),
            metrics: Arc::default(),
        }
    }

    async fn apply(&mut self, snapshot: Arc<ConfigSnapshot>) -> anyhow::Result<()> {
        if self.device.as_ref().map(Device::address) != Some(snapshot.wg_address) {
            self.fallbacks.clear();
            self.device = Some(self.start_device(snapshot.wg_address).await?);
        }
        let device = self.device.as_ref().expect("device started above");
        let old = self.services.load_full();
        self.metrics
            .update(snapshot.services.iter().map(|s| s.tunnel_id));
        let services: HashMap<u16, Arc<Service>> = snapshot
            .services
            .iter()
            .map(|s| {
                let service = match old.get(&s.port) {
                    Some(existing) if existing.serves(s) => existing.clone(),
                    _ => {
                        let stats = self.metrics.tunnel(s.tunnel_id);
                        let service = Arc::new(Service::new(s, stats));
                        if service.udp {
                            // Bound now: it takes the port over from the service it replaces.
                            let port = device.bind_udp(s.port);
                            tokio::spawn(datagrams::relay(port, service.clone()));
                        }
                        service
                    }
                };
                (s.port, service)
            })
            .collect();
        let streams = services.iter().filter(|(_, s)| !s.udp).map(|(p, _)| *p);
        device.set_listen_ports(streams);
        self.services.store(Arc::new(services.clone()));
        for (port, service) in old.iter() {
            if !services.get(port).is_some_and(|s| Arc::ptr_eq(s, service)) {
                service.retired.cancel();
            }
        }
        for s in &snapshot.services {
            tracing::debug!(hostname = %s.hostname, target = %s.target, port = s.port, "serving tunnel");
        }
        tracing::info!(
            tunnels = snapshot.services.len(),
            gateways = snapshot.peers.len(),
            "config applied"
        );
        self.current.store(Some(snapshot.clone()));
        self.snapshot = Some(snapshot);
        self.refresh_peers().await;
        Ok(())
    }

    async fn start_device(&self, address: Ipv4Addr) -> anyhow::Result<Device> {
        let config = DeviceConfig::new(
            self.key.clone(),
            address,
            SocketAddr::from(([0, 0, 0, 0], 0)),
        );
        let (device, acceptor) = Device::bind(config)
            .await
            .context("binding the WireGuard socket")?;
        tokio::spawn(forward::accept_loop(
            acceptor,
            self.services.clone(),
            self.target_connect_timeout,
        ));
        self.metrics.set_device(device.clone());
        tracing::info!(%address, "tunnel interface up");
        Ok(device)
    }

    /// Resolves every Gateway's endpoint and hands the peer set to the device; starts (or
    /// stops) the TLS fallback's supervisor of each.
    async fn refresh_peers(&mut self) {
        let (Some(device), Some(snapshot)) = (&self.device, &self.snapshot) else {
            return;
        };
        let mut fallbacks = HashMap::new();
        let mut peers = Vec::new();
        for gw in &snapshot.peers {
            let Ok(public_key) = PublicKey::from_base64(&gw.public_key) else {
                tracing::warn!(gateway = %gw.name, "gateway has an invalid public key; skipped");
                continue;
            };
            let Some(endpoint) = &gw.endpoint else {
                continue;
            };
            if let Some(host) =
                fallback::endpoint_host(endpoint).filter(|_| self.wg_fallback_port != 0)
            {
                let target = format!("{host}:{}", self.wg_fallback_port);
                let supervisor = match self.fallbacks.remove(&public_key) {
                    Some(s) if s.target == target => s,
                    _ => fallback::Supervisor::start(
                        device.clone(),
                        public_key,
                        gw.name.clone(),
                        host.to_string(),
                        self.wg_fallback_port,
                    ),
                };
                fallbacks.insert(public_key, supervisor);
            }
            match resolve_v4(endpoint).await {
                Some(addr) => peers.push(PeerConfig {
                    public_key,
                    allowed_ip: gw.wg_address,
                    endpoint: Some(addr),
                    persistent_keepalive: Some(PERSISTENT_KEEPALIVE),
                }),
                None => {
                    tracing::warn!(gateway = %gw.name, %endpoint, "cannot resolve the gateway's endpoint to an IPv4 address; will retry")
                }
            }
        }
        device.set_peers(peers);
        // Supervisors of Gateways no longer configured stop here (and close their streams).
        self.fallbacks = fallbacks;
    }
}

async fn resolve_v4(endpoint: &str) -> Option<SocketAddr> {
    let addrs = tokio::net::lookup_host(endpoint).await.ok()?;
    addrs.into_iter().find(SocketAddr::is_ipv4)
}
