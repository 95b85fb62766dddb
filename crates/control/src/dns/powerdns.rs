//! The `powerdns` provider: PowerDNS Authoritative's HTTP API (`/api/v1/servers/{server_id}/...`,
//! `X-API-Key`). One `PATCH` with changetype `REPLACE` or `DELETE` changes one RRset atomically.
//! Answers are read with a size cap and every request is bounded by [`OP_TIMEOUT`].
//!
//! Config (`api_key` is write-only, never printed):
//! `{"api_url": "http://127.0.0.1:8081", "api_key": "…", "server_id": "localhost"}`.

use super::exchange::unreachable;
use super::{
    check_resolver, check_rrset, name_in_zone, text, DnsError, DnsProvider, RecordType, Records,
    RrSet, OP_TIMEOUT,
};
use serde::Deserialize;
use serde_json::json;

/// The largest API answer we read (a whole zone when reading one RRset on PowerDNS 4.7).
const MAX_BODY: usize = 8 << 20;

/// `powerdns`'s config, exactly as a zone's `config` JSON carries it.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PowerDnsConfig {
    /// The API's base URL (`http://host:port`, without `/api/v1`).
    pub api_url: String,
    pub api_key: String,
    #[serde(default = "localhost")]
    pub server_id: String,
    /// Where the propagation check will look (`host:port`; used by DNS-01).
    #[serde(default)]
    pub resolver: Option<String>,
}

fn localhost() -> String {
    "localhost".into()
}

impl std::fmt::Debug for PowerDnsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PowerDnsConfig")
            .field("api_url", &self.api_url)
            .field("api_key", &"***")
            .field("server_id", &self.server_id)
            .field("resolver", &self.resolver)
            .finish()
    }
}

/// A PowerDNS server reached through its HTTP API.
#[derive(Debug, Clone)]
pub struct PowerDns {
    config: PowerDnsConfig,
    base: url::Url,
    http: reqwest::Client,
}

#[derive(Deserialize)]
struct ZoneSummary {
    name: String,
}

#[derive(Deserialize)]
struct ZoneDetail {
    #[serde(default)]
    rrsets: Vec<ApiRrSet>,
}

#[derive(Deserialize)]
struct ApiRrSet {
    name: String,
    #[serde(rename = "type")]
    kind: String,
    ttl: u32,
    records: Vec<ApiRecord>,
}

#[derive(Deserialize)]
struct ApiRecord {
    content: String,
    #[serde(default)]
    disabled: bool,
}

impl PowerDns {
    /// Where DNS-01's propagation check looks, when the zone's config names a server.
    pub fn resolver(&self) -> Option<&str> {
        self.config.resolver.as_deref()
    }

    /// Checks `config` (nothing is sent).
    pub fn new(config: PowerDnsConfig) -> Result<Self, DnsError> {
        let invalid = |m: String| DnsError::Invalid(m);
        let mut base = url::Url::parse(config.api_url.trim())
            .map_err(|e| invalid(format!("api_url {:?}: {e}", config.api_url)))?;
        if !matches!(base.scheme(), "http" | "https") || base.host_str().is_none() {
            return Err(invalid(format!(
                "api_url {:?} must be http(s)://host:port",
                config.api_url
            )));
        }
        if config.api_key.is_empty() || config.server_id.is_empty() {
            return Err(invalid("api_key and server_id must not be empty".into()));
        }
        check_resolver(config.resolver.as_deref())?;
        if !base.path().ends_with('/') {
            base.set_path(&format!("{}/", base.path()));
        }
        let http = reqwest::Client::builder()
            .timeout(OP_TIMEOUT)
            .connect_timeout(OP_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| invalid(format!("HTTP client: {e}")))?;
        Ok(Self { config, base, http })
    }

    fn url(&self, zone: Option<&str>) -> Result<url::Url, DnsError> {
        let mut url = self.base.clone();
        {
            let mut segments = url
                .path_segments_mut()
                .map_err(|()| DnsError::Invalid("api_url cannot be a base URL".into()))?;
            segments.pop_if_empty();
            segments.extend([
                "api",
                "v1",
                "servers",
                self.config.server_id.as_str(),
                "zones",
            ]);
            if let Some(zone) = zone {
                segments.push(&format!("{zone}."));
            }
        }
        Ok(url)
    }

    /// Sends `request` and returns the body of a 2xx answer; other answers become typed errors.
    async fn send(
        &self,
        zone: Option<&str>,
        request: reqwest::RequestBuilder,
    ) -> Result<Vec<u8>, DnsError> {
        let address = self.config.api_url.as_str();
        let mut response = request
            .header("X-API-Key", &self.config.api_key)
            .send()
            .await
            .map_err(|e| unreachable(address, reqwest_reason(&e)))?;
        let status = response.status();
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| unreachable(address, reqwest_reason(&e)))?
        {
            if body.len() + chunk.len() > MAX_BODY {
                return Err(DnsError::BadResponse(format!(
                    "{address} answered more than {} MiB",
                    MAX_BODY >> 20
                )));
            }
            body.extend_from_slice(&chunk);
        }
        if status.is_success() {
            return Ok(body);
        }
        let said = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
            .unwrap_or_else(|| String::from_utf8_lossy(&body).chars().take(200).collect());
        Err(match (status.as_u16(), zone) {
            (401 | 403, _) => DnsError::Auth(format!(
                "{address} rejected the API key ({status}): check api_key"
            )),
            (404, Some(zone)) => not_served(zone, &said),
            (422, Some(zone)) if said.contains("Could not find domain") => not_served(zone, &said),
            (404, None) => DnsError::ZoneNotFound {
                zone: String::new(),
                reason: format!(
                    "server_id {:?} not found at {address}: {said}",
                    self.config.server_id
                ),
            },
            (400 | 422, _) => DnsError::Refused(format!("{address}: {said}")),
            _ => DnsError::BadResponse(format!("{address} answered {status}: {said}")),
        })
    }

    async fn patch(&self, zone: &str, rrset: serde_json::Value) -> Result<(), DnsError> {
        let request = self
            .http
            .patch(self.url(Some(zone))?)
            .json(&json!({ "rrsets": [rrset] }));
        self.send(Some(zone), request).await.map(drop)
    }
}

fn not_served(zone: &str, said: &str) -> DnsError {
    DnsError::ZoneNotFound {
        zone: zone.to_string(),
        reason: format!("PowerDNS does not serve it ({said})"),
    }
}

/// Why an HTTP request got no answer, in words (shared with the other HTTP providers).
pub(super) fn reqwest_reason(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        format!("no answer within {} s", OP_TIMEOUT.as_secs())
    } else if e.is_connect() {
        "connection failed (is the API enabled and listening there?)".into()
    } else {
        e.to_string()
    }
}

fn bad(e: impl std::fmt::Display) -> DnsError {
    DnsError::BadResponse(format!("undecodable PowerDNS answer: {e}"))
}

/// One value in PowerDNS's presentation form.
fn contents(records: &Records) -> Vec<String> {
    match records {
        Records::A(v) => v.iter().map(ToString::to_string).collect(),
        Records::Aaaa(v) => v.iter().map(ToString::to_string).collect(),
        Records::Txt(v) => v.iter().map(|s| text::quote(s)).collect(),
        Records::Cname(target) => vec![format!("{}.", target.trim_end_matches('.'))],
    }
}

fn parse_records(kind: RecordType, contents: &[&str]) -> Result<Records, DnsError> {
    Ok(match kind {
        RecordType::A => Records::A(
            contents
                .iter()
                .map(|c| c.parse().map_err(bad))
                .collect::<Result<_, _>>()?,
        ),
        RecordType::Aaaa => Records::Aaaa(
            contents
                .iter()
                .map(|c| c.parse().map_err(bad))
                .collect::<Result<_, _>>()?,
        ),
        RecordType::Txt => Records::Txt(
            contents
                .iter()
                .map(|c| text::unquote(c).map_err(bad))
                .collect::<Result<_, _>>()?,
        ),
        RecordType::Cname => Records::Cname(
            contents
                .first()
                .map(|c| c.trim_end_matches('.').to_ascii_lowercase())
                .unwrap_or_default(),
        ),
    })
}

impl DnsProvider for PowerDns {
    async fn list_zones(&self) -> Result<Option<Vec<String>>, DnsError> {
        let body = self.send(None, self.http.get(self.url(None)?)).await?;
        let zones: Vec<ZoneSummary> = serde_json::from_slice(&body).map_err(bad)?;
        Ok(Some(
            zones
                .into_iter()
                .map(|z| z.name.trim_end_matches('.').to_string())
                .collect(),
        ))
    }

    async fn check(&self, zone: &str) -> Result<(), DnsError> {
        let (zone, _) = name_in_zone(zone, zone)?;
        let mut url = self.url(Some(&zone))?;
        url.query_pairs_mut().append_pair("rrsets", "false");
        self.send(Some(&zone), self.http.get(url)).await.map(drop)
    }

    async fn read(
        &self,
        zone: &str,
        name: &str,
        kind: RecordType,
    ) -> Result<Option<RrSet>, DnsError> {
        let (zone, name) = name_in_zone(zone, name)?;
        let mut url = self.url(Some(&zone))?;
        // PowerDNS ≥ 4.8 filters on these; 4.7 ignores them and sends the zone (capped above).
        url.query_pairs_mut()
            .append_pair("rrset_name", &format!("{name}."))
            .append_pair("rrset_type", kind.as_str());
        let body = self.send(Some(&zone), self.http.get(url)).await?;
        let detail: ZoneDetail = serde_json::from_slice(&body).map_err(bad)?;
        let Some(found) = detail.rrsets.into_iter().find(|r| {
            r.kind == kind.as_str() && r.name.trim_end_matches('.').eq_ignore_ascii_case(&name)
        }) else {
            return Ok(None);
        };
        let live: Vec<&str> = found
            .records
            .iter()
            .filter(|r| !r.disabled)
            .map(|r| r.content.as_str())
            .collect();
        if live.is_empty() {
            return Ok(None);
        }
        Ok(Some(RrSet {
            name,
            ttl: found.ttl,
            records: parse_records(kind, &live)?.sorted(),
        }))
    }

    async fn replace(&self, zone: &str, rrset: &RrSet) -> Result<(), DnsError> {
        let (zone, name) = check_rrset(zone, rrset)?;
        let records: Vec<_> = contents(&rrset.records)
            .into_iter()
            .map(|content| json!({ "content": content, "disabled": false }))
            .collect();
        self.patch(
            &zone,
            json!({
                "name": format!("{name}."),
                "type": rrset.records.kind().as_str(),
                "ttl": rrset.ttl,
                "changetype": "REPLACE",
                "records": records,
            }),
        )
        .await
    }

    async fn delete(&self, zone: &str, name: &str, kind: RecordType) -> Result<(), DnsError> {
        let (zone, name) = name_in_zone(zone, name)?;
        self.patch(
            &zone,
            json!({ "name": format!("{name}."), "type": kind.as_str(), "changetype": "DELETE" }),
        )
        .await
    }
}
