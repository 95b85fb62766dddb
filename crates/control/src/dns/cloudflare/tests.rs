//! The conversions between our typed records and Cloudflare's fields, without a server.

use super::*;

fn record(content: &str, ttl: u32) -> ApiRecord {
    ApiRecord {
        id: "0".repeat(32),
        name: "www.example.test".into(),
        kind: "TXT".into(),
        content: content.into(),
        ttl,
        proxied: false,
    }
}

#[test]
fn txt_content_is_read_in_either_form() {
    let long = "k".repeat(300);
    let written = contents(&Records::Txt(vec![long.clone()]));
    assert_eq!(written.len(), 1);
    assert_eq!(written[0].matches("\" \"").count(), 1, "{written:?}");
    assert_eq!(txt_value(&written[0]).unwrap(), long);
    // Typed unquoted in the dashboard: the text itself.
    assert_eq!(txt_value("v=spf1 -all").unwrap(), "v=spf1 -all");
    assert_eq!(txt_value("\"a\" \"b\"").unwrap(), "ab");
    assert!(txt_value("\"open").is_err());
}

#[test]
fn ttls_fit_cloudflare_and_automatic_reads_as_300() {
    assert_eq!(cloudflare_ttl(1), 60);
    assert_eq!(cloudflare_ttl(300), 300);
    assert_eq!(cloudflare_ttl(7 * 86_400), 86_400);
    assert_eq!(served_ttl(&[record("\"a\"", 1)]), 300);
    assert_eq!(served_ttl(&[record("\"a\"", 120), record("\"b\"", 60)]), 60);
}

#[test]
fn cname_targets_are_sent_without_the_final_dot() {
    let sent = contents(&Records::Cname("WWW.Example.test.".into()));
    assert_eq!(sent, ["www.example.test"]);
}
