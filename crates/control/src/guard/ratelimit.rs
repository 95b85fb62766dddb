//! The per-user API rate limit (`api_requests_per_minute`): a token bucket per user that holds
//! one minute's worth of requests and refills continuously. Every authenticated API request
//! takes a token; an empty bucket is a 429 with `Retry-After`. Per user, not per token, so
//! minting more API tokens buys no more requests. Admins are limited too (they can raise it).
//!
//! One Control (SQLite) keeps the buckets in memory: a restart refills every bucket. Several
//! replicas (PostgreSQL) keep them in the database, so spreading requests over replicas buys
//! no more of them. The rate itself is a setting, re-read from the database at most every
//! [`RATE_TTL`] (and at once after a change here), so replicas converge on a change within
//! that time.

use crate::error::ApiError;
use crate::store::{now_ms, Backend, Quotas, Store};
use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How long a read rate setting is trusted.
const RATE_TTL: Duration = Duration::from_secs(10);
/// Bounded memory: past this many buckets, full ones (idle users) are dropped.
const PRUNE_AT: usize = 10_000;

pub struct ApiRateLimit {
    buckets: Backing,
    /// The rate in force and when it was read (`None`: never).
    rate: Mutex<(u32, Option<Instant>)>,
}

enum Backing {
    Memory(Mutex<HashMap<i64, Bucket>>),
    Shared(Store),
}

struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Default for ApiRateLimit {
    fn default() -> Self {
        Self {
            buckets: Backing::Memory(Mutex::default()),
            rate: Mutex::new((Quotas::default().api_requests_per_minute, None)),
        }
    }
}

impl ApiRateLimit {
    /// In memory for the one Control on SQLite; in the database when replicas share it.
    pub fn for_store(store: &Store) -> Self {
        match store.backend() {
            Backend::Sqlite => Self::default(),
            Backend::Postgres => Self {
                buckets: Backing::Shared(store.clone()),
                ..Self::default()
            },
        }
    }

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
        let wait = match &self.buckets {
            Backing::Memory(buckets) => take(buckets, user_id, per_minute, Instant::now()),
            Backing::Shared(store) => {
                let capacity = f64::from(per_minute.max(1));
                store
                    .take_api_token(user_id, capacity, now_ms())
                    .await?
                    .map(|tokens| wait_secs(tokens, capacity / 60.0))
            }
        };
        match wait {
            None => Ok(()),
            Some(wait) => Err(ApiError::too_many(
                wait,
                &format!(
                    "rate limit exceeded: api_requests_per_minute is {per_minute} for each user"
                ),
            )),
        }
    }
}

/// `None` when a token was taken from `user_id`'s bucket, else the whole seconds until one is
/// available.
fn take(
    buckets: &Mutex<HashMap<i64, Bucket>>,
    user_id: i64,
    per_minute: u32,
    now: Instant,
) -> Option<u64> {
    let capacity = f64::from(per_minute.max(1));
    let per_sec = capacity / 60.0;
    let mut buckets = lock(buckets);
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
        Some(wait_secs(b.tokens, per_sec))
    }
}

/// Whole seconds (at least one) until a bucket holding `tokens` refilling at `per_sec` has one.
fn wait_secs(tokens: f64, per_sec: f64) -> u64 {
    ((1.0 - tokens) / per_sec).ceil().max(1.0) as u64
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minute_of_burst_then_the_refill_rate_per_user() {
        let limit = Mutex::default();
        let t0 = Instant::now();
        for _ in 0..60 {
            assert_eq!(take(&limit, 1, 60, t0), None);
        }
        // Empty: one token per second at 60/min.
        assert_eq!(take(&limit, 1, 60, t0), Some(1));
        assert_eq!(
            take(&limit, 2, 60, t0),
            None,
            "another user has their own bucket"
        );
        assert_eq!(take(&limit, 1, 60, t0 + Duration::from_millis(1100)), None);
        assert_eq!(
            take(&limit, 1, 60, t0 + Duration::from_millis(1100)),
            Some(1)
        );
        // At 6/min a token takes 10 s.
        let slow = Mutex::default();
        for _ in 0..6 {
            assert_eq!(take(&slow, 1, 6, t0), None);
        }
        assert_eq!(take(&slow, 1, 6, t0), Some(10));
    }
}
