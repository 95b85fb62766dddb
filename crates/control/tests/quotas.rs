//! Per-user quotas (issue 14): settings in `GET/PATCH /api/v1/settings`, enforced on every write
//! path with a 403 naming the quota (counts, allow-list size) or a 429 with `Retry-After` (API
//! rate), and nothing written when refused.

use kakuremichi_testkit::control::*;
use reqwest::StatusCode;
use serde_json::json;

/// Asserts a 403 whose message names `quota` and its `limit`.
fn assert_quota(status: StatusCode, body: &serde_json::Value, quota: &str, limit: u32) {
    assert_error(status, body, StatusCode::FORBIDDEN, "forbidden");
    let msg = body["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains(quota) && msg.contains(&format!("{quota} is {limit}")),
        "{msg}"
    );
}

#[tokio::test]
async fn settings_show_defaults_and_change_quotas_checked() {
    let (_tmp, dir) = data_dir();
    let c = start(&dir).await;
    let (s, body) = c.get("/api/v1/settings").await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        json!({"open_registration": false, "max_tunnels_per_user": 500, "max_agents_per_user": 100,
               "max_allow_list_entries": 200, "api_requests_per_minute": 600,
               "max_temporary_tunnels_per_user": 5, "error_page": null})
    );
    // A partial PATCH changes only what it names.
    let (s, body) = c
        .patch("/api/v1/settings", json!({"max_agents_per_user": 7}))
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(
        (&body["max_agents_per_user"], &body["max_tunnels_per_user"]),
        (&json!(7), &json!(500))
    );
    // Out of range (the validator's hard limit stays an upper bound): 400, nothing changed.
    for bad in [
        json!({"max_allow_list_entries": 1001, "max_agents_per_user": 1}),
        json!({"api_requests_per_minute": 0}),
        json!({"max_tunnels_per_user": -1}),
    ] {
        let (s, body) = c.patch("/api/v1/settings", bad.clone()).await;
        assert_error(s, &body, StatusCode::BAD_REQUEST, "bad_request");
    }
    assert_eq!(c.get("/api/v1/settings").await.1["max_agents_per_user"], 7);
    // Members may neither read nor change them.
    let (_, member) = member_token(&c, "m@example.com").await;
    let (s, _, _) = call_as(&c, &member, "GET", "/api/v1/settings", None).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let body = json!({"max_tunnels_per_user": 100000});
    let (s, _, _) = call_as(&c, &member, "PATCH", "/api/v1/settings", Some(body)).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert_eq!(
        c.get("/api/v1/settings").await.1["max_tunnels_per_user"],
        500
    );
}

#[tokio::test]
async fn a_member_cannot_own_more_agents_than_the_quota() {
    let (_tmp, dir) = data_dir();
    let c = start(&dir).await;
    c.patch("/api/v1/settings", json!({"max_agents_per_user": 2}))
        .await;
    let (_, m) = member_token(&c, "m@example.com").await;
    for i in 0..2 {
        let body = json!({"name": format!("a{i}")});
        let (s, b, _) = call_as(&c, &m, "POST", "/api/v1/agents", Some(body)).await;
        assert_eq!(s, StatusCode::CREATED, "{b}");
    }
    let body = json!({"name": "one-too-many"});
    let (s, b, _) = call_as(&c, &m, "POST", "/api/v1/agents", Some(body)).await;
    assert_quota(s, &b, "max_agents_per_user", 2);
    let (_, agents) = c.get("/api/v1/agents").await;
    assert_eq!(agents.as_array().unwrap().len(), 2, "nothing written");
    // Admins' agents are shared, not counted against anyone.
    c.agent("admin-1").await;
    c.agent("admin-2").await;
    c.agent("admin-3").await;
}

#[tokio::test]
async fn a_member_cannot_own_more_tunnels_than_the_quota() {
    let (_tmp, dir) = data_dir();
    let c = start(&dir).await;
    c.patch("/api/v1/settings", json!({"max_tunnels_per_user": 1}))
        .await;
    let (_, m) = member_token(&c, "m@example.com").await;
    let (_, agent, _) = call_as(&c, &m, "POST", "/api/v1/agents", Some(json!({"name": "a"}))).await;
    let tunnel =
        |h: &str| json!({"hostname": h, "agent_id": agent["id"], "target": "app:80", "tls": "off"});
    let (s, b, _) = call_as(
        &c,
        &m,
        "POST",
        "/api/v1/tunnels",
        Some(tunnel("one.example.com")),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let (s, b, _) = call_as(
        &c,
        &m,
        "POST",
        "/api/v1/tunnels",
        Some(tunnel("two.example.com")),
    )
    .await;
    assert_quota(s, &b, "max_tunnels_per_user", 1);
    let (_, all) = c.get("/api/v1/tunnels").await;
    assert_eq!(all.as_array().unwrap().len(), 1, "nothing written");
    // Raised by an admin: the member may create it now.
    c.patch("/api/v1/settings", json!({"max_tunnels_per_user": 2}))
        .await;
    let (s, b, _) = call_as(
        &c,
        &m,
        "POST",
        "/api/v1/tunnels",
        Some(tunnel("two.example.com")),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
}

#[tokio::test]
async fn allow_lists_are_capped_on_create_and_update() {
    let (_tmp, dir) = data_dir();
    let c = start(&dir).await;
    c.patch("/api/v1/settings", json!({"max_allow_list_entries": 3}))
        .await;
    let (_, m) = member_token(&c, "m@example.com").await;
    let (_, agent, _) = call_as(&c, &m, "POST", "/api/v1/agents", Some(json!({"name": "a"}))).await;
    let list = |n: usize| {
        let allow: Vec<String> = (0..n).map(|i| format!("u{i}@example.com")).collect();
        json!({"mode": "users", "allow": allow})
    };
    let body = json!({"hostname": "app.example.com", "agent_id": agent["id"], "target": "app:80",
                      "tls": "off", "access": list(4)});
    let (s, b, _) = call_as(&c, &m, "POST", "/api/v1/tunnels", Some(body.clone())).await;
    assert_quota(s, &b, "max_allow_list_entries", 3);
    assert!(c
        .get("/api/v1/tunnels")
        .await
        .1
        .as_array()
        .unwrap()
        .is_empty());
    // An admin is held to it too (a property of the tunnel), on create...
    let (s, b) = c.post("/api/v1/tunnels", body).await;
    assert_quota(s, &b, "max_allow_list_entries", 3);
    // ...and anyone on update; the stored list stays as it was.
    let body = json!({"hostname": "app.example.com", "agent_id": agent["id"], "target": "app:80",
                      "tls": "off", "access": list(3)});
    let (s, t, _) = call_as(&c, &m, "POST", "/api/v1/tunnels", Some(body)).await;
    assert_eq!(s, StatusCode::CREATED, "{t}");
    let path = format!("/api/v1/tunnels/{}", t["id"]);
    let (s, b, _) = call_as(&c, &m, "PATCH", &path, Some(json!({"access": list(4)}))).await;
    assert_quota(s, &b, "max_allow_list_entries", 3);
    let (_, now) = c.get(&path).await;
    assert_eq!(now["access"]["allow"].as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn api_requests_are_rate_limited_per_user_with_retry_after() {
    let (_tmp, dir) = data_dir();
    let c = start(&dir).await;
    let (_, m) = member_token(&c, "m@example.com").await;
    let (s, _) = c
        .patch("/api/v1/settings", json!({"api_requests_per_minute": 5}))
        .await;
    assert_eq!(s, StatusCode::OK);
    // A minute's worth at once, then 429 with Retry-After (one token every 12 s at 5/min).
    for _ in 0..5 {
        let (s, b, _) = call_as(&c, &m, "GET", "/api/v1/agents", None).await;
        assert_eq!(s, StatusCode::OK, "{b}");
    }
    let body = json!({"name": "refused"});
    let (s, b, retry) = call_as(&c, &m, "POST", "/api/v1/agents", Some(body)).await;
    assert_error(s, &b, StatusCode::TOO_MANY_REQUESTS, "too_many_requests");
    let msg = b["error"]["message"].as_str().unwrap();
    assert!(msg.contains("api_requests_per_minute is 5"), "{msg}");
    let retry: u64 = retry.expect("Retry-After").parse().unwrap();
    assert!((1..=12).contains(&retry), "{retry}");
    // Nothing written; a second token of the same user shares the bucket; the admin (also
    // limited, with their own bucket) still has requests left.
    let (_, agents) = c.get("/api/v1/agents").await;
    assert!(agents.as_array().unwrap().is_empty());
    let (cookie, csrf) = c.login_csrf("m@example.com", ADMIN_PASSWORD).await.unwrap();
    let res = c
        .http
        .get(c.url("/api/v1/agents"))
        .header("cookie", cookie)
        .header("x-csrf-token", csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    for _ in 0..3 {
        assert_eq!(c.get("/api/v1/tunnels").await.0, StatusCode::OK);
    }
    let mut spent = false;
    for _ in 0..5 {
        spent |= c.get("/api/v1/tunnels").await.0 == StatusCode::TOO_MANY_REQUESTS;
    }
    assert!(spent, "admins are not exempt from the API rate limit");
}

#[tokio::test]
async fn the_users_page_shows_and_sets_the_quotas() {
    let (_tmp, dir) = data_dir();
    let c = start(&dir).await;
    let (cookie, csrf) = c.login_csrf(ADMIN_EMAIL, ADMIN_PASSWORD).await.unwrap();
    let page = c
        .http
        .get(c.url("/users"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains(r#"name="max_tunnels_per_user" min="0" max="100000" required value="500""#),
        "{page}"
    );
    let form = [
        ("csrf", csrf.as_str()),
        ("max_tunnels_per_user", "12"),
        ("max_agents_per_user", "3"),
        ("max_allow_list_entries", "50"),
        ("api_requests_per_minute", "900"),
    ];
    let no_redirect = browser();
    let res = no_redirect
        .post(c.url("/users/quotas"))
        .header("cookie", &cookie)
        .form(&form)
        .send()
        .await
        .unwrap();
    assert!(res.status().is_redirection(), "{}", res.status());
    let (_, settings) = c.get("/api/v1/settings").await;
    assert_eq!(
        (
            &settings["max_tunnels_per_user"],
            &settings["max_agents_per_user"],
            &settings["max_allow_list_entries"],
            &settings["api_requests_per_minute"]
        ),
        (&json!(12), &json!(3), &json!(50), &json!(900))
    );
    // Out of range from the form: refused with the reason, nothing changed.
    let bad = [("csrf", csrf.as_str()), ("max_allow_list_entries", "5000")];
    let res = no_redirect
        .post(c.url("/users/quotas"))
        .header("cookie", &cookie)
        .form(&bad)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert!(res.text().await.unwrap().contains("between 1 and 1000"));
    assert_eq!(
        c.get("/api/v1/settings").await.1["max_allow_list_entries"],
        50
    );
}
