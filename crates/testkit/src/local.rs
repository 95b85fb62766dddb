//! One Control, Gateway, Agent and `hello` origin as separate processes of the built binary, on
//! a loopback address of their own, with one tunnel: how a user runs them on separate machines.

use crate::{wait_through, Api, Proc, ADMIN_EMAIL, ADMIN_PASSWORD};
use serde_json::{json, Value};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

/// A loopback address no other test run (nor another call in this one) is likely to use, so
/// fixed port numbers are safe.
pub fn private_loopback() -> Ipv4Addr {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU32, Ordering};
    static CALLS: AtomicU32 = AtomicU32::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u32(CALLS.fetch_add(1, Ordering::Relaxed));
    let r = h.finish() as u32;
    Ipv4Addr::new(
        127,
        1 + (r % 250) as u8,
        (r >> 8) as u8,
        1 + ((r >> 16) % 250) as u8,
    )
}

pub struct LocalSite {
    pub ip: Ipv4Addr,
    pub api: Api,
    pub control_url: String,
    pub control: Proc,
    pub origin: Option<Proc>,
    pub gateway: Proc,
    pub agent: Proc,
    /// The gateway's JSON from the API (with its `token`).
    pub gateway_json: Value,
    pub hostname: &'static str,
}

impl LocalSite {
    pub fn at(&self, port: u16) -> SocketAddr {
        SocketAddr::from((self.ip, port))
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.at(8080)
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.at(9090)
    }

    /// Starts everything in `dir` and waits until `hostname` answers through the Gateway.
    pub async fn start(dir: &Path, hostname: &'static str) -> LocalSite {
        let ip = private_loopback();
        let at = |port: u16| SocketAddr::from((ip, port)).to_string();
        let control_url = format!("http://{}", at(8780));
        let control = spawn_control(dir, &at(8780));
        let api = Api::login(control_url.clone()).await;
        let gateway_json = api
            .post(
                "gateways",
                json!({"name": "edge", "public_endpoint": at(51820)}),
            )
            .await;
        let agent = api.post("agents", json!({"name": "home"})).await;
        api.post(
            "tunnels",
            json!({"hostname": hostname, "agent_id": agent["id"], "target": at(8000)}),
        )
        .await;
        let origin = Proc::spawn("hello", dir, &["hello", "--listen", &at(8000)], &[]);
        let token = gateway_json["token"].as_str().unwrap();
        let site = LocalSite {
            ip,
            gateway: spawn_gateway(dir, ip, &control_url, token),
            agent: Proc::spawn(
                "agent",
                dir,
                &["agent"],
                &[
                    ("CONTROL_URL", &control_url),
                    ("API_KEY", agent["api_key"].as_str().unwrap()),
                ],
            ),
            api,
            control_url,
            control,
            origin: Some(origin),
            gateway_json,
            hostname,
        };
        wait_through(
            &site.api.http,
            site.http_addr(),
            hostname,
            "/",
            Duration::from_secs(30),
            "tunnel up",
            |s, b| s == 200 && b.contains("Hello from"),
        )
        .await;
        site
    }

    /// (Re)starts the Gateway process with its data in `dir/gateway`.
    pub fn spawn_gateway(&self, dir: &Path) -> Proc {
        let token = self.gateway_json["token"].as_str().unwrap();
        spawn_gateway(dir, self.ip, &self.control_url, token)
    }

    /// (Re)starts Control with its data in `dir/control`.
    pub fn spawn_control(&self, dir: &Path) -> Proc {
        spawn_control(dir, &self.at(8780).to_string())
    }
}

fn spawn_gateway(dir: &Path, ip: Ipv4Addr, control_url: &str, token: &str) -> Proc {
    let at = |port: u16| SocketAddr::from((ip, port)).to_string();
    Proc::spawn(
        "gateway",
        dir,
        &[
            "gateway",
            "--http-listen",
            &at(8080),
            "--wg-listen",
            &at(51820),
            "--admin-listen",
            &at(9090),
            "--https-listen",
            &at(8443),
            "--ports-listen-ip",
            &ip.to_string(),
        ],
        &[
            ("CONTROL_URL", control_url),
            ("GATEWAY_TOKEN", token),
            (
                "KAKUREMICHI_DATA_DIR",
                dir.join("gateway").to_str().unwrap(),
            ),
            // Every test client is one address, and some open hundreds of streams at once: the
            // per-client cap (a defence against one attacker) is not what these tests measure.
            ("KAKUREMICHI_MAX_CONNS_PER_IP", "100000"),
        ],
    )
}

/// Control alone, listening on `listen`, its data in `dir/control`.
pub fn spawn_control(dir: &Path, listen: &str) -> Proc {
    spawn_control_with(dir, listen, &[])
}

/// Control alone, listening on `listen`, its data in `dir/control`, with more environment
/// (`DATABASE_URL`, ACME settings, ...). Replicas on one database share `dir`.
pub fn spawn_control_with(dir: &Path, listen: &str, env: &[(&str, &str)]) -> Proc {
    let data = dir.join("control");
    let mut all = vec![
        ("KAKUREMICHI_DATA_DIR", data.to_str().unwrap()),
        ("KAKUREMICHI_ADMIN_EMAIL", ADMIN_EMAIL),
        ("KAKUREMICHI_ADMIN_PASSWORD", ADMIN_PASSWORD),
    ];
    all.extend_from_slice(env);
    Proc::spawn("control", dir, &["control", "--listen", listen], &all)
}
