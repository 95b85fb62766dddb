//! A tunnel as people see it, in the API's JSON and on the UI's pages: its replicas, access
//! policy, limits and certificate status (see `api::tunnels` for what each field means).

use crate::app::AppState;
use crate::certs::{self, TlsMode};
use crate::error::ApiError;
use crate::store::access::policy_of;
use crate::store::limits::limits_of;
use crate::store::{CertRow, GatewayRow, ReplicaRow, TunnelLimits, TunnelRow};
use kakuremichi_proto::{
    AccessPolicy, PortError, ProxyProtocol, StreamCounters, TunnelProtocol, WebPorts,
};
use serde::Serialize;
use std::collections::HashMap;
use std::sync::Arc;

#[derive(Serialize, utoipa::ToSchema)]
pub struct TunnelView {
    id: i64,
    /// The public name, or a wildcard such as `*.apps.example.com` (every name one label below;
    /// exact names win).
    hostname: String,
    agent_id: i64,
    /// Every Agent serving the tunnel, the primary first.
    agent_ids: Vec<i64>,
    target: String,
    port: i64,
    enabled: bool,
    tls: TlsMode,
    https_redirect: bool,
    access: AccessPolicy,
    #[serde(flatten)]
    limits: TunnelLimits,
    #[schema(value_type = Option<CertificateStatus>)]
    certificate: Option<serde_json::Value>,
    created_at: String,
    updated_at: String,
    owner_id: Option<i64>,
    /// How the hostname stands in DNS: records managed by Control in a managed zone, or the
    /// addresses to point it at yourself (`null` until Control's first DNS pass).
    dns: Option<crate::dns_records::DnsStatus>,
    #[schema(value_type = String)]
    protocol: TunnelProtocol,
    /// `tcp`/`udp`: the port every Gateway binds (also when Control picked it).
    public_port: Option<u16>,
    #[schema(value_type = String)]
    proxy_protocol: ProxyProtocol,
    max_connections: Option<u32>,
    /// `udp`: seconds a flow may stay idle before it is freed (the default, 60, when the
    /// tunnel sets none); `null` for the other protocols.
    udp_idle_timeout: Option<u32>,
    /// `http`: the user name of the tunnel's HTTP Basic authentication (the password is never
    /// shown); `null` when it has none.
    basic_auth_user: Option<String>,
    /// `http`: the Gateways keep the tunnel's recent requests (`GET /api/v1/tunnels/{id}/requests`).
    log_requests: bool,
    /// `http`: the tunnel's custom error page (HTML), `null` when it has none (the global page,
    /// if any, applies).
    error_page: Option<String>,
    /// `tcp`/`udp`: where clients connect, one `host:port` per enabled Gateway (its
    /// `public_endpoint`'s host); empty for `http` and `tls` tunnels, reached by hostname, and
    /// for a `tcp` tunnel with access control (no public port is opened for it).
    public_addresses: Vec<String>,
    /// `http`: the tunnel's URL as browsers open it (`https://app.example.com/`, with the port
    /// when a Gateway's public HTTPS — or HTTP, for `tls: off` — port is not the default);
    /// `tls`: `hostname:port`. One entry per distinct port among the enabled Gateways, so
    /// usually one; empty for `tcp`/`udp` (see `public_addresses`).
    public_urls: Vec<String>,
    /// `tcp`/`udp`: Gateways that report they cannot bind the port (the others serve it).
    port_errors: Vec<TunnelPortError>,
    /// `tcp`/`udp`/`tls`: what the online Gateways carried since they started, summed (a UDP
    /// flow is a connection); `null` for `http` tunnels (see the metrics).
    counters: Option<TunnelCounters>,
}

/// Connections and bytes of a stream tunnel, over its Gateways.
#[derive(Serialize, utoipa::ToSchema, Default)]
pub struct TunnelCounters {
    /// Connections (UDP: flows) carried, and open now.
    connections: u64,
    active: u64,
    /// Bytes from clients, and to them.
    bytes_in: u64,
    bytes_out: u64,
}

/// A Gateway that cannot bind a tunnel's public port, and why.
#[derive(Serialize, utoipa::ToSchema)]
pub struct TunnelPortError {
    gateway_id: i64,
    gateway: String,
    error: String,
}

impl TunnelView {
    /// Adds the hostname's DNS status (from the record reconciler).
    pub fn with_dns(mut self, state: &AppState) -> Self {
        self.dns = state.dns_records.status(&self.hostname);
        self
    }

    /// The first of `public_urls` (`""` for `tcp`/`udp` tunnels), for the pages.
    pub fn public_url(&self) -> &str {
        self.public_urls.first().map_or("", String::as_str)
    }

    /// Adds where the tunnel is reached (its URLs, or a `tcp`/`udp` tunnel's addresses), which
    /// Gateways cannot bind its port, and what the Gateways carried for a stream tunnel.
    pub fn with_streams(mut self, streams: &StreamState) -> Self {
        self.public_urls = self.urls(streams);
        if self.protocol != TunnelProtocol::Http {
            let c = streams.counters.get(&self.id).copied().unwrap_or_default();
            self.counters = Some(TunnelCounters {
                connections: c.connections,
                active: c.active,
                bytes_in: c.bytes_in,
                bytes_out: c.bytes_out,
            });
        }
        let Some(port) = self.public_port.filter(|_| self.protocol.has_public_port()) else {
            return self;
        };
        // A protected tcp tunnel opens no public port (it is reached by signed-in clients).
        if !matches!(self.access, AccessPolicy::Public) {
            return self;
        }
        let enabled = streams.gateways.iter().filter(|g| g.enabled);
        self.public_addresses = enabled
            .map(|g| format!("{}:{port}", endpoint_host(&g.public_endpoint)))
            .collect();
        for g in &streams.gateways {
            let failed = streams
                .port_errors
                .get(&g.id)
                .into_iter()
                .flat_map(|e| e.iter());
            for e in failed.filter(|e| e.port == port && e.protocol == self.protocol) {
                self.port_errors.push(TunnelPortError {
                    gateway_id: g.id,
                    gateway: g.name.clone(),
                    error: e.error.clone(),
                });
            }
        }
        self
    }

    /// See `public_urls`: one per distinct public port of the enabled Gateways (the default
    /// port for a Gateway that has not reported its ports, or when there is none).
    fn urls(&self, streams: &StreamState) -> Vec<String> {
        if !matches!(self.protocol, TunnelProtocol::Http | TunnelProtocol::Tls) {
            return Vec::new();
        }
        let plain = self.protocol == TunnelProtocol::Http && self.tls == TlsMode::Off;
        let port_of = |p: WebPorts| if plain { p.http } else { p.https };
        let default = port_of(WebPorts::default());
        let mut ports: Vec<u16> = Vec::new();
        for g in streams.gateways.iter().filter(|g| g.enabled) {
            let port = port_of(streams.web_ports.get(&g.id).copied().unwrap_or_default());
            if !ports.contains(&port) {
                ports.push(port);
            }
        }
        if ports.is_empty() {
            ports.push(default);
        }
        let host = &self.hostname;
        let scheme = if plain { "http" } else { "https" };
        ports
            .into_iter()
            .map(|port| match self.protocol {
                TunnelProtocol::Tls => format!("{host}:{port}"),
                _ if port == default => format!("{scheme}://{host}/"),
                _ => format!("{scheme}://{host}:{port}/"),
            })
            .collect()
    }

    pub fn new(
        t: TunnelRow,
        replicas: &[ReplicaRow],
        cert: Option<&CertRow>,
        gateways_online: bool,
    ) -> Self {
        // Only this API writes the column, with a validated value.
        let tls = t.tls.parse().unwrap_or(TlsMode::Off);
        let access = policy_of(&t);
        let protocol = t.protocol();
        let proxy_protocol = t.proxy_protocol();
        let limits = limits_of(&t);
        let certificate = certs::status_view(&t.hostname, tls, cert, gateways_online);
        Self {
            id: t.id,
            hostname: t.hostname,
            agent_id: t.agent_id,
            agent_ids: std::iter::once(t.agent_id)
                .chain(
                    replicas
                        .iter()
                        .filter(|r| r.tunnel_id == t.id)
                        .map(|r| r.agent_id),
                )
                .collect(),
            target: t.target,
            port: t.port,
            enabled: t.enabled,
            tls,
            https_redirect: t.https_redirect,
            access,
            limits,
            certificate,
            created_at: t.created_at,
            updated_at: t.updated_at,
            owner_id: t.owner_id,
            dns: None,
            protocol,
            public_port: t.public_port.and_then(|p| u16::try_from(p).ok()),
            proxy_protocol,
            max_connections: t.max_connections.and_then(|c| u32::try_from(c).ok()),
            udp_idle_timeout: (protocol == TunnelProtocol::Udp).then(|| {
                t.udp_idle_timeout
                    .and_then(|s| u32::try_from(s).ok())
                    .unwrap_or(kakuremichi_proto::DEFAULT_UDP_IDLE_TIMEOUT)
            }),
            basic_auth_user: t.basic_auth_user,
            log_requests: t.log_requests,
            error_page: t.error_page,
            public_addresses: Vec::new(),
            public_urls: Vec::new(),
            port_errors: Vec::new(),
            counters: None,
        }
    }
}

/// The state of a tunnel's certificate (`null` when its `tls` is `off`), as the OpenAPI document
/// describes the JSON `certs::status_view` builds.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // Never built: `utoipa` only reads its definition.
pub struct CertificateStatus {
    status: CertificateState,
    /// RFC 3339 expiry of the certificate served.
    not_after: Option<String>,
    issuer: Option<String>,
    /// Why the last order failed, or why it waits.
    last_error: Option<String>,
}

#[derive(utoipa::ToSchema)]
#[schema(rename_all = "snake_case")]
#[allow(dead_code)] // Never built: `utoipa` only reads its definition.
pub enum CertificateState {
    Pending,
    Issued,
    Failed,
    /// An hourly ACME order cap holds the order back; `last_error` says until when.
    Waiting,
}

/// What the stream fields of tunnel views come from, read once per answer: the Gateways, the
/// ports they cannot bind and their counters.
pub struct StreamState {
    gateways: Vec<GatewayRow>,
    port_errors: HashMap<i64, Arc<Vec<PortError>>>,
    counters: HashMap<i64, StreamCounters>,
    web_ports: HashMap<i64, WebPorts>,
}

impl StreamState {
    pub async fn read(state: &AppState) -> Result<Self, ApiError> {
        Ok(Self {
            gateways: state.store.list_gateways().await?,
            port_errors: state.hub.port_errors(),
            counters: state.hub.stream_counters(),
            web_ports: state.hub.gateway_web_ports(),
        })
    }
}

/// The view of one tunnel, with its certificate's state.
pub async fn view(state: &AppState, row: TunnelRow) -> Result<TunnelView, ApiError> {
    let mut cert = state.store.get_certificate(&row.hostname, &row.tls).await?;
    if lacks_certificate(cert.as_ref()) {
        if let Some(wildcard) = crate::validate::covering_wildcard(&row.hostname) {
            let above = state.store.get_certificate(&wildcard, &row.tls).await?;
            if !lacks_certificate(above.as_ref()) {
                cert = above;
            }
        }
    }
    let replicas = state.store.tunnel_replicas(row.id).await?;
    let online = !state.hub.online_gateways().is_empty();
    let streams = StreamState::read(state).await?;
    Ok(TunnelView::new(row, &replicas, cert.as_ref(), online)
        .with_dns(state)
        .with_streams(&streams))
}

/// The host part of a Gateway's `public_endpoint` (`gw1.example.com:51820` → `gw1.example.com`,
/// `[2001:db8::1]:51820` → `[2001:db8::1]`).
pub fn endpoint_host(endpoint: &str) -> &str {
    match endpoint.rsplit_once(':') {
        Some((host, port)) if port.parse::<u16>().is_ok() && !host.is_empty() => host,
        _ => endpoint,
    }
}

use crate::store::lacks_certificate;
pub use crate::store::shown_cert;

/// Every certificate row, by (hostname, source): a tunnel shows the one of its `tls` mode.
pub async fn certs_by_name_and_source(
    state: &AppState,
) -> Result<std::collections::HashMap<(String, String), CertRow>, ApiError> {
    Ok(state
        .store
        .list_certificates()
        .await?
        .into_iter()
        .map(|c| ((c.hostname.clone(), c.source.clone()), c))
        .collect())
}
