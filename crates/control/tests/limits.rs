//! Per-tunnel Gateway limits through Control: the API fields (create, PATCH, views), their
//! validation (a 400 that changes nothing), the Gateway's snapshot, and the web form.

use kakuremichi_proto::{NodeRole, RateLimit};
use kakuremichi_testkit::control::*;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::time::Duration;

const PUSH: Duration = Duration::from_secs(5);

fn limits_of(t: &Value) -> Value {
    json!({
        "ip_allow": t["ip_allow"], "ip_deny": t["ip_deny"],
        "rate_limit_per_second": t["rate_limit_per_second"],
        "rate_limit_burst": t["rate_limit_burst"],
        "max_concurrent_requests": t["max_concurrent_requests"],
    })
}

#[tokio::test]
async fn limits_are_validated_and_reach_the_gateway() {
    let (_tmp, dir) = data_dir();
    let c = start(&dir).await;
    let agent = c.agent("a1").await["id"].as_i64().unwrap();

    // Defaults: no limits, every field present in the view.
    let plain = c.tunnel("plain.example.com", agent, "app:1").await;
    assert_eq!(
        limits_of(&plain),
        json!({"ip_allow": [], "ip_deny": [], "rate_limit_per_second": null,
               "rate_limit_burst": null, "max_concurrent_requests": null})
    );
    let body = json!({
        "hostname": "app.example.com", "agent_id": agent, "target": "app:80",
        "ip_allow": ["192.0.2.0/24", "2001:DB8::/48", "198.51.100.7/32", "192.0.2.0/24"],
        "ip_deny": ["192.0.2.9"],
        "rate_limit_per_second": 10, "rate_limit_burst": 20, "max_concurrent_requests": 50,
    });
    let (s, t) = c.post("/api/v1/tunnels", body).await;
    assert_eq!(s, StatusCode::CREATED, "{t}");
    let id = t["id"].as_i64().unwrap();
    let stored = json!({
        "ip_allow": ["192.0.2.0/24", "2001:db8::/48", "198.51.100.7"], "ip_deny": ["192.0.2.9"],
        "rate_limit_per_second": 10, "rate_limit_burst": 20, "max_concurrent_requests": 50,
    });
    assert_eq!(limits_of(&t), stored, "canonical, duplicates dropped");

    // Every bad value is a 400 naming the field, on create and on PATCH, and changes nothing.
    let many: Vec<String> = (0..101).map(|i| format!("10.{i}.0.0/16")).collect();
    for (bad, field) in [
        (json!({"ip_allow": ["192.0.2.0/33"]}), "ip_allow"),
        (json!({"ip_deny": ["example.com"]}), "ip_deny"),
        (
            json!({"ip_deny": ["192.0.2.1/24"]}),
            "did you mean 192.0.2.0/24",
        ),
        (json!({"ip_allow": many}), "at most 100"),
        (json!({"rate_limit_per_second": 0}), "rate_limit_per_second"),
        (
            json!({"rate_limit_per_second": 100_001}),
            "rate_limit_per_second",
        ),
        (json!({"rate_limit_burst": -1}), "rate_limit_burst"),
        (
            json!({"max_concurrent_requests": 0}),
            "max_concurrent_requests",
        ),
        (json!({"ip_allow": "192.0.2.0/24"}), "ip_allow"),
    ] {
        let mut create = json!({"hostname": "bad.example.com", "agent_id": agent, "target": "a:1"});
        create
            .as_object_mut()
            .unwrap()
            .extend(bad.as_object().unwrap().clone());
        let (s, v) = c.post("/api/v1/tunnels", create).await;
        assert_error(s, &v, StatusCode::BAD_REQUEST, "bad_request");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(field),
            "{v}"
        );
        let (s, v) = c.patch(&format!("/api/v1/tunnels/{id}"), bad.clone()).await;
        assert_error(s, &v, StatusCode::BAD_REQUEST, "bad_request");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(field),
            "{bad}: {v}"
        );
    }
    let (s, v) = c
        .post(
            "/api/v1/tunnels",
            json!({"hostname": "b.example.com", "agent_id": agent, "target": "a:1",
                   "rate_limit_burst": 5}),
        )
        .await;
    assert_error(s, &v, StatusCode::BAD_REQUEST, "bad_request");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("needs rate_limit_per_second"));
    let (_, all) = c.get("/api/v1/tunnels").await;
    assert_eq!(all.as_array().unwrap().len(), 2, "{all}");
    let (_, t) = c.get(&format!("/api/v1/tunnels/{id}")).await;
    assert_eq!(limits_of(&t), stored, "a refused PATCH changed nothing");

    // The Gateway gets them, parsed, with the burst resolved.
    let g = c.gateway("g1").await;
    let (mut gw, _, _) = c
        .node(g["token"].as_str().unwrap(), NodeRole::Gateway, None)
        .await;
    let snap = next_config(&mut gw, PUSH).await;
    let limits = &snap.routes["app.example.com"].limits;
    let text = |l: &[kakuremichi_proto::IpNet]| -> Vec<String> {
        l.iter().map(|n| n.to_string()).collect()
    };
    assert_eq!(
        text(&limits.ip_allow),
        ["192.0.2.0/24", "2001:db8::/48", "198.51.100.7/32"]
    );
    assert_eq!(text(&limits.ip_deny), ["192.0.2.9/32"]);
    assert_eq!(
        limits.rate,
        Some(RateLimit {
            per_second: 10,
            burst: 20
        })
    );
    assert_eq!(limits.max_concurrent_requests, Some(50));
    assert!(snap.routes["plain.example.com"].limits.is_none());

    // PATCH: only what is sent changes; null turns a number off (the rate takes its burst with
    // it) and empties a list.
    let (s, t) = c
        .patch(
            &format!("/api/v1/tunnels/{id}"),
            json!({"rate_limit_per_second": null, "ip_allow": null, "ip_deny": ["::1"]}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{t}");
    assert_eq!(
        limits_of(&t),
        json!({"ip_allow": [], "ip_deny": ["::1"], "rate_limit_per_second": null,
               "rate_limit_burst": null, "max_concurrent_requests": 50})
    );
    let snap = next_config(&mut gw, PUSH).await;
    let limits = &snap.routes["app.example.com"].limits;
    assert!(limits.rate.is_none() && limits.ip_allow.is_empty());
    assert_eq!(text(&limits.ip_deny), ["::1/128"]);
    c.stop().await;
}

/// The tunnel form shows and sets the limits; empty fields turn them off; a bad network is an
/// error page with the form as typed; a form without the limit fields keeps them.
#[tokio::test]
async fn the_tunnel_form_sets_shows_and_keeps_limits() {
    let (_tmp, dir) = data_dir();
    let c = start(&dir).await;
    let agent = c.agent("a1").await["id"].as_i64().unwrap().to_string();
    let (cookie, csrf) = c.login_csrf(ADMIN_EMAIL, ADMIN_PASSWORD).await.unwrap();
    let b = browser();
    let post = |path: &str, fields: Vec<(&str, &str)>| {
        let mut form = vec![
            ("csrf", csrf.as_str()),
            ("hostname", "app.example.com"),
            ("agent_id", agent.as_str()),
            ("target", "localhost:8080"),
            ("tls", "off"),
        ];
        form.extend(fields);
        b.post(c.url(path))
            .header("cookie", &cookie)
            .form(&form)
            .send()
    };
    let limited = vec![
        ("limits_shown", "1"),
        ("ip_allow", "192.0.2.0/24\r\n2001:db8::1"),
        ("ip_deny", ""),
        ("rate_limit_per_second", "5"),
        ("rate_limit_burst", ""),
        ("max_concurrent_requests", "8"),
    ];
    // The create form offers the limits, empty.
    let list = b
        .get(c.url("/tunnels"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(list.contains(r#"autocomplete="off"></textarea>"#), "{list}");
    assert!(list.contains(r#"name="max_concurrent_requests" inputmode="numeric" pattern="[0-9]*" placeholder="no limit" value="""#), "{list}");
    let res = post("/tunnels", limited).await.unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    let (_, t) = c.get("/api/v1/tunnels/1").await;
    assert_eq!(
        limits_of(&t),
        json!({"ip_allow": ["192.0.2.0/24", "2001:db8::1"], "ip_deny": [],
               "rate_limit_per_second": 5, "rate_limit_burst": null, "max_concurrent_requests": 8})
    );
    let html = b
        .get(c.url("/tunnels/1"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // The templates escape '/' too.
    let esc = |text: &str| text.replace('/', "&#x2f;");
    let typed = format!("{}</textarea>", esc("192.0.2.0/24\n2001:db8::1"));
    assert!(html.contains(&typed), "{html}");
    assert!(html.contains(r#"name="rate_limit_per_second" inputmode="numeric""#));
    assert!(html.contains(r#"value="5""#) && html.contains(r#"value="8""#));
    assert!(
        html.contains(&esc(
            "only from 192.0.2.0/24, 2001:db8::1; 5 requests/s per visitor (burst 5); 8 concurrent \
             requests"
        )),
        "{html}"
    );

    // A bad network: the error, and what was typed, still in the form.
    let res = post(
        "/tunnels/1",
        vec![("limits_shown", "1"), ("ip_deny", "10.0.0.1/8")],
    )
    .await
    .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let html = res.text().await.unwrap();
    assert!(html.contains(&esc("did you mean 10.0.0.0/8?")), "{html}");
    assert!(html.contains(&esc("10.0.0.1/8")), "{html}");

    // Without the limit fields (an older form), nothing changes; with them empty, all are off.
    let res = post("/tunnels/1", vec![]).await.unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    let (_, after) = c.get("/api/v1/tunnels/1").await;
    assert_eq!(limits_of(&after), limits_of(&t));
    let res = post("/tunnels/1", vec![("limits_shown", "1")])
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    let (_, off) = c.get("/api/v1/tunnels/1").await;
    assert_eq!(limits_of(&off)["ip_allow"], json!([]));
    assert_eq!(limits_of(&off)["max_concurrent_requests"], Value::Null);
    c.stop().await;
}
