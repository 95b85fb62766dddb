//! Who is looking at a page: the [`Viewer`], the signed-in user of the login session cookie (else
//! a redirect to the login page, or to the setup page while no user exists), and the CSRF checks
//! of forms. Three distinct words: a `LoginSession` (store) is what the cookie names, a `Viewer`
//! is the UI's signed-in user, an `AuthUser` (auth) the API's; node sessions live in the hub.

use crate::app::AppState;
use crate::auth::{current_session, same_secret};
use crate::error::ApiError;
use crate::store::UserRow;
use axum::extract::FromRequestParts;
use axum::http::header::{HOST, ORIGIN};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};

/// A signed-in user of the UI, with the session's CSRF token for the forms.
pub struct Viewer {
    pub user: UserRow,
    pub csrf: String,
}

impl FromRequestParts<AppState> for Viewer {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        match current_session(&parts.headers, state).await {
            Ok(Some(s)) => Ok(Viewer {
                user: s.user,
                csrf: s.csrf_token,
            }),
            Ok(None) => {
                if state.store.count_users().await.unwrap_or(1) == 0 {
                    return Err(Redirect::to("/setup").into_response());
                }
                let here = parts
                    .uri
                    .path_and_query()
                    .map_or("/", |p| p.as_str())
                    .to_string();
                let to = if here == "/" {
                    "/login".to_string()
                } else {
                    format!("/login?next={}", encode(&here))
                };
                Err(Redirect::to(&to).into_response())
            }
            Err(e) => Err(e.into_response()),
        }
    }
}

impl Viewer {
    /// The form's `csrf` field must be this session's token.
    pub fn check(&self, sent: &str) -> Result<(), ApiError> {
        if same_secret(sent, &self.csrf) {
            Ok(())
        } else {
            Err(ApiError::forbidden(
                "this form has expired or was sent from another site; reload the page and try again",
            ))
        }
    }
}

/// A form posted from another site.
pub struct CrossSite;

impl IntoResponse for CrossSite {
    fn into_response(self) -> Response {
        (
            StatusCode::FORBIDDEN,
            "cross-site form submission refused; open Control's own page and try again",
        )
            .into_response()
    }
}

/// Forms without a session yet (login, setup, register): a cross-site `Origin` is refused, so
/// another site cannot log a browser into an account of its choosing.
pub fn same_origin(headers: &HeaderMap) -> Result<(), CrossSite> {
    let Some(origin) = headers.get(ORIGIN).and_then(|v| v.to_str().ok()) else {
        return Ok(()); // not sent by old browsers on same-origin posts
    };
    let host = headers
        .get(HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let origin_host = origin
        .split_once("://")
        .map_or("", |(_, rest)| rest.trim_end_matches('/'));
    if !host.is_empty() && origin_host.eq_ignore_ascii_case(host) {
        Ok(())
    } else {
        Err(CrossSite)
    }
}

/// Where to go after login: only a path on this site (`/x`, not `//host` or `https://...`).
pub fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n)
            if n.starts_with('/')
                && !n.starts_with("//")
                && !n.starts_with("/\\")
                && !n.chars().any(|c| c.is_control() || c == '\\') =>
        {
            n.to_string()
        }
        _ => "/".to_string(),
    }
}

/// Percent-encodes a path for a query parameter.
pub fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_must_stay_on_this_site() {
        assert_eq!(safe_next(Some("/tunnels/3")), "/tunnels/3");
        assert_eq!(safe_next(Some("/access/x?y=1")), "/access/x?y=1");
        assert_eq!(safe_next(Some("//evil.example/")), "/");
        assert_eq!(safe_next(Some("/\\evil.example")), "/");
        assert_eq!(safe_next(Some("https://evil.example/")), "/");
        assert_eq!(safe_next(Some("javascript:alert(1)")), "/");
        assert_eq!(safe_next(Some("")), "/");
        assert_eq!(safe_next(None), "/");
        assert_eq!(encode("/a b?c=d&e"), "/a%20b%3Fc%3Dd%26e");
    }
}
