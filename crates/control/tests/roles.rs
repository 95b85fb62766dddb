//! Roles on every API route: an admin does everything; a member manages only the agents and
//! tunnels they own and reads the rest; gateways, users, invitations and settings are admin-only.
//! Also the audit log (`GET /api/v1/audit`): who changed what, admins see all, members their own.

use kakuremichi_testkit::control::*;
use reqwest::StatusCode;
use serde_json::{json, Value};

/// Alice (a member) has created an agent and a tunnel on it; Bob is another member; the admin
/// has an agent and a gateway of their own.
struct Owned {
    _tmp: tempfile::TempDir,
    c: Control,
    alice: Member,
    bob: Member,
    admin_agent: Value,
    gateway: Value,
    /// Alice's agent and tunnel.
    a: i64,
    t: i64,
}

/// Two members and what Alice owns; asserts that she owns what she created.
async fn alice_owns_a_tunnel() -> Owned {
    let (_tmp, dir) = data_dir();
    let c = start(&dir).await;
    let alice = member(&c, "alice@example.com").await;
    let bob = member(&c, "bob@example.com").await;
    let admin_agent = c.agent("admin-agent").await;
    let gateway = c.gateway("gw").await;

    let body = Some(json!({"name": "alice-home"}));
    let (s, agent) = alice.call(&c, "POST", "/api/v1/agents", body).await;
    assert_eq!(s, StatusCode::CREATED);
    assert_eq!(agent["owner_id"], alice.id);
    let a = agent["id"].as_i64().unwrap();
    let (s, tunnel) = alice
        .call(
            &c,
            "POST",
            "/api/v1/tunnels",
            Some(json!({"hostname": "alice.test", "agent_id": a, "target": "localhost:80"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{tunnel}");
    assert_eq!(tunnel["owner_id"], alice.id);
    let t = tunnel["id"].as_i64().unwrap();
    Owned {
        _tmp,
        c,
        alice,
        bob,
        admin_agent,
        gateway,
        a,
        t,
    }
}

#[tokio::test]
async fn a_member_owns_the_agents_and_tunnels_they_create() {
    alice_owns_a_tunnel().await;
}

#[tokio::test]
async fn a_member_cannot_put_a_tunnel_on_someone_elses_agent() {
    let o = alice_owns_a_tunnel().await;
    let (c, alice, bob, admin_agent, a) = (&o.c, &o.alice, &o.bob, &o.admin_agent, o.a);
    // Not even on the admins'.
    let agent_id = admin_agent["id"].as_i64().unwrap();
    let body = json!({"hostname": "x.test", "agent_id": agent_id, "target": "localhost:80"});
    let (s, body) = alice.call(c, "POST", "/api/v1/tunnels", Some(body)).await;
    assert_error(s, &body, StatusCode::FORBIDDEN, "forbidden");
    let body = json!({"hostname": "bob.test", "agent_id": a, "target": "localhost:80"});
    let (s, body) = bob.call(c, "POST", "/api/v1/tunnels", Some(body)).await;
    assert_error(s, &body, StatusCode::FORBIDDEN, "forbidden");
}

#[tokio::test]
async fn a_member_reads_everything_but_changes_nothing_of_others() {
    let o = alice_owns_a_tunnel().await;
    let (c, alice, bob, gateway, a, t) = (&o.c, &o.alice, &o.bob, &o.gateway, o.a, o.t);
    for path in [
        "/api/v1/agents",
        "/api/v1/tunnels",
        "/api/v1/gateways",
        "/api/v1/status",
        &format!("/api/v1/agents/{a}"),
        &format!("/api/v1/tunnels/{t}"),
    ] {
        let (s, _) = bob.call(c, "GET", path, None).await;
        assert_eq!(s, StatusCode::OK, "GET {path}");
    }
    // Every write route.
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
        let (s, resp) = bob.call(c, method, &path, body).await;
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
}

#[tokio::test]
async fn the_owner_and_an_admin_may_change_it() {
    let o = alice_owns_a_tunnel().await;
    let (c, alice, a, t) = (&o.c, &o.alice, o.a, o.t);
    let path = format!("/api/v1/tunnels/{t}");
    let (s, _) = alice
        .call(c, "PATCH", &path, Some(json!({"target": "localhost:81"})))
        .await;
    assert_eq!(s, StatusCode::OK);
    let rotate = format!("/api/v1/agents/{a}/rotate-key");
    let (s, rotated) = alice.call(c, "POST", &rotate, None).await;
    assert_eq!(s, StatusCode::OK);
    assert!(rotated["api_key"].as_str().unwrap().starts_with("kma_"));
    let (s, _) = c.patch(&path, json!({"enabled": false})).await;
    assert_eq!(s, StatusCode::OK);
}

#[tokio::test]
async fn a_member_cannot_move_a_tunnel_onto_an_agent_they_do_not_own() {
    let o = alice_owns_a_tunnel().await;
    let (c, alice, admin_agent, t) = (&o.c, &o.alice, &o.admin_agent, o.t);
    let patch = json!({"agent_id": admin_agent["id"]});
    let path = format!("/api/v1/tunnels/{t}");
    let (s, body) = alice.call(c, "PATCH", &path, Some(patch)).await;
    assert_error(s, &body, StatusCode::FORBIDDEN, "forbidden");
}

#[tokio::test]
async fn the_ui_shows_a_non_owner_no_forms_and_refuses_their_posts() {
    let o = alice_owns_a_tunnel().await;
    let (c, alice, a, t) = (&o.c, &o.alice, o.a, o.t);
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
    // The owner can delete both.
    let (s, _) = alice
        .call(c, "DELETE", &format!("/api/v1/tunnels/{t}"), None)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = alice
        .call(c, "DELETE", &format!("/api/v1/agents/{a}"), None)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
}

/// Makes Bob an admin; asserts the change is accepted.
async fn promote(c: &Control, bob: &Member) {
    let path = format!("/api/v1/users/{}", bob.id);
    let (s, _) = c.patch(&path, json!({"is_admin": true})).await;
    assert_eq!(s, StatusCode::OK);
}

#[tokio::test]
async fn making_a_member_admin_opens_the_admin_routes() {
    let o = alice_owns_a_tunnel().await;
    let (c, bob) = (&o.c, &o.bob);
    promote(c, bob).await;
    let (s, _) = bob.call(c, "GET", "/api/v1/users", None).await;
    assert_eq!(s, StatusCode::OK);
}

/// Someone must be able to manage Control.
#[tokio::test]
async fn the_last_admin_cannot_be_removed() {
    let o = alice_owns_a_tunnel().await;
    let (c, bob) = (&o.c, &o.bob);
    promote(c, bob).await;
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
    let body = Some(json!({"name": "alice-agent"}));
    let (s, _) = alice.call(&c, "POST", "/api/v1/agents", body).await;
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
    let (_, mine) = alice.call(&c, "GET", "/api/v1/audit", None).await;
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
    // (On PostgreSQL each start of a replica that takes the lead adds a control.lead entry.)
    let kept =
        |log: &[serde_json::Value]| log.iter().filter(|e| e["action"] != "control.lead").count();
    assert_eq!(kept(after.as_array().unwrap()), kept(entries));
}

/// Point 7 of issue 14: a tunnel's owner cannot point an Agent they do not own somewhere else.
#[tokio::test]
async fn an_owner_cannot_redirect_a_replica_on_someone_elses_agent() {
    let (_tmp, dir) = data_dir();
    let c = start(&dir).await;
    let alice = member(&c, "alice@example.com").await;
    let bob = member(&c, "bob@example.com").await;
    let new_agent = |m: &Member, name: &'static str| {
        let m = m.clone();
        let c = &c;
        async move {
            let (s, a) = m
                .call(c, "POST", "/api/v1/agents", Some(json!({"name": name})))
                .await;
            assert_eq!(s, StatusCode::CREATED, "{a}");
            a["id"].as_i64().unwrap()
        }
    };
    let a = new_agent(&alice, "alice-home").await;
    let b = new_agent(&bob, "bob-home").await;
    let (s, t) = alice
        .call(
            &c,
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
        let (s, body) = alice.call(&c, "PATCH", &path, Some(patch)).await;
        assert_error(s, &body, StatusCode::FORBIDDEN, "forbidden");
    }
    // Disabling is hers to do; enabling again would publish Bob's agent anew.
    let (s, body) = alice
        .call(&c, "PATCH", &path, Some(json!({"enabled": false})))
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let (s, body) = alice
        .call(&c, "PATCH", &path, Some(json!({"enabled": true})))
        .await;
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
    let (s, body) = alice
        .call(&c, "PATCH", &path, Some(json!({"agent_ids": [a]})))
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let (s, body) = alice
        .call(&c, "PATCH", &path, Some(json!({"target": "localhost:81"})))
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    c.stop().await;
}
