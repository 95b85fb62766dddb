//! The DNS providers (issue #15's foundation) against real servers started by the test: BIND9
//! through RFC 2136 + TSIG, and PowerDNS through its HTTP API. Each change is checked twice: with
//! `dig` against the server (what the world sees) and through the provider's own read. The
//! errors a user meets (bad key, unknown zone, nothing listening, policy) are the typed ones.

use kakuremichi_control::dns::{DnsError, DnsProvider as _, Provider, RecordType, Records, RrSet};
use kakuremichi_testkit::dns::{self, dig, Bind, PowerDns, NOT_OURS, ZONE};
use serde_json::json;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

const WWW: &str = "www.example.test";

fn rrset(name: &str, ttl: u32, records: Records) -> RrSet {
    RrSet {
        name: name.into(),
        ttl,
        records,
    }
}

/// Replaces `set` and prints how long the update took (the figure the issue asks for).
async fn replace(p: &Provider, label: &str, set: &RrSet) {
    let t = Instant::now();
    p.replace(ZONE, set)
        .await
        .unwrap_or_else(|e| panic!("{label}: replace {set:?}: {e}"));
    eprintln!(
        "{label}: replace {} {} took {:?}",
        set.name,
        set.records.kind(),
        t.elapsed()
    );
}

/// The whole write/read/delete flow on `p`, serving DNS on `port`.
async fn flow(p: &Provider, label: &str, port: u16) {
    p.check(ZONE).await.unwrap();
    let ips: Vec<Ipv4Addr> = vec!["192.0.2.10".parse().unwrap(), "192.0.2.11".parse().unwrap()];
    let a = rrset(WWW, 60, Records::A(ips.clone()));
    replace(p, label, &a).await;
    assert_eq!(dig(port, WWW, "A").await, ["192.0.2.10", "192.0.2.11"]);
    assert_eq!(
        p.read(ZONE, WWW, RecordType::A).await.unwrap(),
        Some(a.clone())
    );
    // Replacing shrinks the set: the old address is gone, in one change.
    let one = rrset(WWW, 120, Records::A(vec![ips[1]]));
    replace(p, label, &one).await;
    assert_eq!(dig(port, WWW, "A").await, ["192.0.2.11"]);
    assert_eq!(p.read(ZONE, WWW, RecordType::A).await.unwrap(), Some(one));

    let v6: Ipv6Addr = "2001:db8::10".parse().unwrap();
    let aaaa = rrset(WWW, 60, Records::Aaaa(vec![v6]));
    replace(p, label, &aaaa).await;
    assert_eq!(dig(port, WWW, "AAAA").await, ["2001:db8::10"]);
    assert_eq!(
        p.read(ZONE, WWW, RecordType::Aaaa).await.unwrap(),
        Some(aaaa)
    );

    // A TXT longer than one 255-byte character-string, with a quote in it.
    let long = format!("v=DKIM1; p=\"{}\" t=s", "k".repeat(300));
    let name = "_acme-challenge.example.test";
    let txt = rrset(
        name,
        60,
        Records::Txt(vec![long.clone(), "short".into()]).sorted(),
    );
    replace(p, label, &txt).await;
    let served = dig(port, name, "TXT").await;
    let joined: Vec<String> = served.iter().map(|l| unquote_dig(l)).collect();
    assert!(
        joined.contains(&long) && joined.contains(&"short".to_string()),
        "{served:?}"
    );
    assert!(
        served.iter().any(|l| l.matches("\" \"").count() == 1),
        "not chunked: {served:?}"
    );
    assert_eq!(
        p.read(ZONE, name, RecordType::Txt).await.unwrap(),
        Some(txt)
    );

    let alias = "alias.example.test";
    let cname = rrset(alias, 60, Records::Cname(WWW.into()));
    replace(p, label, &cname).await;
    assert_eq!(
        p.read(ZONE, alias, RecordType::Cname).await.unwrap(),
        Some(cname)
    );
    assert_eq!(dig(port, alias, "CNAME").await, ["www.example.test."]);

    for (n, kind, dig_kind) in [
        (WWW, RecordType::A, "A"),
        (WWW, RecordType::Aaaa, "AAAA"),
        (name, RecordType::Txt, "TXT"),
        (alias, RecordType::Cname, "CNAME"),
    ] {
        p.delete(ZONE, n, kind).await.unwrap();
        assert!(
            dig(port, n, dig_kind).await.is_empty(),
            "{n} {kind} still served"
        );
        assert_eq!(p.read(ZONE, n, kind).await.unwrap(), None);
    }
    // Deleting what is not there is not an error.
    p.delete(ZONE, WWW, RecordType::A).await.unwrap();
    // The record the set-up wrote, not us, is untouched.
    let (keep, keep_ip) = NOT_OURS;
    assert_eq!(dig(port, keep, "A").await, [keep_ip]);
    let read = p.read(ZONE, keep, RecordType::A).await.unwrap().unwrap();
    assert_eq!(read.records, Records::A(vec![keep_ip.parse().unwrap()]));
    // A name outside the zone is refused before anything is sent.
    let outside = rrset("www.other.test", 60, Records::A(ips));
    assert!(matches!(
        p.replace(ZONE, &outside).await,
        Err(DnsError::Invalid(_))
    ));
}

/// `dig +short`'s TXT line (`"part" "part"`) as one value (only `\"` escapes occur here).
fn unquote_dig(line: &str) -> String {
    line.trim_matches('"')
        .replace("\" \"", "")
        .replace("\\\"", "\"")
}

fn rfc2136(server: &str, key_name: &str, secret: &str) -> Provider {
    let config = json!({"server": server, "key_name": key_name,
                        "key_algorithm": "hmac-sha256", "key_secret": secret});
    Provider::from_config("rfc2136", config).unwrap()
}

#[tokio::test]
async fn rfc2136_replaces_reads_and_deletes_on_bind() {
    if !dns::bind_available("rfc2136_replaces_reads_and_deletes_on_bind") {
        return;
    }
    let bind = Bind::start().await;
    let p = rfc2136(&bind.server, dns::KEY_NAME, &bind.key_secret);
    assert_eq!(p.list_zones().await.unwrap(), None);
    flow(&p, "bind", bind.port).await;
}

#[tokio::test]
async fn rfc2136_errors_say_what_failed() {
    if !dns::bind_available("rfc2136_errors_say_what_failed") {
        return;
    }
    let bind = Bind::start().await;
    let a = rrset(WWW, 60, Records::A(vec![Ipv4Addr::new(192, 0, 2, 1)]));

    let wrong_secret = rfc2136(&bind.server, dns::KEY_NAME, &dns::tsig_secret());
    let err = wrong_secret.check(ZONE).await.unwrap_err();
    assert!(
        matches!(&err, DnsError::Auth(m) if m.contains("BADSIG")),
        "{err}"
    );
    let err = wrong_secret.replace(ZONE, &a).await.unwrap_err();
    assert!(
        matches!(&err, DnsError::Auth(m) if m.contains("BADSIG")),
        "{err}"
    );
    let wrong_name = rfc2136(&bind.server, "nobody.", &bind.key_secret);
    let err = wrong_name.check(ZONE).await.unwrap_err();
    assert!(
        matches!(&err, DnsError::Auth(m) if m.contains("BADKEY")),
        "{err}"
    );
    assert!(
        dig(bind.port, WWW, "A").await.is_empty(),
        "a refused update changed the zone"
    );

    let good = rfc2136(&bind.server, dns::KEY_NAME, &bind.key_secret);
    let err = good.check("other.test").await.unwrap_err();
    assert!(
        matches!(&err, DnsError::ZoneNotFound { zone, .. } if zone == "other.test"),
        "{err}"
    );
    let elsewhere = rrset("www.other.test", 60, a.records.clone());
    let err = good.replace("other.test", &elsewhere).await.unwrap_err();
    assert!(matches!(err, DnsError::ZoneNotFound { .. }), "{err}");

    // The limited key may only write TXT at only.example.test: the policy refuses the rest.
    let limited = rfc2136(&bind.server, dns::LIMITED_KEY_NAME, &bind.limited_secret);
    let err = limited.replace(ZONE, &a).await.unwrap_err();
    assert!(matches!(err, DnsError::Refused(_)), "{err}");
    let allowed = rrset("only.example.test", 60, Records::Txt(vec!["ok".into()]));
    limited.replace(ZONE, &allowed).await.unwrap();

    // Nothing listening: the kernel's refusal comes back at once.
    let closed = format!("127.0.0.1:{}", dns::free_port());
    let err = rfc2136(&closed, dns::KEY_NAME, &bind.key_secret)
        .check(ZONE)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, DnsError::Unreachable { address, .. } if *address == closed),
        "{err}"
    );
    // A server that never answers: the reach error comes within the bound.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let silent_addr = silent.local_addr().unwrap().to_string();
    let t = Instant::now();
    let err = rfc2136(&silent_addr, dns::KEY_NAME, &bind.key_secret)
        .check(ZONE)
        .await
        .unwrap_err();
    assert!(matches!(err, DnsError::Unreachable { .. }), "{err}");
    assert!(
        t.elapsed() < Duration::from_secs(7),
        "took {:?}",
        t.elapsed()
    );
}

#[test]
fn configs_follow_the_contract_and_hide_secrets() {
    let base = json!({"server": "127.0.0.1:53", "key_name": "k.", "key_algorithm": "hmac-sha512",
                      "key_secret": dns::tsig_secret(), "resolver": "127.0.0.1:5353"});
    let p = Provider::from_config("rfc2136", base.clone()).unwrap();
    let shown = format!("{p:?}");
    let secret = base["key_secret"].as_str().unwrap();
    assert!(
        !shown.contains(secret) && shown.contains("127.0.0.1:5353"),
        "{shown}"
    );
    let with = |k: &str, v: serde_json::Value| {
        let mut c = base.clone();
        c[k] = v;
        Provider::from_config("rfc2136", c).unwrap_err().to_string()
    };
    assert!(with("key_algorithm", json!("hmac-md5")).contains("use hmac-sha256"));
    assert!(with("key_secret", json!("not base64!")).contains("base64"));
    assert!(with("server", json!("no-port")).contains("host:port"));
    assert!(with("extra", json!(1)).contains("unknown field"));
    assert!(with("resolver", json!("127.0.0.1")).contains("host:port"));

    let pdns = json!({"api_url": "http://127.0.0.1:8081", "api_key": "s3cret-key"});
    let p = Provider::from_config("powerdns", pdns).unwrap();
    assert!(!format!("{p:?}").contains("s3cret-key"));
    let err = Provider::from_config("powerdns", json!({"api_url": "ftp://x", "api_key": "k"}));
    assert!(err.unwrap_err().to_string().contains("http"));
    let resolver = json!({"api_url": "http://127.0.0.1:8081", "api_key": "k", "resolver": ":53"});
    let err = Provider::from_config("powerdns", resolver).unwrap_err();
    assert!(err.to_string().contains("host:port"), "{err}");
    let err = Provider::from_config("route66", json!({}))
        .unwrap_err()
        .to_string();
    assert!(err.contains("rfc2136, powerdns or cloudflare"), "{err}");
}

#[tokio::test]
async fn powerdns_replaces_reads_and_deletes_through_its_api() {
    if !dns::powerdns_available("powerdns_replaces_reads_and_deletes_through_its_api") {
        return;
    }
    let pdns = PowerDns::start().await;
    let config =
        json!({"api_url": pdns.api_url, "api_key": pdns.api_key, "server_id": "localhost"});
    let p = Provider::from_config("powerdns", config).unwrap();
    assert_eq!(p.list_zones().await.unwrap(), Some(vec![ZONE.to_string()]));
    flow(&p, "powerdns", pdns.port).await;

    let wrong = json!({"api_url": pdns.api_url, "api_key": "wrong"});
    let err = Provider::from_config("powerdns", wrong)
        .unwrap()
        .check(ZONE)
        .await
        .unwrap_err();
    assert!(matches!(err, DnsError::Auth(_)), "{err}");
    let err = p.check("other.test").await.unwrap_err();
    assert!(matches!(err, DnsError::ZoneNotFound { .. }), "{err}");
    let a = rrset(
        "www.other.test",
        60,
        Records::A(vec![Ipv4Addr::new(192, 0, 2, 1)]),
    );
    let err = p.replace("other.test", &a).await.unwrap_err();
    assert!(matches!(err, DnsError::ZoneNotFound { .. }), "{err}");
    let closed = format!("http://127.0.0.1:{}", dns::free_port());
    let config = json!({"api_url": closed, "api_key": "k"});
    let err = Provider::from_config("powerdns", config)
        .unwrap()
        .check(ZONE)
        .await
        .unwrap_err();
    assert!(matches!(err, DnsError::Unreachable { .. }), "{err}");
}
