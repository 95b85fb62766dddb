//! Temporary tunnels (`kakuremichi share`): which Agent and tunnel belong to one command line,
//! whose they are, and until when. The Agent and the tunnel themselves are ordinary rows.

use super::{now, Store, StoreResult};

/// A temporary tunnel as stored.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
pub struct TemporaryRow {
    pub id: i64,
    pub owner_id: i64,
    pub agent_id: i64,
    pub tunnel_id: i64,
    pub created_at: String,
    pub expires_at: Option<String>,
}

impl Store {
    /// Records that `agent_id` and `tunnel_id` make one temporary tunnel of `owner_id`.
    pub async fn add_temporary(
        &self,
        owner_id: i64,
        agent_id: i64,
        tunnel_id: i64,
        expires_at: Option<&str>,
    ) -> StoreResult<TemporaryRow> {
        let mut tx = self.write_tx().await?;
        let row = sqlx::query_as(
            "INSERT INTO temporary_tunnels (owner_id, agent_id, tunnel_id, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5) RETURNING *",
        )
        .bind(owner_id)
        .bind(agent_id)
        .bind(tunnel_id)
        .bind(now())
        .bind(expires_at)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(row)
    }

    /// Deletes a temporary tunnel's tunnel (when `tunnel_id` is given) and its Agent in one
    /// transaction, so no reader sees the share gone while its Agent is still there; the
    /// `temporary_tunnels` row goes with them. An Agent that serves anything else stays.
    pub async fn delete_temporary(&self, agent_id: i64, tunnel_id: Option<i64>) -> StoreResult<()> {
        let mut tx = self.write_tx().await?;
        if let Some(id) = tunnel_id {
            sqlx::query("DELETE FROM tunnels WHERE id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query(
            "DELETE FROM agents WHERE id = $1 \
             AND NOT EXISTS (SELECT 1 FROM tunnels WHERE agent_id = $1) \
             AND NOT EXISTS (SELECT 1 FROM tunnel_replicas WHERE agent_id = $1)",
        )
        .bind(agent_id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn temporary(&self, id: i64) -> StoreResult<Option<TemporaryRow>> {
        Ok(
            sqlx::query_as("SELECT * FROM temporary_tunnels WHERE id = $1")
                .bind(id)
                .fetch_optional(self.pool())
                .await?,
        )
    }

    /// The Agents of temporary tunnels (they come and go with a command line: no alert).
    pub async fn temporary_agent_ids(&self) -> StoreResult<Vec<i64>> {
        let rows: Vec<(i64,)> = sqlx::query_as("SELECT agent_id FROM temporary_tunnels")
            .fetch_all(self.pool())
            .await?;
        Ok(rows.into_iter().map(|(id,)| id).collect())
    }

    /// Every temporary tunnel of `owner_id`, oldest first.
    pub async fn temporaries_of(&self, owner_id: i64) -> StoreResult<Vec<TemporaryRow>> {
        Ok(
            sqlx::query_as("SELECT * FROM temporary_tunnels WHERE owner_id = $1 ORDER BY id")
                .bind(owner_id)
                .fetch_all(self.pool())
                .await?,
        )
    }

    /// Temporary tunnels past their `expires_at`, or whose Agent was last seen (or, never seen,
    /// made) before `stale_before`; the caller still checks the Agent is not online now.
    pub async fn temporaries_to_sweep(&self, stale_before: &str) -> StoreResult<Vec<TemporaryRow>> {
        Ok(sqlx::query_as(
            "SELECT t.* FROM temporary_tunnels t JOIN agents a ON a.id = t.agent_id \
             WHERE (t.expires_at IS NOT NULL AND t.expires_at <= $1) \
                OR COALESCE(a.last_seen, t.created_at) < $2 \
             ORDER BY t.id",
        )
        .bind(now())
        .bind(stale_before)
        .fetch_all(self.pool())
        .await?)
    }
}
