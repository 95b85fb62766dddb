//! Agents: the origin-side nodes. Each gets an API key (stored hashed) and a WireGuard address.

use super::quotas::{Owned, OwnerQuota};
use super::{alloc, is_foreign_key_violation, now, Store, StoreError, StoreResult};
use crate::validate::WgNetwork;

const COLUMNS: &str = "id, name, wg_address, public_key, last_seen, created_at, owner_id";

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AgentRow {
    pub id: i64,
    pub name: String,
    pub wg_address: String,
    pub public_key: Option<String>,
    pub last_seen: Option<String>,
    pub created_at: String,
    /// The member who manages it; `None` = admins only. (Absent from queries that do not need it.)
    #[sqlx(default)]
    pub owner_id: Option<i64>,
}

impl Store {
    /// Creates an agent with the lowest free WireGuard address of `net`.
    pub async fn create_agent(
        &self,
        name: &str,
        key_hash: &str,
        net: &WgNetwork,
        owner_id: Option<i64>,
        max_owned: u32,
    ) -> StoreResult<AgentRow> {
        let mut tx = self.write_tx().await?;
        let quota = OwnerQuota {
            owner: owner_id,
            max: max_owned,
            what: Owned::Agents,
        };
        quota.check(&mut tx).await?;
        let address = alloc::allocate_address(&mut tx, net).await?;
        let sql = format!(
            "INSERT INTO agents (name, api_key_hash, wg_address, created_at, owner_id) VALUES ($1, $2, $3, $4, $5) \
             RETURNING {COLUMNS}"
        );
        let row = sqlx::query_as(&sql)
            .bind(name)
            .bind(key_hash)
            .bind(address)
            .bind(now())
            .bind(owner_id)
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(row)
    }

    pub async fn list_agents(&self) -> StoreResult<Vec<AgentRow>> {
        let sql = format!("SELECT {COLUMNS} FROM agents ORDER BY id");
        Ok(sqlx::query_as(&sql).fetch_all(self.pool()).await?)
    }

    pub async fn get_agent(&self, id: i64) -> StoreResult<AgentRow> {
        let sql = format!("SELECT {COLUMNS} FROM agents WHERE id = $1");
        sqlx::query_as(&sql)
            .bind(id)
            .fetch_optional(self.pool())
            .await?
            .ok_or(StoreError::NotFound)
    }

    /// Renames an agent (a `None` name leaves it as is).
    pub async fn update_agent(&self, id: i64, name: Option<&str>) -> StoreResult<AgentRow> {
        let mut tx = self.write_tx().await?;
        let sql = format!(
            "UPDATE agents SET name = COALESCE($1, name) WHERE id = $2 RETURNING {COLUMNS}"
        );
        let row = sqlx::query_as(&sql)
            .bind(name)
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
        tx.commit().await?;
        row.ok_or(StoreError::NotFound)
    }

    /// Replaces the agent's API key: the old key stops working for new sessions at once.
    pub async fn rotate_agent_key(&self, id: i64, key_hash: &str) -> StoreResult<AgentRow> {
        let sql = format!("UPDATE agents SET api_key_hash = $1 WHERE id = $2 RETURNING {COLUMNS}");
        sqlx::query_as(&sql)
            .bind(key_hash)
            .bind(id)
            .fetch_optional(self.pool())
            .await?
            .ok_or(StoreError::NotFound)
    }

    /// Deletes an agent that has no tunnels left.
    pub async fn delete_agent(&self, id: i64) -> StoreResult<()> {
        let mut tx = self.write_tx().await?;
        let (tunnels,): (i64,) = sqlx::query_as(
            "SELECT (SELECT COUNT(*) FROM tunnels WHERE agent_id = $1) \
             + (SELECT COUNT(*) FROM tunnel_replicas WHERE agent_id = $1)",
        )
        .bind(id)
        .fetch_one(&mut *tx)
        .await?;
        if tunnels > 0 {
            return Err(still_used(id, tunnels));
        }
        let done = sqlx::query("DELETE FROM agents WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await;
        match done {
            Ok(done) if done.rows_affected() == 0 => Err(StoreError::NotFound),
            Ok(_) => Ok(tx.commit().await?),
            Err(e) if is_foreign_key_violation(&e) => Err(still_used(id, 1)),
            Err(e) => Err(e.into()),
        }
    }
}

fn still_used(id: i64, tunnels: i64) -> StoreError {
    StoreError::Conflict(format!(
        "agent {id} still serves {tunnels} tunnel(s) (as primary or replica); delete them, move \
         them to another agent or drop it from their agent_ids first"
    ))
}
