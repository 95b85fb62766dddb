//! DNS that follows the fleet (issue #15), against real authoritative servers: Control with two
//! Gateways and a managed zone keeps each tunnel's A/AAAA records listing the Gateways that
//! serve — on tunnel create/rename/disable/delete, Gateway disable, a Gateway going down
//! (failover after `KAKUREMICHI_DNS_FAILOVER_AFTER`, never the last one) and coming back — and
//! never touches a record it did not write. Checked with `dig` against the server itself.
//! The measured times are printed (`--nocapture`).

use kakuremichi_testkit::dns::{self, Bind, PowerDns, KEY_NAME, NOT_OURS, ZONE};
use kakuremichi_testkit::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// Generous: a pass runs within a second of a change; CI machines are slow.
const SOON: Duration = Duration::from_secs(15);
const FAILOVER: Duration = Duration::from_secs(2);

async fn fleet() -> Fleet {
    Cluster::new()
        .gateways(2)
        .agent()
        .origin("dns-app")
        .control_config(|c| {
            c.dns.failover_after = FAILOVER;
            c.dns.readmit_after = Duration::from_millis(500);
        })
        .start()
        .await
}

/// Waits until `dig` shows exactly `want` at `name` `kind`; returns how long it took.
async fn until_dns(port: u16, name: &str, kind: &str, want: &[&str]) -> Duration {
    let start = Instant::now();
    let what = format!("{name} {kind} = {want:?}");
    eventually(SOON, &what, || async {
        let got = dns::dig(port, name, kind).await;
        (got == want).then_some(())
    })
    .await;
    start.elapsed()
}

async fn set_addresses(api: &Api, fleet: &Fleet) -> (i64, i64) {
    let ids: Vec<i64> = api
        .get("gateways")
        .await
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["id"].as_i64().unwrap())
        .collect();
    let one = api
        .patch(
            &format!("gateways/{}", ids[0]),
            json!({"public_ipv4": "192.0.2.1", "public_ipv6": "2001:db8::1"}),
        )
        .await;
    assert_eq!(one["dns_addresses"], json!(["192.0.2.1", "2001:db8::1"]));
    api.patch(
        &format!("gateways/{}", ids[1]),
        json!({"public_ipv4": "192.0.2.2"}),
    )
    .await;
    assert_eq!(fleet.gateways.len(), 2);
    (ids[0], ids[1])
}

/// The whole flow against one server (`port` answers DNS for [`ZONE`]).
async fn follows_the_fleet(zone: Value, port: u16) {
    let mut fleet = fleet().await;
    let api = fleet.api.clone();
    let (gw1, gw2) = set_addresses(&api, &fleet).await;
    let created = api.post("dns/zones", zone).await;
    assert_eq!(created["zone"], ZONE);

    let www = format!("www.{ZONE}");
    let started = Instant::now();
    let tunnel = fleet.tunnel(&www, fleet.origin).await;
    until_dns(port, &www, "A", &["192.0.2.1", "192.0.2.2"]).await;
    let visible = started.elapsed();
    until_dns(port, &www, "AAAA", &["2001:db8::1"]).await;
    eprintln!("measured: tunnel created -> A record visible: {visible:?}");
    let view = api.get(&format!("tunnels/{tunnel}")).await;
    assert_eq!(view["dns"]["state"], "managed", "{view}");
    assert_eq!(view["dns"]["zone"], ZONE);

    // Outside every managed zone: nothing written; the API and the tunnel's page say where to
    // point the name.
    let outside = fleet.tunnel("app.elsewhere.test", fleet.origin).await;
    eventually(SOON, "the unmanaged tunnel's addresses", || async {
        let v = api.get(&format!("tunnels/{outside}")).await;
        (v["dns"]["state"] == "unmanaged"
            && v["dns"]["addresses"] == json!(["192.0.2.1", "192.0.2.2", "2001:db8::1"]))
        .then_some(())
    })
    .await;
    let login = kakuremichi_client::Client::new(api.base.clone())
        .login(ADMIN_EMAIL, ADMIN_PASSWORD)
        .await
        .unwrap();
    let cookie = login.cookie.split("; ").next().unwrap().to_string();
    let page = |id: i64| {
        let (http, url, cookie) = (
            api.http.clone(),
            format!("{}/tunnels/{id}", api.base),
            cookie.clone(),
        );
        async move {
            let r = http.get(url).header("cookie", cookie).send().await.unwrap();
            r.text().await.unwrap()
        }
    };
    let text = page(outside).await;
    assert!(
        text.contains("Point DNS for <code>app.elsewhere.test</code> at <code>192.0.2.1</code>"),
        "{text}"
    );
    assert!(page(tunnel)
        .await
        .contains(&format!("managed in <strong>{ZONE}</strong>")));

    // A hostname already in DNS, not written by us: left alone, and the tunnel says why.
    let (keep_name, keep_ip) = NOT_OURS;
    let taken = fleet.tunnel(keep_name, fleet.origin).await;
    eventually(SOON, "the conflict is reported", || async {
        let v = api.get(&format!("tunnels/{taken}")).await;
        (v["dns"]["state"] == "conflict").then_some(())
    })
    .await;
    assert_eq!(dns::dig(port, keep_name, "A").await, [keep_ip]);

    // Disable a Gateway: out at once; enable it: back.
    api.patch(&format!("gateways/{gw2}"), json!({"enabled": false}))
        .await;
    until_dns(port, &www, "A", &["192.0.2.1"]).await;
    api.patch(&format!("gateways/{gw2}"), json!({"enabled": true}))
        .await;
    until_dns(port, &www, "A", &["192.0.2.1", "192.0.2.2"]).await;

    // Gateway 1 goes down: out after FAILOVER; its AAAA goes with it (no other IPv6 Gateway).
    let first = fleet.gateways.remove(0);
    let down = Instant::now();
    let (token, wg, dir) = first.shut_down().await;
    until_dns(port, &www, "A", &["192.0.2.2"]).await;
    let failed_over = down.elapsed();
    until_dns(port, &www, "AAAA", &[]).await;
    eprintln!(
        "measured: Gateway stopped -> removed from DNS: {failed_over:?} (failover_after {FAILOVER:?})"
    );
    assert!(
        failed_over >= FAILOVER,
        "removed after {failed_over:?}, before the failover delay"
    );
    // It comes back: listed again.
    let socket = eventually(SOON, "the WireGuard port is free", || async {
        std::net::UdpSocket::bind(wg).ok()
    })
    .await;
    let back = InProcessGateway::start(&api.base, token, socket, None, dir).await;
    until_dns(port, &www, "A", &["192.0.2.1", "192.0.2.2"]).await;

    // Both down: the last one listed stays (DNS is never emptied by failover).
    let (_, _, _) = back.shut_down().await;
    until_dns(port, &www, "A", &["192.0.2.2"]).await;
    let second = fleet.gateways.remove(0);
    let _ = second.shut_down().await;
    // The reconciler says it kept the last one (past the failover delay); DNS still lists it.
    eventually(SOON, "the last Gateway is reported kept", || async {
        let audit = api.get("audit?limit=200").await.to_string();
        audit.contains("dns.gateway.kept").then_some(())
    })
    .await;
    assert_eq!(dns::dig(port, &www, "A").await, ["192.0.2.2"]);

    // Rename, then delete: records follow; the record that is not ours survives throughout.
    let renamed = format!("web.{ZONE}");
    api.patch(&format!("tunnels/{tunnel}"), json!({"hostname": renamed}))
        .await;
    until_dns(port, &renamed, "A", &["192.0.2.2"]).await;
    until_dns(port, &www, "A", &[]).await;
    api.delete(&format!("tunnels/{tunnel}")).await;
    until_dns(port, &renamed, "A", &[]).await;
    assert_eq!(dns::dig(port, keep_name, "A").await, [keep_ip]);

    // Every change is in the audit log, by Control itself.
    let audit = api.get("audit?limit=200").await.to_string();
    for action in [
        "dns.record.set",
        "dns.record.delete",
        "dns.gateway.failover",
        "dns.gateway.restore",
        "dns.gateway.kept",
    ] {
        assert!(
            audit.contains(action),
            "{action} missing from the audit log"
        );
    }
    let _ = gw1;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn records_follow_the_fleet_on_bind() {
    if !dns::bind_available("records_follow_the_fleet_on_bind") {
        return;
    }
    let bind = Bind::start().await;
    let zone = json!({"zone": ZONE, "provider": "rfc2136", "config": {
        "server": bind.server, "key_name": KEY_NAME, "key_algorithm": "hmac-sha256",
        "key_secret": bind.key_secret}});
    follows_the_fleet(zone, bind.port).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn records_follow_the_fleet_on_powerdns() {
    if !dns::powerdns_available("records_follow_the_fleet_on_powerdns") {
        return;
    }
    let pdns = PowerDns::start().await;
    let zone = json!({"zone": ZONE, "provider": "powerdns", "config": {
        "api_url": pdns.api_url, "api_key": pdns.api_key}});
    follows_the_fleet(zone, pdns.port).await;
}
