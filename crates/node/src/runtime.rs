//! The start-up and main loop every node shares, so that a role's `run` holds only what is its
//! own (the Gateway's proxy, the Agent's forwarding).
//!
//! [`NodeRuntime::start`] checks the settings, opens the data directory, loads (or generates) the
//! WireGuard key, reads the cached snapshot and starts the [`ControlLink`]. The role then applies
//! the cached snapshot, if any, and loops on [`NodeRuntime::next`]: a new snapshot to apply, its
//! periodic chore, or the end (shutdown requested, or the link gone).

use crate::{
    ConfigError, ControlLink, HandlerSlot, LinkConfig, LinkEvent, NodeConfig, NodeState,
    NodeStatus, QueryHandler, StateError,
};
use kakuremichi_proto::ConfigSnapshot;
use kakuremichi_tunnel::PrivateKey;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Interval;

/// Why a node cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    State(#[from] StateError),
}

/// What the role does next.
#[derive(Debug)]
pub enum Step {
    /// Apply this snapshot (verified, and already in the cache).
    Apply(Arc<ConfigSnapshot>),
    /// Time for the role's periodic chore.
    Tick,
    /// Shut down: the shutdown future resolved, or the link ended.
    Stop,
}

/// A started node: its key and state, the link to Control, and the shutdown it waits for. The
/// link stops when this is dropped.
pub struct NodeRuntime<'a> {
    key: PrivateKey,
    state: NodeState,
    cached: Option<ConfigSnapshot>,
    events: mpsc::Receiver<LinkEvent>,
    link: JoinHandle<()>,
    shutdown: Pin<Box<dyn Future<Output = ()> + Send + 'a>>,
    tick_every: Duration,
    /// Started on the first [`NodeRuntime::next`], after the cached snapshot is applied.
    tick: Option<Interval>,
    stopped: bool,
    status: watch::Sender<NodeStatus>,
    queries: HandlerSlot,
}

impl<'a> NodeRuntime<'a> {
    /// Starts the node; `tick_every` paces [`Step::Tick`] (the first one comes at once).
    pub fn start(
        config: NodeConfig,
        shutdown: impl Future<Output = ()> + Send + 'a,
        tick_every: Duration,
    ) -> Result<Self, StartError> {
        config.validate()?;
        let state = NodeState::open(config.data_dir.clone(), config.role)?;
        let key = state.key()?;
        let cached = state.cached_config();
        let link = LinkConfig::new(
            config.control_url,
            config.credential,
            config.role,
            key.public_key(),
        );
        let held_hash = cached.as_ref().map(|c| c.config_hash.clone());
        let (events_tx, events) = mpsc::channel(16);
        let (status, status_rx) = watch::channel(NodeStatus::default());
        let queries = HandlerSlot::default();
        let link = ControlLink::new(link, state.clone(), held_hash)
            .with_status(status_rx)
            .with_queries(queries.clone());
        let link = tokio::spawn(link.run(events_tx));
        Ok(Self {
            key,
            state,
            cached,
            events,
            link,
            shutdown: Box::pin(shutdown),
            tick_every,
            tick: None,
            stopped: false,
            status,
            queries,
        })
    }

    /// The node's WireGuard key.
    pub fn key(&self) -> &PrivateKey {
        &self.key
    }

    /// The node's data directory.
    pub fn state(&self) -> &NodeState {
        &self.state
    }

    /// The snapshot cached by the previous run, once: a node serves it while Control is
    /// contacted (or down).
    pub fn take_cached(&mut self) -> Option<ConfigSnapshot> {
        self.cached.take()
    }

    /// Tells Control what the role could not do with its config (sent when it changes).
    pub fn report(&self, status: NodeStatus) {
        self.status.send_if_modified(|current| {
            let changed = *current != status;
            *current = status;
            changed
        });
    }

    /// Answers Control's questions with `handler` from now on (the first handler set stays).
    pub fn answer_queries(&self, handler: QueryHandler) {
        let _ = self.queries.set(handler);
    }

    /// Waits for what the role must do next. After [`Step::Stop`], always `Stop`.
    pub async fn next(&mut self) -> Step {
        if self.stopped {
            return Step::Stop;
        }
        let every = self.tick_every;
        let tick = self
            .tick
            .get_or_insert_with(|| tokio::time::interval(every));
        loop {
            tokio::select! {
                _ = &mut self.shutdown => break,
                event = self.events.recv() => match event {
                    Some(LinkEvent::Config(snapshot)) => return Step::Apply(snapshot),
                    Some(_) => {}
                    None => break,
                },
                _ = tick.tick() => return Step::Tick,
            }
        }
        self.stopped = true;
        Step::Stop
    }
}

impl Drop for NodeRuntime<'_> {
    fn drop(&mut self) {
        self.link.abort();
    }
}
