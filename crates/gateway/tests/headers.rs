//! What a client can make the origin believe through headers (issue #14, point 11): the user
//! header in other spellings and in trailers never reaches the origin, and only WebSocket
//! upgrades are forwarded.

#[allow(dead_code)]
#[path = "proxy/origin.rs"]
mod origin;
#[allow(dead_code)]
#[path = "proxy/support.rs"]
mod support;

use std::convert::Infallible;

use bytes::Bytes;
use futures_util::stream;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use kakuremichi_gateway::proxy::ProxyConfig;
use tokio::net::TcpStream;

use support::{raw_exchange, setup, within, Echo};

#[tokio::test]
async fn user_header_in_underscore_spelling_never_reaches_the_origin() {
    let s = setup(ProxyConfig::default()).await;
    let request = "GET /echo HTTP/1.1\r\nHost: a.test\r\n\
                   X_Kakuremichi_User: evil@example.com\r\n\
                   x-kakuremichi_USER: evil2@example.com\r\n\
                   X-Kakuremichi-User: evil3@example.com\r\n\
                   X-Kakuremichi-Users: kept\r\n\
                   Connection: close\r\n\r\n";
    let answer = raw_exchange(s.gw.addr, request).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let echo = Echo(answer);
    for forged in [
        "x_kakuremichi_user",
        "x-kakuremichi_user",
        "x-kakuremichi-user",
    ] {
        assert!(
            echo.header(forged).is_empty(),
            "{forged} reached the origin:\n{}",
            echo.0
        );
    }
    assert_eq!(echo.header("x-kakuremichi-users"), ["kept"]);
}

#[tokio::test]
async fn user_header_in_http1_trailers_never_reaches_the_origin() {
    let s = setup(ProxyConfig::default()).await;
    let request = "POST /trailers-echo HTTP/1.1\r\nHost: a.test\r\n\
                   Transfer-Encoding: chunked\r\n\
                   Trailer: X-Kakuremichi-User, X_Kakuremichi_User, X-Checksum\r\n\
                   Connection: close\r\n\r\n\
                   5\r\nhello\r\n0\r\n\
                   X-Kakuremichi-User: evil@example.com\r\n\
                   X_Kakuremichi_User: evil2@example.com\r\n\
                   X-Checksum: abc\r\n\r\n";
    let answer = raw_exchange(s.gw.addr, request).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // The origin saw the trailers (so they do travel), without the forged ones.
    assert!(answer.contains("trailer x-checksum: abc"), "{answer}");
    assert!(!answer.to_lowercase().contains("kakuremichi"), "{answer}");
}

#[tokio::test]
async fn user_header_in_http2_trailers_never_reaches_the_origin() {
    let s = setup(ProxyConfig::default()).await;
    let io = TokioIo::new(TcpStream::connect(s.gw.addr).await.unwrap());
    let (mut h2, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut trailers = HeaderMap::new();
    trailers.insert("x-kakuremichi-user", "evil@example.com".parse().unwrap());
    trailers.insert("x_kakuremichi_user", "evil2@example.com".parse().unwrap());
    trailers.insert("x-checksum", "abc".parse().unwrap());
    let frames = [
        Frame::data(Bytes::from_static(b"hello")),
        Frame::trailers(trailers),
    ];
    let body = StreamBody::new(stream::iter(frames.map(Ok::<_, Infallible>)));
    let request = Request::post("http://a.test/trailers-echo")
        .header(
            "trailer",
            "x-kakuremichi-user, x_kakuremichi_user, x-checksum",
        )
        .body(body)
        .unwrap();
    let response = within("h2 request", h2.send_request(request))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = within("h2 body", response.into_body().collect())
        .await
        .unwrap()
        .to_bytes();
    let seen = String::from_utf8_lossy(&body);
    assert!(seen.contains("trailer x-checksum: abc"), "{seen}");
    assert!(!seen.contains("kakuremichi"), "{seen}");
}

#[tokio::test]
async fn only_websocket_upgrades_are_forwarded() {
    let s = setup(ProxyConfig::default()).await;
    for upgrade in ["h2c", "websocket, h2c", "TLS/1.2", "websocket/13"] {
        let request = format!(
            "GET /echo HTTP/1.1\r\nHost: a.test\r\nConnection: Upgrade, HTTP2-Settings, close\r\n\
             Upgrade: {upgrade}\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\nX-Probe: 1\r\n\r\n"
        );
        let answer = raw_exchange(s.gw.addr, &request).await;
        // Proxied as a plain request: the origin's 200, no upgrade asked of it.
        assert!(answer.starts_with("HTTP/1.1 200"), "{upgrade}: {answer}");
        let echo = Echo(answer);
        assert_eq!(echo.header("x-probe"), ["1"]);
        for stripped in ["upgrade", "connection", "http2-settings"] {
            assert!(
                echo.header(stripped).is_empty(),
                "{upgrade}: {stripped} reached the origin:\n{}",
                echo.0
            );
        }
    }
}
