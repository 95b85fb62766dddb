//! Tests of `snapshot.rs`.

use super::*;

/// `sample().config_hash` as computed by the code before [`RouteLimits`] existed.
const SAMPLE_HASH: &str = "2a5b4230a02b307f9b4c9ebf69a165198a62ea5c58a4478bc5c0c83f7fba0df3";

pub(crate) fn sample() -> ConfigSnapshot {
    let mut routes = BTreeMap::new();
    routes.insert(
        "app.example.com".to_string(),
        GatewayRoute {
            tunnel_id: 7,
            agent_id: 3,
            agent_address: Ipv4Addr::new(10, 77, 0, 3),
            port: 10007,
            https_redirect: true,
            hsts_max_age: 31_536_000,
            replicas: Vec::new(),
            access: RouteAccess::Login,
            limits: RouteLimits::default(),
            plain_http_only: false,
            tcp_access: false,
            basic_auth: None,
            log_requests: false,
            error_page: None,
        },
    );
    let cert = TlsCertificate {
        cert_pem: "-----BEGIN CERTIFICATE-----\n...".into(),
        key_pem: "-----BEGIN PRIVATE KEY-----\nsecret-key-material".into(),
    };
    let mut acme = AcmeChallenges::default();
    acme.http01.insert("tok".into(), "tok.thumb".into());
    acme.tls_alpn01.insert(
        "app.example.com".into(),
        TlsAlpnChallenge {
            token: "tok2".into(),
            certificate: cert.clone(),
        },
    );
    ConfigSnapshot {
        config_hash: String::new(),
        node_id: 1,
        wg_address: Ipv4Addr::new(10, 77, 0, 1),
        peers: vec![WgPeer {
            id: 3,
            name: "home".into(),
            public_key: "x".repeat(44),
            wg_address: Ipv4Addr::new(10, 77, 0, 3),
            endpoint: None,
        }],
        routes,
        hostnames: vec![],
        services: vec![],
        certificates: BTreeMap::from([("app.example.com".to_string(), cert)]),
        acme,
        access: Box::new(AccessConfig {
            control_url: "https://control.example.com".into(),
            keys: vec![crate::AccessKey {
                kid: "k1".into(),
                public_key: "A".repeat(43),
            }],
            revoked: vec!["s1".into()],
        }),
        ..ConfigSnapshot::default()
    }
    .seal()
}

#[test]
fn seal_sets_hash_and_hostnames() {
    let s = sample();
    assert_eq!(s.hostnames, vec!["app.example.com".to_string()]);
    assert_eq!(s.config_hash.len(), 64);
    assert!(s.is_intact());
}

#[test]
fn hash_changes_with_content_and_not_with_order() {
    let a = sample();
    let mut b = a.clone();
    b.routes.get_mut("app.example.com").unwrap().port = 10008;
    assert_ne!(a.config_hash, b.seal().config_hash);

    let mut c = a.clone();
    c.peers.push(WgPeer {
        id: 1,
        name: "a".into(),
        public_key: "k".into(),
        wg_address: Ipv4Addr::new(10, 77, 0, 9),
        endpoint: None,
    });
    let mut d = a.clone();
    d.peers.insert(0, c.peers[1].clone());
    assert_eq!(c.seal().config_hash, d.seal().config_hash);
}

#[test]
fn private_keys_are_masked_in_debug() {
    let dbg = format!("{:?}", sample());
    assert!(!dbg.contains("secret-key-material"), "{dbg}");
    assert!(dbg.contains("<redacted>"));
}

#[test]
fn challenge_ids_name_every_challenge() {
    assert_eq!(sample().acme.ids(), vec!["http01:tok", "tls-alpn01:tok2"]);
    assert!(AcmeChallenges::default().is_empty());
}

#[test]
fn older_snapshots_without_tls_fields_still_parse() {
    let mut v = serde_json::to_value(sample()).unwrap();
    let obj = v.as_object_mut().unwrap();
    obj.remove("certificates");
    obj.remove("acme");
    obj.remove("access");
    let route = obj["routes"]["app.example.com"].as_object_mut().unwrap();
    route.remove("https_redirect");
    route.remove("hsts_max_age");
    route.remove("access");
    let back: ConfigSnapshot = serde_json::from_value(v).unwrap();
    assert!(back.certificates.is_empty() && back.acme.is_empty());
    assert!(back.access.is_empty());
    assert!(!back.routes["app.example.com"].https_redirect);
    assert!(back.routes["app.example.com"].access.is_public());
}

#[test]
fn route_limits_round_trip_and_change_the_hash() {
    let plain = sample();
    let mut limited = plain.clone();
    limited.routes.get_mut("app.example.com").unwrap().limits = RouteLimits {
        ip_allow: vec![
            "192.0.2.0/24".parse().unwrap(),
            "2001:db8::/48".parse().unwrap(),
        ],
        ip_deny: vec!["192.0.2.9/32".parse().unwrap()],
        rate: Some(crate::RateLimit {
            per_second: 10,
            burst: 20,
        }),
        max_concurrent_requests: Some(50),
    };
    let limited = limited.seal();
    assert_ne!(limited.config_hash, plain.config_hash);
    let json = serde_json::to_string(&limited).unwrap();
    assert!(
        json.contains(r#""ip_allow":["192.0.2.0/24","2001:db8::/48"]"#),
        "{json}"
    );
    let back: ConfigSnapshot = serde_json::from_str(&json).unwrap();
    assert_eq!(back, limited);
    assert!(back.is_intact());
}

#[test]
fn routes_without_limits_serialise_and_hash_as_before() {
    let s = sample();
    let json = serde_json::to_value(&s).unwrap();
    assert!(
        json["routes"]["app.example.com"].get("limits").is_none(),
        "{json}"
    );
    // The hash of this very sample before limits existed: unchanged, so no Gateway sees a
    // new snapshot (or an unknown field) for tunnels that set no limits.
    assert_eq!(s.config_hash, SAMPLE_HASH);
}

#[test]
fn error_pages_travel_once_by_digest_and_are_left_out_when_none() {
    let plain = serde_json::to_value(sample()).unwrap();
    assert!(plain.get("error_pages").is_none() && plain.get("default_error_page").is_none());
    assert!(plain["routes"]["app.example.com"]
        .get("error_page")
        .is_none());

    let html = "<h1>{{status}}</h1><p>{{request_id}}</p>";
    let digest = error_page_digest(html);
    assert_eq!(digest.len(), 64);
    assert_eq!(digest, error_page_digest(html), "stable");
    let mut s = sample();
    s.error_pages.insert(digest.clone(), html.to_string());
    s.default_error_page = Some(digest.clone());
    s.routes.get_mut("app.example.com").unwrap().error_page = Some(digest.clone());
    let s = s.seal();
    assert_ne!(s.config_hash, SAMPLE_HASH);
    let json = serde_json::to_string(&s).unwrap();
    assert_eq!(json.matches("{{request_id}}").count(), 1, "{json}");
    let back: ConfigSnapshot = serde_json::from_str(&json).unwrap();
    assert_eq!(back, s);
    assert!(back.is_intact());
    // Still strict: an unknown field in a route is refused.
    let mut v: serde_json::Value = serde_json::from_str(&json).unwrap();
    v["routes"]["app.example.com"]["error_page_html"] = serde_json::json!(html);
    assert!(serde_json::from_value::<ConfigSnapshot>(v).is_err());
}

#[test]
fn tampered_snapshot_is_not_intact() {
    let mut s = sample();
    s.node_id = 2;
    assert!(!s.is_intact());
}

#[test]
fn json_round_trip_and_unknown_fields_rejected() {
    let s = sample();
    let json = serde_json::to_string(&s).unwrap();
    let back: ConfigSnapshot = serde_json::from_str(&json).unwrap();
    assert_eq!(back, s);
    let mut v: serde_json::Value = serde_json::from_str(&json).unwrap();
    v["surprise"] = serde_json::json!(1);
    assert!(serde_json::from_value::<ConfigSnapshot>(v).is_err());
}

#[test]
fn a_shared_snapshot_seals_and_encodes_each_node_exactly_as_its_own_snapshot() {
    let mut template = sample();
    template.tcp_ports.insert(
        2222,
        StreamRoute {
            tunnel_id: 9,
            targets: vec![],
            proxy_protocol: ProxyProtocol::Off,
            max_connections: Some(5),
            limits: RouteLimits::default(),
            udp_idle_timeout: None,
        },
    );
    // Unsorted on purpose: sealing sorts.
    template.peers.insert(
        0,
        WgPeer {
            id: 9,
            name: "zeta \"quoted\" \u{e9}".into(),
            public_key: "y".repeat(44),
            wg_address: Ipv4Addr::new(10, 77, 0, 9),
            endpoint: Some("gw.example.com:51820".into()),
        },
    );
    let shared = SharedSnapshot::new(template.clone());
    for (id, address) in [
        (1, Ipv4Addr::new(10, 77, 1, 1)),
        (4_000_000_000, Ipv4Addr::new(10, 255, 255, 254)),
    ] {
        let own = ConfigSnapshot {
            node_id: id,
            wg_address: address,
            ..template.clone()
        }
        .seal();
        let hash = shared.config_hash(id, address);
        assert_eq!(hash, own.config_hash);
        let text = shared.encode(&hash, id, address);
        assert_eq!(
            text,
            crate::ControlMessage::Config { snapshot: own }.encode()
        );
        let Ok(crate::ControlMessage::Config { snapshot }) = crate::decode_control(&text) else {
            panic!("not a config message: {text}");
        };
        assert!(snapshot.is_intact());
    }
    assert_eq!(shared.template().node_id, 0);
    assert!(shared.template().config_hash.is_empty());
}

#[test]
fn content_hash_is_the_same_with_or_without_a_stored_hash() {
    let s = sample();
    let mut unsealed = s.clone();
    unsealed.config_hash = String::new();
    assert_eq!(s.content_hash(), unsealed.content_hash());
    assert_eq!(s.content_hash(), SAMPLE_HASH);
}
