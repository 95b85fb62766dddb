//! A peer's counters that are read without its lock: the bytes of WireGuard datagrams each way,
//! when its last handshake completed, the path it uses, and the bulk data sent to it again.
//! The data path updates them with relaxed atomics (it holds the peer's lock anyway, for the
//! noise session); a scrape of the roles' `/metrics` reads them through
//! [`crate::Device::peer_stats`] at any time without waiting for, or holding up, a peer's
//! traffic.

use crate::keys::PublicKey;
use crate::link::StreamLink;
use arc_swap::ArcSwapOption;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A session older than this is dead (WireGuard's REJECT_AFTER_TIME): a peer whose last
/// handshake is older is down, whatever else arrives from it.
pub const REJECT_AFTER_TIME: Duration = Duration::from_secs(180);

/// How a peer's datagrams travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Over UDP to its endpoint.
    Udp,
    /// Over a TCP/TLS stream (an Agent's fallback when UDP is blocked; see
    /// [`crate::Device::attach_stream`]).
    Stream,
}

/// One peer's counters at one moment, as [`crate::Device::peer_stats`] reads them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStats {
    pub public_key: PublicKey,
    /// Bytes of WireGuard datagrams from this peer that its session accepted (handshake
    /// messages, data, keepalives), over UDP or a stream alike.
    pub rx_bytes: u64,
    /// Bytes of WireGuard datagrams sent to this peer (as handed to the socket or the stream).
    pub tx_bytes: u64,
    /// Time since a handshake with this peer last completed (either side initiating); `None`
    /// if none has yet.
    pub since_handshake: Option<Duration>,
    /// The path the peer's datagrams take now; `None` while there is none (a Gateway's peer
    /// before the Agent's first handshake).
    pub transport: Option<Transport>,
    /// TCP segments of 512 bytes of data or more that the tunnel's stack sent to this peer
    /// again: bulk data lost on the way (a full socket buffer on the peer's side, a congested
    /// link). A share of them over 5 % paces what is sent to the peer.
    pub tcp_retransmits: u64,
}

impl PeerStats {
    /// Whether the peer is up: a handshake completed within [`REJECT_AFTER_TIME`] (one happens
    /// every two minutes on a live tunnel), so its session can still carry data.
    pub fn is_up(&self) -> bool {
        self.since_handshake.is_some_and(|d| d < REJECT_AFTER_TIME)
    }
}

/// The atomics behind [`PeerStats`], shared by a peer and its NIC.
pub(crate) struct Counters {
    rx_bytes: AtomicU64,
    tx_bytes: AtomicU64,
    tcp_retransmits: AtomicU64,
    /// Nanoseconds from `epoch` to the last completed handshake, plus one; 0: never.
    handshake: AtomicU64,
    /// Whether the peer has a UDP endpoint (configured or learned).
    endpoint: AtomicBool,
    /// The stream carrying the peer's datagrams, while one does.
    stream: ArcSwapOption<StreamLink>,
    epoch: Instant,
}

impl Counters {
    pub fn new(endpoint: bool) -> Self {
        Self {
            rx_bytes: AtomicU64::new(0),
            tx_bytes: AtomicU64::new(0),
            tcp_retransmits: AtomicU64::new(0),
            handshake: AtomicU64::new(0),
            endpoint: AtomicBool::new(endpoint),
            stream: ArcSwapOption::empty(),
            epoch: Instant::now(),
        }
    }

    pub fn received(&self, bytes: usize) {
        self.rx_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub fn sent(&self, bytes: usize) {
        self.tx_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// A full-size TCP segment was sent to the peer again.
    pub fn retransmitted(&self) {
        self.tcp_retransmits.fetch_add(1, Ordering::Relaxed);
    }

    pub fn tcp_retransmits(&self) -> u64 {
        self.tcp_retransmits.load(Ordering::Relaxed)
    }

    /// A handshake completed now: a session was established, this side initiating or not.
    pub fn handshake_completed(&self) {
        let at = self.epoch.elapsed();
        let nanos = u64::try_from(at.as_nanos()).unwrap_or(u64::MAX - 1);
        self.handshake.store(nanos + 1, Ordering::Relaxed);
    }

    pub fn set_endpoint(&self) {
        self.endpoint.store(true, Ordering::Relaxed);
    }

    pub fn set_stream(&self, link: Option<Arc<StreamLink>>) {
        self.stream.store(link);
    }

    pub fn snapshot(&self, public_key: PublicKey) -> PeerStats {
        let since_handshake = match self.handshake.load(Ordering::Relaxed) {
            0 => None,
            n => {
                let at = self.epoch + Duration::from_nanos(n - 1);
                Some(Instant::now().saturating_duration_since(at))
            }
        };
        // A stream that ended is left by the peer on its next send; it carries nothing now.
        let on_stream = self.stream.load().as_ref().is_some_and(|s| !s.is_closed());
        let transport = if on_stream {
            Some(Transport::Stream)
        } else if self.endpoint.load(Ordering::Relaxed) {
            Some(Transport::Udp)
        } else {
            None
        };
        PeerStats {
            public_key,
            rx_bytes: self.rx_bytes.load(Ordering::Relaxed),
            tx_bytes: self.tx_bytes.load(Ordering::Relaxed),
            since_handshake,
            transport,
            tcp_retransmits: self.tcp_retransmits(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> PublicKey {
        crate::PrivateKey::generate().public_key()
    }

    #[test]
    fn counts_bytes_and_remembers_the_last_handshake() {
        let c = Counters::new(false);
        let before = c.snapshot(key());
        assert_eq!((before.rx_bytes, before.tx_bytes), (0, 0));
        assert_eq!(before.since_handshake, None);
        assert_eq!(before.transport, None);
        assert!(!before.is_up());
        c.received(148);
        c.sent(92);
        c.sent(32);
        c.handshake_completed();
        c.set_endpoint();
        c.retransmitted();
        let s = c.snapshot(key());
        assert_eq!((s.rx_bytes, s.tx_bytes), (148, 124));
        assert_eq!(s.tcp_retransmits, 1);
        let since = s.since_handshake.unwrap();
        assert!(since < Duration::from_secs(60), "{since:?}");
        assert!(s.is_up());
        assert_eq!(s.transport, Some(Transport::Udp));
    }

    #[test]
    fn a_peer_is_down_once_its_last_handshake_is_older_than_reject_after_time() {
        let mut s = Counters::new(true).snapshot(key());
        s.since_handshake = Some(REJECT_AFTER_TIME - Duration::from_secs(1));
        assert!(s.is_up());
        s.since_handshake = Some(REJECT_AFTER_TIME);
        assert!(!s.is_up());
    }
}
