//! A whole deployment in this test process, wired only through Control's API the way a user sets
//! it up: `Cluster::new().gateways(2).agent().origin("app").tunnel("app.test").start()` gives a
//! [`Fleet`] — Control, the Gateways, an Agent, a `hello` origin and the tunnels to it.

use crate::roles::{
    control_config, start_agent_with, start_origin, InProcessControl, InProcessGateway, Stop,
};
use crate::Api;
use kakuremichi_control::ControlConfig;
use serde_json::json;
use std::net::SocketAddr;

/// A change to Control's config before it starts.
type EditConfig = Box<dyn FnOnce(&mut ControlConfig) + Send>;
/// A change to the Agent's config before it starts.
type EditAgent = Box<dyn FnOnce(&mut kakuremichi_agent::AgentConfig) + Send>;

/// What to start; see [`Cluster::start`].
#[must_use]
pub struct Cluster {
    gateways: usize,
    agent: bool,
    origin: Option<String>,
    tunnels: Vec<(String, serde_json::Value)>,
    edit: Option<EditConfig>,
    edit_agent: Option<EditAgent>,
}

/// A started [`Cluster`]; everything stops when it drops.
pub struct Fleet {
    pub dir: tempfile::TempDir,
    pub api: Api,
    /// Taken by a test that stops or restarts Control.
    pub control: Option<InProcessControl>,
    pub gateways: Vec<InProcessGateway>,
    /// The Agent's id (0 without an Agent).
    pub agent_id: i64,
    /// The origin's address (port 9 of 127.0.0.1, where nothing answers, without an origin).
    pub origin: SocketAddr,
    /// The ids of the tunnels the cluster was started with, in order.
    pub tunnels: Vec<i64>,
    /// Stops the Agent (when dropped, too).
    pub agent_stop: Option<Stop>,
    /// Stops the origin (when dropped, too).
    pub origin_stop: Option<Stop>,
    pub http: reqwest::Client,
}

impl Default for Cluster {
    fn default() -> Self {
        Self::new()
    }
}

impl Cluster {
    /// Control alone, with the bootstrap admin signed in.
    pub fn new() -> Cluster {
        Cluster {
            gateways: 0,
            agent: false,
            origin: None,
            tunnels: Vec::new(),
            edit: None,
            edit_agent: None,
        }
    }

    /// One more Gateway (`gw1`, `gw2`, …) on ephemeral ports.
    pub fn gateway(mut self) -> Cluster {
        self.gateways += 1;
        self
    }

    pub fn gateways(mut self, n: usize) -> Cluster {
        self.gateways += n;
        self
    }

    /// The Agent `home`.
    pub fn agent(mut self) -> Cluster {
        self.agent = true;
        self
    }

    /// A `hello` origin that says `name`.
    pub fn origin(mut self, name: &str) -> Cluster {
        self.origin = Some(name.to_string());
        self
    }

    /// A tunnel `hostname` → the origin, on the Agent.
    pub fn tunnel(self, hostname: &str) -> Cluster {
        self.tunnel_with(hostname, json!({}))
    }

    /// A tunnel `hostname` → the origin with more fields of the API (e.g. `{"tls": "off"}`).
    pub fn tunnel_with(mut self, hostname: &str, extra: serde_json::Value) -> Cluster {
        self.tunnels.push((hostname.to_string(), extra));
        self
    }

    /// Changes Control's config before it starts.
    pub fn control_config(
        mut self,
        edit: impl FnOnce(&mut ControlConfig) + Send + 'static,
    ) -> Cluster {
        self.edit = Some(Box::new(edit));
        self
    }

    /// The Agent `home`, with its config changed before it starts (e.g. `metrics_listen`).
    pub fn agent_config(
        mut self,
        edit: impl FnOnce(&mut kakuremichi_agent::AgentConfig) + Send + 'static,
    ) -> Cluster {
        self.agent = true;
        self.edit_agent = Some(Box::new(edit));
        self
    }

    pub async fn start(self) -> Fleet {
        let dir = tempfile::tempdir().unwrap();
        let mut config = control_config(&dir.path().join("control"));
        if let Some(edit) = self.edit {
            edit(&mut config);
        }
        let control = InProcessControl::start(config).await;
        let api = Api::login(control.base.clone()).await;
        let mut gateways = Vec::new();
        for i in 1..=self.gateways {
            let name = format!("gw{i}");
            let gw_dir = dir.path().join(&name);
            gateways.push(InProcessGateway::create(&api, &name, None, gw_dir).await);
        }
        let (mut agent_id, mut agent_stop) = (0, None);
        if self.agent {
            let edit = self.edit_agent.unwrap_or_else(|| Box::new(|_| {}));
            let agent_dir = dir.path().join("agent");
            let (id, stop) = start_agent_with(&api, &api.base, "home", agent_dir, edit).await;
            (agent_id, agent_stop) = (id, Some(stop));
        }
        let (mut origin, mut origin_stop) = (SocketAddr::from(([127, 0, 0, 1], 9)), None);
        if let Some(name) = &self.origin {
            let (addr, stop) = start_origin(name).await;
            (origin, origin_stop) = (addr, Some(stop));
        }
        let mut fleet = Fleet {
            dir,
            api,
            control: Some(control),
            gateways,
            agent_id,
            origin,
            tunnels: Vec::new(),
            agent_stop,
            origin_stop,
            http: reqwest::Client::new(),
        };
        for (hostname, extra) in self.tunnels {
            let id = fleet.tunnel_with(&hostname, fleet.origin, extra).await;
            fleet.tunnels.push(id);
        }
        fleet
    }
}

impl Fleet {
    /// Control, one Gateway, the Agent and an origin saying `the-app`: what the in-process
    /// end-to-end tests (access control, per-tunnel limits) start from.
    pub async fn start() -> Fleet {
        Cluster::new()
            .gateway()
            .agent()
            .origin("the-app")
            .start()
            .await
    }

    /// Every Gateway's HTTP listener.
    pub fn gateway_addrs(&self) -> Vec<SocketAddr> {
        self.gateways.iter().map(|g| g.http).collect()
    }

    /// The first Gateway's HTTP listener.
    pub fn gateway(&self) -> SocketAddr {
        self.gateways[0].http
    }

    /// The first Gateway's admin listener (`/healthz`, `/metrics`).
    pub fn admin(&self) -> SocketAddr {
        self.gateways[0].admin
    }

    /// Gateway `i`'s admin `/metrics` (JSON).
    pub async fn gateway_metrics(&self, i: usize) -> serde_json::Value {
        let admin = self.gateways[i].admin;
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        let response = client
            .get(format!("http://{admin}/metrics"))
            .header("accept", "application/json")
            .send()
            .await;
        response.unwrap().json().await.unwrap()
    }

    /// Creates a tunnel `host` → `target` on the Agent and returns its id.
    pub async fn tunnel(&self, host: &str, target: SocketAddr) -> i64 {
        self.tunnel_with(host, target, json!({})).await
    }

    /// Like [`Fleet::tunnel`], with more fields of the API.
    pub async fn tunnel_with(
        &self,
        host: &str,
        target: SocketAddr,
        extra: serde_json::Value,
    ) -> i64 {
        let mut body =
            json!({"hostname": host, "agent_id": self.agent_id, "target": target.to_string()});
        if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
            body.extend(extra.clone());
        }
        self.api.post("tunnels", body).await["id"].as_i64().unwrap()
    }
}
