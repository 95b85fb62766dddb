//! Command-line interface: every flag has an environment-variable twin (12-factor, as Docker
//! users expect); the flag wins when both are given.

mod control;

use crate::{manage, signal, up};
use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use kakuremichi::hello;
use kakuremichi_node::Secret;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "kakuremichi",
    version = env!("KAKUREMICHI_VERSION"),
    about = "Self-hosted tunnels: publish apps behind NAT on your own domains through your own Gateways, without opening a port.",
    after_help = "Try it on one machine:  kakuremichi up\nLogs: set KAKUREMICHI_LOG=debug for more detail."
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Worker threads of the async runtime. Default: half the CPUs (at least one) for `gateway`
    /// and `agent`, and for each of the runtimes `up` runs its Gateway and its Agent on; every CPU
    /// otherwise. A Gateway or Agent shares its machine with the kernel's
    /// network work and, for an Agent, the apps it serves; on 2 CPUs one worker answered 1.5x the
    /// requests per second of two, at the same bulk throughput (docs/performance.md).
    #[arg(long, global = true, env = "KAKUREMICHI_THREADS", value_name = "N",
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    threads: Option<u16>,
}

impl Cli {
    /// The log filter when KAKUREMICHI_LOG is not set: the roles say what they do; the client
    /// commands only warn, so their own output (tables, the shared URL) stays readable.
    pub fn default_log_filter(&self) -> &'static str {
        match self.command {
            Command::Agent(AgentArgs { tool: Some(_), .. }) => "warn,boringtun=error",
            Command::Control(_)
            | Command::Gateway(_)
            | Command::Agent(_)
            | Command::Up(_)
            | Command::Hello(_)
            | Command::Access(_)
            | Command::Healthcheck(_) => "info,boringtun=error",
            _ => "warn,boringtun=error",
        }
    }

    /// How many worker threads the runtime gets (see `--threads`).
    pub fn worker_threads(&self) -> usize {
        match self.command {
            Command::Gateway(_) | Command::Agent(_) => self.node_worker_threads(),
            _ => self.threads.map_or_else(cpus, usize::from),
        }
    }

    /// The workers of a Gateway's or an Agent's runtime, also of each of the two runtimes `up`
    /// runs them on.
    fn node_worker_threads(&self) -> usize {
        self.threads
            .map_or_else(|| (cpus() / 2).max(1), usize::from)
    }
}

/// The subcommands of the command-line client (documented in docs/cli.md; the others, the roles
/// and their tools, in docs/configuration.md).
#[cfg(test)]
pub const CLIENT_COMMANDS: &[&str] = &[
    "login",
    "logout",
    "share",
    "tunnels",
    "agents",
    "gateways",
    "users",
    "tokens",
    "status",
    "open",
    "completions",
    "man",
];

#[derive(Subcommand)]
enum Command {
    /// Run Control: REST API, accounts, database and config distribution to Gateways and Agents.
    Control(Box<control::ControlArgs>),
    /// Run a Gateway: the public HTTP entrance that routes each host name to its Agent.
    Gateway(GatewayArgs),
    /// Run an Agent next to your apps: outbound connections only, no root, no open port.
    Agent(AgentArgs),
    /// Run Control, a Gateway, an Agent and a demo app in one process, ready to try.
    Up(up::UpArgs),
    /// Run a tiny hello-world web app, for demos and tests.
    Hello(HelloArgs),
    /// Reach a tunnel that needs signing in from this machine (`access tcp`: a local port for a
    /// tcp tunnel with access control).
    #[command(subcommand)]
    Access(AccessCommand),
    /// Sign this command line in to a Control: approve it in the browser, and a personal API
    /// token is kept in your config directory (one profile per Control).
    Login(crate::session::LoginArgs),
    /// Revoke the token of a profile on its Control and forget the profile.
    Logout(crate::session::LogoutArgs),
    /// Publish a local app at once under a random name, until you press Ctrl-C (like `ngrok
    /// http 3000`): e.g. `kakuremichi share 3000`.
    Share(Box<crate::share::ShareArgs>),
    /// Tunnels: list, show, create, edit, enable, disable, delete.
    #[command(subcommand)]
    Tunnels(manage::tunnels::TunnelsCommand),
    /// Agents: list, show, create (prints the key once), rotate-key, delete.
    #[command(subcommand)]
    Agents(manage::nodes::AgentsCommand),
    /// Gateways: list, show, create (prints the token once), enable, disable, delete.
    #[command(subcommand)]
    Gateways(manage::nodes::GatewaysCommand),
    /// Users (admins): list, create, delete.
    #[command(subcommand)]
    Users(manage::accounts::UsersCommand),
    /// Your personal API tokens: list, create, delete.
    #[command(subcommand)]
    Tokens(manage::accounts::TokensCommand),
    /// What the dashboard shows; exit status 1 when something needs attention (for cron).
    Status(manage::Call),
    /// Print a tunnel's public URL and open it in the browser.
    Open(manage::status::OpenArgs),
    /// Print a shell completion script, e.g. `kakuremichi completions bash >
    /// /etc/bash_completion.d/kakuremichi`.
    Completions(crate::selfdoc::CompletionsArgs),
    /// Write the man pages (one per command) into a directory.
    Man(crate::selfdoc::ManArgs),
    /// Probe an HTTP health endpoint; exit status 0 only for a 2xx answer (for Docker's
    /// HEALTHCHECK: the images have no curl).
    Healthcheck(HealthcheckArgs),
}

#[derive(Subcommand)]
enum AccessCommand {
    /// Open a local port whose connections reach a tcp tunnel with access control, through
    /// HTTPS after signing in once in the browser (the token is kept until it expires).
    Tcp(crate::access_tcp::AccessTcpArgs),
}

#[derive(Args)]
struct GatewayArgs {
    /// Control's URL, e.g. https://control.example.com; for several Control replicas, their
    /// URLs separated by commas (tried in turn when one goes away).
    #[arg(long, env = "CONTROL_URL")]
    control_url: String,
    /// This gateway's token, from `POST /api/v1/gateways`.
    #[arg(long, env = "GATEWAY_TOKEN", hide_env_values = true)]
    token: String,
    /// Public HTTP address.
    #[arg(long, env = "KAKUREMICHI_HTTP_LISTEN", default_value = "0.0.0.0:80")]
    http_listen: SocketAddr,
    /// Public HTTPS address (certificates come from Control).
    #[arg(long, env = "KAKUREMICHI_HTTPS_LISTEN", default_value = "0.0.0.0:443")]
    https_listen: SocketAddr,
    /// UDP address for WireGuard from Agents (open it in the firewall).
    #[arg(long, env = "KAKUREMICHI_WG_LISTEN", default_value = "0.0.0.0:51820")]
    wg_listen: SocketAddr,
    /// Address of the health endpoint (`/healthz`).
    #[arg(
        long,
        env = "KAKUREMICHI_ADMIN_LISTEN",
        default_value = "127.0.0.1:9090"
    )]
    admin_listen: SocketAddr,
    /// The port browsers reach HTTPS on, when a router or load balancer forwards it to
    /// --https-listen from another (e.g. 443 → 8443): used in http → https redirects and in
    /// the tunnels' URLs Control shows. Default: --https-listen's port.
    #[arg(long, env = "KAKUREMICHI_PUBLIC_HTTPS_PORT", value_parser = clap::value_parser!(u16).range(1..))]
    public_https_port: Option<u16>,
    /// The same for HTTP (tunnels with `tls: off`). Default: --http-listen's port.
    #[arg(long, env = "KAKUREMICHI_PUBLIC_HTTP_PORT", value_parser = clap::value_parser!(u16).range(1..))]
    public_http_port: Option<u16>,
    /// The address `tcp` and `udp` tunnels' public ports are bound on (`::` for IPv4 and IPv6).
    #[arg(long, env = "KAKUREMICHI_PORTS_LISTEN_IP", default_value = "0.0.0.0")]
    ports_listen_ip: std::net::IpAddr,
    /// Write every HTTP request to stdout as one JSON line (time_ms, request_id, tunnel,
    /// client_ip, method, path without the query, status, duration_ms, bytes_in, bytes_out),
    /// for shipping logs elsewhere. Logs stay on stderr. Off by default: nothing is kept.
    #[arg(long, env = "KAKUREMICHI_ACCESS_LOG")]
    access_log: bool,
    /// Count each HTTP request per tunnel: /metrics' request families, Control's traffic
    /// history and charts, and its 5xx-rate alert come from these counters. off: none of
    /// them (scripts/bench measures what they cost).
    #[arg(long, env = "KAKUREMICHI_REQUEST_METRICS", default_value = "on",
          value_parser = ["on", "off"])]
    request_metrics: String,
    /// Directory for the WireGuard key and the cached config.
    #[arg(long, env = "KAKUREMICHI_DATA_DIR", default_value = "./data")]
    data_dir: PathBuf,
    /// Seconds to wait for a connection to an Agent before answering 502.
    #[arg(long, env = "KAKUREMICHI_CONNECT_TIMEOUT", default_value_t = 5)]
    connect_timeout: u64,
    #[command(flatten)]
    limits: GatewayLimits,
}

/// How much of the Gateway one client may hold, so idle or slow clients cannot lock out the rest.
#[derive(Args)]
struct GatewayLimits {
    /// Concurrent client connections per public listener (HTTP, HTTPS); further clients wait.
    #[arg(long, env = "KAKUREMICHI_MAX_CONNS", default_value_t = 10_000)]
    max_conns: usize,
    /// Concurrent connections one client address may hold on the public listeners together
    /// (IPv6 clients counted by /64); its further connections are closed at once.
    #[arg(long, env = "KAKUREMICHI_MAX_CONNS_PER_IP", default_value_t = 256)]
    max_conns_per_ip: usize,
    /// Seconds a client may take to send a request's headers, and its first request on a new
    /// connection (slowloris protection). Also ends idle HTTP/1.1 keep-alive connections.
    #[arg(long, env = "KAKUREMICHI_HEADER_TIMEOUT", default_value_t = 30)]
    header_timeout: u64,
    /// Seconds a connection with no request in flight stays open (HTTP/2 above all).
    #[arg(long, env = "KAKUREMICHI_IDLE_TIMEOUT", default_value_t = 60)]
    idle_timeout: u64,
    /// Seconds a request body may send nothing before the request is cut with 408.
    #[arg(long, env = "KAKUREMICHI_BODY_TIMEOUT", default_value_t = 60)]
    body_timeout: u64,
    /// Seconds a WebSocket connection may carry no byte in either direction before it is closed.
    #[arg(
        long,
        env = "KAKUREMICHI_WEBSOCKET_IDLE_TIMEOUT",
        default_value_t = 600
    )]
    websocket_idle_timeout: u64,
    /// Seconds a client may take to complete the TLS handshake.
    #[arg(long, env = "KAKUREMICHI_TLS_HANDSHAKE_TIMEOUT", default_value_t = 10)]
    tls_handshake_timeout: u64,
    /// Concurrent requests (streams) one HTTP/2 connection may have open.
    #[arg(long, env = "KAKUREMICHI_H2_MAX_STREAMS", default_value_t = 100)]
    h2_max_streams: u32,
}

impl GatewayLimits {
    /// Applies the flags; zero durations become one second (a zero timeout would serve nobody).
    fn apply(&self, proxy: &mut kakuremichi_gateway::proxy::ProxyConfig) {
        let secs = |s: u64| Duration::from_secs(s.max(1));
        proxy.max_connections = self.max_conns.max(1);
        proxy.max_connections_per_ip = self.max_conns_per_ip.max(1);
        proxy.header_read_timeout = secs(self.header_timeout);
        proxy.idle_timeout = secs(self.idle_timeout);
        proxy.body_timeout = secs(self.body_timeout);
        proxy.websocket_idle_timeout = secs(self.websocket_idle_timeout);
        proxy.tls_handshake_timeout = secs(self.tls_handshake_timeout);
        proxy.h2_max_streams = self.h2_max_streams.max(1);
    }
}

/// `kakuremichi agent [flags]` runs an Agent; `kakuremichi agent tunnel --port 3000 --temporary`
/// is `kakuremichi share 3000` (the Agent's own flags are not needed then).
#[derive(Args)]
#[command(subcommand_negates_reqs = true)]
struct AgentArgs {
    #[command(subcommand)]
    tool: Option<AgentTool>,
    /// Control's URL, e.g. https://control.example.com; for several Control replicas, their
    /// URLs separated by commas (tried in turn when one goes away).
    #[arg(long, env = "CONTROL_URL", required = true)]
    control_url: Option<String>,
    /// This agent's API key, from the web UI or `POST /api/v1/agents`.
    #[arg(long, env = "API_KEY", hide_env_values = true, required = true)]
    api_key: Option<String>,
    /// Keep the WireGuard key and last config here, to start without Control (optional).
    #[arg(long, env = "KAKUREMICHI_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// The Gateways' HTTPS port: where WireGuard goes over TLS when UDP gets no answer
    /// (0 turns this fallback off).
    #[arg(long, env = "KAKUREMICHI_WG_FALLBACK_PORT", default_value_t = 443)]
    wg_fallback_port: u16,
    /// Serve the Agent's Prometheus metrics at http://ADDR/metrics (connects to each tunnel's
    /// target and their errors, WireGuard peers; docs/monitoring.md). Plain HTTP without
    /// authentication: use a private address, e.g. 127.0.0.1:9100. Default: off, and the Agent
    /// listens on no port at all.
    #[arg(long, env = "KAKUREMICHI_METRICS_LISTEN", value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
}

#[derive(Subcommand)]
enum AgentTool {
    /// Publish a local port until Ctrl-C under a random name: the same as `kakuremichi share
    /// <PORT>`, e.g. `kakuremichi agent tunnel --port 3000 --temporary`.
    Tunnel(Box<crate::share::AgentTunnelArgs>),
}

#[derive(Args)]
struct HelloArgs {
    /// Address to serve on.
    #[arg(
        long,
        env = "KAKUREMICHI_HELLO_LISTEN",
        default_value = "127.0.0.1:8000"
    )]
    listen: SocketAddr,
    /// Name shown on the page.
    #[arg(long, default_value = "kakuremichi")]
    name: String,
}

#[derive(Args)]
struct HealthcheckArgs {
    /// URL to probe, e.g. http://127.0.0.1:9090/healthz.
    #[arg(long)]
    url: String,
    /// Seconds to wait for the answer.
    #[arg(long, default_value_t = 5)]
    timeout: u64,
}

fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

pub async fn dispatch(cli: Cli) -> anyhow::Result<()> {
    let node_threads = cli.node_worker_threads();
    match cli.command {
        Command::Control(a) => control::run(*a).await,
        Command::Gateway(a) => {
            let mut config =
                kakuremichi_gateway::GatewayConfig::new(a.control_url, Secret::new(a.token));
            config.data_dir = Some(a.data_dir);
            config.ports_listen_ip = a.ports_listen_ip;
            config.access_log = a.access_log;
            config.request_metrics = a.request_metrics == "on";
            config.public_https_port = a.public_https_port;
            config.public_http_port = a.public_http_port;
            config.proxy.connect_timeout = Duration::from_secs(a.connect_timeout.max(1));
            a.limits.apply(&mut config.proxy);
            config.validate()?;
            let listeners = kakuremichi_gateway::GatewayListeners {
                http: bind_tcp(a.http_listen, "--http-listen").await?,
                https: bind_tcp(a.https_listen, "--https-listen").await?,
                admin: bind_tcp(a.admin_listen, "--admin-listen").await?,
                wg: bind_udp(a.wg_listen, "--wg-listen")?,
            };
            tracing::info!(http = %a.http_listen, https = %a.https_listen, wireguard = %a.wg_listen, admin = %a.admin_listen, "gateway listening");
            kakuremichi_gateway::run(config, listeners, signal::shutdown()).await
        }
        Command::Agent(AgentArgs {
            tool: Some(AgentTool::Tunnel(t)),
            ..
        }) => crate::share::run((*t).into()).await,
        Command::Agent(a) => {
            let (Some(control_url), Some(api_key)) = (a.control_url, a.api_key) else {
                anyhow::bail!("an Agent needs --control-url (CONTROL_URL) and --api-key (API_KEY)");
            };
            let mut config = kakuremichi_agent::AgentConfig::new(control_url, Secret::new(api_key));
            config.data_dir = a.data_dir;
            config.wg_fallback_port = a.wg_fallback_port;
            config.metrics_listen = a.metrics_listen;
            kakuremichi_agent::run(config, signal::shutdown()).await
        }
        Command::Up(a) => up::run(a, node_threads).await,
        Command::Hello(a) => {
            let listener = bind_tcp(a.listen, "--listen").await?;
            println!("hello app on http://{}/", listener.local_addr()?);
            hello::serve(listener, a.name, signal::shutdown()).await;
            Ok(())
        }
        Command::Access(AccessCommand::Tcp(a)) => crate::access_tcp::run(a).await,
        Command::Login(a) => crate::session::login(a).await,
        Command::Logout(a) => crate::session::logout(a).await,
        Command::Share(a) => crate::share::run(*a).await,
        Command::Tunnels(c) => manage::tunnels::run(c).await,
        Command::Agents(c) => manage::nodes::agents(c).await,
        Command::Gateways(c) => manage::nodes::gateways(c).await,
        Command::Users(c) => manage::accounts::users(c).await,
        Command::Tokens(c) => manage::accounts::tokens(c).await,
        Command::Status(c) => manage::status::status(c).await,
        Command::Open(a) => manage::status::open(a).await,
        Command::Completions(a) => {
            crate::selfdoc::completions(&a);
            Ok(())
        }
        Command::Man(a) => crate::selfdoc::man(&a),
        Command::Healthcheck(a) => {
            let client = reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(a.timeout.max(1)))
                .build()?;
            let status = client.get(&a.url).send().await?.status();
            anyhow::ensure!(status.is_success(), "{} answered {status}", a.url);
            Ok(())
        }
    }
}

pub async fn bind_tcp(addr: SocketAddr, flag: &str) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| bind_hint(addr, flag))
}

pub fn bind_udp(addr: SocketAddr, flag: &str) -> anyhow::Result<std::net::UdpSocket> {
    std::net::UdpSocket::bind(addr).with_context(|| bind_hint(addr, flag))
}

fn bind_hint(addr: SocketAddr, flag: &str) -> String {
    let low = if addr.port() < 1024 {
        " (ports below 1024 need root or CAP_NET_BIND_SERVICE)"
    } else {
        ""
    };
    format!("cannot listen on {addr}{low}; is another program using it? Choose another address with {flag}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn threads(args: &[&str]) -> usize {
        let argv = std::iter::once("kakuremichi").chain(args.iter().copied());
        Cli::try_parse_from(argv).unwrap().worker_threads()
    }

    #[test]
    fn gateway_and_agent_take_half_the_cpus_unless_told() {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let gateway = ["gateway", "--control-url", "http://c", "--token", "t"];
        let agent = ["agent", "--control-url", "http://c", "--api-key", "k"];
        assert_eq!(threads(&gateway), (cpus / 2).max(1));
        assert_eq!(threads(&agent), (cpus / 2).max(1));
        assert_eq!(threads(&["hello"]), cpus);
        assert_eq!(threads(&["--threads", "3", "hello"]), 3);
        assert_eq!(
            threads(&[
                "agent",
                "--threads",
                "5",
                "--control-url",
                "http://c",
                "--api-key",
                "k"
            ]),
            5
        );
        let zero = Cli::try_parse_from(["kakuremichi", "--threads", "0", "hello"]);
        assert!(zero.is_err(), "0 threads must be refused");
    }

    #[test]
    fn control_runs_control_with_its_flags_and_takes_the_import_tool_as_a_subcommand() {
        let run = Cli::try_parse_from(["kakuremichi", "control", "--listen", "127.0.0.1:1"]);
        let Command::Control(args) = run.unwrap().command else {
            panic!("not the control command");
        };
        assert!(args.tool.is_none(), "flags alone run Control");
        assert_eq!(args.listen, "127.0.0.1:1".parse().unwrap());
        let import = [
            "kakuremichi",
            "control",
            "import-cloudflared",
            "config.yml",
            "--agent",
            "home",
            "--control-url",
            "http://c",
            "--token",
            "t",
            "--dry-run",
            "--access",
            "users:A@x.org,b@y.org",
            "--tls",
            "internal",
        ];
        let Command::Control(args) = Cli::try_parse_from(import).unwrap().command else {
            panic!("not the control command");
        };
        assert!(
            matches!(args.tool, Some(control::ControlTool::ImportCloudflared(_))),
            "not the import tool"
        );
        let mixed = [
            "kakuremichi",
            "control",
            "--listen",
            "127.0.0.1:1",
            "import-cloudflared",
            "c.yml",
        ];
        assert!(
            Cli::try_parse_from(mixed).is_err(),
            "Control's flags and a tool do not mix"
        );
        let bad = [
            "kakuremichi",
            "control",
            "import-cloudflared",
            "c.yml",
            "--agent",
            "a",
        ];
        let access = [
            &bad[..],
            &["--control-url", "u", "--token", "t", "--access", "friends"],
        ];
        let err = Cli::try_parse_from(access.concat()).err().unwrap();
        assert_eq!(err.exit_code(), 2, "bad input exits 2");
    }

    #[test]
    fn gateway_limit_flags_reach_the_proxy_config() {
        let argv = [
            "kakuremichi",
            "gateway",
            "--control-url",
            "http://c",
            "--token",
            "t",
            "--max-conns-per-ip",
            "8",
            "--header-timeout",
            "0",
            "--body-timeout",
            "7",
            "--h2-max-streams",
            "12",
        ];
        let Command::Gateway(args) = Cli::try_parse_from(argv).unwrap().command else {
            panic!("not the gateway command");
        };
        let mut proxy = kakuremichi_gateway::proxy::ProxyConfig::default();
        args.limits.apply(&mut proxy);
        assert_eq!(proxy.max_connections_per_ip, 8);
        assert_eq!(
            proxy.header_read_timeout,
            Duration::from_secs(1),
            "0 means 1 s"
        );
        assert_eq!(proxy.body_timeout, Duration::from_secs(7));
        assert_eq!(proxy.h2_max_streams, 12);
        assert_eq!(proxy.idle_timeout, Duration::from_secs(60));
        assert_eq!(proxy.websocket_idle_timeout, Duration::from_secs(600));
        assert_eq!(proxy.max_connections, 10_000);
    }
}
