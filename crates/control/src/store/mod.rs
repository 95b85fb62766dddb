//! The database: opening SQLite (WAL, foreign keys, busy timeout), versioned migrations, and the
//! queries of every table, one submodule per table.
//!
//! Every mutation runs in one transaction that validates, allocates and writes, so a failed
//! request leaves nothing behind. Queries use `$n` placeholders to stay portable to PostgreSQL.

pub mod access;
mod agents;
mod alloc;
mod audit;
mod backup;
pub mod backup_key;
mod certs;
mod device_logins;
mod dns;
mod gateways;
pub mod limits;
mod logins;
mod nodes;
mod overlap;
mod quotas;
mod replicas;
mod schema;

pub use backup::Restored;
pub use schema::Plan as MigrationPlan;
mod settings;
mod temporary;
mod tokens;
mod tunnels;
mod users;

pub use access::{AccessKeyRow, PublishedAccess};
pub use agents::AgentRow;
pub use audit::{Actor, AuditRow};
pub use certs::{AcmeOrderRow, CertRow, NewCert};
pub use device_logins::{DevicePoll, NewDeviceLogin, StartRefused};
pub use dns::DnsZoneRow;
pub use gateways::{GatewayPatch, GatewayRow};
pub use limits::{LimitsPatch, TunnelLimits};
pub use logins::LoginSession;
pub use nodes::{NodeKind, NodeRef};
pub use quotas::{Quotas, MAX_ALLOW_LIST_ENTRIES};
pub use replicas::{ReplicaRow, MAX_AGENTS_PER_TUNNEL};
pub use settings::OPEN_REGISTRATION;
pub use temporary::TemporaryRow;
pub use tokens::TokenRow;
pub(crate) use tunnels::COLUMNS as TUNNEL_COLUMNS;
pub use tunnels::{
    NewTunnel, PortRules, StreamSettings, TunnelPatch, TunnelRow, DEFAULT_PORT_RANGE,
};
pub use users::UserRow;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Sqlite, SqlitePool, Transaction};
use std::path::Path;
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

/// Handle to the database; cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    pool: SqlitePool,
}

impl Store {
    /// Opens (creating if missing) the SQLite database at `url` and applies pending migrations.
    pub async fn open(url: &str) -> StoreResult<Self> {
        // Each connection to an in-memory database is a separate database: keep exactly one.
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        let options = SqliteConnectOptions::from_str(url)?;
        if !in_memory {
            owner_only(options.get_filename())?;
        }
        Self::connect(options, in_memory).await
    }

    /// Opens (creating if missing) the SQLite database file at `path` and applies pending migrations.
    pub async fn open_file(path: &Path) -> StoreResult<Self> {
        owner_only(path)?;
        Self::connect(SqliteConnectOptions::new().filename(path), false).await
    }

    /// Where the database at `url` (or the SQLite file `file` when `url` is `None`) stands
    /// against this binary's migrations, without changing it. `Ok(None)`: no database file yet.
    pub async fn migration_plan(
        url: Option<&str>,
        file: &Path,
    ) -> StoreResult<Option<MigrationPlan>> {
        let options = match url {
            Some(url) => SqliteConnectOptions::from_str(url)?,
            None => SqliteConnectOptions::new().filename(file),
        };
        let path = options.get_filename().to_path_buf();
        if !path.exists() {
            return Ok(None);
        }
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options.create_if_missing(false).read_only(true))
            .await?;
        let plan = schema::plan(&pool, &sqlx::migrate!(), Some(&path)).await;
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
        let options = match url {
            Some(url) => SqliteConnectOptions::from_str(url)?,
            None => SqliteConnectOptions::new().filename(file),
        };
        if !options.get_filename().exists() {
            return Err(StoreError::Invalid(format!(
                "no database at {}: nothing to back up",
                options.get_filename().display()
            )));
        }
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(
                options
                    .create_if_missing(false)
                    .busy_timeout(Duration::from_secs(5)),
            )
            .await?;
        let schema: (Option<i64>,) =
            sqlx::query_as("SELECT MAX(version) FROM _sqlx_migrations WHERE success = TRUE")
                .fetch_one(&pool)
                .await?;
        let result = backup::create(&pool, data_dir, out, schema.0.unwrap_or(0), key).await;
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
        backup::create(&self.pool, data_dir, out, schema.0.unwrap_or(0), key).await
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

    /// [`Store::open_file`] with other migrations (an older release's, in tests).
    #[cfg(test)]
    pub async fn open_file_with(
        path: &Path,
        migrator: &sqlx::migrate::Migrator,
    ) -> StoreResult<Self> {
        owner_only(path)?;
        let pool = Self::pool_for(SqliteConnectOptions::new().filename(path), false).await?;
        schema::migrate(&pool, migrator, Some(path)).await?;
        Ok(Self { pool })
    }

    async fn connect(options: SqliteConnectOptions, in_memory: bool) -> StoreResult<Self> {
        let file = (!in_memory).then(|| options.get_filename().to_path_buf());
        let pool = Self::pool_for(options, in_memory).await?;
        schema::migrate(&pool, &sqlx::migrate!(), file.as_deref()).await?;
        Ok(Self { pool })
    }

    async fn pool_for(options: SqliteConnectOptions, in_memory: bool) -> StoreResult<SqlitePool> {
        let options = options
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(if in_memory { 1 } else { 8 })
            .connect_with(options)
            .await?;
        Ok(pool)
    }

    pub(crate) fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Starts a write transaction. `BEGIN IMMEDIATE` takes SQLite's write lock up front, so
    /// read-then-write allocations (addresses, ports) cannot interleave or fail with SQLITE_BUSY.
    pub(crate) async fn write_tx(&self) -> StoreResult<Transaction<'static, Sqlite>> {
        Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?)
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
