//! Alerts (admins): `GET /api/v1/alerts` (open and recent alerts, the rules' thresholds) and
//! the channels they go to, `GET/POST /api/v1/alerts/channels`,
//! `DELETE /api/v1/alerts/channels/{id}`, `POST /api/v1/alerts/channels/{id}/test`
//! (docs/monitoring.md).

use super::openapi::{ErrorBody, ReadErrors, WriteErrors};
use crate::alerts::{ChannelView, PendingView};
use crate::app::AppState;
use crate::auth::AuthUser;
use crate::error::{ApiError, ApiJson, Id};
use crate::ops::{self, alerts::NewChannel};
use crate::store::AlertRow;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};

/// Alerts shown in `recent`.
const RECENT: i64 = 50;

/// When each rule fires.
#[derive(Serialize, utoipa::ToSchema)]
pub struct RulesView {
    /// `gateway_offline`, `agent_offline` and `tunnel_unserved` fire after this long.
    offline_after_seconds: u64,
    /// An alert resolves once its condition has been gone this long (hysteresis).
    resolve_after_seconds: u64,
    /// `certificate` fires this many days before expiry (and after 15 min of failed orders).
    certificate_days: u32,
    /// `error_rate` fires above this share of 5xx responses (20 requests at least) over
    /// `error_rate_window_seconds`.
    error_rate_percent: u32,
    error_rate_window_seconds: u64,
    /// Whether `KAKUREMICHI_SMTP_URL` is set (e-mail channels work).
    smtp: bool,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct AlertsView {
    /// Open alerts, oldest first.
    open: Vec<AlertRow>,
    /// The latest 50, open or resolved, newest first.
    recent: Vec<AlertRow>,
    /// Conditions that hold but wait for their rule's delay (as seen by the leading replica:
    /// empty when another replica leads).
    pending: Vec<PendingView>,
    rules: RulesView,
}

/// The open alerts, the latest ones and the rules.
#[utoipa::path(
    get,
    path = "/api/v1/alerts",
    tag = "alerts",
    operation_id = "list_alerts",
    security(("api_token" = []), ("session_cookie" = [])),
    responses(
        (status = 200, description = "Open and recent alerts, and when each rule fires", body = AlertsView),
        ReadErrors,
    ),
)]
pub async fn list(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
) -> Result<Json<AlertsView>, ApiError> {
    ops::require_admin(&user, "see the alerts")?;
    let alerts = ops::alerts::alerts(&state)?;
    let config = alerts.config();
    Ok(Json(AlertsView {
        open: state.store.open_alerts().await?,
        recent: state.store.recent_alerts(RECENT).await?,
        pending: alerts.pending(),
        rules: RulesView {
            offline_after_seconds: config.offline_after.as_secs(),
            resolve_after_seconds: config.resolve_after.as_secs(),
            certificate_days: config.certificate_days,
            error_rate_percent: config.error_rate_percent,
            error_rate_window_seconds: config.error_rate_window.as_secs(),
            smtp: config.mailer.is_some(),
        },
    }))
}

/// The channels alerts go to (never a webhook's full URL).
#[utoipa::path(
    get,
    path = "/api/v1/alerts/channels",
    tag = "alerts",
    operation_id = "list_alert_channels",
    security(("api_token" = []), ("session_cookie" = [])),
    responses((status = 200, description = "The channels", body = Vec<ChannelView>), ReadErrors),
)]
pub async fn channels(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
) -> Result<Json<Vec<ChannelView>>, ApiError> {
    ops::require_admin(&user, "see the alert channels")?;
    Ok(Json(ops::alerts::alerts(&state)?.channels().await?))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateChannel {
    /// Unique, 1 to 100 characters.
    name: String,
    /// `webhook` or `email` (needs `KAKUREMICHI_SMTP_URL`).
    kind: String,
    /// The webhook's http(s) URL, or the e-mail address; stored sealed, never shown again in full.
    target: String,
    /// Webhooks: `json` (default), `slack` (`{"text"}`) or `discord` (`{"content"}`).
    format: Option<String>,
}

/// Adds a channel: every alert fired or resolved from now on is sent to it.
#[utoipa::path(
    post,
    path = "/api/v1/alerts/channels",
    tag = "alerts",
    operation_id = "create_alert_channel",
    security(("api_token" = []), ("session_cookie" = [], "csrf_token" = [])),
    request_body = CreateChannel,
    responses(
        (status = 201, description = "Added", body = ChannelView),
        (status = 409, description = "The name is taken", body = ErrorBody),
        WriteErrors,
    ),
)]
pub async fn create(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    ApiJson(body): ApiJson<CreateChannel>,
) -> Result<(StatusCode, Json<ChannelView>), ApiError> {
    let new = NewChannel {
        name: &body.name,
        kind: &body.kind,
        target: &body.target,
        format: body.format.as_deref(),
    };
    let view = ops::alerts::add_channel(&state, &user, new).await?;
    Ok((StatusCode::CREATED, Json(view)))
}

/// Deletes a channel.
#[utoipa::path(
    delete,
    path = "/api/v1/alerts/channels/{id}",
    tag = "alerts",
    operation_id = "delete_alert_channel",
    security(("api_token" = []), ("session_cookie" = [], "csrf_token" = [])),
    params(("id" = i64, Path, description = "The channel's id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such channel", body = ErrorBody),
        WriteErrors,
    ),
)]
pub async fn delete(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Id(id): Id,
) -> Result<StatusCode, ApiError> {
    ops::alerts::delete_channel(&state, &user, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The outcome of a test message.
#[derive(Serialize, utoipa::ToSchema)]
pub struct TestedChannel {
    delivered: bool,
}

/// Sends a test message to the channel now (one attempt, 10 s at most).
#[utoipa::path(
    post,
    path = "/api/v1/alerts/channels/{id}/test",
    tag = "alerts",
    operation_id = "test_alert_channel",
    security(("api_token" = []), ("session_cookie" = [], "csrf_token" = [])),
    params(("id" = i64, Path, description = "The channel's id")),
    responses(
        (status = 200, description = "The message was accepted", body = TestedChannel),
        (status = 502, description = "It was not: `error` says why (e.g. the webhook answered 404)", body = ErrorBody),
        (status = 404, description = "No such channel", body = ErrorBody),
        WriteErrors,
    ),
)]
pub async fn test(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Id(id): Id,
) -> Result<Json<TestedChannel>, ApiError> {
    ops::alerts::test_channel(&state, &user, id)
        .await?
        .map_err(|e| ApiError::new(StatusCode::BAD_GATEWAY, e))?;
    Ok(Json(TestedChannel { delivered: true }))
}
