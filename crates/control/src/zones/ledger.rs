//! Writing only what is ours. Every RRset Control writes is entered in a ledger (the
//! `dns_records` table) with the values it wrote; an RRset that exists and is not in the ledger
//! was made by someone else and is never replaced or deleted. A record of ours that someone
//! changed by hand is not deleted either (the ledger forgets it instead).

use super::{OpenZone, Zones};
use crate::dns::{DnsError, DnsProvider as _, RecordType, Records, RrSet};
use crate::store::StoreError;

/// Why a guarded write or delete did not happen.
#[derive(Debug, thiserror::Error)]
pub enum OwnedError {
    /// An RRset of that name and type exists and Control did not write it.
    #[error(
        "{name} {kind} already exists in DNS and was not created by kakuremichi; \
         it is left alone (delete it at your DNS provider to let kakuremichi manage it)"
    )]
    NotOurs { name: String, kind: RecordType },
    #[error(transparent)]
    Dns(#[from] DnsError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The ledger's form of an RRset's values: a JSON array of sorted strings.
pub fn content(records: &Records) -> String {
    let values: Vec<String> = match records.clone().sorted() {
        Records::A(v) => v.iter().map(ToString::to_string).collect(),
        Records::Aaaa(v) => v.iter().map(ToString::to_string).collect(),
        Records::Txt(v) => v,
        Records::Cname(t) => vec![t],
    };
    serde_json::Value::from(values).to_string()
}

impl Zones {
    /// Makes `rrset` what DNS holds, unless an RRset of its name and type exists that Control did
    /// not write. Returns whether the provider was asked to change anything.
    pub async fn write_owned(
        &self,
        zone: &OpenZone,
        rrset: &RrSet,
        purpose: &str,
    ) -> Result<bool, OwnedError> {
        let kind = rrset.records.kind();
        let wanted = content(&rrset.records);
        let ours = self
            .store
            .get_dns_record(zone.row.id, &rrset.name, kind.as_str())
            .await?;
        let current = zone
            .provider
            .read(&zone.row.zone, &rrset.name, kind)
            .await?;
        let changed = match &current {
            Some(now) if ours.is_none() => {
                return Err(OwnedError::NotOurs {
                    name: now.name.clone(),
                    kind,
                })
            }
            Some(now) => content(&now.records) != wanted || now.ttl != rrset.ttl,
            None => true,
        };
        if changed {
            zone.provider.replace(&zone.row.zone, rrset).await?;
        }
        self.store
            .save_dns_record(
                zone.row.id,
                &rrset.name,
                kind.as_str(),
                &wanted,
                rrset.ttl,
                purpose,
            )
            .await?;
        Ok(changed)
    }

    /// Deletes the RRset of `name` and `kind` if Control wrote it and it still holds what Control
    /// wrote; forgets it either way. Returns whether the provider deleted anything.
    pub async fn delete_owned(
        &self,
        zone: &OpenZone,
        name: &str,
        kind: RecordType,
    ) -> Result<bool, OwnedError> {
        let Some(ours) = self
            .store
            .get_dns_record(zone.row.id, name, kind.as_str())
            .await?
        else {
            return Ok(false);
        };
        let current = zone.provider.read(&zone.row.zone, name, kind).await?;
        let deleted = match current {
            Some(now) if content(&now.records) == ours.content => {
                zone.provider.delete(&zone.row.zone, name, kind).await?;
                true
            }
            Some(_) => {
                tracing::warn!(%name, %kind, zone = %zone.row.zone,
                    "a DNS record kakuremichi wrote was changed by someone else; leaving it as it is");
                false
            }
            None => false,
        };
        self.store
            .forget_dns_record(zone.row.id, name, kind.as_str())
            .await?;
        Ok(deleted)
    }

    /// Deletes every RRset of the ledger in `zone` (before the zone itself is deleted). Stops at
    /// the first provider error, so nothing is forgotten that is still in DNS.
    pub async fn remove_all_owned(&self, zone: &OpenZone) -> Result<usize, OwnedError> {
        let mut deleted = 0;
        for row in self.store.list_dns_records(Some(zone.row.id)).await? {
            let Some(kind) = record_type(&row.kind) else {
                continue;
            };
            if self.delete_owned(zone, &row.name, kind).await? {
                deleted += 1;
            }
        }
        Ok(deleted)
    }
}

/// The type a ledger row names.
pub fn record_type(kind: &str) -> Option<RecordType> {
    [
        RecordType::A,
        RecordType::Aaaa,
        RecordType::Txt,
        RecordType::Cname,
    ]
    .into_iter()
    .find(|t| t.as_str() == kind)
}
