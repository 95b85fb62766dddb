//! Spreading requests over a tunnel's replicas (several Agents serving one hostname).
//!
//! Per request the order of candidates is: round-robin per tunnel, then Agents that neither
//! Control reports offline nor recently failed a connect, then those Control reports offline,
//! then those that failed (the last resort, so a tunnel is never refused while any Agent may
//! answer). A failed connect marks the Agent down for a while that doubles with each consecutive
//! failure; the proxy then retries the request on the next candidate if its body allows.
//!
//! Routes without replicas never get here: the common single-Agent path stays lock- and
//! allocation-free. The maps below are copy-on-write (`ArcSwap`), read without a lock.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use kakuremichi_proto::RouteTarget;

/// How long an Agent is skipped after its first failed connect; doubles per further failure.
const FIRST_BACKOFF: Duration = Duration::from_secs(2);
/// Longest an Agent is skipped; it is then tried again (when others are also down, earlier).
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Health of one Agent as this Gateway saw it.
#[derive(Default)]
struct AgentHealth {
    /// Milliseconds since [`Balancer::epoch`] until which the Agent is skipped; 0 = healthy.
    down_until_ms: AtomicU64,
    /// Consecutive failed connects.
    failures: AtomicU32,
}

/// Round-robin counters per tunnel and connect health per Agent.
pub(crate) struct Balancer {
    epoch: Instant,
    counters: ArcSwap<HashMap<i64, Arc<AtomicUsize>>>,
    agents: ArcSwap<HashMap<i64, Arc<AgentHealth>>>,
}

impl Balancer {
    pub(crate) fn new() -> Self {
        Self {
            epoch: Instant::now(),
            counters: ArcSwap::from_pointee(HashMap::new()),
            agents: ArcSwap::from_pointee(HashMap::new()),
        }
    }

    /// The order in which to try `targets` for one request of tunnel `tunnel_id`.
    pub(crate) fn order(&self, tunnel_id: i64, mut targets: Vec<RouteTarget>) -> Vec<RouteTarget> {
        if targets.len() > 1 {
            let turn = entry(&self.counters, tunnel_id).fetch_add(1, Ordering::Relaxed);
            let n = targets.len();
            targets.rotate_left(turn % n);
            let now = self.now_ms();
            // Stable: within each class the round-robin order is kept.
            targets.sort_by_key(|t| {
                let down = self
                    .agents
                    .load()
                    .get(&t.agent_id)
                    .is_some_and(|h| h.down_until_ms.load(Ordering::Relaxed) > now);
                match (down, t.online) {
                    (false, true) => 0,
                    (false, false) => 1,
                    (true, _) => 2,
                }
            });
        }
        targets
    }

    /// A connect to `agent_id` failed: skip it for a while, longer after each failure in a row.
    pub(crate) fn failed(&self, agent_id: i64) -> Duration {
        let health = entry(&self.agents, agent_id);
        let failures = health.failures.fetch_add(1, Ordering::Relaxed).min(8);
        let backoff = (FIRST_BACKOFF * 2u32.pow(failures)).min(MAX_BACKOFF);
        let until = self.now_ms() + u64::try_from(backoff.as_millis()).unwrap_or(u64::MAX);
        health.down_until_ms.store(until, Ordering::Relaxed);
        backoff
    }

    /// A connect to `agent_id` worked (or a request through it was answered).
    pub(crate) fn succeeded(&self, agent_id: i64) {
        if let Some(h) = self.agents.load().get(&agent_id) {
            if h.failures.load(Ordering::Relaxed) != 0 {
                h.failures.store(0, Ordering::Relaxed);
                h.down_until_ms.store(0, Ordering::Relaxed);
            }
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

/// The value for `key`, inserted (copy-on-write) on first use. Keys are tunnel or Agent ids, so
/// the maps stay as small as the configuration.
fn entry<V: Default>(map: &ArcSwap<HashMap<i64, Arc<V>>>, key: i64) -> Arc<V> {
    if let Some(v) = map.load().get(&key) {
        return v.clone();
    }
    let mut found = None;
    map.rcu(|current| {
        let mut next = HashMap::clone(current);
        let v = next.entry(key).or_default().clone();
        found = Some(v);
        next
    });
    found.unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn target(agent_id: i64, online: bool) -> RouteTarget {
        RouteTarget {
            agent_id,
            agent_address: Ipv4Addr::new(10, 77, 0, agent_id as u8),
            port: 10000,
            online,
        }
    }

    fn first_choices(b: &Balancer, targets: &[RouteTarget], n: usize) -> Vec<i64> {
        (0..n)
            .map(|_| b.order(7, targets.to_vec())[0].agent_id)
            .collect()
    }

    #[test]
    fn round_robin_over_healthy_replicas() {
        let b = Balancer::new();
        let targets = [target(1, true), target(2, true), target(3, true)];
        let picks = first_choices(&b, &targets, 6);
        assert_eq!(picks, vec![1, 2, 3, 1, 2, 3]);
        // Every order still lists every target once.
        let mut all: Vec<i64> = b
            .order(7, targets.to_vec())
            .iter()
            .map(|t| t.agent_id)
            .collect();
        all.sort();
        assert_eq!(all, vec![1, 2, 3]);
    }

    #[test]
    fn offline_hint_and_failures_demote_but_never_drop() {
        let b = Balancer::new();
        let targets = [target(1, true), target(2, false), target(3, true)];
        assert!(!first_choices(&b, &targets, 6).contains(&2));
        assert!(b.failed(3) >= FIRST_BACKOFF);
        assert_eq!(first_choices(&b, &targets, 4), vec![1, 1, 1, 1]);
        let order: Vec<i64> = b
            .order(7, targets.to_vec())
            .iter()
            .map(|t| t.agent_id)
            .collect();
        assert_eq!(order, vec![1, 2, 3]);
        b.succeeded(3);
        assert!(first_choices(&b, &targets, 4).contains(&3));
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let b = Balancer::new();
        let first = b.failed(5);
        let second = b.failed(5);
        assert_eq!(second, first * 2);
        for _ in 0..20 {
            assert!(b.failed(5) <= MAX_BACKOFF);
        }
    }
}
