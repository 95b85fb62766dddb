//! Who is calling: users (session cookie or personal API token) and nodes (Gateway token or
//! Agent API key), as axum extractors.

use super::error::ApiError;
use super::AppState;
use crate::secrets;
use crate::store::{NodeKind, NodeRef, UserRow};
use axum::extract::FromRequestParts;
use axum::http::header::{AUTHORIZATION, COOKIE};
use axum::http::request::Parts;
use axum::http::HeaderMap;

/// Name of the login session cookie.
pub const SESSION_COOKIE: &str = "km_session";

/// An authenticated user, by session cookie or `Authorization: Bearer kmt_...`.
pub struct AuthUser(pub UserRow);

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if let Some(session) = session_cookie(&parts.headers) {
            if let Some(user) = state.store.user_by_session(&secrets::hash(session)).await? {
                return Ok(AuthUser(user));
            }
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

/// The value of the login session cookie, from any `Cookie` header.
pub fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, value)| *name == SESSION_COOKIE && !value.is_empty())
        .map(|(_, value)| value)
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
    }
}
