//! A wildcard tunnel end to end: `*.apps.test` with `tls: internal` served by two Gateways for
//! any name one label below it, over HTTPS with one certificate from Control's internal CA; an
//! exact tunnel `a.apps.test` to another origin wins over the wildcard; `apps.test` and
//! `x.a.apps.test` are not routed; a `tls: off` wildcard over plain HTTP; and an exact `tls: off`
//! name under the wildcard gets no certificate (not the wildcard's).

use kakuremichi_testkit::https::*;
use kakuremichi_testkit::roles::start_origin;
use kakuremichi_testkit::{eventually, through, wait_through};
use serde_json::json;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

const WITHIN: Duration = Duration::from_secs(60);

/// `https://host/` through `gateway`, trusting only `root`: status and body (0 on any error).
async fn get(root: &str, host: &str, gateway: SocketAddr) -> (u16, String) {
    let client = https_client(root, &[host], gateway);
    let url = format!("https://{host}:{}/", gateway.port());
    match client.get(url).send().await {
        Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
        Err(_) => (0, String::new()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wildcard_tunnel_serves_every_name_below_it_on_every_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let control = start_control(&dir.path().join("control"), |_| {}).await;
    let api = &control.api;
    let ips = [Ipv4Addr::new(127, 0, 31, 2), Ipv4Addr::new(127, 0, 31, 3)];
    let (gateways, _running) = create_gateways(api, &ips, dir.path()).await;
    let (agent_id, origin, _stops) = start_agent_and_origin(api, dir.path().join("agent")).await;
    let (exact_origin, _exact_stop) = start_origin("exact-origin").await;

    let tunnel = |host: &str, target: SocketAddr, tls: &str| json!({"hostname": host, "agent_id": agent_id, "target": target.to_string(), "tls": tls});
    let wildcard = api
        .post("tunnels", tunnel("*.apps.test", origin, "internal"))
        .await;
    assert_eq!(wildcard["hostname"], "*.apps.test");
    let exact = api
        .post("tunnels", tunnel("a.apps.test", exact_origin, "internal"))
        .await;
    for t in [&wildcard, &exact] {
        let cert = wait_certificate(api, t["id"].as_i64().unwrap(), "issued", WITHIN).await;
        assert_eq!(cert["issuer"], "kakuremichi internal CA");
    }
    let root = std::fs::read_to_string(kakuremichi_control::internal_ca_root(
        &dir.path().join("control"),
    ))
    .unwrap();

    let plain = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
        .unwrap();
    for gw in &gateways {
        // Names below the wildcard: its origin, over HTTPS verified against the internal CA
        // (the certificate's one SAN is *.apps.test).
        for host in ["b.apps.test", "c.apps.test"] {
            let body = eventually(WITHIN, &format!("{host} via {}", gw.ip), || async {
                let (status, body) = get(&root, host, gw.https()).await;
                (status == 200).then_some(body)
            })
            .await;
            assert!(body.contains("Hello from https-test"), "{host}: {body}");
            assert!(body.contains(host), "the origin sees the Host: {body}");
        }
        // The exact tunnel wins, with its own certificate.
        let (status, body) = get(&root, "a.apps.test", gw.https()).await;
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("Hello from exact-origin"), "{body}");
        let exact_leaf = &handshake(gw.https(), "a.apps.test").await.unwrap()[0];
        let wildcard_leaf = &handshake(gw.https(), "b.apps.test").await.unwrap()[0];
        assert_ne!(exact_leaf, wildcard_leaf);
        assert_eq!(
            wildcard_leaf,
            &handshake(gw.https(), "zz.apps.test").await.unwrap()[0],
            "one wildcard certificate"
        );

        // Plain HTTP below the wildcard redirects to HTTPS, as for an exact name.
        let (status, _) = through(&plain, gw.http(), "b.apps.test", "/").await;
        assert_eq!(status, 308);
        // Neither the parent nor two labels below is covered: no route, no certificate.
        for host in ["apps.test", "x.a.apps.test", "x.b.apps.test"] {
            let (status, body) = through(&plain, gw.http(), host, "/").await;
            assert_eq!(status, 404, "{host}: {body}");
            assert!(handshake(gw.https(), host).await.is_err(), "{host}");
        }
    }

    // Deleting the exact tunnel hands its name to the wildcard.
    api.delete(&format!("tunnels/{}", exact["id"])).await;
    for gw in &gateways {
        eventually(WITHIN, "a.apps.test served by the wildcard", || async {
            let (status, body) = get(&root, "a.apps.test", gw.https()).await;
            (status == 200 && body.contains("Hello from https-test")).then_some(())
        })
        .await;
    }

    // tls: off — a wildcard over plain HTTP, no certificate.
    let off = api
        .post("tunnels", tunnel("*.plain.test", origin, "off"))
        .await;
    assert!(off["certificate"].is_null(), "{off}");
    for gw in &gateways {
        wait_through(
            &plain,
            gw.http(),
            "k.plain.test",
            "/",
            WITHIN,
            "tls off wildcard",
            |s, b| s == 200 && b.contains("k.plain.test"),
        )
        .await;
        assert_eq!(through(&plain, gw.http(), "plain.test", "/").await.0, 404);
        assert!(handshake(gw.https(), "k.plain.test").await.is_err());
    }

    // An exact `tls: off` tunnel under a wildcard with a certificate: plain HTTP only, the
    // wildcard's certificate is not served for it.
    let (bare_origin, _bare_stop) = start_origin("bare-origin").await;
    api.post("tunnels", tunnel("bare.apps.test", bare_origin, "off"))
        .await;
    for gw in &gateways {
        wait_through(
            &plain,
            gw.http(),
            "bare.apps.test",
            "/",
            WITHIN,
            "the tls off exact name over plain HTTP",
            |s, b| s == 200 && b.contains("Hello from bare-origin"),
        )
        .await;
        assert!(handshake(gw.https(), "bare.apps.test").await.is_err());
        assert!(handshake(gw.https(), "b.apps.test").await.is_ok());
    }
}
