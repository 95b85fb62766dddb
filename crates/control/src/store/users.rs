//! User accounts: creation (bootstrap, setup, invitation, admin), listing, password and role changes.

use super::{is_unique_violation, now, Store, StoreError, StoreResult};

/// A user account. `password_hash` is an Argon2id PHC string (so no `Debug`: keep it out of logs).
#[derive(Clone, sqlx::FromRow)]
pub struct UserRow {
    pub id: i64,
    pub email: String,
    pub password_hash: String,
    pub is_admin: bool,
    pub created_at: String,
    /// False for open registrations until an admin verifies them: allow-lists ignore them.
    pub email_verified: bool,
}

impl Store {
    pub async fn count_users(&self) -> StoreResult<i64> {
        let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM users")
            .fetch_one(self.pool())
            .await?;
        Ok(n)
    }

    /// Creates the first admin if, and only if, no user exists yet. Returns it if it did.
    /// Used by the env bootstrap and by the first-run setup page, which may race: one wins.
    pub async fn bootstrap_admin(
        &self,
        email: &str,
        password_hash: &str,
    ) -> StoreResult<Option<UserRow>> {
        let mut tx = self.write_tx().await?;
        let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM users")
            .fetch_one(&mut *tx)
            .await?;
        if n > 0 {
            return Ok(None);
        }
        let row = sqlx::query_as(
            "INSERT INTO users (email, password_hash, is_admin, created_at) VALUES ($1, $2, TRUE, $3) \
             RETURNING *",
        )
        .bind(email)
        .bind(password_hash)
        .bind(now())
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(row))
    }

    /// Creates a user; a taken e-mail is a conflict.
    pub async fn create_user(
        &self,
        email: &str,
        password_hash: &str,
        is_admin: bool,
        email_verified: bool,
    ) -> StoreResult<UserRow> {
        sqlx::query_as(
            "INSERT INTO users (email, password_hash, is_admin, created_at, email_verified) \
             VALUES ($1, $2, $3, $4, $5) RETURNING *",
        )
        .bind(email)
        .bind(password_hash)
        .bind(is_admin)
        .bind(now())
        .bind(email_verified)
        .fetch_one(self.pool())
        .await
        .map_err(|e| {
            if is_unique_violation(&e) {
                StoreError::Conflict(format!("a user with the e-mail {email} already exists"))
            } else {
                e.into()
            }
        })
    }

    /// `email` must already be normalised (lower case).
    pub async fn user_by_email(&self, email: &str) -> StoreResult<Option<UserRow>> {
        Ok(sqlx::query_as("SELECT * FROM users WHERE email = $1")
            .bind(email)
            .fetch_optional(self.pool())
            .await?)
    }

    pub async fn get_user(&self, id: i64) -> StoreResult<UserRow> {
        sqlx::query_as("SELECT * FROM users WHERE id = $1")
            .bind(id)
            .fetch_optional(self.pool())
            .await?
            .ok_or(StoreError::NotFound)
    }

    pub async fn list_users(&self) -> StoreResult<Vec<UserRow>> {
        Ok(sqlx::query_as("SELECT * FROM users ORDER BY id")
            .fetch_all(self.pool())
            .await?)
    }

    /// Sets a new password and ends every session of the user (a reset must lock others out).
    pub async fn set_password(&self, id: i64, password_hash: &str) -> StoreResult<()> {
        let mut tx = self.write_tx().await?;
        let done = sqlx::query("UPDATE users SET password_hash = $1 WHERE id = $2")
            .bind(password_hash)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        sqlx::query("DELETE FROM sessions WHERE user_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Grants or removes admin; refuses to remove the last admin (nobody could manage Control).
    pub async fn set_admin(&self, id: i64, is_admin: bool) -> StoreResult<UserRow> {
        let mut tx = self.write_tx().await?;
        if !is_admin {
            require_other_admin(&mut tx, id).await?;
        }
        let row = sqlx::query_as("UPDATE users SET is_admin = $1 WHERE id = $2 RETURNING *")
            .bind(is_admin)
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or(StoreError::NotFound)?;
        tx.commit().await?;
        Ok(row)
    }

    /// Marks an account's e-mail address verified (or not).
    pub async fn set_email_verified(&self, id: i64, verified: bool) -> StoreResult<UserRow> {
        sqlx::query_as("UPDATE users SET email_verified = $1 WHERE id = $2 RETURNING *")
            .bind(verified)
            .bind(id)
            .fetch_optional(self.pool())
            .await?
            .ok_or(StoreError::NotFound)
    }

    /// Deletes a user (sessions and tokens go with it; owned agents and tunnels become admin-owned).
    pub async fn delete_user(&self, id: i64) -> StoreResult<()> {
        let mut tx = self.write_tx().await?;
        require_other_admin(&mut tx, id).await?;
        let done = sqlx::query("DELETE FROM users WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        tx.commit().await?;
        Ok(())
    }
}

/// Fails when `id` is the only admin.
async fn require_other_admin(tx: &mut super::Tx, id: i64) -> StoreResult<()> {
    let (others,): (i64,) =
        sqlx::query_as("SELECT COUNT(*) FROM users WHERE is_admin = TRUE AND id <> $1")
            .bind(id)
            .fetch_one(&mut **tx)
            .await?;
    let (is_admin,): (i64,) =
        sqlx::query_as("SELECT COUNT(*) FROM users WHERE id = $1 AND is_admin = TRUE")
            .bind(id)
            .fetch_one(&mut **tx)
            .await?;
    if is_admin > 0 && others == 0 {
        return Err(StoreError::Conflict(
            "this is the only admin; make another user admin first".to_string(),
        ));
    }
    Ok(())
}
