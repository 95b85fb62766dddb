//! The login throttle's counts, in the database when several Control replicas share it (see
//! `guard::throttle`, which decides; this only keeps the rows).

use super::{Store, StoreResult};
use std::collections::HashMap;

/// One throttled key: its failures, until when it must wait and when it was last touched
/// (Unix milliseconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::FromRow)]
pub struct ThrottleRow {
    pub failures: i64,
    pub until_ms: i64,
    pub last_ms: i64,
}

impl Store {
    /// Loads the rows of `keys`, lets `edit` change them (a key it removes is deleted), and
    /// writes them back, all in one write transaction, so that replicas counting the same key
    /// at once do not lose a count. Rows untouched since `forget_before` are deleted.
    pub async fn edit_throttle<R>(
        &self,
        keys: &[String],
        forget_before: i64,
        edit: impl FnOnce(&mut HashMap<String, ThrottleRow>) -> R,
    ) -> StoreResult<R> {
        let mut tx = self.write_tx().await?;
        sqlx::query("DELETE FROM login_throttle WHERE last_ms < $1")
            .bind(forget_before)
            .execute(&mut *tx)
            .await?;
        let mut rows = HashMap::with_capacity(keys.len());
        for key in keys {
            let row: Option<ThrottleRow> = sqlx::query_as(
                "SELECT failures, until_ms, last_ms FROM login_throttle WHERE key = $1",
            )
            .bind(key)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(row) = row {
                rows.insert(key.clone(), row);
            }
        }
        let result = edit(&mut rows);
        for key in keys {
            match rows.get(key) {
                Some(row) => {
                    sqlx::query(
                        "INSERT INTO login_throttle (key, failures, until_ms, last_ms) \
                         VALUES ($1, $2, $3, $4) ON CONFLICT (key) DO UPDATE SET \
                         failures = excluded.failures, until_ms = excluded.until_ms, \
                         last_ms = excluded.last_ms",
                    )
                    .bind(key)
                    .bind(row.failures)
                    .bind(row.until_ms)
                    .bind(row.last_ms)
                    .execute(&mut *tx)
                    .await?;
                }
                None => {
                    sqlx::query("DELETE FROM login_throttle WHERE key = $1")
                        .bind(key)
                        .execute(&mut *tx)
                        .await?;
                }
            }
        }
        tx.commit().await?;
        Ok(result)
    }
}
