//! Hourly caps on ACME orders, per user and per registered domain.
//!
//! Every new hostname (a new tunnel, a rename) is a new order at the CA, and the CA's rate limits
//! are per account and per registered domain: without a cap of our own, one member creating or
//! renaming tunnels in a loop would use them up for everyone on this Control. An order over a cap
//! is not refused: it waits until the oldest order in the last hour leaves the window, and the
//! tunnel's certificate status says so.

use crate::store::{timestamp, AcmeOrderRow};
use std::collections::HashMap;
use time::OffsetDateTime;

/// The window the caps count over.
pub const WINDOW: time::Duration = time::Duration::HOUR;

/// The caps (0 = no cap). Admins' tunnels (no owner) count toward the domain cap only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OrderLimits {
    /// ACME orders per member per hour (`KAKUREMICHI_ACME_ORDERS_PER_USER_HOUR`).
    pub per_user: u32,
    /// ACME orders per registered domain per hour (`KAKUREMICHI_ACME_ORDERS_PER_DOMAIN_HOUR`).
    pub per_domain: u32,
}

impl Default for OrderLimits {
    fn default() -> Self {
        Self {
            per_user: 10,
            per_domain: 20,
        }
    }
}

/// The registered domain (eTLD+1, from the Public Suffix List) of `host`: `a.b.example.co.uk`
/// gives `example.co.uk`. A name that has none (a bare suffix) counts as itself.
pub fn registered_domain(host: &str) -> String {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    match psl::domain_str(&host) {
        Some(domain) => domain.to_string(),
        None => host,
    }
}

/// Why an order waits, and until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub until: OffsetDateTime,
    reason: String,
}

impl Held {
    /// What the tunnel's certificate status shows.
    pub fn note(&self) -> String {
        format!(
            "waiting: hourly order limit ({}), next try at {}",
            self.reason,
            timestamp(self.until)
        )
    }
}

/// The orders of the last hour, by owner and by registered domain (times oldest first).
#[derive(Debug, Default)]
pub struct OrderCounts {
    per_owner: HashMap<i64, Vec<OffsetDateTime>>,
    per_domain: HashMap<String, Vec<OffsetDateTime>>,
}

impl OrderCounts {
    /// From the log rows of the last [`WINDOW`] (oldest first; unreadable times are skipped).
    pub fn new(rows: &[AcmeOrderRow]) -> Self {
        let mut counts = Self::default();
        for row in rows {
            if let Some(at) = super::parse_time(&row.ordered_at) {
                counts.record(row.owner_id, &row.domain, at);
            }
        }
        counts
    }

    /// Counts an order started at `at`.
    pub fn record(&mut self, owner: Option<i64>, domain: &str, at: OffsetDateTime) {
        if let Some(owner) = owner {
            self.per_owner.entry(owner).or_default().push(at);
        }
        self.per_domain
            .entry(domain.to_string())
            .or_default()
            .push(at);
    }

    /// `Ok` when an order for `owner` under `domain` may start at `now`; else until when it waits.
    pub fn check(
        &self,
        owner: Option<i64>,
        domain: &str,
        limits: OrderLimits,
        now: OffsetDateTime,
    ) -> Result<(), Held> {
        let user = owner.and_then(|o| {
            let times = self.per_owner.get(&o)?;
            let until = full_until(times, limits.per_user, now)?;
            Some(Held {
                until,
                reason: format!("{} orders per user per hour", limits.per_user),
            })
        });
        let domain = self.per_domain.get(domain).and_then(|times| {
            let until = full_until(times, limits.per_domain, now)?;
            Some(Held {
                until,
                reason: format!("{} orders per hour for {domain}", limits.per_domain),
            })
        });
        // Both full: wait for the later one.
        match (user, domain) {
            (None, None) => Ok(()),
            (Some(h), None) | (None, Some(h)) => Err(h),
            (Some(a), Some(b)) => Err(if a.until >= b.until { a } else { b }),
        }
    }
}

/// When a bucket holding `times` (oldest first) has room again, if it is full at `now`.
fn full_until(times: &[OffsetDateTime], cap: u32, now: OffsetDateTime) -> Option<OffsetDateTime> {
    let cap = usize::try_from(cap).ok().filter(|c| *c > 0)?;
    let recent: Vec<&OffsetDateTime> = times.iter().filter(|t| **t > now - WINDOW).collect();
    if recent.len() < cap {
        return None;
    }
    // Room again when all but cap-1 of the recent orders have left the window.
    let frees = recent[recent.len() - cap];
    Some(*frees + WINDOW)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registered_domains_follow_the_public_suffix_list() {
        assert_eq!(registered_domain("a.b.example.com"), "example.com");
        assert_eq!(registered_domain("shop.example.co.uk"), "example.co.uk");
        // "last two labels" would lump every user of a shared suffix together.
        assert_eq!(registered_domain("alice.github.io"), "alice.github.io");
        assert_eq!(registered_domain("App.Example.COM."), "example.com");
    }

    #[test]
    fn caps_per_user_and_per_domain() {
        let now = OffsetDateTime::now_utc();
        let limits = OrderLimits {
            per_user: 2,
            per_domain: 3,
        };
        let mut c = OrderCounts::default();
        c.record(Some(1), "example.com", now - time::Duration::minutes(50));
        assert!(c.check(Some(1), "example.com", limits, now).is_ok());
        c.record(Some(1), "example.com", now - time::Duration::minutes(10));
        let held = c.check(Some(1), "example.org", limits, now).unwrap_err();
        assert_eq!(held.until, now + time::Duration::minutes(10));
        assert!(held.note().starts_with("waiting: hourly order limit"));
        // Another member still may, until the domain is full; admins only count per domain.
        assert!(c.check(Some(2), "example.com", limits, now).is_ok());
        c.record(None, "example.com", now);
        let held = c.check(None, "example.com", limits, now).unwrap_err();
        assert_eq!(held.until, now + time::Duration::minutes(10));
        assert!(held.note().contains("example.com"), "{}", held.note());
        // Orders older than the window no longer count; 0 means no cap.
        assert!(c
            .check(Some(1), "example.org", limits, now + time::Duration::HOUR)
            .is_ok());
        let none = OrderLimits {
            per_user: 0,
            per_domain: 0,
        };
        assert!(c.check(Some(1), "example.com", none, now).is_ok());
    }
}
