//! The Gateways' traffic reports, turned into the history's rows (issue #22). A Gateway's
//! counters are cumulative since it started; this keeps each one's last report per tunnel and
//! adds the differences to the current minute, which [`flush`] writes every 10 seconds.
//!
//! A session's first report only sets the baseline: what it counted before was recorded by
//! the session (or replica) that had it then. So nothing is counted twice when a Gateway moves
//! to another replica or Control restarts; at most one report's worth (10 s) is missed then.

use super::Hub;
use crate::store::now_ms;
use crate::store::traffic::{Counts, TrafficAdd};
use kakuremichi_proto::{TunnelTraffic, MAX_TRAFFIC};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::watch;

/// How often what was counted is written.
const FLUSH_EVERY: Duration = Duration::from_secs(10);
/// How often old rows are deleted.
const TRIM_EVERY: Duration = Duration::from_secs(600);
/// Most (tunnel, Gateway, minute) entries waiting to be written; beyond, new ones are dropped
/// (and logged) until the next write.
const MAX_PENDING: usize = 100_000;

#[derive(Default)]
pub(crate) struct Recorder {
    /// Per Gateway, its last report per tunnel.
    last: Mutex<HashMap<i64, HashMap<i64, TunnelTraffic>>>,
    /// What to add, by (tunnel, Gateway, minute).
    pending: Mutex<HashMap<(i64, i64, i64), Counts>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `traffic`'s counts as rows hold them (latency per bucket, not cumulative).
fn counts(t: &TunnelTraffic) -> Counts {
    let i = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    let mut latency = [0i64; 13];
    let mut below = 0;
    for (slot, &upto) in latency.iter_mut().zip(&t.latency) {
        *slot = i(upto.saturating_sub(below));
        below = below.max(upto);
    }
    Counts {
        responses: t.responses.map(i),
        connections: i(t.connections),
        bytes_in: i(t.bytes_in),
        bytes_out: i(t.bytes_out),
        latency,
    }
}

impl Recorder {
    /// A report of `gateway`; `baseline` for the first of its session.
    pub(crate) fn report(&self, gateway: i64, mut traffic: Vec<TunnelTraffic>, baseline: bool) {
        traffic.truncate(MAX_TRAFFIC);
        let minute = now_ms() / 1000 / 60 * 60;
        let mut adds = Vec::new();
        {
            let mut last = lock(&self.last);
            let seen = last.entry(gateway).or_default();
            for t in traffic {
                if !baseline {
                    let delta = match seen.get(&t.tunnel_id) {
                        Some(before) => t.since(before),
                        // A tunnel new to this session counts from zero.
                        None => t.clone(),
                    };
                    if !delta.is_zero() {
                        adds.push((t.tunnel_id, counts(&delta)));
                    }
                }
                seen.insert(t.tunnel_id, t);
            }
        }
        let mut pending = lock(&self.pending);
        for (tunnel, c) in adds {
            let key = (tunnel, gateway, minute);
            if pending.len() >= MAX_PENDING && !pending.contains_key(&key) {
                tracing::warn!(
                    tunnel,
                    gateway,
                    "traffic history: too much waiting to be written; dropped"
                );
                continue;
            }
            pending.entry(key).or_default().add(&c);
        }
    }

    fn take(&self) -> Vec<TrafficAdd> {
        let pending = std::mem::take(&mut *lock(&self.pending));
        pending
            .into_iter()
            .map(|((tunnel, gateway, minute), c)| (tunnel, gateway, minute, c))
            .collect()
    }

    /// Puts back what could not be written, to try again.
    fn put_back(&self, adds: Vec<TrafficAdd>) {
        let mut pending = lock(&self.pending);
        for (tunnel, gateway, minute, c) in adds {
            if pending.len() < MAX_PENDING {
                pending
                    .entry((tunnel, gateway, minute))
                    .or_default()
                    .add(&c);
            }
        }
    }
}

/// Writes what was counted every 10 s, and deletes old rows every 10 minutes, until `stop`;
/// writes once more on the way out.
pub async fn flush(hub: Arc<Hub>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(FLUSH_EVERY);
    let mut trim = tokio::time::interval(TRIM_EVERY);
    loop {
        tokio::select! {
            _ = tick.tick() => write(&hub).await,
            _ = trim.tick() => match hub.store.trim_traffic(now_ms() / 1000).await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(rows = n, "traffic history: old rows deleted"),
                Err(e) => tracing::warn!(error = %e, "traffic history: cannot delete old rows"),
            },
            _ = async { stop.wait_for(|s| *s).await.map(|_| ()) } => break,
        }
    }
    write(&hub).await;
}

async fn write(hub: &Hub) {
    let adds = hub.traffic.take();
    if adds.is_empty() {
        return;
    }
    if let Err(e) = hub.store.add_traffic(&adds).await {
        tracing::warn!(error = %e, "traffic history: cannot write; will try again");
        hub.traffic.put_back(adds);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(tunnel: i64, ok: u64, bytes: u64) -> TunnelTraffic {
        TunnelTraffic {
            tunnel_id: tunnel,
            responses: [0, ok, 0, 0, 0],
            bytes_out: bytes,
            latency: [vec![ok; 12], vec![ok]].concat(),
            ..Default::default()
        }
    }

    fn summed(r: &Recorder) -> HashMap<(i64, i64), Counts> {
        let mut out: HashMap<(i64, i64), Counts> = HashMap::new();
        for (tunnel, gateway, _, c) in r.take() {
            out.entry((tunnel, gateway)).or_default().add(&c);
        }
        out
    }

    #[test]
    fn reports_become_differences_and_a_session_starts_from_a_baseline() {
        let r = Recorder::default();
        // The first report of a session: what was counted before is someone else's.
        r.report(1, vec![report(10, 5, 500)], true);
        assert!(summed(&r).is_empty());
        r.report(1, vec![report(10, 8, 800), report(11, 2, 20)], false);
        r.report(2, vec![report(10, 1, 100)], true);
        r.report(2, vec![report(10, 4, 400)], false);
        let s = summed(&r);
        assert_eq!(s[&(10, 1)].responses[1], 3);
        assert_eq!(s[&(10, 1)].bytes_out, 300);
        assert_eq!(s[&(10, 1)].latency[0], 3, "within the first bound");
        assert_eq!(s[&(10, 1)].latency[1..].iter().sum::<i64>(), 0);
        // A tunnel new to the session counts from zero.
        assert_eq!(s[&(11, 1)].responses[1], 2);
        assert_eq!(s[&(10, 2)].responses[1], 3);
        // The Gateway restarted (its counters fell): counted from zero again.
        r.report(1, vec![report(10, 2, 10)], false);
        assert_eq!(summed(&r)[&(10, 1)].responses[1], 2);
        // A new session's first report is a baseline again.
        r.report(1, vec![report(10, 50, 10)], true);
        assert!(summed(&r).is_empty());
    }
}
