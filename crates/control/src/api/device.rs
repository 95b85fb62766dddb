//! The command line's sign-in (`kakuremichi login`), a device-code flow after RFC 8628:
//! `POST /auth/device` starts one (anonymous, bounded per client address), the user approves it
//! at `verification_path_complete` in the browser, and `POST /auth/device/token` — polled every
//! `interval` seconds — answers the new personal API token once.

use super::login::UserView;
use super::openapi::ErrorBody;
use crate::app::AppState;
use crate::auth::ClientIp;
use crate::error::{ApiError, ApiJson};
use crate::ops;
use crate::ops::device_login::{LIFETIME, POLL_INTERVAL_SECS};
use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};

#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartDevice {
    /// The name the personal API token will get (default "kakuremichi CLI"), shown on the
    /// approval page: say which machine asks.
    #[serde(default)]
    name: Option<String>,
}

/// A started sign-in.
#[derive(Serialize, utoipa::ToSchema)]
pub struct DeviceStarted {
    /// The CLI's secret for polling; never shown to the user.
    device_code: String,
    /// What the user checks on the approval page, `XXXX-XXXX`.
    user_code: String,
    /// The approval page, relative to Control's URL: `/device`.
    verification_path: String,
    /// The approval page with the code filled in: `/device?code=XXXX-XXXX`.
    verification_path_complete: String,
    /// Seconds until the codes expire.
    expires_in: u64,
    /// Seconds to wait between polls.
    interval: u64,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PollDevice {
    device_code: String,
}

/// The token of an approved sign-in, shown this once.
#[derive(Serialize, utoipa::ToSchema)]
pub struct DeviceToken {
    /// A personal API token: send it as `Authorization: Bearer <token>`.
    token: String,
    /// Its id, for `DELETE /api/v1/tokens/{id}` (what `kakuremichi logout` does).
    token_id: i64,
    token_name: String,
    user: UserView,
}

/// Starts a command-line sign-in.
#[utoipa::path(
    post,
    path = "/api/v1/auth/device",
    tag = "auth",
    operation_id = "start_device_login",
    request_body(content = StartDevice, description = "Optional; `{}` names the token by default"),
    responses(
        (status = 200, description = "Started: show the user `user_code` and the approval page",
            body = DeviceStarted),
        (status = 400, description = "The body is not the JSON expected", body = ErrorBody),
        (status = 429, description = "Too many sign-ins pending from this client address",
            body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, description = "Too many sign-ins pending on this Control", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
    ),
)]
pub async fn start(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    ApiJson(body): ApiJson<StartDevice>,
) -> Result<Json<DeviceStarted>, ApiError> {
    let started = ops::device_login::start(&state, body.name.as_deref(), ip.as_deref()).await?;
    Ok(Json(DeviceStarted {
        verification_path: "/device".into(),
        verification_path_complete: format!("/device?code={}", started.user_code),
        device_code: started.device_code,
        user_code: started.user_code,
        expires_in: u64::try_from(LIFETIME.whole_seconds()).unwrap_or(600),
        interval: POLL_INTERVAL_SECS,
    }))
}

/// Polls a command-line sign-in: the token once approved (and never again).
#[utoipa::path(
    post,
    path = "/api/v1/auth/device/token",
    tag = "auth",
    operation_id = "poll_device_login",
    request_body = PollDevice,
    responses(
        (status = 200, description = "Approved: the new personal API token, this once",
            body = DeviceToken),
        (status = 400, description = "`error.code` says what to do: `authorization_pending` (poll \
            again after `interval`), `slow_down` (polled too fast), `access_denied` (the user \
            refused), `expired_token` (expired or already used: start again), `bad_request`",
            body = ErrorBody),
    ),
)]
pub async fn poll(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<PollDevice>,
) -> Result<Json<DeviceToken>, ApiError> {
    let issued = ops::device_login::poll(&state, &body.device_code).await?;
    Ok(Json(DeviceToken {
        token: issued.token,
        token_id: issued.row.id,
        token_name: issued.row.name,
        user: issued.user.into(),
    }))
}
