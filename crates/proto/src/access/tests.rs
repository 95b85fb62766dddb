//! Tests of `access.rs`.

use super::*;

const NOW: u64 = 1_800_000_000;

fn key(seed: u8) -> Ed25519KeyPair {
    Ed25519KeyPair::from_seed_unchecked(&[seed; 32]).unwrap()
}

fn public(kid: &str, seed: u8) -> AccessKey {
    use ring::signature::KeyPair as _;
    AccessKey {
        kid: kid.into(),
        public_key: URL_SAFE_NO_PAD.encode(key(seed).public_key().as_ref()),
    }
}

fn claims() -> AccessClaims {
    AccessClaims {
        kid: "k1".into(),
        host: "app.example.com".into(),
        sub: 7,
        email: "alice@example.com".into(),
        sid: "s1".into(),
        iat: NOW - 10,
        exp: NOW + 3600,
        pol: None,
    }
}

fn keys() -> KeySet {
    KeySet::new(&[public("k1", 1), public("k2", 2)])
}

#[test]
fn a_good_token_verifies() {
    let token = sign_token(&claims(), &key(1));
    assert_eq!(keys().verify(&token, "app.example.com", NOW), Ok(claims()));
}

#[test]
fn forged_signature_is_rejected() {
    // Signed with a key Control never published, under a published kid.
    let token = sign_token(&claims(), &key(9));
    assert_eq!(
        keys().verify(&token, "app.example.com", NOW),
        Err(TokenError::BadSignature)
    );
    // A valid signature moved onto edited claims.
    let good = sign_token(&claims(), &key(1));
    let (_, sig) = good.split_once('.').unwrap();
    let mut edited = claims();
    edited.email = "mallory@example.com".into();
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&edited).unwrap());
    assert_eq!(
        keys().verify(&format!("{payload}.{sig}"), "app.example.com", NOW),
        Err(TokenError::BadSignature)
    );
}

#[test]
fn wrong_or_unknown_kid_is_rejected() {
    // Signed by k1's key but claiming to be k2: the signature does not match k2.
    let mut c = claims();
    c.kid = "k2".into();
    assert_eq!(
        keys().verify(&sign_token(&c, &key(1)), "app.example.com", NOW),
        Err(TokenError::BadSignature)
    );
    c.kid = "retired".into();
    assert_eq!(
        keys().verify(&sign_token(&c, &key(1)), "app.example.com", NOW),
        Err(TokenError::UnknownKey)
    );
}

#[test]
fn expired_and_future_tokens_are_rejected() {
    let token = sign_token(&claims(), &key(1));
    assert_eq!(
        keys().verify(&token, "app.example.com", NOW + 3600),
        Err(TokenError::Expired)
    );
    let mut c = claims();
    c.iat = NOW + CLOCK_SKEW_SECS + 1;
    assert_eq!(
        keys().verify(&sign_token(&c, &key(1)), "app.example.com", NOW),
        Err(TokenError::NotYetValid)
    );
}

#[test]
fn other_host_is_rejected() {
    let token = sign_token(&claims(), &key(1));
    for host in [
        "other.example.com",
        "APP.example.com",
        "app.example.com.evil",
    ] {
        assert_eq!(
            keys().verify(&token, host, NOW),
            Err(TokenError::WrongHost),
            "{host}"
        );
    }
}

#[test]
fn malformed_input_is_rejected_without_panic() {
    let good = sign_token(&claims(), &key(1));
    let long = "a".repeat(MAX_TOKEN_LEN + 1);
    let inputs = [
        "",
        ".",
        "abc",
        "abc.def",
        "!!!.???",
        "e30.AAAA",   // `{}`: missing claims
        "bnVsbA.AAA", // `null`
        &good[..good.len() - 3],
        &format!("{good}.extra"),
        &long,
        "\u{1F600}.\u{1F600}",
    ];
    let k = keys();
    for input in inputs {
        assert!(
            k.verify(input, "app.example.com", NOW).is_err(),
            "{input:?}"
        );
    }
    // A truncated signature decodes but does not verify.
    assert_eq!(
        k.verify(&good[..good.len() - 4], "app.example.com", NOW),
        Err(TokenError::BadSignature)
    );
}

#[test]
fn bad_published_keys_are_skipped() {
    let set = KeySet::new(&[
        AccessKey {
            kid: "short".into(),
            public_key: "AAAA".into(),
        },
        AccessKey {
            kid: "junk".into(),
            public_key: "***".into(),
        },
        public("k1", 1),
    ]);
    assert_eq!(set.len(), 1);
}

#[test]
fn policy_json_and_admission() {
    let users: AccessPolicy =
        serde_json::from_str(r#"{"mode":"users","allow":["a@x.io","b@x.io"]}"#).unwrap();
    assert!(users.admits("a@x.io") && !users.admits("c@x.io"));
    assert!(AccessPolicy::Login.admits("c@x.io"));
    assert_eq!(
        serde_json::to_string(&AccessPolicy::Login).unwrap(),
        r#"{"mode":"login"}"#
    );
    assert!(serde_json::from_str::<AccessPolicy>(r#"{"mode":"secret"}"#).is_err());
    assert!(AccessPolicy::default().is_public());
}

fn users(emails: &[&str]) -> AccessPolicy {
    AccessPolicy::Users {
        allow: emails.iter().map(|e| e.to_string()).collect(),
    }
}

#[test]
fn a_route_carries_a_constant_size_digest_not_the_list() {
    let small = users(&["a@x.io"]);
    let emails: Vec<String> = (0..1000).map(|i| format!("user{i}@example.com")).collect();
    let big = AccessPolicy::Users {
        allow: emails.iter().cloned().collect(),
    };
    let (s, b) = (small.for_gateway(7), big.for_gateway(7));
    let json = serde_json::to_string(&b).unwrap();
    assert_eq!(serde_json::to_string(&s).unwrap().len(), json.len());
    assert!(json.len() < 64 && !json.contains('@'), "{json}");
    assert_eq!(serde_json::from_str::<RouteAccess>(&json).unwrap(), b);
    // Digests differ by list and by tunnel, and not by the order e-mails were given in.
    assert_ne!(small.digest(7), big.digest(7));
    assert_ne!(small.digest(7), small.digest(8));
    assert_eq!(
        users(&["b@x.io", "a@x.io"]).digest(1),
        users(&["a@x.io", "b@x.io"]).digest(1)
    );
    assert_eq!(AccessPolicy::Login.for_gateway(7), RouteAccess::Login);
    assert_eq!(AccessPolicy::Public.digest(7), None);
}

#[test]
fn a_users_route_admits_only_tokens_with_its_current_digest() {
    let policy = users(&["alice@example.com"]);
    let route = policy.for_gateway(7);
    let mut c = claims();
    assert!(
        !route.admits(&c),
        "a token without a digest (older Control) re-authorizes"
    );
    c.pol = policy.digest(7);
    assert!(route.admits(&c));
    // The list changed: tokens minted against the old list no longer pass.
    let changed = users(&["alice@example.com", "bob@example.com"]).for_gateway(7);
    assert!(!changed.admits(&c));
    assert!(RouteAccess::Login.admits(&claims()));
    let empty = RouteAccess::Users {
        digest: String::new(),
    };
    c.pol = Some(String::new());
    assert!(!empty.admits(&c));
    // Tokens of older Controls (no `pol`) still parse.
    let old = r#"{"kid":"k","host":"h","sub":1,"email":"e","sid":"s","iat":1,"exp":2}"#;
    assert_eq!(serde_json::from_str::<AccessClaims>(old).unwrap().pol, None);
}
