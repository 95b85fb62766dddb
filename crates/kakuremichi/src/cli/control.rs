//! `kakuremichi control`: Control's flags, its tools (`import-cloudflared`, `migrate`,
//! `migrate-db`, `backup`, `restore`), and running it.

use super::{bind_tcp, signal};
use crate::import;
use clap::{Args, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// `kakuremichi control [flags]` runs Control; `kakuremichi control <tool>` runs a tool against a
/// running Control instead (Control's flags and a tool do not mix).
#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub(super) struct ControlArgs {
    #[command(subcommand)]
    pub(super) tool: Option<ControlTool>,
    /// Address for the API (and, later, the web UI) and the node sessions.
    #[arg(long, env = "KAKUREMICHI_LISTEN", default_value = "0.0.0.0:8780")]
    pub(super) listen: SocketAddr,
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
    /// Where install.sh and the release binaries are downloaded from: the web UI's "Add agent"
    /// page shows `curl -fsSL URL/install.sh | sudo sh -s -- --agent ...`. Set it to a mirror or to
    /// where you host a release of your own (scripts/release's directory).
    #[arg(long, env = "KAKUREMICHI_DOWNLOAD_URL", value_name = "URL",
          default_value = kakuremichi_control::DEFAULT_DOWNLOAD_URL)]
    download_url: String,
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
pub(super) enum ControlTool {
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

/// Runs the tool asked for, or Control with its flags.
pub(super) async fn run(mut a: ControlArgs) -> anyhow::Result<()> {
    match a.tool.take() {
        Some(ControlTool::ImportCloudflared(t)) => import::run(*t).await,
        Some(ControlTool::Migrate(t)) => crate::migrate::run(t).await,
        Some(ControlTool::MigrateDb(t)) => crate::migrate::migrate_db(t).await,
        Some(ControlTool::Backup(t)) => crate::backup::backup(t).await,
        Some(ControlTool::Restore(t)) => crate::backup::restore(t).await,
        None => run_control(a).await,
    }
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
        download_url: a.download_url,
        ..Default::default()
    };
    config.validate()?;
    let listener = bind_tcp(a.listen, "--listen").await?;
    tracing::info!(listen = %a.listen, "control listening");
    kakuremichi_control::run(config, listener, signal::shutdown()).await
}
