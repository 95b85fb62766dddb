//! Tunnels through the API: exact fields, port allocation, validation, hostname conflicts.

mod common;

use common::*;
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test]
async fn tunnels_crud_and_validation() {
    let (_tmp, dir) = data_dir();
    let c = start(&dir).await;
    let a1 = c.agent("a1").await["id"].as_i64().unwrap();
    let a2 = c.agent("a2").await["id"].as_i64().unwrap();

    let t = c.tunnel("App.Example.com.", a1, "localhost:8080").await;
    assert_eq!(
        keys(&t),
        [
            "agent_id",
            "certificate",
            "created_at",
            "enabled",
            "hostname",
            "https_redirect",
            "id",
            "owner_id",
            "port",
            "target",
            "tls",
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
        json!({"hostname": "*.example.com", "agent_id": a1, "target": "localhost:80"}),
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
    assert_eq!(list[0], t, "the failed PATCHes changed nothing");

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
