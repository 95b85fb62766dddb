//! Unit tests for host parsing and header rewriting.

use super::*;
use std::net::{Ipv4Addr, Ipv6Addr};

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    map
}

fn host(authority: &str, name: &str) -> ClientHost {
    ClientHost {
        authority: authority.into(),
        name: name.into(),
    }
}

#[test]
fn host_from_header_and_authority() {
    let origin_form: Uri = "/x".parse().unwrap();
    let h = |v: &str| client_host(&origin_form, &headers(&[("host", v)]));
    assert_eq!(
        h("Example.COM:8080"),
        Ok(host("Example.COM:8080", "example.com"))
    );
    assert_eq!(h("example.com."), Ok(host("example.com.", "example.com")));
    assert_eq!(h("[::1]:80"), Ok(host("[::1]:80", "[::1]")));
    assert_eq!(h(""), Err(HostError::Missing));
    assert_eq!(h("bad host"), Err(HostError::Invalid));
    assert_eq!(
        client_host(&origin_form, &HeaderMap::new()),
        Err(HostError::Missing)
    );
    let two = headers(&[("host", "a.com"), ("host", "b.com")]);
    assert_eq!(client_host(&origin_form, &two), Err(HostError::Invalid));

    let absolute: Uri = "http://user@B.example:81/x".parse().unwrap();
    let got = client_host(&absolute, &headers(&[("host", "a.example")]));
    assert_eq!(got, Ok(host("B.example:81", "b.example")));
}

#[test]
fn strips_hop_by_hop_and_connection_named() {
    let mut map = headers(&[
        ("connection", "X-Secret, keep-alive"),
        ("keep-alive", "timeout=5"),
        ("x-secret", "1"),
        ("te", "gzip"),
        ("proxy-authorization", "Basic Zm9v"),
        ("trailer", "x-checksum"),
        ("accept", "*/*"),
    ]);
    strip_hop_by_hop(&mut map);
    let mut names: Vec<&str> = map.keys().map(|k| k.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["accept", "trailer"]);
}

#[test]
fn request_gets_forwarding_headers() {
    let mut map = headers(&[
        ("x-forwarded-for", "203.0.113.9"),
        ("forwarded", "for=203.0.113.9"),
        ("te", "trailers, deflate;q=0.5"),
        ("cookie", "a=1"),
        ("cookie", "b=2"),
    ]);
    let ip = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
    prepare_request(
        &mut map,
        &host("example.com:8080", "example.com"),
        ip,
        Scheme::Http,
        None,
    );
    assert_eq!(map["x-forwarded-for"], "203.0.113.9, 192.0.2.1");
    assert_eq!(map["x-forwarded-proto"], "http");
    assert_eq!(map["x-forwarded-host"], "example.com:8080");
    assert_eq!(map["host"], "example.com:8080");
    assert_eq!(
        map["forwarded"],
        "for=203.0.113.9, for=192.0.2.1;host=\"example.com:8080\";proto=http"
    );
    assert_eq!(map["te"], "trailers");
    assert_eq!(map["cookie"], "a=1; b=2");
    assert!(map.get("connection").is_none());
}

#[test]
fn ipv6_client_is_quoted_and_mapped_v4_unwrapped() {
    let mut map = HeaderMap::new();
    let v6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
    prepare_request(
        &mut map,
        &host("a.example", "a.example"),
        v6,
        Scheme::Https,
        None,
    );
    assert_eq!(map["forwarded"], "for=\"[::1]\";host=a.example;proto=https");
    assert_eq!(map["x-forwarded-for"], "::1");

    let mut map = HeaderMap::new();
    let mapped = IpAddr::V6(Ipv4Addr::new(198, 51, 100, 7).to_ipv6_mapped());
    prepare_request(
        &mut map,
        &host("a.example", "a.example"),
        mapped,
        Scheme::Http,
        None,
    );
    assert_eq!(map["x-forwarded-for"], "198.51.100.7");
}

#[test]
fn upgrade_headers_survive() {
    let map = headers(&[
        ("connection", "keep-alive, Upgrade"),
        ("upgrade", "websocket"),
    ]);
    let upgrade = upgrade_request(Version::HTTP_11, &map);
    assert_eq!(upgrade, Some(HeaderValue::from_static("websocket")));
    assert_eq!(upgrade_request(Version::HTTP_10, &map), None);
    assert_eq!(
        upgrade_request(Version::HTTP_11, &headers(&[("upgrade", "websocket")])),
        None
    );

    let mut map = map;
    let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
    prepare_request(
        &mut map,
        &host("a.example", "a.example"),
        ip,
        Scheme::Http,
        upgrade,
    );
    assert_eq!(map["connection"], "upgrade");
    assert_eq!(map["upgrade"], "websocket");

    let mut response = headers(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
    prepare_response(&mut response, Some(HeaderValue::from_static("websocket")));
    assert_eq!(response["connection"], "upgrade");
}

#[test]
fn connection_cannot_remove_the_gateways_user_header() {
    // As the access gate leaves it: the client's copy gone, the verified user set.
    let mut map = headers(&[
        (
            "connection",
            "X-Kakuremichi-User, x-kakuremichi-user, x-secret",
        ),
        ("x-kakuremichi-user", "alice@example.com"),
        ("x-secret", "1"),
    ]);
    let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
    prepare_request(
        &mut map,
        &host("a.example", "a.example"),
        ip,
        Scheme::Http,
        None,
    );
    assert_eq!(map["x-kakuremichi-user"], "alice@example.com");
    assert!(map.get("x-secret").is_none());
    assert!(map.get("connection").is_none());
}

#[test]
fn only_a_plain_websocket_upgrade_is_honoured() {
    let ask = |upgrade: &str| {
        let map = headers(&[("connection", "Upgrade"), ("upgrade", upgrade)]);
        upgrade_request(Version::HTTP_11, &map)
    };
    assert_eq!(
        ask("WebSocket"),
        Some(HeaderValue::from_static("WebSocket"))
    );
    for refused in [
        "h2c",
        "websocket, h2c",
        "h2c, websocket",
        "websocket/13",
        "TLS/1.2",
    ] {
        assert_eq!(ask(refused), None, "{refused}");
    }
    let twice = headers(&[
        ("connection", "upgrade"),
        ("upgrade", "websocket"),
        ("upgrade", "h2c"),
    ]);
    assert_eq!(upgrade_request(Version::HTTP_11, &twice), None);
}
