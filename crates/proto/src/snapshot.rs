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
        self.config_hash = self.content_hash();
        self
    }

    /// Hex SHA-256 over the canonical JSON of everything but `config_hash`.
    pub fn content_hash(&self) -> String {
        let mut unhashed = self.clone();
        unhashed.config_hash = String::new();
        let bytes = serde_json::to_vec(&unhashed).expect("snapshot serialises");
        hex::encode(Sha256::digest(&bytes))
    }

    /// True when `config_hash` matches the content: a cached or received snapshot is intact.
    pub fn is_intact(&self) -> bool {
        self.config_hash == self.content_hash()
    }
}

#[cfg(test)]
mod tests;
