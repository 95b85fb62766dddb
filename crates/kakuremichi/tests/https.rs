//! Automatic HTTPS end to end: Control's internal CA, and ACME against a real Pebble with
//! Gateways on distinct 127.0.0.x addresses that the CA validates through its own test DNS.
//! Without Pebble installed the ACME tests print SKIPPED (and fail under `CI` or
//! `KAKUREMICHI_REQUIRE_PEERS=1`).

use kakuremichi_control::ChallengeChoice;
use kakuremichi_testkit::https::*;
use kakuremichi_testkit::pebble::{self, Pebble};
use kakuremichi_testkit::{eventually, through};
use serde_json::json;
use std::net::Ipv4Addr;
use std::time::Duration;

const ISSUE_WITHIN: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn internal_ca_serves_https_with_redirect_hsts_and_sni() {
    let dir = tempfile::tempdir().unwrap();
    let control = start_control(&dir.path().join("control"), |_| {}).await;
    let api = &control.api;
    let ip = Ipv4Addr::new(127, 0, 13, 2);
    let (http, https) = ports_for(&[ip]);
    let addrs = Addrs { ip, http, https };
    let _gw = create_gateway(api, "gw", addrs, dir.path().join("gw")).await;
    let (agent_id, origin, _stops) = start_agent_and_origin(api, dir.path().join("agent")).await;
    let host = "app.internal.test";
    let (status, body) = api
        .call(
            reqwest::Method::POST,
            "tunnels",
            Some(json!({"hostname": host, "agent_id": agent_id, "target": origin.to_string(), "tls": "bogus"})),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    let tunnel = api
        .post("tunnels", json!({"hostname": host, "agent_id": agent_id, "target": origin.to_string(), "tls": "internal"}))
        .await;
    assert_eq!(tunnel["tls"], "internal");
    assert_eq!(tunnel["https_redirect"], true);
    let id = tunnel["id"].as_i64().unwrap();
    let cert = wait_certificate(api, id, "issued", ISSUE_WITHIN).await;
    assert_eq!(cert["issuer"], "kakuremichi internal CA");
    assert!(cert["last_error"].is_null());
    let root = std::fs::read_to_string(kakuremichi_control::internal_ca_root(
        &dir.path().join("control"),
    ))
    .unwrap();

    let headers = eventually(ISSUE_WITHIN, "HTTPS 200 with the internal CA", || async {
        let (status, headers) = https_get(&root, host, addrs.https()).await;
        (status == 200).then_some(headers)
    })
    .await;
    assert_eq!(headers["strict-transport-security"], "max-age=31536000");

    // Plain HTTP: 308 to the same host and path on https.
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
        .unwrap();
    let r = client
        .get(format!("http://{}/a/b?c=d", addrs.http()))
        .header("host", host)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 308);
    assert_eq!(
        r.headers()["location"],
        format!("https://{host}:{https}/a/b?c=d")
    );

    // A name the Gateway does not serve: a clean handshake failure, not another site's certificate.
    assert!(handshake(addrs.https(), host).await.is_ok());
    assert!(handshake(addrs.https(), "unknown.test").await.is_err());

    // Redirect off: plain HTTP is served, and HTTPS carries no HSTS.
    api.patch(&format!("tunnels/{id}"), json!({"https_redirect": false}))
        .await;
    let http_client = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    kakuremichi_testkit::wait_through(
        &http_client,
        addrs.http(),
        host,
        "/",
        ISSUE_WITHIN,
        "plain HTTP 200",
        |s, _| s == 200,
    )
    .await;
    let (status, headers) = https_get(&root, host, addrs.https()).await;
    assert_eq!(status, 200);
    assert!(!headers.contains_key("strict-transport-security"));

    // TLS off: no certificate, the name no longer completes a handshake.
    let off = api
        .patch(&format!("tunnels/{id}"), json!({"tls": "off"}))
        .await;
    assert!(off["certificate"].is_null(), "{off}");
    eventually(
        ISSUE_WITHIN,
        "handshake refused once tls is off",
        || async { handshake(addrs.https(), host).await.is_err().then_some(()) },
    )
    .await;
    assert_eq!(through(&http_client, addrs.http(), host, "/").await.0, 200);
}

/// Control configured for Pebble.
async fn acme_control(
    dir: &std::path::Path,
    pebble: &Pebble,
    challenge: ChallengeChoice,
) -> Control {
    let (directory, roots) = (pebble.directory.clone(), pebble.server_roots.clone());
    start_control(dir, move |c| {
        c.acme.directory_url = directory;
        c.acme.ca_roots = Some(roots);
        c.acme.challenge = challenge;
        c.acme.email = Some("ops@example.com".into());
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acme_http01_one_order_for_two_gateways_failures_retry_and_cache() {
    if !pebble::available("acme_http01_one_order_for_two_gateways_failures_retry_and_cache") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (ip1, ip2) = (Ipv4Addr::new(127, 0, 11, 2), Ipv4Addr::new(127, 0, 11, 3));
    let (http, https) = ports_for(&[ip1, ip2]);
    let pebble = Pebble::start(dir.path(), http, https, None).await;
    let control = acme_control(
        &dir.path().join("control"),
        &pebble,
        ChallengeChoice::Http01,
    )
    .await;
    let api = control.api.clone();
    let a1 = Addrs {
        ip: ip1,
        http,
        https,
    };
    let a2 = Addrs {
        ip: ip2,
        http,
        https,
    };
    let gw1 = create_gateway(&api, "gw1", a1, dir.path().join("gw1")).await;
    let _gw2 = create_gateway(&api, "gw2", a2, dir.path().join("gw2")).await;
    let (agent_id, origin, _stops) = start_agent_and_origin(&api, dir.path().join("agent")).await;

    // app.test resolves to the second Gateway only; nowhere.test to an address nobody serves.
    pebble.point("app.test", &[ip2]).await;
    let tunnel =
        |host: &str| json!({"hostname": host, "agent_id": agent_id, "target": origin.to_string()});
    let nowhere = api.post("tunnels", tunnel("nowhere.test")).await["id"]
        .as_i64()
        .unwrap();
    let app = api.post("tunnels", tunnel("app.test")).await;
    assert_eq!(app["tls"], "acme", "acme is the default");
    let app = app["id"].as_i64().unwrap();

    let cert = wait_certificate(&api, app, "issued", ISSUE_WITHIN).await;
    assert!(
        cert["issuer"].as_str().unwrap().contains("Pebble"),
        "{cert}"
    );
    for gw in [&a1, &a2] {
        eventually(ISSUE_WITHIN, "HTTPS 200 through each Gateway", || async {
            (https_get(&pebble.issuing_root, "app.test", gw.https())
                .await
                .0
                == 200)
                .then_some(())
        })
        .await;
    }
    if std::process::Command::new("curl")
        .arg("--version")
        .output()
        .is_ok()
    {
        std::fs::write(dir.path().join("root.pem"), &pebble.issuing_root).unwrap();
        let out = std::process::Command::new("curl")
            .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
            .arg(dir.path().join("root.pem"))
            .args(["--resolve", &format!("app.test:{https}:{ip1}")])
            .arg(format!("https://app.test:{https}/"))
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "200", "{out:?}");
    }
    assert_eq!(pebble.issued(), 1, "one certificate for two Gateways");

    // The hostname pointing nowhere fails with an actionable error, without blocking app.test.
    let failed = wait_certificate(&api, nowhere, "failed", ISSUE_WITHIN).await;
    let error = failed["last_error"].as_str().unwrap();
    assert!(
        error.starts_with("DNS for nowhere.test does not point at any Gateway"),
        "{error}"
    );
    // Once DNS is fixed, a later retry succeeds (failed → issued takes a new order), with
    // backoff, not a tight loop: at most a retry already under way when DNS changed, and one
    // more. (Counting "more orders than before the fix" raced with a retry that had started
    // just before: it found DNS fixed and was the one that succeeded.)
    let orders_before = pebble.orders();
    pebble.point("nowhere.test", &[ip1]).await;
    wait_certificate(&api, nowhere, "issued", ISSUE_WITHIN).await;
    let retries = pebble.orders() - orders_before;
    assert!(retries <= 2, "{retries} orders after DNS was fixed");

    // Plain HTTP to a tunnel hostname redirects.
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
        .unwrap();
    let (status, _) = through(&client, a1.http(), "app.test", "/").await;
    assert_eq!(status, 308);

    // Control down, Gateway restarted: HTTPS from the cached certificate.
    control.shut_down().await;
    let (token, wg, gw_dir) = gw1.shut_down().await;
    // The old device releases its UDP socket shortly after the gateway task ends.
    let wg = eventually(ISSUE_WITHIN, "WireGuard port free again", || async {
        std::net::UdpSocket::bind(wg).ok()
    })
    .await;
    let _gw1 = start_gateway(&api.base, token, wg, a1, gw_dir).await;
    eventually(
        ISSUE_WITHIN,
        "HTTPS 200 from the cache while Control is down",
        || async {
            (https_get(&pebble.issuing_root, "app.test", a1.https())
                .await
                .0
                == 200)
                .then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acme_tls_alpn_without_port_80_and_renewal_before_expiry() {
    if !pebble::available("acme_tls_alpn_without_port_80_and_renewal_before_expiry") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ip = Ipv4Addr::new(127, 0, 12, 2);
    let (closed_http, https) = ports_for(&[ip]);
    // Pebble would validate HTTP-01 on `closed_http`, where nothing listens.
    let pebble = Pebble::start(dir.path(), closed_http, https, Some(24)).await;
    let control = acme_control(
        &dir.path().join("control"),
        &pebble,
        ChallengeChoice::TlsAlpn01,
    )
    .await;
    let api = control.api.clone();
    let gateway_http = loop {
        let (port, _) = ports_for(&[ip]);
        if port != closed_http && port != https {
            break port;
        }
    };
    let addrs = Addrs {
        ip,
        http: gateway_http,
        https,
    };
    let _gw = create_gateway(&api, "gw", addrs, dir.path().join("gw")).await;
    let (agent_id, origin, _stops) = start_agent_and_origin(&api, dir.path().join("agent")).await;
    pebble.point("alpn.test", &[ip]).await;
    let id = api
        .post(
            "tunnels",
            json!({"hostname": "alpn.test", "agent_id": agent_id, "target": origin.to_string()}),
        )
        .await["id"]
        .as_i64()
        .unwrap();
    let first = wait_certificate(&api, id, "issued", ISSUE_WITHIN).await;
    eventually(ISSUE_WITHIN, "HTTPS 200 after TLS-ALPN-01", || async {
        (https_get(&pebble.issuing_root, "alpn.test", addrs.https())
            .await
            .0
            == 200)
            .then_some(())
    })
    .await;

    // A 24 s certificate is renewed at about 16 s; every request meanwhile verifies (rustls
    // rejects expired certificates), so clients never see an expired one.
    let what = format!("renewal of {first}");
    eventually(Duration::from_secs(60), &what, || async {
        let (status, _) = https_get(&pebble.issuing_root, "alpn.test", addrs.https()).await;
        assert_eq!(status, 200, "HTTPS keeps working across renewal");
        let now = api.get(&format!("tunnels/{id}")).await;
        let renewed = now["certificate"]["not_after"] != first["not_after"];
        if renewed {
            assert_eq!(now["certificate"]["status"], "issued");
        }
        renewed
    })
    .await;
    assert!(pebble.issued() >= 2);
}
