//! The reverse proxy end to end in-process: real HTTP clients → `proxy::serve` → a test dialer
//! (plain TCP standing in for the tunnel) → a hyper origin. Fixtures live in `proxy/`.

#[path = "proxy/origin.rs"]
mod origin;
#[path = "proxy/support.rs"]
mod support;

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{stream, SinkExt, StreamExt};
use http::{Request, StatusCode, Version};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use kakuremichi_gateway::proxy::{self, ProxyConfig};
use kakuremichi_proto::GatewayRoute;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Error as WsError, Message};

use support::{
    agent, assert_streamed, get, pattern_checksum, pattern_chunk, raw_exchange, read_until, setup,
    within, Checksum, Echo, Gateway, HangingDialer, DEADLINE,
};

#[tokio::test]
async fn routes_by_host() {
    let s = setup(ProxyConfig::default()).await;
    let client = s.gw.client();
    let echo = Echo::from(get(&client, &s.gw.url("a.test", "/echo?x=1")).await).await;
    assert_eq!((echo.field("origin"), echo.field("method")), ("a", "GET"));
    assert_eq!(echo.field("path"), "/echo?x=1");
    let echo = Echo::from(get(&client, &s.gw.url("b.test", "/echo")).await).await;
    assert_eq!(echo.field("origin"), "b");

    // Case, port and a trailing dot do not matter for routing; the origin sees the Host as sent.
    let request = client
        .get(s.gw.url("a.test", "/echo"))
        .header("host", "B.Test.:8080");
    let echo = Echo::from(within("b via Host", request.send()).await.unwrap()).await;
    assert_eq!(echo.field("origin"), "b");
    assert_eq!(echo.header("host"), ["B.Test.:8080"]);
}

#[tokio::test]
async fn unknown_or_missing_host_is_404() {
    let s = setup(ProxyConfig::default()).await;
    let response = get(&s.gw.client(), &s.gw.url("unknown.test", "/")).await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        response.headers()["content-type"],
        "text/html; charset=utf-8"
    );
    let page = response.text().await.unwrap();
    assert!(
        page.contains("<code>unknown.test</code> is not served by this gateway"),
        "{page}"
    );

    for request in [
        "GET / HTTP/1.1\r\nConnection: close\r\n\r\n",
        "GET / HTTP/1.0\r\n\r\n",
    ] {
        let answer = raw_exchange(s.gw.addr, request).await;
        assert!(
            answer.starts_with("HTTP/1.1 404") || answer.starts_with("HTTP/1.0 404"),
            "{answer}"
        );
    }
    let answer = raw_exchange(
        s.gw.addr,
        "GET / HTTP/1.1\r\nHost: a b\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert_eq!(s.dialer.dials(), 0);
}

#[tokio::test]
async fn refused_dial_is_502() {
    let s = setup(ProxyConfig::default()).await;
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let nothing_listening = closed.local_addr().unwrap();
    drop(closed);
    s.gw.route(&[("a.test", s.dialer.map(agent(9, 9), nothing_listening))]);
    let response = get(&s.gw.client(), &s.gw.url("a.test", "/echo")).await;
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    assert!(response
        .text()
        .await
        .unwrap()
        .contains("could not be reached"));
}

#[tokio::test]
async fn hanging_dial_is_502_after_connect_timeout() {
    let config = ProxyConfig {
        connect_timeout: Duration::from_millis(300),
        ..ProxyConfig::default()
    };
    let gw = Gateway::start(Arc::new(HangingDialer), config).await;
    let route = GatewayRoute {
        tunnel_id: 1,
        agent_id: 1,
        agent_address: *agent(1, 80).ip(),
        port: 80,
        https_redirect: false,
        hsts_max_age: 0,
        replicas: Vec::new(),
        access: Default::default(),
        limits: Default::default(),
        plain_http_only: false,
        tcp_access: false,
        basic_auth: None,
        log_requests: false,
        error_page: None,
    };
    gw.route(&[("a.test", route)]);
    let started = Instant::now();
    let response = get(&gw.client(), &gw.url("a.test", "/echo")).await;
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(300) && elapsed < Duration::from_secs(5),
        "{elapsed:?}"
    );
}

#[tokio::test]
async fn basic_auth_asks_for_the_password_and_the_app_never_sees_it() {
    let s = setup(ProxyConfig::default()).await;
    let mut route = s.dialer.map(agent(1, 8001), s.a.addr);
    route.basic_auth = Some(kakuremichi_proto::RouteBasicAuth::new(
        "ann:correct horse",
        [3; 16],
    ));
    s.gw.route(&[("a.test", route)]);
    let client = s.gw.client();
    let ask = |user: Option<(&str, &str)>| {
        let request = client.get(s.gw.url("a.test", "/echo"));
        match user {
            Some((u, p)) => request.basic_auth(u, Some(p)),
            None => request,
        }
    };
    for refused in [None, Some(("ann", "wrong")), Some(("bob", "correct horse"))] {
        let response = within("refused", ask(refused).send()).await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{refused:?}");
        let challenge = response.headers()["www-authenticate"].to_str().unwrap();
        assert!(challenge.starts_with("Basic realm="), "{challenge}");
    }
    let admitted = within("admitted", ask(Some(("ann", "correct horse"))).send())
        .await
        .unwrap();
    let echo = Echo::from(admitted).await;
    assert!(echo.header("authorization").is_empty(), "{}", echo.0);
}

#[tokio::test]
async fn forwarding_headers_added_and_hop_by_hop_stripped() {
    let s = setup(ProxyConfig::default()).await;
    let request =
        s.gw.client()
            .get(s.gw.url("a.test", "/echo"))
            .header("host", "a.test")
            .header("connection", "x-secret, keep-alive")
            .header("x-secret", "1")
            .header("keep-alive", "timeout=5")
            .header("proxy-authorization", "Basic Zm9vOmJhcg==")
            .header("x-forwarded-for", "203.0.113.7")
            .header("forwarded", "for=203.0.113.7")
            .header("x-kept", "yes");
    let response = within("echo", request.send()).await.unwrap();
    assert!(
        response.headers().get("x-origin-secret").is_none(),
        "response hop-by-hop leaked"
    );
    assert_eq!(response.headers()["x-origin"], "a");
    let echo = Echo::from(response).await;
    for stripped in [
        "x-secret",
        "keep-alive",
        "proxy-authorization",
        "connection",
    ] {
        assert!(
            echo.header(stripped).is_empty(),
            "{stripped} reached the origin:\n{}",
            echo.0
        );
    }
    assert_eq!(echo.header("x-kept"), ["yes"]);
    assert_eq!(echo.header("host"), ["a.test"]);
    assert_eq!(echo.header("x-forwarded-for"), ["203.0.113.7, 127.0.0.1"]);
    assert_eq!(echo.header("x-forwarded-proto"), ["http"]);
    assert_eq!(echo.header("x-forwarded-host"), ["a.test"]);
    assert_eq!(
        echo.header("forwarded"),
        ["for=203.0.113.7, for=127.0.0.1;host=a.test;proto=http"]
    );
}

#[tokio::test]
async fn http2_prior_knowledge_client() {
    let s = setup(ProxyConfig::default()).await;
    let client =
        s.gw.client_builder()
            .http2_prior_knowledge()
            .build()
            .unwrap();
    let response = get(&client, &s.gw.url("a.test", "/echo?h2")).await;
    assert_eq!(response.version(), Version::HTTP_2);
    let echo = Echo::from(response).await;
    assert_eq!(echo.field("origin"), "a");
    assert_eq!(echo.field("path"), "/echo?h2");
    let authority = format!("a.test:{}", s.gw.addr.port());
    assert_eq!(echo.header("host"), [authority.as_str()]);
    assert_eq!(echo.header("x-forwarded-host"), [authority.as_str()]);

    let upload = client
        .post(s.gw.url("b.test", "/upload"))
        .body(pattern_chunk(0, 100_000));
    let response = within("h2 upload", upload.send()).await.unwrap();
    let (count, digest) = pattern_checksum(100_000);
    assert_eq!(
        response.text().await.unwrap(),
        format!("{count} {digest:016x}")
    );
}

const BIG: u64 = 256 << 20;

#[tokio::test]
async fn large_upload_streams_through() {
    let s = setup(ProxyConfig::default()).await;
    let started = s.a.upload_started.clone();
    let chunks = stream::unfold((0u64, Some(started)), |(offset, started)| async move {
        if offset >= BIG {
            return None;
        }
        // After the first chunk the rest waits until the origin has seen bytes: a proxy that
        // buffered the request body whole would deadlock here.
        let started = match (offset, started) {
            (0, started) => started,
            (_, Some(started)) => {
                within("origin sees the first upload bytes", started.notified()).await;
                None
            }
            (_, None) => None,
        };
        let chunk = pattern_chunk(offset, BIG - offset);
        let next = offset + chunk.len() as u64;
        Some((Ok::<_, io::Error>(chunk), (next, started)))
    });
    let body = reqwest::Body::wrap_stream(chunks);
    let request = s.gw.client().post(s.gw.url("a.test", "/upload")).body(body);
    let response = within("256 MiB upload", request.send()).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let (count, digest) = pattern_checksum(BIG);
    assert_eq!(
        response.text().await.unwrap(),
        format!("{count} {digest:016x}")
    );
    assert_streamed(BIG);
}

#[tokio::test]
async fn large_download_streams_through() {
    let s = setup(ProxyConfig::default()).await;
    let response = get(
        &s.gw.client(),
        &s.gw.url("b.test", &format!("/bytes?n={BIG}")),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.bytes_stream();
    let mut sum = Checksum::default();
    within("256 MiB download", async {
        while let Some(chunk) = body.next().await {
            sum.update(&chunk.unwrap());
        }
    })
    .await;
    assert_eq!(sum.finish(), pattern_checksum(BIG));
    assert_streamed(BIG);
}

#[tokio::test]
async fn sse_events_arrive_as_sent() {
    let s = setup(ProxyConfig::default()).await;
    let mut response = get(&s.gw.client(), &s.gw.url("a.test", "/sse")).await;
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut seen = String::new();
    // The origin sends the second event only after `sse_go`, so the first must arrive alone.
    read_until(&mut response, &mut seen, "data: one\n\n").await;
    assert!(!seen.contains("two"));
    s.a.sse_go.notify_one();
    read_until(&mut response, &mut seen, "data: two\n\n").await;
    assert_eq!(within("sse end", response.chunk()).await.unwrap(), None);
}

#[tokio::test]
async fn websocket_echo_through_proxy() {
    let s = setup(ProxyConfig::default()).await;
    let stream = TcpStream::connect(s.gw.addr).await.unwrap();
    let request = "ws://a.test/ws".into_client_request().unwrap();
    let (mut ws, response) = within(
        "ws handshake",
        tokio_tungstenite::client_async(request, stream),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    for message in [
        Message::text("hello, origin"),
        Message::binary(vec![0u8, 1, 2, 255]),
    ] {
        ws.send(message.clone()).await.unwrap();
        let echoed = within("ws echo", ws.next()).await.unwrap().unwrap();
        assert_eq!(echoed, message);
    }
    ws.close(None).await.unwrap();
}

#[tokio::test]
async fn refused_upgrade_passes_the_response_through() {
    let s = setup(ProxyConfig::default()).await;
    let stream = TcpStream::connect(s.gw.addr).await.unwrap();
    let request = "ws://a.test/echo".into_client_request().unwrap();
    match within(
        "ws handshake",
        tokio_tungstenite::client_async(request, stream),
    )
    .await
    {
        Err(WsError::Http(response)) => assert_eq!(response.status(), StatusCode::OK),
        other => panic!("expected the origin's 200, got {other:?}"),
    }
}

#[tokio::test]
async fn route_replacement_applies_to_the_next_request() {
    let s = setup(ProxyConfig::default()).await;
    let client = s.gw.client();
    let url = s.gw.url("a.test", "/echo");
    assert_eq!(
        Echo::from(get(&client, &url).await).await.field("origin"),
        "a"
    );
    s.gw.route(&[("a.test", s.dialer.map(agent(2, 8002), s.b.addr))]);
    assert_eq!(
        Echo::from(get(&client, &url).await).await.field("origin"),
        "b"
    );
    let response = get(&client, &s.gw.url("b.test", "/echo")).await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn trailers_pass_through_http1_and_http2() {
    let s = setup(ProxyConfig::default()).await;
    let request = || {
        Request::get("http://a.test/trailers")
            .header("host", "a.test")
            .header("te", "trailers")
            .body(Empty::<Bytes>::new())
            .unwrap()
    };
    let io = TokioIo::new(TcpStream::connect(s.gw.addr).await.unwrap());
    let (mut h1, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
    tokio::spawn(conn);
    let io = TokioIo::new(TcpStream::connect(s.gw.addr).await.unwrap());
    let (mut h2, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
        .await
        .unwrap();
    tokio::spawn(conn);

    for response in [
        h1.send_request(request()).await,
        h2.send_request(request()).await,
    ] {
        let body = within("trailers body", response.unwrap().into_body().collect())
            .await
            .unwrap();
        assert_eq!(
            body.trailers().expect("trailers lost")["x-checksum"],
            "abc123"
        );
        assert_eq!(body.to_bytes(), "hello");
    }
}

#[tokio::test]
async fn admin_health_endpoint() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(proxy::serve_admin(listener, std::future::pending()));
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let response = get(&client, &format!("http://{addr}/healthz")).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.text().await.unwrap(), "ok");
    assert_eq!(
        get(&client, &format!("http://{addr}/nope")).await.status(),
        StatusCode::NOT_FOUND
    );
    let metrics: serde_json::Value = client
        .get(format!("http://{addr}/metrics"))
        .header("accept", "application/json")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // At least the admin accept loop and the connection asking.
    assert!(metrics["tasks"].as_u64().unwrap() >= 2, "{metrics}");
    let post = within("post", client.post(format!("http://{addr}/healthz")).send()).await;
    assert_eq!(post.unwrap().status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn shutdown_stops_accepting_and_drains_in_flight() {
    let mut s = setup(ProxyConfig::default()).await;
    let mut response = get(&s.gw.client(), &s.gw.url("a.test", "/sse")).await;
    let mut seen = String::new();
    read_until(&mut response, &mut seen, "data: one\n\n").await;

    s.gw.shutdown();
    kakuremichi_testkit::eventually(DEADLINE, "listener closes", || async {
        TcpStream::connect(s.gw.addr).await.is_err()
    })
    .await;
    assert!(
        !s.gw.task.is_finished(),
        "serve returned with a request in flight"
    );

    s.a.sse_go.notify_one();
    read_until(&mut response, &mut seen, "data: two\n\n").await;
    within("serve returns after the drain", &mut s.gw.task)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn slow_headers_are_cut_off() {
    let config = ProxyConfig {
        header_read_timeout: Duration::from_millis(300),
        ..ProxyConfig::default()
    };
    let s = setup(config).await;
    let answer = raw_exchange(s.gw.addr, "GET /echo HTTP/1.1\r\nHost: a.test\r\n").await;
    assert!(!answer.contains("200 OK"), "{answer}");
    assert_eq!(s.dialer.dials(), 0);
}

#[tokio::test]
async fn connections_over_the_cap_wait_for_a_slot() {
    let s = setup(ProxyConfig {
        max_connections: 1,
        ..ProxyConfig::default()
    })
    .await;
    let request = || {
        Request::get("/echo")
            .header("host", "a.test")
            .body(Empty::<Bytes>::new())
            .unwrap()
    };
    let io = TokioIo::new(TcpStream::connect(s.gw.addr).await.unwrap());
    let (mut first, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
    let first_conn = tokio::spawn(conn);
    let response = within("first", first.send_request(request()))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    let io = TokioIo::new(TcpStream::connect(s.gw.addr).await.unwrap());
    let (mut second, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
    tokio::spawn(conn);
    let mut pending = Box::pin(second.send_request(request()));
    // Negative check: while the first connection holds the only slot, nothing is served.
    let early = tokio::time::timeout(Duration::from_millis(300), &mut pending).await;
    assert!(early.is_err(), "second connection served over the cap");

    first_conn.abort();
    let response = within("second after the first closed", pending)
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn odd_requests_get_clean_answers() {
    let s = setup(ProxyConfig::default()).await;
    let close = "Connection: close\r\n\r\n";
    let addr = s.gw.addr;
    // Not a forward proxy.
    let answer = raw_exchange(
        addr,
        &format!("CONNECT b.test:443 HTTP/1.1\r\nHost: b.test:443\r\n{close}"),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 405"), "{answer}");
    // Absolute-form overrides Host (RFC 9112 §3.2.2).
    let answer = raw_exchange(
        addr,
        &format!("GET http://b.test/echo HTTP/1.1\r\nHost: a.test\r\n{close}"),
    )
    .await;
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.contains("origin b"),
        "{answer}"
    );
    // Asterisk-form reaches the origin, which has no such path.
    let answer = raw_exchange(
        addr,
        &format!("OPTIONS * HTTP/1.1\r\nHost: a.test\r\n{close}"),
    )
    .await;
    assert!(
        answer.starts_with("HTTP/1.1 404") && answer.contains("no such path"),
        "{answer}"
    );
    // Garbage gets an error from hyper, not a hang or a crash; the Gateway keeps serving.
    let answer = raw_exchange(addr, "\x16\x03\x01 not http at all\r\n\r\n").await;
    assert!(!answer.contains("200"), "{answer}");
    let echo = Echo::from(get(&s.gw.client(), &s.gw.url("a.test", "/echo")).await).await;
    assert_eq!(echo.field("origin"), "a");
}
