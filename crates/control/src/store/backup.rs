//! One backup file holds everything needed to rebuild Control (issue #18): a consistent copy of
//! the database (`VACUUM INTO`, taken while Control runs and writes; from PostgreSQL, every row
//! copied from one snapshot into a new SQLite database, see `copy`), and inside it two extra
//! tables — the data directory's files that are not in the database (`secrets.key`, the internal
//! CA) with their SHA-256, and a manifest (format, release, schema version, time). The file is a
//! SQLite database itself, so `sqlite3` can inspect it; a `<file>.sha256` beside it (the
//! `sha256sum` format) lets a restore refuse a damaged or altered copy. With
//! `KAKUREMICHI_BACKUP_KEY` the file is encrypted (see `backup_key`) and the checksum is of
//! what is on disk.

use super::backup_key::{self, BackupKey};
use super::{now, StoreError, StoreResult};
use sha2::Digest as _;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use sqlx::SqlitePool;
use std::path::{Path, PathBuf};

/// The data directory's files a backup carries besides the database, when they exist.
pub const FILES: &[&str] = &[
    "secrets.key",
    "internal-ca/root.crt",
    "internal-ca/root.key",
];
const FORMAT: &str = "1";

fn fail(what: impl std::fmt::Display) -> StoreError {
    StoreError::Invalid(what.to_string())
}

async fn open(path: &Path, create: bool) -> StoreResult<SqlitePool> {
    let options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(create);
    Ok(SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await?)
}

fn sha256(bytes: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(bytes))
}

/// Writes a backup of the database behind `live` and of `data_dir`'s [`FILES`] to `out`,
/// encrypted with `key` when there is one.
pub async fn create(
    live: &super::Store,
    data_dir: &Path,
    out: &Path,
    schema: i64,
    key: Option<&BackupKey>,
) -> StoreResult<()> {
    if out.exists() {
        return Err(fail(format!(
            "{} already exists; choose another --out",
            out.display()
        )));
    }
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .map_err(|e| fail(format!("cannot create {}: {e}", parent.display())))?;
    }
    let partial = out.with_extension("partial");
    let _ = std::fs::remove_file(&partial);
    let target = partial
        .to_str()
        .ok_or_else(|| fail("the backup path is not UTF-8"))?;
    match live.backend() {
        super::Backend::Sqlite => {
            sqlx::query("VACUUM INTO $1")
                .bind(target)
                .execute(live.pool())
                .await?;
        }
        // PostgreSQL: every row copied into a new SQLite database at the same schema, so
        // the backup has one format whatever the engine (and restores into SQLite, from
        // where `control migrate-db` takes it back to PostgreSQL).
        super::Backend::Postgres => {
            let copy = super::Store::create_file_for_copy(&partial).await?;
            let copied = super::copy::copy_all(live, &copy).await;
            copy.close().await;
            copied?;
        }
    }
    let copy = open(&partial, false).await?;
    let filled = fill(&copy, data_dir, schema).await;
    copy.close().await;
    filled?;
    let mut bytes =
        std::fs::read(&partial).map_err(|e| fail(format!("cannot read the backup: {e}")))?;
    if let Some(key) = key {
        bytes = backup_key::encrypt(key, bytes).map_err(fail)?;
        std::fs::write(&partial, &bytes)
            .map_err(|e| fail(format!("cannot write the encrypted backup: {e}")))?;
    }
    let name = out.file_name().and_then(|n| n.to_str()).unwrap_or("backup");
    std::fs::write(sidecar(out), format!("{}  {name}\n", sha256(&bytes)))
        .map_err(|e| fail(format!("cannot write the checksum: {e}")))?;
    private(&partial)?;
    std::fs::rename(&partial, out)
        .map_err(|e| fail(format!("cannot finish {}: {e}", out.display())))?;
    Ok(())
}

async fn fill(copy: &SqlitePool, data_dir: &Path, schema: i64) -> StoreResult<()> {
    sqlx::query(
        "CREATE TABLE kakuremichi_backup_files (name TEXT PRIMARY KEY, content BLOB NOT NULL, \
         sha256 TEXT NOT NULL)",
    )
    .execute(copy)
    .await?;
    sqlx::query(
        "CREATE TABLE kakuremichi_backup_manifest (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    )
    .execute(copy)
    .await?;
    for name in FILES {
        let Ok(content) = std::fs::read(data_dir.join(name)) else {
            continue;
        };
        sqlx::query(
            "INSERT INTO kakuremichi_backup_files (name, content, sha256) VALUES ($1, $2, $3)",
        )
        .bind(name)
        .bind(&content)
        .bind(sha256(&content))
        .execute(copy)
        .await?;
    }
    for (key, value) in [
        ("format", FORMAT.to_string()),
        ("release", env!("CARGO_PKG_VERSION").to_string()),
        ("schema_version", schema.to_string()),
        ("created", now()),
    ] {
        sqlx::query("INSERT INTO kakuremichi_backup_manifest (key, value) VALUES ($1, $2)")
            .bind(key)
            .bind(value)
            .execute(copy)
            .await?;
    }
    Ok(())
}

/// What a restore found in a backup's manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    pub created: String,
    pub release: String,
    pub schema_version: String,
    /// The data directory's files written back.
    pub files: Vec<String>,
}

/// Restores `file` (made by [`create`]) into `data_dir`: checks its checksum, decrypts it with
/// `key` if it is encrypted, refuses a data directory that has a database unless `force`,
/// writes the files back and the database last.
pub async fn restore(
    file: &Path,
    data_dir: &Path,
    force: bool,
    key: Option<&BackupKey>,
) -> StoreResult<Restored> {
    let mut bytes =
        std::fs::read(file).map_err(|e| fail(format!("cannot read {}: {e}", file.display())))?;
    let check = sidecar(file);
    let expected = std::fs::read_to_string(&check).map_err(|e| {
        fail(format!(
            "cannot read the checksum {} ({e}): it is written beside every backup; without it \
             the copy cannot be trusted",
            check.display()
        ))
    })?;
    let expected = expected.split_whitespace().next().unwrap_or_default();
    if expected != sha256(&bytes) {
        return Err(fail(format!(
            "{} does not match its checksum {}: the copy is damaged or was altered; nothing was restored",
            file.display(),
            check.display()
        )));
    }
    if backup_key::is_encrypted(&bytes) {
        bytes = backup_key::decrypt(key, bytes).map_err(fail)?;
    }
    let db = data_dir.join("control.db");
    if db.exists() && !force {
        return Err(fail(format!(
            "{} already holds a database: stop Control and pass --force to replace it, or restore \
             into an empty data directory",
            data_dir.display()
        )));
    }
    std::fs::create_dir_all(data_dir)
        .map_err(|e| fail(format!("cannot create {}: {e}", data_dir.display())))?;
    let staging = data_dir.join("control.db.restoring");
    let _ = std::fs::remove_file(&staging);
    std::fs::write(&staging, &bytes)
        .map_err(|e| fail(format!("cannot write {}: {e}", staging.display())))?;
    private(&staging)?;
    let pool = open(&staging, false).await?;
    let result = unpack(&pool, data_dir).await;
    pool.close().await;
    let restored = match result {
        Ok(r) => r,
        Err(e) => {
            let _ = std::fs::remove_file(&staging);
            return Err(e);
        }
    };
    for stale in ["control.db-wal", "control.db-shm"] {
        let _ = std::fs::remove_file(data_dir.join(stale));
    }
    std::fs::rename(&staging, &db)
        .map_err(|e| fail(format!("cannot put {} in place: {e}", db.display())))?;
    Ok(restored)
}

async fn unpack(pool: &SqlitePool, data_dir: &Path) -> StoreResult<Restored> {
    let manifest: Vec<(String, String)> =
        sqlx::query_as("SELECT key, value FROM kakuremichi_backup_manifest")
            .fetch_all(pool)
            .await
            .map_err(|_| fail("not a kakuremichi backup (no manifest)"))?;
    let get = |key: &str| {
        manifest
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    if get("format") != FORMAT {
        return Err(fail(format!(
            "backup format {:?} is not one this release reads ({FORMAT})",
            get("format")
        )));
    }
    let files: Vec<(String, Vec<u8>, String)> =
        sqlx::query_as("SELECT name, content, sha256 FROM kakuremichi_backup_files ORDER BY name")
            .fetch_all(pool)
            .await?;
    for (name, content, sum) in &files {
        if !FILES.contains(&name.as_str()) || sha256(content) != *sum {
            return Err(fail(format!(
                "the backup's file {name:?} is damaged or unexpected"
            )));
        }
    }
    for (name, content, _) in &files {
        let path = data_dir.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| fail(format!("cannot create {}: {e}", parent.display())))?;
        }
        std::fs::write(&path, content)
            .map_err(|e| fail(format!("cannot write {}: {e}", path.display())))?;
        private(&path)?;
    }
    sqlx::query("DROP TABLE kakuremichi_backup_files")
        .execute(pool)
        .await?;
    sqlx::query("DROP TABLE kakuremichi_backup_manifest")
        .execute(pool)
        .await?;
    Ok(Restored {
        created: get("created"),
        release: get("release"),
        schema_version: get("schema_version"),
        files: files.into_iter().map(|(n, _, _)| n).collect(),
    })
}

fn sidecar(file: &Path) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(".sha256");
    PathBuf::from(name)
}

fn private(path: &Path) -> StoreResult<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| fail(format!("cannot restrict {}: {e}", path.display())))?;
    }
    // Elsewhere the file inherits its directory's ACL (Control's data directory).
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}
