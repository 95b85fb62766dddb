//! The OpenAPI document at `/api/v1/openapi.json`: public, versioned like the crate, complete, valid.
//!
//! "Complete" is checked against the running router, not against a list someone must remember to
//! update: every string literal starting with `/api/v1` in Control's and proto's sources is a
//! candidate path, and probing the live Control with each method tells which (path, method) pairs
//! are routes (anything but the router's own 404 "no such route" and 405 answers). A route added
//! without a `#[utoipa::path]` annotation fails `every_api_route_is_documented`.
//!
//! Validity is checked by the real validator, `openapi-spec-validator` from PyPI (`scripts/test`
//! installs it), and real answers are checked against the documented status codes and schemas
//! (`openapi_samples.py`, with the `jsonschema` the validator brings). Without them those tests
//! say SKIPPED, or fail under `KAKUREMICHI_REQUIRE_PEERS=1`.

use kakuremichi_proto::NodeRole;
use kakuremichi_testkit::control::*;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

/// Methods a route may have; HEAD and OPTIONS follow GET and are not documented separately.
const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

async fn document(c: &Control) -> Value {
    // No credentials: the document is public, like the health checks.
    let res = c
        .http
        .get(c.url("/api/v1/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    res.json().await.unwrap()
}

/// Every `(path, method)` the document describes.
fn documented(doc: &Value) -> BTreeSet<(String, String)> {
    let paths = doc["paths"].as_object().expect("paths");
    paths
        .iter()
        .flat_map(|(path, item)| {
            METHODS
                .iter()
                .filter(|m| item.get(**m).is_some())
                .map(move |m| (path.clone(), m.to_string()))
        })
        .collect()
}

/// String literals starting with `/api/v1` in the `.rs` files under `dir`.
fn api_literals(dir: &Path, found: &mut BTreeSet<String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            api_literals(&path, found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).unwrap();
            for (at, _) in text.match_indices("\"/api/v1") {
                let rest = &text[at + 1..];
                let literal = &rest[..rest.find('"').unwrap()];
                found.insert(literal.split('?').next().unwrap().to_string());
            }
        }
    }
}

/// Whether `path` is `template` or fills its `{parameters}`.
fn fills(path: &str, template: &str) -> bool {
    let (p, t): (Vec<_>, Vec<_>) = (path.split('/').collect(), template.split('/').collect());
    p.len() == t.len()
        && p.iter()
            .zip(&t)
            .all(|(p, t)| p == t || (t.starts_with('{') && !p.is_empty()))
}

/// Whether `method path` reaches a handler: not the router's 404 for unknown paths, not its 405.
async fn is_route(c: &Control, method: &str, path: &str) -> bool {
    // A template's parameters become `1`: enough to match the route (handlers then answer 401).
    let mut concrete = String::new();
    let mut in_param = false;
    for ch in path.chars() {
        match ch {
            '{' => in_param = true,
            '}' => {
                in_param = false;
                concrete.push('1');
            }
            _ if !in_param => concrete.push(ch),
            _ => {}
        }
    }
    let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
    let res = c
        .http
        .request(method, c.url(&concrete))
        .send()
        .await
        .unwrap();
    let status = res.status();
    let body: Value = res.json().await.unwrap_or(Value::Null);
    let unrouted = (status == StatusCode::NOT_FOUND && body["error"]["message"] == "no such route")
        || (status == StatusCode::METHOD_NOT_ALLOWED
            && body["error"]["code"] == "method_not_allowed");
    !unrouted
}

#[tokio::test]
async fn every_api_route_is_documented() {
    let (_tmp, dir) = data_dir();
    let c = start(&dir).await;
    let doc = document(&c).await;
    let documented = documented(&doc);

    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut candidates = BTreeSet::new();
    api_literals(&manifest.join("src"), &mut candidates);
    api_literals(&manifest.join("../proto/src"), &mut candidates);
    let templates: BTreeSet<String> = documented.iter().map(|(p, _)| p.clone()).collect();
    let mut routes = BTreeSet::new();
    for path in &candidates {
        for method in METHODS {
            if is_route(&c, method, path).await {
                // A concrete path (`/api/v1/tunnels/7` in a test) counts as the template it fills.
                let path = templates.iter().find(|t| fills(path, t)).unwrap_or(path);
                routes.insert((path.clone(), method.to_string()));
            }
        }
    }
    // The probe itself works: these are routes, and the router tells them from the rest.
    for known in [
        ("/api/v1/tunnels", "post"),
        ("/api/v1/tunnels/{id}", "patch"),
        ("/api/v1/connect", "get"),
        ("/api/v1/edge-nodes/me/config", "get"),
        ("/api/v1/openapi.json", "get"),
    ] {
        assert!(
            routes.contains(&(known.0.to_string(), known.1.to_string())),
            "{known:?} not found among {routes:?}"
        );
    }
    assert!(!is_route(&c, "put", "/api/v1/tunnels").await);
    assert!(!is_route(&c, "get", "/api/v1/no-such-thing").await);

    let undocumented: Vec<_> = routes.difference(&documented).collect();
    assert!(
        undocumented.is_empty(),
        "routes missing from /api/v1/openapi.json (add #[utoipa::path] to the handler and list it \
         in api/openapi.rs): {undocumented:?}"
    );
    // And the document describes nothing the router does not serve.
    for (path, method) in &documented {
        assert!(
            is_route(&c, method, path).await,
            "documented but not routed: {method} {path}"
        );
    }
    c.stop().await;
}

#[tokio::test]
async fn document_names_version_security_and_schemas() {
    let (_tmp, dir) = data_dir();
    let c = start(&dir).await;
    let doc = document(&c).await;
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));

    let schemes = &doc["components"]["securitySchemes"];
    assert_eq!(schemes["api_token"]["scheme"], "bearer");
    assert_eq!(schemes["session_cookie"]["in"], "cookie");
    assert_eq!(schemes["session_cookie"]["name"], "km_session");
    assert_eq!(schemes["csrf_token"]["in"], "header");
    assert_eq!(schemes["csrf_token"]["name"], "X-CSRF-Token");
    assert_eq!(schemes["node_credential"]["scheme"], "bearer");

    // Every operation under /api/v1 says how to authenticate, but login, the command line's
    // sign-in and this document; and every operation has a success response and JSON errors.
    let public = [
        "/api/v1/auth/login",
        "/api/v1/auth/device",
        "/api/v1/auth/device/token",
        "/api/v1/openapi.json",
    ];
    for (path, method) in documented(&doc) {
        let op = &doc["paths"][&path][&method];
        let security = op["security"].as_array();
        if path.starts_with("/api/v1") && !public.contains(&path.as_str()) {
            assert!(
                security.is_some_and(|s| !s.is_empty()),
                "{method} {path} has no security"
            );
        } else {
            assert!(security.is_none(), "{method} {path} is public");
        }
        let responses = op["responses"].as_object().unwrap();
        assert!(
            responses.keys().any(|s| s.starts_with('2') || s == "101"),
            "{method} {path}: no success response"
        );
        for (status, response) in responses {
            if status.starts_with('4') || status.starts_with('5') {
                assert_eq!(
                    response["content"]["application/json"]["schema"]["$ref"],
                    "#/components/schemas/ErrorBody",
                    "{method} {path} {status}"
                );
            }
        }
    }

    // Bodies and answers are the real types: a tunnel's fields, the write security of a POST.
    let create = &doc["paths"]["/api/v1/tunnels"]["post"];
    assert_eq!(
        create["requestBody"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/CreateTunnel"
    );
    assert_eq!(
        create["responses"]["201"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/TunnelView"
    );
    assert!(create["security"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s.get("session_cookie").is_some() && s.get("csrf_token").is_some()));
    let schemas = &doc["components"]["schemas"];
    let tunnel_fields = serde_json::to_string(&schemas["TunnelView"]).unwrap();
    for field in [
        "hostname",
        "agent_ids",
        "access",
        "certificate",
        "TunnelLimits",
    ] {
        assert!(tunnel_fields.contains(field), "TunnelView lacks {field}");
    }
    assert_eq!(schemas["CreateTunnel"]["additionalProperties"], false);
    assert!(schemas.get("ConfigSnapshot").is_some());
    c.stop().await;
}

/// True when `module` imports; otherwise SKIPPED, or a failure under `KAKUREMICHI_REQUIRE_PEERS=1`.
fn python_has(module: &str) -> bool {
    let have = Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !have {
        assert!(
            std::env::var("KAKUREMICHI_REQUIRE_PEERS").as_deref() != Ok("1"),
            "openapi-spec-validator is required: pip install openapi-spec-validator"
        );
        eprintln!("SKIPPED: python3 module {module} missing (pip install openapi-spec-validator)");
    }
    have
}

/// Runs python3 with `args`; panics with what it said unless it succeeds.
fn python(args: &[&str], file: &Path) -> String {
    let out = Command::new("python3")
        .args(args)
        .arg(file)
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "python3 {}: {said}", args[0]);
    said
}

#[tokio::test]
async fn document_passes_openapi_spec_validator() {
    if !python_has("openapi_spec_validator") {
        return;
    }
    let (_tmp, dir) = data_dir();
    let c = start(&dir).await;
    let file = dir.join("openapi.json");
    std::fs::write(&file, serde_json::to_vec(&document(&c).await).unwrap()).unwrap();
    let said = python(&["-m", "openapi_spec_validator"], &file);
    assert!(said.contains("OK"), "openapi-spec-validator: {said}");
    c.stop().await;
}

#[tokio::test]
async fn real_answers_match_the_documented_schemas() {
    // jsonschema comes with openapi-spec-validator.
    if !python_has("jsonschema") {
        return;
    }
    let (_tmp, dir) = data_dir();
    let c = start(&dir).await;
    let doc = document(&c).await;
    let agent = c.agent("app").await;
    let gateway = c.gateway("edge").await;
    let (_ws, _, _) = c
        .node(agent["api_key"].as_str().unwrap(), NodeRole::Agent, None)
        .await;
    let t = c
        .tunnel(
            "app.example.com",
            agent["id"].as_i64().unwrap(),
            "localhost:8080",
        )
        .await;
    let tunnel = format!("/api/v1/tunnels/{}", t["id"]);
    let limits = json!({"ip_allow": ["10.0.0.0/8"], "rate_limit_per_second": 5, "access": {"mode": "users", "allow": ["a@example.com"]}});
    let invite = json!({"email": "new@example.com"});

    let mut samples = vec![json!(["/api/v1/tunnels", "post", 201, t])];
    let mut sample = |path: &str, method: &str, want: u16, (status, body): (StatusCode, Value)| {
        assert_eq!(status.as_u16(), want, "{method} {path}: {body}");
        samples.push(json!([path, method, want, body]));
    };
    sample(
        "/api/v1/tunnels/{id}",
        "patch",
        200,
        c.patch(&tunnel, limits).await,
    );
    for path in [
        "/api/v1/auth/me",
        "/api/v1/agents",
        "/api/v1/gateways",
        "/api/v1/tunnels",
        "/api/v1/status",
        "/api/v1/users",
        "/api/v1/settings",
        "/api/v1/audit",
        "/api/v1/tokens",
    ] {
        sample(path, "get", 200, c.get(path).await);
    }
    let missing = c.get("/api/v1/tunnels/999").await;
    sample("/api/v1/tunnels/{id}", "get", 404, missing);
    sample(
        "/api/v1/invitations",
        "post",
        201,
        c.post("/api/v1/invitations", invite).await,
    );
    sample(
        "/api/v1/agents",
        "post",
        400,
        c.post("/api/v1/agents", json!({"nom": 1})).await,
    );
    let pull = c
        .http
        .get(c.url(kakuremichi_proto::PULL_CONFIG_PATH))
        .bearer_auth(gateway["token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    let (status, snapshot) = into_json(pull).await;
    assert!(
        !snapshot["routes"].as_object().unwrap().is_empty(),
        "{snapshot}"
    );
    sample(
        kakuremichi_proto::PULL_CONFIG_PATH,
        "get",
        200,
        (status, snapshot),
    );
    sample(
        "/healthz",
        "get",
        200,
        into_json(c.http.get(c.url("/healthz")).send().await.unwrap()).await,
    );
    let (s, _) = into_json(
        c.http
            .post(c.url("/api/v1/auth/logout"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    sample("/api/v1/auth/logout", "post", 204, (s, Value::Null));

    let file = dir.join("samples.json");
    let data = json!({"doc": doc, "samples": samples});
    std::fs::write(&file, serde_json::to_vec(&data).unwrap()).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/openapi_samples.py");
    let said = python(&[script.to_str().unwrap()], &file);
    assert!(said.contains("failed: 0"), "{said}");
    c.stop().await;
}
