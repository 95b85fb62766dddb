//! What Agents and Gateways have in common as nodes: credentials, public key and last-seen time.

use super::Tx;
use super::{now, Store, StoreError, StoreResult};
use crate::secrets;
use std::fmt;

/// The two kinds of node that hold a session with Control.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NodeKind {
    Agent,
    Gateway,
}

impl NodeKind {
    /// `agent` or `gateway`, as logs and metrics name the kind.
    pub fn label(self) -> &'static str {
        match self {
            NodeKind::Agent => "agent",
            NodeKind::Gateway => "gateway",
        }
    }

    fn table(self) -> &'static str {
        match self {
            NodeKind::Agent => "agents",
            NodeKind::Gateway => "gateways",
        }
    }

    fn secret_column(self) -> &'static str {
        match self {
            NodeKind::Agent => "api_key_hash",
            NodeKind::Gateway => "token_hash",
        }
    }

    /// Which kind of credential a secret is, from its prefix.
    pub fn of_secret(secret: &str) -> Option<Self> {
        if secret.starts_with(secrets::AGENT_KEY_PREFIX) {
            Some(NodeKind::Agent)
        } else if secret.starts_with(secrets::GATEWAY_TOKEN_PREFIX) {
            Some(NodeKind::Gateway)
        } else {
            None
        }
    }
}

impl fmt::Display for NodeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NodeKind::Agent => "agent",
            NodeKind::Gateway => "gateway",
        })
    }
}

/// One node: its kind and database id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NodeRef {
    pub kind: NodeKind,
    pub id: i64,
}

impl fmt::Display for NodeRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind, self.id)
    }
}

/// The other node, if any, that holds `public_key` (Agents first, then Gateways).
async fn key_holder(tx: &mut Tx, public_key: &str, node: NodeRef) -> StoreResult<Option<NodeRef>> {
    for kind in [NodeKind::Agent, NodeKind::Gateway] {
        let sql = format!(
            "SELECT id FROM {} WHERE public_key = $1 AND id != $2",
            kind.table()
        );
        // Within its own table the node itself is not a conflict; in the other table no id is.
        let own = if kind == node.kind { node.id } else { -1 };
        let found: Option<(i64,)> = sqlx::query_as(&sql)
            .bind(public_key)
            .bind(own)
            .fetch_optional(&mut **tx)
            .await?;
        if let Some((id,)) = found {
            return Ok(Some(NodeRef { kind, id }));
        }
    }
    Ok(None)
}

impl Store {
    /// The node an Agent API key or Gateway token belongs to, if any.
    pub async fn authenticate_node(&self, secret: &str) -> StoreResult<Option<NodeRef>> {
        let Some(kind) = NodeKind::of_secret(secret) else {
            return Ok(None);
        };
        let sql = format!(
            "SELECT id FROM {} WHERE {} = $1",
            kind.table(),
            kind.secret_column()
        );
        let row: Option<(i64,)> = sqlx::query_as(&sql)
            .bind(secrets::hash(secret))
            .fetch_optional(self.pool())
            .await?;
        Ok(row.map(|(id,)| NodeRef { kind, id }))
    }

    /// Records the node's WireGuard public key and marks it seen now.
    /// Returns whether the key changed; `NotFound` if the node was deleted, `KeyInUse` if another
    /// node (Agent or Gateway) already holds the key: a Gateway cannot tell two peers with one key
    /// apart, so the first holder keeps it and the claim is refused.
    pub async fn node_connected(&self, node: NodeRef, public_key: &str) -> StoreResult<bool> {
        // A node coming back with the key it had (every reconnection, e.g. after a Control
        // restart) changes nothing another writer could race with: no write lock, so a burst
        // of thousands of reconnections does not queue behind it.
        let select = format!("SELECT public_key FROM {} WHERE id = $1", node.kind.table());
        let current: Option<(Option<String>,)> = sqlx::query_as(&select)
            .bind(node.id)
            .fetch_optional(self.pool())
            .await?;
        match current {
            None => return Err(StoreError::NotFound),
            Some((Some(key),)) if key == public_key => {
                self.touch_node(node).await?;
                return Ok(false);
            }
            Some(_) => {}
        }
        let mut tx = self.write_tx().await?;
        let select = format!("SELECT public_key FROM {} WHERE id = $1", node.kind.table());
        let current: Option<(Option<String>,)> = sqlx::query_as(&select)
            .bind(node.id)
            .fetch_optional(&mut *tx)
            .await?;
        let Some((current,)) = current else {
            return Err(StoreError::NotFound);
        };
        if let Some(holder) = key_holder(&mut tx, public_key, node).await? {
            return Err(StoreError::KeyInUse(holder));
        }
        let changed = current.as_deref() != Some(public_key);
        let update = format!(
            "UPDATE {} SET public_key = $1, last_seen = $2 WHERE id = $3",
            node.kind.table()
        );
        sqlx::query(&update)
            .bind(public_key)
            .bind(now())
            .bind(node.id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(changed)
    }

    /// Marks the node seen now (no-op if it was deleted).
    pub async fn touch_node(&self, node: NodeRef) -> StoreResult<()> {
        let sql = format!(
            "UPDATE {} SET last_seen = $1 WHERE id = $2",
            node.kind.table()
        );
        sqlx::query(&sql)
            .bind(now())
            .bind(node.id)
            .execute(self.pool())
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K1: &str = "MTExMTExMTExMTExMTExMTExMTExMTExMTExMTExMTE=";
    const K2: &str = "MjIyMjIyMjIyMjIyMjIyMjIyMjIyMjIyMjIyMjIyMjI=";
    const K3: &str = "MzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzM=";

    /// A database as it was before migration 0009, holding duplicate keys, migrated to now.
    async fn migrated_with_duplicates() -> Store {
        let dir = tempfile::tempdir().unwrap();
        let all = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations/sqlite");
        for entry in std::fs::read_dir(&all).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_str().unwrap().to_string();
            if name.as_str() < "0009" {
                std::fs::copy(&path, dir.path().join(name)).unwrap();
            }
        }
        sqlx::any::install_default_drivers();
        let pool = sqlx::pool::PoolOptions::<sqlx::Any>::new()
            .max_connections(1)
            .connect("sqlite::memory:")
            .await
            .unwrap();
        let before = sqlx::migrate::Migrator::new(dir.path()).await.unwrap();
        before.run(&pool).await.unwrap();
        let agents = [
            (1, "2024-01-01T00:00:00Z", K1),
            (2, "2024-01-02T00:00:00Z", K1), // a clone of agent 1's key
            (3, "2024-01-03T00:00:00Z", K2), // gateway 1's key, claimed later
            (4, "2024-01-04T00:00:00Z", K3), // its key, claimed later by gateway 2
        ];
        for (id, at, key) in agents {
            sqlx::query(
                "INSERT INTO agents (id, name, api_key_hash, wg_address, public_key, created_at) \
                 VALUES ($1, 'a', $2, $3, $4, $5)",
            )
            .bind(id)
            .bind(format!("h{id}"))
            .bind(format!("10.77.0.{id}"))
            .bind(key)
            .bind(at)
            .execute(&pool)
            .await
            .unwrap();
        }
        for (id, at, key) in [
            (1, "2024-01-01T12:00:00Z", K2),
            (2, "2024-01-05T00:00:00Z", K3),
        ] {
            sqlx::query(
                "INSERT INTO gateways (id, name, public_endpoint, token_hash, wg_address, public_key, \
                 created_at) VALUES ($1, 'g', 'g:51820', $2, $3, $4, $5)",
            )
            .bind(id)
            .bind(format!("t{id}"))
            .bind(format!("10.77.1.{id}"))
            .bind(key)
            .bind(at)
            .execute(&pool)
            .await
            .unwrap();
        }
        sqlx::migrate!("./migrations/sqlite")
            .run(&pool)
            .await
            .unwrap();
        Store {
            pool,
            backend: crate::store::Backend::Sqlite,
            url: None,
        }
    }

    async fn key_of(store: &Store, node: NodeRef) -> Option<String> {
        let sql = format!("SELECT public_key FROM {} WHERE id = $1", node.kind.table());
        let (key,): (Option<String>,) = sqlx::query_as(&sql)
            .bind(node.id)
            .fetch_one(store.pool())
            .await
            .unwrap();
        key
    }

    fn agent(id: i64) -> NodeRef {
        NodeRef {
            kind: NodeKind::Agent,
            id,
        }
    }

    fn gateway(id: i64) -> NodeRef {
        NodeRef {
            kind: NodeKind::Gateway,
            id,
        }
    }

    #[tokio::test]
    async fn migration_keeps_each_key_with_its_first_holder() {
        let store = migrated_with_duplicates().await;
        let expected = [
            (agent(1), Some(K1)),
            (agent(2), None),
            (agent(3), None),
            (agent(4), Some(K3)),
            (gateway(1), Some(K2)),
            (gateway(2), None),
        ];
        for (node, key) in expected {
            assert_eq!(key_of(&store, node).await.as_deref(), key, "{node}");
        }
        // The schema itself now refuses a duplicate, within a table and across the two.
        for sql in [
            "UPDATE agents SET public_key = $1 WHERE id = 2",
            "UPDATE gateways SET public_key = $1 WHERE id = 2",
        ] {
            let err = sqlx::query(sql).bind(K1).execute(store.pool()).await;
            assert!(err.is_err(), "{sql} was accepted");
        }
    }

    #[tokio::test]
    async fn a_key_held_by_another_node_is_refused() {
        let store = migrated_with_duplicates().await;
        // The cleared clone presents the key again: refused, naming the holder.
        match store.node_connected(agent(2), K1).await {
            Err(StoreError::KeyInUse(holder)) => assert_eq!(holder, agent(1)),
            other => panic!("expected KeyInUse, got {other:?}"),
        }
        match store.node_connected(gateway(2), K1).await {
            Err(StoreError::KeyInUse(holder)) => assert_eq!(holder, agent(1)),
            other => panic!("expected KeyInUse, got {other:?}"),
        }
        match store.node_connected(agent(3), K2).await {
            Err(StoreError::KeyInUse(holder)) => assert_eq!(holder, gateway(1)),
            other => panic!("expected KeyInUse, got {other:?}"),
        }
        assert_eq!(key_of(&store, agent(2)).await, None, "nothing written");
        // The holder itself reconnects as before; a fresh key is fine.
        assert!(!store.node_connected(agent(1), K1).await.unwrap());
        assert!(store
            .node_connected(agent(2), &"N".repeat(43))
            .await
            .unwrap());
    }
}
