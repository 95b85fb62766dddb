//! Control under abuse (issue 14): login bursts and who the client is behind proxies, one
//! definition of a valid session, open registration against allow-lists, API logout and
//! cookies, the sign-in redirect, and private files.

use kakuremichi_testkit::control::*;
use reqwest::header::{LOCATION, SET_COOKIE};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// The `name=value` pair of the session cookie a response sets, whatever its name.
fn session_cookie_of(res: &reqwest::Response) -> Option<String> {
    res.headers()
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.contains("km_session="))
        .and_then(|v| v.split(';').next())
        .map(str::to_string)
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

/// `GET /access/authorize` for `host` with `cookie`; the status and `Location`, if any.
async fn authorize(c: &Control, host: &str, cookie: &str) -> (StatusCode, String) {
    let query = format!("host={host}&return=http%3A%2F%2F{host}%2Fpage");
    let res = browser()
        .get(c.url(&format!("/access/authorize?{query}")))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap();
    let location = res
        .headers()
        .get(LOCATION)
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (res.status(), location)
}

/// A tunnel at `host` with the given access policy.
async fn protected(c: &Control, host: &str, access: Value) {
    let agent = c.agent(&host.replace('.', "-")).await;
    let body = json!({"hostname": host, "agent_id": agent["id"], "target": "127.0.0.1:9",
        "tls": "off", "access": access});
    let (status, body) = c.post("/api/v1/tunnels", body).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_wrong_logins_gets_no_more_guesses_than_the_limit() {
    let (_tmp, dir) = data_dir();
    let c = start(&dir).await;
    let attempts = (0..300).map(|i| {
        let password = if i == 299 {
            ADMIN_PASSWORD.to_string()
        } else {
            format!("guess number {i}")
        };
        let req = c
            .http
            .post(c.url("/api/v1/auth/login"))
            .json(&json!({"email": ADMIN_EMAIL, "password": password}));
        async move {
            let res = req.send().await.unwrap();
            (res.status(), res.headers().contains_key("retry-after"))
        }
    });
    let results = futures_util::future::join_all(attempts).await;
    let throttled = results
        .iter()
        .filter(|(s, _)| *s == StatusCode::TOO_MANY_REQUESTS)
        .count();
    let wrong = results
        .iter()
        .filter(|(s, _)| *s == StatusCode::UNAUTHORIZED)
        .count();
    eprintln!("300 concurrent logins: {wrong} answered 401, {throttled} answered 429");
    assert!(wrong <= 5, "{wrong} guesses were checked and refused");
    assert!(throttled >= 295, "{throttled}");
    assert!(results
        .iter()
        .filter(|(s, _)| *s == StatusCode::TOO_MANY_REQUESTS)
        .all(|(_, retry)| *retry));
    assert_eq!(
        results[299].0,
        StatusCode::TOO_MANY_REQUESTS,
        "the right password, behind the burst, was not checked"
    );
}

/// Guesses at 20 different accounts, each claiming another client in `X-Forwarded-For`; then
/// the status of one more guess from yet another claimed client.
async fn spoofing_guesses(c: &Control) -> StatusCode {
    let guess = |i: u32| {
        c.http
            .post(c.url("/api/v1/auth/login"))
            .header("x-forwarded-for", format!("198.51.100.{i}"))
            .json(&json!({"email": format!("nobody{i}@example.com"), "password": "x"}))
            .send()
    };
    for i in 0..20 {
        let status = guess(i).await.unwrap().status();
        assert!(status.is_client_error(), "{status}");
    }
    guess(200).await.unwrap().status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_for_names_the_client_only_from_a_trusted_proxy() {
    // Nobody trusted: the header is the client's own claim, and the peer is the throttle key.
    let (_tmp, dir) = data_dir();
    let c = start(&dir).await;
    assert_eq!(
        spoofing_guesses(&c).await,
        StatusCode::TOO_MANY_REQUESTS,
        "a spoofed X-Forwarded-For does not give a fresh throttle key"
    );
    c.stop().await;

    // Loopback trusted (Control published through an Agent on this host): each forwarded
    // client has its own count, and one forwarded client is still throttled.
    let (_tmp, dir) = data_dir();
    let c = start_with(kakuremichi_control::ControlConfig {
        trusted_proxies: vec!["127.0.0.1/32".into()],
        ..config(&dir)
    })
    .await;
    assert_eq!(spoofing_guesses(&c).await, StatusCode::UNAUTHORIZED);
    for i in 0..20 {
        let status = c
            .http
            .post(c.url("/api/v1/auth/login"))
            .header("x-forwarded-for", "203.0.113.9")
            .json(&json!({"email": format!("other{i}@example.com"), "password": "x"}))
            .send()
            .await
            .unwrap()
            .status();
        assert!(status.is_client_error(), "{status}");
    }
    let res = c
        .http
        .post(c.url("/api/v1/auth/login"))
        .header("x-forwarded-for", "6.6.6.6, 203.0.113.9")
        .json(&json!({"email": "last@example.com", "password": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "the right-most untrusted address is the client, whatever it wrote on the left"
    );
}

/// Ages the session of `cookie` past the idle limit (12 h unused), in the database.
async fn make_idle(dir: &std::path::Path) {
    let db = kakuremichi_testkit::roles::test_db(dir).await;
    let old = "2000-01-01T00:00:00Z";
    let aged = sqlx::query("UPDATE sessions SET last_seen_at = $1")
        .bind(old)
        .execute(&db)
        .await
        .unwrap();
    assert!(aged.rows_affected() > 0);
    db.close().await;
}

#[tokio::test]
async fn an_idle_session_mints_no_access_token() {
    let (_tmp, dir) = data_dir();
    let c = start(&dir).await;
    protected(&c, "app.test", json!({"mode": "login"})).await;
    let cookie = c.login(ADMIN_EMAIL, ADMIN_PASSWORD).await.unwrap();
    let (status, to) = authorize(&c, "app.test", &cookie).await;
    assert_eq!(status, StatusCode::FOUND);
    assert!(
        to.starts_with("http://app.test/.kakuremichi/access?token="),
        "{to}"
    );

    make_idle(&dir).await;
    assert_eq!(
        me(&c, &cookie).await,
        StatusCode::UNAUTHORIZED,
        "the API says so"
    );
    let (status, to) = authorize(&c, "app.test", &cookie).await;
    assert_eq!(status, StatusCode::FOUND);
    assert!(
        to.starts_with("/login?next="),
        "back to the login, no token: {to}"
    );
}

/// Registers `email` through the open registration form; the session cookie.
async fn register(c: &Control, email: &str) -> String {
    let res = browser()
        .post(c.url("/register"))
        .form(&[("email", email), ("password", "a long enough password")])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER, "registered");
    session_cookie_of(&res).expect("signed in")
}

#[tokio::test]
async fn open_registration_cannot_claim_an_allow_listed_address() {
    let (_tmp, dir) = data_dir();
    let c = start(&dir).await;
    let (s, _) = c
        .patch("/api/v1/settings", json!({"open_registration": true}))
        .await;
    assert_eq!(s, StatusCode::OK);
    protected(
        &c,
        "payroll.test",
        json!({"mode": "users", "allow": ["boss@example.com"]}),
    )
    .await;
    protected(&c, "wiki.test", json!({"mode": "login"})).await;

    // Anyone can type the boss's address into the open registration form.
    let cookie = register(&c, "boss@example.com").await;
    let (status, _) = authorize(&c, "payroll.test", &cookie).await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "not admitted by the allow-list"
    );
    let (status, to) = authorize(&c, "wiki.test", &cookie).await;
    assert!(
        status == StatusCode::FOUND && to.contains("token="),
        "any signed-in user: {to}"
    );
    let (_, users) = c.get("/api/v1/users").await;
    let boss = users
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["email"] == "boss@example.com")
        .unwrap()
        .clone();
    assert_eq!(boss["email_verified"], false);

    // An admin who knows it is the boss verifies the account: now it is admitted.
    let (s, body) = c
        .patch(
            &format!("/api/v1/users/{}", boss["id"]),
            json!({"email_verified": true}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["email_verified"], true);
    let (status, to) = authorize(&c, "payroll.test", &cookie).await;
    assert!(status == StatusCode::FOUND && to.contains("token="), "{to}");

    // Accounts an admin creates are verified from the start.
    let (s, created) = c
        .post(
            "/api/v1/users",
            json!({"email": "made@example.com", "password": "a long enough password"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    assert_eq!(created["email_verified"], true);
}

#[tokio::test]
async fn api_logout_needs_the_csrf_token() {
    let (_tmp, dir) = data_dir();
    let c = start(&dir).await;
    let (cookie, csrf) = c.login_csrf(ADMIN_EMAIL, ADMIN_PASSWORD).await.unwrap();
    let logout = || {
        c.http
            .post(c.url("/api/v1/auth/logout"))
            .header("cookie", &cookie)
    };
    let res = logout().send().await.unwrap();
    assert_eq!(
        res.status(),
        StatusCode::FORBIDDEN,
        "another site cannot log us out"
    );
    assert_eq!(me(&c, &cookie).await, StatusCode::OK);
    let res = logout().header("x-csrf-token", &csrf).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert_eq!(me(&c, &cookie).await, StatusCode::UNAUTHORIZED);
    // Without a live session there is nothing to protect: still 204.
    let res = logout().send().await.unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn https_sessions_use_a_host_prefixed_cookie() {
    let (_tmp, dir) = data_dir();
    let c = start_with(kakuremichi_control::ControlConfig {
        public_url: Some("https://control.example.com".into()),
        ..config(&dir)
    })
    .await;
    let res = c
        .http
        .post(c.url("/api/v1/auth/login"))
        .json(&json!({"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}))
        .send()
        .await
        .unwrap();
    let set = res.headers()[SET_COOKIE].to_str().unwrap().to_string();
    assert!(set.starts_with("__Host-km_session="), "{set}");
    for attr in ["Secure", "Path=/", "HttpOnly"] {
        assert!(set.contains(attr), "{set}");
    }
    assert!(!set.to_ascii_lowercase().contains("domain="), "{set}");
    let pair = set.split(';').next().unwrap().to_string();
    assert_eq!(me(&c, &pair).await, StatusCode::OK);
    // A session cookie set before the rename still works.
    let legacy = pair.replacen("__Host-km_session=", "km_session=", 1);
    assert_eq!(me(&c, &legacy).await, StatusCode::OK);
    c.stop().await;

    // Plain HTTP (development) cannot use the prefix: the name stays.
    let (_tmp, dir) = data_dir();
    let c = start(&dir).await;
    let cookie = c.login(ADMIN_EMAIL, ADMIN_PASSWORD).await.unwrap();
    assert!(cookie.starts_with("km_session="), "{cookie}");
}

#[tokio::test]
async fn authorize_sends_nobody_to_a_host_that_is_not_a_tunnel() {
    let (_tmp, dir) = data_dir();
    let c = start(&dir).await;
    protected(&c, "app.test", json!({"mode": "public"})).await;
    let cookie = c.login(ADMIN_EMAIL, ADMIN_PASSWORD).await.unwrap();
    for host in ["evil.example", "app.test.evil.example"] {
        let (status, to) = authorize(&c, host, &cookie).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{host}");
        assert!(to.is_empty(), "{host}: redirected to {to}");
    }
    let (status, to) = authorize(&c, "app.test", &cookie).await;
    assert_eq!(
        (status, to.as_str()),
        (StatusCode::FOUND, "http://app.test/page")
    );
}

#[cfg(unix)]
#[tokio::test]
async fn the_database_and_the_data_directory_are_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let (_tmp, dir) = data_dir();
    let c = start(&dir).await;
    c.agent("a-write-so-the-wal-exists").await;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode();
    assert_eq!(mode(&dir) & 0o077, 0, "data dir is {:o}", mode(&dir));
    for file in ["control.db", "control.db-wal", "control.db-shm"] {
        let path = dir.join(file);
        assert!(path.exists(), "{file}");
        assert_eq!(mode(&path) & 0o077, 0, "{file} is {:o}", mode(&path));
    }
}
