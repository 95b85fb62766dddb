//! The web UI in a real browser (Debian's chromium through chromedriver), against a real Control,
//! Gateway and Agent in this process: first-run setup → add a gateway (start it with the shown
//! token) → add an agent (start it with the shown key) → add a tunnel → open the tunnel's URL and
//! see the app. Status badges turn online without a reload (the page's own polling). Saves a
//! screenshot of each main page to `target/ui-screenshots/` (see `kakuremichi_testkit::browser::screenshot_dir`).
//!
//! Access control in the browser: a tunnel made in the UI for "only these people" sends a fresh
//! browser to Control's login and back to the URL it asked for; someone not on the list gets the
//! 403 page.
//!
//! DNS zones: an admin adds an rfc2136 zone against a real BIND in the browser, presses Check and
//! sees it works; a member has no DNS page.

use fantoccini::Locator;
use kakuremichi_node::Secret;
use kakuremichi_testkit::browser::Browser;
use kakuremichi_testkit::*;
use std::time::Duration;
use tokio::net::TcpListener;

const LIVE: Duration = Duration::from_secs(30);
const APP_HOST: &str = "app.test";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_agent_tunnel_and_the_app_in_a_browser() {
    init_logs();
    // fantoccini's TLS stack brings a second rustls provider; say which one this process uses.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let Some((driver, chromium)) = kakuremichi_testkit::browser::binaries(module_path!()) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();

    // Control, first run: no account; its release assets on a mirror of the user's.
    let config = kakuremichi_control::ControlConfig {
        data_dir: dir.path().join("control"),
        download_url: "https://mirror.example.com/kakuremichi".into(),
        ..Default::default()
    };
    let _control = InProcessControl::start(config).await;
    let base = _control.base.clone();
    wait_ready(&reqwest::Client::new(), &base).await;

    // The app behind the tunnel, and the Gateway's sockets (it starts once the UI gave a token).
    let (origin_addr, _origin) = start_origin("ui-test-app").await;
    let wg = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let wg_addr = wg.local_addr().unwrap();
    let gw_http = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gw_port = gw_http.local_addr().unwrap().port();

    let b = Browser::start(&driver, &chromium, &format!("MAP {APP_HOST} 127.0.0.1")).await;

    // First run: the setup page creates the admin and signs in.
    b.client.goto(&base).await.unwrap();
    b.wait_path("/setup").await;
    b.fill("input[name=email]", ADMIN_EMAIL).await;
    b.fill("input[name=password]", ADMIN_PASSWORD).await;
    b.shot("01-setup").await;
    b.click("button[type=submit]").await;
    b.wait_path("/").await;
    assert!(b.text("main").await.contains("Add a gateway"));
    b.shot("02-dashboard-first-run").await;

    // Add a gateway; start it with the token the page shows once.
    b.client.goto(&format!("{base}/gateways")).await.unwrap();
    b.fill("input[name=name]", "edge-1").await;
    b.fill("input[name=public_endpoint]", &wg_addr.to_string())
        .await;
    b.click("form[action='/gateways'] button[type=submit]")
        .await;
    let token = b.read("#gateway-token").await;
    assert!(token.starts_with("kmg_"), "{token}");
    b.shot("03-gateway-token").await;
    let listeners = kakuremichi_gateway::GatewayListeners {
        http: gw_http,
        https: TcpListener::bind("127.0.0.1:0").await.unwrap(),
        admin: TcpListener::bind("127.0.0.1:0").await.unwrap(),
        wg,
    };
    let (_gateway, _gw_task) = spawn_gateway(
        &base,
        &token,
        listeners,
        private_loopback(),
        dir.path().join("gw"),
    );
    b.wait_text("[data-node='gateway:1']", "online", LIVE).await;

    // Add an agent; run it with the key the page shows once, with the Control URL it shows.
    b.client.goto(&format!("{base}/agents")).await.unwrap();
    b.fill("input[name=name]", "home-server").await;
    b.click("form[action='/agents'] button[type=submit]").await;
    let key = b.read("#agent-key").await;
    assert!(key.starts_with("kma_"), "{key}");
    let page = b.text("main").await;
    assert!(
        page.contains(&format!("CONTROL_URL={base}")),
        "the commands carry the Control URL"
    );
    assert!(
        page.contains(&format!("API_KEY: {key}")),
        "the compose snippet carries the key"
    );
    assert_eq!(
        b.read("#agent-install").await.trim(),
        format!(
            "curl -fsSL https://mirror.example.com/kakuremichi/install.sh | sudo sh -s -- --agent {base} {key}"
        ),
        "the one-line install, from the configured download URL"
    );
    b.shot("04-agent-key").await;
    let mut agent = kakuremichi_agent::AgentConfig::new(base.clone(), Secret::new(key));
    agent.data_dir = Some(dir.path().join("agent"));
    let (_agent, wait) = Stop::new();
    tokio::spawn(kakuremichi_agent::run(agent, wait()));
    // The badge on the page turns online by itself (no reload).
    b.wait_text("[data-node='agent:1']", "online", LIVE).await;
    b.client.goto(&format!("{base}/agents")).await.unwrap();
    b.shot("05-agents").await;

    // Add a tunnel to the app through that agent.
    b.client.goto(&format!("{base}/tunnels")).await.unwrap();
    b.fill("input[name=hostname]", APP_HOST).await;
    b.client
        .find(Locator::Css("select[name=agent_id]"))
        .await
        .unwrap()
        .select_by_value("1")
        .await
        .unwrap();
    b.fill("input[name=target]", &origin_addr.to_string()).await;
    b.client
        .find(Locator::Css("select[name=tls]"))
        .await
        .unwrap()
        .select_by_value("off")
        .await
        .unwrap();
    b.click("#create-tunnel button[type=submit]").await;
    b.wait_path("/tunnels/1").await;
    b.wait_text("[data-tunnel='1']", "serving", LIVE).await;
    // The page names the URL browsers reach: the Gateway's real plain HTTP port.
    let app = format!("http://{APP_HOST}:{gw_port}/");
    assert_eq!(b.text("#public-url").await, app);
    b.shot("06-tunnel").await;

    // That URL shows the app.
    eventually(LIVE, "the app answers through the tunnel", || async {
        b.client.goto(&app).await.unwrap();
        let source = b.client.source().await.unwrap_or_default();
        source.contains("ui-test-app")
    })
    .await;
    b.shot("07-app-through-the-tunnel").await;

    // The other main pages, for the record (and to see they render for a real session).
    for (path, name, expect) in [
        ("/", "08-dashboard", "Everything is up"),
        ("/tunnels", "09-tunnels", APP_HOST),
        ("/gateways", "10-gateways", "edge-1"),
        ("/users", "11-users", ADMIN_EMAIL),
        ("/profile", "12-profile", "Personal API tokens"),
        ("/activity", "13-activity", "tunnel.create"),
    ] {
        b.client.goto(&format!("{base}{path}")).await.unwrap();
        let text = b.text("main").await;
        assert!(text.contains(expect), "{path}: {text}");
        b.shot(name).await;
    }
    b.client.goto(&base).await.unwrap();
    b.wait_text("[data-count='tunnels']", "1 / 1", LIVE).await;
    b.client.set_window_size(390, 844).await.unwrap();
    b.client.goto(&format!("{base}/tunnels/1")).await.unwrap();
    b.shot("14-tunnel-phone").await;
    b.close().await;
}

/// Control (admin from the config), a Gateway and an Agent started through the API, and the app.
async fn stack() -> Fleet {
    Cluster::new()
        .gateway()
        .agent()
        .origin("ui-test-app")
        .start()
        .await
}

/// chromedriver and chromium, and [`stack`]; `None` (after a loud line) without the browser.
async fn browser_and_stack() -> Option<(std::path::PathBuf, std::path::PathBuf, Fleet)> {
    init_logs();
    // fantoccini's TLS stack brings a second rustls provider; say which one this process uses.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (driver, chromium) = kakuremichi_testkit::browser::binaries(module_path!())?;
    Some((driver, chromium, stack().await))
}

/// Signs in on Control's login page, which the browser is on.
async fn log_in(b: &Browser, email: &str, password: &str) {
    b.fill("input[name=email]", email).await;
    b.fill("input[name=password]", password).await;
    b.click("form[action='/login'] button[type=submit]").await;
}

/// Opens `url` (on the tunnel) until the Gateway, once it has the route, sends the browser to
/// Control's login page.
async fn open_until_login(b: &Browser, url: &str, control: &str) {
    let what = format!("{url} redirects to the login page");
    let at = eventually(LIVE, &what, || async {
        b.client.goto(url).await.unwrap();
        let at = b.client.current_url().await.unwrap();
        (at.path() == "/login").then_some(at)
    })
    .await;
    assert_eq!(
        at.origin().ascii_serialization(),
        control,
        "the login page is Control's"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protected_tunnel_sends_to_login_and_back_and_refuses_others() {
    let Some((driver, chromium, s)) = browser_and_stack().await else {
        return;
    };
    let base = &s.api.base;
    let rules = format!("MAP {APP_HOST} 127.0.0.1");
    const MEMBER: &str = "member@example.com";
    const MEMBER_PASSWORD: &str = "member password 42";

    // The admin creates a member and a tunnel only they may open, all in the UI.
    let b = Browser::start(&driver, &chromium, &rules).await;
    b.client.goto(&format!("{base}/login")).await.unwrap();
    log_in(&b, ADMIN_EMAIL, ADMIN_PASSWORD).await;
    b.wait_path("/").await;
    b.client.goto(&format!("{base}/users")).await.unwrap();
    b.fill("form[action='/users'] input[name=email]", MEMBER)
        .await;
    b.fill(
        "form[action='/users'] input[name=password]",
        MEMBER_PASSWORD,
    )
    .await;
    b.click("form[action='/users'] button[type=submit]").await;
    // The form posts to /users and comes back to /users: the path says nothing about whether the
    // new page is there yet, so wait for what it shows (an immediate check raced the reload).
    eventually(LIVE, "the new member in the users list", || async {
        b.text("main").await.contains(MEMBER)
    })
    .await;
    b.wait_path("/users").await;

    b.client.goto(&format!("{base}/tunnels")).await.unwrap();
    b.fill("input[name=hostname]", APP_HOST).await;
    b.fill("input[name=target]", &s.origin.to_string()).await;
    b.client
        .find(Locator::Css("select[name=tls]"))
        .await
        .unwrap()
        .select_by_value("off")
        .await
        .unwrap();
    b.click("input[name=access][value=users]").await;
    b.fill("textarea[name=allow]", ADMIN_EMAIL).await;
    b.shot("15-tunnel-form-access").await;
    b.click("#create-tunnel button[type=submit]").await;
    b.wait_path("/tunnels/1").await;
    assert_eq!(b.text("[data-access='1']").await, "1 person");
    assert_eq!(b.text("#access-list").await, ADMIN_EMAIL);
    b.wait_text("[data-tunnel='1']", "serving", LIVE).await;
    b.shot("16-tunnel-protected").await;
    b.close().await;

    // A fresh browser: the tunnel's URL leads to Control's login, then back to that very URL.
    let app = format!("http://{APP_HOST}:{}", s.gateway().port());
    let b = Browser::start(&driver, &chromium, &rules).await;
    open_until_login(&b, &format!("{app}/some/path?x=1"), base).await;
    assert!(b.text("main").await.contains("Log in"));
    b.shot("17-access-login").await;
    log_in(&b, ADMIN_EMAIL, ADMIN_PASSWORD).await;
    b.wait_path("/some/path").await;
    let at = b.client.current_url().await.unwrap();
    assert_eq!(
        (at.host_str(), at.port(), at.query()),
        (Some(APP_HOST), Some(s.gateway().port()), Some("x=1")),
        "back on the original URL"
    );
    let page = b.text("body").await;
    assert!(page.contains("Hello from ui-test-app"), "{page}");
    assert!(page.contains("/some/path"), "{page}");
    b.shot("18-access-app").await;
    // The app is told who the visitor is, on every later request too.
    b.client.goto(&format!("{app}/echo")).await.unwrap();
    let echo = b.text("body").await;
    assert!(
        echo.contains(&format!(r#""x-kakuremichi-user":"{ADMIN_EMAIL}""#)),
        "{echo}"
    );
    b.close().await;

    // Another fresh browser, the member: not on the list, a clear 403 page naming them and the app.
    let b = Browser::start(&driver, &chromium, &rules).await;
    open_until_login(&b, &format!("{app}/some/path?x=1"), base).await;
    log_in(&b, MEMBER, MEMBER_PASSWORD).await;
    b.wait_path("/access/authorize").await;
    let at = b.client.current_url().await.unwrap();
    assert_eq!(at.origin().ascii_serialization(), *base);
    let page = b.text("body").await;
    assert!(page.contains("Access denied"), "{page}");
    assert!(
        page.contains(&format!("You are signed in as {MEMBER}, but {APP_HOST}")),
        "{page}"
    );
    b.shot("19-access-denied").await;
    // Still nothing from the app: the Gateway sends them round to the same answer.
    b.client.goto(&format!("{app}/")).await.unwrap();
    b.wait_path("/access/authorize").await;
    assert!(!b.text("body").await.contains("ui-test-app"));
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_adds_and_checks_a_dns_zone_members_see_no_dns_page() {
    use kakuremichi_testkit::dns::{self, Bind, KEY_NAME, ZONE};
    init_logs();
    let _ = rustls::crypto::ring::default_provider().install_default();
    if !dns::bind_available("admin_adds_and_checks_a_dns_zone_members_see_no_dns_page") {
        return;
    }
    let Some((driver, chromium)) = kakuremichi_testkit::browser::binaries(module_path!()) else {
        return;
    };
    let bind = Bind::start().await;
    let dir = tempfile::tempdir().unwrap();
    let c = kakuremichi_testkit::control::start(&dir.path().join("control")).await;
    let base = format!("http://{}", c.addr);
    let member = kakuremichi_testkit::control::member(&c, "member@example.com").await;
    let _ = member;

    let b = Browser::start(&driver, &chromium, "").await;
    b.client.goto(&format!("{base}/login")).await.unwrap();
    log_in(&b, ADMIN_EMAIL, ADMIN_PASSWORD).await;
    b.wait_path("/").await;
    b.click("nav a[href='/dns']").await;
    b.wait_path("/dns").await;
    b.fill("input[name=zone]", ZONE).await;
    b.client
        .find(Locator::Css("select[name=provider]"))
        .await
        .unwrap()
        .select_by_value("rfc2136")
        .await
        .unwrap();
    let config = serde_json::json!({"server": bind.server, "key_name": KEY_NAME,
        "key_algorithm": "hmac-sha256", "key_secret": bind.key_secret});
    b.fill("textarea[name=config]", &config.to_string()).await;
    b.click("form[action='/dns'] button[type=submit]").await;
    eventually(LIVE, "the new zone in the list", || async {
        b.text("main").await.contains("key_secret set")
    })
    .await;
    let page = b.text("main").await;
    assert!(page.contains(&bind.server), "{page}");
    assert!(
        !page.contains(&bind.key_secret),
        "the secret is shown: {page}"
    );
    b.click("form[action='/dns/1/check'] button[type=submit]")
        .await;
    // The result is a sentence with the zone, the provider and the time it took.
    eventually(LIVE, "the check's result", || async {
        b.text("#check-result")
            .await
            .contains("ok: the zone is served and the credentials may change it")
    })
    .await;
    assert!(b.text("#check-result").await.contains(ZONE));
    b.shot("20-dns-zone-checked").await;
    b.close().await;

    // The member: no DNS link, and the page itself is refused.
    let b = Browser::start(&driver, &chromium, "").await;
    b.client.goto(&format!("{base}/login")).await.unwrap();
    log_in(&b, "member@example.com", ADMIN_PASSWORD).await;
    b.wait_path("/").await;
    assert!(b
        .client
        .find(Locator::Css("nav a[href='/dns']"))
        .await
        .is_err());
    b.client.goto(&format!("{base}/dns")).await.unwrap();
    let page = b.text("main").await;
    assert!(page.contains("only admins"), "{page}");
    assert!(!page.contains(ZONE), "{page}");
    b.close().await;
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_tunnel_made_in_the_form_shows_its_address_and_serves() {
    let Some((driver, chromium, s)) = browser_and_stack().await else {
        return;
    };
    let base = &s.api.base;
    let b = Browser::start(&driver, &chromium, "").await;
    b.client.goto(&format!("{base}/login")).await.unwrap();
    log_in(&b, ADMIN_EMAIL, ADMIN_PASSWORD).await;
    b.wait_path("/").await;
    b.client.goto(&format!("{base}/tunnels")).await.unwrap();
    let shown = |css: &'static str| {
        let b = &b;
        async move {
            let el = b.client.find(Locator::Css(css)).await.unwrap();
            el.is_displayed().await.unwrap()
        }
    };
    // HTTP (the default): the HTTPS choice is there, the stream settings are not.
    assert!(shown("select[name=tls]").await);
    assert!(!shown("input[name=public_port]").await);
    b.client
        .find(Locator::Css("select[name=protocol]"))
        .await
        .unwrap()
        .select_by_value("tcp")
        .await
        .unwrap();
    // TCP: the other way round, and no UDP timeout.
    assert!(!shown("select[name=tls]").await);
    assert!(shown("input[name=public_port]").await);
    assert!(shown("select[name=proxy_protocol]").await);
    assert!(!shown("input[name=udp_idle_timeout]").await);
    b.fill("input[name=hostname]", "raw.example.com").await;
    b.fill("input[name=target]", &s.origin.to_string()).await;
    b.shot("21-tunnel-form-tcp").await;
    b.click("#create-tunnel button[type=submit]").await;
    b.wait_path("/tunnels/1").await;
    let address = b.read("#public-url").await;
    assert!(address.contains("tcp://127.0.0.1:20000"), "{address}");
    assert!(b.text("#protocol").await.starts_with("TCP"));
    assert!(b.text("#stream-counters").await.contains("connections"));
    b.shot("22-tunnel-tcp").await;

    // The port really is open on the Gateway, and carries the app.
    let at = std::net::SocketAddr::new(s.gateways[0].ports_ip.into(), 20000);
    eventually(LIVE, "the app through the tcp port", || async {
        let r = s.http.get(format!("http://{at}/")).send().await.ok()?;
        r.text().await.ok()?.contains("ui-test-app").then_some(())
    })
    .await;

    // Edit: another port and the PROXY protocol; the protocol itself stays.
    b.fill("form[action='/tunnels/1'] input[name=public_port]", "23456")
        .await;
    b.click("form[action='/tunnels/1'] button[type=submit]")
        .await;
    eventually(LIVE, "the new port on the page", || async {
        b.text("#public-url").await.contains(":23456")
    })
    .await;
    let view = s.api.get("tunnels/1").await;
    assert_eq!(
        (&view["protocol"], &view["public_port"]),
        (&serde_json::json!("tcp"), &serde_json::json!(23456))
    );
    b.close().await;
}

/// The sum of the values a chart's series (`css`: its polyline) draws on the page.
async fn drawn(b: &Browser, css: &str) -> f64 {
    let el = b
        .client
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"));
    let values = el.attr("data-values").await.unwrap().unwrap_or_default();
    values
        .split_whitespace()
        .map(|v| v.parse::<f64>().unwrap())
        .sum()
}

/// Traffic through the Gateway shows on the dashboard's, the tunnel's and the tunnel list's
/// charts (server-drawn SVG): the 2xx line has data, and the screenshots go to the docs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_charts_draw_what_went_through() {
    let Some((driver, chromium, s)) = browser_and_stack().await else {
        return;
    };
    let tunnel = s
        .tunnel_with(
            APP_HOST,
            s.origin,
            serde_json::json!({"log_requests": true}),
        )
        .await;
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    wait_through(
        &http,
        s.gateway(),
        APP_HOST,
        "/",
        LIVE,
        "tunnel up",
        |st, _| st == 200,
    )
    .await;
    for i in 0..40 {
        let path = if i % 8 == 0 { "/status?code=503" } else { "/" };
        through(&http, s.gateway(), APP_HOST, path).await;
    }
    let path = format!("tunnels/{tunnel}/traffic");
    eventually_every(
        Duration::from_millis(500),
        Duration::from_secs(60),
        "the traffic in the history",
        || async { s.api.get(&path).await["total"]["requests"]["2xx"].as_i64() >= Some(30) },
    )
    .await;
    let base = s.control.as_ref().unwrap().base.clone();
    let b = Browser::start(&driver, &chromium, "").await;
    b.client.goto(&format!("{base}/login")).await.unwrap();
    log_in(&b, ADMIN_EMAIL, ADMIN_PASSWORD).await;
    b.wait_path("/").await;
    let ok = drawn(&b, "#traffic svg.chart polyline.c2xx").await;
    // Requests per second, a point a minute: 30 requests or more are at least 0.5 req/s.
    assert!(ok >= 0.5, "the dashboard's 2xx line: {ok}");
    b.shot("20-dashboard-traffic").await;
    b.client
        .goto(&format!("{base}/tunnels/{tunnel}"))
        .await
        .unwrap();
    assert!(drawn(&b, "#traffic svg.chart polyline.c2xx").await >= 0.5);
    assert!(drawn(&b, "#traffic svg.chart polyline.bytes-out").await > 0.0);
    assert!(drawn(&b, "#traffic svg.chart polyline.p95").await > 0.0);
    assert!(b.text("table.per-gateway").await.contains("gw1"));
    b.shot("21-tunnel-traffic").await;
    b.client.goto(&format!("{base}/tunnels")).await.unwrap();
    let spark = b
        .client
        .find(Locator::Css("svg.sparkline"))
        .await
        .unwrap()
        .attr("data-top")
        .await
        .unwrap()
        .unwrap_or_default();
    assert!(
        spark.parse::<f64>().unwrap() >= 1.0,
        "sparkline top: {spark}"
    );
    b.close().await;
}
