//! Login throttling, in memory: after a few failures an account (or a client address) must
//! wait, longer after each further failure. A success clears the account's count.
//!
//! Check and count are one step: [`Throttle::reserve`] counts an attempt as a failure before
//! its password is checked, under the same lock that decided it may go ahead. A burst of
//! concurrent guesses therefore gets no more checks than the limit, however long they queue
//! for the hashing pool; a right password gives its count back ([`Throttle::succeeded`]).
//!
//! In memory on purpose: it only has to slow down guessing against one Control; a restart
//! forgets it, which costs an attacker a restart they cannot cause.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

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

#[derive(Default)]
pub struct Throttle {
    entries: Mutex<HashMap<String, Entry>>,
}

struct Entry {
    failures: u32,
    until: Instant,
    last: Instant,
}

impl Throttle {
    /// How long the caller must still wait before trying `email` from `ip`, if at all.
    pub fn wait(&self, email: &str, ip: Option<&str>) -> Option<Duration> {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        wait_in(&entries, email, ip, Instant::now())
    }

    /// Lets one attempt at `email` from `ip` go ahead, counted as a failure until it proves
    /// otherwise; or the wait, when the account or the address must wait first.
    pub fn reserve(&self, email: &str, ip: Option<&str>) -> Result<(), Duration> {
        let now = Instant::now();
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(wait) = wait_in(&entries, email, ip, now) {
            return Err(wait);
        }
        if entries.len() > PRUNE_AT {
            entries.retain(|_, e| now.duration_since(e.last) < FORGET_AFTER);
        }
        for (key, free) in keys(email, ip) {
            let e = entries.entry(key).or_insert(Entry {
                failures: 0,
                until: now,
                last: now,
            });
            e.failures += 1;
            e.last = now;
            if e.failures >= free {
                let doublings = (e.failures - free).min(10);
                e.until = now + (FIRST_WAIT * 2u32.pow(doublings)).min(MAX_WAIT);
            }
        }
        Ok(())
    }

    /// The reserved attempt had the right password: the account starts afresh and the address
    /// gets its count back.
    pub fn succeeded(&self, email: &str, ip: Option<&str>) {
        self.give_back(email, ip, true);
    }

    /// The reserved attempt was never checked (Control was too busy): it counts for nothing.
    pub fn release(&self, email: &str, ip: Option<&str>) {
        self.give_back(email, ip, false);
    }

    fn give_back(&self, email: &str, ip: Option<&str>, clear_account: bool) {
        let now = Instant::now();
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        for (key, free) in keys(email, ip) {
            if clear_account && key.starts_with("account:") {
                entries.remove(&key);
            } else if let Some(e) = entries.get_mut(&key) {
                e.failures = e.failures.saturating_sub(1);
                if e.failures < free {
                    e.until = now;
                }
            }
        }
    }
}

fn wait_in(
    entries: &HashMap<String, Entry>,
    email: &str,
    ip: Option<&str>,
    now: Instant,
) -> Option<Duration> {
    keys(email, ip)
        .iter()
        .filter_map(|(k, _)| entries.get(k))
        .filter(|e| e.until > now)
        .map(|e| e.until - now)
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

    #[test]
    fn waits_after_five_failures_and_doubles() {
        let t = Throttle::default();
        for _ in 0..4 {
            t.reserve("a@x", Some("1.2.3.4")).unwrap();
            assert!(t.wait("a@x", Some("1.2.3.4")).is_none());
        }
        t.reserve("a@x", Some("1.2.3.4")).unwrap();
        let first = t.reserve("a@x", None).unwrap_err();
        assert!(first > Duration::from_secs(25) && first <= FIRST_WAIT);
        assert!(t.wait("b@x", Some("1.2.3.4")).is_none(), "the IP has 20");
        t.succeeded("a@x", Some("1.2.3.4"));
        assert!(t.wait("a@x", None).is_none());
    }

    #[test]
    fn a_burst_gets_no_more_attempts_than_the_limit() {
        let t = Throttle::default();
        let allowed = (0..300)
            .filter(|_| t.reserve("a@x", Some("1.2.3.4")).is_ok())
            .count();
        assert_eq!(allowed as u32, ACCOUNT_FREE_FAILURES);
    }

    #[test]
    fn a_right_password_gives_the_address_its_count_back() {
        let t = Throttle::default();
        for i in 0..IP_FREE_FAILURES - 1 {
            t.reserve(&format!("u{i}@x"), Some("5.6.7.8")).unwrap();
        }
        t.reserve("me@x", Some("5.6.7.8")).unwrap();
        assert!(
            t.wait("new@x", Some("5.6.7.8")).is_some(),
            "counted up front"
        );
        t.succeeded("me@x", Some("5.6.7.8"));
        assert!(t.wait("new@x", Some("5.6.7.8")).is_none());
    }

    #[test]
    fn an_address_trying_many_accounts_waits() {
        let t = Throttle::default();
        for i in 0..IP_FREE_FAILURES {
            t.reserve(&format!("u{i}@x"), Some("5.6.7.8")).unwrap();
        }
        assert!(t.reserve("new@x", Some("5.6.7.8")).is_err());
        assert!(t.wait("new@x", Some("9.9.9.9")).is_none());
    }
}
