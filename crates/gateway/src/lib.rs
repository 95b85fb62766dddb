//! kakuremichi Gateway: the public entrance. Routes each request by Host to the Agent that serves
//! it, over a userspace WireGuard tunnel.
//!
//! [`run`] wires three things together: the link to Control (config snapshots, cached on disk;
//! shared with the Agent in `kakuremichi_node`), the WireGuard device with every Agent as a peer, and the HTTP and HTTPS proxy whose
//! route table, certificates (see [`tls`]) and dialer follow the latest snapshot. Certificates
//! travel inside the snapshot, so the on-disk snapshot cache (mode 0600) is also the certificate
//! cache: a restarted Gateway serves HTTPS before, or without, reaching Control.

mod endpoints;
pub mod hostmap;
pub mod proxy;
pub mod streams;
pub mod tls;

use anyhow::Context;
use arc_swap::ArcSwapOption;
use endpoints::EndpointMemory;
use kakuremichi_node::{ConfigError, NodeConfig, NodeRuntime, NodeStatus, Secret, Step};
use kakuremichi_proto::{ConfigSnapshot, NodeRole, OwnPort, TunnelProtocol};
use kakuremichi_tunnel::{Device, DeviceConfig, PeerConfig, PrivateKey, PublicKey};
use proxy::{BoxStream, Dialer, Proxy, ProxyConfig, RouteTable};
use std::collections::HashMap;
use std::future::Future;
use std::net::{SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Keepalive towards Agents, in seconds (the Agents use the same).
const AGENT_KEEPALIVE: u16 = 15;

/// How often learned Agent endpoints are written to disk.
/// Cheap: the file is rewritten only when an endpoint changed.
const REMEMBER_ENDPOINTS: Duration = Duration::from_secs(1);
/// How often the stream tunnels' counters are reported to Control at most.
const COUNTERS_EVERY: Duration = Duration::from_secs(5);
/// How often every tunnel's traffic is reported to Control at most (its history's grain).
const TRAFFIC_EVERY: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Control's base URL (`CONTROL_URL`).
    pub control_url: String,
    /// The gateway's token (`GATEWAY_TOKEN`), created in Control.
    pub token: Secret,
    /// Where the WireGuard key and the last config are kept; `None` keeps nothing on disk.
    pub data_dir: Option<PathBuf>,
    pub proxy: ProxyConfig,
    /// The port browsers reach HTTPS on when it is not the listener's own (a router forwards
    /// 443 to it): in http → https redirects and tunnels' public URLs. `None`: the listener's.
    pub public_https_port: Option<u16>,
    /// The same for HTTP (tunnels with `tls: off`). `None`: the HTTP listener's own port.
    pub public_http_port: Option<u16>,
    /// Where `tcp` tunnels' public ports are bound (`--ports-listen-ip`).
    pub ports_listen_ip: std::net::IpAddr,
    /// Every HTTP request as a JSON line on stdout (`--access-log`).
    pub access_log: bool,
    /// Count each HTTP request per tunnel (`--request-metrics`, on by default): the metrics,
    /// Control's traffic history and its error-rate alert come from these counters.
    pub request_metrics: bool,
}

impl GatewayConfig {
    pub fn new(control_url: impl Into<String>, token: Secret) -> Self {
        Self {
            control_url: control_url.into(),
            token,
            data_dir: None,
            proxy: ProxyConfig::default(),
            public_https_port: None,
            public_http_port: None,
            ports_listen_ip: std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
            access_log: false,
            request_metrics: true,
        }
    }

    /// Checks the settings, with messages that say what to fix.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.node().validate()
    }

    /// The settings every node has.
    fn node(&self) -> NodeConfig {
        NodeConfig {
            role: NodeRole::Gateway,
            control_url: self.control_url.clone(),
            credential: self.token.clone(),
            data_dir: self.data_dir.clone(),
        }
    }
}

/// The sockets a Gateway serves on, bound by the caller (ephemeral ports in tests).
pub struct GatewayListeners {
    /// Public HTTP.
    pub http: TcpListener,
    /// Public HTTPS (TLS by SNI with the certificates Control distributes).
    pub https: TcpListener,
    /// Health checks (`/healthz`), normally on loopback.
    pub admin: TcpListener,
    /// WireGuard, where Agents send their handshakes.
    pub wg: std::net::UdpSocket,
}

/// Answers Control's questions: a tunnel's logged requests.
fn answer_queries(log: Arc<proxy::reqlog::RequestLog>) -> kakuremichi_node::QueryHandler {
    Arc::new(move |query| {
        let answer = match query {
            kakuremichi_proto::Query::RequestLog { tunnel_id, filter } => {
                log.answer(tunnel_id, &filter)
            }
            _ => kakuremichi_proto::Answer::error("a Gateway answers request-log questions only"),
        };
        Box::pin(std::future::ready(answer))
    })
}

/// Runs the Gateway until `shutdown` resolves; in-flight requests are then drained.
pub async fn run(
    config: GatewayConfig,
    listeners: GatewayListeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let mut node = NodeRuntime::start(config.node(), shutdown, REMEMBER_ENDPOINTS)?;
    tracing::info!(public_key = %node.key().public_key(), "gateway starting");
    // Cancelled to drain the listeners; also when `run` returns early with an error.
    let stop = CancellationToken::new();
    let _stop_on_return = stop.clone().drop_guard();
    let (mut gateway, servers) = Gateway::start(&config, listeners, &node, &stop)?;
    node.answer_queries(answer_queries(gateway.routes.request_log().clone()));
    if let Some(snapshot) = node.take_cached() {
        tracing::info!("starting from cached config while Control is contacted");
        gateway.apply(&snapshot)?;
    }
    node.report(gateway.status());
    loop {
        match node.next().await {
            Step::Apply(snapshot) => gateway.apply(&snapshot)?,
            Step::Tick => {
                gateway.remember_endpoints();
                gateway.tcp_ports.retry();
                gateway.udp_ports.retry();
            }
            Step::Stop => break,
        }
        node.report(gateway.status());
    }
    gateway.tcp_ports.close_all();
    gateway.udp_ports.close_all();
    gateway.remember_endpoints();
    drop(node); // ends the link to Control
    tracing::info!("gateway draining in-flight requests");
    stop.cancel();
    servers.drained().await;
    tracing::info!("gateway stopped");
    Ok(())
}

/// The Gateway's listeners, serving until the stop token is cancelled.
struct Servers {
    http: JoinHandle<std::io::Result<()>>,
    https: JoinHandle<std::io::Result<()>>,
    admin: JoinHandle<std::io::Result<()>>,
}

impl Servers {
    fn start(
        (http, https, admin): (TcpListener, TcpListener, TcpListener),
        proxy: Arc<Proxy>,
        stop: &CancellationToken,
    ) -> Self {
        let stopped = || stop.clone().cancelled_owned();
        Self {
            http: tokio::spawn(proxy::serve(http, proxy.clone(), stopped())),
            https: tokio::spawn(proxy::serve_tls(https, proxy.clone(), stopped())),
            admin: tokio::spawn({
                let stopped = stopped();
                async move { proxy::serve_admin_for(admin, &proxy, stopped).await }
            }),
        }
    }

    /// Waits until every listener has drained its in-flight requests.
    async fn drained(self) {
        let _ = self.http.await;
        let _ = self.https.await;
        let _ = self.admin.await;
    }
}

struct Gateway {
    key: PrivateKey,
    /// The WireGuard socket until the device takes it (once the tunnel address is known).
    wg_socket: Option<std::net::UdpSocket>,
    device: Option<Device>,
    routes: Arc<RouteTable>,
    certs: Arc<tls::CertStore>,
    access: Arc<proxy::access::AccessGate>,
    /// Where browsers are sent to sign in when Control does not announce its public URL.
    control_url: String,
    dialer: Arc<TunnelDialer>,
    endpoints: EndpointMemory,
    /// Endpoints from the previous run, used once when the device starts.
    remembered: HashMap<PublicKey, SocketAddr>,
    /// `tcp` and `udp` tunnels' public ports.
    tcp_ports: streams::PublicPorts,
    udp_ports: streams::PublicPorts,
    /// The stream counters last reported, and when they were read.
    counters: (
        Vec<kakuremichi_proto::StreamCounters>,
        Option<std::time::Instant>,
    ),
    /// Every tunnel's traffic last reported, and when it was read.
    traffic: (
        Vec<kakuremichi_proto::TunnelTraffic>,
        Option<std::time::Instant>,
    ),
    /// `tls` tunnels by SNI (shared with the HTTPS listener).
    passthrough: Arc<streams::Passthrough>,
    /// The ports this Gateway listens on for itself, reported to Control.
    own_ports: Vec<OwnPort>,
    /// The ports browsers reach its HTTP and HTTPS on, reported to Control for public URLs.
    web_ports: kakuremichi_proto::WebPorts,
}

impl Gateway {
    /// Builds the proxy and starts serving; the tunnel comes up with the first snapshot.
    fn start(
        config: &GatewayConfig,
        listeners: GatewayListeners,
        node: &NodeRuntime<'_>,
        stop: &CancellationToken,
    ) -> anyhow::Result<(Self, Servers)> {
        let routes = Arc::new(RouteTable::new());
        routes.request_log().set_access_log(config.access_log);
        if !config.request_metrics {
            routes.metrics().turn_off();
        }
        let dialer = Arc::new(TunnelDialer::default());
        let mut proxy_config = config.proxy.clone();
        let web_ports = kakuremichi_proto::WebPorts {
            http: match config.public_http_port {
                Some(port) => port,
                None => listeners.http.local_addr()?.port(),
            },
            https: match config.public_https_port {
                Some(port) => port,
                None => listeners.https.local_addr()?.port(),
            },
        };
        proxy_config.https_port = web_ports.https;
        let proxy = Proxy::new(routes.clone(), dialer.clone(), proxy_config);
        let GatewayListeners {
            http,
            https,
            admin,
            wg,
        } = listeners;
        let tcp = |l: &TcpListener| l.local_addr().ok().map(|a| (TunnelProtocol::Tcp, a.port()));
        let own_ports = [tcp(&http), tcp(&https), tcp(&admin)]
            .into_iter()
            .chain([wg
                .local_addr()
                .ok()
                .map(|a| (TunnelProtocol::Udp, a.port()))])
            .flatten()
            .map(|(protocol, port)| OwnPort { protocol, port })
            .collect();
        let passthrough = proxy.passthrough().clone();
        let ports = |protocol| {
            let splicer = passthrough.splicer().clone();
            streams::PublicPorts::new(protocol, config.ports_listen_ip, splicer)
        };
        let (tcp_ports, udp_ports) = (ports(TunnelProtocol::Tcp), ports(TunnelProtocol::Udp));
        let gateway = Gateway {
            key: node.key().clone(),
            wg_socket: Some(wg),
            device: None,
            routes: routes.clone(),
            certs: proxy.certs().clone(),
            access: proxy.access().clone(),
            control_url: kakuremichi_node::first_control_url(&config.control_url).to_string(),
            dialer,
            endpoints: EndpointMemory::new(node.state().clone()),
            remembered: HashMap::new(),
            tcp_ports,
            udp_ports,
            counters: (Vec::new(), None),
            traffic: (Vec::new(), None),
            passthrough,
            own_ports,
            web_ports,
        };
        let servers = Servers::start((http, https, admin), proxy, stop);
        Ok((gateway, servers))
    }

    /// What Control should know: ports this Gateway could not bind, its own, and what its
    /// stream tunnels carried (read again every [`COUNTERS_EVERY`] at most, so that traffic
    /// does not make a message per tick).
    fn status(&mut self) -> NodeStatus {
        let (last, read_at) = &mut self.counters;
        if read_at.is_none_or(|t| t.elapsed() >= COUNTERS_EVERY) {
            let stats = self.passthrough.splicer().stats();
            let load =
                |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
            *last = stats
                .iter()
                .take(kakuremichi_proto::MAX_STREAM_COUNTERS)
                .map(|(&tunnel_id, s)| kakuremichi_proto::StreamCounters {
                    tunnel_id,
                    connections: load(&s.connections),
                    active: load(&s.active),
                    bytes_in: load(&s.bytes_in),
                    bytes_out: load(&s.bytes_out),
                })
                .collect();
            *read_at = Some(std::time::Instant::now());
        }
        let (traffic, read_at) = &mut self.traffic;
        if read_at.is_none_or(|t| t.elapsed() >= TRAFFIC_EVERY) {
            *traffic = proxy::metrics::traffic(&self.routes, self.passthrough.splicer());
            *read_at = Some(std::time::Instant::now());
        }
        NodeStatus {
            port_errors: [self.tcp_ports.errors(), self.udp_ports.errors()].concat(),
            own_ports: self.own_ports.clone(),
            stream_counters: last.clone(),
            web_ports: Some(self.web_ports),
            traffic: traffic.clone(),
        }
    }

    fn remember_endpoints(&mut self) {
        if let Some(device) = &self.device {
            self.endpoints.save(device);
        }
    }

    fn apply(&mut self, snapshot: &ConfigSnapshot) -> anyhow::Result<()> {
        let device = match &self.device {
            Some(d) if d.address() == snapshot.wg_address => d.clone(),
            Some(d) => {
                // Control never re-addresses a node; if it did, a restart picks it up.
                anyhow::bail!(
                    "Control changed this gateway's tunnel address from {} to {}; restart the gateway",
                    d.address(),
                    snapshot.wg_address
                );
            }
            None => {
                let socket = self
                    .wg_socket
                    .take()
                    .expect("socket kept until the device exists");
                let config = DeviceConfig::new(
                    self.key.clone(),
                    snapshot.wg_address,
                    SocketAddr::from(([0, 0, 0, 0], 0)),
                );
                let (device, _acceptor) =
                    Device::with_socket(config, socket).context("starting WireGuard")?;
                tracing::info!(address = %snapshot.wg_address, udp = ?device.local_addr().ok(), "tunnel interface up");
                self.dialer.device.store(Some(Arc::new(device.clone())));
                self.certs.set_wireguard(device.clone());
                self.remembered = self.endpoints.load();
                self.device = Some(device.clone());
                device
            }
        };
        let peers = snapshot
            .peers
            .iter()
            .filter_map(|agent| match PublicKey::from_base64(&agent.public_key) {
                Ok(public_key) => Some(PeerConfig {
                    public_key,
                    allowed_ip: agent.wg_address,
                    // Known from a previous run: initiate, so Agents reconnect at once.
                    endpoint: self.remembered.remove(&public_key),
                    // Keepalives both ways: NAT mappings stay fresh, and a silent peer means a
                    // dead path to the side that re-handshakes.
                    persistent_keepalive: Some(AGENT_KEEPALIVE),
                }),
                Err(_) => {
                    tracing::warn!(agent = %agent.name, "agent has an invalid public key; skipped");
                    None
                }
            })
            .collect();
        device.set_peers(peers);
        self.routes.error_pages().replace(
            &snapshot.error_pages,
            snapshot.default_error_page.as_deref(),
        );
        self.routes.replace(snapshot.routes.clone());
        let plain = snapshot
            .routes
            .iter()
            .filter(|(_, r)| r.plain_http_only)
            .map(|(host, _)| host.clone());
        self.certs
            .apply(&snapshot.certificates, &snapshot.acme, plain.collect());
        self.access.apply(&snapshot.access, &self.control_url);
        self.tcp_ports.apply(&snapshot.tcp_ports);
        self.udp_ports.apply(&snapshot.udp_ports);
        self.passthrough.apply(&snapshot.tls_passthrough);
        let streams = snapshot
            .tcp_ports
            .values()
            .chain(snapshot.udp_ports.values())
            .chain(snapshot.tls_passthrough.values());
        let tunnels = streams.map(|r| r.tunnel_id).collect();
        self.passthrough.splicer().retain_stats(&tunnels);
        tracing::info!(
            hostnames = snapshot.routes.len(),
            tcp_ports = snapshot.tcp_ports.len(),
            udp_ports = snapshot.udp_ports.len(),
            tls_passthrough = snapshot.tls_passthrough.len(),
            certificates = self.certs.len(),
            agents = snapshot.peers.len(),
            "config applied"
        );
        Ok(())
    }
}

/// Opens streams to Agents through the WireGuard device, once it exists.
#[derive(Default)]
struct TunnelDialer {
    device: ArcSwapOption<Device>,
}

impl Dialer for TunnelDialer {
    fn dial(
        &self,
        addr: SocketAddrV4,
    ) -> Pin<Box<dyn Future<Output = std::io::Result<BoxStream>> + Send + '_>> {
        let device = self.device.load_full();
        Box::pin(async move {
            let device = device.ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::NotConnected,
                    "no tunnel yet: waiting for the first config from Control",
                )
            })?;
            let stream = device.connect(addr).await?;
            Ok(Box::new(stream) as BoxStream)
        })
    }

    fn udp(&self, addr: SocketAddrV4) -> std::io::Result<kakuremichi_tunnel::TunnelUdp> {
        let device = self.device.load_full().ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotConnected,
                "no tunnel yet: waiting for the first config from Control",
            )
        })?;
        device.connect_udp(addr)
    }
}
