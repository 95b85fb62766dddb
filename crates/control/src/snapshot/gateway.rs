//! The Gateways' part of the snapshots: one body shared by every Gateway of a protocol version
//! (routes, certificates, stream ports, access keys, error pages), sealed once per change.

use super::sealed::SharedGateway;
use super::{address, udp_idle_timeout, Sealed, World};
use crate::store::TunnelRow;
use kakuremichi_proto::{
    ConfigSnapshot, GatewayRoute, RouteTarget, SharedSnapshot, StreamRoute, TlsCertificate,
    TunnelProtocol, WgPeer,
};
use std::cell::RefCell;
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

impl World {
    /// The certificate the Gateways serve for `t` and the name to store it under: its own (of
    /// the source it asks for), else the wildcard's one label above, which the Gateways match
    /// by SNI.
    pub(super) fn served_certificate(&self, t: &TunnelRow) -> Option<(String, &TlsCertificate)> {
        let own = (t.hostname.clone(), t.tls.clone());
        if let Some(cert) = self.certificates.get(&own) {
            return Some((own.0, cert));
        }
        let wildcard = (crate::validate::covering_wildcard(&t.hostname)?, own.1);
        let cert = self.certificates.get(&wildcard)?;
        Some((wildcard.0, cert))
    }

    /// Every Agent serving tunnel `t` when it has replicas (primary first), else empty.
    pub(super) fn route_replicas(
        &self,
        t: &TunnelRow,
        online: &impl Fn(i64) -> bool,
    ) -> Vec<RouteTarget> {
        let targets = self.all_targets(t, online);
        if targets.len() > 1 {
            targets
        } else {
            Vec::new()
        }
    }

    /// Every Agent serving tunnel `t`, the primary first.
    pub(super) fn all_targets(
        &self,
        t: &TunnelRow,
        online: &impl Fn(i64) -> bool,
    ) -> Vec<RouteTarget> {
        let replicas = self.index().replicas_of_tunnel.get(&t.id);
        let replicas = replicas.into_iter().flatten().map(|&i| &self.replicas[i]);
        let all =
            std::iter::once((t.agent_id, t.port)).chain(replicas.map(|r| (r.agent_id, r.port)));
        all.filter_map(|(agent_id, port)| {
            let agent = self.agent(agent_id)?;
            Some(RouteTarget {
                agent_id,
                agent_address: address(&agent.wg_address)?,
                port: u16::try_from(port).ok()?,
                online: online(agent_id),
            })
        })
        .collect()
    }

    /// The route of a `tcp`, `udp` or `tls` tunnel; `None` when no Agent of it is known.
    pub(super) fn stream_route(
        &self,
        t: &TunnelRow,
        limits: kakuremichi_proto::RouteLimits,
        online: &impl Fn(i64) -> bool,
    ) -> Option<StreamRoute> {
        let targets = self.all_targets(t, online);
        if targets.is_empty() {
            return None;
        }
        Some(StreamRoute {
            tunnel_id: t.id,
            targets,
            proxy_protocol: t.proxy_protocol(),
            max_connections: t.max_connections.and_then(|c| u32::try_from(c).ok()),
            limits: kakuremichi_proto::RouteLimits {
                rate: None,
                max_concurrent_requests: None,
                ..limits
            },
            udp_idle_timeout: udp_idle_timeout(t),
        })
    }

    /// Gateways an admin disabled.
    pub fn disabled_gateways(&self) -> HashSet<i64> {
        self.gateways
            .iter()
            .filter(|g| !g.enabled)
            .map(|g| g.id)
            .collect()
    }

    pub(super) fn gateway_snapshot(
        &self,
        id: i64,
        online: impl Fn(i64) -> bool,
        protocol: u32,
    ) -> Option<ConfigSnapshot> {
        let gateway = self.gateways.iter().find(|g| g.id == id)?;
        let identity = ConfigSnapshot {
            node_id: gateway.id,
            wg_address: address(&gateway.wg_address)?,
            ..ConfigSnapshot::default()
        };
        if !gateway.enabled {
            // A disabled Gateway may be one an admin no longer trusts: it gets its identity and
            // nothing else, no certificate (private keys), no challenge, no access key, no route
            // and no peer (Agents drop it too). Applying this also clears what it held.
            return Some(identity);
        }
        Some(ConfigSnapshot {
            node_id: identity.node_id,
            wg_address: identity.wg_address,
            ..self.gateway_body(online, protocol)
        })
    }

    /// An enabled Gateway's sealed snapshot: the one every enabled Gateway shares (made once
    /// for the Agents' online states it depends on), with its identity.
    pub(super) fn gateway_sealed(
        &self,
        id: i64,
        online: impl Fn(i64) -> bool,
        protocol: u32,
    ) -> Option<Sealed> {
        let gateway = self.gateways.iter().find(|g| g.id == id)?;
        if !gateway.enabled {
            return Some(Sealed::Own(Box::new(
                self.gateway_snapshot(id, online, protocol)?.seal(),
            )));
        }
        let wg_address = address(&gateway.wg_address)?;
        let shared = self.shared_gateway(&online, protocol);
        let config_hash = shared.snapshot.config_hash(id, wg_address);
        Some(Sealed::Shared {
            shared,
            node_id: id,
            wg_address,
            config_hash,
        })
    }

    pub(super) fn shared_gateway(
        &self,
        online: &impl Fn(i64) -> bool,
        protocol: u32,
    ) -> Arc<SharedGateway> {
        let mut slots = self
            .gateway_shared
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let cached = &mut slots[usize::from(protocol >= 3)];
        if let Some(shared) = cached.as_ref() {
            if shared
                .hints
                .iter()
                .all(|&(agent, was)| online(agent) == was)
            {
                return shared.clone();
            }
        }
        // Made again only when an Agent it asked about came or went.
        let hints = RefCell::new(BTreeMap::new());
        let body = self.gateway_body(
            |agent| {
                let on = online(agent);
                hints.borrow_mut().insert(agent, on);
                on
            },
            protocol,
        );
        let snapshot = SharedSnapshot::new(body);
        let challenges = Arc::new(snapshot.template().acme.ids().into_iter().collect());
        let shared = Arc::new(SharedGateway {
            snapshot,
            hints: hints.into_inner().into_iter().collect(),
            challenges,
        });
        *cached = Some(shared.clone());
        shared
    }

    /// What every enabled Gateway gets, without its identity, in a session of `protocol`.
    pub(super) fn gateway_body(
        &self,
        online: impl Fn(i64) -> bool,
        session: u32,
    ) -> ConfigSnapshot {
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
        let (mut tcp_ports, mut udp_ports, mut tls_passthrough) =
            (BTreeMap::new(), BTreeMap::new(), BTreeMap::new());
        for t in &self.tunnels {
            let Some(agent) = self.agent(t.agent_id) else {
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
            let protocol = t.protocol();
            // A protected `tcp` tunnel opens no public port: it is reached through
            // `kakuremichi access tcp`, which signs the user in and carries each connection in
            // a WebSocket to the tunnel's hostname (an HTTPS route of its own).
            let public = self.route_access.get(&t.id).is_none_or(|a| a.is_public());
            let tcp_access = protocol == TunnelProtocol::Tcp && !public;
            if protocol != TunnelProtocol::Http && !tcp_access {
                let port = t.public_port.and_then(|p| u16::try_from(p).ok());
                let Some(route) = self.stream_route(t, limits, &online) else {
                    continue;
                };
                match (protocol, port) {
                    (TunnelProtocol::Tcp, Some(port)) => tcp_ports.insert(port, route),
                    (TunnelProtocol::Udp, Some(port)) => udp_ports.insert(port, route),
                    (TunnelProtocol::Tls, _) => tls_passthrough.insert(t.hostname.clone(), route),
                    _ => None,
                };
                continue;
            }
            let https = t.tls != "off";
            if https {
                if let Some((name, cert)) = self.served_certificate(t) {
                    certificates.insert(name, cert.clone());
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
                plain_http_only: !https,
                tcp_access,
                basic_auth: (protocol == TunnelProtocol::Http)
                    .then(|| t.basic_auth())
                    .flatten(),
                // Protocol 2 Gateways do not know the field (they would refuse the snapshot).
                log_requests: t.log_requests && session >= 3,
                error_page: match session >= 3 && protocol == TunnelProtocol::Http {
                    true => self.error_pages().of_tunnel.get(&t.id).cloned(),
                    false => None,
                },
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
        // Each page the routes name, and the global one, once (protocol 3 only, as above).
        let (mut error_pages, mut default_error_page) = (BTreeMap::new(), None);
        if session >= 3 {
            let pages = self.error_pages();
            let used = routes.values().filter_map(|r| r.error_page.as_ref());
            for digest in used.chain(pages.default.as_ref()) {
                if let Some(html) = pages.by_digest.get(digest) {
                    error_pages.insert(digest.clone(), html.clone());
                }
            }
            default_error_page = pages.default.clone();
        }
        ConfigSnapshot {
            peers,
            routes,
            certificates,
            acme: self.acme.clone(),
            access,
            tcp_ports,
            udp_ports,
            tls_passthrough,
            error_pages,
            default_error_page,
            ..ConfigSnapshot::default()
        }
    }
}
