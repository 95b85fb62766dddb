//! Logging in and out: password check behind the throttle, a fresh session per login (the id a
//! browser presented before is discarded: no session fixation), and the cookie that carries it.

use crate::api::authn::{SESSION_ABSOLUTE, SESSION_COOKIE, SESSION_IDLE};
use crate::api::{ApiError, AppState};
use crate::secrets;
use crate::store::{from_now, UserRow};
use axum::http::StatusCode;

/// A session just created: the cookie value (secret) and its CSRF token.
pub struct NewSession {
    pub user: UserRow,
    pub cookie: String,
    pub csrf_token: String,
}

/// Checks the password (throttled per account and per IP) and opens a new session, ending the
/// session the browser presented, if any.
pub async fn login(
    state: &AppState,
    email: &str,
    password: String,
    ip: Option<&str>,
    previous: Option<&str>,
) -> Result<NewSession, ApiError> {
    let email = email.trim().to_lowercase();
    if let Some(wait) = state.throttle.wait(&email, ip) {
        return Err(too_many(wait));
    }
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
        tokio::task::spawn_blocking(move || secrets::verify_password(&password, &phc))
            .await
            .unwrap_or(false)
    };
    let user = match (ok, user) {
        (true, Some(user)) => user,
        _ => {
            state.throttle.failed(&email, ip);
            tracing::info!("failed login");
            return Err(match state.throttle.wait(&email, ip) {
                Some(wait) => too_many(wait),
                None => ApiError::new(StatusCode::UNAUTHORIZED, "invalid email or password"),
            });
        }
    };
    state.throttle.succeeded(&email);
    if let Some(previous) = previous {
        state.store.delete_session(&secrets::hash(previous)).await?;
    }
    let session = start_session(state, user).await?;
    tracing::info!(user_id = session.user.id, "user logged in");
    Ok(session)
}

/// Opens a new session for `user` (after login, setup or registration).
pub async fn start_session(state: &AppState, user: UserRow) -> Result<NewSession, ApiError> {
    let cookie = secrets::generate("");
    let csrf_token = secrets::generate("");
    state
        .store
        .create_session(
            &secrets::hash(&cookie),
            user.id,
            &csrf_token,
            &from_now(SESSION_ABSOLUTE),
            SESSION_IDLE,
        )
        .await?;
    Ok(NewSession {
        user,
        cookie,
        csrf_token,
    })
}

/// `Set-Cookie` value for a session: HttpOnly, SameSite=Lax, Secure when served over HTTPS.
pub fn set_cookie(state: &AppState, value: &str) -> String {
    let max_age = if value.is_empty() {
        0
    } else {
        SESSION_ABSOLUTE.whole_seconds()
    };
    format!(
        "{SESSION_COOKIE}={value}; HttpOnly; SameSite=Lax; Path=/; Max-Age={max_age}{}",
        if state.secure_cookies { "; Secure" } else { "" }
    )
}

fn too_many(wait: std::time::Duration) -> ApiError {
    ApiError::too_many(
        wait.as_secs().max(1),
        "too many failed logins for this account or from this address",
    )
}
