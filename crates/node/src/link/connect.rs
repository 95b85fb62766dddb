//! Opening one session of the link: the authenticated WebSocket handshake, with a refusal by
//! Control (wrong credential) told apart from Control being unreachable, then the node's `Hello`.

use super::{End, LinkConfig};
use futures_util::SinkExt;
use kakuremichi_proto::message::MAX_PROBE_BYTES;
use kakuremichi_proto::{
    NodeMessage, NodeRole, OLDEST_PROTOCOL_VERSION, PROTOCOL_HEADER, PROTOCOL_VERSION,
};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Request;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// One session's WebSocket.
pub(super) type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long the TCP, TLS and WebSocket handshakes may take together.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// Opens the WebSocket to Control, presenting the node's credential.
pub(super) async fn connect(url: &str, config: &LinkConfig) -> Result<Ws, End> {
    let request = request(url, config)?;
    // Frames up to the probe limit are read whole, so a snapshot over the message limit is
    // refused by name (and reported) instead of breaking the connection over and over.
    let ws_config = WebSocketConfig::default()
        .max_message_size(Some(MAX_PROBE_BYTES))
        .max_frame_size(Some(MAX_PROBE_BYTES));
    let connect = tokio_tungstenite::connect_async_with_config(request, Some(ws_config), false);
    match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
        Err(_) => Err(End::Lost("connecting to Control timed out".into())),
        Ok(Err(tungstenite::Error::Http(resp))) => Err(http_refusal(resp.status(), config.role)),
        Ok(Err(e)) => Err(End::Lost(format!("cannot reach Control: {e}"))),
        Ok(Ok((ws, _))) => Ok(ws),
    }
}

/// The upgrade request, with the credential as a bearer token.
fn request(url: &str, config: &LinkConfig) -> Result<Request, End> {
    let mut request = url
        .into_client_request()
        .map_err(|e| End::Refused(format!("bad Control URL: {e}")))?;
    let bearer = format!("Bearer {}", config.credential.expose());
    let value = http::HeaderValue::from_str(&bearer).map_err(|_| {
        End::Refused("the credential contains characters not allowed in a header".into())
    })?;
    let headers = request.headers_mut();
    headers.insert(http::header::AUTHORIZATION, value);
    // The newest protocol version this node speaks; its hello is in the oldest, which a Control
    // of the release before reads as always (it ignores this header).
    headers.insert(PROTOCOL_HEADER, http::HeaderValue::from(PROTOCOL_VERSION));
    Ok(request)
}

/// Control answered the upgrade with plain HTTP: a refusal of the credential, or something in
/// the way (a proxy, a Control that is starting).
fn http_refusal(status: http::StatusCode, role: NodeRole) -> End {
    if status == http::StatusCode::UNAUTHORIZED || status == http::StatusCode::FORBIDDEN {
        let setting = match role {
            NodeRole::Gateway => "GATEWAY_TOKEN",
            NodeRole::Agent => "API_KEY",
        };
        End::Refused(format!(
            "Control rejected this node's credential (HTTP {status}); check {setting}"
        ))
    } else {
        End::Lost(format!(
            "Control answered HTTP {status} instead of a WebSocket"
        ))
    }
}

/// Introduces the node: its role, key, and the snapshot it already holds.
pub(super) async fn hello(
    ws: &mut Ws,
    config: &LinkConfig,
    held_hash: Option<String>,
) -> Result<(), End> {
    let hello = NodeMessage::Hello {
        protocol_version: OLDEST_PROTOCOL_VERSION,
        role: config.role,
        public_key: config.public_key.to_base64(),
        config_hash: held_hash,
        software: format!("kakuremichi {}", env!("CARGO_PKG_VERSION")),
    };
    ws.send(Message::text(hello.encode()))
        .await
        .map_err(|e| End::Lost(format!("sending hello: {e}")))
}
