//! Who is calling, for the API, the web UI and the access hand-off alike: users (login session
//! cookie or personal API token) and nodes (Gateway token or Agent API key), as axum extractors,
//! plus the client address that keys the login throttle ([`ClientIp`]). The cookie names and the
//! login session lifetimes are defined here, once. Every authenticated API request of a user
//! counts against their `api_requests_per_minute` (see `guard::ratelimit`).
//!
//! A state-changing request authenticated by the session cookie must also carry the session's
//! CSRF token in `X-CSRF-Token` (a cross-site page can make the browser send the cookie, but
//! cannot read the token). Bearer-token calls need none: a browser never adds those by itself.
//!
//! Above `app` (the extractors take `AppState`), below `ops` and the front ends that use it.

use crate::app::AppState;
use crate::error::ApiError;
use crate::guard::proxies::throttle_key;
use crate::secrets;
use crate::store::{LoginSession, NodeKind, NodeRef, UserRow};
use axum::extract::FromRequestParts;
use axum::http::header::{AUTHORIZATION, COOKIE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method};
use std::net::SocketAddr;

/// Name of the login session cookie where Control is served over plain HTTP (development).
pub const SESSION_COOKIE: &str = "km_session";
/// Its name over HTTPS: browsers take a `__Host-` cookie only with `Secure`, `Path=/` and no
/// `Domain`, so a sibling subdomain (a tunnel's app, say) can neither plant nor overwrite it.
pub const HOST_SESSION_COOKIE: &str = "__Host-km_session";
/// Header carrying the session's CSRF token on cookie-authenticated API writes.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// A session unused this long ends.
pub const SESSION_IDLE: time::Duration = time::Duration::hours(12);
/// A session ends this long after login, however active.
pub const SESSION_ABSOLUTE: time::Duration = time::Duration::days(7);

/// An authenticated user, by session cookie or `Authorization: Bearer kmt_...`.
pub struct AuthUser(pub UserRow);

/// The live session of the request's cookie, if any.
pub async fn current_session(
    headers: &HeaderMap,
    state: &AppState,
) -> Result<Option<LoginSession>, ApiError> {
    match session_cookie(headers) {
        Some(session) => Ok(state
            .store
            .login_session(&secrets::hash(session), SESSION_IDLE)
            .await?),
        None => Ok(None),
    }
}

/// Compares secrets without an early exit, so timing does not reveal the matching prefix.
pub fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && !a.is_empty()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// A state-changing request authenticated by `session`'s cookie must carry its CSRF token.
pub fn check_csrf(headers: &HeaderMap, session: &LoginSession) -> Result<(), ApiError> {
    let sent = headers
        .get(CSRF_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if same_secret(sent, &session.csrf_token) {
        Ok(())
    } else {
        Err(ApiError::forbidden(
            "CSRF check failed: a request authenticated by the session cookie must send the \
             session's token in the X-CSRF-Token header (from the login response), or use \
             Authorization: Bearer <personal API token> instead",
        ))
    }
}

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = ApiError;

    /// Authenticates, then takes one request from the user's rate limit (429 when spent).
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let user = Self::from_credentials(parts, state).await?;
        state.api_rate.check(&state.store, user.0.id).await?;
        Ok(user)
    }
}

impl AuthUser {
    /// The user of the request, without touching the rate limit.
    async fn from_credentials(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if let Some(session) = current_session(&parts.headers, state).await? {
            let safe = matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS);
            if !safe {
                check_csrf(&parts.headers, &session)?;
            }
            return Ok(AuthUser(session.user));
        }
        let Some(token) = bearer(&parts.headers) else {
            return Err(ApiError::unauthorized());
        };
        if token.starts_with(secrets::API_TOKEN_PREFIX) {
            if let Some(user) = state.store.user_by_token(&secrets::hash(token)).await? {
                return Ok(AuthUser(user));
            }
        } else if NodeKind::of_secret(token).is_some()
            && state.store.authenticate_node(token).await?.is_some()
        {
            return Err(ApiError::forbidden(
                "this is a node credential (Gateway token or Agent API key), which only opens the node \
                 session; use a personal API token (kmt_...) or log in to manage Control",
            ));
        }
        Err(ApiError::unauthorized())
    }
}

/// The client's throttle key (see the module header); `None` when not served with connect
/// info (a router driven directly in a unit test).
pub struct ClientIp(pub Option<String>);

impl FromRequestParts<AppState> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let PeerIp(ip) = PeerIp::from_request_parts(parts, state).await?;
        Ok(ClientIp(ip.map(throttle_key)))
    }
}

/// The client's address (through trusted proxies, see `guard::proxies`); `None` when not served
/// with connect info.
pub struct PeerIp(pub Option<std::net::IpAddr>);

impl FromRequestParts<AppState> for PeerIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        Ok(PeerIp(
            parts
                .extensions
                .get::<axum::extract::ConnectInfo<SocketAddr>>()
                .map(|c| {
                    state
                        .trusted_proxies
                        .client(c.0.ip(), &parts.headers)
                        .to_canonical()
                }),
        ))
    }
}

/// An authenticated node, by `Authorization: Bearer kmg_...` or `kma_...`.
pub struct AuthNode(pub NodeRef);

impl FromRequestParts<AppState> for AuthNode {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let unauthorized = || {
            ApiError::new(
                axum::http::StatusCode::UNAUTHORIZED,
                "send Authorization: Bearer <Gateway token (kmg_...) or Agent API key (kma_...)>",
            )
        };
        let token = bearer(&parts.headers).ok_or_else(unauthorized)?;
        match state.store.authenticate_node(token).await? {
            Some(node) => Ok(AuthNode(node)),
            None => Err(unauthorized()),
        }
    }
}

/// The token of an `Authorization: Bearer <token>` header.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The value of the login session cookie, from any `Cookie` header: the `__Host-` name first,
/// else the plain one (sessions begun over plain HTTP, or before the rename).
pub fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    let named = |wanted: &str| {
        headers
            .get_all(COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(name, value)| *name == wanted && !value.is_empty())
            .map(|(_, value)| value)
    };
    named(HOST_SESSION_COOKIE).or_else(|| named(SESSION_COOKIE))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn parses_bearer_and_cookie() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert(AUTHORIZATION, HeaderValue::from_static("bearer  kmt_abc "));
        assert_eq!(bearer(&h), Some("kmt_abc"));
        h.insert(AUTHORIZATION, HeaderValue::from_static("Basic kmt_abc"));
        assert_eq!(bearer(&h), None);
        h.insert(AUTHORIZATION, HeaderValue::from_static("Bearer "));
        assert_eq!(bearer(&h), None);

        h.append(COOKIE, HeaderValue::from_static("a=b; km_session="));
        h.append(
            COOKIE,
            HeaderValue::from_static("theme=dark;km_session=xyz"),
        );
        assert_eq!(session_cookie(&h), Some("xyz"));
        h.append(COOKIE, HeaderValue::from_static("__Host-km_session=abc"));
        assert_eq!(session_cookie(&h), Some("abc"), "the __Host- name wins");
    }
}
