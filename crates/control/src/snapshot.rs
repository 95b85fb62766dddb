//! Computation of each node's [`ConfigSnapshot`] from the database.
//!
//! The whole topology (nodes and enabled tunnels) is loaded once per change into a [`World`],
//! shared by every session; each node's snapshot is then derived from it without further queries.

use crate::store::{
    AgentRow, GatewayRow, NodeKind, NodeRef, ReplicaRow, Store, StoreResult, TunnelRow,
    TUNNEL_COLUMNS,
};
use kakuremichi_proto::{
    AccessConfig, AcmeChallenges, AgentService, ConfigSnapshot, RouteAccess, TlsCertificate,
    TunnelProtocol, WgPeer,
};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex, OnceLock};

/// Everything snapshots are made of, read in one consistent transaction.
#[derive(Debug, Default)]
pub struct World {
    agents: Vec<AgentRow>,
    gateways: Vec<GatewayRow>,
    /// Enabled tunnels only (their allow-lists dropped once digested into `route_access`).
    tunnels: Vec<TunnelRow>,
    /// Per tunnel id: its policy as Gateways get it, computed once per load rather than once per
    /// Gateway (a long allow-list costs a parse and a hash).
    route_access: HashMap<i64, RouteAccess>,
    /// Replicas of every tunnel (enabled or not), by tunnel then agent.
    replicas: Vec<ReplicaRow>,
    /// Issued certificates: (hostname, source) → certificate.
    certificates: BTreeMap<(String, String), TlsCertificate>,
    /// ACME challenges in flight (filled in by the hub, not the database).
    pub acme: AcmeChallenges,
    /// HSTS max-age for routes that redirect to https (from Control's settings).
    pub hsts_max_age: u32,
    /// Token verification keys and revocations for Gateways (`control_url` set by the hub).
    pub access: AccessConfig,
    /// The global custom error page (the `error_page` setting).
    global_error_page: Option<String>,
    /// The custom error pages by digest, built on first use.
    error_pages: OnceLock<ErrorPages>,
    /// Lookups by id, built on first use.
    index: OnceLock<Index>,
    /// Every Agent's peers (the enabled Gateways, sorted), built on first use.
    agent_peers: OnceLock<Arc<Vec<WgPeer>>>,
    /// What every enabled Gateway gets, for the online hints it was made with (see
    /// [`World::gateway_sealed`]): for protocol-2 sessions, and for newer ones.
    gateway_shared: Mutex<[Option<Arc<SharedGateway>>; 2]>,
}

/// Every custom error page once, by digest: hashing a 64 KiB page per tunnel and Gateway would
/// cost more than the rest of a snapshot.
#[derive(Debug, Default)]
struct ErrorPages {
    by_digest: BTreeMap<String, String>,
    /// Enabled tunnels with a page of their own → its digest.
    of_tunnel: HashMap<i64, String>,
    /// The global page's digest.
    default: Option<String>,
}

/// Positions in [`World`]'s vectors by id: a snapshot costs what its node gets, not a scan of
/// the fleet per entry (10,000 Agents made that quadratic).
#[derive(Debug, Default)]
struct Index {
    agents: HashMap<i64, usize>,
    tunnels: HashMap<i64, usize>,
    /// Tunnels by primary Agent.
    tunnels_of_agent: HashMap<i64, Vec<usize>>,
    /// Positions in `replicas`, by tunnel and by Agent.
    replicas_of_tunnel: HashMap<i64, Vec<usize>>,
    replicas_of_agent: HashMap<i64, Vec<usize>>,
}

impl Store {
    /// Reads the current [`World`].
    pub async fn load_world(&self) -> StoreResult<World> {
        let mut tx = self.pool().begin().await?;
        let agents = sqlx::query_as(
            "SELECT id, name, wg_address, public_key, last_seen, created_at FROM agents ORDER BY id",
        )
        .fetch_all(&mut *tx)
        .await?;
        let gateways = sqlx::query_as(
            "SELECT id, name, public_endpoint, wg_address, public_key, enabled, last_seen, created_at, \
             public_ipv4, public_ipv6, observed_ip FROM gateways ORDER BY id",
        )
        .fetch_all(&mut *tx)
        .await?;
        let sql = format!("SELECT {TUNNEL_COLUMNS} FROM tunnels WHERE enabled = TRUE ORDER BY id");
        let mut tunnels: Vec<TunnelRow> = sqlx::query_as(&sql).fetch_all(&mut *tx).await?;
        let route_access = tunnels
            .iter_mut()
            .map(|t| {
                let access = crate::store::access::policy_of(t).for_gateway(t.id);
                t.access_allow = String::new();
                (t.id, access)
            })
            .collect();
        let global_error_page: Option<(String,)> =
            sqlx::query_as("SELECT value FROM settings WHERE key = $1")
                .bind(crate::store::ERROR_PAGE)
                .fetch_optional(&mut *tx)
                .await?;
        let replicas = sqlx::query_as(
            "SELECT tunnel_id, agent_id, port FROM tunnel_replicas ORDER BY tunnel_id, agent_id",
        )
        .fetch_all(&mut *tx)
        .await?;
        // The certificates of the source a tunnel asks for, and every wildcard one: it serves
        // the names one label below that have none of their own (the temporary tunnels' domain
        // has no tunnel of its own).
        let certs: Vec<(String, String, String, String)> = sqlx::query_as(
            "SELECT c.hostname, c.source, c.cert_pem, c.key_pem FROM certificates AS c \
             WHERE c.cert_pem IS NOT NULL AND c.key_pem IS NOT NULL \
             AND (c.hostname LIKE '*.%' OR EXISTS (SELECT 1 FROM tunnels AS t \
                  WHERE t.hostname = c.hostname AND t.tls = c.source))",
        )
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let published = self.published_access().await?;
        let access = AccessConfig {
            control_url: String::new(),
            keys: published.keys,
            revoked: published.revoked,
        };
        let certificates = certs
            .into_iter()
            .map(|(host, source, cert_pem, key_pem)| {
                ((host, source), TlsCertificate { cert_pem, key_pem })
            })
            .collect();
        Ok(World {
            agents,
            gateways,
            tunnels,
            route_access,
            replicas,
            certificates,
            access,
            global_error_page: global_error_page.map(|(page,)| page),
            ..World::default()
        })
    }
}

impl World {
    /// The sealed snapshot of `node`, or `None` if the node no longer exists. `agent_online`
    /// says whether Control has a session with an Agent; Gateways get it as a hint for routes
    /// with replicas.
    #[cfg(test)]
    pub fn snapshot(
        &self,
        node: NodeRef,
        agent_online: impl Fn(i64) -> bool,
    ) -> Option<ConfigSnapshot> {
        self.snapshot_in(node, agent_online, kakuremichi_proto::PROTOCOL_VERSION)
    }

    /// [`World::snapshot`] for a session of `protocol`: fields that version does not know are
    /// left out.
    pub fn snapshot_in(
        &self,
        node: NodeRef,
        agent_online: impl Fn(i64) -> bool,
        protocol: u32,
    ) -> Option<ConfigSnapshot> {
        let snapshot = match node.kind {
            NodeKind::Gateway => self.gateway_snapshot(node.id, agent_online, protocol)?,
            NodeKind::Agent => self.agent_inputs(node.id)?.snapshot(node.id),
        };
        Some(snapshot.seal())
    }

    /// The node's sealed snapshot, or `None` if the node no longer exists. What
    /// [`World::snapshot`] returns, made for sessions: enabled Gateways share one serialised
    /// snapshot, and Agents are better served by [`World::agent_inputs`].
    #[cfg(test)]
    pub fn sealed(&self, node: NodeRef, agent_online: impl Fn(i64) -> bool) -> Option<Sealed> {
        self.sealed_in(node, agent_online, kakuremichi_proto::PROTOCOL_VERSION)
    }

    /// [`World::sealed`] for a session of `protocol` (see [`World::snapshot_in`]).
    pub fn sealed_in(
        &self,
        node: NodeRef,
        agent_online: impl Fn(i64) -> bool,
        protocol: u32,
    ) -> Option<Sealed> {
        match node.kind {
            NodeKind::Gateway => self.gateway_sealed(node.id, agent_online, protocol),
            NodeKind::Agent => Some(self.agent_inputs(node.id)?.seal(node.id)),
        }
    }

    fn index(&self) -> &Index {
        self.index.get_or_init(|| {
            let mut index = Index::default();
            for (i, a) in self.agents.iter().enumerate() {
                index.agents.insert(a.id, i);
            }
            for (i, t) in self.tunnels.iter().enumerate() {
                index.tunnels.insert(t.id, i);
                index
                    .tunnels_of_agent
                    .entry(t.agent_id)
                    .or_default()
                    .push(i);
            }
            for (i, r) in self.replicas.iter().enumerate() {
                index
                    .replicas_of_tunnel
                    .entry(r.tunnel_id)
                    .or_default()
                    .push(i);
                index
                    .replicas_of_agent
                    .entry(r.agent_id)
                    .or_default()
                    .push(i);
            }
            index
        })
    }

    fn error_pages(&self) -> &ErrorPages {
        self.error_pages.get_or_init(|| {
            let mut pages = ErrorPages::default();
            // Digested once per distinct page, however many tunnels share it.
            let mut digests: HashMap<&str, String> = HashMap::new();
            let tunnels = self.tunnels.iter();
            let own = tunnels.filter_map(|t| Some((Some(t.id), t.error_page.as_deref()?)));
            let global = self.global_error_page.as_deref().map(|html| (None, html));
            for (tunnel, html) in own.chain(global) {
                let digest = digests
                    .entry(html)
                    .or_insert_with(|| kakuremichi_proto::error_page_digest(html))
                    .clone();
                if !pages.by_digest.contains_key(&digest) {
                    pages.by_digest.insert(digest.clone(), html.to_owned());
                }
                match tunnel {
                    Some(id) => pages.of_tunnel.insert(id, digest),
                    None => pages.default.replace(digest),
                };
            }
            pages
        })
    }

    fn agent(&self, id: i64) -> Option<&AgentRow> {
        Some(&self.agents[*self.index().agents.get(&id)?])
    }

    /// An enabled tunnel.
    fn tunnel(&self, id: i64) -> Option<&TunnelRow> {
        Some(&self.tunnels[*self.index().tunnels.get(&id)?])
    }

    /// Agents that serve a tunnel with replicas (primaries included): only their comings and
    /// goings change Gateway snapshots.
    pub fn replicated_agents(&self) -> HashSet<i64> {
        let mut agents = HashSet::new();
        for r in &self.replicas {
            agents.insert(r.agent_id);
            if let Some(t) = self.tunnel(r.tunnel_id) {
                agents.insert(t.agent_id);
            }
        }
        agents
    }

    /// Every Agent's peers: the enabled Gateways with a key, sorted as a sealed snapshot has them.
    fn agent_peers(&self) -> Arc<Vec<WgPeer>> {
        let peers = self.agent_peers.get_or_init(|| {
            let mut peers: Vec<WgPeer> = self
                .gateways
                .iter()
                .filter(|g| g.enabled)
                .filter_map(|g| {
                    Some(WgPeer {
                        id: g.id,
                        name: g.name.clone(),
                        public_key: g.public_key.clone()?,
                        wg_address: address(&g.wg_address)?,
                        endpoint: Some(g.public_endpoint.clone()),
                    })
                })
                .collect();
            peers.sort_by_key(|p| p.id);
            Arc::new(peers)
        });
        peers.clone()
    }

    /// What Agent `id`'s snapshot is made of, or `None` if it no longer exists.
    pub fn agent_inputs(&self, id: i64) -> Option<AgentInputs> {
        let agent = self.agent(id)?;
        let index = self.index();
        let primary = index.tunnels_of_agent.get(&id).into_iter().flatten();
        let primary = primary.map(|&i| (&self.tunnels[i], self.tunnels[i].port));
        let replica = index.replicas_of_agent.get(&id).into_iter().flatten();
        let replica = replica.filter_map(|&i| {
            let r = &self.replicas[i];
            Some((self.tunnel(r.tunnel_id)?, r.port))
        });
        let mut services: Vec<AgentService> = primary
            .chain(replica)
            .filter_map(|(t, port)| {
                Some(AgentService {
                    tunnel_id: t.id,
                    hostname: t.hostname.clone(),
                    port: u16::try_from(port).ok()?,
                    target: t.target.clone(),
                    protocol: t.protocol(),
                    udp_idle_timeout: udp_idle_timeout(t),
                })
            })
            .collect();
        services.sort_by_key(|s| s.port);
        Some(AgentInputs {
            wg_address: address(&agent.wg_address)?,
            peers: self.agent_peers(),
            services,
        })
    }
}

/// Stored addresses were written by the allocator, so a parse failure means a corrupt row: skip it.
fn address(text: &str) -> Option<Ipv4Addr> {
    let parsed = text.parse().ok();
    if parsed.is_none() {
        tracing::warn!(
            address = text,
            "ignoring invalid wg_address in the database"
        );
    }
    parsed
}

mod gateway;
mod sealed;
use sealed::SharedGateway;
pub use sealed::{AgentInputs, Sealed};

#[cfg(test)]
mod tests;

/// A `udp` tunnel's own idle timeout, if it sets one.
fn udp_idle_timeout(t: &TunnelRow) -> Option<u32> {
    let secs = t.udp_idle_timeout.and_then(|s| u32::try_from(s).ok());
    secs.filter(|_| t.protocol() == TunnelProtocol::Udp)
}
