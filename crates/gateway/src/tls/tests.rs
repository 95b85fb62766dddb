//! Tests of `tls.rs`.

use super::*;
use kakuremichi_proto::TlsAlpnChallenge;

fn self_signed(host: &str) -> TlsCertificate {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec![host.to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    TlsCertificate {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}

#[test]
fn sessions_resume_by_stateless_tickets_not_a_server_side_cache() {
    let config = Arc::new(CertStore::new()).server_config();
    assert!(config.ticketer.enabled(), "tickets are issued");
    assert!(
        !config.session_storage.can_cache(),
        "no per-client state is kept"
    );
}

/// Moves what `from` has to send into `to`, and lets `to` process it.
fn transfer(from: &mut rustls::Connection, to: &mut rustls::Connection) {
    let mut wire = Vec::new();
    from.write_tls(&mut wire).unwrap();
    let mut wire = &wire[..];
    while !wire.is_empty() {
        to.read_tls(&mut wire).unwrap();
    }
    to.process_new_packets().unwrap();
}

#[test]
fn a_returning_client_resumes_its_session() {
    let store = Arc::new(CertStore::new());
    let cert = self_signed("a.test");
    store.apply(
        &BTreeMap::from([("a.test".to_string(), cert.clone())]),
        &AcmeChallenges::default(),
        HashSet::new(),
    );
    let server_config = store.server_config();
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(cert.cert_pem.as_bytes()).unwrap())
        .unwrap();
    let client_config = Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );
    // One connection in memory; the client config keeps the tickets it was given.
    let connect = || {
        let mut client: rustls::Connection =
            rustls::ClientConnection::new(client_config.clone(), "a.test".try_into().unwrap())
                .unwrap()
                .into();
        let mut server: rustls::Connection = rustls::ServerConnection::new(server_config.clone())
            .unwrap()
            .into();
        // The handshake, then once more for the tickets sent after it.
        for _ in 0..4 {
            transfer(&mut client, &mut server);
            transfer(&mut server, &mut client);
        }
        assert!(!client.is_handshaking() && !server.is_handshaking());
        client.handshake_kind()
    };
    assert_eq!(connect(), Some(rustls::HandshakeKind::Full));
    assert_eq!(connect(), Some(rustls::HandshakeKind::Resumed));
}

#[test]
fn sni_selects_the_matching_certificate_only() {
    let store = CertStore::new();
    let a = self_signed("a.test");
    let mut acme = AcmeChallenges::default();
    acme.http01.insert("tok".into(), "tok.print".into());
    acme.tls_alpn01.insert(
        "b.test".into(),
        TlsAlpnChallenge {
            token: "t2".into(),
            certificate: self_signed("b.test"),
        },
    );
    store.apply(
        &BTreeMap::from([("A.test".to_string(), a)]),
        &acme,
        HashSet::new(),
    );
    assert!(store.select(Some("a.test"), false).is_some());
    assert!(store.select(Some("A.TEST."), false).is_some());
    assert!(store.select(Some("b.test"), false).is_none(), "unknown SNI");
    assert!(store.select(None, false).is_none(), "no SNI");
    assert!(store.select(Some("b.test"), true).is_some(), "challenge");
    assert!(store.select(Some("a.test"), true).is_none());
    assert_eq!(store.http01("tok").as_deref(), Some("tok.print"));
    assert!(store.has_certificate("a.test"));
    store.apply(&BTreeMap::new(), &AcmeChallenges::default(), HashSet::new());
    assert!(store.select(Some("a.test"), false).is_none(), "hot swap");
    assert!(store.http01("tok").is_none());
}

#[test]
fn wireguard_clients_get_a_certificate_for_any_name() {
    let store = CertStore::new();
    let a = self_signed("a.test");
    store.apply(
        &BTreeMap::from([("a.test".to_string(), a.clone())]),
        &AcmeChallenges::default(),
        HashSet::new(),
    );
    let ours = store.select_wireguard(Some("a.test")).unwrap();
    assert_eq!(
        ours.cert,
        certified_key(&a).unwrap().cert,
        "our own for a known SNI"
    );
    let other = store.select_wireguard(Some("198.51.100.7")).unwrap();
    assert_ne!(other.cert, ours.cert);
    let none = store.select_wireguard(None).unwrap();
    assert_eq!(
        none.cert, other.cert,
        "one self-signed certificate, made once"
    );
    assert!(
        store.select(None, false).is_none(),
        "HTTPS still needs a known SNI"
    );
}

#[test]
fn bad_certificates_are_skipped_not_fatal() {
    let store = CertStore::new();
    let good = self_signed("good.test");
    let bad = TlsCertificate {
        cert_pem: good.cert_pem.clone(),
        key_pem: "garbage".into(),
    };
    let empty = TlsCertificate {
        cert_pem: String::new(),
        key_pem: good.key_pem.clone(),
    };
    let certs = BTreeMap::from([
        ("good.test".to_string(), good),
        ("bad.test".to_string(), bad),
        ("empty.test".to_string(), empty),
    ]);
    store.apply(&certs, &AcmeChallenges::default(), HashSet::new());
    assert_eq!(store.len(), 1);
    assert!(store.has_certificate("good.test"));
}

#[test]
fn a_wildcard_certificate_serves_one_label_below_and_exact_wins() {
    let store = CertStore::new();
    let wildcard = self_signed("*.apps.test");
    let exact = self_signed("a.apps.test");
    let mut acme = AcmeChallenges::default();
    acme.tls_alpn01.insert(
        "c.apps.test".into(),
        TlsAlpnChallenge {
            token: "t".into(),
            certificate: self_signed("c.apps.test"),
        },
    );
    store.apply(
        &BTreeMap::from([
            ("*.apps.test".to_string(), wildcard.clone()),
            ("a.apps.test".to_string(), exact.clone()),
        ]),
        &acme,
        HashSet::from(["Off.Apps.Test".to_string()]),
    );
    let served = |sni: &str| store.select(Some(sni), false).map(|k| k.cert.clone());
    let wildcard = Some(certified_key(&wildcard).unwrap().cert.clone());
    assert_eq!(served("b.apps.test"), wildcard);
    assert_eq!(served("B.Apps.Test."), wildcard);
    assert_eq!(
        served("a.apps.test"),
        Some(certified_key(&exact).unwrap().cert.clone()),
        "exact wins"
    );
    assert!(served("apps.test").is_none());
    assert!(served("x.b.apps.test").is_none());
    // A `tls: off` tunnel of its own under the wildcard: no certificate, not the wildcard's.
    assert!(served("off.apps.test").is_none());
    assert!(!store.has_certificate("off.apps.test"));
    assert!(store.has_certificate("b.apps.test"));
    assert!(!store.has_certificate("apps.test"));
    assert_eq!(store.len(), 2);
    // TLS-ALPN-01 stays exact: a validation handshake never gets the wildcard certificate.
    assert!(store.select(Some("b.apps.test"), true).is_none());
    assert!(store.select(Some("c.apps.test"), true).is_some());
}
