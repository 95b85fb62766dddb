//! Which Control replica does the work that must happen once (ACME orders and renewals, DNS
//! records, backups, sweeps): the one holding a PostgreSQL session-level advisory lock on a
//! connection of its own. The lock goes with the connection: a replica that dies, or loses its
//! connection, loses it, and another replica takes it on its next try. SQLite has one Control,
//! which always leads.

use super::{Backend, Store, StoreResult};
use sqlx::Connection as _;
use std::time::Duration;

/// The advisory lock key of the leader ("kmlead").
const LEADER_LOCK: i64 = 0x6b6d_6c65_6164;

/// How long a check of the lease may take before the lease counts as lost.
const CHECK_TIMEOUT: Duration = Duration::from_secs(3);

/// This replica leads while it holds a `Lease`.
pub struct Lease {
    /// PostgreSQL: the connection holding the lock. SQLite: none, and the lease never ends.
    conn: Option<sqlx::PgConnection>,
}

impl Store {
    /// Takes the lead if no other replica holds it: `Some` when this replica now leads.
    pub async fn try_lead(&self) -> StoreResult<Option<Lease>> {
        let (Backend::Postgres, Some(url)) = (self.backend, self.url.as_deref()) else {
            return Ok(Some(Lease { conn: None }));
        };
        let mut conn = sqlx::PgConnection::connect(url).await?;
        let (got,): (bool,) = sqlx::query_as("SELECT pg_try_advisory_lock($1)")
            .bind(LEADER_LOCK)
            .fetch_one(&mut conn)
            .await?;
        if got {
            Ok(Some(Lease { conn: Some(conn) }))
        } else {
            let _ = conn.close().await;
            Ok(None)
        }
    }
}

impl Lease {
    /// True while the lock is still this replica's: its connection answers, and still holds it.
    pub async fn still_held(&mut self) -> bool {
        let Some(conn) = self.conn.as_mut() else {
            return true;
        };
        let check = sqlx::query_as::<_, (bool,)>(
            "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' \
             AND pid = pg_backend_pid() AND granted \
             AND ((CAST(classid AS BIGINT) << 32) | CAST(objid AS BIGINT)) = $1)",
        )
        .bind(LEADER_LOCK)
        .fetch_one(conn);
        matches!(
            tokio::time::timeout(CHECK_TIMEOUT, check).await,
            Ok(Ok((true,)))
        )
    }

    /// Gives the lead up (the connection closes, and with it the lock).
    pub async fn release(mut self) {
        if let Some(conn) = self.conn.take() {
            let _ = conn.close().await;
        }
    }
}
