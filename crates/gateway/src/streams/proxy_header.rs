//! The PROXY protocol header (HAProxy's, v1 text or v2 binary) a Gateway writes toward the
//! target before a stream's first byte, naming the client and the public address it reached.
//! Encoded by the `ppp` crate.

use kakuremichi_proto::ProxyProtocol;
use std::net::{IpAddr, SocketAddr};

/// The header for a connection from `client` to `local` (the Gateway's public socket), or `None`
/// when the tunnel sends none.
pub(crate) fn encode(
    version: ProxyProtocol,
    client: SocketAddr,
    local: SocketAddr,
) -> Option<Vec<u8>> {
    let (client, local) = same_family(client, local);
    match version {
        ProxyProtocol::Off => None,
        ProxyProtocol::V1 => {
            let addresses = ppp::v1::Addresses::from((client, local));
            Some(addresses.to_string().into_bytes())
        }
        ProxyProtocol::V2 => {
            use ppp::v2::{Builder, Command, Protocol, Version};
            let header = Builder::with_addresses(
                Version::Two | Command::Proxy,
                Protocol::Stream,
                (client, local),
            )
            .build();
            // Only writing into a Vec, which cannot fail.
            header.ok()
        }
    }
}

/// Both addresses in one family: an IPv4 client on a dual-stack listener arrives as an
/// IPv4-mapped IPv6 address, which is reported as IPv4 when the listener's address allows it,
/// else both as IPv6.
fn same_family(client: SocketAddr, local: SocketAddr) -> (SocketAddr, SocketAddr) {
    let canon = |a: SocketAddr| SocketAddr::new(a.ip().to_canonical(), a.port());
    let (client, local) = (canon(client), canon(local));
    match (client.ip(), local.ip()) {
        (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => (client, local),
        _ => {
            let v6 = |a: SocketAddr| match a.ip() {
                IpAddr::V4(v4) => SocketAddr::new(IpAddr::V6(v4.to_ipv6_mapped()), a.port()),
                IpAddr::V6(_) => a,
            };
            (v6(client), v6(local))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn v1_names_client_and_public_address() {
        let h = encode(
            ProxyProtocol::V1,
            addr("192.0.2.7:51000"),
            addr("198.51.100.1:20001"),
        );
        assert_eq!(
            h.unwrap(),
            b"PROXY TCP4 192.0.2.7 198.51.100.1 51000 20001\r\n".to_vec()
        );
        let h = encode(
            ProxyProtocol::V1,
            addr("[2001:db8::7]:51000"),
            addr("[2001:db8::1]:20001"),
        );
        assert_eq!(
            h.unwrap(),
            b"PROXY TCP6 2001:db8::7 2001:db8::1 51000 20001\r\n".to_vec()
        );
    }

    #[test]
    fn v2_parses_back_to_the_same_addresses() {
        let h = encode(
            ProxyProtocol::V2,
            addr("192.0.2.7:51000"),
            addr("198.51.100.1:20001"),
        )
        .unwrap();
        assert_eq!(&h[..12], b"\r\n\r\n\0\r\nQUIT\n");
        let parsed = ppp::v2::Header::try_from(h.as_slice()).unwrap();
        assert_eq!(parsed.command, ppp::v2::Command::Proxy);
        assert_eq!(
            parsed.addresses,
            ppp::v2::Addresses::from((addr("192.0.2.7:51000"), addr("198.51.100.1:20001")))
        );
        assert_eq!(h.len(), 16 + 12, "IPv4: 12 address bytes, no TLV");
    }

    #[test]
    fn mixed_families_and_off() {
        // An IPv4 client seen through a dual-stack socket is reported as IPv4.
        let h = encode(
            ProxyProtocol::V1,
            addr("[::ffff:192.0.2.7]:1"),
            addr("[::ffff:10.0.0.1]:2"),
        );
        assert_eq!(
            h.unwrap(),
            b"PROXY TCP4 192.0.2.7 10.0.0.1 1 2\r\n".to_vec()
        );
        let h = encode(
            ProxyProtocol::V1,
            addr("192.0.2.7:1"),
            addr("[2001:db8::1]:2"),
        );
        assert_eq!(
            h.unwrap(),
            b"PROXY TCP6 ::ffff:192.0.2.7 2001:db8::1 1 2\r\n".to_vec()
        );
        assert!(encode(ProxyProtocol::Off, addr("192.0.2.7:1"), addr("10.0.0.1:2")).is_none());
    }
}
