//! Node sessions: the WebSocket over which every Agent and Gateway receives its configuration.
//!
//! The [`Hub`] is the in-memory meeting point of the API and the sessions:
//! - a generation counter (`watch`) bumped after every committed mutation; each session then
//!   recomputes its own snapshot and pushes it only if its hash changed;
//! - a cache of the [`World`] for the current generation, so N sessions cost one load per change;
//! - online status: how many sessions each node has open (a reconnect racing the old session's
//!   close still leaves the node online);
//! - shutdown: sessions close cleanly when Control stops, and `run` waits for them.

mod conn;

pub use conn::serve;

use crate::snapshot::World;
use crate::store::{NodeRef, Store, StoreResult};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::watch;

/// Shared state of all node sessions.
pub struct Hub {
    store: Store,
    generation: watch::Sender<u64>,
    world: tokio::sync::Mutex<Option<(u64, Arc<World>)>>,
    online: Mutex<HashMap<NodeRef, usize>>,
    shutdown: watch::Sender<bool>,
    live_sessions: watch::Sender<usize>,
    pub(crate) heartbeat_interval: Duration,
    pub(crate) heartbeat_timeout: Duration,
}

impl Hub {
    pub fn new(
        store: Store,
        heartbeat_interval: Duration,
        heartbeat_timeout: Duration,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            generation: watch::channel(0).0,
            world: tokio::sync::Mutex::new(None),
            online: Mutex::new(HashMap::new()),
            shutdown: watch::channel(false).0,
            live_sessions: watch::channel(0).0,
            heartbeat_interval,
            heartbeat_timeout,
        })
    }

    pub(crate) fn store(&self) -> &Store {
        &self.store
    }

    /// Call after every committed change that may alter a snapshot.
    pub fn changed(&self) {
        self.generation.send_modify(|g| *g += 1);
    }

    /// Notifies on every [`Hub::changed`].
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// The world as of the latest generation, loaded at most once per generation.
    pub async fn world(&self) -> StoreResult<Arc<World>> {
        let mut cache = self.world.lock().await;
        // Read under the lock: a world loaded after reading generation g reflects every commit up to g.
        let generation = *self.generation.borrow();
        if let Some((cached, world)) = cache.as_ref() {
            if *cached == generation {
                return Ok(world.clone());
            }
        }
        let world = Arc::new(self.store.load_world().await?);
        *cache = Some((generation, world.clone()));
        Ok(world)
    }

    /// True while at least one session of `node` is open.
    pub fn is_online(&self, node: NodeRef) -> bool {
        self.online
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&node)
            .is_some_and(|n| *n > 0)
    }

    fn mark_online(self: &Arc<Self>, node: NodeRef) -> OnlineGuard {
        *self
            .online
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(node)
            .or_insert(0) += 1;
        OnlineGuard {
            hub: self.clone(),
            node,
        }
    }

    fn session_started(self: &Arc<Self>) -> LiveGuard {
        self.live_sessions.send_modify(|n| *n += 1);
        LiveGuard { hub: self.clone() }
    }

    fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// Asks every session to close.
    pub fn begin_shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    /// Waits until every session task has ended, at most `limit`.
    pub async fn wait_sessions_closed(&self, limit: Duration) -> bool {
        let mut live = self.live_sessions.subscribe();
        let all_closed = async move {
            let _ = live.wait_for(|n| *n == 0).await;
        };
        tokio::time::timeout(limit, all_closed).await.is_ok()
    }
}

/// Keeps a node online while held.
struct OnlineGuard {
    hub: Arc<Hub>,
    node: NodeRef,
}

impl Drop for OnlineGuard {
    fn drop(&mut self) {
        let mut online = self
            .hub
            .online
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = online.get_mut(&self.node) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                online.remove(&self.node);
            }
        }
    }
}

/// Counts a running session task, so shutdown can wait for it.
struct LiveGuard {
    hub: Arc<Hub>,
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.hub
            .live_sessions
            .send_modify(|n| *n = n.saturating_sub(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::NodeKind;

    #[tokio::test]
    async fn online_counts_overlapping_sessions() {
        let store = Store::open("sqlite::memory:").await.unwrap();
        let hub = Hub::new(store, Duration::from_secs(1), Duration::from_secs(2));
        let node = NodeRef {
            kind: NodeKind::Agent,
            id: 1,
        };
        let old = hub.mark_online(node);
        let new = hub.mark_online(node);
        drop(old);
        assert!(
            hub.is_online(node),
            "the reconnected session keeps the node online"
        );
        drop(new);
        assert!(!hub.is_online(node));
    }

    #[tokio::test]
    async fn world_is_reloaded_after_a_change_only() {
        let store = Store::open("sqlite::memory:").await.unwrap();
        let hub = Hub::new(store, Duration::from_secs(1), Duration::from_secs(2));
        let a = hub.world().await.unwrap();
        let b = hub.world().await.unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        hub.changed();
        let c = hub.world().await.unwrap();
        assert!(!Arc::ptr_eq(&a, &c));
    }
}
