//! Contract test of the `cloudflare` DNS provider. **There is no real Cloudflare here**: the
//! provider talks to `kakuremichi_testkit::cloudflare::FakeCloudflare`, an in-process HTTP server
//! on 127.0.0.1:0 that implements the subset of Cloudflare's API v4 the provider uses, with zones,
//! tokens and records in memory, and checks every request against Cloudflare's published shapes
//! (method, path, query parameters, `Authorization: Bearer`, JSON fields and types, record
//! contents, `"proxied": false`, content type). Each test ends with `assert_clean`, which fails
//! on any request that broke those shapes. A pass says the provider speaks the API as Cloudflare
//! documents it; it does not say Cloudflare itself behaves as documented.

use kakuremichi_control::dns::{DnsError, DnsProvider as _, Provider, RecordType, Records, RrSet};
use kakuremichi_testkit::cloudflare::{cf_id, txt_value, FakeCloudflare};
use serde_json::json;
use std::net::{Ipv4Addr, Ipv6Addr};

const ZONE: &str = "example.test";
const WWW: &str = "www.example.test";
/// Records someone else put in the zone: they must survive everything we do.
const KEEP: &str = "keep.example.test";

fn rrset(name: &str, ttl: u32, records: Records) -> RrSet {
    RrSet {
        name: name.into(),
        ttl,
        records,
    }
}

fn provider(fake: &FakeCloudflare, token: &str, zone_id: &str) -> Provider {
    let config = json!({"api_token": token, "zone_id": zone_id, "api_url": fake.api_url});
    Provider::from_config("cloudflare", config).unwrap()
}

/// How many batch writes the provider has sent so far.
fn batches(fake: &FakeCloudflare) -> usize {
    let is_batch = |r: &String| r.starts_with("POST ") && r.ends_with("/dns_records/batch");
    fake.requests().iter().filter(|r| is_batch(r)).count()
}

/// The stored contents of `name` and `kind`, and whether every one is unproxied with `ttl`.
fn stored(fake: &FakeCloudflare, name: &str, kind: &str, ttl: u32) -> Vec<String> {
    let records = fake.records(name, kind);
    for r in &records {
        assert!(!r.proxied && r.ttl == ttl, "{r:?} (expected TTL {ttl})");
    }
    records.into_iter().map(|r| r.content).collect()
}

#[tokio::test]
async fn cloudflare_replaces_reads_and_deletes_through_the_api() {
    let fake = FakeCloudflare::start(&[ZONE, "other.test"]).await;
    fake.insert(ZONE, KEEP, "A", "192.0.2.99", 1);
    fake.insert(ZONE, WWW, "TXT", "\"not ours\"", 300);
    let p = provider(&fake, &fake.token, &fake.zone_id(ZONE));
    p.check(ZONE).await.unwrap();

    // Two addresses, then one: each replace is one atomic batch, never a record-by-record edit.
    let ips: Vec<Ipv4Addr> = vec!["192.0.2.10".parse().unwrap(), "192.0.2.11".parse().unwrap()];
    let a = rrset(WWW, 60, Records::A(ips.clone()));
    p.replace(ZONE, &a).await.unwrap();
    assert_eq!(stored(&fake, WWW, "A", 60), ["192.0.2.10", "192.0.2.11"]);
    assert_eq!(p.read(ZONE, WWW, RecordType::A).await.unwrap(), Some(a));
    assert_eq!(batches(&fake), 1);
    let one = rrset(WWW, 120, Records::A(vec![ips[1]]));
    p.replace(ZONE, &one).await.unwrap();
    assert_eq!(stored(&fake, WWW, "A", 120), ["192.0.2.11"]);
    assert_eq!(
        p.read(ZONE, WWW, RecordType::A).await.unwrap(),
        Some(one.clone())
    );
    assert_eq!(batches(&fake), 2);
    // The same set again changes nothing and sends no write.
    p.replace(ZONE, &one).await.unwrap();
    assert_eq!(batches(&fake), 2);

    let v6: Ipv6Addr = "2001:db8::10".parse().unwrap();
    let aaaa = rrset(WWW, 60, Records::Aaaa(vec![v6]));
    p.replace(ZONE, &aaaa).await.unwrap();
    assert_eq!(stored(&fake, WWW, "AAAA", 60), ["2001:db8::10"]);
    assert_eq!(
        p.read(ZONE, WWW, RecordType::Aaaa).await.unwrap(),
        Some(aaaa)
    );

    // A TXT longer than one 255-byte character-string, with quotes in it, and a short one.
    let long = format!("v=DKIM1; p=\"{}\" t=s", "k".repeat(300));
    let name = "_acme-challenge.example.test";
    let values = vec![long.clone(), "short".to_string()];
    let txt = rrset(name, 60, Records::Txt(values).sorted());
    p.replace(ZONE, &txt).await.unwrap();
    let contents = stored(&fake, name, "TXT", 60);
    let decoded: Vec<String> = contents.iter().filter_map(|c| txt_value(c)).collect();
    assert!(
        decoded.contains(&long) && decoded.contains(&"short".into()),
        "{contents:?}"
    );
    assert!(
        contents.iter().any(|c| c.matches("\" \"").count() == 1),
        "the long value is not split into two strings: {contents:?}"
    );
    assert_eq!(
        p.read(ZONE, name, RecordType::Txt).await.unwrap(),
        Some(txt)
    );

    let alias = "alias.example.test";
    let cname = rrset(alias, 60, Records::Cname(WWW.into()));
    p.replace(ZONE, &cname).await.unwrap();
    assert_eq!(stored(&fake, alias, "CNAME", 60), [WWW]);
    assert_eq!(
        p.read(ZONE, alias, RecordType::Cname).await.unwrap(),
        Some(cname)
    );

    // Below Cloudflare's minimum TTL (DNS-01 likes short ones): clamped to 60 s, not refused.
    let short = rrset("short.example.test", 5, Records::A(vec![ips[0]]));
    p.replace(ZONE, &short).await.unwrap();
    assert_eq!(stored(&fake, "short.example.test", "A", 60), ["192.0.2.10"]);

    for (n, kind, cf_kind) in [
        (WWW, RecordType::A, "A"),
        (WWW, RecordType::Aaaa, "AAAA"),
        (name, RecordType::Txt, "TXT"),
        (alias, RecordType::Cname, "CNAME"),
        ("short.example.test", RecordType::A, "A"),
    ] {
        p.delete(ZONE, n, kind).await.unwrap();
        assert!(
            fake.records(n, cf_kind).is_empty(),
            "{n} {kind} still stored"
        );
        assert_eq!(p.read(ZONE, n, kind).await.unwrap(), None);
    }
    // Deleting what is not there is not an error, and writes nothing.
    let before = batches(&fake);
    p.delete(ZONE, WWW, RecordType::A).await.unwrap();
    assert_eq!(batches(&fake), before);

    // What we did not write is untouched: another name, and another type at our name.
    assert_eq!(stored(&fake, KEEP, "A", 1), ["192.0.2.99"]);
    assert_eq!(stored(&fake, WWW, "TXT", 300), ["\"not ours\""]);
    let keep = p.read(ZONE, KEEP, RecordType::A).await.unwrap().unwrap();
    assert_eq!(
        keep.records,
        Records::A(vec!["192.0.2.99".parse().unwrap()])
    );
    assert_eq!(keep.ttl, 300, "Cloudflare's automatic TTL (1) is 300 s");

    // A name outside the zone is refused before anything is sent.
    let outside = rrset("www.other.test", 60, Records::A(ips));
    let sent = fake.requests().len();
    let err = p.replace(ZONE, &outside).await.unwrap_err();
    assert!(matches!(err, DnsError::Invalid(_)), "{err}");
    assert_eq!(fake.requests().len(), sent);
    fake.assert_clean();
}

#[tokio::test]
async fn cloudflare_errors_say_what_failed() {
    let fake = FakeCloudflare::start(&[ZONE, "other.test"]).await;
    let zone_id = fake.zone_id(ZONE);
    let a = rrset(WWW, 60, Records::A(vec![Ipv4Addr::new(192, 0, 2, 1)]));

    let unknown = provider(&fake, "not-a-token", &zone_id);
    let err = unknown.check(ZONE).await.unwrap_err();
    assert!(
        matches!(&err, DnsError::Auth(m) if m.contains("does not know the API token")),
        "{err}"
    );
    let err = unknown.replace(ZONE, &a).await.unwrap_err();
    assert!(
        matches!(&err, DnsError::Auth(m) if m.contains("api_token")),
        "{err}"
    );

    let elsewhere = fake.add_token("active", &["other.test"]);
    let err = provider(&fake, &elsewhere, &zone_id)
        .check(ZONE)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, DnsError::Auth(m) if m.contains("valid but may not use zone_id")),
        "{err}"
    );
    let expired = fake.add_token("expired", &[ZONE]);
    let err = provider(&fake, &expired, &zone_id)
        .check(ZONE)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, DnsError::Auth(m) if m.contains("expired")),
        "{err}"
    );

    // The zone_id of another zone: the check and every write refuse it, nothing is written.
    let wrong = provider(&fake, &fake.token, &fake.zone_id("other.test"));
    let err = wrong.check(ZONE).await.unwrap_err();
    assert!(
        matches!(&err, DnsError::ZoneNotFound { zone, reason }
                 if zone == ZONE && reason.contains("other.test")),
        "{err}"
    );
    let err = wrong.replace(ZONE, &a).await.unwrap_err();
    assert!(matches!(err, DnsError::ZoneNotFound { .. }), "{err}");
    assert!(fake.records(WWW, "A").is_empty());
    let err = provider(&fake, &fake.token, &cf_id())
        .check(ZONE)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, DnsError::ZoneNotFound { reason, .. } if reason.contains("Zone ID")),
        "{err}"
    );

    // A conflicting write (a CNAME where an A is) is Cloudflare's refusal, quoted.
    let p = provider(&fake, &fake.token, &zone_id);
    p.replace(ZONE, &a).await.unwrap();
    let cname = rrset(WWW, 60, Records::Cname("elsewhere.example.test".into()));
    let err = p.replace(ZONE, &cname).await.unwrap_err();
    assert!(
        matches!(&err, DnsError::Refused(m) if m.contains("81053")),
        "{err}"
    );

    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/client/v4", closed.local_addr().unwrap());
    drop(closed);
    let config = json!({"api_token": "t", "zone_id": zone_id, "api_url": url});
    let err = Provider::from_config("cloudflare", config)
        .unwrap()
        .check(ZONE)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, DnsError::Unreachable { address, .. } if *address == url),
        "{err}"
    );
    fake.assert_clean();
}

#[tokio::test]
async fn cloudflare_lists_zones_across_pages() {
    let mut names: Vec<String> = (0..60).map(|i| format!("z{i:02}.test")).collect();
    names.push(ZONE.into());
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let fake = FakeCloudflare::start(&refs).await;
    let p = provider(&fake, &fake.token, &fake.zone_id(ZONE));
    let mut listed = p.list_zones().await.unwrap().unwrap();
    listed.sort();
    names.sort();
    assert_eq!(listed, names);
    let pages: Vec<String> = (fake.requests().into_iter())
        .filter(|r| r.starts_with("GET /zones?"))
        .collect();
    assert_eq!(pages.len(), 2, "{pages:?}");
    // A token scoped to some zones lists only those.
    let scoped = fake.add_token("active", &[ZONE, "z07.test"]);
    let listed = provider(&fake, &scoped, &fake.zone_id(ZONE))
        .list_zones()
        .await
        .unwrap();
    assert_eq!(
        listed.map(|mut z| {
            z.sort();
            z
        }),
        Some(vec![ZONE.into(), "z07.test".into()])
    );
    fake.assert_clean();
}

/// The fake is only worth its checks: requests Cloudflare would not take are caught.
#[tokio::test]
async fn the_fake_catches_requests_off_the_published_shapes() {
    let fake = FakeCloudflare::start(&[ZONE]).await;
    let http = reqwest::Client::new();
    let records = format!("{}/zones/{}/dns_records", fake.api_url, fake.zone_id(ZONE));
    let post = json!({"name": WWW, "type": "A", "content": "192.0.2.1", "ttl": 60,
                      "proxied": true});
    let attempts = [
        http.get(format!("{}/zones", fake.api_url))
            .header("X-Auth-Key", "k"),
        http.get(format!("{records}?name={WWW}"))
            .bearer_auth(&fake.token),
        http.post(format!("{records}/batch"))
            .bearer_auth(&fake.token)
            .json(&json!({"posts": [post]})),
        http.post(format!("{records}/batch"))
            .bearer_auth(&fake.token)
            .body("{}"),
        http.post(records.clone())
            .bearer_auth(&fake.token)
            .json(&json!({})),
    ];
    let count = attempts.len();
    for request in attempts {
        let status = request.send().await.unwrap().status();
        assert_eq!(status, 400);
    }
    let violations = fake.violations();
    assert_eq!(violations.len(), count, "{violations:?}");
    let said = violations.join("\n");
    for needle in [
        "x-auth-key",
        "\"name\"",
        "proxied",
        "Content-Type",
        "no such route",
    ] {
        assert!(said.contains(needle), "{needle} not in {said}");
    }
}

#[test]
fn cloudflare_config_follows_the_contract_and_hides_the_token() {
    let id = cf_id();
    let base = json!({"api_token": "s3cret-token", "zone_id": id, "resolver": "127.0.0.1:5353"});
    let p = Provider::from_config("cloudflare", base.clone()).unwrap();
    let shown = format!("{p:?}");
    assert!(!shown.contains("s3cret-token"), "{shown}");
    assert!(shown.contains("127.0.0.1:5353") && shown.contains("api.cloudflare.com/client/v4"));
    let with = |k: &str, v: serde_json::Value| {
        let mut c = base.clone();
        c[k] = v;
        Provider::from_config("cloudflare", c)
            .unwrap_err()
            .to_string()
    };
    assert!(with("zone_id", json!("example.com")).contains("Zone ID"));
    assert!(with("api_token", json!("")).contains("api_token"));
    assert!(with("api_token", json!("two words")).contains("api_token"));
    assert!(with("resolver", json!("no-port")).contains("host:port"));
    assert!(with("api_url", json!("ftp://x")).contains("http"));
    assert!(with("proxied", json!(true)).contains("unknown field"));
    let missing = Provider::from_config("cloudflare", json!({"zone_id": id})).unwrap_err();
    assert!(missing.to_string().contains("api_token"), "{missing}");
    let err = Provider::from_config("route66", json!({}))
        .unwrap_err()
        .to_string();
    assert!(err.contains("rfc2136, powerdns or cloudflare"), "{err}");
}
