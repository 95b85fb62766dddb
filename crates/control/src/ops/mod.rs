//! What a user can do to Control, once, for both the JSON API and the web UI: each operation
//! checks the caller's role, validates, writes, tells the node hub and records an audit entry.
//!
//! Roles: an admin may do everything; a member manages the agents and tunnels they own and
//! reads the rest. Gateways, users, settings and DNS zones are for admins only.

pub mod agents;
pub mod alerts;
pub mod backups;
pub mod device_login;
pub mod error_pages;
pub mod gateways;
pub mod inspect;
pub mod limits;
pub mod login;
pub mod quotas;
pub mod shares;
pub mod tokens;
pub mod tunnels;
pub mod users;
pub mod zones;

use crate::app::AppState;
use crate::error::ApiError;
use crate::store::{Actor, UserRow};

/// 403 unless `user` is an admin.
pub fn require_admin(user: &UserRow, what: &str) -> Result<(), ApiError> {
    if user.is_admin {
        Ok(())
    } else {
        Err(ApiError::forbidden(format!("only admins can {what}")))
    }
}

/// True when `user` may change something owned by `owner_id` (admins: anything).
pub fn can_manage(user: &UserRow, owner_id: Option<i64>) -> bool {
    user.is_admin || owner_id == Some(user.id)
}

/// 403 unless `user` may change something owned by `owner_id`.
pub fn require_owner(user: &UserRow, owner_id: Option<i64>, what: &str) -> Result<(), ApiError> {
    if can_manage(user, owner_id) {
        Ok(())
    } else {
        Err(ApiError::forbidden(format!(
            "you can only change {what} you own; ask an admin or the owner"
        )))
    }
}

/// Records who did what. The change is already committed: a failed audit write is logged, not
/// reported to the caller as if the change had failed.
pub async fn audit(
    state: &AppState,
    user: Option<&UserRow>,
    action: &str,
    target: String,
    detail: serde_json::Value,
) {
    let actor = Actor {
        user_id: user.map(|u| u.id),
        email: user.map(|u| u.email.as_str()),
    };
    if let Err(e) = state.store.audit(&actor, action, &target, &detail).await {
        tracing::error!(error = %e, action, "cannot write the audit log");
    }
}

/// Argon2id hash of a new password, through the bounded pool (503 when it is full).
pub async fn hash_password(state: &AppState, password: String) -> Result<String, ApiError> {
    Ok(state.passwords.hash(password).await?)
}

/// Passwords: at least 10 characters (a passphrase), at most 1024 (Argon2 input stays small).
pub fn check_password(password: &str) -> Result<(), ApiError> {
    let n = password.chars().count();
    if n < 10 {
        return Err(ApiError::bad_request(
            "the password must be at least 10 characters long (a few words are easy to remember)",
        ));
    }
    if n > 1024 {
        return Err(ApiError::bad_request(
            "the password must be at most 1024 characters long",
        ));
    }
    Ok(())
}
