//! Which Gateways DNS points at: failover with hysteresis. A Gateway is listed while it is enabled
//! and online; once offline for longer than `failover_after` it is taken out, and it comes back
//! after being online again for `readmit_after` (so a flapping Gateway does not flap DNS). A
//! Gateway is only taken out while another listed one is online: the last one is never removed,
//! and with every Gateway down DNS keeps pointing at the ones listed last, the best bet for
//! whichever returns first.
//!
//! Pure logic over instants, so the timings are tested without waiting.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// What is known of one Gateway at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observed {
    pub enabled: bool,
    pub online: bool,
}

/// A change of a Gateway's place in DNS, for the log and the audit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Offline longer than `failover_after`: taken out of every record.
    FailedOver { gateway: i64, offline_for: Duration },
    /// Would have been taken out, but no other listed Gateway is online.
    KeptAsLast { gateway: i64 },
    /// Online again for `readmit_after`, or newly enabled: listed again.
    Restored { gateway: i64 },
    /// Disabled, or deleted: taken out at once.
    Removed { gateway: i64 },
}

#[derive(Debug, Clone)]
struct Gateway {
    listed: bool,
    enabled: bool,
    /// Since when it has been online (or offline), continuously.
    since: Instant,
    online: bool,
    /// A "kept as last" was already reported for this outage.
    kept_reported: bool,
}

/// The listed set and the clocks behind it.
#[derive(Debug)]
pub struct Health {
    failover_after: Duration,
    readmit_after: Duration,
    gateways: BTreeMap<i64, Gateway>,
    /// Gateways seen at the first update are listed at once (Control just started: they were
    /// serving before and are reconnecting); later ones must first be online a while.
    started: bool,
}

impl Health {
    pub fn new(failover_after: Duration, readmit_after: Duration) -> Self {
        Self {
            failover_after,
            readmit_after,
            gateways: BTreeMap::new(),
            started: false,
        }
    }

    /// Takes in what is observed now; returns the changes and when to look again at the latest.
    pub fn update(
        &mut self,
        now: Instant,
        observed: &BTreeMap<i64, Observed>,
    ) -> (Vec<Change>, Option<Duration>) {
        let mut changes = Vec::new();
        let first = !self.started;
        self.started = true;
        self.gateways.retain(|id, g| {
            let keep = observed.contains_key(id);
            if !keep && g.listed {
                changes.push(Change::Removed { gateway: *id });
            }
            keep
        });
        for (&id, seen) in observed {
            let g = self.gateways.entry(id).or_insert(Gateway {
                listed: first && seen.enabled,
                enabled: seen.enabled,
                since: now,
                online: seen.online,
                kept_reported: false,
            });
            if g.online != seen.online {
                g.online = seen.online;
                g.since = now;
                g.kept_reported = false;
            }
            if g.enabled && !seen.enabled && g.listed {
                g.listed = false;
                changes.push(Change::Removed { gateway: id });
            }
            g.enabled = seen.enabled;
        }
        let mut next: Option<Duration> = None;
        let mut wake = |d: Duration| next = Some(next.map_or(d, |n| n.min(d)));
        // Come back first, so a Gateway returning lets the last one standing go.
        for (&id, g) in &mut self.gateways {
            if g.listed || !g.enabled || !g.online {
                continue;
            }
            let up = now.saturating_duration_since(g.since);
            if up >= self.readmit_after {
                g.listed = true;
                changes.push(Change::Restored { gateway: id });
            } else {
                wake(self.readmit_after - up);
            }
        }
        let ids: Vec<i64> = self.gateways.keys().copied().collect();
        for id in ids {
            let g = &self.gateways[&id];
            if !g.listed || g.online {
                continue;
            }
            let down = now.saturating_duration_since(g.since);
            if down < self.failover_after {
                wake(self.failover_after - down);
                continue;
            }
            let others = self
                .gateways
                .iter()
                .filter(|(o, og)| **o != id && og.listed && og.online)
                .count();
            let g = self.gateways.get_mut(&id).expect("listed above");
            if others == 0 {
                if !g.kept_reported {
                    g.kept_reported = true;
                    changes.push(Change::KeptAsLast { gateway: id });
                }
                continue;
            }
            g.listed = false;
            changes.push(Change::FailedOver {
                gateway: id,
                offline_for: down,
            });
        }
        (changes, next)
    }

    /// The Gateways DNS should list now.
    pub fn listed(&self) -> impl Iterator<Item = i64> + '_ {
        self.gateways
            .iter()
            .filter(|(_, g)| g.listed)
            .map(|(id, _)| *id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAILOVER: Duration = Duration::from_secs(30);
    const READMIT: Duration = Duration::from_secs(10);

    fn seen(list: &[(i64, bool, bool)]) -> BTreeMap<i64, Observed> {
        list.iter()
            .map(|&(id, enabled, online)| (id, Observed { enabled, online }))
            .collect()
    }

    fn listed(h: &Health) -> Vec<i64> {
        h.listed().collect()
    }

    #[test]
    fn an_offline_gateway_fails_over_after_the_delay_and_comes_back_after_a_while() {
        let t0 = Instant::now();
        let mut h = Health::new(FAILOVER, READMIT);
        let (changes, _) = h.update(t0, &seen(&[(1, true, true), (2, true, true)]));
        assert!(changes.is_empty());
        assert_eq!(listed(&h), [1, 2]);
        // 2 goes offline: still listed until the delay is over; told when to look again.
        let (changes, next) = h.update(
            t0 + Duration::from_secs(1),
            &seen(&[(1, true, true), (2, true, false)]),
        );
        assert!(changes.is_empty());
        assert_eq!(next, Some(FAILOVER));
        assert_eq!(listed(&h), [1, 2]);
        let (changes, _) = h.update(
            t0 + Duration::from_secs(31),
            &seen(&[(1, true, true), (2, true, false)]),
        );
        assert_eq!(
            changes,
            [Change::FailedOver {
                gateway: 2,
                offline_for: FAILOVER
            }]
        );
        assert_eq!(listed(&h), [1]);
        // Back online: listed again only after READMIT of continuous uptime.
        let (changes, next) = h.update(
            t0 + Duration::from_secs(40),
            &seen(&[(1, true, true), (2, true, true)]),
        );
        assert!(changes.is_empty());
        assert_eq!(next, Some(READMIT));
        let (changes, _) = h.update(
            t0 + Duration::from_secs(50),
            &seen(&[(1, true, true), (2, true, true)]),
        );
        assert_eq!(changes, [Change::Restored { gateway: 2 }]);
        assert_eq!(listed(&h), [1, 2]);
    }

    #[test]
    fn a_short_outage_changes_nothing() {
        let t0 = Instant::now();
        let mut h = Health::new(FAILOVER, READMIT);
        h.update(t0, &seen(&[(1, true, true), (2, true, true)]));
        h.update(
            t0 + Duration::from_secs(5),
            &seen(&[(1, true, true), (2, true, false)]),
        );
        let (changes, next) = h.update(
            t0 + Duration::from_secs(20),
            &seen(&[(1, true, true), (2, true, true)]),
        );
        assert!(changes.is_empty());
        assert_eq!(next, None);
        let (changes, _) = h.update(
            t0 + Duration::from_secs(60),
            &seen(&[(1, true, true), (2, true, true)]),
        );
        assert!(changes.is_empty());
        assert_eq!(listed(&h), [1, 2]);
    }

    #[test]
    fn the_last_gateway_is_never_taken_out() {
        let t0 = Instant::now();
        let mut h = Health::new(FAILOVER, READMIT);
        h.update(t0, &seen(&[(1, true, true), (2, true, true)]));
        let both_down = seen(&[(1, true, false), (2, true, false)]);
        h.update(t0 + Duration::from_secs(1), &both_down);
        let (changes, _) = h.update(t0 + Duration::from_secs(40), &both_down);
        // Nobody else is serving: both stay; reported once, not on every look.
        assert_eq!(
            changes,
            [
                Change::KeptAsLast { gateway: 1 },
                Change::KeptAsLast { gateway: 2 }
            ]
        );
        assert_eq!(listed(&h), [1, 2]);
        let (changes, _) = h.update(t0 + Duration::from_secs(50), &both_down);
        assert!(changes.is_empty(), "{changes:?}");
        // 2 comes back: after READMIT... it never left; 1 fails over once 2 is online.
        let one_back = seen(&[(1, true, false), (2, true, true)]);
        let (changes, _) = h.update(t0 + Duration::from_secs(51), &one_back);
        assert_eq!(
            changes,
            [Change::FailedOver {
                gateway: 1,
                offline_for: Duration::from_secs(50)
            }]
        );
        assert_eq!(listed(&h), [2]);
    }

    #[test]
    fn a_single_gateway_stays_listed_through_an_outage() {
        let t0 = Instant::now();
        let mut h = Health::new(FAILOVER, READMIT);
        h.update(t0, &seen(&[(1, true, true)]));
        h.update(t0 + Duration::from_secs(1), &seen(&[(1, true, false)]));
        let (changes, _) = h.update(t0 + Duration::from_secs(100), &seen(&[(1, true, false)]));
        assert_eq!(changes, [Change::KeptAsLast { gateway: 1 }]);
        assert_eq!(listed(&h), [1]);
    }

    #[test]
    fn disabled_or_deleted_gateways_go_at_once_and_new_ones_wait() {
        let t0 = Instant::now();
        let mut h = Health::new(FAILOVER, READMIT);
        h.update(
            t0,
            &seen(&[(1, true, true), (2, true, true), (3, true, true)]),
        );
        let (changes, _) = h.update(
            t0 + Duration::from_secs(1),
            &seen(&[(1, true, true), (2, false, true)]),
        );
        assert_eq!(changes.len(), 2);
        assert!(changes.contains(&Change::Removed { gateway: 2 }));
        assert!(changes.contains(&Change::Removed { gateway: 3 }));
        assert_eq!(listed(&h), [1]);
        // A Gateway created later is listed once it has been online for READMIT.
        let (changes, next) = h.update(
            t0 + Duration::from_secs(2),
            &seen(&[(1, true, true), (2, false, true), (4, true, true)]),
        );
        assert!(changes.is_empty());
        assert_eq!(next, Some(READMIT));
        let (changes, _) = h.update(
            t0 + Duration::from_secs(12),
            &seen(&[(1, true, true), (2, true, true), (4, true, true)]),
        );
        // 2 was online all along: re-enabled, it is listed at once; 4 after its READMIT.
        assert_eq!(
            changes,
            [
                Change::Restored { gateway: 2 },
                Change::Restored { gateway: 4 }
            ]
        );
        assert_eq!(listed(&h), [1, 2, 4]);
    }

    #[test]
    fn gateways_seen_at_start_are_listed_even_if_not_yet_reconnected() {
        let t0 = Instant::now();
        let mut h = Health::new(FAILOVER, READMIT);
        h.update(
            t0,
            &seen(&[(1, true, false), (2, true, false), (3, false, false)]),
        );
        assert_eq!(listed(&h), [1, 2]);
        let (changes, _) = h.update(
            t0 + Duration::from_secs(3),
            &seen(&[(1, true, true), (2, true, true), (3, false, false)]),
        );
        assert!(changes.is_empty());
        assert_eq!(listed(&h), [1, 2]);
    }
}
