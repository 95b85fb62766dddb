//! Unit tests of the Gateway's access checks, with tokens signed by a test key.

use super::*;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use kakuremichi_proto::access::sign_token;
use kakuremichi_proto::{AccessKey, AccessPolicy};
use ring::signature::{Ed25519KeyPair, KeyPair as _};
use std::collections::BTreeSet;
use std::net::Ipv4Addr;

const HOST: &str = "app.example.com";

fn pair() -> Ed25519KeyPair {
    Ed25519KeyPair::from_seed_unchecked(&[7; 32]).unwrap()
}

fn gate(revoked: &[&str]) -> AccessGate {
    let gate = AccessGate::default();
    gate.apply(
        &AccessConfig {
            control_url: String::new(),
            keys: vec![AccessKey {
                kid: "k1".into(),
                public_key: URL_SAFE_NO_PAD.encode(pair().public_key().as_ref()),
            }],
            revoked: revoked.iter().map(|s| s.to_string()).collect(),
        },
        "https://control.example.com/",
    );
    gate
}

fn token(host: &str, email: &str, iat_ago: u64) -> String {
    let now = unix_now();
    let claims = AccessClaims {
        kid: "k1".into(),
        host: host.into(),
        sub: 1,
        email: email.into(),
        sid: "sid-1".into(),
        iat: now - iat_ago,
        exp: now + 3600,
        // Minted while the route's list was alice's alone.
        pol: users(&["alice@x.io"]).digest(1),
    };
    sign_token(&claims, &pair())
}

fn route(access: AccessPolicy) -> GatewayRoute {
    GatewayRoute {
        tunnel_id: 1,
        agent_id: 1,
        agent_address: Ipv4Addr::LOCALHOST,
        port: 1,
        https_redirect: false,
        hsts_max_age: 0,
        replicas: Vec::new(),
        access: access.for_gateway(1),
        limits: Default::default(),
        plain_http_only: false,
        tcp_access: false,
        basic_auth: None,
        log_requests: false,
        error_page: None,
    }
}

fn users(list: &[&str]) -> AccessPolicy {
    AccessPolicy::Users {
        allow: list.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>(),
    }
}

fn host() -> ClientHost {
    ClientHost {
        authority: format!("{HOST}:8443"),
        name: HOST.into(),
    }
}

fn request(path: &str, cookies: &[&str]) -> Request<()> {
    let mut b = Request::builder()
        .uri(path)
        .header("x-kakuremichi-user", "forged@example.com");
    for c in cookies {
        b = b.header(COOKIE, *c);
    }
    b.body(()).unwrap()
}

fn location(r: &Response<Full<Bytes>>) -> &str {
    r.headers()[LOCATION].to_str().unwrap()
}

#[test]
fn public_routes_lose_the_cookie_and_forged_user_header() {
    let mut req = request("/x", &["a=1; km_access=zzz", "b=2"]);
    gate(&[])
        .admit(
            &mut req,
            &host(),
            &route(AccessPolicy::Public),
            Scheme::Https,
        )
        .unwrap();
    assert!(req.headers().get(USER_HEADER).is_none());
    assert_eq!(req.headers()[COOKIE], "a=1; b=2");
}

#[test]
fn no_cookie_redirects_to_control_with_the_original_url() {
    let mut req = request("/a/b?c=1", &["other=1"]);
    let r = gate(&[])
        .admit(
            &mut req,
            &host(),
            &route(AccessPolicy::Login),
            Scheme::Https,
        )
        .unwrap_err();
    assert_eq!(r.status(), StatusCode::FOUND);
    assert_eq!(
        location(&r),
        "https://control.example.com/access/authorize?host=app.example.com&return=\
         https%3A%2F%2Fapp.example.com%3A8443%2Fa%2Fb%3Fc%3D1"
    );
}

#[test]
fn valid_cookie_admits_and_names_the_user() {
    let cookie = format!(
        "{HOST_ACCESS_COOKIE}={}; theme=dark",
        token(HOST, "alice@x.io", 5)
    );
    let mut req = request("/", &[&cookie]);
    gate(&[])
        .admit(
            &mut req,
            &host(),
            &route(users(&["alice@x.io"])),
            Scheme::Https,
        )
        .unwrap();
    assert_eq!(req.headers()[USER_HEADER], "alice@x.io");
    assert_eq!(req.headers()[COOKIE], "theme=dark");
}

#[test]
fn bad_cookies_are_sent_to_sign_in() {
    let good = token(HOST, "alice@x.io", 5);
    let other_host = token("other.example.com", "alice@x.io", 5);
    // The first character of the signature: all six of its bits are signature bits (the last
    // character's low bits are padding, which a decoder may ignore, so changing it could be a
    // no-op, and it is 'A' for a quarter of all signatures).
    let at = good.rfind('.').unwrap() + 1;
    let flipped = if good[at..].starts_with('A') {
        "B"
    } else {
        "A"
    };
    let tampered = format!("{}{flipped}{}", &good[..at], &good[at + 1..]);
    for bad in [other_host.as_str(), tampered.as_str(), "garbage", ""] {
        let cookie = format!("km_access={bad}");
        let mut req = request("/", &[&cookie]);
        let r = gate(&[])
            .admit(&mut req, &host(), &route(AccessPolicy::Login), Scheme::Http)
            .unwrap_err();
        assert_eq!(r.status(), StatusCode::FOUND, "{bad}");
        assert!(req.headers().get(USER_HEADER).is_none());
    }
    // A revoked session (logout) is refused too.
    let cookie = format!("km_access={good}");
    let mut req = request("/", &[&cookie]);
    let r = gate(&["sid-1"])
        .admit(&mut req, &host(), &route(AccessPolicy::Login), Scheme::Http)
        .unwrap_err();
    assert_eq!(r.status(), StatusCode::FOUND);
}

#[test]
fn a_changed_list_sends_the_visitor_back_to_control() {
    // The token was minted against ["alice"]; the route's list is now another one (alice removed,
    // or someone added): Control, which holds the list, must decide again.
    for list in [&["bob@x.io"][..], &["alice@x.io", "bob@x.io"][..]] {
        let cookie = format!("{HOST_ACCESS_COOKIE}={}", token(HOST, "alice@x.io", 5));
        let mut req = request("/", &[&cookie]);
        let r = gate(&[])
            .admit(&mut req, &host(), &route(users(list)), Scheme::Https)
            .unwrap_err();
        assert_eq!(r.status(), StatusCode::FOUND, "{list:?}");
        assert!(location(&r).contains("/access/authorize?"));
        assert!(req.headers().get(USER_HEADER).is_none());
    }
    // A token of an older Control (no digest) re-authorizes too.
    let now = unix_now();
    let old = AccessClaims {
        kid: "k1".into(),
        host: HOST.into(),
        sub: 1,
        email: "alice@x.io".into(),
        sid: "sid-1".into(),
        iat: now - 5,
        exp: now + 3600,
        pol: None,
    };
    let cookie = format!("{HOST_ACCESS_COOKIE}={}", sign_token(&old, &pair()));
    let r = gate(&[])
        .admit(
            &mut request("/", &[&cookie]),
            &host(),
            &route(users(&["alice@x.io"])),
            Scheme::Https,
        )
        .unwrap_err();
    assert_eq!(r.status(), StatusCode::FOUND);
}

#[test]
fn without_keys_protected_routes_fail_closed() {
    let cookie = format!("{HOST_ACCESS_COOKIE}={}", token(HOST, "alice@x.io", 5));
    let mut req = request("/", &[&cookie]);
    let r = AccessGate::default()
        .admit(
            &mut req,
            &host(),
            &route(AccessPolicy::Login),
            Scheme::Https,
        )
        .unwrap_err();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
}

#[test]
fn handoff_sets_a_host_only_cookie_and_redirects_to_a_relative_path() {
    let t = token(HOST, "alice@x.io", 5);
    let path = format!("{HANDOFF_PATH}?token={t}&return=%2Fdocs%3Fa%3D1");
    let mut req = request(&path, &[]);
    let r = gate(&[])
        .admit(
            &mut req,
            &host(),
            &route(AccessPolicy::Login),
            Scheme::Https,
        )
        .unwrap_err();
    assert_eq!(r.status(), StatusCode::FOUND);
    assert_eq!(location(&r), "/docs?a=1");
    let cookie = r.headers()[SET_COOKIE].to_str().unwrap();
    assert!(cookie.starts_with(&format!(
        "__Host-km_access={t}; Path=/; HttpOnly; SameSite=Lax; Max-Age="
    )));
    assert!(
        cookie.ends_with("; Secure") && !cookie.contains("Domain"),
        "{cookie}"
    );

    // Open redirects are refused: the path falls back to `/`.
    for back in [
        "https%3A%2F%2Fevil.example",
        "%2F%2Fevil.example",
        "%2F%5Cevil.example",
        "",
    ] {
        let path = format!("{HANDOFF_PATH}?token={t}&return={back}");
        let r = gate(&[])
            .admit(
                &mut request(&path, &[]),
                &host(),
                &route(AccessPolicy::Login),
                Scheme::Http,
            )
            .unwrap_err();
        assert_eq!(location(&r), "/", "{back}");
        assert!(!r.headers()[SET_COOKIE].to_str().unwrap().contains("Secure"));
    }
}

#[test]
fn handoff_refuses_stale_foreign_or_forged_tokens() {
    let stale = token(HOST, "alice@x.io", HANDOFF_MAX_AGE_SECS + 5);
    let foreign = token("other.example.com", "alice@x.io", 5);
    for t in [stale.as_str(), foreign.as_str(), "x.y", ""] {
        let path = format!("{HANDOFF_PATH}?token={t}&return=%2F");
        let r = gate(&[])
            .admit(
                &mut request(&path, &[]),
                &host(),
                &route(AccessPolicy::Login),
                Scheme::Https,
            )
            .unwrap_err();
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{t}");
        assert!(r.headers().get(SET_COOKIE).is_none());
    }
    // Valid, but for a user the route does not admit.
    let t = token(HOST, "alice@x.io", 5);
    let path = format!("{HANDOFF_PATH}?token={t}&return=%2F");
    let r = gate(&[])
        .admit(
            &mut request(&path, &[]),
            &host(),
            &route(users(&["bob@x.io"])),
            Scheme::Https,
        )
        .unwrap_err();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert!(r.headers().get(SET_COOKIE).is_none());
}

#[test]
fn reserved_paths_never_reach_the_origin() {
    let r = gate(&[])
        .admit(
            &mut request("/.kakuremichi/other", &[]),
            &host(),
            &route(AccessPolicy::Public),
            Scheme::Http,
        )
        .unwrap_err();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

#[test]
fn take_cookie_handles_odd_headers() {
    let mut h = HeaderMap::new();
    assert_eq!(take_cookie(&mut h, ACCESS_COOKIE), None);
    h.append(COOKIE, HeaderValue::from_static("km_access=a"));
    h.append(COOKIE, HeaderValue::from_static(" ; km_access = b ;x=1"));
    assert_eq!(take_cookie(&mut h, ACCESS_COOKIE).as_deref(), Some("b"));
    assert_eq!(h.get_all(COOKIE).iter().count(), 1);
    assert_eq!(h[COOKIE], "x=1");
    let mut h = HeaderMap::new();
    h.insert(COOKIE, HeaderValue::from_static("km_access="));
    assert_eq!(take_cookie(&mut h, ACCESS_COOKIE), None);
    assert!(h.get(COOKIE).is_none());
    // A cookie whose name merely contains ours is kept.
    let mut h = HeaderMap::new();
    h.insert(COOKIE, HeaderValue::from_static("my_km_access=1"));
    assert_eq!(take_cookie(&mut h, ACCESS_COOKIE), None);
    assert_eq!(h[COOKIE], "my_km_access=1");
}

#[test]
fn user_header_lookalikes_are_removed_in_every_spelling() {
    let cookie = format!("{HOST_ACCESS_COOKIE}={}", token(HOST, "alice@x.io", 5));
    let mut req = request("/", &[&cookie]);
    for forged in [
        "X_Kakuremichi_User",
        "x-kakuremichi_user",
        "X_KAKUREMICHI-USER",
    ] {
        let name = HeaderName::from_bytes(forged.as_bytes()).unwrap();
        req.headers_mut()
            .append(name, HeaderValue::from_static("mallory@x.io"));
    }
    req.headers_mut()
        .insert("x-kakuremichi-users", HeaderValue::from_static("kept"));
    gate(&[])
        .admit(
            &mut req,
            &host(),
            &route(users(&["alice@x.io"])),
            Scheme::Https,
        )
        .unwrap();
    let mut users: Vec<_> = req
        .headers()
        .iter()
        .filter(|(name, _)| name.as_str().contains("kakuremichi"))
        .map(|(name, value)| format!("{name}: {}", value.to_str().unwrap()))
        .collect();
    users.sort();
    assert_eq!(
        users,
        [
            "x-kakuremichi-user: alice@x.io",
            "x-kakuremichi-users: kept"
        ]
    );
}

#[test]
fn over_https_only_the_host_prefixed_cookie_counts() {
    let good = token(HOST, "alice@x.io", 5);
    // A plain cookie (set over http, or planted by a sibling host) is ignored over HTTPS, and
    // removed all the same.
    let cookie = format!("{ACCESS_COOKIE}={good}; theme=dark");
    let mut req = request("/", &[&cookie]);
    let r = gate(&[])
        .admit(
            &mut req,
            &host(),
            &route(AccessPolicy::Login),
            Scheme::Https,
        )
        .unwrap_err();
    assert_eq!(r.status(), StatusCode::FOUND);
    assert_eq!(req.headers()[COOKIE], "theme=dark");
    // Over plain HTTP the `__Host-` cookie cannot exist (it needs Secure): the plain one counts.
    let cookie = format!("{HOST_ACCESS_COOKIE}={good}");
    let mut req = request("/", &[&cookie]);
    assert!(gate(&[])
        .admit(&mut req, &host(), &route(AccessPolicy::Login), Scheme::Http)
        .is_err());
    let cookie = format!("{ACCESS_COOKIE}={good}");
    let mut req = request("/", &[&cookie]);
    gate(&[])
        .admit(&mut req, &host(), &route(AccessPolicy::Login), Scheme::Http)
        .unwrap();
    assert_eq!(req.headers()[USER_HEADER], "alice@x.io");
}
