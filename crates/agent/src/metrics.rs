//! The Agent's Prometheus metrics (issue #22): how connecting to each tunnel's target goes, and
//! the WireGuard families of its device (its peers are the Gateways).
//!
//! Counted always, with atomics (per connection, never per packet); served only when asked
//! (`--metrics-listen`, [`crate::AgentConfig::metrics_listen`]): by default the Agent opens no
//! listening port at all. Labels are tunnel ids from the configuration (never a host or a path)
//! and Gateways' public keys, so the series stay bounded by the config.

use arc_swap::{ArcSwap, ArcSwapOption};
use bytes::Bytes;
use http_body_util::Full;
use kakuremichi_node::metrics::{
    counters, encode_build_info, encode_wireguard, exposition, histograms, Histogram, CONTENT_TYPE,
};
use kakuremichi_tunnel::Device;
use prometheus_client::encoding::DescriptorEncoder;
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// Scrapers served at once; further connections are closed at once.
const MAX_CONNECTIONS: usize = 16;
/// How long a client may take to send a request's head (and an idle keep-alive connection may
/// stay open).
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest a scrape connection lives, however busy.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(600);

/// Why connecting to a tunnel's target (or, for `udp` tunnels, delivering to it) failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TargetError {
    /// Nothing listens there (a TCP RST, or an ICMP port unreachable for UDP).
    Refused,
    /// No answer within the connect timeout.
    Timeout,
    /// The target's name did not resolve (DNS), or to no address.
    Unresolved,
    /// Anything else (no route, permission, ...).
    Other,
}

const TARGET_ERRORS: [&str; 4] = ["refused", "timeout", "unresolved", "other"];

impl TargetError {
    /// The kind of a failed connect or send.
    pub fn of(e: &io::Error) -> Self {
        match e.kind() {
            io::ErrorKind::ConnectionRefused => TargetError::Refused,
            io::ErrorKind::TimedOut => TargetError::Timeout,
            _ => TargetError::Other,
        }
    }
}

/// One tunnel's counters.
#[derive(Debug, Default)]
pub(crate) struct TargetStats {
    /// Successful connects: TCP connections, and `udp` tunnels' flow sockets.
    connect: Histogram,
    errors: [AtomicU64; 4],
}

impl TargetStats {
    pub fn connected(&self, took: Duration) {
        self.connect.observe(took);
    }

    pub fn failed(&self, kind: TargetError) {
        self.errors[kind as usize].fetch_add(1, Ordering::Relaxed);
    }
}

/// What the Agent counts; one per Agent.
#[derive(Default)]
pub(crate) struct AgentMetrics {
    /// By tunnel id, replaced with each config (counters kept for tunnels that stay).
    tunnels: ArcSwap<HashMap<i64, Arc<TargetStats>>>,
    device: ArcSwapOption<Device>,
}

impl std::fmt::Debug for AgentMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("agent metrics")
    }
}

impl AgentMetrics {
    /// Follows a new set of tunnels: the series of tunnels gone disappear.
    pub fn update(&self, tunnel_ids: impl IntoIterator<Item = i64>) {
        kakuremichi_node::metrics::follow(&self.tunnels, tunnel_ids);
    }

    /// Tunnel `id`'s counters (after [`AgentMetrics::update`] listed it; otherwise counters
    /// that no scrape shows).
    pub fn tunnel(&self, id: i64) -> Arc<TargetStats> {
        self.tunnels.load().get(&id).cloned().unwrap_or_default()
    }

    /// The WireGuard device whose peers the metrics show (a new one replaces the old).
    pub fn set_device(&self, device: Device) {
        self.device.store(Some(Arc::new(device)));
    }

    /// Lets go of the device (the Agent is stopping).
    pub fn clear_device(&self) {
        self.device.store(None);
    }

    /// Everything, in OpenMetrics text.
    pub fn encode(self: &Arc<Self>) -> String {
        exposition(Box::new(Scrape(self.clone())))
    }

    fn encode_all(&self, e: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        encode_build_info(e, "agent")?;
        let mut tunnels: Vec<(i64, Arc<TargetStats>)> = self
            .tunnels
            .load()
            .iter()
            .map(|(id, t)| (*id, t.clone()))
            .collect();
        tunnels.sort_by_key(|(id, _)| *id);
        histograms(
            e,
            "kakuremichi_agent_target_connect_seconds",
            "Time to connect to a tunnel's target, its name resolved (udp tunnels: to open a flow's socket), by tunnel.",
            tunnels
                .iter()
                .map(|(id, t)| ([("tunnel", id.to_string())], &t.connect)),
        )?;
        counters(
            e,
            "kakuremichi_agent_target_errors",
            "Connections to a tunnel's target that failed (udp tunnels: datagrams), by tunnel and kind (refused, timeout, unresolved, other).",
            tunnels.iter().flat_map(|(id, t)| {
                TARGET_ERRORS.into_iter().zip(&t.errors).map(move |(kind, n)| {
                    (
                        [("tunnel", id.to_string()), ("kind", kind.to_string())],
                        n.load(Ordering::Relaxed),
                    )
                })
            }),
        )?;
        if let Some(device) = self.device.load_full() {
            encode_wireguard(e, &device.peer_stats())?;
        }
        Ok(())
    }
}

/// One scrape of the Agent's metrics.
#[derive(Debug)]
struct Scrape(Arc<AgentMetrics>);

impl prometheus_client::collector::Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        self.0.encode_all(&mut encoder)
    }
}

/// Binds the metrics listener at `addr` (`--metrics-listen`).
pub(crate) async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    use anyhow::Context;
    TcpListener::bind(addr).await.with_context(|| {
        format!("cannot listen on {addr} (--metrics-listen); is another program using it?")
    })
}

/// Serves `GET /metrics` on `listener`, plain HTTP/1.1, until the returned guard drops.
pub(crate) fn serve(listener: TcpListener, metrics: Arc<AgentMetrics>) -> Served {
    Served(tokio::spawn(accept_loop(listener, metrics)))
}

/// The metrics listener's task; dropping it closes the listener.
pub(crate) struct Served(tokio::task::JoinHandle<()>);

impl Drop for Served {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn accept_loop(listener: TcpListener, metrics: Arc<AgentMetrics>) {
    let addr = listener.local_addr().ok();
    tracing::info!(?addr, "serving Prometheus metrics at /metrics");
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let tcp = match listener.accept().await {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                // Out of file descriptors, most likely: give the others a moment to close.
                tracing::debug!(error = %e, "metrics listener: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            continue; // closed at once: too many scrapers
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let answer = answer(&req, &metrics);
                async move { Ok::<_, std::convert::Infallible>(answer) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(hyper_util::rt::TokioIo::new(tcp), service);
            let _ = tokio::time::timeout(CONNECTION_LIFETIME, connection).await;
            drop(slot);
        });
    }
}

fn answer<B>(req: &http::Request<B>, metrics: &Arc<AgentMetrics>) -> http::Response<Full<Bytes>> {
    let found = req.uri().path() == "/metrics";
    let (status, body) = match *req.method() {
        http::Method::GET | http::Method::HEAD if found => {
            (http::StatusCode::OK, Bytes::from(metrics.encode()))
        }
        _ if found => (
            http::StatusCode::METHOD_NOT_ALLOWED,
            Bytes::from_static(b"GET only\n"),
        ),
        _ => (
            http::StatusCode::NOT_FOUND,
            Bytes::from_static(b"not found: the Agent serves /metrics only\n"),
        ),
    };
    let content_type = if status == http::StatusCode::OK {
        CONTENT_TYPE
    } else {
        "text/plain; charset=utf-8"
    };
    let mut response = http::Response::new(Full::new(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every family the Agent's own code exposes (one tunnel, so that each shows), without a
    /// device: the WireGuard families have their own list.
    fn doc_exposition() -> String {
        let metrics = Arc::new(AgentMetrics::default());
        metrics.update([1]);
        metrics.encode()
    }

    #[test]
    fn the_metric_list_in_the_docs_is_the_codes() {
        kakuremichi_testkit::metrics_doc::check(
            "agent",
            "crates/agent/src/metrics.rs",
            &doc_exposition(),
            "kakuremichi-agent",
        );
    }

    #[test]
    fn connects_and_errors_are_counted_by_tunnel() {
        let metrics = Arc::new(AgentMetrics::default());
        metrics.update([7, 9]);
        let seven = metrics.tunnel(7);
        seven.connected(Duration::from_millis(2));
        seven.connected(Duration::from_millis(3));
        seven.failed(TargetError::Refused);
        metrics.tunnel(9).failed(TargetError::Unresolved);
        metrics
            .tunnel(9)
            .failed(TargetError::of(&io::Error::from(io::ErrorKind::TimedOut)));
        // Tunnel 7 goes; its counters with it. Tunnel 9's stay.
        metrics.update([9, 11]);
        let text = metrics.encode();
        for line in [
            "kakuremichi_build_info{version=\"",
            "\",role=\"agent\"} 1",
            "kakuremichi_agent_target_errors_total{tunnel=\"9\",kind=\"unresolved\"} 1",
            "kakuremichi_agent_target_errors_total{tunnel=\"9\",kind=\"timeout\"} 1",
            "kakuremichi_agent_target_errors_total{tunnel=\"11\",kind=\"refused\"} 0",
            "kakuremichi_agent_target_connect_seconds_count{tunnel=\"11\"} 0",
        ] {
            assert!(text.contains(line), "{line} not in\n{text}");
        }
        assert!(!text.contains("tunnel=\"7\""), "{text}");

        metrics.update([7]);
        let seven = metrics.tunnel(7);
        seven.connected(Duration::from_millis(2));
        seven.failed(TargetError::of(&io::Error::from(
            io::ErrorKind::ConnectionRefused,
        )));
        let text = metrics.encode();
        for line in [
            "kakuremichi_agent_target_connect_seconds_count{tunnel=\"7\"} 1",
            "kakuremichi_agent_target_connect_seconds_bucket{le=\"0.0025\",tunnel=\"7\"} 1",
            "kakuremichi_agent_target_errors_total{tunnel=\"7\",kind=\"refused\"} 1",
        ] {
            assert!(text.contains(line), "{line} not in\n{text}");
        }
    }

    #[tokio::test]
    async fn the_listener_serves_metrics_and_nothing_else() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let metrics = Arc::new(AgentMetrics::default());
        metrics.update([3]);
        let served = serve(listener, metrics);
        let get = |path: &'static str| async move {
            let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            tcp.write_all(request.as_bytes()).await.unwrap();
            let mut out = String::new();
            tcp.read_to_string(&mut out).await.unwrap();
            out
        };
        let found = get("/metrics").await;
        assert!(found.starts_with("HTTP/1.1 200"), "{found}");
        assert!(
            found.contains("content-type: application/openmetrics-text"),
            "{found}"
        );
        assert!(found.contains("kakuremichi_agent_target_errors_total{tunnel=\"3\""));
        assert!(found.trim_end().ends_with("# EOF"), "{found}");
        let missing = get("/").await;
        assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
        drop(served);
    }
}
