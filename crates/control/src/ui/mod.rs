//! The web UI: server-rendered pages (minijinja templates compiled into the binary), a small
//! stylesheet and script served from memory, and the security headers of every response.
//!
//! Every page works without JavaScript; `static/app.js` only refreshes status badges by polling
//! `GET /api/v1/status`. Forms post back to the page's own route with the session's CSRF token,
//! which `form.rs` checks before any handler runs.

mod accounts;
mod activity;
mod agents;
mod alerts;
mod chart;
mod dashboard;
mod device;
mod form;
mod gateways;
mod overview;
mod page;
mod profile;
mod tunnels;
mod users;
mod viewer;
mod zones;

pub use page::not_found;

use crate::app::AppState;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::http::{HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

/// The UI's routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(dashboard::page))
        .route("/setup", get(accounts::setup_page).post(accounts::setup))
        .route("/login", get(accounts::login_page).post(accounts::login))
        .route("/logout", post(accounts::logout))
        .route(
            "/register",
            get(accounts::register_page).post(accounts::register),
        )
        .route("/agents", get(agents::list).post(agents::create))
        .route("/agents/{id}/rotate-key", post(agents::rotate_key))
        .route("/agents/{id}/delete", post(agents::delete))
        .route("/tunnels", get(tunnels::list).post(tunnels::create))
        .route("/tunnels/{id}", get(tunnels::show).post(tunnels::update))
        .route("/tunnels/{id}/toggle", post(tunnels::toggle))
        .route("/tunnels/{id}/check", post(tunnels::check))
        .route(
            "/tunnels/{id}/delete",
            get(tunnels::confirm_delete).post(tunnels::delete),
        )
        .route("/gateways", get(gateways::list).post(gateways::create))
        .route("/gateways/{id}/toggle", post(gateways::toggle))
        .route("/gateways/{id}/delete", post(gateways::delete))
        .route("/users", get(users::list).post(users::create))
        .route("/users/invite", post(users::invite))
        .route("/users/settings", post(users::settings))
        .route("/users/quotas", post(users::quotas))
        .route("/users/error-page", post(users::error_page))
        .route("/users/{id}/admin", post(users::set_admin))
        .route("/users/{id}/verified", post(users::set_verified))
        .route("/users/{id}/password", post(users::reset_password))
        .route("/users/{id}/delete", post(users::delete))
        .route("/dns", get(zones::list).post(zones::create))
        .route("/dns/{id}/check", post(zones::check))
        .route(
            "/dns/{id}/delete",
            get(zones::confirm_delete).post(zones::delete),
        )
        .route("/device", get(device::page).post(device::decide))
        .route("/profile", get(profile::page))
        .route("/profile/password", post(profile::change_password))
        .route("/profile/tokens", post(profile::create_token))
        .route("/profile/tokens/{id}/delete", post(profile::delete_token))
        .route(
            "/profile/logout-everywhere",
            post(profile::logout_everywhere),
        )
        .route("/activity", get(activity::page))
        .route("/alerts", get(alerts::page).post(alerts::create))
        .route("/alerts/channels/{id}/test", post(alerts::test))
        .route("/alerts/channels/{id}/delete", post(alerts::delete))
        .route("/static/app.css", get(css))
        .route("/static/app.js", get(js))
}

const CSS: &str = include_str!("../../static/app.css");
const JS: &str = include_str!("../../static/app.js");

/// Static files change only with the binary; a day of caching, revalidated by the query string
/// the templates add (the crate version).
fn asset(body: &'static str, content_type: &'static str) -> Response {
    (
        [
            (CONTENT_TYPE, content_type),
            (CACHE_CONTROL, "public, max-age=86400"),
        ],
        body,
    )
        .into_response()
}

async fn css() -> Response {
    asset(CSS, "text/css; charset=utf-8")
}

async fn js() -> Response {
    asset(JS, "text/javascript; charset=utf-8")
}

/// The Content-Security-Policy of every response (a handler may set a stricter or wider one).
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
     connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; \
     object-src 'none'";

/// The policy of a login page whose `next` is a protected tunnel's `/access/authorize?...` link:
/// browsers apply `form-action` to every redirect after a form is posted, and this login's chain
/// ends on the tunnel's host, so that one host is allowed too. `/access/authorize` itself checks
/// that the host is a published tunnel before sending anyone there. `None`: the usual policy.
pub fn csp_for_login(next: &str) -> Option<HeaderValue> {
    let query = next.strip_prefix("/access/authorize?")?;
    let target = form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "return")
        .and_then(|(_, v)| url::Url::parse(&v).ok())?;
    let host = match target.host()? {
        url::Host::Domain(d) => d.to_string(),
        _ => return None, // tunnels have DNS names
    };
    if !matches!(target.scheme(), "http" | "https")
        || !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
    {
        return None;
    }
    // `http://host:*` also matches https on any port (the hand-off may upgrade to https). A
    // command-line sign-in ends on the command's loopback listener instead.
    let extra = match crate::validate::cli_sign_in(query) {
        Ok(Some((port, _))) => format!("form-action 'self' http://127.0.0.1:{port};"),
        Ok(None) => format!("form-action 'self' {}://{host}:*;", target.scheme()),
        Err(_) => return None,
    };
    HeaderValue::from_str(&CSP.replace("form-action 'self';", &extra)).ok()
}

/// Security headers on every response (API and UI): no inline script, no framing, no sniffing,
/// no full URLs leaked to other sites.
pub async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    let set = |h: &mut axum::http::HeaderMap, name: &'static str, value: &'static str| {
        h.entry(HeaderName::from_static(name))
            .or_insert(HeaderValue::from_static(value));
    };
    set(headers, "content-security-policy", CSP);
    set(headers, "x-frame-options", "DENY");
    set(headers, "referrer-policy", "same-origin");
    set(headers, "x-content-type-options", "nosniff");
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_toward_a_tunnel_may_post_into_a_chain_ending_there() {
        let next =
            "/access/authorize?host=app.test&return=http%3A%2F%2Fapp.test%3A8080%2Fa%3Fb%3D1";
        let csp = csp_for_login(next).unwrap();
        let csp = csp.to_str().unwrap();
        assert!(
            csp.contains("form-action 'self' http://app.test:*;"),
            "{csp}"
        );
        assert!(csp.contains("frame-ancestors 'none'"), "the rest stays");
        let cli = format!("{next}&cli_port=40000&state=abcdefghij0123456789");
        let csp = csp_for_login(&cli).unwrap();
        assert!(
            csp.to_str()
                .unwrap()
                .contains("form-action 'self' http://127.0.0.1:40000;"),
            "a command's sign-in ends on its loopback port, not on the tunnel"
        );
        assert!(csp_for_login(&format!("{next}&cli_port=40000")).is_none());
        for plain in [
            "/",
            "/tunnels",
            "/access/authorize?host=app.test",
            "/access/authorize?return=javascript%3Aalert(1)",
            "/access/authorize?return=http%3A%2F%2F127.0.0.1%3A80%2F",
            "/access/authorize?return=http%3A%2F%2Fa%2520b.test%2F",
        ] {
            assert!(csp_for_login(plain).is_none(), "{plain}");
        }
    }
}
