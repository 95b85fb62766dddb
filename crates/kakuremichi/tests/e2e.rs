//! End to end, in one process: Control + two Gateways + an Agent + origins, all on ephemeral
//! loopback ports, wired only through Control's API — the way a user sets it up.

mod common;

use common::*;
use futures_util::{SinkExt, StreamExt};
use kakuremichi_node::Secret;
use serde_json::json;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Message};

async fn start_control(
    dir: &std::path::Path,
) -> (String, Stop, tokio::task::JoinHandle<anyhow::Result<()>>) {
    start_control_on(TcpListener::bind("127.0.0.1:0").await.unwrap(), dir)
}

fn start_control_on(
    listener: TcpListener,
    dir: &std::path::Path,
) -> (String, Stop, tokio::task::JoinHandle<anyhow::Result<()>>) {
    let base = format!("http://{}", listener.local_addr().unwrap());
    let config = kakuremichi_control::ControlConfig {
        data_dir: dir.to_path_buf(),
        admin_email: Some(ADMIN_EMAIL.into()),
        admin_password: Some(ADMIN_PASSWORD.into()),
        ..Default::default()
    };
    let (stop, wait) = Stop::new();
    let task = tokio::spawn(kakuremichi_control::run(config, listener, wait()));
    (base, stop, task)
}

struct Gateway {
    http: SocketAddr,
    wg: SocketAddr,
    token: String,
    dir: std::path::PathBuf,
    stop: Stop,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

async fn create_gateway(api: &Api, name: &str, dir: std::path::PathBuf) -> Gateway {
    let wg = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let wg_addr = wg.local_addr().unwrap();
    let created = api
        .post(
            "gateways",
            json!({"name": name, "public_endpoint": wg_addr.to_string()}),
        )
        .await;
    let token = created["token"].as_str().unwrap().to_string();
    start_gateway(&api.base, token, wg, dir).await
}

async fn start_gateway(
    control: &str,
    token: String,
    wg: std::net::UdpSocket,
    dir: std::path::PathBuf,
) -> Gateway {
    let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http_addr = http.local_addr().unwrap();
    let wg_addr = wg.local_addr().unwrap();
    let https = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let listeners = kakuremichi_gateway::GatewayListeners {
        http,
        https,
        admin,
        wg,
    };
    let (stop, task) = spawn_gateway(control, &token, listeners, dir.clone());
    Gateway {
        http: http_addr,
        wg: wg_addr,
        token,
        dir,
        stop,
        task,
    }
}

async fn start_agent(api: &Api, dir: std::path::PathBuf) -> (i64, Stop) {
    let created = api.post("agents", json!({"name": "home"})).await;
    let mut config = kakuremichi_agent::AgentConfig::new(
        api.base.clone(),
        Secret::new(created["api_key"].as_str().unwrap().to_string()),
    );
    config.data_dir = Some(dir);
    let (stop, wait) = Stop::new();
    tokio::spawn(kakuremichi_agent::run(config, wait()));
    (created["id"].as_i64().unwrap(), stop)
}

async fn start_origin(name: &str) -> (SocketAddr, Stop) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, wait) = Stop::new();
    tokio::spawn(kakuremichi::hello::serve(
        listener,
        name.to_string(),
        wait(),
    ));
    (addr, stop)
}

const FIRST_CONTACT: Duration = Duration::from_secs(20);
const ONE_SECOND: Duration = Duration::from_secs(1);

/// What every test here starts from: Control, `gateways` Gateways and an Agent, wired through the
/// API, and an origin named `origin`.
struct Site {
    dir: tempfile::TempDir,
    base: String,
    control_stop: Stop,
    control: tokio::task::JoinHandle<anyhow::Result<()>>,
    api: Api,
    gateways: Vec<Gateway>,
    agent_id: i64,
    _agent: Stop,
    origin: SocketAddr,
    _origin: Stop,
    http: reqwest::Client,
}

async fn site(gateways: usize, origin: &str) -> Site {
    let dir = tempfile::tempdir().unwrap();
    let (base, control_stop, control) = start_control(&dir.path().join("control")).await;
    let api = Api::login(base.clone()).await;
    let mut gws = Vec::new();
    for i in 1..=gateways {
        gws.push(create_gateway(&api, &format!("gw{i}"), dir.path().join(format!("gw{i}"))).await);
    }
    let (agent_id, _agent) = start_agent(&api, dir.path().join("agent")).await;
    let (origin, _origin) = start_origin(origin).await;
    let http = reqwest::Client::new();
    Site {
        dir,
        base,
        control_stop,
        control,
        api,
        gateways: gws,
        agent_id,
        _agent,
        origin,
        _origin,
        http,
    }
}

impl Site {
    /// Creates a tunnel `host` → `target` and returns its id.
    async fn tunnel(&self, host: &str, target: SocketAddr) -> i64 {
        let body =
            json!({"hostname": host, "agent_id": self.agent_id, "target": target.to_string()});
        self.api.post("tunnels", body).await["id"].as_i64().unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tunnel_through_two_gateways_follows_every_change() {
    let site = site(2, "origin-a").await;
    let (api, http, agent_id, origin_a) =
        (&site.api, site.http.clone(), site.agent_id, site.origin);
    let (gw1, gw2) = (&site.gateways[0], &site.gateways[1]);
    let (origin_b, stop_b) = start_origin("origin-b").await;
    let id = site.tunnel("app.test", origin_a).await;
    let both = [gw1.http, gw2.http];
    let origin_is = |name: &'static str| move |s: u16, b: &str| s == 200 && b.contains(name);
    wait_all(
        &http,
        &both,
        "app.test",
        FIRST_CONTACT,
        "origin A",
        origin_is("origin-a"),
    )
    .await;

    // Every node reports online.
    assert_eq!(
        api.get(&format!("agents/{agent_id}")).await["status"],
        "online"
    );
    for g in api.get("gateways").await.as_array().unwrap() {
        assert_eq!(g["status"], "online", "{g}");
    }

    // The status summary: both gateways can serve the tunnel; a disabled one drops out.
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
    api.patch(
        &format!("gateways/{}", gateway_ids[0]),
        json!({"enabled": false}),
    )
    .await;
    assert_eq!(
        api.get("status").await["tunnels"][0]["gateways"],
        json!([gateway_ids[1]])
    );
    api.patch(
        &format!("gateways/{}", gateway_ids[0]),
        json!({"enabled": true}),
    )
    .await;

    // Edit the target: both gateways reach the new origin within a second.
    api.patch(
        &format!("tunnels/{id}"),
        json!({"target": origin_b.to_string()}),
    )
    .await;
    wait_all(
        &http,
        &both,
        "app.test",
        ONE_SECOND,
        "new target",
        origin_is("origin-b"),
    )
    .await;

    // Rename: the new name works, the old one is gone.
    api.patch(
        &format!("tunnels/{id}"),
        json!({"hostname": "renamed.test"}),
    )
    .await;
    wait_all(
        &http,
        &both,
        "renamed.test",
        ONE_SECOND,
        "new hostname",
        |s, _| s == 200,
    )
    .await;
    wait_all(
        &http,
        &both,
        "app.test",
        ONE_SECOND,
        "old hostname gone",
        |s, _| s == 404,
    )
    .await;

    // Disable and enable.
    api.patch(&format!("tunnels/{id}"), json!({"enabled": false}))
        .await;
    let summary = api.get("status").await;
    assert_eq!(summary["tunnels"][0]["reachable"], false, "{summary}");
    wait_all(
        &http,
        &both,
        "renamed.test",
        ONE_SECOND,
        "disabled tunnel 404",
        |s, _| s == 404,
    )
    .await;
    api.patch(&format!("tunnels/{id}"), json!({"enabled": true}))
        .await;
    wait_all(
        &http,
        &both,
        "renamed.test",
        ONE_SECOND,
        "re-enabled tunnel",
        |s, _| s == 200,
    )
    .await;

    // WebSocket echo through the tunnel.
    let mut request = format!("ws://{}/ws", gw1.http)
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("host", "renamed.test".parse().unwrap());
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

    // Server-sent events arrive as they are sent, not when the response ends.
    let started = Instant::now();
    let mut sse = http
        .get(format!("http://{}/sse?n=3&interval_ms=400", gw2.http))
        .header("host", "renamed.test")
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

    // Unknown host: 404 from the gateway itself.
    for gw in [&gw1, &gw2] {
        assert_eq!(through(&http, gw.http, "nobody.test", "/").await.0, 404);
    }

    // The origin stops: 502, quickly.
    stop_b.stop();
    drop(stop_b);
    let started = Instant::now();
    wait_through(
        &http,
        gw1.http,
        "renamed.test",
        "/",
        Duration::from_secs(5),
        "502 for a stopped origin",
        |s, _| s == 502,
    )
    .await;
    assert!(started.elapsed() < Duration::from_secs(5));

    // Delete: gone within a second.
    api.delete(&format!("tunnels/{id}")).await;
    wait_all(
        &http,
        &both,
        "renamed.test",
        ONE_SECOND,
        "deleted tunnel 404",
        |s, _| s == 404,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn streams_large_bodies_both_ways() {
    let site = site(1, "big").await;
    let (http, gw) = (&site.http, &site.gateways[0]);
    site.tunnel("big.test", site.origin).await;
    wait_through(
        http,
        gw.http,
        "big.test",
        "/",
        FIRST_CONTACT,
        "tunnel up",
        |s, _| s == 200,
    )
    .await;

    const SIZE: u64 = 64 << 20;
    let (got, ok) = download(http, gw.http, "big.test", SIZE).await;
    assert_eq!(got, SIZE);
    assert!(ok, "downloaded bytes match the pattern");
    let (sent, digest) = upload(http, gw.http, "big.test", SIZE).await;
    assert_eq!(sent["bytes"].as_u64(), Some(SIZE));
    assert_eq!(sent["sha256"].as_str(), Some(digest.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gateway_restarts_from_its_cache_while_control_is_down() {
    let Site {
        dir,
        base,
        control_stop,
        control,
        api,
        mut gateways,
        agent_id,
        _agent,
        origin,
        _origin,
        http,
    } = site(2, "cached").await;
    let (gw2, gw1) = (gateways.pop().unwrap(), gateways.pop().unwrap());
    api.post(
        "tunnels",
        json!({"hostname": "cache.test", "agent_id": agent_id, "target": origin.to_string()}),
    )
    .await;
    wait_all(
        &http,
        &[gw1.http, gw2.http],
        "cache.test",
        FIRST_CONTACT,
        "tunnel up",
        |s, _| s == 200,
    )
    .await;

    // Control goes away: the data path does not notice.
    control_stop.stop();
    control.await.unwrap().unwrap();
    for gw in [&gw1, &gw2] {
        assert_eq!(
            through(&http, gw.http, "cache.test", "/").await.0,
            200,
            "served with Control down"
        );
    }

    // A gateway restarted during the outage starts from its cached config and reconnects to the
    // agent by itself (it remembers where the agent was).
    let Gateway {
        wg,
        token,
        dir: gw_dir,
        stop,
        task,
        ..
    } = gw1;
    stop.stop();
    task.await.unwrap().unwrap();
    let socket = eventually(
        Duration::from_secs(5),
        "the WireGuard port is free again",
        || async { std::net::UdpSocket::bind(wg).ok() },
    )
    .await;
    let restarted = start_gateway(&base, token, socket, gw_dir).await;
    let took = wait_through(
        &http,
        restarted.http,
        "cache.test",
        "/",
        Duration::from_secs(10),
        "served after restart",
        |s, _| s == 200,
    )
    .await;
    eprintln!("restarted gateway served from cache after {took:?}");
    assert_eq!(through(&http, gw2.http, "cache.test", "/").await.0, 200);

    // Control comes back on the same address: every node reconnects by itself, and a change made
    // now reaches both gateways (through their new sessions) without restarting anything.
    let control_addr: SocketAddr = base.trim_start_matches("http://").parse().unwrap();
    let listener = eventually(
        Duration::from_secs(5),
        "Control's port is free again",
        || async { TcpListener::bind(control_addr).await.ok() },
    )
    .await;
    let (_, _control_stop, _control) = start_control_on(listener, &dir.path().join("control"));
    eventually(Duration::from_secs(30), "Control ready again", || async {
        let (status, _) = api.call(reqwest::Method::GET, "tunnels", None).await;
        (status == 200).then_some(())
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
        |s, _| s == 200,
    )
    .await;
    eprintln!(
        "change made after Control returned served by both gateways after {:?}",
        started.elapsed()
    );
}
