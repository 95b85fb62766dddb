//! Gateways: the public nodes. Each gets a token (stored hashed) and a WireGuard address.

use super::{alloc, now, Store, StoreError, StoreResult};
use crate::validate::WgNetwork;

const COLUMNS: &str = "id, name, public_endpoint, wg_address, public_key, enabled, last_seen, \
     created_at, public_ipv4, public_ipv6, observed_ip";

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct GatewayRow {
    pub id: i64,
    pub name: String,
    pub public_endpoint: String,
    pub wg_address: String,
    pub public_key: Option<String>,
    pub enabled: bool,
    pub last_seen: Option<String>,
    pub created_at: String,
    /// Where the internet reaches this Gateway over IPv4, for DNS records (`None`: derived).
    pub public_ipv4: Option<String>,
    /// Same over IPv6.
    pub public_ipv6: Option<String>,
    /// Where its last session with Control came from (see [`Store::record_gateway_address`]).
    pub observed_ip: Option<String>,
}

/// Fields a PATCH may change; `None` leaves the field as is. Values are already validated.
#[derive(Debug, Default)]
pub struct GatewayPatch {
    pub name: Option<String>,
    pub public_endpoint: Option<String>,
    pub enabled: Option<bool>,
    /// `Some(None)` clears the address (back to the derived one).
    pub public_ipv4: Option<Option<String>>,
    pub public_ipv6: Option<Option<String>>,
}

impl Store {
    /// Creates a gateway with the lowest free WireGuard address of `net`.
    pub async fn create_gateway(
        &self,
        name: &str,
        public_endpoint: &str,
        token_hash: &str,
        net: &WgNetwork,
    ) -> StoreResult<GatewayRow> {
        let mut tx = self.write_tx().await?;
        let address = alloc::allocate_address(&mut tx, net).await?;
        let sql = format!(
            "INSERT INTO gateways (name, public_endpoint, token_hash, wg_address, enabled, created_at) \
             VALUES ($1, $2, $3, $4, TRUE, $5) RETURNING {COLUMNS}"
        );
        let row = sqlx::query_as(&sql)
            .bind(name)
            .bind(public_endpoint)
            .bind(token_hash)
            .bind(address)
            .bind(now())
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(row)
    }

    /// Records the address a Gateway's session comes from; true when it changed.
    pub async fn record_gateway_address(&self, id: i64, ip: &str) -> StoreResult<bool> {
        let mut tx = self.write_tx().await?;
        let done = sqlx::query(
            "UPDATE gateways SET observed_ip = $1 WHERE id = $2 \
             AND (observed_ip IS NULL OR observed_ip <> $1)",
        )
        .bind(ip)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(done.rows_affected() > 0)
    }

    pub async fn list_gateways(&self) -> StoreResult<Vec<GatewayRow>> {
        let sql = format!("SELECT {COLUMNS} FROM gateways ORDER BY id");
        Ok(sqlx::query_as(&sql).fetch_all(self.pool()).await?)
    }

    pub async fn get_gateway(&self, id: i64) -> StoreResult<GatewayRow> {
        let sql = format!("SELECT {COLUMNS} FROM gateways WHERE id = $1");
        sqlx::query_as(&sql)
            .bind(id)
            .fetch_optional(self.pool())
            .await?
            .ok_or(StoreError::NotFound)
    }

    pub async fn update_gateway(&self, id: i64, patch: &GatewayPatch) -> StoreResult<GatewayRow> {
        let mut tx = self.write_tx().await?;
        let sql = format!(
            "UPDATE gateways SET name = COALESCE($1, name), public_endpoint = COALESCE($2, public_endpoint), \
             enabled = COALESCE($3, enabled), \
             public_ipv4 = CASE WHEN $4 THEN $5 ELSE public_ipv4 END, \
             public_ipv6 = CASE WHEN $6 THEN $7 ELSE public_ipv6 END \
             WHERE id = $8 RETURNING {COLUMNS}"
        );
        let row = sqlx::query_as(&sql)
            .bind(patch.name.as_deref())
            .bind(patch.public_endpoint.as_deref())
            .bind(patch.enabled)
            .bind(patch.public_ipv4.is_some())
            .bind(patch.public_ipv4.clone().flatten())
            .bind(patch.public_ipv6.is_some())
            .bind(patch.public_ipv6.clone().flatten())
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
        tx.commit().await?;
        row.ok_or(StoreError::NotFound)
    }

    pub async fn delete_gateway(&self, id: i64) -> StoreResult<()> {
        let done = sqlx::query("DELETE FROM gateways WHERE id = $1")
            .bind(id)
            .execute(self.pool())
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }
}
