//! The per-node configuration snapshot and its content hash.

use crate::access::{AccessConfig, RouteAccess};
use crate::limits::RouteLimits;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;

/// Everything a node needs to do its job, as computed by Control for that one node.
///
/// The same type serves both roles: a Gateway uses `routes`/`hostnames`, an Agent uses `services`.
/// Collections are sorted (BTreeMap, sorted Vecs) so that equal content always hashes equally.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ConfigSnapshot {
    /// Hex SHA-256 of the snapshot's content (every other field); see [`ConfigSnapshot::seal`].
    pub config_hash: String,
    /// The node's id in Control's database.
    pub node_id: i64,
    /// The node's own WireGuard address.
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = Ipv4))]
    pub wg_address: Ipv4Addr,
    /// WireGuard peers: for a Gateway every Agent, for an Agent every enabled Gateway.
    pub peers: Vec<WgPeer>,
    /// Gateway only: hostname (lower case) → where to send its requests.
    #[serde(default)]
    pub routes: BTreeMap<String, GatewayRoute>,
    /// Gateway only: the hostnames it serves (the keys of `routes`), as seed 003 lists them.
    #[serde(default)]
    pub hostnames: Vec<String>,
    /// Agent only: tunnel port → local target.
    #[serde(default)]
    pub services: Vec<AgentService>,
    /// Gateway only: hostname → the certificate (and key) it serves for that name.
    #[serde(default)]
    pub certificates: BTreeMap<String, TlsCertificate>,
    /// Gateway only: pending ACME challenges Control wants every Gateway to answer.
    #[serde(default)]
    pub acme: AcmeChallenges,
    /// Gateway only: keys and revocations for checking access tokens (see [`crate::access`]).
    /// (Boxed: it keeps `ControlMessage::Config` from dwarfing the other messages.)
    #[serde(default, skip_serializing_if = "no_access")]
    pub access: Box<AccessConfig>,
    /// Gateway only: `tcp` tunnels by public port, bound on every enabled Gateway. Left out when
    /// empty (as are the two below), so snapshots without such tunnels hash as before.
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        with = "port_keys"
    )]
    pub tcp_ports: BTreeMap<u16, StreamRoute>,
    /// Gateway only: `udp` tunnels by public port.
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        with = "port_keys"
    )]
    pub udp_ports: BTreeMap<u16, StreamRoute>,
    /// Gateway only: `tls` tunnels by hostname (lower case), spliced still encrypted from the
    /// HTTPS port by the ClientHello's SNI; no certificate is held for them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tls_passthrough: BTreeMap<String, StreamRoute>,
    /// Gateway only (protocol 3): the custom error pages, each once, by [`error_page_digest`].
    /// Routes name theirs by digest ([`GatewayRoute::error_page`]), so a page shared by a
    /// thousand tunnels travels once. Left out when empty.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub error_pages: BTreeMap<String, String>,
    /// Gateway only (protocol 3): the digest of the page for routes without their own and for
    /// hosts no route serves (Control's global page). Left out when none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_error_page: Option<String>,
}

/// Most bytes of one custom error page (HTML, served as is in place of the Gateway's own pages).
pub const MAX_ERROR_PAGE_BYTES: usize = 64 * 1024;

/// The key of a custom error page in [`ConfigSnapshot::error_pages`]: hex SHA-256 of its HTML.
pub fn error_page_digest(html: &str) -> String {
    hex::encode(Sha256::digest(html.as_bytes()))
}

/// What a tunnel carries. `http` tunnels are routed by Host with HTTPS terminated at the
/// Gateway; the others are carried as bytes (or datagrams) to the Agent's target.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum TunnelProtocol {
    #[default]
    Http,
    /// TCP by a public port on every Gateway.
    Tcp,
    /// UDP by a public port on every Gateway.
    Udp,
    /// TLS passed through by SNI on the Gateways' HTTPS port; the origin terminates it.
    Tls,
}

impl TunnelProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            TunnelProtocol::Http => "http",
            TunnelProtocol::Tcp => "tcp",
            TunnelProtocol::Udp => "udp",
            TunnelProtocol::Tls => "tls",
        }
    }

    /// True for the protocols served on a public port of their own.
    pub fn has_public_port(self) -> bool {
        matches!(self, TunnelProtocol::Tcp | TunnelProtocol::Udp)
    }
}

impl std::str::FromStr for TunnelProtocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "http" => Ok(TunnelProtocol::Http),
            "tcp" => Ok(TunnelProtocol::Tcp),
            "udp" => Ok(TunnelProtocol::Udp),
            "tls" => Ok(TunnelProtocol::Tls),
            other => Err(format!(
                "protocol {other:?} is not one of http, tcp, udp, tls"
            )),
        }
    }
}

/// The PROXY protocol header a Gateway puts before a stream's first byte, so that the origin
/// (Postfix, nginx, HAProxy) sees the client's address: off, text v1 or binary v2.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum ProxyProtocol {
    #[default]
    Off,
    V1,
    V2,
}

impl ProxyProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            ProxyProtocol::Off => "off",
            ProxyProtocol::V1 => "v1",
            ProxyProtocol::V2 => "v2",
        }
    }

    pub fn is_off(&self) -> bool {
        *self == ProxyProtocol::Off
    }
}

impl std::str::FromStr for ProxyProtocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "off" => Ok(ProxyProtocol::Off),
            "v1" => Ok(ProxyProtocol::V1),
            "v2" => Ok(ProxyProtocol::V2),
            other => Err(format!(
                "proxy_protocol {other:?} is not one of off, v1, v2"
            )),
        }
    }
}

/// Where a Gateway sends the connections (or datagrams) of a `tcp`, `udp` or `tls` tunnel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct StreamRoute {
    pub tunnel_id: i64,
    /// Every Agent serving the tunnel, the primary first (at least one).
    pub targets: Vec<RouteTarget>,
    #[serde(default, skip_serializing_if = "ProxyProtocol::is_off")]
    pub proxy_protocol: ProxyProtocol,
    /// Connections (UDP: flows) at once per Gateway; `None` = only the Gateway's own caps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    /// IP allow / deny lists (the request rate and concurrency of HTTP tunnels do not apply).
    #[serde(default, skip_serializing_if = "RouteLimits::is_none")]
    pub limits: RouteLimits,
    /// `udp`: seconds a flow may stay idle before its entry is freed; `None` =
    /// [`DEFAULT_UDP_IDLE_TIMEOUT`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub udp_idle_timeout: Option<u32>,
}

/// Seconds a UDP flow stays without a datagram before it is freed, unless its tunnel says.
pub const DEFAULT_UDP_IDLE_TIMEOUT: u32 = 60;

impl StreamRoute {
    /// How long a flow of this tunnel may stay idle.
    pub fn udp_idle_timeout(&self) -> std::time::Duration {
        udp_idle(self.udp_idle_timeout)
    }
}

fn udp_idle(secs: Option<u32>) -> std::time::Duration {
    std::time::Duration::from_secs(secs.unwrap_or(DEFAULT_UDP_IDLE_TIMEOUT).into())
}

/// One WireGuard peer of a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct WgPeer {
    /// Database id of the peer node (an Agent's id on a Gateway, a Gateway's id on an Agent).
    pub id: i64,
    pub name: String,
    /// Base64 of the peer's X25519 public key.
    pub public_key: String,
    /// The peer's WireGuard address; the only AllowedIP of this peer.
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = Ipv4))]
    pub wg_address: Ipv4Addr,
    /// `host:port` to send WireGuard to. Set for Gateways (as seen by Agents); `None` for Agents,
    /// whose endpoint a Gateway learns from their handshakes.
    pub endpoint: Option<String>,
}

/// Where a Gateway sends requests for one hostname: a TCP port on an Agent's WireGuard address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct GatewayRoute {
    pub tunnel_id: i64,
    pub agent_id: i64,
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = Ipv4))]
    pub agent_address: Ipv4Addr,
    /// The tunnel's port on the Agent's userspace stack; the Agent maps it to the tunnel's target.
    pub port: u16,
    /// Plain-HTTP requests are answered `308` to https (once the Gateway holds a certificate).
    #[serde(default)]
    pub https_redirect: bool,
    /// `Strict-Transport-Security: max-age=...` on HTTPS responses; 0 sends no header.
    #[serde(default)]
    pub hsts_max_age: u32,
    /// When several Agents serve the tunnel (replicas): all of them, the one above first. Empty
    /// when only the Agent above serves it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replicas: Vec<RouteTarget>,
    /// Who may use the tunnel; left out when public, so older Gateways still parse public routes
    /// (and refuse, rather than serve openly, protected ones). Never the allow-list itself, so a
    /// route's size does not depend on it (see [`crate::access`]).
    #[serde(default, skip_serializing_if = "RouteAccess::is_public")]
    pub access: RouteAccess,
    /// IP lists, rate and concurrency limits; left out when the tunnel sets none, so routes
    /// without limits hash as before (see [`crate::limits`]).
    #[serde(default, skip_serializing_if = "RouteLimits::is_none")]
    pub limits: RouteLimits,
    /// The tunnel has `tls: off`: its hostname gets no certificate, not even a wildcard's that
    /// covers it (a TLS handshake for it fails, as for an unknown name). Left out when false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub plain_http_only: bool,
    /// A `tcp` tunnel with access control: not HTTP. Its hostname answers only
    /// `/.kakuremichi/tcp`, a WebSocket carrying one TCP connection to the target for a
    /// signed-in client (`kakuremichi access tcp`), over HTTPS. Left out when false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tcp_access: bool,
    /// HTTP Basic authentication in front of the tunnel (see [`crate::basic_auth`]). Left out
    /// when off; older Gateways refuse a route with it (an unknown field) rather than serve it
    /// openly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic_auth: Option<crate::RouteBasicAuth>,
    /// Keep the route's recent requests in memory for Control's request log (protocol 3; left
    /// out when false).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub log_requests: bool,
    /// The digest of the tunnel's own error page in [`ConfigSnapshot::error_pages`]
    /// (protocol 3); left out when it has none (the default page, if any, applies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_page: Option<String>,
}

/// One Agent serving a route with replicas.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RouteTarget {
    pub agent_id: i64,
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = Ipv4))]
    pub agent_address: Ipv4Addr,
    /// The tunnel's port on this Agent's stack (each Agent allocates its own).
    pub port: u16,
    /// Control has a session with this Agent right now. A hint, not a verdict: Gateways prefer
    /// online replicas and still try the others when none is.
    #[serde(default)]
    pub online: bool,
}

impl GatewayRoute {
    /// Every Agent serving this route, the primary first; one entry when there are no replicas.
    pub fn targets(&self) -> Vec<RouteTarget> {
        if self.replicas.is_empty() {
            vec![RouteTarget {
                agent_id: self.agent_id,
                agent_address: self.agent_address,
                port: self.port,
                online: true,
            }]
        } else {
            self.replicas.clone()
        }
    }
}

/// A PEM certificate chain (leaf first) and its PEM private key. The key is masked in `Debug`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct TlsCertificate {
    pub cert_pem: String,
    pub key_pem: String,
}

impl fmt::Debug for TlsCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsCertificate")
            .field("cert_pem", &format_args!("<{} bytes>", self.cert_pem.len()))
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// ACME challenges in flight, pushed to every Gateway before Control asks the CA to validate, so
/// that whichever Gateway the CA reaches can answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct AcmeChallenges {
    /// HTTP-01: token → key authorization, served at `/.well-known/acme-challenge/{token}`.
    #[serde(default)]
    pub http01: BTreeMap<String, String>,
    /// TLS-ALPN-01: hostname → the challenge certificate served to `acme-tls/1` clients.
    #[serde(default)]
    pub tls_alpn01: BTreeMap<String, TlsAlpnChallenge>,
}

impl AcmeChallenges {
    pub fn is_empty(&self) -> bool {
        self.http01.is_empty() && self.tls_alpn01.is_empty()
    }

    /// Stable ids of the challenges contained (`http01:{token}`, `tls-alpn01:{token}`); a Gateway
    /// that applied a snapshot holding an id is ready to answer that challenge.
    pub fn ids(&self) -> Vec<String> {
        let http = self.http01.keys().map(|t| format!("http01:{t}"));
        let alpn = self
            .tls_alpn01
            .values()
            .map(|c| format!("tls-alpn01:{}", c.token));
        http.chain(alpn).collect()
    }
}

/// One TLS-ALPN-01 challenge: the self-signed certificate carrying the `acmeIdentifier` extension.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct TlsAlpnChallenge {
    /// The ACME challenge token, which identifies this challenge.
    pub token: String,
    pub certificate: TlsCertificate,
}

/// One tunnel as its Agent sees it: connections to `port` go to `target`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct AgentService {
    pub tunnel_id: i64,
    pub hostname: String,
    pub port: u16,
    /// `host:port` as the Agent resolves it (`localhost:8080`, `app:3000`).
    pub target: String,
    /// `udp`: datagrams to this port go to `target` over UDP; left out for stream tunnels.
    #[serde(default, skip_serializing_if = "is_stream")]
    pub protocol: TunnelProtocol,
    /// `udp`: as [`StreamRoute::udp_idle_timeout`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub udp_idle_timeout: Option<u32>,
}

impl AgentService {
    /// How long a flow of this tunnel may stay idle (the Gateways' timeout: a flow the Agent
    /// keeps longer only costs a socket).
    pub fn udp_idle_timeout(&self) -> std::time::Duration {
        udp_idle(self.udp_idle_timeout)
    }
}

fn is_stream(protocol: &TunnelProtocol) -> bool {
    *protocol != TunnelProtocol::Udp
}

/// Port-keyed maps as JSON objects with the port as text (`{"5432": …}`), read back from text
/// keys: the snapshot travels inside an internally tagged message, whose buffering hands map
/// keys over as strings, which serde's integer keys do not accept.
mod port_keys {
    use serde::de::Error;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use std::collections::BTreeMap;

    pub fn serialize<S: Serializer, V: Serialize>(
        map: &BTreeMap<u16, V>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_map(map.iter().map(|(k, v)| (k.to_string(), v)))
    }

    pub fn deserialize<'de, D: Deserializer<'de>, V: Deserialize<'de>>(
        d: D,
    ) -> Result<BTreeMap<u16, V>, D::Error> {
        BTreeMap::<String, V>::deserialize(d)?
            .into_iter()
            .map(|(k, v)| match k.parse::<u16>() {
                Ok(port) if port != 0 => Ok((port, v)),
                _ => Err(D::Error::custom(format!("{k:?} is not a port"))),
            })
            .collect()
    }
}

fn no_access(access: &AccessConfig) -> bool {
    access.is_empty()
}

impl Default for ConfigSnapshot {
    fn default() -> Self {
        Self {
            config_hash: String::new(),
            node_id: 0,
            wg_address: Ipv4Addr::UNSPECIFIED,
            peers: Vec::new(),
            routes: BTreeMap::new(),
            hostnames: Vec::new(),
            services: Vec::new(),
            certificates: BTreeMap::new(),
            acme: AcmeChallenges::default(),
            access: Box::default(),
            tcp_ports: BTreeMap::new(),
            udp_ports: BTreeMap::new(),
            tls_passthrough: BTreeMap::new(),
            error_pages: BTreeMap::new(),
            default_error_page: None,
        }
    }
}

impl ConfigSnapshot {
    /// Computes the content hash, stores it in `config_hash` and returns the sealed snapshot.
    /// Peers and services are sorted first, so the hash does not depend on query order.
    pub fn seal(mut self) -> Self {
        self.peers.sort_by_key(|p| p.id);
        self.services.sort_by_key(|s| s.port);
        self.hostnames = self.routes.keys().cloned().collect();
        self.config_hash = String::new();
        self.config_hash = hash_json(&self);
        self
    }

    /// Hex SHA-256 over the canonical JSON of everything but `config_hash` (that is, with
    /// `config_hash` empty).
    pub fn content_hash(&self) -> String {
        if self.config_hash.is_empty() {
            return hash_json(self);
        }
        let mut unhashed = self.clone();
        unhashed.config_hash = String::new();
        hash_json(&unhashed)
    }

    /// True when `config_hash` matches the content: a cached or received snapshot is intact.
    pub fn is_intact(&self) -> bool {
        self.config_hash == self.content_hash()
    }
}

/// Hex SHA-256 of `value`'s JSON, written straight into the hash (no copy of the text).
fn hash_json(value: &impl Serialize) -> String {
    struct Hashing(Sha256);
    impl std::io::Write for Hashing {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.update(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut hashing = Hashing(Sha256::new());
    serde_json::to_writer(&mut hashing, value).expect("snapshot serialises");
    hex::encode(hashing.0.finalize())
}

mod shared;
pub use shared::SharedSnapshot;

#[cfg(test)]
mod tests;
