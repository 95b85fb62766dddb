//! A managed DNS zone as people see it: its settings without the write-only fields (only their
//! names, under `secrets`), and the result of its "test connection".

use crate::dns::DnsError;
use crate::store::DnsZoneRow;
use crate::zones::{error_kind, Zones};
use serde::Serialize;
use std::time::Duration;

/// A zone as the API shows it. The values of the write-only fields are never shown.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ZoneView {
    id: i64,
    /// The zone's name, lowercase, without the final dot.
    #[schema(example = "example.com")]
    zone: String,
    #[schema(example = "rfc2136")]
    provider: String,
    /// The provider's settings as stored, without the write-only fields.
    #[schema(value_type = Object)]
    config: serde_json::Value,
    /// The names of the write-only fields that are set (e.g. `["key_secret"]`).
    secrets: Vec<&'static str>,
    created_at: String,
    updated_at: String,
}

pub fn view(row: DnsZoneRow) -> ZoneView {
    let secrets = Zones::secret_fields(&row).to_vec();
    // The stored config is an object written by `zones`; an unreadable one is shown as empty.
    let config = serde_json::from_str(&row.config)
        .unwrap_or_else(|_| serde_json::Value::Object(Default::default()));
    ZoneView {
        id: row.id,
        zone: row.zone,
        provider: row.provider,
        config,
        secrets,
        created_at: row.created_at,
        updated_at: row.updated_at,
    }
}

/// What a zone's "test connection" found.
#[derive(Serialize, utoipa::ToSchema)]
pub struct CheckView {
    /// The zone is served and the credentials may change it.
    ok: bool,
    zone: String,
    provider: String,
    /// What failed; `null` when `ok`.
    error: Option<CheckError>,
    /// How long the check took.
    elapsed_ms: u64,
}

/// Why a check failed: a stable `kind` and the provider's own words.
#[derive(Serialize, utoipa::ToSchema)]
pub struct CheckError {
    #[schema(value_type = CheckErrorKind)]
    kind: &'static str,
    /// What failed, e.g. the server's TSIG error (`BADSIG`, `BADKEY`).
    message: String,
}

/// The kinds of failure a check reports (`zones::error_kind` names them).
#[derive(utoipa::ToSchema)]
#[schema(rename_all = "snake_case")]
#[allow(dead_code)] // Never built: `utoipa` only reads its definition.
pub enum CheckErrorKind {
    /// Nothing answered at the server's address (refused, unroutable, or silent).
    Unreachable,
    /// The server did not accept the credentials (TSIG key, API key or token).
    Auth,
    /// The server does not serve this zone.
    ZoneNotFound,
    /// The credentials are good but the server's policy forbids changes.
    Refused,
    /// The server answered something unusable.
    BadResponse,
    /// The settings are invalid (nothing was sent).
    Invalid,
}

pub fn check_view(row: &DnsZoneRow, result: &Result<(), DnsError>, elapsed: Duration) -> CheckView {
    CheckView {
        ok: result.is_ok(),
        zone: row.zone.clone(),
        provider: row.provider.clone(),
        error: result.as_ref().err().map(|e| CheckError {
            kind: error_kind(e),
            message: e.to_string(),
        }),
        elapsed_ms: u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
    }
}
