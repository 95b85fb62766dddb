//! The HTTP side of the `cloudflare` provider: Cloudflare's answer envelope, one request with
//! the token and a size-capped body, paged listings with a page cap, and Cloudflare's refusals
//! turned into the [`DnsError`] a user can act on.

use super::Cloudflare;
use crate::dns::exchange::unreachable;
use crate::dns::powerdns::reqwest_reason;
use crate::dns::DnsError;
use serde::de::DeserializeOwned;
use serde::Deserialize;

/// The largest answer we read (one page of at most 100 records or 50 zones is far smaller).
const MAX_BODY: usize = 4 << 20;
/// The most pages one listing may take: 1000 zones, or 2000 records of one name and type.
const MAX_PAGES: u32 = 20;
/// Error codes that mean "this token may not do that" (10000 authentication error, 9109
/// unauthorized to access the resource, 1000 invalid token, 6003/6111 malformed header).
const AUTH_CODES: [i64; 5] = [10000, 9109, 1000, 6003, 6111];
/// Error codes that mean "no such zone" (7003 "could not route, perhaps your object identifier
/// is invalid", 7000 no route, 1001 invalid zone identifier).
const ZONE_CODES: [i64; 3] = [7003, 7000, 1001];

/// Cloudflare's answer envelope: `{"success", "errors", "messages", "result", "result_info"}`.
#[derive(Deserialize)]
pub(super) struct Envelope<T> {
    #[serde(default)]
    pub success: bool,
    #[serde(default)]
    pub errors: Vec<ApiMessage>,
    pub result: Option<T>,
    pub result_info: Option<ResultInfo>,
}

#[derive(Deserialize)]
pub(super) struct ApiMessage {
    #[serde(default)]
    code: i64,
    #[serde(default)]
    message: String,
}

#[derive(Deserialize)]
pub(super) struct ResultInfo {
    #[serde(default)]
    total_pages: u32,
}

#[derive(Deserialize)]
struct TokenStatus {
    #[serde(default)]
    status: String,
}

/// An answer that was not a success: its HTTP status and Cloudflare's error list.
pub(super) struct Refusal {
    pub status: reqwest::StatusCode,
    pub errors: Vec<ApiMessage>,
}

impl Refusal {
    pub fn has(&self, codes: &[i64]) -> bool {
        self.errors.iter().any(|e| codes.contains(&e.code))
    }

    /// Cloudflare's own words (`code 9109: Unauthorized to access requested resource`).
    pub fn said(&self) -> String {
        let said: Vec<String> = (self.errors.iter().take(3))
            .map(|e| {
                let message: String = e.message.chars().take(200).collect();
                format!("code {}: {message}", e.code)
            })
            .collect();
        if said.is_empty() {
            format!("HTTP {}", self.status)
        } else {
            said.join("; ")
        }
    }
}

impl Cloudflare {
    /// Sends `request` with the token; a success's envelope, or Cloudflare's refusal.
    pub(super) async fn call<T: DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<Result<Envelope<T>, Refusal>, DnsError> {
        let address = self.config.api_url.as_str();
        let mut response = request
            .bearer_auth(&self.config.api_token)
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
            let envelope: Envelope<T> = serde_json::from_slice(&body).map_err(bad)?;
            if envelope.success {
                return Ok(Ok(envelope));
            }
            let errors = envelope.errors;
            return Ok(Err(Refusal { status, errors }));
        }
        let errors = serde_json::from_slice::<Envelope<serde::de::IgnoredAny>>(&body)
            .map(|e| e.errors)
            .unwrap_or_default();
        Ok(Err(Refusal { status, errors }))
    }

    /// [`Self::call`] with a refusal turned into the error a user can act on (`zone` names the
    /// zone in it; `write` tells a refused change from a failed read).
    pub(super) async fn expect<T: DeserializeOwned>(
        &self,
        zone: &str,
        write: bool,
        request: reqwest::RequestBuilder,
    ) -> Result<Envelope<T>, DnsError> {
        self.call(request)
            .await?
            .map_err(|r| self.refused(zone, write, &r))
    }

    pub(super) fn refused(&self, zone: &str, write: bool, r: &Refusal) -> DnsError {
        let id = &self.config.zone_id;
        let said = r.said();
        if matches!(r.status.as_u16(), 401 | 403) || r.has(&AUTH_CODES) {
            DnsError::Auth(format!(
                "Cloudflare refused the API token ({said}): check api_token, and that it has \
                 Zone:Read and DNS:Edit on zone_id {id}"
            ))
        } else if r.status == reqwest::StatusCode::NOT_FOUND || r.has(&ZONE_CODES) {
            DnsError::ZoneNotFound {
                zone: zone.to_string(),
                reason: format!(
                    "Cloudflare has no zone with zone_id {id} ({said}): copy the Zone ID from \
                     the zone's Overview page"
                ),
            }
        } else if write && r.status == reqwest::StatusCode::BAD_REQUEST {
            DnsError::Refused(format!("Cloudflare refused the change ({said})"))
        } else {
            DnsError::BadResponse(format!("Cloudflare answered {} ({said})", r.status))
        }
    }

    /// Every page of a listing at `url` (`zone` names the zone in errors).
    pub(super) async fn pages<T: DeserializeOwned>(
        &self,
        zone: &str,
        url: url::Url,
        per_page: u32,
    ) -> Result<Vec<T>, DnsError> {
        let mut all = Vec::new();
        for page in 1..=MAX_PAGES {
            let mut url = url.clone();
            url.query_pairs_mut()
                .append_pair("page", &page.to_string())
                .append_pair("per_page", &per_page.to_string());
            let envelope: Envelope<Vec<T>> = self.expect(zone, false, self.http.get(url)).await?;
            let items = envelope.result.unwrap_or_default();
            let total = envelope.result_info.map_or(1, |i| i.total_pages);
            let last = items.is_empty() || page >= total;
            all.extend(items);
            if last {
                return Ok(all);
            }
        }
        Err(DnsError::BadResponse(format!(
            "Cloudflare's listing has more than {MAX_PAGES} pages of {per_page}"
        )))
    }

    /// Why the token was refused, asked of `/user/tokens/verify` (an account-owned token cannot
    /// use that endpoint; then `refusal` stays the answer).
    pub(super) async fn explain(&self, refusal: DnsError) -> DnsError {
        let Ok(url) = self.url(&["user", "tokens", "verify"]) else {
            return refusal;
        };
        let id = &self.config.zone_id;
        match self.call::<TokenStatus>(self.http.get(url)).await {
            Ok(Ok(e)) => match e.result.map(|t| t.status).as_deref() {
                Some("active") => DnsError::Auth(format!(
                    "the API token is valid but may not use zone_id {id}: give it Zone:Read and \
                     DNS:Edit on this zone"
                )),
                Some(status) => DnsError::Auth(format!(
                    "the API token is {status}: make it active or create a new one"
                )),
                None => refusal,
            },
            Ok(Err(r)) if r.has(&[1000]) || r.status.as_u16() == 401 => DnsError::Auth(format!(
                "Cloudflare does not know the API token ({}): check api_token",
                r.said()
            )),
            _ => refusal,
        }
    }
}

pub(super) fn bad(e: impl std::fmt::Display) -> DnsError {
    DnsError::BadResponse(format!("undecodable Cloudflare answer: {e}"))
}
