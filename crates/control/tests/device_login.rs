//! `kakuremichi login`'s half in Control (issue #17): a device-code sign-in started anonymously,
//! approved or denied on `/device` by a signed-in user, redeemed once for a personal API token;
//! bounded per client address; bad input changes nothing.

use kakuremichi_testkit::control::*;
use reqwest::header::{LOCATION, RETRY_AFTER};
use reqwest::StatusCode;
use serde_json::{json, Value};

async fn start_login(c: &Control, body: Value) -> (StatusCode, Value) {
    let reply = c
        .call_with("", "POST", "/api/v1/auth/device", Some(body))
        .await;
    (reply.status, reply.body)
}

async fn poll(c: &Control, device_code: &str) -> (StatusCode, Value) {
    let body = json!({ "device_code": device_code });
    let reply = c
        .call_with("", "POST", "/api/v1/auth/device/token", Some(body))
        .await;
    (reply.status, reply.body)
}

/// `GET /device?code=...` as the browser with `cookie`: status, body and `Location`.
async fn device_page(c: &Control, cookie: &str, code: &str) -> (StatusCode, String, String) {
    let res = browser()
        .get(c.url(&format!("/device?code={code}")))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap();
    let location = res
        .headers()
        .get(LOCATION)
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (res.status(), location, res.text().await.unwrap())
}

/// The approval form posted as the browser.
async fn decide(
    c: &Control,
    session: &(String, String),
    code: &str,
    decision: &str,
) -> (StatusCode, String) {
    let res = browser()
        .post(c.url("/device"))
        .header("cookie", &session.0)
        .form(&[
            ("csrf", session.1.as_str()),
            ("code", code),
            ("decision", decision),
        ])
        .send()
        .await
        .unwrap();
    (res.status(), res.text().await.unwrap())
}

fn code_of(started: &Value) -> (String, String) {
    (
        started["device_code"].as_str().unwrap().to_string(),
        started["user_code"].as_str().unwrap().to_string(),
    )
}

#[tokio::test]
async fn a_sign_in_approved_in_the_browser_gives_the_cli_one_token() {
    let (_dir, data) = data_dir();
    let c = start(&data).await;
    let (s, started) = start_login(&c, json!({"name": "CLI on laptop"})).await;
    assert_eq!(s, StatusCode::OK, "{started}");
    let (device, user) = code_of(&started);
    assert!(device.starts_with("kmd_") && device.len() > 40, "{started}");
    let letters = user.replace('-', "");
    assert!(user.len() == 9 && &user[4..5] == "-", "{user}");
    assert!(
        letters.chars().all(|c| "BCDFGHJKLMNPQRSTVWXZ".contains(c)),
        "{user}"
    );
    assert_eq!(started["verification_path"], "/device");
    assert_eq!(
        started["verification_path_complete"],
        format!("/device?code={user}")
    );
    assert_eq!(started["expires_in"], 600);
    assert!(started["interval"].as_u64().unwrap() >= 1);

    // Not approved yet; polling again within the second is told to slow down.
    let (s, body) = poll(&c, &device).await;
    assert_error(s, &body, StatusCode::BAD_REQUEST, "authorization_pending");
    let mut slowed = false;
    for _ in 0..20 {
        let (s, body) = poll(&c, &device).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
        if body["error"]["code"] == "slow_down" {
            slowed = true;
            break;
        }
    }
    assert!(slowed, "polls in a burst are told to slow down");

    // The approval page: a visitor without a session is sent to log in and back.
    let (s, location, _) = device_page(&c, "", &user).await;
    assert!(s.is_redirection(), "{s}");
    assert_eq!(location, format!("/login?next=/device%3Fcode%3D{user}"));
    let admin = c.login_csrf(ADMIN_EMAIL, ADMIN_PASSWORD).await.unwrap();
    let (s, _, page) = device_page(&c, &admin.0, &letters.to_lowercase()).await;
    assert_eq!(s, StatusCode::OK);
    assert!(
        page.contains(&user) && page.contains("CLI on laptop"),
        "{page}"
    );
    assert!(
        page.contains("127.0.0.1") && page.contains("id=\"approve\""),
        "{page}"
    );

    // A form without the session's CSRF token changes nothing.
    let forged = (admin.0.clone(), "not-the-token".to_string());
    let (s, _) = decide(&c, &forged, &user, "approve").await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, body) = poll(&c, &device).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
    assert_ne!(body["error"]["code"], "access_denied", "{body}");
    let (s, page) = decide(&c, &admin, &user, "maybe").await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{page}");

    let (s, page) = decide(&c, &admin, &user, "approve").await;
    assert_eq!(s, StatusCode::OK, "{page}");
    assert!(page.contains("Command line signed in"), "{page}");
    // Decided: the page no longer offers it.
    let (s, _, _) = device_page(&c, &admin.0, &user).await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // The next poll gets the token (whatever the second), and only that poll.
    let issued = loop {
        let (s, body) = poll(&c, &device).await;
        if s == StatusCode::OK {
            break body;
        }
        assert_eq!(body["error"]["code"], "slow_down", "{body}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert_eq!(issued["user"]["email"], ADMIN_EMAIL);
    assert_eq!(issued["token_name"], "CLI on laptop");
    let token = issued["token"].as_str().unwrap();
    assert!(token.starts_with("kmt_"), "{issued}");
    let reply = c.call_with(token, "GET", "/api/v1/auth/me", None).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body["user"]["email"], ADMIN_EMAIL);
    let (_, tokens) = c.get("/api/v1/tokens").await;
    let listed = tokens
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == issued["token_id"]);
    assert_eq!(listed.unwrap()["name"], "CLI on laptop", "{tokens}");
    let (s, body) = poll(&c, &device).await;
    assert_error(s, &body, StatusCode::BAD_REQUEST, "expired_token");

    let (_, audit) = c.get("/api/v1/audit").await;
    let actions: Vec<&str> = audit["entries"]
        .as_array()
        .or(audit.as_array())
        .unwrap()
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert!(actions.contains(&"device_login.approve"), "{audit}");
}

#[tokio::test]
async fn a_denied_sign_in_gets_nothing_and_bad_input_changes_nothing() {
    let (_dir, data) = data_dir();
    let c = start(&data).await;
    let member = member(&c, "bob@example.com").await;
    let session = c
        .login_csrf("bob@example.com", ADMIN_PASSWORD)
        .await
        .unwrap();
    let (s, started) = start_login(&c, json!({})).await;
    assert_eq!(s, StatusCode::OK, "{started}");
    let (device, user) = code_of(&started);
    let (s, page) = decide(&c, &session, &user, "deny").await;
    assert_eq!(s, StatusCode::OK, "{page}");
    assert!(page.contains("Sign-in denied"), "{page}");
    let (s, body) = poll(&c, &device).await;
    assert_error(s, &body, StatusCode::BAD_REQUEST, "access_denied");
    let (s, body) = poll(&c, &device).await;
    assert_error(s, &body, StatusCode::BAD_REQUEST, "expired_token");
    // Too late to approve it now.
    let (s, _) = decide(&c, &session, &user, "approve").await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    let tokens_before = member.call(&c, "GET", "/api/v1/tokens", None).await.1;
    let long = "x".repeat(500);
    for bad in [
        json!({"name": long}),
        json!({"name": "ok", "extra": 1}),
        json!({"name": "line\nbreak"}),
        json!({"name": 5}),
    ] {
        let (s, body) = start_login(&c, bad.clone()).await;
        assert_error(s, &body, StatusCode::BAD_REQUEST, "bad_request");
    }
    for bad in [
        json!({}),
        json!({"device_code": 1}),
        json!({"device_code": "x", "more": 1}),
    ] {
        let (s, body) = poll(&c, "").await;
        assert_error(s, &body, StatusCode::BAD_REQUEST, "expired_token");
        let reply = c
            .call_with("", "POST", "/api/v1/auth/device/token", Some(bad.clone()))
            .await;
        assert_error(
            reply.status,
            &reply.body,
            StatusCode::BAD_REQUEST,
            "bad_request",
        );
    }
    for code in ["", "AAAA-AAAA", "BCDF-GHJ", "%3Cscript%3E"] {
        let (s, _, page) = device_page(&c, &session.0, code).await;
        if code.is_empty() {
            assert_eq!(s, StatusCode::OK);
            assert!(page.contains("name=\"code\""), "{page}");
        } else {
            assert_eq!(s, StatusCode::NOT_FOUND, "{code}");
            assert!(!page.contains("<script>"), "{page}");
        }
    }
    let tokens_after = member.call(&c, "GET", "/api/v1/tokens", None).await.1;
    assert_eq!(tokens_before, tokens_after);
}

#[tokio::test]
async fn anonymous_starts_are_bounded_per_client() {
    let (_dir, data) = data_dir();
    let c = start(&data).await;
    for i in 0..5 {
        let (s, body) = start_login(&c, json!({})).await;
        assert_eq!(s, StatusCode::OK, "start {i}: {body}");
    }
    let res = c
        .http
        .post(c.url("/api/v1/auth/device"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    let wait: u64 = res.headers()[RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(wait > 0 && wait <= 600, "{wait}");
    let (s, body) = into_json(res).await;
    assert_error(s, &body, StatusCode::TOO_MANY_REQUESTS, "too_many_requests");
}
