//! Automatic HTTPS: Control obtains and renews one certificate per tunnel hostname, from the
//! ACME CA (`tls: acme`) or its internal CA (`tls: internal`), and the hub puts each into every
//! Gateway's snapshot.
//!
//! [`CertManager::run`] is the scheduler. On every change (tunnels, nodes, a finished attempt) and
//! at the next due time it reads the tunnels and certificate rows and starts one task per hostname
//! that is due: never issued, issued by the wrong source, past its renewal time, or past its retry
//! time after a failure. Tasks run concurrently (bounded), so one failing hostname never holds up
//! another; each failure pushes the next attempt out with exponential backoff and jitter (or the
//! CA's Retry-After), so nothing retries in a tight loop.
//!
//! The state is kept per (hostname, source), so switching a tunnel's `tls` back and forth neither
//! resets a failure's backoff nor re-orders a certificate that is still good; and ACME orders are
//! capped per user and per registered domain per hour ([`limits`]): an order over a cap waits,
//! its tunnel's certificate status says until when, and it is placed then.

mod acme;
mod dns01;
mod internal_ca;
mod limits;
mod policy;
mod settings;
#[cfg(test)]
mod tests;

pub use acme::AcmeClient;
pub use dns01::Dns01;
pub use internal_ca::InternalCa;
pub use limits::OrderLimits;
pub use settings::{AcmeConfig, Challenge, ChallengeChoice, TlsMode, LETS_ENCRYPT};

use crate::hub::Hub;
use crate::store::{timestamp, CertRow, NewCert, Store, TunnelRow};
use policy::Failure;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use time::OffsetDateTime;
use tokio::sync::{watch, Notify, Semaphore};

/// How many certificates are obtained at once.
const CONCURRENT_ORDERS: usize = 4;
/// The scheduler looks again at least this often.
const MAX_SLEEP: Duration = Duration::from_secs(3600);

/// Obtains and renews certificates; see the module documentation.
pub struct CertManager {
    store: Store,
    hub: Arc<Hub>,
    acme: Box<dyn AcmeClient>,
    ca: InternalCa,
    config: AcmeConfig,
    in_flight: Mutex<HashSet<String>>,
    slots: Semaphore,
    finished: Notify,
    dns01: Option<Arc<Dns01>>,
    /// The temporary tunnels' domain when their default is `tls: acme`: Control keeps a
    /// wildcard certificate for it (DNS-01) so a new name never waits for the CA.
    temporary_domain: Option<String>,
}

impl CertManager {
    /// The manager of a running Control: ACME through `config`'s CA, DNS-01 through `zones`.
    /// With `temporary_domain`, it keeps a wildcard certificate for it (`*.<domain>`) whenever
    /// a managed zone covers it, and orders none for the names one label below while that one
    /// is good.
    pub fn new(
        store: Store,
        hub: Arc<Hub>,
        config: AcmeConfig,
        ca: InternalCa,
        zones: crate::zones::Zones,
        temporary_domain: Option<String>,
    ) -> Arc<Self> {
        let dns01 = Arc::new(Dns01::new(store.clone(), zones, &config));
        let acme = Box::new(acme::Acme::new(
            config.clone(),
            store.clone(),
            dns01.clone(),
        ));
        let mut manager = Self::build(store, hub, config, ca, acme);
        manager.dns01 = Some(dns01);
        manager.temporary_domain = temporary_domain;
        Arc::new(manager)
    }

    /// A manager ordering from `acme` (a fake CA in tests).
    #[cfg(test)]
    pub fn with_client(
        store: Store,
        hub: Arc<Hub>,
        config: AcmeConfig,
        ca: InternalCa,
        acme: Box<dyn AcmeClient>,
    ) -> Arc<Self> {
        Arc::new(Self::build(store, hub, config, ca, acme))
    }

    fn build(
        store: Store,
        hub: Arc<Hub>,
        config: AcmeConfig,
        ca: InternalCa,
        acme: Box<dyn AcmeClient>,
    ) -> Self {
        Self {
            acme,
            store,
            hub,
            ca,
            config,
            in_flight: Mutex::new(HashSet::new()),
            slots: Semaphore::new(CONCURRENT_ORDERS),
            finished: Notify::new(),
            dns01: None,
            temporary_domain: None,
        }
    }

    /// Schedules until `stop` turns true.
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        if let Some(dns01) = &self.dns01 {
            dns01.clean_up_leftovers().await;
        }
        let mut generation = self.hub.subscribe();
        let mut nodes = self.hub.subscribe_nodes();
        loop {
            let sleep = match self.tick().await {
                Ok(sleep) => sleep,
                Err(e) => {
                    tracing::error!(error = %e, "certificate scheduler: database error");
                    Duration::from_secs(5)
                }
            };
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                _ = generation.changed() => {}
                _ = nodes.changed() => {}
                () = self.finished.notified() => {}
                () = tokio::time::sleep(sleep) => {}
            }
        }
    }

    /// Starts every due task; returns how long until the next one is due.
    async fn tick(self: &Arc<Self>) -> Result<Duration, crate::store::StoreError> {
        let tunnels = self.store.list_tunnels().await?;
        let rows: HashMap<(String, String), CertRow> = self
            .store
            .list_certificates()
            .await?
            .into_iter()
            .map(|r| ((r.hostname.clone(), r.source.clone()), r))
            .collect();
        let now = OffsetDateTime::now_utc();
        let gateways_online = !self.hub.online_gateways().is_empty();
        let mut next = MAX_SLEEP;
        // The last hour's ACME orders, read once the first order is due.
        let mut orders: Option<limits::OrderCounts> = None;
        let mut wanted = wanted(&tunnels);
        if let Some(wildcard) = self.temporary_wildcard().await? {
            let key = (wildcard.clone(), TlsMode::Acme.as_str().to_string());
            if rows.get(&key).is_some_and(|r| holds_valid(r, now)) {
                // The Gateways serve it for every name below: none needs an order of its own.
                wanted.retain(|(host, mode, _)| {
                    *mode != TlsMode::Acme
                        || crate::validate::covering_wildcard(host).as_deref()
                            != Some(wildcard.as_str())
                });
            }
            if !wanted.iter().any(|(host, _, _)| *host == wildcard) {
                wanted.push((wildcard, TlsMode::Acme, None));
            }
        }
        for (host, mode, owner) in wanted {
            if self.is_in_flight(&host) {
                continue;
            }
            // HTTP-01 and TLS-ALPN-01 need a Gateway to answer the CA; a connecting Gateway
            // wakes us up.
            if mode == TlsMode::Acme
                && !gateways_online
                && self.config.challenge.needs_gateway(&host)
            {
                continue;
            }
            let row = rows.get(&(host.clone(), mode.as_str().to_string()));
            let due = due_at(row, now);
            if due > now {
                next = next.min(Duration::try_from(due - now).unwrap_or(MAX_SLEEP));
                continue;
            }
            if mode == TlsMode::Acme {
                let counts = match &mut orders {
                    Some(counts) => counts,
                    None => {
                        let since = timestamp(now - limits::WINDOW);
                        let rows = self.store.acme_orders_since(&since).await?;
                        orders.insert(limits::OrderCounts::new(&rows))
                    }
                };
                let domain = limits::registered_domain(&host);
                if let Err(held) = counts.check(owner, &domain, self.config.limits, now) {
                    let note = held.note();
                    tracing::info!(%host, owner_id = ?owner, %domain, "certificate order held back: {note}");
                    self.store
                        .record_waiting(&host, mode.as_str(), &note, &timestamp(held.until))
                        .await?;
                    let wait = Duration::try_from(held.until - now).unwrap_or(MAX_SLEEP);
                    next = next.min(wait);
                    continue;
                }
                counts.record(owner, &domain, now);
                self.store.log_acme_order(&host, &domain, owner).await?;
            }
            let failures = row.map(|r| r.failures).unwrap_or(0);
            self.start(host, mode, failures);
        }
        // Whole-second timestamps make "due in a few microseconds" impossible; the floor is a guard.
        Ok(next.max(Duration::from_millis(100)))
    }

    /// `*.<temporary domain>` when it is set and lies in a managed DNS zone (the only way to a
    /// wildcard certificate is DNS-01).
    async fn temporary_wildcard(&self) -> Result<Option<String>, crate::store::StoreError> {
        let Some(domain) = &self.temporary_domain else {
            return Ok(None);
        };
        let zones = self.store.list_dns_zones().await?;
        Ok(crate::zones::zone_of(&zones, domain).map(|_| format!("*.{domain}")))
    }

    fn is_in_flight(&self, host: &str) -> bool {
        self.in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(host)
    }

    fn start(self: &Arc<Self>, host: String, mode: TlsMode, failures: i64) {
        self.in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(host.clone());
        let this = self.clone();
        tokio::spawn(async move {
            if let Ok(_slot) = this.slots.acquire().await {
                this.attempt(&host, mode, failures).await;
            }
            this.in_flight
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&host);
            this.finished.notify_one();
        });
    }

    /// One attempt for one hostname; the outcome is recorded, never propagated.
    async fn attempt(&self, host: &str, mode: TlsMode, failures: i64) {
        let source = mode.as_str();
        let result = match mode {
            TlsMode::Internal => self
                .ca
                .issue(host)
                .map(|i| (i.cert_pem, i.key_pem))
                .map_err(|e| Failure::Internal {
                    detail: e.to_string(),
                }),
            TlsMode::Acme => {
                let challenge = self.config.challenge.for_host(host, failures);
                tracing::info!(%host, ?challenge, "ordering a certificate");
                self.acme
                    .obtain(host, challenge, &self.hub)
                    .await
                    .map(|o| (o.cert_pem, o.key_pem))
            }
            TlsMode::Off => return,
        };
        let saved = match result {
            Ok((cert_pem, key_pem)) => self.save(host, mode, cert_pem, key_pem).await,
            Err(failure) => Err(failure),
        };
        if mode == TlsMode::Acme {
            self.hub.metrics().acme_order(saved.is_ok());
        }
        match saved {
            Ok(not_after) => {
                tracing::info!(%host, source, not_after = %timestamp(not_after), "certificate issued");
                self.hub.changed();
            }
            Err(failure) => self.failed(host, source, failures + 1, &failure).await,
        }
    }

    async fn save(
        &self,
        host: &str,
        mode: TlsMode,
        cert_pem: String,
        key_pem: String,
    ) -> Result<OffsetDateTime, Failure> {
        let info = policy::cert_info(&cert_pem).map_err(|detail| Failure::Ca { detail })?;
        let renew_at = match mode {
            TlsMode::Acme => match self.acme.renewal_window(&info.leaf_der).await {
                Some((start, end)) => policy::in_window(start, end),
                None => policy::two_thirds(info.not_before, info.not_after),
            },
            _ => policy::two_thirds(info.not_before, info.not_after),
        };
        let cert = NewCert {
            cert_pem,
            key_pem,
            not_after: timestamp(info.not_after),
            issuer: info.issuer,
            renew_at: timestamp(renew_at),
        };
        self.store
            .save_issued(host, mode.as_str(), &cert)
            .await
            .map_err(|e| Failure::Internal {
                detail: e.to_string(),
            })?;
        Ok(info.not_after)
    }

    async fn failed(&self, host: &str, source: &str, failures: i64, failure: &Failure) {
        let sentence = failure.sentence(host);
        let delay = policy::backoff(failures, self.config.retry_base, self.config.retry_cap);
        let mut next = OffsetDateTime::now_utc() + delay;
        if let Some(not_before) = failure.not_before() {
            next = next.max(not_before);
        }
        tracing::warn!(%host, failures, retry_at = %timestamp(next), "certificate not obtained: {sentence}");
        if let Err(e) = self
            .store
            .record_failure(host, source, &sentence, failures, &timestamp(next))
            .await
        {
            tracing::error!(%host, error = %e, "cannot record the certificate failure");
        }
    }
}

/// Hostnames of enabled tunnels that want HTTPS, with their mode and owner.
fn wanted(tunnels: &[TunnelRow]) -> Vec<(String, TlsMode, Option<i64>)> {
    tunnels
        .iter()
        .filter(|t| t.enabled)
        .filter_map(|t| match t.tls.parse::<TlsMode>() {
            Ok(TlsMode::Off) | Err(_) => None,
            Ok(mode) => Some((t.hostname.clone(), mode, t.owner_id)),
        })
        .collect()
}

/// Whether `row` holds a certificate that has not expired yet.
fn holds_valid(row: &CertRow, now: OffsetDateTime) -> bool {
    row.cert_pem.is_some()
        && row
            .not_after
            .as_deref()
            .and_then(parse_time)
            .is_some_and(|end| end > now)
}

/// When a hostname next needs an attempt from the source of `row` (its state for that source):
/// never tried, now; else at its renewal time (if it holds a certificate), and never before its
/// retry time (a failure's backoff, a CA's Retry-After, an hourly cap), whatever was toggled since.
fn due_at(row: Option<&CertRow>, now: OffsetDateTime) -> OffsetDateTime {
    let Some(row) = row else { return now };
    let parse = |t: &Option<String>| t.as_deref().and_then(parse_time);
    let retry = parse(&row.next_attempt_at);
    let renew = if row.cert_pem.is_some() {
        parse(&row.renew_at).unwrap_or(now)
    } else {
        now
    };
    match retry {
        Some(retry) => renew.max(retry),
        None => renew,
    }
}

fn parse_time(text: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()
}

/// What the API shows as a tunnel's `certificate`, from its hostname, TLS mode and its
/// hostname's row.
pub fn status_view(
    host: &str,
    mode: TlsMode,
    row: Option<&CertRow>,
    gateways_online: bool,
) -> Option<serde_json::Value> {
    if mode == TlsMode::Off {
        return None;
    }
    let row = row.filter(|r| r.source == mode.as_str());
    let view = match row {
        Some(r) => serde_json::json!({
            "status": r.status,
            "not_after": r.not_after,
            "issuer": r.issuer,
            "last_error": r.last_error,
        }),
        None => {
            let note = (mode == TlsMode::Acme && !gateways_online && !host.starts_with("*.")).then_some(
                "No Gateway is connected to Control yet; the certificate is ordered as soon as one is.",
            );
            serde_json::json!({
                "status": "pending",
                "not_after": null,
                "issuer": null,
                "last_error": note,
            })
        }
    };
    Some(view)
}
