//! `GET /access/authorize?host=<host>&return=<original URL>`: where Gateways send visitors of a
//! protected tunnel. Answers with redirects and small HTML pages (browsers, not API clients), so
//! these routes sit outside the API's JSON error layer.
//!
//! With `&cli_port=<port>&state=<nonce>` (`kakuremichi access tcp`, which opens this link in the
//! user's browser) the token goes to the command's loopback listener instead,
//! `http://127.0.0.1:<port>/callback?token=...&state=<nonce>` (a loopback redirect, as in
//! RFC 8252): only a program on the user's own machine can receive it, and it checks the nonce.

use super::Access;
use crate::app::AppState;
use crate::auth::{session_cookie, SESSION_IDLE};
use crate::secrets;
use crate::store::UserRow;
use crate::validate;
use axum::extract::{RawQuery, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, LOCATION, REFERRER_POLICY};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use kakuremichi_proto::AccessPolicy;

/// The path the Gateway's hand-off endpoint answers on every protected host.
pub const HANDOFF_PATH: &str = "/.kakuremichi/access";

/// The routes of this module, merged into Control's router.
pub fn routes() -> Router<AppState> {
    Router::new().route("/access/authorize", get(authorize))
}

/// A validated request: the normalised host and the URL to come back to (on that host), or the
/// command-line client's loopback port and nonce.
struct Request {
    host: String,
    target: url::Url,
    cli: Option<(u16, String)>,
}

fn parse(raw: Option<&str>) -> Result<Request, &'static str> {
    let mut host = None;
    let mut target = None;
    for (key, value) in form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
        match key.as_ref() {
            "host" => host = Some(value.into_owned()),
            "return" => target = Some(value.into_owned()),
            _ => {}
        }
    }
    let host = validate::hostname(&host.ok_or("The link names no host.")?)
        .map_err(|_| "The link names an invalid host.")?;
    let target = url::Url::parse(&target.ok_or("The link names no address to return to.")?)
        .map_err(|_| "The address to return to is not a valid URL.")?;
    let same_host = target
        .host_str()
        .is_some_and(|h| h.eq_ignore_ascii_case(&host));
    if !matches!(target.scheme(), "http" | "https")
        || !same_host
        || !target.username().is_empty()
        || target.password().is_some()
    {
        return Err("The address to return to does not belong to the host in the link.");
    }
    let cli = validate::cli_sign_in(raw.unwrap_or(""))?;
    Ok(Request { host, target, cli })
}

pub async fn authorize(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Response {
    let req = match parse(raw.as_deref()) {
        Ok(req) => req,
        Err(why) => return page(StatusCode::BAD_REQUEST, "Invalid sign-in link", why),
    };
    match admit(&state, &headers, &req).await {
        Ok(response) => response,
        Err(e) => {
            tracing::error!(error = %e, host = %req.host, "access authorization failed");
            page(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Something went wrong",
                "Control could not complete the sign-in; see its log.",
            )
        }
    }
}

async fn admit(
    state: &AppState,
    headers: &HeaderMap,
    req: &Request,
) -> Result<Response, crate::store::StoreError> {
    // Only hosts of this Control's enabled tunnels: never an open redirect to anywhere else.
    let Some((tunnel_id, policy, https_only)) = state.store.access_policy(&req.host).await? else {
        let detail = format!("No app is published at {}.", req.host);
        return Ok(page(StatusCode::BAD_REQUEST, "Unknown app", &detail));
    };
    if policy.is_public() {
        return Ok(redirect(req.target.as_str()));
    }
    // The same validity (absolute and idle expiry) as every other signed-in request.
    let hash = session_cookie(headers).map(secrets::hash);
    let signed_in = match &hash {
        Some(hash) => state.store.login_session(hash, SESSION_IDLE).await?,
        None => None,
    };
    let (Some(hash), Some(session)) = (hash, signed_in) else {
        let mut again = form_urlencoded::Serializer::new(String::new());
        again
            .append_pair("host", &req.host)
            .append_pair("return", req.target.as_str());
        if let Some((port, state)) = &req.cli {
            again
                .append_pair("cli_port", &port.to_string())
                .append_pair("state", state);
        }
        let again = again.finish();
        let next = format!("/access/authorize?{again}");
        let login = form_urlencoded::Serializer::new(String::new())
            .append_pair("next", &next)
            .finish();
        return Ok(redirect(&format!("/login?{login}")));
    };
    let (user, expires) = (session.user, session.expires_at);
    if !admits(&policy, &user) {
        tracing::info!(user_id = user.id, host = %req.host, "access denied by the tunnel's policy");
        return Ok(denied(&user, &req.host, &policy));
    }
    let token = Access::new(state.store.clone(), state.access_ttl)
        .mint(&user, &hash, &expires, &req.host, policy.digest(tunnel_id))
        .await?;
    tracing::info!(user_id = user.id, host = %req.host, cli = req.cli.is_some(), "access token issued");
    if let Some((port, state)) = &req.cli {
        let query = form_urlencoded::Serializer::new(String::new())
            .append_pair("token", &token)
            .append_pair("state", state)
            .finish();
        return Ok(redirect(&format!(
            "http://127.0.0.1:{port}/callback?{query}"
        )));
    }
    Ok(redirect(
        handoff_url(&req.target, &token, https_only).as_str(),
    ))
}

/// An allow-list names e-mail addresses, so it admits only accounts known to own theirs: a
/// self-registered account must be verified by an admin first (anyone can type any address).
fn admits(policy: &AccessPolicy, user: &UserRow) -> bool {
    let verified_if_listed = !matches!(policy, AccessPolicy::Users { .. }) || user.email_verified;
    verified_if_listed && policy.admits(&user.email)
}

/// `<scheme>://<host>[:port]/.kakuremichi/access?token=...&return=<path?query>`. For a tunnel
/// served over HTTPS only, a (crafted) `http://` return URL is upgraded, so the token never
/// crosses the network in clear text.
fn handoff_url(target: &url::Url, token: &str, https_only: bool) -> url::Url {
    let back = match target.query() {
        Some(q) => format!("{}?{q}", target.path()),
        None => target.path().to_string(),
    };
    let mut to = target.clone();
    if https_only && to.scheme() == "http" {
        let _ = to.set_scheme("https");
        let _ = to.set_port(None);
    }
    to.set_path(HANDOFF_PATH);
    to.set_fragment(None);
    let query = form_urlencoded::Serializer::new(String::new())
        .append_pair("token", token)
        .append_pair("return", &back)
        .finish();
    to.set_query(Some(&query));
    to
}

fn denied(user: &UserRow, host: &str, policy: &AccessPolicy) -> Response {
    let email = user.email.as_str();
    let rule = match policy {
        AccessPolicy::Users { .. } if !user.email_verified && policy.admits(email) => {
            "admits listed addresses only from accounts whose address an admin has verified \
             (yours was self-registered; ask an admin to verify it)"
        }
        AccessPolicy::Users { .. } => "only admits the users its owner listed",
        _ => "does not admit this account",
    };
    let detail = format!(
        "You are signed in as <b>{}</b>, but <b>{}</b> {rule}. Ask the app's owner to add \
         your address, or sign in with another account.",
        escape(email),
        escape(host)
    );
    page_html(StatusCode::FORBIDDEN, "Access denied", &detail)
}

fn redirect(location: &str) -> Response {
    let mut response = StatusCode::FOUND.into_response();
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(location) {
        headers.insert(LOCATION, value);
    }
    // The hand-off URL carries a token: keep it out of caches and Referer headers.
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    response
}

fn page(status: StatusCode, title: &str, text: &str) -> Response {
    page_html(status, title, &escape(text))
}

fn page_html(status: StatusCode, title: &str, detail_html: &str) -> Response {
    // The web UI's look (its stylesheet is on this same origin), readable on a phone.
    let html = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title} · kakuremichi</title><link rel=\"stylesheet\" href=\"/static/app.css\"></head>\n\
         <body><header class=\"topbar\"><a class=\"brand\" href=\"/\"><span class=\"logo\"></span>\
         kakuremichi</a></header>\n<main class=\"container\"><section class=\"card auth\">\
         <h1>{title}</h1><p>{detail_html}</p></section></main></body></html>\n"
    );
    let mut response = (status, html).into_response();
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn return_url_must_be_on_the_host() {
        let ok = parse(Some(
            "host=App.Example.com&return=https%3A%2F%2Fapp.example.com%3A8443%2Fa%3Fb%3D1",
        ))
        .unwrap();
        assert_eq!(ok.host, "app.example.com");
        let url = handoff_url(&ok.target, "T.S", true);
        assert_eq!(
            url.as_str(),
            "https://app.example.com:8443/.kakuremichi/access?token=T.S&return=%2Fa%3Fb%3D1"
        );
        let plain = parse(Some(
            "host=app.example.com&return=http%3A%2F%2Fapp.example.com%3A8080%2F",
        ))
        .unwrap();
        assert_eq!(
            handoff_url(&plain.target, "T.S", true).as_str(),
            "https://app.example.com/.kakuremichi/access?token=T.S&return=%2F"
        );
        assert!(handoff_url(&plain.target, "T.S", false)
            .as_str()
            .starts_with("http://app.example.com:8080/"));
        for bad in [
            "host=app.example.com&return=https%3A%2F%2Fevil.example.com%2F",
            "host=app.example.com&return=javascript%3Aalert(1)",
            "host=app.example.com&return=https%3A%2F%2Fu%3Ap%40app.example.com%2F",
            "host=app.example.com&return=%2Frelative",
            "host=app.example.com",
            "return=https%3A%2F%2Fapp.example.com%2F",
            "host=%2F%2F&return=x",
            "",
        ] {
            assert!(parse(Some(bad)).is_err(), "{bad}");
        }
        assert!(parse(None).is_err());
    }

    #[test]
    fn a_command_line_sign_in_names_a_port_and_a_nonce() {
        let base = "host=db.example.com&return=https%3A%2F%2Fdb.example.com%2F";
        let ok = parse(Some(&format!(
            "{base}&cli_port=40000&state=abcdefghij0123456789"
        )))
        .unwrap();
        assert_eq!(ok.cli, Some((40000, "abcdefghij0123456789".to_string())));
        assert_eq!(parse(Some(base)).unwrap().cli, None, "a browser's sign-in");
        for bad in [
            "&cli_port=40000",
            "&state=abcdefghij0123456789",
            "&cli_port=80&state=abcdefghij0123456789",
            "&cli_port=70000&state=abcdefghij0123456789",
            "&cli_port=40000&state=short",
            "&cli_port=40000&state=abcdefghij0123456789%3Cscript%3E",
        ] {
            assert!(parse(Some(&format!("{base}{bad}"))).is_err(), "{bad}");
        }
    }

    #[test]
    fn denied_page_names_the_user_and_escapes() {
        let r = denied(
            &user("<b>@x.io", true),
            "app.example.com",
            &AccessPolicy::Users {
                allow: Default::default(),
            },
        );
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
    }

    fn user(email: &str, email_verified: bool) -> UserRow {
        UserRow {
            id: 1,
            email: email.into(),
            password_hash: String::new(),
            is_admin: false,
            created_at: String::new(),
            email_verified,
        }
    }

    #[test]
    fn allow_lists_admit_only_verified_accounts() {
        let listed = AccessPolicy::Users {
            allow: ["a@x.io".to_string()].into(),
        };
        assert!(admits(&listed, &user("a@x.io", true)));
        assert!(!admits(&listed, &user("a@x.io", false)));
        assert!(!admits(&listed, &user("b@x.io", true)));
        assert!(admits(&AccessPolicy::Login, &user("b@x.io", false)));
    }
}
