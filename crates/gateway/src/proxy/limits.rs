//! Per-tunnel limits at the Gateway (the route's [`RouteLimits`]): IP allow / deny lists, a
//! request rate per client with burst, and a cap on concurrent requests, each refusal counted.
//!
//! Order per request, before anything else the proxy does for the route (access control
//! included): the IP lists (deny wins; `403`), then the client's token bucket (`429` with
//! `Retry-After`); the concurrency permit is taken last, just before the request is forwarded,
//! and lives in the response body (or the upgraded connection) until it is done. ACME HTTP-01
//! paths are exempt from all of it, so a certificate can always be validated.
//!
//! Hot path: the limiter of a tunnel is found in a copy-on-write map (no lock); the buckets are
//! split over [`SHARDS`] mutexes by client, each held for a hash-map probe; counters are atomics.
//! Memory is bounded: at most [`MAX_CLIENTS`] clients are tracked per tunnel. A client whose
//! bucket has refilled is indistinguishable from one never seen, so such entries are dropped
//! whenever a shard is full; if every entry is still active, an arbitrary one is dropped (that
//! client gets a fresh bucket: the limit fails open for one client rather than shut new ones out).
//!
//! A config update keeps a tunnel's limiter (buckets and in-flight count) when its limits did
//! not change, and its counters in any case while the tunnel keeps limits.

use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::{Buf, Bytes};
use http::header::RETRY_AFTER;
use http::{HeaderValue, Response, StatusCode};
use http_body_util::Full;
use hyper::body::{Body, Frame, SizeHint};
use kakuremichi_proto::{GatewayRoute, RateLimit, RouteLimits};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::metrics::InFlight;
use super::pages::{escape, page};

/// Buckets are spread over this many locks, by client.
const SHARDS: usize = 16;
/// Most clients whose buckets are tracked per tunnel (at most ~820 KiB per tunnel).
const MAX_CLIENTS: usize = 14_336;
/// Most clients tracked per shard (896). Evictions leave tombstones that can make a table double
/// once, to 2,048 slots of 25 bytes (~51 KiB), never more (a unit test hammers it).
const PER_SHARD: usize = MAX_CLIENTS / SHARDS;
/// A full shard drops its refilled buckets at most this often (nanoseconds); in between, a new
/// client replaces an arbitrary one, so a flood of new addresses costs O(1) per request.
const SWEEP_EVERY_NS: u64 = 100_000_000;
/// `Retry-After` when the concurrency cap is reached: requests usually end within a second.
const CONCURRENCY_RETRY: Duration = Duration::from_secs(1);

/// Requests refused per reason, for one tunnel (`/metrics` on the admin listener).
#[derive(Debug, Default)]
pub struct Refused {
    pub ip_denied: AtomicU64,
    pub rate_limited: AtomicU64,
    pub concurrency: AtomicU64,
}

/// Every limited tunnel's limiter, by tunnel id; replaced with each config snapshot.
#[derive(Default)]
pub struct Limits {
    tunnels: ArcSwap<HashMap<i64, Arc<TunnelLimiter>>>,
}

impl std::fmt::Debug for Limits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limits")
            .field("tunnels", &self.tunnels.load().len())
            .finish()
    }
}

impl Limits {
    /// Follows a new set of routes: unchanged limits keep their limiter, changed ones get a new
    /// limiter with the old counters, tunnels without limits get none.
    pub(crate) fn update<'a>(&self, routes: impl IntoIterator<Item = &'a GatewayRoute>) {
        let old = self.tunnels.load();
        let mut next = HashMap::new();
        for route in routes.into_iter().filter(|r| !r.limits.is_none()) {
            let limiter = match old.get(&route.tunnel_id) {
                Some(l) if l.limits == route.limits => l.clone(),
                Some(l) => Arc::new(TunnelLimiter::new(&route.limits, l.refused.clone())),
                None => Arc::new(TunnelLimiter::new(&route.limits, Arc::default())),
            };
            next.insert(route.tunnel_id, limiter);
        }
        self.tunnels.store(Arc::new(next));
    }

    pub(crate) fn get(&self, tunnel_id: i64) -> Option<Arc<TunnelLimiter>> {
        self.tunnels.load().get(&tunnel_id).cloned()
    }

    /// The refusal counters of every limited tunnel, by tunnel id.
    pub fn refused(&self) -> BTreeMap<i64, Arc<Refused>> {
        let tunnels = self.tunnels.load();
        tunnels
            .iter()
            .map(|(id, l)| (*id, l.refused.clone()))
            .collect()
    }
}

/// One tunnel's limits and their state.
pub(crate) struct TunnelLimiter {
    limits: RouteLimits,
    buckets: Option<Buckets>,
    in_flight: Option<Arc<Semaphore>>,
    refused: Arc<Refused>,
}

/// Why a request is refused: the page to answer.
pub(crate) type Refusal = Box<Response<Full<Bytes>>>;

impl TunnelLimiter {
    fn new(limits: &RouteLimits, refused: Arc<Refused>) -> Self {
        let permits = limits
            .max_concurrent_requests
            .map(|n| (n as usize).clamp(1, Semaphore::MAX_PERMITS));
        Self {
            limits: limits.clone(),
            buckets: limits.rate.map(Buckets::new),
            in_flight: permits.map(|n| Arc::new(Semaphore::new(n))),
            refused,
        }
    }

    /// The IP lists, then the client's bucket.
    pub(crate) fn admit(&self, client: IpAddr) -> Result<(), Refusal> {
        let client = client.to_canonical();
        if !self.limits.admits_ip(client) {
            self.refused.ip_denied.fetch_add(1, Ordering::Relaxed);
            return Err(Box::new(forbidden(client)));
        }
        if let Some(buckets) = &self.buckets {
            if let Err(wait) = buckets.take(ClientKey::of(client)) {
                self.refused.rate_limited.fetch_add(1, Ordering::Relaxed);
                return Err(Box::new(too_many(wait)));
            }
        }
        Ok(())
    }

    /// A concurrency permit (none needed without a cap), or the 429 when all are taken.
    pub(crate) fn acquire(&self) -> Result<Option<OwnedSemaphorePermit>, Refusal> {
        let Some(in_flight) = &self.in_flight else {
            return Ok(None);
        };
        match in_flight.clone().try_acquire_owned() {
            Ok(permit) => Ok(Some(permit)),
            Err(_) => {
                self.refused.concurrency.fetch_add(1, Ordering::Relaxed);
                Err(Box::new(too_many(CONCURRENCY_RETRY)))
            }
        }
    }
}

/// Whom a bucket belongs to: an IPv4 address, or an IPv6 /64 (one subscriber's usual share, so
/// hopping addresses inside it gains nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum ClientKey {
    V4(u32),
    V6(u64),
}

impl ClientKey {
    fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => ClientKey::V4(u32::from(v4)),
            IpAddr::V6(v6) => ClientKey::V6((u128::from(v6) >> 64) as u64),
        }
    }
}

/// Token buckets as GCRA: per client only the "theoretical arrival time" (nanoseconds since
/// `epoch`) of its next request is kept; a request is admitted while that time is at most
/// `burst` intervals ahead of now.
struct Buckets {
    epoch: Instant,
    interval_ns: u64,
    tolerance_ns: u64,
    hasher: RandomState,
    shards: Box<[Mutex<Shard>]>,
}

/// Clients → their theoretical arrival time, and when refilled entries were last dropped.
#[derive(Default)]
struct Shard {
    clients: HashMap<ClientKey, u64>,
    swept_at: u64,
}

impl Buckets {
    fn new(rate: RateLimit) -> Self {
        let interval_ns = 1_000_000_000 / u64::from(rate.per_second.max(1));
        Self {
            epoch: Instant::now(),
            interval_ns,
            tolerance_ns: interval_ns.saturating_mul(u64::from(rate.burst.max(1))),
            hasher: RandomState::new(),
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
        }
    }

    /// Takes a token of `client`, or says how long until one is available.
    fn take(&self, client: ClientKey) -> Result<(), Duration> {
        let now = u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let shard = &self.shards[self.hasher.hash_one(client) as usize % SHARDS];
        // A panic elsewhere cannot leave a map half-updated in a way that matters here.
        let mut shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
        if shard.clients.len() >= PER_SHARD && !shard.clients.contains_key(&client) {
            shard.make_room(now);
        }
        let tat = shard.clients.entry(client).or_insert(now);
        let next = (*tat).max(now).saturating_add(self.interval_ns);
        let ahead = next - now;
        if ahead > self.tolerance_ns {
            return Err(Duration::from_nanos(ahead - self.tolerance_ns));
        }
        *tat = next;
        Ok(())
    }

    /// Clients tracked, and the largest capacity of a shard's table.
    #[cfg(test)]
    fn tracked(&self) -> (usize, usize) {
        let shards = self.shards.iter().map(|s| {
            let shard = s.lock().unwrap_or_else(PoisonError::into_inner);
            (shard.clients.len(), shard.clients.capacity())
        });
        shards.fold((0, 0), |(n, cap), (len, c)| (n + len, cap.max(c)))
    }
}

impl Shard {
    /// Drops the clients whose buckets are full again (unless that was just done); if that
    /// frees nothing, one arbitrary client.
    fn make_room(&mut self, now: u64) {
        if now.saturating_sub(self.swept_at) >= SWEEP_EVERY_NS || self.swept_at == 0 {
            self.swept_at = now.max(1);
            self.clients.retain(|_, tat| *tat > now);
        }
        if self.clients.len() >= PER_SHARD {
            if let Some(key) = self.clients.keys().next().copied() {
                self.clients.remove(&key);
            }
        }
    }
}

fn forbidden(client: IpAddr) -> Response<Full<Bytes>> {
    let detail = format!(
        "Your address <code>{}</code> may not use this site.",
        escape(&client.to_string())
    );
    page(StatusCode::FORBIDDEN, &detail)
}

fn too_many(wait: Duration) -> Response<Full<Bytes>> {
    // Whole seconds, rounded up, at least 1: a client retrying at once would only be refused.
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    let mut response = page(
        StatusCode::TOO_MANY_REQUESTS,
        "Too many requests to this site; try again in a moment.",
    );
    response
        .headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from(secs.max(1)));
    response
}

/// A response body that holds a concurrency permit until it is dropped (sent, or abandoned).
pub(crate) struct Counted<B> {
    body: B,
    _permit: Option<OwnedSemaphorePermit>,
    /// The request's metrics: bytes sent, and when it began (its duration is recorded when the
    /// body ends or is dropped).
    measured: Option<(InFlight, Instant)>,
    /// The request's record in the request log, finished when the body ends.
    logged: Option<(super::reqlog::Pending, Instant)>,
}

impl<B> Counted<B> {
    pub(crate) fn new(body: B, permit: Option<OwnedSemaphorePermit>) -> Self {
        Self {
            body,
            _permit: permit,
            measured: None,
            logged: None,
        }
    }

    /// Records the request in the request log when the body ends (its bytes counted).
    pub(crate) fn log(&mut self, pending: super::reqlog::Pending, started: Instant) {
        self.logged = Some((pending, started));
    }

    /// Counts the body's bytes for the request `in_flight`, which began at `started`.
    pub(crate) fn measure(&mut self, in_flight: InFlight, started: Instant) {
        self.measured = Some((in_flight, started));
    }
}

impl<B> Drop for Counted<B> {
    fn drop(&mut self) {
        if let Some((in_flight, started)) = &self.measured {
            in_flight.stats().finished(started.elapsed());
        }
        if let Some((pending, started)) = self.logged.take() {
            pending.finish(started.elapsed());
        }
    }
}

impl<B: Body + Unpin> Body for Counted<B>
where
    B::Data: Buf,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                if let Some((in_flight, _)) = &this.measured {
                    in_flight.stats().bytes_out(data.remaining());
                }
                if let Some((pending, _)) = &mut this.logged {
                    pending.sent(data.remaining());
                }
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests;
