//! A node of this release against a Control one release older (issue #18). The scripted Control
//! checks the hello exactly as the release before (protocol 2) does (protocol version 2 and no other field; it
//! never reads the version header), answers `Welcome` in version 2 and sends a snapshot: the
//! node takes the session and applies the snapshot. A Control two releases older (a `Welcome`
//! in a version this node no longer speaks) is refused: the node ends the session.

use futures_util::{SinkExt as _, StreamExt as _};
use kakuremichi_node::{ControlLink, LinkConfig, LinkEvent, NodeState, Secret};
use kakuremichi_proto::{
    decode_node, ConfigSnapshot, ControlMessage, NodeMessage, NodeRole, OLDEST_PROTOCOL_VERSION,
    PROTOCOL_HEADER, PROTOCOL_VERSION,
};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::Message;

/// The fields of protocol 2's hello: the release before refuses any other (and any version but 2).
const OLD_HELLO_FIELDS: [&str; 6] = [
    "config_hash",
    "protocol_version",
    "public_key",
    "role",
    "software",
    "type",
];

/// A node's link to a Control on `listener`, started; its events.
fn start_node(listener: &TcpListener, dir: &std::path::Path) -> mpsc::Receiver<LinkEvent> {
    let url = format!("http://{}", listener.local_addr().unwrap());
    let state = NodeState::open(Some(dir.to_path_buf()), NodeRole::Agent).unwrap();
    let key = kakuremichi_tunnel::PrivateKey::generate().public_key();
    let config = LinkConfig::new(url, Secret::new("kma_test"), NodeRole::Agent, key);
    let (events_tx, events) = mpsc::channel(16);
    tokio::spawn(ControlLink::new(config, state, None).run(events_tx));
    events
}

/// Accepts the node's WebSocket; the version header it sent, and the socket.
async fn accept(
    listener: &TcpListener,
) -> (
    Option<String>,
    tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
) {
    let (tcp, _) = listener.accept().await.unwrap();
    let mut header = None;
    // The callback's signature is tungstenite's (its error type is an HTTP response).
    #[allow(clippy::result_large_err)]
    let callback = |req: &Request, res: Response| {
        header = req
            .headers()
            .get(PROTOCOL_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        Ok(res)
    };
    let ws = tokio_tungstenite::accept_hdr_async(tcp, callback)
        .await
        .unwrap();
    (header, ws)
}

async fn next_text(
    ws: &mut tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
) -> Option<String> {
    let read = async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => return Some(t.as_str().to_string()),
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
                Some(Ok(_)) => continue,
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("the node answers or closes")
}

#[tokio::test]
async fn a_node_works_with_a_control_one_release_older() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut events = start_node(&listener, dir.path());
    let (header, mut ws) = accept(&listener).await;
    // It offers its newest version in the header, which the release before does not read...
    assert_eq!(header, Some(PROTOCOL_VERSION.to_string()));
    // ...and writes its hello as the release before expects it: version 2, nothing else.
    let hello = next_text(&mut ws).await.expect("a hello");
    let fields: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&hello).unwrap();
    let mut names: Vec<&str> = fields.keys().map(String::as_str).collect();
    names.sort_unstable();
    assert_eq!(names, OLD_HELLO_FIELDS, "{hello}");
    assert_eq!(fields["type"], "hello");
    assert_eq!(
        fields["protocol_version"], OLDEST_PROTOCOL_VERSION,
        "{hello}"
    );
    let welcome = ControlMessage::Welcome {
        protocol_version: OLDEST_PROTOCOL_VERSION,
        node_id: 7,
    };
    ws.send(Message::text(welcome.encode())).await.unwrap();
    let snapshot = ConfigSnapshot {
        node_id: 7,
        ..ConfigSnapshot::default()
    }
    .seal();
    let config = ControlMessage::Config {
        snapshot: snapshot.clone(),
    };
    ws.send(Message::text(config.encode())).await.unwrap();
    let answer = next_text(&mut ws).await.expect("an answer to the config");
    assert_eq!(
        decode_node(&answer).unwrap(),
        NodeMessage::Applied {
            config_hash: snapshot.config_hash.clone()
        }
    );
    let connected = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match events.recv().await {
                Some(LinkEvent::Connected { node_id }) => return node_id,
                Some(_) => continue,
                None => panic!("the link ended"),
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(connected, 7);
}

#[tokio::test]
async fn a_control_two_releases_older_is_refused() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let _events = start_node(&listener, dir.path());
    let (_, mut ws) = accept(&listener).await;
    next_text(&mut ws).await.expect("a hello");
    let welcome = format!(
        r#"{{"type":"welcome","protocol_version":{},"node_id":7}}"#,
        OLDEST_PROTOCOL_VERSION - 1
    );
    ws.send(Message::text(welcome)).await.unwrap();
    // The node ends the session rather than guess.
    assert_eq!(next_text(&mut ws).await, None);
}
