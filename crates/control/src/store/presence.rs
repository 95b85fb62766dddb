//! Which Control replica holds a session with which node (PostgreSQL; see `hub::replication`).
//! Each replica writes its own rows and a heartbeat; rows of a replica whose heartbeat is
//! older than the caller's `stale_before` no longer count, and are deleted.

use super::{NodeKind, NodeRef, Store, StoreResult};

/// Records that replica `me` is alive at `now_ms`.
async fn seen(tx: &mut super::Tx, me: &str, now_ms: i64) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO control_replicas (replica, seen_ms) VALUES ($1, $2) \
         ON CONFLICT (replica) DO UPDATE SET seen_ms = excluded.seen_ms",
    )
    .bind(me)
    .bind(now_ms)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

impl Store {
    /// Replaces `me`'s presence rows with `nodes`: the nodes it has a session with, each with
    /// the ACME challenge ids it confirmed (Gateways; empty for Agents).
    pub async fn set_presence(
        &self,
        me: &str,
        nodes: &[(NodeRef, Vec<String>)],
        now_ms: i64,
    ) -> StoreResult<()> {
        let mut tx = self.pool.begin().await?;
        seen(&mut tx, me, now_ms).await?;
        sqlx::query("DELETE FROM node_presence WHERE replica = $1")
            .bind(me)
            .execute(&mut *tx)
            .await?;
        for (node, acme_ids) in nodes {
            sqlx::query(
                "INSERT INTO node_presence (replica, kind, node_id, acme_ids) \
                 VALUES ($1, $2, $3, $4)",
            )
            .bind(me)
            .bind(node.kind.label())
            .bind(node.id)
            .bind(acme_ids.join(" "))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// `me` stops: its rows go.
    pub async fn leave_presence(&self, me: &str) -> StoreResult<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM node_presence WHERE replica = $1")
            .bind(me)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM control_replicas WHERE replica = $1")
            .bind(me)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// `me` is alive; replicas not seen since `stale_before` are forgotten with their rows.
    pub async fn presence_heartbeat(
        &self,
        me: &str,
        now_ms: i64,
        stale_before: i64,
    ) -> StoreResult<()> {
        let mut tx = self.pool.begin().await?;
        seen(&mut tx, me, now_ms).await?;
        sqlx::query(
            "DELETE FROM node_presence WHERE replica IN \
             (SELECT replica FROM control_replicas WHERE seen_ms < $1)",
        )
        .bind(stale_before)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM control_replicas WHERE seen_ms < $1")
            .bind(stale_before)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The nodes other live replicas (seen since `stale_before`) have a session with, each
    /// with the ACME challenge ids it confirmed.
    pub async fn remote_presence(
        &self,
        me: &str,
        stale_before: i64,
    ) -> StoreResult<Vec<(NodeRef, Vec<String>)>> {
        let rows: Vec<(String, i64, String)> = sqlx::query_as(
            "SELECT p.kind, p.node_id, p.acme_ids FROM node_presence p \
             JOIN control_replicas r ON r.replica = p.replica \
             WHERE p.replica <> $1 AND r.seen_ms >= $2",
        )
        .bind(me)
        .bind(stale_before)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(kind, id, acme_ids)| {
                let kind = match kind.as_str() {
                    "agent" => NodeKind::Agent,
                    "gateway" => NodeKind::Gateway,
                    _ => return None,
                };
                let acme_ids = acme_ids.split_whitespace().map(str::to_owned).collect();
                Some((NodeRef { kind, id }, acme_ids))
            })
            .collect())
    }
}
