//! Tests of `validate.rs`.

use super::*;

#[test]
fn good_hostnames_are_normalised() {
    assert_eq!(hostname("App.Example.COM.").unwrap(), "app.example.com");
    assert_eq!(
        hostname("a-b.c9.example.org").unwrap(),
        "a-b.c9.example.org"
    );
    assert_eq!(hostname("x.io").unwrap(), "x.io");
    let long_label = "a".repeat(63);
    assert!(hostname(&format!("{long_label}.example.com")).is_ok());
}

#[test]
fn bad_hostnames_are_rejected() {
    let too_long = format!("{}.com", vec!["a".repeat(60); 5].join("."));
    assert!(too_long.len() > 253);
    let label64 = format!("{}.example.com", "a".repeat(64));
    for bad in [
        "",
        ".",
        "localhost",
        "app",
        "*.example.com",
        "1.2.3.4",
        "1.2.3.4.",
        "app.123",
        "app.example.com:443",
        "https://app.example.com",
        "app.example.com/path",
        "-app.example.com",
        "app-.example.com",
        "app..example.com",
        ".app.example.com",
        "app.example.com..",
        "app_1.example.com",
        "app example.com",
        " app.example.com",
        "app.exämple.com",
        "[::1]",
        "::1",
        &too_long,
        &label64,
    ] {
        assert!(hostname(bad).is_err(), "{bad:?} accepted");
    }
}

#[test]
fn tunnel_hostnames_may_be_wildcards_of_one_whole_label() {
    for (input, out) in [
        ("*.Apps.Example.COM.", "*.apps.example.com"),
        ("*.apps.test", "*.apps.test"),
        ("*.example.com", "*.example.com"),
        ("*.example.co.uk", "*.example.co.uk"),
        ("App.Example.com", "app.example.com"),
    ] {
        assert_eq!(tunnel_hostname(input).unwrap(), out, "{input}");
    }
    for (bad, says) in [
        ("*.com", "public suffix com"),
        ("*.co.uk", "public suffix co.uk"),
        ("*.github.io", "public suffix github.io"),
        ("*.test", "public suffix test"),
        ("*", "leftmost label"),
        ("*.", "must not be empty"),
        ("a*.example.com", "leftmost label"),
        ("*a.example.com", "leftmost label"),
        ("a.*.example.com", "leftmost label"),
        ("*.*.example.com", "leftmost label"),
        ("**.example.com", "leftmost label"),
        ("*.example.com:443", "port"),
        ("https://*.example.com", "scheme"),
        ("*.-x.example.com", "'-'"),
    ] {
        let err = tunnel_hostname(bad).expect_err(bad).0;
        assert!(err.contains(says), "{bad:?}: {err}");
    }
    // Wildcards make no sense where one host is meant.
    let err = hostname("*.example.com").unwrap_err().0;
    assert!(err.contains("not a wildcard"), "{err}");
}

#[test]
fn the_wildcard_covering_a_host_is_one_label_up() {
    assert_eq!(
        covering_wildcard("a.apps.test").as_deref(),
        Some("*.apps.test")
    );
    assert_eq!(
        covering_wildcard("x.a.apps.test").as_deref(),
        Some("*.a.apps.test")
    );
    for none in ["apps.test", "test", "", ".apps.test", "*.apps.test"] {
        assert_eq!(covering_wildcard(none), None, "{none:?}");
    }
}

#[test]
fn good_targets() {
    for (input, out) in [
        ("localhost:8080", "localhost:8080"),
        ("app:3000", "app:3000"),
        ("App.Internal:80", "app.internal:80"),
        ("wp_db:3306", "wp_db:3306"),
        ("127.0.0.1:1", "127.0.0.1:1"),
        ("[::1]:65535", "[::1]:65535"),
        ("[2001:DB8::1]:443", "[2001:db8::1]:443"),
        ("host.:8080", "host:8080"),
    ] {
        assert_eq!(host_port(input, "target").unwrap(), out, "{input}");
    }
}

#[test]
fn bad_targets_are_rejected() {
    for bad in [
        "",
        "localhost",
        "localhost:",
        ":8080",
        "localhost:0",
        "localhost:65536",
        "localhost:99999",
        "localhost:-1",
        "localhost:+80",
        "localhost:80a",
        "localhost:http",
        "http://localhost:8080",
        "localhost:8080/path",
        "::1:8080",
        "[::1]",
        "[::1]8080",
        "[not-v6]:80",
        "999.1.1.1:80",
        "1.2.3:80",
        "-app:80",
        "app-:80",
        "a..b:80",
        "*.example.com:80",
        "app host:80",
        "ap$p:80",
    ] {
        let err = host_port(bad, "target").expect_err(bad);
        assert!(err.0.starts_with("target "), "{err}");
    }
}

#[test]
fn names() {
    assert_eq!(name("  home  ").unwrap(), "home");
    assert!(name(&"é".repeat(100)).is_ok());
    for bad in ["", "   ", "a\nb", "tab\there"] {
        assert!(name(bad).is_err(), "{bad:?}");
    }
    assert!(name(&"x".repeat(101)).is_err());
}

#[test]
fn emails() {
    assert_eq!(email(" Admin@Example.COM ").unwrap(), "admin@example.com");
    for bad in ["", "admin", "@example.com", "admin@", "a@b@c", "a b@c.d"] {
        assert!(email(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn public_keys() {
    use base64::Engine as _;
    let good = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
    assert!(public_key(&good).is_ok());
    let short = base64::engine::general_purpose::STANDARD.encode([7u8; 31]);
    let url_safe = base64::engine::general_purpose::URL_SAFE.encode([0xffu8; 32]);
    for bad in ["", "not base64!", short.as_str(), url_safe.as_str()] {
        assert!(public_key(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn ip_networks_are_canonical() {
    for (input, out) in [
        ("192.0.2.0/24", "192.0.2.0/24"),
        (" 198.51.100.7 ", "198.51.100.7"),
        ("198.51.100.7/32", "198.51.100.7"),
        ("0.0.0.0/0", "0.0.0.0/0"),
        ("2001:DB8:0::/48", "2001:db8::/48"),
        ("2001:db8::1", "2001:db8::1"),
        ("2001:db8::1/128", "2001:db8::1"),
        ("::ffff:192.0.2.7", "192.0.2.7"),
        ("::ffff:192.0.2.0/120", "192.0.2.0/24"),
        ("::/0", "::/0"),
    ] {
        assert_eq!(ip_network(input).unwrap(), out, "{input}");
        assert!(parse_ip_network(out).is_some(), "{out}");
    }
    let err = ip_network("192.0.2.7/24").unwrap_err();
    assert!(err.0.contains("did you mean 192.0.2.0/24?"), "{err}");
    for bad in [
        "",
        "10.0.0",
        "10.0.0.0/33",
        "2001:db8::/129",
        "example.com",
        "10.0.0.0/",
        "/8",
        "10.0.0.0/8/8",
        "1.2.3.4:80",
        "[::1]",
    ] {
        assert!(ip_network(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn networks() {
    let n = WgNetwork::parse("10.77.0.0/16").unwrap();
    assert_eq!(
        n.host_range(),
        (
            u32::from(Ipv4Addr::new(10, 77, 0, 1)),
            u32::from(Ipv4Addr::new(10, 77, 255, 254))
        )
    );
    let n = WgNetwork::parse("192.168.5.0/30").unwrap();
    assert_eq!(n.host_range().1 - n.host_range().0, 1);
    for bad in [
        "",
        "10.77.0.0",
        "10.77.0.0/7",
        "10.77.0.0/31",
        "10.77.0.1/16",
        "fd00::/64",
        "10.77.0.0/x",
    ] {
        assert!(WgNetwork::parse(bad).is_err(), "{bad:?}");
    }
}
