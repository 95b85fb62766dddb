//! The node's session to Control: a WebSocket that delivers config snapshots, kept open forever.
//!
//! Protocol (see `kakuremichi_proto`): the node sends `Hello` with its public key and the hash of
//! the snapshot it holds; Control answers `Welcome` and, if the hash differs, `Config`; later
//! `Config`s arrive on every change. Control pings; a session silent for `idle_timeout` is
//! considered dead and replaced.

use crate::{Backoff, NodeState, Secret};
use futures_util::{SinkExt, StreamExt};
use kakuremichi_proto::message::MAX_PROBE_BYTES;
use kakuremichi_proto::{
    decode_control, probe_config, ConfigSnapshot, ControlMessage, NodeMessage, NodeRole,
    PROTOCOL_VERSION,
};
use kakuremichi_tunnel::PublicKey;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};

#[derive(Debug, Clone)]
pub struct SessionConfig {
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

impl SessionConfig {
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

/// What the session reports to its role.
#[derive(Debug, Clone)]
pub enum SessionEvent {
    /// A session is established (`Welcome` received).
    Connected { node_id: i64 },
    /// A new snapshot, already verified and written to the cache.
    Config(Arc<ConfigSnapshot>),
    /// The session ended; the node keeps running on its current config.
    Disconnected { reason: String },
}

/// Turns Control's base URL into the node-session WebSocket URL.
pub fn control_ws_url(control_url: &str) -> Result<String, String> {
    let trimmed = control_url.trim().trim_end_matches('/');
    let (scheme, rest) = trimmed.split_once("://").ok_or_else(|| {
        format!("CONTROL_URL {control_url:?} needs a scheme, e.g. https://control.example.com")
    })?;
    let ws = match scheme.to_ascii_lowercase().as_str() {
        "http" | "ws" => "ws",
        "https" | "wss" => "wss",
        other => {
            return Err(format!(
                "CONTROL_URL scheme {other:?} is not supported; use http:// or https://"
            ))
        }
    };
    if rest.is_empty() || rest.contains(['?', '#']) {
        return Err(format!(
            "CONTROL_URL {control_url:?} must be a base URL like https://control.example.com"
        ));
    }
    let url = format!("{ws}://{rest}{}", kakuremichi_proto::CONNECT_PATH);
    url.parse::<http::Uri>()
        .map_err(|e| format!("CONTROL_URL {control_url:?} is not a valid URL: {e}"))?;
    Ok(url)
}

pub struct ControlSession {
    config: SessionConfig,
    state: NodeState,
    held_hash: Option<String>,
}

/// Why one session ended.
enum End {
    /// Control refused us; retrying at the slow end of the backoff is all we can do.
    Refused(String),
    Lost(String),
}

impl ControlSession {
    /// `held_hash` is the hash of the snapshot the node already runs (e.g. from its cache).
    pub fn new(config: SessionConfig, state: NodeState, held_hash: Option<String>) -> Self {
        Self {
            config,
            state,
            held_hash,
        }
    }

    /// Runs sessions forever; returns only when `events` is closed (the role shut down).
    pub async fn run(mut self, events: mpsc::Sender<SessionEvent>) {
        let url = match control_ws_url(&self.config.control_url) {
            Ok(u) => u,
            Err(e) => {
                tracing::error!("{e}");
                return;
            }
        };
        let mut backoff = self.config.backoff.clone();
        let mut failing_since: Option<Instant> = None;
        let mut last_warn: Option<Instant> = None;
        loop {
            let started = Instant::now();
            let end = self.one_session(&url, &events, &mut backoff).await;
            if events.is_closed() {
                return;
            }
            let (reason, refused) = match end {
                End::Refused(r) => (r, true),
                End::Lost(r) => (r, false),
            };
            let _ = events
                .send(SessionEvent::Disconnected {
                    reason: reason.clone(),
                })
                .await;
            if started.elapsed() > Duration::from_secs(10) {
                // It was a real session, not a failed attempt: start counting afresh.
                backoff.reset();
                failing_since = None;
                last_warn = None;
            }
            let now = Instant::now();
            let since = *failing_since.get_or_insert(now);
            if refused || last_warn.is_none_or(|t| now.duration_since(t) > Duration::from_secs(60))
            {
                tracing::warn!(control = %self.config.control_url, failing_for = ?now.duration_since(since), "Control session: {reason}; retrying");
                last_warn = Some(now);
            } else {
                tracing::debug!("Control session: {reason}; retrying");
            }
            let delay = if refused {
                backoff.next_delay().max(Duration::from_secs(5))
            } else {
                backoff.next_delay()
            };
            tokio::time::sleep(delay).await;
        }
    }

    async fn one_session(
        &mut self,
        url: &str,
        events: &mpsc::Sender<SessionEvent>,
        backoff: &mut Backoff,
    ) -> End {
        let mut request = match url.into_client_request() {
            Ok(r) => r,
            Err(e) => return End::Refused(format!("bad Control URL: {e}")),
        };
        let bearer = format!("Bearer {}", self.config.credential.expose());
        match http::HeaderValue::from_str(&bearer) {
            Ok(v) => request.headers_mut().insert(http::header::AUTHORIZATION, v),
            Err(_) => {
                return End::Refused(
                    "the credential contains characters not allowed in a header".into(),
                )
            }
        };
        // Frames up to the probe limit are read whole, so a snapshot over the message limit is
        // refused by name (and reported) instead of breaking the connection over and over.
        let ws_config = WebSocketConfig::default()
            .max_message_size(Some(MAX_PROBE_BYTES))
            .max_frame_size(Some(MAX_PROBE_BYTES));
        let connect = tokio_tungstenite::connect_async_with_config(request, Some(ws_config), false);
        let (mut ws, _) = match tokio::time::timeout(Duration::from_secs(15), connect).await {
            Err(_) => return End::Lost("connecting to Control timed out".into()),
            Ok(Err(tungstenite::Error::Http(resp))) => {
                let status = resp.status();
                return if status == http::StatusCode::UNAUTHORIZED
                    || status == http::StatusCode::FORBIDDEN
                {
                    End::Refused(format!(
                        "Control rejected this node's credential (HTTP {status}); check {}",
                        match self.config.role {
                            NodeRole::Gateway => "GATEWAY_TOKEN",
                            NodeRole::Agent => "API_KEY",
                        }
                    ))
                } else {
                    End::Lost(format!(
                        "Control answered HTTP {status} instead of a WebSocket"
                    ))
                };
            }
            Ok(Err(e)) => return End::Lost(format!("cannot reach Control: {e}")),
            Ok(Ok(pair)) => pair,
        };
        let hello = NodeMessage::Hello {
            protocol_version: PROTOCOL_VERSION,
            role: self.config.role,
            public_key: self.config.public_key.to_base64(),
            config_hash: self.held_hash.clone(),
            software: format!("kakuremichi {}", env!("CARGO_PKG_VERSION")),
        };
        if let Err(e) = ws.send(Message::text(hello.encode())).await {
            return End::Lost(format!("sending hello: {e}"));
        }
        loop {
            let frame = match tokio::time::timeout(self.config.idle_timeout, ws.next()).await {
                Err(_) => {
                    return End::Lost(format!(
                        "no word from Control for {:?}",
                        self.config.idle_timeout
                    ))
                }
                Ok(None) => return End::Lost("Control closed the session".into()),
                Ok(Some(Err(e))) => return End::Lost(format!("session error: {e}")),
                Ok(Some(Ok(frame))) => frame,
            };
            let text = match frame {
                Message::Text(t) => t,
                Message::Close(c) => {
                    return End::Lost(format!(
                        "Control closed the session{}",
                        c.map(|c| format!(": {}", c.reason)).unwrap_or_default()
                    ))
                }
                _ => continue,
            };
            match decode_control(&text) {
                Ok(ControlMessage::Welcome { node_id, .. }) => {
                    backoff.reset();
                    tracing::info!(node_id, control = %self.config.control_url, "connected to Control");
                    if events
                        .send(SessionEvent::Connected { node_id })
                        .await
                        .is_err()
                    {
                        return End::Lost("shutting down".into());
                    }
                }
                Ok(ControlMessage::Config { snapshot }) => {
                    if !snapshot.is_intact() {
                        let hash = Some(snapshot.config_hash.clone());
                        let why = "its hash does not match its content";
                        if let Err(end) = reject(&mut ws, hash, why).await {
                            return end;
                        }
                        continue;
                    }
                    if let Err(e) = self.state.store_config(&snapshot) {
                        tracing::error!("cannot cache config (the node will not survive a restart while Control is down): {e}");
                    }
                    let hash = snapshot.config_hash.clone();
                    self.held_hash = Some(hash.clone());
                    tracing::info!(config_hash = %&hash[..12.min(hash.len())], "received config");
                    if events
                        .send(SessionEvent::Config(Arc::new(snapshot)))
                        .await
                        .is_err()
                    {
                        return End::Lost("shutting down".into());
                    }
                    let _ = ws
                        .send(Message::text(
                            NodeMessage::Applied { config_hash: hash }.encode(),
                        ))
                        .await;
                }
                Ok(ControlMessage::Error { code, message }) => {
                    return End::Refused(format!(
                        "Control refused the session ({code}): {message}"
                    ));
                }
                Err(e) => match probe_config(&text) {
                    // A snapshot this node cannot take: say so, keep the last good one, and
                    // stay connected for the next (fixed) one.
                    Some(hash) => {
                        if let Err(end) = reject(&mut ws, hash, &e.to_string()).await {
                            return end;
                        }
                    }
                    None => return End::Refused(format!("cannot understand Control: {e}")),
                },
            }
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ws_url_from_base_url() {
        assert_eq!(
            control_ws_url("http://127.0.0.1:8780").unwrap(),
            "ws://127.0.0.1:8780/api/v1/connect"
        );
        assert_eq!(
            control_ws_url("https://c.example.com/").unwrap(),
            "wss://c.example.com/api/v1/connect"
        );
        assert_eq!(
            control_ws_url("wss://c.example.com").unwrap(),
            "wss://c.example.com/api/v1/connect"
        );
        for bad in ["", "c.example.com", "ftp://x", "http://", "http://x?y=1"] {
            assert!(control_ws_url(bad).is_err(), "{bad}");
        }
    }
}
