//! Issue 14, point 1: a member's tunnels with the largest allow-lists the quotas allow must not
//! stop config from reaching every Gateway; a node that cannot apply a snapshot says so, and
//! Control shows it in `GET /api/v1/status`.

use futures_util::{SinkExt as _, StreamExt as _};
use kakuremichi_proto::{ControlMessage, NodeMessage, NodeRole};
use kakuremichi_testkit::control::*;
use reqwest::StatusCode;
use serde_json::json;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

/// Allow-list entries per tunnel: the largest `max_allow_list_entries` an admin may set.
const ENTRIES: usize = 1000;
/// Tunnels of the member: enough that their lists alone exceed 16 MiB (72 × 1000 × ~250 bytes).
const TUNNELS: usize = 72;

/// An e-mail address of nearly the longest length the validator accepts (254).
fn long_email(i: usize) -> String {
    format!("u{i:04}{}@example.com", "x".repeat(230))
}

/// The next `Config` snapshot's size on the wire and its hostnames; other messages skipped.
async fn next_config_sized(ws: &mut Ws) -> (usize, Vec<String>) {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => {
                if let ControlMessage::Config { snapshot } =
                    kakuremichi_proto::decode_control(text.as_str()).expect("valid message")
                {
                    return (text.len(), snapshot.hostnames);
                }
            }
            Some(Ok(_)) => continue,
            other => panic!("session ended instead of a config: {other:?}"),
        }
    }
}

#[tokio::test]
async fn big_allow_lists_do_not_stop_config_reaching_every_gateway() {
    let (_tmp, dir) = data_dir();
    let c = start(&dir).await;
    // The admin allows the largest lists there are, and enough tunnels (older Controls have no
    // such settings; there the member is simply not limited).
    let quotas = json!({"max_allow_list_entries": ENTRIES, "max_tunnels_per_user": TUNNELS});
    let _ = c.patch("/api/v1/settings", quotas).await;
    let (_, member) = member_token(&c, "member@example.com").await;
    let body = json!({"name": "member-agent"});
    let (s, agent, _) = call_as(&c, &member, "POST", "/api/v1/agents", Some(body)).await;
    assert_eq!(s, StatusCode::CREATED, "{agent}");
    let allow: Vec<String> = (0..ENTRIES).map(long_email).collect();
    let created = futures_util::stream::iter(0..TUNNELS)
        .map(|i| {
            let body = json!({"hostname": format!("m{i}.example.com"), "agent_id": agent["id"],
                "target": "app:80", "tls": "off", "access": {"mode": "users", "allow": allow}});
            call_as(&c, &member, "POST", "/api/v1/tunnels", Some(body))
        })
        .buffer_unordered(4)
        .collect::<Vec<_>>()
        .await;
    for (s, b, _) in created {
        assert_eq!(s, StatusCode::CREATED, "{b}");
    }

    // Two Gateways connect and get their first snapshot.
    let mut gateways = Vec::new();
    for name in ["gw1", "gw2"] {
        let gw = c.gateway(name).await;
        let (mut ws, _, _) = c
            .node(gw["token"].as_str().unwrap(), NodeRole::Gateway, None)
            .await;
        let (size, hosts) = within(Duration::from_secs(10), next_config_sized(&mut ws)).await;
        assert_eq!(hosts.len(), TUNNELS);
        eprintln!("{name}: first snapshot with {TUNNELS} protected tunnels: {size} bytes");
        gateways.push(ws);
    }

    // An admin's new tunnel is served on every Gateway within 2 s.
    let admin_agent = c.agent("admin-agent").await;
    let started = Instant::now();
    c.tunnel(
        "admin.example.com",
        admin_agent["id"].as_i64().unwrap(),
        "app:80",
    )
    .await;
    for (i, ws) in gateways.iter_mut().enumerate() {
        let seen = within(Duration::from_secs(2), async {
            loop {
                let (size, hosts) = next_config_sized(ws).await;
                if hosts.iter().any(|h| h == "admin.example.com") {
                    return size;
                }
            }
        })
        .await;
        eprintln!(
            "gw{}: admin's tunnel served {:?} after its creation; snapshot {seen} bytes",
            i + 1,
            started.elapsed()
        );
    }
    assert!(started.elapsed() < Duration::from_secs(2));
    let (_, status) = c.get("/api/v1/status").await;
    for g in status["gateways"]["items"].as_array().unwrap() {
        assert_eq!(g["config_error"], serde_json::Value::Null, "{g}");
    }
}

#[tokio::test]
async fn a_rejected_config_shows_in_the_status_until_one_is_applied() {
    let (_tmp, dir) = data_dir();
    let c = start(&dir).await;
    let gw = c.gateway("edge").await;
    let gid = gw["id"].as_i64().unwrap();
    let (mut ws, _, _) = c
        .node(gw["token"].as_str().unwrap(), NodeRole::Gateway, None)
        .await;
    let snapshot = next_config(&mut ws, Duration::from_secs(2)).await;
    let item = |status: &serde_json::Value| {
        status["gateways"]["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["id"] == gid)
            .cloned()
            .unwrap()
    };
    assert_eq!(
        item(&c.get("/api/v1/status").await.1)["config_error"],
        json!(null)
    );

    // The node refuses it (as a node does with a snapshot over the message limit)...
    let reason = format!(
        "not applied: message of 17000000 bytes exceeds the limit{}",
        "!".repeat(600)
    );
    let rejected = NodeMessage::Rejected {
        config_hash: Some(snapshot.config_hash.clone()),
        reason,
    };
    ws.send(Message::text(rejected.encode())).await.unwrap();
    eventually(
        Duration::from_secs(2),
        "the status names the rejection",
        || async { item(&c.get("/api/v1/status").await.1)["config_error"].is_string() },
    )
    .await;
    let status = c.get("/api/v1/status").await.1;
    let error = item(&status)["config_error"].as_str().unwrap().to_string();
    assert!(error.contains(&snapshot.config_hash[..12]), "{error}");
    assert!(error.contains("17000000 bytes"), "{error}");
    assert!(error.len() < 700, "the node's reason is cut: {error}");
    // ...the session stays up, and the Gateways page says so too.
    let page = c
        .http
        .get(c.url("/gateways"))
        .header(
            "cookie",
            c.login(ADMIN_EMAIL, ADMIN_PASSWORD).await.unwrap(),
        )
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("config not applied"), "{page}");

    // Applying one clears it.
    let applied = NodeMessage::Applied {
        config_hash: snapshot.config_hash.clone(),
    };
    ws.send(Message::text(applied.encode())).await.unwrap();
    eventually(Duration::from_secs(2), "the error is cleared", || async {
        item(&c.get("/api/v1/status").await.1)["config_error"].is_null()
    })
    .await;
}

#[tokio::test]
async fn control_never_sends_a_snapshot_over_the_message_limit_and_says_so() {
    let (_tmp, dir) = data_dir();
    let c = start(&dir).await;
    let agent = c.agent("home").await;
    let aid = agent["id"].as_i64().unwrap();
    let t = c.tunnel("app.example.com", aid, "app:80").await;
    let (mut ws, _, _) = c
        .node(agent["api_key"].as_str().unwrap(), NodeRole::Agent, None)
        .await;
    let first = next_config(&mut ws, Duration::from_secs(2)).await;

    // A row no API accepts (a target of 17 MiB, written behind Control's back) stands for any
    // snapshot that outgrew the limit: the node must not be sent it, and the status must say so.
    let db = kakuremichi_testkit::roles::test_db(&dir).await;
    sqlx::query("UPDATE tunnels SET target = $1 WHERE id = $2")
        .bind(format!("{}:80", "a".repeat(17 << 20)))
        .bind(t["id"].as_i64().unwrap())
        .execute(&db)
        .await
        .unwrap();
    db.close().await;
    c.tunnel("other.example.com", aid, "app:81").await; // any change: Control recomputes
    let agent_error = || async {
        let (_, status) = c.get("/api/v1/status").await;
        status["agents"]["items"][0]["config_error"]
            .as_str()
            .map(str::to_string)
    };
    eventually(
        Duration::from_secs(5),
        "the agent's config_error",
        || async { agent_error().await.is_some() },
    )
    .await;
    let error = agent_error().await.unwrap();
    assert!(
        error.contains("did not send") && error.contains("message limit"),
        "{error}"
    );
    // Nothing was pushed, and the session is still up (the node keeps its last snapshot).
    let pending = tokio::time::timeout(Duration::from_millis(300), ws.next()).await;
    assert!(
        matches!(pending, Err(_) | Ok(Some(Ok(Message::Ping(_))))),
        "nothing pushed: {pending:?}"
    );
    let (_, a) = c.get(&format!("/api/v1/agents/{aid}")).await;
    assert_eq!(a["status"], "online");
    assert!(first.is_intact());
}
