//! Browser login sessions (a [`LoginSession`]; not to be confused with a node's WebSocket session,
//! which the hub holds): stored by the hash of the cookie value, with an absolute expiry, an idle
//! expiry (`last_seen_at`) and a per-session CSRF token. The table keeps its name, `sessions`.

use super::{from_now, now, users::UserRow, Store, StoreResult};

/// A live login session and its user.
pub struct LoginSession {
    pub user: UserRow,
    pub csrf_token: String,
    /// Absolute expiry (RFC 3339); access tokens minted for the session never outlive it.
    pub expires_at: String,
}

impl Store {
    /// Stores a login session and drops expired ones (both limits).
    pub async fn create_login_session(
        &self,
        id_hash: &str,
        user_id: i64,
        csrf_token: &str,
        expires_at: &str,
        idle: time::Duration,
    ) -> StoreResult<()> {
        let now = now();
        let mut tx = self.write_tx().await?;
        sqlx::query("DELETE FROM sessions WHERE expires_at <= $1 OR last_seen_at <= $2")
            .bind(&now)
            .bind(from_now(-idle))
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO sessions (id_hash, user_id, created_at, expires_at, last_seen_at, csrf_token) \
             VALUES ($1, $2, $3, $4, $3, $5)",
        )
        .bind(id_hash)
        .bind(user_id)
        .bind(&now)
        .bind(expires_at)
        .bind(csrf_token)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The user of a session that has expired neither way; records its use (at most once a
    /// minute, to spare the write lock). The one definition of a valid session: the API, the
    /// UI and `/access/authorize` all ask here.
    pub async fn login_session(
        &self,
        id_hash: &str,
        idle: time::Duration,
    ) -> StoreResult<Option<LoginSession>> {
        let found: Option<(String, String, String)> = sqlx::query_as(
            "SELECT csrf_token, last_seen_at, expires_at FROM sessions \
             WHERE id_hash = $1 AND expires_at > $2 AND last_seen_at > $3",
        )
        .bind(id_hash)
        .bind(now())
        .bind(from_now(-idle))
        .fetch_optional(self.pool())
        .await?;
        let Some((csrf_token, last_seen, expires_at)) = found else {
            return Ok(None);
        };
        if last_seen <= from_now(time::Duration::minutes(-1)) {
            sqlx::query("UPDATE sessions SET last_seen_at = $1 WHERE id_hash = $2")
                .bind(now())
                .bind(id_hash)
                .execute(self.pool())
                .await?;
        }
        let user: Option<UserRow> = sqlx::query_as(
            "SELECT users.* FROM sessions JOIN users ON users.id = sessions.user_id WHERE sessions.id_hash = $1",
        )
        .bind(id_hash)
        .fetch_optional(self.pool())
        .await?;
        Ok(user.map(|user| LoginSession {
            user,
            csrf_token,
            expires_at,
        }))
    }

    pub async fn delete_login_session(&self, id_hash: &str) -> StoreResult<()> {
        sqlx::query("DELETE FROM sessions WHERE id_hash = $1")
            .bind(id_hash)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// "Log out everywhere": ends every session of the user. Returns how many there were.
    pub async fn delete_user_login_sessions(&self, user_id: i64) -> StoreResult<u64> {
        let done = sqlx::query("DELETE FROM sessions WHERE user_id = $1")
            .bind(user_id)
            .execute(self.pool())
            .await?;
        Ok(done.rows_affected())
    }
}
