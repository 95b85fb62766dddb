//! Browser login over the API: `POST /auth/login` sets an HttpOnly session cookie and returns the
//! session's CSRF token, `POST /auth/logout` ends it, `POST /auth/logout-everywhere` ends every
//! session of the user, `GET /auth/me` says who is logged in.

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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginBody {
    email: String,
    password: String,
}

/// A user as the API shows it.
#[derive(Serialize)]
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

#[derive(Serialize)]
pub struct UserBody {
    user: UserView,
}

#[derive(Serialize)]
pub struct LoginResponse {
    user: UserView,
    /// Send it as `X-CSRF-Token` on state-changing calls authenticated by the cookie.
    csrf_token: String,
}

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
pub async fn logout(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if let Some(live) = current_session(&headers, &state).await? {
        check_csrf(&headers, &live)?;
    }
    if let Some(session) = session_cookie(&headers) {
        state.store.delete_session(&secrets::hash(session)).await?;
        // Gateways learn at once that this session's access tokens are revoked.
        state.hub.changed();
    }
    let cookie = ops::login::set_cookie(&state, "");
    Ok((StatusCode::NO_CONTENT, [(SET_COOKIE, cookie)]).into_response())
}

/// Ends every session of the caller, on every device. 204.
pub async fn logout_everywhere(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
) -> Result<Response, ApiError> {
    let ended = state.store.delete_user_sessions(user.id).await?;
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

pub async fn me(AuthUser(user): AuthUser) -> Json<UserBody> {
    Json(UserBody { user: user.into() })
}
