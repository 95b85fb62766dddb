//! Managed DNS zones over the API (issue #15), against a real BIND started by the test: the
//! "test connection" says exactly what failed (BADSIG, BADKEY, unreachable), credentials are
//! write-only (never in a response, the audit log or the database file: sealed with
//! `<data_dir>/secrets.key`, mode 0600), a PATCH without the secret keeps it, bad input stores
//! nothing, and members get 403 everywhere.

use kakuremichi_testkit::control::*;
use kakuremichi_testkit::dns::{self, Bind, KEY_NAME, ZONE};
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const ZONES: &str = "/api/v1/dns/zones";

fn rfc2136(server: &str, key_name: &str, secret: &str) -> Value {
    json!({"server": server, "key_name": key_name, "key_algorithm": "hmac-sha256",
           "key_secret": secret})
}

async fn create(c: &Control, zone: &str, config: Value) -> Value {
    let (s, body) = c
        .post(
            ZONES,
            json!({"zone": zone, "provider": "rfc2136", "config": config}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    body
}

async fn check(c: &Control, id: &Value) -> Value {
    let (s, body) = c.post(&format!("{ZONES}/{id}/check"), json!({})).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(
        keys(&body),
        ["elapsed_ms", "error", "ok", "provider", "zone"],
        "{body}"
    );
    body
}

/// Asserts a failed check of `kind` whose message contains `says`.
fn failed(body: &Value, kind: &str, says: &str) {
    assert_eq!(body["ok"], false, "{body}");
    assert_eq!(body["error"]["kind"], kind, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains(says), "{body}");
}

#[tokio::test]
async fn zones_check_their_connection_and_keep_their_secrets() {
    if !dns::bind_available("zones_check_their_connection_and_keep_their_secrets") {
        return;
    }
    let bind = Bind::start().await;
    let (_tmp, dir) = data_dir();
    let c = start(&dir).await;
    let secret = bind.key_secret.clone();

    // The right key: the check passes, and the view shows everything but the secret.
    let good = create(&c, ZONE, rfc2136(&bind.server, KEY_NAME, &secret)).await;
    assert_eq!(
        keys(&good),
        [
            "config",
            "created_at",
            "id",
            "provider",
            "secrets",
            "updated_at",
            "zone"
        ]
    );
    assert_eq!(good["zone"], ZONE);
    assert_eq!(good["secrets"], json!(["key_secret"]));
    assert_eq!(good["config"]["server"], bind.server.as_str());
    assert!(good["config"].get("key_secret").is_none(), "{good}");
    let t = Instant::now();
    let ok = check(&c, &good["id"]).await;
    eprintln!("check ok took {:?}", t.elapsed());
    assert_eq!(ok["ok"], true, "{ok}");
    assert_eq!(ok["error"], Value::Null);
    assert_eq!(ok["zone"], ZONE);
    assert_eq!(ok["provider"], "rfc2136");

    // A wrong secret: BADSIG. A wrong key name: BADKEY. Both are "auth". (BIND serves one zone,
    // so the good zone is deleted first: it has no record written, so DELETE is a plain 204.)
    let (s, body) = c.delete(&format!("{ZONES}/{}", good["id"])).await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{body}");
    let bad = create(
        &c,
        ZONE,
        rfc2136(&bind.server, KEY_NAME, &dns::tsig_secret()),
    )
    .await;
    failed(&check(&c, &bad["id"]).await, "auth", "BADSIG");
    let path = format!("{ZONES}/{}", bad["id"]);
    let (s, body) = c
        .patch(
            &path,
            json!({"config": {"key_name": "nobody.", "key_secret": secret}}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    failed(&check(&c, &bad["id"]).await, "auth", "BADKEY");

    // A PATCH without the secret keeps it: fixing the key name alone makes it work.
    let (s, body) = c
        .patch(&path, json!({"config": {"key_name": KEY_NAME}}))
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["secrets"], json!(["key_secret"]));
    assert_eq!(check(&c, &bad["id"]).await["ok"], true);
    // A PATCH to a bad secret: the check fails again.
    let (s, body) = c
        .patch(&path, json!({"config": {"key_secret": dns::tsig_secret()}}))
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    failed(&check(&c, &bad["id"]).await, "auth", "BADSIG");
    // Back to the right one.
    let (s, _) = c
        .patch(&path, json!({"config": {"key_secret": secret}}))
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(check(&c, &bad["id"]).await["ok"], true);

    // Nothing listening: "unreachable", at once.
    let closed = format!("127.0.0.1:{}", dns::free_port());
    let gone = create(&c, "other.test", rfc2136(&closed, KEY_NAME, &secret)).await;
    let t = Instant::now();
    failed(&check(&c, &gone["id"]).await, "unreachable", &closed);
    assert!(
        t.elapsed() < Duration::from_secs(7),
        "took {:?}",
        t.elapsed()
    );
    eprintln!("check unreachable took {:?}", t.elapsed());

    // The secret is nowhere: not in GET, the list, the audit log, nor any file but the key.
    let (_, one) = c.get(&path).await;
    let (_, list) = c.get(ZONES).await;
    let (_, audit) = c.get("/api/v1/audit?limit=200").await;
    for (what, v) in [("get", &one), ("list", &list), ("audit", &audit)] {
        assert!(!v.to_string().contains(&secret), "{what} shows the secret");
    }
    let actions: Vec<&str> = audit_actions(&audit);
    for action in [
        "dns.zone.create",
        "dns.zone.update",
        "dns.zone.delete",
        "dns.zone.check",
    ] {
        assert!(
            actions.contains(&action),
            "{action} not audited: {actions:?}"
        );
    }
    assert_eq!(list.as_array().unwrap().len(), 2, "{list}");
    let raw = base64_decode(&secret);
    for entry in walk(&dir) {
        if entry.file_name().is_some_and(|n| n == "secrets.key") {
            continue;
        }
        let bytes = std::fs::read(&entry).unwrap();
        assert!(
            !contains(&bytes, secret.as_bytes()),
            "{entry:?} holds the secret"
        );
        assert!(
            !contains(&bytes, &raw),
            "{entry:?} holds the secret's bytes"
        );
    }
    let key = dir.join("secrets.key");
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{key:?}");
    c.stop().await;
}

#[tokio::test]
async fn bad_input_and_members_change_nothing() {
    let (_tmp, dir) = data_dir();
    let c = start(&dir).await;
    let good = rfc2136("127.0.0.1:53", KEY_NAME, "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0");
    for (body, says) in [
        (
            json!({"zone": "example.com", "provider": "bind", "config": good}),
            "unknown DNS provider",
        ),
        (
            json!({"zone": "*.example.com", "provider": "rfc2136", "config": good}),
            "wildcard",
        ),
        (
            json!({"zone": "example.com", "provider": "rfc2136", "config": [1]}),
            "JSON object",
        ),
        (
            json!({"zone": "example.com", "provider": "rfc2136", "config": {"server": "x"}}),
            "rfc2136 config",
        ),
        (
            json!({"zone": "example.com", "provider": "rfc2136",
                   "config": rfc2136("127.0.0.1:53", KEY_NAME, "not base64!")}),
            "key_secret",
        ),
        (
            json!({"zone": "example.com", "provider": "rfc2136"}),
            "config",
        ),
        (
            json!({"zone": "example.com", "provider": "rfc2136", "config": good, "x": 1}),
            "x",
        ),
    ] {
        let (s, err) = c.post(ZONES, body.clone()).await;
        assert_error(s, &err, StatusCode::BAD_REQUEST, "bad_request");
        let message = err["error"]["message"].as_str().unwrap();
        assert!(message.contains(says), "{body}: {err}");
        assert!(
            !message.contains("c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0"),
            "{err}"
        );
    }
    let (_, list) = c.get(ZONES).await;
    assert_eq!(list, json!([]));

    let zone = json!({"zone": "example.com", "provider": "rfc2136", "config": good});
    let (s, created) = c.post(ZONES, zone.clone()).await;
    assert_eq!(s, StatusCode::CREATED, "{created}");
    let (s, err) = c.post(ZONES, zone).await;
    assert_error(s, &err, StatusCode::CONFLICT, "conflict");
    let path = format!("{ZONES}/{}", created["id"]);
    // A bad PATCH changes nothing.
    let (s, err) = c
        .patch(&path, json!({"config": {"key_secret": null}}))
        .await;
    assert_error(s, &err, StatusCode::BAD_REQUEST, "bad_request");
    let (s, err) = c.patch(&path, json!({"provider": "powerdns"})).await;
    assert_error(s, &err, StatusCode::BAD_REQUEST, "bad_request");
    let (_, after) = c.get(&path).await;
    assert_eq!(after, created);
    let (s, err) = c.get(&format!("{ZONES}/999")).await;
    assert_error(s, &err, StatusCode::NOT_FOUND, "not_found");

    // Members: 403 on every route, the zone untouched.
    let m = member(&c, "member@example.com").await;
    let check = format!("{path}/check");
    for (method, p, body) in [
        ("GET", ZONES, None),
        (
            "POST",
            ZONES,
            Some(json!({"zone": "m.test", "provider": "rfc2136", "config": good})),
        ),
        ("GET", path.as_str(), None),
        (
            "PATCH",
            path.as_str(),
            Some(json!({"config": {"server": "127.0.0.1:1"}})),
        ),
        ("DELETE", path.as_str(), None),
        ("POST", check.as_str(), None),
    ] {
        let (s, err) = m.call(&c, method, p, body).await;
        assert_error(s, &err, StatusCode::FORBIDDEN, "forbidden");
    }
    let (_, after) = c.get(&path).await;
    assert_eq!(after, created);

    // DELETE of a zone with no record written yet: 204, gone. (No route writes records yet;
    // the record reconciler will, and its tests cover deleting a zone with records.)
    let (s, body) = c.delete(&path).await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{body}");
    let (s, err) = c.get(&path).await;
    assert_error(s, &err, StatusCode::NOT_FOUND, "not_found");
    let (s, err) = c.delete(&path).await;
    assert_error(s, &err, StatusCode::NOT_FOUND, "not_found");
    c.stop().await;
}

fn audit_actions(audit: &Value) -> Vec<&str> {
    let entries = audit
        .get("entries")
        .and_then(Value::as_array)
        .or_else(|| audit.as_array())
        .unwrap_or_else(|| panic!("audit: {audit}"));
    entries
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect()
}

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Every file under `dir`.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}
