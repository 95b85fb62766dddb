//! Logging in and out: password check behind the throttle, a fresh session per login (the id a
//! browser presented before is discarded: no session fixation), and the cookie that carries it.

use crate::app::AppState;
use crate::auth::{HOST_SESSION_COOKIE, SESSION_ABSOLUTE, SESSION_COOKIE, SESSION_IDLE};
use crate::error::ApiError;
use crate::secrets;
use crate::store::{from_now, UserRow};
use axum::http::StatusCode;

/// A session just created: the cookie value (secret) and its CSRF token.
pub struct NewLogin {
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
) -> Result<NewLogin, ApiError> {
    let email = email.trim().to_lowercase();
    // Counted before the check, atomically: a burst cannot queue more guesses than the limit.
    state
        .throttle
        .reserve(&email, ip)
        .await?
        .map_err(too_many)?;
    let user = state.store.user_by_email(&email).await?;
    let phc = user.as_ref().map_or_else(
        || state.dummy_password_hash.clone(),
        |u| u.password_hash.clone(),
    );
    let ok = match state.passwords.verify(password, phc).await {
        Ok(ok) => ok,
        Err(e) => {
            state.throttle.release(&email, ip).await?;
            return Err(e.into());
        }
    };
    let user = match (ok, user) {
        (true, Some(user)) => user,
        _ => {
            tracing::info!("failed login");
            // Already counted; say so when this failure started the wait.
            return Err(match state.throttle.wait(&email, ip).await? {
                Some(wait) => too_many(wait),
                None => ApiError::new(StatusCode::UNAUTHORIZED, "invalid email or password"),
            });
        }
    };
    state.throttle.succeeded(&email, ip).await?;
    if let Some(previous) = previous {
        state
            .store
            .delete_login_session(&secrets::hash(previous))
            .await?;
    }
    let session = start_login_session(state, user).await?;
    tracing::info!(user_id = session.user.id, "user logged in");
    Ok(session)
}

/// Opens a new session for `user` (after login, setup or registration).
pub async fn start_login_session(state: &AppState, user: UserRow) -> Result<NewLogin, ApiError> {
    let cookie = secrets::generate("");
    let csrf_token = secrets::generate("");
    state
        .store
        .create_login_session(
            &secrets::hash(&cookie),
            user.id,
            &csrf_token,
            &from_now(SESSION_ABSOLUTE),
            SESSION_IDLE,
        )
        .await?;
    Ok(NewLogin {
        user,
        cookie,
        csrf_token,
    })
}

/// `Set-Cookie` value for a session: HttpOnly, SameSite=Lax, Path=/, no Domain; over HTTPS
/// also Secure and named `__Host-...` (a plain-HTTP setup cannot use that prefix).
pub fn set_cookie(state: &AppState, value: &str) -> String {
    let max_age = if value.is_empty() {
        0
    } else {
        SESSION_ABSOLUTE.whole_seconds()
    };
    let (name, secure) = if state.secure_cookies {
        (HOST_SESSION_COOKIE, "; Secure")
    } else {
        (SESSION_COOKIE, "")
    };
    format!("{name}={value}; HttpOnly; SameSite=Lax; Path=/; Max-Age={max_age}{secure}")
}

fn too_many(wait: std::time::Duration) -> ApiError {
    ApiError::too_many(
        wait.as_secs().max(1),
        "too many failed logins for this account or from this address",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guard::hashing::Passwords;
    use std::sync::Arc;
    use std::time::Duration;

    /// 300 guesses polled at once (the right password among them, last): only the throttle's
    /// allowance reaches Argon2, and the rest are refused before any hashing.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_burst_of_guesses_gets_no_more_checks_than_the_limit() {
        let store = crate::store::Store::open("sqlite::memory:").await.unwrap();
        let pool = Arc::new(Passwords::new(2, 400));
        let right = "correct horse battery".to_string();
        let phc = pool.hash(right.clone()).await.unwrap();
        store
            .create_user("a@x.io", &phc, false, true)
            .await
            .unwrap();
        let hub = crate::hub::Hub::new(store, Duration::from_secs(1), Duration::from_secs(2));
        let network = crate::validate::WgNetwork::parse("10.77.0.0/16").unwrap();
        let state = AppState::new(hub, network, false, phc).with_passwords(Arc::clone(&pool));
        let before = pool.computed();
        let attempts = (0..300).map(|i| {
            let password = if i == 299 {
                right.clone()
            } else {
                format!("guess {i}")
            };
            let state = state.clone();
            async move { login(&state, "A@x.io", password, Some("192.0.2.1"), None).await }
        });
        let results = futures_util::future::join_all(attempts).await;
        let checked = pool.computed() - before;
        assert!(checked <= 5, "{checked} passwords were checked");
        let refused = results
            .iter()
            .filter(|r| r.as_ref().err().and_then(ApiError::retry_after).is_some())
            .count();
        assert!(refused >= 295, "{refused} were told to retry later");
        assert!(results[299].is_err(), "the right password came too late");
    }
}
