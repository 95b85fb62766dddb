//! `GET /api/v1/backups` and `POST /api/v1/backups` (admins): the backups Control has made, the
//! state of the last ones (what the dashboard shows), and one more now (docs/backups.md).

use super::openapi::{ReadErrors, WriteErrors};
use crate::app::AppState;
use crate::auth::AuthUser;
use crate::backups::{BackupFile, BackupState};
use crate::error::ApiError;
use crate::ops;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Serialize;

/// Where backups go, how they are kept, and the files there.
#[derive(Serialize, utoipa::ToSchema)]
pub struct BackupsView {
    /// The backup directory.
    dir: String,
    /// UTC time of day of the daily backup (`HH:MM`), or `null` when off.
    schedule: Option<String>,
    keep_daily: usize,
    keep_weekly: usize,
    /// Whether `KAKUREMICHI_BACKUP_KEY` encrypts new backups.
    encrypted: bool,
    /// Whether `KAKUREMICHI_BACKUP_COMMAND` ships each backup.
    command: bool,
    #[serde(flatten)]
    state: BackupState,
    /// Newest first (500 at most).
    files: Vec<BackupFile>,
}

/// A backup just made.
#[derive(Serialize, utoipa::ToSchema)]
pub struct MadeBackup {
    /// Its path on Control's host.
    path: String,
    file: Option<BackupFile>,
    /// Why `KAKUREMICHI_BACKUP_COMMAND` failed, if it did (the backup is there all the same).
    command_error: Option<String>,
}

/// Lists the backups and the state of the last ones.
#[utoipa::path(
    get,
    path = "/api/v1/backups",
    tag = "backups",
    operation_id = "list_backups",
    security(("api_token" = []), ("session_cookie" = [])),
    responses(
        (status = 200, description = "Settings, last success and failure, files", body = BackupsView),
        (status = 503, description = "This Control makes no backups", body = super::openapi::ErrorBody),
        ReadErrors,
    ),
)]
pub async fn list(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
) -> Result<Json<BackupsView>, ApiError> {
    ops::require_admin(&user, "see the backups")?;
    let backups = ops::backups::backups(&state)?;
    let config = backups.config();
    Ok(Json(BackupsView {
        dir: backups.dir().display().to_string(),
        schedule: config.at.map(|(h, m)| format!("{h:02}:{m:02}")),
        keep_daily: config.keep_daily,
        keep_weekly: config.keep_weekly,
        encrypted: config.key.is_some(),
        command: config.command.is_some(),
        state: backups.state(time::OffsetDateTime::now_utc()).await?,
        files: backups.files(),
    }))
}

/// Makes a backup now (and runs the backup command), like the daily one. 201.
#[utoipa::path(
    post,
    path = "/api/v1/backups",
    tag = "backups",
    operation_id = "create_backup",
    security(("api_token" = []), ("session_cookie" = [], "csrf_token" = [])),
    responses(
        (status = 201, description = "Written", body = MadeBackup),
        (status = 409, description = "A backup is being made already", body = super::openapi::ErrorBody),
        (status = 503, description = "This Control makes no backups", body = super::openapi::ErrorBody),
        WriteErrors,
    ),
)]
pub async fn create(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
) -> Result<(StatusCode, Json<MadeBackup>), ApiError> {
    let made = ops::backups::make_now(&state, &user).await?;
    let file = crate::backups::describe(&made.path);
    Ok((
        StatusCode::CREATED,
        Json(MadeBackup {
            path: made.path.display().to_string(),
            file,
            command_error: made.command_error,
        }),
    ))
}
