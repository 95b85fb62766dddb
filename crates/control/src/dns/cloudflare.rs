//! The `cloudflare` provider: Cloudflare's API v4 with an API token (`Authorization: Bearer`),
//! for one zone named by its Zone ID. An RRset is the records of one name and type; a replace is
//! one `POST /zones/{id}/dns_records/batch` that deletes the old records and posts the new ones
//! (Cloudflare runs a batch in one transaction: deletes first, then posts), so a reader never sees
//! the name without records. Every answer is read with a size cap, every listing with a page cap,
//! every operation (however many requests it takes) is bounded by [`OP_TIMEOUT`], and redirects
//! are not followed.
//!
//! Config (`api_token` is write-only, never printed):
//! `{"api_token": "…", "zone_id": "…32 hex…"}`, optional `resolver` (`host:port`) and
//! `api_url` (default [`DEFAULT_API_URL`]; for tests and API proxies).
//!
//! Records Control writes are never proxied (`"proxied": false`): the Gateways terminate TLS.
//! Cloudflare's TTLs are 60 s to 1 day (or 1, "automatic" = 300 s): a TTL outside is clamped.
//! TXT values are written in the quoted form Cloudflare's API documents for TXT content
//! (RFC 1035 character-strings of at most 255 bytes, `"…" "…"`) and read back in either form.
//!
//! Tested against a local server that checks every request against Cloudflare's published API
//! shapes (`tests/dns_cloudflare.rs`, a contract test), not against Cloudflare itself.

mod api;

use super::exchange::unreachable;
use super::{
    check_resolver, check_rrset, name_in_zone, text, DnsError, DnsProvider, RecordType, Records,
    RrSet, OP_TIMEOUT,
};
use api::{bad, Envelope};
use serde::Deserialize;
use serde_json::json;
use std::sync::{Arc, OnceLock};

/// Cloudflare's API, unless the config says otherwise.
pub const DEFAULT_API_URL: &str = "https://api.cloudflare.com/client/v4";
const ZONES_PER_PAGE: u32 = 50;
const RECORDS_PER_PAGE: u32 = 100;
/// Cloudflare's TTL bounds for a zone that is not Enterprise, and what its "automatic" (1) means.
const MIN_TTL: u32 = 60;
const MAX_TTL: u32 = 86_400;
const AUTO_TTL: u32 = 300;
/// The most operations one batch may carry on Cloudflare's Free plan.
const MAX_BATCH: usize = 200;
/// "Record does not exist": a delete that lost a race with another delete.
const NO_RECORD: i64 = 81044;

/// `cloudflare`'s config, exactly as a zone's `config` JSON carries it.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloudflareConfig {
    /// An API token with Zone:Read and DNS:Edit on this zone.
    pub api_token: String,
    /// The zone's Zone ID (32 hex digits, on the zone's Overview page).
    pub zone_id: String,
    /// Where the propagation check will look (`host:port`; used by DNS-01).
    #[serde(default)]
    pub resolver: Option<String>,
    /// The API's base URL; only for tests and API proxies.
    #[serde(default = "default_api_url")]
    pub api_url: String,
}

fn default_api_url() -> String {
    DEFAULT_API_URL.into()
}

impl std::fmt::Debug for CloudflareConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CloudflareConfig")
            .field("api_token", &"***")
            .field("zone_id", &self.zone_id)
            .field("resolver", &self.resolver)
            .field("api_url", &self.api_url)
            .finish()
    }
}

#[derive(Deserialize)]
struct Zone {
    name: String,
    #[serde(default)]
    status: String,
}

#[derive(Deserialize)]
struct ApiRecord {
    id: String,
    name: String,
    #[serde(rename = "type")]
    kind: String,
    content: String,
    ttl: u32,
    #[serde(default)]
    proxied: bool,
}

/// One zone at Cloudflare, reached through its API with a token.
#[derive(Debug, Clone)]
pub struct Cloudflare {
    config: CloudflareConfig,
    base: url::Url,
    http: reqwest::Client,
    /// The zone's name at Cloudflare, once read: every write checks it is the zone asked for.
    zone_name: Arc<OnceLock<String>>,
}

impl Cloudflare {
    /// Where DNS-01's propagation check looks, when the zone's config names a server.
    pub fn resolver(&self) -> Option<&str> {
        self.config.resolver.as_deref()
    }

    /// Checks `config` (nothing is sent).
    pub fn new(config: CloudflareConfig) -> Result<Self, DnsError> {
        let invalid = |m: String| DnsError::Invalid(m);
        let token = &config.api_token;
        if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(invalid(
                "api_token must be a Cloudflare API token (no spaces; create one under \
                 My Profile → API Tokens)"
                    .into(),
            ));
        }
        let id = &config.zone_id;
        if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(invalid(format!(
                "zone_id {id:?} must be the zone's Zone ID (32 hex digits, on its Overview page)"
            )));
        }
        check_resolver(config.resolver.as_deref())?;
        let mut base = url::Url::parse(config.api_url.trim())
            .map_err(|e| invalid(format!("api_url {:?}: {e}", config.api_url)))?;
        if !matches!(base.scheme(), "http" | "https") || base.host_str().is_none() {
            return Err(invalid(format!(
                "api_url {:?} must be http(s)://host[:port]/path",
                config.api_url
            )));
        }
        if !base.path().ends_with('/') {
            base.set_path(&format!("{}/", base.path()));
        }
        let http = reqwest::Client::builder()
            .timeout(OP_TIMEOUT)
            .connect_timeout(OP_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| invalid(format!("HTTP client: {e}")))?;
        let zone_name = Arc::default();
        Ok(Self {
            config,
            base,
            http,
            zone_name,
        })
    }

    /// `base/segments...` with each segment escaped.
    fn url(&self, segments: &[&str]) -> Result<url::Url, DnsError> {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .map_err(|()| DnsError::Invalid("api_url cannot be a base URL".into()))?
            .pop_if_empty()
            .extend(segments);
        Ok(url)
    }

    fn zone_url(&self, rest: &[&str]) -> Result<url::Url, DnsError> {
        let mut segments = vec!["zones", self.config.zone_id.as_str()];
        segments.extend(rest);
        self.url(&segments)
    }

    /// The zone `zone_id` names, read from Cloudflare, checked to be `zone`.
    async fn fetch_zone(&self, zone: &str) -> Result<(), DnsError> {
        let request = self.http.get(self.zone_url(&[])?);
        let envelope: Envelope<Zone> = self.expect(zone, false, request).await?;
        let found = envelope.result.ok_or_else(|| bad("no result"))?;
        let name = found.name.trim_end_matches('.').to_ascii_lowercase();
        if name != zone {
            return Err(DnsError::ZoneNotFound {
                zone: zone.to_string(),
                reason: format!(
                    "zone_id {} is the zone {name} at Cloudflare, not {zone}: use {zone}'s \
                     Zone ID (on its Overview page)",
                    self.config.zone_id
                ),
            });
        }
        if matches!(found.status.as_str(), "moved" | "deleted") {
            return Err(DnsError::ZoneNotFound {
                zone: zone.to_string(),
                reason: format!("Cloudflare no longer serves it (status {})", found.status),
            });
        }
        let _ = self.zone_name.set(name);
        Ok(())
    }

    /// Checks `zone` is the zone of `zone_id` (read once, then remembered).
    async fn ensure_zone(&self, zone: &str) -> Result<(), DnsError> {
        match self.zone_name.get() {
            Some(name) if name == zone => Ok(()),
            _ => self.fetch_zone(zone).await,
        }
    }

    /// The records of `name` and `kind` in the zone, with their ids.
    async fn records(
        &self,
        zone: &str,
        name: &str,
        kind: RecordType,
    ) -> Result<Vec<ApiRecord>, DnsError> {
        let mut url = self.zone_url(&["dns_records"])?;
        url.query_pairs_mut()
            .append_pair("type", kind.as_str())
            .append_pair("name.exact", name);
        let records: Vec<ApiRecord> = self.pages(zone, url, RECORDS_PER_PAGE).await?;
        // The filters are the server's; a record of another name or type is never touched.
        Ok(records
            .into_iter()
            .filter(|r| {
                r.kind.eq_ignore_ascii_case(kind.as_str())
                    && r.name.trim_end_matches('.').eq_ignore_ascii_case(name)
            })
            .collect())
    }

    async fn batch(&self, zone: &str, body: serde_json::Value) -> Result<(), DnsError> {
        let url = self.zone_url(&["dns_records", "batch"])?;
        let request = self.http.post(url).json(&body);
        self.expect::<serde::de::IgnoredAny>(zone, true, request)
            .await
            .map(drop)
    }
}

/// Our TTL in Cloudflare's range.
fn cloudflare_ttl(ttl: u32) -> u32 {
    ttl.clamp(MIN_TTL, MAX_TTL)
}

/// One value as Cloudflare's `content` field takes it.
fn contents(records: &Records) -> Vec<String> {
    match records {
        Records::A(v) => v.iter().map(ToString::to_string).collect(),
        Records::Aaaa(v) => v.iter().map(ToString::to_string).collect(),
        Records::Txt(v) => v.iter().map(|s| text::quote(s)).collect(),
        Records::Cname(target) => vec![target.trim_end_matches('.').to_ascii_lowercase()],
    }
}

/// A TXT `content` as its value: quoted character-strings joined, or the bare text itself.
fn txt_value(content: &str) -> Result<String, DnsError> {
    if content.trim_start().starts_with('"') {
        text::unquote(content).map_err(bad)
    } else {
        Ok(content.to_string())
    }
}

fn parse_records(kind: RecordType, found: &[ApiRecord]) -> Result<Records, DnsError> {
    let all = || found.iter().map(|r| r.content.trim());
    Ok(match kind {
        RecordType::A => Records::A(
            all()
                .map(|c| c.parse().map_err(bad))
                .collect::<Result<_, _>>()?,
        ),
        RecordType::Aaaa => Records::Aaaa(
            all()
                .map(|c| c.parse().map_err(bad))
                .collect::<Result<_, _>>()?,
        ),
        RecordType::Txt => Records::Txt(
            found
                .iter()
                .map(|r| txt_value(&r.content))
                .collect::<Result<_, _>>()?,
        ),
        RecordType::Cname => Records::Cname(
            all()
                .next()
                .map(|c| c.trim_end_matches('.').to_ascii_lowercase())
                .unwrap_or_default(),
        ),
    }
    .sorted())
}

/// The TTL Cloudflare serves for `found` (the lowest; "automatic" is 300 s).
fn served_ttl(found: &[ApiRecord]) -> u32 {
    let ttl = |r: &ApiRecord| if r.ttl == 1 { AUTO_TTL } else { r.ttl };
    found.iter().map(ttl).min().unwrap_or(AUTO_TTL)
}

/// The operations, each made of several requests; [`DnsProvider`] bounds each one as a whole.
impl Cloudflare {
    async fn list_zones_unbounded(&self) -> Result<Option<Vec<String>>, DnsError> {
        let zones: Vec<Zone> = self
            .pages("", self.url(&["zones"])?, ZONES_PER_PAGE)
            .await?;
        let names = zones
            .into_iter()
            .map(|z| z.name.trim_end_matches('.').to_ascii_lowercase());
        Ok(Some(names.collect()))
    }

    async fn check_unbounded(&self, zone: &str) -> Result<(), DnsError> {
        let (zone, _) = name_in_zone(zone, zone)?;
        match self.fetch_zone(&zone).await {
            Err(e @ DnsError::Auth(_)) => return Err(self.explain(e).await),
            other => other?,
        }
        // Zone:Read is not DNS:Read: list one page of records to prove the token may see them.
        let mut url = self.zone_url(&["dns_records"])?;
        url.query_pairs_mut()
            .append_pair("page", "1")
            .append_pair("per_page", "5");
        self.expect::<Vec<serde::de::IgnoredAny>>(&zone, false, self.http.get(url))
            .await
            .map(drop)
    }

    async fn read_unbounded(
        &self,
        zone: &str,
        name: &str,
        kind: RecordType,
    ) -> Result<Option<RrSet>, DnsError> {
        let (zone, name) = name_in_zone(zone, name)?;
        self.ensure_zone(&zone).await?;
        let found = self.records(&zone, &name, kind).await?;
        if found.is_empty() {
            return Ok(None);
        }
        Ok(Some(RrSet {
            ttl: served_ttl(&found),
            records: parse_records(kind, &found)?,
            name,
        }))
    }

    async fn replace_unbounded(&self, zone: &str, rrset: &RrSet) -> Result<(), DnsError> {
        let (zone, name) = check_rrset(zone, rrset)?;
        let kind = rrset.records.kind();
        let ttl = cloudflare_ttl(rrset.ttl);
        self.ensure_zone(&zone).await?;
        let old = self.records(&zone, &name, kind).await?;
        let same = old.iter().all(|r| r.ttl == ttl && !r.proxied)
            && parse_records(kind, &old).ok() == Some(rrset.records.clone().sorted());
        if same {
            return Ok(());
        }
        let posts: Vec<_> = contents(&rrset.records)
            .into_iter()
            .map(|content| {
                json!({"name": name, "type": kind.as_str(), "content": content,
                       "ttl": ttl, "proxied": false})
            })
            .collect();
        if old.len() + posts.len() > MAX_BATCH {
            return Err(DnsError::Invalid(format!(
                "{name} {kind}: more than {MAX_BATCH} records to change in one batch"
            )));
        }
        let mut body = json!({ "posts": posts });
        if !old.is_empty() {
            body["deletes"] = old.iter().map(|r| json!({ "id": r.id })).collect();
        }
        self.batch(&zone, body).await
    }

    async fn delete_unbounded(
        &self,
        zone: &str,
        name: &str,
        kind: RecordType,
    ) -> Result<(), DnsError> {
        let (zone, name) = name_in_zone(zone, name)?;
        self.ensure_zone(&zone).await?;
        let old = self.records(&zone, &name, kind).await?;
        match old.as_slice() {
            [] => Ok(()),
            [one] => {
                let url = self.zone_url(&["dns_records", &one.id])?;
                match self
                    .call::<serde::de::IgnoredAny>(self.http.delete(url))
                    .await?
                {
                    Ok(_) => Ok(()),
                    Err(r) if r.has(&[NO_RECORD]) => Ok(()),
                    Err(r) => Err(self.refused(&zone, true, &r)),
                }
            }
            many if many.len() <= MAX_BATCH => {
                let deletes: Vec<_> = many.iter().map(|r| json!({ "id": r.id })).collect();
                self.batch(&zone, json!({ "deletes": deletes })).await
            }
            many => Err(DnsError::Invalid(format!(
                "{name} {kind}: {} records, more than {MAX_BATCH} to delete in one batch",
                many.len()
            ))),
        }
    }
}

impl Cloudflare {
    /// `op` within [`OP_TIMEOUT`], however many requests and pages it takes.
    async fn bounded<T>(
        &self,
        op: impl std::future::Future<Output = Result<T, DnsError>>,
    ) -> Result<T, DnsError> {
        let secs = OP_TIMEOUT.as_secs();
        tokio::time::timeout(OP_TIMEOUT, op)
            .await
            .unwrap_or_else(|_| {
                Err(unreachable(
                    &self.config.api_url,
                    format!("no complete answer within {secs} s"),
                ))
            })
    }
}

impl DnsProvider for Cloudflare {
    async fn list_zones(&self) -> Result<Option<Vec<String>>, DnsError> {
        self.bounded(self.list_zones_unbounded()).await
    }
    async fn check(&self, zone: &str) -> Result<(), DnsError> {
        self.bounded(self.check_unbounded(zone)).await
    }
    async fn read(
        &self,
        zone: &str,
        name: &str,
        kind: RecordType,
    ) -> Result<Option<RrSet>, DnsError> {
        self.bounded(self.read_unbounded(zone, name, kind)).await
    }
    async fn replace(&self, zone: &str, rrset: &RrSet) -> Result<(), DnsError> {
        self.bounded(self.replace_unbounded(zone, rrset)).await
    }
    async fn delete(&self, zone: &str, name: &str, kind: RecordType) -> Result<(), DnsError> {
        self.bounded(self.delete_unbounded(zone, name, kind)).await
    }
}

#[cfg(test)]
mod tests;
