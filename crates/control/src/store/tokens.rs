//! Personal API tokens: a user's credentials for scripts and the CLI (`Authorization: Bearer kmt_...`).

use super::{from_now, now, users::UserRow, Store, StoreResult};

/// A token as listed to its owner; the secret itself is never stored.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize, utoipa::ToSchema)]
pub struct TokenRow {
    pub id: i64,
    pub name: String,
    pub created_at: String,
    pub last_used_at: Option<String>,
}

impl Store {
    pub async fn create_token(
        &self,
        user_id: i64,
        name: &str,
        token_hash: &str,
    ) -> StoreResult<TokenRow> {
        let mut tx = self.write_tx().await?;
        let row = sqlx::query_as(
            "INSERT INTO api_tokens (user_id, name, token_hash, created_at) VALUES ($1, $2, $3, $4) \
             RETURNING id, name, created_at, last_used_at",
        )
        .bind(user_id)
        .bind(name)
        .bind(token_hash)
        .bind(now())
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(row)
    }

    pub async fn list_tokens(&self, user_id: i64) -> StoreResult<Vec<TokenRow>> {
        Ok(sqlx::query_as(
            "SELECT id, name, created_at, last_used_at FROM api_tokens WHERE user_id = $1 ORDER BY id",
        )
        .bind(user_id)
        .fetch_all(self.pool())
        .await?)
    }

    /// Deletes one of the user's tokens; false if it has no such token.
    pub async fn delete_token(&self, user_id: i64, id: i64) -> StoreResult<bool> {
        let done = sqlx::query("DELETE FROM api_tokens WHERE id = $1 AND user_id = $2")
            .bind(id)
            .bind(user_id)
            .execute(self.pool())
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// The owner of a token, recording its use (at most once a minute, to spare the write lock).
    pub async fn user_by_token(&self, token_hash: &str) -> StoreResult<Option<UserRow>> {
        let found: Option<(i64, Option<String>)> =
            sqlx::query_as("SELECT id, last_used_at FROM api_tokens WHERE token_hash = $1")
                .bind(token_hash)
                .fetch_optional(self.pool())
                .await?;
        let Some((token_id, last_used)) = found else {
            return Ok(None);
        };
        let stale = from_now(time::Duration::minutes(-1));
        if last_used.is_none_or(|t| t <= stale) {
            sqlx::query("UPDATE api_tokens SET last_used_at = $1 WHERE id = $2")
                .bind(now())
                .bind(token_id)
                .execute(self.pool())
                .await?;
        }
        Ok(sqlx::query_as(
            "SELECT users.* FROM api_tokens JOIN users ON users.id = api_tokens.user_id WHERE api_tokens.id = $1",
        )
        .bind(token_id)
        .fetch_optional(self.pool())
        .await?)
    }
}
