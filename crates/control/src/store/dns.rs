//! DNS zones Control manages and the records it wrote in them (its ownership ledger). The store
//! keeps a zone's secret config as the sealed bytes it is given; sealing and opening belong to
//! `zones`, which holds the key.

use super::{now, Store, StoreError, StoreResult};

/// How many zones one Control manages at most.
pub const MAX_DNS_ZONES: i64 = 100;

const ZONE_COLUMNS: &str = "id, zone, provider, config, secret, created_at, updated_at";

#[derive(Clone, sqlx::FromRow)]
pub struct DnsZoneRow {
    pub id: i64,
    /// Lowercase, without the final dot.
    pub zone: String,
    pub provider: String,
    /// JSON object: the provider's settings without the write-only fields.
    pub config: String,
    /// The write-only fields, sealed (see `zones`).
    pub secret: Vec<u8>,
    pub created_at: String,
    pub updated_at: String,
}

impl std::fmt::Debug for DnsZoneRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsZoneRow")
            .field("id", &self.id)
            .field("zone", &self.zone)
            .field("provider", &self.provider)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// One RRset Control wrote: `content` is the JSON of the sorted values it wrote.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct DnsRecordRow {
    pub zone_id: i64,
    pub name: String,
    pub kind: String,
    pub content: String,
    pub ttl: i64,
    pub purpose: String,
    pub updated_at: String,
}

impl Store {
    /// Adds a zone; a zone already managed is a conflict.
    pub async fn create_dns_zone(
        &self,
        zone: &str,
        provider: &str,
        config: &str,
        secret: &[u8],
    ) -> StoreResult<DnsZoneRow> {
        let mut tx = self.write_tx().await?;
        let (count,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM dns_zones")
            .fetch_one(&mut *tx)
            .await?;
        if count >= MAX_DNS_ZONES {
            return Err(StoreError::Quota(format!(
                "at most {MAX_DNS_ZONES} DNS zones can be managed; delete one first"
            )));
        }
        let exists: Option<(i64,)> = sqlx::query_as("SELECT id FROM dns_zones WHERE zone = $1")
            .bind(zone)
            .fetch_optional(&mut *tx)
            .await?;
        if exists.is_some() {
            return Err(StoreError::Conflict(format!(
                "zone {zone} is already managed"
            )));
        }
        let at = now();
        let sql = format!(
            "INSERT INTO dns_zones (zone, provider, config, secret, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $5) RETURNING {ZONE_COLUMNS}"
        );
        let row = sqlx::query_as(&sql)
            .bind(zone)
            .bind(provider)
            .bind(config)
            .bind(secret)
            .bind(&at)
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(row)
    }

    pub async fn list_dns_zones(&self) -> StoreResult<Vec<DnsZoneRow>> {
        let sql = format!("SELECT {ZONE_COLUMNS} FROM dns_zones ORDER BY zone");
        Ok(sqlx::query_as(&sql).fetch_all(self.pool()).await?)
    }

    pub async fn get_dns_zone(&self, id: i64) -> StoreResult<DnsZoneRow> {
        let sql = format!("SELECT {ZONE_COLUMNS} FROM dns_zones WHERE id = $1");
        sqlx::query_as(&sql)
            .bind(id)
            .fetch_optional(self.pool())
            .await?
            .ok_or(StoreError::NotFound)
    }

    /// Replaces a zone's provider and config (the name stays).
    pub async fn update_dns_zone(
        &self,
        id: i64,
        provider: &str,
        config: &str,
        secret: &[u8],
    ) -> StoreResult<DnsZoneRow> {
        let sql = format!(
            "UPDATE dns_zones SET provider = $1, config = $2, secret = $3, updated_at = $4 \
             WHERE id = $5 RETURNING {ZONE_COLUMNS}"
        );
        sqlx::query_as(&sql)
            .bind(provider)
            .bind(config)
            .bind(secret)
            .bind(now())
            .bind(id)
            .fetch_optional(self.pool())
            .await?
            .ok_or(StoreError::NotFound)
    }

    /// Deletes a zone and Control's ledger of its records (not the records themselves).
    pub async fn delete_dns_zone(&self, id: i64) -> StoreResult<()> {
        let done = sqlx::query("DELETE FROM dns_zones WHERE id = $1")
            .bind(id)
            .execute(self.pool())
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    /// Every RRset Control wrote (all zones, or one).
    pub async fn list_dns_records(&self, zone_id: Option<i64>) -> StoreResult<Vec<DnsRecordRow>> {
        Ok(sqlx::query_as(
            "SELECT zone_id, name, kind, content, ttl, purpose, updated_at FROM dns_records \
             WHERE ($1 IS NULL OR zone_id = $1) ORDER BY zone_id, name, kind",
        )
        .bind(zone_id)
        .fetch_all(self.pool())
        .await?)
    }

    /// The ledger entry of one RRset, if Control wrote it.
    pub async fn get_dns_record(
        &self,
        zone_id: i64,
        name: &str,
        kind: &str,
    ) -> StoreResult<Option<DnsRecordRow>> {
        Ok(sqlx::query_as(
            "SELECT zone_id, name, kind, content, ttl, purpose, updated_at FROM dns_records \
             WHERE zone_id = $1 AND name = $2 AND kind = $3",
        )
        .bind(zone_id)
        .bind(name)
        .bind(kind)
        .fetch_optional(self.pool())
        .await?)
    }

    /// Records that Control wrote (or replaced) an RRset with `content`. Call it only after the
    /// provider accepted the change. A zone deleted meanwhile is reported as not found.
    pub async fn save_dns_record(
        &self,
        zone_id: i64,
        name: &str,
        kind: &str,
        content: &str,
        ttl: u32,
        purpose: &str,
    ) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO dns_records (zone_id, name, kind, content, ttl, purpose, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (zone_id, name, kind) DO UPDATE SET content = excluded.content, \
             ttl = excluded.ttl, purpose = excluded.purpose, updated_at = excluded.updated_at",
        )
        .bind(zone_id)
        .bind(name)
        .bind(kind)
        .bind(content)
        .bind(i64::from(ttl))
        .bind(purpose)
        .bind(now())
        .execute(self.pool())
        .await
        .map_err(|e| match e {
            sqlx::Error::Database(d) if d.is_foreign_key_violation() => StoreError::NotFound,
            e => StoreError::Db(e),
        })?;
        Ok(())
    }

    /// Forgets an RRset once the provider deleted it.
    pub async fn forget_dns_record(&self, zone_id: i64, name: &str, kind: &str) -> StoreResult<()> {
        sqlx::query("DELETE FROM dns_records WHERE zone_id = $1 AND name = $2 AND kind = $3")
            .bind(zone_id)
            .bind(name)
            .bind(kind)
            .execute(self.pool())
            .await?;
        Ok(())
    }
}
