//! Accounts and sessions over HTTP: first-run setup, CSRF rejection, session fixation and
//! rotation, idle-proof "log out everywhere", login throttling, `?next=`, registration and
//! security headers.

use kakuremichi_testkit::control::*;
use reqwest::header::{LOCATION, SET_COOKIE};
use reqwest::StatusCode;
use serde_json::{json, Value};

fn cookie_of(res: &reqwest::Response) -> Option<String> {
    res.headers()
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| v.split(';').next().filter(|c| c.starts_with("km_session=")))
        .map(str::to_string)
}

fn location(res: &reqwest::Response) -> String {
    res.headers()[LOCATION].to_str().unwrap().to_string()
}

/// The value of the `csrf` hidden field of a page.
fn csrf_field(html: &str) -> String {
    let at = html.find("name=\"csrf\" value=\"").expect("a csrf field") + 19;
    html[at..].split('"').next().unwrap().to_string()
}

async fn me(c: &Control, cookie: &str) -> StatusCode {
    c.http
        .get(c.url("/api/v1/auth/me"))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap()
        .status()
}

#[tokio::test]
async fn first_run_setup_creates_the_admin_once() {
    let (_tmp, dir) = data_dir();
    let c = start_fresh(&dir).await;
    let b = browser();
    let res = b.get(c.url("/")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&res), "/setup");
    let res = b.get(c.url("/login")).send().await.unwrap();
    assert_eq!(
        location(&res),
        "/setup",
        "no login before an account exists"
    );

    // A too-short password is explained, nothing is created.
    let res = b
        .post(c.url("/setup"))
        .form(&[("email", "root@example.com"), ("password", "short")])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert!(res.text().await.unwrap().contains("at least 10 characters"));

    let res = b
        .post(c.url("/setup"))
        .form(&[("email", "Root@Example.com"), ("password", ADMIN_PASSWORD)])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&res), "/");
    let cookie = cookie_of(&res).expect("signed in after setup");
    let page = b
        .get(c.url("/"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let html = page.text().await.unwrap();
    assert!(html.contains("root@example.com") && html.contains("Dashboard"));
    assert!(
        html.contains("Add a gateway"),
        "the dashboard says what to do next"
    );

    // Setup is closed now; it cannot make a second admin.
    let res = b
        .post(c.url("/setup"))
        .form(&[("email", "evil@example.com"), ("password", ADMIN_PASSWORD)])
        .send()
        .await
        .unwrap();
    assert_eq!(location(&res), "/login");
    assert!(cookie_of(&res).is_none());
    assert!(c
        .login_csrf("evil@example.com", ADMIN_PASSWORD)
        .await
        .is_none());
    assert!(c
        .login_csrf("root@example.com", ADMIN_PASSWORD)
        .await
        .is_some());
}

#[tokio::test]
async fn cookie_writes_need_the_csrf_token() {
    let (_tmp, dir) = data_dir();
    let c = start(&dir).await;
    let (cookie, csrf) = c.login_csrf(ADMIN_EMAIL, ADMIN_PASSWORD).await.unwrap();
    let create = |header: Option<&str>| {
        let mut req = c
            .http
            .post(c.url("/api/v1/agents"))
            .header("cookie", &cookie)
            .json(&json!({"name": "a"}));
        if let Some(h) = header {
            req = req.header("x-csrf-token", h);
        }
        async move { into_json(req.send().await.unwrap()).await }
    };
    let (s, body) = create(None).await;
    assert_error(s, &body, StatusCode::FORBIDDEN, "forbidden");
    assert!(body.to_string().contains("X-CSRF-Token"));
    let (s, body) = create(Some("not-the-token")).await;
    assert_error(s, &body, StatusCode::FORBIDDEN, "forbidden");
    let (s, _) = c.get("/api/v1/agents").await;
    assert_eq!(s, StatusCode::OK);
    let (s, list) = into_json(
        c.http
            .get(c.url("/api/v1/agents"))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "reads need no token");
    assert_eq!(
        list.as_array().unwrap().len(),
        0,
        "the refused writes wrote nothing"
    );
    let (s, _) = create(Some(&csrf)).await;
    assert_eq!(s, StatusCode::CREATED);
    // Bearer calls need none.
    let (s, _) = c.post("/api/v1/agents", json!({"name": "b"})).await;
    assert_eq!(s, StatusCode::CREATED);

    // UI forms: the hidden field must match the session.
    let b = browser();
    let html = b
        .get(c.url("/agents"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let field = csrf_field(&html);
    assert_eq!(field, csrf, "forms carry the session's token");
    let post = |token: String| {
        b.post(c.url("/agents"))
            .header("cookie", &cookie)
            .form(&[("csrf", token), ("name", "form-agent".to_string())])
            .send()
    };
    let res = post("forged".into()).await.unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    let res = post(String::new()).await.unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    let res = post(field).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(
        res.text().await.unwrap().contains("kma_"),
        "the key is shown once"
    );
    let (_, agents) = c.get("/api/v1/agents").await;
    assert_eq!(agents.as_array().unwrap().len(), 3);

    // A login form posted from another site is refused (login CSRF).
    let res = b
        .post(c.url("/login"))
        .header("origin", "https://evil.example")
        .form(&[("email", ADMIN_EMAIL), ("password", ADMIN_PASSWORD)])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert!(cookie_of(&res).is_none());
}

#[tokio::test]
async fn login_rotates_the_session_and_logout_everywhere_ends_all() {
    let (_tmp, dir) = data_dir();
    let c = start(&dir).await;
    let b = browser();
    // A session id planted by an attacker is never adopted.
    let planted = "km_session=attacker-chosen-value";
    let res = b
        .post(c.url("/login"))
        .header("cookie", planted)
        .form(&[
            ("email", ADMIN_EMAIL),
            ("password", ADMIN_PASSWORD),
            ("next", "/tunnels"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&res), "/tunnels", "?next= is honoured");
    let first = cookie_of(&res).unwrap();
    assert_ne!(first, planted);
    for attr in ["HttpOnly", "SameSite=Lax", "Path=/"] {
        assert!(res.headers()[SET_COOKIE].to_str().unwrap().contains(attr));
    }
    assert_eq!(me(&c, planted).await, StatusCode::UNAUTHORIZED);
    assert_eq!(me(&c, &first).await, StatusCode::OK);

    // Logging in again from the same browser replaces the session: the old id is dead.
    let res = b
        .post(c.url("/login"))
        .header("cookie", &first)
        .form(&[("email", ADMIN_EMAIL), ("password", ADMIN_PASSWORD)])
        .send()
        .await
        .unwrap();
    let second = cookie_of(&res).unwrap();
    assert_ne!(first, second);
    assert_eq!(me(&c, &first).await, StatusCode::UNAUTHORIZED);
    assert_eq!(me(&c, &second).await, StatusCode::OK);

    // `next` must stay on this site.
    for (next, expected) in [
        ("//evil.example/x", "/"),
        ("https://evil.example/", "/"),
        ("/access/x?h=1", "/access/x?h=1"),
    ] {
        let res = b
            .post(c.url("/login"))
            .form(&[
                ("email", ADMIN_EMAIL),
                ("password", ADMIN_PASSWORD),
                ("next", next),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(location(&res), expected, "next={next}");
    }
    let res = b.get(c.url("/tunnels?x=1")).send().await.unwrap();
    assert_eq!(location(&res), "/login?next=/tunnels%3Fx%3D1");

    // Log out everywhere: every session of the user ends, on every device.
    let (other, csrf) = c.login_csrf(ADMIN_EMAIL, ADMIN_PASSWORD).await.unwrap();
    let res = c
        .http
        .post(c.url("/api/v1/auth/logout-everywhere"))
        .header("cookie", &other)
        .header("x-csrf-token", csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert_eq!(me(&c, &other).await, StatusCode::UNAUTHORIZED);
    assert_eq!(me(&c, &second).await, StatusCode::UNAUTHORIZED);

    // Sessions live in the database: they survive a restart of Control.
    let (kept, _) = c.login_csrf(ADMIN_EMAIL, ADMIN_PASSWORD).await.unwrap();
    let token = c.token.clone();
    c.stop().await;
    let c = start_reusing(config(&dir), token).await;
    assert_eq!(me(&c, &kept).await, StatusCode::OK);
}

#[tokio::test]
async fn failed_logins_are_throttled_per_account_and_per_address() {
    let (_tmp, dir) = data_dir();
    let c = start(&dir).await;
    let login = |email: &str, password: &str| {
        c.http
            .post(c.url("/api/v1/auth/login"))
            .json(&json!({"email": email, "password": password}))
            .send()
    };
    for _ in 0..4 {
        assert_eq!(
            login(ADMIN_EMAIL, "wrong").await.unwrap().status(),
            StatusCode::UNAUTHORIZED
        );
    }
    let res = login(ADMIN_EMAIL, "wrong").await.unwrap();
    assert_eq!(
        res.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "the fifth failure starts the wait"
    );
    // Even the right password waits now.
    let res = login(ADMIN_EMAIL, ADMIN_PASSWORD).await.unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    let wait: u64 = res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=30).contains(&wait), "{wait}");
    let (_, body) = into_json(res).await;
    assert_eq!(body["error"]["code"], "too_many_requests");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&format!("try again in {wait} seconds")),
        "{body}"
    );
    // The login page says it too.
    let res = browser()
        .post(c.url("/login"))
        .form(&[("email", ADMIN_EMAIL), ("password", ADMIN_PASSWORD)])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(res.headers().contains_key("retry-after"));
    assert!(res.text().await.unwrap().contains("try again in"));

    // One address guessing many accounts is slowed down as well (20 failures).
    for i in 0..14 {
        let s = login(&format!("guess{i}@example.com"), "x")
            .await
            .unwrap()
            .status();
        assert_eq!(s, StatusCode::UNAUTHORIZED, "attempt {i}");
    }
    let res = login("another@example.com", "x").await.unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn registration_is_closed_by_default_and_works_by_invitation() {
    let (_tmp, dir) = data_dir();
    let c = start(&dir).await;
    let b = browser();
    let form = |email: &'static str, invite: Option<String>| {
        let mut fields = vec![
            ("email", email.to_string()),
            ("password", ADMIN_PASSWORD.to_string()),
        ];
        if let Some(i) = invite {
            fields.push(("invite", i));
        }
        b.post(c.url("/register")).form(&fields).send()
    };
    let res = form("walkin@example.com", None).await.unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert!(res.text().await.unwrap().contains("invitation"));

    let (s, inv) = c
        .post(
            "/api/v1/invitations",
            json!({"email": "Friend@example.com"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{inv}");
    let token = inv["token"].as_str().unwrap().to_string();
    let page = b
        .get(c.url(inv["path"].as_str().unwrap()))
        .send()
        .await
        .unwrap();
    assert!(page.text().await.unwrap().contains("friend@example.com"));
    let res = form("ignored@example.com", Some(token.clone()))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert!(cookie_of(&res).is_some());
    assert!(c
        .login_csrf("friend@example.com", ADMIN_PASSWORD)
        .await
        .is_some());
    let res = form("ignored@example.com", Some(token)).await.unwrap();
    assert_eq!(
        res.status(),
        StatusCode::BAD_REQUEST,
        "an invitation works once"
    );

    let (s, _) = c
        .patch("/api/v1/settings", json!({"open_registration": true}))
        .await;
    assert_eq!(s, StatusCode::OK);
    let res = form("walkin@example.com", None).await.unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    let (_, users) = c.get("/api/v1/users").await;
    let walkin = users
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["email"] == "walkin@example.com")
        .unwrap();
    assert_eq!(walkin["is_admin"], false, "open registration makes members");
}

#[tokio::test]
async fn every_response_has_the_security_headers() {
    let (_tmp, dir) = data_dir();
    let c = start(&dir).await;
    for path in [
        "/login",
        "/api/v1/status",
        "/static/app.js",
        "/no-such-page",
    ] {
        let res = c.http.get(c.url(path)).send().await.unwrap();
        let h = res.headers();
        let csp = h["content-security-policy"].to_str().unwrap();
        assert!(
            csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
            "{path}: {csp}"
        );
        assert!(csp.contains("frame-ancestors 'none'"));
        assert_eq!(h["x-frame-options"], "DENY");
        assert_eq!(h["x-content-type-options"], "nosniff");
        assert_eq!(h["referrer-policy"], "same-origin");
    }
    // A login on the way to a protected tunnel may post into a redirect chain ending there
    // (browsers apply form-action to it); the rest of the policy stays.
    let next = "/access/authorize?host=app.test&return=http%3A%2F%2Fapp.test%3A8080%2Fx";
    for path in [
        format!("/login?next={}", urlencode(next)),
        "/login".to_string(),
    ] {
        let res = c.http.get(c.url(&path)).send().await.unwrap();
        let csp = res.headers()["content-security-policy"].to_str().unwrap();
        let wide = path != "/login";
        assert_eq!(
            csp.contains("form-action 'self' http://app.test:*;"),
            wide,
            "{path}: {csp}"
        );
        assert!(csp.contains("frame-ancestors 'none'") && csp.contains("script-src 'self'"));
    }
    let res = c.http.get(c.url("/api/v1/nope")).send().await.unwrap();
    let (s, body): (StatusCode, Value) = into_json(res).await;
    assert_error(s, &body, StatusCode::NOT_FOUND, "not_found");
    let res = c.http.get(c.url("/nope")).send().await.unwrap();
    assert!(res.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
}

fn urlencode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}
