//! Admission of WireGuard handshake messages, before any expensive work is done for them.
//!
//! A handshake initiation costs the responder X25519 computations (to find out which peer sent
//! it), a handshake response costs the initiator as many. Anybody can send them: a flood of
//! forged initiations kept the receive task busy with X25519 and starved every peer's traffic.
//! WireGuard's answer, used here as the Linux kernel and wireguard-go do:
//!
//! 1. mac1 first. It is a keyed BLAKE2s over the message, keyed by our public key: checking it
//!    costs a hash, and random or stale traffic fails it.
//! 2. Under load (more handshake messages per second than [`UNDER_LOAD`]), mac2 too: it is keyed
//!    by a cookie that only the sender's IP address receives (a cookie reply, boringtun's
//!    [`RateLimiter`]). A spoofed source never sees the cookie, so it never gets past this.
//! 3. Under load, each source address that proved itself with mac2 gets a few handshakes per
//!    second ([`PER_SOURCE_RATE`], bursts of [`PER_SOURCE_BURST`]); IPv6 sources count by /64.
//!
//! Data packets never come here: the data path takes no lock of this module. The per-source
//! table is sharded and bounded; it is touched only by handshake messages under load.

use crate::device::{Inner, PeerEntry, PeerTable};
use crate::peer::Source;
use crate::PublicKey;
use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Packet, TunnResult};
use boringtun::x25519;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Handshake messages with a valid mac1 per second beyond which the device is under load. Each
/// counts twice (here, and again in its peer's session), so this is about 128 handshakes per
/// second: a thousand Agents rekeying every two minutes stay far below it.
const UNDER_LOAD: u64 = 256;
/// Handshakes per second one source address may start while the device is under load (the
/// figure of wireguard-go and the Linux kernel).
const PER_SOURCE_RATE: f64 = 20.0;
const PER_SOURCE_BURST: f64 = 5.0;
/// Source addresses tracked per shard; beyond this, new sources are refused while under load.
const SHARD_SOURCES: usize = 4096;
const SHARDS: usize = 16;
/// A source silent this long has a full bucket again and is forgotten.
const SOURCE_IDLE: Duration = Duration::from_secs(1);

/// What to do with a handshake message.
pub(crate) enum Verdict<'a, 'b> {
    /// Passed: route it to its peer.
    Accept(Packet<'a>),
    /// Under load and without a valid mac2: send this cookie reply back to the source.
    Cookie(&'b [u8]),
    /// Bad mac1, or too many handshakes from this source: drop it.
    Drop,
}

pub(crate) struct HandshakeGuard {
    /// Shared with every peer's session, so that both check mac2 against the same cookie secret.
    limiter: Arc<RateLimiter>,
    /// Handshake messages with a valid mac1 in the current second (ours; the limiter's own
    /// counter is private).
    load: AtomicU64,
    /// The second (since `epoch`) the counters were last reset in.
    second: AtomicU64,
    epoch: Instant,
    sources: [Mutex<HashMap<SourceKey, Bucket>>; SHARDS],
    /// A random key for the shard choice, so that nobody can aim all sources at one shard.
    shard_key: u64,
}

/// A source address as counted: IPv4 whole, IPv6 by its /64 (one host owns a whole /64).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum SourceKey {
    V4(u32),
    V6(u64),
}

impl From<IpAddr> for SourceKey {
    fn from(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => SourceKey::V4(u32::from(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => SourceKey::V4(u32::from(v4)),
                None => SourceKey::V6((u128::from(v6) >> 64) as u64),
            },
        }
    }
}

/// A token bucket.
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl HandshakeGuard {
    pub fn new(public: &crate::PublicKey) -> Self {
        let public = boringtun::x25519::PublicKey::from(*public.as_bytes());
        Self {
            limiter: Arc::new(RateLimiter::new(&public, UNDER_LOAD)),
            load: AtomicU64::new(0),
            second: AtomicU64::new(0),
            epoch: Instant::now(),
            sources: std::array::from_fn(|_| Mutex::new(HashMap::new())),
            shard_key: rand::random(),
        }
    }

    /// The limiter every peer's session must use (see the field).
    pub fn limiter(&self) -> Arc<RateLimiter> {
        self.limiter.clone()
    }

    /// Checks a handshake message (an initiation or a response) from `src`; `reply` receives a
    /// cookie reply when one is due.
    pub fn check<'a, 'b>(
        &self,
        src: IpAddr,
        datagram: &'a [u8],
        reply: &'b mut [u8],
    ) -> Verdict<'a, 'b> {
        self.next_second();
        match self.limiter.verify_packet(Some(src), datagram, reply) {
            Ok(packet) => {
                let load = self.load.fetch_add(1, Ordering::Relaxed);
                if load >= UNDER_LOAD / 2 && !self.allow(src) {
                    return Verdict::Drop;
                }
                Verdict::Accept(packet)
            }
            Err(TunnResult::WriteToNetwork(cookie)) => {
                self.load.fetch_add(1, Ordering::Relaxed);
                Verdict::Cookie(cookie)
            }
            Err(_) => Verdict::Drop,
        }
    }

    /// Starts a new counting second when one has begun (lazily: no timer task needed).
    fn next_second(&self) {
        let now = self.epoch.elapsed().as_secs();
        let last = self.second.load(Ordering::Relaxed);
        if now != last
            && self
                .second
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.limiter.reset_count();
            self.load.store(0, Ordering::Relaxed);
        }
    }

    /// Takes a token from `src`'s bucket.
    fn allow(&self, src: IpAddr) -> bool {
        let key = SourceKey::from(src);
        let shard = &self.sources[self.shard(&key)];
        let mut sources = shard.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if sources.len() >= SHARD_SOURCES && !sources.contains_key(&key) {
            sources.retain(|_, b| now.duration_since(b.at) < SOURCE_IDLE);
            if sources.len() >= SHARD_SOURCES {
                return false;
            }
        }
        let bucket = sources.entry(key).or_insert(Bucket {
            tokens: PER_SOURCE_BURST,
            at: now,
        });
        let refill = now.duration_since(bucket.at).as_secs_f64() * PER_SOURCE_RATE;
        bucket.tokens = (bucket.tokens + refill).min(PER_SOURCE_BURST);
        bucket.at = now;
        if bucket.tokens < 1.0 {
            return false;
        }
        bucket.tokens -= 1.0;
        true
    }

    fn shard(&self, key: &SourceKey) -> usize {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.shard_key.hash(&mut h);
        key.hash(&mut h);
        (h.finish() % SHARDS as u64) as usize
    }
}

impl Inner {
    /// Finds the peer of a handshake message once it passed the guard (mac1, and under
    /// load a cookie and a per-source rate); only then is X25519 spent on an initiation.
    pub(crate) fn admit_handshake<'t>(
        &self,
        src: &Source,
        datagram: &[u8],
        table: &'t PeerTable,
    ) -> Option<&'t Arc<PeerEntry>> {
        let mut reply = [0u8; 64];
        match self.guard.check(src.ip(), datagram, &mut reply) {
            Verdict::Accept(Packet::HandshakeInit(p)) => {
                let public = x25519::PublicKey::from(*self.public_key.as_bytes());
                match parse_handshake_anon(&self.private_key.0, &public, &p) {
                    Ok(h) => {
                        let key = PublicKey(h.peer_static_public);
                        let entry = table.by_key.get(&key);
                        if entry.is_none() {
                            // Normal for a moment while a new node's key reaches this one.
                            tracing::debug!(?src, peer = %key.to_base64(), "handshake from a key that is not a configured peer; dropped");
                        }
                        entry
                    }
                    Err(e) => {
                        tracing::debug!(?src, error = ?e, "handshake initiation not for this key; dropped");
                        None
                    }
                }
            }
            Verdict::Accept(Packet::HandshakeResponse(p)) => {
                table.by_index.get(&(p.receiver_idx >> 8))
            }
            Verdict::Accept(_) | Verdict::Drop => None,
            Verdict::Cookie(cookie) => {
                tracing::trace!(
                    ?src,
                    "under load: handshake without a valid cookie; cookie sent"
                );
                match src {
                    Source::Udp(addr) => self.shared.udp.send(cookie, *addr),
                    Source::Stream(link) => link.send(cookie),
                }
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_gets_a_burst_then_its_rate() {
        let guard = HandshakeGuard::new(&crate::PrivateKey::generate().public_key());
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let allowed = (0..50).filter(|_| guard.allow(ip)).count();
        assert_eq!(allowed, PER_SOURCE_BURST as usize);
        assert!(guard.allow("192.0.2.2".parse().unwrap()), "another source");
    }

    #[test]
    fn ipv6_sources_count_by_64() {
        let guard = HandshakeGuard::new(&crate::PrivateKey::generate().public_key());
        let allowed = (0..50u16)
            .filter(|i| guard.allow(format!("2001:db8:1:2::{i:x}").parse().unwrap()))
            .count();
        assert_eq!(allowed, PER_SOURCE_BURST as usize);
        assert!(guard.allow("2001:db8:1:3::1".parse().unwrap()));
    }

    #[test]
    fn random_handshakes_are_dropped_without_a_reply() {
        let guard = HandshakeGuard::new(&crate::PrivateKey::generate().public_key());
        let mut packet = [7u8; 148];
        packet[..4].copy_from_slice(&1u32.to_le_bytes());
        let mut reply = [0u8; 64];
        let src = "192.0.2.1".parse().unwrap();
        for _ in 0..1000 {
            assert!(matches!(
                guard.check(src, &packet, &mut reply),
                Verdict::Drop
            ));
        }
    }
}
