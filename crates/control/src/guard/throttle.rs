//! Login throttling: after a few failures an account (or a client address) must wait, longer
//! after each further failure. A success clears the account's count.
//!
//! Check and count are one step: [`Throttle::reserve`] counts an attempt as a failure before
//! its password is checked, under the same lock (or in the same transaction) that decided it
//! may go ahead. A burst of concurrent guesses therefore gets no more checks than the limit,
//! however long they queue for the hashing pool; a right password gives its count back
//! ([`Throttle::succeeded`]).
//!
//! One Control (SQLite) keeps the counts in memory: a restart forgets them, which costs an
//! attacker a restart they cannot cause. Several replicas (PostgreSQL) keep them in the
//! database, so that switching replica does not dodge a wait.

use crate::store::{now_ms, Backend, Store, StoreResult, ThrottleRow};
use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

/// Failures allowed before the first wait.
const ACCOUNT_FREE_FAILURES: u32 = 5;
/// An address may try many accounts (a household behind NAT), but not endlessly.
const IP_FREE_FAILURES: u32 = 20;
/// The first wait; it doubles with each further failure.
const FIRST_WAIT: Duration = Duration::from_secs(30);
const MAX_WAIT: Duration = Duration::from_secs(15 * 60);
/// Entries untouched this long are forgotten.
const FORGET_AFTER: Duration = Duration::from_secs(3600);
/// Bounded memory: prune when the map grows past this.
const PRUNE_AT: usize = 10_000;

/// The counts per key (`account:<email>`, `ip:<address>`), times in Unix milliseconds.
type Entries = HashMap<String, ThrottleRow>;

pub struct Throttle {
    backing: Backing,
}

enum Backing {
    Memory(Mutex<Entries>),
    Shared(Store),
}

impl Default for Throttle {
    fn default() -> Self {
        Self {
            backing: Backing::Memory(Mutex::default()),
        }
    }
}

impl Throttle {
    /// In memory for the one Control on SQLite; in the database when replicas share it.
    pub fn for_store(store: &Store) -> Self {
        match store.backend() {
            Backend::Sqlite => Self::default(),
            Backend::Postgres => Self {
                backing: Backing::Shared(store.clone()),
            },
        }
    }

    /// Runs `edit` on the entries of `email` and `ip` (and possibly others), with the time.
    async fn edit<R>(
        &self,
        email: &str,
        ip: Option<&str>,
        edit: impl FnOnce(&mut Entries, i64) -> R,
    ) -> StoreResult<R> {
        let now = now_ms();
        let forget_before = now - millis(FORGET_AFTER);
        match &self.backing {
            Backing::Memory(entries) => {
                let mut entries = entries.lock().unwrap_or_else(PoisonError::into_inner);
                if entries.len() > PRUNE_AT {
                    entries.retain(|_, e| e.last_ms >= forget_before);
                }
                Ok(edit(&mut entries, now))
            }
            Backing::Shared(store) => {
                let keys: Vec<String> = keys(email, ip).into_iter().map(|(k, _)| k).collect();
                store
                    .edit_throttle(&keys, forget_before, |entries| edit(entries, now))
                    .await
            }
        }
    }

    /// How long the caller must still wait before trying `email` from `ip`, if at all.
    pub async fn wait(&self, email: &str, ip: Option<&str>) -> StoreResult<Option<Duration>> {
        self.edit(email, ip, |entries, now| wait_in(entries, email, ip, now))
            .await
    }

    /// Lets one attempt at `email` from `ip` go ahead, counted as a failure until it proves
    /// otherwise; or the wait, when the account or the address must wait first.
    pub async fn reserve(
        &self,
        email: &str,
        ip: Option<&str>,
    ) -> StoreResult<Result<(), Duration>> {
        self.edit(email, ip, |entries, now| {
            if let Some(wait) = wait_in(entries, email, ip, now) {
                return Err(wait);
            }
            for (key, free) in keys(email, ip) {
                let e = entries.entry(key).or_insert(ThrottleRow {
                    failures: 0,
                    until_ms: now,
                    last_ms: now,
                });
                e.failures += 1;
                e.last_ms = now;
                if e.failures >= i64::from(free) {
                    let doublings = (e.failures - i64::from(free)).min(10) as u32;
                    e.until_ms = now + millis((FIRST_WAIT * 2u32.pow(doublings)).min(MAX_WAIT));
                }
            }
            Ok(())
        })
        .await
    }

    /// The reserved attempt had the right password: the account starts afresh and the address
    /// gets its count back.
    pub async fn succeeded(&self, email: &str, ip: Option<&str>) -> StoreResult<()> {
        self.give_back(email, ip, true).await
    }

    /// The reserved attempt was never checked (Control was too busy): it counts for nothing.
    pub async fn release(&self, email: &str, ip: Option<&str>) -> StoreResult<()> {
        self.give_back(email, ip, false).await
    }

    async fn give_back(
        &self,
        email: &str,
        ip: Option<&str>,
        clear_account: bool,
    ) -> StoreResult<()> {
        self.edit(email, ip, |entries, now| {
            for (key, free) in keys(email, ip) {
                if clear_account && key.starts_with("account:") {
                    entries.remove(&key);
                } else if let Some(e) = entries.get_mut(&key) {
                    e.failures = (e.failures - 1).max(0);
                    if e.failures < i64::from(free) {
                        e.until_ms = now;
                    }
                }
            }
        })
        .await
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn wait_in(entries: &Entries, email: &str, ip: Option<&str>, now: i64) -> Option<Duration> {
    keys(email, ip)
        .iter()
        .filter_map(|(k, _)| entries.get(k))
        .filter(|e| e.until_ms > now)
        .map(|e| Duration::from_millis(u64::try_from(e.until_ms - now).unwrap_or(0)))
        .max()
}

fn keys(email: &str, ip: Option<&str>) -> Vec<(String, u32)> {
    let mut keys = vec![(format!("account:{email}"), ACCOUNT_FREE_FAILURES)];
    if let Some(ip) = ip {
        keys.push((format!("ip:{ip}"), IP_FREE_FAILURES));
    }
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waits_after_five_failures_and_doubles() {
        let t = Throttle::default();
        for _ in 0..4 {
            t.reserve("a@x", Some("1.2.3.4")).await.unwrap().unwrap();
            assert!(t.wait("a@x", Some("1.2.3.4")).await.unwrap().is_none());
        }
        t.reserve("a@x", Some("1.2.3.4")).await.unwrap().unwrap();
        let first = t.reserve("a@x", None).await.unwrap().unwrap_err();
        assert!(first > Duration::from_secs(25) && first <= FIRST_WAIT);
        assert!(
            t.wait("b@x", Some("1.2.3.4")).await.unwrap().is_none(),
            "the IP has 20"
        );
        t.succeeded("a@x", Some("1.2.3.4")).await.unwrap();
        assert!(t.wait("a@x", None).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_burst_gets_no_more_attempts_than_the_limit() {
        let t = Throttle::default();
        let mut allowed = 0;
        for _ in 0..300 {
            if t.reserve("a@x", Some("1.2.3.4")).await.unwrap().is_ok() {
                allowed += 1;
            }
        }
        assert_eq!(allowed, ACCOUNT_FREE_FAILURES);
    }

    #[tokio::test]
    async fn a_right_password_gives_the_address_its_count_back() {
        let t = Throttle::default();
        for i in 0..IP_FREE_FAILURES - 1 {
            t.reserve(&format!("u{i}@x"), Some("5.6.7.8"))
                .await
                .unwrap()
                .unwrap();
        }
        t.reserve("me@x", Some("5.6.7.8")).await.unwrap().unwrap();
        assert!(
            t.wait("new@x", Some("5.6.7.8")).await.unwrap().is_some(),
            "counted up front"
        );
        t.succeeded("me@x", Some("5.6.7.8")).await.unwrap();
        assert!(t.wait("new@x", Some("5.6.7.8")).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn an_address_trying_many_accounts_waits() {
        let t = Throttle::default();
        for i in 0..IP_FREE_FAILURES {
            t.reserve(&format!("u{i}@x"), Some("5.6.7.8"))
                .await
                .unwrap()
                .unwrap();
        }
        assert!(t.reserve("new@x", Some("5.6.7.8")).await.unwrap().is_err());
        assert!(t.wait("new@x", Some("9.9.9.9")).await.unwrap().is_none());
    }
}
