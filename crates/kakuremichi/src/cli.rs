//! Command-line interface: every flag has an environment-variable twin (12-factor, as Docker
//! users expect); the flag wins when both are given.

use crate::{import, manage, signal, up};
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
    version,
    about = "Self-hosted tunnels: publish apps behind NAT on your own domains through your own Gateways, without opening a port.",
    after_help = "Try it on one machine:  kakuremichi up\nLogs: set KAKUREMICHI_LOG=debug for more detail."
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Worker threads of the async runtime. Default: half the CPUs (at least one) for `gateway`
    /// and `agent`, every CPU otherwise. A Gateway or Agent shares its machine with the kernel's
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
        if let Some(n) = self.threads {
            return usize::from(n);
        }
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        match self.command {
            Command::Gateway(_) | Command::Agent(_) => (cpus / 2).max(1),
            _ => cpus,
        }
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
    Control(Box<ControlArgs>),
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

/// `kakuremichi control [flags]` runs Control; `kakuremichi control <tool>` runs a tool against a
/// running Control instead (Control's flags and a tool do not mix).
#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
struct ControlArgs {
    #[command(subcommand)]
    tool: Option<ControlTool>,
    /// Address for the API (and, later, the web UI) and the node sessions.
    #[arg(long, env = "KAKUREMICHI_LISTEN", default_value = "0.0.0.0:8780")]
    listen: SocketAddr,
    /// Directory for the SQLite database and other state.
    #[arg(long, env = "KAKUREMICHI_DATA_DIR", default_value = "./data")]
    data_dir: PathBuf,
    #[command(flatten)]
    database: crate::database::DatabaseArg,
    /// Connections to PostgreSQL per Control replica (SQLite keeps its own small pool).
    #[arg(long, env = "KAKUREMICHI_DATABASE_MAX_CONNECTIONS", default_value_t = 10,
          value_parser = clap::value_parser!(u32).range(1..=1_000))]
    database_max_connections: u32,
    /// Seconds one PostgreSQL statement may run before the server cancels it.
    #[arg(long, env = "KAKUREMICHI_DATABASE_STATEMENT_TIMEOUT", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..=3_600))]
    database_statement_timeout: u64,
    /// How nodes and browsers reach Control, e.g. https://control.example.com.
    #[arg(long, env = "KAKUREMICHI_PUBLIC_URL")]
    public_url: Option<String>,
    /// Private IPv4 range from which Gateways and Agents get their tunnel addresses.
    #[arg(long, env = "KAKUREMICHI_WG_NETWORK", default_value = "10.77.0.0/16")]
    wg_network: String,
    /// E-mail of the first admin, created on first start if no user exists.
    #[arg(long, env = "KAKUREMICHI_ADMIN_EMAIL")]
    admin_email: Option<String>,
    /// Password of the first admin (prefer the environment variable: flags show in `ps`).
    #[arg(long, env = "KAKUREMICHI_ADMIN_PASSWORD", hide_env_values = true)]
    admin_password: Option<String>,
    /// ACME directory URL of the CA certificates are ordered from (staging:
    /// https://acme-staging-v02.api.letsencrypt.org/directory).
    #[arg(long, env = "KAKUREMICHI_ACME_DIRECTORY", default_value = kakuremichi_control::LETS_ENCRYPT)]
    acme_directory: String,
    /// Contact e-mail of the ACME account (the CA may send expiry notices).
    #[arg(long, env = "KAKUREMICHI_ACME_EMAIL")]
    acme_email: Option<String>,
    /// PEM file of extra root certificates to trust for the ACME server (a private CA, Pebble).
    #[arg(long, env = "KAKUREMICHI_ACME_CA_ROOTS")]
    acme_ca_roots: Option<PathBuf>,
    /// External account binding key id, for CAs that require one.
    #[arg(long, env = "KAKUREMICHI_ACME_EAB_KID")]
    acme_eab_kid: Option<String>,
    /// External account binding HMAC key (base64url), for CAs that require one.
    #[arg(long, env = "KAKUREMICHI_ACME_EAB_HMAC_KEY", hide_env_values = true)]
    acme_eab_hmac_key: Option<String>,
    /// ACME challenge the CA validates: auto (HTTP-01, alternating with TLS-ALPN-01 after a
    /// failure), http-01 (port 80 must reach the Gateways), tls-alpn-01 (port 443 only) or dns-01
    /// (a TXT record in a DNS zone Control manages; no port needs to be open). Wildcard tunnels
    /// always use dns-01.
    #[arg(long, env = "KAKUREMICHI_ACME_CHALLENGE", default_value = "auto")]
    acme_challenge: kakuremichi_control::ChallengeChoice,
    /// Seconds DNS-01 waits for its TXT record to be visible on every authoritative server of the
    /// zone (or the zone's resolver) before giving up on the attempt.
    #[arg(long, env = "KAKUREMICHI_ACME_DNS_PROPAGATION_TIMEOUT", default_value_t = 120,
          value_parser = clap::value_parser!(u64).range(1..=3_600))]
    acme_dns_propagation_timeout: u64,
    /// Recursive resolver (host:port) Control asks for `_acme-challenge` CNAMEs (delegation) and
    /// for the name servers of managed zones. Default: the first nameserver of /etc/resolv.conf.
    #[arg(long, env = "KAKUREMICHI_DNS_RESOLVER")]
    dns_resolver: Option<String>,
    /// Most ACME orders per member per hour (new names, renewals); more wait, and the tunnel's
    /// certificate status says until when. The admins' tunnels count per domain only. 0 = no cap.
    #[arg(
        long,
        env = "KAKUREMICHI_ACME_ORDERS_PER_USER_HOUR",
        default_value_t = 10
    )]
    acme_orders_per_user_hour: u32,
    /// Most ACME orders per registered domain (e.g. example.co.uk, from the Public Suffix List)
    /// per hour, whoever owns the tunnels; more wait. 0 = no cap.
    #[arg(
        long,
        env = "KAKUREMICHI_ACME_ORDERS_PER_DOMAIN_HOUR",
        default_value_t = 20
    )]
    acme_orders_per_domain_hour: u32,
    /// TLS of tunnels created without a `tls` field: acme, internal or off.
    #[arg(long, env = "KAKUREMICHI_DEFAULT_TLS", default_value = "acme")]
    default_tls: kakuremichi_control::TlsMode,
    /// Ports (`FIRST-LAST`) from which `tcp` and `udp` tunnels created without `public_port`
    /// get one; every Gateway binds it (open the range in the Gateways' firewalls).
    #[arg(long, env = "KAKUREMICHI_PORT_RANGE", default_value = "20000-29999",
          value_parser = kakuremichi_control::parse_port_range)]
    port_range: std::ops::RangeInclusive<u16>,
    /// Strict-Transport-Security max-age (seconds) on HTTPS responses of redirecting tunnels; 0 = no header.
    #[arg(long, env = "KAKUREMICHI_HSTS_MAX_AGE", default_value_t = 31_536_000)]
    hsts_max_age: u32,
    /// Seconds an access cookie of a protected tunnel lives at most (60 to 604800); logout and
    /// allow-list changes take effect sooner, through Gateway config pushes.
    #[arg(long, env = "KAKUREMICHI_ACCESS_TTL", default_value_t = 43_200)]
    access_ttl: u64,
    /// The domain temporary tunnels (`kakuremichi share`) get random names under, e.g.
    /// t.example.com (point *.t.example.com at the Gateways). Default: none, temporary tunnels
    /// are off.
    #[arg(long, env = "KAKUREMICHI_TEMPORARY_DOMAIN", value_name = "DOMAIN")]
    temporary_domain: Option<String>,
    /// Seconds a temporary tunnel's Agent may be offline (its command line killed without
    /// cleaning up) before Control deletes the tunnel and the Agent (1 to 604800).
    #[arg(
        long,
        env = "KAKUREMICHI_TEMPORARY_TTL",
        default_value_t = 600,
        value_name = "SECONDS"
    )]
    temporary_ttl: u64,
    /// Comma-separated CIDR ranges (or addresses) of reverse proxies in front of Control whose
    /// X-Forwarded-For names the client for the login throttle, e.g. 10.77.0.0/16 when Control
    /// is published through a tunnel. Default: none, every client is keyed by its TCP address.
    #[arg(long, env = "KAKUREMICHI_TRUSTED_PROXIES", value_delimiter = ',')]
    trusted_proxies: Vec<String>,
    /// Serve Control's Prometheus metrics at http://ADDR/metrics (node sessions, config pushes
    /// and their latency, API requests, ACME orders; docs/monitoring.md). Plain HTTP without
    /// authentication: use a private address, e.g. 127.0.0.1:9091. Default: off.
    #[arg(long, env = "KAKUREMICHI_METRICS_LISTEN", value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
    /// Seconds a Gateway may be offline before Control takes it out of the A/AAAA records of
    /// the managed DNS zones (docs/dns.md); it is listed again once back online for a while.
    /// The last Gateway is never taken out.
    #[arg(long, env = "KAKUREMICHI_DNS_FAILOVER_AFTER", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    dns_failover_after: u64,
    /// TTL (seconds) of the A/AAAA records Control writes in managed DNS zones. Low, so that
    /// failover reaches resolvers quickly.
    #[arg(long, env = "KAKUREMICHI_DNS_TTL", default_value_t = 60,
          value_parser = clap::value_parser!(u32).range(1..=86_400))]
    dns_ttl: u32,
    /// Time of day (UTC, HH:MM) of the daily backup of Control's database and data directory, or
    /// off (docs/backups.md).
    #[arg(long, env = "KAKUREMICHI_BACKUP_AT", default_value = "03:00",
          value_parser = parse_backup_at)]
    backup_at: BackupAt,
    /// Directory of the backups. Default: DATA_DIR/backups.
    #[arg(long, env = "KAKUREMICHI_BACKUP_DIR")]
    backup_dir: Option<PathBuf>,
    /// Days whose newest backup is kept.
    #[arg(long, env = "KAKUREMICHI_BACKUP_KEEP_DAILY", default_value_t = 7,
          value_parser = clap::value_parser!(u16).range(1..=3660))]
    backup_keep_daily: u16,
    /// ISO weeks whose newest backup is kept (besides the daily ones).
    #[arg(long, env = "KAKUREMICHI_BACKUP_KEEP_WEEKLY", default_value_t = 4,
          value_parser = clap::value_parser!(u16).range(0..=520))]
    backup_keep_weekly: u16,
    /// Shell command run after each scheduled backup, with the file's path as $1 (and in
    /// KAKUREMICHI_BACKUP_FILE): ship it offsite, e.g. 'rclone copy "$1" remote:kakuremichi/'.
    /// A failure is logged and in the audit log.
    #[arg(long, env = "KAKUREMICHI_BACKUP_COMMAND")]
    backup_command: Option<String>,
    #[command(flatten)]
    backup_key: crate::backup::BackupKeyArg,
    #[command(flatten)]
    alerts: crate::alert_args::AlertArgs,
}

/// `--backup-at`: a time of day, or off.
#[derive(Clone, Copy)]
struct BackupAt(Option<(u8, u8)>);

fn parse_backup_at(text: &str) -> Result<BackupAt, String> {
    kakuremichi_control::parse_backup_at(text).map(BackupAt)
}

impl ControlArgs {
    /// The managed records' settings from `--dns-*`.
    fn dns(&self) -> kakuremichi_control::DnsRecordsConfig {
        let failover_after = Duration::from_secs(self.dns_failover_after);
        kakuremichi_control::DnsRecordsConfig {
            ttl: self.dns_ttl,
            failover_after,
            // Back in DNS after being online this long: a third of the failover delay, at most 10 s.
            readmit_after: (failover_after / 3).min(Duration::from_secs(10)),
        }
    }
}

#[derive(Subcommand)]
enum ControlTool {
    /// Create the tunnels of a cloudflared ingress config (config.yml) for one Agent, through a
    /// running Control's API: the way over from Cloudflare Tunnel. Rules without an exact
    /// equivalent are reported with the reason, not guessed (docs/migrate-cloudflared.md).
    ImportCloudflared(Box<import::ImportArgs>),
    /// Show the database's schema version and the migrations this release would apply
    /// (`--dry-run`), or apply them now; a database with data is copied to DATA_DIR/backups first,
    /// as when Control starts (docs/backups.md).
    Migrate(crate::migrate::MigrateArgs),
    /// Copy every row of Control's database into another, empty one, e.g. from SQLite to
    /// PostgreSQL to run several Control replicas (Control stopped); verifies the counts
    /// (docs/high-availability.md).
    MigrateDb(crate::migrate::MigrateDbArgs),
    /// Back up Control's database and data directory now, while it runs: prints the file's
    /// path (docs/backups.md).
    Backup(crate::backup::BackupArgs),
    /// Restore a backup into a data directory (Control stopped); refuses to replace a database
    /// without --force, and a file that does not match its FILE.sha256.
    Restore(crate::backup::RestoreArgs),
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

/// Runs Control with its flags.
async fn run_control(a: ControlArgs) -> anyhow::Result<()> {
    let dns = a.dns();
    let backup = kakuremichi_control::BackupConfig {
        at: a.backup_at.0,
        dir: a.backup_dir.clone(),
        keep_daily: usize::from(a.backup_keep_daily),
        keep_weekly: usize::from(a.backup_keep_weekly),
        command: a.backup_command.clone(),
        key: a.backup_key.backup_key.clone(),
    };
    let config = kakuremichi_control::ControlConfig {
        dns,
        backup,
        data_dir: a.data_dir,
        database_url: a.database.url()?,
        database_pool: kakuremichi_control::PoolOptions {
            max_connections: a.database_max_connections,
            statement_timeout: Duration::from_secs(a.database_statement_timeout),
        },
        public_url: a.public_url,
        admin_email: a.admin_email,
        admin_password: a.admin_password,
        wg_network: a.wg_network,
        acme: kakuremichi_control::AcmeConfig {
            directory_url: a.acme_directory,
            email: a.acme_email,
            ca_roots: a.acme_ca_roots,
            eab_kid: a.acme_eab_kid,
            eab_hmac_key: a.acme_eab_hmac_key,
            challenge: a.acme_challenge,
            dns_propagation_timeout: Duration::from_secs(a.acme_dns_propagation_timeout),
            dns_resolver: a.dns_resolver,
            limits: kakuremichi_control::OrderLimits {
                per_user: a.acme_orders_per_user_hour,
                per_domain: a.acme_orders_per_domain_hour,
            },
            ..Default::default()
        },
        default_tls: a.default_tls,
        port_range: a.port_range,
        hsts_max_age: a.hsts_max_age,
        access_ttl: Duration::from_secs(a.access_ttl),
        temporary: kakuremichi_control::TemporaryConfig {
            domain: a.temporary_domain,
            ttl: Duration::from_secs(a.temporary_ttl),
        },
        trusted_proxies: a.trusted_proxies,
        metrics_listen: a.metrics_listen,
        alerts: a.alerts.config()?,
        ..Default::default()
    };
    config.validate()?;
    let listener = bind_tcp(a.listen, "--listen").await?;
    tracing::info!(listen = %a.listen, "control listening");
    kakuremichi_control::run(config, listener, signal::shutdown()).await
}

pub async fn dispatch(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Control(mut a) => match a.tool.take() {
            Some(ControlTool::ImportCloudflared(t)) => import::run(*t).await,
            Some(ControlTool::Migrate(t)) => crate::migrate::run(t).await,
            Some(ControlTool::MigrateDb(t)) => crate::migrate::migrate_db(t).await,
            Some(ControlTool::Backup(t)) => crate::backup::backup(t).await,
            Some(ControlTool::Restore(t)) => crate::backup::restore(t).await,
            None => run_control(*a).await,
        },
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
        Command::Up(a) => up::run(a).await,
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
            matches!(args.tool, Some(ControlTool::ImportCloudflared(_))),
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
