//! Traffic counters a Gateway reports to Control (protocol 3), from which Control keeps each
//! tunnel's history: every counter is cumulative since the Gateway started, so a lost or
//! repeated report loses or repeats nothing, and Control takes the differences.

use serde::{Deserialize, Serialize};

/// Upper bounds, in seconds, of the latency buckets (time to a response's first byte): the
/// same as the Gateway's Prometheus histograms.
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// Most tunnels one report carries; Control drops the rest.
pub const MAX_TRAFFIC: usize = 10_000;

/// What a Gateway carried for one tunnel since it started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TunnelTraffic {
    pub tunnel_id: i64,
    /// HTTP responses by status class, 1xx to 5xx.
    #[serde(default)]
    pub responses: [u64; 5],
    /// Stream tunnels: connections (UDP: flows).
    #[serde(default)]
    pub connections: u64,
    /// Bytes from clients, and to them.
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// HTTP: responses whose head left within each of [`LATENCY_BUCKETS`], cumulative, then
    /// all of them (13 entries); empty for stream tunnels.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub latency: Vec<u64>,
}

impl TunnelTraffic {
    /// What `self` counted since `before` (the same tunnel's earlier report); a counter that
    /// went down means the Gateway started again, and then counts from zero.
    pub fn since(&self, before: &TunnelTraffic) -> TunnelTraffic {
        let d = |now: u64, then: u64| if now >= then { now - then } else { now };
        let mut responses = [0; 5];
        for (i, r) in responses.iter_mut().enumerate() {
            *r = d(self.responses[i], before.responses[i]);
        }
        let latency = self
            .latency
            .iter()
            .enumerate()
            .map(|(i, &n)| d(n, before.latency.get(i).copied().unwrap_or(0)))
            .collect();
        TunnelTraffic {
            tunnel_id: self.tunnel_id,
            responses,
            connections: d(self.connections, before.connections),
            bytes_in: d(self.bytes_in, before.bytes_in),
            bytes_out: d(self.bytes_out, before.bytes_out),
            latency,
        }
    }

    /// Whether nothing was counted.
    pub fn is_zero(&self) -> bool {
        self.responses == [0; 5]
            && self.connections == 0
            && self.bytes_in == 0
            && self.bytes_out == 0
            && self.latency.iter().all(|&n| n == 0)
    }
}

/// The `q` quantile (0–1) of a latency histogram (cumulative counts per bucket of
/// [`LATENCY_BUCKETS`], then the total), in milliseconds, interpolated within its bucket;
/// `None` without samples. Beyond the last bound, the last bound.
pub fn latency_quantile_ms(cumulative: &[u64], q: f64) -> Option<f64> {
    let total = *cumulative.last()?;
    if total == 0 {
        return None;
    }
    let rank = q.clamp(0.0, 1.0) * total as f64;
    let mut below = 0u64;
    let mut lower = 0.0;
    for (i, &bound) in LATENCY_BUCKETS.iter().enumerate() {
        let upto = cumulative.get(i).copied().unwrap_or(total);
        if upto as f64 >= rank && upto > below {
            let within = (rank - below as f64) / (upto - below) as f64;
            return Some((lower + (bound - lower) * within.clamp(0.0, 1.0)) * 1000.0);
        }
        below = upto;
        lower = bound;
    }
    Some(LATENCY_BUCKETS[LATENCY_BUCKETS.len() - 1] * 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differences_survive_a_restarted_gateway() {
        let before = TunnelTraffic {
            tunnel_id: 1,
            responses: [0, 10, 0, 2, 1],
            bytes_in: 100,
            bytes_out: 1000,
            latency: vec![5; 13],
            ..Default::default()
        };
        let later = TunnelTraffic {
            responses: [0, 15, 0, 2, 4],
            bytes_in: 150,
            bytes_out: 1600,
            latency: vec![9; 13],
            ..before.clone()
        };
        let d = later.since(&before);
        assert_eq!(d.responses, [0, 5, 0, 0, 3]);
        assert_eq!((d.bytes_in, d.bytes_out), (50, 600));
        assert_eq!(d.latency, vec![4; 13]);
        // The Gateway restarted: its counters are below the last report's.
        let restarted = TunnelTraffic {
            responses: [0, 3, 0, 0, 0],
            bytes_in: 7,
            ..before.clone()
        };
        let d = restarted.since(&later);
        assert_eq!(d.responses[1], 3);
        assert_eq!(d.bytes_in, 7);
        assert!(!d.is_zero());
        assert!(later.since(&later).is_zero());
    }

    #[test]
    fn quantiles_interpolate_within_a_bucket() {
        // 100 responses: 50 within 1 ms, 100 within 2.5 ms.
        let mut cumulative = vec![50, 100];
        cumulative.extend([100; 11]);
        assert_eq!(latency_quantile_ms(&cumulative, 0.5), Some(1.0));
        let p75 = latency_quantile_ms(&cumulative, 0.75).unwrap();
        assert!((p75 - 1.75).abs() < 1e-9, "{p75}");
        assert_eq!(latency_quantile_ms(&[0; 13], 0.5), None);
        // All beyond the last bound.
        let mut slow = vec![0; 12];
        slow.push(4);
        assert_eq!(latency_quantile_ms(&slow, 0.95), Some(10_000.0));
    }
}
