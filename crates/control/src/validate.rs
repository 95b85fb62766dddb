//! Validation and normalisation of every user-supplied value: hostnames (and the wildcard
//! hostnames of tunnels), `host:port` targets and
//! endpoints, names, e-mail addresses, WireGuard public keys, the WireGuard network and the IP
//! networks of per-tunnel allow / deny lists.
//!
//! Each check returns the normalised value or a [`Invalid`] whose message tells the user what to fix.

use base64::Engine as _;
use kakuremichi_proto::IpNet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// A rejected value; the message is shown to the user as is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

fn invalid<T>(msg: impl Into<String>) -> Result<T, Invalid> {
    Err(Invalid(msg.into()))
}

/// Maximum length of a node or token name, in characters.
pub const MAX_NAME_CHARS: usize = 100;

/// A display name: surrounding whitespace trimmed, 1–100 characters, no control characters.
pub fn name(input: &str) -> Result<String, Invalid> {
    let name = input.trim();
    if name.is_empty() {
        return invalid("name must not be empty");
    }
    if name.chars().count() > MAX_NAME_CHARS {
        return invalid(format!("name must be at most {MAX_NAME_CHARS} characters"));
    }
    if name.chars().any(char::is_control) {
        return invalid("name must not contain control characters");
    }
    Ok(name.to_string())
}

/// An e-mail address, trimmed and lower-cased. Only a sanity check: one `@` with text on both sides.
pub fn email(input: &str) -> Result<String, Invalid> {
    let email = input.trim().to_lowercase();
    match email.split_once('@') {
        Some((local, domain))
            if !local.is_empty()
                && !domain.is_empty()
                && !domain.contains('@')
                && email.len() <= 254
                && !email.chars().any(|c| c.is_whitespace() || c.is_control()) =>
        {
            Ok(email)
        }
        _ => invalid("email must look like name@example.com"),
    }
}

/// A public hostname served by the Gateways, e.g. `app.example.com`.
///
/// One trailing dot is removed and the name is lower-cased. At least two labels; no wildcard, IP
/// address, port or scheme.
pub fn hostname(input: &str) -> Result<String, Invalid> {
    if input.contains("://") {
        return invalid("hostname must not include a scheme: write app.example.com, not https://app.example.com");
    }
    if input.contains('*') {
        return invalid("hostname must name one host, such as app.example.com, not a wildcard");
    }
    if input.contains(':') {
        return invalid("hostname must not include a port: Gateways serve it on ports 80 and 443");
    }
    if input.contains('/') {
        return invalid("hostname must not include a path");
    }
    let name = input
        .strip_suffix('.')
        .unwrap_or(input)
        .to_ascii_lowercase();
    if name.parse::<Ipv4Addr>().is_ok() {
        return invalid("hostname must be a DNS name, not an IP address");
    }
    dns_name(&name, false, 2).map_err(|Invalid(m)| Invalid(format!("hostname {m}")))?;
    Ok(name)
}

/// A tunnel's public hostname: an exact [`hostname`], or a wildcard such as `*.apps.example.com`
/// that covers every name exactly one label below `apps.example.com` (`a.apps.example.com`, not
/// `apps.example.com` nor `x.a.apps.example.com`).
///
/// Only the whole leftmost label may be `*`; the rest is a [`hostname`] that is not a public
/// suffix alone (`*.com`, `*.co.uk` and `*.github.io` would cover other people's domains).
/// Returns the normalised name (`*.apps.example.com`).
pub fn tunnel_hostname(input: &str) -> Result<String, Invalid> {
    const PLACEMENT: &str = "a wildcard hostname has '*' as its whole leftmost label and nowhere \
         else, such as *.apps.example.com";
    let Some(parent) = input.strip_prefix("*.") else {
        if input.contains('*') && !input.contains("://") {
            return invalid(PLACEMENT);
        }
        return hostname(input);
    };
    if parent.contains('*') {
        return invalid(PLACEMENT);
    }
    // Before the label count, so that `*.com` is told why, not only that `com` is short.
    let lower = parent
        .strip_suffix('.')
        .unwrap_or(parent)
        .to_ascii_lowercase();
    if psl::suffix_str(&lower) == Some(lower.as_str()) {
        return invalid(format!(
            "*.{lower} would cover every domain under the public suffix {lower}; a wildcard \
             must lie under a domain you own, such as *.apps.example.com"
        ));
    }
    let parent = hostname(parent).map_err(|Invalid(m)| {
        Invalid(format!(
            "after '*.', the {m} (a wildcard such as *.apps.example.com)"
        ))
    })?;
    Ok(format!("*.{parent}"))
}

/// The wildcard that covers `host` (normalised, not itself a wildcard): `a.apps.test` →
/// `*.apps.test`. `None` when `host` has fewer than three labels, which no valid wildcard covers.
pub fn covering_wildcard(host: &str) -> Option<String> {
    let (first, parent) = host.split_once('.')?;
    (!first.is_empty() && first != "*" && parent.contains('.')).then(|| format!("*.{parent}"))
}

/// Checks a lower-case DNS name: total length, number of labels, label syntax, numeric TLD.
fn dns_name(name: &str, allow_underscore: bool, min_labels: usize) -> Result<(), Invalid> {
    if name.is_empty() {
        return invalid("must not be empty");
    }
    if name.len() > 253 {
        return invalid("must be at most 253 characters");
    }
    let labels: Vec<&str> = name.split('.').collect();
    if labels.len() < min_labels {
        return invalid(format!(
            "{name:?} needs at least {min_labels} labels, such as app.example.com"
        ));
    }
    for label in &labels {
        if label.is_empty() {
            return invalid(format!(
                "{name:?} has an empty label (two dots in a row, or a leading dot)"
            ));
        }
        if label.len() > 63 {
            return invalid(format!("{name:?} has a label longer than 63 characters"));
        }
        let ok_char = |c: char| {
            c.is_ascii_lowercase()
                || c.is_ascii_digit()
                || c == '-'
                || (allow_underscore && c == '_')
        };
        if let Some(c) = label.chars().find(|&c| !ok_char(c)) {
            return invalid(format!(
                "{name:?} contains {c:?}; only letters, digits and '-' are allowed"
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return invalid(format!("{name:?} has a label that starts or ends with '-'"));
        }
    }
    if labels
        .last()
        .is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()))
    {
        return invalid(format!(
            "{name:?} is not a valid DNS name (the last label is numeric)"
        ));
    }
    Ok(())
}

/// A `host:port` where host is a DNS name (a single label such as `app` is allowed), an IPv4
/// address or a bracketed IPv6 address, and port is 1–65535. `what` names the field in messages.
///
/// Returns the normalised form (lower-case host, canonical IP, decimal port).
pub fn host_port(input: &str, what: &str) -> Result<String, Invalid> {
    let fail = |m: &str| invalid(format!("{what} {m}"));
    if input.contains("://") {
        return fail("must not include a scheme: write host:port, such as localhost:8080");
    }
    if input.contains('/') {
        return fail("must not include a path: write host:port, such as localhost:8080");
    }
    let (host, port) = if let Some(rest) = input.strip_prefix('[') {
        let Some((v6, port)) = rest.split_once("]:") else {
            return fail("must be [ipv6]:port, such as [::1]:8080");
        };
        match v6.parse::<Ipv6Addr>() {
            Ok(addr) => (format!("[{addr}]"), port),
            Err(_) => return fail("has an invalid IPv6 address between the brackets"),
        }
    } else {
        let Some((host, port)) = input.rsplit_once(':') else {
            return fail("must be host:port, such as localhost:8080");
        };
        if host.contains(':') {
            return fail("has an IPv6 address without brackets: write [::1]:8080");
        }
        (
            target_host(host).map_err(|Invalid(m)| Invalid(format!("{what} {m}")))?,
            port,
        )
    };
    if port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) {
        return fail("needs a port number between 1 and 65535 after the ':'");
    }
    match port.parse::<u32>() {
        Ok(p @ 1..=65535) => Ok(format!("{host}:{p}")),
        _ => fail("needs a port number between 1 and 65535 after the ':'"),
    }
}

/// The host part of a target: IPv4 or a DNS name. Underscores are accepted because Docker
/// Compose service and container names (`wp_db`) resolve on the Agent's network.
fn target_host(host: &str) -> Result<String, Invalid> {
    if host.is_empty() {
        return invalid("needs a host before the ':'");
    }
    if let Ok(v4) = host.parse::<Ipv4Addr>() {
        return Ok(v4.to_string());
    }
    if host.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return invalid(format!("host {host:?} is not a valid IPv4 address"));
    }
    let name = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    if name.contains('*') {
        return invalid("host must not be a wildcard");
    }
    dns_name(&name, true, 1).map_err(|Invalid(m)| Invalid(format!("host {m}")))?;
    Ok(name)
}

/// A WireGuard public key: standard base64 of exactly 32 bytes.
pub fn public_key(input: &str) -> Result<(), Invalid> {
    match base64::engine::general_purpose::STANDARD.decode(input) {
        Ok(bytes) if bytes.len() == 32 => Ok(()),
        Ok(bytes) => invalid(format!(
            "public_key must be 32 bytes (base64 of an X25519 key), got {}",
            bytes.len()
        )),
        Err(_) => invalid("public_key must be standard base64 of a 32-byte X25519 key"),
    }
}

/// An IP network of an allow / deny list: a CIDR (`192.0.2.0/24`, `2001:db8::/48`) or a single
/// address (`192.0.2.7`, `2001:db8::1`). Returns the canonical text: a single address (a full
/// prefix) without its prefix, IPv6 compressed, so equal networks are stored equally.
pub fn ip_network(input: &str) -> Result<String, Invalid> {
    let text = input.trim();
    let Some(net) = parse_ip_network(text) else {
        return invalid(format!(
            "{text:?} is not an IP address or CIDR network (such as 192.0.2.0/24, 198.51.100.7 \
             or 2001:db8::/48)"
        ));
    };
    if net.addr() != net.network() {
        return invalid(format!(
            "{text:?} has host bits set; did you mean {}/{}?",
            net.network(),
            net.prefix_len()
        ));
    }
    Ok(ip_network_text(&net))
}

/// Parses a stored or typed network: a CIDR or a bare address (as a /32 or /128). An IPv4 address
/// written as IPv6 (`::ffff:192.0.2.7`) is taken as the IPv4 address it is, since that is how the
/// Gateway sees such clients.
pub fn parse_ip_network(text: &str) -> Option<IpNet> {
    if text.contains('/') {
        let net: IpNet = text.parse().ok()?;
        return match net {
            IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
                Some(v4) => IpNet::new(IpAddr::V4(v4), v6.prefix_len() - 96).ok(),
                None => Some(net),
            },
            _ => Some(net),
        };
    }
    let addr: IpAddr = text.parse().ok()?;
    Some(IpNet::from(addr.to_canonical()))
}

/// The canonical text of a network: a bare address for a single host, else `network/prefix`.
pub fn ip_network_text(net: &IpNet) -> String {
    if net.prefix_len() == net.max_prefix_len() {
        net.addr().to_string()
    } else {
        net.to_string()
    }
}

/// The IPv4 network WireGuard addresses come from, e.g. `10.77.0.0/16`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WgNetwork {
    base: u32,
    prefix: u8,
}

impl WgNetwork {
    /// Parses `a.b.c.d/prefix` with prefix 8..=30 and no host bits set.
    pub fn parse(input: &str) -> Result<Self, Invalid> {
        let Some((addr, prefix)) = input.trim().split_once('/') else {
            return invalid("expected an IPv4 CIDR such as 10.77.0.0/16");
        };
        let Ok(addr) = addr.parse::<Ipv4Addr>() else {
            return invalid("the address must be IPv4, such as 10.77.0.0/16");
        };
        let prefix = match prefix.parse::<u8>() {
            Ok(p @ 8..=30) => p,
            _ => return invalid("the prefix length must be between 8 and 30"),
        };
        let base = u32::from(addr);
        let net = Self { base, prefix };
        if base & !net.mask() != 0 {
            let fixed = Ipv4Addr::from(base & net.mask());
            return invalid(format!("host bits are set; did you mean {fixed}/{prefix}?"));
        }
        Ok(net)
    }

    fn mask(&self) -> u32 {
        u32::MAX << (32 - u32::from(self.prefix))
    }

    /// First and last usable host address (network and broadcast excluded).
    pub fn host_range(&self) -> (u32, u32) {
        let broadcast = self.base | !self.mask();
        (self.base + 1, broadcast - 1)
    }
}

impl std::fmt::Display for WgNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", Ipv4Addr::from(self.base), self.prefix)
    }
}

/// Whether `state` is a nonce a command-line client may send: 16 to 128 URL-safe characters.
fn valid_state(state: &str) -> bool {
    (16..=128).contains(&state.len())
        && state
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The loopback port and nonce of a command-line sign-in (`kakuremichi access tcp`), from a
/// query's `cli_port` and `state`: `None` when the query has neither.
pub fn cli_sign_in(query: &str) -> Result<Option<(u16, String)>, &'static str> {
    let (mut port, mut state) = (None, None);
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        match key.as_ref() {
            "cli_port" => port = Some(value.into_owned()),
            "state" => state = Some(value.into_owned()),
            _ => {}
        }
    }
    match (port, state) {
        (None, None) => Ok(None),
        (Some(port), Some(state)) => {
            let port: u16 = port
                .parse()
                .ok()
                .filter(|p| *p >= 1024)
                .ok_or("The command's port is not a valid port.")?;
            if !valid_state(&state) {
                return Err("The command's sign-in nonce is not valid.");
            }
            Ok(Some((port, state)))
        }
        _ => Err("The link names a command's port without its nonce, or the other way round."),
    }
}

#[cfg(test)]
mod tests;
