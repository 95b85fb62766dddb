//! When a peer handshakes. boringtun's timers do the protocol's part (rekeying, keepalives,
//! session expiry); on top, the side that initiates (it was given the peer's endpoint) keeps
//! trying until a session exists, faster than the protocol's 5 s, and handshakes again when
//! the peer has been silent for longer than its keepalive allows.

use super::PeerState;
use boringtun::noise::TunnResult;
use std::time::Duration;
use tokio::time::Instant;

/// While an initiating peer has no session, its handshake is retried after this delay, doubling
/// up to [`INITIATION_RETRY_MAX`] (boringtun alone waits the protocol's 5 s REKEY_TIMEOUT, which
/// makes a lost first initiation cost 5 s).
const INITIATION_RETRY: Duration = Duration::from_secs(1);
const INITIATION_RETRY_MAX: Duration = Duration::from_secs(2);
/// Silence beyond one keepalive interval plus this margin means the path is gone.
const SILENCE_MARGIN: Duration = Duration::from_secs(4);
/// A session older than this is dead (WireGuard's REJECT_AFTER_TIME).
const SESSION_LIFETIME: Duration = super::REJECT_AFTER_TIME;

/// A peer's handshake schedule.
pub(super) struct Handshake {
    /// This side initiates (it was given the peer's endpoint); it keeps trying until a session exists.
    initiator: bool,
    last_initiation: Option<Instant>,
    /// The delay before the next retry while there is no session.
    retry: Duration,
    /// Persistent keepalive; with it, silence from the peer for two intervals means the path or
    /// the peer is gone (a restarted peer drops our old session silently), so re-handshake.
    keepalive: Option<Duration>,
}

impl Handshake {
    pub fn new(keepalive: Option<u16>) -> Self {
        Self {
            initiator: false,
            last_initiation: None,
            retry: INITIATION_RETRY,
            keepalive: keepalive.map(|k| Duration::from_secs(u64::from(k))),
        }
    }
}

impl PeerState {
    /// Makes this side the initiator and sends a handshake initiation now.
    pub(super) fn initiate(&mut self) {
        self.handshake.initiator = true;
        self.send_initiation();
    }

    fn send_initiation(&mut self) {
        self.handshake.last_initiation = Some(Instant::now());
        let Self { nic, decap, .. } = self;
        if let TunnResult::WriteToNetwork(d) = nic.tunn.format_handshake_initiation(decap, true) {
            nic.send_datagram(d);
        }
    }

    pub(super) fn update_timers(&mut self) {
        let Self { nic, decap, .. } = self;
        match nic.tunn.update_timers(decap) {
            TunnResult::WriteToNetwork(d) => nic.send_datagram(d),
            TunnResult::Err(e) => tracing::trace!(error = ?e, "WireGuard timer"),
            _ => {}
        }
        if self.handshake.initiator && self.nic.has_path() {
            let (since_handshake, ..) = self.nic.tunn.stats();
            let no_session = since_handshake.is_none_or(|d| d > SESSION_LIFETIME);
            // Both sides send keepalives, so on a healthy path something arrives at least once a
            // keepalive interval. Longer silence means the path (or the peer's state) is gone: a
            // restarted Gateway, a NAT that flushed its mappings. Handshake until it answers.
            let silent = self.handshake.keepalive.is_some_and(|k| {
                self.stats
                    .last_rx
                    .is_some_and(|rx| rx.elapsed() > k + SILENCE_MARGIN)
            });
            let handshake = &mut self.handshake;
            if !no_session && !silent {
                handshake.retry = INITIATION_RETRY;
            } else if handshake
                .last_initiation
                .is_none_or(|t| t.elapsed() >= handshake.retry)
            {
                if silent && handshake.retry == INITIATION_RETRY {
                    tracing::debug!(peer = %self.nic.endpoint.map(|e| e.to_string()).unwrap_or_default(), "peer silent; re-handshaking");
                }
                self.send_initiation();
                self.handshake.retry = (self.handshake.retry * 2).min(INITIATION_RETRY_MAX);
            }
        }
    }
}
