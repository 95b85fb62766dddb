//! kakuremichi Control: the REST API, accounts, the database and config distribution to nodes.
//!
//! [`run`] serves everything on one listener until its shutdown future resolves. Gateways and
//! Agents hold a WebSocket session (see [`kakuremichi_proto::CONNECT_PATH`]) over which Control
//! pushes each one its [`kakuremichi_proto::ConfigSnapshot`] whenever it changes.
//!
//! Modules in layers, lowest first; a module uses only lower layers, never a sibling
//! (`scripts/check-layers` enforces it): `secrets` → `validate` → `dns` (DNS providers) →
//! `store` → `zones` (managed DNS zones) → `snapshot` → `hub` (node sessions) → {`certs`,
//! `dns_records`, `backups`, `alerts`} → `error` → `guard` → `config` → `app`
//! (`AppState`) → `auth` → {`ops`, `views`} → {`access`, `api`, `ui`}. This file, the top, wires
//! them together.

mod access;
mod alerts;
mod api;
mod app;
mod auth;
mod backups;
mod certs;
mod config;
/// DNS providers (RFC 2136 + TSIG, PowerDNS, Cloudflare). Public for the provider tests.
pub mod dns;
mod dns_records;
mod error;
mod guard;
mod hub;
mod leader;
mod metrics;
mod ops;
mod secrets;
mod snapshot;
mod store;
mod ui;
mod validate;
mod views;
mod zones;

pub use alerts::{channels::Mailer, AlertConfig};
pub use backups::{parse_at as parse_backup_at, BackupConfig};
pub use certs::{AcmeConfig, Challenge, ChallengeChoice, OrderLimits, TlsMode, LETS_ENCRYPT};
pub use config::{
    parse_port_range, ConfigError, ControlConfig, TemporaryConfig, DEFAULT_DOWNLOAD_URL,
    DEFAULT_PORT_RANGE,
};
pub use dns_records::DnsRecordsConfig;
pub use store::backup_key::BackupKey;
pub use store::{Backend as DatabaseBackend, MigrationPlan, PoolOptions, Restored};

/// Where Control keeps its internal CA's root certificate (`root.crt`; the key is beside it).
pub fn internal_ca_root(data_dir: &std::path::Path) -> std::path::PathBuf {
    data_dir.join("internal-ca").join("root.crt")
}

use anyhow::Context as _;
use hub::Hub;
use std::future::Future;
use std::time::Duration;
use store::Store;

/// How long in-flight HTTP requests may take to finish after shutdown is requested.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long node sessions get to say goodbye.
const NODE_SESSION_CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Where Control's database (`database_url`, else `control.db` in `data_dir`) stands against this
/// binary's migrations, changing nothing (`kakuremichi control migrate --dry-run`); `None` when
/// there is no database yet.
pub async fn migration_plan(
    data_dir: &std::path::Path,
    database_url: Option<&str>,
) -> anyhow::Result<Option<MigrationPlan>> {
    Store::migration_plan(database_url, &data_dir.join("control.db"))
        .await
        .context("cannot read the database")
}

/// Backs up Control's database and data directory to `out` (default:
/// `BACKUP_DIR/kakuremichi-TIME.db`, `BACKUP_DIR` defaulting to `DATA_DIR/backups`), while
/// Control may be running; returns the path.
pub async fn backup(
    data_dir: &std::path::Path,
    database_url: Option<&str>,
    out: Option<std::path::PathBuf>,
    backup_dir: Option<std::path::PathBuf>,
    key: Option<&BackupKey>,
) -> anyhow::Result<std::path::PathBuf> {
    let out = out.unwrap_or_else(|| {
        let stamp = store::now().replace([':', '-'], "");
        let dir = backup_dir.unwrap_or_else(|| data_dir.join("backups"));
        dir.join(format!("{}{stamp}.db", backups::PREFIX))
    });
    Store::backup(
        database_url,
        &data_dir.join("control.db"),
        data_dir,
        &out,
        key,
    )
    .await
    .context("backup failed")?;
    Ok(out)
}

/// Restores a backup into `data_dir` (Control stopped; `force` to replace a database there).
pub async fn restore(
    file: &std::path::Path,
    data_dir: &std::path::Path,
    force: bool,
    key: Option<&BackupKey>,
) -> anyhow::Result<Restored> {
    Store::restore(file, data_dir, force, key)
        .await
        .context("restore failed")
}

/// Applies the pending migrations as Control would at start (copying the database first).
pub async fn migrate(data_dir: &std::path::Path, database_url: Option<&str>) -> anyhow::Result<()> {
    let store = match database_url {
        Some(url) => Store::open(url).await,
        None => Store::open_file(&data_dir.join("control.db")).await,
    }
    .context("cannot open the database")?;
    store.close().await;
    Ok(())
}

/// Copies every row of the database at `from` into the empty database at `to` (SQLite to
/// PostgreSQL or back), both migrated to this release's schema first; Control must be stopped
/// (`kakuremichi control migrate-db`). Returns each table with its row count, verified on both.
pub async fn migrate_db(from: &str, to: &str) -> anyhow::Result<Vec<(&'static str, i64)>> {
    let source = Store::open(from)
        .await
        .context("cannot open the source database (--from)")?;
    let target = Store::open(to)
        .await
        .context("cannot open the destination database (--to)")?;
    let copied = store::copy::copy_all(&source, &target).await;
    source.close().await;
    target.close().await;
    copied.context("copy failed; the destination was left unchanged")
}

/// Runs Control on `listener` until `shutdown` resolves, then closes node sessions and drains.
pub async fn run(
    config: ControlConfig,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    config.validate()?;
    let network = config.network()?;
    let metrics_listener = match config.metrics_listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} (--metrics-listen)"))?,
        ),
        None => None,
    };
    create_private_dir(&config.data_dir)
        .await
        .with_context(|| format!("cannot create data_dir {}", config.data_dir.display()))?;
    let store = match &config.database_url {
        Some(url) => Store::open_with(url, config.database_pool).await,
        None => Store::open_file(&config.data_dir.join("control.db")).await,
    }
    .context("cannot open the database")?;
    tracing::info!(engine = ?store.backend(), "database open and migrated");
    let passwords = std::sync::Arc::new(guard::hashing::Passwords::for_this_host());
    bootstrap_admin(&config, &store, &passwords).await?;
    let dummy_hash = passwords.hash(secrets::generate("dummy_")).await?;

    let hub = Hub::new(
        store.clone(),
        config.heartbeat_interval,
        config.heartbeat_timeout,
    );
    hub.set_hsts_max_age(config.hsts_max_age);
    let ca_dir = config.data_dir.join("internal-ca");
    let ca =
        tokio::task::spawn_blocking(move || certs::InternalCa::load_or_create(&ca_dir)).await??;
    tracing::info!(root = %ca.root_path().display(), "internal CA ready");
    hub.set_access_url(config.public_url.clone().unwrap_or_default());
    let access = access::Access::new(store.clone(), config.access_ttl);
    // Keys exist before the first Gateway connects, so its first snapshot can verify tokens.
    access
        .maintain()
        .await
        .context("cannot prepare access-token keys")?;
    let sealer = std::sync::Arc::new(secrets::Sealer::load_or_create(&config.data_dir)?);
    let zones = zones::Zones::new(store.clone(), sealer.clone());
    let alerts = std::sync::Arc::new(alerts::Alerts::new(
        store.clone(),
        hub.clone(),
        sealer,
        config.alerts.clone(),
        config.public_url.clone(),
    ));
    let dns_records = dns_records::DnsRecords::new(hub.clone(), zones.clone(), config.dns);
    let state = app::AppState::new(hub.clone(), network, config.secure_cookies(), dummy_hash)
        .with_default_tls(config.default_tls)
        .with_port_range(config.port_range.clone())
        .with_access_ttl(config.access_ttl)
        .with_download_url(config.download_url.clone())
        .with_temporary(config.temporary.clone())
        .with_passwords(passwords)
        .with_zones(zones.clone())
        .with_dns_records(dns_records.clone())
        .with_trusted_proxies(guard::proxies::TrustedProxies::parse(
            &config.trusted_proxies,
        )?);
    let scheduled = std::sync::Arc::new(backups::Backups::new(
        store.clone(),
        config.data_dir.clone(),
        config.backup.clone(),
    ));
    let state = state
        .with_backups(scheduled.clone())
        .with_alerts(alerts.clone());
    let app = router(state.clone());
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let manager = certs::CertManager::new(
        store.clone(),
        hub.clone(),
        config.acme.clone(),
        ca,
        zones.clone(),
        // Temporary tunnels get the default TLS mode; a wildcard only helps ACME.
        config
            .temporary
            .domain
            .clone()
            .filter(|_| config.default_tls == certs::TlsMode::Acme),
    );
    tracing::info!(dir = %scheduled.dir().display(), at = ?config.backup.at,
        encrypted = config.backup.key.is_some(), "backups scheduled (UTC)");
    // Every replica shows the leader's DNS record statuses (nothing to do on SQLite).
    let dns_follower = tokio::spawn(dns_records.clone().follow(stop_rx.clone()));
    // The work that must happen once, on the leading replica (the only Control on SQLite):
    // certificates, DNS records, backups, share sweeps, access-key rotation, alerts.
    let once_only = {
        let hub = hub.clone();
        move |stop: tokio::sync::watch::Receiver<bool>| {
            vec![
                tokio::spawn(manager.clone().run(stop.clone())),
                tokio::spawn(dns_records.clone().run(stop.clone())),
                tokio::spawn(scheduled.clone().run(stop.clone())),
                tokio::spawn(ops::shares::run_sweeper(state.clone(), stop.clone())),
                tokio::spawn(access::run_maintenance(access.clone(), hub.clone())),
                tokio::spawn(alerts.clone().run(stop)),
            ]
        }
    };
    // This replica's name, the same in the audit log (control.lead) and in node presence.
    let replica = secrets::generate("replica_");
    let first = leader::try_first(&store).await;
    let mut lead = tokio::spawn(leader::run(
        store.clone(),
        replica.clone(),
        stop_rx.clone(),
        once_only,
        first,
    ));
    // Several replicas on PostgreSQL hear each other's changes (nothing to do on SQLite).
    let mut replication =
        tokio::spawn(hub::replication::run(hub.clone(), replica, stop_rx.clone()));
    // The Gateways' traffic reports, written to the history every 10 s.
    let mut traffic = tokio::spawn(hub::traffic::flush(hub.clone(), stop_rx.clone()));
    if let Some(listener) = metrics_listener {
        tokio::spawn(serve_metrics(listener, hub.clone(), stop_rx.clone()));
    }
    // The peer address keys the per-IP login throttle.
    let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        let _ = stop_rx.wait_for(|stop| *stop).await;
    });
    let mut server = tokio::spawn(async move { server.await });
    tracing::info!(wg_network = %network, "control is serving");

    tokio::select! {
        result = &mut server => {
            let _ = stop_tx.send(true);
            stop_task(&mut lead).await;
            stop_task(&mut replication).await;
            stop_task(&mut traffic).await;
            dns_follower.abort();
            store.close().await;
            return match result {
                Ok(Ok(())) => Err(anyhow::anyhow!("the HTTP server stopped unexpectedly")),
                Ok(Err(e)) => Err(anyhow::Error::new(e).context("the HTTP server failed")),
                Err(e) => Err(anyhow::Error::new(e).context("the HTTP server task failed")),
            };
        }
        () = shutdown => {}
    }
    tracing::info!("control is shutting down");
    hub.begin_shutdown();
    let _ = stop_tx.send(true);
    stop_task(&mut lead).await;
    stop_task(&mut replication).await;
    stop_task(&mut traffic).await;
    dns_follower.abort();
    if tokio::time::timeout(DRAIN_TIMEOUT, &mut server)
        .await
        .is_err()
    {
        tracing::warn!("HTTP requests still running after {DRAIN_TIMEOUT:?}; aborting them");
        server.abort();
    }
    if !hub
        .wait_node_sessions_closed(NODE_SESSION_CLOSE_TIMEOUT)
        .await
    {
        tracing::warn!("some node sessions did not close in time");
    }
    store.close().await;
    tracing::info!("control stopped");
    Ok(())
}

/// Serves `GET /metrics` (Prometheus, OpenMetrics text) on `listener` until Control stops.
async fn serve_metrics(
    listener: tokio::net::TcpListener,
    hub: std::sync::Arc<Hub>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let addr = listener.local_addr().ok();
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || async move {
            (
                [(
                    axum::http::header::CONTENT_TYPE,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                )],
                hub.metrics().encode(),
            )
        }),
    );
    tracing::info!(?addr, "serving Prometheus metrics at /metrics");
    let served = axum::serve(listener, app).with_graceful_shutdown(async move {
        let _ = stop.wait_for(|stop| *stop).await;
    });
    if let Err(e) = served.await {
        tracing::error!(error = %e, "the metrics listener failed");
    }
}

/// Waits briefly for a background task told to stop (the leader gives its lead up, the
/// replication task clears this replica's node sessions), then aborts it.
async fn stop_task(lead: &mut tokio::task::JoinHandle<()>) {
    if tokio::time::timeout(std::time::Duration::from_secs(5), &mut *lead)
        .await
        .is_err()
    {
        lead.abort();
    }
}

/// Every route of Control: the API (JSON errors), the web UI (HTML pages) and the browser-facing
/// pages of per-tunnel access control (HTML, not JSON errors), with the security headers on
/// every response. Assembled here, at the top, so that none of the three imports another.
fn router(state: app::AppState) -> axum::Router {
    api::router()
        .merge(ui::router())
        .merge(access::authorize::routes())
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            app::count_request,
        ))
        .fallback(ui::not_found)
        .layer(axum::middleware::map_response(ui::security_headers))
        .with_state(state)
}

/// Creates the configured admin if no user exists yet; otherwise leaves the accounts alone.
async fn bootstrap_admin(
    config: &ControlConfig,
    store: &Store,
    passwords: &guard::hashing::Passwords,
) -> anyhow::Result<()> {
    let users = store.count_users().await?;
    match (&config.admin_email, &config.admin_password) {
        (Some(email), Some(password)) if users == 0 => {
            let email = validate::email(email)?;
            let hash = passwords.hash(password.clone()).await?;
            if store.bootstrap_admin(&email, &hash).await?.is_some() {
                tracing::info!(%email, "created the first admin account");
            }
        }
        _ if users == 0 => tracing::warn!(
            "no user exists yet: set admin_email and admin_password to create the first admin"
        ),
        _ => {}
    }
    Ok(())
}

/// Creates the data directory owner-only (0700) when missing; an existing one is left as it is.
async fn create_private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    let mut builder = tokio::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    builder.mode(0o700);
    builder.create(dir).await
}
