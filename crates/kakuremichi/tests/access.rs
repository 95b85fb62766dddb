//! Per-tunnel access control end to end, in one process: Control + Gateway + Agent + origin.
//! Every redirect is followed by hand, so each hop (Gateway → Control → login → Control →
//! Gateway hand-off → app) is asserted; the browser is played by a cookie-less client that sends
//! the cookies the test chooses.

use kakuremichi_proto::access::{sign_token, AccessClaims};
use kakuremichi_testkit::*;
use reqwest::header::{COOKIE, HOST, LOCATION, SET_COOKIE};
use reqwest::{StatusCode, Url};
use serde_json::{json, Value};
use std::time::Duration;

const WITHIN: Duration = Duration::from_secs(20);
const APP: &str = "app.example.com";
/// Another base domain, served by the same Gateway with the same Control sign-in.
const OTHER: &str = "wiki.example.net";

/// The in-process fleet, and a client that never follows redirects.
struct Site {
    fleet: Fleet,
    http: reqwest::Client,
}

impl std::ops::Deref for Site {
    type Target = Fleet;
    fn deref(&self) -> &Fleet {
        &self.fleet
    }
}

async fn site() -> Site {
    Site {
        fleet: Fleet::start().await,
        http: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap(),
    }
}

impl Site {
    async fn tunnel(&self, host: &str, access: Value) -> i64 {
        let body = json!({"hostname": host, "agent_id": self.agent_id,
            "target": self.origin.to_string(), "tls": "off", "access": access});
        let created = self.api.post("tunnels", body).await;
        assert_eq!(created["access"], access, "{created}");
        created["id"].as_i64().unwrap()
    }

    /// GET `path_and_query` on the Gateway for `host`, with `cookie` if given.
    async fn gateway_get(
        &self,
        host: &str,
        path_and_query: &str,
        cookie: Option<&str>,
    ) -> reqwest::Response {
        let mut req = self
            .http
            .get(format!("http://{}{path_and_query}", self.gateway()))
            .header(HOST, host)
            .header("x-kakuremichi-user", "forged@example.com");
        if let Some(c) = cookie {
            req = req.header(COOKIE, c);
        }
        req.send().await.unwrap()
    }

    /// Status of GET `/echo` on `host` with `cookie`.
    async fn status(&self, host: &str, cookie: &str) -> StatusCode {
        self.gateway_get(host, "/echo", Some(cookie)).await.status()
    }

    /// Follows the whole sign-in dance for `host` with Control session cookie `session`, from a
    /// visitor's first request to the access cookie the Gateway sets; returns that cookie.
    async fn sign_in(&self, host: &str, session: &str) -> String {
        let first = self.gateway_get(host, "/echo?x=1", None).await;
        assert_eq!(first.status(), StatusCode::FOUND);
        let authorize = location(&first);
        let expected = format!("{}/access/authorize?", self.api.base);
        assert!(authorize.starts_with(&expected), "{authorize}");
        let params = query(&authorize);
        assert_eq!(params["host"], host);
        assert_eq!(params["return"], format!("http://{host}/echo?x=1"));

        let handoff = self
            .http
            .get(&authorize)
            .header(COOKIE, session)
            .send()
            .await
            .unwrap();
        assert_eq!(handoff.status(), StatusCode::FOUND);
        let handoff = Url::parse(&location(&handoff)).unwrap();
        assert_eq!(handoff.host_str(), Some(host));
        assert_eq!(handoff.path(), "/.kakuremichi/access");
        let path = format!("{}?{}", handoff.path(), handoff.query().unwrap());
        let landed = self.gateway_get(host, &path, None).await;
        assert_eq!(landed.status(), StatusCode::FOUND);
        assert_eq!(location(&landed), "/echo?x=1");
        let set = landed.headers()[SET_COOKIE].to_str().unwrap().to_string();
        assert!(
            set.contains("HttpOnly") && set.contains("SameSite=Lax"),
            "{set}"
        );
        assert!(!set.contains("Domain="), "host-only cookie: {set}");
        set.split(';').next().unwrap().to_string()
    }

    /// The sign-in dance without its checks: the access cookie, or `None` when the Gateway
    /// refuses the hand-off (it does not hold the route's current allow-list digest yet).
    async fn try_sign_in(&self, host: &str, session: &str) -> Option<String> {
        let first = self.gateway_get(host, "/echo", None).await;
        let handoff = self
            .http
            .get(location(&first))
            .header(COOKIE, session)
            .send()
            .await
            .unwrap();
        let handoff = Url::parse(&location(&handoff)).unwrap();
        let path = format!("{}?{}", handoff.path(), handoff.query()?);
        let landed = self.gateway_get(host, &path, None).await;
        let set = landed.headers().get(SET_COOKIE)?.to_str().ok()?;
        Some(set.split(';').next()?.to_string())
    }

    /// A token signed with Control's current key (read from its database), as an attacker who
    /// stole nothing could not make: to check that expiry and host binding really are enforced.
    async fn forge(&self, host: &str, exp_from_now: i64) -> String {
        let db = self.dir.path().join("control").join("control.db");
        let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display()))
            .await
            .unwrap();
        let (kid, seed): (String, String) =
            sqlx::query_as("SELECT kid, seed FROM access_keys ORDER BY sign_from DESC LIMIT 1")
                .fetch_one(&pool)
                .await
                .unwrap();
        pool.close().await;
        use base64::Engine as _;
        let seed = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(seed)
            .unwrap();
        let pair = ring::signature::Ed25519KeyPair::from_seed_unchecked(&seed).unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let claims = AccessClaims {
            kid,
            host: host.into(),
            sub: 1,
            email: ADMIN_EMAIL.into(),
            sid: "forged-session".into(),
            iat: (now - 7200) as u64,
            exp: (now + exp_from_now) as u64,
            pol: None,
        };
        format!("km_access={}", sign_token(&claims, &pair))
    }
}

fn location(r: &reqwest::Response) -> String {
    r.headers()[LOCATION].to_str().unwrap().to_string()
}

fn query(url: &str) -> std::collections::HashMap<String, String> {
    Url::parse(url)
        .unwrap()
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// Signs in to Control through the JSON API; returns the `km_session=...` cookie and the
/// session's CSRF token (logging out needs it).
async fn control_session(site: &Site) -> (String, String) {
    let resp = site
        .http
        .post(format!("{}/api/v1/auth/login", site.api.base))
        .json(&json!({"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let set = resp.headers()[SET_COOKIE].to_str().unwrap();
    let cookie = set.split(';').next().unwrap().to_string();
    let body: Value = resp.json().await.unwrap();
    (cookie, body["csrf_token"].as_str().unwrap().to_string())
}

async fn echo(resp: reqwest::Response) -> Value {
    assert_eq!(resp.status(), StatusCode::OK);
    resp.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn protected_tunnels_sign_in_admit_listed_users_and_revoke() {
    let site = site().await;
    site.tunnel("pub.example.com", json!({"mode": "public"}))
        .await;
    let app = site.tunnel(APP, json!({"mode": "login"})).await;
    site.tunnel(OTHER, json!({"mode": "login"})).await;

    // A public tunnel is unaffected, and a forged user header never reaches its app.
    wait_through(
        &site.http,
        site.gateway(),
        "pub.example.com",
        "/",
        WITHIN,
        "public tunnel",
        |s, b| s == 200 && b.contains("the-app"),
    )
    .await;
    let e = echo(site.gateway_get("pub.example.com", "/echo", None).await).await;
    assert!(e["headers"].get("x-kakuremichi-user").is_none(), "{e}");

    // A protected tunnel sends a visitor to Control, which sends them on to the login page
    // with a way back.
    wait_through(
        &site.http,
        site.gateway(),
        APP,
        "/",
        WITHIN,
        "protected",
        |s, _| s == 302,
    )
    .await;
    let first = site.gateway_get(APP, "/echo?x=1", None).await;
    let authorize = location(&first);
    let to_login = site.http.get(&authorize).send().await.unwrap();
    assert_eq!(to_login.status(), StatusCode::FOUND);
    let login = location(&to_login);
    assert!(login.starts_with("/login?next="), "{login}");
    let next = query(&format!("http://control{login}"))["next"].clone();
    assert_eq!(format!("{}{next}", site.api.base), authorize);

    // Signed in: back at the Gateway, then at the app, which learns who the user is and sees
    // neither the access cookie nor the forged header.
    let (session, csrf) = control_session(&site).await;
    let cookie = site.sign_in(APP, &session).await;
    let with_other = format!("{cookie}; theme=dark");
    let e = echo(site.gateway_get(APP, "/echo?x=1", Some(&with_other)).await).await;
    assert_eq!(e["path"], "/echo?x=1");
    assert_eq!(e["headers"]["x-kakuremichi-user"], ADMIN_EMAIL, "{e}");
    assert_eq!(e["headers"]["cookie"], "theme=dark", "{e}");
    // The reserved path never reaches the app.
    let reserved = site
        .gateway_get(APP, "/.kakuremichi/x", Some(&cookie))
        .await;
    assert_eq!(reserved.status(), StatusCode::NOT_FOUND);

    // Another base domain works with the same Control sign-in, with its own cookie; tokens are
    // bound to their host both ways.
    let other_cookie = site.sign_in(OTHER, &session).await;
    assert_eq!(site.status(OTHER, &other_cookie).await, StatusCode::OK);
    assert_eq!(site.status(OTHER, &cookie).await, StatusCode::FOUND);
    assert_eq!(site.status(APP, &other_cookie).await, StatusCode::FOUND);

    // Tampered, expired and other-host tokens are refused; the same forge with a valid expiry
    // and host is accepted, so the refusals are about those claims.
    let tampered = format!("{}x", &cookie[..cookie.len() - 1]);
    assert_eq!(site.status(APP, &tampered).await, StatusCode::FOUND);
    assert_eq!(
        site.status(APP, &site.forge(APP, -1).await).await,
        StatusCode::FOUND
    );
    let forged_other = site.forge("elsewhere.example.org", 600).await;
    assert_eq!(site.status(APP, &forged_other).await, StatusCode::FOUND);
    assert_eq!(
        site.status(APP, &site.forge(APP, 600).await).await,
        StatusCode::OK
    );

    // A list that does not name the user: the Gateway (which holds only the list's digest)
    // sends the visitor back to Control, which answers a clear 403.
    let alice = json!({"mode": "users", "allow": ["Alice@Example.com"]});
    let patched = site
        .api
        .patch(&format!("tunnels/{app}"), json!({"access": alice}))
        .await;
    assert_eq!(patched["access"]["allow"], json!(["alice@example.com"]));
    eventually(
        WITHIN,
        "sent back to Control once listed users only",
        || async { (site.status(APP, &cookie).await == StatusCode::FOUND).then_some(()) },
    )
    .await;
    let back = site.gateway_get(APP, "/echo", Some(&cookie)).await;
    assert!(location(&back).contains("/access/authorize?"));
    let refused = site
        .http
        .get(&authorize)
        .header(COOKIE, &session)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    let page = refused.text().await.unwrap();
    assert!(
        page.contains(&format!("signed in as <b>{ADMIN_EMAIL}</b>")),
        "{page}"
    );

    // Added to the list: admitted after signing in again (seamless with a Control session);
    // removed again: refused within the push, not a minute.
    let both = json!({"mode": "users", "allow": ["alice@example.com", ADMIN_EMAIL]});
    site.api
        .patch(&format!("tunnels/{app}"), json!({"access": both}))
        .await;
    let cookie = eventually(
        WITHIN,
        "signed in again once the list is pushed",
        || async { site.try_sign_in(APP, &session).await },
    )
    .await;
    assert_eq!(site.status(APP, &cookie).await, StatusCode::OK);
    site.api
        .patch(&format!("tunnels/{app}"), json!({"access": alice}))
        .await;
    eventually(WITHIN, "refused once removed", || async {
        (site.status(APP, &cookie).await == StatusCode::FOUND).then_some(())
    })
    .await;
    let refused = site
        .http
        .get(&authorize)
        .header(COOKIE, &session)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);

    // Logout revokes every access cookie of that session, on every host.
    site.api
        .patch(
            &format!("tunnels/{app}"),
            json!({"access": {"mode": "login"}}),
        )
        .await;
    eventually(WITHIN, "admitted again", || async {
        (site.status(APP, &cookie).await == StatusCode::OK).then_some(())
    })
    .await;
    let out = site
        .http
        .post(format!("{}/api/v1/auth/logout", site.api.base))
        .header(COOKIE, &session)
        .header("x-csrf-token", &csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), StatusCode::NO_CONTENT);
    eventually(WITHIN, "refused after logout", || async {
        let app = site.status(APP, &cookie).await;
        let other = site.status(OTHER, &other_cookie).await;
        (app == StatusCode::FOUND && other == StatusCode::FOUND).then_some(())
    })
    .await;
    // Control no longer knows the session either: back to the login page.
    let again = site
        .http
        .get(&authorize)
        .header(COOKIE, &session)
        .send()
        .await
        .unwrap();
    assert!(location(&again).starts_with("/login?next="));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_field_is_validated() {
    let site = site().await;
    let bad = [
        json!({"mode": "users", "allow": []}),
        json!({"mode": "users", "allow": ["not-an-email"]}),
        json!({"mode": "secret"}),
        json!({"mode": "users"}),
    ];
    for access in bad {
        let body = json!({"hostname": "x.example.com", "agent_id": site.agent_id,
            "target": "127.0.0.1:1", "access": access});
        let (status, v) = site
            .api
            .call(reqwest::Method::POST, "tunnels", Some(body))
            .await;
        assert_eq!(status, 400, "{access}: {v}");
        assert!(v["error"]["message"].as_str().is_some(), "{v}");
    }
    let id = site
        .tunnel("x.example.com", json!({"mode": "public"}))
        .await;
    let (status, _) = site
        .api
        .call(
            reqwest::Method::PATCH,
            &format!("tunnels/{id}"),
            Some(json!({"access": {"mode": "users", "allow": ["a@b"]}})),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        site.api.get(&format!("tunnels/{id}")).await["access"]["allow"],
        json!(["a@b"])
    );
    // Defaults to public.
    let body =
        json!({"hostname": "y.example.com", "agent_id": site.agent_id, "target": "127.0.0.1:1"});
    assert_eq!(
        site.api.post("tunnels", body).await["access"],
        json!({"mode": "public"})
    );
    // Control refuses to mint for hosts it does not serve, and for return URLs elsewhere.
    let bad = [
        "host=nope.example.com&return=http%3A%2F%2Fnope.example.com%2F",
        "host=x.example.com&return=http%3A%2F%2Fevil.example.com%2F",
    ];
    for q in bad {
        let r = site
            .http
            .get(format!("{}/access/authorize?{q}", site.api.base))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_client_error(), "{q}: {}", r.status());
    }
}
