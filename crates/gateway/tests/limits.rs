//! Per-tunnel limits through the real proxy: IP allow / deny lists, per-client rate with burst,
//! the concurrency cap, and their counters on the admin `/metrics`. Clients are told apart by
//! their source address (127.0.0.2, 127.0.0.3, ...: all loopback on Linux). Fixtures are the
//! proxy tests' own.

#[path = "proxy/origin.rs"]
#[allow(dead_code)]
mod origin;
#[path = "proxy/support.rs"]
#[allow(dead_code)]
mod support;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use http::StatusCode;
use kakuremichi_gateway::proxy::{self, ProxyConfig};
use kakuremichi_proto::{GatewayRoute, RateLimit, RouteLimits};
use tokio::net::TcpListener;

use support::{agent, get, read_until, setup, within, Setup};

/// `a.test` as tunnel 7 with `limits`, `b.test` (tunnel 8) without.
fn limit_a(s: &Setup, limits: RouteLimits) {
    let mut a = s.dialer.map(agent(1, 8001), s.a.addr);
    a.tunnel_id = 7;
    a.limits = limits;
    let mut b: GatewayRoute = s.dialer.map(agent(2, 8002), s.b.addr);
    b.tunnel_id = 8;
    s.gw.route(&[("a.test", a), ("b.test", b)]);
}

fn nets(list: &[&str]) -> Vec<kakuremichi_proto::IpNet> {
    list.iter().map(|n| n.parse().unwrap()).collect()
}

/// A client whose connections come from `source`.
fn client_from(s: &Setup, source: &str) -> reqwest::Client {
    let source: IpAddr = source.parse().unwrap();
    s.gw.client_builder().local_address(source).build().unwrap()
}

async fn status(client: &reqwest::Client, url: &str) -> StatusCode {
    get(client, url).await.status()
}

/// The admin `/metrics` of a Gateway serving `s`'s routes.
async fn metrics(s: &Setup) -> serde_json::Value {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let routes = s.gw.routes.clone();
    tokio::spawn(proxy::serve_admin_with_limits(
        listener,
        routes,
        std::future::pending(),
    ));
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    client
        .get(format!("http://{addr}/metrics"))
        .header("accept", "application/json")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn denied_address_gets_403_and_never_reaches_the_origin() {
    let s = setup(ProxyConfig::default()).await;
    limit_a(
        &s,
        RouteLimits {
            // Deny wins over an allow-list that also covers the address.
            ip_allow: nets(&["127.0.0.0/8"]),
            ip_deny: nets(&["127.0.0.2/32", "::1/128"]),
            ..RouteLimits::default()
        },
    );
    let denied = client_from(&s, "127.0.0.2");
    let response = get(&denied, &s.gw.url("a.test", "/echo")).await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let page = response.text().await.unwrap();
    assert!(
        page.contains("<code>127.0.0.2</code> may not use this site"),
        "{page}"
    );
    assert_eq!(s.dialer.dials(), 0, "the origin saw a denied request");
    // ACME validations are never refused (unknown token: the Gateway's own 404).
    let acme = s.gw.url("a.test", "/.well-known/acme-challenge/tok");
    assert_eq!(status(&denied, &acme).await, StatusCode::NOT_FOUND);
    // Other tunnels and other addresses are not concerned.
    assert_eq!(
        status(&denied, &s.gw.url("b.test", "/echo")).await,
        StatusCode::OK
    );
    let other = client_from(&s, "127.0.0.3");
    assert_eq!(
        status(&other, &s.gw.url("a.test", "/echo")).await,
        StatusCode::OK
    );

    let m = metrics(&s).await;
    assert_eq!(
        m["refused"],
        serde_json::json!({"7": {"ip_denied": 1, "rate_limited": 0, "concurrency": 0}}),
        "{m}"
    );
}

#[tokio::test]
async fn allow_list_admits_only_listed_addresses() {
    let s = setup(ProxyConfig::default()).await;
    limit_a(
        &s,
        RouteLimits {
            ip_allow: nets(&["127.0.0.4/32", "10.0.0.0/8"]),
            ..RouteLimits::default()
        },
    );
    let url = s.gw.url("a.test", "/echo");
    assert_eq!(
        status(&client_from(&s, "127.0.0.4"), &url).await,
        StatusCode::OK
    );
    for unlisted in ["127.0.0.5", "127.0.0.1"] {
        assert_eq!(
            status(&client_from(&s, unlisted), &url).await,
            StatusCode::FORBIDDEN,
            "{unlisted}"
        );
    }
    assert_eq!(s.dialer.dials(), 1);
}

#[tokio::test]
async fn burst_above_the_rate_gets_429_while_another_client_is_served() {
    let s = setup(ProxyConfig::default()).await;
    let limits = RouteLimits {
        rate: Some(RateLimit {
            per_second: 1,
            burst: 3,
        }),
        ..RouteLimits::default()
    };
    limit_a(&s, limits.clone());
    let url = s.gw.url("a.test", "/echo");
    let greedy = client_from(&s, "127.0.0.2");
    let started = Instant::now();
    for i in 0..3 {
        assert_eq!(status(&greedy, &url).await, StatusCode::OK, "request {i}");
    }
    // One token a second: at most a few more can pass however slow this machine is.
    let mut refused = None;
    for _ in 0..10 {
        let response = get(&greedy, &url).await;
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            refused = Some(response);
            break;
        }
    }
    let refused = refused.unwrap_or_else(|| panic!("no 429 within {:?}", started.elapsed()));
    let retry: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(retry, 1, "one token a second");

    // Another address has its own bucket.
    let other = client_from(&s, "127.0.0.3");
    assert_eq!(status(&other, &url).await, StatusCode::OK);

    // The same limits in a new config keep the buckets: still refused.
    limit_a(&s, limits);
    assert_eq!(status(&greedy, &url).await, StatusCode::TOO_MANY_REQUESTS);
    let m = metrics(&s).await;
    assert!(
        m["refused"]["7"]["rate_limited"].as_u64().unwrap() >= 2,
        "{m}"
    );
}

#[tokio::test]
async fn requests_over_the_concurrency_cap_get_429_until_one_finishes() {
    let s = setup(ProxyConfig::default()).await;
    limit_a(
        &s,
        RouteLimits {
            max_concurrent_requests: Some(2),
            ..RouteLimits::default()
        },
    );
    let client = s.gw.client();
    // Two event streams stay open (their bodies unfinished) until the origin is released.
    let mut streams = Vec::new();
    for _ in 0..2 {
        let mut response = get(&client, &s.gw.url("a.test", "/sse")).await;
        assert_eq!(response.status(), StatusCode::OK);
        read_until(&mut response, &mut String::new(), "data: one").await;
        streams.push(response);
    }
    let third = get(&client, &s.gw.url("a.test", "/echo")).await;
    assert_eq!(third.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(third.headers()["retry-after"], "1");
    // The cap is the tunnel's: another tunnel is served.
    assert_eq!(
        status(&client, &s.gw.url("b.test", "/echo")).await,
        StatusCode::OK
    );

    s.a.sse_go.notify_waiters();
    for mut response in streams {
        read_until(&mut response, &mut String::new(), "data: two").await;
        while within("end of stream", response.chunk())
            .await
            .unwrap()
            .is_some()
        {}
    }
    // The finished bodies gave their slots back (as soon as the proxy has dropped them).
    let url = s.gw.url("a.test", "/echo");
    let what = "a slot free again after the streams ended";
    kakuremichi_testkit::eventually(Duration::from_secs(10), what, || async {
        status(&client, &url).await == StatusCode::OK
    })
    .await;
    let m = metrics(&s).await;
    assert!(
        m["refused"]["7"]["concurrency"].as_u64().unwrap() >= 1,
        "{m}"
    );
    assert_eq!(m["refused"]["7"]["rate_limited"], 0, "{m}");
}
