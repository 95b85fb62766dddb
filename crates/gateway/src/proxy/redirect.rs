//! What the proxy answers itself around HTTPS: ACME HTTP-01 challenges on plain HTTP, the `308`
//! from http to https, and the HSTS header on HTTPS responses.
//!
//! Rules:
//! - `/.well-known/acme-challenge/{token}` on plain HTTP is answered from the snapshot for any
//!   host (the CA may validate a name before its tunnel's route reaches this Gateway);
//! - any other plain-HTTP request to a routed host whose tunnel asks for it (`https_redirect`) is
//!   answered `308` to the same host and path on https, but only once this Gateway holds a
//!   certificate for the host: redirecting to a name we cannot serve yet would break the site
//!   while its first certificate is being issued;
//! - HTTPS responses of such hosts carry `Strict-Transport-Security` when Control sets a max-age.

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, LOCATION};
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use http_body_util::Full;
use kakuremichi_proto::GatewayRoute;

use super::Scheme;

/// Path prefix of ACME HTTP-01 challenges (RFC 8555 §8.3).
pub(crate) const ACME_CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";

/// The token of an ACME HTTP-01 request path, if it is one.
/// Whether `path` is under the ACME HTTP-01 prefix: such requests are never refused by a tunnel's
/// limits, so a certificate can always be validated.
pub(crate) fn is_acme_path(path: &str) -> bool {
    path.starts_with(ACME_CHALLENGE_PREFIX)
}

pub(crate) fn acme_token(path: &str) -> Option<&str> {
    path.strip_prefix(ACME_CHALLENGE_PREFIX)
        .filter(|t| !t.is_empty() && !t.contains('/'))
}

/// Whether a plain-HTTP request to `route` is redirected to https.
pub(crate) fn should_redirect(scheme: Scheme, route: &GatewayRoute, has_certificate: bool) -> bool {
    scheme == Scheme::Http && route.https_redirect && has_certificate
}

/// `https://host[:port]/path?query`; the port is left out when it is 443.
pub(crate) fn location(host: &str, https_port: u16, path_and_query: &str) -> String {
    let path = if path_and_query.starts_with('/') {
        path_and_query
    } else {
        "/"
    };
    match https_port {
        443 => format!("https://{host}{path}"),
        port => format!("https://{host}:{port}{path}"),
    }
}

/// The `308 Permanent Redirect` (keeps the method and body, unlike 301).
pub(crate) fn redirect(location: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::PERMANENT_REDIRECT;
    if let Ok(value) = HeaderValue::from_str(location) {
        response.headers_mut().insert(LOCATION, value);
    }
    response
}

/// The answer to an HTTP-01 request: the key authorization, or 404 for an unknown token.
pub(crate) fn challenge_answer(key_authorization: Option<String>) -> Response<Full<Bytes>> {
    let (status, body) = match key_authorization {
        Some(k) => (StatusCode::OK, Bytes::from(k)),
        None => (
            StatusCode::NOT_FOUND,
            Bytes::from_static(b"unknown challenge"),
        ),
    };
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Adds HSTS to an HTTPS response when the route asks for it and the origin did not set its own.
pub(crate) fn add_hsts(headers: &mut HeaderMap, scheme: Scheme, route: &GatewayRoute) {
    if scheme != Scheme::Https || route.hsts_max_age == 0 {
        return;
    }
    let name = http::header::STRICT_TRANSPORT_SECURITY;
    if !headers.contains_key(&name) {
        let value = format!("max-age={}", route.hsts_max_age);
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn route(https_redirect: bool, hsts_max_age: u32) -> GatewayRoute {
        GatewayRoute {
            tunnel_id: 1,
            agent_id: 1,
            agent_address: Ipv4Addr::LOCALHOST,
            port: 1,
            https_redirect,
            hsts_max_age,
            replicas: Vec::new(),
            access: Default::default(),
            limits: Default::default(),
            plain_http_only: false,
            tcp_access: false,
            basic_auth: None,
            log_requests: false,
            error_page: None,
        }
    }

    #[test]
    fn acme_tokens_are_recognised() {
        assert_eq!(acme_token("/.well-known/acme-challenge/abc"), Some("abc"));
        assert_eq!(acme_token("/.well-known/acme-challenge/"), None);
        assert_eq!(acme_token("/.well-known/acme-challenge/a/b"), None);
        assert_eq!(acme_token("/index.html"), None);
    }

    #[test]
    fn redirect_only_http_with_switch_and_certificate() {
        assert!(should_redirect(Scheme::Http, &route(true, 0), true));
        assert!(!should_redirect(Scheme::Https, &route(true, 0), true));
        assert!(!should_redirect(Scheme::Http, &route(false, 0), true));
        assert!(!should_redirect(Scheme::Http, &route(true, 0), false));
    }

    #[test]
    fn location_keeps_host_and_path() {
        assert_eq!(location("a.test", 443, "/x?y=1"), "https://a.test/x?y=1");
        assert_eq!(location("a.test", 8443, "/"), "https://a.test:8443/");
        assert_eq!(location("a.test", 443, "*"), "https://a.test/");
        let r = redirect("https://a.test/x");
        assert_eq!(r.status(), StatusCode::PERMANENT_REDIRECT);
        assert_eq!(r.headers()[LOCATION], "https://a.test/x");
    }

    #[test]
    fn hsts_on_https_only_and_never_overrides_the_origin() {
        let mut h = HeaderMap::new();
        add_hsts(&mut h, Scheme::Http, &route(true, 60));
        assert!(h.is_empty());
        add_hsts(&mut h, Scheme::Https, &route(true, 0));
        assert!(h.is_empty());
        add_hsts(&mut h, Scheme::Https, &route(true, 60));
        assert_eq!(h[http::header::STRICT_TRANSPORT_SECURITY], "max-age=60");
        h.insert(
            http::header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=5"),
        );
        add_hsts(&mut h, Scheme::Https, &route(true, 60));
        assert_eq!(h[http::header::STRICT_TRANSPORT_SECURITY], "max-age=5");
    }

    #[test]
    fn challenge_answers() {
        assert_eq!(challenge_answer(Some("k".into())).status(), StatusCode::OK);
        assert_eq!(challenge_answer(None).status(), StatusCode::NOT_FOUND);
    }
}
