//! A backup made on request (`POST /api/v1/backups`, admins): the same run as the schedule's
//! (backup, retention, backup command), audited as the admin's.

use super::{audit, require_admin};
use crate::app::AppState;
use crate::backups::{Backups, Made};
use crate::error::ApiError;
use crate::store::UserRow;
use axum::http::StatusCode;
use serde_json::json;
use std::sync::Arc;

/// Control's backups, or 503 (a state made without them, in tests).
pub fn backups(state: &AppState) -> Result<&Arc<Backups>, ApiError> {
    state.backups.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "this Control makes no backups",
        )
    })
}

/// Makes a backup now; 500 with the reason when none could be written.
pub async fn make_now(state: &AppState, user: &UserRow) -> Result<Made, ApiError> {
    require_admin(user, "make backups")?;
    let backups = backups(state)?;
    let made = backups
        .try_run_once(time::OffsetDateTime::now_utc())
        .await
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::CONFLICT,
                "a backup is being made right now; list the backups when it is done",
            )
        })?
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("no backup: {e}")))?;
    let file = made
        .path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    audit(
        state,
        Some(user),
        "backup.requested",
        format!("backup:{file}"),
        json!({"command_error": made.command_error}),
    )
    .await;
    Ok(made)
}
