//! `kakuremichi up`: Control, one Gateway, one Agent and a demo app in one process, on
//! localhost, with SQLite in `./data`. For a first try and for development.
//!
//! On first start it creates the admin, a personal API token, the gateway, the agent and a demo
//! tunnel `hello.localhost` through Control's own REST API ([`bootstrap`]), and keeps their
//! credentials in `<data-dir>/up.json` (mode 0600, [`credentials`]) so later starts reuse them.
//!
//! The Gateway and the Agent each run on a runtime of their own ([`RoleRuntime`]), as when they
//! are separate processes: on one shared runtime their tasks woke each other across its workers,
//! and one HTTPS download through `up` moved half of what separate processes move.

mod bootstrap;
mod credentials;
mod runtime;

use crate::cli::{bind_tcp, bind_udp};
use crate::signal;
use anyhow::bail;
use clap::Args;
use credentials::UpState;
use kakuremichi::hello;
use kakuremichi_gateway::GatewayListeners;
use kakuremichi_node::Secret;
use runtime::RoleRuntime;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

#[derive(Args)]
pub struct UpArgs {
    /// Directory for everything `up` keeps (database, keys, cached configs, credentials).
    #[arg(long, env = "KAKUREMICHI_DATA_DIR", default_value = "./data")]
    data_dir: PathBuf,
    /// Control's API address.
    #[arg(long, default_value = "127.0.0.1:8780")]
    control_listen: SocketAddr,
    /// The Gateway's public HTTP address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    http_listen: SocketAddr,
    /// The Gateway's public HTTPS address (certificates from Control's internal CA).
    #[arg(long, default_value = "127.0.0.1:8443")]
    https_listen: SocketAddr,
    /// The Gateway's WireGuard (UDP) address.
    #[arg(long, default_value = "127.0.0.1:51820")]
    wg_listen: SocketAddr,
    /// The Gateway's health endpoint.
    #[arg(long, default_value = "127.0.0.1:9090")]
    admin_listen: SocketAddr,
    /// The demo app's address.
    #[arg(long, default_value = "127.0.0.1:8781")]
    hello_listen: SocketAddr,
}

const DEMO_HOST: &str = "hello.localhost";
/// The admin Control creates on first start (its password is random, kept in `up.json`).
const ADMIN_EMAIL: &str = "admin@localhost";

/// Starts everything, says where it is, and runs until Ctrl-C or SIGTERM.
/// `node_threads`: the workers of the Gateway's runtime and of the Agent's (see `--threads`).
pub async fn run(args: UpArgs, node_threads: usize) -> anyhow::Result<()> {
    let sockets = Sockets::bind(&args).await?;
    let addrs = sockets.addrs()?;
    let control_url = format!("http://{}", addrs.control);
    let state_path = args.data_dir.join("up.json");
    let saved = credentials::read(&state_path)?;
    let password = saved
        .as_ref()
        .map_or_else(credentials::random_password, |s| s.admin_password.clone());
    // Cancelled on Ctrl-C; also when `run` returns early with an error.
    let stop = CancellationToken::new();
    let _stop_on_return = stop.clone().drop_guard();
    let control_dir = args.data_dir.join("control");
    let ca_root = kakuremichi_control::internal_ca_root(&control_dir);
    let mut control = start_control(control_dir, sockets.control, &control_url, &password, &stop);
    let client = reqwest::Client::new();
    wait_ready(&client, &control_url, &mut control).await?;
    let first_run = saved.is_none();
    let state = match saved {
        Some(state) => state,
        None => first_start(&client, &control_url, password, &addrs, &state_path).await?,
    };
    let node_sockets = (sockets.gateway, sockets.hello);
    let roles = Roles::start(
        &args.data_dir,
        node_sockets,
        &state,
        (&control_url, node_threads),
        &stop,
    )?;
    print_banner(
        &state,
        &control_url,
        &addrs,
        first_run,
        (&state_path, &ca_root),
    );
    signal::shutdown().await;
    stop.cancel();
    roles.finished(control).await;
    Ok(())
}

/// First start: creates everything through the API, and keeps the credentials for later starts.
async fn first_start(
    client: &reqwest::Client,
    control_url: &str,
    admin_password: String,
    addrs: &Addrs,
    state_path: &Path,
) -> anyhow::Result<UpState> {
    let state =
        bootstrap::bootstrap(client, control_url, admin_password, addrs.wg, addrs.hello).await?;
    credentials::write(state_path, &state)?;
    Ok(state)
}

/// Every socket `up` serves on, bound before anything starts so a busy port fails at once.
struct Sockets {
    control: TcpListener,
    gateway: GatewayListeners,
    hello: TcpListener,
}

/// The bound addresses (the flags may ask for port 0).
struct Addrs {
    control: SocketAddr,
    http: SocketAddr,
    https: SocketAddr,
    wg: SocketAddr,
    hello: SocketAddr,
}

impl Sockets {
    async fn bind(args: &UpArgs) -> anyhow::Result<Self> {
        let control = bind_tcp(args.control_listen, "--control-listen").await?;
        let http = bind_tcp(args.http_listen, "--http-listen").await?;
        let https = bind_tcp(args.https_listen, "--https-listen").await?;
        let admin = bind_tcp(args.admin_listen, "--admin-listen").await?;
        let wg = bind_udp(args.wg_listen, "--wg-listen")?;
        let hello = bind_tcp(args.hello_listen, "--hello-listen").await?;
        Ok(Self {
            control,
            gateway: GatewayListeners {
                http,
                https,
                admin,
                wg,
            },
            hello,
        })
    }

    fn addrs(&self) -> std::io::Result<Addrs> {
        Ok(Addrs {
            control: self.control.local_addr()?,
            http: self.gateway.http.local_addr()?,
            https: self.gateway.https.local_addr()?,
            wg: self.gateway.wg.local_addr()?,
            hello: self.hello.local_addr()?,
        })
    }
}

/// Starts Control with the internal CA and the first admin.
fn start_control(
    data_dir: PathBuf,
    listener: TcpListener,
    control_url: &str,
    admin_password: &str,
    stop: &CancellationToken,
) -> JoinHandle<anyhow::Result<()>> {
    let config = kakuremichi_control::ControlConfig {
        data_dir,
        // Local names cannot get public certificates: every tunnel uses the internal CA.
        default_tls: kakuremichi_control::TlsMode::Internal,
        public_url: Some(control_url.to_string()),
        admin_email: Some(ADMIN_EMAIL.into()),
        admin_password: Some(admin_password.to_string()),
        // `kakuremichi share 3000` gives https://<random name>.localhost:8443/.
        temporary: kakuremichi_control::TemporaryConfig {
            domain: Some("localhost".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    tokio::spawn(kakuremichi_control::run(
        config,
        listener,
        stop.clone().cancelled_owned(),
    ))
}

/// Waits until Control answers `/readyz`; fails if it stopped or is not ready within 30 s.
async fn wait_ready(
    client: &reqwest::Client,
    control_url: &str,
    control: &mut JoinHandle<anyhow::Result<()>>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if control.is_finished() {
            let why = match control.await {
                Ok(Err(e)) => format!("{e:#}"),
                Ok(Ok(())) => "it ended".to_string(),
                Err(e) => e.to_string(),
            };
            bail!("Control stopped during start-up: {why}");
        }
        if let Ok(r) = client.get(format!("{control_url}/readyz")).send().await {
            if r.status().is_success() {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("Control did not become ready within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The roles started next to Control.
struct Roles {
    agent: JoinHandle<anyhow::Result<()>>,
    gateway: JoinHandle<anyhow::Result<()>>,
    hello: JoinHandle<()>,
    /// Where the Gateway and the Agent run; shut down once both have finished.
    runtimes: [RoleRuntime; 2],
}

impl Roles {
    /// Starts the demo app next to the running Control, and the Gateway and the Agent each on a
    /// runtime of its own with `threads` workers.
    fn start(
        data_dir: &Path,
        (gateway_sockets, hello_socket): (GatewayListeners, TcpListener),
        state: &UpState,
        (control_url, threads): (&str, usize),
        stop: &CancellationToken,
    ) -> anyhow::Result<Self> {
        let stopped = || stop.clone().cancelled_owned();
        let hello = tokio::spawn(hello::serve(
            hello_socket,
            "kakuremichi up".into(),
            stopped(),
        ));
        let mut gateway = kakuremichi_gateway::GatewayConfig::new(
            control_url,
            Secret::new(state.gateway_token.clone()),
        );
        gateway.data_dir = Some(data_dir.join("gateway"));
        let https = gateway_sockets.https.local_addr()?;
        // tcp tunnels' ports on the address the HTTPS listener has (loopback unless told).
        gateway.ports_listen_ip = https.ip();
        let https_port = https.port();
        let gateway_rt = RoleRuntime::new("gateway", threads)?;
        let sockets = runtime::MovableListeners::new(gateway_sockets)?;
        let gateway_stopped = stopped();
        let gateway = gateway_rt.spawn(async move {
            let sockets = sockets.register()?;
            kakuremichi_gateway::run(gateway, sockets, gateway_stopped).await
        });
        let mut agent =
            kakuremichi_agent::AgentConfig::new(control_url, Secret::new(state.agent_key.clone()));
        agent.data_dir = Some(data_dir.join("agent"));
        // The fallback for blocked UDP goes to this Gateway's HTTPS listener.
        agent.wg_fallback_port = https_port;
        let agent_rt = RoleRuntime::new("agent", threads)?;
        let agent = agent_rt.spawn(kakuremichi_agent::run(agent, stopped()));
        Ok(Self {
            agent,
            gateway,
            hello,
            runtimes: [gateway_rt, agent_rt],
        })
    }

    /// Waits for every role to finish its graceful shutdown, logging any that failed: Agent,
    /// Gateway, Control, then the demo app.
    async fn finished(self, control: JoinHandle<anyhow::Result<()>>) {
        let roles = [
            ("agent", self.agent),
            ("gateway", self.gateway),
            ("control", control),
        ];
        for (name, task) in roles {
            match task.await {
                Ok(Err(e)) => tracing::error!("{name} stopped with an error: {e:#}"),
                Err(e) => tracing::error!("{name} task failed: {e}"),
                Ok(Ok(())) => {}
            }
        }
        let _ = self.hello.await;
        drop(self.runtimes);
    }
}

/// Tells the user where everything is and how to sign in.
fn print_banner(
    state: &UpState,
    control_url: &str,
    addrs: &Addrs,
    first_run: bool,
    (state_path, ca_root): (&Path, &Path),
) {
    let port = addrs.http.port();
    let tls_port = addrs.https.port();
    let start = if first_run {
        "kakuremichi is up (first start: admin, gateway, agent and demo tunnel created)"
    } else {
        "kakuremichi is up"
    };
    println!(
        "\n{start}.\n\n\
         \x20 Web UI        {control_url}/   (sign in there with the line below)\n\
         \x20 Control API   {control_url}/api/v1\n\
         \x20 Sign in       {email} / {password}\n\
         \x20 API token     {token}\n\
         \x20 Demo app      https://{DEMO_HOST}:{tls_port}/   (Gateway -> WireGuard -> Agent -> app)\n\
         \x20               http://{DEMO_HOST}:{port}/ redirects there\n\
         \x20 HTTPS root    {ca}\n\
         \x20               (Control's internal CA: trust it in your browser, or\n\
         \x20                curl --cacert {ca} https://{DEMO_HOST}:{tls_port}/ )\n\n\
         Publish a local port, e.g. an app on localhost:3000, until Ctrl-C:\n\n\
         \x20 kakuremichi login {control_url}     (once; approve it in the browser)\n\
         \x20 kakuremichi share 3000                    (prints https://<random name>.localhost:{tls_port}/)\n\n\
         or for good, through the API:\n\n\
         \x20 curl -H 'Authorization: Bearer {token}' -H 'Content-Type: application/json' \\\n\
         \x20      -d '{{\"hostname\":\"myapp.localhost\",\"agent_id\":{agent},\"target\":\"localhost:3000\"}}' \\\n\
         \x20      {control_url}/api/v1/tunnels\n\n\
         then open https://myapp.localhost:{tls_port}/  (any *.localhost name reaches this machine).\n\
         Credentials are kept in {path} (readable only by you). Ctrl-C stops everything.\n",
        email = state.admin_email,
        password = state.admin_password,
        token = state.api_token,
        agent = state.agent_id,
        path = state_path.display(),
        ca = ca_root.display(),
    );
}
