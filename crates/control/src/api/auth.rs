//! Browser login: `POST /auth/login` sets an HttpOnly session cookie, `POST /auth/logout` ends it,
//! `GET /auth/me` says who is logged in.

use super::authn::{session_cookie, AuthUser, SESSION_COOKIE};
use super::error::{ApiError, ApiJson};
use super::AppState;
use crate::secrets;
use crate::store::{from_now, UserRow};
use axum::extract::State;
use axum::http::header::SET_COOKIE;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};

/// Lifetime of a login session.
const SESSION_DAYS: i64 = 7;

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
}

impl From<UserRow> for UserView {
    fn from(u: UserRow) -> Self {
        Self {
            id: u.id,
            email: u.email,
            is_admin: u.is_admin,
        }
    }
}

#[derive(Serialize)]
pub struct UserBody {
    user: UserView,
}

pub async fn login(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<LoginBody>,
) -> Result<Response, ApiError> {
    let email = body.email.trim().to_lowercase();
    let user = state.store.user_by_email(&email).await?;
    let phc = user.as_ref().map_or_else(
        || state.dummy_password_hash.clone(),
        |u| u.password_hash.clone(),
    );
    let ok = {
        let _slot = state
            .password_checks
            .acquire()
            .await
            .map_err(|_| ApiError::internal())?;
        let password = body.password;
        tokio::task::spawn_blocking(move || secrets::verify_password(&password, &phc))
            .await
            .unwrap_or(false)
    };
    let user = match (ok, user) {
        (true, Some(user)) => user,
        _ => {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "invalid email or password",
            ))
        }
    };
    let session = secrets::generate("");
    let expires = from_now(time::Duration::days(SESSION_DAYS));
    state
        .store
        .create_session(&secrets::hash(&session), user.id, &expires)
        .await?;
    tracing::info!(user_id = user.id, "user logged in");
    let cookie = format!(
        "{SESSION_COOKIE}={session}; HttpOnly; SameSite=Lax; Path=/; Max-Age={}{}",
        SESSION_DAYS * 24 * 3600,
        if state.secure_cookies { "; Secure" } else { "" }
    );
    Ok(([(SET_COOKIE, cookie)], Json(UserBody { user: user.into() })).into_response())
}

/// Ends the session of the cookie, if any, and clears the cookie. Always 204.
pub async fn logout(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if let Some(session) = session_cookie(&headers) {
        state.store.delete_session(&secrets::hash(session)).await?;
        // Gateways learn at once that this session's access tokens are revoked.
        state.hub.changed();
    }
    let cookie = format!(
        "{SESSION_COOKIE}=; HttpOnly; SameSite=Lax; Path=/; Max-Age=0{}",
        if state.secure_cookies { "; Secure" } else { "" }
    );
    Ok((StatusCode::NO_CONTENT, [(SET_COOKIE, cookie)]).into_response())
}

pub async fn me(AuthUser(user): AuthUser) -> Json<UserBody> {
    Json(UserBody { user: user.into() })
}
