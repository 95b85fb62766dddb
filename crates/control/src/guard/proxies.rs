//! Who the client is, for the per-client login throttle: the TCP peer, or, when that peer is a
//! configured trusted proxy (`KAKUREMICHI_TRUSTED_PROXIES`), the right-most address of
//! `X-Forwarded-For` that is not itself a trusted proxy. Anyone else's `X-Forwarded-For` is
//! ignored: a client must not choose its own throttle key.
//!
//! IPv6 clients are keyed by their /64: one subscriber usually holds a whole /64, so keying by
//! the full address would give an attacker 2^64 fresh keys.

use axum::http::HeaderMap;
use ipnet::IpNet;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};

/// `X-Forwarded-For` entries looked at, from the right; a longer chain is cut there.
const MAX_HOPS: usize = 32;

/// The CIDR ranges of proxies whose `X-Forwarded-For` is believed. Empty: nobody's.
#[derive(Clone, Debug, Default)]
pub struct TrustedProxies(Vec<IpNet>);

/// A trusted-proxy entry that is neither an address nor a CIDR range.
#[derive(Debug, thiserror::Error)]
#[error(
    "trusted proxy {0:?} is neither an IP address nor a CIDR range \
     (expected something like 10.0.0.0/8, 192.0.2.7 or fd00::/64)"
)]
pub struct BadProxy(pub String);

impl TrustedProxies {
    /// Parses CIDR ranges or bare addresses (a bare address is that one host).
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<Self, BadProxy> {
        let mut nets = Vec::new();
        for entry in entries.iter().map(|e| e.as_ref().trim()) {
            if entry.is_empty() {
                continue;
            }
            let net = entry
                .parse::<IpNet>()
                .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| BadProxy(entry.to_string()))?;
            nets.push(net.trunc());
        }
        Ok(Self(nets))
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// The client's address for a request from `peer` carrying `headers`.
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = peer.to_canonical();
        if !self.trusts(peer) {
            return peer;
        }
        let hops: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .collect();
        let mut client = peer;
        for hop in hops.iter().rev().take(MAX_HOPS) {
            // An unreadable entry ends the chain: what lies left of it cannot be trusted.
            let Some(ip) = parse_hop(hop) else { break };
            client = ip;
            if !self.trusts(ip) {
                break;
            }
        }
        client
    }
}

/// An `X-Forwarded-For` entry: an address, possibly with a port (`1.2.3.4:5`, `[::1]:5`).
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    hop.parse::<IpAddr>()
        .or_else(|_| hop.parse::<SocketAddr>().map(|s| s.ip()))
        .ok()
        .map(|ip| ip.to_canonical())
}

/// The throttle key of an address: IPv4 as is, IPv6 by its /64.
pub fn throttle_key(ip: IpAddr) -> String {
    match ip.to_canonical() {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => {
            let s = v6.segments();
            let prefix = Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0);
            format!("{prefix}/64")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn xff(values: &[&'static str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", HeaderValue::from_static(v));
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn forwarded_for_counts_only_from_trusted_proxies() {
        let none = TrustedProxies::default();
        let spoofed = xff(&["9.9.9.9"]);
        assert_eq!(none.client(ip("203.0.113.5"), &spoofed), ip("203.0.113.5"));

        let proxies = TrustedProxies::parse(&["10.0.0.0/8", "192.0.2.7", " "]).unwrap();
        // From an untrusted peer the header is ignored.
        assert_eq!(
            proxies.client(ip("203.0.113.5"), &spoofed),
            ip("203.0.113.5")
        );
        // The right-most untrusted hop is the client; what the client wrote left of it is not.
        let chain = xff(&["6.6.6.6, 198.51.100.4", "10.1.1.1"]);
        assert_eq!(proxies.client(ip("192.0.2.7"), &chain), ip("198.51.100.4"));
        // Only trusted hops: the left-most one.
        assert_eq!(
            proxies.client(ip("10.0.0.1"), &xff(&["10.2.2.2"])),
            ip("10.2.2.2")
        );
        // No header, or garbage: the proxy itself.
        assert_eq!(
            proxies.client(ip("10.0.0.1"), &HeaderMap::new()),
            ip("10.0.0.1")
        );
        assert_eq!(
            proxies.client(ip("10.0.0.1"), &xff(&["1.2.3.4, nonsense"])),
            ip("10.0.0.1")
        );
        // Ports and IPv4-mapped peers.
        assert_eq!(
            proxies.client(ip("::ffff:10.0.0.1"), &xff(&["[2001:db8::1]:443"])),
            ip("2001:db8::1")
        );
        assert!(TrustedProxies::parse(&["10.0.0.0/33"]).is_err());
        assert!(TrustedProxies::parse(&["proxy.example"]).is_err());
    }

    #[test]
    fn ipv6_clients_are_keyed_by_their_64() {
        assert_eq!(
            throttle_key(ip("2001:db8:1:2:aaaa::1")),
            "2001:db8:1:2::/64"
        );
        assert_eq!(
            throttle_key(ip("2001:db8:1:2:ffff::9")),
            "2001:db8:1:2::/64"
        );
        assert_ne!(throttle_key(ip("2001:db8:1:3::1")), "2001:db8:1:2::/64");
        assert_eq!(throttle_key(ip("198.51.100.4")), "198.51.100.4");
        assert_eq!(throttle_key(ip("::ffff:198.51.100.4")), "198.51.100.4");
    }
}
