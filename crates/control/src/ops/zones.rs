//! DNS zones (admins only): add, change, delete (after removing the records Control wrote in
//! them) and check. The audit entries carry the zone's settings without its write-only fields.

use super::{audit, require_admin};
use crate::app::AppState;
use crate::dns::{DnsError, DnsProvider as _, OP_TIMEOUT};
use crate::error::{about, ApiError};
use crate::store::{DnsZoneRow, UserRow};
use crate::zones::{error_kind, OwnedError, ZoneError};
use axum::http::StatusCode;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// A zone error as the API answers it: bad input is a 400 with the precise message.
fn api_error(e: ZoneError) -> ApiError {
    match e {
        ZoneError::Invalid(m) => ApiError::bad_request(m),
        ZoneError::Store(e) => about("DNS zone")(e),
        ZoneError::Sealed(e) => {
            tracing::error!(error = %e, "cannot use a DNS zone's stored credentials");
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
        }
    }
}

/// The row's settings (no write-only field: those are sealed apart), for the audit log.
fn settings(row: &DnsZoneRow) -> Value {
    serde_json::from_str(&row.config).unwrap_or(Value::Null)
}

/// A zone added or changed may be what failed certificates lacked: they are tried again now
/// rather than after their backoff (order caps still apply).
async fn retry_acme_after_zone_change(state: &AppState) {
    match state.store.retry_failed_acme_now().await {
        Ok(0) => {}
        Ok(n) => tracing::info!(
            certificates = n,
            "failed ACME certificates tried again after the DNS zone change"
        ),
        Err(e) => tracing::warn!(error = %e, "cannot schedule the failed certificates again"),
    }
}

fn target(row: &DnsZoneRow) -> String {
    format!("dns_zone:{} {}", row.id, row.zone)
}

pub async fn create(
    state: &AppState,
    user: &UserRow,
    zone: &str,
    provider: &str,
    config: Value,
) -> Result<DnsZoneRow, ApiError> {
    require_admin(user, "manage DNS zones")?;
    let row = state
        .zones
        .create(zone, provider, config)
        .await
        .map_err(api_error)?;
    retry_acme_after_zone_change(state).await;
    state.hub.changed();
    state.dns_records.poke();
    tracing::info!(zone_id = row.id, zone = %row.zone, provider = %row.provider, "DNS zone added");
    let detail = json!({"provider": row.provider, "config": settings(&row)});
    audit(state, Some(user), "dns.zone.create", target(&row), detail).await;
    Ok(row)
}

/// Changes the provider and/or the config; fields absent from `config` keep their value.
pub async fn update(
    state: &AppState,
    user: &UserRow,
    id: i64,
    provider: Option<&str>,
    config: Option<Value>,
) -> Result<DnsZoneRow, ApiError> {
    require_admin(user, "manage DNS zones")?;
    // Which fields the caller changed (names only: a value may be a secret).
    let fields: Vec<String> = match &config {
        Some(Value::Object(m)) => m.keys().cloned().collect(),
        _ => Vec::new(),
    };
    let row = state
        .zones
        .update(id, provider, config)
        .await
        .map_err(api_error)?;
    retry_acme_after_zone_change(state).await;
    state.hub.changed();
    state.dns_records.poke();
    let detail = json!({"provider": row.provider, "config": settings(&row), "changed": fields});
    audit(state, Some(user), "dns.zone.update", target(&row), detail).await;
    Ok(row)
}

pub async fn list(state: &AppState, user: &UserRow) -> Result<Vec<DnsZoneRow>, ApiError> {
    require_admin(user, "see DNS zones")?;
    state.zones.list().await.map_err(api_error)
}

pub async fn get(state: &AppState, user: &UserRow, id: i64) -> Result<DnsZoneRow, ApiError> {
    require_admin(user, "see DNS zones")?;
    state.zones.get(id).await.map_err(api_error)
}

/// Removes the records Control wrote in the zone, then the zone. When the provider fails the zone
/// stays (502, saying what failed) unless `keep_records`: then the records stay in DNS.
pub async fn delete(
    state: &AppState,
    user: &UserRow,
    id: i64,
    keep_records: bool,
) -> Result<(), ApiError> {
    require_admin(user, "manage DNS zones")?;
    let row = state.zones.get(id).await.map_err(api_error)?;
    let removed = match state.zones.open_row(row.clone()) {
        Ok(open) => match state.zones.remove_all_owned(&open).await {
            Ok(n) => Some(n),
            Err(e) if keep_records => {
                tracing::warn!(zone = %row.zone, error = %e,
                    "deleting a DNS zone and leaving its records in DNS, as asked");
                None
            }
            Err(OwnedError::Store(e)) => return Err(e.into()),
            Err(e) => {
                return Err(ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    format!(
                        "the records kakuremichi wrote in {} could not be removed, so the zone \
                         was kept: {e}. Fix the provider's settings, or delete with \
                         ?keep_records=true to leave those records in DNS",
                        row.zone
                    ),
                ))
            }
        },
        Err(_) if keep_records => None,
        Err(e) => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!(
                    "the provider of {} cannot be opened to remove the records kakuremichi wrote \
                     ({e}); delete with ?keep_records=true to leave them in DNS",
                    row.zone
                ),
            ))
        }
    };
    state
        .store
        .delete_dns_zone(id)
        .await
        .map_err(about("DNS zone"))?;
    state.hub.changed();
    state.dns_records.poke();
    tracing::info!(zone_id = id, zone = %row.zone, "DNS zone deleted");
    let detail = json!({"provider": row.provider, "records_removed": removed,
                        "keep_records": keep_records});
    audit(state, Some(user), "dns.zone.delete", target(&row), detail).await;
    Ok(())
}

/// What a zone's check found, and how long it took.
pub struct Checked {
    pub row: DnsZoneRow,
    pub result: Result<(), DnsError>,
    pub elapsed: Duration,
}

/// Asks the zone's provider whether the zone is served and the credentials may change it.
pub async fn check(state: &AppState, user: &UserRow, id: i64) -> Result<Checked, ApiError> {
    require_admin(user, "check DNS zones")?;
    let row = state.zones.get(id).await.map_err(api_error)?;
    let start = Instant::now();
    let result = match state.zones.open_row(row.clone()) {
        Ok(open) => {
            // The provider bounds each operation; this only guards against a provider that
            // would not.
            match tokio::time::timeout(OP_TIMEOUT * 2, open.provider.check(&row.zone)).await {
                Ok(r) => r,
                Err(_) => Err(DnsError::Unreachable {
                    address: row.zone.clone(),
                    reason: format!("no answer within {:?}", OP_TIMEOUT * 2),
                }),
            }
        }
        Err(e) => Err(DnsError::Invalid(e.to_string())),
    };
    let elapsed = start.elapsed();
    let detail = match &result {
        Ok(()) => json!({"ok": true}),
        Err(e) => json!({"ok": false, "kind": error_kind(e),
                         "message": e.to_string()}),
    };
    audit(state, Some(user), "dns.zone.check", target(&row), detail).await;
    Ok(Checked {
        row,
        result,
        elapsed,
    })
}
