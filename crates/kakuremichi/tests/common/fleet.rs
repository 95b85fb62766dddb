//! Control, one Gateway, one Agent and a `hello` origin, all in this test process: what the
//! in-process end-to-end tests (access control, per-tunnel limits) start before each test.

use super::{spawn_control_in_process, spawn_gateway, Api, Stop};
use kakuremichi_node::Secret;
use serde_json::json;
use std::net::SocketAddr;
use tokio::net::TcpListener;

pub struct Fleet {
    pub dir: tempfile::TempDir,
    pub api: Api,
    /// The Gateway's HTTP listener.
    pub gateway: SocketAddr,
    /// The Gateway's admin listener (`/healthz`, `/metrics`).
    pub admin: SocketAddr,
    pub agent_id: i64,
    pub origin: SocketAddr,
    pub stops: Vec<Stop>,
}

impl Fleet {
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (base, control_stop) = spawn_control_in_process(dir.path().join("control"), true).await;
        let api = Api::login(base).await;

        let wg = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let created = api
            .post(
                "gateways",
                json!({"name": "gw", "public_endpoint": wg.local_addr().unwrap().to_string()}),
            )
            .await;
        let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (gateway, admin_addr) = (http.local_addr().unwrap(), admin.local_addr().unwrap());
        let listeners = kakuremichi_gateway::GatewayListeners {
            http,
            https: TcpListener::bind("127.0.0.1:0").await.unwrap(),
            admin,
            wg,
        };
        let token = created["token"].as_str().unwrap();
        let (gateway_stop, _) = spawn_gateway(&api.base, token, listeners, dir.path().join("gw"));

        let agent = api.post("agents", json!({"name": "home"})).await;
        let mut config = kakuremichi_agent::AgentConfig::new(
            api.base.clone(),
            Secret::new(agent["api_key"].as_str().unwrap().to_string()),
        );
        config.data_dir = Some(dir.path().join("agent"));
        let (agent_stop, wait) = Stop::new();
        tokio::spawn(kakuremichi_agent::run(config, wait()));

        let origin_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let origin = origin_listener.local_addr().unwrap();
        let (origin_stop, wait) = Stop::new();
        tokio::spawn(kakuremichi::hello::serve(
            origin_listener,
            "the-app".into(),
            wait(),
        ));
        Fleet {
            dir,
            api,
            gateway,
            admin: admin_addr,
            agent_id: agent["id"].as_i64().unwrap(),
            origin,
            stops: vec![origin_stop, agent_stop, gateway_stop, control_stop],
        }
    }
}
