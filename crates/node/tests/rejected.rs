//! A node that cannot apply a snapshot says so (`Rejected`) and keeps its last good one, on the
//! same session, against a scripted Control (issue 14, point 1).

use futures_util::{SinkExt as _, StreamExt as _};
use kakuremichi_node::{ControlLink, LinkConfig, LinkEvent, NodeState, Secret};
use kakuremichi_proto::{
    decode_node, ConfigSnapshot, ControlMessage, NodeMessage, NodeRole, WgPeer, MAX_MESSAGE_BYTES,
    PROTOCOL_VERSION,
};
use std::net::Ipv4Addr;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

type Ws = WebSocketStream<tokio::net::TcpStream>;

fn snapshot(peer_name: String) -> ConfigSnapshot {
    ConfigSnapshot {
        node_id: 1,
        wg_address: Ipv4Addr::new(10, 77, 1, 1),
        peers: vec![WgPeer {
            id: 2,
            name: peer_name,
            public_key: "k".repeat(44),
            wg_address: Ipv4Addr::new(10, 77, 0, 2),
            endpoint: None,
        }],
        ..ConfigSnapshot::default()
    }
    .seal()
}

async fn send_config(ws: &mut Ws, snapshot: &ConfigSnapshot) {
    let msg = ControlMessage::Config {
        snapshot: snapshot.clone(),
    };
    ws.send(Message::text(msg.encode())).await.unwrap();
}

/// The node's next message (pings skipped), within 10 s; panics if the session ends.
async fn next(ws: &mut Ws) -> NodeMessage {
    let read = async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => return decode_node(t.as_str()).unwrap(),
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                    panic!("the node ended the session instead of answering")
                }
                Some(Ok(_)) => continue,
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("an answer from the node")
}

#[tokio::test]
async fn a_snapshot_that_cannot_be_applied_is_reported_and_the_last_good_one_kept() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let state = NodeState::open(Some(dir.path().to_path_buf()), NodeRole::Gateway).unwrap();
    let key = kakuremichi_tunnel::PrivateKey::generate().public_key();
    let config = LinkConfig::new(url, Secret::new("kmg_test"), NodeRole::Gateway, key);
    let (events_tx, mut events) = mpsc::channel(16);
    let session = tokio::spawn(ControlLink::new(config, state.clone(), None).run(events_tx));

    let (tcp, _) = listener.accept().await.unwrap();
    let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
    assert!(matches!(next(&mut ws).await, NodeMessage::Hello { .. }));
    let welcome = ControlMessage::Welcome {
        protocol_version: PROTOCOL_VERSION,
        node_id: 1,
    };
    ws.send(Message::text(welcome.encode())).await.unwrap();

    // A good snapshot: applied.
    let good = snapshot("good".into());
    send_config(&mut ws, &good).await;
    let applied = NodeMessage::Applied {
        config_hash: good.config_hash.clone(),
    };
    assert_eq!(next(&mut ws).await, applied);

    // Over the message limit: rejected by hash, with the reason; the session stays.
    let big = snapshot("x".repeat(MAX_MESSAGE_BYTES));
    send_config(&mut ws, &big).await;
    match next(&mut ws).await {
        NodeMessage::Rejected {
            config_hash,
            reason,
        } => {
            assert_eq!(config_hash.as_deref(), Some(big.config_hash.as_str()));
            assert!(reason.contains("exceeds"), "{reason}");
        }
        other => panic!("expected a rejection, got {other:?}"),
    }

    // Damaged (its hash does not match its content): rejected too.
    let mut damaged = snapshot("damaged".into());
    damaged.node_id = 9;
    send_config(&mut ws, &damaged).await;
    assert!(matches!(
        next(&mut ws).await,
        NodeMessage::Rejected { config_hash: Some(h), .. } if h == damaged.config_hash
    ));

    // The role only ever saw good snapshots; the next one on the same session is applied and
    // cached.
    let next_good = snapshot("next".into());
    send_config(&mut ws, &next_good).await;
    assert!(matches!(next(&mut ws).await, NodeMessage::Applied { .. }));
    let mut seen = Vec::new();
    while let Ok(Some(event)) =
        tokio::time::timeout(Duration::from_millis(200), events.recv()).await
    {
        if let LinkEvent::Config(s) = event {
            seen.push(s.config_hash.clone());
        }
    }
    assert_eq!(seen, vec![good.config_hash, next_good.config_hash.clone()]);
    let cached = state.cached_config().unwrap();
    assert_eq!(cached.config_hash, next_good.config_hash);
    session.abort();
}
