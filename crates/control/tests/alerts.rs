//! Alert channels through the API and the web UI (issue #22): admins only, checked input,
//! targets sealed and never shown in full, a cap on their number, the test button's outcome,
//! and the open alerts on the dashboard. Delivery itself is tested against real receivers in
//! crates/kakuremichi/tests/alerts.rs.

use kakuremichi_testkit::control::*;
use kakuremichi_testkit::eventually_every;
use reqwest::StatusCode;
use serde_json::{json, Value};

fn channel(name: &str, target: &str) -> Value {
    json!({"name": name, "kind": "webhook", "target": target})
}

#[tokio::test]
async fn channels_are_checked_sealed_capped_and_for_admins_only() {
    let (_dir, data) = data_dir();
    let c = start(&data).await;

    // Refused, with the reason; nothing added.
    for (body, needle) in [
        (channel("", "https://x.example/"), "name must be"),
        (
            channel(&"n".repeat(101), "https://x.example/"),
            "name must be",
        ),
        (channel("a", "ftp://x.example/"), "http:// or https://"),
        (channel("a", "not a url"), "is not a URL"),
        (
            json!({"name": "a", "kind": "webhook", "target": "https://x.example/", "format": "teams"}),
            "not one of json, slack, discord",
        ),
        (
            json!({"name": "a", "kind": "pager", "target": "x"}),
            "not one of webhook, email",
        ),
        (
            json!({"name": "a", "kind": "email", "target": "ops@example.com"}),
            "KAKUREMICHI_SMTP_URL",
        ),
        (
            channel("a", &format!("https://x.example/{}", "p".repeat(3000))),
            "longer than 2048",
        ),
    ] {
        let (s, err) = c.post("/api/v1/alerts/channels", body.clone()).await;
        assert_error(s, &err, StatusCode::BAD_REQUEST, "bad_request");
        let message = err["error"]["message"].as_str().unwrap();
        assert!(message.contains(needle), "{body}: {message}");
    }
    let (s, list) = c.get("/api/v1/alerts/channels").await;
    assert_eq!((s, list), (StatusCode::OK, json!([])));

    // Added: the API shows the host only, and the database holds no trace of the token.
    let secret = "https://hooks.example.com/services/T000/B000/very-secret-token";
    let (s, made) = c
        .post(
            "/api/v1/alerts/channels",
            json!({"name": "ops", "kind": "webhook", "target": secret, "format": "slack"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{made}");
    assert_eq!(made["hint"], "https://hooks.example.com/…");
    assert_eq!(made["format"], "slack");
    assert!(!made.to_string().contains("very-secret-token"));
    let (s, err) = c
        .post(
            "/api/v1/alerts/channels",
            channel("ops", "https://y.example/"),
        )
        .await;
    assert_error(s, &err, StatusCode::CONFLICT, "conflict");
    let db = std::fs::read(data.join("control.db")).unwrap_or_default();
    let wal = std::fs::read(data.join("control.db-wal")).unwrap_or_default();
    for bytes in [db, wal] {
        assert!(
            !bytes.windows(17).any(|w| w == b"very-secret-token"),
            "the webhook's token is stored in clear"
        );
    }

    // At most 20.
    for i in 1..20 {
        let (s, body) = c
            .post(
                "/api/v1/alerts/channels",
                channel(&format!("c{i}"), "https://x.example/"),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{body}");
    }
    let (s, err) = c
        .post(
            "/api/v1/alerts/channels",
            channel("c20", "https://x.example/"),
        )
        .await;
    assert_error(s, &err, StatusCode::FORBIDDEN, "forbidden");
    assert!(err["error"]["message"]
        .as_str()
        .unwrap()
        .contains("at most 20"));

    // Members see and change none of it.
    let m = member(&c, "member@example.com").await;
    for (method, path, body) in [
        ("GET", "/api/v1/alerts".to_string(), None),
        ("GET", "/api/v1/alerts/channels".to_string(), None),
        (
            "POST",
            "/api/v1/alerts/channels".to_string(),
            Some(channel("mine", "https://x.example/")),
        ),
        (
            "POST",
            format!("/api/v1/alerts/channels/{}/test", made["id"]),
            None,
        ),
        (
            "DELETE",
            format!("/api/v1/alerts/channels/{}", made["id"]),
            None,
        ),
    ] {
        let (s, err) = m.call(&c, method, &path, body).await;
        assert_error(s, &err, StatusCode::FORBIDDEN, "forbidden");
    }
    let (_, list) = c.get("/api/v1/alerts/channels").await;
    assert_eq!(list.as_array().unwrap().len(), 20);

    // The rules' thresholds are the defaults; nothing is open on a fleet without nodes.
    let (s, alerts) = c.get("/api/v1/alerts").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(alerts["open"], json!([]));
    assert_eq!(alerts["pending"], json!([]));
    assert_eq!(alerts["rules"]["offline_after_seconds"], 60);
    assert_eq!(alerts["rules"]["resolve_after_seconds"], 60);
    assert_eq!(alerts["rules"]["certificate_days"], 14);
    assert_eq!(alerts["rules"]["error_rate_percent"], 5);
    assert_eq!(alerts["rules"]["error_rate_window_seconds"], 300);
    assert_eq!(alerts["rules"]["smtp"], false);

    // Deleting: gone, audited; a second time 404.
    let path = format!("/api/v1/alerts/channels/{}", made["id"]);
    let (s, _) = c.delete(&path).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = c.delete(&path).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (_, audit) = c.get("/api/v1/audit?limit=100").await;
    let actions: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert_eq!(
        actions
            .iter()
            .filter(|a| **a == "alert_channel.created")
            .count(),
        20
    );
    assert!(actions.contains(&"alert_channel.deleted"));
}

#[tokio::test]
async fn the_alerts_page_adds_tests_and_deletes_channels() {
    let (_dir, data) = data_dir();
    let c = start(&data).await;
    let (cookie, csrf) = c.login_csrf(ADMIN_EMAIL, ADMIN_PASSWORD).await.unwrap();
    let http = browser();
    let page = || async {
        let res = http
            .get(c.url("/alerts"))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        res.text().await.unwrap()
    };
    let post = |path: String, fields: Vec<(&'static str, String)>| {
        let mut form = vec![("csrf", csrf.clone())];
        form.extend(fields);
        let http = http.clone();
        let (url, cookie) = (c.url(&path), cookie.clone());
        async move {
            let res = http
                .post(url)
                .header("cookie", cookie)
                .form(&form)
                .send()
                .await
                .unwrap();
            (res.status(), res.text().await.unwrap())
        }
    };
    assert!(page().await.contains("No channel yet"));

    // A webhook to a port where nothing listens: added, and its test says why it failed.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let target = format!("http://{}/hook/token-in-path", dead.local_addr().unwrap());
    drop(dead);
    let fields = vec![
        ("name", "ops".to_string()),
        ("kind", "webhook".to_string()),
        ("format", "discord".to_string()),
        ("target", target),
    ];
    let (s, _) = post("/alerts".into(), fields).await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    let html = page().await;
    assert!(html.contains(r#"data-channel="ops""#), "{html}");
    assert!(html.contains("webhook (discord)"), "{html}");
    assert!(
        !html.contains("token-in-path"),
        "the URL's path is not shown"
    );
    let (_, list) = c.get("/api/v1/alerts/channels").await;
    let id = list[0]["id"].as_i64().unwrap();
    let (s, html) = post(format!("/alerts/channels/{id}/test"), vec![]).await;
    assert_eq!(s, StatusCode::OK);
    assert!(html.contains(r#"id="test-result""#), "{html}");
    assert!(
        html.contains("The test message did not arrive: webhook 127.0.0.1: cannot connect"),
        "{html}"
    );
    let (_, list) = c.get("/api/v1/alerts/channels").await;
    assert!(
        list[0]["last_error"]
            .as_str()
            .unwrap()
            .contains("cannot connect"),
        "{list}"
    );

    // A bad form is shown on the page with the reason, the name kept, nothing added.
    let fields = vec![
        ("name", "mail".to_string()),
        ("kind", "email".to_string()),
        ("format", String::new()),
        ("target", "ops@example.com".to_string()),
    ];
    let (s, html) = post("/alerts".into(), fields).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(html.contains("KAKUREMICHI_SMTP_URL"), "{html}");
    assert!(html.contains(r#"value="mail""#), "{html}");

    // The dashboard shows the alerts card to admins.
    let res = http
        .get(c.url("/"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    let html = res.text().await.unwrap();
    assert!(html.contains(r#"data-alerts="none""#), "{html}");

    let (s, _) = post(format!("/alerts/channels/{id}/delete"), vec![]).await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    assert!(page().await.contains("No channel yet"));

    // Members: no alerts card, no alerts page.
    member(&c, "member@example.com").await;
    let (m_cookie, _) = c
        .login_csrf("member@example.com", ADMIN_PASSWORD)
        .await
        .unwrap();
    let res = http
        .get(c.url("/"))
        .header("cookie", &m_cookie)
        .send()
        .await
        .unwrap();
    let html = res.text().await.unwrap();
    assert!(!html.contains(r#"id="alerts""#), "{html}");
    let res = http
        .get(c.url("/alerts"))
        .header("cookie", &m_cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
}

/// `GET /api/v1/alerts` once `ready` holds for it.
async fn alerts_when(c: &Control, what: &str, ready: impl Fn(&Value) -> bool) -> Value {
    let pace = std::time::Duration::from_millis(200);
    eventually_every(pace, std::time::Duration::from_secs(20), what, || async {
        let (_, alerts) = c.get("/api/v1/alerts").await;
        ready(&alerts).then_some(alerts)
    })
    .await
}

#[tokio::test]
async fn a_gateway_gone_past_the_delay_opens_one_alert_that_closes_when_it_is_back() {
    let (_dir, data) = data_dir();
    let mut config = config(&data);
    config.alerts.offline_after = std::time::Duration::from_secs(1);
    config.alerts.resolve_after = std::time::Duration::from_secs(1);
    let c = start_with(config).await;
    let gw = c.gateway("gw-alert").await;
    let token = gw["token"].as_str().unwrap();
    // Never seen: not watched, nothing fires however long it stays away.
    let (_, alerts) = c.get("/api/v1/alerts").await;
    assert_eq!(alerts["pending"], json!([]));

    let (ws, _, _) = c
        .node(token, kakuremichi_proto::NodeRole::Gateway, None)
        .await;
    drop(ws);
    let key = format!("gateway_offline:{}", gw["id"]);
    let alerts = alerts_when(&c, "the alert fires", |a| {
        a["open"].as_array().is_some_and(|o| !o.is_empty())
    })
    .await;
    assert_eq!(alerts["open"][0]["key"], key, "{alerts}");
    assert_eq!(alerts["open"][0]["subject"], "Gateway gw-alert");
    assert_eq!(
        alerts["open"][0]["summary"],
        "Gateway gw-alert has been offline for more than 1 s"
    );

    let (_ws, _, _) = c
        .node(token, kakuremichi_proto::NodeRole::Gateway, None)
        .await;
    let alerts = alerts_when(&c, "the alert resolves", |a| a["open"] == json!([])).await;
    let recent = alerts["recent"].as_array().unwrap();
    assert_eq!(recent.len(), 1, "one alert, fired once: {alerts}");
    assert!(recent[0]["resolved_at"].is_string(), "{alerts}");
    // The audit entry is written right after the alert's row: wait for it, then count.
    let count = |actions: &Value, action: &str| {
        actions
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["action"] == action)
            .count()
    };
    let pace = std::time::Duration::from_millis(200);
    let audit = eventually_every(
        pace,
        std::time::Duration::from_secs(10),
        "alert.resolved",
        || async {
            let (_, audit) = c.get("/api/v1/audit?limit=100").await;
            (count(&audit, "alert.resolved") > 0).then_some(audit)
        },
    )
    .await;
    assert_eq!(count(&audit, "alert.fired"), 1);
    assert_eq!(count(&audit, "alert.resolved"), 1);
}

/// A webhook receiver: the JSON bodies posted to it, in order.
async fn receiver() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::Mutex<Vec<Value>>>,
) {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let bodies = seen.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |axum::Json(body): axum::Json<Value>| {
            let bodies = bodies.clone();
            async move {
                bodies.lock().unwrap().push(body);
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, seen)
}

#[tokio::test]
async fn a_storm_of_alerts_sends_a_few_messages_and_one_for_the_rest() {
    let (_dir, data) = data_dir();
    let mut config = config(&data);
    config.alerts.offline_after = std::time::Duration::from_secs(1);
    config.alerts.resolve_after = std::time::Duration::from_secs(1);
    config.alerts.notice_window = std::time::Duration::from_secs(3);
    let c = start_with(config).await;
    let (addr, seen) = receiver().await;
    let (s, body) = c
        .post(
            "/api/v1/alerts/channels",
            channel("hook", &format!("http://{addr}/hook")),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    // Twelve Gateways seen once, all gone at the same moment.
    let mut sockets = Vec::new();
    for i in 0..12 {
        let gw = c.gateway(&format!("gw{i}")).await;
        let token = gw["token"].as_str().unwrap().to_string();
        sockets.push(
            c.node(&token, kakuremichi_proto::NodeRole::Gateway, None)
                .await
                .0,
        );
    }
    drop(sockets);
    let alerts = alerts_when(&c, "twelve alerts", |a| {
        a["open"].as_array().is_some_and(|o| o.len() == 12)
    })
    .await;
    assert_eq!(alerts["recent"].as_array().unwrap().len(), 12);
    // Ten at once, then one for the other two once the window is over.
    let posts = eventually(
        std::time::Duration::from_secs(20),
        "eleven messages",
        || async {
            let posts = seen.lock().unwrap().clone();
            (posts.len() >= 11).then_some(posts)
        },
    )
    .await;
    assert_eq!(posts.len(), 11, "{posts:?}");
    let texts: Vec<&str> = posts.iter().map(|p| p["text"].as_str().unwrap()).collect();
    assert!(
        texts[..10]
            .iter()
            .all(|t| t.starts_with("[FIRING] Gateway gw")),
        "{texts:?}"
    );
    assert_eq!(
        texts[10],
        "[FIRING] 2 more alerts fired, held back to send at most 10 messages in 3 s; \
         Control's Alerts page lists them all"
    );
    assert_eq!(posts[10]["event"], "fired");
    assert!(posts[10]["alert"].is_null());
}
