//! Node identities under abuse: a WireGuard public key belongs to one node (a second node
//! presenting it is refused and changes nothing), and rotating an Agent's API key ends the
//! session opened with the old one.

use kakuremichi_proto::{ControlMessage, NodeRole, PROTOCOL_VERSION};
use kakuremichi_testkit::control::*;
use reqwest::StatusCode;
use std::time::Duration;

const PUSH: Duration = Duration::from_secs(2);

/// Opens a session presenting `key`; returns the socket and the first answer (None = closed).
async fn hello_with(c: &Control, secret: &str, role: NodeRole, key: &str) -> (Ws, ControlMessage) {
    let mut ws = c.ws(secret).await.unwrap();
    send_hello(&mut ws, role, key, None).await;
    let first = within(PUSH, try_next_message(&mut ws))
        .await
        .expect("an answer to the hello");
    (ws, first)
}

/// The first pushed snapshot that satisfies `want` (earlier pushes skipped), within [`PUSH`].
async fn config_where(
    ws: &mut Ws,
    want: impl Fn(&kakuremichi_proto::ConfigSnapshot) -> bool,
) -> kakuremichi_proto::ConfigSnapshot {
    within(PUSH, async {
        loop {
            let snap = next_config(ws, PUSH).await;
            if want(&snap) {
                return snap;
            }
        }
    })
    .await
}

#[tokio::test]
async fn a_second_node_cannot_claim_a_held_public_key() {
    let (_tmp, dir) = data_dir();
    let c = start(&dir).await;
    let first = c.agent("first").await;
    let second = c.agent("second").await;
    let (first_id, second_id) = (
        first["id"].as_i64().unwrap(),
        second["id"].as_i64().unwrap(),
    );
    let gw = c.gateway("edge").await;
    let gtoken = gw["token"].as_str().unwrap().to_string();

    let key = random_key();
    let (mut first_ws, welcome) = hello_with(
        &c,
        first["api_key"].as_str().unwrap(),
        NodeRole::Agent,
        &key,
    )
    .await;
    assert!(
        matches!(welcome, ControlMessage::Welcome { protocol_version, node_id }
            if protocol_version == PROTOCOL_VERSION && node_id == first_id),
        "{welcome:?}"
    );
    next_config(&mut first_ws, PUSH).await;
    let (mut g_ws, _, _) = c.node(&gtoken, NodeRole::Gateway, None).await;
    let g_snap = next_config(&mut g_ws, PUSH).await;
    let peers = |s: &kakuremichi_proto::ConfigSnapshot| {
        s.peers
            .iter()
            .map(|p| (p.id, p.public_key.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(peers(&g_snap), vec![(first_id, key.clone())]);

    // The second agent presents the first one's key: refused with a stable code, then closed.
    let (mut second_ws, answer) = hello_with(
        &c,
        second["api_key"].as_str().unwrap(),
        NodeRole::Agent,
        &key,
    )
    .await;
    match answer {
        ControlMessage::Error { code, message } => {
            assert_eq!(code, "public_key_in_use", "{message}");
            assert!(message.contains(&format!("agent {first_id}")), "{message}");
        }
        other => panic!("expected public_key_in_use, got {other:?}"),
    }
    assert!(within(PUSH, try_next_message(&mut second_ws))
        .await
        .is_none());
    let (_, second_json) = c.get(&format!("/api/v1/agents/{second_id}")).await;
    assert_eq!(second_json["public_key"], serde_json::Value::Null);
    assert_eq!(second_json["status"], "offline");

    // A Gateway may not claim it either.
    let other_gw = c.gateway("edge2").await;
    let (_, answer) = hello_with(
        &c,
        other_gw["token"].as_str().unwrap(),
        NodeRole::Gateway,
        &key,
    )
    .await;
    assert!(
        matches!(&answer, ControlMessage::Error { code, .. } if code == "public_key_in_use"),
        "{answer:?}"
    );

    // The first agent keeps working: a new tunnel reaches it; the Gateway's peers are unchanged.
    c.tunnel("app.example.com", first_id, "localhost:80").await;
    config_where(&mut first_ws, |s| s.services.len() == 1).await;
    let g_snap = config_where(&mut g_ws, |s| s.routes.len() == 1).await;
    assert_eq!(peers(&g_snap), vec![(first_id, key.clone())]);
    let (_, first_json) = c.get(&format!("/api/v1/agents/{first_id}")).await;
    assert_eq!(
        (&first_json["status"], &first_json["public_key"]),
        (&serde_json::json!("online"), &serde_json::json!(key))
    );

    // With a key of its own, the second agent connects.
    let (_, answer) = hello_with(
        &c,
        second["api_key"].as_str().unwrap(),
        NodeRole::Agent,
        &random_key(),
    )
    .await;
    assert!(
        matches!(answer, ControlMessage::Welcome { .. }),
        "{answer:?}"
    );
    c.stop().await;
}

#[tokio::test]
async fn rotating_an_agent_key_ends_its_live_session() {
    let (_tmp, dir) = data_dir();
    let c = start(&dir).await;
    let agent = c.agent("home").await;
    let (id, old_key) = (
        agent["id"].as_i64().unwrap(),
        agent["api_key"].as_str().unwrap().to_string(),
    );
    let (mut ws, _, _) = c.node(&old_key, NodeRole::Agent, None).await;
    next_config(&mut ws, PUSH).await;

    let (s, rotated) = c
        .post(
            &format!("/api/v1/agents/{id}/rotate-key"),
            serde_json::json!({}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{rotated}");
    let new_key = rotated["api_key"].as_str().unwrap().to_string();

    // The old key's session is told and closed at once.
    match within(PUSH, try_next_message(&mut ws)).await {
        Some(ControlMessage::Error { code, message }) => {
            assert_eq!(code, "revoked", "{message}");
            assert!(message.contains("rotated"), "{message}");
        }
        other => panic!("expected revoked, got {other:?}"),
    }
    assert!(within(PUSH, try_next_message(&mut ws)).await.is_none());
    let offline = || async {
        let (_, a) = c.get(&format!("/api/v1/agents/{id}")).await;
        a["status"] == "offline"
    };
    eventually(PUSH, "the agent shows offline", offline).await;

    // The old key opens nothing; the new one works and is not ended by the earlier rotation.
    match c.ws(&old_key).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(res)) => assert_eq!(res.status(), 401),
        other => panic!("expected 401, got {:?}", other.map(|_| ())),
    }
    let (mut ws, _, _) = c.node(&new_key, NodeRole::Agent, None).await;
    next_config(&mut ws, PUSH).await;
    c.tunnel("app.example.com", id, "localhost:80").await;
    config_where(&mut ws, |s| s.services.len() == 1).await;
    c.stop().await;
}
