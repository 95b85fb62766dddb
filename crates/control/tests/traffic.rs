//! Traffic history (issue #22): two Gateways report their cumulative counters over their
//! sessions; Control turns them into per-minute rows, sums them per tunnel, per Gateway and for
//! the fleet, and keeps them across a restart.

use futures_util::SinkExt;
use kakuremichi_proto::{NodeMessage, NodeRole, TunnelTraffic};
use kakuremichi_testkit::control::*;
use kakuremichi_testkit::eventually;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

/// A Gateway's report: `ok` 2xx and `failed` 5xx responses since it started, all answered
/// within a millisecond, and `bytes` sent.
fn report(tunnel: i64, ok: u64, failed: u64, bytes: u64) -> Message {
    let all = ok + failed;
    let status = NodeMessage::Status {
        port_errors: vec![],
        own_ports: vec![],
        stream_counters: vec![],
        web_ports: None,
        traffic: vec![TunnelTraffic {
            tunnel_id: tunnel,
            responses: [0, ok, 0, 0, failed],
            connections: 0,
            bytes_in: 0,
            bytes_out: bytes,
            latency: vec![all; 13],
        }],
    };
    Message::text(status.encode())
}

async fn history(c: &Control, path: &str) -> Value {
    let (status, body) = c.get(path).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_reports_add_up_and_outlive_a_restart() {
    let (_tmp, dir) = data_dir();
    let c = start(&dir).await;
    let agent = c.agent("a1").await["id"].as_i64().unwrap();
    let body = json!({"hostname": "app.example.com", "agent_id": agent, "target": "localhost:80", "tls": "off"});
    let (s, t) = c.post("/api/v1/tunnels", body).await;
    assert_eq!(s, StatusCode::CREATED, "{t}");
    let tunnel = t["id"].as_i64().unwrap();
    let g1 = c.gateway("g1").await;
    let g2 = c.gateway("g2").await;
    let (mut ws1, _, _) = c
        .node(g1["token"].as_str().unwrap(), NodeRole::Gateway, None)
        .await;
    let (mut ws2, _, _) = c
        .node(g2["token"].as_str().unwrap(), NodeRole::Gateway, None)
        .await;
    // Each session's first report is a baseline: g2 counted 100 before (another replica's,
    // or an earlier session's, to record).
    ws1.send(report(tunnel, 0, 0, 0)).await.unwrap();
    ws2.send(report(tunnel, 100, 0, 10_000)).await.unwrap();
    ws1.send(report(tunnel, 30, 3, 3_000)).await.unwrap();
    ws2.send(report(tunnel, 110, 2, 12_000)).await.unwrap();
    let path = format!("/api/v1/tunnels/{tunnel}/traffic?range=1h");
    let h = eventually(Duration::from_secs(40), "the reports written", || async {
        let h = history(&c, &path).await;
        (h["total"]["requests"]["2xx"] == 40).then_some(h)
    })
    .await;
    assert_eq!(h["range"], "1h");
    assert_eq!(h["step_seconds"], 60);
    assert_eq!(h["points"].as_array().unwrap().len(), 60, "{h}");
    let total = &h["total"];
    assert_eq!(total["requests"]["5xx"], 5, "{h}");
    assert_eq!(total["bytes_out"], 5_000, "{h}");
    assert!(
        (total["error_rate"].as_f64().unwrap() - 5.0 / 45.0).abs() < 1e-9,
        "{h}"
    );
    assert!(total["p95_ms"].as_f64().unwrap() <= 1.0, "{h}");
    let sum: i64 = h["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["requests"]["2xx"].as_i64().unwrap())
        .sum();
    assert_eq!(sum, 40, "the points add up to the total");
    let shares: Vec<(String, i64, i64)> = h["gateways"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (
                g["gateway"].as_str().unwrap().to_string(),
                g["requests"]["2xx"].as_i64().unwrap(),
                g["requests"]["5xx"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(shares, [("g1".into(), 30, 3), ("g2".into(), 10, 2)]);
    // The fleet's total is every tunnel's; the longer ranges read the hour rows too.
    let fleet = history(&c, "/api/v1/traffic?range=24h").await;
    assert_eq!(fleet["total"]["requests"]["2xx"], 40, "{fleet}");
    assert_eq!(fleet["points"].as_array().unwrap().len(), 96);
    let week = history(&c, &format!("/api/v1/tunnels/{tunnel}/traffic?range=7d")).await;
    assert_eq!(week["total"]["requests"]["2xx"], 40, "{week}");
    let (s, body) = c.get("/api/v1/traffic?range=2w").await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");

    // A restarted Control still has the history.
    drop((ws1, ws2));
    c.stop().await;
    let c = start(&dir).await;
    let h = history(&c, &path).await;
    assert_eq!(h["total"]["requests"]["2xx"], 40, "{h}");
    assert_eq!(h["total"]["requests"]["5xx"], 5, "{h}");
}
