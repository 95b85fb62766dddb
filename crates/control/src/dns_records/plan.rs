//! What DNS should hold: for every enabled tunnel whose hostname lies in a managed zone, an A
//! RRset with the IPv4 addresses of the listed Gateways and an AAAA RRset with their IPv6 ones.
//! Pure: computed from rows, so it is tested without a database or a DNS server.

use crate::dns::Records;
use crate::store::{DnsZoneRow, GatewayRow, TunnelRow};
use crate::zones::zone_of;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// One RRset Control wants in DNS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    pub zone_id: i64,
    pub name: String,
    pub records: Records,
}

/// Where DNS sends a tunnel's visitors, or why Control does not manage it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// In a managed zone: Control writes these addresses.
    Managed { zone: String },
    /// In no managed zone: the user points DNS at these addresses.
    Unmanaged,
}

/// The addresses the internet reaches a Gateway at: `public_ipv4`/`public_ipv6` when set, else
/// the IP of its `public_endpoint` when that is an IP address, else the address its session with
/// Control comes from when that is a public one (a Gateway behind NAT: the NAT's address).
pub fn gateway_addresses(g: &GatewayRow) -> (Option<Ipv4Addr>, Option<Ipv6Addr>) {
    let endpoint = g
        .public_endpoint
        .parse::<SocketAddr>()
        .ok()
        .map(|a| a.ip())
        .or_else(|| {
            g.observed_ip
                .as_deref()
                .and_then(|a| a.parse::<IpAddr>().ok())
                .filter(|ip| is_public(*ip))
        });
    let v4 = g
        .public_ipv4
        .as_deref()
        .and_then(|a| a.parse().ok())
        .or(match endpoint {
            Some(IpAddr::V4(a)) => Some(a),
            _ => None,
        });
    let v6 = g
        .public_ipv6
        .as_deref()
        .and_then(|a| a.parse().ok())
        .or(match endpoint {
            Some(IpAddr::V6(a)) => Some(a),
            _ => None,
        });
    (v4, v6)
}

/// Whether `ip` can be reached from the internet: not loopback, private, link-local, shared
/// (CGNAT), unique-local, multicast or unspecified.
pub fn is_public(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(a) => {
            let [first, second, ..] = a.octets();
            !(a.is_loopback()
                || a.is_private()
                || a.is_link_local()
                || a.is_unspecified()
                || a.is_broadcast()
                || a.is_multicast()
                || first == 0
                || (first == 100 && (64..128).contains(&second)))
        }
        IpAddr::V6(a) => {
            let first = a.segments()[0];
            !(a.is_loopback()
                || a.is_unspecified()
                || a.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80)
        }
    }
}

/// The addresses of the `listed` Gateways, sorted and without duplicates.
pub fn listed_addresses(
    gateways: &[GatewayRow],
    listed: &BTreeSet<i64>,
) -> (Vec<Ipv4Addr>, Vec<Ipv6Addr>) {
    let mut v4 = BTreeSet::new();
    let mut v6 = BTreeSet::new();
    for g in gateways.iter().filter(|g| listed.contains(&g.id)) {
        let (a, aaaa) = gateway_addresses(g);
        v4.extend(a);
        v6.extend(aaaa);
    }
    (v4.into_iter().collect(), v6.into_iter().collect())
}

/// The RRsets wanted for `tunnels`, and each tunnel hostname's placement.
pub fn plan(
    tunnels: &[TunnelRow],
    zones: &[DnsZoneRow],
    v4: &[Ipv4Addr],
    v6: &[Ipv6Addr],
) -> (Vec<Wanted>, BTreeMap<String, Placement>) {
    let mut wanted = Vec::new();
    let mut placement = BTreeMap::new();
    for t in tunnels {
        let Some(zone) = zone_of(zones, &t.hostname) else {
            placement.insert(t.hostname.clone(), Placement::Unmanaged);
            continue;
        };
        placement.insert(
            t.hostname.clone(),
            Placement::Managed {
                zone: zone.zone.clone(),
            },
        );
        if !t.enabled {
            continue;
        }
        if !v4.is_empty() {
            wanted.push(Wanted {
                zone_id: zone.id,
                name: t.hostname.clone(),
                records: Records::A(v4.to_vec()),
            });
        }
        if !v6.is_empty() {
            wanted.push(Wanted {
                zone_id: zone.id,
                name: t.hostname.clone(),
                records: Records::Aaaa(v6.to_vec()),
            });
        }
    }
    (wanted, placement)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gateway(id: i64, endpoint: &str, v4: Option<&str>, v6: Option<&str>) -> GatewayRow {
        GatewayRow {
            id,
            name: format!("gw{id}"),
            public_endpoint: endpoint.into(),
            wg_address: format!("10.77.0.{id}"),
            public_key: None,
            enabled: true,
            last_seen: None,
            created_at: String::new(),
            public_ipv4: v4.map(Into::into),
            public_ipv6: v6.map(Into::into),
            observed_ip: None,
        }
    }

    fn tunnel(hostname: &str, enabled: bool) -> TunnelRow {
        TunnelRow {
            id: 1,
            hostname: hostname.into(),
            agent_id: 1,
            target: "127.0.0.1".into(),
            port: 80,
            enabled,
            tls: "acme".into(),
            https_redirect: true,
            access_mode: "public".into(),
            access_allow: "[]".into(),
            created_at: String::new(),
            updated_at: String::new(),
            owner_id: None,
            ip_allow: "[]".into(),
            ip_deny: "[]".into(),
            rate_limit_per_second: None,
            rate_limit_burst: None,
            max_concurrent_requests: None,
            protocol: "http".into(),
            public_port: None,
            proxy_protocol: "off".into(),
            max_connections: None,
            udp_idle_timeout: None,
            basic_auth_user: None,
            basic_auth: None,
            log_requests: false,
            error_page: None,
        }
    }

    fn zone(id: i64, name: &str) -> DnsZoneRow {
        DnsZoneRow {
            id,
            zone: name.into(),
            provider: "rfc2136".into(),
            config: "{}".into(),
            secret: Vec::new(),
            created_at: String::new(),
            updated_at: String::new(),
        }
    }

    #[test]
    fn addresses_come_from_the_settings_or_the_endpoint() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let (a, aaaa) = gateway_addresses(&gateway(1, "203.0.113.7:51820", None, None));
        assert_eq!((a.map(IpAddr::V4), aaaa), (Some(ip("203.0.113.7")), None));
        let (a, aaaa) = gateway_addresses(&gateway(1, "[2001:db8::7]:51820", None, None));
        assert_eq!((a, aaaa.map(IpAddr::V6)), (None, Some(ip("2001:db8::7"))));
        let (a, aaaa) = gateway_addresses(&gateway(
            1,
            "gw.example.com:51820",
            Some("192.0.2.1"),
            Some("2001:db8::1"),
        ));
        assert_eq!(a.map(IpAddr::V4), Some(ip("192.0.2.1")));
        assert_eq!(aaaa.map(IpAddr::V6), Some(ip("2001:db8::1")));
        assert_eq!(
            gateway_addresses(&gateway(1, "gw.example.com:51820", None, None)),
            (None, None)
        );
        // A name as endpoint: the address the session comes from, when it is a public one.
        let seen = |endpoint: &str, observed: &str| {
            let mut g = gateway(1, endpoint, None, None);
            g.observed_ip = Some(observed.into());
            let (a, aaaa) = gateway_addresses(&g);
            (a.map(IpAddr::V4), aaaa.map(IpAddr::V6))
        };
        assert_eq!(
            seen("gw.example.com:51820", "198.51.100.9"),
            (Some(ip("198.51.100.9")), None)
        );
        assert_eq!(
            seen("gw.example.com:51820", "2a01:4f8::9"),
            (None, Some(ip("2a01:4f8::9")))
        );
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.1.2",
            "100.64.0.1",
            "fd00::1",
            "fe80::1",
        ] {
            assert_eq!(
                seen("gw.example.com:51820", private),
                (None, None),
                "{private}"
            );
        }
        // An IP endpoint wins over what was seen.
        assert_eq!(
            seen("203.0.113.7:51820", "198.51.100.9"),
            (Some(ip("203.0.113.7")), None)
        );
    }

    #[test]
    fn enabled_tunnels_in_managed_zones_get_the_listed_gateways() {
        let gateways = [
            gateway(1, "127.0.0.1:1", Some("192.0.2.2"), Some("2001:db8::2")),
            gateway(2, "127.0.0.1:2", Some("192.0.2.1"), None),
            gateway(3, "127.0.0.1:3", Some("192.0.2.3"), None),
        ];
        let (v4, v6) = listed_addresses(&gateways, &BTreeSet::from([1, 2]));
        assert_eq!(
            v4,
            [
                "192.0.2.1".parse::<Ipv4Addr>().unwrap(),
                "192.0.2.2".parse().unwrap()
            ]
        );
        assert_eq!(v6, ["2001:db8::2".parse::<Ipv6Addr>().unwrap()]);
        let tunnels = [
            tunnel("www.example.com", true),
            tunnel("*.apps.example.com", true),
            tunnel("off.example.com", false),
            tunnel("elsewhere.org", true),
        ];
        let zones = [zone(7, "example.com"), zone(8, "apps.example.com")];
        let (wanted, placement) = plan(&tunnels, &zones, &v4, &v6);
        let names: Vec<(i64, &str, &str)> = wanted
            .iter()
            .map(|w| (w.zone_id, w.name.as_str(), w.records.kind().as_str()))
            .collect();
        assert_eq!(
            names,
            [
                (7, "www.example.com", "A"),
                (7, "www.example.com", "AAAA"),
                (8, "*.apps.example.com", "A"),
                (8, "*.apps.example.com", "AAAA"),
            ]
        );
        assert_eq!(placement["elsewhere.org"], Placement::Unmanaged);
        assert_eq!(
            placement["off.example.com"],
            Placement::Managed {
                zone: "example.com".into()
            }
        );
        // No listed Gateway with an IPv6 address: no AAAA at all (not an empty RRset).
        let (wanted, _) = plan(&tunnels[..1], &zones, &v4, &[]);
        assert_eq!(wanted.len(), 1);
    }
}
