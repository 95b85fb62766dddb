//! A tunnel seen from its nodes (issue #22): the Agent checks the target on request, the
//! Gateways keep the requests of a tunnel that logs them, and the Gateway's own error pages
//! carry a request id that the log has too.

use kakuremichi_testkit::*;
use reqwest::Method;
use serde_json::{json, Value};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

/// The logged requests of `tunnel` with the query `query`, once `ready` holds for them.
async fn requests_when(
    fleet: &Fleet,
    tunnel: i64,
    query: &str,
    what: &str,
    ready: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let path = format!("tunnels/{tunnel}/requests{query}");
    eventually_every(Duration::from_millis(200), WAIT, what, || async {
        let log = fleet.api.get(&path).await;
        assert!(
            log["gateways"]
                .as_array()
                .unwrap()
                .iter()
                .all(|g| g["ok"] == true),
            "{log}"
        );
        let requests = log["requests"].as_array().unwrap().clone();
        ready(&requests).then_some(requests)
    })
    .await
}

/// `POST /api/v1/tunnels/{tunnel}/check`'s report.
async fn check(fleet: &Fleet, tunnel: i64) -> Value {
    let path = format!("tunnels/{tunnel}/check");
    let (status, report) = fleet.api.call(Method::POST, &path, Some(json!({}))).await;
    assert_eq!(status, 200, "{report}");
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_names_a_stopped_origin_and_its_502_is_in_the_request_log() {
    let fleet = Cluster::new()
        .gateway()
        .agent()
        .origin("inspect")
        .tunnel_with("app.test", json!({"log_requests": true}))
        .start()
        .await;
    let (gateway, tunnel) = (fleet.gateway(), fleet.tunnels[0]);
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    wait_through(
        &http,
        gateway,
        "app.test",
        "/",
        WAIT,
        "tunnel up",
        |s, _| s == 200,
    )
    .await;
    let tunnel_view = fleet.api.get(&format!("tunnels/{tunnel}")).await;
    assert_eq!(tunnel_view["log_requests"], true);

    // The origin is up: the Agent reaches it and reports its status line.
    let report = check(&fleet, tunnel).await;
    assert_eq!(report["ok"], true, "{report}");
    let agent = &report["agents"][0];
    assert_eq!(agent["agent_id"], fleet.agent_id, "{report}");
    assert_eq!(agent["target"], fleet.origin.to_string(), "{report}");
    assert!(
        agent["detail"]
            .as_str()
            .unwrap()
            .starts_with("HTTP/1.1 200"),
        "{report}"
    );
    assert!(agent["connect_ms"].as_f64().is_some(), "{report}");

    // Requests are kept, newest first, their query strings left out.
    for i in 0..5 {
        let (status, _) = through(
            &http,
            gateway,
            "app.test",
            &format!("/page/{i}?token=s3cret"),
        )
        .await;
        assert_eq!(status, 200);
    }
    let pages = requests_when(&fleet, tunnel, "?path=/page/", "five pages logged", |r| {
        r.len() == 5
    })
    .await;
    assert_eq!(pages[0]["path"], "/page/4", "{pages:?}");
    assert_eq!(pages[4]["path"], "/page/0", "{pages:?}");
    for p in &pages {
        assert_eq!(p["status"], 200, "{p}");
        assert_eq!(p["method"], "GET", "{p}");
        assert_eq!(p["client_ip"], "127.0.0.1", "{p}");
        assert_eq!(p["gateway"], "gw1", "{p}");
        assert!(p["bytes_out"].as_u64().unwrap() > 0, "{p}");
        assert!(!p.to_string().contains("s3cret"), "{p}");
    }

    // The origin stops: the check says exactly what is wrong.
    fleet.origin_stop.as_ref().unwrap().stop();
    let report = eventually(WAIT, "the check sees the stopped origin", || async {
        let report = check(&fleet, tunnel).await;
        (report["ok"] == false).then_some(report)
    })
    .await;
    let detail = report["agents"][0]["detail"].as_str().unwrap();
    assert!(
        detail.starts_with(&format!("connection refused from {}", fleet.origin)),
        "{report}"
    );

    // A visitor now gets the Gateway's 502 page; its request id is in the log. (Connections
    // the Gateway pooled before the stop still reach the origin's open connections: requests
    // at once need new ones, which find nothing listening.)
    let (id, page) = eventually(WAIT, "a 502 from the Gateway", || async {
        let sends = (0..4).map(|_| {
            http.get(format!("http://{gateway}/broken?x=1"))
                .header("host", "app.test")
                .send()
        });
        for response in futures_util::future::join_all(sends).await {
            let response = response.unwrap();
            if response.status() == 502 {
                let id = response.headers()["x-request-id"]
                    .to_str()
                    .unwrap()
                    .to_string();
                return Some((id, response.text().await.unwrap()));
            }
        }
        None
    })
    .await;
    assert!(page.contains(&format!("<code>{id}</code>")), "{page}");
    let failed = requests_when(&fleet, tunnel, "?status=5xx", "the 502 logged", |r| {
        r.iter().any(|e| e["request_id"] == id.as_str())
    })
    .await;
    assert!(failed.iter().all(|e| e["status"] == 502), "{failed:?}");
    let logged = failed
        .iter()
        .find(|e| e["request_id"] == id.as_str())
        .unwrap();
    assert_eq!(logged["path"], "/broken", "{logged}");

    // Bad filters are refused with a reason; a tunnel without logging has nothing.
    let bad = format!("tunnels/{tunnel}/requests?status=7xx");
    let (status, body) = fleet.api.call(Method::GET, &bad, None).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("5xx"),
        "{body}"
    );
    fleet
        .api
        .patch(&format!("tunnels/{tunnel}"), json!({"log_requests": false}))
        .await;
    requests_when(&fleet, tunnel, "", "the log forgotten", |r| r.is_empty()).await;
}

/// The history of a tunnel served by two real Gateways: each reports what it carried, and the
/// tunnel's traffic is their sum, per Gateway too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_traffic_reaches_the_history() {
    let fleet = Cluster::new()
        .gateways(2)
        .agent()
        .origin("history")
        .tunnel("app.test")
        .start()
        .await;
    let tunnel = fleet.tunnels[0];
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let gateways = fleet.gateway_addrs();
    for (gateway, n) in gateways.iter().zip([20, 10]) {
        wait_through(
            &http,
            *gateway,
            "app.test",
            "/",
            WAIT,
            "tunnel up",
            |s, _| s == 200,
        )
        .await;
        for _ in 0..n {
            assert_eq!(through(&http, *gateway, "app.test", "/").await.0, 200);
        }
    }
    let path = format!("tunnels/{tunnel}/traffic");
    let h = eventually_every(
        Duration::from_millis(500),
        Duration::from_secs(60),
        "both Gateways' traffic",
        || async {
            let h = fleet.api.get(&path).await;
            let shares = h["gateways"].as_array().unwrap().clone();
            let ok = |g: &Value| g["requests"]["2xx"].as_i64().unwrap();
            (shares.len() == 2 && ok(&shares[0]) >= 20 && ok(&shares[1]) >= 10).then_some(h)
        },
    )
    .await;
    let shares = h["gateways"].as_array().unwrap();
    let sum: i64 = shares
        .iter()
        .map(|g| g["requests"]["2xx"].as_i64().unwrap())
        .sum();
    assert_eq!(h["total"]["requests"]["2xx"], sum, "{h}");
    assert!(h["total"]["bytes_out"].as_i64().unwrap() > 0, "{h}");
    assert!(h["total"]["p50_ms"].as_f64().is_some(), "{h}");
    let names: Vec<&str> = shares
        .iter()
        .map(|g| g["gateway"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["gw1", "gw2"]);
}
