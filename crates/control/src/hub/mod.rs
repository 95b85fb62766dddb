//! Node sessions (the WebSocket over which every Agent and Gateway receives its configuration;
//! always "node session" in code and logs, as opposed to a browser's login session).
//!
//! The [`Hub`] is the in-memory meeting point of the API and the sessions:
//! - a generation counter (`watch`) bumped after every committed mutation; each session then
//!   recomputes its own snapshot and pushes it only if its hash changed;
//! - a cache of the [`World`] for the current generation, so N sessions cost one load per change;
//! - online status: how many sessions each node has open (a reconnect racing the old session's
//!   close still leaves the node online);
//! - shutdown: sessions close cleanly when Control stops, and `run` waits for them;
//! - ACME challenges in flight (pushed to every Gateway in its snapshot) and, per node, the
//!   challenges contained in the last snapshot it confirmed (`Applied`), so the ACME client can
//!   wait until every online Gateway is ready before asking the CA to validate.

mod ask;
mod conn;
mod presence;
pub mod replication;
pub mod traffic;

pub use ask::AskError;
pub use conn::serve;

use crate::metrics::ControlMetrics;
use crate::snapshot::World;
use crate::store::{Backend, NodeKind, NodeRef, Store, StoreResult};
use kakuremichi_proto::{AcmeChallenges, OwnPort, PortError, StreamCounters, WebPorts};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// The setting that holds the leader's ACME challenges for the other replicas (PostgreSQL).
const SHARED_CHALLENGES: &str = "acme_challenges";
/// How many hellos at once may record their node's key (each may wait for the write lock while
/// holding a pooled connection).
const HELLO_WRITES: usize = 2;

/// Shared state of all node sessions.
pub struct Hub {
    store: Store,
    generation: watch::Sender<u64>,
    /// Bumped with `generation` by this replica's own changes only: what it tells the others
    /// (`replication`).
    local_changes: watch::Sender<u64>,
    world: tokio::sync::Mutex<Option<(u64, Arc<World>)>>,
    online: Mutex<HashMap<NodeRef, usize>>,
    shutdown: watch::Sender<bool>,
    live_node_sessions: watch::Sender<usize>,
    pub(crate) heartbeat_interval: Duration,
    pub(crate) heartbeat_timeout: Duration,
    challenges: Mutex<AcmeChallenges>,
    /// Bumped when this replica's challenges change and must be written for the others
    /// (PostgreSQL; see `replication`).
    challenges_edited: watch::Sender<u64>,
    /// Bumped when a node's first session opens or its last one closes here (PostgreSQL: the
    /// presence the other replicas read; see `replication`).
    presence_edited: watch::Sender<u64>,
    /// The nodes other live replicas have a session with (PostgreSQL), each with the ACME
    /// challenges it confirmed there.
    remote_online: Mutex<Arc<HashMap<NodeRef, Arc<HashSet<String>>>>>,
    /// Per online node: ids of the challenges in the last snapshot it applied. Also bumped when
    /// nodes come and go, so waiters re-check who is online.
    acks: watch::Sender<HashMap<NodeRef, Arc<HashSet<String>>>>,
    hsts_max_age: AtomicU32,
    /// Agents serving tunnels with replicas (from the latest world): Gateway snapshots carry their
    /// online state, so their sessions opening and closing is a change.
    replicated_agents: Mutex<Arc<HashSet<i64>>>,
    /// Control's public URL, told to Gateways for access-control redirects ("" if unset).
    access_url: std::sync::OnceLock<String>,
    /// Per node: why its latest snapshot did not reach it or was not applied (it then runs on
    /// its previous one). Cleared once it applies a snapshot. One entry at most per node.
    config_errors: Mutex<HashMap<NodeRef, String>>,
    /// Per online Gateway: the `tcp`/`udp` tunnel ports it reports it could not bind (its own
    /// word, kept while its session lasts).
    port_errors: Mutex<HashMap<NodeRef, Arc<Vec<PortError>>>>,
    /// Per online Gateway: what it carried for each stream tunnel (its word, since it started).
    stream_counters: Mutex<HashMap<NodeRef, Arc<Vec<StreamCounters>>>>,
    /// Per Gateway that reported them: the ports it listens on itself (kept after it leaves:
    /// they are still its ports when it comes back).
    own_ports: Mutex<HashMap<NodeRef, Vec<OwnPort>>>,
    /// Per Gateway that reported them: the ports browsers reach its HTTP and HTTPS on (kept
    /// after it leaves, like its own ports).
    web_ports: Mutex<HashMap<NodeRef, WebPorts>>,
    /// Per node, how many times its credential was replaced: a session opened with an older
    /// credential ends when the count it started with moves on.
    credential_epochs: watch::Sender<HashMap<NodeRef, u64>>,
    /// Hellos recording their node's key at once (see `conn`): fewer than the smallest pool.
    pub(crate) hello_writes: tokio::sync::Semaphore,
    /// Disabled Gateways (from the latest world): they get no secrets, so they answer no ACME
    /// challenge and are not waited for.
    disabled_gateways: Mutex<Arc<HashSet<i64>>>,
    /// What this replica counts about itself (`--metrics-listen`).
    metrics: ControlMetrics,
    /// When the latest change (here or on another replica) was heard of.
    changed_at: Mutex<Instant>,
    /// The sessions questions can be sent on (see `ask`).
    asks: ask::Askers,
    /// The Gateways' traffic reports, on their way to the history (see `traffic`).
    traffic: traffic::Recorder,
}

/// No Gateway is connected, so no ACME challenge can be answered.
#[derive(Debug, thiserror::Error)]
#[error("no Gateway is connected to Control")]
pub struct NoGateway;

impl Hub {
    pub fn new(
        store: Store,
        heartbeat_interval: Duration,
        heartbeat_timeout: Duration,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            generation: watch::channel(0).0,
            local_changes: watch::channel(0).0,
            world: tokio::sync::Mutex::new(None),
            online: Mutex::new(HashMap::new()),
            shutdown: watch::channel(false).0,
            live_node_sessions: watch::channel(0).0,
            heartbeat_interval,
            heartbeat_timeout,
            challenges: Mutex::new(AcmeChallenges::default()),
            challenges_edited: watch::channel(0).0,
            presence_edited: watch::channel(0).0,
            remote_online: Mutex::new(Arc::default()),
            acks: watch::channel(HashMap::new()).0,
            hsts_max_age: AtomicU32::new(0),
            replicated_agents: Mutex::new(Arc::default()),
            access_url: std::sync::OnceLock::new(),
            config_errors: Mutex::new(HashMap::new()),
            port_errors: Mutex::new(HashMap::new()),
            stream_counters: Mutex::new(HashMap::new()),
            own_ports: Mutex::new(HashMap::new()),
            web_ports: Mutex::new(HashMap::new()),
            credential_epochs: watch::channel(HashMap::new()).0,
            disabled_gateways: Mutex::new(Arc::default()),
            hello_writes: tokio::sync::Semaphore::new(HELLO_WRITES),
            metrics: ControlMetrics::default(),
            changed_at: Mutex::new(Instant::now()),
            asks: ask::Askers::default(),
            traffic: traffic::Recorder::default(),
        })
    }

    /// Records (or with `None` clears) why `node` is not running its latest snapshot.
    pub(crate) fn set_config_error(&self, node: NodeRef, error: Option<String>) {
        let mut errors = lock(&self.config_errors);
        match error {
            Some(e) => errors.insert(node, e),
            None => errors.remove(&node),
        };
    }

    /// Why `node` is not running its latest snapshot, if it is not (see the status API).
    pub fn config_error(&self, node: NodeRef) -> Option<String> {
        lock(&self.config_errors).get(&node).cloned()
    }

    /// Records the ports `node` could not bind (empty: all bound).
    pub(crate) fn set_port_errors(&self, node: NodeRef, errors: Vec<PortError>) {
        let mut all = lock(&self.port_errors);
        if errors.is_empty() {
            all.remove(&node);
        } else {
            all.insert(node, Arc::new(errors));
        }
    }

    pub(crate) fn set_stream_counters(&self, node: NodeRef, counters: Vec<StreamCounters>) {
        lock(&self.stream_counters).insert(node, Arc::new(counters));
    }

    /// What the online Gateways carried for each stream tunnel, summed, by tunnel id.
    pub fn stream_counters(&self) -> HashMap<i64, StreamCounters> {
        let mut sums: HashMap<i64, StreamCounters> = HashMap::new();
        let all = lock(&self.stream_counters);
        let gateways = all.iter().filter(|(n, _)| n.kind == NodeKind::Gateway);
        for c in gateways.flat_map(|(_, c)| c.iter()) {
            let sum = sums.entry(c.tunnel_id).or_default();
            sum.tunnel_id = c.tunnel_id;
            sum.connections = sum.connections.saturating_add(c.connections);
            sum.active = sum.active.saturating_add(c.active);
            sum.bytes_in = sum.bytes_in.saturating_add(c.bytes_in);
            sum.bytes_out = sum.bytes_out.saturating_add(c.bytes_out);
        }
        sums
    }

    pub(crate) fn set_own_ports(&self, node: NodeRef, ports: Vec<OwnPort>) {
        lock(&self.own_ports).insert(node, ports);
    }

    pub(crate) fn set_web_ports(&self, node: NodeRef, ports: WebPorts) {
        lock(&self.web_ports).insert(node, ports);
    }

    /// The public HTTP and HTTPS ports Gateways reported, by Gateway id.
    pub fn gateway_web_ports(&self) -> HashMap<i64, WebPorts> {
        lock(&self.web_ports)
            .iter()
            .filter(|(n, _)| n.kind == NodeKind::Gateway)
            .map(|(n, p)| (n.id, *p))
            .collect()
    }

    /// The ports Gateways reported listening on for themselves.
    pub fn gateway_own_ports(&self) -> HashSet<OwnPort> {
        lock(&self.own_ports)
            .iter()
            .filter(|(n, _)| n.kind == NodeKind::Gateway)
            .flat_map(|(_, p)| p.iter().copied())
            .collect()
    }

    /// Every online Gateway's unbound ports, by Gateway id.
    pub fn port_errors(&self) -> HashMap<i64, Arc<Vec<PortError>>> {
        lock(&self.port_errors)
            .iter()
            .filter(|(n, _)| n.kind == NodeKind::Gateway)
            .map(|(n, e)| (n.id, e.clone()))
            .collect()
    }

    /// The HSTS max-age put into routes that redirect to https.
    pub fn set_hsts_max_age(&self, seconds: u32) {
        self.hsts_max_age.store(seconds, Ordering::Relaxed);
    }

    /// Control's public URL, put into every Gateway's access config; set once at start.
    pub fn set_access_url(&self, url: String) {
        let _ = self.access_url.set(url.trim_end_matches('/').to_string());
    }

    /// Adds or removes ACME challenges (under the lock) and pushes the change to every Gateway.
    /// With several replicas (PostgreSQL) the challenges are also written to the database, so
    /// that Gateways connected to the other replicas answer them too.
    pub fn edit_challenges(&self, edit: impl FnOnce(&mut AcmeChallenges)) {
        edit(&mut lock(&self.challenges));
        if self.store.backend() == Backend::Postgres {
            // `replication` writes them, then tells every replica (this one included).
            self.challenges_edited.send_modify(|n| *n += 1);
        } else {
            self.changed();
        }
    }

    /// Writes this replica's ACME challenges for every replica to read (PostgreSQL).
    pub(crate) async fn share_challenges(&self) -> StoreResult<()> {
        let current = lock(&self.challenges).clone();
        let json = serde_json::to_string(&current).unwrap_or_default();
        self.store.set_setting(SHARED_CHALLENGES, &json).await
    }

    /// The ACME challenges in flight: this replica's own, or on PostgreSQL the leader's, as
    /// shared in the database.
    async fn current_challenges(&self) -> StoreResult<AcmeChallenges> {
        if self.store.backend() != Backend::Postgres {
            return Ok(lock(&self.challenges).clone());
        }
        Ok(self
            .store
            .setting(SHARED_CHALLENGES)
            .await?
            .and_then(|json| serde_json::from_str(&json).ok())
            .unwrap_or_default())
    }

    /// Records that `node` applied a snapshot holding the challenges `ids`.
    /// With several replicas (PostgreSQL) a Gateway's new confirmations are written for the
    /// leader, which may be another replica (see `replication`).
    pub(crate) fn applied(&self, node: NodeRef, ids: Arc<HashSet<String>>) {
        let mut news = false;
        self.acks.send_modify(|acks| {
            news = acks.get(&node) != Some(&ids);
            acks.insert(node, ids);
        });
        if news && node.kind == NodeKind::Gateway && self.store.backend() == Backend::Postgres {
            self.presence_edited.send_modify(|n| *n += 1);
        }
    }

    /// Whether `gateway` confirmed every challenge of `ids`, here or on another replica.
    fn confirmed(
        &self,
        acks: &HashMap<NodeRef, Arc<HashSet<String>>>,
        gateway: &NodeRef,
        ids: &[String],
    ) -> bool {
        let all = |a: &HashSet<String>| ids.iter().all(|id| a.contains(id));
        acks.get(gateway).is_some_and(|a| all(a))
            || lock(&self.remote_online)
                .get(gateway)
                .is_some_and(|a| all(a))
    }

    /// Ends every open session of `node`: its credential was replaced (an Agent's key rotated),
    /// so whoever held the old one must not keep receiving its configuration.
    pub fn credential_replaced(&self, node: NodeRef) {
        self.credential_epochs.send_modify(|epochs| {
            *epochs.entry(node).or_insert(0) += 1;
        });
    }

    /// How many times `node`'s credential was replaced so far; a session remembers it at start.
    pub fn credential_epoch(&self, node: NodeRef) -> u64 {
        self.credential_epochs
            .borrow()
            .get(&node)
            .copied()
            .unwrap_or(0)
    }

    /// Watches credential replacements; see [`Hub::credential_replaced`].
    pub(crate) fn subscribe_credentials(&self) -> watch::Receiver<HashMap<NodeRef, u64>> {
        self.credential_epochs.subscribe()
    }

    /// Waits until every online Gateway (on any replica) has applied a snapshot holding all of
    /// `ids`, at most
    /// `limit` (then returns anyway: the Gateways that did confirm can answer). Returns how many
    /// Gateways were online and ready; fails only when none is online.
    pub async fn wait_gateways_ready(
        &self,
        ids: &[String],
        limit: Duration,
    ) -> Result<usize, NoGateway> {
        // Refresh the list of disabled Gateways: they are sent no challenge, so never confirm one.
        if let Err(e) = self.world().await {
            tracing::warn!(error = %e, "cannot refresh the Gateways before an ACME validation");
        }
        let mut acks = self.acks.subscribe();
        let ready = |acks: &HashMap<NodeRef, Arc<HashSet<String>>>| {
            let online = self.online_gateways();
            let confirmed = online
                .iter()
                .filter(|g| self.confirmed(acks, g, ids))
                .count();
            (online.len(), confirmed)
        };
        let all = acks.wait_for(|a| {
            let (online, confirmed) = ready(a);
            online > 0 && confirmed == online
        });
        let _ = tokio::time::timeout(limit, all).await;
        let (online, confirmed) = ready(&acks.borrow());
        if online == 0 {
            return Err(NoGateway);
        }
        if confirmed < online {
            tracing::warn!(
                online,
                confirmed,
                "not every Gateway confirmed the ACME challenge in time; asking the CA to validate anyway"
            );
        }
        Ok(confirmed)
    }

    /// Notifies on node connects and disconnects (and challenge confirmations).
    pub(crate) fn subscribe_nodes(
        &self,
    ) -> watch::Receiver<HashMap<NodeRef, Arc<HashSet<String>>>> {
        self.acks.subscribe()
    }

    pub(crate) fn store(&self) -> &Store {
        &self.store
    }

    /// Call after every committed change that may alter a snapshot.
    pub fn changed(&self) {
        self.changed_elsewhere();
        self.local_changes.send_modify(|g| *g += 1);
    }

    /// Another Control replica committed a change (or this one may have missed some): the
    /// sessions here recompute, and nothing is told to the others.
    pub(crate) fn changed_elsewhere(&self) {
        *lock(&self.changed_at) = Instant::now();
        self.generation.send_modify(|g| *g += 1);
    }

    /// How long ago the latest change was heard of.
    pub(crate) fn since_change(&self) -> Duration {
        lock(&self.changed_at).elapsed()
    }

    pub fn metrics(&self) -> &ControlMetrics {
        &self.metrics
    }

    /// Notifies on every [`Hub::changed`].
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// A world that reflects every change made before the call, loaded at most once per
    /// generation.
    pub async fn world(&self) -> StoreResult<Arc<World>> {
        // What this caller needs: the changes up to now. A world loaded while it waited for the
        // lock is new enough. Asking for the generation current once the lock is ours instead
        // made every waiter reload when changes kept coming (10,000 Agents connecting, each
        // a change): thousands of sessions queued behind one reload each, stopped reading
        // their nodes' frames for minutes, and closed them for a "heartbeat timeout".
        let wanted = *self.generation.borrow();
        let mut cache = self.world.lock().await;
        if let Some((cached, world)) = cache.as_ref() {
            if *cached >= wanted {
                return Ok(world.clone());
            }
        }
        // Read under the lock: a world loaded after reading generation g reflects every commit up to g.
        let generation = *self.generation.borrow();
        let loading = Instant::now();
        let mut world = self.store.load_world().await?;
        self.metrics.world_loaded(loading.elapsed());
        world.acme = self.current_challenges().await?;
        world.hsts_max_age = self.hsts_max_age.load(Ordering::Relaxed);
        world.access.control_url = self.access_url.get().cloned().unwrap_or_default();
        let world = Arc::new(world);
        *lock(&self.replicated_agents) = Arc::new(world.replicated_agents());
        *lock(&self.disabled_gateways) = Arc::new(world.disabled_gateways());
        *cache = Some((generation, world.clone()));
        Ok(world)
    }

    fn node_session_started(self: &Arc<Self>) -> LiveGuard {
        self.live_node_sessions.send_modify(|n| *n += 1);
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
    pub async fn wait_node_sessions_closed(&self, limit: Duration) -> bool {
        let mut live = self.live_node_sessions.subscribe();
        let all_closed = async move {
            let _ = live.wait_for(|n| *n == 0).await;
        };
        tokio::time::timeout(limit, all_closed).await.is_ok()
    }
}

/// Counts a running session task, so shutdown can wait for it.
struct LiveGuard {
    hub: Arc<Hub>,
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.hub
            .live_node_sessions
            .send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// Locks a std mutex, shrugging off poison: the data behind these locks stays consistent.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
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
