//! Alerts and alert channels (issue #22; `crate::alerts` decides when they fire).

use super::{is_unique_violation, now, Store, StoreError, StoreResult};

/// Resolved alerts kept for the history (the newest); open ones are always kept.
const KEPT_RESOLVED: i64 = 1_000;
/// Most alert channels.
const MAX_ALERT_CHANNELS: i64 = 20;

/// One alert, open while `resolved_at` is `None`.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow, serde::Serialize, utoipa::ToSchema)]
pub struct AlertRow {
    pub id: i64,
    /// What it is about, e.g. `gateway_offline:3`: at most one open alert per key.
    pub key: String,
    /// `gateway_offline`, `agent_offline`, `tunnel_unserved`, `certificate` or `error_rate`.
    pub rule: String,
    /// The Gateway, Agent, tunnel or certificate, by name.
    pub subject: String,
    /// One sentence for people, e.g. "Gateway gw1 has been offline for more than 60 s".
    pub summary: String,
    /// RFC 3339.
    pub fired_at: String,
    pub resolved_at: Option<String>,
}

/// A channel alerts are sent to; `target` is sealed.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AlertChannelRow {
    pub id: i64,
    pub name: String,
    /// `webhook` or `email`.
    pub kind: String,
    /// Webhooks: `json`, `slack` or `discord`; e-mail: `text`.
    pub format: String,
    pub target: Vec<u8>,
    pub hint: String,
    pub created_at: String,
    pub last_sent_at: Option<String>,
    pub last_error: Option<String>,
}

/// A channel to add.
pub struct NewAlertChannel<'a> {
    pub name: &'a str,
    pub kind: &'a str,
    pub format: &'a str,
    pub target: &'a [u8],
    pub hint: &'a str,
}

const ALERT_COLUMNS: &str = "id, key, rule, subject, summary, fired_at, resolved_at";
const CHANNEL_COLUMNS: &str =
    "id, name, kind, format, target, hint, created_at, last_sent_at, last_error";

impl Store {
    /// Opens an alert; `None` when one of `key` is already open (another replica was faster,
    /// or this one fired it before): nothing is sent twice.
    pub async fn fire_alert(
        &self,
        key: &str,
        rule: &str,
        subject: &str,
        summary: &str,
    ) -> StoreResult<Option<AlertRow>> {
        let sql = format!(
            "INSERT INTO alerts (key, rule, subject, summary, fired_at) \
             VALUES ($1, $2, $3, $4, $5) RETURNING {ALERT_COLUMNS}"
        );
        match sqlx::query_as(&sql)
            .bind(key)
            .bind(rule)
            .bind(subject)
            .bind(summary)
            .bind(now())
            .fetch_one(self.pool())
            .await
        {
            Ok(row) => Ok(Some(row)),
            Err(e) if is_unique_violation(&e) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Resolves the open alert of `key`; `None` when none is open. Old resolved alerts beyond
    /// the newest 1,000 go.
    pub async fn resolve_alert(&self, key: &str) -> StoreResult<Option<AlertRow>> {
        let sql = format!(
            "UPDATE alerts SET resolved_at = $1 WHERE key = $2 AND resolved_at IS NULL \
             RETURNING {ALERT_COLUMNS}"
        );
        let row = sqlx::query_as(&sql)
            .bind(now())
            .bind(key)
            .fetch_optional(self.pool())
            .await?;
        sqlx::query(
            "DELETE FROM alerts WHERE resolved_at IS NOT NULL AND id NOT IN \
             (SELECT id FROM alerts WHERE resolved_at IS NOT NULL ORDER BY id DESC LIMIT $1)",
        )
        .bind(KEPT_RESOLVED)
        .execute(self.pool())
        .await?;
        Ok(row)
    }

    /// The open alerts, oldest first.
    pub async fn open_alerts(&self) -> StoreResult<Vec<AlertRow>> {
        let sql =
            format!("SELECT {ALERT_COLUMNS} FROM alerts WHERE resolved_at IS NULL ORDER BY id");
        Ok(sqlx::query_as(&sql).fetch_all(self.pool()).await?)
    }

    /// The newest `limit` alerts, open or not.
    pub async fn recent_alerts(&self, limit: i64) -> StoreResult<Vec<AlertRow>> {
        let sql = format!("SELECT {ALERT_COLUMNS} FROM alerts ORDER BY id DESC LIMIT $1");
        Ok(sqlx::query_as(&sql)
            .bind(limit)
            .fetch_all(self.pool())
            .await?)
    }

    /// Adds a channel; a name taken, or more than [`MAX_ALERT_CHANNELS`], is refused.
    pub async fn add_alert_channel(
        &self,
        new: &NewAlertChannel<'_>,
    ) -> StoreResult<AlertChannelRow> {
        // Count and insert under the write lock: two adds at once cannot both pass the cap,
        // and SQLite never has to upgrade a read lock (SQLITE_BUSY).
        let mut tx = self.write_tx().await?;
        let (count,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM alert_channels")
            .fetch_one(&mut *tx)
            .await?;
        if count >= MAX_ALERT_CHANNELS {
            return Err(StoreError::Quota(format!(
                "at most {MAX_ALERT_CHANNELS} alert channels; delete one first"
            )));
        }
        let sql = format!(
            "INSERT INTO alert_channels (name, kind, format, target, hint, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING {CHANNEL_COLUMNS}"
        );
        let row = sqlx::query_as(&sql)
            .bind(new.name)
            .bind(new.kind)
            .bind(new.format)
            .bind(new.target)
            .bind(new.hint)
            .bind(now())
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| {
                if is_unique_violation(&e) {
                    StoreError::Conflict(format!(
                        "an alert channel is already named {:?}",
                        new.name
                    ))
                } else {
                    e.into()
                }
            })?;
        tx.commit().await?;
        Ok(row)
    }

    pub async fn alert_channels(&self) -> StoreResult<Vec<AlertChannelRow>> {
        let sql = format!("SELECT {CHANNEL_COLUMNS} FROM alert_channels ORDER BY id");
        Ok(sqlx::query_as(&sql).fetch_all(self.pool()).await?)
    }

    pub async fn alert_channel(&self, id: i64) -> StoreResult<AlertChannelRow> {
        let sql = format!("SELECT {CHANNEL_COLUMNS} FROM alert_channels WHERE id = $1");
        sqlx::query_as(&sql)
            .bind(id)
            .fetch_optional(self.pool())
            .await?
            .ok_or(StoreError::NotFound)
    }

    pub async fn delete_alert_channel(&self, id: i64) -> StoreResult<AlertChannelRow> {
        let sql = format!("DELETE FROM alert_channels WHERE id = $1 RETURNING {CHANNEL_COLUMNS}");
        sqlx::query_as(&sql)
            .bind(id)
            .fetch_optional(self.pool())
            .await?
            .ok_or(StoreError::NotFound)
    }

    /// Records how the last delivery to channel `id` went (`error`: `None` when it arrived).
    pub async fn alert_channel_sent(&self, id: i64, error: Option<&str>) -> StoreResult<()> {
        sqlx::query(
            "UPDATE alert_channels SET last_sent_at = CASE WHEN $1 IS NULL THEN $2 \
             ELSE last_sent_at END, last_error = $1 WHERE id = $3",
        )
        .bind(error)
        .bind(now())
        .bind(id)
        .execute(self.pool())
        .await?;
        Ok(())
    }
}
