//! One node session: Hello/Welcome handshake, snapshot pushes on change, heartbeats, clean close.
//!
//! A snapshot over the message limit is never sent (the node would refuse it whole), and a
//! snapshot the node reports as `Rejected` is logged at error; either way the node keeps its
//! last good one and the reason shows as the node's `config_error` in the status.
//!
//! Everything the node sends is untrusted: a bad frame ends the session with an `Error` message
//! and a Close frame, never a panic. Every send is bounded by the heartbeat timeout, so a node
//! that stops reading cannot pin the task.

use super::ask::Asked;
use super::Hub;
use crate::snapshot::AgentInputs;
use crate::store::{NodeKind, NodeRef, StoreError};
use crate::validate;
use axum::extract::ws::{close_code, CloseFrame, Message, WebSocket};
use futures_util::SinkExt as _;
use kakuremichi_proto::{
    decode_node, negotiate, Answer, ControlMessage, DecodeError, NodeMessage, NodeRole, OwnPort,
    PortError, MAX_MESSAGE_BYTES, MAX_PORT_ERRORS, MAX_REASON_CHARS, MAX_STREAM_COUNTERS,
    OLDEST_PROTOCOL_VERSION, PROTOCOL_VERSION,
};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::{timeout, timeout_at, Instant, MissedTickBehavior};

/// The `Error` code (the session's 409) for a hello whose public key another node holds.
pub const KEY_IN_USE: &str = "public_key_in_use";

/// How often `last_seen` is refreshed while a session stays open.
const LAST_SEEN_EVERY: Duration = Duration::from_secs(30);

/// Why a session ended; decides what, if anything, the node is told.
enum End {
    /// The node closed, the connection dropped, or a send failed: nothing more to say.
    Gone,
    /// Tell the node why (an `Error` message it should not retry blindly), then close.
    Error { code: &'static str, message: String },
    /// Close without an `Error` message, so the node simply reconnects: Control is shutting
    /// down, had an internal fault, or heard nothing from the node for too long.
    Close(u16, &'static str),
}

const SHUTDOWN: End = End::Close(close_code::AWAY, "control is shutting down");

impl End {
    fn error(code: &'static str, message: impl Into<String>) -> Self {
        End::Error {
            code,
            message: message.into(),
        }
    }
}

impl From<StoreError> for End {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => End::error("revoked", "this node was deleted from Control"),
            StoreError::KeyInUse(holder) => End::error(
                KEY_IN_USE,
                format!(
                    "this WireGuard public key is already registered to {holder}; every node needs \
                     its own key: delete this node's *-wireguard.key file so that it generates a \
                     new one, then reconnect"
                ),
            ),
            e => {
                tracing::error!(error = %e, "node session: database error");
                End::Close(close_code::ERROR, "internal error")
            }
        }
    }
}

/// The first 12 characters of a config hash, as logs show it.
fn short(hash: &str) -> &str {
    hash.get(..12).unwrap_or(hash)
}

/// The end of a session whose credential (an Agent's API key) was replaced.
fn credential_replaced() -> End {
    End::error(
        "revoked",
        "this node's credential was replaced (the Agent's API key was rotated); reconnect with the new one",
    )
}

/// Resolves once Control is shutting down.
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

/// Runs the session of an authenticated node until it ends. `credential_epoch` is
/// [`Hub::credential_epoch`] read before the node's credential was last checked: the session ends
/// as soon as the credential is replaced after that.
/// `offered` is the newest protocol version the node names in its upgrade request
/// ([`kakuremichi_proto::PROTOCOL_HEADER`]); nodes that predate negotiation name none.
pub async fn serve(
    socket: WebSocket,
    node: NodeRef,
    credential_epoch: u64,
    offered: Option<u32>,
    hub: Arc<Hub>,
) {
    let _live = hub.node_session_started();
    let mut session = NodeSession {
        socket,
        node,
        credential_epoch,
        offered,
        hub,
        last_rx: Instant::now(),
        sent_challenges: Arc::new(HashSet::new()),
        agent_inputs: None,
        questions: HashMap::new(),
        next_question: 0,
        protocol: OLDEST_PROTOCOL_VERSION,
        reported: false,
    };
    let end = session.run().await;
    session.finish(end).await;
}

struct NodeSession {
    socket: WebSocket,
    node: NodeRef,
    credential_epoch: u64,
    /// The newest protocol version the node offered, if it named one.
    offered: Option<u32>,
    hub: Arc<Hub>,
    /// When the node last sent any frame (data, ping, pong).
    last_rx: Instant,
    /// Ids of the ACME challenges in the last snapshot pushed (see `AcmeChallenges::ids`).
    sent_challenges: Arc<HashSet<String>>,
    /// What the Agent's snapshot last sent (or held already) was made of; `None` for Gateways.
    agent_inputs: Option<AgentInputs>,
    /// The session's protocol version (2 until the hello is read).
    protocol: u32,
    /// The Gateway sent a status in this session (its first is the traffic's baseline).
    reported: bool,
    /// Questions sent and not answered yet, by id (see `ask`).
    questions: HashMap<u64, tokio::sync::oneshot::Sender<Answer>>,
    next_question: u64,
}

/// Questions a session keeps waiting for an answer at once; the API's own timeout frees them.
const MAX_QUESTIONS: usize = 64;

/// The next question for this session, or never when it cannot be asked.
async fn next_asked(asked: &mut Option<tokio::sync::mpsc::Receiver<Asked>>) -> Option<Asked> {
    match asked {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

impl NodeSession {
    async fn run(&mut self) -> End {
        let mut shutdown = self.hub.shutdown_signal();
        let mut credentials = self.hub.subscribe_credentials();
        if self.credential_replaced(&mut credentials) {
            return credential_replaced();
        }
        let (config_hash, protocol_version) = tokio::select! {
            () = stopped(&mut shutdown) => return SHUTDOWN,
            hello = self.handshake() => match hello {
                Ok(hello) => hello,
                Err(end) => return end,
            },
        };
        self.protocol = protocol_version;
        let _online = self.hub.mark_online(self.node);
        let (_asker, mut asked) = self.hub.register_asker(self.node, protocol_version >= 3);
        tracing::info!(node = %self.node, protocol_version, "node session open");
        let welcome = ControlMessage::Welcome {
            protocol_version,
            node_id: self.node.id,
        };
        if let Err(end) = self.send(&welcome).await {
            return end;
        }
        let mut generation = self.hub.subscribe();
        generation.borrow_and_update();
        let mut sent_hash = config_hash;
        if let Err(end) = self.push_if_changed(&mut sent_hash).await {
            return end;
        }
        let interval = self.hub.heartbeat_interval;
        let mut ping = tokio::time::interval_at(Instant::now() + interval, interval);
        ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut last_touch = Instant::now();
        loop {
            let deadline = self.last_rx + self.hub.heartbeat_timeout;
            // While this session waits on Control's own work (the database, the world), it reads
            // nothing: that time is not the node's silence, so it moves the deadline on.
            let mut busy = Duration::ZERO;
            // Frames already received come first: a node that answered in time is never timed out
            // because its answer and the deadline were ready together.
            let step = tokio::select! {
                biased;
                () = stopped(&mut shutdown) => Err(SHUTDOWN),
                frame = self.socket.recv() => self.on_frame(frame, sent_hash.as_deref()),
                Some(asked) = next_asked(&mut asked) => self.send_question(asked).await,
                _ = credentials.changed() => if self.credential_replaced(&mut credentials) {
                    Err(credential_replaced())
                } else {
                    Ok(())
                },
                changed = generation.changed() => match changed {
                    Ok(()) => {
                        let started = Instant::now();
                        let pushed = self.push_if_changed(&mut sent_hash).await;
                        busy = started.elapsed();
                        pushed
                    }
                    Err(_) => Err(SHUTDOWN),
                },
                _ = ping.tick() => {
                    let started = Instant::now();
                    let pinged = self.heartbeat(&mut last_touch).await;
                    busy = started.elapsed();
                    pinged
                }
                _ = tokio::time::sleep_until(deadline) => {
                    tracing::info!(node = %self.node, timeout = ?self.hub.heartbeat_timeout, "node silent for too long; closing its session");
                    Err(End::Close(close_code::POLICY, "heartbeat timeout"))
                }
            };
            self.last_rx += busy;
            if let Err(end) = step {
                return end;
            }
        }
    }

    /// Whether this node's credential was replaced since the session's was checked.
    fn credential_replaced(
        &self,
        credentials: &mut watch::Receiver<HashMap<NodeRef, u64>>,
    ) -> bool {
        let epoch = credentials.borrow_and_update().get(&self.node).copied();
        epoch.unwrap_or(0) > self.credential_epoch
    }

    /// Reads and checks the Hello; records the node's key. Returns the hash the node already has.
    /// Reads the hello and registers the node's key; the snapshot hash the node holds and the
    /// protocol version of the session.
    async fn handshake(&mut self) -> Result<(Option<String>, u32), End> {
        let deadline = Instant::now() + self.hub.heartbeat_timeout;
        let text = loop {
            let frame = timeout_at(deadline, self.socket.recv())
                .await
                .map_err(|_| End::error("bad_hello", "no hello received in time"))?;
            match frame {
                Some(Ok(Message::Text(text))) => break text,
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(Message::Binary(_))) => {
                    return Err(End::error(
                        "bad_hello",
                        "expected a JSON text frame with a hello message",
                    ))
                }
                Some(Ok(Message::Close(_))) | None => return Err(End::Gone),
                Some(Err(e)) => {
                    return Err(End::error("bad_hello", format!("unreadable frame: {e}")))
                }
            }
        };
        self.last_rx = Instant::now();
        let (role, public_key, config_hash, hello_version) = match decode_node(text.as_str()) {
            Ok(NodeMessage::Hello {
                role,
                public_key,
                config_hash,
                protocol_version,
                ..
            }) => (role, public_key, config_hash, protocol_version),
            Ok(
                NodeMessage::Applied { .. }
                | NodeMessage::Rejected { .. }
                | NodeMessage::Status { .. }
                | NodeMessage::Answer { .. },
            ) => return Err(End::error("bad_hello", "the first message must be a hello")),
            Err(e @ DecodeError::VersionMismatch { .. }) => {
                return Err(End::error("version_mismatch", e.to_string()))
            }
            Err(e) => return Err(End::error("bad_hello", e.to_string())),
        };
        // The hello is in the oldest version the node speaks (already checked to be one of
        // ours); the header names its newest.
        let offered = self.offered.unwrap_or(hello_version);
        let Some(protocol_version) = negotiate(hello_version, offered) else {
            return Err(End::error(
                "version_mismatch",
                format!(
                    "this Control speaks kakuremichi protocol {OLDEST_PROTOCOL_VERSION} to \
                     {PROTOCOL_VERSION}, the node {hello_version} to {offered}; Control, Gateways \
                     and Agents may be at most one release apart: upgrade the older side"
                ),
            ));
        };
        let expected = match self.node.kind {
            NodeKind::Agent => NodeRole::Agent,
            NodeKind::Gateway => NodeRole::Gateway,
        };
        if role != expected {
            return Err(End::error(
                "bad_hello",
                format!(
                    "this credential belongs to {}, but the hello says role {role:?}",
                    self.node
                ),
            ));
        }
        validate::public_key(&public_key).map_err(|e| End::error("bad_hello", e.0))?;
        let connected = {
            // A burst of hellos (thousands of nodes reconnecting) must not take every pooled
            // connection: a session already open needs one to follow changes, or it stalls.
            let _permit = self.hub.hello_writes.acquire().await;
            self.hub
                .store()
                .node_connected(self.node, &public_key)
                .await
        };
        if let Err(StoreError::KeyInUse(holder)) = &connected {
            // Public keys are not secrets: naming it lets an operator find the clone.
            tracing::warn!(node = %self.node, %holder, %public_key, "refusing a hello: the public key belongs to another node");
        }
        if connected? {
            tracing::info!(node = %self.node, "node public key changed");
            self.hub.changed();
        }
        Ok((config_hash, protocol_version))
    }

    /// Pings the node, and refreshes `last_seen` now and then.
    async fn heartbeat(&mut self, last_touch: &mut Instant) -> Result<(), End> {
        if last_touch.elapsed() >= LAST_SEEN_EVERY {
            *last_touch = Instant::now();
            self.hub.store().touch_node(self.node).await?;
        }
        self.send_raw(Message::Ping(Default::default())).await
    }

    /// Sends the node's current snapshot if its hash differs from the last one it has.
    async fn push_if_changed(&mut self, sent_hash: &mut Option<String>) -> Result<(), End> {
        let world = self.hub.world().await?;
        let (sealed, inputs) = match self.node.kind {
            NodeKind::Agent => {
                let inputs = world
                    .agent_inputs(self.node.id)
                    .ok_or(StoreError::NotFound)?;
                if self.agent_inputs.as_ref() == Some(&inputs) {
                    // Made of the same as the snapshot the Agent holds: a change elsewhere.
                    return Ok(());
                }
                (inputs.seal(self.node.id), Some(inputs))
            }
            NodeKind::Gateway => {
                let online = |a| self.hub.agent_online(a);
                (
                    world
                        .sealed_in(self.node, online, self.protocol)
                        .ok_or(StoreError::NotFound)?,
                    None,
                )
            }
        };
        let challenges = sealed.challenges();
        if sent_hash.as_deref() == Some(sealed.config_hash()) {
            self.hub.set_config_error(self.node, None);
            self.agent_inputs = inputs;
            if self.sent_challenges != challenges {
                // The node already holds this snapshot (it said so in its hello).
                self.hub.applied(self.node, challenges.clone());
                self.sent_challenges = challenges;
            }
            return Ok(());
        }
        let hash = sealed.config_hash().to_string();
        let text = sealed.encode();
        if text.len() > MAX_MESSAGE_BYTES {
            // The node would refuse it whole; keep it on its last snapshot and say why, loudly.
            // `sent_hash` stays, so the next change is tried again.
            let why = format!(
                "Control did not send config {}: {} bytes exceed the {MAX_MESSAGE_BYTES}-byte \
                 message limit; lower the quotas in settings or remove tunnels",
                short(&hash),
                text.len()
            );
            tracing::error!(node = %self.node, bytes = text.len(), "{why}");
            self.hub.set_config_error(self.node, Some(why));
            return Ok(());
        }
        self.sent_challenges = challenges;
        self.send_raw(Message::text(text)).await?;
        // A session's first snapshot follows its hello, not a change.
        let since_change = sent_hash.is_some().then(|| self.hub.since_change());
        self.hub
            .metrics()
            .pushed(self.node.kind.label(), since_change);
        tracing::debug!(node = %self.node, config_hash = %hash, "pushed config");
        *sent_hash = Some(hash);
        self.agent_inputs = inputs;
        Ok(())
    }

    /// Sends a question to the node; its answer comes back in [`NodeSession::on_frame`].
    async fn send_question(&mut self, asked: Asked) -> Result<(), End> {
        // Questions whose asker stopped waiting (timed out) are forgotten here.
        self.questions.retain(|_, reply| !reply.is_closed());
        if self.questions.len() >= MAX_QUESTIONS {
            let _ = asked.reply.send(Answer::error(
                "this node has too many questions waiting; try again",
            ));
            return Ok(());
        }
        self.next_question += 1;
        let id = self.next_question;
        self.questions.insert(id, asked.reply);
        self.send(&ControlMessage::Query {
            id,
            query: asked.query,
        })
        .await
    }

    /// The node did not apply a snapshot: it keeps serving its previous one. Logged at error and
    /// shown in the status until the node applies one.
    fn on_rejected(&self, config_hash: Option<&str>, reason: &str) {
        let reason: String = reason
            .chars()
            .filter(|c| !c.is_control())
            .take(MAX_REASON_CHARS)
            .collect();
        let hash = config_hash.map_or("?", short);
        tracing::error!(node = %self.node, config_hash = hash, %reason, "node rejected its config and keeps serving its previous one");
        let why = format!("the node rejected config {hash}: {reason}");
        self.hub.set_config_error(self.node, Some(why));
    }

    /// The node's report of ports it could not bind: bounded, cleaned, logged when not empty.
    fn on_status(&self, mut port_errors: Vec<PortError>, mut own_ports: Vec<OwnPort>) {
        own_ports.truncate(MAX_PORT_ERRORS);
        self.hub.set_own_ports(self.node, own_ports);
        port_errors.truncate(MAX_PORT_ERRORS);
        for e in &mut port_errors {
            e.error = e
                .error
                .chars()
                .filter(|c| !c.is_control())
                .take(MAX_REASON_CHARS)
                .collect();
        }
        port_errors.sort();
        port_errors.dedup();
        for e in &port_errors {
            tracing::warn!(node = %self.node, protocol = e.protocol.as_str(), port = e.port, error = %e.error, "a gateway cannot bind a tunnel port; the other gateways serve it");
        }
        self.hub.set_port_errors(self.node, port_errors);
    }

    fn on_frame(
        &mut self,
        frame: Option<Result<Message, axum::Error>>,
        sent_hash: Option<&str>,
    ) -> Result<(), End> {
        self.last_rx = Instant::now();
        match frame {
            Some(Ok(Message::Text(text))) => match decode_node(text.as_str()) {
                Ok(NodeMessage::Applied { config_hash }) => {
                    tracing::debug!(node = %self.node, %config_hash, "node applied config");
                    if sent_hash == Some(config_hash.as_str()) {
                        self.hub.applied(self.node, self.sent_challenges.clone());
                        self.hub.set_config_error(self.node, None);
                    }
                    Ok(())
                }
                Ok(NodeMessage::Rejected {
                    config_hash,
                    reason,
                }) => {
                    self.on_rejected(config_hash.as_deref(), &reason);
                    Ok(())
                }
                Ok(NodeMessage::Status {
                    port_errors,
                    own_ports,
                    mut stream_counters,
                    web_ports,
                    traffic,
                }) => {
                    // The first status of a session is its baseline (nodes send it once
                    // welcomed, with the session's traffic counters).
                    if self.node.kind == NodeKind::Gateway && self.protocol >= 3 {
                        let baseline = !self.reported;
                        self.reported = true;
                        self.hub.traffic.report(self.node.id, traffic, baseline);
                    }
                    self.on_status(port_errors, own_ports);
                    if let Some(ports) = web_ports {
                        self.hub.set_web_ports(self.node, ports);
                    }
                    stream_counters.truncate(MAX_STREAM_COUNTERS);
                    self.hub.set_stream_counters(self.node, stream_counters);
                    Ok(())
                }
                Ok(NodeMessage::Answer { id, answer }) => {
                    // An answer to a question no longer waited for is dropped.
                    if let Some(reply) = self.questions.remove(&id) {
                        let _ = reply.send(answer.bounded());
                    }
                    Ok(())
                }
                Ok(NodeMessage::Hello { .. }) => {
                    Err(End::error("bad_message", "hello may only be sent once"))
                }
                Err(e) => Err(End::error("bad_message", e.to_string())),
            },
            Some(Ok(Message::Binary(_))) => {
                Err(End::error("bad_message", "binary frames are not supported"))
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => Ok(()),
            Some(Ok(Message::Close(_))) | None => Err(End::Gone),
            Some(Err(e)) => Err(End::error("bad_message", e.to_string())),
        }
    }

    async fn send(&mut self, msg: &ControlMessage) -> Result<(), End> {
        self.send_raw(Message::text(msg.encode())).await
    }

    async fn send_raw(&mut self, msg: Message) -> Result<(), End> {
        match timeout(self.hub.heartbeat_timeout, self.socket.send(msg)).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(End::Gone),
        }
    }

    /// Tells the node why the session ends (best effort), closes, and records `last_seen`.
    async fn finish(&mut self, end: End) {
        let close = match end {
            End::Gone => None,
            End::Close(code, reason) => Some((code, reason)),
            End::Error { code, message } => {
                tracing::info!(node = %self.node, code, %message, "closing node session");
                let _ = self
                    .send(&ControlMessage::Error {
                        code: code.to_string(),
                        message,
                    })
                    .await;
                Some((close_code::POLICY, code))
            }
        };
        if let Some((code, reason)) = close {
            let frame = CloseFrame {
                code,
                reason: reason.into(),
            };
            let _ = timeout(
                Duration::from_secs(1),
                self.socket.send(Message::Close(Some(frame))),
            )
            .await;
        }
        let _ = timeout(Duration::from_secs(1), self.socket.close()).await;
        if let Err(e) = self.hub.store().touch_node(self.node).await {
            tracing::warn!(node = %self.node, error = %e, "could not record last_seen");
        }
        tracing::info!(node = %self.node, "node session closed");
    }
}
