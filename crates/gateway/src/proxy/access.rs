//! Per-tunnel access control, the Gateway's half: admits a request to a protected route only with
//! a valid access cookie, and answers the hand-off that sets that cookie. Control's half (and the
//! whole flow) is described in `kakuremichi_control::access`; the token format in
//! [`kakuremichi_proto::access`].
//!
//! Per request, without a lock or a call to Control: the keys and revocations come from the last
//! snapshot (swapped atomically, like the routes), the policy from the route itself.
//! - `/.kakuremichi/...` is answered here on every routed host and never reaches the origin;
//!   `/.kakuremichi/access?token=...&return=/path` verifies a freshly minted token (signature,
//!   key, host, age), sets it as a host-only cookie and redirects to the (relative) path.
//! - The access cookie and any client-sent `X-Kakuremichi-User` are removed from every request;
//!   on protected routes the Gateway then sets `X-Kakuremichi-User: <e-mail>` for the app.
//! - No valid cookie, or one minted against another version of the route's allow-list (the
//!   Gateway holds only the list's digest): `302` to Control's `/access/authorize`, which checks
//!   the list, mints a new token or shows the denial, and brings the visitor back.

use std::collections::HashSet;
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{CACHE_CONTROL, COOKIE, LOCATION, REFERRER_POLICY, SET_COOKIE};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use kakuremichi_proto::access::{AccessClaims, KeySet, HANDOFF_MAX_AGE_SECS};
use kakuremichi_proto::{AccessConfig, GatewayRoute};

use super::headers::ClientHost;
use super::pages::{escape, page};
use super::Scheme;

/// Name of the host-only cookie holding the access token over plain HTTP.
pub const ACCESS_COOKIE: &str = "km_access";
/// Its name over HTTPS. A browser accepts a `__Host-` cookie only from this very host, `Secure`,
/// with `Path=/` and no `Domain`, so a sibling subdomain or a plain-HTTP response cannot plant
/// or shadow it.
pub const HOST_ACCESS_COOKIE: &str = "__Host-km_access";

/// The access cookie's name for requests arriving over `scheme`.
fn cookie_name(scheme: Scheme) -> &'static str {
    match scheme {
        Scheme::Https => HOST_ACCESS_COOKIE,
        Scheme::Http => ACCESS_COOKIE,
    }
}
/// Where Control sends visitors back with a fresh token.
pub const HANDOFF_PATH: &str = "/.kakuremichi/access";
/// Paths the Gateway keeps for itself on every host.
const RESERVED_PREFIX: &str = "/.kakuremichi/";
/// Who the visitor is, for the app behind a protected route.
pub const USER_HEADER: HeaderName = HeaderName::from_static("x-kakuremichi-user");

/// The access configuration of the current snapshot, swapped atomically on each one.
pub struct AccessGate {
    state: ArcSwap<AccessState>,
}

#[derive(Default)]
struct AccessState {
    keys: KeySet,
    revoked: HashSet<String>,
    /// Control's base URL for redirects, without a trailing slash; empty if unknown.
    control_url: String,
}

impl Default for AccessGate {
    fn default() -> Self {
        Self {
            state: ArcSwap::from_pointee(AccessState::default()),
        }
    }
}

impl AccessGate {
    /// Takes a snapshot's access configuration. `fallback_control_url` (the URL this Gateway
    /// reaches Control by) is used when Control did not say how browsers reach it.
    pub fn apply(&self, config: &AccessConfig, fallback_control_url: &str) {
        let url = match config.control_url.as_str() {
            "" => fallback_control_url,
            url => url,
        };
        self.state.store(std::sync::Arc::new(AccessState {
            keys: KeySet::new(&config.keys),
            revoked: config.revoked.iter().cloned().collect(),
            control_url: url.trim_end_matches('/').to_string(),
        }));
    }

    /// Lets the request through (after removing the access cookie and any forged user header,
    /// and adding the verified user), or returns what to answer instead (boxed: the `Ok` path
    /// is the hot one).
    pub(crate) fn admit<B>(
        &self,
        req: &mut Request<B>,
        host: &ClientHost,
        route: &GatewayRoute,
        scheme: Scheme,
    ) -> Result<(), Box<Response<Full<Bytes>>>> {
        remove_user_header(req.headers_mut());
        // Both names leave the request (the app never sees a token); over HTTPS only the
        // `__Host-` one counts, since the plain one may come from http or a sibling host.
        let secure = take_cookie(req.headers_mut(), HOST_ACCESS_COOKIE);
        let plain = take_cookie(req.headers_mut(), ACCESS_COOKIE);
        let token = match scheme {
            Scheme::Https => secure,
            Scheme::Http => plain,
        };
        let path = req.uri().path();
        if path == HANDOFF_PATH {
            return Err(Box::new(self.handoff(
                req.uri().query(),
                host,
                route,
                scheme,
            )));
        }
        // `/.kakuremichi/tcp` of a tcp tunnel with access control is checked like any request
        // (see `tcp_access`); every other reserved path stops here.
        let tcp = route.tcp_access && path == super::tcp_access::TCP_PATH;
        if path.starts_with(RESERVED_PREFIX) && !tcp {
            return Err(Box::new(page(
                StatusCode::NOT_FOUND,
                "This path is reserved by the gateway.",
            )));
        }
        if route.access.is_public() {
            return Ok(());
        }
        let state = self.state.load();
        if state.keys.is_empty() || state.control_url.is_empty() {
            return Err(Box::new(page(
                StatusCode::SERVICE_UNAVAILABLE,
                "This app requires signing in, but this gateway has not yet received its access \
                 configuration from Control. Try again shortly.",
            )));
        }
        let claims = token.and_then(|t| state.check(&t, &host.name, unix_now()));
        match claims {
            Some(claims) if route.access.admits(&claims) => {
                if let Ok(value) = HeaderValue::from_str(&claims.email) {
                    req.headers_mut().insert(USER_HEADER, value);
                }
                Ok(())
            }
            // No token, or one minted against another version of the route's allow-list: only
            // Control holds the list, so it decides again (and shows the denial if it is one).
            _ => {
                let path = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
                Err(Box::new(to_login(&state.control_url, host, scheme, path)))
            }
        }
    }

    /// `/.kakuremichi/access?token=...&return=...`: a token straight from Control.
    fn handoff(
        &self,
        query: Option<&str>,
        host: &ClientHost,
        route: &GatewayRoute,
        scheme: Scheme,
    ) -> Response<Full<Bytes>> {
        let (mut token, mut back) = (None, None);
        for (key, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            match key.as_ref() {
                "token" => token = Some(value.into_owned()),
                "return" => back = Some(value.into_owned()),
                _ => {}
            }
        }
        let back = relative_path(back.as_deref());
        let now = unix_now();
        let claims = token
            .and_then(|t| Some((self.state.load().check(&t, &host.name, now)?, t)))
            .filter(|(c, _)| now <= c.iat.saturating_add(HANDOFF_MAX_AGE_SECS));
        let Some((claims, token)) = claims else {
            let detail = format!(
                "This sign-in link is invalid or has expired. <a href=\"{}\">Try again</a>.",
                escape(back)
            );
            return page(StatusCode::FORBIDDEN, &detail);
        };
        if !route.access.admits(&claims) {
            // Minted against another version of the allow-list than this Gateway holds (it
            // changed while the visitor signed in): no redirect, so no loop with Control.
            let detail = format!(
                "The list of who may use <b>{}</b> changed while you were signing in. \
                 <a href=\"{}\">Try again</a>.",
                escape(&host.name),
                escape(back)
            );
            return page(StatusCode::FORBIDDEN, &detail);
        }
        let cookie = format!(
            "{}={token}; Path=/; HttpOnly; SameSite=Lax; Max-Age={}{}",
            cookie_name(scheme),
            claims.exp.saturating_sub(now),
            if scheme == Scheme::Https {
                "; Secure"
            } else {
                ""
            }
        );
        let mut response = redirect(back);
        if let Ok(value) = HeaderValue::from_str(&cookie) {
            response.headers_mut().insert(SET_COOKIE, value);
        }
        response
    }
}

impl AccessState {
    /// The claims of a valid, unrevoked token for `host`.
    fn check(&self, token: &str, host: &str, now: u64) -> Option<AccessClaims> {
        match self.keys.verify(token, host, now) {
            Ok(claims) if self.revoked.contains(&claims.sid) => {
                tracing::debug!(host, "access token of a revoked session");
                None
            }
            Ok(claims) => Some(claims),
            Err(err) => {
                tracing::debug!(host, error = %err, "access token refused");
                None
            }
        }
    }
}

/// Removes every header that an origin could read as the user header: `X-Kakuremichi-User` in
/// any case and with `_` for `-` (PHP, CGI and nginx's `underscores_in_headers` map both to the
/// same variable). Used on request headers and on request trailers.
pub(crate) fn remove_user_header(headers: &mut HeaderMap) {
    let lookalikes: Vec<HeaderName> = headers
        .keys()
        .filter(|name| is_user_header(name))
        .cloned()
        .collect();
    for name in lookalikes {
        headers.remove(name);
    }
}

fn is_user_header(name: &HeaderName) -> bool {
    let ours = USER_HEADER;
    let (name, ours) = (name.as_str().as_bytes(), ours.as_str().as_bytes());
    // Header names are lowercase in `http`; only `_` vs `-` remains to fold.
    name.len() == ours.len()
        && name
            .iter()
            .zip(ours)
            .all(|(a, b)| a == b || (*a == b'_' && *b == b'-'))
}

/// `302` to Control's authorize endpoint, which sends the visitor back to this very URL.
fn to_login(
    control_url: &str,
    host: &ClientHost,
    scheme: Scheme,
    path: &str,
) -> Response<Full<Bytes>> {
    let original = format!("{}://{}{}", scheme.as_str(), host.authority, path);
    let query = form_urlencoded::Serializer::new(String::new())
        .append_pair("host", &host.name)
        .append_pair("return", &original)
        .finish();
    redirect(&format!("{control_url}/access/authorize?{query}"))
}

fn redirect(location: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::FOUND;
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(location) {
        headers.insert(LOCATION, value);
    }
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    response
}

/// The hand-off's return path if it is a path on this host, else `/`: never an open redirect
/// (`//evil.example`, `/\evil.example` and absolute URLs are refused).
fn relative_path(back: Option<&str>) -> &str {
    match back {
        Some(p)
            if p.starts_with('/')
                && !p.starts_with("//")
                && !p.starts_with("/\\")
                && !p.chars().any(|c| c.is_control()) =>
        {
            p
        }
        _ => "/",
    }
}

/// Removes cookie `name` from every `Cookie` header and returns its (last non-empty) value.
/// The other cookies are kept, joined into one header (as `headers::prepare_request` would).
fn take_cookie(headers: &mut HeaderMap, name: &str) -> Option<String> {
    let mentions = headers.get_all(COOKIE).iter().any(|v| {
        v.as_bytes()
            .windows(name.len())
            .any(|w| w == name.as_bytes())
    });
    if !mentions {
        return None;
    }
    let mut found = None;
    let mut kept: Vec<&[u8]> = Vec::new();
    for value in headers.get_all(COOKIE) {
        for pair in value.as_bytes().split(|b| *b == b';') {
            let pair = pair.trim_ascii();
            if pair.is_empty() {
                continue;
            }
            match pair.iter().position(|b| *b == b'=') {
                Some(eq) if pair[..eq].trim_ascii() == name.as_bytes() => {
                    let v = pair[eq + 1..].trim_ascii();
                    if let (false, Ok(v)) = (v.is_empty(), std::str::from_utf8(v)) {
                        found = Some(v.to_string());
                    }
                }
                _ => kept.push(pair),
            }
        }
    }
    let joined = kept.join(&b"; "[..]);
    let rest = (!joined.is_empty())
        .then(|| HeaderValue::from_bytes(&joined).ok())
        .flatten();
    headers.remove(COOKIE);
    if let Some(rest) = rest {
        headers.insert(COOKIE, rest);
    }
    found
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests;
