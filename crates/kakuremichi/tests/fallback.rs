//! Fault test 5 (issue "Survive faults"): UDP from the Agent to the Gateway is dropped from the
//! start. The tunnel must come up over the TLS fallback (WireGuard over TLS to the Gateway's port
//! 443) within 10 s, and return to UDP once UDP passes again, with traffic flowing throughout.
//! Real processes on namespace hosts (see `common/netns.rs`); needs root, `ip` and `nft`.
//!
//! Which path the tunnel takes is read from nftables counters on the router between the Agent
//! and the Gateway: packets to the Gateway's TCP 443 and (after the drop rule) to UDP 51820; and
//! from both ends' `kakuremichi_wireguard_transport` metric.

use kakuremichi_testkit::load::{hold, Load};
use kakuremichi_testkit::netns::{sh, Topology};
use kakuremichi_testkit::*;
use serde_json::json;
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

const TABLE: &str = "inet kmfallback";

/// Installs the counters and the UDP drop in the router's forward path.
fn block_udp(topo: &Topology) {
    let (r, gw) = (&topo.router, topo.server_public());
    sh(&format!(
        "ip netns exec {r} nft add table {TABLE} && \
         ip netns exec {r} nft add counter {TABLE} tls443 && \
         ip netns exec {r} nft add counter {TABLE} wgudp && \
         ip netns exec {r} nft add chain {TABLE} kmblock && \
         ip netns exec {r} nft add rule {TABLE} kmblock udp dport 51820 drop && \
         ip netns exec {r} nft add chain {TABLE} kmfwd '{{ type filter hook forward priority 0; }}' && \
         ip netns exec {r} nft add rule {TABLE} kmfwd ip daddr {gw} tcp dport 443 counter name tls443 && \
         ip netns exec {r} nft add rule {TABLE} kmfwd ip daddr {gw} jump kmblock && \
         ip netns exec {r} nft add rule {TABLE} kmfwd ip daddr {gw} udp dport 51820 counter name wgudp"
    ));
}

fn unblock_udp(topo: &Topology) {
    sh(&format!(
        "ip netns exec {} nft flush chain {TABLE} kmblock",
        topo.router
    ));
}

/// Packets counted by a named counter in the router (`tls443`: to the Gateway's TCP 443; `wgudp`:
/// WireGuard UDP to the Gateway that got past the drop rule).
fn counter(topo: &Topology, name: &str) -> u64 {
    let out = Command::new("ip")
        .args(["netns", "exec", &topo.router, "nft", "list", "counter"])
        .args(TABLE.split(' '))
        .arg(name)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .skip_while(|w| *w != "packets")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no packet count in: {text}"))
}

/// Whether the `/metrics` at `url`, fetched from inside network namespace `ns`, says that a
/// WireGuard peer's path is `mode` (`udp`, `tls`).
fn transport_is(ns: &str, url: &str, mode: &str) -> bool {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "curl", "-s", "--max-time", "5", url])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = format!(",mode=\"{mode}\"}} 1");
    text.lines()
        .any(|l| l.starts_with("kakuremichi_wireguard_transport{") && l.ends_with(&line))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_blocked_from_the_start_tunnel_comes_up_over_tls_and_returns_to_udp() {
    require_netns!();
    let topo = Topology::new();
    let dir = tempfile::tempdir().unwrap();
    let server = Some(topo.server.as_str());
    let _control = Proc::spawn_in(
        server,
        "control",
        dir.path(),
        &["control", "--listen", "0.0.0.0:8780"],
        &[
            (
                "KAKUREMICHI_DATA_DIR",
                dir.path().join("control").to_str().unwrap(),
            ),
            ("KAKUREMICHI_ADMIN_EMAIL", ADMIN_EMAIL),
            ("KAKUREMICHI_ADMIN_PASSWORD", ADMIN_PASSWORD),
        ],
    );
    let api = Api::login(format!("http://{}:8780", topo.server_from_test())).await;
    let public = topo.server_public();
    let gw = api
        .post(
            "gateways",
            json!({"name": "gw", "public_endpoint": format!("{public}:51820")}),
        )
        .await;
    let agent = api.post("agents", json!({"name": "udp-blocked"})).await;
    api.post(
        "tunnels",
        json!({"hostname": "app.test", "agent_id": agent["id"], "target": "127.0.0.1:8000"}),
    )
    .await;
    // The Gateway serves HTTPS on the real port 443 of its host, as in production.
    let _gateway = Proc::spawn_in(
        server,
        "gateway",
        dir.path(),
        &[
            "gateway",
            "--http-listen",
            "0.0.0.0:8080",
            "--https-listen",
            "0.0.0.0:443",
            "--wg-listen",
            "0.0.0.0:51820",
            "--admin-listen",
            "127.0.0.1:9090",
        ],
        &[
            ("CONTROL_URL", "http://127.0.0.1:8780"),
            ("GATEWAY_TOKEN", gw["token"].as_str().unwrap()),
            (
                "KAKUREMICHI_DATA_DIR",
                dir.path().join("gateway").to_str().unwrap(),
            ),
        ],
    );
    let gateway: SocketAddr = format!("{}:8080", topo.server_from_test()).parse().unwrap();
    // The Gateway is up (it answers, if only 502 for a tunnel with no Agent yet) before the
    // Agent starts, so the time measured is the Agent's.
    wait_through(
        &api.http,
        gateway,
        "app.test",
        "/",
        Duration::from_secs(30),
        "gateway serving",
        |s, _| s == 502,
    )
    .await;

    block_udp(&topo);
    let agent_host = Some(topo.agent.as_str());
    let _hello = Proc::spawn_in(
        agent_host,
        "hello",
        dir.path(),
        &["hello", "--listen", "127.0.0.1:8000"],
        &[],
    );
    let load_started = Instant::now();
    let load = Load::start(gateway, "app.test");
    let start = Instant::now();
    let _agent = Proc::spawn_in(
        agent_host,
        "agent",
        dir.path(),
        &["agent"],
        &[
            ("CONTROL_URL", &format!("http://{public}:8780")),
            ("API_KEY", agent["api_key"].as_str().unwrap()),
            ("KAKUREMICHI_METRICS_LISTEN", "127.0.0.1:9100"),
        ],
    );
    // Both ends' metrics, each read on its own host.
    let ends = [
        (topo.agent.clone(), "http://127.0.0.1:9100/metrics"),
        (topo.server.clone(), "http://127.0.0.1:9090/metrics"),
    ];

    // 5. UDP dropped from the start: the tunnel comes up over TLS within 10 s.
    let up = eventually(
        Duration::from_secs(15),
        "tunnel up over the TLS fallback",
        || async { load.first_success_after(load_started) },
    )
    .await;
    let took = up - start;
    let (_, failed) = load.since(start);
    eprintln!(
        "UDP blocked from the start: {failed} requests failed, tunnel up over TLS after {took:?}"
    );
    assert!(took <= Duration::from_secs(10), "tunnel up after {took:?}");
    assert!(
        counter(&topo, "tls443") > 0,
        "nothing went to the Gateway's 443"
    );
    assert_eq!(counter(&topo, "wgudp"), 0, "UDP got through the drop rule");
    // Requests keep being served over TLS.
    let steady = Instant::now();
    eventually(
        Duration::from_secs(10),
        "requests served over TLS",
        || async { (load.since(steady).0 >= 20).then_some(()) },
    )
    .await;
    let (_, failed) = load.since(steady);
    assert_eq!(failed, 0, "requests failed while on the TLS fallback");
    for (ns, url) in &ends {
        assert!(transport_is(ns, url, "tls"), "{url} in {ns}: transport tls");
    }

    // UDP passes again: the Agent's periodic probe (every 30 s) finds it, and the tunnel moves
    // back to UDP: UDP packets reach the Gateway and the TLS connection goes quiet, while
    // requests keep succeeding.
    unblock_udp(&topo);
    let unblocked = Instant::now();
    let back = eventually(Duration::from_secs(45), "tunnel back on UDP", || async {
        let (tls, udp) = (counter(&topo, "tls443"), counter(&topo, "wgudp"));
        if udp == 0 {
            return None;
        }
        // Under steady load, traffic on a live TLS path would move the counter within a second.
        hold(Duration::from_millis(1500)).await;
        (counter(&topo, "tls443") == tls && counter(&topo, "wgudp") > udp).then(Instant::now)
    })
    .await;
    eprintln!(
        "UDP unblocked: tunnel back on UDP after {:?}",
        back - unblocked
    );
    let after = Instant::now();
    eventually(
        Duration::from_secs(10),
        "requests served over UDP",
        || async { (load.since(after).0 >= 20).then_some(()) },
    )
    .await;
    let (ok, failed) = load.since(unblocked);
    eprintln!("switching back to UDP: {ok} requests served, {failed} failed");
    assert_eq!(failed, 0, "requests failed while switching back to UDP");
    for (ns, url) in &ends {
        eventually(
            Duration::from_secs(10),
            &format!("{url} in {ns}: transport udp"),
            || async { transport_is(ns, url, "udp") },
        )
        .await;
    }

    // The Agent says why it switched, each way, in that order.
    let log = std::fs::read_to_string(dir.path().join("agent.log")).unwrap();
    let to_tls = log.find("tunnel now carried over TLS");
    let to_udp = log.find("WireGuard over UDP answers again");
    assert!(
        matches!((to_tls, to_udp), (Some(a), Some(b)) if a < b),
        "the agent's log tells both switches"
    );
}
