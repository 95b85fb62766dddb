//! The harness of Control's own tests: Control in-process on 127.0.0.1:0 with a temporary data
//! dir, the admin's API token, raw calls that return any status (the tests check failures as
//! closely as successes), and node sessions spoken by hand ([`crate::node`]).
//!
//! `use kakuremichi_testkit::control::*;` brings everything a Control test uses.

pub use crate::node::*;
pub use crate::{eventually, ADMIN_EMAIL, ADMIN_PASSWORD};

use crate::roles::{control_config, InProcessControl};
use kakuremichi_client::{Client, Error, Method, Reply};
use kakuremichi_control::ControlConfig;
use kakuremichi_proto::{ControlMessage, NodeRole, CONNECT_PATH, PROTOCOL_VERSION};
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

/// A running Control.
pub struct Control {
    pub addr: SocketAddr,
    pub http: reqwest::Client,
    /// A personal API token of the admin.
    pub token: String,
    running: InProcessControl,
}

/// Control's config with its data in `dir` and the bootstrap admin.
pub fn config(dir: &Path) -> ControlConfig {
    control_config(dir)
}

/// Starts Control with the admin bootstrap configured, and logs in to get an API token.
pub async fn start(dir: &Path) -> Control {
    start_with(config(dir)).await
}

pub async fn start_with(config: ControlConfig) -> Control {
    let mut control = launch(config).await;
    let login = control
        .client()
        .login(ADMIN_EMAIL, ADMIN_PASSWORD)
        .await
        .expect("admin login");
    control.token = control
        .client()
        .create_token(&login, "tests")
        .await
        .expect("an API token for the admin");
    control
}

/// Starts Control with no account at all (first run: the UI offers the setup page).
pub async fn start_fresh(dir: &Path) -> Control {
    launch(ControlConfig {
        data_dir: dir.to_path_buf(),
        database_url: crate::roles::test_database(dir),
        ..ControlConfig::default()
    })
    .await
}

/// Starts Control and uses `token` (from an earlier run on the same data dir) for the API.
pub async fn start_reusing(config: ControlConfig, token: String) -> Control {
    let mut control = launch(config).await;
    control.token = token;
    control
}

async fn launch(config: ControlConfig) -> Control {
    crate::init_logs();
    let running = InProcessControl::start(config).await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    Control {
        addr: running.addr,
        http,
        token: String::new(),
        running,
    }
}

impl Control {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The API client, with the admin's token once there is one.
    pub fn client(&self) -> Client {
        let client = Client::with_http(self.http.clone(), format!("http://{}", self.addr));
        match self.token.as_str() {
            "" => client,
            token => client.with_token(token),
        }
    }

    /// Logs in; returns the `km_session=...` cookie pair.
    pub async fn login(&self, email: &str, password: &str) -> Option<String> {
        Some(self.login_csrf(email, password).await?.0)
    }

    /// Logs in; returns the `km_session=...` cookie pair and the session's CSRF token (`None`
    /// when the login is refused).
    pub async fn login_csrf(&self, email: &str, password: &str) -> Option<(String, String)> {
        match self.client().login(email, password).await {
            Ok(login) => {
                let first = login.cookie.split("; ").next()?.to_string();
                (!first.is_empty()).then_some((first, login.csrf_token))
            }
            Err(Error::Api { .. }) => None,
            Err(e) => panic!("login: {e}"),
        }
    }

    /// Sends a request with the admin token; returns status and JSON body (Null if empty).
    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let reply = self.call_with(&self.token, method, path, body).await;
        (reply.status, reply.body)
    }

    /// Sends a request with `token` to `path` (from the root); panics if the body is not JSON.
    pub async fn call_with(
        &self,
        token: &str,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Reply {
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let client = Client::with_http(self.http.clone(), format!("http://{}", self.addr));
        client
            .with_token(token)
            .send_raw(method, path, body.as_ref())
            .await
            .unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call("GET", path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call("POST", path, Some(body)).await
    }

    pub async fn patch(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call("PATCH", path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> (StatusCode, Value) {
        self.call("DELETE", path, None).await
    }

    /// Creates an agent; returns its JSON (with `api_key`).
    pub async fn agent(&self, name: &str) -> Value {
        let (status, body) = self.post("/api/v1/agents", json!({"name": name})).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body
    }

    /// Creates a gateway; returns its JSON (with `token`).
    pub async fn gateway(&self, name: &str) -> Value {
        let body = json!({"name": name, "public_endpoint": format!("{name}.example.net:51820")});
        let (status, body) = self.post("/api/v1/gateways", body).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body
    }

    /// Creates a tunnel; returns its JSON.
    pub async fn tunnel(&self, hostname: &str, agent_id: i64, target: &str) -> Value {
        let body = json!({"hostname": hostname, "agent_id": agent_id, "target": target});
        let (status, body) = self.post("/api/v1/tunnels", body).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body
    }

    /// Opens a node session WebSocket (no Hello sent yet).
    pub async fn ws(&self, secret: &str) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
        let mut req = format!("ws://{}{CONNECT_PATH}", self.addr)
            .into_client_request()
            .unwrap();
        req.headers_mut()
            .insert("authorization", format!("Bearer {secret}").parse().unwrap());
        Ok(tokio_tungstenite::connect_async(req).await?.0)
    }

    /// Connects as a node with a fresh key; returns the socket, the Welcome's node id and the key.
    pub async fn node(
        &self,
        secret: &str,
        role: NodeRole,
        config_hash: Option<String>,
    ) -> (Ws, i64, String) {
        let key = random_key();
        let mut ws = self.ws(secret).await.unwrap();
        send_hello(&mut ws, role, &key, config_hash).await;
        match next_message(&mut ws).await {
            ControlMessage::Welcome {
                protocol_version,
                node_id,
            } => {
                assert_eq!(protocol_version, PROTOCOL_VERSION);
                (ws, node_id, key)
            }
            other => panic!("expected welcome, got {other:?}"),
        }
    }

    /// Creates the managed DNS zone `zone` (RFC 2136, credentials sealed like any) whose server
    /// never answers; the zone as the API returns it.
    pub async fn unreachable_zone(&self, zone: &str) -> Value {
        let (s, body) = self
            .post(
                "/api/v1/dns/zones",
                json!({"zone": zone, "provider": "rfc2136", "config": {
                    "server": "127.0.0.1:9", "key_name": "k.", "key_algorithm": "hmac-sha256",
                    "key_secret": "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0"}}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{body}");
        body
    }

    /// Every tunnel as the API lists it, without what Control fills in on its own schedule (the
    /// DNS status and the certificate's state, set by their background passes): two listings are
    /// equal when nothing was changed.
    pub async fn tunnel_records(&self) -> Vec<Value> {
        let (status, list) = self.get("/api/v1/tunnels").await;
        assert_eq!(status, StatusCode::OK, "{list}");
        let mut list = list.as_array().cloned().unwrap_or_default();
        for t in &mut list {
            if let Some(fields) = t.as_object_mut() {
                fields.remove("dns");
                fields.remove("certificate");
            }
        }
        list
    }

    /// Stops Control and waits for `run` to return `Ok`.
    pub async fn stop(self) {
        self.running.stop().await;
    }
}

/// A response's status and JSON body (`Null` if empty); panics if the body is not JSON.
pub async fn into_json(res: reqwest::Response) -> (StatusCode, Value) {
    let status = res.status();
    let bytes = res.bytes().await.unwrap();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).expect("JSON body")
    };
    (status, body)
}

pub fn data_dir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data");
    (dir, path)
}

/// The sorted keys of a JSON object: what a response exposes, exactly.
pub fn keys(v: &Value) -> Vec<&str> {
    let mut k: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    k.sort();
    k
}

/// A client that does not follow redirects, as a browser's single request: tests see each
/// `Location`.
pub fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// Asserts an API error: the status, the stable code, and a message a person can read.
pub fn assert_error(status: StatusCode, body: &Value, expected: StatusCode, code: &str) {
    assert_eq!(status, expected, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
}

/// A member (not an admin) with a personal API token.
#[derive(Clone)]
pub struct Member {
    pub id: i64,
    pub token: String,
    /// The user as `POST /api/v1/users` returned it.
    pub user: Value,
}

/// Creates a member (not an admin), signs them in and makes them a personal API token.
pub async fn member(c: &Control, email: &str) -> Member {
    let body = json!({"email": email, "password": ADMIN_PASSWORD});
    let (s, user) = c.post("/api/v1/users", body).await;
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
    let (s, token) = into_json(res).await;
    assert_eq!(s, StatusCode::CREATED, "{token}");
    Member {
        id: user["id"].as_i64().unwrap(),
        token: token["token"].as_str().unwrap().to_string(),
        user,
    }
}

/// Creates a member (not an admin) and returns their id and a personal API token.
pub async fn member_token(c: &Control, email: &str) -> (i64, String) {
    let m = member(c, email).await;
    (m.id, m.token)
}

impl Member {
    /// Sends a request with the member's token; returns status and JSON body.
    pub async fn call(
        &self,
        c: &Control,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let reply = c.call_with(&self.token, method, path, body).await;
        (reply.status, reply.body)
    }
}

/// Sends a request with `token`; returns status, JSON body and the `Retry-After` header.
pub async fn call_as(
    c: &Control,
    token: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value, Option<String>) {
    let reply = c.call_with(token, method, path, body).await;
    (reply.status, reply.body, reply.retry_after)
}
