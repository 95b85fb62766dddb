//! Tunnels through the API: exact fields, port allocation, validation, hostname conflicts.

use kakuremichi_proto::NodeRole;
use kakuremichi_testkit::control::*;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::time::Duration;

#[tokio::test]
async fn tunnels_crud_and_validation() {
    let (_tmp, dir) = data_dir();
    let c = start(&dir).await;
    let a1 = c.agent("a1").await["id"].as_i64().unwrap();
    let a2 = c.agent("a2").await["id"].as_i64().unwrap();

    let t = c.tunnel("App.Example.com.", a1, "localhost:8080").await;
    assert_eq!(t["access"], json!({"mode": "public"}));
    assert_eq!(
        keys(&t),
        [
            "access",
            "agent_id",
            "agent_ids",
            "basic_auth_user",
            "certificate",
            "counters",
            "created_at",
            "dns",
            "enabled",
            "error_page",
            "hostname",
            "https_redirect",
            "id",
            "ip_allow",
            "ip_deny",
            "log_requests",
            "max_concurrent_requests",
            "max_connections",
            "owner_id",
            "port",
            "port_errors",
            "protocol",
            "proxy_protocol",
            "public_addresses",
            "public_port",
            "public_urls",
            "rate_limit_burst",
            "rate_limit_per_second",
            "target",
            "tls",
            "udp_idle_timeout",
            "updated_at"
        ]
    );
    assert_eq!(
        (&t["hostname"], &t["port"], &t["enabled"]),
        (&json!("app.example.com"), &json!(10000), &json!(true))
    );
    // HTTPS defaults: an ACME certificate (pending: no Gateway is connected), redirect on.
    assert_eq!(
        (&t["tls"], &t["https_redirect"]),
        (&json!("acme"), &json!(true))
    );
    assert_eq!(t["certificate"]["status"], "pending");
    assert!(t["certificate"]["last_error"]
        .as_str()
        .unwrap()
        .contains("No Gateway"));
    for bad in [
        json!({"tls": "letsencrypt"}),
        json!({"https_redirect": "yes"}),
    ] {
        let mut body = json!({"hostname": "bad-tls.example.com", "agent_id": a1, "target": "a:1"});
        body.as_object_mut()
            .unwrap()
            .extend(bad.as_object().unwrap().clone());
        let (s, v) = c.post("/api/v1/tunnels", body).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    }
    let t2 = c.tunnel("blog.example.com", a1, "app:3000").await;
    assert_eq!(t2["port"], 10001);
    let body = json!({"hostname": "off.example.com", "agent_id": a2, "target": "[::1]:80", "enabled": false});
    let (s, t3) = c.post("/api/v1/tunnels", body).await;
    assert_eq!(
        (s, &t3["port"], &t3["enabled"]),
        (StatusCode::CREATED, &json!(10000), &json!(false))
    );

    // Validation: each bad input is a 400 and stores nothing.
    let bad = [
        json!({"hostname": "*.com", "agent_id": a1, "target": "localhost:80"}),
        json!({"hostname": "a.*.example.com", "agent_id": a1, "target": "localhost:80"}),
        json!({"hostname": "10.0.0.1", "agent_id": a1, "target": "localhost:80"}),
        json!({"hostname": "x.example.com:443", "agent_id": a1, "target": "localhost:80"}),
        json!({"hostname": "https://x.example.com", "agent_id": a1, "target": "localhost:80"}),
        json!({"hostname": "localhost", "agent_id": a1, "target": "localhost:80"}),
        json!({"hostname": "-x.example.com", "agent_id": a1, "target": "localhost:80"}),
        json!({"hostname": "x.example.com", "agent_id": a1, "target": "localhost"}),
        json!({"hostname": "x.example.com", "agent_id": a1, "target": "http://localhost:80"}),
        json!({"hostname": "x.example.com", "agent_id": a1, "target": "localhost:70000"}),
        json!({"hostname": "x.example.com", "agent_id": a1, "target": "localhost:80/path"}),
        json!({"hostname": "x.example.com", "agent_id": 9999, "target": "localhost:80"}),
        json!({"hostname": "x.example.com", "agent_id": "1", "target": "localhost:80"}),
        json!({"hostname": "x.example.com", "target": "localhost:80"}),
        json!({"hostname": "x.example.com", "agent_id": a1, "target": "localhost:80", "port": 1}),
    ];
    for body in bad {
        let (s, b) = c.post("/api/v1/tunnels", body.clone()).await;
        assert_error(s, &b, StatusCode::BAD_REQUEST, "bad_request");
    }
    let tid = t["id"].as_i64().unwrap();
    let path = format!("/api/v1/tunnels/{tid}");
    for body in [
        json!({"hostname": "bad_name.example.com"}),
        json!({"target": ":80"}),
        json!({"agent_id": 9999}),
        json!({"enabled": "yes"}),
    ] {
        let (s, b) = c.patch(&path, body).await;
        assert_error(s, &b, StatusCode::BAD_REQUEST, "bad_request");
    }
    let (_, list) = c.get("/api/v1/tunnels").await;
    assert_eq!(list.as_array().unwrap().len(), 3);
    // (`dns` is the DNS reconciler's report, which comes a moment after the tunnel: not data
    // a PATCH could change.)
    let without_dns = |mut v: Value| {
        v.as_object_mut().unwrap().remove("dns");
        v
    };
    assert_eq!(
        without_dns(list[0].clone()),
        without_dns(t.clone()),
        "the failed PATCHes changed nothing"
    );

    // Duplicate hostnames, case-insensitively, on create and on PATCH.
    for hostname in ["app.example.com", "APP.example.COM", "app.example.com."] {
        let (s, b) = c
            .post(
                "/api/v1/tunnels",
                json!({"hostname": hostname, "agent_id": a2, "target": "x:1"}),
            )
            .await;
        assert_error(s, &b, StatusCode::CONFLICT, "conflict");
    }
    let (s, b) = c
        .patch(
            &format!("/api/v1/tunnels/{}", t2["id"]),
            json!({"hostname": "App.Example.com"}),
        )
        .await;
    assert_error(s, &b, StatusCode::CONFLICT, "conflict");
    let (_, list) = c.get("/api/v1/tunnels").await;
    assert_eq!(list.as_array().unwrap().len(), 3);

    // PATCH; moving to another agent reallocates the port there.
    let (s, moved) = c
        .patch(
            &path,
            json!({"agent_id": a2, "target": "127.0.0.1:9000", "enabled": false}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{moved}");
    assert_eq!(
        (&moved["agent_id"], &moved["port"], &moved["target"]),
        (&json!(a2), &json!(10001), &json!("127.0.0.1:9000"))
    );
    assert_eq!(
        (&moved["enabled"], &moved["hostname"], &moved["created_at"]),
        (&json!(false), &t["hostname"], &t["created_at"])
    );
    let (s, same) = c.patch(&path, json!({"hostname": "APP.example.com"})).await;
    assert_eq!(
        (s, &same["hostname"], &same["port"]),
        (StatusCode::OK, &json!("app.example.com"), &json!(10001))
    );

    // An agent with tunnels cannot be deleted.
    let (s, b) = c.delete(&format!("/api/v1/agents/{a2}")).await;
    assert_error(s, &b, StatusCode::CONFLICT, "conflict");
    assert!(b["error"]["message"].as_str().unwrap().contains("move"));
    let (s, _) = c.get(&format!("/api/v1/agents/{a2}")).await;
    assert_eq!(s, StatusCode::OK);

    // DELETE frees the hostname and the port.
    let (s, _) = c.delete(&path).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = c.get(&path).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let again = c.tunnel("app.example.com", a1, "localhost:8080").await;
    assert_eq!(
        again["port"], 10000,
        "lowest free port on a1 after the move"
    );
    c.stop().await;
}

#[tokio::test]
async fn replicas_through_the_api_and_into_snapshots() {
    let (_tmp, dir) = data_dir();
    let c = start(&dir).await;
    let a1v = c.agent("a1").await;
    let a2v = c.agent("a2").await;
    let (a1, a2) = (a1v["id"].as_i64().unwrap(), a2v["id"].as_i64().unwrap());
    // a2 already serves a tunnel on its first port, so its replica port is the next one.
    c.tunnel("solo.example.com", a2, "app:1").await;
    let body = json!({"hostname": "app.example.com", "agent_ids": [a1, a2], "target": "app:80"});
    let (s, t) = c.post("/api/v1/tunnels", body).await;
    assert_eq!(s, StatusCode::CREATED, "{t}");
    assert_eq!(
        (&t["agent_id"], &t["agent_ids"]),
        (&json!(a1), &json!([a1, a2]))
    );
    let id = t["id"].as_i64().unwrap();

    // Each bad list is a 400 that stores nothing.
    for bad in [
        json!({"hostname": "x.example.com", "agent_ids": [], "target": "a:1"}),
        json!({"hostname": "x.example.com", "agent_ids": [a1, a1], "target": "a:1"}),
        json!({"hostname": "x.example.com", "agent_id": a2, "agent_ids": [a1, a2], "target": "a:1"}),
        json!({"hostname": "x.example.com", "target": "a:1"}),
        json!({"hostname": "x.example.com", "agent_ids": (1..=17).collect::<Vec<i64>>(), "target": "a:1"}),
        json!({"hostname": "x.example.com", "agent_ids": [a1, 9999], "target": "a:1"}),
    ] {
        let (s, v) = c.post("/api/v1/tunnels", bad.clone()).await;
        assert_error(s, &v, StatusCode::BAD_REQUEST, "bad_request");
    }
    let (_, all) = c.get("/api/v1/tunnels").await;
    assert_eq!(all.as_array().unwrap().len(), 2, "{all}");
    // A replica keeps its agent in use.
    let (s, v) = c.delete(&format!("/api/v1/agents/{a2}")).await;
    assert_error(s, &v, StatusCode::CONFLICT, "conflict");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("replica"),
        "{v}"
    );

    // The agent gets the tunnel as a service on its own port; the gateway a route listing both,
    // with Control's view of who is online, updated as agents come and go.
    let g = c.gateway("g1").await;
    let (mut gw, _, _) = c
        .node(g["token"].as_str().unwrap(), NodeRole::Gateway, None)
        .await;
    let route = |snap: &kakuremichi_proto::ConfigSnapshot| {
        snap.routes["app.example.com"]
            .replicas
            .iter()
            .map(|r| (r.agent_id, r.port, r.online))
            .collect::<Vec<_>>()
    };
    let first = next_config(&mut gw, Duration::from_secs(5)).await;
    assert_eq!(route(&first), vec![(a1, 10000, false), (a2, 10001, false)]);
    let (mut agent2, _, _) = c
        .node(a2v["api_key"].as_str().unwrap(), NodeRole::Agent, None)
        .await;
    let own = next_config(&mut agent2, Duration::from_secs(5)).await;
    let mut services: Vec<(i64, u16)> =
        own.services.iter().map(|s| (s.tunnel_id, s.port)).collect();
    services.sort();
    assert_eq!(services, vec![(1, 10000), (id, 10001)]);
    // A session can bring more than one push (it connects, then reports what it serves), so
    // each step waits for the snapshot that shows it rather than taking the next one.
    let mut seen = Vec::new();
    within(Duration::from_secs(5), async {
        while seen != [(a1, 10000, false), (a2, 10001, true)] {
            seen = route(&next_config(&mut gw, Duration::from_secs(5)).await);
        }
    })
    .await;
    drop(agent2);
    within(Duration::from_secs(5), async {
        while seen != [(a1, 10000, false), (a2, 10001, false)] {
            seen = route(&next_config(&mut gw, Duration::from_secs(5)).await);
        }
    })
    .await;

    // PATCH: agent_ids replaces the set; agent_id alone moves the primary and keeps the rest.
    let (s, t) = c
        .patch(
            &format!("/api/v1/tunnels/{id}"),
            json!({"agent_ids": [a2, a1]}),
        )
        .await;
    assert_eq!(
        (s, &t["agent_ids"]),
        (StatusCode::OK, &json!([a2, a1])),
        "{t}"
    );
    let (s, t) = c
        .patch(&format!("/api/v1/tunnels/{id}"), json!({"agent_id": a1}))
        .await;
    assert_eq!((s, &t["agent_ids"]), (StatusCode::OK, &json!([a1])), "{t}");
    within(Duration::from_secs(5), async {
        while !next_config(&mut gw, Duration::from_secs(5)).await.routes["app.example.com"]
            .replicas
            .is_empty()
        {}
    })
    .await;
    let (s, _) = c.delete(&format!("/api/v1/agents/{a2}")).await;
    assert_eq!(s, StatusCode::CONFLICT, "a2 still has solo.example.com");
    c.stop().await;
}

/// The web UI's tunnel form sets the access policy, shows it pre-filled on the edit form and as a
/// badge, keeps it when a form without the choice is posted, and shows a bad list as an error
/// with what was typed still in the form. Likewise for the replica agents.
#[tokio::test]
async fn the_tunnel_form_sets_and_keeps_access() {
    let (_tmp, dir) = data_dir();
    let c = start(&dir).await;
    let agent = c.agent("a1").await["id"].as_i64().unwrap();
    let (cookie, csrf) = c.login_csrf(ADMIN_EMAIL, ADMIN_PASSWORD).await.unwrap();
    let b = browser();
    let post = |path: &str, fields: Vec<(&str, &str)>| {
        let mut form = vec![("csrf", csrf.as_str())];
        form.extend(fields);
        b.post(c.url(path))
            .header("cookie", &cookie)
            .form(&form)
            .send()
    };
    let page = |path: &str| {
        let sent = b.get(c.url(path)).header("cookie", &cookie).send();
        async move { sent.await.unwrap().text().await.unwrap() }
    };
    let agent_id = agent.to_string();
    let base = |access: &'static str, allow: &'static str| {
        vec![
            ("hostname", "app.example.com"),
            ("agent_id", agent_id.as_str()),
            ("target", "localhost:8080"),
            ("tls", "off"),
            ("access", access),
            ("allow", allow),
        ]
    };

    let res = post(
        "/tunnels",
        base(
            "users",
            "Alice@Example.com, bob@example.org\ncarol@example.net",
        ),
    )
    .await
    .unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER, "created");
    let (_, t) = c.get("/api/v1/tunnels/1").await;
    assert_eq!(
        t["access"],
        json!({"mode": "users", "allow": ["alice@example.com", "bob@example.org", "carol@example.net"]})
    );
    let html = page("/tunnels/1").await;
    assert!(
        html.contains(r#"name="access" value="users" checked"#),
        "{html}"
    );
    assert!(html.contains("alice@example.com\nbob@example.org\ncarol@example.net</textarea>"));
    assert!(
        html.contains(">3 people</span>"),
        "the badge counts the people"
    );
    assert!(page("/tunnels").await.contains(">3 people</span>"));

    // A form without the choice (an older page) changes the target and keeps the policy.
    let mut fields = base("", "");
    fields.retain(|(k, _)| !matches!(*k, "access" | "allow"));
    fields[2] = ("target", "localhost:9090");
    let res = post("/tunnels/1", fields).await.unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    let (_, t) = c.get("/api/v1/tunnels/1").await;
    assert_eq!(
        (t["target"].as_str(), t["access"]["mode"].as_str()),
        (Some("localhost:9090"), Some("users"))
    );

    // A bad address: 400, the error on the page, the typed list kept, nothing changed.
    let res = post(
        "/tunnels/1",
        base("users", "dave@example.com\nnot-an-address"),
    )
    .await
    .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let html = res.text().await.unwrap();
    assert!(
        html.contains("&quot;not-an-address&quot; is not an e-mail address"),
        "{html}"
    );
    assert!(html.contains("dave@example.com\nnot-an-address</textarea>"));
    let res = post("/tunnels/1", base("users", " ,\n")).await.unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert!(res
        .text()
        .await
        .unwrap()
        .contains("list at least one e-mail address"));
    let (_, t) = c.get("/api/v1/tunnels/1").await;
    assert_eq!(t["access"]["allow"].as_array().unwrap().len(), 3);

    // Any signed-in user, then public again.
    post("/tunnels/1", base("login", "ignored")).await.unwrap();
    let (_, t) = c.get("/api/v1/tunnels/1").await;
    assert_eq!(t["access"], json!({"mode": "login"}));
    assert!(page("/tunnels/1").await.contains(">sign-in</span>"));
    post("/tunnels/1", base("public", "")).await.unwrap();
    let (_, t) = c.get("/api/v1/tunnels/1").await;
    assert_eq!(t["access"], json!({"mode": "public"}));
    assert!(page("/tunnels").await.contains(">public</span>"));

    // Replicas: the ticked boxes replace the set (the primary ticked too counts once); a form
    // without the boxes keeps it; the boxes shown and none ticked clear it.
    let a2 = c.agent("a2").await["id"].as_i64().unwrap().to_string();
    let agent_ids = || async { c.get("/api/v1/tunnels/1").await.1["agent_ids"].clone() };
    assert!(page("/tunnels/1")
        .await
        .contains(r#"name="replica" value="2" >"#));
    let mut fields = base("public", "");
    fields.extend([
        ("replicas_shown", "1"),
        ("replica", a2.as_str()),
        ("replica", agent_id.as_str()),
    ]);
    let res = post("/tunnels/1", fields).await.unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert_eq!(agent_ids().await, json!([agent, 2]));
    let html = page("/tunnels/1").await;
    assert!(
        html.contains(r#"name="replica" value="2" checked>"#),
        "{html}"
    );
    assert!(html.contains("replicas: a2"));
    post("/tunnels/1", base("public", "")).await.unwrap();
    assert_eq!(agent_ids().await, json!([agent, 2]), "kept");
    let mut fields = base("public", "");
    fields.push(("replicas_shown", "1"));
    post("/tunnels/1", fields).await.unwrap();
    assert_eq!(agent_ids().await, json!([agent]), "cleared");
}

/// The tunnel page's request log and Test button: the form's checkbox turns logging on, the
/// page then has the log's search (empty: no Gateway is connected), and Test says why an
/// Agent without a session was not asked.
#[tokio::test]
async fn the_tunnel_page_tests_the_target_and_shows_the_request_log() {
    let (_tmp, dir) = data_dir();
    let c = start(&dir).await;
    let agent = c.agent("a1").await["id"].as_i64().unwrap().to_string();
    let (cookie, csrf) = c.login_csrf(ADMIN_EMAIL, ADMIN_PASSWORD).await.unwrap();
    let b = browser();
    let post = |path: &str, fields: Vec<(&str, &str)>| {
        let mut form = vec![("csrf", csrf.as_str())];
        form.extend(fields);
        b.post(c.url(path))
            .header("cookie", &cookie)
            .form(&form)
            .send()
    };
    let fields = vec![
        ("hostname", "app.example.com"),
        ("agent_id", agent.as_str()),
        ("target", "localhost:8080"),
        ("tls", "off"),
        ("log_requests", "on"),
    ];
    let res = post("/tunnels", fields).await.unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    let (_, t) = c.get("/api/v1/tunnels/1").await;
    assert_eq!(t["log_requests"], true, "{t}");
    let html = b
        .get(c.url("/tunnels/1?status=5xx&path=/api/"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(html.contains("<h2>Recent requests</h2>"), "{html}");
    assert!(html.contains(r#"name="status" value="5xx""#), "{html}");
    assert!(html.contains("No request matches the search."), "{html}");
    assert!(
        html.contains(r#"name="log_requests" value="on" checked"#),
        "{html}"
    );
    let res = post("/tunnels/1/check", vec![]).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let html = res.text().await.unwrap();
    assert!(
        html.contains("<strong>a1</strong>: the Agent was not asked: it has no session"),
        "{html}"
    );
    // The API says the same, and refuses a bad search.
    let (status, report) = c.post("/api/v1/tunnels/1/check", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["ok"], false);
    let (status, _) = c.get("/api/v1/tunnels/1/requests?limit=0").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}
