//! `tcp` tunnels with access control: no public port, only `/.kakuremichi/tcp` on the tunnel's
//! hostname over HTTPS, where a signed-in client (`kakuremichi access tcp`) opens a WebSocket
//! that carries one TCP connection to the tunnel's target, as binary messages. The access cookie
//! is checked before this (`access`), exactly as for an HTTP tunnel: without one the client gets
//! the same `302` to Control's sign-in, which is how the command knows it must sign in.
//!
//! The Agent is connected first, so a client whose target cannot be reached gets `502`, not a
//! WebSocket that closes at once. The bridge keeps the client's connection slot until it ends.

use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use http::header::{CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, UPGRADE};
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use kakuremichi_proto::{GatewayRoute, StreamRoute};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Message, Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;

use super::forward::{local, ProxyBody};
use super::headers::{self, ClientHost};
use super::pages::{escape, page};
use super::server::ClientConn;
use super::{Proxy, Scheme};

/// The one path a `tcp` tunnel with access control answers.
pub const TCP_PATH: &str = "/.kakuremichi/tcp";
/// Largest WebSocket message accepted from a client (the command sends at most 64 KiB).
const MAX_MESSAGE: usize = 1 << 20;
/// Bytes read from the target per message to the client.
const CHUNK: usize = 64 * 1024;

impl Proxy {
    /// Answers a request to a `tcp` tunnel with access control (the access check passed).
    pub(crate) async fn tcp_access(
        &self,
        mut req: Request<Incoming>,
        host: &ClientHost,
        route: &GatewayRoute,
        conn: ClientConn,
    ) -> Response<ProxyBody> {
        let hint = format!(
            "<b>{}</b> is a TCP tunnel for signed-in users: connect with <code>kakuremichi \
             access tcp --hostname {} --listen 127.0.0.1:PORT</code>.",
            escape(&host.name),
            escape(&host.name)
        );
        if conn.scheme != Scheme::Https {
            return local(page(
                StatusCode::FORBIDDEN,
                &format!("{hint} (HTTPS only.)"),
            ));
        }
        if req.uri().path() != TCP_PATH {
            return local(page(StatusCode::NOT_FOUND, &hint));
        }
        // The path without a WebSocket: 426, which also tells the command that its token
        // passed the access check (no target is touched).
        let key = req.headers().get(SEC_WEBSOCKET_KEY).cloned();
        let websocket = headers::upgrade_request(req.version(), req.headers()).is_some();
        let (Some(key), true) = (key, websocket) else {
            return local(page(StatusCode::UPGRADE_REQUIRED, &hint));
        };
        let stream_route = StreamRoute {
            tunnel_id: route.tunnel_id,
            targets: route.targets(),
            proxy_protocol: Default::default(),
            max_connections: None,
            limits: Default::default(),
            udp_idle_timeout: None,
        };
        let Some(upstream) = self.passthrough.splicer().connect(&stream_route).await else {
            return local(super::pages::bad_gateway());
        };
        let on_upgrade = hyper::upgrade::on(&mut req);
        let (peer, guard, name) = (conn.peer, conn.guard, host.name.clone());
        tokio::spawn(async move {
            let _guard = guard;
            match on_upgrade.await {
                Ok(upgraded) => {
                    let config = WebSocketConfig::default()
                        .max_message_size(Some(MAX_MESSAGE))
                        .max_frame_size(Some(MAX_MESSAGE));
                    let io = TokioIo::new(upgraded);
                    let ws = WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
                    tracing::debug!(host = %name, %peer, "tcp access connection open");
                    bridge(ws, upstream).await;
                    tracing::debug!(host = %name, %peer, "tcp access connection closed");
                }
                Err(e) => tracing::debug!(host = %name, error = %e, "tcp access upgrade failed"),
            }
        });
        let mut response = Response::new(Either::Right(Full::new(Bytes::new())));
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let h = response.headers_mut();
        h.insert(UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
        if let Ok(accept) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
            h.insert(SEC_WEBSOCKET_ACCEPT, accept);
        }
        response
    }
}

/// Binary messages from the WebSocket to `upstream` and `upstream`'s bytes back as binary
/// messages, each direction until its side closes (TCP's half-close: a client that has sent
/// everything still gets the rest of the answer). The Gateway's end of a `tcp` access
/// connection, and `kakuremichi access tcp`'s.
pub async fn bridge<S, U>(ws: WebSocketStream<S>, upstream: U)
where
    S: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let (mut to_client, mut from_client) = ws.split();
    let (mut up_read, mut up_write) = tokio::io::split(upstream);
    let inbound = async {
        while let Some(Ok(message)) = from_client.next().await {
            let data = match message {
                Message::Binary(data) => data,
                Message::Close(_) | Message::Text(_) => break,
                _ => continue, // pings are answered by the stream itself
            };
            if up_write.write_all(&data).await.is_err() {
                break;
            }
        }
        let _ = up_write.shutdown().await;
    };
    let outbound = async {
        let mut buf = vec![0u8; CHUNK];
        loop {
            match up_read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let data = Bytes::copy_from_slice(&buf[..n]);
                    if to_client.send(Message::Binary(data)).await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to_client.send(Message::Close(None)).await;
    };
    tokio::join!(inbound, outbound);
}
