//! Copies every row of one database into another at the same schema version, across engines:
//! `kakuremichi control migrate-db` (SQLite to PostgreSQL, or back) and backups of a PostgreSQL
//! database (a backup is a SQLite file). Reads from one snapshot of the source; writes in one
//! transaction, so a failed copy leaves the destination empty; keeps ids and the id counters
//! (an id is never handed out twice); verifies the row counts afterwards.

use super::{Backend, Store, StoreError, StoreResult};
use futures_util::TryStreamExt as _;
use sqlx::any::{AnyRow, AnyTypeInfoKind};
use sqlx::{Column as _, Row as _, ValueRef as _};

/// Every table of the schema, parents before children (foreign keys hold at each insert).
/// `every_table_is_copied` fails when a migration adds a table that is not listed here.
pub const TABLES: &[&str] = &[
    "users",
    "sessions",
    "api_tokens",
    "agents",
    "gateways",
    "tunnels",
    "tunnel_replicas",
    "acme_accounts",
    "audit_log",
    "settings",
    "invitations",
    "access_keys",
    "access_grants",
    "certificates",
    "acme_orders",
    "dns_zones",
    "dns_records",
    "device_logins",
    "temporary_tunnels",
    "login_throttle",
    "traffic",
    "alerts",
    "alert_channels",
];

/// The tables whose `id` comes from a counter (AUTOINCREMENT, identity column).
const COUNTED: &[&str] = &[
    "users",
    "api_tokens",
    "agents",
    "gateways",
    "tunnels",
    "audit_log",
    "acme_orders",
    "dns_zones",
    "device_logins",
    "temporary_tunnels",
    "alerts",
    "alert_channels",
];

/// One column value, typed so that a NULL is bound with its column's type (PostgreSQL
/// refuses a BIGINT NULL for a TEXT column).
enum Value {
    Null(AnyTypeInfoKind),
    Bool(bool),
    Int(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

fn value(row: &AnyRow, i: usize, table: &str) -> StoreResult<Value> {
    let column = &row.columns()[i];
    let kind = column.type_info().kind();
    let bad =
        |e: sqlx::Error| StoreError::Invalid(format!("cannot copy {table}.{}: {e}", column.name()));
    if row.try_get_raw(i).map_err(bad)?.is_null() {
        return Ok(Value::Null(kind));
    }
    Ok(match kind {
        AnyTypeInfoKind::Bool => Value::Bool(row.try_get(i).map_err(bad)?),
        AnyTypeInfoKind::SmallInt | AnyTypeInfoKind::Integer | AnyTypeInfoKind::BigInt => {
            Value::Int(row.try_get(i).map_err(bad)?)
        }
        AnyTypeInfoKind::Real | AnyTypeInfoKind::Double => {
            Value::Real(row.try_get(i).map_err(bad)?)
        }
        AnyTypeInfoKind::Blob => Value::Blob(row.try_get(i).map_err(bad)?),
        AnyTypeInfoKind::Text | AnyTypeInfoKind::Null => Value::Text(row.try_get(i).map_err(bad)?),
    })
}

type Query<'q> = sqlx::query::Query<'q, super::Db, sqlx::any::AnyArguments<'q>>;

fn bind(query: Query<'_>, value: Value) -> Query<'_> {
    match value {
        Value::Null(AnyTypeInfoKind::Bool) => query.bind(None::<bool>),
        Value::Null(
            AnyTypeInfoKind::SmallInt | AnyTypeInfoKind::Integer | AnyTypeInfoKind::BigInt,
        ) => query.bind(None::<i64>),
        Value::Null(AnyTypeInfoKind::Real | AnyTypeInfoKind::Double) => query.bind(None::<f64>),
        Value::Null(AnyTypeInfoKind::Blob) => query.bind(None::<Vec<u8>>),
        Value::Null(_) => query.bind(None::<String>),
        Value::Bool(b) => query.bind(b),
        Value::Int(i) => query.bind(i),
        Value::Real(r) => query.bind(r),
        Value::Text(t) => query.bind(t),
        Value::Blob(b) => query.bind(b),
    }
}

/// The newest migration applied to `store`.
async fn schema_version(store: &Store) -> StoreResult<i64> {
    let (v,): (Option<i64>,) =
        sqlx::query_as("SELECT MAX(version) FROM _sqlx_migrations WHERE success = TRUE")
            .fetch_one(store.pool())
            .await?;
    Ok(v.unwrap_or(0))
}

async fn count(db: impl sqlx::Executor<'_, Database = super::Db>, table: &str) -> StoreResult<i64> {
    let (n,): (i64,) = sqlx::query_as(&format!("SELECT COUNT(*) FROM {table}"))
        .fetch_one(db)
        .await?;
    Ok(n)
}

/// The last id `table`'s counter handed out, `None` when it never did.
async fn last_id(tx: &mut super::Tx, backend: Backend, table: &str) -> StoreResult<Option<i64>> {
    let row: Option<(Option<i64>,)> = match backend {
        Backend::Sqlite => {
            sqlx::query_as("SELECT seq FROM sqlite_sequence WHERE name = $1")
                .bind(table)
                .fetch_optional(&mut **tx)
                .await?
        }
        Backend::Postgres => {
            sqlx::query_as(
                "SELECT CAST(last_value AS BIGINT) FROM pg_sequences \
                 WHERE schemaname = current_schema() AND sequencename = $1",
            )
            .bind(format!("{table}_id_seq"))
            .fetch_optional(&mut **tx)
            .await?
        }
    };
    Ok(row.and_then(|(v,)| v))
}

/// Makes `table`'s counter hand out ids after `last`.
async fn set_last_id(
    tx: &mut super::Tx,
    backend: Backend,
    table: &str,
    last: i64,
) -> StoreResult<()> {
    match backend {
        Backend::Sqlite => {
            let done = sqlx::query("UPDATE sqlite_sequence SET seq = $1 WHERE name = $2")
                .bind(last)
                .bind(table)
                .execute(&mut **tx)
                .await?;
            if done.rows_affected() == 0 {
                sqlx::query("INSERT INTO sqlite_sequence (name, seq) VALUES ($1, $2)")
                    .bind(table)
                    .bind(last)
                    .execute(&mut **tx)
                    .await?;
            }
        }
        Backend::Postgres => {
            sqlx::query(
                "SELECT CAST(setval(pg_get_serial_sequence($1, 'id'), $2, true) AS BIGINT)",
            )
            .bind(table)
            .bind(last)
            .execute(&mut **tx)
            .await?;
        }
    }
    Ok(())
}

/// Copies every row of `from` into `to`, which must be empty and at the same schema version.
/// Returns each table with its row count, the same on both sides.
pub async fn copy_all(from: &Store, to: &Store) -> StoreResult<Vec<(&'static str, i64)>> {
    let (source, target) = (schema_version(from).await?, schema_version(to).await?);
    if source != target {
        return Err(StoreError::Invalid(format!(
            "the source database is at schema version {source} and the destination at \
             {target}: open both with the same release first (kakuremichi control migrate)"
        )));
    }
    for table in TABLES {
        let n = count(to.pool(), table).await?;
        if n > 0 {
            return Err(StoreError::Invalid(format!(
                "the destination database already holds data ({n} rows in {table}); copy into \
                 an empty database"
            )));
        }
    }
    // One snapshot of the source: a read transaction (SQLite's WAL and PostgreSQL's
    // REPEATABLE READ both give every statement of it the same view).
    let mut read = match from.backend() {
        Backend::Sqlite => from.pool().begin().await?,
        Backend::Postgres => {
            from.pool()
                .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                .await?
        }
    };
    let mut write = to.write_tx().await?;
    let mut copied = Vec::with_capacity(TABLES.len());
    for &table in TABLES {
        let select = format!("SELECT * FROM {table}");
        let mut rows = sqlx::query(&select).fetch(&mut *read);
        let mut insert: Option<String> = None;
        let mut n = 0i64;
        while let Some(row) = rows.try_next().await? {
            let sql = insert.get_or_insert_with(|| {
                let names: Vec<&str> = row.columns().iter().map(|c| c.name()).collect();
                let params: Vec<String> = (1..=names.len()).map(|i| format!("${i}")).collect();
                format!(
                    "INSERT INTO {table} ({}) VALUES ({})",
                    names.join(", "),
                    params.join(", ")
                )
            });
            let mut query = sqlx::query(sql.as_str());
            for i in 0..row.columns().len() {
                query = bind(query, value(&row, i, table)?);
            }
            query.execute(&mut *write).await?;
            n += 1;
        }
        drop(rows);
        if COUNTED.contains(&table) {
            let (max,): (Option<i64>,) = sqlx::query_as(&format!("SELECT MAX(id) FROM {table}"))
                .fetch_one(&mut *write)
                .await?;
            let last = last_id(&mut read, from.backend(), table).await?.max(max);
            if let Some(last) = last {
                set_last_id(&mut write, to.backend(), table, last).await?;
            }
        }
        copied.push((table, n));
    }
    write.commit().await?;
    read.rollback().await?;
    for &(table, n) in &copied {
        let (there, here) = (
            count(to.pool(), table).await?,
            count(from.pool(), table).await?,
        );
        if there != n {
            return Err(StoreError::Invalid(format!(
                "the copy of {table} holds {there} rows where {n} were copied"
            )));
        }
        if here != n {
            tracing::warn!(
                table,
                copied = n,
                now = here,
                "the source changed while it was copied; the copy is of the moment it began"
            );
        }
    }
    Ok(copied)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tables that say what is live now (which replica holds which node's session), not data
    /// to keep: not copied.
    const LIVE_TABLES: &[&str] = &["api_rate", "control_replicas", "node_presence"];

    #[tokio::test]
    async fn every_table_is_copied() {
        let store = Store::open("sqlite::memory:").await.unwrap();
        let tables: Vec<(String,)> = sqlx::query_as(
            "SELECT name FROM sqlite_master WHERE type = 'table' \
             AND name NOT LIKE 'sqlite_%' AND name <> '_sqlx_migrations' ORDER BY name",
        )
        .fetch_all(store.pool())
        .await
        .unwrap();
        let mut listed: Vec<&str> = TABLES.iter().chain(LIVE_TABLES).copied().collect();
        listed.sort_unstable();
        let tables: Vec<&str> = tables.iter().map(|(t,)| t.as_str()).collect();
        assert_eq!(tables, listed, "store/copy.rs TABLES must list every table");
    }

    #[tokio::test]
    async fn a_copy_keeps_rows_ids_and_counters_and_refuses_a_full_destination() {
        let dir = tempfile::tempdir().unwrap();
        let from = Store::open_file(&dir.path().join("a.db")).await.unwrap();
        let user = from
            .create_user("a@example.com", "x", true, true)
            .await
            .unwrap();
        let gone = from
            .create_user("b@example.com", "x", false, true)
            .await
            .unwrap();
        from.delete_user(gone.id).await.unwrap();
        let to = Store::open_file(&dir.path().join("b.db")).await.unwrap();
        let copied = copy_all(&from, &to).await.unwrap();
        assert!(copied.contains(&("users", 1)), "{copied:?}");
        let again = to.get_user(user.id).await.unwrap();
        assert_eq!(again.email, "a@example.com");
        assert!(again.is_admin);
        // The deleted user's id is not handed out again.
        let next = to
            .create_user("c@example.com", "x", false, true)
            .await
            .unwrap();
        assert!(next.id > gone.id, "{} after {}", next.id, gone.id);
        let err = copy_all(&from, &to).await.unwrap_err().to_string();
        assert!(err.contains("already holds data"), "{err}");
    }
}
