//! Users and their browser login sessions.

use super::{now, Store, StoreResult};

/// A user account. `password_hash` is an Argon2id PHC string (so no `Debug`: keep it out of logs).
#[derive(Clone, sqlx::FromRow)]
pub struct UserRow {
    pub id: i64,
    pub email: String,
    pub password_hash: String,
    pub is_admin: bool,
}

impl Store {
    pub async fn count_users(&self) -> StoreResult<i64> {
        let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM users")
            .fetch_one(self.pool())
            .await?;
        Ok(n)
    }

    /// Creates the first admin if, and only if, no user exists yet. Returns whether it did.
    pub async fn bootstrap_admin(&self, email: &str, password_hash: &str) -> StoreResult<bool> {
        let mut tx = self.write_tx().await?;
        let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM users")
            .fetch_one(&mut *tx)
            .await?;
        if n > 0 {
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO users (email, password_hash, is_admin, created_at) VALUES ($1, $2, TRUE, $3)",
        )
        .bind(email)
        .bind(password_hash)
        .bind(now())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// `email` must already be normalised (lower case).
    pub async fn user_by_email(&self, email: &str) -> StoreResult<Option<UserRow>> {
        Ok(sqlx::query_as("SELECT * FROM users WHERE email = $1")
            .bind(email)
            .fetch_optional(self.pool())
            .await?)
    }

    /// Stores a login session (by the hash of its cookie value) and drops expired ones.
    pub async fn create_session(
        &self,
        id_hash: &str,
        user_id: i64,
        expires_at: &str,
    ) -> StoreResult<()> {
        let now = now();
        let mut tx = self.write_tx().await?;
        sqlx::query("DELETE FROM sessions WHERE expires_at <= $1")
            .bind(&now)
            .execute(&mut *tx)
            .await?;
        sqlx::query("INSERT INTO sessions (id_hash, user_id, created_at, expires_at) VALUES ($1, $2, $3, $4)")
            .bind(id_hash)
            .bind(user_id)
            .bind(&now)
            .bind(expires_at)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The user of an unexpired login session.
    pub async fn user_by_session(&self, id_hash: &str) -> StoreResult<Option<UserRow>> {
        Ok(sqlx::query_as(
            "SELECT users.* FROM sessions JOIN users ON users.id = sessions.user_id \
             WHERE sessions.id_hash = $1 AND sessions.expires_at > $2",
        )
        .bind(id_hash)
        .bind(now())
        .fetch_optional(self.pool())
        .await?)
    }

    pub async fn delete_session(&self, id_hash: &str) -> StoreResult<()> {
        sqlx::query("DELETE FROM sessions WHERE id_hash = $1")
            .bind(id_hash)
            .execute(self.pool())
            .await?;
        Ok(())
    }
}
