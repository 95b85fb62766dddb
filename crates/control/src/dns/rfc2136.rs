//! The `rfc2136` provider: DNS UPDATE (RFC 2136) signed with TSIG (RFC 8945), which BIND, Knot
//! and PowerDNS all speak. Messages, signatures and verification are hickory-proto's; an RRset is
//! replaced by one UPDATE that deletes it and adds the new records, so the server applies both
//! or neither. Reads are plain (unsigned) queries to the same server, which must be
//! authoritative for the zone.
//!
//! Config (`key_secret` is write-only, never printed):
//! `{"server": "host:port", "key_name": "…", "key_algorithm": "hmac-sha256", "key_secret": "…"}`.

use super::exchange::exchange;
use super::{
    check_host_port, check_resolver, check_rrset, name_in_zone, text, DnsError, DnsProvider,
    RecordType, Records, RrSet,
};
use base64::Engine as _;
use hickory_proto::op::update_message::{self, UpdateMessage as _};
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{self, tsig::TsigAlgorithm as HickoryAlgorithm};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType as HickoryType, TSigner};
use serde::Deserialize;

/// How far our clock may be from the server's (RFC 8945 recommends 300 s).
const FUDGE: u16 = 300;

/// The TSIG algorithms we sign with (the others are obsolete or truncated MACs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum TsigAlgorithm {
    #[serde(rename = "hmac-sha256")]
    HmacSha256,
    #[serde(rename = "hmac-sha384")]
    HmacSha384,
    #[serde(rename = "hmac-sha512")]
    HmacSha512,
}

/// `rfc2136`'s config, exactly as a zone's `config` JSON carries it.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rfc2136Config {
    /// The primary server that accepts updates, `host:port`.
    pub server: String,
    pub key_name: String,
    pub key_algorithm: String,
    /// The key, base64 (as in BIND's `key` clause or `tsig-keygen`'s output).
    pub key_secret: String,
    /// Where the propagation check will look (`host:port`; used by DNS-01).
    #[serde(default)]
    pub resolver: Option<String>,
}

impl std::fmt::Debug for Rfc2136Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rfc2136Config")
            .field("server", &self.server)
            .field("key_name", &self.key_name)
            .field("key_algorithm", &self.key_algorithm)
            .field("key_secret", &"***")
            .field("resolver", &self.resolver)
            .finish()
    }
}

/// A server reached by RFC 2136 with a TSIG key.
#[derive(Clone)]
pub struct Rfc2136 {
    config: Rfc2136Config,
    signer: TSigner,
}

impl std::fmt::Debug for Rfc2136 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rfc2136")
            .field("config", &self.config)
            .finish()
    }
}

impl Rfc2136 {
    /// Where DNS-01's propagation check looks, when the zone's config names a server.
    pub fn resolver(&self) -> Option<&str> {
        self.config.resolver.as_deref()
    }

    /// Checks `config` (nothing is sent): the server's form, the key's name, algorithm and secret.
    pub fn new(config: Rfc2136Config) -> Result<Self, DnsError> {
        let invalid = |m: String| Err(DnsError::Invalid(m));
        check_host_port("server", &config.server)?;
        check_resolver(config.resolver.as_deref())?;
        let algorithm =
            match serde_json::from_value::<TsigAlgorithm>(config.key_algorithm.clone().into()) {
                Ok(TsigAlgorithm::HmacSha256) => HickoryAlgorithm::HmacSha256,
                Ok(TsigAlgorithm::HmacSha384) => HickoryAlgorithm::HmacSha384,
                Ok(TsigAlgorithm::HmacSha512) => HickoryAlgorithm::HmacSha512,
                Err(_) => {
                    return invalid(format!(
                "key_algorithm {:?} is not supported: use hmac-sha256, hmac-sha384 or hmac-sha512",
                config.key_algorithm
            ))
                }
            };
        let Ok(key) = base64::engine::general_purpose::STANDARD.decode(config.key_secret.trim())
        else {
            return invalid("key_secret is not valid base64".into());
        };
        if key.len() < 16 {
            return invalid(
                "key_secret is shorter than 16 bytes: generate one with tsig-keygen".into(),
            );
        }
        let key_name = Name::from_ascii(config.key_name.trim())
            .map_err(|e| DnsError::Invalid(format!("key_name {:?}: {e}", config.key_name)))?;
        let signer = TSigner::new(key, algorithm, key_name, FUDGE)
            .map_err(|e| DnsError::Invalid(format!("TSIG key: {e}")))?;
        Ok(Self { config, signer })
    }

    /// Sends an UPDATE for `zone` and maps the server's answer to what the user can fix.
    async fn update(&self, zone: &str, message: Message) -> Result<(), DnsError> {
        let answer = exchange(&self.config.server, message, Some(&self.signer)).await?;
        match answer.response_code {
            ResponseCode::NoError => Ok(()),
            ResponseCode::NotAuth | ResponseCode::NotZone => {
                Err(not_served(zone, &self.config.server))
            }
            // BIND answers REFUSED both for a zone it does not have and for a change its policy
            // forbids: ask for the zone's SOA to tell which.
            ResponseCode::Refused => match self.soa(zone).await {
                Err(e @ DnsError::ZoneNotFound { .. }) => Err(e),
                _ => Err(DnsError::Refused(format!(
                    "{} refused the update of zone {zone}: its update-policy or allow-update \
                     does not grant key {} this change",
                    self.config.server, self.config.key_name
                ))),
            },
            code => Err(DnsError::BadResponse(format!(
                "{} answered the update of zone {zone} with {code}",
                self.config.server
            ))),
        }
    }

    /// Asks for `zone`'s SOA: succeeds when the server is authoritative for it.
    async fn soa(&self, zone: &str) -> Result<(), DnsError> {
        let answer = self.query(zone, zone, HickoryType::SOA).await?;
        let has_soa = answer
            .answers
            .iter()
            .any(|r| r.record_type() == HickoryType::SOA);
        if answer.response_code == ResponseCode::NoError && answer.authoritative && has_soa {
            Ok(())
        } else {
            Err(not_served(zone, &self.config.server))
        }
    }

    async fn query(&self, zone: &str, name: &str, kind: HickoryType) -> Result<Message, DnsError> {
        let mut message = Message::new(rand::random(), MessageType::Query, OpCode::Query);
        message.metadata.recursion_desired = false;
        message.add_query(Query::query(fqdn(name)?, kind));
        let answer = exchange(&self.config.server, message, None).await?;
        match answer.response_code {
            ResponseCode::NoError | ResponseCode::NXDomain if answer.authoritative => Ok(answer),
            ResponseCode::NoError
            | ResponseCode::NXDomain
            | ResponseCode::Refused
            | ResponseCode::NotAuth => Err(not_served(zone, &self.config.server)),
            code => Err(DnsError::BadResponse(format!(
                "{} answered the query for {name} {kind} with {code}",
                self.config.server
            ))),
        }
    }
}

fn not_served(zone: &str, server: &str) -> DnsError {
    DnsError::ZoneNotFound {
        zone: zone.trim_end_matches('.').to_string(),
        reason: format!(
            "{server} is not authoritative for it (check the zone name and the server)"
        ),
    }
}

pub(super) fn fqdn(name: &str) -> Result<Name, DnsError> {
    Name::from_ascii(format!("{}.", name.trim_end_matches('.')))
        .map_err(|e| DnsError::Invalid(format!("{name:?} is not a DNS name: {e}")))
}

fn hickory_type(kind: RecordType) -> HickoryType {
    match kind {
        RecordType::A => HickoryType::A,
        RecordType::Aaaa => HickoryType::AAAA,
        RecordType::Txt => HickoryType::TXT,
        RecordType::Cname => HickoryType::CNAME,
    }
}

fn rdatas(records: &Records) -> Result<Vec<RData>, DnsError> {
    Ok(match records {
        Records::A(v) => v.iter().map(|ip| RData::A(rdata::A(*ip))).collect(),
        Records::Aaaa(v) => v.iter().map(|ip| RData::AAAA(rdata::AAAA(*ip))).collect(),
        Records::Txt(v) => v
            .iter()
            .map(|s| RData::TXT(rdata::TXT::from_bytes(text::chunks(s))))
            .collect(),
        Records::Cname(target) => vec![RData::CNAME(rdata::CNAME(fqdn(target)?))],
    })
}

/// The answer's records of `kind` at `name` as typed values (the TTL is the lowest one).
pub(super) fn records_of(
    answer: &Message,
    name: &Name,
    kind: RecordType,
) -> Option<(u32, Records)> {
    let rrs: Vec<&Record> = answer
        .answers
        .iter()
        .filter(|r| r.name == *name && r.record_type() == hickory_type(kind))
        .collect();
    let ttl = rrs.iter().map(|r| r.ttl).min()?;
    let records = match kind {
        RecordType::A => Records::A(
            rrs.iter()
                .filter_map(|r| match &r.data {
                    RData::A(a) => Some(a.0),
                    _ => None,
                })
                .collect(),
        ),
        RecordType::Aaaa => Records::Aaaa(
            rrs.iter()
                .filter_map(|r| match &r.data {
                    RData::AAAA(a) => Some(a.0),
                    _ => None,
                })
                .collect(),
        ),
        RecordType::Txt => Records::Txt(
            rrs.iter()
                .filter_map(|r| match &r.data {
                    RData::TXT(t) => Some(text::join(t.txt_data.iter().map(|p| &p[..]))),
                    _ => None,
                })
                .collect(),
        ),
        RecordType::Cname => Records::Cname(rrs.iter().find_map(|r| match &r.data {
            RData::CNAME(c) => Some(c.0.to_ascii().trim_end_matches('.').to_ascii_lowercase()),
            _ => None,
        })?),
    };
    Some((ttl, records.sorted()))
}

impl DnsProvider for Rfc2136 {
    async fn list_zones(&self) -> Result<Option<Vec<String>>, DnsError> {
        Ok(None)
    }

    async fn check(&self, zone: &str) -> Result<(), DnsError> {
        let (zone, _) = name_in_zone(zone, zone)?;
        self.soa(&zone).await?;
        // An UPDATE with no change: proves the key is accepted without touching the zone.
        let mut message = Message::new(rand::random(), MessageType::Query, OpCode::Update);
        message.metadata.recursion_desired = false;
        let mut q = Query::query(fqdn(&zone)?, HickoryType::SOA);
        q.set_query_class(DNSClass::IN);
        message.add_zone(q);
        self.update(&zone, message).await
    }

    async fn read(
        &self,
        zone: &str,
        name: &str,
        kind: RecordType,
    ) -> Result<Option<RrSet>, DnsError> {
        let (zone, name) = name_in_zone(zone, name)?;
        let answer = self.query(&zone, &name, hickory_type(kind)).await?;
        Ok(
            records_of(&answer, &fqdn(&name)?, kind).map(|(ttl, records)| RrSet {
                name,
                ttl,
                records,
            }),
        )
    }

    async fn replace(&self, zone: &str, rrset: &RrSet) -> Result<(), DnsError> {
        let (zone, name) = check_rrset(zone, rrset)?;
        let owner = fqdn(&name)?;
        let kind = hickory_type(rrset.records.kind());
        let mut message = update_message::delete_rrset(
            Record::update0(owner.clone(), 0, kind),
            fqdn(&zone)?,
            true,
        );
        message.add_updates(
            rdatas(&rrset.records)?
                .into_iter()
                .map(|data| Record::from_rdata(owner.clone(), rrset.ttl, data)),
        );
        self.update(&zone, message).await
    }

    async fn delete(&self, zone: &str, name: &str, kind: RecordType) -> Result<(), DnsError> {
        let (zone, name) = name_in_zone(zone, name)?;
        let record = Record::update0(fqdn(&name)?, 0, hickory_type(kind));
        let message = update_message::delete_rrset(record, fqdn(&zone)?, true);
        self.update(&zone, message).await
    }
}
