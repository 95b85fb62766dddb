//! `tcp`, `udp` and `tls` tunnels through Control (issue #16): the API contract (protocol,
//! public_port picked or given, proxy_protocol, max_connections), its refusals (a 400 or 409 that
//! changes nothing), and what the Gateways and Agents get in their snapshots.

use kakuremichi_proto::{NodeRole, ProxyProtocol, TunnelProtocol};
use kakuremichi_testkit::control::*;
use reqwest::StatusCode;
use serde_json::json;
use std::time::Duration;

const PUSH: Duration = Duration::from_secs(5);

#[tokio::test]
async fn stream_tunnels_get_ports_and_reach_gateways_and_agents() {
    let (_tmp, dir) = data_dir();
    let c = start(&dir).await;
    let a1 = c.agent("a1").await;
    let agent = a1["id"].as_i64().unwrap();
    let g = c.gateway("g1").await;

    // Ports are picked from the range, lowest free first; the answer names the port.
    let create = |host: &str, extra| tunnel_body(agent, host, "db:5432", extra);
    let (s, db) = c
        .post(
            "/api/v1/tunnels",
            create(
                "db.example.com",
                json!({"protocol": "tcp", "proxy_protocol": "v2"}),
            ),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{db}");
    assert_eq!(db["protocol"], "tcp");
    assert_eq!(db["public_port"], 20000);
    assert_eq!(db["proxy_protocol"], "v2");
    assert_eq!(db["tls"], "off", "no certificate for a tcp tunnel");
    assert_eq!(db["certificate"], json!(null));
    assert_eq!(
        db["public_addresses"],
        json!(["g1.example.net:20000"]),
        "{db}"
    );
    let (s, dns) = c
        .post(
            "/api/v1/tunnels",
            create(
                "dns.example.com",
                json!({"protocol": "udp", "max_connections": 50, "udp_idle_timeout": 30}),
            ),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{dns}");
    assert_eq!(dns["public_port"], 20000, "UDP 20000 is not TCP 20000");
    assert_eq!(dns["udp_idle_timeout"], 30);
    assert_eq!(db["udp_idle_timeout"], json!(null), "udp only");
    let dns_path = format!("/api/v1/tunnels/{}", dns["id"]);
    let (s, reset) = c.patch(&dns_path, json!({"udp_idle_timeout": null})).await;
    assert_eq!(s, StatusCode::OK, "{reset}");
    assert_eq!(reset["udp_idle_timeout"], 60, "null: the default");
    let (_, set) = c.patch(&dns_path, json!({"udp_idle_timeout": 30})).await;
    assert_eq!(set["udp_idle_timeout"], 30);
    let (s, smtp) = c
        .post(
            "/api/v1/tunnels",
            create(
                "smtp.example.com",
                json!({"protocol": "tcp", "public_port": 2525}),
            ),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{smtp}");
    assert_eq!(smtp["public_port"], 2525);
    let (s, site) = c
        .post(
            "/api/v1/tunnels",
            create("secure.example.com", json!({"protocol": "tls"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{site}");
    assert_eq!(site["public_port"], json!(null));
    let (_, http) = c
        .post("/api/v1/tunnels", create("www.example.com", json!({})))
        .await;
    assert_eq!(http["protocol"], "http", "default unchanged");
    assert_eq!(http["proxy_protocol"], "off");

    // Refusals: clear, and nothing changes.
    for (body, status, words) in [
        (
            create(
                "x.example.com",
                json!({"protocol": "tcp", "public_port": 2525}),
            ),
            StatusCode::CONFLICT,
            "already used by tunnel",
        ),
        (
            create(
                "x.example.com",
                json!({"protocol": "tcp", "public_port": 443}),
            ),
            StatusCode::CONFLICT,
            "Gateways themselves",
        ),
        (
            create(
                "x.example.com",
                json!({"protocol": "udp", "public_port": 51820}),
            ),
            StatusCode::CONFLICT,
            "Gateways themselves",
        ),
        (
            create(
                "x.example.com",
                json!({"protocol": "tcp", "public_port": 0}),
            ),
            StatusCode::BAD_REQUEST,
            "between 1 and 65535",
        ),
        (
            create("x.example.com", json!({"protocol": "tcp", "tls": "acme"})),
            StatusCode::BAD_REQUEST,
            "tls applies to http",
        ),
        (
            create(
                "x.example.com",
                json!({"protocol": "udp", "proxy_protocol": "v1"}),
            ),
            StatusCode::BAD_REQUEST,
            "proxy_protocol applies",
        ),
        (
            create(
                "x.example.com",
                json!({"protocol": "tls", "public_port": 3000}),
            ),
            StatusCode::BAD_REQUEST,
            "public_port applies",
        ),
        (
            create("x.example.com", json!({"max_connections": 5})),
            StatusCode::BAD_REQUEST,
            "max_concurrent_requests",
        ),
        (
            create(
                "x.example.com",
                json!({"protocol": "tcp", "max_connections": 0}),
            ),
            StatusCode::BAD_REQUEST,
            "max_connections must be",
        ),
        (
            create(
                "x.example.com",
                json!({"protocol": "udp", "access": {"mode": "login"}}),
            ),
            StatusCode::BAD_REQUEST,
            "must be public",
        ),
        (
            create(
                "x.example.com",
                json!({"protocol": "udp", "tls": "internal"}),
            ),
            StatusCode::BAD_REQUEST,
            "tls applies to http tunnels",
        ),
        (
            create(
                "x.example.com",
                json!({"protocol": "tcp", "udp_idle_timeout": 30}),
            ),
            StatusCode::BAD_REQUEST,
            "udp_idle_timeout applies to udp tunnels",
        ),
        (
            create(
                "x.example.com",
                json!({"protocol": "udp", "udp_idle_timeout": 86401}),
            ),
            StatusCode::BAD_REQUEST,
            "between 1 and 86400",
        ),
        (
            create("*.x.example.com", json!({"protocol": "tcp"})),
            StatusCode::BAD_REQUEST,
            "exact hostname",
        ),
        (
            create(
                "x.example.com",
                json!({"protocol": "tcp", "rate_limit_per_second": 5}),
            ),
            StatusCode::BAD_REQUEST,
            "apply to http",
        ),
        (
            create("x.example.com", json!({"protocol": "ftp"})),
            StatusCode::BAD_REQUEST,
            "protocol",
        ),
    ] {
        let (s, err) = c.post("/api/v1/tunnels", body.clone()).await;
        assert_eq!(s, status, "{body} → {err}");
        assert!(err.to_string().contains(words), "{body} → {err}");
    }
    let id = db["id"].as_i64().unwrap();
    let (s, err) = c
        .patch(&format!("/api/v1/tunnels/{id}"), json!({"protocol": "udp"}))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{err}");
    assert!(err.to_string().contains("cannot change"), "{err}");
    let (s, err) = c
        .patch(
            &format!("/api/v1/tunnels/{id}"),
            json!({"public_port": 2525}),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{err}");
    let (_, all) = c.get("/api/v1/tunnels").await;
    assert_eq!(all.as_array().unwrap().len(), 5, "{all}");

    // PATCH moves the port and the cap; the Gateway's snapshot follows.
    let (s, moved) = c
        .patch(
            &format!("/api/v1/tunnels/{id}"),
            json!({"public_port": 25432, "max_connections": 8}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{moved}");
    assert_eq!(moved["public_port"], 25432);
    assert_eq!(moved["max_connections"], 8);
    let (mut gw, _, _) = c
        .node(g["token"].as_str().unwrap(), NodeRole::Gateway, None)
        .await;
    let snap = next_config(&mut gw, PUSH).await;
    let tcp = &snap.tcp_ports[&25432];
    assert_eq!(tcp.tunnel_id, id);
    assert_eq!(tcp.proxy_protocol, ProxyProtocol::V2);
    assert_eq!(tcp.max_connections, Some(8));
    assert_eq!(tcp.targets.len(), 1);
    assert!(snap.tcp_ports.contains_key(&2525));
    assert_eq!(snap.udp_ports[&20000].udp_idle_timeout, Some(30));
    assert_eq!(tcp.udp_idle_timeout, None);
    assert!(snap.tls_passthrough.contains_key("secure.example.com"));
    assert_eq!(
        snap.routes.keys().collect::<Vec<_>>(),
        ["www.example.com"],
        "stream tunnels are not HTTP routes"
    );
    assert!(
        !snap.certificates.contains_key("db.example.com"),
        "no certificate for stream tunnels"
    );

    // A protected tcp tunnel opens no public port: it is an HTTPS route of its own, for
    // `kakuremichi access tcp`, with a certificate (tls may be set on a tcp tunnel for that).
    let (s, protected) = c
        .patch(
            &format!("/api/v1/tunnels/{id}"),
            json!({"access": {"mode": "login"}, "tls": "internal"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{protected}");
    assert_eq!(protected["tls"], "internal");
    assert_eq!(protected["public_addresses"], json!([]));
    let snap = next_config(&mut gw, PUSH).await;
    assert!(!snap.tcp_ports.contains_key(&25432));
    let route = &snap.routes["db.example.com"];
    assert!(route.tcp_access && !route.access.is_public(), "{route:?}");
    assert!(!route.plain_http_only);

    // The Agent learns the UDP tunnel as UDP, the others as streams.
    let key = a1["api_key"].as_str().unwrap();
    let (mut ag, _, _) = c.node(key, NodeRole::Agent, None).await;
    let snap = next_config(&mut ag, PUSH).await;
    let by_host = |h: &str| {
        snap.services
            .iter()
            .find(|s| s.hostname == h)
            .unwrap()
            .protocol
    };
    assert_eq!(by_host("dns.example.com"), TunnelProtocol::Udp);
    let dns_service = snap
        .services
        .iter()
        .find(|s| s.hostname == "dns.example.com");
    assert_eq!(dns_service.unwrap().udp_idle_timeout, Some(30));
    assert_eq!(
        by_host("db.example.com"),
        TunnelProtocol::Http,
        "streams: the default"
    );
}

/// Tunnels' public URLs name the port browsers reach each Gateway's HTTPS (or HTTP) on when it
/// is not the default, one URL per distinct port among the enabled Gateways (issue #17): a
/// Gateway behind `up`'s `:8443` no longer shows `https://app.example.com/`.
#[tokio::test]
async fn public_urls_carry_the_gateways_web_ports() {
    use futures_util::SinkExt;
    use kakuremichi_proto::{NodeMessage, WebPorts};
    use tokio_tungstenite::tungstenite::Message;
    let (_tmp, dir) = data_dir();
    let c = start(&dir).await;
    let agent = c.agent("a1").await["id"].as_i64().unwrap();
    let (g1, g2) = (c.gateway("g1").await, c.gateway("g2").await);
    let create = |host: &str, extra| tunnel_body(agent, host, "app:80", extra);
    let mut ids = Vec::new();
    for (host, extra) in [
        ("app.example.com", json!({})),
        ("plain.example.com", json!({"tls": "off"})),
        ("pass.example.com", json!({"protocol": "tls"})),
        ("db.example.com", json!({"protocol": "tcp"})),
    ] {
        let (s, t) = c.post("/api/v1/tunnels", create(host, extra)).await;
        assert_eq!(s, StatusCode::CREATED, "{t}");
        ids.push(t["id"].as_i64().unwrap());
    }
    // No Gateway has reported its ports yet: the default ones, named by no port.
    assert_eq!(
        urls(&c, &ids).await,
        [
            json!(["https://app.example.com/"]),
            json!(["http://plain.example.com/"]),
            json!(["pass.example.com:443"]),
            json!([]),
        ]
    );

    // g1 serves HTTPS on 8443 and HTTP on 8080; g2 has not said: both URLs, g1's first.
    let (mut ws, _, _) = c
        .node(g1["token"].as_str().unwrap(), NodeRole::Gateway, None)
        .await;
    let status = NodeMessage::Status {
        port_errors: vec![],
        own_ports: vec![],
        stream_counters: vec![],
        web_ports: Some(WebPorts {
            http: 8080,
            https: 8443,
        }),
        traffic: vec![],
    };
    ws.send(Message::text(status.encode())).await.unwrap();
    let both = [
        json!(["https://app.example.com:8443/", "https://app.example.com/"]),
        json!([
            "http://plain.example.com:8080/",
            "http://plain.example.com/"
        ]),
        json!(["pass.example.com:8443", "pass.example.com:443"]),
        json!([]),
    ];
    eventually(PUSH, "g1's ports in the tunnels' URLs", || async {
        urls(&c, &ids).await == both
    })
    .await;

    // The dashboard links the URL with its port.
    let cookie = c.login(ADMIN_EMAIL, ADMIN_PASSWORD).await.unwrap();
    let page = c
        .http
        .get(c.url(&format!("/tunnels/{}", ids[0])))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let html = page.text().await.unwrap().replace("&#x2f;", "/");
    assert!(
        html.contains(
            r#"href="https://app.example.com:8443/" rel="noopener" target="_blank" id="public-url""#
        ),
        "{html}"
    );

    // g2 disabled: only g1's port is left.
    let g2_id = g2["id"].as_i64().unwrap();
    let (s, body) = c
        .patch(
            &format!("/api/v1/gateways/{g2_id}"),
            json!({"enabled": false}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(
        urls(&c, &ids).await,
        [
            json!(["https://app.example.com:8443/"]),
            json!(["http://plain.example.com:8080/"]),
            json!(["pass.example.com:8443"]),
            json!([]),
        ]
    );
}

/// Each tunnel's `public_urls`, in the order of `ids`.
async fn urls(c: &Control, ids: &[i64]) -> Vec<serde_json::Value> {
    let mut all = Vec::new();
    for id in ids {
        let (s, t) = c.get(&format!("/api/v1/tunnels/{id}")).await;
        assert_eq!(s, StatusCode::OK, "{t}");
        all.push(t["public_urls"].clone());
    }
    all
}

/// A `POST /api/v1/tunnels` body: `host` → `target` on `agent`, with the fields of `extra`.
fn tunnel_body(
    agent: i64,
    host: &str,
    target: &str,
    extra: serde_json::Value,
) -> serde_json::Value {
    let mut body = json!({"hostname": host, "agent_id": agent, "target": target});
    let fields = extra.as_object().cloned().unwrap_or_default();
    body.as_object_mut().unwrap().extend(fields);
    body
}
