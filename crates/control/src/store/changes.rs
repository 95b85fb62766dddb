//! Changes made by the other Control replicas on the same PostgreSQL database: each replica
//! announces its committed changes on a channel (`NOTIFY`) and listens to the others'
//! (`LISTEN`), so every replica's node sessions recompute their snapshots within moments of a
//! change made anywhere. Notifications are transient: a listener whose connection was lost
//! reports [`Heard::Resync`] once it is back, and the replica then reloads everything, so a
//! missed notification never loses a change. SQLite has one Control, and no feed.

use super::{Backend, Store, StoreError, StoreResult};
use sqlx::postgres::PgListener;

/// The channel every replica announces on and listens to.
const CHANNEL: &str = "kakuremichi_changed";
/// What a presence notice adds to its sender's name.
const PRESENCE: &str = " presence";

/// What a [`ChangeFeed`] heard.
#[derive(Debug, PartialEq, Eq)]
pub enum Heard {
    /// Another replica committed a change.
    Change,
    /// Another replica's node sessions came or went (see `presence`).
    Presence,
    /// The feed was cut and is back: changes made meanwhile were not heard, reload.
    Resync,
}

/// The other replicas' changes, as they come.
pub struct ChangeFeed {
    listener: PgListener,
    me: String,
    /// The last attempt failed: the next success is a reconnection.
    lost: bool,
}

impl Store {
    /// Tells the other replicas that this one (`me`) committed a change.
    pub async fn announce_change(&self, me: &str) -> StoreResult<()> {
        if self.backend == Backend::Postgres {
            sqlx::query("SELECT CAST(pg_notify($1, $2) AS TEXT)")
                .bind(CHANNEL)
                .bind(me)
                .execute(&self.pool)
                .await?;
        }
        Ok(())
    }

    /// Tells the other replicas that this one's node sessions came or went.
    pub async fn announce_presence(&self, me: &str) -> StoreResult<()> {
        self.announce_change(&format!("{me}{PRESENCE}")).await
    }

    /// The feed of the other replicas' changes; `None` on SQLite.
    pub async fn change_feed(&self, me: &str) -> StoreResult<Option<ChangeFeed>> {
        let Some(url) = self.url.as_deref() else {
            return Ok(None);
        };
        let mut listener = PgListener::connect(url).await?;
        listener.listen(CHANNEL).await?;
        Ok(Some(ChangeFeed {
            listener,
            me: me.to_string(),
            lost: false,
        }))
    }
}

impl ChangeFeed {
    /// Waits for the next change of another replica, or for a reconnection after a cut. An
    /// error means the database cannot be reached now: call again after a pause.
    pub async fn next(&mut self) -> StoreResult<Heard> {
        if self.lost {
            // Reconnect (the listener listens again on its own), then resync.
            sqlx::query("SELECT 1")
                .execute(&mut self.listener)
                .await
                .map_err(StoreError::Db)?;
            self.lost = false;
            return Ok(Heard::Resync);
        }
        loop {
            match self.listener.try_recv().await {
                Ok(Some(n)) if n.payload().split(' ').next() == Some(self.me.as_str()) => continue,
                Ok(Some(n)) if n.payload().ends_with(PRESENCE) => return Ok(Heard::Presence),
                Ok(Some(_)) => return Ok(Heard::Change),
                // The connection was lost and is back already.
                Ok(None) => return Ok(Heard::Resync),
                Err(e) => {
                    self.lost = true;
                    return Err(StoreError::Db(e));
                }
            }
        }
    }
}
