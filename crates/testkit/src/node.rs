//! A node's side of a session with Control, spoken by hand: open the WebSocket with a
//! credential, send `Hello`, read what Control pushes. For tests of Control's node sessions.

use base64::Engine as _;
use futures_util::{SinkExt as _, StreamExt as _};
use kakuremichi_proto::{decode_control, ControlMessage, NodeMessage, NodeRole, PROTOCOL_VERSION};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Base64 of 32 random bytes, like a WireGuard public key.
pub fn random_key() -> String {
    let bytes: [u8; 32] = rand::random();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

pub async fn send_hello(ws: &mut Ws, role: NodeRole, key: &str, config_hash: Option<String>) {
    let hello = NodeMessage::Hello {
        protocol_version: PROTOCOL_VERSION,
        role,
        public_key: key.to_string(),
        config_hash,
        software: "tests".into(),
    };
    ws.send(Message::text(hello.encode())).await.unwrap();
}

/// The next message from Control (pings skipped); panics after 5 s or on close.
pub async fn next_message(ws: &mut Ws) -> ControlMessage {
    within(Duration::from_secs(5), try_next_message(ws))
        .await
        .expect("a message, not a close")
}

/// The next message, or `None` when the session closes.
pub async fn try_next_message(ws: &mut Ws) -> Option<ControlMessage> {
    loop {
        match ws.next().await? {
            Ok(Message::Text(text)) => {
                return Some(decode_control(text.as_str()).expect("valid message"))
            }
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => continue,
        }
    }
}

/// The snapshot of the next `Config`, within `limit`.
pub async fn next_config(ws: &mut Ws, limit: Duration) -> kakuremichi_proto::ConfigSnapshot {
    match within(limit, next_message(ws)).await {
        ControlMessage::Config { snapshot } => snapshot,
        other => panic!("expected config, got {other:?}"),
    }
}

/// `fut`'s output; panics ("timed out") after `limit`.
pub async fn within<T>(limit: Duration, fut: impl std::future::Future<Output = T>) -> T {
    crate::within(limit, "a node-session step", fut).await
}
