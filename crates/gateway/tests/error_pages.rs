//! Custom error pages through the real proxy: a tunnel's own page, the default (global) page
//! for tunnels without one and for unknown hosts, served as is with `{{request_id}}` and
//! `{{status}}` filled in. Fixtures are the proxy tests' own.

#[path = "proxy/origin.rs"]
#[allow(dead_code)]
mod origin;
#[path = "proxy/support.rs"]
#[allow(dead_code)]
mod support;

use std::collections::BTreeMap;

use http::StatusCode;
use kakuremichi_gateway::proxy::ProxyConfig;
use kakuremichi_proto::error_page_digest;

use support::{agent, get, setup, Setup};

const OWN: &str = "<html><body>own {{status}} id={{request_id}} {{other}}</body></html>";
const GLOBAL: &str = "<html><body>global {{status}} id={{request_id}}</body></html>";

/// `a.test` (tunnel 7) with its own page and `b.test` (tunnel 8) without, both pointing at
/// Agents the tunnel cannot reach (502); `global` set as the default page when asked.
fn unreachable_with_pages(s: &Setup, global: bool) {
    let mut a = s.dialer.map(agent(1, 8001), s.a.addr);
    a.tunnel_id = 7;
    a.agent_address = agent(9, 1).ip().to_owned();
    a.error_page = Some(error_page_digest(OWN));
    let mut b = s.dialer.map(agent(2, 8002), s.b.addr);
    b.tunnel_id = 8;
    b.agent_address = agent(9, 2).ip().to_owned();
    let pages = BTreeMap::from([
        (error_page_digest(OWN), OWN.to_string()),
        (error_page_digest(GLOBAL), GLOBAL.to_string()),
    ]);
    let default = global.then(|| error_page_digest(GLOBAL));
    s.gw.routes
        .error_pages()
        .replace(&pages, default.as_deref());
    s.gw.route(&[("a.test", a), ("b.test", b)]);
}

/// The status, `X-Request-Id` and body of a page, after checking its headers.
async fn page(s: &Setup, host: &str) -> (StatusCode, String, String) {
    let response = get(&s.gw.client(), &s.gw.url(host, "/")).await;
    let headers = response.headers();
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");
    assert_eq!(headers["cache-control"], "no-store");
    let id = headers["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(id.len(), 12, "{id}");
    (response.status(), id, response.text().await.unwrap())
}

#[tokio::test]
async fn a_tunnels_own_page_is_served_with_the_id_and_status_filled_in() {
    let s = setup(ProxyConfig::default()).await;
    unreachable_with_pages(&s, true);
    let (status, id, body) = page(&s, "a.test").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(
        body,
        format!("<html><body>own 502 id={id} {{{{other}}}}</body></html>")
    );
}

#[tokio::test]
async fn the_default_page_serves_tunnels_without_one_and_unknown_hosts() {
    let s = setup(ProxyConfig::default()).await;
    unreachable_with_pages(&s, true);
    let (status, id, body) = page(&s, "b.test").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(
        body,
        format!("<html><body>global 502 id={id}</body></html>")
    );

    let (status, id, body) = page(&s, "unknown.test").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        body,
        format!("<html><body>global 404 id={id}</body></html>")
    );
}

#[tokio::test]
async fn without_a_default_the_gateways_own_pages_stay() {
    let s = setup(ProxyConfig::default()).await;
    unreachable_with_pages(&s, false);
    let (status, id, body) = page(&s, "b.test").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(
        body.contains("502 Bad Gateway") && body.contains(&id),
        "{body}"
    );
    let (status, _, body) = page(&s, "unknown.test").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body.contains("is not served by this gateway"), "{body}");
    // The tunnel's own page still applies.
    let (_, id, body) = page(&s, "a.test").await;
    assert!(body.starts_with("<html><body>own 502 id=") && body.contains(&id));
}

#[tokio::test]
async fn answers_from_the_origin_are_never_replaced() {
    let s = setup(ProxyConfig::default()).await;
    let mut a = s.dialer.map(agent(1, 8001), s.a.addr);
    a.error_page = Some(error_page_digest(OWN));
    let pages = BTreeMap::from([(error_page_digest(OWN), OWN.to_string())]);
    s.gw.routes
        .error_pages()
        .replace(&pages, Some(&error_page_digest(OWN)));
    s.gw.route(&[("a.test", a)]);
    let response = get(&s.gw.client(), &s.gw.url("a.test", "/status/404")).await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert!(response.headers().get("x-request-id").is_none());
    assert_eq!(response.text().await.unwrap(), "no such path");
}
