//! Test harness: runs Control in-process on 127.0.0.1:0 with a temporary data dir, plus small
//! HTTP and node-session clients.

#![allow(dead_code)]

use base64::Engine as _;
use futures_util::{SinkExt as _, StreamExt as _};
use kakuremichi_control::ControlConfig;
use kakuremichi_proto::{
    decode_control, ControlMessage, NodeMessage, NodeRole, CONNECT_PATH, PROTOCOL_VERSION,
};
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const ADMIN_EMAIL: &str = "admin@example.com";
pub const ADMIN_PASSWORD: &str = "correct horse battery staple";

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A running Control.
pub struct Control {
    pub addr: SocketAddr,
    pub http: reqwest::Client,
    /// A personal API token of the admin.
    pub token: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

pub fn config(dir: &Path) -> ControlConfig {
    ControlConfig {
        data_dir: dir.to_path_buf(),
        admin_email: Some(ADMIN_EMAIL.into()),
        admin_password: Some(ADMIN_PASSWORD.into()),
        ..ControlConfig::default()
    }
}

/// Starts Control with the admin bootstrap configured, and logs in to get an API token.
pub async fn start(dir: &Path) -> Control {
    start_with(config(dir)).await
}

pub async fn start_with(config: ControlConfig) -> Control {
    let mut control = launch(config).await;
    let (cookie, csrf) = control
        .login_csrf(ADMIN_EMAIL, ADMIN_PASSWORD)
        .await
        .expect("admin login");
    let res = control
        .http
        .post(control.url("/api/v1/tokens"))
        .header("cookie", cookie)
        .header("x-csrf-token", csrf)
        .json(&json!({"name": "tests"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    control.token = res.json::<Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string();
    control
}

/// Starts Control with no account at all (first run: the UI offers the setup page).
pub async fn start_fresh(dir: &Path) -> Control {
    launch(ControlConfig {
        data_dir: dir.to_path_buf(),
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
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(kakuremichi_control::run(config, listener, async move {
        let _ = stopped.await;
    }));
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    Control {
        addr,
        http,
        token: String::new(),
        stop: Some(stop),
        task: Some(task),
    }
}

impl Control {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Logs in; returns the `km_session=...` cookie pair.
    pub async fn login(&self, email: &str, password: &str) -> Option<String> {
        Some(self.login_csrf(email, password).await?.0)
    }

    /// Logs in; returns the `km_session=...` cookie pair and the session's CSRF token.
    pub async fn login_csrf(&self, email: &str, password: &str) -> Option<(String, String)> {
        let res = self
            .http
            .post(self.url("/api/v1/auth/login"))
            .json(&json!({"email": email, "password": password}))
            .send()
            .await
            .unwrap();
        if res.status() != StatusCode::OK {
            return None;
        }
        let set_cookie = res.headers().get("set-cookie")?.to_str().ok()?.to_string();
        let cookie = set_cookie.split(';').next()?.to_string();
        let body: Value = res.json().await.ok()?;
        Some((cookie, body["csrf_token"].as_str()?.to_string()))
    }

    /// Sends a request with the admin token; returns status and JSON body (Null if empty).
    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self
            .http
            .request(method, self.url(path))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            req = req.json(&body);
        }
        into_json(req.send().await.unwrap()).await
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

    /// Stops Control and waits for `run` to return.
    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        let task = self.task.take().unwrap();
        tokio::time::timeout(Duration::from_secs(15), task)
            .await
            .expect("run returned")
            .unwrap()
            .unwrap();
    }
}

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

/// Base64 of 32 random bytes, like a WireGuard public key.
pub fn random_key() -> String {
    let bytes: [u8; 32] = rand::random();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

pub async fn send_hello(ws: &mut Ws, role: NodeRole, key: &str, config_hash: Option<String>) {
    let hello = NodeMessage::Hello {
        protocol_version: PROTOCOL_VERSION,
        role,
        public_key: key.to_string(),
        config_hash,
        software: "tests".into(),
    };
    ws.send(Message::text(hello.encode())).await.unwrap();
}

/// The next message from Control (pings skipped); panics after 5 s or on close.
pub async fn next_message(ws: &mut Ws) -> ControlMessage {
    within(Duration::from_secs(5), try_next_message(ws))
        .await
        .expect("a message, not a close")
}

/// The next message, or `None` when the session closes.
pub async fn try_next_message(ws: &mut Ws) -> Option<ControlMessage> {
    loop {
        match ws.next().await? {
            Ok(Message::Text(text)) => {
                return Some(decode_control(text.as_str()).expect("valid message"))
            }
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => continue,
        }
    }
}

/// The snapshot of the next `Config`, within `limit`.
pub async fn next_config(ws: &mut Ws, limit: Duration) -> kakuremichi_proto::ConfigSnapshot {
    match within(limit, next_message(ws)).await {
        ControlMessage::Config { snapshot } => snapshot,
        other => panic!("expected config, got {other:?}"),
    }
}

pub async fn within<T>(limit: Duration, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(limit, fut).await.expect("timed out")
}

/// Polls `check` every 20 ms until it returns true; panics after `limit`.
pub async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn data_dir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data");
    (dir, path)
}

/// The sorted keys of a JSON object: what a response exposes, exactly.
pub fn keys(v: &serde_json::Value) -> Vec<&str> {
    let mut k: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    k.sort();
    k
}

/// Asserts an API error: the status, the stable code, and a message a person can read.
pub fn assert_error(
    status: reqwest::StatusCode,
    body: &serde_json::Value,
    expected: reqwest::StatusCode,
    code: &str,
) {
    assert_eq!(status, expected, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
}

/// Creates a member (not an admin) and returns their id and a personal API token.
pub async fn member_token(c: &Control, email: &str) -> (i64, String) {
    let body = json!({"email": email, "password": ADMIN_PASSWORD});
    let (s, user) = c.post("/api/v1/users", body).await;
    assert_eq!(s, StatusCode::CREATED, "{user}");
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
    (
        user["id"].as_i64().unwrap(),
        token["token"].as_str().unwrap().to_string(),
    )
}

/// Sends a request with `token`; returns status, JSON body and the `Retry-After` header.
pub async fn call_as(
    c: &Control,
    token: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value, Option<String>) {
    let mut req = c
        .http
        .request(method.parse().unwrap(), c.url(path))
        .bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let res = req.send().await.unwrap();
    let retry = res
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let (s, v) = into_json(res).await;
    (s, v, retry)
}
