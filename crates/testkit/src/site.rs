//! A whole deployment as real processes on namespace test hosts, for the fault and soak tests:
//! Control and Gateways on the server, an Agent and its origin on the host behind the NAT router,
//! one tunnel `app.test`. Each role can be started again, as after a crash or a restart.

use crate::netns::Topology;
use crate::{wait_all, Api, Proc, ADMIN_EMAIL, ADMIN_PASSWORD};
use serde_json::json;
use std::net::SocketAddr;
use std::time::Duration;

pub struct Site {
    pub topo: Topology,
    pub dir: tempfile::TempDir,
    pub api: Api,
    pub control_url_inside: String,
    /// The Agent's API key, to start it again.
    pub agent_key: String,
}

impl Site {
    pub fn spawn_control(&self) -> Proc {
        Proc::spawn_in(
            Some(&self.topo.server),
            "control",
            self.dir.path(),
            &["control", "--listen", "0.0.0.0:8780"],
            &[
                (
                    "KAKUREMICHI_DATA_DIR",
                    self.dir.path().join("control").to_str().unwrap(),
                ),
                ("KAKUREMICHI_ADMIN_EMAIL", ADMIN_EMAIL),
                ("KAKUREMICHI_ADMIN_PASSWORD", ADMIN_PASSWORD),
            ],
        )
    }

    /// Gateway `i` (0 or 1): HTTP on 8080+i, WireGuard on 51820+i, admin on 9090+i, in the
    /// server namespace (which only the test reaches).
    pub fn spawn_gateway(&self, i: u16, token: &str) -> Proc {
        let name = if i == 0 { "gateway-1" } else { "gateway-2" };
        Proc::spawn_in(
            Some(&self.topo.server),
            name,
            self.dir.path(),
            &[
                "gateway",
                "--http-listen",
                &format!("0.0.0.0:{}", 8080 + i),
                "--wg-listen",
                &format!("0.0.0.0:{}", 51820 + i),
                "--admin-listen",
                &format!("0.0.0.0:{}", 9090 + i),
                "--https-listen",
                &format!("0.0.0.0:{}", 8443 + i),
            ],
            &[
                ("CONTROL_URL", &self.control_url_inside),
                ("GATEWAY_TOKEN", token),
                (
                    "KAKUREMICHI_DATA_DIR",
                    self.dir.path().join(name).to_str().unwrap(),
                ),
            ],
        )
    }

    /// The Agent on the host behind the NAT, with its data dir kept across restarts.
    pub fn spawn_agent(&self) -> Proc {
        let control_url = format!("http://{}:8780", self.topo.server_public());
        Proc::spawn_in(
            Some(&self.topo.agent),
            "agent",
            self.dir.path(),
            &[
                "agent",
                "--data-dir",
                self.dir.path().join("agent").to_str().unwrap(),
            ],
            &[("CONTROL_URL", &control_url), ("API_KEY", &self.agent_key)],
        )
    }

    /// Gateway `i`'s admin listener (`/healthz`, `/metrics`) as the test reaches it.
    pub fn admin_addr(&self, i: u16) -> SocketAddr {
        format!("{}:{}", self.topo.server_from_test(), 9090 + i)
            .parse()
            .unwrap()
    }

    pub fn gateway_addr(&self, i: u16) -> SocketAddr {
        format!("{}:{}", self.topo.server_from_test(), 8080 + i)
            .parse()
            .unwrap()
    }
}

/// The server (Control + gateways) and the agent host behind NAT, with one tunnel `app.test`.
/// Returns the processes in the order Control, the Gateways, the origin, the Agent, and the
/// Gateways' tokens.
pub async fn site(gateways: u16) -> (Site, Vec<Proc>, Vec<String>) {
    let topo = Topology::new();
    let dir = tempfile::tempdir().unwrap();
    let mut site = Site {
        control_url_inside: "http://127.0.0.1:8780".into(),
        // Signed in below, once Control runs.
        api: Api::from_client(kakuremichi_client::Client::new(String::new())),
        topo,
        dir,
        agent_key: String::new(),
    };
    let mut procs = vec![site.spawn_control()];
    site.api = Api::login(format!("http://{}:8780", site.topo.server_from_test())).await;
    let public = site.topo.server_public();
    let mut tokens = Vec::new();
    for i in 0..gateways {
        let gw = site.api.post("gateways", json!({"name": format!("gw{i}"), "public_endpoint": format!("{public}:{}", 51820 + i)})).await;
        tokens.push(gw["token"].as_str().unwrap().to_string());
    }
    let agent = site.api.post("agents", json!({"name": "behind-nat"})).await;
    let agent_id = agent["id"].as_i64().unwrap();
    site.agent_key = agent["api_key"].as_str().unwrap().to_string();
    site.api
        .post(
            "tunnels",
            json!({"hostname": "app.test", "agent_id": agent_id, "target": "127.0.0.1:8000"}),
        )
        .await;
    for (i, token) in tokens.iter().enumerate() {
        procs.push(site.spawn_gateway(i as u16, token));
    }
    procs.push(Proc::spawn_in(
        Some(&site.topo.agent),
        "hello",
        site.dir.path(),
        &["hello", "--listen", "127.0.0.1:8000"],
        &[],
    ));
    procs.push(site.spawn_agent());
    let gateways: Vec<SocketAddr> = (0..gateways).map(|i| site.gateway_addr(i)).collect();
    wait_all(
        &site.api.http,
        &gateways,
        "app.test",
        Duration::from_secs(30),
        "tunnel up through NAT",
        |s, _| s == 200,
    )
    .await;
    (site, procs, tokens)
}
