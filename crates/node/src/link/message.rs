//! What the link does with each message from Control: `Welcome` starts the session, a `Config`
//! is verified, cached and handed to the role (or rejected, keeping the last good one), an
//! `Error` ends the session.

use super::connect::Ws;
use super::{ControlLink, End, LinkEvent};
use crate::Backoff;
use futures_util::{SinkExt, StreamExt};
use kakuremichi_proto::{
    decode_control, probe_config, ConfigSnapshot, ControlMessage, NodeMessage,
};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::{self, Message, Utf8Bytes};

/// The next text frame; other frames (pings) only prove that the session is alive.
pub(super) async fn receive(ws: &mut Ws, idle_timeout: Duration) -> Result<Utf8Bytes, End> {
    loop {
        let frame = match tokio::time::timeout(idle_timeout, ws.next()).await {
            Err(_) => {
                return Err(End::Lost(format!(
                    "no word from Control for {idle_timeout:?}"
                )))
            }
            Ok(None) => return Err(End::Lost("Control closed the session".into())),
            Ok(Some(Err(e))) => return Err(End::Lost(format!("session error: {e}"))),
            Ok(Some(Ok(frame))) => frame,
        };
        match frame {
            Message::Text(t) => return Ok(t),
            Message::Close(c) => {
                return Err(End::Lost(format!(
                    "Control closed the session{}",
                    c.map(|c| format!(": {}", c.reason)).unwrap_or_default()
                )))
            }
            _ => continue,
        }
    }
}

impl ControlLink {
    /// Acts on one message; `Err` ends the session.
    pub(super) async fn handle(
        &mut self,
        ws: &mut Ws,
        text: &str,
        events: &mpsc::Sender<LinkEvent>,
        backoff: &mut Backoff,
        questions: &super::query::Questions,
    ) -> Result<(), End> {
        match decode_control(text) {
            Ok(ControlMessage::Welcome {
                node_id,
                protocol_version,
            }) => {
                backoff.reset();
                self.protocol = protocol_version;
                self.welcomed = true;
                tracing::info!(node_id, protocol_version, control = %self.config.control_url,
                    "connected to Control");
                report(events, LinkEvent::Connected { node_id }).await
            }
            Ok(ControlMessage::Config { snapshot }) => self.take_config(ws, snapshot, events).await,
            Ok(ControlMessage::Error { code, message }) => Err(End::Refused(format!(
                "Control refused the session ({code}): {message}"
            ))),
            Ok(ControlMessage::Query { id, query }) => {
                questions.ask(id, query);
                Ok(())
            }
            Err(e) => match probe_config(text) {
                // A snapshot this node cannot take: say so, keep the last good one, and
                // stay connected for the next (fixed) one.
                Some(hash) => reject(ws, hash, &e.to_string()).await,
                None => Err(End::Refused(format!("cannot understand Control: {e}"))),
            },
        }
    }

    /// A new snapshot: verified, cached, handed to the role, then acknowledged to Control.
    async fn take_config(
        &mut self,
        ws: &mut Ws,
        snapshot: ConfigSnapshot,
        events: &mpsc::Sender<LinkEvent>,
    ) -> Result<(), End> {
        if !snapshot.is_intact() {
            let hash = Some(snapshot.config_hash.clone());
            return reject(ws, hash, "its hash does not match its content").await;
        }
        if let Err(e) = self.state.store_config(&snapshot) {
            tracing::error!("cannot cache config (the node will not survive a restart while Control is down): {e}");
        }
        let hash = snapshot.config_hash.clone();
        self.held_hash = Some(hash.clone());
        tracing::info!(config_hash = %&hash[..12.min(hash.len())], "received config");
        report(events, LinkEvent::Config(Arc::new(snapshot))).await?;
        let _ = ws
            .send(Message::text(
                NodeMessage::Applied { config_hash: hash }.encode(),
            ))
            .await;
        Ok(())
    }
}

/// Tells Control what the role could not do (see [`crate::NodeStatus`]).
/// A Control of protocol 2 would refuse the traffic counters: they are left out for it.
pub(super) async fn send_status(
    ws: &mut Ws,
    status: crate::NodeStatus,
    protocol: u32,
) -> Result<(), End> {
    let msg = NodeMessage::Status {
        port_errors: status.port_errors,
        own_ports: status.own_ports,
        stream_counters: status.stream_counters,
        web_ports: status.web_ports,
        traffic: if protocol >= 3 {
            status.traffic
        } else {
            Vec::new()
        },
    };
    ws.send(Message::text(msg.encode()))
        .await
        .map_err(|e| End::Lost(format!("reporting status: {e}")))
}

/// Sends the answer to one of Control's questions.
pub(super) async fn send_answer(ws: &mut Ws, answer: NodeMessage) -> Result<(), End> {
    ws.send(Message::text(answer.encode()))
        .await
        .map_err(|e| End::Lost(format!("answering Control: {e}")))
}

/// Hands an event to the role; a role that is gone ends the session.
async fn report(events: &mpsc::Sender<LinkEvent>, event: LinkEvent) -> Result<(), End> {
    events
        .send(event)
        .await
        .map_err(|_| End::Lost("shutting down".into()))
}

/// Logs at error and tells Control that a snapshot was not applied (the node keeps serving the
/// last one it applied).
async fn reject<S>(ws: &mut S, config_hash: Option<String>, reason: &str) -> Result<(), End>
where
    S: futures_util::Sink<Message, Error = tungstenite::Error> + Unpin,
{
    let short = config_hash
        .as_deref()
        .map(|h| &h[..12.min(h.len())])
        .unwrap_or("?");
    tracing::error!(
        config_hash = short,
        "cannot apply the config Control sent ({reason}); still serving the last good one"
    );
    let msg = NodeMessage::rejected(config_hash, &format!("not applied: {reason}"));
    ws.send(Message::text(msg.encode()))
        .await
        .map_err(|e| End::Lost(format!("reporting a rejected config: {e}")))
}
