//! Tests of snapshot computation: what each kind of node receives, and what it must not.

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
        public_ipv4: None,
        public_ipv6: None,
        observed_ip: None,
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
        protocol: "http".into(),
        public_port: None,
        proxy_protocol: "off".into(),
        max_connections: None,
        udp_idle_timeout: None,
        basic_auth_user: None,
        basic_auth: None,
        log_requests: false,
        error_page: None,
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
                ("t10.example.com".to_string(), "acme".to_string()),
                cert("10"),
            ),
            (
                ("t11.example.com".to_string(), "internal".to_string()),
                cert("11"),
            ),
            (
                ("t12.example.com".to_string(), "acme".to_string()),
                cert("12"),
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
        ..World::default()
    }
}

/// What Gateway `id` receives from `w`, with every Agent online.
fn gateway_snapshot(w: &World, id: i64) -> ConfigSnapshot {
    let gw = NodeRef {
        kind: NodeKind::Gateway,
        id,
    };
    w.snapshot(gw, |_| true).unwrap()
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
    let s = gateway_snapshot(&world(), 1);
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
fn a_name_without_its_own_certificate_gets_the_wildcard_one_label_up_of_its_source() {
    let mut w = world();
    let cert = |n: &str| TlsCertificate {
        cert_pem: format!("cert-{n}"),
        key_pem: format!("key-{n}"),
    };
    for source in ["acme", "internal"] {
        let key = ("*.example.com".to_string(), source.to_string());
        w.certificates.insert(key, cert(source));
    }
    // Like a temporary tunnel: no certificate of its own yet.
    w.tunnels.push(tunnel(13, 1, 10002));
    let s = gateway_snapshot(&w, 1);
    // t10 keeps its own; t11's own is of another source and t13 has none: both get the ACME
    // wildcard (stored under its name, which the Gateways match by SNI); t12 has tls off.
    assert_eq!(
        s.certificates.keys().collect::<Vec<_>>(),
        vec!["*.example.com", "t10.example.com"]
    );
    assert_eq!(s.certificates["*.example.com"].cert_pem, "cert-acme");
    // Without the wildcard nothing is served for t13, as before.
    w.certificates.clear();
    let s = gateway_snapshot(&w, 1);
    assert!(s.certificates.is_empty());
}

#[test]
fn gateway_gets_certificates_of_matching_source_and_challenges() {
    let s = gateway_snapshot(&world(), 1);
    // t11's certificate came from another source than its tunnel asks; t12 has tls off.
    assert_eq!(
        s.certificates.keys().collect::<Vec<_>>(),
        vec!["t10.example.com"]
    );
    let (t10, t12) = (&s.routes["t10.example.com"], &s.routes["t12.example.com"]);
    assert!(t10.https_redirect && t10.hsts_max_age == 60);
    assert!(!t12.https_redirect && t12.hsts_max_age == 0);
    assert!(t12.plain_http_only && !t10.plain_http_only);
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
    let s = gateway_snapshot(&w, 2);
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
    let s = gateway_snapshot(&w, 1);
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
    let text = |l: &[kakuremichi_proto::IpNet]| l.iter().map(|n| n.to_string()).collect::<Vec<_>>();
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

#[test]
fn sessions_get_the_same_snapshots_as_each_node_would_have_alone() {
    let mut w = world();
    w.agents.push(agent(3, Some("A3")));
    w.replicas.push(ReplicaRow {
        tunnel_id: 10,
        agent_id: 3,
        port: 10005,
    });
    let online = std::cell::Cell::new(true);
    for kind in [NodeKind::Gateway, NodeKind::Agent] {
        for id in 1..=3 {
            let node = NodeRef { kind, id };
            let own = w.snapshot(node, |_| online.get());
            let sealed = w.sealed(node, |_| online.get());
            let (Some(own), Some(sealed)) = (own, sealed) else {
                assert!(w.sealed(node, |_| true).is_none(), "{node}");
                continue;
            };
            assert_eq!(own.config_hash, sealed.config_hash(), "{node}");
            let challenges: HashSet<String> = own.acme.ids().into_iter().collect();
            assert_eq!(*sealed.challenges(), challenges, "{node}");
            assert_eq!(
                sealed.encode(),
                kakuremichi_proto::ControlMessage::Config { snapshot: own }.encode()
            );
        }
    }
    // The Gateways' shared snapshot follows the online hints it was made with: Agent 3 going
    // offline changes the route's replicas, and so every enabled Gateway's hash.
    let gw = NodeRef {
        kind: NodeKind::Gateway,
        id: 1,
    };
    let before = w.sealed(gw, |_| true).unwrap().config_hash().to_string();
    let after = w.sealed(gw, |a| a != 3).unwrap().config_hash().to_string();
    assert_ne!(before, after);
    assert_eq!(after, w.snapshot(gw, |a| a != 3).unwrap().config_hash);
    assert_eq!(before, w.sealed(gw, |_| true).unwrap().config_hash());
}

#[test]
fn agent_inputs_change_only_with_what_the_agent_gets() {
    let w = world();
    let before = w.agent_inputs(1).unwrap();
    // Another Agent's tunnel, or a Gateway's route detail, is not the Agent's business.
    let mut other = world();
    other.tunnels.push(tunnel(13, 2, 10003));
    other.certificates.clear();
    assert_eq!(other.agent_inputs(1).unwrap(), before);
    // Its own new tunnel, or a new Gateway, is.
    let mut own = world();
    own.tunnels.push(tunnel(13, 1, 10003));
    assert_ne!(own.agent_inputs(1).unwrap(), before);
    let mut gateways = world();
    gateways.gateways.push(gateway(4, Some("G4"), true));
    assert_ne!(gateways.agent_inputs(1).unwrap(), before);
    assert!(w.agent_inputs(99).is_none());
}

#[test]
fn the_request_log_reaches_only_gateways_that_know_it() {
    let mut w = world();
    w.tunnels[0].log_requests = true;
    let gw = NodeRef {
        kind: NodeKind::Gateway,
        id: 1,
    };
    let logs = |protocol| {
        let s = w.snapshot_in(gw, |_| true, protocol).unwrap();
        s.routes["t10.example.com"].log_requests
    };
    assert!(logs(3));
    // A protocol-2 Gateway would refuse a route with a field it does not know.
    assert!(!logs(2));
    let old = w.sealed_in(gw, |_| true, 2).unwrap();
    let new = w.sealed_in(gw, |_| true, 3).unwrap();
    let old_hash = old.config_hash().to_string();
    assert_ne!(old_hash, new.config_hash());
    assert!(!old.encode().contains("log_requests"));
    assert!(new.encode().contains("\"log_requests\":true"));
    // Each version's shared snapshot is cached apart.
    assert_eq!(
        w.sealed_in(gw, |_| true, 2).unwrap().config_hash(),
        old_hash
    );
}

#[test]
fn error_pages_travel_once_and_only_to_gateways_that_know_them() {
    let mut w = world();
    let shared = "<h1>{{status}}</h1>".to_string();
    w.tunnels[0].error_page = Some(shared.clone());
    w.tunnels[1].error_page = Some(shared.clone());
    w.global_error_page = Some("<p>global {{request_id}}</p>".to_string());
    let gw = NodeRef {
        kind: NodeKind::Gateway,
        id: 1,
    };
    let s = w.snapshot_in(gw, |_| true, 3).unwrap();
    let own = kakuremichi_proto::error_page_digest(&shared);
    let global = kakuremichi_proto::error_page_digest("<p>global {{request_id}}</p>");
    assert_eq!(s.routes["t10.example.com"].error_page.as_ref(), Some(&own));
    assert_eq!(s.routes["t11.example.com"].error_page.as_ref(), Some(&own));
    assert_eq!(s.routes["t12.example.com"].error_page, None);
    assert_eq!(s.default_error_page.as_ref(), Some(&global));
    assert_eq!(
        s.error_pages.len(),
        2,
        "a page shared by two tunnels is sent once"
    );
    assert_eq!(s.error_pages[&own], shared);
    let new = w.sealed_in(gw, |_| true, 3).unwrap().encode();
    assert_eq!(new.matches("<h1>{{status}}</h1>").count(), 1);

    // A protocol-2 Gateway would refuse a snapshot with fields it does not know.
    let s = w.snapshot_in(gw, |_| true, 2).unwrap();
    assert!(s.error_pages.is_empty() && s.default_error_page.is_none());
    assert!(s.routes.values().all(|r| r.error_page.is_none()));
    let old = w.sealed_in(gw, |_| true, 2).unwrap().encode();
    assert!(!old.contains("error_page"), "{old}");

    // Without any page, nothing is added (snapshots hash as before).
    let plain = world().sealed_in(gw, |_| true, 3).unwrap().encode();
    assert!(!plain.contains("error_page"), "{plain}");
}
