//! TCP and TLS-passthrough tunnels end to end (issue #16), with real servers and clients nobody
//! here wrote: PostgreSQL with `psql` and `pgbench` through each Gateway's public port, nginx's
//! stream module reading the PROXY protocol header the Gateway sends, an SMTP server with
//! STARTTLS (aiosmtpd) and Python's `smtplib`, `openssl s_server` reached by SNI through the
//! Gateway's HTTPS port next to an HTTPS tunnel, and a port taken on one Gateway.

use kakuremichi_testkit::https::https_get;
use kakuremichi_testkit::origins::{self, Postgres, ProxyEcho, Smtp, TlsServer};
use kakuremichi_testkit::*;
use serde_json::{json, Value};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::io::AsyncReadExt as _;

/// Generous: a config reaches the Gateways within a second; CI machines are slow.
const SOON: Duration = Duration::from_secs(20);

/// Creates a stream tunnel to `target` on the fleet's Agent and returns its view.
async fn stream_tunnel(fleet: &Fleet, host: &str, target: SocketAddr, extra: Value) -> Value {
    let id = fleet.tunnel_with(host, target, extra).await;
    fleet.api.get(&format!("tunnels/{id}")).await
}

fn port_of(view: &Value) -> u16 {
    view["public_port"].as_u64().unwrap() as u16
}

/// Waits until `psql` through `addr` answers `SELECT 40 + 2`.
async fn until_psql(addr: SocketAddr) {
    eventually(SOON, &format!("psql through {addr}"), || async move {
        origins::psql(addr, "SELECT 40 + 2").await.ok() == Some("42".to_string())
    })
    .await;
}

/// Connects to `addr` from `source` and reads what the server says until it closes.
async fn read_from(source: IpAddr, addr: SocketAddr) -> std::io::Result<(SocketAddr, String)> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source, 0))?;
    let mut stream = socket.connect(addr).await?;
    let local = stream.local_addr()?;
    let mut text = String::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut text));
    read.await.map_err(std::io::Error::other)??;
    Ok((local, text))
}

/// Waits until nginx behind `addr`, reading the PROXY protocol, names the client it sees: the
/// test's own source address and port.
async fn until_proxied_client_seen(addr: SocketAddr) {
    let source = IpAddr::V4(private_loopback());
    eventually(SOON, "nginx sees the client's address", || async move {
        let (local, text) = read_from(source, addr).await.ok()?;
        (text == format!("{} {}\n", local.ip(), local.port())).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_through_each_gateway_with_pgbench() {
    let test = "postgres_through_each_gateway_with_pgbench";
    let needs = ["postgres", "psql", "pgbench"];
    if !origins::available(test, &needs) {
        return;
    }
    init_logs();
    let fleet = Cluster::new().gateways(2).agent().start().await;
    let pg = Postgres::start().await;
    let db = stream_tunnel(
        &fleet,
        "db.example.com",
        pg.addr,
        json!({"protocol": "tcp"}),
    )
    .await;
    assert_eq!(db["protocol"], "tcp");
    let port = port_of(&db);
    assert!((20000..=29999).contains(&port), "{db}");
    assert_eq!(db["public_addresses"].as_array().unwrap().len(), 2, "{db}");

    let through: Vec<SocketAddr> = fleet
        .gateways
        .iter()
        .map(|g| SocketAddr::new(g.ports_ip.into(), port))
        .collect();
    for addr in &through {
        until_psql(*addr).await;
    }

    // pgbench: initialise through one Gateway, 8 clients for 10 s through the other.
    let (h0, p0) = (through[0].ip().to_string(), through[0].port().to_string());
    let (h1, p1) = (through[1].ip().to_string(), through[1].port().to_string());
    let common = ["-U", "postgres", "-n"];
    origins::run(
        "pgbench",
        &[
            &["-i", "-s", "1", "-h", &h0, "-p", &p0],
            &common[..],
            &["postgres"],
        ]
        .concat(),
    )
    .await;
    let out = origins::run(
        "pgbench",
        &[
            &["-c", "8", "-j", "2", "-T", "10", "-h", &h1, "-p", &p1],
            &common[..],
            &["postgres"],
        ]
        .concat(),
    )
    .await;
    let report = String::from_utf8_lossy(&out.stdout);
    println!("pgbench -c 8 -T 10 through gw2:\n{report}");
    let processed: u64 = report
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no transaction count in {report}"));
    assert!(processed > 0, "{report}");
    assert!(
        report.contains("number of failed transactions: 0 "),
        "{report}"
    );

    // Deleting the tunnel closes its port on every Gateway.
    fleet
        .api
        .delete(&format!("tunnels/{}", db["id"].as_i64().unwrap()))
        .await;
    for addr in through {
        eventually(SOON, &format!("{addr} closed"), || async move {
            tokio::net::TcpStream::connect(addr).await.is_err()
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_protocol_tells_nginx_the_client_address() {
    let test = "the_proxy_protocol_tells_nginx_the_client_address";
    if !origins::available(test, &["nginx", "nginx-stream"]) {
        return;
    }
    init_logs();
    let fleet = Cluster::new().gateway().agent().start().await;
    // v2, then v1 (changed live), toward nginx: it sees the client's address and port.
    let echo = ProxyEcho::start().await;
    let view = stream_tunnel(
        &fleet,
        "echo.example.com",
        echo.addr,
        json!({"protocol": "tcp", "proxy_protocol": "v2"}),
    )
    .await;
    assert_eq!(view["proxy_protocol"], "v2");
    let id = view["id"].as_i64().unwrap();
    let echo_at = SocketAddr::new(fleet.gateways[0].ports_ip.into(), port_of(&view));
    until_proxied_client_seen(echo_at).await;
    let v1 = fleet
        .api
        .patch(&format!("tunnels/{id}"), json!({"proxy_protocol": "v1"}))
        .await;
    assert_eq!(v1["proxy_protocol"], "v1");
    until_proxied_client_seen(echo_at).await;
    // Off: nginx gets no header and closes without a word.
    fleet
        .api
        .patch(&format!("tunnels/{id}"), json!({"proxy_protocol": "off"}))
        .await;
    let source = IpAddr::V4(private_loopback());
    eventually(
        SOON,
        "nginx refuses a connection without the header",
        || async move {
            read_from(source, echo_at)
                .await
                .is_ok_and(|(_, text)| text.is_empty())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtp_with_starttls_through_a_tcp_tunnel() {
    let test = "smtp_with_starttls_through_a_tcp_tunnel";
    if !origins::available(test, &["python3", "aiosmtpd", "openssl"]) {
        return;
    }
    init_logs();
    let fleet = Cluster::new().gateway().agent().start().await;
    let smtp = Smtp::start().await;
    let view = stream_tunnel(
        &fleet,
        "mail.example.com",
        smtp.addr,
        json!({"protocol": "tcp"}),
    )
    .await;
    let at = SocketAddr::new(fleet.gateways[0].ports_ip.into(), port_of(&view));
    let cert = smtp.cert.clone();
    eventually(SOON, "smtplib sends through the tunnel", || {
        let cert = cert.clone();
        async move {
            origins::send_mail(at, &cert, "through kakuremichi")
                .await
                .is_ok()
        }
    })
    .await;
    let received = smtp.received();
    assert_eq!(received.len(), 1, "{received:?}");
    let mail = &received[0];
    assert!(
        !mail.starts_with("tls=none"),
        "the message came in clear: {mail}"
    );
    assert!(
        mail.starts_with("tls=TLS_") || mail.starts_with("tls=ECDHE"),
        "{mail}"
    );
    assert!(mail.contains("from=alice@laptop.test"), "{mail}");
    assert!(mail.contains("Subject: through kakuremichi"), "{mail}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_passthrough_by_sni_next_to_an_https_tunnel_on_the_same_port() {
    let test = "tls_passthrough_by_sni_next_to_an_https_tunnel_on_the_same_port";
    if !origins::available(test, &["openssl"]) {
        return;
    }
    init_logs();
    let fleet = Cluster::new()
        .gateway()
        .agent()
        .origin("the-app")
        .tunnel_with("app.internal.test", json!({"tls": "internal"}))
        .start()
        .await;
    let origin = TlsServer::start("pass.example.com").await;
    let view = stream_tunnel(
        &fleet,
        "pass.example.com",
        origin.addr,
        json!({"protocol": "tls"}),
    )
    .await;
    assert_eq!(view["protocol"], "tls");
    assert!(view["public_port"].is_null(), "{view}");
    let https = fleet.gateways[0].https;

    // The origin's own certificate, verified by the client against the origin's own root: the
    // Gateway did not terminate TLS.
    let cert = origin.cert.clone();
    let out = eventually(SOON, "s_client reaches the origin by SNI", || {
        let cert = cert.clone();
        async move {
            let out = origins::s_client(https, "pass.example.com", &cert).await;
            out.contains("Verify return code: 0 (ok)").then_some(out)
        }
    })
    .await;
    assert!(
        out.contains("CN = pass.example.com") || out.contains("CN=pass.example.com"),
        "{out}"
    );
    assert!(out.contains("s_server"), "the origin's -www page: {out}");

    // The HTTPS tunnel on the same port still gets the Gateway's own TLS.
    let root = std::fs::read_to_string(kakuremichi_control::internal_ca_root(
        &fleet.dir.path().join("control"),
    ))
    .unwrap();
    eventually(SOON, "HTTPS to the https tunnel", || {
        let root = root.clone();
        async move { https_get(&root, "app.internal.test", https).await.0 == 200 }
    })
    .await;
    // And a passthrough name is not answered with the Gateway's certificate.
    let out = origins::s_client(https, "pass.example.com", &origin.cert).await;
    assert!(!out.contains("kakuremichi internal CA"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_taken_on_one_gateway_is_reported_while_the_other_serves() {
    init_logs();
    let fleet = Cluster::new()
        .gateways(2)
        .agent()
        .origin("the-app")
        .start()
        .await;
    let (gw1, gw2) = (&fleet.gateways[0], &fleet.gateways[1]);
    // Something else already listens on gw2's address at the port the tunnel will use.
    let blocker = std::net::TcpListener::bind((gw2.ports_ip, 0)).unwrap();
    let port = blocker.local_addr().unwrap().port();
    let view = stream_tunnel(
        &fleet,
        "raw.example.com",
        fleet.origin,
        json!({"protocol": "tcp", "public_port": port}),
    )
    .await;
    assert_eq!(port_of(&view), port);
    let id = view["id"].as_i64().unwrap();
    let path = format!("tunnels/{id}");
    let api = &fleet.api;

    let errors = eventually(SOON, "gw2 reports the port it cannot bind", || async {
        let v = api.get(&path).await;
        let errors = v["port_errors"].as_array().cloned().unwrap_or_default();
        (!errors.is_empty()).then_some(errors)
    })
    .await;
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0]["gateway"], "gw2", "{errors:?}");
    assert!(!errors[0]["error"].as_str().unwrap().is_empty());
    let at1 = SocketAddr::new(gw1.ports_ip.into(), port);
    let at2 = SocketAddr::new(gw2.ports_ip.into(), port);
    until_hello(&fleet, at1).await;

    // Freed: gw2 binds it on its next try, and the error goes away.
    drop(blocker);
    eventually(SOON, "gw2 binds the port once it is free", || async {
        api.get(&path).await["port_errors"]
            .as_array()
            .is_some_and(Vec::is_empty)
    })
    .await;
    until_hello(&fleet, at2).await;

    // Disabled: both ports close; enabled: both open again, no restart.
    api.patch(&path, json!({"enabled": false})).await;
    for at in [at1, at2] {
        until_closed(at).await;
    }
    api.patch(&path, json!({"enabled": true})).await;
    for at in [at1, at2] {
        until_hello(&fleet, at).await;
    }
}

/// Waits until the `hello` origin answers plain HTTP through `at`.
async fn until_hello(fleet: &Fleet, at: SocketAddr) {
    let http = fleet.http.clone();
    eventually(SOON, &format!("the origin through {at}"), || {
        let http = http.clone();
        async move {
            let r = http.get(format!("http://{at}/")).send().await.ok()?;
            let body = r.text().await.ok()?;
            body.contains("the-app").then_some(())
        }
    })
    .await;
}

async fn until_closed(at: SocketAddr) {
    eventually(SOON, &format!("{at} closed"), || async move {
        tokio::net::TcpStream::connect(at).await.is_err()
    })
    .await;
}

/// `dig` through `at` with every query of `batch` (one `name type` a line): its answers.
async fn dig_batch(at: SocketAddr, batch: &std::path::Path) -> Result<Vec<String>, String> {
    let out = tokio::process::Command::new("dig")
        .args(["+short", "+norecurse", "+time=2", "+tries=2", "-p"])
        .arg(at.port().to_string())
        .arg(format!("@{}", at.ip()))
        .arg("-f")
        .arg(batch)
        .output()
        .await
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!("{out:?}"));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect())
}

/// The Gateway's counters of stream tunnel `id` (its admin `/metrics`).
async fn stream_counters(fleet: &Fleet, gateway: usize, id: i64) -> Value {
    fleet.gateway_metrics(gateway).await["streams"][id.to_string()].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dns_through_a_udp_tunnel_and_idle_flows_are_freed() {
    let test = "dns_through_a_udp_tunnel_and_idle_flows_are_freed";
    if !kakuremichi_testkit::dns::bind_available(test) {
        return;
    }
    init_logs();
    let fleet = Cluster::new().gateways(2).agent().start().await;
    let bind = kakuremichi_testkit::dns::Bind::start().await;
    let (name, ip) = kakuremichi_testkit::dns::NOT_OURS;
    let view = stream_tunnel(
        &fleet,
        "dns.example.com",
        SocketAddr::from(([127, 0, 0, 1], bind.port)),
        json!({"protocol": "udp", "udp_idle_timeout": 1}),
    )
    .await;
    assert_eq!(view["protocol"], "udp");
    assert_eq!(view["udp_idle_timeout"], 1);
    let id = view["id"].as_i64().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let batch = dir.path().join("queries");
    std::fs::write(&batch, format!("{name} A\n").repeat(1000)).unwrap();
    let one = dir.path().join("one");
    std::fs::write(&one, format!("{name} A\n")).unwrap();
    for g in &fleet.gateways {
        let at = SocketAddr::new(g.ports_ip.into(), port_of(&view));
        eventually(SOON, &format!("dig through {at}"), || {
            let one = one.clone();
            async move { dig_batch(at, &one).await.ok() == Some(vec![ip.to_string()]) }
        })
        .await;
    }
    // 1,000 queries through the first Gateway, every answer right.
    let at = SocketAddr::new(fleet.gateways[0].ports_ip.into(), port_of(&view));
    let answers = dig_batch(at, &batch).await.unwrap();
    assert_eq!(answers.len(), 1000, "{answers:?}");
    assert!(answers.iter().all(|a| a == ip), "{answers:?}");

    // Every flow (dig takes a new source port per query) is freed a second after its last
    // datagram: counted, none left open.
    let counters = eventually(SOON, "idle flows freed", || async {
        let c = stream_counters(&fleet, 0, id).await;
        let opened = c["connections"].as_u64()?;
        (opened >= 1 && c["active"] == 0 && c["flows_expired"].as_u64() == Some(opened))
            .then_some(c)
    })
    .await;
    println!("udp tunnel counters after 1,000 dig queries: {counters}");
    assert!(
        counters["bytes_in"].as_u64().unwrap() > 1000 * 30,
        "{counters}"
    );
    assert!(
        counters["bytes_out"].as_u64().unwrap() > 1000 * 40,
        "{counters}"
    );
    // The API shows what the Gateways carried, summed (the second one served the first
    // query too), reported every few seconds.
    let path = format!("tunnels/{id}");
    let at_least = |c: &Value, key: &str| c[key].as_u64() >= counters[key].as_u64();
    let shown = eventually(SOON, "the counters in the API", || async {
        let c = fleet.api.get(&path).await["counters"].clone();
        (at_least(&c, "connections") && c["active"] == 0).then_some(c)
    })
    .await;
    assert!(
        at_least(&shown, "bytes_in") && at_least(&shown, "bytes_out"),
        "{shown}"
    );

    // Deleting the tunnel frees the port on every Gateway: it can be bound again.
    fleet.api.delete(&format!("tunnels/{id}")).await;
    for g in &fleet.gateways {
        let at = SocketAddr::new(g.ports_ip.into(), port_of(&view));
        eventually(SOON, &format!("{at}/udp free again"), || async move {
            std::net::UdpSocket::bind(at).is_ok()
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn iperf3_udp_at_100_mbits_through_a_udp_tunnel() {
    let test = "iperf3_udp_at_100_mbits_through_a_udp_tunnel";
    if !origins::available(test, &["iperf3"]) {
        return;
    }
    init_logs();
    let fleet = Cluster::new().gateway().agent().start().await;
    // iperf3 runs its control connection over TCP and its test over UDP, on one port number:
    // a tcp and a udp tunnel share the public port (one per protocol).
    let server_port = origins::free_port();
    let dir = tempfile::tempdir().unwrap();
    let log = std::fs::File::create(dir.path().join("iperf3.log")).unwrap();
    let _server = tokio::process::Command::new("iperf3")
        .args(["-s", "-B", "127.0.0.1", "-p", &server_port.to_string()])
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let target = SocketAddr::from(([127, 0, 0, 1], server_port));
    let tcp = stream_tunnel(
        &fleet,
        "iperf.example.com",
        target,
        json!({"protocol": "tcp"}),
    )
    .await;
    let port = port_of(&tcp);
    let udp = stream_tunnel(
        &fleet,
        "iperf-udp.example.com",
        target,
        json!({"protocol": "udp", "public_port": port}),
    )
    .await;
    assert_eq!(port_of(&udp), port);
    let at = SocketAddr::new(fleet.gateways[0].ports_ip.into(), port);
    let report: Value = eventually(SOON, "iperf3 -u through the tunnels", || async move {
        let out = tokio::process::Command::new("iperf3")
            .args(["-c", &at.ip().to_string(), "-p", &at.port().to_string()])
            .args(["-u", "-b", "100M", "-l", "1200", "-t", "3", "--json"])
            .output()
            .await
            .ok()?;
        let report: Value = serde_json::from_slice(&out.stdout).ok()?;
        report["end"]["sum"]["lost_percent"]
            .is_number()
            .then_some(report)
    })
    .await;
    let sum = &report["end"]["sum"];
    let (lost, packets) = (
        sum["lost_percent"].as_f64().unwrap(),
        sum["packets"].as_u64().unwrap(),
    );
    println!(
        "iperf3 -u -b 100M -l 1200 through a udp tunnel: {packets} datagrams, {lost:.2} % lost, \
         {:.1} Mbit/s received",
        sum["bits_per_second"].as_f64().unwrap_or(0.0) / 1e6
    );
    assert!(packets > 10_000, "{sum}");
    // Loss is reported, not judged here (a debug build on a busy CI machine); most must arrive.
    assert!(lost < 50.0, "{sum}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn access_tcp_is_refused_before_sign_in_and_carries_psql_after() {
    let test = "access_tcp_is_refused_before_sign_in_and_carries_psql_after";
    if !origins::available(test, &["postgres", "psql"]) {
        return;
    }
    init_logs();
    let fleet = Cluster::new().gateway().agent().start().await;
    let pg = Postgres::start().await;
    let host = "db.example.com";
    let view = stream_tunnel(
        &fleet,
        host,
        pg.addr,
        json!({"protocol": "tcp", "access": {"mode": "login"}, "tls": "internal"}),
    )
    .await;
    assert_eq!(
        view["public_addresses"],
        json!([]),
        "no public port: {view}"
    );
    assert_eq!(view["tls"], "internal");
    let id = view["id"].as_i64().unwrap();
    kakuremichi_testkit::https::wait_certificate(&fleet.api, id, "issued", SOON).await;
    let gw = &fleet.gateways[0];
    // Nothing listens on the tunnel's port on the Gateway.
    let public = SocketAddr::new(gw.ports_ip.into(), port_of(&view));
    assert!(tokio::net::TcpStream::connect(public).await.is_err());
    let root = kakuremichi_control::internal_ca_root(&fleet.dir.path().join("control"));
    // Without a token the Gateway sends a client to sign in, as it would a browser.
    let pem = std::fs::read_to_string(&root).unwrap();
    let https = kakuremichi_testkit::https::https_client(&pem, &[host], gw.https);
    let url = format!("https://{host}:{}/.kakuremichi/tcp", gw.https.port());
    let to = eventually(SOON, "a sign-in redirect for the tcp tunnel", || async {
        let r = https.get(&url).send().await.ok()?;
        (r.status() == 302).then(|| r.headers()["location"].to_str().unwrap().to_string())
    })
    .await;
    assert!(to.contains("/access/authorize?"), "{to}");

    // The command: it asks to sign in before it opens its local port.
    let dir = tempfile::tempdir().unwrap();
    let listen = SocketAddr::from(([127, 0, 0, 1], origins::free_port()));
    let args = |dir: &std::path::Path| {
        [
            "access".to_string(),
            "tcp".into(),
            "--hostname".into(),
            host.into(),
            "--listen".into(),
            listen.to_string(),
            "--gateway".into(),
            gw.https.to_string(),
            "--ca-file".into(),
            root.display().to_string(),
            "--no-browser".into(),
            "--config-dir".into(),
            dir.join("config").display().to_string(),
        ]
    };
    let argv = args(dir.path());
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let cli = Proc::spawn("access", dir.path(), &argv, &[]);
    let log = dir.path().join("access.log");
    let link = eventually(SOON, "the sign-in link", || async {
        let text = std::fs::read_to_string(&log).ok()?;
        let line = text.lines().find(|l| l.contains("/access/authorize?"))?;
        Some(line.trim().to_string())
    })
    .await;
    assert!(
        link.contains("cli_port=") && link.contains("state="),
        "{link}"
    );
    assert!(
        origins::psql(listen, "SELECT 1").await.is_err(),
        "refused before sign-in"
    );

    // The browser's part: signed in to Control, it follows the link; Control hands the token to
    // the command's loopback port.
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let login = http
        .post(format!("{}/api/v1/auth/login", fleet.api.base))
        .json(&json!({"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}))
        .send()
        .await
        .unwrap();
    let cookie = login.headers()["set-cookie"].to_str().unwrap();
    let cookie = cookie.split(';').next().unwrap().to_string();
    let authorized = http
        .get(&link)
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(authorized.status(), 302);
    let callback = authorized.headers()["location"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(callback.starts_with("http://127.0.0.1:"), "{callback}");
    let done = http.get(&callback).send().await.unwrap();
    assert_eq!(done.status(), 200);

    // Now psql through the local port reaches PostgreSQL behind the tunnel.
    eventually(SOON, "psql through kakuremichi access tcp", || async {
        origins::psql(listen, "SELECT 40 + 2").await.ok() == Some("42".to_string())
    })
    .await;
    let token = dir.path().join("config/access/db.example.com.token");
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&token).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the token is the user's alone");
    drop(cli);

    // A second run uses the kept token: no sign-in, the port opens at once.
    let again = Proc::spawn("access-again", dir.path(), &argv, &[]);
    eventually(SOON, "psql through a second run", || async {
        origins::psql(listen, "SELECT 40 + 2").await.ok() == Some("42".to_string())
    })
    .await;
    let text = std::fs::read_to_string(dir.path().join("access-again.log")).unwrap();
    assert!(!text.contains("/access/authorize"), "{text}");
    drop(again);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_and_a_refusing_target_close_the_client_connection() {
    init_logs();
    let fleet = Cluster::new()
        .gateway()
        .agent()
        .origin("the-app")
        .start()
        .await;
    let ports_ip = fleet.gateways[0].ports_ip;
    // One connection at a time.
    let capped = stream_tunnel(
        &fleet,
        "one.example.com",
        fleet.origin,
        json!({"protocol": "tcp", "max_connections": 1}),
    )
    .await;
    let at = SocketAddr::new(ports_ip.into(), port_of(&capped));
    // (One HTTP/1.0 request per connection: a pooled client would keep the only slot.)
    eventually(SOON, "the app through the capped port", || async move {
        let Ok(mut c) = tokio::net::TcpStream::connect(at).await else {
            return false;
        };
        use tokio::io::AsyncWriteExt as _;
        let _ = c.write_all(b"GET / HTTP/1.0\r\n\r\n").await;
        let mut text = String::new();
        let read = tokio::time::timeout(Duration::from_secs(5), c.read_to_string(&mut text));
        read.await.is_ok() && text.contains("the-app")
    })
    .await;
    // A connection that holds the slot (the request's own may take a moment to give it back).
    let id = capped["id"].as_i64().unwrap();
    let held = eventually(SOON, "a connection holding the only slot", || async {
        let mut c = tokio::net::TcpStream::connect(at).await.ok()?;
        let mut buf = [0u8; 1];
        let still_open = tokio::time::timeout(Duration::from_millis(300), c.read(&mut buf));
        still_open.await.is_err().then_some(c)
    })
    .await;
    eventually(SOON, "the held connection counted", || async {
        stream_counters(&fleet, 0, id).await["active"] == 1
    })
    .await;
    let refused = |c: Value| c["over_capacity"].as_u64().unwrap();
    let before = refused(stream_counters(&fleet, 0, id).await);
    assert!(
        closed_at_once(at).await,
        "a second connection is refused at once"
    );
    assert_eq!(refused(stream_counters(&fleet, 0, id).await), before + 1);
    drop(held);

    // A target that refuses: the client's connection is closed, and counted.
    let refusing = stream_tunnel(
        &fleet,
        "nothing.example.com",
        SocketAddr::from(([127, 0, 0, 1], origins::free_port())),
        json!({"protocol": "tcp"}),
    )
    .await;
    let at = SocketAddr::new(ports_ip.into(), port_of(&refusing));
    let id = refusing["id"].as_i64().unwrap();
    eventually(SOON, "the client's connection closed", || {
        closed_at_once(at)
    })
    .await;
    let counters = stream_counters(&fleet, 0, id).await;
    assert_eq!(counters["active"], 0, "{counters}");
}

/// Whether a connection to `at` is accepted and then closed (or reset) without a byte. (A reset
/// can come before the connect is seen to finish; a port with no listener is not "closed".)
async fn closed_at_once(at: SocketAddr) -> bool {
    let mut c = match tokio::net::TcpStream::connect(at).await {
        Ok(c) => c,
        Err(e) => return e.kind() == std::io::ErrorKind::ConnectionReset,
    };
    let mut buf = [0u8; 16];
    matches!(
        tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}
