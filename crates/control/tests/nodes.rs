//! Node sessions (WebSocket config push, heartbeats, status), the pull endpoint, and restarts.

use futures_util::{SinkExt as _, StreamExt as _};
use kakuremichi_proto::{ControlMessage, NodeRole, PULL_CONFIG_PATH};
use kakuremichi_testkit::control::*;
use reqwest::StatusCode;
use serde_json::json;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

const PUSH: Duration = Duration::from_secs(1);

async fn status(c: &Control, path: &str) -> String {
    let (s, body) = c.get(path).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    body["status"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn sessions_receive_config_and_pushes() {
    let (_tmp, dir) = data_dir();
    let c = start(&dir).await;
    let agent = c.agent("home").await;
    let (aid, akey) = (
        agent["id"].as_i64().unwrap(),
        agent["api_key"].as_str().unwrap().to_string(),
    );
    let gw = c.gateway("edge").await;
    let (gid, gtoken) = (
        gw["id"].as_i64().unwrap(),
        gw["token"].as_str().unwrap().to_string(),
    );
    c.tunnel("app.example.com", aid, "localhost:8080").await;

    // Agent: Welcome + Config; its key is stored; it is online.
    let (mut a_ws, node_id, a_pub) = c.node(&akey, NodeRole::Agent, None).await;
    assert_eq!(node_id, aid);
    let a_snap = next_config(&mut a_ws, PUSH).await;
    assert!(a_snap.is_intact());
    assert_eq!(
        (a_snap.node_id, a_snap.wg_address.to_string()),
        (aid, "10.77.0.1".to_string())
    );
    assert!(a_snap.peers.is_empty(), "the gateway has no key yet");
    assert_eq!(a_snap.services.len(), 1);
    assert_eq!(
        (a_snap.services[0].port, a_snap.services[0].target.as_str()),
        (10000, "localhost:8080")
    );
    let (_, a_json) = c.get(&format!("/api/v1/agents/{aid}")).await;
    assert_eq!(
        (&a_json["status"], &a_json["public_key"]),
        (&json!("online"), &json!(a_pub))
    );
    assert!(a_json["last_seen"].is_string());

    // Gateway: sees the agent as a peer and the route. The agent then gets the gateway as a peer.
    let (mut g_ws, _, g_pub) = c.node(&gtoken, NodeRole::Gateway, None).await;
    let g_snap = next_config(&mut g_ws, PUSH).await;
    assert_eq!(g_snap.peers.len(), 1);
    // Where the session came from is recorded; a loopback address is no DNS record's default.
    let (_, g_json) = c.get(&format!("/api/v1/gateways/{gid}")).await;
    assert_eq!(g_json["observed_ip"], "127.0.0.1", "{g_json}");
    assert_eq!(g_json["dns_addresses"], json!([]), "{g_json}");
    assert_eq!(
        (
            g_snap.peers[0].id,
            &g_snap.peers[0].public_key,
            g_snap.peers[0].endpoint.as_ref()
        ),
        (aid, &a_pub, None)
    );
    let route = &g_snap.routes["app.example.com"];
    assert_eq!(
        (route.agent_id, route.agent_address.to_string(), route.port),
        (aid, "10.77.0.1".to_string(), 10000)
    );
    assert_eq!(g_snap.hostnames, ["app.example.com"]);
    let a_snap = next_config(&mut a_ws, PUSH).await;
    assert_eq!(a_snap.peers.len(), 1);
    assert_eq!(
        (a_snap.peers[0].id, &a_snap.peers[0].public_key),
        (gid, &g_pub)
    );
    assert_eq!(
        a_snap.peers[0].endpoint.as_deref(),
        Some("edge.example.net:51820")
    );

    // Create / edit / disable / delete a tunnel: the gateway sees each change within a second.
    let t = c.tunnel("blog.example.com", aid, "blog:80").await;
    let tpath = format!("/api/v1/tunnels/{}", t["id"]);
    let s = next_config(&mut g_ws, PUSH).await;
    assert_eq!(s.hostnames, ["app.example.com", "blog.example.com"]);
    assert_eq!(s.routes["blog.example.com"].port, 10001);
    assert_eq!(next_config(&mut a_ws, PUSH).await.services.len(), 2);

    c.patch(&tpath, json!({"hostname": "news.example.com"}))
        .await;
    let s = next_config(&mut g_ws, PUSH).await;
    assert_eq!(s.hostnames, ["app.example.com", "news.example.com"]);
    next_config(&mut a_ws, PUSH).await;

    c.patch(&tpath, json!({"target": "news:8080"})).await;
    let s = next_config(&mut a_ws, PUSH).await;
    assert!(s.services.iter().any(|svc| svc.target == "news:8080"));

    c.patch(&tpath, json!({"enabled": false})).await;
    assert_eq!(
        next_config(&mut g_ws, PUSH).await.hostnames,
        ["app.example.com"]
    );
    assert_eq!(next_config(&mut a_ws, PUSH).await.services.len(), 1);
    c.patch(&tpath, json!({"enabled": true})).await;
    assert_eq!(next_config(&mut g_ws, PUSH).await.hostnames.len(), 2);
    next_config(&mut a_ws, PUSH).await;

    let (st, _) = c.delete(&tpath).await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let s = next_config(&mut g_ws, PUSH).await;
    assert_eq!(s.hostnames, ["app.example.com"]);
    next_config(&mut a_ws, PUSH).await;

    // Disabling the gateway removes it from the agent's peers.
    c.patch(
        &format!("/api/v1/gateways/{gid}"),
        json!({"enabled": false}),
    )
    .await;
    assert!(next_config(&mut a_ws, PUSH).await.peers.is_empty());
    // The disabled gateway itself is told nothing but its identity (issue 14: no secrets).
    let off = next_config(&mut g_ws, PUSH).await;
    assert!(off.routes.is_empty() && off.peers.is_empty() && off.certificates.is_empty());
    assert_eq!(off.node_id, gid);
    c.patch(&format!("/api/v1/gateways/{gid}"), json!({"enabled": true}))
        .await;
    assert_eq!(next_config(&mut a_ws, PUSH).await.peers.len(), 1);
    assert_eq!(next_config(&mut g_ws, PUSH).await.hostnames.len(), 1);

    // A change that does not concern a node pushes nothing to it.
    let other = c.agent("other").await;
    c.tunnel("other.example.com", other["id"].as_i64().unwrap(), "x:1")
        .await;
    assert!(next_config(&mut g_ws, PUSH)
        .await
        .routes
        .contains_key("other.example.com"));
    assert!(
        tokio::time::timeout(Duration::from_millis(300), try_next_message(&mut a_ws))
            .await
            .is_err()
    );

    // Reconnecting with the current hash: Welcome and no Config.
    let hash = g_snap_hash(&c, &gtoken).await;
    a_ws.close(None).await.unwrap();
    let (mut g2, _, _) = c.node(&gtoken, NodeRole::Gateway, Some(hash)).await;
    assert!(
        tokio::time::timeout(Duration::from_millis(300), try_next_message(&mut g2))
            .await
            .is_err()
    );

    // Closing turns the agent offline (the gateway stays online with its second session).
    let apath = format!("/api/v1/agents/{aid}");
    eventually(Duration::from_secs(3), "agent offline", || async {
        status(&c, &apath).await == "offline"
    })
    .await;
    g_ws.close(None).await.unwrap();
    let gpath = format!("/api/v1/gateways/{gid}");
    assert_eq!(status(&c, &gpath).await, "online");
    drop(g2);
    eventually(Duration::from_secs(3), "gateway offline", || async {
        status(&c, &gpath).await == "offline"
    })
    .await;
    c.stop().await;
}

/// The current hash of a node's snapshot, through the pull endpoint.
async fn g_snap_hash(c: &Control, secret: &str) -> String {
    let res = c
        .http
        .get(c.url(PULL_CONFIG_PATH))
        .bearer_auth(secret)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    res.json::<kakuremichi_proto::ConfigSnapshot>()
        .await
        .unwrap()
        .config_hash
}

#[tokio::test]
async fn bad_sessions_are_refused() {
    let (_tmp, dir) = data_dir();
    let c = start(&dir).await;
    let agent = c.agent("home").await;
    let akey = agent["api_key"].as_str().unwrap().to_string();
    let gtoken = c.gateway("edge").await["token"]
        .as_str()
        .unwrap()
        .to_string();

    // Bad or missing credentials: 401 before the upgrade; personal tokens are not node credentials.
    for secret in ["kma_bogus", "kmg_bogus", "nothing", c.token.as_str()] {
        match c.ws(secret).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(res)) => assert_eq!(res.status(), 401),
            other => panic!("expected 401, got {:?}", other.map(|_| ())),
        }
    }
    let res = c
        .http
        .get(c.url("/api/v1/connect"))
        .bearer_auth(&akey)
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.status(),
        StatusCode::BAD_REQUEST,
        "not a WebSocket upgrade"
    );

    let expect_error = |code: &'static str| {
        move |msg: Option<ControlMessage>| match msg {
            Some(ControlMessage::Error { code: got, message }) => {
                assert_eq!(got, code, "{message}");
                assert!(!message.is_empty());
            }
            other => panic!("expected error {code}, got {other:?}"),
        }
    };

    // Wrong protocol version.
    let mut ws = c.ws(&akey).await.unwrap();
    let hello = json!({"type": "hello", "protocol_version": 999, "role": "agent", "public_key": random_key(),
        "config_hash": null, "software": "future"});
    ws.send(Message::text(hello.to_string())).await.unwrap();
    let msg = within(PUSH, try_next_message(&mut ws)).await;
    let Some(ControlMessage::Error { ref message, .. }) = msg else {
        panic!("{msg:?}")
    };
    assert!(message.contains("999"), "{message}");
    expect_error("version_mismatch")(msg);
    assert!(
        within(PUSH, try_next_message(&mut ws)).await.is_none(),
        "closed after the error"
    );

    // Garbage, binary, role mismatch, bad key.
    let mut ws = c.ws(&akey).await.unwrap();
    ws.send(Message::text("{not json")).await.unwrap();
    expect_error("bad_hello")(within(PUSH, try_next_message(&mut ws)).await);
    let mut ws = c.ws(&akey).await.unwrap();
    ws.send(Message::binary(vec![1, 2, 3])).await.unwrap();
    expect_error("bad_hello")(within(PUSH, try_next_message(&mut ws)).await);
    let mut ws = c.ws(&gtoken).await.unwrap();
    send_hello(&mut ws, NodeRole::Agent, &random_key(), None).await;
    expect_error("bad_hello")(within(PUSH, try_next_message(&mut ws)).await);
    for key in ["short", "AAAA", &"A".repeat(44)] {
        let mut ws = c.ws(&akey).await.unwrap();
        send_hello(&mut ws, NodeRole::Agent, key, None).await;
        expect_error("bad_hello")(within(PUSH, try_next_message(&mut ws)).await);
    }
    let (_, a_json) = c.get(&format!("/api/v1/agents/{}", agent["id"])).await;
    assert_eq!(
        (&a_json["public_key"], &a_json["status"]),
        (&serde_json::Value::Null, &json!("offline"))
    );

    // After the handshake: binary and oversized frames end the session with an error.
    let (mut ws, _, _) = c.node(&akey, NodeRole::Agent, None).await;
    next_config(&mut ws, PUSH).await;
    ws.send(Message::binary(vec![0; 16])).await.unwrap();
    expect_error("bad_message")(within(PUSH, try_next_message(&mut ws)).await);
    let (mut ws, _, _) = c.node(&akey, NodeRole::Agent, None).await;
    next_config(&mut ws, PUSH).await;
    let _ = ws.send(Message::text("x".repeat(200_000))).await;
    let msg = within(PUSH, try_next_message(&mut ws)).await;
    assert!(matches!(msg, Some(ControlMessage::Error { .. })), "{msg:?}");

    // Applied is accepted; deleting a connected agent revokes its session.
    let (mut ws, _, _) = c.node(&akey, NodeRole::Agent, None).await;
    let snap = next_config(&mut ws, PUSH).await;
    let applied = kakuremichi_proto::NodeMessage::Applied {
        config_hash: snap.config_hash,
    };
    ws.send(Message::text(applied.encode())).await.unwrap();
    let (s, _) = c.delete(&format!("/api/v1/agents/{}", agent["id"])).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    expect_error("revoked")(within(PUSH, try_next_message(&mut ws)).await);
    assert!(within(PUSH, try_next_message(&mut ws)).await.is_none());
    c.stop().await;
}

#[tokio::test]
async fn silent_node_goes_offline() {
    let (_tmp, dir) = data_dir();
    let mut config = kakuremichi_testkit::control::config(&dir);
    config.heartbeat_interval = Duration::from_millis(200);
    config.heartbeat_timeout = Duration::from_millis(600);
    let c = start_with(config).await;
    let agent = c.agent("home").await;
    let akey = agent["api_key"].as_str().unwrap().to_string();
    let path = format!("/api/v1/agents/{}", agent["id"]);

    // A node that answers pings (by reading) stays online past the timeout.
    let (mut ws, _, _) = c.node(&akey, NodeRole::Agent, None).await;
    next_config(&mut ws, PUSH).await;
    let quiet = tokio::time::timeout(Duration::from_millis(1000), try_next_message(&mut ws)).await;
    assert!(
        quiet.is_err(),
        "no message and no close while pongs flow: {quiet:?}"
    );
    assert_eq!(status(&c, &path).await, "online");

    // A node that stops reading (so never answers pings) is dropped within the timeout.
    let (mut silent, _, _) = c.node(&akey, NodeRole::Agent, None).await;
    next_config(&mut silent, PUSH).await;
    drop(ws);
    eventually(Duration::from_secs(3), "silent agent offline", || async {
        status(&c, &path).await == "offline"
    })
    .await;
    drop(silent);
    c.stop().await;
}

#[tokio::test]
async fn pull_endpoint_and_restart() {
    let (_tmp, dir) = data_dir();
    let c = start(&dir).await;
    let agent = c.agent("home").await;
    let aid = agent["id"].as_i64().unwrap();
    let gtoken = c.gateway("edge").await["token"]
        .as_str()
        .unwrap()
        .to_string();
    c.tunnel("app.example.com", aid, "localhost:8080").await;

    let pull = |secret: String, etag: Option<String>| {
        let mut req = c.http.get(c.url(PULL_CONFIG_PATH)).bearer_auth(secret);
        if let Some(etag) = etag {
            req = req.header("if-none-match", etag);
        }
        async move { req.send().await.unwrap() }
    };
    let res = pull(gtoken.clone(), None).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["cache-control"], "no-cache");
    let etag = res.headers()["etag"].to_str().unwrap().to_string();
    let snap: kakuremichi_proto::ConfigSnapshot = res.json().await.unwrap();
    assert!(snap.is_intact());
    assert_eq!(etag, format!("\"{}\"", snap.config_hash));
    assert_eq!(snap.hostnames, ["app.example.com"]);

    for tag in [etag.clone(), snap.config_hash.clone(), "*".to_string()] {
        let res = pull(gtoken.clone(), Some(tag)).await;
        assert_eq!(res.status(), StatusCode::NOT_MODIFIED);
        assert!(res.bytes().await.unwrap().is_empty());
    }
    c.tunnel("blog.example.com", aid, "blog:80").await;
    let res = pull(gtoken.clone(), Some(etag.clone())).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_ne!(res.headers()["etag"].to_str().unwrap(), etag);
    let res = pull(agent["api_key"].as_str().unwrap().to_string(), None).await;
    let agent_snap: kakuremichi_proto::ConfigSnapshot = res.json().await.unwrap();
    assert_eq!(agent_snap.services.len(), 2);
    for bad in ["kmg_wrong", "", "kmt_wrong"] {
        assert_eq!(
            pull(bad.to_string(), None).await.status(),
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(
        c.http
            .get(c.url(PULL_CONFIG_PATH))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::UNAUTHORIZED
    );

    // Restart on the same data dir: everything survives, the admin is not duplicated, the old
    // personal token and the node credentials still work.
    let token = c.token.clone();
    c.stop().await;
    let mut config = kakuremichi_testkit::control::config(&dir);
    config.admin_email = Some("someone-else@example.com".into());
    let c2 = start_with_token(config, token).await;
    let (_, tunnels) = c2.get("/api/v1/tunnels").await;
    assert_eq!(tunnels.as_array().unwrap().len(), 2);
    let (_, a) = c2.get(&format!("/api/v1/agents/{aid}")).await;
    assert_eq!(
        (&a["name"], &a["status"]),
        (&json!("home"), &json!("offline"))
    );
    assert!(c2
        .login("someone-else@example.com", ADMIN_PASSWORD)
        .await
        .is_none());
    assert!(c2.login(ADMIN_EMAIL, ADMIN_PASSWORD).await.is_some());
    let res = c2
        .http
        .get(c2.url(PULL_CONFIG_PATH))
        .bearer_auth(&gtoken)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    c2.stop().await;

    let db = kakuremichi_testkit::roles::test_db(&dir).await;
    let (users,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM users")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(users, 1);
    db.close().await;
}

/// Starts Control whose admin already exists (another bootstrap e-mail is configured): log in
/// is not possible with it, so reuse a token from the previous run.
async fn start_with_token(config: kakuremichi_control::ControlConfig, token: String) -> Control {
    kakuremichi_testkit::control::start_reusing(config, token).await
}

#[tokio::test]
async fn clean_shutdown_closes_sessions() {
    let (_tmp, dir) = data_dir();
    let c = start(&dir).await;
    let akey = c.agent("home").await["api_key"]
        .as_str()
        .unwrap()
        .to_string();
    let (mut ws, _, _) = c.node(&akey, NodeRole::Agent, None).await;
    next_config(&mut ws, PUSH).await;
    let stopping = tokio::spawn(c.stop());
    let closed = within(Duration::from_secs(5), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
                Some(Ok(_)) => continue,
                _ => return None,
            }
        }
    })
    .await;
    assert_eq!(closed, Some(1001), "going-away close frame");
    within(Duration::from_secs(15), stopping).await.unwrap();
}
