//! Login throttling, in memory: after a few failures an account (or an IP address) must wait,
//! longer after each further failure. A success clears the account's count.
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
        let now = Instant::now();
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        keys(email, ip)
            .iter()
            .filter_map(|(k, _)| entries.get(k))
            .filter(|e| e.until > now)
            .map(|e| e.until - now)
            .max()
    }

    pub fn failed(&self, email: &str, ip: Option<&str>) {
        let now = Instant::now();
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
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
    }

    pub fn succeeded(&self, email: &str) {
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&format!("account:{email}"));
    }
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
            t.failed("a@x", Some("1.2.3.4"));
            assert!(t.wait("a@x", Some("1.2.3.4")).is_none());
        }
        t.failed("a@x", Some("1.2.3.4"));
        let first = t.wait("a@x", None).unwrap();
        assert!(first > Duration::from_secs(25) && first <= FIRST_WAIT);
        t.failed("a@x", None);
        assert!(t.wait("a@x", None).unwrap() > FIRST_WAIT);
        assert!(t.wait("b@x", Some("1.2.3.4")).is_none(), "the IP has 20");
        t.succeeded("a@x");
        assert!(t.wait("a@x", None).is_none());
    }

    #[test]
    fn an_address_trying_many_accounts_waits() {
        let t = Throttle::default();
        for i in 0..IP_FREE_FAILURES {
            t.failed(&format!("u{i}@x"), Some("5.6.7.8"));
        }
        assert!(t.wait("new@x", Some("5.6.7.8")).is_some());
        assert!(t.wait("new@x", Some("9.9.9.9")).is_none());
    }
}
