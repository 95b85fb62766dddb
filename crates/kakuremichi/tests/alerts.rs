//! Alerts (issue #22) against real receivers: an SMTP server (aiosmtpd, into a Maildir) and a
//! webhook receiver. A Gateway that is stopped for longer than `offline_after` sends exactly one
//! "firing" and, back online, one "resolved" message to each channel; a restart shorter than
//! that sends nothing; the test button reports what the receiver said.

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use kakuremichi_testkit::*;
use reqwest::Method;
use serde_json::{json, Value};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(40);
const PACE: Duration = Duration::from_millis(300);

/// aiosmtpd writing every mail it receives into a Maildir; killed when dropped.
struct Smtpd {
    addr: SocketAddr,
    maildir: PathBuf,
    child: std::process::Child,
}

impl Smtpd {
    async fn start(dir: &Path) -> Smtpd {
        Self::start_with(dir, &[]).await
    }

    /// With more arguments of aiosmtpd (its TLS: `--tlscert`, `--smtpscert`, ...).
    async fn start_with(dir: &Path, args: &[&str]) -> Smtpd {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let maildir = dir.join("maildir");
        let log = std::fs::File::create(dir.join("aiosmtpd.log")).unwrap();
        let child = std::process::Command::new("python3")
            .args(["-m", "aiosmtpd", "-n", "-l", &addr.to_string()])
            .args(args)
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(&maildir)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("python3 -m aiosmtpd (scripts/test installs it)");
        eventually(WAIT, "aiosmtpd listens", || async {
            tokio::net::TcpStream::connect(addr).await.ok()
        })
        .await;
        Smtpd {
            addr,
            maildir,
            child,
        }
    }

    /// Every mail received so far, oldest first.
    fn mails(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(self.maildir.join("new")) else {
            return Vec::new();
        };
        let mut files: Vec<_> = entries.filter_map(|e| e.ok()).collect();
        files.sort_by_key(|e| e.metadata().and_then(|m| m.modified()).ok());
        files
            .iter()
            .filter_map(|e| std::fs::read_to_string(e.path()).ok())
            .collect()
    }

    /// The subjects of the mails that are not tests.
    fn subjects(&self) -> Vec<String> {
        self.mails()
            .iter()
            .filter_map(|m| subject(m))
            .filter(|s| !s.contains("[TEST]"))
            .collect()
    }
}

/// The Subject header of `mail`, unfolded.
fn subject(mail: &str) -> Option<String> {
    let mut lines = mail.lines().skip_while(|l| !l.starts_with("Subject: "));
    let mut subject = lines.next()?.to_string();
    for more in lines.take_while(|l| l.starts_with([' ', '\t'])) {
        subject.push_str(more);
    }
    Some(subject)
}

impl Drop for Smtpd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A webhook receiver: every JSON body posted, with its path; `/missing` answers 404.
#[derive(Clone, Default)]
struct Hooks(Arc<Mutex<Vec<(String, Value)>>>);

impl Hooks {
    async fn start() -> (Hooks, SocketAddr) {
        let hooks = Hooks::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = hooks.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let seen = seen.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        move |req: hyper::Request<hyper::body::Incoming>| {
                            let seen = seen.clone();
                            async move {
                                let path = req.uri().path().to_string();
                                let body = req.into_body().collect().await?.to_bytes();
                                let status = if path == "/missing" {
                                    404
                                } else {
                                    let value =
                                        serde_json::from_slice(&body).unwrap_or(Value::Null);
                                    seen.0.lock().unwrap().push((path, value));
                                    200
                                };
                                let response = hyper::Response::builder()
                                    .status(status)
                                    .body(Full::new(Bytes::from_static(b"ok")))
                                    .unwrap();
                                Ok::<_, hyper::Error>(response)
                            }
                        },
                    );
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .await;
                });
            }
        });
        (hooks, addr)
    }

    /// The bodies posted to `path`, oldest first.
    fn at(&self, path: &str) -> Vec<Value> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _)| p == path)
            .map(|(_, v)| v.clone())
            .collect()
    }
}

/// The Gateway's status as the API shows it.
async fn gateway_online(fleet: &Fleet, online: bool) {
    let want = if online { "online" } else { "offline" };
    eventually_every(PACE, WAIT, &format!("the Gateway is {want}"), || async {
        let gateways = fleet.api.get("gateways").await;
        (gateways[0]["status"] == want).then_some(())
    })
    .await;
}

/// `GET /api/v1/alerts`'s `pending` once `ready` holds for it.
async fn pending_alerts(fleet: &Fleet, ready: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    eventually_every(PACE, WAIT, "the pending alerts", || async {
        let alerts = fleet.api.get("alerts").await;
        let pending = alerts["pending"].as_array().unwrap().clone();
        ready(&pending).then_some(pending)
    })
    .await
}

/// `addr` bound again once the stopped Gateway let it go.
async fn free_udp(addr: SocketAddr) -> UdpSocket {
    eventually(WAIT, "the WireGuard port is free", || async {
        UdpSocket::bind(addr).ok()
    })
    .await
}

async fn audit_count(fleet: &Fleet, action: &str) -> usize {
    let log = fleet.api.get("audit?limit=200").await;
    log.as_array()
        .or_else(|| log["entries"].as_array())
        .map(|a| a.iter().filter(|e| e["action"] == action).count())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_gateway_fires_once_and_resolves_once_and_a_short_restart_sends_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let smtpd = Smtpd::start(dir.path()).await;
    let (hooks, hook_addr) = Hooks::start().await;
    let smtp_url = format!("smtp://{}?tls=none", smtpd.addr);
    let mut fleet = Cluster::new()
        .gateway()
        .control_config(move |c| {
            c.alerts.offline_after = Duration::from_secs(8);
            c.alerts.resolve_after = Duration::from_secs(4);
            c.alerts.mailer = Some(
                kakuremichi_control::Mailer::new(
                    &smtp_url,
                    Some("kakuremichi <alerts@test.example>"),
                    None,
                )
                .unwrap(),
            );
        })
        .start()
        .await;
    gateway_online(&fleet, true).await;
    let gateway_id = fleet.api.get("gateways").await[0]["id"].clone();

    // The channels: e-mail, our JSON, Slack's shape, and one whose receiver answers 404.
    let add = |name: &str, kind: &str, target: String, format: Option<&str>| {
        let mut body = json!({"name": name, "kind": kind, "target": target});
        if let Some(f) = format {
            body["format"] = json!(f);
        }
        body
    };
    let hook = |path: &str| format!("http://{hook_addr}{path}");
    let mail = fleet
        .api
        .post(
            "alerts/channels",
            add("ops mail", "email", "ops@test.example".into(), None),
        )
        .await;
    assert_eq!(mail["hint"], "ops@test.example", "{mail}");
    let json_hook = fleet
        .api
        .post(
            "alerts/channels",
            add("json", "webhook", hook("/hook/secret-token"), None),
        )
        .await;
    assert_eq!(json_hook["format"], "json");
    assert_eq!(
        json_hook["hint"],
        format!("http://127.0.0.1/…"),
        "no path, no token: {json_hook}"
    );
    fleet
        .api
        .post(
            "alerts/channels",
            add("slack", "webhook", hook("/slack"), Some("slack")),
        )
        .await;
    let broken = fleet
        .api
        .post(
            "alerts/channels",
            add("broken", "webhook", hook("/missing"), None),
        )
        .await;
    assert_eq!(
        fleet
            .api
            .get("alerts/channels")
            .await
            .as_array()
            .unwrap()
            .len(),
        4
    );

    // The test buttons: the mail and the webhook arrive, the 404 is reported.
    let test = |id: &Value| format!("alerts/channels/{id}/test");
    let (status, body) = fleet.api.call(Method::POST, &test(&mail["id"]), None).await;
    assert_eq!((status, &body["delivered"]), (200, &json!(true)), "{body}");
    let (status, body) = fleet
        .api
        .call(Method::POST, &test(&json_hook["id"]), None)
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = fleet
        .api
        .call(Method::POST, &test(&broken["id"]), None)
        .await;
    assert_eq!(status, 502, "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("404"),
        "{body}"
    );
    assert!(
        smtpd.mails().iter().any(|m| m.contains("[TEST]")),
        "the test mail arrived"
    );
    assert_eq!(hooks.at("/hook/secret-token")[0]["event"], "test");
    let channels = fleet.api.get("alerts/channels").await;
    let broken_view = channels
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "broken")
        .unwrap();
    assert!(
        broken_view["last_error"].as_str().unwrap().contains("404"),
        "{channels}"
    );

    // Offline for less than offline_after: the alert loop sees it (pending), then sees it back,
    // and nothing fires.
    let (token, wg, gw_dir) = fleet.gateways.remove(0).shut_down().await;
    gateway_online(&fleet, false).await;
    let pending = pending_alerts(&fleet, |p| !p.is_empty()).await;
    assert_eq!(
        pending[0]["key"],
        format!("gateway_offline:{}", gateway_id),
        "{pending:?}"
    );
    assert!(
        pending[0]["fires_in_seconds"].as_u64().unwrap() <= 8,
        "{pending:?}"
    );
    let gateway =
        InProcessGateway::start(&fleet.api.base, token, free_udp(wg).await, None, gw_dir).await;
    gateway_online(&fleet, true).await;
    pending_alerts(&fleet, |p| p.is_empty()).await;
    let alerts = fleet.api.get("alerts").await;
    assert!(alerts["recent"].as_array().unwrap().is_empty(), "{alerts}");
    assert!(smtpd.subjects().is_empty());

    // Stopped for good: one alert, once.
    let (token, wg, gw_dir) = gateway.shut_down().await;
    gateway_online(&fleet, false).await;
    let subjects = eventually_every(PACE, WAIT, "the firing mail", || async {
        let s = smtpd.subjects();
        (!s.is_empty()).then_some(s)
    })
    .await;
    assert_eq!(subjects.len(), 1, "{subjects:?}");
    assert!(
        subjects[0].contains("[FIRING] Gateway gw1 has been offline for more than 8 s"),
        "{subjects:?}"
    );
    let alerts = fleet.api.get("alerts").await;
    assert_eq!(alerts["open"].as_array().unwrap().len(), 1, "{alerts}");
    assert_eq!(alerts["open"][0]["rule"], "gateway_offline", "{alerts}");
    assert_eq!(alerts["rules"]["offline_after_seconds"], 8);
    assert_eq!(alerts["rules"]["smtp"], true);

    // Back: resolved once, after the hysteresis.
    let _gateway =
        InProcessGateway::start(&fleet.api.base, token, free_udp(wg).await, None, gw_dir).await;
    gateway_online(&fleet, true).await;
    let subjects = eventually_every(PACE, WAIT, "the resolved mail", || async {
        let s = smtpd.subjects();
        (s.len() >= 2).then_some(s)
    })
    .await;
    assert_eq!(subjects.len(), 2, "{subjects:?}");
    assert!(
        subjects[1].contains("[RESOLVED] Gateway gw1"),
        "{subjects:?}"
    );
    let alerts = fleet.api.get("alerts").await;
    assert!(alerts["open"].as_array().unwrap().is_empty(), "{alerts}");
    assert!(alerts["recent"][0]["resolved_at"].is_string(), "{alerts}");

    // The webhooks got the same two, in their shapes.
    let events = eventually_every(PACE, WAIT, "both webhooks", || async {
        let json = hooks.at("/hook/secret-token");
        let slack = hooks.at("/slack");
        (json.len() >= 3 && slack.len() >= 2).then_some((json, slack))
    })
    .await;
    let (json_events, slack) = events;
    let kinds: Vec<&Value> = json_events.iter().map(|e| &e["event"]).collect();
    assert_eq!(
        kinds,
        [&json!("test"), &json!("fired"), &json!("resolved")],
        "{json_events:?}"
    );
    assert_eq!(json_events[1]["alert"]["rule"], "gateway_offline");
    assert_eq!(json_events[1]["alert"]["subject"], "Gateway gw1");
    assert!(
        slack[0]["text"]
            .as_str()
            .unwrap()
            .starts_with("[FIRING] Gateway gw1"),
        "{slack:?}"
    );
    assert!(
        slack[1]["text"]
            .as_str()
            .unwrap()
            .starts_with("[RESOLVED] Gateway gw1"),
        "{slack:?}"
    );
    assert_eq!(slack.len(), 2, "{slack:?}");

    assert_eq!(audit_count(&fleet, "alert.fired").await, 1);
    assert_eq!(audit_count(&fleet, "alert.resolved").await, 1);
    assert!(audit_count(&fleet, "alert_channel.created").await >= 4);
    // The 404 channel, after its retries.
    eventually_every(
        Duration::from_secs(1),
        WAIT,
        "alert.delivery_failed",
        || async { (audit_count(&fleet, "alert.delivery_failed").await >= 1).then_some(()) },
    )
    .await;

    // Deleting a channel.
    fleet
        .api
        .delete(&format!("alerts/channels/{}", broken["id"]))
        .await;
    assert_eq!(
        fleet
            .api
            .get("alerts/channels")
            .await
            .as_array()
            .unwrap()
            .len(),
        3
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_answering_too_many_5xx_fires_an_error_rate_alert() {
    let (hooks, hook_addr) = Hooks::start().await;
    let fleet = Cluster::new()
        .gateway()
        .agent()
        .origin("errors")
        .tunnel("app.test")
        .start()
        .await;
    let channel =
        json!({"name": "hook", "kind": "webhook", "target": format!("http://{hook_addr}/hook")});
    fleet.api.post("alerts/channels", channel).await;
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let gateway = fleet.gateway();
    wait_through(
        &http,
        gateway,
        "app.test",
        "/",
        WAIT,
        "tunnel up",
        |s, _| s == 200,
    )
    .await;
    // 100 requests, 20 of them answered 503 by the app: 20 % > 5 %.
    for i in 0..100 {
        let path = if i % 5 == 0 { "/status?code=503" } else { "/" };
        let want = if i % 5 == 0 { 503 } else { 200 };
        let (status, _) = through(&http, gateway, "app.test", path).await;
        assert_eq!(status, want);
    }
    // The Gateway reports its counters every 10 s, Control writes them every 10 s.
    let fired = eventually_every(PACE, WAIT, "the error-rate alert", || async {
        hooks
            .at("/hook")
            .into_iter()
            .find(|e| e["event"] == "fired" && e["alert"]["rule"] == "error_rate")
    })
    .await;
    let summary = fired["alert"]["summary"].as_str().unwrap();
    // 20 of the 100, and the 502s of the wait for the tunnel, if any.
    assert!(
        summary.starts_with("tunnel app.test answered "),
        "{summary}"
    );
    assert!(
        summary.contains("with 5xx over the last 5 min (more than 5 %)"),
        "{summary}"
    );
    let alerts = fleet.api.get("alerts").await;
    assert_eq!(alerts["open"][0]["rule"], "error_rate", "{alerts}");
    assert_eq!(alerts["open"][0]["subject"], "tunnel app.test", "{alerts}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_goes_over_starttls_and_implicit_tls_and_an_unknown_certificate_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, ca) = kakuremichi_testkit::pebble::server_certificate();
    let (cert_file, key_file) = (dir.path().join("smtp.crt"), dir.path().join("smtp.key"));
    std::fs::write(&cert_file, cert).unwrap();
    std::fs::write(&key_file, key).unwrap();
    let (cert_file, key_file) = (cert_file.to_str().unwrap(), key_file.to_str().unwrap());
    let starttls_dir = dir.path().join("starttls");
    let smtps_dir = dir.path().join("smtps");
    std::fs::create_dir_all(&starttls_dir).unwrap();
    std::fs::create_dir_all(&smtps_dir).unwrap();
    // aiosmtpd requires STARTTLS before any mail when given --tlscert.
    let starttls = Smtpd::start_with(
        &starttls_dir,
        &["--tlscert", cert_file, "--tlskey", key_file],
    )
    .await;
    let smtps = Smtpd::start_with(
        &smtps_dir,
        &["--smtpscert", cert_file, "--smtpskey", key_file],
    )
    .await;

    for (url, roots, delivered) in [
        (
            format!("smtp://localhost:{}", starttls.addr.port()),
            Some(ca.clone()),
            true,
        ),
        (
            format!("smtps://localhost:{}", smtps.addr.port()),
            Some(ca.clone()),
            true,
        ),
        // The public roots do not know the test CA: nothing is sent in clear instead.
        (
            format!("smtp://localhost:{}", starttls.addr.port()),
            None,
            false,
        ),
    ] {
        let mailer =
            kakuremichi_control::Mailer::new(&url, None, roots.as_deref().map(str::as_bytes))
                .unwrap();
        let fleet = Cluster::new()
            .control_config(move |c| c.alerts.mailer = Some(mailer))
            .start()
            .await;
        let made = fleet
            .api
            .post(
                "alerts/channels",
                json!({"name": "mail", "kind": "email", "target": "ops@test.example"}),
            )
            .await;
        let path = format!("alerts/channels/{}/test", made["id"]);
        let (status, body) = fleet.api.call(Method::POST, &path, None).await;
        if delivered {
            assert_eq!(status, 200, "{url}: {body}");
        } else {
            assert_eq!(status, 502, "{url}: {body}");
            let message = body["error"]["message"].as_str().unwrap();
            assert!(message.contains("certificate"), "{url}: {message}");
        }
    }
    for server in [&starttls, &smtps] {
        let mails = server.mails();
        assert_eq!(mails.len(), 1, "one test mail each: {mails:?}");
        assert!(mails[0].contains("[TEST]"), "{mails:?}");
        assert!(
            mails[0].contains("From: kakuremichi <kakuremichi@localhost>"),
            "{mails:?}"
        );
    }
}
