//! The management API: health, login, tokens, authorization, agents and gateways, JSON errors.

use kakuremichi_testkit::control::*;
use reqwest::StatusCode;
use serde_json::{json, Value};

#[tokio::test]
async fn health_login_tokens_and_auth() {
    let (_tmp, dir) = data_dir();
    let c = start(&dir).await;
    let (s, body) = into_json(c.http.get(c.url("/healthz")).send().await.unwrap()).await;
    assert_eq!((s, body), (StatusCode::OK, json!({"status": "ok"})));
    let (s, _) = into_json(c.http.get(c.url("/readyz")).send().await.unwrap()).await;
    assert_eq!(s, StatusCode::OK);

    // Login: cookie attributes, case-insensitive e-mail, same 401 for bad password / unknown user.
    let res = c
        .http
        .post(c.url("/api/v1/auth/login"))
        .json(&json!({"email": "ADMIN@example.com", "password": ADMIN_PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let set_cookie = res.headers()["set-cookie"].to_str().unwrap().to_string();
    for attr in ["km_session=", "HttpOnly", "SameSite=Lax", "Path=/"] {
        assert!(set_cookie.contains(attr), "{set_cookie}");
    }
    assert!(
        !set_cookie.contains("Secure"),
        "plain http public_url: {set_cookie}"
    );
    let (_, body) = into_json(res).await;
    assert_eq!(body["user"]["email"], ADMIN_EMAIL);
    assert_eq!(body["user"]["is_admin"], true);
    assert_eq!(
        keys(&body["user"]),
        ["email", "email_verified", "id", "is_admin"]
    );

    let mut messages = vec![];
    for (email, password) in [
        (ADMIN_EMAIL, "wrong"),
        ("nobody@example.com", ADMIN_PASSWORD),
    ] {
        let res = c
            .http
            .post(c.url("/api/v1/auth/login"))
            .json(&json!({"email": email, "password": password}));
        let (s, body) = into_json(res.send().await.unwrap()).await;
        assert_error(s, &body, StatusCode::UNAUTHORIZED, "unauthorized");
        messages.push(body["error"]["message"].clone());
    }
    assert_eq!(
        messages[0], messages[1],
        "unknown e-mail and wrong password look the same"
    );

    // The cookie authenticates; logout ends it.
    let (cookie, csrf) = c.login_csrf(ADMIN_EMAIL, ADMIN_PASSWORD).await.unwrap();
    let me = |cookie: String| {
        let req = c
            .http
            .get(c.url("/api/v1/auth/me"))
            .header("cookie", cookie);
        async move { into_json(req.send().await.unwrap()).await }
    };
    let (s, body) = me(cookie.clone()).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(body["user"]["email"], ADMIN_EMAIL);
    let res = c
        .http
        .post(c.url("/api/v1/auth/logout"))
        .header("cookie", &cookie)
        .header("x-csrf-token", &csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let (s, body) = me(cookie).await;
    assert_error(s, &body, StatusCode::UNAUTHORIZED, "unauthorized");

    // Tokens: shown once, listed without secret, last_used_at recorded, deletable.
    let (s, created) = c.post("/api/v1/tokens", json!({"name": "ci"})).await;
    assert_eq!(s, StatusCode::CREATED);
    assert_eq!(keys(&created), ["created_at", "id", "name", "token"]);
    let token = created["token"].as_str().unwrap();
    assert!(token.starts_with("kmt_"));
    let res = c
        .http
        .get(c.url("/api/v1/agents"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let (s, list) = c.get("/api/v1/tokens").await;
    assert_eq!(s, StatusCode::OK);
    let listed = list
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == created["id"])
        .unwrap();
    assert_eq!(keys(listed), ["created_at", "id", "last_used_at", "name"]);
    assert!(listed["last_used_at"].is_string());
    assert!(!list.to_string().contains("kmt_"));
    let (s, _) = c.delete(&format!("/api/v1/tokens/{}", created["id"])).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let res = c
        .http
        .get(c.url("/api/v1/agents"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let (s, body) = c.delete(&format!("/api/v1/tokens/{}", created["id"])).await;
    assert_error(s, &body, StatusCode::NOT_FOUND, "not_found");
    let (s, body) = c.post("/api/v1/tokens", json!({"name": ""})).await;
    assert_error(s, &body, StatusCode::BAD_REQUEST, "bad_request");

    // No credential, a bogus one, and node credentials on management routes.
    for path in [
        "/api/v1/agents",
        "/api/v1/tunnels",
        "/api/v1/tokens",
        "/api/v1/auth/me",
    ] {
        let (s, body) = into_json(c.http.get(c.url(path)).send().await.unwrap()).await;
        assert_error(s, &body, StatusCode::UNAUTHORIZED, "unauthorized");
        let res = c
            .http
            .get(c.url(path))
            .bearer_auth("kmt_nope")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
        let res = c
            .http
            .get(c.url(path))
            .header("cookie", "km_session=forged")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    }
    let agent_key = c.agent("home").await["api_key"]
        .as_str()
        .unwrap()
        .to_string();
    let gateway_token = c.gateway("gw").await["token"].as_str().unwrap().to_string();
    for secret in [&agent_key, &gateway_token] {
        let res = c
            .http
            .get(c.url("/api/v1/tunnels"))
            .bearer_auth(secret)
            .send()
            .await
            .unwrap();
        let (s, body) = into_json(res).await;
        assert_error(s, &body, StatusCode::FORBIDDEN, "forbidden");
        let res = c
            .http
            .post(c.url("/api/v1/agents"))
            .bearer_auth(secret)
            .json(&json!({"name": "x"}));
        assert_eq!(res.send().await.unwrap().status(), StatusCode::FORBIDDEN);
    }
    let (_, agents) = c.get("/api/v1/agents").await;
    assert_eq!(
        agents.as_array().unwrap().len(),
        1,
        "the forbidden create stored nothing"
    );
    c.stop().await;
}

#[tokio::test]
async fn agents_and_gateways_crud() {
    let (_tmp, dir) = data_dir();
    let c = start(&dir).await;

    let a = c.agent("home").await;
    assert_eq!(
        keys(&a),
        [
            "api_key",
            "created_at",
            "id",
            "last_seen",
            "name",
            "owner_id",
            "public_key",
            "status",
            "wg_address"
        ]
    );
    assert!(a["api_key"].as_str().unwrap().starts_with("kma_"));
    assert_eq!(
        (&a["name"], &a["wg_address"]),
        (&json!("home"), &json!("10.77.0.1"))
    );
    assert_eq!(
        (&a["public_key"], &a["status"], &a["last_seen"]),
        (&Value::Null, &json!("offline"), &Value::Null)
    );
    let id = a["id"].as_i64().unwrap();

    let g = c.gateway("edge1").await;
    assert_eq!(
        keys(&g),
        [
            "created_at",
            "dns_addresses",
            "enabled",
            "id",
            "last_seen",
            "name",
            "observed_ip",
            "public_endpoint",
            "public_ipv4",
            "public_ipv6",
            "public_key",
            "status",
            "token",
            "wg_address"
        ]
    );
    assert!(g["token"].as_str().unwrap().starts_with("kmg_"));
    assert_eq!(
        g["wg_address"], "10.77.0.2",
        "addresses are unique across agents and gateways"
    );
    assert_eq!(
        (&g["enabled"], &g["public_endpoint"]),
        (&json!(true), &json!("edge1.example.net:51820"))
    );
    let gid = g["id"].as_i64().unwrap();

    // Reads never show secrets.
    let (s, list) = c.get("/api/v1/agents").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        keys(&list[0]),
        [
            "created_at",
            "id",
            "last_seen",
            "name",
            "owner_id",
            "public_key",
            "status",
            "wg_address"
        ]
    );
    let (_, one) = c.get(&format!("/api/v1/gateways/{gid}")).await;
    assert!(one.get("token").is_none());
    assert_eq!(one["status"], "offline");

    // PATCH.
    let (s, a2) = c
        .patch(&format!("/api/v1/agents/{id}"), json!({"name": "origin"}))
        .await;
    assert_eq!((s, &a2["name"]), (StatusCode::OK, &json!("origin")));
    let body = json!({"name": "edge-1", "public_endpoint": "203.0.113.7:443", "enabled": false});
    let (s, g2) = c.patch(&format!("/api/v1/gateways/{gid}"), body).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        (&g2["name"], &g2["public_endpoint"], &g2["enabled"]),
        (&json!("edge-1"), &json!("203.0.113.7:443"), &json!(false))
    );

    // Bad inputs: 400 and nothing changed.
    let long = "x".repeat(101);
    for body in [
        json!({"name": ""}),
        json!({"name": long}),
        json!({"name": 5}),
        json!({}),
        json!({"name": "a", "x": 1}),
    ] {
        let (s, b) = c.post("/api/v1/agents", body).await;
        assert_error(s, &b, StatusCode::BAD_REQUEST, "bad_request");
    }
    for endpoint in [
        "gw.example.net",
        "https://gw.example.net:443",
        "gw.example.net:0",
        "gw.example.net:443/x",
        "::1:51820",
    ] {
        let (s, b) = c
            .post(
                "/api/v1/gateways",
                json!({"name": "g", "public_endpoint": endpoint}),
            )
            .await;
        assert_error(s, &b, StatusCode::BAD_REQUEST, "bad_request");
        let (s, _) = c
            .patch(
                &format!("/api/v1/gateways/{gid}"),
                json!({"public_endpoint": endpoint}),
            )
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
    }
    let (s, _) = c
        .patch(&format!("/api/v1/agents/{id}"), json!({"name": " "}))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (_, agents) = c.get("/api/v1/agents").await;
    let (_, gateways) = c.get("/api/v1/gateways").await;
    assert_eq!(
        (
            agents.as_array().unwrap().len(),
            gateways.as_array().unwrap().len()
        ),
        (1, 1)
    );
    assert_eq!(
        (&agents[0]["name"], &gateways[0]["public_endpoint"]),
        (&json!("origin"), &json!("203.0.113.7:443"))
    );

    // 404s, bad ids, unknown routes, wrong methods: all JSON.
    for path in [
        "/api/v1/agents/999",
        "/api/v1/gateways/999",
        "/api/v1/tunnels/999",
    ] {
        let (s, b) = c.get(path).await;
        assert_error(s, &b, StatusCode::NOT_FOUND, "not_found");
        let (s, b) = c.patch(path, json!({})).await;
        assert_error(s, &b, StatusCode::NOT_FOUND, "not_found");
        let (s, b) = c.delete(path).await;
        assert_error(s, &b, StatusCode::NOT_FOUND, "not_found");
    }
    let (s, b) = c.get("/api/v1/agents/abc").await;
    assert_error(s, &b, StatusCode::BAD_REQUEST, "bad_request");
    let (s, b) = c.get("/api/v1/nothing-here").await;
    assert_error(s, &b, StatusCode::NOT_FOUND, "not_found");
    let (s, b) = c.call("PUT", "/api/v1/agents", Some(json!({}))).await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED, "{b}");
    assert!(b["error"]["code"].is_string());

    // Malformed JSON and wrong content type.
    let res = c
        .http
        .post(c.url("/api/v1/agents"))
        .bearer_auth(&c.token)
        .header("content-type", "application/json");
    let (s, b) = into_json(res.body("{\"name\":").send().await.unwrap()).await;
    assert_error(s, &b, StatusCode::BAD_REQUEST, "bad_request");
    let res = c
        .http
        .post(c.url("/api/v1/agents"))
        .bearer_auth(&c.token)
        .header("content-type", "text/plain");
    let (s, b) = into_json(res.body("{\"name\":\"x\"}").send().await.unwrap()).await;
    assert_error(s, &b, StatusCode::BAD_REQUEST, "bad_request");

    // DELETE; addresses of deleted nodes are reused.
    let (s, _) = c.delete(&format!("/api/v1/gateways/{gid}")).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert_eq!(c.gateway("edge2").await["wg_address"], "10.77.0.2");
    let (s, _) = c.delete(&format!("/api/v1/agents/{id}")).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = c.get(&format!("/api/v1/agents/{id}")).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(c.agent("again").await["wg_address"], "10.77.0.1");
    c.stop().await;
}

#[tokio::test]
async fn https_public_url_makes_cookies_secure() {
    let (_tmp, dir) = data_dir();
    let mut config = kakuremichi_testkit::control::config(&dir);
    config.public_url = Some("https://control.example.com".into());
    let c = start_with(config).await;
    let res = c
        .http
        .post(c.url("/api/v1/auth/login"))
        .json(&json!({"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}))
        .send()
        .await
        .unwrap();
    assert!(res.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .contains("; Secure"));
    c.stop().await;
}
