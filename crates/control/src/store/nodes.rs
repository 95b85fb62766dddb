//! What Agents and Gateways have in common as nodes: credentials, public key and last-seen time.

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
    /// Returns whether the key changed; `NotFound` if the node was deleted.
    pub async fn node_connected(&self, node: NodeRef, public_key: &str) -> StoreResult<bool> {
        let mut tx = self.write_tx().await?;
        let select = format!("SELECT public_key FROM {} WHERE id = $1", node.kind.table());
        let current: Option<(Option<String>,)> = sqlx::query_as(&select)
            .bind(node.id)
            .fetch_optional(&mut *tx)
            .await?;
        let Some((current,)) = current else {
            return Err(StoreError::NotFound);
        };
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
