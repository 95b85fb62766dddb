//! DNS providers: the one small seam through which Control will write the records of the zones
//! it manages (issue #15). A provider lists the zones its credentials can manage, reads one
//! RRset (name + type), replaces one atomically, and deletes one; nothing else. Zones
//! (`zones`), records per tunnel with failover (`dns_records`) and DNS-01 (`certs::dns01`) are
//! built on top of this; [`lookup`] is how Control looks at DNS from outside.
//!
//! Dispatch is an enum ([`Provider`]), not `dyn`: the set of providers is closed (chosen by name
//! in a zone's config), the trait's methods are plain `async fn`s (not object-safe, and no boxing
//! or `async-trait` needed), and a test double is one more variant when a test needs it.
//! [`DnsProvider`] stays the contract each provider module implements.
//!
//! Values are typed ([`Records`]: addresses for A/AAAA, text for TXT, a name for CNAME), names
//! are absolute and compared without the final dot, and every failure is a [`DnsError`] that
//! says what to fix. Every network operation is bounded by [`OP_TIMEOUT`].

mod cloudflare;
mod exchange;
pub mod lookup;
mod powerdns;
mod rfc2136;
mod text;

pub use cloudflare::{Cloudflare, CloudflareConfig};
pub use powerdns::{PowerDns, PowerDnsConfig};
pub use rfc2136::{Rfc2136, Rfc2136Config, TsigAlgorithm};

use std::future::Future;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

/// The longest any one provider operation (with its retries) may take.
pub const OP_TIMEOUT: Duration = Duration::from_secs(5);

/// What a provider call failed on, in words a user can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    /// Nothing answered at `address` (refused, unroutable, or silent for [`OP_TIMEOUT`]).
    #[error("cannot reach the DNS provider at {address}: {reason}")]
    Unreachable { address: String, reason: String },
    /// The server did not accept our credentials (TSIG key or API key).
    #[error("the DNS provider refused our credentials: {0}")]
    Auth(String),
    /// The server does not serve this zone (or is not authoritative for it).
    #[error("zone {zone} not found: {reason}")]
    ZoneNotFound { zone: String, reason: String },
    /// The credentials are good but the server's policy forbids this change.
    #[error("the DNS provider refused the change: {0}")]
    Refused(String),
    /// The server answered something we cannot use.
    #[error("bad response from the DNS provider: {0}")]
    BadResponse(String),
    /// The provider's config or the request is invalid (nothing was sent).
    #[error("invalid DNS provider settings: {0}")]
    Invalid(String),
}

/// The record types Control manages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordType {
    A,
    Aaaa,
    Txt,
    Cname,
}

impl RecordType {
    /// The type's name as DNS writes it (`AAAA`, `TXT`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::A => "A",
            Self::Aaaa => "AAAA",
            Self::Txt => "TXT",
            Self::Cname => "CNAME",
        }
    }
}

impl std::fmt::Display for RecordType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The values of one RRset, typed so a value can never be of the wrong type. TXT values are whole
/// strings: providers split them into 255-byte character-strings and join them back on read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Records {
    A(Vec<Ipv4Addr>),
    Aaaa(Vec<Ipv6Addr>),
    Txt(Vec<String>),
    /// A CNAME has exactly one target (an absolute name, without the final dot).
    Cname(String),
}

impl Records {
    pub fn kind(&self) -> RecordType {
        match self {
            Self::A(_) => RecordType::A,
            Self::Aaaa(_) => RecordType::Aaaa,
            Self::Txt(_) => RecordType::Txt,
            Self::Cname(_) => RecordType::Cname,
        }
    }

    fn is_empty(&self) -> bool {
        match self {
            Self::A(v) => v.is_empty(),
            Self::Aaaa(v) => v.is_empty(),
            Self::Txt(v) => v.is_empty(),
            Self::Cname(t) => t.is_empty(),
        }
    }

    /// Sorted values, so two reads (or a write and a read) compare equal whatever the order.
    pub fn sorted(mut self) -> Self {
        match &mut self {
            Self::A(v) => v.sort(),
            Self::Aaaa(v) => v.sort(),
            Self::Txt(v) => v.sort(),
            Self::Cname(_) => {}
        }
        self
    }
}

/// One RRset: every record of one name and type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RrSet {
    /// Absolute name without the final dot, lowercase (`www.example.com`).
    pub name: String,
    pub ttl: u32,
    pub records: Records,
}

/// The contract every provider implements. `zone` and names are absolute, with or without the
/// final dot; a name must lie inside `zone`.
pub trait DnsProvider {
    /// The zones these credentials can manage, or `None` when the protocol cannot enumerate them
    /// (RFC 2136: the zone is named by the user and checked with [`DnsProvider::check`]).
    fn list_zones(&self) -> impl Future<Output = Result<Option<Vec<String>>, DnsError>> + Send;
    /// Whether `zone` is served and these credentials may change it (the "test connection").
    fn check(&self, zone: &str) -> impl Future<Output = Result<(), DnsError>> + Send;
    /// The RRset of `name` and `kind`, `None` when there is none.
    fn read(
        &self,
        zone: &str,
        name: &str,
        kind: RecordType,
    ) -> impl Future<Output = Result<Option<RrSet>, DnsError>> + Send;
    /// Replaces the whole RRset of `rrset.name` and its type, in one atomic change.
    fn replace(
        &self,
        zone: &str,
        rrset: &RrSet,
    ) -> impl Future<Output = Result<(), DnsError>> + Send;
    /// Deletes the RRset of `name` and `kind` (no error when there is none).
    fn delete(
        &self,
        zone: &str,
        name: &str,
        kind: RecordType,
    ) -> impl Future<Output = Result<(), DnsError>> + Send;
}

/// A configured provider, chosen by name in a zone's config.
#[derive(Debug, Clone)]
pub enum Provider {
    Rfc2136(Rfc2136),
    PowerDns(PowerDns),
    Cloudflare(Cloudflare),
}

impl Provider {
    /// The provider named `provider` (`rfc2136`, `powerdns`, `cloudflare`) with its JSON
    /// `config`, checked.
    pub fn from_config(provider: &str, config: serde_json::Value) -> Result<Self, DnsError> {
        fn parse<T: serde::de::DeserializeOwned>(
            provider: &str,
            config: serde_json::Value,
        ) -> Result<T, DnsError> {
            serde_json::from_value(config)
                .map_err(|e| DnsError::Invalid(format!("{provider} config: {e}")))
        }
        match provider {
            "rfc2136" => Ok(Self::Rfc2136(Rfc2136::new(parse(provider, config)?)?)),
            "powerdns" => Ok(Self::PowerDns(PowerDns::new(parse(provider, config)?)?)),
            "cloudflare" => Ok(Self::Cloudflare(Cloudflare::new(parse(provider, config)?)?)),
            other => Err(DnsError::Invalid(format!(
                "unknown DNS provider {other:?}: use rfc2136, powerdns or cloudflare"
            ))),
        }
    }
}

impl Provider {
    /// The zone's own `resolver` (`host:port`), where DNS-01's propagation check looks instead
    /// of the zone's authoritative servers.
    pub fn resolver(&self) -> Option<&str> {
        match self {
            Self::Rfc2136(p) => p.resolver(),
            Self::PowerDns(p) => p.resolver(),
            Self::Cloudflare(p) => p.resolver(),
        }
    }
}

impl DnsProvider for Provider {
    async fn list_zones(&self) -> Result<Option<Vec<String>>, DnsError> {
        match self {
            Self::Rfc2136(p) => p.list_zones().await,
            Self::PowerDns(p) => p.list_zones().await,
            Self::Cloudflare(p) => p.list_zones().await,
        }
    }
    async fn check(&self, zone: &str) -> Result<(), DnsError> {
        match self {
            Self::Rfc2136(p) => p.check(zone).await,
            Self::PowerDns(p) => p.check(zone).await,
            Self::Cloudflare(p) => p.check(zone).await,
        }
    }
    async fn read(
        &self,
        zone: &str,
        name: &str,
        kind: RecordType,
    ) -> Result<Option<RrSet>, DnsError> {
        match self {
            Self::Rfc2136(p) => p.read(zone, name, kind).await,
            Self::PowerDns(p) => p.read(zone, name, kind).await,
            Self::Cloudflare(p) => p.read(zone, name, kind).await,
        }
    }
    async fn replace(&self, zone: &str, rrset: &RrSet) -> Result<(), DnsError> {
        match self {
            Self::Rfc2136(p) => p.replace(zone, rrset).await,
            Self::PowerDns(p) => p.replace(zone, rrset).await,
            Self::Cloudflare(p) => p.replace(zone, rrset).await,
        }
    }
    async fn delete(&self, zone: &str, name: &str, kind: RecordType) -> Result<(), DnsError> {
        match self {
            Self::Rfc2136(p) => p.delete(zone, name, kind).await,
            Self::PowerDns(p) => p.delete(zone, name, kind).await,
            Self::Cloudflare(p) => p.delete(zone, name, kind).await,
        }
    }
}

/// `name` lowercased without the final dot, checked to lie in `zone` (same normal form).
fn name_in_zone(zone: &str, name: &str) -> Result<(String, String), DnsError> {
    let zone = normal(zone);
    let name = normal(name);
    if zone.is_empty() || name.is_empty() {
        return Err(DnsError::Invalid("a zone and a name are required".into()));
    }
    if name != zone && !name.ends_with(&format!(".{zone}")) {
        return Err(DnsError::Invalid(format!(
            "{name} is not inside zone {zone}"
        )));
    }
    Ok((zone, name))
}

/// Checks a `host:port` setting (`what` names it in the message), e.g. `192.0.2.53:53`.
fn check_host_port(what: &str, value: &str) -> Result<(), DnsError> {
    let ok = !value.chars().any(|c| c.is_whitespace() || c.is_control())
        && value
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p != 0));
    if ok {
        Ok(())
    } else {
        Err(DnsError::Invalid(format!(
            "{what} {value:?} must be host:port (e.g. 192.0.2.53:53)"
        )))
    }
}

/// Checks the optional `resolver` every provider's config may carry: where the propagation check
/// of DNS-01 looks for a record (default: the zone's authoritative servers).
fn check_resolver(resolver: Option<&str>) -> Result<(), DnsError> {
    resolver.map_or(Ok(()), |r| check_host_port("resolver", r))
}

fn normal(name: &str) -> String {
    name.trim().trim_end_matches('.').to_ascii_lowercase()
}

/// Checks what a replace writes: at least one value, a sane TTL, a CNAME target that is a name.
fn check_rrset(zone: &str, rrset: &RrSet) -> Result<(String, String), DnsError> {
    let names = name_in_zone(zone, &rrset.name)?;
    if rrset.records.is_empty() {
        return Err(DnsError::Invalid(format!(
            "{} {}: an RRset needs at least one value (delete it instead)",
            names.1,
            rrset.records.kind()
        )));
    }
    if rrset.ttl == 0 || rrset.ttl > 86_400 * 7 {
        return Err(DnsError::Invalid(format!(
            "TTL {} is out of range (1 s to 7 days)",
            rrset.ttl
        )));
    }
    Ok(names)
}
