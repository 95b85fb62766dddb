//! The origin server behind the test "Agent": echo, byte streams, uploads, SSE, trailers and a
//! WebSocket echo, each built to make one proxy property observable.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{stream, SinkExt, StreamExt};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Notify};
use tokio_tungstenite::tungstenite::{handshake::derive_accept_key, protocol::Role};
use tokio_tungstenite::WebSocketStream;

use crate::support::{pattern_chunk, Checksum};

type Body = UnsyncBoxBody<Bytes, Infallible>;

/// An origin server behind an "Agent". `name` is reported by `/echo` so tests see who answered.
pub struct Origin {
    pub addr: SocketAddr,
    /// Released by the test to let `/sse` send its second event.
    pub sse_go: Arc<Notify>,
    /// Notified by `/upload` once the first body bytes have arrived.
    pub upload_started: Arc<Notify>,
}

#[derive(Clone)]
struct OriginState {
    name: &'static str,
    sse_go: Arc<Notify>,
    upload_started: Arc<Notify>,
}

impl Origin {
    pub async fn start(name: &'static str) -> Origin {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = OriginState {
            name,
            sse_go: Arc::default(),
            upload_started: Arc::default(),
        };
        let origin = Origin {
            addr,
            sse_go: state.sse_go.clone(),
            upload_started: state.upload_started.clone(),
        };
        tokio::spawn(async move {
            while let Ok((stream, peer)) = listener.accept().await {
                let state = state.clone();
                let service = hyper::service::service_fn(move |req| {
                    let state = state.clone();
                    async move { Ok::<_, Infallible>(route(state, peer, req).await) }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades(),
                );
            }
        });
        origin
    }
}

async fn route(state: OriginState, peer: SocketAddr, req: Request<Incoming>) -> Response<Body> {
    match req.uri().path() {
        "/echo" => echo(state.name, peer, &req),
        "/bytes" => download(query_n(&req)),
        "/upload" => upload(state, req).await,
        "/sse" => sse(state),
        "/trailers" => trailers(),
        "/trailers-echo" => trailers_echo(req).await,
        "/ws" => websocket(req),
        _ => respond(
            StatusCode::NOT_FOUND,
            HeaderMap::new(),
            full("no such path"),
        ),
    }
}

/// `origin <name>`, `method <m>`, `path <p>`, then `header <name>: <value>` lines.
/// `peer` is the connection the request came over (the Gateway's upstream connection).
fn echo(name: &str, peer: SocketAddr, req: &Request<Incoming>) -> Response<Body> {
    let mut text = format!(
        "origin {name}\npeer {peer}\nmethod {}\npath {}\n",
        req.method(),
        req.uri()
    );
    for (header, value) in req.headers() {
        text += &format!(
            "header {header}: {}\n",
            String::from_utf8_lossy(value.as_bytes())
        );
    }
    // Hop-by-hop headers of the origin's own hop, which must not reach the client.
    let mut headers = HeaderMap::new();
    headers.insert("connection", "x-origin-secret".parse().unwrap());
    headers.insert("x-origin-secret", "1".parse().unwrap());
    headers.insert("x-origin", name.parse().unwrap());
    respond(StatusCode::OK, headers, full(text))
}

fn query_n(req: &Request<Incoming>) -> u64 {
    let query = req.uri().query().unwrap_or("");
    query
        .strip_prefix("n=")
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn download(n: u64) -> Response<Body> {
    let chunks = stream::unfold(0u64, move |sent| async move {
        (sent < n).then(|| {
            let chunk = pattern_chunk(sent, n - sent);
            let len = chunk.len() as u64;
            (Ok(Frame::data(chunk)), sent + len)
        })
    });
    respond(
        StatusCode::OK,
        HeaderMap::new(),
        StreamBody::new(chunks).boxed_unsync(),
    )
}

async fn upload(state: OriginState, req: Request<Incoming>) -> Response<Body> {
    let mut body = req.into_body();
    let mut sum = Checksum::default();
    let mut started = false;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            return respond(
                StatusCode::BAD_REQUEST,
                HeaderMap::new(),
                full("body error"),
            );
        };
        if let Some(data) = frame.data_ref() {
            sum.update(data);
            if !started && !data.is_empty() {
                started = true;
                state.upload_started.notify_one();
            }
        }
    }
    let (count, digest) = sum.finish();
    respond(
        StatusCode::OK,
        HeaderMap::new(),
        full(format!("{count} {digest:016x}")),
    )
}

fn sse(state: OriginState) -> Response<Body> {
    let (tx, rx) = mpsc::channel::<Bytes>(4);
    tokio::spawn(async move {
        let _ = tx.send(Bytes::from_static(b"data: one\n\n")).await;
        state.sse_go.notified().await;
        let _ = tx.send(Bytes::from_static(b"data: two\n\n")).await;
    });
    let events = stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|event| (Ok(Frame::data(event)), rx))
    });
    let mut headers = HeaderMap::new();
    headers.insert("content-type", "text/event-stream".parse().unwrap());
    respond(
        StatusCode::OK,
        headers,
        StreamBody::new(events).boxed_unsync(),
    )
}

/// A chunked body with a trailer; hyper sends it only if the request said `TE: trailers`.
fn trailers() -> Response<Body> {
    let mut trailer = HeaderMap::new();
    trailer.insert("x-checksum", "abc123".parse().unwrap());
    let frames = [
        Frame::data(Bytes::from_static(b"hello")),
        Frame::trailers(trailer),
    ];
    let mut headers = HeaderMap::new();
    headers.insert("trailer", "x-checksum".parse().unwrap());
    let body = StreamBody::new(stream::iter(frames.map(Ok)));
    respond(StatusCode::OK, headers, body.boxed_unsync())
}

/// Reads the whole request body and answers with its trailers, one `trailer <name>: <value>`
/// line each, so tests see which trailers reached the origin.
async fn trailers_echo(req: Request<Incoming>) -> Response<Body> {
    let mut text = String::new();
    let mut body = req.into_body();
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            return respond(
                StatusCode::BAD_REQUEST,
                HeaderMap::new(),
                full("body error"),
            );
        };
        if let Some(trailers) = frame.trailers_ref() {
            for (name, value) in trailers {
                text += &format!(
                    "trailer {name}: {}\n",
                    String::from_utf8_lossy(value.as_bytes())
                );
            }
        }
    }
    respond(StatusCode::OK, HeaderMap::new(), full(text))
}

/// A WebSocket echo, with the handshake done by hand on hyper's upgrade.
fn websocket(mut req: Request<Incoming>) -> Response<Body> {
    let Some(key) = req.headers().get("sec-websocket-key") else {
        return respond(
            StatusCode::BAD_REQUEST,
            HeaderMap::new(),
            full("not a websocket"),
        );
    };
    let accept = derive_accept_key(key.as_bytes());
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let mut ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        while let Some(Ok(message)) = ws.next().await {
            if (message.is_text() || message.is_binary()) && ws.send(message).await.is_err() {
                break;
            }
        }
    });
    let mut headers = HeaderMap::new();
    headers.insert("connection", "upgrade".parse().unwrap());
    headers.insert("upgrade", "websocket".parse().unwrap());
    headers.insert("sec-websocket-accept", accept.parse().unwrap());
    respond(StatusCode::SWITCHING_PROTOCOLS, headers, full(""))
}

fn full(text: impl Into<String>) -> Body {
    http_body_util::Full::new(Bytes::from(text.into())).boxed_unsync()
}

fn respond(status: StatusCode, headers: HeaderMap, body: Body) -> Response<Body> {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}
