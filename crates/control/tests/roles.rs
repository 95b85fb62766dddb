//! Roles on every API route: an admin does everything; a member manages only the agents and
//! tunnels they own and reads the rest; gateways, users, invitations and settings are admin-only.
//! Also the audit log (`GET /api/v1/audit`): who changed what, admins see all, members their own.

mod common;

use common::*;
use reqwest::StatusCode;
use serde_json::{json, Value};

/// A signed-in member with a personal API token.
struct Member {
    id: i64,
    token: String,
}

async fn member(c: &Control, email: &str) -> Member {
    let (s, user) = c
        .post(
            "/api/v1/users",
            json!({"email": email, "password": ADMIN_PASSWORD}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{user}");
    assert_eq!(user["is_admin"], false);
    let (cookie, csrf) = c.login_csrf(email, ADMIN_PASSWORD).await.unwrap();
    let res = c
        .http
        .post(c.url("/api/v1/tokens"))
        .header("cookie", cookie)
        .header("x-csrf-token", csrf)
        .json(&json!({"name": "t"}))
        .send()
        .await
        .unwrap();
    let (_, token) = into_json(res).await;
    Member {
        id: user["id"].as_i64().unwrap(),
        token: token["token"].as_str().unwrap().to_string(),
    }
}

async fn call(
    c: &Control,
    m: &Member,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut req = c
        .http
        .request(method.parse().unwrap(), c.url(path))
        .bearer_auth(&m.token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    into_json(req.send().await.unwrap()).await
}

#[tokio::test]
async fn members_manage_only_what_they_own() {
    let (_tmp, dir) = data_dir();
    let c = start(&dir).await;
    let alice = member(&c, "alice@example.com").await;
    let bob = member(&c, "bob@example.com").await;
    let admin_agent = c.agent("admin-agent").await;
    let gateway = c.gateway("gw").await;

    // Alice creates her agent and a tunnel on it; she owns both.
    let (s, agent) = call(
        &c,
        &alice,
        "POST",
        "/api/v1/agents",
        Some(json!({"name": "alice-home"})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);
    assert_eq!(agent["owner_id"], alice.id);
    let a = agent["id"].as_i64().unwrap();
    let (s, tunnel) = call(
        &c,
        &alice,
        "POST",
        "/api/v1/tunnels",
        Some(json!({"hostname": "alice.test", "agent_id": a, "target": "localhost:80"})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{tunnel}");
    assert_eq!(tunnel["owner_id"], alice.id);
    let t = tunnel["id"].as_i64().unwrap();

    // A member cannot put a tunnel on someone else's agent (not even the admins').
    for agent_id in [admin_agent["id"].as_i64().unwrap()] {
        let (s, body) = call(
            &c,
            &alice,
            "POST",
            "/api/v1/tunnels",
            Some(json!({"hostname": "x.test", "agent_id": agent_id, "target": "localhost:80"})),
        )
        .await;
        assert_error(s, &body, StatusCode::FORBIDDEN, "forbidden");
    }
    let (s, body) = call(
        &c,
        &bob,
        "POST",
        "/api/v1/tunnels",
        Some(json!({"hostname": "bob.test", "agent_id": a, "target": "localhost:80"})),
    )
    .await;
    assert_error(s, &body, StatusCode::FORBIDDEN, "forbidden");

    // Bob reads everything but changes nothing of Alice's: every write route.
    for path in [
        "/api/v1/agents",
        "/api/v1/tunnels",
        "/api/v1/gateways",
        "/api/v1/status",
        &format!("/api/v1/agents/{a}"),
        &format!("/api/v1/tunnels/{t}"),
    ] {
        let (s, _) = call(&c, &bob, "GET", path, None).await;
        assert_eq!(s, StatusCode::OK, "GET {path}");
    }
    let denied: Vec<(&str, String, Option<Value>)> = vec![
        (
            "PATCH",
            format!("/api/v1/tunnels/{t}"),
            Some(json!({"target": "evil:1"})),
        ),
        (
            "PATCH",
            format!("/api/v1/tunnels/{t}"),
            Some(json!({"enabled": false})),
        ),
        ("DELETE", format!("/api/v1/tunnels/{t}"), None),
        (
            "PATCH",
            format!("/api/v1/agents/{a}"),
            Some(json!({"name": "mine"})),
        ),
        ("POST", format!("/api/v1/agents/{a}/rotate-key"), None),
        ("DELETE", format!("/api/v1/agents/{a}"), None),
        (
            "POST",
            "/api/v1/gateways".into(),
            Some(json!({"name": "g", "public_endpoint": "1.2.3.4:51820"})),
        ),
        (
            "PATCH",
            format!("/api/v1/gateways/{}", gateway["id"]),
            Some(json!({"enabled": false})),
        ),
        (
            "DELETE",
            format!("/api/v1/gateways/{}", gateway["id"]),
            None,
        ),
        ("GET", "/api/v1/users".into(), None),
        (
            "POST",
            "/api/v1/users".into(),
            Some(json!({"email": "x@example.com", "password": ADMIN_PASSWORD})),
        ),
        (
            "PATCH",
            format!("/api/v1/users/{}", bob.id),
            Some(json!({"is_admin": true})),
        ),
        (
            "PATCH",
            format!("/api/v1/users/{}", alice.id),
            Some(json!({"password": "0123456789abc"})),
        ),
        ("DELETE", format!("/api/v1/users/{}", alice.id), None),
        (
            "POST",
            "/api/v1/invitations".into(),
            Some(json!({"email": "y@example.com"})),
        ),
        ("GET", "/api/v1/settings".into(), None),
        (
            "PATCH",
            "/api/v1/settings".into(),
            Some(json!({"open_registration": true})),
        ),
    ];
    for (method, path, body) in denied {
        let (s, resp) = call(&c, &bob, method, &path, body).await;
        assert_error(s, &resp, StatusCode::FORBIDDEN, "forbidden");
    }
    // Nothing changed.
    let (_, now) = c.get(&format!("/api/v1/tunnels/{t}")).await;
    assert_eq!(
        (now["target"].as_str(), now["enabled"].as_bool()),
        (Some("localhost:80"), Some(true))
    );
    let (_, users) = c.get("/api/v1/users").await;
    assert_eq!(users.as_array().unwrap().len(), 3);
    let (_, gw) = c.get(&format!("/api/v1/gateways/{}", gateway["id"])).await;
    assert_eq!(gw["enabled"], true);

    // The owner can; the admin can too.
    let (s, _) = call(
        &c,
        &alice,
        "PATCH",
        &format!("/api/v1/tunnels/{t}"),
        Some(json!({"target": "localhost:81"})),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let (s, rotated) = call(
        &c,
        &alice,
        "POST",
        &format!("/api/v1/agents/{a}/rotate-key"),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert!(rotated["api_key"].as_str().unwrap().starts_with("kma_"));
    let (s, _) = c
        .patch(&format!("/api/v1/tunnels/{t}"), json!({"enabled": false}))
        .await;
    assert_eq!(s, StatusCode::OK);
    // Alice may not move her tunnel onto an agent she does not own.
    let (s, body) = call(
        &c,
        &alice,
        "PATCH",
        &format!("/api/v1/tunnels/{t}"),
        Some(json!({"agent_id": admin_agent["id"]})),
    )
    .await;
    assert_error(s, &body, StatusCode::FORBIDDEN, "forbidden");
    // UI: Bob's view of the tunnel has no forms, and posting them anyway is refused.
    let (bob_cookie, bob_csrf) = c
        .login_csrf("bob@example.com", ADMIN_PASSWORD)
        .await
        .unwrap();
    let page = c
        .http
        .get(c.url(&format!("/tunnels/{t}")))
        .header("cookie", &bob_cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("alice.test") && page.contains("only its owner or an admin"));
    assert!(!page.contains(&format!("/tunnels/{t}/delete")));
    let res = c
        .http
        .post(c.url(&format!("/tunnels/{t}/delete")))
        .header("cookie", &bob_cookie)
        .form(&[("csrf", bob_csrf)])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    let (s, _) = c.get(&format!("/api/v1/tunnels/{t}")).await;
    assert_eq!(s, StatusCode::OK, "still there");
    let (s, _) = call(&c, &alice, "DELETE", &format!("/api/v1/tunnels/{t}"), None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = call(&c, &alice, "DELETE", &format!("/api/v1/agents/{a}"), None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);

    // Making Bob an admin gives him the admin routes.
    let (s, _) = c
        .patch(
            &format!("/api/v1/users/{}", bob.id),
            json!({"is_admin": true}),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = call(&c, &bob, "GET", "/api/v1/users", None).await;
    assert_eq!(s, StatusCode::OK);
    // The last admin cannot be removed: someone must be able to manage Control.
    let (_, me) = c.get("/api/v1/auth/me").await;
    let (s, _) = c.delete(&format!("/api/v1/users/{}", bob.id)).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, body) = c
        .patch(
            &format!("/api/v1/users/{}", me["user"]["id"]),
            json!({"is_admin": false}),
        )
        .await;
    assert_error(s, &body, StatusCode::CONFLICT, "conflict");
}

#[tokio::test]
async fn the_audit_log_says_who_changed_what() {
    let (_tmp, dir) = data_dir();
    let c = start(&dir).await;
    let alice = member(&c, "alice@example.com").await;
    let agent = c.agent("a").await;
    c.tunnel("audit.test", agent["id"].as_i64().unwrap(), "localhost:80")
        .await;
    let (s, _) = call(
        &c,
        &alice,
        "POST",
        "/api/v1/agents",
        Some(json!({"name": "alice-agent"})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);

    let (s, log) = c.get("/api/v1/audit").await;
    assert_eq!(s, StatusCode::OK);
    let entries = log.as_array().unwrap();
    let actions: Vec<&str> = entries
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions[..4],
        [
            "agent.create",
            "tunnel.create",
            "agent.create",
            "token.create"
        ],
        "{log}"
    );
    assert_eq!(entries[0]["user_email"], "alice@example.com");
    assert_eq!(entries[1]["user_email"], ADMIN_EMAIL);
    assert!(entries[1]["target"]
        .as_str()
        .unwrap()
        .contains("audit.test"));
    assert_eq!(entries[1]["detail"]["target"], "localhost:80");
    assert!(entries[0]["at"].as_str().unwrap().ends_with('Z'));

    // Paging: newest first, `before` continues.
    let (_, page1) = c.get("/api/v1/audit?limit=2").await;
    assert_eq!(page1.as_array().unwrap().len(), 2);
    let last = page1[1]["id"].as_i64().unwrap();
    let (_, page2) = c.get(&format!("/api/v1/audit?limit=2&before={last}")).await;
    assert_eq!(
        page2[0]["id"].as_i64().unwrap(),
        entries[2]["id"].as_i64().unwrap()
    );
    let (s, body) = c.get("/api/v1/audit?limit=0").await;
    assert_error(s, &body, StatusCode::BAD_REQUEST, "bad_request");
    let (s, body) = c.get("/api/v1/audit?limit=x").await;
    assert_error(s, &body, StatusCode::BAD_REQUEST, "bad_request");

    // A member sees only their own changes.
    let (_, mine) = call(&c, &alice, "GET", "/api/v1/audit", None).await;
    assert!(!mine.as_array().unwrap().is_empty());
    assert!(
        mine.as_array()
            .unwrap()
            .iter()
            .all(|e| e["user_id"] == alice.id),
        "{mine}"
    );

    // It is kept in the database.
    let token = c.token.clone();
    c.stop().await;
    let c = start_reusing(config(&dir), token).await;
    let (_, after) = c.get("/api/v1/audit").await;
    assert_eq!(after.as_array().unwrap().len(), entries.len());
}

/// Point 7 of issue 14: a tunnel's owner cannot point an Agent they do not own somewhere else.
#[tokio::test]
async fn an_owner_cannot_redirect_a_replica_on_someone_elses_agent() {
    let (_tmp, dir) = data_dir();
    let c = start(&dir).await;
    let alice = member(&c, "alice@example.com").await;
    let bob = member(&c, "bob@example.com").await;
    let new_agent = |m: &Member, name: &'static str| {
        let m = Member {
            id: m.id,
            token: m.token.clone(),
        };
        let c = &c;
        async move {
            let (s, a) = call(c, &m, "POST", "/api/v1/agents", Some(json!({"name": name}))).await;
            assert_eq!(s, StatusCode::CREATED, "{a}");
            a["id"].as_i64().unwrap()
        }
    };
    let a = new_agent(&alice, "alice-home").await;
    let b = new_agent(&bob, "bob-home").await;
    let (s, t) = call(
        &c,
        &alice,
        "POST",
        "/api/v1/tunnels",
        Some(json!({"hostname": "alice.test", "agent_id": a, "target": "localhost:80"})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{t}");
    let path = format!("/api/v1/tunnels/{}", t["id"]);
    // An admin adds Bob's agent as a replica of Alice's tunnel.
    let (s, body) = c.patch(&path, json!({"agent_ids": [a, b]})).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let (_, before) = c.get(&path).await;
    assert_eq!(before["agent_ids"], json!([a, b]));

    // Alice may not change where Bob's agent connects, nor what name reaches it.
    for patch in [
        json!({"target": "169.254.169.254:80"}),
        json!({"hostname": "evil.test"}),
        json!({"target": "localhost:22", "tls": "off"}),
    ] {
        let (s, body) = call(&c, &alice, "PATCH", &path, Some(patch)).await;
        assert_error(s, &body, StatusCode::FORBIDDEN, "forbidden");
    }
    // Disabling is hers to do; enabling again would publish Bob's agent anew.
    let (s, body) = call(&c, &alice, "PATCH", &path, Some(json!({"enabled": false}))).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let (s, body) = call(&c, &alice, "PATCH", &path, Some(json!({"enabled": true}))).await;
    assert_error(s, &body, StatusCode::FORBIDDEN, "forbidden");

    // The web UI goes through the same check: the edit form and the one-click toggle.
    let (cookie, csrf) = c
        .login_csrf("alice@example.com", ADMIN_PASSWORD)
        .await
        .unwrap();
    let ui = |url: String, form: Vec<(&'static str, String)>| {
        let mut fields = vec![("csrf", csrf.clone())];
        fields.extend(form);
        c.http
            .post(c.url(&url))
            .header("cookie", &cookie)
            .form(&fields)
            .send()
    };
    let page = format!("/tunnels/{}", t["id"]);
    let form = vec![
        ("hostname", "alice.test".to_string()),
        ("agent_id", a.to_string()),
        ("target", "localhost:22".to_string()),
        ("tls", "acme".to_string()),
        ("enabled", "on".to_string()),
    ];
    let res = ui(page.clone(), form).await.unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    let toggle = vec![("enabled", "true".to_string())];
    let res = ui(format!("{page}/toggle"), toggle).await.unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);

    let (_, after) = c.get(&path).await;
    for field in ["hostname", "target", "agent_ids", "tls"] {
        assert_eq!(after[field], before[field], "{field} changed");
    }
    assert_eq!(after["enabled"], false);

    // An admin may; and once Bob's agent is no longer a replica, so may Alice.
    let (s, _) = c.patch(&path, json!({"enabled": true})).await;
    assert_eq!(s, StatusCode::OK);
    let (s, body) = call(&c, &alice, "PATCH", &path, Some(json!({"agent_ids": [a]}))).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let (s, body) = call(
        &c,
        &alice,
        "PATCH",
        &path,
        Some(json!({"target": "localhost:81"})),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    c.stop().await;
}
