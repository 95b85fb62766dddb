//! Shared harness for the end-to-end tests: an API client for Control and polling helpers.
//! Every wait polls a condition against a deadline; nothing sleeps for a fixed time.

#![allow(dead_code)] // each test binary uses a different subset

mod fleet;
pub mod load;
mod local;
pub mod netns;
mod proc;
pub mod site;
mod stop;
mod transfer;
pub mod usage;
#[allow(unused_imports)]
pub use fleet::Fleet;
#[allow(unused_imports)] // not every test binary starts processes
pub use local::{private_loopback, spawn_control, LocalSite};
#[allow(unused_imports)]
pub use proc::{Proc, BIN};
#[allow(unused_imports)]
pub use stop::{spawn_control_in_process, spawn_gateway, Stop};
#[allow(unused_imports)]
pub use transfer::{download, upload};

use serde_json::{json, Value};
use std::future::Future;
use std::time::{Duration, Instant};

pub const ADMIN_EMAIL: &str = "admin@example.com";
pub const ADMIN_PASSWORD: &str = "correct horse battery staple";

/// Logs from the components under test, when `KAKUREMICHI_TEST_LOG` is set (e.g. `debug`).
pub fn init_logs() {
    if let Ok(filter) = std::env::var("KAKUREMICHI_TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    }
}

/// Polls `check` every 20 ms until it returns `Some`, or panics with `what` at the deadline.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until Control answers `/readyz` (it may be starting or restarting).
pub async fn wait_ready(http: &reqwest::Client, base: &str) {
    let ready = format!("{base}/readyz");
    eventually(Duration::from_secs(30), "Control ready", || async {
        http.get(&ready)
            .send()
            .await
            .ok()
            .filter(|r| r.status().is_success())
            .map(|_| ())
    })
    .await;
}

/// A signed-in client of Control's REST API.
#[derive(Clone)]
pub struct Api {
    pub base: String,
    pub token: String,
    pub http: reqwest::Client,
}

impl Api {
    /// Waits for Control, signs in as the bootstrap admin and creates a personal API token.
    pub async fn login(base: String) -> Api {
        init_logs();
        let http = reqwest::Client::new();
        wait_ready(&http, &base).await;
        let resp = http
            .post(format!("{base}/api/v1/auth/login"))
            .json(&json!({"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "login");
        let cookie = resp.headers()[reqwest::header::SET_COOKIE]
            .to_str()
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_string();
        let login: Value = resp.json().await.unwrap();
        let token: Value = http
            .post(format!("{base}/api/v1/tokens"))
            .header(reqwest::header::COOKIE, cookie)
            .header("x-csrf-token", login["csrf_token"].as_str().unwrap())
            .json(&json!({"name": "e2e"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        Api {
            base,
            token: token["token"].as_str().unwrap().to_string(),
            http,
        }
    }

    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("{}/api/v1/{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    pub async fn post(&self, path: &str, body: Value) -> Value {
        let (status, v) = self.call(reqwest::Method::POST, path, Some(body)).await;
        assert_eq!(status, 201, "POST {path}: {v}");
        v
    }

    pub async fn patch(&self, path: &str, body: Value) -> Value {
        let (status, v) = self.call(reqwest::Method::PATCH, path, Some(body)).await;
        assert_eq!(status, 200, "PATCH {path}: {v}");
        v
    }

    pub async fn delete(&self, path: &str) {
        let (status, v) = self.call(reqwest::Method::DELETE, path, None).await;
        assert_eq!(status, 204, "DELETE {path}: {v}");
    }

    pub async fn get(&self, path: &str) -> Value {
        let (status, v) = self.call(reqwest::Method::GET, path, None).await;
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
