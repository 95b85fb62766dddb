//! Header work for both directions: which host a request is for, which headers belong to one
//! connection only (hop-by-hop) and must not cross the proxy, which upgrades may (WebSocket
//! only), and the `X-Forwarded-*` / `Forwarded` headers that tell the origin who the real client
//! was.

use std::net::IpAddr;

use http::header::{
    HeaderMap, HeaderName, HeaderValue, CONNECTION, COOKIE, FORWARDED, HOST, PROXY_AUTHENTICATE,
    PROXY_AUTHORIZATION, TE, TRANSFER_ENCODING, UPGRADE,
};
use http::uri::{Authority, Uri};
use http::Version;

use super::access::USER_HEADER;
use super::routes::normalize_host;
use super::Scheme;

const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Connection-scoped headers (RFC 9110 §7.6.1 plus the legacy ones). `Trailer` is deliberately
/// absent: it declares end-to-end trailer fields, and hyper's HTTP/1.1 encoder only emits
/// trailers that a `Trailer` header announced, so stripping it would silently drop trailers.
const HOP_BY_HOP: [HeaderName; 8] = [
    CONNECTION,
    KEEP_ALIVE,
    PROXY_CONNECTION,
    TE,
    TRANSFER_ENCODING,
    UPGRADE,
    PROXY_AUTHENTICATE,
    PROXY_AUTHORIZATION,
];

/// The host a request is for, as the client wrote it and as routes are keyed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ClientHost {
    /// `host[:port]` without userinfo: sent upstream as `Host` and `X-Forwarded-Host`.
    pub authority: String,
    /// Lowercase, port and trailing dot removed: the route lookup key.
    pub name: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HostError {
    Missing,
    Invalid,
}

/// Reads the host from the URI authority (HTTP/2 `:authority`, HTTP/1.1 absolute-form, which
/// RFC 9112 §3.2.2 says overrides `Host`), else from the single `Host` header.
pub(crate) fn client_host(uri: &Uri, headers: &HeaderMap) -> Result<ClientHost, HostError> {
    let authority = match uri.authority() {
        Some(authority) => authority.clone(),
        None => {
            let mut hosts = headers.get_all(HOST).iter();
            let value = hosts.next().ok_or(HostError::Missing)?;
            if hosts.next().is_some() {
                return Err(HostError::Invalid);
            }
            let value = value.to_str().map_err(|_| HostError::Invalid)?.trim();
            if value.is_empty() {
                return Err(HostError::Missing);
            }
            value.parse::<Authority>().map_err(|_| HostError::Invalid)?
        }
    };
    let host = authority.host();
    let name = normalize_host(host).into_owned();
    if name.is_empty() {
        return Err(HostError::Missing);
    }
    let authority = match authority.port_u16() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    };
    Ok(ClientHost { authority, name })
}

/// The `Upgrade` header of an HTTP/1.1 request asking for WebSocket (`Connection: upgrade` and
/// `Upgrade: websocket`, nothing else offered). Any other upgrade (h2c, TLS, custom protocols)
/// is ignored, as RFC 9110 §7.8 lets a server do: the `Upgrade` header is dropped with the
/// other hop-by-hop headers and the request is proxied as a plain one, so the client carries
/// on in HTTP/1.1 and no origin is reached by a protocol the Gateway cannot inspect. HTTP/2 has
/// no such mechanism, and HTTP/1.0 cannot carry it safely.
pub(crate) fn upgrade_request(version: Version, headers: &HeaderMap) -> Option<HeaderValue> {
    if version != Version::HTTP_11 || !has_token(headers, &CONNECTION, "upgrade") {
        return None;
    }
    let mut values = headers.get_all(UPGRADE).iter();
    let value = values.next()?;
    (values.next().is_none() && is_websocket(value)).then(|| value.clone())
}

/// Whether an `Upgrade` value names exactly WebSocket (no version suffix, no second protocol).
pub(crate) fn is_websocket(value: &HeaderValue) -> bool {
    value
        .to_str()
        .is_ok_and(|v| v.trim().eq_ignore_ascii_case("websocket"))
}

/// Rewrites a client request's headers for the upstream hop.
pub(crate) fn prepare_request(
    headers: &mut HeaderMap,
    host: &ClientHost,
    client_ip: IpAddr,
    scheme: Scheme,
    upgrade: Option<HeaderValue>,
) {
    // `TE: trailers` is hop-by-hop but means "I can take trailers"; without it the origin (and
    // hyper) would drop response trailers, so it is re-stated on the upstream hop.
    let accepts_trailers = has_token(headers, &TE, "trailers");
    // The user header is the access gate's own by now (it removed the client's): a client's
    // `Connection: X-Kakuremichi-User` must not delete it.
    let user = headers.remove(USER_HEADER);
    strip_hop_by_hop(headers);
    if let Some(user) = user {
        headers.insert(USER_HEADER, user);
    }
    merge_cookies(headers);
    if accepts_trailers {
        headers.insert(TE, HeaderValue::from_static("trailers"));
    }
    if let Some(protocol) = upgrade {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(UPGRADE, protocol);
    }
    if let Ok(value) = HeaderValue::from_str(&host.authority) {
        headers.insert(HOST, value.clone());
        headers.insert(X_FORWARDED_HOST, value);
    }
    add_forwarding(headers, host, client_ip.to_canonical(), scheme);
}

/// Rewrites an upstream response's headers for the client hop; `upgrade` keeps the handshake
/// headers of a `101 Switching Protocols`.
pub(crate) fn prepare_response(headers: &mut HeaderMap, upgrade: Option<HeaderValue>) {
    strip_hop_by_hop(headers);
    if let Some(protocol) = upgrade {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(UPGRADE, protocol);
    }
}

/// Removes the fixed hop-by-hop headers and every header the `Connection` header names.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = tokens(headers, &CONNECTION)
        .filter_map(|token| HeaderName::from_bytes(token.as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
}

fn add_forwarding(headers: &mut HeaderMap, host: &ClientHost, ip: IpAddr, scheme: Scheme) {
    let xff = append_value(headers, &X_FORWARDED_FOR, &ip.to_string());
    headers.insert(X_FORWARDED_FOR, xff);
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(scheme.as_str()));
    let node = match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("\"[{v6}]\""),
    };
    let element = format!(
        "for={node};host={};proto={}",
        forwarded_value(&host.authority),
        scheme.as_str()
    );
    let forwarded = append_value(headers, &FORWARDED, &element);
    headers.insert(FORWARDED, forwarded);
}

/// All existing values of `name` joined by `, `, with `ours` appended as the last element.
fn append_value(headers: &HeaderMap, name: &HeaderName, ours: &str) -> HeaderValue {
    let mut joined = Vec::new();
    for value in headers.get_all(name) {
        joined.extend_from_slice(value.as_bytes());
        joined.extend_from_slice(b", ");
    }
    joined.extend_from_slice(ours.as_bytes());
    // Existing values were valid header values and `ours` is ASCII, so this cannot fail; fall
    // back to our element alone rather than panic.
    HeaderValue::from_bytes(&joined)
        .or_else(|_| HeaderValue::from_str(ours))
        .unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// A `Forwarded` parameter value: a token if it is one, else a quoted-string (RFC 7239 §4).
fn forwarded_value(value: &str) -> String {
    let is_tchar = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if !value.is_empty() && value.chars().all(is_tchar) {
        return value.to_owned();
    }
    let escaped = value.replace('\\', "\\\\").replace('"', "\\\"");
    format!("\"{escaped}\"")
}

/// HTTP/2 lets clients split `Cookie` into several fields; an HTTP/1.1 origin expects one
/// (RFC 9113 §8.2.3).
fn merge_cookies(headers: &mut HeaderMap) {
    if headers.get_all(COOKIE).iter().nth(1).is_none() {
        return;
    }
    let parts: Vec<&[u8]> = headers
        .get_all(COOKIE)
        .iter()
        .map(|v| v.as_bytes())
        .collect();
    if let Ok(merged) = HeaderValue::from_bytes(&parts.join(&b"; "[..])) {
        headers.insert(COOKIE, merged);
    }
}

/// The comma-separated tokens of a header, trimmed, parameters (`;q=…`) dropped.
fn tokens<'a>(headers: &'a HeaderMap, name: &HeaderName) -> impl Iterator<Item = &'a str> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(|token| token.split(';').next().unwrap_or("").trim())
        .filter(|token| !token.is_empty())
}

fn has_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    tokens(headers, name).any(|t| t.eq_ignore_ascii_case(token))
}

#[cfg(test)]
mod tests;
