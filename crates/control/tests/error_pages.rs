//! Custom error pages (issue #22): a tunnel's `error_page` and the global one (setting
//! `error_page`) through the API, their limits (64 KiB a page, a budget for all of them in a
//! Gateway's snapshot), and how they reach a Gateway: each page once, by digest.

use kakuremichi_proto::{error_page_digest, NodeRole, MAX_ERROR_PAGE_BYTES};
use kakuremichi_testkit::control::*;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::time::Duration;

/// A page of exactly `len` bytes.
fn page_of(len: usize, fill: char) -> String {
    let head = "<p>{{status}} {{request_id}}</p>";
    format!("{head}{}", fill.to_string().repeat(len - head.len()))
}

fn message(body: &Value) -> &str {
    body["error"]["message"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn a_tunnels_page_is_capped_at_64_kib_and_null_clears_it() {
    let (_tmp, dir) = data_dir();
    let c = start(&dir).await;
    let agent = c.agent("a1").await["id"].as_i64().unwrap();
    let t = c.tunnel("app.example.com", agent, "app:80").await;
    assert_eq!(t["error_page"], Value::Null);
    let path = format!("/api/v1/tunnels/{}", t["id"]);

    let largest = page_of(MAX_ERROR_PAGE_BYTES, 'x');
    let (s, body) = c.patch(&path, json!({"error_page": largest})).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["error_page"], json!(largest));

    let too_big = page_of(MAX_ERROR_PAGE_BYTES + 1, 'x');
    let (s, body) = c.patch(&path, json!({"error_page": too_big})).await;
    assert_error(s, &body, StatusCode::BAD_REQUEST, "bad_request");
    assert!(
        message(&body).contains("65537 bytes") && message(&body).contains("64 KiB"),
        "{body}"
    );
    assert_eq!(
        c.get(&path).await.1["error_page"],
        json!(largest),
        "unchanged"
    );
    let body = json!({"hostname": "big.example.com", "agent_id": agent, "target": "a:1",
        "error_page": too_big});
    let (s, body) = c.post("/api/v1/tunnels", body).await;
    assert_error(s, &body, StatusCode::BAD_REQUEST, "bad_request");

    // A PATCH that does not name it keeps it; null clears it.
    let (_, body) = c.patch(&path, json!({"target": "app:81"})).await;
    assert_eq!(body["error_page"], json!(largest));
    let (s, body) = c.patch(&path, json!({"error_page": null})).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["error_page"], Value::Null);

    // Only HTTP tunnels have pages.
    let body = json!({"hostname": "db.example.com", "agent_id": agent, "target": "db:5432",
        "protocol": "tcp", "error_page": "<p>down</p>"});
    let (s, body) = c.post("/api/v1/tunnels", body).await;
    assert_error(s, &body, StatusCode::BAD_REQUEST, "bad_request");
    assert!(
        message(&body).contains("error_page applies to http tunnels"),
        "{body}"
    );
}

#[tokio::test]
async fn the_global_page_is_an_admin_setting() {
    let (_tmp, dir) = data_dir();
    let c = start(&dir).await;
    assert_eq!(c.get("/api/v1/settings").await.1["error_page"], Value::Null);
    let html = "<h1>{{status}}</h1><p>{{request_id}}</p>";
    let (s, body) = c
        .patch("/api/v1/settings", json!({"error_page": html}))
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["error_page"], html);
    let too_big = page_of(MAX_ERROR_PAGE_BYTES + 1, 'y');
    let (s, body) = c
        .patch("/api/v1/settings", json!({"error_page": too_big}))
        .await;
    assert_error(s, &body, StatusCode::BAD_REQUEST, "bad_request");
    assert!(message(&body).contains("64 KiB"), "{body}");
    // Members may not change it.
    let (_, member) = member_token(&c, "m@example.com").await;
    let patch = json!({"error_page": "<p>mine</p>"});
    let (s, _, _) = call_as(&c, &member, "PATCH", "/api/v1/settings", Some(patch)).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert_eq!(c.get("/api/v1/settings").await.1["error_page"], html);
    let (s, body) = c
        .patch("/api/v1/settings", json!({"error_page": null}))
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["error_page"], Value::Null);
}

#[tokio::test]
async fn pages_reach_a_gateway_once_each_within_a_budget() {
    let (_tmp, dir) = data_dir();
    let c = start(&dir).await;
    let agent = c.agent("a1").await["id"].as_i64().unwrap();
    let gateway = c.gateway("gw").await;
    let token = gateway["token"].as_str().unwrap().to_string();
    // 64 distinct pages of 64 KiB: exactly the budget (a quarter of a node message).
    let full = page_of(MAX_ERROR_PAGE_BYTES, 'x');
    let pages: Vec<String> = (0..64).map(|i| format!("{i:02}{}", &full[2..])).collect();
    for (i, page) in pages.iter().enumerate() {
        let body = json!({"hostname": format!("t{i}.example.com"), "agent_id": agent,
            "target": "app:80", "tls": "off", "error_page": page});
        let (s, body) = c.post("/api/v1/tunnels", body).await;
        assert_eq!(s, StatusCode::CREATED, "{}", message(&body));
    }
    // One more distinct page is refused; the same page again costs nothing.
    let body = json!({"hostname": "more.example.com", "agent_id": agent, "target": "app:80",
        "tls": "off", "error_page": page_of(1000, 'z')});
    let (s, body) = c.post("/api/v1/tunnels", body).await;
    assert_error(s, &body, StatusCode::BAD_REQUEST, "bad_request");
    assert!(message(&body).contains("budget"), "{body}");
    let (s, body) = c
        .patch(
            "/api/v1/settings",
            json!({"error_page": page_of(1000, 'z')}),
        )
        .await;
    assert_error(s, &body, StatusCode::BAD_REQUEST, "bad_request");
    let body = json!({"hostname": "same.example.com", "agent_id": agent, "target": "app:80",
        "tls": "off", "error_page": pages[0]});
    let (s, body) = c.post("/api/v1/tunnels", body).await;
    assert_eq!(s, StatusCode::CREATED, "{}", message(&body));
    // The global page may be one of them.
    let (s, body) = c
        .patch("/api/v1/settings", json!({"error_page": pages[1]}))
        .await;
    assert_eq!(s, StatusCode::OK, "{}", message(&body));

    let (mut ws, _, _) = c.node(&token, NodeRole::Gateway, None).await;
    let snapshot = next_config(&mut ws, Duration::from_secs(10)).await;
    assert_eq!(snapshot.error_pages.len(), 64);
    let first = error_page_digest(&pages[0]);
    assert_eq!(
        snapshot.routes["t0.example.com"].error_page,
        Some(first.clone())
    );
    assert_eq!(
        snapshot.routes["same.example.com"].error_page,
        Some(first.clone())
    );
    assert_eq!(snapshot.error_pages[&first], pages[0]);
    assert_eq!(
        snapshot.default_error_page,
        Some(error_page_digest(&pages[1]))
    );
}
