//! The audit log: who changed what and when. Entries are never updated or deleted by Control.

use super::{now, Store, StoreResult};

#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize, utoipa::ToSchema)]
pub struct AuditRow {
    pub id: i64,
    pub at: String,
    pub user_id: Option<i64>,
    pub user_email: Option<String>,
    pub action: String,
    pub target: String,
    #[serde(serialize_with = "raw_json")]
    #[schema(value_type = serde_json::Value)]
    pub detail: String,
}

/// `detail` is stored as JSON text; show it as JSON, not as a string of JSON.
fn raw_json<S: serde::Serializer>(detail: &str, s: S) -> Result<S::Ok, S::Error> {
    let value: serde_json::Value = serde_json::from_str(detail).unwrap_or(serde_json::Value::Null);
    serde::Serialize::serialize(&value, s)
}

/// Who acted: a user, or Control itself (bootstrap) when `None`.
pub struct Actor<'a> {
    pub user_id: Option<i64>,
    pub email: Option<&'a str>,
}

impl Store {
    pub async fn audit(
        &self,
        actor: &Actor<'_>,
        action: &str,
        target: &str,
        detail: &serde_json::Value,
    ) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO audit_log (at, user_id, user_email, action, target, detail) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(now())
        .bind(actor.user_id)
        .bind(actor.email)
        .bind(action)
        .bind(target)
        .bind(detail.to_string())
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// The newest entry of `action`, if any.
    pub async fn last_audit_of(&self, action: &str) -> StoreResult<Option<AuditRow>> {
        Ok(sqlx::query_as(
            "SELECT * FROM audit_log WHERE action = $1 ORDER BY action DESC, id DESC LIMIT 1",
        )
        .bind(action)
        .fetch_optional(self.pool())
        .await?)
    }

    /// Newest first: at most `limit` entries with an id below `before`, of `user_id` if given.
    pub async fn list_audit(
        &self,
        user_id: Option<i64>,
        before: Option<i64>,
        limit: i64,
    ) -> StoreResult<Vec<AuditRow>> {
        Ok(sqlx::query_as(
            "SELECT * FROM audit_log WHERE ($1 IS NULL OR user_id = $1) AND ($2 IS NULL OR id < $2) \
             ORDER BY id DESC LIMIT $3",
        )
        .bind(user_id)
        .bind(before)
        .bind(limit)
        .fetch_all(self.pool())
        .await?)
    }
}
