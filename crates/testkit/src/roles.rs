//! Control, Gateways, Agents and `hello` origins run in this test process
//! (`run(config, listeners, shutdown)`), each stopped by a [`Stop`]: the building blocks of
//! [`crate::Cluster`] and of tests that need a role on a chosen address or with a chosen config.

use crate::{Api, ADMIN_EMAIL, ADMIN_PASSWORD};
use kakuremichi_node::Secret;
use serde_json::json;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The shutdown future a role's `run` takes.
pub type Shutdown = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Stops a component started in-process when dropped or told to.
pub struct Stop(watch::Sender<bool>);

impl Stop {
    /// The stop and a maker of shutdown futures that finish once it is told to (or dropped).
    pub fn new() -> (Stop, impl Fn() -> Shutdown) {
        let (tx, rx) = watch::channel(false);
        let wait = move || {
            let mut rx = rx.clone();
            Box::pin(async move {
                let _ = rx.wait_for(|s| *s).await;
            }) as Shutdown
        };
        (Stop(tx), wait)
    }

    pub fn stop(&self) {
        let _ = self.0.send(true);
    }
}

impl Drop for Stop {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Binds an ephemeral TCP port on 127.0.0.1.
pub async fn ephemeral() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").await.unwrap()
}

/// Control's config with its data in `dir` and the bootstrap admin ([`ADMIN_EMAIL`]).
pub fn control_config(dir: &Path) -> kakuremichi_control::ControlConfig {
    kakuremichi_control::ControlConfig {
        data_dir: dir.to_path_buf(),
        admin_email: Some(ADMIN_EMAIL.into()),
        admin_password: Some(ADMIN_PASSWORD.into()),
        acme: kakuremichi_control::AcmeConfig {
            // Nothing leaves loopback: no CA unless a test starts Pebble and points here, and
            // DNS-01's lookups go where nothing answers (they fail at once); a test that needs a
            // CA or a resolver sets its own.
            directory_url: "https://127.0.0.1:9/directory".into(),
            dns_resolver: Some("127.0.0.1:9".into()),
            ..Default::default()
        },
        // A test's Control backs up only when the test asks.
        backup: kakuremichi_control::BackupConfig {
            at: None,
            ..Default::default()
        },
        database_url: test_database(dir),
        ..Default::default()
    }
}

/// Set to a PostgreSQL server's URL (`postgres://postgres@127.0.0.1:PORT`), tests run their
/// Controls on PostgreSQL instead of SQLite: `scripts/test` runs the control suite both ways.
pub const TEST_POSTGRES: &str = "KAKUREMICHI_TEST_POSTGRES";

/// A pool on the database of the test Control whose data is in `dir` (PostgreSQL or the SQLite
/// file), for tests that change a row behind Control's back.
pub async fn test_db(dir: &Path) -> sqlx::AnyPool {
    sqlx::any::install_default_drivers();
    let url = test_database(dir)
        .unwrap_or_else(|| format!("sqlite://{}", dir.join("control.db").display()));
    sqlx::AnyPool::connect(&url).await.unwrap()
}

/// The database a test's Control with its data in `dir` uses: `None` (the SQLite file in
/// `dir`), or with [`TEST_POSTGRES`] set, a PostgreSQL database of its own, named after `dir`
/// so that a Control started again on the same directory finds its data again.
pub fn test_database(dir: &Path) -> Option<String> {
    use std::hash::{Hash as _, Hasher as _};
    let server = std::env::var(TEST_POSTGRES).ok()?;
    let server = server.trim_end_matches('/');
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    dir.hash(&mut hasher);
    let name = format!("km_{:016x}", hasher.finish());
    let out = std::process::Command::new("psql")
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d"])
        .arg(format!("{server}/postgres"))
        .args(["-c", &format!("CREATE DATABASE {name}")])
        .env("PGCONNECT_TIMEOUT", "5")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("psql (postgresql-client) installed");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() || stderr.contains("already exists"),
        "cannot create the test database {name} on {server}: {stderr}"
    );
    Some(format!("{server}/{name}"))
}

/// Control running in this process.
pub struct InProcessControl {
    pub addr: SocketAddr,
    /// `http://addr`.
    pub base: String,
    pub stop: Stop,
    pub task: JoinHandle<anyhow::Result<()>>,
}

impl InProcessControl {
    /// Starts Control on an ephemeral port.
    pub async fn start(config: kakuremichi_control::ControlConfig) -> InProcessControl {
        Self::start_on(ephemeral().await, config)
    }

    /// Starts Control on `listener` (e.g. the address of an earlier run, bound again).
    pub fn start_on(
        listener: TcpListener,
        config: kakuremichi_control::ControlConfig,
    ) -> InProcessControl {
        let addr = listener.local_addr().unwrap();
        let (stop, wait) = Stop::new();
        let task = tokio::spawn(kakuremichi_control::run(config, listener, wait()));
        InProcessControl {
            addr,
            base: format!("http://{addr}"),
            stop,
            task,
        }
    }

    /// Stops Control; panics unless `run` returns `Ok` within 15 s.
    pub async fn stop(self) {
        self.stop.stop();
        tokio::time::timeout(Duration::from_secs(15), self.task)
            .await
            .expect("run returned")
            .unwrap()
            .unwrap();
    }

    /// Stops Control and waits (at most 30 s) until it is gone, whatever `run` returned.
    pub async fn shut_down(self) {
        drop(self.stop);
        let _ = tokio::time::timeout(Duration::from_secs(30), self.task).await;
    }
}

/// Runs a Gateway in-process on the given listeners, binding `tcp` tunnel ports on `ports_ip`;
/// stopped when the returned [`Stop`] drops.
pub fn spawn_gateway(
    control: &str,
    token: &str,
    listeners: kakuremichi_gateway::GatewayListeners,
    ports_ip: Ipv4Addr,
    dir: PathBuf,
) -> (Stop, JoinHandle<anyhow::Result<()>>) {
    let token = Secret::new(token.to_string());
    let mut config = kakuremichi_gateway::GatewayConfig::new(control.to_string(), token);
    config.data_dir = Some(dir);
    config.ports_listen_ip = ports_ip.into();
    config.proxy.connect_timeout = Duration::from_secs(2);
    let (stop, wait) = Stop::new();
    (
        stop,
        tokio::spawn(kakuremichi_gateway::run(config, listeners, wait())),
    )
}

/// A Gateway running in this process.
pub struct InProcessGateway {
    pub http: SocketAddr,
    pub https: SocketAddr,
    /// The admin listener (`/healthz`, `/metrics`).
    pub admin: SocketAddr,
    pub wg: SocketAddr,
    /// The address its `tcp` tunnel ports are bound on (`--ports-listen-ip`): a loopback
    /// address of its own, so Gateways of one test (and of parallel tests) do not collide.
    pub ports_ip: Ipv4Addr,
    pub token: String,
    pub dir: PathBuf,
    pub stop: Stop,
    pub task: JoinHandle<anyhow::Result<()>>,
}

impl InProcessGateway {
    /// Creates Gateway `name` through the API (its WireGuard endpoint an ephemeral UDP port) and
    /// starts it with HTTP and HTTPS on `http`/`https` (ephemeral when `None`).
    pub async fn create(
        api: &Api,
        name: &str,
        listen: Option<(SocketAddr, SocketAddr)>,
        dir: PathBuf,
    ) -> InProcessGateway {
        let wg = UdpSocket::bind("127.0.0.1:0").unwrap();
        let body = json!({"name": name, "public_endpoint": wg.local_addr().unwrap().to_string()});
        let created = api.post("gateways", body).await;
        let token = created["token"].as_str().unwrap().to_string();
        Self::start(&api.base, token, wg, listen, dir).await
    }

    /// Starts a Gateway known to Control (by `token`) on `wg`, with HTTP and HTTPS on `listen`
    /// (ephemeral when `None`) and the admin listener on an ephemeral port.
    pub async fn start(
        control: &str,
        token: String,
        wg: UdpSocket,
        listen: Option<(SocketAddr, SocketAddr)>,
        dir: PathBuf,
    ) -> InProcessGateway {
        let (http, https) = match listen {
            Some((http, https)) => (
                TcpListener::bind(http).await.unwrap(),
                TcpListener::bind(https).await.unwrap(),
            ),
            None => (ephemeral().await, ephemeral().await),
        };
        let admin = ephemeral().await;
        let addr = |l: &TcpListener| l.local_addr().unwrap();
        let (http_addr, https_addr, admin_addr) = (addr(&http), addr(&https), addr(&admin));
        let wg_addr = wg.local_addr().unwrap();
        let listeners = kakuremichi_gateway::GatewayListeners {
            http,
            https,
            admin,
            wg,
        };
        let ports_ip = crate::private_loopback();
        let (stop, task) = spawn_gateway(control, &token, listeners, ports_ip, dir.clone());
        InProcessGateway {
            http: http_addr,
            https: https_addr,
            admin: admin_addr,
            wg: wg_addr,
            ports_ip,
            token,
            dir,
            stop,
            task,
        }
    }

    /// Stops the Gateway (panics unless `run` returns `Ok`) and starts it again with the same
    /// token, WireGuard port and data dir, on new ephemeral HTTP ports.
    pub async fn restart(self, control: &str) -> InProcessGateway {
        let InProcessGateway {
            wg,
            token,
            dir,
            stop,
            task,
            ..
        } = self;
        stop.stop();
        task.await.unwrap().unwrap();
        let socket = crate::eventually(
            Duration::from_secs(5),
            "the WireGuard port is free again",
            || async { UdpSocket::bind(wg).ok() },
        )
        .await;
        Self::start(control, token, socket, None, dir).await
    }

    /// Stops the Gateway and waits (at most 40 s) until it is gone, whatever `run` returned;
    /// returns what starting it again takes: token, WireGuard address, data dir.
    pub async fn shut_down(self) -> (String, SocketAddr, PathBuf) {
        drop(self.stop);
        let _ = tokio::time::timeout(Duration::from_secs(40), self.task).await;
        (self.token, self.wg, self.dir)
    }
}

/// Creates Agent `name` through the API and runs it in-process; returns its id.
pub async fn start_agent(api: &Api, name: &str, dir: PathBuf) -> (i64, Stop) {
    start_agent_on(api, &api.base, name, dir).await
}

/// Like [`start_agent`], with `CONTROL_URL` set to `control` (several replicas: a comma list).
pub async fn start_agent_on(api: &Api, control: &str, name: &str, dir: PathBuf) -> (i64, Stop) {
    start_agent_with(api, control, name, dir, |_| {}).await
}

/// Like [`start_agent_on`], with `edit` changing the Agent's config before it starts (e.g.
/// its `metrics_listen`).
pub async fn start_agent_with(
    api: &Api,
    control: &str,
    name: &str,
    dir: PathBuf,
    edit: impl FnOnce(&mut kakuremichi_agent::AgentConfig),
) -> (i64, Stop) {
    let created = api.post("agents", json!({ "name": name })).await;
    let mut config = kakuremichi_agent::AgentConfig::new(
        control.to_string(),
        Secret::new(created["api_key"].as_str().unwrap().to_string()),
    );
    config.data_dir = Some(dir);
    edit(&mut config);
    let (stop, wait) = Stop::new();
    tokio::spawn(kakuremichi_agent::run(config, wait()));
    (created["id"].as_i64().unwrap(), stop)
}

/// A `hello` origin (the app behind a tunnel) that says `name`, on an ephemeral port.
pub async fn start_origin(name: &str) -> (SocketAddr, Stop) {
    let listener = ephemeral().await;
    let addr = listener.local_addr().unwrap();
    let (stop, wait) = Stop::new();
    tokio::spawn(kakuremichi::hello::serve(
        listener,
        name.to_string(),
        wait(),
    ));
    (addr, stop)
}
