//! Temporary tunnels, Control's half (issue #17): `POST /shares` makes an Agent and a tunnel at a
//! random name under the temporary domain, `DELETE` removes both, the quota bounds them (0 turns
//! them off), bad input changes nothing, and an abandoned one (its Agent offline past the TTL) is
//! swept while one whose Agent is online stays, until its `expires_at`.

use kakuremichi_control::TemporaryConfig;
use kakuremichi_proto::NodeRole;
use kakuremichi_testkit::control::*;
use kakuremichi_testkit::eventually;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::time::Duration;

const DOMAIN: &str = "t.example.test";

async fn control(ttl: Duration) -> (tempfile::TempDir, Control) {
    let (dir, data) = data_dir();
    let mut config = config(&data);
    config.temporary = TemporaryConfig {
        domain: Some(DOMAIN.into()),
        ttl,
    };
    (dir, start_with(config).await)
}

async fn count(c: &Control, path: &str) -> usize {
    let (s, list) = c.get(path).await;
    assert_eq!(s, StatusCode::OK, "{list}");
    list.as_array().unwrap().len()
}

#[tokio::test]
async fn a_share_is_an_agent_and_a_tunnel_at_a_random_name_deleted_together() {
    let (_dir, c) = control(Duration::from_secs(600)).await;
    let (s, made) = c
        .post("/api/v1/shares", json!({"target": "localhost:3000"}))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{made}");
    let host = made["tunnel"]["hostname"].as_str().unwrap();
    let label = host.strip_suffix(&format!(".{DOMAIN}")).unwrap();
    assert_eq!(label.len(), 12, "{host}");
    assert!(label.bytes().all(|b| b.is_ascii_lowercase()), "{host}");
    assert!(made["agent"]["api_key"]
        .as_str()
        .unwrap()
        .starts_with("kma_"));
    assert_eq!(made["tunnel"]["agent_id"], made["agent"]["id"]);
    assert_eq!(made["tunnel"]["target"], "localhost:3000");
    assert_eq!(made["tunnel"]["access"]["mode"], "public");
    assert_eq!(made["expires_at"], Value::Null);
    let (_, mine) = c.get("/api/v1/shares").await;
    assert_eq!(mine[0]["id"], made["id"]);
    assert_eq!(mine[0]["tunnel_id"], made["tunnel"]["id"]);

    // A name of one's own, once; the second try leaves no Agent behind.
    let body = json!({"target": "localhost:3000", "name": "Demo", "expires_in": 3600,
                      "access": {"mode": "login"}});
    let (s, demo) = c.post("/api/v1/shares", body.clone()).await;
    assert_eq!(s, StatusCode::CREATED, "{demo}");
    assert_eq!(demo["tunnel"]["hostname"], format!("demo.{DOMAIN}"));
    assert_eq!(demo["tunnel"]["access"]["mode"], "login");
    assert!(demo["expires_at"].is_string(), "{demo}");
    let agents = count(&c, "/api/v1/agents").await;
    let (s, body) = c.post("/api/v1/shares", body).await;
    assert_error(s, &body, StatusCode::CONFLICT, "conflict");
    assert_eq!(count(&c, "/api/v1/agents").await, agents, "no orphan Agent");

    // Deleting removes the tunnel and the Agent.
    let id = made["id"].as_i64().unwrap();
    let (s, _) = c.delete(&format!("/api/v1/shares/{id}")).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = c
        .get(&format!("/api/v1/agents/{}", made["agent"]["id"]))
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = c
        .get(&format!("/api/v1/tunnels/{}", made["tunnel"]["id"]))
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, body) = c.delete(&format!("/api/v1/shares/{id}")).await;
    assert_error(s, &body, StatusCode::NOT_FOUND, "not_found");

    // Another user cannot see or delete it.
    let bob = member(&c, "bob@example.com").await;
    let (s, _) = bob
        .call(
            &c,
            "DELETE",
            &format!("/api/v1/shares/{}", demo["id"]),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (_, theirs) = bob.call(&c, "GET", "/api/v1/shares", None).await;
    assert_eq!(theirs, json!([]));
}

#[tokio::test]
async fn bad_input_the_quota_and_a_control_without_a_domain_change_nothing() {
    let (_dir, c) = control(Duration::from_secs(600)).await;
    for bad in [
        json!({}),
        json!({"target": "localhost:3000", "name": "-x"}),
        json!({"target": "localhost:3000", "name": "a.b"}),
        json!({"target": "localhost:3000", "expires_in": 5}),
        json!({"target": "localhost:3000", "expires_in": 99_999_999}),
        json!({"target": "localhost:3000", "extra": true}),
        json!({"target": "not a target at all"}),
    ] {
        let (s, body) = c.post("/api/v1/shares", bad.clone()).await;
        assert_error(s, &body, StatusCode::BAD_REQUEST, "bad_request");
    }
    assert_eq!(count(&c, "/api/v1/agents").await, 0, "nothing was made");
    assert_eq!(count(&c, "/api/v1/tunnels").await, 0);

    let (s, _) = c
        .patch(
            "/api/v1/settings",
            json!({"max_temporary_tunnels_per_user": 1}),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let body = json!({"target": "localhost:3000"});
    let (s, _) = c.post("/api/v1/shares", body.clone()).await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, refused) = c.post("/api/v1/shares", body.clone()).await;
    assert_error(s, &refused, StatusCode::FORBIDDEN, "forbidden");
    assert!(
        refused
            .to_string()
            .contains("max_temporary_tunnels_per_user"),
        "{refused}"
    );
    let (s, _) = c
        .patch(
            "/api/v1/settings",
            json!({"max_temporary_tunnels_per_user": 0}),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, off) = c.post("/api/v1/shares", body.clone()).await;
    assert_error(s, &off, StatusCode::FORBIDDEN, "forbidden");
    assert!(off.to_string().contains("turned off"), "{off}");
    assert_eq!(count(&c, "/api/v1/agents").await, 1);

    let (_dir2, data) = data_dir();
    let plain = start(&data).await;
    let (s, off) = plain.post("/api/v1/shares", body).await;
    assert_error(s, &off, StatusCode::FORBIDDEN, "forbidden");
    assert!(
        off.to_string().contains("KAKUREMICHI_TEMPORARY_DOMAIN"),
        "{off}"
    );
}

#[tokio::test]
async fn an_abandoned_share_is_swept_after_the_ttl_and_a_live_one_stays() {
    let (dir, c) = control(Duration::from_secs(1)).await;
    let body = json!({"target": "localhost:3000"});
    let (_, live) = c.post("/api/v1/shares", body.clone()).await;
    let (_, abandoned) = c.post("/api/v1/shares", body).await;
    // The live one's Agent holds a session (as `kakuremichi share` does); the other never came.
    let key = live["agent"]["api_key"].as_str().unwrap();
    let _session = c.node(key, NodeRole::Agent, None).await;
    eventually(
        Duration::from_secs(20),
        "the abandoned share to be swept",
        || async {
            let (_, mine) = c.get("/api/v1/shares").await;
            !mine
                .to_string()
                .contains(&format!("\"id\":{}", abandoned["id"]))
        },
    )
    .await;
    let (s, _) = c
        .get(&format!("/api/v1/agents/{}", abandoned["agent"]["id"]))
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "its Agent went with it");
    let (_, mine) = c.get("/api/v1/shares").await;
    assert_eq!(mine.as_array().unwrap().len(), 1, "{mine}");
    assert_eq!(mine[0]["id"], live["id"], "the live one stays");
    let (_, audit) = c.get("/api/v1/audit").await;
    assert!(audit.to_string().contains("share.sweep"), "{audit}");

    // Past its --expires, a share goes even while its Agent is online. (The API takes a minute
    // at least; the test moves the time in the database.)
    let db = kakuremichi_testkit::roles::test_db(&dir.path().join("data")).await;
    sqlx::query("UPDATE temporary_tunnels SET expires_at = '2000-01-01T00:00:00Z' WHERE id = $1")
        .bind(live["id"].as_i64().unwrap())
        .execute(&db)
        .await
        .unwrap();
    eventually(
        Duration::from_secs(20),
        "the expired share swept",
        || async { count(&c, "/api/v1/shares").await == 0 },
    )
    .await;
    let (s, _) = c
        .get(&format!("/api/v1/tunnels/{}", live["tunnel"]["id"]))
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (_, audit) = c.get("/api/v1/audit").await;
    assert!(audit.to_string().contains(r#""why":"expired""#), "{audit}");
}

/// The routes of the Gateway with `token`, as it pulls them.
async fn gateway_routes(c: &Control, token: &str) -> Value {
    let res = c
        .http
        .get(c.url(kakuremichi_proto::PULL_CONFIG_PATH))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    res.json::<Value>().await.unwrap()["routes"].clone()
}

#[tokio::test]
async fn basic_auth_reaches_the_gateways_as_a_salted_hash_and_the_password_nowhere() {
    let (_dir, c) = control(Duration::from_secs(600)).await;
    let gw = c.gateway("edge").await;
    let gw_token = gw["token"].as_str().unwrap();
    let body =
        json!({"target": "localhost:3000", "name": "locked", "basic_auth": "ann:correct horse"});
    let (s, made) = c.post("/api/v1/shares", body).await;
    assert_eq!(s, StatusCode::CREATED, "{made}");
    assert_eq!(made["tunnel"]["basic_auth_user"], "ann");
    let host = format!("locked.{DOMAIN}");
    let routes = gateway_routes(&c, gw_token).await;
    let check = &routes[&host]["basic_auth"];
    assert_eq!(check["salt"].as_str().unwrap().len(), 32, "{routes}");
    assert_eq!(check["sha256"].as_str().unwrap().len(), 64, "{routes}");
    let tunnel_id = made["tunnel"]["id"].as_i64().unwrap();
    let (_, audit) = c.get("/api/v1/audit").await;
    for shown in [&made, &routes, &audit] {
        assert!(!shown.to_string().contains("correct horse"), "{shown}");
    }

    // Bad credentials, or a tunnel that is not http, change nothing.
    let path = format!("/api/v1/tunnels/{tunnel_id}");
    for bad in ["nocolon", "ann:short", ":password1", "ann:pass\u{7}word"] {
        let (s, body) = c.patch(&path, json!({"basic_auth": bad})).await;
        assert_error(s, &body, StatusCode::BAD_REQUEST, "bad_request");
    }
    assert_eq!(
        gateway_routes(&c, gw_token).await[&host]["basic_auth"],
        *check
    );
    let agent = c.agent("db").await;
    let tcp = json!({"hostname": "db.example.test", "agent_id": agent["id"], "target": "127.0.0.1:5432",
                     "protocol": "tcp", "basic_auth": "ann:correct horse"});
    let (s, body) = c.post("/api/v1/tunnels", tcp).await;
    assert_error(s, &body, StatusCode::BAD_REQUEST, "bad_request");

    // A new password is a new salt and hash; null turns it off.
    let (s, changed) = c
        .patch(&path, json!({"basic_auth": "bob:another password"}))
        .await;
    assert_eq!(s, StatusCode::OK, "{changed}");
    assert_eq!(changed["basic_auth_user"], "bob");
    assert_ne!(
        gateway_routes(&c, gw_token).await[&host]["basic_auth"],
        *check
    );
    let (s, off) = c.patch(&path, json!({"basic_auth": null})).await;
    assert_eq!(s, StatusCode::OK, "{off}");
    assert_eq!(off["basic_auth_user"], Value::Null);
    assert!(gateway_routes(&c, gw_token).await[&host]
        .get("basic_auth")
        .is_none());
}
