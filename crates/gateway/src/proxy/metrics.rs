//! The Gateway's Prometheus metrics (`GET /metrics` on the admin listener, issue #22).
//!
//! The request path only touches atomics: each tunnel's [`TunnelStats`] is found through the
//! lock-free [`HttpMetrics`] map (replaced with each config snapshot, counters kept for tunnels
//! that stay) and held by the request until its response body ends. Labels are tunnel ids from
//! the configuration, never request hosts or paths, so the series stay bounded by the config.
//! The exposition is OpenMetrics text, encoded by `prometheus-client` from these atomics at
//! scrape time, with the WireGuard families of the Gateway's device (one series set per Agent;
//! shared with the Agent in `kakuremichi_node::metrics`, as are the encoding helpers).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::StatusCode;
use kakuremichi_node::metrics::{counters, encode_wireguard, gauges, histograms};
pub use kakuremichi_node::metrics::{encode_build_info, Histogram, CONTENT_TYPE, DURATION_BUCKETS};
use prometheus_client::encoding::DescriptorEncoder;

use super::limits::Refused;
use super::RouteTable;
use crate::streams::{Splicer, StreamStats};

/// Why a request through a tunnel failed toward its Agent.
#[derive(Debug, Clone, Copy)]
pub enum UpstreamError {
    /// The tunnel stream to the Agent could not be opened (or the Agent refused).
    Connect,
    /// The stream broke (reset, closed early, a protocol error).
    Reset,
    /// Opening the stream took too long.
    Timeout,
}

const UPSTREAM_KINDS: [&str; 3] = ["connect", "reset", "timeout"];

/// Why the Gateway itself refused a request (besides the tunnel's limits, counted apart).
#[derive(Debug, Clone, Copy)]
pub enum Denied {
    BasicAuth,
    Access,
}

const DENIED_REASONS: [&str; 2] = ["basic_auth", "access"];

/// One tunnel's counters.
#[derive(Debug, Default)]
pub struct TunnelStats {
    /// Responses by status class, 1xx to 5xx.
    responses: [AtomicU64; 5],
    /// Until the response head left.
    first_byte: Histogram,
    /// Until the response body ended.
    total: Histogram,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    upstream_errors: [AtomicU64; 3],
    denied: [AtomicU64; 2],
    /// Requests in flight (an upgraded WebSocket until it closes).
    active: AtomicI64,
}

impl TunnelStats {
    /// A request began: counted in flight until the returned guard drops.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.active.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// The response head of a request that began `elapsed` ago left with `status`.
    pub fn responded(&self, status: StatusCode, elapsed: Duration) {
        let class = usize::from(status.as_u16() / 100).clamp(1, 5) - 1;
        self.responses[class].fetch_add(1, Ordering::Relaxed);
        self.first_byte.observe(elapsed);
    }

    /// The response body of a request that began `elapsed` ago ended.
    pub fn finished(&self, elapsed: Duration) {
        self.total.observe(elapsed);
    }

    pub fn bytes_in(&self, n: usize) {
        self.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub fn bytes_out(&self, n: usize) {
        self.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub fn upstream_error(&self, kind: UpstreamError) {
        self.upstream_errors[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn denied(&self, reason: Denied) {
        self.denied[reason as usize].fetch_add(1, Ordering::Relaxed);
    }
}

/// A request in flight; see [`TunnelStats::begin`].
#[derive(Debug)]
pub struct InFlight(Arc<TunnelStats>);

impl InFlight {
    pub fn stats(&self) -> &TunnelStats {
        &self.0
    }

    pub fn shared(&self) -> Arc<TunnelStats> {
        self.0.clone()
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How a TLS handshake on the HTTPS listener ended.
#[derive(Debug, Clone, Copy)]
pub enum Handshake {
    Ok,
    Failed,
    Timeout,
}

const HANDSHAKE_RESULTS: [&str; 3] = ["ok", "failed", "timeout"];

/// Every tunnel's counters, by tunnel id, and the listener's own.
#[derive(Debug, Default)]
pub struct HttpMetrics {
    tunnels: ArcSwap<HashMap<i64, Arc<TunnelStats>>>,
    handshakes: [AtomicU64; 3],
    /// `--request-metrics off`: no tunnel is followed, so a request finds no counters and
    /// counts nothing (the request path itself has no branch for it).
    off: AtomicBool,
}

impl HttpMetrics {
    /// Follows a new set of tunnels: counters of tunnels that stay are kept, those of tunnels
    /// gone are dropped (their series disappear).
    pub(crate) fn update(&self, tunnel_ids: impl IntoIterator<Item = i64>) {
        if self.off.load(Ordering::Relaxed) {
            return;
        }
        kakuremichi_node::metrics::follow(&self.tunnels, tunnel_ids);
    }

    /// Counts no request from now on (the benchmark's reference without metrics).
    pub(crate) fn turn_off(&self) {
        self.off.store(true, Ordering::Relaxed);
        self.tunnels.store(Arc::default());
    }

    pub(crate) fn tunnel(&self, id: i64) -> Option<Arc<TunnelStats>> {
        self.tunnels.load().get(&id).cloned()
    }

    pub(crate) fn handshake(&self, result: Handshake) {
        self.handshakes[result as usize].fetch_add(1, Ordering::Relaxed);
    }
}

/// Every tunnel's traffic since the Gateway started, as Control's history takes it: HTTP
/// tunnels' responses by class, bytes and first-byte latency; stream tunnels' connections and
/// bytes.
pub(crate) fn traffic(
    routes: &RouteTable,
    splicer: &Splicer,
) -> Vec<kakuremichi_proto::TunnelTraffic> {
    let mut out: Vec<kakuremichi_proto::TunnelTraffic> = routes
        .metrics()
        .tunnels
        .load()
        .iter()
        .map(|(&tunnel_id, t)| {
            let (_, _, buckets) = t.first_byte.snapshot();
            kakuremichi_proto::TunnelTraffic {
                tunnel_id,
                responses: std::array::from_fn(|i| load(&t.responses[i])),
                connections: 0,
                bytes_in: load(&t.bytes_in),
                bytes_out: load(&t.bytes_out),
                latency: buckets.into_iter().map(|(_, n)| n).collect(),
            }
        })
        .collect();
    out.extend(
        splicer
            .stats()
            .iter()
            .map(|(&tunnel_id, s)| kakuremichi_proto::TunnelTraffic {
                tunnel_id,
                connections: load(&s.connections),
                bytes_in: load(&s.bytes_in),
                bytes_out: load(&s.bytes_out),
                ..Default::default()
            }),
    );
    out.sort_by_key(|t| t.tunnel_id);
    out.truncate(kakuremichi_proto::MAX_TRAFFIC);
    out
}

/// What `/metrics` encodes: the proxy's counters and those of the limits and stream tunnels.
#[derive(Clone, Default)]
pub struct Sources {
    pub http: Option<Arc<HttpMetrics>>,
    pub routes: Option<Arc<RouteTable>>,
    pub streams: Option<Arc<Splicer>>,
    /// Whose certificates' expiry `/metrics` reports; also the holder of the WireGuard device
    /// (it hands Agents' TLS fallback streams to it), whose peers `/metrics` reports.
    pub certs: Option<Arc<crate::tls::CertStore>>,
}

impl std::fmt::Debug for Sources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("gateway metrics")
    }
}

fn load(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

/// The Gateway's metrics in OpenMetrics text.
pub fn encode(sources: &Sources) -> String {
    kakuremichi_node::metrics::exposition(Box::new(sources.clone()))
}

impl prometheus_client::collector::Collector for Sources {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        self.encode_all(&mut encoder)
    }
}

impl Sources {
    fn encode_all(&self, e: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let refused: Vec<(i64, Arc<Refused>)> = self
            .routes
            .as_ref()
            .map(|r| r.limits().refused().into_iter().collect())
            .unwrap_or_default();
        let streams: Vec<(i64, Arc<StreamStats>)> = self
            .streams
            .as_ref()
            .map(|s| s.stats().into_iter().collect())
            .unwrap_or_default();
        encode_build_info(e, "gateway")?;
        let tunnels: Vec<(i64, Arc<TunnelStats>)> = self
            .http
            .as_ref()
            .map(|h| {
                let mut t: Vec<_> = h
                    .tunnels
                    .load()
                    .iter()
                    .map(|(id, t)| (*id, t.clone()))
                    .collect();
                t.sort_by_key(|(id, _)| *id);
                t
            })
            .unwrap_or_default();
        let tunnel = |id: &i64| id.to_string();
        counters(
            e,
            "kakuremichi_gateway_requests",
            "HTTP requests answered, by tunnel and status class.",
            tunnels.iter().flat_map(|(id, t)| {
                ["1xx", "2xx", "3xx", "4xx", "5xx"]
                    .into_iter()
                    .zip(&t.responses)
                    .map(move |(class, n)| {
                        (
                            [("tunnel", tunnel(id)), ("code_class", class.into())],
                            load(n),
                        )
                    })
            }),
        )?;
        histograms(
            e,
            "kakuremichi_gateway_request_first_byte_seconds",
            "Time from a request's arrival until its response head left, by tunnel.",
            tunnels
                .iter()
                .map(|(id, t)| ([("tunnel", tunnel(id))], &t.first_byte)),
        )?;
        histograms(
            e,
            "kakuremichi_gateway_request_duration_seconds",
            "Time from a request's arrival until its response body ended, by tunnel.",
            tunnels
                .iter()
                .map(|(id, t)| ([("tunnel", tunnel(id))], &t.total)),
        )?;
        let mut bytes: Vec<([(&str, String); 2], u64)> = Vec::new();
        for (id, t) in &tunnels {
            bytes.push((
                [("tunnel", tunnel(id)), ("direction", "in".into())],
                load(&t.bytes_in),
            ));
            bytes.push((
                [("tunnel", tunnel(id)), ("direction", "out".into())],
                load(&t.bytes_out),
            ));
        }
        for (id, st) in &streams {
            bytes.push((
                [("tunnel", tunnel(id)), ("direction", "in".into())],
                load(&st.bytes_in),
            ));
            bytes.push((
                [("tunnel", tunnel(id)), ("direction", "out".into())],
                load(&st.bytes_out),
            ));
        }
        counters(
            e,
            "kakuremichi_gateway_bytes",
            "Body bytes through the Gateway, by tunnel: in from clients, out to them (stream tunnels: every byte).",
            bytes,
        )?;
        let mut active: Vec<([(&str, String); 2], i64)> = tunnels
            .iter()
            .map(|(id, t)| {
                (
                    [("tunnel", tunnel(id)), ("protocol", "http".into())],
                    t.active.load(Ordering::Relaxed),
                )
            })
            .collect();
        active.extend(streams.iter().map(|(id, st)| {
            let n = i64::try_from(load(&st.active)).unwrap_or(i64::MAX);
            ([("tunnel", tunnel(id)), ("protocol", "stream".into())], n)
        }));
        gauges(
            e,
            "kakuremichi_gateway_connections_active",
            "HTTP requests in flight (until their response body ends) and open stream-tunnel connections, by tunnel.",
            active,
        )?;
        let mut upstream: Vec<([(&str, String); 2], u64)> = tunnels
            .iter()
            .flat_map(|(id, t)| {
                UPSTREAM_KINDS
                    .into_iter()
                    .zip(&t.upstream_errors)
                    .map(move |(kind, n)| {
                        ([("tunnel", tunnel(id)), ("kind", kind.into())], load(n))
                    })
            })
            .collect();
        upstream.extend(streams.iter().map(|(id, st)| {
            (
                [("tunnel", tunnel(id)), ("kind", "connect".into())],
                load(&st.upstream_failed),
            )
        }));
        counters(
            e,
            "kakuremichi_gateway_upstream_errors",
            "Requests that failed toward the Agent, by tunnel and kind (connect, reset, timeout).",
            upstream,
        )?;
        let mut denied: Vec<([(&str, String); 2], u64)> = tunnels
            .iter()
            .flat_map(|(id, t)| {
                DENIED_REASONS
                    .into_iter()
                    .zip(&t.denied)
                    .map(move |(reason, n)| {
                        ([("tunnel", tunnel(id)), ("reason", reason.into())], load(n))
                    })
            })
            .collect();
        denied.extend(refused.iter().map(|(id, r)| {
            (
                [("tunnel", tunnel(id)), ("reason", "ip".into())],
                load(&r.ip_denied),
            )
        }));
        denied.extend(streams.iter().map(|(id, st)| {
            (
                [("tunnel", tunnel(id)), ("reason", "ip".into())],
                load(&st.ip_denied),
            )
        }));
        counters(
            e,
            "kakuremichi_gateway_access_denied",
            "Requests refused by the Gateway, by tunnel and reason (ip lists, basic_auth, access control).",
            denied,
        )?;
        counters(
            e,
            "kakuremichi_gateway_rate_limited",
            "Requests refused by a tunnel's rate or concurrency limit, by tunnel.",
            refused.iter().map(|(id, r)| {
                (
                    [("tunnel", tunnel(id))],
                    load(&r.rate_limited) + load(&r.concurrency),
                )
            }),
        )?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        let expiry = self.certs.as_ref().map(|c| c.expiry()).unwrap_or_default();
        gauges(
            e,
            "kakuremichi_gateway_certificate_expiry_seconds",
            "Seconds until the certificate served for a hostname expires (negative once expired), by the hostname Control sent it under (*.domain for a wildcard).",
            expiry
                .iter()
                .map(|(host, at)| ([("hostname", host.clone())], at.saturating_sub(now))),
        )?;
        counters(
            e,
            "kakuremichi_gateway_tls_handshakes",
            "TLS handshakes on the HTTPS listener, by result (ok, failed, timeout).",
            self.http.iter().flat_map(|h| {
                HANDSHAKE_RESULTS
                    .into_iter()
                    .zip(&h.handshakes)
                    .map(|(result, n)| ([("result", result)], load(n)))
            }),
        )?;
        if let Some(device) = self.certs.as_ref().and_then(|c| c.wireguard()) {
            encode_wireguard(e, &device.peer_stats())?;
        }
        Ok(())
    }
}

/// The exposition docs/monitoring.md's list is made from: every family this module exposes
/// (with one tunnel, so that every family shows).
#[cfg(test)]
fn doc_exposition() -> String {
    let http = Arc::new(HttpMetrics::default());
    http.update([1]);
    let certs = Arc::new(crate::tls::CertStore::new());
    let made = rcgen::generate_simple_self_signed(vec!["app.example.com".to_string()]).unwrap();
    let cert = kakuremichi_proto::TlsCertificate {
        cert_pem: made.cert.pem(),
        key_pem: made.signing_key.serialize_pem(),
    };
    let certificates = [("app.example.com".to_string(), cert)]
        .into_iter()
        .collect();
    certs.apply(&certificates, &Default::default(), Default::default());
    encode(&Sources {
        http: Some(http),
        certs: Some(certs),
        ..Sources::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_metrics_off_follows_no_tunnel() {
        let http = HttpMetrics::default();
        http.update([1, 2]);
        assert!(http.tunnel(1).is_some());
        http.turn_off();
        assert!(
            http.tunnel(1).is_none(),
            "the tunnels followed before are dropped"
        );
        http.update([1, 2, 3]);
        assert!(http.tunnel(3).is_none(), "and no new one is followed");
    }

    #[test]
    fn the_metric_list_in_the_docs_is_the_codes() {
        kakuremichi_testkit::metrics_doc::check(
            "gateway",
            "crates/gateway/src/proxy/metrics.rs",
            &doc_exposition(),
            "kakuremichi-gateway",
        );
    }

    #[tokio::test]
    async fn the_wireguard_device_s_peers_are_in_the_exposition() {
        use kakuremichi_tunnel::{Device, DeviceConfig, PeerConfig, PrivateKey};
        let certs = Arc::new(crate::tls::CertStore::new());
        let sources = Sources {
            certs: Some(certs.clone()),
            ..Sources::default()
        };
        assert!(
            !encode(&sources).contains("kakuremichi_wireguard"),
            "no device, no families"
        );
        let config = DeviceConfig::new(
            PrivateKey::generate(),
            std::net::Ipv4Addr::new(10, 77, 0, 1),
            "127.0.0.1:0".parse().unwrap(),
        );
        let (device, _acceptor) = Device::bind(config).await.unwrap();
        let agent = PrivateKey::generate().public_key();
        device.set_peers(vec![PeerConfig {
            public_key: agent,
            allowed_ip: std::net::Ipv4Addr::new(10, 77, 0, 2),
            endpoint: None,
            persistent_keepalive: None,
        }]);
        certs.set_wireguard(device);
        let text = encode(&sources);
        let key = agent.to_base64();
        for line in [
            "kakuremichi_wireguard_peers{state=\"up\"} 0".to_string(),
            "kakuremichi_wireguard_peers{state=\"down\"} 1".to_string(),
            format!("kakuremichi_wireguard_bytes_total{{peer=\"{key}\",direction=\"rx\"}} 0"),
            format!("kakuremichi_wireguard_transport{{peer=\"{key}\",mode=\"udp\"}} 0"),
        ] {
            assert!(text.contains(&line), "{line} not in\n{text}");
        }
    }

    #[test]
    fn certificate_expiry_is_the_seconds_left_by_hostname() {
        let mut params = rcgen::CertificateParams::new(vec!["a.example.com".into()]).unwrap();
        params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(10);
        let key = rcgen::KeyPair::generate().unwrap();
        let made = params.self_signed(&key).unwrap();
        let cert = kakuremichi_proto::TlsCertificate {
            cert_pem: made.pem(),
            key_pem: key.serialize_pem(),
        };
        let certs = Arc::new(crate::tls::CertStore::new());
        let certificates = [("*.example.com".to_string(), cert)].into_iter().collect();
        certs.apply(&certificates, &Default::default(), Default::default());
        let text = encode(&Sources {
            certs: Some(certs),
            ..Sources::default()
        });
        let prefix = "kakuremichi_gateway_certificate_expiry_seconds{hostname=\"*.example.com\"} ";
        let left: i64 = text
            .lines()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no expiry in\n{text}"))
            .parse()
            .unwrap();
        assert!((10 * 86_400 - 120..=10 * 86_400).contains(&left), "{left}");
    }
}
