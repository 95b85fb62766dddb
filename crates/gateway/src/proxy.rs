//! The Gateway's HTTP reverse proxy: accepts browser connections (HTTP/1.1 and h2c), picks the
//! route for each request's host and forwards it over a tunnel stream to the Agent serving that
//! host.
//!
//! The proxy knows nothing about WireGuard: it opens upstream connections through a [`Dialer`],
//! which the Gateway backs with its userspace tunnel and tests back with plain TCP.
//!
//! Layout:
//! - [`routes`]: the hostname → route table, swapped atomically on each config snapshot.
//! - `balance`: spreads requests over a tunnel's replicas and skips Agents that fail.
//! - `upstream`: upstream connections, driven by the request's own task, and their pools.
//! - `headers`: host normalisation, hop-by-hop stripping, `X-Forwarded-*` / `Forwarded`.
//! - `forward`: the per-request handler, including HTTP/1.1 upgrades (WebSocket).
//! - `pages`: the small error pages the proxy answers itself.
//! - [`custom_pages`]: the custom error pages from Control that replace them.
//! - `redirect`: ACME HTTP-01 answers, the http → https `308` and HSTS.
//! - [`reqlog`]: request ids, the per-tunnel request log and the access log.
//! - [`limits`]: per-tunnel IP lists, rate and concurrency limits, and their refusal counters.
//! - `server`: accept loops, connection caps, timeouts and graceful drain.
//! - `admin`: the admin listener's `/healthz` and `/metrics` ([`metrics`]: Prometheus).
//! - `client_cap`: the per-client-address connection cap shared by the public listeners.
//! - `timeouts`: first-request, idle, request-body and WebSocket inactivity timeouts.
//! - [`access`]: per-tunnel access control (access cookie, hand-off from Control, user header).

pub mod access;
mod admin;
pub(crate) mod balance;
mod client_cap;
pub mod custom_pages;
mod forward;
mod headers;
pub mod limits;
pub mod metrics;
mod pages;
mod redirect;
pub mod reqlog;
pub mod routes;
mod server;
mod tcp_access;
mod timeouts;
mod upstream;

/// The WebSocket of `tcp` tunnels with access control, for `kakuremichi access tcp`.
pub use tcp_access::{bridge as bridge_websocket, TCP_PATH};

use std::future::Future;
use std::net::SocketAddrV4;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};

pub use routes::RouteTable;
pub use server::{
    serve, serve_admin, serve_admin_for, serve_admin_with_limits, serve_tls, serve_with_scheme,
};

use crate::tls::CertStore;

/// What the proxy needs of a byte stream to an Agent: any async I/O (a
/// `kakuremichi_tunnel::TunnelStream` through the tunnel, or a plain socket in tests).
pub trait UpstreamIo: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> UpstreamIo for T {}

/// An owned, type-erased [`UpstreamIo`].
pub type BoxStream = Box<dyn UpstreamIo>;

/// Opens streams to Agents. The Gateway implements this with its WireGuard tunnel.
pub trait Dialer: Send + Sync + 'static {
    /// Opens a stream to `addr` (an Agent's tunnel address and a tunnel's port).
    fn dial(
        &self,
        addr: SocketAddrV4,
    ) -> Pin<Box<dyn Future<Output = std::io::Result<BoxStream>> + Send + '_>>;

    /// Opens a UDP flow to `addr` (an Agent's `udp` service). Dialers without UDP refuse.
    fn udp(&self, addr: SocketAddrV4) -> std::io::Result<kakuremichi_tunnel::TunnelUdp> {
        Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            format!("no UDP toward {addr} here"),
        ))
    }
}

/// Limits and timeouts of the proxy. `Default` gives the production values.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// How long opening a stream to an Agent may take before the request fails with 502.
    pub connect_timeout: Duration,
    /// Concurrent client connections per listener; further clients wait in the accept backlog.
    pub max_connections: usize,
    /// Concurrent connections one client may hold on the public listeners together (IPv4 by
    /// address, IPv6 by /64); its further connections are closed at once.
    pub max_connections_per_ip: usize,
    /// How long a client may take to send a request's headers (slowloris protection), and to
    /// send its first request at all. HTTP/1.1 times the next request's headers from the end of
    /// the previous response, so this also bounds an idle HTTP/1.1 keep-alive connection.
    pub header_read_timeout: Duration,
    /// How long a connection with no request in flight stays open (HTTP/2 above all).
    pub idle_timeout: Duration,
    /// How long a request body may send nothing before the request is cut with 408.
    pub body_timeout: Duration,
    /// How long an upgraded (WebSocket) connection may carry no byte either way.
    pub websocket_idle_timeout: Duration,
    /// Concurrent streams one HTTP/2 connection may open.
    pub h2_max_streams: u32,
    /// The port plain-HTTP clients are redirected to (left out of the URL when 443).
    pub https_port: u16,
    /// How long a client may take to complete the TLS handshake.
    pub tls_handshake_timeout: Duration,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            max_connections: 10_000,
            max_connections_per_ip: 256,
            header_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            body_timeout: Duration::from_secs(60),
            websocket_idle_timeout: Duration::from_secs(600),
            h2_max_streams: 100,
            https_port: 443,
            tls_handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// The scheme a listener's clients used, reported upstream in `X-Forwarded-Proto` / `Forwarded`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// The proxy's shared state: routes, the upstream connection pool and limits. One per Gateway,
/// shared by its HTTP and HTTPS listeners.
pub struct Proxy {
    routes: Arc<RouteTable>,
    certs: Arc<CertStore>,
    access: Arc<access::AccessGate>,
    upstreams: Arc<upstream::UpstreamPool>,
    balancer: balance::Balancer,
    /// Shared by the HTTP and HTTPS listeners: a client's connections count once across both.
    client_cap: Arc<client_cap::ClientCap>,
    /// `tls` tunnels, spliced from the HTTPS listener by SNI.
    passthrough: Arc<crate::streams::Passthrough>,
    config: ProxyConfig,
}

impl Proxy {
    pub fn new(routes: Arc<RouteTable>, dialer: Arc<dyn Dialer>, config: ProxyConfig) -> Arc<Self> {
        let splicer = crate::streams::Splicer::new(
            dialer.clone(),
            config.connect_timeout,
            config.max_connections,
        );
        let passthrough = Arc::new(crate::streams::Passthrough::new(Arc::new(splicer)));
        // Keep-alive connections are kept per tunnel target (Agent address and port); as many
        // idle ones as a listener may have client connections.
        let upstreams =
            upstream::UpstreamPool::new(dialer, config.connect_timeout, config.max_connections);
        Arc::new(Self {
            routes,
            certs: Arc::new(CertStore::new()),
            access: Arc::new(access::AccessGate::default()),
            upstreams,
            balancer: balance::Balancer::new(),
            client_cap: client_cap::ClientCap::new(config.max_connections_per_ip),
            passthrough,
            config,
        })
    }

    pub fn routes(&self) -> &Arc<RouteTable> {
        &self.routes
    }

    /// Certificates and ACME challenges, shared by the HTTP and HTTPS listeners.
    pub fn certs(&self) -> &Arc<CertStore> {
        &self.certs
    }

    /// Access-token keys and revocations, from the snapshot.
    pub fn access(&self) -> &Arc<access::AccessGate> {
        &self.access
    }

    /// `tls` tunnels, and the splicer every stream tunnel (`tcp` ports too) goes through.
    pub fn passthrough(&self) -> &Arc<crate::streams::Passthrough> {
        &self.passthrough
    }

    pub fn config(&self) -> &ProxyConfig {
        &self.config
    }
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("routes", &self.routes.len())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}
