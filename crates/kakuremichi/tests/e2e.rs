//! End to end, in one process: Control + two Gateways + an Agent + origins, all on ephemeral
//! loopback ports, wired only through Control's API — the way a user sets it up. Each test checks
//! one behaviour of a tunnel served through both Gateways.

use futures_util::{SinkExt, StreamExt};
use kakuremichi_testkit::*;
use serde_json::json;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Message};

const FIRST_CONTACT: Duration = Duration::from_secs(20);
const ONE_SECOND: Duration = Duration::from_secs(1);

fn origin_is(name: &'static str) -> impl Fn(u16, &str) -> bool {
    move |s, b| s == 200 && b.contains(name)
}

/// Two Gateways serving `app.test` → the origin `origin-a`; returns once both answer with it.
async fn serving() -> (Fleet, i64) {
    let fleet = Cluster::new()
        .gateways(2)
        .agent()
        .origin("origin-a")
        .tunnel("app.test")
        .start()
        .await;
    let both = fleet.gateway_addrs();
    let http = &fleet.http;
    wait_all(
        http,
        &both,
        "app.test",
        FIRST_CONTACT,
        "origin A",
        origin_is("origin-a"),
    )
    .await;
    let id = fleet.tunnels[0];
    (fleet, id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_node_reports_online() {
    let (fleet, id) = serving().await;
    let api = &fleet.api;
    assert_eq!(
        api.get(&format!("agents/{}", fleet.agent_id)).await["status"],
        "online"
    );
    for g in api.get("gateways").await.as_array().unwrap() {
        assert_eq!(g["status"], "online", "{g}");
    }
    // The tunnel's URLs name the ports the Gateways really serve on (ephemeral here).
    let plain = api.get(&format!("tunnels/{id}")).await["tls"] == "off";
    let mut expected: Vec<String> = fleet
        .gateways
        .iter()
        .map(|g| {
            if plain {
                format!("http://app.test:{}/", g.http.port())
            } else {
                format!("https://app.test:{}/", g.https.port())
            }
        })
        .collect();
    expected.sort();
    eventually(
        FIRST_CONTACT,
        "the Gateways' ports in public_urls",
        || async {
            let t = api.get(&format!("tunnels/{id}")).await;
            let mut urls: Vec<String> = serde_json::from_value(t["public_urls"].clone()).unwrap();
            urls.sort();
            urls == expected
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_status_summary_names_the_gateways_that_serve_a_tunnel() {
    let (fleet, _) = serving().await;
    let api = &fleet.api;
    let gateway_ids: Vec<i64> = api
        .get("gateways")
        .await
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["id"].as_i64().unwrap())
        .collect();
    let summary = api.get("status").await;
    assert_eq!(
        (
            summary["gateways"]["total"].as_u64(),
            summary["gateways"]["online"].as_u64()
        ),
        (Some(2), Some(2))
    );
    assert_eq!(
        (
            summary["agents"]["total"].as_u64(),
            summary["agents"]["online"].as_u64()
        ),
        (Some(1), Some(1))
    );
    assert_eq!(summary["tunnels"][0]["hostname"], "app.test");
    assert_eq!(summary["tunnels"][0]["reachable"], true);
    assert_eq!(summary["tunnels"][0]["gateways"], json!(gateway_ids));

    // A disabled Gateway drops out.
    let first = format!("gateways/{}", gateway_ids[0]);
    api.patch(&first, json!({"enabled": false})).await;
    assert_eq!(
        api.get("status").await["tunnels"][0]["gateways"],
        json!([gateway_ids[1]])
    );
    api.patch(&first, json!({"enabled": true})).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_target_reaches_both_gateways_within_a_second() {
    let (fleet, id) = serving().await;
    let (origin_b, _stop_b) = start_origin("origin-b").await;
    let body = json!({"target": origin_b.to_string()});
    fleet.api.patch(&format!("tunnels/{id}"), body).await;
    let both = fleet.gateway_addrs();
    let (http, within) = (&fleet.http, ONE_SECOND);
    wait_all(
        http,
        &both,
        "app.test",
        within,
        "new target",
        origin_is("origin-b"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_renamed_tunnel_answers_under_the_new_name_only() {
    let (fleet, id) = serving().await;
    let body = json!({"hostname": "renamed.test"});
    fleet.api.patch(&format!("tunnels/{id}"), body).await;
    let (both, http) = (fleet.gateway_addrs(), &fleet.http);
    let ok = |s, _: &str| s == 200;
    wait_all(http, &both, "renamed.test", ONE_SECOND, "new hostname", ok).await;
    let gone = |s, _: &str| s == 404;
    wait_all(
        http,
        &both,
        "app.test",
        ONE_SECOND,
        "old hostname gone",
        gone,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_disabled_tunnel_is_unreachable_until_enabled_again() {
    let (fleet, id) = serving().await;
    let (api, both, http) = (&fleet.api, fleet.gateway_addrs(), &fleet.http);
    api.patch(&format!("tunnels/{id}"), json!({"enabled": false}))
        .await;
    let summary = api.get("status").await;
    assert_eq!(summary["tunnels"][0]["reachable"], false, "{summary}");
    let what = "disabled tunnel 404";
    wait_all(http, &both, "app.test", ONE_SECOND, what, |s, _| s == 404).await;
    api.patch(&format!("tunnels/{id}"), json!({"enabled": true}))
        .await;
    let what = "re-enabled tunnel";
    wait_all(http, &both, "app.test", ONE_SECOND, what, |s, _| s == 200).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn websocket_messages_echo_through_the_tunnel() {
    let (fleet, _) = serving().await;
    let mut request = format!("ws://{}/ws", fleet.gateway())
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("host", "app.test".parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(request)
        .await
        .expect("websocket through the gateway");
    for msg in [
        Message::text("hello tunnel"),
        Message::binary(vec![0u8, 1, 2, 255]),
    ] {
        ws.send(msg.clone()).await.unwrap();
        let echoed = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(echoed, msg);
    }
    ws.close(None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn server_sent_events_arrive_as_they_are_sent() {
    let (fleet, _) = serving().await;
    let started = Instant::now();
    let mut sse = fleet
        .http
        .get(format!(
            "http://{}/sse?n=3&interval_ms=400",
            fleet.gateways[1].http
        ))
        .header("host", "app.test")
        .send()
        .await
        .unwrap();
    assert_eq!(sse.headers()["content-type"], "text/event-stream");
    let first = sse.chunk().await.unwrap().unwrap();
    let first_at = started.elapsed();
    assert!(String::from_utf8_lossy(&first).contains("event 0"));
    let mut rest = Vec::new();
    while let Some(c) = sse.chunk().await.unwrap() {
        rest.extend_from_slice(&c);
    }
    let end_at = started.elapsed();
    assert!(String::from_utf8_lossy(&rest).contains("event 2"));
    assert!(
        end_at - first_at >= Duration::from_millis(700),
        "first event at {first_at:?}, end at {end_at:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unknown_host_gets_404_from_the_gateway_itself() {
    let (fleet, _) = serving().await;
    for gw in fleet.gateway_addrs() {
        assert_eq!(through(&fleet.http, gw, "nobody.test", "/").await.0, 404);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stopped_origin_gets_502_quickly() {
    let (fleet, id) = serving().await;
    // An origin that has stopped, which no pooled connection of the Gateway reaches (a pooled
    // connection to a stopped origin serves on: the origin drains, it does not cut).
    let (origin_b, stop_b) = start_origin("origin-b").await;
    drop(stop_b);
    eventually(ONE_SECOND * 5, "origin B stopped", || async {
        tokio::net::TcpStream::connect(origin_b).await.is_err()
    })
    .await;
    let body = json!({"target": origin_b.to_string()});
    fleet.api.patch(&format!("tunnels/{id}"), body).await;
    let started = Instant::now();
    wait_through(
        &fleet.http,
        fleet.gateway(),
        "app.test",
        "/",
        Duration::from_secs(5),
        "502 for a stopped origin",
        |s, _| s == 502,
    )
    .await;
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deleted_tunnel_is_gone_within_a_second() {
    let (fleet, id) = serving().await;
    fleet.api.delete(&format!("tunnels/{id}")).await;
    let (both, http) = (fleet.gateway_addrs(), &fleet.http);
    let what = "deleted tunnel 404";
    wait_all(http, &both, "app.test", ONE_SECOND, what, |s, _| s == 404).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn streams_large_bodies_both_ways() {
    let fleet = Cluster::new()
        .gateway()
        .agent()
        .origin("big")
        .tunnel("big.test")
        .start()
        .await;
    let (http, gw) = (&fleet.http, fleet.gateway());
    let up = |s, _: &str| s == 200;
    wait_through(http, gw, "big.test", "/", FIRST_CONTACT, "tunnel up", up).await;

    const SIZE: u64 = 64 << 20;
    let (got, ok) = download(http, gw, "big.test", SIZE).await;
    assert_eq!(got, SIZE);
    assert!(ok, "downloaded bytes match the pattern");
    let (sent, digest) = upload(http, gw, "big.test", SIZE).await;
    assert_eq!(sent["bytes"].as_u64(), Some(SIZE));
    assert_eq!(sent["sha256"].as_str(), Some(digest.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gateway_restarts_from_its_cache_while_control_is_down() {
    let mut fleet = Cluster::new()
        .gateways(2)
        .agent()
        .origin("cached")
        .tunnel("cache.test")
        .start()
        .await;
    let (api, http, agent_id, origin) = (
        fleet.api.clone(),
        fleet.http.clone(),
        fleet.agent_id,
        fleet.origin,
    );
    let (gw2, gw1) = (fleet.gateways.pop().unwrap(), fleet.gateways.pop().unwrap());
    let up = |s, _: &str| s == 200;
    wait_all(
        &http,
        &[gw1.http, gw2.http],
        "cache.test",
        FIRST_CONTACT,
        "tunnel up",
        up,
    )
    .await;

    // Control goes away: the data path does not notice.
    let control = fleet.control.take().unwrap();
    let control_addr = control.addr;
    control.stop().await;
    for gw in [&gw1, &gw2] {
        assert_eq!(
            through(&http, gw.http, "cache.test", "/").await.0,
            200,
            "served with Control down"
        );
    }

    // A gateway restarted during the outage starts from its cached config and reconnects to the
    // agent by itself (it remembers where the agent was).
    let restarted = gw1.restart(&api.base).await;
    let took = wait_through(
        &http,
        restarted.http,
        "cache.test",
        "/",
        Duration::from_secs(10),
        "served after restart",
        up,
    )
    .await;
    eprintln!("restarted gateway served from cache after {took:?}");
    assert_eq!(through(&http, gw2.http, "cache.test", "/").await.0, 200);

    // Control comes back on the same address: every node reconnects by itself, and a change made
    // now reaches both gateways (through their new sessions) without restarting anything.
    let listener = eventually(
        Duration::from_secs(5),
        "Control's port is free again",
        || async { TcpListener::bind(control_addr).await.ok() },
    )
    .await;
    let config = control_config(&fleet.dir.path().join("control"));
    let _control = InProcessControl::start_on(listener, config);
    eventually(Duration::from_secs(30), "Control ready again", || async {
        let (status, _) = api.call(reqwest::Method::GET, "tunnels", None).await;
        status == 200
    })
    .await;
    let started = Instant::now();
    api.post(
        "tunnels",
        json!({"hostname": "later.test", "agent_id": agent_id, "target": origin.to_string()}),
    )
    .await;
    let later = Duration::from_secs(15);
    wait_all(
        &http,
        &[restarted.http, gw2.http],
        "later.test",
        later,
        "change after Control returned",
        up,
    )
    .await;
    eprintln!(
        "change made after Control returned served by both gateways after {:?}",
        started.elapsed()
    );
}
