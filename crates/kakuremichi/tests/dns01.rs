//! DNS-01 and wildcard certificates (issue #15) against real peers: Pebble validating through
//! BIND (recursive for its own zones only, like the resolver a CA uses), which serves the managed zone `apps.test` (changed by Control with RFC 2136 + TSIG) and
//! the user's own zone `example.test` (not managed; it delegates one `_acme-challenge` name into
//! `apps.test` with a CNAME). BIND listens on port 53 of an address of its own, so Control's
//! propagation check finds it the way it would in production: the zone's NS records, then their
//! addresses (which needs root: port 53, and the address added to `lo`).
//!
//! - `*.apps.test` gets one wildcard certificate by DNS-01, served by two Gateways for
//!   `a.apps.test` and `b.apps.test`; the TXT record is gone afterwards.
//! - `*.shop.example.test` gets one through the CNAME delegation; that TXT is gone too.
//! - A wildcard in no managed zone and without delegation fails with what to do, and nothing was
//!   ordered from the CA for it.
//! - With `KAKUREMICHI_ACME_CHALLENGE=dns-01`, a plain name gets its certificate by DNS-01 too.
//! - With `KAKUREMICHI_TEMPORARY_DOMAIN` in a managed zone, one wildcard certificate serves
//!   every temporary tunnel at once; no share places an order of its own.
//!
//! The time from creating the tunnel to the certificate is printed (`--nocapture`).

use kakuremichi_testkit::dns::{self, Bind, BindSetup, KEY_NAME};
use kakuremichi_testkit::https::*;
use kakuremichi_testkit::{eventually, pebble, peers};
use serde_json::json;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

const WITHIN: Duration = Duration::from_secs(90);

/// An address on `lo` for the test's BIND, removed again when dropped.
struct LoAddress(Ipv4Addr);

impl LoAddress {
    /// One per run and test (`net`: a third octet of the test's own), as a BIND a killed run
    /// left behind would share port 53 with ours.
    fn add(net: u8) -> LoAddress {
        let last = u8::try_from(2 + std::process::id() % 250).unwrap();
        let ip = Ipv4Addr::new(127, 0, net, last);
        let added = std::process::Command::new("ip")
            .args(["addr", "replace", &format!("{ip}/32"), "dev", "lo"])
            .status()
            .expect("run ip");
        assert!(added.success(), "cannot add {ip} to lo");
        LoAddress(ip)
    }
}

impl Drop for LoAddress {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["addr", "del", &format!("{}/32", self.0), "dev", "lo"])
            .status();
    }
}

/// The real peers of a test: BIND on port 53 of an address of its own, and Pebble asking it.
struct Peers {
    bind: Bind,
    pebble: pebble::Pebble,
    dir: tempfile::TempDir,
    address: LoAddress,
}

impl Peers {
    /// `None` (the test skips, saying why) when Pebble, BIND or root is missing.
    async fn start(test: &str, net: u8, zones: &[&str], records: &[(&str, &str)]) -> Option<Peers> {
        if !pebble::available(test) || !dns::bind_available(test) {
            return None;
        }
        if !peers::can_run(
            test,
            (!peers::is_root()).then(|| "BIND on port 53 needs root".to_string()),
        ) {
            return None;
        }
        // BIND listens only on addresses an interface has; this one is ours alone.
        let address = LoAddress::add(net);
        kakuremichi_testkit::init_logs();
        let dir = tempfile::tempdir().unwrap();
        let bind = Bind::start_serving(BindSetup {
            ip: address.0,
            port: 53,
            zones,
            records,
            // Pebble asks it as its resolver, and a CNAME must lead it to the TXT record.
            recursive: true,
        })
        .await;
        // Pebble's HTTP-01 and TLS-ALPN-01 ports: unused here (DNS-01 only).
        let (http, https) = ports_for(&[Ipv4Addr::LOCALHOST]);
        let pebble = pebble::Pebble::start_with_dns(dir.path(), http, https, &bind.server).await;
        Some(Peers {
            bind,
            pebble,
            dir,
            address,
        })
    }

    /// Control with Pebble as its CA and BIND as its resolver, and `edit`.
    async fn control(
        &self,
        edit: impl FnOnce(&mut kakuremichi_control::ControlConfig),
    ) -> kakuremichi_testkit::https::Control {
        let (directory, roots) = (
            self.pebble.directory.clone(),
            self.pebble.server_roots.clone(),
        );
        let resolver = self.bind.server.clone();
        start_control(&self.dir.path().join("control"), move |c| {
            c.acme.directory_url = directory;
            c.acme.ca_roots = Some(roots);
            c.acme.email = Some("ops@example.com".into());
            c.acme.dns_resolver = Some(resolver);
            edit(c);
        })
        .await
    }

    /// Makes `zone` a managed zone of Control's, changed in BIND by RFC 2136. No "resolver" in
    /// its config: the propagation check asks the zone's name servers.
    async fn manage(&self, api: &kakuremichi_testkit::Api, zone: &str) {
        api.post(
            "dns/zones",
            json!({"zone": zone, "provider": "rfc2136", "config": {
                "server": self.bind.server, "key_name": KEY_NAME, "key_algorithm": "hmac-sha256",
                "key_secret": self.bind.key_secret}}),
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wildcard_certificates_by_dns01_through_bind_and_a_cname_delegation() {
    let test = "wildcard_certificates_by_dns01_through_bind_and_a_cname_delegation";
    let Some(peers) = Peers::start(
        test,
        53,
        &["apps.test", "example.test"],
        &[(
            "example.test",
            "_acme-challenge.shop.example.test. IN CNAME shop-acme.apps.test.",
        )],
    )
    .await
    else {
        return;
    };
    let (pebble, bind_ip, dir) = (&peers.pebble, peers.address.0, &peers.dir);
    let ips = [Ipv4Addr::new(127, 0, 54, 2), Ipv4Addr::new(127, 0, 54, 3)];
    let control = peers.control(|_| {}).await;
    let api = &control.api;
    peers.manage(api, "apps.test").await;
    let (gateways, _running) = create_gateways(api, &ips, dir.path()).await;
    let (agent_id, origin, _stops) = start_agent_and_origin(api, dir.path().join("agent")).await;
    let tunnel =
        |host: &str| json!({"hostname": host, "agent_id": agent_id, "target": origin.to_string()});

    let started = Instant::now();
    let wildcard = api.post("tunnels", tunnel("*.apps.test")).await;
    assert_eq!(wildcard["tls"], "acme");
    let cert = wait_certificate(api, wildcard["id"].as_i64().unwrap(), "issued", WITHIN).await;
    println!(
        "measured: wildcard tunnel created -> certificate issued by DNS-01 in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    assert!(
        cert["issuer"].as_str().unwrap().contains("Pebble"),
        "{cert}"
    );
    for host in ["a.apps.test", "b.apps.test"] {
        for gw in &gateways {
            eventually(
                WITHIN,
                &format!("HTTPS 200 for {host} on {:?}", gw.ip),
                || async {
                    let (status, _) = https_get(&pebble.issuing_root, host, gw.https()).await;
                    (status == 200).then_some(())
                },
            )
            .await;
        }
    }
    assert_eq!(
        pebble.issued(),
        1,
        "one certificate for every name, on both Gateways"
    );
    // The wildcard's own record in the managed zone: any name below resolves to the Gateways
    // (both have their WireGuard endpoint on 127.0.0.1).
    eventually(WITHIN, "*.apps.test A in DNS", || async {
        (dns::dig_at(bind_ip, 53, "any.apps.test", "A").await == ["127.0.0.1"]).then_some(())
    })
    .await;
    eventually(WITHIN, "the TXT record removed", || async {
        dns::dig_at(bind_ip, 53, "_acme-challenge.apps.test", "TXT")
            .await
            .is_empty()
            .then_some(())
    })
    .await;

    // Delegated: example.test is not managed; its _acme-challenge name points into apps.test.
    let shop = api.post("tunnels", tunnel("*.shop.example.test")).await;
    wait_certificate(api, shop["id"].as_i64().unwrap(), "issued", WITHIN).await;
    assert_eq!(pebble.issued(), 2);
    eventually(WITHIN, "HTTPS 200 for x.shop.example.test", || async {
        let (status, _) = https_get(
            &pebble.issuing_root,
            "x.shop.example.test",
            gateways[0].https(),
        )
        .await;
        (status == 200).then_some(())
    })
    .await;
    assert!(dns::dig_at(bind_ip, 53, "shop-acme.apps.test", "TXT")
        .await
        .is_empty());

    // Neither managed nor delegated: a failure that says what to do, and no order at the CA.
    let orders = pebble.orders();
    let lost = api.post("tunnels", tunnel("*.lost.example.test")).await;
    let failed = wait_certificate(api, lost["id"].as_i64().unwrap(), "failed", WITHIN).await;
    let why = failed["last_error"].as_str().unwrap();
    assert!(
        why.contains("_acme-challenge.lost.example.test lies in no DNS zone Control manages"),
        "{why}"
    );
    assert_eq!(pebble.orders(), orders, "nothing was ordered for it");

    // KAKUREMICHI_ACME_CHALLENGE=dns-01: a plain name too (Control restarted with it; no Gateway
    // is needed to answer the CA).
    control.shut_down().await;
    let control = peers
        .control(|c| c.acme.challenge = kakuremichi_control::ChallengeChoice::Dns01)
        .await;
    let shop = control
        .api
        .post("tunnels", tunnel("shop.example.test"))
        .await;
    let cert = wait_certificate(&control.api, shop["id"].as_i64().unwrap(), "issued", WITHIN).await;
    assert!(
        cert["issuer"].as_str().unwrap().contains("Pebble"),
        "{cert}"
    );
    assert_eq!(pebble.issued(), 3);
    assert!(dns::dig_at(bind_ip, 53, "shop-acme.apps.test", "TXT")
        .await
        .is_empty());
    control.shut_down().await;
}

/// Temporary tunnels (issue #17): Control keeps one wildcard certificate for
/// `KAKUREMICHI_TEMPORARY_DOMAIN`, so every new share is served over HTTPS at once, on every
/// Gateway, without an order of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn temporary_names_are_served_at_once_by_one_wildcard_certificate() {
    let test = "temporary_names_are_served_at_once_by_one_wildcard_certificate";
    let Some(peers) = Peers::start(test, 55, &["apps.test"], &[]).await else {
        return;
    };
    let pebble = &peers.pebble;
    let control = peers
        .control(|c| {
            c.temporary = kakuremichi_control::TemporaryConfig {
                domain: Some("t.apps.test".into()),
                ttl: Duration::from_secs(600),
            };
        })
        .await;
    let api = &control.api;
    let ips = [Ipv4Addr::new(127, 0, 56, 2), Ipv4Addr::new(127, 0, 56, 3)];
    let (gateways, _running) = create_gateways(api, &ips, peers.dir.path()).await;
    // Not before a managed zone covers the domain: DNS-01 is the only way to a wildcard.
    assert_eq!(pebble.orders(), 0);
    let started = Instant::now();
    peers.manage(api, "apps.test").await;
    // Saved by Control (not only issued by Pebble): no API lists a certificate without a
    // tunnel, so the test reads Control's database.
    let db = peers.dir.path().join("control/control.db");
    let db = sqlx::SqlitePool::connect(&format!("sqlite://{}?mode=ro", db.display()))
        .await
        .unwrap();
    eventually(WITHIN, "the wildcard for t.apps.test issued", || async {
        let saved: Option<(String,)> = sqlx::query_as(
            "SELECT status FROM certificates WHERE hostname = '*.t.apps.test' AND source = 'acme'",
        )
        .fetch_optional(&db)
        .await
        .unwrap();
        (saved.is_some_and(|(s,)| s == "issued") && pebble.issued() == 1).then_some(())
    })
    .await;
    println!(
        "measured: managed zone added -> *.t.apps.test issued by DNS-01 in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    let orders = pebble.orders();
    for _ in 0..2 {
        let share = api.post("shares", json!({"target": "localhost:9"})).await;
        let tunnel = &share["tunnel"];
        let host = tunnel["hostname"].as_str().unwrap();
        assert!(host.ends_with(".t.apps.test"), "{host}");
        // Issued from the start: the wildcard's state is the new tunnel's.
        assert_eq!(tunnel["certificate"]["status"], "issued", "{tunnel}");
        assert!(
            tunnel["certificate"]["issuer"]
                .as_str()
                .unwrap()
                .contains("Pebble"),
            "{tunnel}"
        );
        // A TLS handshake that verifies the name against Pebble's root, on both Gateways (the
        // Agent never runs: the answer is the Gateway's own, after TLS).
        for gw in &gateways {
            eventually(
                WITHIN,
                &format!("HTTPS for {host} on {:?}", gw.ip),
                || async {
                    let (status, _) = https_get(&pebble.issuing_root, host, gw.https()).await;
                    (status != 0).then_some(())
                },
            )
            .await;
        }
    }
    assert_eq!(pebble.orders(), orders, "no order for a temporary name");
    assert_eq!(pebble.issued(), 1);
    control.shut_down().await;
}
