//! Per-tunnel limits end to end, in one process: a PATCH of a tunnel's limits on Control reaches
//! the Gateway, which then refuses by IP list and by rate, counts the refusals on its admin
//! `/metrics`, and serves again once the limits are lifted. Visitors are told apart by source
//! address (127.0.0.2, 127.0.0.3, ...: all loopback on Linux).

use kakuremichi_testkit::*;
use reqwest::header::HOST;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::net::IpAddr;
use std::time::Duration;

const WITHIN: Duration = Duration::from_secs(20);
const APP: &str = "limited.example.com";

/// The in-process fleet with one tunnel, `APP`.
struct Site {
    fleet: Fleet,
    tunnel: i64,
}

impl std::ops::Deref for Site {
    type Target = Fleet;
    fn deref(&self) -> &Fleet {
        &self.fleet
    }
}

async fn site() -> Site {
    let fleet = Fleet::start().await;
    let target = fleet.origin;
    let tunnel = fleet.tunnel_with(APP, target, json!({"tls": "off"})).await;
    Site { fleet, tunnel }
}

impl Site {
    /// The status of `n` requests in a row to the app from `source`.
    async fn burst(&self, source: &str, n: usize) -> Vec<StatusCode> {
        let client = reqwest::Client::builder()
            .no_proxy()
            .local_address(source.parse::<IpAddr>().unwrap())
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        let mut statuses = Vec::new();
        for _ in 0..n {
            let sent = client
                .get(format!("http://{}/", self.gateway()))
                .header(HOST, APP)
                .send()
                .await;
            statuses.push(sent.map_or(StatusCode::BAD_GATEWAY, |r| r.status()));
        }
        statuses
    }

    /// Waits until `n` requests from `source` answer as `expected` says.
    async fn until(
        &self,
        what: &str,
        source: &str,
        n: usize,
        expected: impl Fn(&[StatusCode]) -> bool,
    ) {
        eventually(WITHIN, what, || async {
            expected(&self.burst(source, n).await).then_some(())
        })
        .await;
    }

    async fn patch(&self, body: Value) {
        self.api
            .patch(&format!("tunnels/{}", self.tunnel), body)
            .await;
    }

    async fn refused(&self) -> Value {
        let metrics = self.gateway_metrics(0).await;
        metrics["refused"][self.tunnel.to_string()].clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patch_of_the_limits_takes_effect_on_the_gateway() {
    let s = site().await;
    let all_ok = |r: &[StatusCode]| r.iter().all(|c| *c == StatusCode::OK);
    s.until("the tunnel is served", "127.0.0.2", 1, all_ok)
        .await;

    s.patch(json!({"ip_deny": ["127.0.0.2"]})).await;
    s.until("127.0.0.2 is refused", "127.0.0.2", 1, |r| {
        r == [StatusCode::FORBIDDEN]
    })
    .await;
    assert_eq!(
        s.burst("127.0.0.3", 3).await,
        [StatusCode::OK; 3],
        "others are served"
    );

    // One request a second, two at once: a burst of five cannot all pass.
    s.patch(json!({"ip_deny": [], "rate_limit_per_second": 1, "rate_limit_burst": 2}))
        .await;
    s.until("a burst is rate limited", "127.0.0.4", 5, |r| {
        r.contains(&StatusCode::TOO_MANY_REQUESTS) && !r.contains(&StatusCode::FORBIDDEN)
    })
    .await;
    let refused = s.refused().await;
    assert!(refused["ip_denied"].as_u64().unwrap() >= 1, "{refused}");
    assert!(refused["rate_limited"].as_u64().unwrap() >= 1, "{refused}");

    s.patch(json!({"rate_limit_per_second": null})).await;
    s.until("limits lifted", "127.0.0.4", 5, all_ok).await;
}
