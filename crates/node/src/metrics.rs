//! What the Gateway's and the Agent's Prometheus metrics share (issue #22): the exposition's
//! content type, `kakuremichi_build_info`, an atomic histogram of durations, the helpers that
//! encode families of counters, gauges and histograms from values read at scrape time, and the
//! WireGuard families both roles expose from their device ([`encode_wireguard`]).
//!
//! The data path only touches atomics; `prometheus-client` encodes them, in OpenMetrics text,
//! when Prometheus scrapes.

use kakuremichi_tunnel::{PeerStats, Transport};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, NoLabelSet};
use prometheus_client::metrics::MetricType;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The content type of the exposition (what [`exposition`] writes).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Upper bounds, in seconds, of the duration histograms' buckets.
pub const DURATION_BUCKETS: [f64; 12] = kakuremichi_proto::LATENCY_BUCKETS;

/// A histogram of durations in atomics: one count per bucket (not cumulative), the count and
/// the sum in nanoseconds.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; DURATION_BUCKETS.len()],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = DURATION_BUCKETS.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Sum (seconds), count and cumulative buckets, `+Inf` last, as Prometheus wants them.
    pub fn snapshot(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let count = self.count.load(Ordering::Relaxed);
        let mut running = 0;
        let mut buckets: Vec<(f64, u64)> = DURATION_BUCKETS
            .iter()
            .zip(&self.buckets)
            .map(|(bound, n)| {
                running += n.load(Ordering::Relaxed);
                (*bound, running)
            })
            .collect();
        buckets.push((f64::INFINITY, count.max(running)));
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        (sum, count, buckets)
    }
}

/// Per-tunnel state (counters, a log) swapped with each snapshot: the entries of tunnels that
/// stay are kept, new tunnels start from `Default`, those gone are dropped (their series go).
pub fn follow<T: Default>(
    map: &arc_swap::ArcSwap<std::collections::HashMap<i64, std::sync::Arc<T>>>,
    tunnel_ids: impl IntoIterator<Item = i64>,
) {
    let old = map.load();
    let next = tunnel_ids
        .into_iter()
        .map(|id| (id, old.get(&id).cloned().unwrap_or_default()))
        .collect();
    map.store(std::sync::Arc::new(next));
}

/// Everything `collector` encodes, in OpenMetrics text.
pub fn exposition(collector: Box<dyn Collector>) -> String {
    let mut registry = prometheus_client::registry::Registry::default();
    registry.register_collector(collector);
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
    out
}

/// The role's `build_info` (version), the same on every role.
pub fn encode_build_info(
    encoder: &mut DescriptorEncoder,
    role: &str,
) -> Result<(), std::fmt::Error> {
    let labels = [("version", env!("CARGO_PKG_VERSION")), ("role", role)];
    let mut metric = encoder.encode_descriptor(
        "kakuremichi_build_info",
        "Version of the running kakuremichi (always 1).",
        None,
        MetricType::Gauge,
    )?;
    metric.encode_family(&labels)?.encode_gauge(&1i64)
}

/// A family of counters: `name` (without `_total`) with `help`, one series per (labels, value).
pub fn counters<L: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (L, u64)>,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in series {
        metric
            .encode_family(&labels)?
            .encode_counter::<NoLabelSet, u64, u64>(&value, None)?;
    }
    Ok(())
}

/// A family of gauges, as [`counters`].
pub fn gauges<L: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (L, i64)>,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in series {
        metric.encode_family(&labels)?.encode_gauge(&value)?;
    }
    Ok(())
}

/// A family of histograms, as [`counters`].
pub fn histograms<'h, L: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (L, &'h Histogram)>,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
    for (labels, h) in series {
        let (sum, count, buckets) = h.snapshot();
        metric
            .encode_family(&labels)?
            .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
    }
    Ok(())
}

/// The WireGuard families of a device whose peers are `peers` ([`kakuremichi_tunnel::Device::peer_stats`]),
/// the same on the Gateway (its peers are Agents) and on the Agent (its peers are Gateways).
/// `peer` is the peer's public key in base64 (bounded by the configuration); a peer that never
/// completed a handshake has no `last_handshake_seconds` series.
pub fn encode_wireguard(
    encoder: &mut DescriptorEncoder,
    peers: &[PeerStats],
) -> Result<(), std::fmt::Error> {
    let keys: Vec<String> = peers.iter().map(|p| p.public_key.to_base64()).collect();
    let up = peers.iter().filter(|p| p.is_up()).count();
    let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
    gauges(
        encoder,
        "kakuremichi_wireguard_peers",
        "WireGuard peers by state: up when a handshake completed within the last 180 s (REJECT_AFTER_TIME), down otherwise.",
        [
            ([("state", "up")], count(up)),
            ([("state", "down")], count(peers.len() - up)),
        ],
    )?;
    gauges(
        encoder,
        "kakuremichi_wireguard_last_handshake_seconds",
        "Seconds since the last completed handshake with a peer (its base64 public key); none for a peer that never completed one.",
        peers.iter().zip(&keys).filter_map(|(p, key)| {
            let since = p.since_handshake?;
            Some(([("peer", key.as_str())], i64::try_from(since.as_secs()).unwrap_or(i64::MAX)))
        }),
    )?;
    counters(
        encoder,
        "kakuremichi_wireguard_bytes",
        "Bytes of WireGuard datagrams by peer, received (rx: accepted by its session) and sent (tx), over UDP or TLS alike.",
        peers.iter().zip(&keys).flat_map(|(p, key)| {
            [
                ([("peer", key.as_str()), ("direction", "rx")], p.rx_bytes),
                ([("peer", key.as_str()), ("direction", "tx")], p.tx_bytes),
            ]
        }),
    )?;
    counters(
        encoder,
        "kakuremichi_wireguard_tcp_retransmits",
        "TCP segments of 512 bytes of data or more that the tunnel's stack sent to a peer again: bulk data lost on the way (the peer's socket buffer, a congested link). Over 5 % of what is sent, the peer is paced.",
        peers
            .iter()
            .zip(&keys)
            .map(|(p, key)| ([("peer", key.as_str())], p.tcp_retransmits)),
    )?;
    gauges(
        encoder,
        "kakuremichi_wireguard_transport",
        "1 for the path a peer's WireGuard datagrams take now (udp, or tls when an Agent fell back to TLS on the Gateway's HTTPS port), 0 for the other; both 0 while the peer has none.",
        peers.iter().zip(&keys).flat_map(|(p, key)| {
            [("udp", Transport::Udp), ("tls", Transport::Stream)].map(|(mode, t)| {
                (
                    [("peer", key.as_str()), ("mode", mode)],
                    i64::from(p.transport == Some(t)),
                )
            })
        }),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kakuremichi_tunnel::PrivateKey;

    /// Two Agents as a Gateway sees them: one up over TLS, one that never handshook.
    fn peers() -> Vec<PeerStats> {
        let key = || PrivateKey::generate().public_key();
        vec![
            PeerStats {
                public_key: key(),
                rx_bytes: 4096,
                tx_bytes: 1 << 20,
                since_handshake: Some(Duration::from_secs(42)),
                transport: Some(Transport::Stream),
                tcp_retransmits: 7,
            },
            PeerStats {
                public_key: key(),
                rx_bytes: 0,
                tx_bytes: 148,
                since_handshake: None,
                transport: None,
                tcp_retransmits: 0,
            },
        ]
    }

    fn wireguard(peers: &[PeerStats]) -> String {
        struct Peers(Vec<PeerStats>);
        impl std::fmt::Debug for Peers {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("peers")
            }
        }
        impl Collector for Peers {
            fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
                encode_wireguard(&mut encoder, &self.0)
            }
        }
        exposition(Box::new(Peers(peers.to_vec())))
    }

    #[test]
    fn the_metric_list_in_the_docs_is_the_codes() {
        kakuremichi_testkit::metrics_doc::check(
            "wireguard",
            "crates/node/src/metrics.rs",
            &wireguard(&peers()),
            "kakuremichi-node",
        );
    }

    #[test]
    fn wireguard_families_show_each_peer() {
        let peers = peers();
        let (a, b) = (
            peers[0].public_key.to_base64(),
            peers[1].public_key.to_base64(),
        );
        let text = wireguard(&peers);
        for line in [
            "kakuremichi_wireguard_peers{state=\"up\"} 1".to_string(),
            "kakuremichi_wireguard_peers{state=\"down\"} 1".to_string(),
            format!("kakuremichi_wireguard_last_handshake_seconds{{peer=\"{a}\"}} 42"),
            format!("kakuremichi_wireguard_bytes_total{{peer=\"{a}\",direction=\"rx\"}} 4096"),
            format!("kakuremichi_wireguard_bytes_total{{peer=\"{a}\",direction=\"tx\"}} 1048576"),
            format!("kakuremichi_wireguard_bytes_total{{peer=\"{b}\",direction=\"tx\"}} 148"),
            format!("kakuremichi_wireguard_tcp_retransmits_total{{peer=\"{a}\"}} 7"),
            format!("kakuremichi_wireguard_tcp_retransmits_total{{peer=\"{b}\"}} 0"),
            format!("kakuremichi_wireguard_transport{{peer=\"{a}\",mode=\"tls\"}} 1"),
            format!("kakuremichi_wireguard_transport{{peer=\"{a}\",mode=\"udp\"}} 0"),
            format!("kakuremichi_wireguard_transport{{peer=\"{b}\",mode=\"udp\"}} 0"),
            format!("kakuremichi_wireguard_transport{{peer=\"{b}\",mode=\"tls\"}} 0"),
        ] {
            assert!(text.contains(&format!("{line}\n")), "{line} not in\n{text}");
        }
        assert!(
            !text.contains(&format!("last_handshake_seconds{{peer=\"{b}\"}}")),
            "a peer that never handshook has no handshake age:\n{text}"
        );
    }

    #[test]
    fn a_histogram_is_cumulative_and_counts_what_is_beyond_its_buckets() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_millis(30));
        h.observe(Duration::from_secs(60));
        let (sum, count, buckets) = h.snapshot();
        assert_eq!(count, 3);
        assert!((sum - 60.0305).abs() < 1e-6, "{sum}");
        assert_eq!(buckets.first(), Some(&(0.001, 1)));
        assert_eq!(buckets.iter().find(|(b, _)| *b == 0.05).unwrap().1, 2);
        assert_eq!(buckets.last(), Some(&(f64::INFINITY, 3)));
    }
}
