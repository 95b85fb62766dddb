//! Room for the streams other nodes open to us (a Gateway's WireGuard-over-TLS listener).
//!
//! Anybody can open a TLS connection and ask for WireGuard over it; only Agents can
//! authenticate on it. So a stream counts against the Agents' cap ([`MAX_AUTHENTICATED`]) only
//! from its first authenticated packet on. Until then it waits in a small pool of its own
//! ([`MAX_PENDING`], at most [`PENDING_PER_SOURCE`] per source address) for
//! [`PENDING_DEADLINE`]; when that pool is full, a newcomer evicts the oldest waiting stream.
//! Somebody holding idle connections therefore never locks an Agent out: to delay one, they
//! would have to open a pool's worth of new connections between the Agent's TLS handshake and
//! its WireGuard handshake.

use crate::guard::SourceKey;
use crate::link::StreamLink;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

/// Authenticated streams at once: Agents on the fallback.
pub(crate) const MAX_AUTHENTICATED: usize = 1024;
/// Streams waiting for their first authenticated packet.
const MAX_PENDING: usize = 128;
/// Of those, from one source address (IPv6 by /64).
const PENDING_PER_SOURCE: usize = 8;
/// How long an accepted stream may wait for its first authenticated packet. An Agent sends its
/// handshake at once, and retries within 2 s if it gets a cookie back under load.
pub(crate) const PENDING_DEADLINE: Duration = Duration::from_secs(5);

/// Where a stream stands (`StreamLink::admission`).
pub(crate) const PENDING: u8 = 0;
pub(crate) const AUTHENTICATED: u8 = 1;
pub(crate) const ENDED: u8 = 2;

/// The slots of a device's accepted streams.
#[derive(Default)]
pub(crate) struct StreamSlots {
    authenticated: AtomicUsize,
    pending: Mutex<Pending>,
}

#[derive(Default)]
struct Pending {
    /// By link id: ids grow, so the first is the oldest.
    links: BTreeMap<u64, (SourceKey, Weak<StreamLink>)>,
    per_source: HashMap<SourceKey, usize>,
}

impl Pending {
    fn remove(&mut self, id: u64) -> Option<Weak<StreamLink>> {
        let (source, link) = self.links.remove(&id)?;
        if let Some(n) = self.per_source.get_mut(&source) {
            *n -= 1;
            if *n == 0 {
                self.per_source.remove(&source);
            }
        }
        Some(link)
    }
}

impl StreamSlots {
    /// Takes a waiting slot for a new stream, evicting the oldest waiting one when the pool is
    /// full; false when its source already holds its share.
    pub fn admit(&self, link: &Arc<StreamLink>, remote: SocketAddr) -> bool {
        let source = SourceKey::from(remote.ip());
        let mut pending = self.lock();
        if pending.per_source.get(&source).copied().unwrap_or(0) >= PENDING_PER_SOURCE {
            return false;
        }
        while pending.links.len() >= MAX_PENDING {
            let Some(oldest) = pending.links.keys().next().copied() else {
                break;
            };
            if let Some(old) = pending.remove(oldest).and_then(|l| l.upgrade()) {
                old.admission.store(ENDED, Ordering::Release);
                old.close();
                tracing::debug!(remote = %old.remote, "WireGuard stream still unauthenticated; evicted for a newer one");
            }
        }
        *pending.per_source.entry(source).or_default() += 1;
        pending
            .links
            .insert(link.id, (source, Arc::downgrade(link)));
        true
    }

    /// Moves a stream that carried an authenticated packet to the Agents' slots; false when it
    /// no longer waits (evicted, ended) or every Agent slot is taken.
    pub fn promote(&self, link: &StreamLink) -> bool {
        let mut pending = self.lock();
        if link.admission.load(Ordering::Acquire) != PENDING || pending.remove(link.id).is_none() {
            return link.admission.load(Ordering::Acquire) == AUTHENTICATED;
        }
        let taken = self
            .authenticated
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_AUTHENTICATED).then_some(n + 1)
            });
        if taken.is_err() {
            link.admission.store(ENDED, Ordering::Release);
            tracing::warn!(remote = %link.remote, "too many WireGuard streams; refused an authenticated one");
            return false;
        }
        link.admission.store(AUTHENTICATED, Ordering::Release);
        true
    }

    /// Gives back the slot of a stream that ended.
    pub fn release(&self, link: &StreamLink) {
        let mut pending = self.lock();
        match link.admission.swap(ENDED, Ordering::AcqRel) {
            PENDING => {
                pending.remove(link.id);
            }
            AUTHENTICATED => {
                self.authenticated.fetch_sub(1, Ordering::AcqRel);
            }
            _ => {}
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}
