//! Computation of each node's [`ConfigSnapshot`] from the database.
//!
//! The whole topology (nodes and enabled tunnels) is loaded once per change into a [`World`],
//! shared by every session; each node's snapshot is then derived from it without further queries.

use crate::store::{
    AgentRow, GatewayRow, NodeKind, NodeRef, ReplicaRow, Store, StoreResult, TunnelRow,
};
use kakuremichi_proto::{
    AccessConfig, AcmeChallenges, AgentService, ConfigSnapshot, GatewayRoute, RouteAccess,
    RouteTarget, TlsCertificate, WgPeer,
};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::Ipv4Addr;

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
    /// Issued certificates: hostname → (source, certificate).
    certificates: BTreeMap<String, (String, TlsCertificate)>,
    /// ACME challenges in flight (filled in by the hub, not the database).
    pub acme: AcmeChallenges,
    /// HSTS max-age for routes that redirect to https (from Control's settings).
    pub hsts_max_age: u32,
    /// Token verification keys and revocations for Gateways (`control_url` set by the hub).
    pub access: AccessConfig,
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
            "SELECT id, name, public_endpoint, wg_address, public_key, enabled, last_seen, created_at \
             FROM gateways ORDER BY id",
        )
        .fetch_all(&mut *tx)
        .await?;
        let mut tunnels: Vec<TunnelRow> = sqlx::query_as(
            "SELECT id, hostname, agent_id, target, port, enabled, tls, https_redirect, access_mode, \
             access_allow, created_at, updated_at, ip_allow, ip_deny, rate_limit_per_second, \
             rate_limit_burst, max_concurrent_requests FROM tunnels WHERE enabled = TRUE ORDER BY id",
        )
        .fetch_all(&mut *tx)
        .await?;
        let route_access = tunnels
            .iter_mut()
            .map(|t| {
                let access = crate::store::access::policy_of(t).for_gateway(t.id);
                t.access_allow = String::new();
                (t.id, access)
            })
            .collect();
        let replicas = sqlx::query_as(
            "SELECT tunnel_id, agent_id, port FROM tunnel_replicas ORDER BY tunnel_id, agent_id",
        )
        .fetch_all(&mut *tx)
        .await?;
        // Per hostname, the certificate of the source its tunnel asks for (one row at most:
        // hostnames are unique among tunnels).
        let certs: Vec<(String, String, String, String)> = sqlx::query_as(
            "SELECT c.hostname, c.source, c.cert_pem, c.key_pem FROM certificates AS c \
             JOIN tunnels AS t ON t.hostname = c.hostname AND t.tls = c.source \
             WHERE c.cert_pem IS NOT NULL AND c.key_pem IS NOT NULL",
        )
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let published = crate::access::published(self).await?;
        let access = AccessConfig {
            control_url: String::new(),
            keys: published.keys,
            revoked: published.revoked,
        };
        let certificates = certs
            .into_iter()
            .map(|(host, source, cert_pem, key_pem)| {
                (host, (source, TlsCertificate { cert_pem, key_pem }))
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
            ..World::default()
        })
    }
}

impl World {
    /// The sealed snapshot of `node`, or `None` if the node no longer exists. `agent_online`
    /// says whether Control has a session with an Agent; Gateways get it as a hint for routes
    /// with replicas.
    pub fn snapshot(
        &self,
        node: NodeRef,
        agent_online: impl Fn(i64) -> bool,
    ) -> Option<ConfigSnapshot> {
        let snapshot = match node.kind {
            NodeKind::Gateway => self.gateway_snapshot(node.id, agent_online)?,
            NodeKind::Agent => self.agent_snapshot(node.id)?,
        };
        Some(snapshot.seal())
    }

    /// Agents that serve a tunnel with replicas (primaries included): only their comings and
    /// goings change Gateway snapshots.
    pub fn replicated_agents(&self) -> HashSet<i64> {
        let mut agents = HashSet::new();
        for r in &self.replicas {
            agents.insert(r.agent_id);
            if let Some(t) = self.tunnels.iter().find(|t| t.id == r.tunnel_id) {
                agents.insert(t.agent_id);
            }
        }
        agents
    }

    /// Every Agent serving tunnel `t` when it has replicas (primary first), else empty.
    fn route_replicas(&self, t: &TunnelRow, online: &impl Fn(i64) -> bool) -> Vec<RouteTarget> {
        let replicas = self.replicas.iter().filter(|r| r.tunnel_id == t.id);
        let all =
            std::iter::once((t.agent_id, t.port)).chain(replicas.map(|r| (r.agent_id, r.port)));
        let targets: Vec<RouteTarget> = all
            .filter_map(|(agent_id, port)| {
                let agent = self.agents.iter().find(|a| a.id == agent_id)?;
                Some(RouteTarget {
                    agent_id,
                    agent_address: address(&agent.wg_address)?,
                    port: u16::try_from(port).ok()?,
                    online: online(agent_id),
                })
            })
            .collect();
        if targets.len() > 1 {
            targets
        } else {
            Vec::new()
        }
    }

    /// Gateways an admin disabled.
    pub fn disabled_gateways(&self) -> HashSet<i64> {
        self.gateways
            .iter()
            .filter(|g| !g.enabled)
            .map(|g| g.id)
            .collect()
    }

    fn gateway_snapshot(&self, id: i64, online: impl Fn(i64) -> bool) -> Option<ConfigSnapshot> {
        let gateway = self.gateways.iter().find(|g| g.id == id)?;
        if !gateway.enabled {
            // A disabled Gateway may be one an admin no longer trusts: it gets its identity and
            // nothing else, no certificate (private keys), no challenge, no access key, no route
            // and no peer (Agents drop it too). Applying this also clears what it held.
            return Some(ConfigSnapshot {
                node_id: gateway.id,
                wg_address: address(&gateway.wg_address)?,
                ..ConfigSnapshot::default()
            });
        }
        let peers = self
            .agents
            .iter()
            .filter_map(|a| {
                Some(WgPeer {
                    id: a.id,
                    name: a.name.clone(),
                    public_key: a.public_key.clone()?,
                    wg_address: address(&a.wg_address)?,
                    endpoint: None,
                })
            })
            .collect();
        let mut routes = BTreeMap::new();
        let mut certificates = BTreeMap::new();
        for t in &self.tunnels {
            let Some(agent) = self.agents.iter().find(|a| a.id == t.agent_id) else {
                continue;
            };
            let (Some(agent_address), Ok(port)) =
                (address(&agent.wg_address), u16::try_from(t.port))
            else {
                continue;
            };
            let Some(limits) = crate::store::limits::route_limits(t) else {
                tracing::error!(
                    tunnel_id = t.id,
                    "unreadable IP lists in the database; the tunnel is not served until they \
                     are set again"
                );
                continue;
            };
            let https = t.tls != "off";
            if let Some((source, cert)) = self.certificates.get(&t.hostname) {
                if https && *source == t.tls {
                    certificates.insert(t.hostname.clone(), cert.clone());
                }
            }
            let redirect = https && t.https_redirect;
            let route = GatewayRoute {
                tunnel_id: t.id,
                agent_id: agent.id,
                agent_address,
                port,
                https_redirect: redirect,
                hsts_max_age: if redirect { self.hsts_max_age } else { 0 },
                replicas: self.route_replicas(t, &online),
                access: match self.route_access.get(&t.id) {
                    Some(access) => access.clone(),
                    None => crate::store::access::policy_of(t).for_gateway(t.id),
                },
                limits,
            };
            routes.insert(t.hostname.clone(), route);
        }
        // Only Gateways that serve a protected tunnel need keys: while none is protected, the
        // snapshot stays readable by Gateways that predate access control.
        let access = if routes.values().any(|r| !r.access.is_public()) {
            Box::new(self.access.clone())
        } else {
            Box::default()
        };
        Some(ConfigSnapshot {
            node_id: gateway.id,
            wg_address: address(&gateway.wg_address)?,
            peers,
            routes,
            certificates,
            acme: self.acme.clone(),
            access,
            ..ConfigSnapshot::default()
        })
    }

    fn agent_snapshot(&self, id: i64) -> Option<ConfigSnapshot> {
        let agent = self.agents.iter().find(|a| a.id == id)?;
        let peers = self
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
        let primary = self
            .tunnels
            .iter()
            .filter(|t| t.agent_id == id)
            .map(|t| (t, t.port));
        let replica = self
            .replicas
            .iter()
            .filter(|r| r.agent_id == id)
            .filter_map(|r| Some((self.tunnels.iter().find(|t| t.id == r.tunnel_id)?, r.port)));
        let services = primary
            .chain(replica)
            .filter_map(|(t, port)| {
                Some(AgentService {
                    tunnel_id: t.id,
                    hostname: t.hostname.clone(),
                    port: u16::try_from(port).ok()?,
                    target: t.target.clone(),
                })
            })
            .collect();
        Some(ConfigSnapshot {
            node_id: agent.id,
            wg_address: address(&agent.wg_address)?,
            peers,
            services,
            ..ConfigSnapshot::default()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(id: i64, key: Option<&str>) -> AgentRow {
        AgentRow {
            id,
            name: format!("agent{id}"),
            wg_address: format!("10.77.0.{id}"),
            public_key: key.map(str::to_string),
            last_seen: None,
            created_at: String::new(),
            owner_id: None,
        }
    }

    fn gateway(id: i64, key: Option<&str>, enabled: bool) -> GatewayRow {
        GatewayRow {
            id,
            name: format!("gw{id}"),
            public_endpoint: format!("gw{id}.example.com:51820"),
            wg_address: format!("10.77.1.{id}"),
            public_key: key.map(str::to_string),
            enabled,
            last_seen: None,
            created_at: String::new(),
        }
    }

    fn tunnel(id: i64, agent_id: i64, port: i64) -> TunnelRow {
        TunnelRow {
            id,
            hostname: format!("t{id}.example.com"),
            agent_id,
            target: "app:3000".into(),
            port,
            enabled: true,
            tls: if id == 12 {
                "off".into()
            } else {
                "acme".into()
            },
            https_redirect: true,
            access_mode: if id == 11 { "login" } else { "public" }.into(),
            access_allow: "[]".into(),
            created_at: String::new(),
            updated_at: String::new(),
            owner_id: None,
            ip_allow: "[]".into(),
            ip_deny: "[]".into(),
            rate_limit_per_second: None,
            rate_limit_burst: None,
            max_concurrent_requests: None,
        }
    }

    fn world() -> World {
        let cert = |n: &str| TlsCertificate {
            cert_pem: format!("cert-{n}"),
            key_pem: format!("key-{n}"),
        };
        let mut acme = AcmeChallenges::default();
        acme.http01.insert("tok".into(), "tok.thumb".into());
        World {
            certificates: BTreeMap::from([
                (
                    "t10.example.com".to_string(),
                    ("acme".to_string(), cert("10")),
                ),
                (
                    "t11.example.com".to_string(),
                    ("internal".to_string(), cert("11")),
                ),
                (
                    "t12.example.com".to_string(),
                    ("acme".to_string(), cert("12")),
                ),
            ]),
            acme,
            hsts_max_age: 60,
            access: AccessConfig {
                control_url: "https://control.example.com".into(),
                keys: vec![kakuremichi_proto::AccessKey {
                    kid: "k1".into(),
                    public_key: "pk".into(),
                }],
                revoked: vec!["s1".into()],
            },
            agents: vec![agent(1, Some("A1")), agent(2, None)],
            gateways: vec![
                gateway(1, Some("G1"), true),
                gateway(2, Some("G2"), false),
                gateway(3, None, true),
            ],
            tunnels: vec![
                tunnel(10, 1, 10000),
                tunnel(11, 2, 10000),
                tunnel(12, 1, 10001),
            ],
            replicas: Vec::new(),
            route_access: HashMap::new(),
        }
    }

    #[test]
    fn replicas_reach_gateways_with_online_hints_and_agents_as_services() {
        let mut w = world();
        w.agents.push(agent(3, Some("A3")));
        // Tunnel 11 (primary agent 2, unkeyed but addressed) gets agent 3 as replica on port 10005.
        w.replicas.push(ReplicaRow {
            tunnel_id: 11,
            agent_id: 3,
            port: 10005,
        });
        assert_eq!(w.replicated_agents(), HashSet::from([2, 3]));
        let gw = NodeRef {
            kind: NodeKind::Gateway,
            id: 1,
        };
        let s = w.snapshot(gw, |a| a == 3).unwrap();
        let r = &s.routes["t11.example.com"];
        assert_eq!(
            r.replicas
                .iter()
                .map(|t| (t.agent_id, t.port, t.online))
                .collect::<Vec<_>>(),
            vec![(2, 10000, false), (3, 10005, true)]
        );
        assert_eq!(r.targets().len(), 2);
        // Unreplicated routes stay as they were; the online hint changes the hash.
        assert!(s.routes["t10.example.com"].replicas.is_empty());
        assert_ne!(s.config_hash, w.snapshot(gw, |_| true).unwrap().config_hash);
        let agent3 = w
            .snapshot(
                NodeRef {
                    kind: NodeKind::Agent,
                    id: 3,
                },
                |_| true,
            )
            .unwrap();
        assert_eq!(
            agent3
                .services
                .iter()
                .map(|s| (s.tunnel_id, s.port))
                .collect::<Vec<_>>(),
            vec![(11, 10005)]
        );
    }

    #[test]
    fn gateway_sees_keyed_agents_and_all_routes() {
        let s = world()
            .snapshot(
                NodeRef {
                    kind: NodeKind::Gateway,
                    id: 1,
                },
                |_| true,
            )
            .unwrap();
        assert!(s.is_intact());
        assert_eq!(s.wg_address, Ipv4Addr::new(10, 77, 1, 1));
        assert_eq!(s.peers.iter().map(|p| p.id).collect::<Vec<_>>(), vec![1]);
        assert_eq!(s.peers[0].endpoint, None);
        assert_eq!(
            s.hostnames,
            vec!["t10.example.com", "t11.example.com", "t12.example.com"]
        );
        let r = &s.routes["t11.example.com"];
        assert_eq!(
            (r.tunnel_id, r.agent_id, r.agent_address, r.port),
            (11, 2, Ipv4Addr::new(10, 77, 0, 2), 10000)
        );
        assert!(s.services.is_empty());
    }

    #[test]
    fn gateway_gets_certificates_of_matching_source_and_challenges() {
        let s = world()
            .snapshot(
                NodeRef {
                    kind: NodeKind::Gateway,
                    id: 1,
                },
                |_| true,
            )
            .unwrap();
        // t11's certificate came from another source than its tunnel asks; t12 has tls off.
        assert_eq!(
            s.certificates.keys().collect::<Vec<_>>(),
            vec!["t10.example.com"]
        );
        let (t10, t12) = (&s.routes["t10.example.com"], &s.routes["t12.example.com"]);
        assert!(t10.https_redirect && t10.hsts_max_age == 60);
        assert!(!t12.https_redirect && t12.hsts_max_age == 0);
        assert_eq!(s.acme.http01["tok"], "tok.thumb");
        // Access: the policy per route, keys and revocations for every Gateway, none for Agents.
        assert_eq!(
            s.routes["t11.example.com"].access,
            kakuremichi_proto::RouteAccess::Login
        );
        assert!(t10.access.is_public());
        assert_eq!(s.access.keys[0].kid, "k1");
        assert_eq!(s.access.revoked, vec!["s1"]);
        let agent = world()
            .snapshot(
                NodeRef {
                    kind: NodeKind::Agent,
                    id: 1,
                },
                |_| true,
            )
            .unwrap();
        assert!(agent.certificates.is_empty() && agent.acme.is_empty());
        assert!(agent.access.is_empty());
    }

    #[test]
    fn agent_sees_enabled_keyed_gateways_and_its_services() {
        let s = world()
            .snapshot(
                NodeRef {
                    kind: NodeKind::Agent,
                    id: 1,
                },
                |_| true,
            )
            .unwrap();
        assert_eq!(s.peers.len(), 1);
        assert_eq!(
            s.peers[0].endpoint.as_deref(),
            Some("gw1.example.com:51820")
        );
        assert_eq!(
            s.services.iter().map(|s| s.tunnel_id).collect::<Vec<_>>(),
            vec![10, 12]
        );
        assert!(s.routes.is_empty());
    }

    #[test]
    fn a_disabled_gateway_gets_no_secrets() {
        let w = world();
        let s = w
            .snapshot(
                NodeRef {
                    kind: NodeKind::Gateway,
                    id: 2,
                },
                |_| true,
            )
            .unwrap();
        assert!(s.is_intact());
        assert_eq!(s.wg_address, Ipv4Addr::new(10, 77, 1, 2));
        assert!(s.certificates.is_empty(), "no certificate or private key");
        assert!(s.acme.is_empty(), "no ACME challenge");
        assert!(s.access.is_empty(), "no access keys or revocations");
        assert!(s.routes.is_empty() && s.peers.is_empty());
        assert_eq!(w.disabled_gateways(), HashSet::from([2]));
    }

    #[test]
    fn access_config_only_with_a_protected_route() {
        let mut w = world();
        w.tunnels.retain(|t| t.id != 11);
        let s = w
            .snapshot(
                NodeRef {
                    kind: NodeKind::Gateway,
                    id: 1,
                },
                |_| true,
            )
            .unwrap();
        assert!(s.access.is_empty());
        let json = serde_json::to_value(&s).unwrap();
        assert!(json.get("access").is_none(), "{json}");
    }

    #[test]
    fn routes_carry_their_limits_and_unreadable_lists_fail_closed() {
        let gw = NodeRef {
            kind: NodeKind::Gateway,
            id: 1,
        };
        let mut w = world();
        let plain = w.snapshot(gw, |_| true).unwrap();
        let t10 = &mut w.tunnels[0];
        t10.ip_allow = r#"["192.0.2.0/24","2001:db8::1"]"#.into();
        t10.ip_deny = r#"["192.0.2.9"]"#.into();
        t10.rate_limit_per_second = Some(5);
        t10.max_concurrent_requests = Some(40);
        let s = w.snapshot(gw, |_| true).unwrap();
        let limits = &s.routes["t10.example.com"].limits;
        let text =
            |l: &[kakuremichi_proto::IpNet]| l.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        assert_eq!(text(&limits.ip_allow), ["192.0.2.0/24", "2001:db8::1/128"]);
        assert_eq!(text(&limits.ip_deny), ["192.0.2.9/32"]);
        assert_eq!(
            limits.rate,
            Some(kakuremichi_proto::RateLimit {
                per_second: 5,
                burst: 5
            }),
            "no burst: the rate"
        );
        assert_eq!(limits.max_concurrent_requests, Some(40));
        assert!(s.routes["t11.example.com"].limits.is_none());
        assert_ne!(s.config_hash, plain.config_hash);
        // A list that cannot be read takes the tunnel out rather than serve it unguarded.
        w.tunnels[0].ip_deny = r#"["not-a-network"]"#.into();
        let s = w.snapshot(gw, |_| true).unwrap();
        assert!(!s.routes.contains_key("t10.example.com"));
        assert!(s.routes.contains_key("t11.example.com"));
    }

    #[test]
    fn unknown_node_has_no_snapshot() {
        assert!(world()
            .snapshot(
                NodeRef {
                    kind: NodeKind::Agent,
                    id: 9,
                },
                |_| true,
            )
            .is_none());
        assert!(world()
            .snapshot(
                NodeRef {
                    kind: NodeKind::Gateway,
                    id: 9,
                },
                |_| true,
            )
            .is_none());
    }
}
