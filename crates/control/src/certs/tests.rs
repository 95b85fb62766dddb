//! Tests of the certificate scheduler: pure decisions, and the pacing of orders against an
//! in-memory CA that counts them (the [`AcmeClient`] seam).

use super::acme::Obtained;
use super::*;
use crate::store::{NewTunnel, NodeKind, NodeRef, TunnelPatch};
use crate::validate::WgNetwork;
use futures_util::future::BoxFuture;
use std::sync::atomic::{AtomicUsize, Ordering};

fn row(source: &str, cert: bool, renew: &str, retry: Option<&str>) -> CertRow {
    CertRow {
        hostname: "a.test".into(),
        source: source.into(),
        status: if cert { "issued" } else { "failed" }.into(),
        cert_pem: cert.then(|| "c".into()),
        not_after: None,
        issuer: None,
        renew_at: Some(renew.into()),
        last_error: None,
        failures: 0,
        next_attempt_at: retry.map(str::to_string),
    }
}

#[test]
fn due_times() {
    let now = OffsetDateTime::now_utc();
    let future = "2999-01-01T00:00:00Z";
    let past = "2000-01-01T00:00:00Z";
    assert!(due_at(None, now) <= now);
    assert!(due_at(Some(&row("acme", true, future, None)), now) > now);
    assert!(due_at(Some(&row("acme", true, past, None)), now) <= now);
    assert!(
        due_at(Some(&row("acme", true, past, Some(future))), now) > now,
        "a failed renewal waits for its retry time"
    );
    assert!(due_at(Some(&row("acme", false, past, Some(future))), now) > now);
}

#[test]
fn status_views() {
    assert!(status_view("app.test", TlsMode::Off, None, true).is_none());
    let pending = status_view("app.test", TlsMode::Acme, None, false).unwrap();
    assert_eq!(pending["status"], "pending");
    assert!(pending["last_error"]
        .as_str()
        .unwrap()
        .contains("No Gateway"));
    let issued = status_view(
        "app.test",
        TlsMode::Acme,
        Some(&row("acme", true, "x", None)),
        true,
    )
    .unwrap();
    assert_eq!(issued["status"], "issued");
    let other = status_view(
        "app.test",
        TlsMode::Internal,
        Some(&row("acme", true, "x", None)),
        true,
    )
    .unwrap();
    assert_eq!(other["status"], "pending");
    assert!(other["last_error"].is_null());
}

/// A CA that counts orders and issues from an internal CA, or fails every order.
struct CountingCa {
    orders: Arc<AtomicUsize>,
    challenges: Arc<std::sync::Mutex<Vec<(String, Challenge)>>>,
    fail: bool,
    ca: InternalCa,
}

impl AcmeClient for CountingCa {
    fn obtain<'a>(
        &'a self,
        host: &'a str,
        challenge: Challenge,
        _hub: &'a Hub,
    ) -> BoxFuture<'a, Result<Obtained, Failure>> {
        Box::pin(async move {
            self.orders.fetch_add(1, Ordering::SeqCst);
            self.challenges
                .lock()
                .unwrap()
                .push((host.to_string(), challenge));
            if self.fail {
                return Err(Failure::Dns {
                    detail: "NXDOMAIN".into(),
                });
            }
            let issued = self.ca.issue(host).map_err(|e| Failure::Internal {
                detail: e.to_string(),
            })?;
            Ok(Obtained {
                cert_pem: issued.cert_pem,
                key_pem: issued.key_pem,
            })
        })
    }

    fn renewal_window<'a>(
        &'a self,
        _leaf_der: &'a [u8],
    ) -> BoxFuture<'a, Option<(OffsetDateTime, OffsetDateTime)>> {
        Box::pin(async { None })
    }
}

struct Setup {
    store: Store,
    manager: Arc<CertManager>,
    orders: Arc<AtomicUsize>,
    challenges: Arc<std::sync::Mutex<Vec<(String, Challenge)>>>,
    agent: i64,
    member: i64,
    _gateway_online: Box<dyn std::any::Any>,
    _dir: tempfile::TempDir,
}

/// A Control's store with one online Gateway, one agent and one member, and a manager ordering
/// from a [`CountingCa`]. Retries wait an hour: nothing in a test is retried by the clock.
async fn setup(fail: bool) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open("sqlite::memory:").await.unwrap();
    let hub = Hub::new(
        store.clone(),
        Duration::from_secs(1),
        Duration::from_secs(2),
    );
    let net = WgNetwork::parse("10.77.0.0/16").unwrap();
    let gateway = store
        .create_gateway("gw", "gw.example.net:51820", "h1", &net)
        .await
        .unwrap();
    let online = hub.mark_online(NodeRef {
        kind: NodeKind::Gateway,
        id: gateway.id,
    });
    let agent = store
        .create_agent("a", "h2", &net, None, u32::MAX)
        .await
        .unwrap()
        .id;
    let member = store
        .create_user("m@example.com", "x", false, true)
        .await
        .unwrap()
        .id;
    let orders = Arc::new(AtomicUsize::new(0));
    let challenges = Arc::default();
    let fake = CountingCa {
        orders: orders.clone(),
        challenges: Arc::clone(&challenges),
        fail,
        ca: InternalCa::load_or_create(dir.path()).unwrap(),
    };
    let config = AcmeConfig {
        retry_base: Duration::from_secs(3600),
        retry_cap: Duration::from_secs(6 * 3600),
        ..AcmeConfig::default()
    };
    let ca = InternalCa::load_or_create(dir.path()).unwrap();
    let manager = CertManager::with_client(store.clone(), hub, config, ca, Box::new(fake));
    Setup {
        store,
        manager,
        orders,
        challenges,
        agent,
        member,
        _gateway_online: Box::new(online),
        _dir: dir,
    }
}

impl Setup {
    async fn tunnel(&self, hostname: &str, owner: Option<i64>) -> i64 {
        let new = NewTunnel {
            hostname: hostname.into(),
            agent_id: self.agent,
            target: "app:80".into(),
            enabled: true,
            tls: "acme".into(),
            https_redirect: true,
            replicas: Vec::new(),
            access: Default::default(),
            owner_id: owner,
            max_owned: u32::MAX,
            limits: Default::default(),
            stream: Default::default(),
            ports: Default::default(),
            basic_auth: None,
            log_requests: false,
            error_page: None,
        };
        self.store.create_tunnel(&new).await.unwrap().id
    }

    async fn set_tls(&self, id: i64, tls: &str) {
        let patch = TunnelPatch {
            tls: Some(tls.into()),
            ..TunnelPatch::default()
        };
        self.store.update_tunnel(id, &patch).await.unwrap();
    }

    /// One scheduler pass, then waits until every attempt it started has finished.
    async fn settle(&self) {
        self.manager.tick().await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !self.manager.in_flight.lock().unwrap().is_empty() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "attempts never ended"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn orders(&self) -> usize {
        self.orders.load(Ordering::SeqCst)
    }

    /// The ACME row of `host`, if any.
    async fn acme_row(&self, host: &str) -> Option<CertRow> {
        let rows = self.store.list_certificates().await.unwrap();
        rows.into_iter()
            .find(|r| r.hostname == host && r.source == "acme")
    }
}

/// Back and forth between every mode: off and on again, and through the internal CA.
const TOGGLES: [&str; 10] = [
    "off", "acme", "internal", "acme", "off", "acme", "internal", "acme", "off", "acme",
];

#[tokio::test]
async fn toggling_tls_orders_a_good_certificate_once() {
    let s = setup(false).await;
    let t = s.tunnel("app.example.com", Some(s.member)).await;
    s.settle().await;
    assert_eq!(s.orders(), 1);
    for tls in TOGGLES {
        s.set_tls(t, tls).await;
        s.settle().await;
    }
    assert_eq!(
        s.orders(),
        1,
        "the issued certificate is still good: no new order"
    );
    let row = s.acme_row("app.example.com").await.unwrap();
    assert_eq!(row.status, "issued");
}

#[tokio::test]
async fn a_failure_waits_its_backoff_whatever_is_toggled() {
    let s = setup(true).await;
    let t = s.tunnel("app.example.com", Some(s.member)).await;
    s.settle().await;
    assert_eq!(s.orders(), 1);
    for tls in TOGGLES {
        s.set_tls(t, tls).await;
        s.settle().await;
    }
    assert_eq!(s.orders(), 1, "toggling must not skip the backoff");
    let row = s.acme_row("app.example.com").await.unwrap();
    assert_eq!(
        (row.status.as_str(), row.failures),
        ("failed", 1),
        "{row:?}"
    );
    assert!(row.next_attempt_at.is_some());
}

#[tokio::test]
async fn hourly_order_caps_hold_and_waiting_orders_go_later() {
    let s = setup(false).await;
    // A member's tunnels under 12 registered domains: 10 orders per user per hour.
    for i in 0..12 {
        s.tunnel(&format!("app.site{i}.com"), Some(s.member)).await;
    }
    // The admins' tunnels under one registered domain: 20 orders per domain per hour.
    for i in 0..22 {
        s.tunnel(&format!("app{i}.example.net"), None).await;
    }
    s.settle().await;
    s.settle().await;
    assert_eq!(s.orders(), 30, "10 for the member + 20 for example.net");
    let rows = s.store.list_certificates().await.unwrap();
    let waiting: Vec<&CertRow> = rows.iter().filter(|r| r.status == "waiting").collect();
    assert_eq!(waiting.len(), 4, "{rows:?}");
    for r in &waiting {
        let note = r.last_error.as_deref().unwrap_or_default();
        assert!(note.starts_with("waiting: hourly order limit"), "{note}");
        assert!(note.contains("next try at"), "{note}");
        let view = status_view("app.test", TlsMode::Acme, Some(r), true).unwrap();
        assert_eq!(view["status"], "waiting");
    }
    // An hour later (the log and the retry times moved back), the held orders are placed.
    sqlx::query("UPDATE acme_orders SET ordered_at = '2000-01-01T00:00:00Z'")
        .execute(s.store.pool())
        .await
        .unwrap();
    sqlx::query(
        "UPDATE certificates SET next_attempt_at = '2000-01-01T00:00:00Z' WHERE status = 'waiting'",
    )
    .execute(s.store.pool())
    .await
    .unwrap();
    s.settle().await;
    assert_eq!(s.orders(), 34);
    let rows = s.store.list_certificates().await.unwrap();
    assert!(rows.iter().all(|r| r.status == "issued"), "{rows:?}");
}

#[tokio::test]
async fn a_wildcard_is_ordered_with_dns01_and_other_names_keep_http01() {
    let s = setup(false).await;
    let pending = status_view("*.apps.example.com", TlsMode::Acme, None, false).unwrap();
    assert_eq!(pending["status"], "pending");
    assert!(
        pending["last_error"].is_null(),
        "DNS-01 needs no Gateway: {pending}"
    );
    s.tunnel("*.apps.example.com", Some(s.member)).await;
    s.tunnel("www.example.com", Some(s.member)).await;
    s.settle().await;
    let mut seen = s.challenges.lock().unwrap().clone();
    seen.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        seen,
        vec![
            ("*.apps.example.com".to_string(), Challenge::Dns01),
            ("www.example.com".to_string(), Challenge::Http01),
        ]
    );
    let row = s.acme_row("*.apps.example.com").await.unwrap();
    assert_eq!(row.status, "issued");
}
