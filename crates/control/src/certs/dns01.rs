//! DNS-01 (RFC 8555 §8.4): the CA looks for a TXT record at `_acme-challenge.<name>`, which
//! Control writes through the provider of the managed zone it lies in — or, when the user
//! delegated it with a CNAME (`_acme-challenge.example.com CNAME example.com.acme.example.net`,
//! for a main zone Control holds no token for), at the CNAME's target in another managed zone.
//!
//! An order first finds where its record goes ([`Dns01::target`], before the CA is asked for
//! anything), writes it through the zone ledger (purpose `acme`, so only ours is ever touched),
//! waits until every authoritative server of the zone (or the zone's own `resolver`) answers it,
//! and only then asks the CA to validate. The record is deleted however the order ends, and at
//! start-up any left by a Control that stopped mid-order. Orders that share a record name take
//! turns, so one never deletes another's value.

use super::policy::Failure;
use super::settings::AcmeConfig;
use crate::dns::lookup::{self, Ask};
use crate::dns::{RecordType, Records, RrSet};
use crate::store::Store;
use crate::zones::{self, OpenZone, OwnedError, Zones};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::time::Instant;

/// The ledger's purpose for DNS-01 records.
pub const PURPOSE: &str = "acme";
/// TTL of the TXT records: short, so a retry's new value is not hidden behind a cached old one.
const TTL: u32 = 60;
/// How often the propagation check asks again.
const POLL: Duration = Duration::from_secs(1);

/// DNS-01 for one Control: the managed zones and how to look at DNS from outside.
pub struct Dns01 {
    store: Store,
    zones: Zones,
    resolver: Option<String>,
    timeout: Duration,
    /// One lock per record name, so two orders never write the same name at once.
    names: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// Where one order's TXT record goes.
pub struct Target {
    pub zone: OpenZone,
    /// The TXT record's name: `_acme-challenge.<base>`, or the target of its CNAME.
    pub name: String,
    /// `_acme-challenge.<base>` when it is delegated by a CNAME to `name`.
    pub via: Option<String>,
    _turn: tokio::sync::OwnedMutexGuard<()>,
}

impl Dns01 {
    pub fn new(store: Store, zones: Zones, config: &AcmeConfig) -> Self {
        Self {
            store,
            zones,
            resolver: config.dns_resolver.clone(),
            timeout: config.dns_propagation_timeout,
            names: Mutex::new(HashMap::new()),
        }
    }

    /// Where the TXT record for `host` (a name or a wildcard) goes; waits for any other order
    /// using the same record name to end.
    pub async fn target(&self, host: &str) -> Result<Target, Failure> {
        let base = host.trim_start_matches("*.");
        let challenge = format!("_acme-challenge.{base}");
        let rows = self.zones.list().await.map_err(internal)?;
        let (row, name, via) = match zones::zone_of(&rows, &challenge) {
            Some(row) => (row.clone(), challenge, None),
            None => {
                let resolver = self.resolver()?;
                let delegated = lookup::cname(&resolver, &challenge, Ask::Resolver).await;
                match delegated {
                    Ok(Some(target)) => match zones::zone_of(&rows, &target) {
                        Some(row) => (row.clone(), target, Some(challenge)),
                        None => {
                            return Err(dns01(format!(
                                "{challenge} is a CNAME to {target}, which lies in no DNS zone \
                                 Control manages: add that zone on the DNS page (or point the \
                                 CNAME into a managed zone)"
                            )))
                        }
                    },
                    Ok(None) => return Err(no_zone(&challenge, base, None)),
                    Err(e) => return Err(no_zone(&challenge, base, Some(&e.to_string()))),
                }
            }
        };
        let zone = self.zones.open_row(row).map_err(internal)?;
        let turn = self.turn(&name).await;
        Ok(Target {
            zone,
            name,
            via,
            _turn: turn,
        })
    }

    async fn turn(&self, name: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut names = self.names.lock().unwrap_or_else(PoisonError::into_inner);
            // Forget the locks nobody holds or waits for, so the map stays small.
            names.retain(|_, l| Arc::strong_count(l) > 1);
            names.entry(name.to_string()).or_default().clone()
        };
        lock.lock_owned().await
    }

    /// Writes `values` at the target and waits until the zone's servers answer them.
    pub async fn publish(&self, target: &Target, values: &[String]) -> Result<(), Failure> {
        let rrset = RrSet {
            name: target.name.clone(),
            ttl: TTL,
            records: Records::Txt(values.to_vec()),
        };
        let zone = &target.zone.row.zone;
        match self.zones.write_owned(&target.zone, &rrset, PURPOSE).await {
            Ok(_) => {}
            Err(OwnedError::NotOurs { name, .. }) => {
                return Err(dns01(format!(
                    "a TXT record at {name} exists that kakuremichi did not write; delete it at \
                     your DNS provider so Control can answer the CA there"
                )))
            }
            Err(OwnedError::Dns(e)) => {
                return Err(dns01(format!(
                    "cannot write the TXT record {} in zone {zone}: {e}",
                    target.name
                )))
            }
            Err(OwnedError::Store(e)) => return Err(internal(e)),
        }
        tracing::info!(name = %target.name, %zone, via = ?target.via, "DNS-01 record written; waiting until it is visible");
        self.wait_visible(target, values).await
    }

    /// Waits until every server that answers for the target's zone serves every value.
    async fn wait_visible(&self, target: &Target, values: &[String]) -> Result<(), Failure> {
        let zone = &target.zone.row.zone;
        let (servers, ask) = match target.zone.provider.resolver() {
            Some(resolver) => (vec![resolver.to_string()], Ask::Resolver),
            None => (self.authoritative(zone).await?, Ask::Authoritative),
        };
        let deadline = Instant::now() + self.timeout;
        let mut waiting: Vec<String> = servers;
        loop {
            let mut last = String::new();
            let mut still = Vec::new();
            for server in waiting {
                match lookup::txt(&server, &target.name, ask).await {
                    Ok(found) if values.iter().all(|v| found.contains(v)) => {}
                    Ok(found) => {
                        last = format!("{server} answers {found:?}");
                        still.push(server);
                    }
                    Err(e) => {
                        last = format!("{server}: {e}");
                        still.push(server);
                    }
                }
            }
            if still.is_empty() {
                return Ok(());
            }
            if Instant::now() + POLL > deadline {
                return Err(dns01(format!(
                    "the TXT record {} was written in zone {zone} but is not visible after {} s \
                     ({last}); check that the zone's servers serve it (or set the zone's \
                     resolver), or raise KAKUREMICHI_ACME_DNS_PROPAGATION_TIMEOUT",
                    target.name,
                    self.timeout.as_secs()
                )));
            }
            waiting = still;
            tokio::time::sleep(POLL).await;
        }
    }

    /// `ip:53` of every name server of `zone`, as the resolver sees them.
    async fn authoritative(&self, zone: &str) -> Result<Vec<String>, Failure> {
        let resolver = self.resolver()?;
        let failed = |e: &dyn std::fmt::Display| {
            dns01(format!(
                "cannot find the name servers of zone {zone} through the resolver {resolver} \
                 ({e}); set the zone's \"resolver\" to a server that serves it"
            ))
        };
        let names = lookup::nameservers(&resolver, zone)
            .await
            .map_err(|e| failed(&e))?;
        let mut servers = Vec::new();
        for name in &names {
            let addresses = lookup::addresses(&resolver, name)
                .await
                .map_err(|e| failed(&e))?;
            servers.extend(
                addresses
                    .into_iter()
                    .map(|ip| (ip, 53).into())
                    .map(|a: std::net::SocketAddr| a.to_string()),
            );
        }
        if servers.is_empty() {
            return Err(failed(&format!("its NS records {names:?} give no address")));
        }
        Ok(servers)
    }

    fn resolver(&self) -> Result<String, Failure> {
        match &self.resolver {
            Some(r) => Ok(r.clone()),
            None => lookup::system_resolver().map_err(|e| dns01(e.to_string())),
        }
    }

    /// Deletes the target's record (if it still holds what we wrote); a failure is logged, and
    /// the record stays in the ledger for the start-up clean-up.
    pub async fn clean_up(&self, target: Target) {
        let zone = &target.zone;
        match self
            .zones
            .delete_owned(zone, &target.name, RecordType::Txt)
            .await
        {
            Ok(_) => {
                tracing::info!(name = %target.name, zone = %zone.row.zone, "DNS-01 record removed")
            }
            Err(e) => {
                tracing::warn!(name = %target.name, zone = %zone.row.zone, error = %e, "cannot remove the DNS-01 record; it is retried when Control starts")
            }
        }
    }

    /// Removes the DNS-01 records a previous run left (it stopped in the middle of an order).
    pub async fn clean_up_leftovers(&self) {
        let rows = match self.store.list_dns_records(None).await {
            Ok(rows) => rows,
            Err(e) => {
                tracing::error!(error = %e, "cannot list the DNS-01 records to clean up");
                return;
            }
        };
        let zones = self.zones.list().await.unwrap_or_default();
        for row in rows.into_iter().filter(|r| r.purpose == PURPOSE) {
            let Some(zone) = zones.iter().find(|z| z.id == row.zone_id) else {
                continue;
            };
            let Ok(zone) = self.zones.open_row(zone.clone()) else {
                continue;
            };
            if let Err(e) = self
                .zones
                .delete_owned(&zone, &row.name, RecordType::Txt)
                .await
            {
                tracing::warn!(name = %row.name, error = %e, "cannot remove a leftover DNS-01 record");
            }
        }
    }
}

fn no_zone(challenge: &str, base: &str, lookup_error: Option<&str>) -> Failure {
    let why = lookup_error
        .map(|e| format!(" (looking for a CNAME there failed: {e})"))
        .unwrap_or_default();
    dns01(format!(
        "{challenge} lies in no DNS zone Control manages{why}: add the zone of {base} on the DNS \
         page, or delegate it with a CNAME from {challenge} to a name in a managed zone"
    ))
}

fn dns01(detail: String) -> Failure {
    Failure::Dns01 { detail }
}

fn internal(e: impl std::fmt::Display) -> Failure {
    Failure::Internal {
        detail: e.to_string(),
    }
}
