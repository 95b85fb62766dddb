//! The signed-in admin's API client the end-to-end tests use (asserting the status of every
//! write), and requests through a Gateway with a chosen `Host`, waited for with [`eventually`].

use crate::{eventually, init_logs, ADMIN_EMAIL, ADMIN_PASSWORD};
use kakuremichi_client::{Client, Error, Method};
use serde_json::Value;
use std::time::{Duration, Instant};

/// Waits until Control answers `/readyz` (it may be starting or restarting).
pub async fn wait_ready(http: &reqwest::Client, base: &str) {
    let client = Client::with_http(http.clone(), base);
    eventually(Duration::from_secs(30), "Control ready", || client.ready()).await;
}

/// A signed-in client of Control's REST API: the admin's, with a personal API token.
#[derive(Clone)]
pub struct Api {
    pub base: String,
    pub token: String,
    pub http: reqwest::Client,
    pub client: Client,
}

impl Api {
    /// Waits for Control, signs in as the bootstrap admin and creates a personal API token.
    pub async fn login(base: String) -> Api {
        init_logs();
        let http = reqwest::Client::new();
        wait_ready(&http, &base).await;
        let client = Client::with_http(http, base)
            .sign_in(ADMIN_EMAIL, ADMIN_PASSWORD, "e2e")
            .await
            .unwrap_or_else(|e| panic!("admin sign-in: {e}"));
        Api::from_client(client)
    }

    /// A client already holding a token.
    pub fn from_client(client: Client) -> Api {
        Api {
            base: client.base().to_string(),
            token: client.token().unwrap_or_default().to_string(),
            http: client.http().clone(),
            client,
        }
    }

    /// Sends `method` to `/api/v1/{path}`: the status and the JSON body (`Null` if none or not
    /// JSON); panics only when Control cannot be reached.
    pub async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
        match self.client.send(method, path, body.as_ref()).await {
            Ok(reply) => (reply.status.as_u16(), reply.body),
            Err(Error::Decode { status, .. }) => (status.as_u16(), Value::Null),
            Err(e) => panic!("{path}: {e}"),
        }
    }

    pub async fn post(&self, path: &str, body: Value) -> Value {
        let (status, v) = self.call(Method::POST, path, Some(body)).await;
        assert_eq!(status, 201, "POST {path}: {v}");
        v
    }

    pub async fn patch(&self, path: &str, body: Value) -> Value {
        let (status, v) = self.call(Method::PATCH, path, Some(body)).await;
        assert_eq!(status, 200, "PATCH {path}: {v}");
        v
    }

    pub async fn delete(&self, path: &str) {
        let (status, v) = self.call(Method::DELETE, path, None).await;
        assert_eq!(status, 204, "DELETE {path}: {v}");
    }

    pub async fn get(&self, path: &str) -> Value {
        let (status, v) = self.call(Method::GET, path, None).await;
        assert_eq!(status, 200, "GET {path}: {v}");
        v
    }
}

/// GET `path` on a Gateway with `Host: host`; returns the status and body (errors as 0).
pub async fn through(
    http: &reqwest::Client,
    gateway: std::net::SocketAddr,
    host: &str,
    path: &str,
) -> (u16, String) {
    match http
        .get(format!("http://{gateway}{path}"))
        .header(reqwest::header::HOST, host)
        .timeout(Duration::from_secs(10))
        .send()
        .await
    {
        Ok(r) => {
            let status = r.status().as_u16();
            (status, r.text().await.unwrap_or_default())
        }
        Err(_) => (0, String::new()),
    }
}

/// Waits until `check(status, body)` holds for GET `path` through the gateway.
pub async fn wait_through(
    http: &reqwest::Client,
    gateway: std::net::SocketAddr,
    host: &str,
    path: &str,
    within: Duration,
    what: &str,
    check: impl Fn(u16, &str) -> bool,
) -> Duration {
    let start = Instant::now();
    let check = &check;
    eventually(within, what, || async move {
        let (s, b) = through(http, gateway, host, path).await;
        check(s, &b).then_some(())
    })
    .await;
    start.elapsed()
}

/// [`wait_through`] on every gateway in turn (GET `/`), printing how long each took.
pub async fn wait_all(
    http: &reqwest::Client,
    gateways: &[std::net::SocketAddr],
    host: &str,
    within: Duration,
    what: &str,
    check: impl Fn(u16, &str) -> bool,
) {
    for gw in gateways {
        let took = wait_through(http, *gw, host, "/", within, what, &check).await;
        eprintln!("{what}: through {gw} after {took:?}");
    }
}

/// Peak and current resident memory of a process, in MiB, from /proc.
pub fn rss_mib(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    };
    (field("VmHWM:"), field("VmRSS:"))
}
