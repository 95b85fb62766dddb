//! Fault tests (issue "Survive faults"): real processes on test hosts made of network namespaces,
//! with steady load; each prints how many requests failed during the fault and how long recovery
//! took. Needs root, `ip` and `nft`; skipped loudly elsewhere (and failing under CI).

use kakuremichi_testkit::load::{hold, Load};
use kakuremichi_testkit::site::site;
use kakuremichi_testkit::*;
use serde_json::json;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_behind_nat_survives_an_address_change_and_a_cut_link() {
    require_netns!();
    let (site, _procs, _) = site(1).await;
    let load = Load::start(site.gateway_addr(0), "app.test");
    load.settle(Instant::now(), 5).await;

    // 3. The agent's address behind the NAT changes: its public source port changes with it.
    let fault = Instant::now();
    site.topo.change_agent_address();
    // Let the fault take effect, then wait until requests succeed again.
    hold(Duration::from_secs(2)).await;
    let recovered = eventually(
        Duration::from_secs(40),
        "recovery after the NAT mapping changed",
        || async { load.recovered_at(fault) },
    )
    .await;
    let (_, failed) = load.since(fault);
    let took = recovered - fault;
    eprintln!("NAT mapping change: {failed} requests failed, recovered after {took:?}");
    assert!(took <= Duration::from_secs(30), "recovery took {took:?}");

    // 4. The link between the agent's network and the server is cut for 30 s, then restored.
    load.settle(Instant::now(), 5).await;
    let cut = Instant::now();
    site.topo.set_uplink(false);
    hold(Duration::from_secs(30)).await;
    let restored = Instant::now();
    site.topo.set_uplink(true);
    let back = eventually(
        Duration::from_secs(15),
        "recovery after the link came back",
        || async { load.first_success_after(restored) },
    )
    .await;
    let (_, failed) = load.since(cut);
    let took = back - restored;
    eprintln!(
        "30 s link cut: {failed} requests failed, recovered {took:?} after the link came back"
    );
    assert!(took <= Duration::from_secs(5), "recovery took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_and_control_crashes_under_load() {
    require_netns!();
    let (site, mut procs, tokens) = site(2).await;
    let mut gw2 = procs.remove(2);
    let gw1 = procs.remove(1);
    let control = procs.remove(0);
    let (addr1, addr2) = (site.gateway_addr(0), site.gateway_addr(1));

    // 1. kill -9 one gateway: the other keeps serving; the killed one comes back within 5 s.
    let load2 = Load::start(addr2, "app.test");
    load2.settle(Instant::now(), 5).await;
    let memory = site
        .dir
        .path()
        .join("gateway-1")
        .join("gateway-endpoints.json");
    eventually(
        Duration::from_secs(5),
        "the gateway remembers where the agent is",
        || async { memory.exists().then_some(()) },
    )
    .await;
    let fault = Instant::now();
    gw1.kill();
    hold(Duration::from_secs(2)).await;
    let gw1 = site.spawn_gateway(0, &tokens[0]);
    let took = wait_through(
        &site.api.http,
        addr1,
        "app.test",
        "/",
        Duration::from_secs(5),
        "killed gateway back",
        |s, _| s == 200,
    )
    .await;
    load2.settle(Instant::now(), 5).await;
    let (ok, failed) = load2.since(fault);
    eprintln!("gateway kill -9: survivor served {ok} requests, {failed} failed; restarted gateway served after {took:?}");
    assert_eq!(failed, 0, "requests to the surviving gateway failed");

    // 2. kill -9 Control under load: nothing fails; a gateway restarted meanwhile serves from its cache.
    let load1 = Load::start(addr1, "app.test");
    load1.settle(Instant::now(), 5).await;
    let fault = Instant::now();
    control.kill();
    drop(gw2);
    gw2 = site.spawn_gateway(1, &tokens[1]);
    let took = wait_through(
        &site.api.http,
        addr2,
        "app.test",
        "/",
        Duration::from_secs(5),
        "gateway restarted without Control",
        |s, _| s == 200,
    )
    .await;
    eprintln!("gateway restarted while Control is down served from its cache after {took:?}");
    load1.settle(Instant::now(), 10).await;
    let (ok, failed) = load1.since(fault);
    eprintln!("Control kill -9: {ok} requests served during the outage, {failed} failed");
    assert_eq!(failed, 0, "requests failed while Control was down");

    // Control returns: the nodes reconnect by themselves and a change arrives within 2 s.
    let returned = Instant::now();
    let _control = site.spawn_control();
    wait_ready(&site.api.http, &site.api.base).await;
    eventually(
        Duration::from_secs(30),
        "every node reconnected",
        || async {
            let (s1, gws) = site.api.call(reqwest::Method::GET, "gateways", None).await;
            let (s2, agents) = site.api.call(reqwest::Method::GET, "agents", None).await;
            let online = |v: &serde_json::Value| {
                v.as_array()
                    .is_some_and(|a| a.iter().all(|n| n["status"] == "online"))
            };
            (s1 == 200 && s2 == 200 && online(&gws) && online(&agents)).then_some(())
        },
    )
    .await;
    eprintln!(
        "every node reconnected {:?} after Control restarted",
        returned.elapsed()
    );
    let agent_id = site.api.get("agents").await[0]["id"].as_i64().unwrap();
    let change = Instant::now();
    site.api
        .post(
            "tunnels",
            json!({"hostname": "later.test", "agent_id": agent_id, "target": "127.0.0.1:8000"}),
        )
        .await;
    wait_all(
        &site.api.http,
        &[addr1, addr2],
        "later.test",
        Duration::from_secs(2),
        "change after Control returned",
        |s, _| s == 200,
    )
    .await;
    eprintln!(
        "change after Control returned served by both gateways after {:?}",
        change.elapsed()
    );
    drop((gw1, gw2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_killed_under_load() {
    require_netns!();
    let (site, mut procs, _tokens) = site(1).await;
    let primary = procs.pop().expect("the agent is started last");
    // Tag the primary's origin, then a replica on the router host with its own origin at the same
    // target address (each namespace has its own loopback), so responses say who served them.
    let agents = site.api.get("agents").await;
    let primary_id = agents[0]["id"].as_i64().unwrap();
    let replica = site.api.post("agents", json!({"name": "replica"})).await;
    let replica_id = replica["id"].as_i64().unwrap();
    let router = Some(site.topo.router.as_str());
    let _origin_b = Proc::spawn_in(
        router,
        "hello-replica",
        site.dir.path(),
        &["hello", "--listen", "127.0.0.1:8000", "--name", "replica-b"],
        &[],
    );
    let _replica = Proc::spawn_in(
        router,
        "agent-replica",
        site.dir.path(),
        &[
            "agent",
            "--data-dir",
            site.dir.path().join("agent-replica").to_str().unwrap(),
        ],
        &[
            (
                "CONTROL_URL",
                &format!("http://{}:8780", site.topo.server_public()),
            ),
            ("API_KEY", replica["api_key"].as_str().unwrap()),
        ],
    );
    let tunnel = site.api.get("tunnels").await[0].clone();
    let tunnel_id = tunnel["id"].as_i64().unwrap();
    let patched = site
        .api
        .patch(
            &format!("tunnels/{tunnel_id}"),
            json!({"agent_ids": [primary_id, replica_id]}),
        )
        .await;
    assert_eq!(patched["agent_ids"], json!([primary_id, replica_id]));

    // Both replicas serve: requests alternate between the two origins.
    let gateway = site.gateway_addr(0);
    eventually(Duration::from_secs(20), "both replicas answer", || async {
        let mut seen = (false, false);
        for _ in 0..6 {
            let (status, body) = through(&site.api.http, gateway, "app.test", "/").await;
            if status == 200 {
                seen.0 |= body.contains("replica-b");
                seen.1 |= !body.contains("replica-b");
            }
        }
        (seen.0 && seen.1).then_some(())
    })
    .await;

    // kill -9 the primary under load: only requests in flight at that moment may fail.
    let load = Load::start(gateway, "app.test");
    load.settle(Instant::now(), 20).await;
    let fault = Instant::now();
    primary.kill();
    hold(Duration::from_secs(3)).await;
    load.settle(Instant::now(), 20).await;
    let (ok, failed) = load.since(fault);
    let recovered = load.recovered_at(fault).map(|t| t - fault);
    eprintln!(
        "replica kill -9: {ok} requests served by the survivor, {failed} failed; all good again {recovered:?} after the kill"
    );
    assert!(
        failed <= 2,
        "{failed} requests failed; only in-flight ones may"
    );
    let settled = Instant::now();
    load.settle(settled, 20).await;
    assert_eq!(
        load.since(settled).1,
        0,
        "requests fail after the kill settled"
    );
    let status = site.api.get("status").await;
    let t = &status["tunnels"][0];
    assert_eq!(t["agents_online"], json!([replica_id]), "{status}");
    assert_eq!(t["reachable"], true, "{status}");
}
