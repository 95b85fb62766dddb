//! The DNS zones Control manages: each one names a provider and its config. The config's
//! write-only fields (the TSIG secret, the API key or token) are sealed with the data directory's
//! key ([`Sealer`]) and bound to the zone's name; everything else is stored as given and shown.
//!
//! [`Zones`] is the one door to them for the API, the record reconciler and the ACME client:
//! create/update check the config by building the provider (nothing is stored otherwise), and
//! [`zone_of`] finds the managed zone a hostname lies in (the longest match wins).
//! Writes to DNS go through [`Zones::write_owned`] and [`Zones::delete_owned`] (see `ledger`):
//! Control only ever changes the records it wrote.

mod ledger;

pub use ledger::{content, record_type, OwnedError};

use crate::dns::{DnsError, Provider};
use crate::secrets::{SealError, Sealer};
use crate::store::{DnsZoneRow, Store, StoreError};
use crate::validate;
use serde_json::{Map, Value};
use std::sync::Arc;

/// The providers a zone may name, with their write-only config fields.
pub const PROVIDERS: &[(&str, &[&str])] = &[
    ("rfc2136", &["key_secret"]),
    ("powerdns", &["api_key"]),
    ("cloudflare", &["api_token"]),
];
/// The largest config accepted (JSON bytes): settings, not data.
const MAX_CONFIG_BYTES: usize = 8 * 1024;

/// Why a zone could not be created, changed or used.
#[derive(Debug, thiserror::Error)]
pub enum ZoneError {
    /// Bad input: nothing was stored.
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Sealed(#[from] SealError),
}

impl From<DnsError> for ZoneError {
    fn from(e: DnsError) -> Self {
        ZoneError::Invalid(e.to_string())
    }
}

/// A managed zone, opened: its row and a provider ready to use.
#[derive(Debug, Clone)]
pub struct OpenZone {
    pub row: DnsZoneRow,
    pub provider: Provider,
}

/// Managed zones: the store plus the key their secrets are sealed with. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Zones {
    store: Store,
    sealer: Arc<Sealer>,
}

impl Zones {
    pub fn new(store: Store, sealer: Arc<Sealer>) -> Self {
        Self { store, sealer }
    }

    /// Adds `zone` served by `provider` with `config` (which must carry its write-only fields).
    pub async fn create(
        &self,
        zone: &str,
        provider: &str,
        config: Value,
    ) -> Result<DnsZoneRow, ZoneError> {
        let zone = zone_name(zone)?;
        let (public, secret) = split(provider, config)?;
        Provider::from_config(provider, join(public.clone(), secret.clone()))?;
        let sealed = self.seal(&zone, &secret);
        Ok(self
            .store
            .create_dns_zone(&zone, provider, &Value::Object(public).to_string(), &sealed)
            .await?)
    }

    /// Changes a zone's provider and/or config. Fields absent from `config` keep their value
    /// (so a secret need not be sent again) unless the provider changes, which needs a whole
    /// config; a field set to `null` is removed.
    pub async fn update(
        &self,
        id: i64,
        provider: Option<&str>,
        config: Option<Value>,
    ) -> Result<DnsZoneRow, ZoneError> {
        let row = self.store.get_dns_zone(id).await?;
        let provider = provider.unwrap_or(&row.provider);
        let merged = match config {
            Some(patch) if provider == row.provider => {
                let mut current = self.full_config(&row)?;
                let Value::Object(patch) = patch else {
                    return Err(ZoneError::Invalid("config must be a JSON object".into()));
                };
                for (key, value) in patch {
                    if value.is_null() {
                        current.remove(&key);
                    } else {
                        current.insert(key, value);
                    }
                }
                Value::Object(current)
            }
            Some(whole) => whole,
            None if provider == row.provider => Value::Object(self.full_config(&row)?),
            None => {
                return Err(ZoneError::Invalid(format!(
                    "changing the provider to {provider} needs its whole config"
                )))
            }
        };
        let (public, secret) = split(provider, merged)?;
        Provider::from_config(provider, join(public.clone(), secret.clone()))?;
        let sealed = self.seal(&row.zone, &secret);
        Ok(self
            .store
            .update_dns_zone(id, provider, &Value::Object(public).to_string(), &sealed)
            .await?)
    }

    pub async fn list(&self) -> Result<Vec<DnsZoneRow>, ZoneError> {
        Ok(self.store.list_dns_zones().await?)
    }

    pub async fn get(&self, id: i64) -> Result<DnsZoneRow, ZoneError> {
        Ok(self.store.get_dns_zone(id).await?)
    }

    /// A row's provider, built from its config and its unsealed secret.
    pub fn open_row(&self, row: DnsZoneRow) -> Result<OpenZone, ZoneError> {
        let provider =
            Provider::from_config(&row.provider, Value::Object(self.full_config(&row)?))?;
        Ok(OpenZone { row, provider })
    }

    /// The names of a provider's write-only fields that this zone has set (for the API's view).
    pub fn secret_fields(row: &DnsZoneRow) -> &'static [&'static str] {
        secret_fields(&row.provider).unwrap_or(&[])
    }

    fn full_config(&self, row: &DnsZoneRow) -> Result<Map<String, Value>, ZoneError> {
        let public: Map<String, Value> = serde_json::from_str(&row.config)
            .map_err(|e| ZoneError::Invalid(format!("stored config of {}: {e}", row.zone)))?;
        let plain = self.sealer.open(&context(&row.zone), &row.secret)?;
        let secret: Map<String, Value> = serde_json::from_slice(&plain)
            .map_err(|e| ZoneError::Invalid(format!("stored secret of {}: {e}", row.zone)))?;
        Ok(join_maps(public, secret))
    }

    fn seal(&self, zone: &str, secret: &Map<String, Value>) -> Vec<u8> {
        let plain = Value::Object(secret.clone()).to_string();
        self.sealer.seal(&context(zone), plain.as_bytes())
    }
}

/// The stable name of a provider error's kind, as a zone's check reports it.
pub fn error_kind(e: &DnsError) -> &'static str {
    match e {
        DnsError::Unreachable { .. } => "unreachable",
        DnsError::Auth(_) => "auth",
        DnsError::ZoneNotFound { .. } => "zone_not_found",
        DnsError::Refused(_) => "refused",
        DnsError::BadResponse(_) => "bad_response",
        DnsError::Invalid(_) => "invalid",
    }
}

/// The sealing context binds a secret to its zone's name.
fn context(zone: &str) -> String {
    format!("dns-zone:{zone}")
}

/// A zone's name, normalised: a hostname without wildcard (two labels at least).
pub fn zone_name(input: &str) -> Result<String, ZoneError> {
    validate::hostname(input).map_err(|e| ZoneError::Invalid(format!("zone: {}", e.0)))
}

fn secret_fields(provider: &str) -> Option<&'static [&'static str]> {
    PROVIDERS
        .iter()
        .find(|(name, _)| *name == provider)
        .map(|(_, fields)| *fields)
}

/// The config split into what is shown and what is sealed; checks the provider and the size.
/// A config's shown part and its sealed part.
type Split = (Map<String, Value>, Map<String, Value>);

fn split(provider: &str, config: Value) -> Result<Split, ZoneError> {
    let Some(fields) = secret_fields(provider) else {
        let names: Vec<&str> = PROVIDERS.iter().map(|(n, _)| *n).collect();
        return Err(ZoneError::Invalid(format!(
            "unknown DNS provider {provider:?}: use one of {}",
            names.join(", ")
        )));
    };
    if config.to_string().len() > MAX_CONFIG_BYTES {
        return Err(ZoneError::Invalid(format!(
            "config is larger than {MAX_CONFIG_BYTES} bytes"
        )));
    }
    let Value::Object(mut public) = config else {
        return Err(ZoneError::Invalid("config must be a JSON object".into()));
    };
    let mut secret = Map::new();
    for field in fields {
        if let Some(value) = public.remove(*field) {
            secret.insert((*field).to_string(), value);
        }
    }
    Ok((public, secret))
}

fn join(public: Map<String, Value>, secret: Map<String, Value>) -> Value {
    Value::Object(join_maps(public, secret))
}

fn join_maps(mut public: Map<String, Value>, secret: Map<String, Value>) -> Map<String, Value> {
    public.extend(secret);
    public
}

/// The zone among `zones` that `hostname` lies in: the longest suffix, label-wise. A leading
/// `*.` is ignored (a wildcard's records live in its parent's zone).
pub fn zone_of<'a>(zones: &'a [DnsZoneRow], hostname: &str) -> Option<&'a DnsZoneRow> {
    let host = hostname
        .trim_end_matches('.')
        .trim_start_matches("*.")
        .to_ascii_lowercase();
    zones
        .iter()
        .filter(|z| host == z.zone || host.ends_with(&format!(".{}", z.zone)))
        .max_by_key(|z| z.zone.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    async fn zones() -> Zones {
        let store = Store::open("sqlite::memory:").await.unwrap();
        Zones::new(store, Arc::new(Sealer::ephemeral()))
    }

    fn rfc2136(secret: &str) -> Value {
        json!({"server": "127.0.0.1:53", "key_name": "kakuremichi", "key_algorithm": "hmac-sha256",
               "key_secret": secret})
    }

    #[tokio::test]
    async fn secrets_are_sealed_and_kept_across_updates() {
        let zones = zones().await;
        let row = zones
            .create(
                "Example.COM.",
                "rfc2136",
                rfc2136("c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0"),
            )
            .await
            .unwrap();
        assert_eq!(row.zone, "example.com");
        assert!(
            !row.config.contains("c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0"),
            "{}",
            row.config
        );
        assert!(!String::from_utf8_lossy(&row.secret).contains("c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0"));
        assert_eq!(Zones::secret_fields(&row), &["key_secret"]);
        // A patch without the secret keeps it; the provider still opens.
        let row = zones
            .update(row.id, None, Some(json!({"server": "127.0.0.1:5353"})))
            .await
            .unwrap();
        assert!(row.config.contains("5353"));
        let open = zones.open_row(zones.get(row.id).await.unwrap()).unwrap();
        assert!(matches!(open.provider, Provider::Rfc2136(_)));
        assert!(!format!("{open:?}").contains("c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0"));
        // Removing a required field is refused and changes nothing.
        let err = zones
            .update(row.id, None, Some(json!({"key_secret": null})))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("key_secret"), "{err}");
        assert!(zones.open_row(zones.get(row.id).await.unwrap()).is_ok());
    }

    #[tokio::test]
    async fn bad_input_stores_nothing() {
        let zones = zones().await;
        for (zone, provider, config, says) in [
            (
                "example.com",
                "bind",
                rfc2136("c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0"),
                "unknown DNS provider",
            ),
            (
                "*.example.com",
                "rfc2136",
                rfc2136("c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0"),
                "wildcard",
            ),
            (
                "com",
                "rfc2136",
                rfc2136("c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0"),
                "zone",
            ),
            ("example.com", "rfc2136", json!([1]), "JSON object"),
            (
                "example.com",
                "rfc2136",
                json!({"server": "x"}),
                "rfc2136 config",
            ),
            (
                "example.com",
                "rfc2136",
                json!({"pad": "x".repeat(9000)}),
                "larger than",
            ),
        ] {
            let err = zones.create(zone, provider, config).await.unwrap_err();
            assert!(matches!(err, ZoneError::Invalid(_)), "{err:?}");
            assert!(err.to_string().contains(says), "{zone} {provider}: {err}");
        }
        assert!(zones.list().await.unwrap().is_empty());
        zones
            .create(
                "example.com",
                "rfc2136",
                rfc2136("c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0"),
            )
            .await
            .unwrap();
        let dup = zones
            .create(
                "example.com",
                "rfc2136",
                rfc2136("c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0"),
            )
            .await
            .unwrap_err();
        assert!(matches!(dup, ZoneError::Store(StoreError::Conflict(_))));
    }

    #[tokio::test]
    async fn the_longest_zone_wins() {
        let zones = zones().await;
        zones
            .create(
                "example.com",
                "rfc2136",
                rfc2136("c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0"),
            )
            .await
            .unwrap();
        zones
            .create(
                "apps.example.com",
                "rfc2136",
                rfc2136("c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0"),
            )
            .await
            .unwrap();
        let zone_of = |h: &'static str| {
            let zones = zones.clone();
            async move {
                let rows = zones.list().await.unwrap();
                zone_of(&rows, h).map(|z| z.zone.clone())
            }
        };
        assert_eq!(
            zone_of("www.example.com").await.as_deref(),
            Some("example.com")
        );
        assert_eq!(
            zone_of("a.apps.example.com").await.as_deref(),
            Some("apps.example.com")
        );
        assert_eq!(
            zone_of("*.apps.example.com").await.as_deref(),
            Some("apps.example.com")
        );
        assert_eq!(
            zone_of("apps.example.com.").await.as_deref(),
            Some("apps.example.com")
        );
        assert_eq!(zone_of("badexample.com").await, None);
        assert_eq!(zone_of("example.org").await, None);
    }
}
