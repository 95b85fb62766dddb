//! Per-tunnel quotas a Gateway enforces by itself, on the wire: IP allow / deny lists, a
//! per-client request rate with burst, and a cap on concurrent requests ([`RouteLimits`]).
//!
//! They travel inside each [`GatewayRoute`](crate::GatewayRoute), left out entirely when a tunnel
//! sets none, so snapshots without limits serialise (and hash) exactly as before. A Gateway that
//! predates limits refuses a snapshot that carries them rather than serve the tunnel unguarded.
//!
//! Semantics (the Gateway's `proxy::limits` implements them, Control validates them):
//! - `ip_deny` is checked first and wins: an address in both lists is refused.
//! - `ip_allow` empty admits every address not denied; otherwise only addresses in it.
//! - `rate`: a token bucket per client (an IPv4 address, or an IPv6 /64) per tunnel per Gateway.
//! - `max_concurrent_requests`: per tunnel per Gateway; a request counts until its response body
//!   has been sent (an upgraded connection, such as a WebSocket, until it closes).

pub use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// The limits of one tunnel. `Default` is "no limits".
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RouteLimits {
    /// Networks allowed to use the tunnel (single addresses as /32 or /128); empty = everyone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<String>))]
    pub ip_allow: Vec<IpNet>,
    /// Networks refused, whatever `ip_allow` says.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<String>))]
    pub ip_deny: Vec<IpNet>,
    /// Requests per second per client, with burst; `None` = no rate limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<RateLimit>,
    /// Requests in flight at once; `None` = unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent_requests: Option<u32>,
}

impl RouteLimits {
    /// True when the tunnel sets no limit at all (the field is then left out of the snapshot).
    pub fn is_none(&self) -> bool {
        self == &RouteLimits::default()
    }

    /// The IP lists' verdict on `client`: deny wins; an empty allow-list admits every address
    /// not denied. (IPv4-mapped IPv6 addresses count as IPv4.)
    pub fn admits_ip(&self, client: std::net::IpAddr) -> bool {
        let client = client.to_canonical();
        !self.ip_deny.iter().any(|net| net.contains(&client))
            && (self.ip_allow.is_empty() || self.ip_allow.iter().any(|net| net.contains(&client)))
    }
}

/// A token bucket: `per_second` tokens are added each second up to `burst`; a request takes one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    pub per_second: u32,
    /// How many requests a client that was quiet may send at once (at least 1).
    pub burst: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_are_strings_and_defaults_are_left_out() {
        let limits = RouteLimits {
            ip_allow: vec![
                "10.0.0.0/8".parse().unwrap(),
                "2001:db8::/32".parse().unwrap(),
            ],
            ip_deny: vec!["10.0.0.7/32".parse().unwrap()],
            rate: Some(RateLimit {
                per_second: 5,
                burst: 10,
            }),
            max_concurrent_requests: Some(100),
        };
        let json = serde_json::to_value(&limits).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "ip_allow": ["10.0.0.0/8", "2001:db8::/32"],
                "ip_deny": ["10.0.0.7/32"],
                "rate": {"per_second": 5, "burst": 10},
                "max_concurrent_requests": 100
            })
        );
        assert_eq!(serde_json::from_value::<RouteLimits>(json).unwrap(), limits);
        assert_eq!(
            serde_json::to_string(&RouteLimits::default()).unwrap(),
            "{}"
        );
        assert!(RouteLimits::default().is_none() && !limits.is_none());
        for bad in [
            serde_json::json!({"ip_allow": ["not-a-cidr"]}),
            serde_json::json!({"rate": {"per_second": 1}}),
            serde_json::json!({"surprise": 1}),
        ] {
            assert!(serde_json::from_value::<RouteLimits>(bad).is_err());
        }
    }
}
