//! `kakuremichi hello`: a tiny origin for demos, tests and benchmarks, like
//! `cloudflared --hello-world` with a few httpbin-style endpoints:
//!
//! - `GET /` — a page showing what reached the origin (host, path, forwarding headers);
//! - `GET /healthz` — `ok`;
//! - `GET /echo` — the request's method, path and headers as JSON;
//! - `GET /bytes?n=N` — N bytes of a fixed pattern (byte i is `i % 251`), streamed;
//! - `POST /upload` — reads the body as it streams and answers `{"bytes":N,"sha256":"..."}`;
//! - `GET /sse?n=N&interval_ms=T` — N server-sent events, T ms apart;
//! - `GET /ws` — a WebSocket that echoes every message;
//! - `GET /status?code=N` — a one-line answer with status N (200–599).

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{header, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use sha2::{Digest, Sha256};
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

type Body = BoxBody<Bytes, std::io::Error>;

/// Serves until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    name: String,
    shutdown: impl Future<Output = ()>,
) {
    let name = Arc::new(name);
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(_) => continue,
            },
        };
        let _ = stream.set_nodelay(true);
        let name = name.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| respond(req, name.clone()));
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Byte `i` of the `/bytes` pattern; tests check downloads against it.
pub fn pattern_byte(i: u64) -> u8 {
    (i % 251) as u8
}

/// Fills `buf` with the pattern starting at offset `start`.
pub fn fill_pattern(start: u64, buf: &mut [u8]) {
    for (k, b) in buf.iter_mut().enumerate() {
        *b = pattern_byte(start + k as u64);
    }
}

async fn respond(req: Request<Incoming>, name: Arc<String>) -> Result<Response<Body>, Infallible> {
    let query = |key: &str| -> Option<u64> {
        req.uri()
            .query()?
            .split('&')
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
    };
    let resp = match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "text/plain", "ok\n".into()),
        "/echo" => echo(&req),
        "/bytes" => bytes(query("n").unwrap_or(1024)),
        "/sse" => sse(query("n").unwrap_or(3), query("interval_ms").unwrap_or(100)),
        "/upload" => upload(req).await,
        "/ws" => websocket(req),
        // Any status a test wants the origin to answer (a 503 from the app, ...).
        "/status" => match query("code")
            .and_then(|c| u16::try_from(c).ok())
            .and_then(|c| StatusCode::from_u16(c).ok())
        {
            Some(code) if c_ok(code) => text(code, "text/plain", format!("{code}\n")),
            _ => text(
                StatusCode::BAD_REQUEST,
                "text/plain",
                "code=200..599\n".into(),
            ),
        },
        _ => page(&req, &name),
    };
    Ok(resp)
}

/// A status `/status` may answer: a final one (1xx would need a protocol switch).
fn c_ok(code: StatusCode) -> bool {
    (200..600).contains(&code.as_u16())
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .body(
            Full::new(Bytes::from(body))
                .map_err(|e: Infallible| match e {})
                .boxed(),
        )
        .expect("static response")
}

fn echo(req: &Request<Incoming>) -> Response<Body> {
    let headers: serde_json::Map<String, serde_json::Value> = req
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into()))
        .collect();
    let body = serde_json::json!({
        "method": req.method().as_str(),
        "path": req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/"),
        "version": format!("{:?}", req.version()),
        "headers": headers,
    });
    text(StatusCode::OK, "application/json", body.to_string())
}

fn bytes(n: u64) -> Response<Body> {
    const CHUNK: u64 = 64 * 1024;
    let chunks = futures_util::stream::unfold(0u64, move |sent| async move {
        if sent >= n {
            return None;
        }
        let len = CHUNK.min(n - sent) as usize;
        let mut buf = vec![0u8; len];
        fill_pattern(sent, &mut buf);
        Some((
            Ok::<_, std::io::Error>(Frame::data(Bytes::from(buf))),
            sent + len as u64,
        ))
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, n)
        .body(BodyExt::boxed(StreamBody::new(chunks)))
        .expect("static response")
}

fn sse(n: u64, interval_ms: u64) -> Response<Body> {
    let events = futures_util::stream::unfold(0u64, move |i| async move {
        if i >= n {
            return None;
        }
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(interval_ms)).await;
        }
        let event = format!("id: {i}\ndata: event {i}\n\n");
        Some((
            Ok::<_, std::io::Error>(Frame::data(Bytes::from(event))),
            i + 1,
        ))
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(BodyExt::boxed(StreamBody::new(events)))
        .expect("static response")
}

async fn upload(req: Request<Incoming>) -> Response<Body> {
    let mut body = req.into_body();
    let mut hasher = Sha256::new();
    let mut total = 0u64;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Some(data) = frame.data_ref() {
                    total += data.len() as u64;
                    hasher.update(data);
                }
            }
            Err(e) => {
                return text(
                    StatusCode::BAD_REQUEST,
                    "text/plain",
                    format!("body error: {e}\n"),
                )
            }
        }
    }
    let body = serde_json::json!({"bytes": total, "sha256": hex::encode(hasher.finalize())});
    text(StatusCode::OK, "application/json", body.to_string())
}

fn websocket(req: Request<Incoming>) -> Response<Body> {
    use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
    use tokio_tungstenite::tungstenite::protocol::Role;
    let key = req
        .headers()
        .get("sec-websocket-key")
        .map(|k| derive_accept_key(k.as_bytes()));
    let is_upgrade = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let Some(accept) = key.filter(|_| is_upgrade) else {
        return text(
            StatusCode::BAD_REQUEST,
            "text/plain",
            "expected a WebSocket upgrade\n".into(),
        );
    };
    tokio::spawn(async move {
        let Ok(upgraded) = hyper::upgrade::on(req).await else {
            return;
        };
        let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            TokioIo::new(upgraded),
            Role::Server,
            None,
        )
        .await;
        while let Some(Ok(msg)) = ws.next().await {
            if msg.is_text() || msg.is_binary() {
                if ws.send(msg).await.is_err() {
                    break;
                }
            } else if msg.is_close() {
                break;
            }
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "websocket")
        .header("sec-websocket-accept", accept)
        .body(
            Full::new(Bytes::new())
                .map_err(|e: Infallible| match e {})
                .boxed(),
        )
        .expect("static response")
}

fn page(req: &Request<Incoming>, name: &str) -> Response<Body> {
    let header = |h: &str| {
        req.headers()
            .get(h)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_string()
    };
    let host = req
        .uri()
        .authority()
        .map(|a| a.to_string())
        .unwrap_or_else(|| header("host"));
    let rows = [
        ("Host", host),
        ("Path", req.uri().path().to_string()),
        ("X-Forwarded-For", header("x-forwarded-for")),
        ("X-Forwarded-Proto", header("x-forwarded-proto")),
    ];
    let rows: String = rows
        .iter()
        .map(|(k, v)| format!("<tr><th>{k}</th><td>{}</td></tr>", escape(v)))
        .collect();
    let body = format!(
        "<!doctype html><html><head><meta charset=utf-8><meta name=viewport content=\"width=device-width\">\
         <title>Hello from {n}</title><style>body{{font-family:system-ui,sans-serif;max-width:40rem;margin:3rem auto;padding:0 1rem;color:#223}}\
         h1{{color:#0b6e4f}}th{{text-align:left;padding-right:1rem}}</style></head><body>\
         <h1>Hello from {n}</h1><p>This page was served by the origin behind your tunnel.</p><table>{rows}</table></body></html>\n",
        n = escape(name)
    );
    text(StatusCode::OK, "text/html; charset=utf-8", body)
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
