//! The database: opening SQLite (WAL, foreign keys, busy timeout), versioned migrations, and the
//! queries of every table, one submodule per table.
//!
//! Every mutation runs in one transaction that validates, allocates and writes, so a failed
//! request leaves nothing behind. Queries use `$n` placeholders to stay portable to PostgreSQL.

pub mod access;
mod agents;
mod alerts;
mod alloc;
mod api_rate;
mod audit;
mod backup;
pub mod backup_key;
mod certs;
pub mod changes;
pub mod copy;
mod device_logins;
mod dns;
mod gateways;
pub mod leader;
pub mod limits;
mod logins;
mod nodes;
mod overlap;
#[cfg(test)]
mod postgres_tests;
mod presence;
mod quotas;
mod replicas;
mod schema;

pub use backup::Restored;
pub use schema::Plan as MigrationPlan;
mod settings;
mod temporary;
mod throttle;
mod tokens;
pub mod traffic;
mod tunnels;
mod users;

pub use access::{AccessKeyRow, PublishedAccess};
pub use agents::AgentRow;
pub use alerts::{AlertChannelRow, AlertRow, NewAlertChannel};
pub use audit::{Actor, AuditRow};
pub use certs::{lacks_certificate, shown_cert, AcmeOrderRow, CertRow, NewCert};
pub use device_logins::{DevicePoll, NewDeviceLogin, StartRefused};
pub use dns::DnsZoneRow;
pub use gateways::{GatewayPatch, GatewayRow};
pub use limits::{LimitsPatch, TunnelLimits};
pub use logins::LoginSession;
pub use nodes::{NodeKind, NodeRef};
pub use quotas::{Quotas, MAX_ALLOW_LIST_ENTRIES};
pub use replicas::{ReplicaRow, MAX_AGENTS_PER_TUNNEL};
pub use settings::{ERROR_PAGE, OPEN_REGISTRATION};
pub use temporary::TemporaryRow;
pub use throttle::ThrottleRow;
pub use tokens::TokenRow;
pub(crate) use tunnels::COLUMNS as TUNNEL_COLUMNS;
pub use tunnels::{
    NewTunnel, PortRules, StreamSettings, TunnelPatch, TunnelRow, DEFAULT_PORT_RANGE,
};
pub use users::UserRow;

/// The driver behind the store: sqlx's `Any`, so one set of queries runs on both [`Backend`]s.
pub(crate) type Db = sqlx::Any;
/// A transaction on the store's database.
pub(crate) type Tx = Transaction<'static, Db>;

use sqlx::any::AnyPoolOptions;
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::AnyPool;
use sqlx::Transaction;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Why a store operation failed. The API maps each variant to one status code.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("not found")]
    NotFound,
    /// The request contradicts existing data (duplicate hostname, agent still in use...).
    #[error("{0}")]
    Conflict(String),
    /// A node presented a WireGuard public key that another node holds.
    #[error("this WireGuard public key is already used by {0}")]
    KeyInUse(NodeRef),
    /// The request references something that does not exist (e.g. an unknown agent_id).
    #[error("{0}")]
    Invalid(String),
    /// The write would exceed a per-user quota; the message names it and its limit.
    #[error("{0}")]
    Quota(String),
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The database was upgraded by a newer release; the message says how to go back.
    #[error("{0}")]
    SchemaTooNew(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Creates the database file owner-only (0600) before SQLite opens it, and tightens an existing
/// one: it holds the ACME account key and the access-token signing keys. SQLite gives its `-wal`
/// and `-shm` files the database file's mode.
fn owner_only(path: &Path) -> StoreResult<()> {
    let fail = |e: std::io::Error| {
        StoreError::Db(sqlx::Error::Configuration(
            format!("cannot create the database file {}: {e}", path.display()).into(),
        ))
    };
    let mut options = std::fs::OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
        options.mode(0o600);
        let file = options.open(path).map_err(fail)?;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(fail)?;
    }
    #[cfg(not(unix))]
    options.open(path).map_err(fail)?;
    Ok(())
}

/// Which database engine a [`Store`] runs on. The queries are the same on both (`$n`
/// placeholders, standard SQL, timestamps as text); the schema has one migration folder each,
/// because their DDL differs (`AUTOINCREMENT` against identity columns, `BLOB` against `BYTEA`,
/// 64-bit integers everywhere on PostgreSQL) and SQLite databases in use hold the checksums of
/// their migration files, which must never change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// A file (or memory) database, embedded: the default, for one Control.
    Sqlite,
    /// A PostgreSQL server: for several Control replicas sharing one database.
    Postgres,
}

impl Backend {
    /// The engine a `DATABASE_URL` names: `sqlite:` or `postgres://` / `postgresql://`.
    pub fn of_url(url: &str) -> Option<Self> {
        if url.starts_with("sqlite:") {
            Some(Self::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Some(Self::Postgres)
        } else {
            None
        }
    }

    /// This engine's migrations.
    pub fn migrator(self) -> sqlx::migrate::Migrator {
        match self {
            Self::Sqlite => sqlx::migrate!("./migrations/sqlite"),
            Self::Postgres => sqlx::migrate!("./migrations/postgres"),
        }
    }
}

/// How Control connects to PostgreSQL (SQLite ignores it): pool size and statement timeout.
/// TLS is chosen in the URL (`?sslmode=verify-full&sslrootcert=...`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolOptions {
    /// Connections per Control replica.
    pub max_connections: u32,
    /// Longest a single statement may run before PostgreSQL cancels it.
    pub statement_timeout: Duration,
}

impl Default for PoolOptions {
    fn default() -> Self {
        Self {
            max_connections: 10,
            statement_timeout: Duration::from_secs(10),
        }
    }
}

/// Handle to the database; cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// PostgreSQL's URL, for the listener of other replicas' changes (`changes`).
    url: Option<SecretUrl>,
}

/// A database URL, whose password never shows in `Debug`.
#[derive(Clone)]
struct SecretUrl(std::sync::Arc<str>);

impl std::fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&crate::secrets::mask_url_password(&self.0))
    }
}

impl std::ops::Deref for SecretUrl {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

/// A `sqlite://` URL for the file at `path`, its name percent-encoded (sqlx decodes it).
fn sqlite_url(path: &Path, mode: &str) -> String {
    let mut url = String::from("sqlite://");
    for &b in path.as_os_str().as_encoded_bytes() {
        if b.is_ascii_alphanumeric() || b"/._-~".contains(&b) {
            url.push(b as char);
        } else {
            url.push_str(&format!("%{b:02X}"));
        }
    }
    url.push_str("?mode=");
    url.push_str(mode);
    url
}

/// The SQLite file a `sqlite:` URL names, `None` for an in-memory database.
fn sqlite_file(url: &str) -> StoreResult<Option<PathBuf>> {
    let options = SqliteConnectOptions::from_str(url)?;
    let in_memory = url.contains(":memory:") || url.contains("mode=memory");
    Ok((!in_memory).then(|| options.get_filename().to_path_buf()))
}

fn unsupported(url: &str) -> StoreError {
    StoreError::Invalid(format!(
        "database URL {:?} is not supported: use sqlite:... or postgres://...",
        crate::secrets::mask_url_password(url)
    ))
}

impl Store {
    /// Opens (creating if missing) the database at `url` (`sqlite:` or `postgres://`) and
    /// applies pending migrations.
    pub async fn open(url: &str) -> StoreResult<Self> {
        Self::open_with(url, PoolOptions::default()).await
    }

    /// [`Store::open`] with PostgreSQL pool settings.
    pub async fn open_with(url: &str, options: PoolOptions) -> StoreResult<Self> {
        match Backend::of_url(url).ok_or_else(|| unsupported(url))? {
            Backend::Sqlite => match sqlite_file(url)? {
                Some(file) => Self::open_file(&file).await,
                // Each connection to an in-memory database is a separate database: keep one.
                None => {
                    let pool = sqlite_pool(url, 1).await?;
                    Self::migrated(pool, Backend::Sqlite, None, &Backend::Sqlite.migrator()).await
                }
            },
            Backend::Postgres => {
                let pool = postgres_pool(url, options).await?;
                let migrator = Backend::Postgres.migrator();
                let mut store = Self::migrated(pool, Backend::Postgres, None, &migrator).await?;
                store.url = Some(SecretUrl(url.into()));
                Ok(store)
            }
        }
    }

    /// Opens (creating if missing) the SQLite database file at `path` and applies pending migrations.
    pub async fn open_file(path: &Path) -> StoreResult<Self> {
        Self::open_file_with(path, &Backend::Sqlite.migrator()).await
    }

    /// A new SQLite file to be filled and then read as a whole (a backup of a PostgreSQL
    /// database): one connection, no write-ahead log, so every commit is in the file itself.
    pub(crate) async fn create_file_for_copy(path: &Path) -> StoreResult<Self> {
        owner_only(path)?;
        let pool = sqlite_pool_with(&sqlite_url(path, "rwc"), 1, false).await?;
        Self::migrated(pool, Backend::Sqlite, None, &Backend::Sqlite.migrator()).await
    }

    /// [`Store::open_file`] with other migrations (an older release's, in tests).
    pub(crate) async fn open_file_with(
        path: &Path,
        migrator: &sqlx::migrate::Migrator,
    ) -> StoreResult<Self> {
        owner_only(path)?;
        let pool = sqlite_pool(&sqlite_url(path, "rwc"), 8).await?;
        Self::migrated(pool, Backend::Sqlite, Some(path), migrator).await
    }

    async fn migrated(
        pool: AnyPool,
        backend: Backend,
        file: Option<&Path>,
        migrator: &sqlx::migrate::Migrator,
    ) -> StoreResult<Self> {
        schema::migrate(&pool, backend, migrator, file).await?;
        Ok(Self {
            pool,
            backend,
            url: None,
        })
    }

    /// Where the database at `url` (or the SQLite file `file` when `url` is `None`) stands
    /// against this binary's migrations, without changing it. `Ok(None)`: no database file yet.
    pub async fn migration_plan(
        url: Option<&str>,
        file: &Path,
    ) -> StoreResult<Option<MigrationPlan>> {
        if let Some(url) = url.filter(|u| Backend::of_url(u) == Some(Backend::Postgres)) {
            let options = PoolOptions {
                max_connections: 1,
                ..PoolOptions::default()
            };
            let pool = postgres_pool(url, options).await?;
            let migrator = Backend::Postgres.migrator();
            let plan = schema::plan(&pool, Backend::Postgres, &migrator, None).await;
            pool.close().await;
            return plan.map(Some);
        }
        let path = match url {
            Some(url) => sqlite_file(url)?.ok_or_else(|| {
                StoreError::Invalid("an in-memory database has no migrations to plan".into())
            })?,
            None => file.to_path_buf(),
        };
        if !path.exists() {
            return Ok(None);
        }
        let pool = sqlite_pool(&sqlite_url(&path, "ro"), 1).await?;
        let migrator = Backend::Sqlite.migrator();
        let plan = schema::plan(&pool, Backend::Sqlite, &migrator, Some(&path)).await;
        pool.close().await;
        plan.map(Some)
    }

    /// Writes a backup of the database at `url` (or the SQLite file `file`) and of `data_dir`'s
    /// other state to `out`, while Control may be running (see `backup`).
    pub async fn backup(
        url: Option<&str>,
        file: &Path,
        data_dir: &Path,
        out: &Path,
        key: Option<&backup_key::BackupKey>,
    ) -> StoreResult<()> {
        let path = match url {
            Some(url) if Backend::of_url(url) == Some(Backend::Postgres) => {
                // As it is: a backup never migrates the database it copies.
                let options = PoolOptions {
                    max_connections: 2,
                    ..PoolOptions::default()
                };
                let store = Self {
                    pool: postgres_pool(url, options).await?,
                    backend: Backend::Postgres,
                    url: None,
                };
                let result = store.backup_now(data_dir, out, key).await;
                store.close().await;
                return result;
            }
            Some(url) => sqlite_file(url)?
                .ok_or_else(|| StoreError::Invalid("an in-memory database has no backup".into()))?,
            None => file.to_path_buf(),
        };
        if !path.exists() {
            return Err(StoreError::Invalid(format!(
                "no database at {}: nothing to back up",
                path.display()
            )));
        }
        let pool = sqlite_pool(&sqlite_url(&path, "rw"), 1).await?;
        let result = Self {
            pool: pool.clone(),
            backend: Backend::Sqlite,
            url: None,
        }
        .backup_now(data_dir, out, key)
        .await;
        pool.close().await;
        result
    }

    /// Writes a backup of this database and of `data_dir`'s other state to `out`.
    pub async fn backup_now(
        &self,
        data_dir: &Path,
        out: &Path,
        key: Option<&backup_key::BackupKey>,
    ) -> StoreResult<()> {
        let schema: (Option<i64>,) =
            sqlx::query_as("SELECT MAX(version) FROM _sqlx_migrations WHERE success = TRUE")
                .fetch_one(&self.pool)
                .await?;
        backup::create(self, data_dir, out, schema.0.unwrap_or(0), key).await
    }

    /// Restores a backup made by [`Store::backup`] into `data_dir` (see `backup`).
    pub async fn restore(
        file: &Path,
        data_dir: &Path,
        force: bool,
        key: Option<&backup_key::BackupKey>,
    ) -> StoreResult<Restored> {
        backup::restore(file, data_dir, force, key).await
    }

    /// The engine behind this store.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub(crate) fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Starts a write transaction that no other writer interleaves with, so read-then-write
    /// allocations (addresses, ports) cannot collide. SQLite: `BEGIN IMMEDIATE` takes the write
    /// lock up front (no SQLITE_BUSY halfway). PostgreSQL: a transaction-scoped advisory lock,
    /// which also serializes writers on other Control replicas.
    pub(crate) async fn write_tx(&self) -> StoreResult<Tx> {
        match self.backend {
            Backend::Sqlite => Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?),
            Backend::Postgres => {
                let mut tx = self.pool.begin().await?;
                sqlx::query("SELECT pg_advisory_xact_lock($1)")
                    .bind(WRITE_LOCK)
                    .execute(&mut *tx)
                    .await?;
                Ok(tx)
            }
        }
    }

    /// `SELECT 1`, for readiness.
    pub async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// The advisory lock key every write transaction takes on PostgreSQL ("kmwrite").
const WRITE_LOCK: i64 = 0x006b_6d77_7269_7465;

/// A pool on a SQLite URL: WAL (readers never wait for the writer), foreign keys on, and a
/// busy timeout so a reader waits for a checkpoint instead of failing.
async fn sqlite_pool(url: &str, max_connections: u32) -> StoreResult<AnyPool> {
    sqlite_pool_with(url, max_connections, !url.contains("mode=ro")).await
}

/// [`sqlite_pool`], in WAL mode or not (`wal` false: a read-only pool, or a file written once
/// and then read as a whole, whose every commit must be in the file itself).
async fn sqlite_pool_with(url: &str, max_connections: u32, wal: bool) -> StoreResult<AnyPool> {
    sqlx::any::install_default_drivers();
    Ok(AnyPoolOptions::new()
        .max_connections(max_connections)
        .after_connect(move |conn, _| {
            Box::pin(async move {
                if wal {
                    sqlx::query("PRAGMA journal_mode = WAL")
                        .execute(&mut *conn)
                        .await?;
                    sqlx::query("PRAGMA synchronous = NORMAL")
                        .execute(&mut *conn)
                        .await?;
                }
                sqlx::query("PRAGMA foreign_keys = ON")
                    .execute(&mut *conn)
                    .await?;
                sqlx::query("PRAGMA busy_timeout = 5000")
                    .execute(&mut *conn)
                    .await?;
                Ok(())
            })
        })
        .connect(url)
        .await?)
}

/// A pool on a PostgreSQL URL, every session with `options`' statement timeout.
async fn postgres_pool(url: &str, options: PoolOptions) -> StoreResult<AnyPool> {
    sqlx::any::install_default_drivers();
    let timeout_ms = options.statement_timeout.as_millis().max(1);
    Ok(AnyPoolOptions::new()
        .max_connections(options.max_connections.max(1))
        // A healthy pool hands out a connection in milliseconds; waiting longer means the
        // database is gone (or Control overloaded): fail fast, so readiness and node sessions
        // notice (a replica without its database must not keep nodes on a stale config).
        .acquire_timeout(Duration::from_secs(3))
        .after_connect(move |conn, _| {
            Box::pin(async move {
                sqlx::query("SELECT set_config('statement_timeout', $1, false)")
                    .bind(timeout_ms.to_string())
                    .execute(&mut *conn)
                    .await?;
                Ok(())
            })
        })
        .connect(url)
        .await?)
}

/// Current time as stored: RFC 3339 UTC, whole seconds.
pub fn now() -> String {
    timestamp(OffsetDateTime::now_utc())
}

/// RFC 3339 UTC, whole seconds, e.g. `2025-01-31T12:00:00Z`. Fixed width, so text order is time order.
pub fn timestamp(t: OffsetDateTime) -> String {
    let t = t
        .to_offset(time::UtcOffset::UTC)
        .replace_nanosecond(0)
        .unwrap_or(t);
    t.format(&Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".to_string())
}

/// Current time in Unix milliseconds (login throttle counts, replica heartbeats).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Time `d` from now, formatted like [`now`].
pub fn from_now(d: time::Duration) -> String {
    timestamp(OffsetDateTime::now_utc() + d)
}

/// True when a database error is a UNIQUE constraint violation.
fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_unique_violation())
}

/// True when a database error is a FOREIGN KEY constraint violation.
fn is_foreign_key_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_foreign_key_violation())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_fixed_width_utc() {
        let t = now();
        assert_eq!(t.len(), 20, "{t}");
        assert!(t.ends_with('Z'));
        assert!(from_now(time::Duration::days(7)) > t);
    }

    #[tokio::test]
    async fn opens_in_memory_and_migrates() {
        let store = Store::open("sqlite::memory:").await.unwrap();
        store.ping().await.unwrap();
        assert_eq!(store.count_users().await.unwrap(), 0);
    }
}
