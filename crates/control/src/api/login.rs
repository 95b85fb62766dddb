//! Browser login over the API: `POST /auth/login` sets an HttpOnly session cookie and returns the
//! session's CSRF token, `POST /auth/logout` ends it, `POST /auth/logout-everywhere` ends every
//! session of the user, `GET /auth/me` says who is logged in.

use super::openapi::{ErrorBody, ReadErrors, WriteErrors};
use crate::app::AppState;
use crate::auth::{check_csrf, current_session, session_cookie, AuthUser, ClientIp};
use crate::error::{ApiError, ApiJson};
use crate::store::UserRow;
use crate::{ops, secrets};
use axum::extract::State;
use axum::http::header::SET_COOKIE;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginBody {
    email: String,
    password: String,
}

/// A user as the API shows it.
#[derive(Serialize, utoipa::ToSchema)]
pub struct UserView {
    id: i64,
    email: String,
    is_admin: bool,
    /// False for a self-registered account until an admin verifies it: allow-lists skip it.
    email_verified: bool,
}

impl From<UserRow> for UserView {
    fn from(u: UserRow) -> Self {
        Self {
            id: u.id,
            email: u.email,
            is_admin: u.is_admin,
            email_verified: u.email_verified,
        }
    }
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct UserBody {
    user: UserView,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct LoginResponse {
    user: UserView,
    /// Send it as `X-CSRF-Token` on state-changing calls authenticated by the cookie.
    csrf_token: String,
}

/// Logs in: sets the session cookie and returns the session's CSRF token.
#[utoipa::path(
    post,
    path = "/api/v1/auth/login",
    tag = "auth",
    operation_id = "login",
    request_body = LoginBody,
    responses(
        (status = 200, description = "Logged in", body = LoginResponse,
            headers(("Set-Cookie" = String, description = "The session cookie (HttpOnly)"))),
        (status = 400, description = "The body is not the JSON expected", body = ErrorBody),
        (status = 401, description = "Invalid e-mail or password", body = ErrorBody),
        (status = 429, description = "Too many failed logins for the account or the client",
            body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, description = "Control is busy checking other passwords", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
    ),
)]
pub async fn login(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    ApiJson(body): ApiJson<LoginBody>,
) -> Result<Response, ApiError> {
    let previous = session_cookie(&headers);
    let session =
        ops::login::login(&state, &body.email, body.password, ip.as_deref(), previous).await?;
    let cookie = ops::login::set_cookie(&state, &session.cookie);
    let body = LoginResponse {
        user: session.user.into(),
        csrf_token: session.csrf_token,
    };
    Ok(([(SET_COOKIE, cookie)], Json(body)).into_response())
}

/// Ends the session of the cookie, if any, and clears the cookie: 204. A live session must be
/// ended with its CSRF token (403 otherwise), so another site cannot log the user out.
#[utoipa::path(
    post,
    path = "/api/v1/auth/logout",
    tag = "auth",
    operation_id = "logout",
    security((), ("session_cookie" = [], "csrf_token" = [])),
    responses(
        (status = 204, description = "Logged out; the cookie is cleared",
            headers(("Set-Cookie" = String, description = "Clears the session cookie"))),
        (status = 403, description = "A live session's cookie without its CSRF token", body = ErrorBody),
        (status = 500, description = "Control failed (its log says why)", body = ErrorBody),
    ),
)]
pub async fn logout(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if let Some(live) = current_session(&headers, &state).await? {
        check_csrf(&headers, &live)?;
    }
    if let Some(session) = session_cookie(&headers) {
        state
            .store
            .delete_login_session(&secrets::hash(session))
            .await?;
        // Gateways learn at once that this session's access tokens are revoked.
        state.hub.changed();
    }
    let cookie = ops::login::set_cookie(&state, "");
    Ok((StatusCode::NO_CONTENT, [(SET_COOKIE, cookie)]).into_response())
}

/// Ends every session of the caller, on every device. 204.
#[utoipa::path(
    post,
    path = "/api/v1/auth/logout-everywhere",
    tag = "auth",
    operation_id = "logout_everywhere",
    security(("api_token" = []), ("session_cookie" = [], "csrf_token" = [])),
    responses(
        (status = 204, description = "Every session of the user ended; the cookie is cleared",
            headers(("Set-Cookie" = String, description = "Clears the session cookie"))),
        WriteErrors,
    ),
)]
pub async fn logout_everywhere(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
) -> Result<Response, ApiError> {
    let ended = state.store.delete_user_login_sessions(user.id).await?;
    ops::audit(
        &state,
        Some(&user),
        "user.logout_everywhere",
        format!("user:{} {}", user.id, user.email),
        serde_json::json!({"sessions": ended}),
    )
    .await;
    let cookie = ops::login::set_cookie(&state, "");
    Ok((StatusCode::NO_CONTENT, [(SET_COOKIE, cookie)]).into_response())
}

/// Who is logged in.
#[utoipa::path(
    get,
    path = "/api/v1/auth/me",
    tag = "auth",
    operation_id = "me",
    security(("api_token" = []), ("session_cookie" = [])),
    responses((status = 200, description = "The caller", body = UserBody), ReadErrors),
)]
pub async fn me(AuthUser(user): AuthUser) -> Json<UserBody> {
    Json(UserBody { user: user.into() })
}
