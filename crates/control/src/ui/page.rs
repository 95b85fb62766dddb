//! Rendering: the template environment (templates compiled in), the context every page gets,
//! short confirmation messages after a redirect, and HTML error pages.

use super::viewer::Viewer;
use crate::error::ApiError;
use axum::http::{StatusCode, Uri};
use axum::response::{Html, IntoResponse, Redirect, Response};
use minijinja::{context, Environment, Value};
use serde::Deserialize;
use std::sync::OnceLock;

/// Every template, by name. Names ending in `.html` are auto-escaped.
const TEMPLATES: &[(&str, &str)] = &[
    ("base.html", include_str!("../../templates/base.html")),
    ("macros.html", include_str!("../../templates/macros.html")),
    ("setup.html", include_str!("../../templates/setup.html")),
    ("login.html", include_str!("../../templates/login.html")),
    (
        "register.html",
        include_str!("../../templates/register.html"),
    ),
    (
        "dashboard.html",
        include_str!("../../templates/dashboard.html"),
    ),
    ("agents.html", include_str!("../../templates/agents.html")),
    (
        "agent_key.html",
        include_str!("../../templates/agent_key.html"),
    ),
    ("tunnels.html", include_str!("../../templates/tunnels.html")),
    ("device.html", include_str!("../../templates/device.html")),
    ("tunnel.html", include_str!("../../templates/tunnel.html")),
    (
        "tunnel_delete.html",
        include_str!("../../templates/tunnel_delete.html"),
    ),
    (
        "gateways.html",
        include_str!("../../templates/gateways.html"),
    ),
    (
        "gateway_token.html",
        include_str!("../../templates/gateway_token.html"),
    ),
    ("users.html", include_str!("../../templates/users.html")),
    ("dns.html", include_str!("../../templates/dns.html")),
    ("alerts.html", include_str!("../../templates/alerts.html")),
    (
        "dns_delete.html",
        include_str!("../../templates/dns_delete.html"),
    ),
    ("profile.html", include_str!("../../templates/profile.html")),
    (
        "activity.html",
        include_str!("../../templates/activity.html"),
    ),
    ("error.html", include_str!("../../templates/error.html")),
];

fn env() -> &'static Environment<'static> {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Environment::new();
        env.add_filter("bytes", bytes_label);
        for (name, source) in TEMPLATES {
            // The templates are part of the binary; a syntax error is caught by the tests.
            if let Err(e) = env.add_template(name, source) {
                tracing::error!(template = name, error = %e, "bad template");
            }
        }
        env
    })
}

/// `1536` → `1.5 KiB`: byte counts as people read them (the `bytes` filter).
fn bytes_label(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// Renders `template` with `ctx`; a rendering failure is logged and shown as a plain 500.
pub fn render(status: StatusCode, template: &str, ctx: Value) -> Response {
    let ctx = context! { version => env!("CARGO_PKG_VERSION"), ..ctx };
    match env().get_template(template).and_then(|t| t.render(ctx)) {
        Ok(html) => (status, Html(html)).into_response(),
        Err(e) => {
            tracing::error!(template, error = %e, "cannot render page");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                Html("<h1>Internal error</h1><p>See Control's log.</p>".to_string()),
            )
                .into_response()
        }
    }
}

/// A page of the signed-in UI: adds the user, the CSRF token and the active menu entry.
pub fn page(
    viewer: &Viewer,
    status: StatusCode,
    template: &str,
    nav: &str,
    ctx: Value,
) -> Response {
    let me = context! {
        id => viewer.user.id,
        email => viewer.user.email.clone(),
        is_admin => viewer.user.is_admin,
    };
    let ctx = context! { me => me, csrf => viewer.csrf.clone(), nav => nav, ..ctx };
    render(status, template, ctx)
}

/// An error page for a signed-in user, keeping the menu.
pub fn error_page(viewer: &Viewer, e: &ApiError) -> Response {
    page(
        viewer,
        e.status(),
        "error.html",
        "",
        context! { title => e.status().canonical_reason().unwrap_or("Error"), message => e.message() },
    )
}

/// After a successful form: back to `to` with a confirmation code (a fixed list, so nobody can
/// make the page say arbitrary text through a link).
pub fn done(to: &str, code: &str) -> Response {
    let sep = if to.contains('?') { '&' } else { '?' };
    Redirect::to(&format!("{to}{sep}done={code}")).into_response()
}

/// The `?done=` confirmation code of a page reached after a form.
#[derive(Deserialize)]
pub struct Done {
    pub done: Option<String>,
}

/// The sentence for a confirmation code.
pub fn flash(code: Option<&str>) -> Option<&'static str> {
    Some(match code? {
        "agent-deleted" => "The agent was deleted.",
        "tunnel-created" => "The tunnel was created. Its status shows whether it can be served.",
        "tunnel-saved" => {
            "The tunnel was saved; the Gateways and the agent already have the change."
        }
        "tunnel-deleted" => "The tunnel was deleted.",
        "gateway-saved" => "The gateway was updated.",
        "gateway-deleted" => "The gateway was deleted.",
        "user-created" => "The user was created. Give them their password in person.",
        "user-saved" => "The user was updated.",
        "user-deleted" => "The user was deleted.",
        "settings-saved" => "The settings were saved.",
        "password-changed" => "Your password was changed. Other devices were logged out.",
        "token-deleted" => "The token was revoked.",
        "zone-created" => "The zone was added. Press Check to test its connection.",
        "channel-created" => "The channel was added. Press Test to send it a message now.",
        "channel-deleted" => "The channel was deleted.",
        "zone-deleted" => "The zone was deleted, with the DNS records kakuremichi wrote in it.",
        _ => return None,
    })
}

/// Fallback: JSON for `/api/...`, an HTML page for anything else.
pub async fn not_found(uri: Uri) -> Response {
    if uri.path().starts_with("/api/") {
        return crate::error::not_found().await.into_response();
    }
    render(
        StatusCode::NOT_FOUND,
        "error.html",
        context! {
            title => "Page not found",
            message => "There is no page at this address. Go back to the dashboard.",
        },
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn byte_counts_read_as_people_read_them() {
        assert_eq!(super::bytes_label(0), "0 B");
        assert_eq!(super::bytes_label(1023), "1023 B");
        assert_eq!(super::bytes_label(1536), "1.5 KiB");
        assert_eq!(super::bytes_label(5 << 30), "5.0 GiB");
        assert_eq!(super::bytes_label(u64::MAX), "16384.0 PiB");
    }
}
