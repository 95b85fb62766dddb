//! Prometheus metrics (issue #22): a real Prometheus scrapes the Gateway's admin `/metrics`,
//! Control's and the Agent's `--metrics-listen`, and PromQL through its HTTP API counts exactly
//! the traffic the test sent, on both ends of the WireGuard tunnel.

use kakuremichi_testkit::origins::{self, Prometheus};
use kakuremichi_testkit::*;
use std::time::Duration;

/// The value of the sample `name{labels}` in an exposition `text`, 0 when absent.
fn sample(text: &str, name: &str, labels: &str) -> f64 {
    let prefix = format!("{name}{{{labels}}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_counts_what_went_through_the_gateway() {
    let test = "prometheus_counts_what_went_through_the_gateway";
    if !origins::available(test, &["prometheus"]) {
        return;
    }
    let fleet = Cluster::new()
        .gateway()
        .agent()
        .origin("metrics")
        .tunnel("app.test")
        .start()
        .await;
    let (gateway, admin, tunnel) = (fleet.gateway(), fleet.gateways[0].admin, fleet.tunnels[0]);
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    wait_through(
        &http,
        gateway,
        "app.test",
        "/",
        Duration::from_secs(30),
        "tunnel up",
        |s, _| s == 200,
    )
    .await;

    // What the Gateway counted so far (the wait above), straight from its exposition.
    let metrics_url = format!("http://{admin}/metrics");
    let text = http.get(&metrics_url).send().await.unwrap();
    assert!(
        text.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text"),
        "{:?}",
        text.headers()
    );
    let text = text.text().await.unwrap();
    let series = |class: &str| format!("tunnel=\"{tunnel}\",code_class=\"{class}\"");
    let before_2xx = sample(&text, "kakuremichi_gateway_requests_total", &series("2xx"));
    let before_5xx = sample(&text, "kakuremichi_gateway_requests_total", &series("5xx"));
    assert!(before_2xx >= 1.0, "{text}");

    // 500 requests, of which the origin answers 50 with 503.
    for i in 0..500 {
        let (path, want) = if i % 10 == 0 {
            ("/status?code=503", 503)
        } else {
            ("/", 200)
        };
        assert_eq!(
            through(&http, gateway, "app.test", path).await.0,
            want,
            "request {i}"
        );
    }
    // And one for a host the Gateway does not serve: in no tunnel's series.
    assert_eq!(through(&http, gateway, "unknown.test", "/").await.0, 404);

    let prometheus = Prometheus::start(&[admin]).await;
    let query = |class: &str| format!("kakuremichi_gateway_requests_total{{{}}}", series(class));
    for (class, want) in [("5xx", before_5xx + 50.0), ("2xx", before_2xx + 450.0)] {
        let q = query(class);
        eventually(
            Duration::from_secs(30),
            &format!("{q} = {want}"),
            || async { prometheus.value(&q).await == Some(want) },
        )
        .await;
    }
    let total = before_2xx + before_5xx + 500.0;
    let count =
        format!("kakuremichi_gateway_request_duration_seconds_count{{tunnel=\"{tunnel}\"}}");
    let first =
        format!("kakuremichi_gateway_request_first_byte_seconds_count{{tunnel=\"{tunnel}\"}}");
    for q in [&count, &first] {
        eventually(
            Duration::from_secs(10),
            &format!("{q} = {total}"),
            || async { prometheus.value(q).await == Some(total) },
        )
        .await;
    }
    // Every request's body went out; the series are those of configured tunnels only.
    let out = format!("kakuremichi_gateway_bytes_total{{tunnel=\"{tunnel}\",direction=\"out\"}}");
    assert!(prometheus.value(&out).await.unwrap() > 0.0);
    let tunnels = prometheus
        .query("count by (tunnel) (kakuremichi_gateway_requests_total)")
        .await;
    assert_eq!(tunnels.len(), 1, "{tunnels:?}");
    let mean = format!(
        "kakuremichi_gateway_request_duration_seconds_sum{{tunnel=\"{tunnel}\"}} / {count}"
    );
    let build = prometheus
        .query("kakuremichi_build_info{role=\"gateway\"}")
        .await;
    assert_eq!(build.len(), 1, "{build:?}");
    eprintln!(
        "Prometheus: {total} requests through tunnel {tunnel}, {:.2} ms each on average",
        prometheus.value(&mean).await.unwrap() * 1000.0
    );

    // The admin listener's JSON is still there for whoever asks for it.
    let json: serde_json::Value = http
        .get(&metrics_url)
        .header("accept", "application/json")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(json["tasks"].as_u64().unwrap() > 0, "{json}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_reads_what_control_did() {
    let test = "prometheus_reads_what_control_did";
    if !origins::available(test, &["prometheus"]) {
        return;
    }
    let metrics: std::net::SocketAddr = format!("127.0.0.1:{}", origins::free_port())
        .parse()
        .unwrap();
    let fleet = Cluster::new()
        .gateway()
        .agent()
        .origin("metrics")
        .control_config(move |c| c.metrics_listen = Some(metrics))
        .start()
        .await;
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let scrape = || async {
        http.get(format!("http://{metrics}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    let created = "route=\"/api/v1/tunnels\",method=\"POST\",status=\"201\"";
    // The Gateway's session must have had its first snapshot: that one follows its hello, not a
    // change, and is not in the latency histogram, so a tunnel that rode on it would count none.
    let text = eventually(
        Duration::from_secs(30),
        "the Gateway's first config snapshot",
        || async {
            let text = scrape().await;
            (sample(
                &text,
                "kakuremichi_control_config_pushes_total",
                "kind=\"gateway\"",
            ) >= 1.0)
                .then_some(text)
        },
    )
    .await;
    let before = sample(&text, "kakuremichi_control_api_requests_total", created);
    let pushes = |t: &str| {
        sample(
            t,
            "kakuremichi_control_config_push_seconds_count",
            "kind=\"gateway\"",
        )
    };
    let pushes_before = pushes(&text);

    // Three tunnels through the API, each served by the Gateway (so pushed to it).
    for i in 0..3 {
        let host = format!("m{i}.test");
        fleet.tunnel(&host, fleet.origin).await;
        wait_through(
            &http,
            fleet.gateway(),
            &host,
            "/",
            Duration::from_secs(30),
            "tunnel up",
            |s, _| s == 200,
        )
        .await;
    }
    // A request no route takes, and one with a made-up method: no new route or method series.
    let base = fleet.api.base.trim_end_matches('/');
    let _ = http.get(format!("{base}/no/such/page")).send().await;
    let odd = reqwest::Method::from_bytes(b"FROBNICATE").unwrap();
    let _ = http
        .request(odd, format!("{base}/api/v1/tunnels"))
        .send()
        .await;

    let prometheus = Prometheus::start(&[metrics]).await;
    for (q, want) in [
        (
            format!("kakuremichi_control_api_requests_total{{{created}}}"),
            before + 3.0,
        ),
        (
            "kakuremichi_control_node_sessions{kind=\"gateway\"}".to_string(),
            1.0,
        ),
        (
            "kakuremichi_control_node_sessions{kind=\"agent\"}".to_string(),
            1.0,
        ),
    ] {
        eventually(
            Duration::from_secs(30),
            &format!("{q} = {want}"),
            || async { prometheus.value(&q).await == Some(want) },
        )
        .await;
    }
    let text = scrape().await;
    assert!(pushes(&text) >= pushes_before + 3.0, "{text}");
    assert!(!text.contains("no/such"), "{text}");
    assert!(!text.contains("FROBNICATE"), "{text}");
    assert!(
        text.contains("method=\"other\""),
        "the odd method counts as other:\n{text}"
    );
    let build = prometheus
        .query("kakuremichi_build_info{role=\"control\"}")
        .await;
    assert_eq!(build.len(), 1, "{build:?}");
    let latency = "histogram_quantile(0.99, kakuremichi_control_config_push_seconds_bucket{kind=\"gateway\"})";
    eprintln!(
        "Control: 3 tunnels pushed to the Gateway, p99 push latency {:?} s",
        prometheus.value(latency).await
    );
}

/// `n` requests through the Gateway at once, each held open a little (a short event stream),
/// so that none waits for another's upstream connection: each needs a tunnel stream, and the
/// Agent a connection to the target, of its own. Their statuses.
async fn at_once(http: &reqwest::Client, gateway: std::net::SocketAddr, n: usize) -> Vec<u16> {
    let requests = (0..n).map(|_| {
        let http = http.clone();
        tokio::spawn(async move {
            through(&http, gateway, "agent.test", "/sse?n=2&interval_ms=200")
                .await
                .0
        })
    });
    let mut statuses = Vec::new();
    for r in requests.collect::<Vec<_>>() {
        statuses.push(r.await.unwrap());
    }
    statuses
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_reads_the_agent_and_both_ends_of_the_tunnel() {
    let test = "prometheus_reads_the_agent_and_both_ends_of_the_tunnel";
    if !origins::available(test, &["prometheus"]) {
        return;
    }
    let metrics: std::net::SocketAddr = format!("127.0.0.1:{}", origins::free_port())
        .parse()
        .unwrap();
    let mut fleet = Cluster::new()
        .gateway()
        .agent_config(move |c| c.metrics_listen = Some(metrics))
        .origin("metrics")
        .tunnel("agent.test")
        .start()
        .await;
    let (gateway, admin, tunnel) = (fleet.gateway(), fleet.gateways[0].admin, fleet.tunnels[0]);
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    wait_through(
        &http,
        gateway,
        "agent.test",
        "/",
        Duration::from_secs(30),
        "tunnel up",
        |s, _| s == 200,
    )
    .await;
    let scrape = || async {
        let r = http
            .get(format!("http://{metrics}/metrics"))
            .send()
            .await
            .unwrap();
        let content_type = r.headers()["content-type"].to_str().unwrap().to_string();
        assert!(
            content_type.starts_with("application/openmetrics-text"),
            "{content_type}"
        );
        r.text().await.unwrap()
    };
    let of_tunnel = format!("tunnel=\"{tunnel}\"");
    let connects = format!("kakuremichi_agent_target_connect_seconds_count{{{of_tunnel}}}");
    let text = scrape().await;
    let before = sample(
        &text,
        "kakuremichi_agent_target_connect_seconds_count",
        &of_tunnel,
    );
    assert!(
        before >= 1.0,
        "the wait above connected to the origin:\n{text}"
    );

    // N requests at once: N connections to the target at least (one may be the connection of
    // the wait above, idle in the Gateway's pool).
    const N: usize = 6;
    assert_eq!(at_once(&http, gateway, N).await, vec![200; N]);

    let prometheus = Prometheus::start(&[metrics, admin]).await;
    let want = N as f64;
    eventually(
        Duration::from_secs(30),
        &format!("{connects} >= {want}"),
        || async { prometheus.value(&connects).await.is_some_and(|v| v >= want) },
    )
    .await;
    let build = prometheus
        .query("kakuremichi_build_info{role=\"agent\"}")
        .await;
    assert_eq!(build.len(), 1, "{build:?}");

    // Both ends of the tunnel: a peer up, bytes each way, over UDP; one series set per end.
    for q in [
        "kakuremichi_wireguard_peers{state=\"up\"} >= 1",
        "kakuremichi_wireguard_bytes_total{direction=\"rx\"} > 0",
        "kakuremichi_wireguard_bytes_total{direction=\"tx\"} > 0",
        "kakuremichi_wireguard_transport{mode=\"udp\"} == 1",
        "kakuremichi_wireguard_last_handshake_seconds < 180",
    ] {
        let query = format!("count({q})");
        eventually(Duration::from_secs(30), &format!("{query} = 2"), || async {
            prometheus.value(&query).await == Some(2.0)
        })
        .await;
    }
    // The Agent's peer is the Gateway, by its public key (and the Gateway's the Agent).
    let gateways = fleet.api.get("gateways").await;
    let gateway_key = gateways[0]["public_key"].as_str().unwrap().to_string();
    let agent_peer = prometheus
        .query(&format!(
            "kakuremichi_wireguard_transport{{instance=\"{metrics}\",mode=\"udp\"}}"
        ))
        .await;
    assert_eq!(agent_peer.len(), 1, "{agent_peer:?}");
    assert_eq!(agent_peer[0].0["peer"], gateway_key.as_str());

    // The app stops: connections the Agent opens to it now are refused.
    drop(fleet.origin_stop.take());
    let refused_labels = format!("{of_tunnel},kind=\"refused\"");
    let refused = format!("kakuremichi_agent_target_errors_total{{{refused_labels}}}");
    eventually(Duration::from_secs(30), "a refused connect", || async {
        // More requests than the pool has idle connections to the old origin.
        let statuses = at_once(&http, gateway, 2 * N).await;
        let text = scrape().await;
        statuses.contains(&502)
            && sample(
                &text,
                "kakuremichi_agent_target_errors_total",
                &refused_labels,
            ) >= 1.0
    })
    .await;
    eventually(
        Duration::from_secs(30),
        &format!("{refused} >= 1 in Prometheus"),
        || async { prometheus.value(&refused).await.is_some_and(|v| v >= 1.0) },
    )
    .await;
    let text = scrape().await;
    for kind in ["timeout", "unresolved", "other"] {
        let line = format!(
            "kakuremichi_agent_target_errors_total{{tunnel=\"{tunnel}\",kind=\"{kind}\"}} 0"
        );
        assert!(text.contains(&line), "{line} not in\n{text}");
    }
}
