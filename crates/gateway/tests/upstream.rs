//! The Gateway's upstream connections to Agents, end to end in process: which client connection's
//! request goes over which upstream connection, how long one is kept and when one is not used
//! again. Fixtures are the proxy tests' own.

#[path = "proxy/origin.rs"]
#[allow(dead_code)]
mod origin;
#[path = "proxy/support.rs"]
#[allow(dead_code)]
mod support;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use http::StatusCode;
use kakuremichi_gateway::proxy::ProxyConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use support::{agent, get, setup, within, Echo};

#[tokio::test]
async fn upstream_connections_are_reused() {
    let s = setup(ProxyConfig::default()).await;
    let client = s.gw.client();
    for _ in 0..20 {
        Echo::from(get(&client, &s.gw.url("a.test", "/echo")).await).await;
    }
    let dials = s.dialer.dials();
    assert!(
        (1..=2).contains(&dials),
        "20 sequential requests took {dials} dials"
    );
}

#[tokio::test]
async fn each_client_connection_keeps_its_own_upstream_connection() {
    let s = setup(ProxyConfig::default()).await;
    // Two clients, so two client connections, whose requests take turns: a pool shared by both
    // would hand the one idle upstream connection to each in turn.
    let clients = [s.gw.client(), s.gw.client()];
    let mut peers = [HashSet::new(), HashSet::new()];
    for _ in 0..5 {
        for (client, seen) in clients.iter().zip(&mut peers) {
            let echo = Echo::from(get(client, &s.gw.url("a.test", "/echo")).await).await;
            seen.insert(echo.field("peer").to_owned());
        }
    }
    let [first, second] = &peers;
    assert_eq!(first.len(), 1, "one client's requests came over {first:?}");
    assert_eq!(
        second.len(),
        1,
        "one client's requests came over {second:?}"
    );
    assert!(first.is_disjoint(second), "two clients shared {first:?}");
    assert_eq!(s.dialer.dials(), 2);
}

#[tokio::test]
async fn a_quiet_client_connection_leaves_its_upstream_connection_to_others() {
    let s = setup(ProxyConfig::default()).await;
    let url = s.gw.url("a.test", "/echo");
    // Every client stays connected. Were a client connection to keep its upstream connection
    // until it closes, each new one would dial.
    let mut clients = vec![s.gw.client()];
    assert_eq!(get(&clients[0], &url).await.status(), StatusCode::OK);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let dials = s.dialer.dials();
        let client = s.gw.client();
        assert_eq!(get(&client, &url).await.status(), StatusCode::OK);
        clients.push(client);
        if s.dialer.dials() == dials {
            break; // an idle client's connection served it
        }
        assert!(
            Instant::now() < deadline,
            "{} clients, {} dials: no quiet client connection gave its upstream connection up",
            clients.len(),
            s.dialer.dials()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The clients whose connection went on serve on: from the shared pool, or a new dial.
    for client in &clients {
        assert_eq!(get(client, &url).await.status(), StatusCode::OK);
    }
}

#[tokio::test]
async fn an_upstream_connection_the_origin_closed_is_not_used_again() {
    let s = setup(ProxyConfig::default()).await;
    // An origin that closes each connection after its answer, without saying it will.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                let _ = stream.write_all(answer).await;
            });
        }
    });
    s.gw.route(&[("a.test", s.dialer.map(agent(3, 8003), origin))]);
    let client = s.gw.client();
    for i in 0..5 {
        let response = get(&client, &s.gw.url("a.test", "/")).await;
        assert_eq!(response.status(), StatusCode::OK, "request {i}");
        assert_eq!(within("body", response.text()).await.unwrap(), "ok");
    }
    assert_eq!(s.dialer.dials(), 5);
}
