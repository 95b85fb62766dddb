//! DNS that follows the fleet: every enabled tunnel whose hostname lies in a managed zone gets A
//! and AAAA records listing the Gateways that serve (issue #15), and a Gateway that stays offline
//! is taken out of them ([`health`]).
//!
//! [`DnsRecords::run`] reconciles on every change (tunnels, Gateways, zones: the hub's
//! generation; Gateways coming and going: the hub's node watch) and at the next failover or
//! readmission deadline. A pass reads the rows, asks [`health`] which Gateways to list, computes
//! the wanted RRsets ([`plan`]) and writes the difference through the zones' ledger, so only
//! records Control wrote are ever changed. Unchanged RRsets cost no DNS traffic, except in the
//! full check every [`FULL_CHECK`], which re-reads everything (a record deleted by hand comes
//! back). Every change is logged and audited; a failing provider is retried with backoff.

mod health;
mod plan;

pub use plan::gateway_addresses;

use crate::dns::{RecordType, RrSet};
use crate::hub::Hub;
use crate::store::{Actor, Backend, NodeKind, NodeRef, Store, StoreError};
use crate::zones::{content, record_type, OpenZone, OwnedError, Zones};
use health::{Change, Health, Observed};
use plan::Placement;
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify};

/// The ledger's purpose of the records written here.
const PURPOSE: &str = "gateways";
/// How often every managed RRset is read back from DNS even when nothing changed.
const FULL_CHECK: Duration = Duration::from_secs(300);
/// The setting where the leader leaves the statuses for the other replicas (PostgreSQL).
const SHARED_STATUS: &str = "dns_status";
/// Changes arriving together are handled in one pass.
const DEBOUNCE: Duration = Duration::from_millis(200);
/// Retry pacing after a provider failed.
const RETRY_FIRST: Duration = Duration::from_secs(5);
const RETRY_MAX: Duration = Duration::from_secs(300);

/// Settings of the managed records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DnsRecordsConfig {
    /// TTL of the A/AAAA records (seconds).
    pub ttl: u32,
    /// A Gateway offline this long is taken out of DNS (`KAKUREMICHI_DNS_FAILOVER_AFTER`).
    pub failover_after: Duration,
    /// A Gateway back online is listed again after this long.
    pub readmit_after: Duration,
}

impl Default for DnsRecordsConfig {
    fn default() -> Self {
        Self {
            ttl: 60,
            failover_after: Duration::from_secs(30),
            readmit_after: Duration::from_secs(10),
        }
    }
}

/// How a tunnel's hostname stands in DNS, for the API and the UI.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct DnsStatus {
    /// `managed` (records written by Control), `unmanaged` (in no managed zone: point DNS at
    /// `addresses` yourself), `conflict` (a record Control did not write is in the way) or
    /// `error` (the provider failed; retried).
    pub state: String,
    /// The managed zone the hostname lies in.
    pub zone: Option<String>,
    /// Where DNS sends (or should send) visitors: the listed Gateways' addresses.
    pub addresses: Vec<String>,
    pub message: Option<String>,
}

#[derive(Default)]
struct Pass {
    /// When the last full check ran.
    last_full: Option<Instant>,
    /// Consecutive failed passes (for the retry delay).
    failures: u32,
    /// Hostnames whose conflict was already logged (logged again only after it cleared).
    conflicts_logged: BTreeSet<String>,
}

/// The reconciler; see the module documentation.
pub struct DnsRecords {
    store: Store,
    hub: Arc<Hub>,
    zones: Zones,
    config: DnsRecordsConfig,
    health: Mutex<Health>,
    pass: tokio::sync::Mutex<Pass>,
    statuses: Mutex<Arc<BTreeMap<String, DnsStatus>>>,
    poke: Notify,
}

impl DnsRecords {
    pub fn new(hub: Arc<Hub>, zones: Zones, config: DnsRecordsConfig) -> Arc<Self> {
        Arc::new(Self {
            store: hub.store().clone(),
            hub,
            zones,
            config,
            health: Mutex::new(Health::new(config.failover_after, config.readmit_after)),
            pass: tokio::sync::Mutex::new(Pass::default()),
            statuses: Mutex::new(Arc::default()),
            poke: Notify::new(),
        })
    }

    /// Asks for a pass now (after a zone changed).
    pub fn poke(&self) {
        self.poke.notify_one();
    }

    /// How `hostname` stands in DNS, as of the last pass (`None` before the first one).
    pub fn status(&self, hostname: &str) -> Option<DnsStatus> {
        lock(&self.statuses).get(hostname).cloned()
    }

    /// Leaves the statuses for the other replicas (PostgreSQL): they serve the API and the UI
    /// too, but only the leader reconciles.
    async fn share(&self, statuses: &BTreeMap<String, DnsStatus>) {
        let json = serde_json::to_string(statuses).unwrap_or_default();
        match self.store.set_setting(SHARED_STATUS, &json).await {
            Ok(()) => self.hub.changed(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot share the DNS record statuses with the other Control replicas")
            }
        }
    }

    /// On every replica (PostgreSQL; returns at once on SQLite): reloads the leader's statuses
    /// after every change, until `stop` turns true.
    pub async fn follow(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        if self.store.backend() != Backend::Postgres {
            return;
        }
        let mut generation = self.hub.subscribe();
        loop {
            match self.store.setting(SHARED_STATUS).await {
                Ok(Some(json)) => {
                    if let Ok(shared) = serde_json::from_str(&json) {
                        *lock(&self.statuses) = Arc::new(shared);
                    }
                }
                Ok(None) => {}
                Err(e) => tracing::debug!(error = %e, "cannot read the DNS record statuses"),
            }
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                _ = generation.changed() => {}
            }
        }
    }

    /// Reconciles until `stop` turns true.
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut generation = self.hub.subscribe();
        let mut nodes = self.hub.subscribe_nodes();
        loop {
            let sleep = self.reconcile().await;
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                _ = generation.changed() => {}
                _ = nodes.changed() => {}
                () = self.poke.notified() => {}
                () = tokio::time::sleep(sleep) => {}
            }
            tokio::time::sleep(DEBOUNCE).await;
            generation.borrow_and_update();
            nodes.borrow_and_update();
        }
    }

    /// One pass; returns how long until the next one is due.
    pub async fn reconcile(&self) -> Duration {
        let mut pass = self.pass.lock().await;
        let (next, failed) = match self.pass_once(&mut pass).await {
            Ok(outcome) => outcome,
            Err(e) => {
                tracing::error!(error = %e, "DNS records: database error");
                (None, true)
            }
        };
        let retry = if failed {
            pass.failures = pass.failures.saturating_add(1);
            let delay = RETRY_FIRST.saturating_mul(1 << pass.failures.min(6).saturating_sub(1));
            Some(delay.min(RETRY_MAX))
        } else {
            pass.failures = 0;
            None
        };
        [next, retry, Some(FULL_CHECK)]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(FULL_CHECK)
    }

    /// Returns (the next health deadline, whether some provider call failed).
    async fn pass_once(&self, pass: &mut Pass) -> Result<(Option<Duration>, bool), StoreError> {
        let now = Instant::now();
        let gateways = self.store.list_gateways().await?;
        let observed: BTreeMap<i64, Observed> = gateways
            .iter()
            .map(|g| {
                let node = NodeRef {
                    kind: NodeKind::Gateway,
                    id: g.id,
                };
                let online = self.hub.is_online(node);
                (
                    g.id,
                    Observed {
                        enabled: g.enabled,
                        online,
                    },
                )
            })
            .collect();
        let (changes, next) = lock(&self.health).update(now, &observed);
        let names: HashMap<i64, &str> = gateways.iter().map(|g| (g.id, g.name.as_str())).collect();
        for change in &changes {
            self.report(change, &names).await;
        }
        let listed: BTreeSet<i64> = lock(&self.health).listed().collect();
        let (v4, v6) = plan::listed_addresses(&gateways, &listed);
        let tunnels = self.store.list_tunnels().await?;
        let zone_rows = self.store.list_dns_zones().await?;
        let (wanted, placement) = plan::plan(&tunnels, &zone_rows, &v4, &v6);

        let full = pass
            .last_full
            .is_none_or(|t| now.duration_since(t) >= FULL_CHECK);
        let ledger: HashMap<(i64, String, String), (String, i64)> = self
            .store
            .list_dns_records(None)
            .await?
            .into_iter()
            .filter(|r| r.purpose == PURPOSE)
            .map(|r| ((r.zone_id, r.name, r.kind), (r.content, r.ttl)))
            .collect();
        let mut opened: HashMap<i64, Result<OpenZone, String>> = HashMap::new();
        let mut problems: BTreeMap<String, (&'static str, String)> = BTreeMap::new();
        let mut failed = false;
        let mut keep: BTreeSet<(i64, String, String)> = BTreeSet::new();
        for w in wanted {
            let kind = w.records.kind();
            let key = (w.zone_id, w.name.clone(), kind.as_str().to_string());
            keep.insert(key.clone());
            let written = content(&w.records);
            let same = ledger
                .get(&key)
                .is_some_and(|(c, ttl)| *c == written && *ttl == i64::from(self.config.ttl));
            if same && !full {
                continue;
            }
            let zone = match self.open(&mut opened, w.zone_id, &zone_rows) {
                Ok(zone) => zone,
                Err(e) => {
                    problems.insert(w.name.clone(), ("error", e));
                    failed = true;
                    continue;
                }
            };
            let rrset = RrSet {
                name: w.name.clone(),
                ttl: self.config.ttl,
                records: w.records.clone(),
            };
            match self.zones.write_owned(&zone, &rrset, PURPOSE).await {
                Ok(true) => {
                    tracing::info!(name = %w.name, %kind, values = %written, zone = %zone.row.zone, "DNS record written");
                    let detail = json!({"zone": zone.row.zone, "values": written_values(&written), "ttl": self.config.ttl});
                    self.audit("dns.record.set", &format!("dns:{} {kind}", w.name), detail)
                        .await;
                }
                Ok(false) => {}
                Err(OwnedError::NotOurs { .. }) => {
                    let e = OwnedError::NotOurs {
                        name: w.name.clone(),
                        kind,
                    }
                    .to_string();
                    if pass.conflicts_logged.insert(w.name.clone()) {
                        tracing::warn!(name = %w.name, %kind, "DNS record not managed: {e}");
                    }
                    problems.insert(w.name.clone(), ("conflict", e));
                }
                Err(e) => {
                    tracing::warn!(name = %w.name, %kind, zone = %zone.row.zone, error = %e, "DNS record not written; retrying");
                    problems.insert(w.name.clone(), ("error", e.to_string()));
                    failed = true;
                }
            }
        }
        for ((zone_id, name, kind), _) in ledger {
            if keep.contains(&(zone_id, name.clone(), kind.clone())) {
                continue;
            }
            let Some(kind) = record_type(&kind) else {
                continue;
            };
            match self
                .delete(&mut opened, zone_id, &zone_rows, &name, kind)
                .await
            {
                Ok(()) => {}
                Err(e) => {
                    tracing::warn!(%name, %kind, error = %e, "DNS record not deleted; retrying");
                    failed = true;
                }
            }
        }
        if full && !failed {
            pass.last_full = Some(now);
        }
        pass.conflicts_logged
            .retain(|name| problems.get(name).is_some_and(|(s, _)| *s == "conflict"));
        let addresses: Vec<String> = v4
            .iter()
            .map(ToString::to_string)
            .chain(v6.iter().map(ToString::to_string))
            .collect();
        let statuses: BTreeMap<String, DnsStatus> = placement
            .into_iter()
            .map(|(host, place)| {
                let status = match (place, problems.remove(&host)) {
                    (Placement::Unmanaged, _) => DnsStatus {
                        state: "unmanaged".into(),
                        zone: None,
                        addresses: addresses.clone(),
                        message: None,
                    },
                    (Placement::Managed { zone }, problem) => DnsStatus {
                        state: problem.as_ref().map_or("managed", |(s, _)| *s).into(),
                        zone: Some(zone),
                        addresses: addresses.clone(),
                        message: problem.map(|(_, m)| m),
                    },
                };
                (host, status)
            })
            .collect();
        let statuses = Arc::new(statuses);
        let before = std::mem::replace(&mut *lock(&self.statuses), statuses.clone());
        if before != statuses && self.store.backend() == Backend::Postgres {
            self.share(&statuses).await;
        }
        Ok((next, failed))
    }

    fn open(
        &self,
        opened: &mut HashMap<i64, Result<OpenZone, String>>,
        zone_id: i64,
        rows: &[crate::store::DnsZoneRow],
    ) -> Result<OpenZone, String> {
        opened
            .entry(zone_id)
            .or_insert_with(|| {
                let row = rows
                    .iter()
                    .find(|z| z.id == zone_id)
                    .cloned()
                    .ok_or_else(|| format!("zone {zone_id} was deleted"))?;
                self.zones.open_row(row).map_err(|e| e.to_string())
            })
            .clone()
    }

    async fn delete(
        &self,
        opened: &mut HashMap<i64, Result<OpenZone, String>>,
        zone_id: i64,
        rows: &[crate::store::DnsZoneRow],
        name: &str,
        kind: RecordType,
    ) -> Result<(), String> {
        let zone = self.open(opened, zone_id, rows)?;
        let deleted = self
            .zones
            .delete_owned(&zone, name, kind)
            .await
            .map_err(|e| e.to_string())?;
        if deleted {
            tracing::info!(%name, %kind, zone = %zone.row.zone, "DNS record deleted");
            let detail = json!({"zone": zone.row.zone});
            self.audit("dns.record.delete", &format!("dns:{name} {kind}"), detail)
                .await;
        }
        Ok(())
    }

    async fn report(&self, change: &Change, names: &HashMap<i64, &str>) {
        let name = |id: &i64| names.get(id).copied().unwrap_or("(deleted)");
        let (action, id, detail) = match change {
            Change::FailedOver {
                gateway,
                offline_for,
            } => {
                tracing::warn!(
                    gateway_id = gateway,
                    name = name(gateway),
                    offline_secs = offline_for.as_secs(),
                    "Gateway offline too long: taken out of DNS"
                );
                (
                    "dns.gateway.failover",
                    gateway,
                    json!({"offline_secs": offline_for.as_secs()}),
                )
            }
            Change::KeptAsLast { gateway } => {
                tracing::warn!(
                    gateway_id = gateway,
                    name = name(gateway),
                    "Gateway offline, but no other Gateway is online: kept in DNS"
                );
                ("dns.gateway.kept", gateway, json!({}))
            }
            Change::Restored { gateway } => {
                tracing::info!(
                    gateway_id = gateway,
                    name = name(gateway),
                    "Gateway listed in DNS"
                );
                ("dns.gateway.restore", gateway, json!({}))
            }
            Change::Removed { gateway } => {
                tracing::info!(
                    gateway_id = gateway,
                    name = name(gateway),
                    "Gateway disabled or deleted: taken out of DNS"
                );
                ("dns.gateway.remove", gateway, json!({}))
            }
        };
        self.audit(action, &format!("gateway:{id} {}", name(id)), detail)
            .await;
    }

    async fn audit(&self, action: &str, target: &str, detail: serde_json::Value) {
        let actor = Actor {
            user_id: None,
            email: None,
        };
        if let Err(e) = self.store.audit(&actor, action, target, &detail).await {
            tracing::warn!(error = %e, %action, "could not write the audit log");
        }
    }
}

fn written_values(content: &str) -> serde_json::Value {
    serde_json::from_str(content).unwrap_or(serde_json::Value::Null)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
