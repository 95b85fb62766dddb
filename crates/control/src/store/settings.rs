//! Admin settings (key/value) and one-time invitations to register.

use super::{from_now, is_unique_violation, now, users::UserRow, Store, StoreError, StoreResult};

/// Setting: anyone may register an account when `"true"`. Off by default.
pub const OPEN_REGISTRATION: &str = "open_registration";

/// Setting: the global custom error page (HTML), served by the Gateways for tunnels without one
/// of their own and for unknown hosts. Absent = the Gateways' own pages.
pub const ERROR_PAGE: &str = "error_page";

/// An invitation as stored; the token itself is only in the link given to the admin.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct InvitationRow {
    pub email: String,
    pub is_admin: bool,
}

impl Store {
    pub async fn setting(&self, key: &str) -> StoreResult<Option<String>> {
        let row: Option<(String,)> = sqlx::query_as("SELECT value FROM settings WHERE key = $1")
            .bind(key)
            .fetch_optional(self.pool())
            .await?;
        Ok(row.map(|(v,)| v))
    }

    pub async fn set_setting(&self, key: &str, value: &str) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO settings (key, value) VALUES ($1, $2) \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        )
        .bind(key)
        .bind(value)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Removes a setting (its default applies again).
    pub async fn clear_setting(&self, key: &str) -> StoreResult<()> {
        sqlx::query("DELETE FROM settings WHERE key = $1")
            .bind(key)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// The global custom error page, if one is set.
    pub async fn error_page(&self) -> StoreResult<Option<String>> {
        self.setting(ERROR_PAGE).await
    }

    pub async fn open_registration(&self) -> StoreResult<bool> {
        Ok(self.setting(OPEN_REGISTRATION).await?.as_deref() == Some("true"))
    }

    pub async fn create_invitation(
        &self,
        token_hash: &str,
        email: &str,
        is_admin: bool,
        created_by: i64,
        valid: time::Duration,
    ) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO invitations (token_hash, email, is_admin, created_by, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(token_hash)
        .bind(email)
        .bind(is_admin)
        .bind(created_by)
        .bind(now())
        .bind(from_now(valid))
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// An unexpired invitation, without using it up.
    pub async fn invitation(&self, token_hash: &str) -> StoreResult<Option<InvitationRow>> {
        Ok(sqlx::query_as(
            "SELECT email, is_admin FROM invitations WHERE token_hash = $1 AND expires_at > $2",
        )
        .bind(token_hash)
        .bind(now())
        .fetch_optional(self.pool())
        .await?)
    }

    /// Creates the invited account and uses the invitation up, in one transaction: a link
    /// registers one account, and a failed registration leaves the link valid.
    pub async fn redeem_invitation(
        &self,
        token_hash: &str,
        password_hash: &str,
    ) -> StoreResult<UserRow> {
        let mut tx = self.write_tx().await?;
        let invitation: InvitationRow = sqlx::query_as(
            "DELETE FROM invitations WHERE token_hash = $1 AND expires_at > $2 RETURNING email, is_admin",
        )
        .bind(token_hash)
        .bind(now())
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| {
            StoreError::Invalid(
                "this invitation link is unknown, used or expired; ask an admin for a new one"
                    .to_string(),
            )
        })?;
        let user = sqlx::query_as(
            "INSERT INTO users (email, password_hash, is_admin, created_at) VALUES ($1, $2, $3, $4) \
             RETURNING *",
        )
        .bind(&invitation.email)
        .bind(password_hash)
        .bind(invitation.is_admin)
        .bind(now())
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| {
            if is_unique_violation(&e) {
                StoreError::Conflict(format!(
                    "a user with the e-mail {} already exists; log in instead",
                    invitation.email
                ))
            } else {
                e.into()
            }
        })?;
        tx.commit().await?;
        Ok(user)
    }
}
