//! Custom error pages end to end (issue #22): a real Gateway serves a tunnel's own page for its
//! 502, with the request id filled in and the same id in the tunnel's request log; the global
//! page, set once Control runs, reaches the Gateway and answers hosts it does not serve.

use kakuremichi_testkit::*;
use serde_json::{json, Value};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

const OWN: &str =
    "<!doctype html><title>{{status}}</title><p>Sorry ({{status}}), quote {{request_id}}.</p>";
const GLOBAL: &str = "<!doctype html><p>global {{status}} {{request_id}}</p>";

/// The first answer for `host` whose status is `status` and whose body starts with `prefix`:
/// its `X-Request-Id` and body.
async fn page_when(
    http: &reqwest::Client,
    gateway: std::net::SocketAddr,
    host: &str,
    status: u16,
    prefix: &str,
) -> (String, String) {
    eventually(
        WAIT,
        &format!("{host} answers {status} {prefix}"),
        || async {
            let response = http
                .get(format!("http://{gateway}/missing?q=1"))
                .header("host", host)
                .send()
                .await
                .ok()?;
            if response.status() != status {
                return None;
            }
            let headers = response.headers().clone();
            let body = response.text().await.ok()?;
            if !body.starts_with(prefix) {
                return None;
            }
            assert_eq!(headers["content-type"], "text/html; charset=utf-8");
            assert_eq!(headers["cache-control"], "no-store");
            Some((headers["x-request-id"].to_str().unwrap().to_string(), body))
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_serves_custom_pages_with_the_request_id_that_the_log_has() {
    // No origin: the tunnel's target refuses connections, so its visitors get a 502.
    let fleet = Cluster::new()
        .gateway()
        .agent()
        .tunnel_with(
            "down.test",
            json!({"log_requests": true, "error_page": OWN}),
        )
        .start()
        .await;
    let (gateway, tunnel) = (fleet.gateway(), fleet.tunnels[0]);
    let view = fleet.api.get(&format!("tunnels/{tunnel}")).await;
    assert_eq!(view["error_page"], OWN);
    let http = reqwest::Client::builder().no_proxy().build().unwrap();

    let (id, page) = page_when(
        &http,
        gateway,
        "down.test",
        502,
        "<!doctype html><title>502",
    )
    .await;
    assert_eq!(id.len(), 12, "{id}");
    assert_eq!(
        page,
        format!("<!doctype html><title>502</title><p>Sorry (502), quote {id}.</p>")
    );
    let logged = eventually(WAIT, "the 502 in the request log", || async {
        let log = fleet
            .api
            .get(&format!("tunnels/{tunnel}/requests?status=5xx"))
            .await;
        let requests = log["requests"].as_array().cloned().unwrap_or_default();
        requests
            .into_iter()
            .find(|r: &Value| r["request_id"] == id.as_str())
    })
    .await;
    assert_eq!(
        (&logged["status"], &logged["path"]),
        (&json!(502), &json!("/missing"))
    );

    // Without a global page, an unknown host gets the Gateway's own 404; with one, that page.
    let (_, own) = page_when(&http, gateway, "nobody.test", 404, "<!doctype html>").await;
    assert!(own.contains("is not served by this gateway"), "{own}");
    fleet
        .api
        .patch("settings", json!({"error_page": GLOBAL}))
        .await;
    let (id, page) = page_when(
        &http,
        gateway,
        "nobody.test",
        404,
        "<!doctype html><p>global",
    )
    .await;
    assert_eq!(page, format!("<!doctype html><p>global 404 {id}</p>"));

    // Clearing the tunnel's page leaves it the global one.
    fleet
        .api
        .patch(&format!("tunnels/{tunnel}"), json!({"error_page": null}))
        .await;
    let (id, page) = page_when(&http, gateway, "down.test", 502, "<!doctype html><p>global").await;
    assert_eq!(page, format!("<!doctype html><p>global 502 {id}</p>"));
}
