//! The node's link to Control: a WebSocket that delivers config snapshots, kept open forever.
//!
//! Why "link": Control calls its side of this WebSocket a node *session* (its `hub`), and the web
//! UI has browser login *sessions*. The node's end is the [`ControlLink`]; one connection of it
//! (connect, hello, then messages until it drops) is still "a session" in the log, which users
//! already know ("Control session: ...; retrying").
//!
//! Protocol (see `kakuremichi_proto`): the node sends `Hello` with its public key and the hash of
//! the snapshot it holds; Control answers `Welcome` and, if the hash differs, `Config`; later
//! `Config`s arrive on every change. Control pings; a session silent for `idle_timeout` is
//! considered dead and replaced.
//!
//! This file is the reconnect loop; [`connect`] opens one session and says hello, [`message`]
//! handles what Control sends on it.

mod connect;
mod message;
mod query;

pub(crate) use query::HandlerSlot;
pub use query::QueryHandler;

use crate::{control_ws_urls, Backoff, NodeState, Secret};
use kakuremichi_proto::{ConfigSnapshot, NodeRole, OwnPort, PortError};
use kakuremichi_tunnel::PublicKey;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

#[derive(Debug, Clone)]
pub struct LinkConfig {
    /// Control's base URL (`https://control.example.com`, `http://127.0.0.1:8780`).
    pub control_url: String,
    /// Gateway token or Agent API key.
    pub credential: Secret,
    pub role: NodeRole,
    pub public_key: PublicKey,
    /// A session with no frame from Control for this long is dead (Control pings every 10 s).
    pub idle_timeout: Duration,
    pub backoff: Backoff,
}

impl LinkConfig {
    pub fn new(
        control_url: String,
        credential: Secret,
        role: NodeRole,
        public_key: PublicKey,
    ) -> Self {
        Self {
            control_url,
            credential,
            role,
            public_key,
            idle_timeout: Duration::from_secs(30),
            backoff: Backoff::default(),
        }
    }
}

/// What the link reports to its role.
#[derive(Debug, Clone)]
pub enum LinkEvent {
    /// A session is established (`Welcome` received).
    Connected { node_id: i64 },
    /// A new snapshot, already verified and written to the cache.
    Config(Arc<ConfigSnapshot>),
    /// The session ended; the node keeps running on its current config.
    Disconnected { reason: String },
}

pub struct ControlLink {
    config: LinkConfig,
    state: NodeState,
    held_hash: Option<String>,
    /// What the role reports (ports it could not bind), sent at each session's start and on
    /// every change.
    status: watch::Receiver<NodeStatus>,
    /// Answers Control's questions (set by the role when it can).
    queries: HandlerSlot,
    /// The protocol version of the current session (from Control's `Welcome`).
    protocol: u32,
    /// Control welcomed the current session: statuses wait for it, so that the first one
    /// already speaks the session's version (Control takes its traffic as a baseline).
    welcomed: bool,
}

/// What a node reports to Control about the snapshot it applied (see [`kakuremichi_proto::NodeMessage::Status`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeStatus {
    pub port_errors: Vec<PortError>,
    pub own_ports: Vec<OwnPort>,
    pub stream_counters: Vec<kakuremichi_proto::StreamCounters>,
    /// A Gateway's public HTTP and HTTPS ports.
    pub web_ports: Option<kakuremichi_proto::WebPorts>,
    /// A Gateway's counters of every tunnel (sent in protocol-3 sessions only).
    pub traffic: Vec<kakuremichi_proto::TunnelTraffic>,
}

/// Why one session ended.
enum End {
    /// Control refused us; retrying at the slow end of the backoff is all we can do.
    Refused(String),
    Lost(String),
}

impl ControlLink {
    /// `held_hash` is the hash of the snapshot the node already runs (e.g. from its cache).
    pub fn new(config: LinkConfig, state: NodeState, held_hash: Option<String>) -> Self {
        Self {
            config,
            state,
            held_hash,
            status: watch::channel(NodeStatus::default()).1,
            queries: HandlerSlot::default(),
            protocol: kakuremichi_proto::OLDEST_PROTOCOL_VERSION,
            welcomed: false,
        }
    }

    /// Answers Control's questions with the handler this slot holds (once it holds one).
    pub(crate) fn with_queries(mut self, queries: HandlerSlot) -> Self {
        self.queries = queries;
        self
    }

    /// Reports what `status` holds to Control, now and whenever it changes.
    pub fn with_status(mut self, status: watch::Receiver<NodeStatus>) -> Self {
        self.status = status;
        self
    }

    /// Runs sessions forever; returns only when `events` is closed (the role shut down).
    pub async fn run(mut self, events: mpsc::Sender<LinkEvent>) {
        let urls = match control_ws_urls(&self.config.control_url) {
            Ok(u) => u,
            Err(e) => {
                tracing::error!("{e}");
                return;
            }
        };
        let mut retry = Retry::new(self.config.backoff.clone());
        // Several URLs are replicas of one Control: a session that ends moves on to the next
        // one at once (its replica may be gone), and the backoff paces whole rounds.
        let mut at = 0;
        loop {
            let started = Instant::now();
            let end = self
                .one_session(&urls[at], &events, &mut retry.backoff)
                .await;
            if events.is_closed() {
                return;
            }
            let (reason, refused) = match end {
                End::Refused(r) => (r, true),
                End::Lost(r) => (r, false),
            };
            let _ = events
                .send(LinkEvent::Disconnected {
                    reason: reason.clone(),
                })
                .await;
            let mut delay = retry.after(started.elapsed(), &reason, refused, &urls[at]);
            at = (at + 1) % urls.len();
            if at != 0 && !refused {
                delay = Duration::from_millis(50).mul_f64(1.0 + 4.0 * rand::random::<f64>());
            }
            tokio::time::sleep(delay).await;
        }
    }

    /// One session: connect, say hello, then handle Control's messages until it ends.
    async fn one_session(
        &mut self,
        url: &str,
        events: &mpsc::Sender<LinkEvent>,
        backoff: &mut Backoff,
    ) -> End {
        self.protocol = kakuremichi_proto::OLDEST_PROTOCOL_VERSION;
        self.welcomed = false;
        let mut ws = match connect::connect(url, &self.config).await {
            Ok(ws) => ws,
            Err(end) => return end,
        };
        if let Err(end) = connect::hello(&mut ws, &self.config, self.held_hash.clone()).await {
            return end;
        }
        // Every session starts with the current status, if there is anything to say (Control
        // keeps it per session and forgets it when the session ends).
        if *self.status.borrow() != NodeStatus::default() {
            self.status.mark_changed();
        }
        let mut questions = query::Questions::new(self.queries.clone());
        loop {
            let received = tokio::select! {
                received = message::receive(&mut ws, self.config.idle_timeout) => received,
                Some(answer) = questions.ready.recv() => {
                    if let Err(end) = message::send_answer(&mut ws, answer).await {
                        return end;
                    }
                    continue;
                }
                Ok(()) = self.status.changed(), if self.welcomed => {
                    let status = self.status.borrow_and_update().clone();
                    if let Err(end) = message::send_status(&mut ws, status, self.protocol).await {
                        return end;
                    }
                    continue;
                }
            };
            let text = match received {
                Ok(text) => text,
                Err(end) => return end,
            };
            if let Err(end) = self
                .handle(&mut ws, &text, events, backoff, &questions)
                .await
            {
                return end;
            }
        }
    }
}

/// Pacing and logging between sessions: jittered backoff, at least 5 s after a refusal, and a
/// warning at most once a minute while Control stays unreachable (every refusal is warned).
struct Retry {
    backoff: Backoff,
    failing_since: Option<Instant>,
    last_warn: Option<Instant>,
}

impl Retry {
    fn new(backoff: Backoff) -> Self {
        Self {
            backoff,
            failing_since: None,
            last_warn: None,
        }
    }

    /// Logs why the session ended and returns how long to wait before the next one.
    fn after(&mut self, lasted: Duration, reason: &str, refused: bool, url: &str) -> Duration {
        if lasted > Duration::from_secs(10) {
            // It was a real session, not a failed attempt: start counting afresh.
            self.backoff.reset();
            self.failing_since = None;
            self.last_warn = None;
        }
        let now = Instant::now();
        let since = *self.failing_since.get_or_insert(now);
        if refused
            || self
                .last_warn
                .is_none_or(|t| now.duration_since(t) > Duration::from_secs(60))
        {
            tracing::warn!(control = %url, failing_for = ?now.duration_since(since), "Control session: {reason}; retrying");
            self.last_warn = Some(now);
        } else {
            tracing::debug!("Control session: {reason}; retrying");
        }
        if refused {
            self.backoff.next_delay().max(Duration::from_secs(5))
        } else {
            self.backoff.next_delay()
        }
    }
}
