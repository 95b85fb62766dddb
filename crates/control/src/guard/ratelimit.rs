//! The per-user API rate limit (`api_requests_per_minute`): a token bucket per user that holds
//! one minute's worth of requests and refills continuously. Every authenticated API request
//! takes a token; an empty bucket is a 429 with `Retry-After`. Per user, not per token, so
//! minting more API tokens buys no more requests. Admins are limited too (they can raise it).
//!
//! In memory, per Control process: a restart refills every bucket. The rate itself is a setting,
//! re-read from the database at most every [`RATE_TTL`] (and at once after a change here), so
//! several Control replicas converge on a change within that time.

use crate::error::ApiError;
use crate::store::{Quotas, Store};
use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How long a read rate setting is trusted.
const RATE_TTL: Duration = Duration::from_secs(10);
/// Bounded memory: past this many buckets, full ones (idle users) are dropped.
const PRUNE_AT: usize = 10_000;

pub struct ApiRateLimit {
    buckets: Mutex<HashMap<i64, Bucket>>,
    /// The rate in force and when it was read (`None`: never).
    rate: Mutex<(u32, Option<Instant>)>,
}

struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Default for ApiRateLimit {
    fn default() -> Self {
        Self {
            buckets: Mutex::new(HashMap::new()),
            rate: Mutex::new((Quotas::default().api_requests_per_minute, None)),
        }
    }
}

impl ApiRateLimit {
    /// Uses `per_minute` from now on (after a settings change).
    pub fn set_rate(&self, per_minute: u32) {
        *lock(&self.rate) = (per_minute, Some(Instant::now()));
    }

    async fn rate(&self, store: &Store) -> u32 {
        let (rate, read) = *lock(&self.rate);
        if read.is_some_and(|t| t.elapsed() < RATE_TTL) {
            return rate;
        }
        match store.quotas().await {
            Ok(q) => {
                self.set_rate(q.api_requests_per_minute);
                q.api_requests_per_minute
            }
            Err(e) => {
                // Keep the last known rate; the database error shows on the request itself.
                tracing::warn!(error = %e, "cannot read the API rate limit; keeping the last one");
                rate
            }
        }
    }

    /// Takes one request from `user_id`'s bucket, or answers 429 with the wait.
    pub async fn check(&self, store: &Store, user_id: i64) -> Result<(), ApiError> {
        let per_minute = self.rate(store).await;
        match self.take(user_id, per_minute, Instant::now()) {
            None => Ok(()),
            Some(wait) => Err(ApiError::too_many(
                wait,
                &format!(
                    "rate limit exceeded: api_requests_per_minute is {per_minute} for each user"
                ),
            )),
        }
    }

    /// `None` when a token was taken, else the whole seconds until one is available.
    fn take(&self, user_id: i64, per_minute: u32, now: Instant) -> Option<u64> {
        let capacity = f64::from(per_minute.max(1));
        let per_sec = capacity / 60.0;
        let mut buckets = lock(&self.buckets);
        if buckets.len() > PRUNE_AT {
            buckets.retain(|_, b| {
                b.tokens + now.duration_since(b.last).as_secs_f64() * per_sec < capacity
            });
        }
        let b = buckets.entry(user_id).or_insert(Bucket {
            tokens: capacity,
            last: now,
        });
        let refill = now.duration_since(b.last).as_secs_f64() * per_sec;
        b.tokens = (b.tokens + refill).min(capacity);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            None
        } else {
            Some(((1.0 - b.tokens) / per_sec).ceil().max(1.0) as u64)
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minute_of_burst_then_the_refill_rate_per_user() {
        let limit = ApiRateLimit::default();
        let t0 = Instant::now();
        for _ in 0..60 {
            assert_eq!(limit.take(1, 60, t0), None);
        }
        // Empty: one token per second at 60/min.
        assert_eq!(limit.take(1, 60, t0), Some(1));
        assert_eq!(
            limit.take(2, 60, t0),
            None,
            "another user has their own bucket"
        );
        assert_eq!(limit.take(1, 60, t0 + Duration::from_millis(1100)), None);
        assert_eq!(limit.take(1, 60, t0 + Duration::from_millis(1100)), Some(1));
        // At 6/min a token takes 10 s.
        let slow = ApiRateLimit::default();
        for _ in 0..6 {
            assert_eq!(slow.take(1, 6, t0), None);
        }
        assert_eq!(slow.take(1, 6, t0), Some(10));
    }
}
