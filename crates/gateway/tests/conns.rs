//! Holding the Gateway with connections (issue #14, point 5): idle and slow clients from one
//! address, connections that never send a byte, idle HTTP/2 and WebSocket connections, stalled
//! request bodies and HTTP/2 stream limits. Each test shortens the timeout it checks.

#[allow(dead_code)]
#[path = "proxy/origin.rs"]
mod origin;
#[allow(dead_code)]
#[path = "proxy/support.rs"]
mod support;

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{stream, SinkExt, StreamExt};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use kakuremichi_gateway::proxy::ProxyConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Message};

use support::{setup, within};

/// Long enough for any timeout set below to fire on a loaded 2-core machine, short enough that a
/// Gateway without the timeout fails the test quickly.
const CLOSE_DEADLINE: Duration = Duration::from_secs(5);
const SHORT: Duration = Duration::from_millis(300);

const ATTACKER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const OTHER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);

async fn connect_from(ip: Ipv4Addr, to: SocketAddr) -> io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    // Ports left in TIME_WAIT by an earlier run must not make the bind fail.
    socket.set_reuseaddr(true)?;
    socket.bind(SocketAddr::from((ip, 0)))?;
    socket.connect(to).await
}

/// Raises this process's open-file limit towards `want` (as far as the hard limit allows) and
/// returns the soft limit now in force.
fn raise_fd_limit(want: u64) -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a local, fully initialised struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 0;
        }
        if limit.rlim_cur < want {
            limit.rlim_cur = want.min(limit.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        }
    }
    limit.rlim_cur
}

/// Reads (and discards) until the Gateway closes `stream`; how long that took.
async fn closed_by_gateway(stream: &mut TcpStream, what: &str) -> Duration {
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    let read_to_close = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(CLOSE_DEADLINE, read_to_close)
        .await
        .unwrap_or_else(|_| panic!("the Gateway did not close {what} within {CLOSE_DEADLINE:?}"));
    started.elapsed()
}

/// Whether the Gateway has closed `stream` (without waiting).
fn is_closed(stream: &TcpStream) -> bool {
    let mut buf = [0u8; 64];
    match stream.try_read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(err) => err.kind() != io::ErrorKind::WouldBlock,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_slowloris_from_one_address_leave_room_for_others() {
    const ATTACK: usize = 5_000;
    let fds = raise_fd_limit(3 * ATTACK as u64);
    assert!(
        fds >= 2 * ATTACK as u64 + 500,
        "this test needs an open-file limit of {} (ulimit -n), it has {fds}",
        2 * ATTACK + 500
    );
    // A listener cap below the attack's size, as 11,000 connections were against 10,000.
    let config = ProxyConfig {
        max_connections: 1_000,
        ..ProxyConfig::default()
    };
    let per_ip = config.max_connections_per_ip;
    let s = setup(config).await;
    let addr = s.gw.addr;

    // A slowloris: headers trickled byte by byte, never finished.
    let mut slow = connect_from(ATTACKER, addr).await.unwrap();
    let slowloris = tokio::spawn(async move {
        let head = b"GET /echo HTTP/1.1\r\nHost: a.test\r\nX-Slow: ";
        for byte in head.iter().chain(std::iter::repeat(&b'a')) {
            if slow.write_all(&[*byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    // Idle connections that never send a byte. Connects beyond what the Gateway takes hang in
    // a full backlog, so each gets a second.
    let attempts = stream::iter(0..ATTACK)
        .map(|_| tokio::time::timeout(Duration::from_secs(1), connect_from(ATTACKER, addr)))
        .buffer_unordered(200)
        .collect::<Vec<_>>()
        .await;
    let (mut idle, mut reached) = (Vec::new(), 0);
    for attempt in attempts {
        match attempt {
            Ok(Ok(stream)) => idle.push(stream),
            // Refused by a Gateway that closes what is over a client's cap.
            Ok(Err(err)) if err.kind() == io::ErrorKind::ConnectionReset => {}
            Ok(Err(err)) => panic!("cannot connect from {ATTACKER}: {err}"),
            Err(_) => continue, // still in the backlog
        }
        reached += 1;
    }
    assert!(
        reached > per_ip,
        "only {reached} connections reached the Gateway"
    );

    let started = Instant::now();
    let served = async {
        let mut client = connect_from(OTHER, addr).await?;
        let request = "GET /echo HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n";
        client.write_all(request.as_bytes()).await?;
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).await?;
        io::Result::Ok(String::from_utf8_lossy(&answer).into_owned())
    };
    let answer = tokio::time::timeout(Duration::from_secs(10), served).await;
    let elapsed = started.elapsed();
    println!("another address served after {elapsed:?} under the attack");
    let answer = answer
        .unwrap_or_else(|_| panic!("another address not served within 10 s"))
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(elapsed < Duration::from_secs(1), "served after {elapsed:?}");

    // The attacker keeps at most its share (the slowloris among it); the rest were closed.
    let what = format!("fewer than {per_ip} idle connections held by one address");
    kakuremichi_testkit::eventually(CLOSE_DEADLINE, &what, || async {
        idle.iter().filter(|c| !is_closed(c)).count() < per_ip
    })
    .await;
    slowloris.abort();
}

#[tokio::test]
async fn silent_connection_is_closed_at_the_header_timeout() {
    let s = setup(ProxyConfig {
        header_read_timeout: SHORT,
        ..ProxyConfig::default()
    })
    .await;
    let mut silent = TcpStream::connect(s.gw.addr).await.unwrap();
    let took = closed_by_gateway(&mut silent, "a connection that sent nothing").await;
    assert!(took >= SHORT - Duration::from_millis(50), "{took:?}");
}

#[tokio::test]
async fn idle_http2_connection_is_closed_after_the_idle_timeout() {
    let s = setup(ProxyConfig {
        idle_timeout: SHORT,
        ..ProxyConfig::default()
    })
    .await;
    let io = TokioIo::new(TcpStream::connect(s.gw.addr).await.unwrap());
    let (mut h2, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    let request = Request::get("http://a.test/echo")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = within("h2 request", h2.send_request(request))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    within("h2 body", response.into_body().collect())
        .await
        .unwrap();
    let idle_from = Instant::now();
    tokio::time::timeout(CLOSE_DEADLINE, conn)
        .await
        .expect("the idle HTTP/2 connection was not closed")
        .unwrap()
        .ok();
    let took = idle_from.elapsed();
    assert!(took >= SHORT - Duration::from_millis(50), "{took:?}");
}

#[tokio::test]
async fn stalled_request_body_is_cut_with_408_but_a_slow_one_goes_through() {
    let s = setup(ProxyConfig {
        body_timeout: SHORT,
        ..ProxyConfig::default()
    })
    .await;
    // Slow but steady: a chunk every 100 ms for 1 s, longer in all than the body timeout.
    let chunks = stream::iter(0..10).then(|i| async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        Ok::<_, io::Error>(Bytes::from(vec![i as u8; 10]))
    });
    let upload =
        s.gw.client()
            .post(s.gw.url("a.test", "/upload"))
            .body(reqwest::Body::wrap_stream(chunks));
    let response = within("slow upload", upload.send()).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.text().await.unwrap().starts_with("100 "));

    // Stalled: 10 of 100 announced bytes, then nothing.
    let mut stream = TcpStream::connect(s.gw.addr).await.unwrap();
    let request = "POST /upload HTTP/1.1\r\nHost: a.test\r\nContent-Length: 100\r\n\r\n0123456789";
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let read = stream.read_to_end(&mut answer);
    let _ = tokio::time::timeout(CLOSE_DEADLINE, read)
        .await
        .expect("a stalled body held the request open");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
}

#[tokio::test]
async fn idle_websocket_is_closed_but_a_busy_one_is_not() {
    let s = setup(ProxyConfig {
        websocket_idle_timeout: SHORT,
        ..ProxyConfig::default()
    })
    .await;
    let stream = TcpStream::connect(s.gw.addr).await.unwrap();
    let request = "ws://a.test/ws".into_client_request().unwrap();
    let (mut ws, _) = within(
        "ws handshake",
        tokio_tungstenite::client_async(request, stream),
    )
    .await
    .unwrap();
    // Busy for longer than the idle timeout: a message every 100 ms.
    for i in 0..6 {
        let message = Message::text(format!("message {i}"));
        ws.send(message.clone()).await.unwrap();
        let echoed = within("ws echo", ws.next()).await.unwrap().unwrap();
        assert_eq!(echoed, message);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let idle_from = Instant::now();
    let end = tokio::time::timeout(CLOSE_DEADLINE, async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(end.is_ok(), "the idle WebSocket was not closed");
    let took = idle_from.elapsed();
    assert!(took >= SHORT - Duration::from_millis(150), "{took:?}");
}

#[tokio::test]
async fn http2_streams_are_capped_per_connection() {
    let s = setup(ProxyConfig {
        h2_max_streams: 2,
        ..ProxyConfig::default()
    })
    .await;
    let io = TokioIo::new(TcpStream::connect(s.gw.addr).await.unwrap());
    let (h2, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
        .await
        .unwrap();
    tokio::spawn(conn);
    let sse = || {
        let mut h2 = h2.clone();
        let request = Request::get("http://a.test/sse")
            .body(Empty::<Bytes>::new())
            .unwrap();
        tokio::spawn(async move { h2.send_request(request).await })
    };
    // Two event streams hold both streams of the connection open.
    let first = within("first stream", sse()).await.unwrap().unwrap();
    let second = within("second stream", sse()).await.unwrap().unwrap();
    let mut third = sse();
    let early = tokio::time::timeout(SHORT, &mut third).await;
    assert!(early.is_err(), "a third stream was served over the cap");

    // One stream ends (its origin sends the last event): the third is served.
    s.a.sse_go.notify_one();
    let done = |r: http::Response<hyper::body::Incoming>| within("stream end", r.collect());
    let (a, b) = (done(first), done(second));
    tokio::select! {
        _ = a => {}
        _ = b => {}
    }
    let third = within("third stream after one ended", third)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(third.status(), StatusCode::OK);
}

#[tokio::test]
async fn rapid_reset_flood_ends_the_connection() {
    const FLOOD: usize = 10_000;
    let s = setup(ProxyConfig::default()).await;
    let tcp = TcpStream::connect(s.gw.addr).await.unwrap();
    let (mut client, conn) = h2::client::handshake(tcp).await.unwrap();
    let mut conn = tokio::spawn(conn);
    // The client keeps the connection open throughout: only the Gateway can end it.
    let _held = client.clone();
    // Streams opened and at once reset (CVE-2023-44487), as fast as the client can.
    let mut sent = 0;
    while sent < FLOOD && !conn.is_finished() {
        client = match client.ready().await {
            Ok(client) => client,
            Err(_) => break,
        };
        let request = Request::get("http://a.test/echo").body(()).unwrap();
        let Ok((_response, mut send)) = client.send_request(request, false) else {
            break;
        };
        send.send_reset(h2::Reason::CANCEL);
        sent += 1;
        if sent % 100 == 0 {
            // Let the frames go out and the Gateway answer, as on a real network.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    let ended = tokio::time::timeout(CLOSE_DEADLINE, &mut conn).await;
    assert!(
        ended.is_ok(),
        "the Gateway kept a connection that reset {sent} streams"
    );
    assert!(sent < FLOOD, "the Gateway took all {FLOOD} reset streams");
}

#[tokio::test]
async fn streams_reset_after_reaching_the_origin_end_the_connection() {
    let s = setup(ProxyConfig::default()).await;
    let tcp = TcpStream::connect(s.gw.addr).await.unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.unwrap();
    let mut conn = tokio::spawn(conn);
    let _held = client.clone();
    // Each stream is reset only once the origin has its first byte: the Gateway accepted it
    // and sent it on, so h2's limit on streams reset before acceptance never counts it.
    let mut reset = 0;
    let flood = async {
        loop {
            let mut client = client.clone().ready().await?;
            let request = Request::post("http://a.test/upload").body(()).unwrap();
            let (_response, mut send) = client.send_request(request, false)?;
            send.send_data(Bytes::from_static(b"x"), false)?;
            s.a.upload_started.notified().await;
            send.send_reset(h2::Reason::CANCEL);
            reset += 1;
        }
        #[allow(unreachable_code)]
        Ok::<(), h2::Error>(())
    };
    let stopped = tokio::time::timeout(CLOSE_DEADLINE, flood).await;
    assert!(
        stopped.is_ok(),
        "the Gateway kept taking streams ({reset} reset)"
    );
    within("connection end", &mut conn).await.unwrap().ok();
    assert!(
        reset < 1_000,
        "{reset} streams reset before the Gateway said stop"
    );
}
