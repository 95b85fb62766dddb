//! Tunnel replicas: Agents that serve a tunnel besides its primary (`tunnels.agent_id`), each on
//! a port of its own stack. Written only inside a tunnel's create/update transaction, so a tunnel
//! and its replica set always change together.

use super::Tx;
use super::{alloc, StoreResult};

/// Most Agents one tunnel may have, primary included.
pub const MAX_AGENTS_PER_TUNNEL: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ReplicaRow {
    pub tunnel_id: i64,
    pub agent_id: i64,
    pub port: i64,
}

/// Makes `replicas` (primary excluded, no duplicates) the replica set of `tunnel_id`: rows of
/// Agents no longer listed go, Agents already listed keep their port, new ones get a free port.
pub(super) async fn set(tx: &mut Tx, tunnel_id: i64, replicas: &[i64]) -> StoreResult<()> {
    let current = of_tunnel(tx, tunnel_id).await?;
    for row in current.iter().filter(|r| !replicas.contains(&r.agent_id)) {
        sqlx::query("DELETE FROM tunnel_replicas WHERE tunnel_id = $1 AND agent_id = $2")
            .bind(tunnel_id)
            .bind(row.agent_id)
            .execute(&mut **tx)
            .await?;
    }
    for &agent_id in replicas {
        if current.iter().any(|r| r.agent_id == agent_id) {
            continue;
        }
        super::tunnels::require_agent(tx, agent_id).await?;
        let port = alloc::allocate_port(tx, agent_id).await?;
        sqlx::query("INSERT INTO tunnel_replicas (tunnel_id, agent_id, port) VALUES ($1, $2, $3)")
            .bind(tunnel_id)
            .bind(agent_id)
            .bind(port)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

/// The replicas of one tunnel, by agent id.
pub(super) async fn of_tunnel(tx: &mut Tx, tunnel_id: i64) -> StoreResult<Vec<ReplicaRow>> {
    Ok(sqlx::query_as(
        "SELECT tunnel_id, agent_id, port FROM tunnel_replicas WHERE tunnel_id = $1 ORDER BY agent_id",
    )
    .bind(tunnel_id)
    .fetch_all(&mut **tx)
    .await?)
}

impl super::Store {
    /// Every replica of every tunnel, by tunnel then agent.
    pub async fn list_replicas(&self) -> StoreResult<Vec<ReplicaRow>> {
        Ok(sqlx::query_as(
            "SELECT tunnel_id, agent_id, port FROM tunnel_replicas ORDER BY tunnel_id, agent_id",
        )
        .fetch_all(self.pool())
        .await?)
    }

    /// The replicas of one tunnel, by agent id.
    pub async fn tunnel_replicas(&self, tunnel_id: i64) -> StoreResult<Vec<ReplicaRow>> {
        Ok(sqlx::query_as(
            "SELECT tunnel_id, agent_id, port FROM tunnel_replicas WHERE tunnel_id = $1 ORDER BY agent_id",
        )
        .bind(tunnel_id)
        .fetch_all(self.pool())
        .await?)
    }
}
