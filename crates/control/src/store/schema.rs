//! Safe upgrades of the database schema (issue #18): before a binary applies migrations to a
//! database that already holds data, it copies the database (`VACUUM INTO`, consistent while
//! other connections write) to `backups/pre-migration-v<from>-to-v<to>-<time>.db` beside it; and
//! a binary never opens a database whose schema is newer than the migrations it knows — that is
//! a rollback, and the message says which backup brings the older schema back.

use super::{Backend, StoreError, StoreResult};
use sqlx::migrate::Migrator;
use sqlx::AnyPool;
use std::path::{Path, PathBuf};

/// What a pre-migration backup is called: `pre-migration-v10-to-v11-20261202T170000Z.db`.
const PREFIX: &str = "pre-migration-v";

/// Checks the database's schema against `migrator` and, when migrations are pending on a
/// database that has some already, backs it up next to `db_file` first; then migrates.
pub async fn migrate(
    pool: &AnyPool,
    backend: Backend,
    migrator: &Migrator,
    db_file: Option<&Path>,
) -> StoreResult<()> {
    let Plan {
        current,
        known,
        pending,
    } = plan(pool, backend, migrator, db_file).await?;
    if let (Some(from), Some(file), false) = (current, db_file, pending.is_empty()) {
        let path = backup(pool, file, from, known).await?;
        tracing::info!(backup = %path.display(), from, to = known,
            "database schema upgrade: copied the database first (restore it to roll back)");
    }
    migrator.run(pool).await?;
    Ok(())
}

/// Where a database stands against this binary's migrations (`kakuremichi control migrate`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The newest migration applied, `None` for an empty database.
    pub current: Option<i64>,
    /// The newest migration this binary knows.
    pub known: i64,
    /// The migrations this binary would apply: version and description, in order.
    pub pending: Vec<(i64, String)>,
}

/// The plan for the database behind `pool`; an error when its schema is newer than `migrator`.
pub async fn plan(
    pool: &AnyPool,
    backend: Backend,
    migrator: &Migrator,
    db_file: Option<&Path>,
) -> StoreResult<Plan> {
    let applied = applied_versions(pool, backend).await?;
    let known = migrator.iter().map(|m| m.version).max().unwrap_or(0);
    let current = applied.iter().copied().max();
    if let Some(newest) = current.filter(|&v| v > known) {
        return Err(StoreError::SchemaTooNew(too_new_message(
            newest, known, db_file,
        )));
    }
    let pending = migrator
        .iter()
        .filter(|m| !applied.contains(&m.version))
        .map(|m| (m.version, m.description.to_string()))
        .collect();
    Ok(Plan {
        current,
        known,
        pending,
    })
}

async fn applied_versions(pool: &AnyPool, backend: Backend) -> StoreResult<Vec<i64>> {
    let exists = match backend {
        Backend::Sqlite => {
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'"
        }
        Backend::Postgres => {
            "SELECT CAST(table_name AS TEXT) FROM information_schema.tables \
             WHERE table_schema = current_schema() AND table_name = '_sqlx_migrations'"
        }
    };
    let exists: Option<(String,)> = sqlx::query_as(exists).fetch_optional(pool).await?;
    if exists.is_none() {
        return Ok(Vec::new());
    }
    let rows: Vec<(i64,)> =
        sqlx::query_as("SELECT version FROM _sqlx_migrations WHERE success = TRUE")
            .fetch_all(pool)
            .await?;
    Ok(rows.into_iter().map(|(v,)| v).collect())
}

/// The backups directory beside the database file.
fn backups_dir(db_file: &Path) -> PathBuf {
    db_file
        .parent()
        .unwrap_or_else(|| Path::new("."))
        .join("backups")
}

async fn backup(pool: &AnyPool, db_file: &Path, from: i64, to: i64) -> StoreResult<PathBuf> {
    let dir = backups_dir(db_file);
    let io = |what: &str, e: std::io::Error| {
        StoreError::Db(sqlx::Error::Configuration(
            format!("cannot back up the database before upgrading it ({what}): {e}").into(),
        ))
    };
    std::fs::create_dir_all(&dir).map_err(|e| io(&dir.display().to_string(), e))?;
    let stamp = super::now().replace([':', '-'], "");
    let path = dir.join(format!("{PREFIX}{from}-to-v{to}-{stamp}.db"));
    let target = path
        .to_str()
        .ok_or_else(|| io("path", std::io::Error::other("not UTF-8")))?;
    sqlx::query("VACUUM INTO $1")
        .bind(target)
        .execute(pool)
        .await?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| io(target, e))?;
    }
    Ok(path)
}

fn too_new_message(database: i64, binary: i64, db_file: Option<&Path>) -> String {
    let mut message = format!(
        "the database schema is version {database}, newer than this kakuremichi knows (version \
         {binary}): a newer release upgraded it. Run that release again"
    );
    let backups: Vec<PathBuf> = db_file
        .map(backups_dir)
        .and_then(|dir| std::fs::read_dir(dir).ok())
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("{PREFIX}{binary}-to-")))
        })
        .collect();
    match backups.iter().max() {
        Some(path) => message.push_str(&format!(
            ", or, to go back to this release, stop Control and replace the database with the \
             backup made before the upgrade: {}",
            path.display()
        )),
        None => message.push_str(
            ", or restore a backup made by this release (no pre-migration backup was found \
             beside the database)",
        ),
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;
    use std::borrow::Cow;

    /// The migrations of this binary up to (not including) the last one: an older release.
    fn older() -> Migrator {
        let all = sqlx::migrate!("./migrations/sqlite");
        let n = all.migrations.len() - 1;
        Migrator {
            migrations: Cow::Owned(all.migrations[..n].to_vec()),
            ..sqlx::migrate!("./migrations/sqlite")
        }
    }

    fn last_version() -> i64 {
        sqlx::migrate!("./migrations/sqlite")
            .iter()
            .map(|m| m.version)
            .max()
            .unwrap()
    }

    #[tokio::test]
    async fn an_upgrade_backs_up_first_and_a_rollback_is_refused_with_the_backup_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("control.db");
        let (to, from) = (last_version(), last_version() - 1);
        // An older release's database, with a user in it.
        let store = Store::open_file_with(&file, &older()).await.unwrap();
        store
            .create_user("a@example.com", "x", true, true)
            .await
            .unwrap();
        store.close().await;
        // Opening it with this release: a copy first, holding the user, at the old schema.
        let store = Store::open_file(&file).await.unwrap();
        store.close().await;
        let backups: Vec<PathBuf> = std::fs::read_dir(dir.path().join("backups"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(backups.len(), 1, "{backups:?}");
        let name = backups[0]
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        assert!(
            name.starts_with(&format!("pre-migration-v{from}-to-v{to}-")),
            "{name}"
        );
        let copy = Store::open_file_with(&backups[0], &older()).await.unwrap();
        assert_eq!(copy.count_users().await.unwrap(), 1);
        copy.close().await;
        // Opening again migrates nothing and copies nothing. (Only the copies count: opening one
        // above may leave SQLite's -wal/-shm files beside it until its last connection is gone.)
        Store::open_file(&file).await.unwrap().close().await;
        let copies = std::fs::read_dir(dir.path().join("backups"))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|x| x == "db")
            })
            .count();
        assert_eq!(copies, 1);

        // The older release refuses the upgraded database and names the backup.
        let err = Store::open_file_with(&file, &older())
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains(&format!("schema is version {to}")), "{err}");
        assert!(err.contains(&format!("knows (version {from})")), "{err}");
        assert!(err.contains(&name), "{err}");
    }

    #[tokio::test]
    async fn a_new_database_needs_no_backup() {
        let dir = tempfile::tempdir().unwrap();
        Store::open_file(&dir.path().join("control.db"))
            .await
            .unwrap();
        assert!(!dir.path().join("backups").exists());
    }
}
