//! Prometheus metrics (issue #22): a real Prometheus scrapes the Gateway's admin `/metrics`,
//! and PromQL through its HTTP API counts exactly the traffic the test sent.

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
    let text = scrape().await;
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
