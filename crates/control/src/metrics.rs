//! Control's own Prometheus metrics (issue #22), served by `--metrics-listen`.
//!
//! One [`ControlMetrics`] per Control (tests run several in one process), owned by the hub and
//! reached through it. Labels are bounded: node kinds, route templates (never request paths),
//! HTTP methods and status codes, ACME results. Control is not on the data path: the families
//! are `prometheus-client`'s own, updated with atomics.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::time::Duration;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ApiLabels {
    route: String,
    method: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
    role: &'static str,
}

/// Seconds, from 1 ms to about 16 s.
fn latency_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 15)
}

/// What Control counts about itself.
pub struct ControlMetrics {
    registry: Registry,
    sessions: Family<KindLabel, Gauge>,
    pushes: Family<KindLabel, Counter>,
    push_latency: Family<KindLabel, Histogram>,
    api: Family<ApiLabels, Counter>,
    world_loads: Histogram,
    acme_orders: Family<ResultLabel, Counter>,
}

impl std::fmt::Debug for ControlMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("control metrics")
    }
}

impl Default for ControlMetrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let build = Family::<BuildLabels, Gauge>::default();
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
                role: "control",
            })
            .set(1);
        // The registry ends every help text with a period.
        registry.register(
            "kakuremichi_build_info",
            "Version of the running kakuremichi (always 1)",
            build,
        );
        let sessions = Family::<KindLabel, Gauge>::default();
        registry.register(
            "kakuremichi_control_node_sessions",
            "Nodes with a session open on this Control replica, by kind (agent, gateway)",
            sessions.clone(),
        );
        let pushes = Family::<KindLabel, Counter>::default();
        registry.register(
            "kakuremichi_control_config_pushes",
            "Config snapshots sent to nodes by this replica, by node kind",
            pushes.clone(),
        );
        let push_latency = Family::<KindLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(latency_buckets())
        });
        registry.register(
            "kakuremichi_control_config_push_seconds",
            "Time from a change (made here or on another replica) until a node's new snapshot was sent, by node kind",
            push_latency.clone(),
        );
        let api = Family::<ApiLabels, Counter>::default();
        registry.register(
            "kakuremichi_control_api_requests",
            "HTTP requests answered by Control, by route template, method and status",
            api.clone(),
        );
        let world_loads = Histogram::new(latency_buckets());
        registry.register(
            "kakuremichi_control_world_load_seconds",
            "Time to read the fleet's topology from the database, once per change",
            world_loads.clone(),
        );
        let acme_orders = Family::<ResultLabel, Counter>::default();
        registry.register(
            "kakuremichi_control_acme_orders",
            "ACME certificate orders finished by this replica, by result (issued, failed)",
            acme_orders.clone(),
        );
        for kind in ["agent", "gateway"] {
            let kind = KindLabel { kind };
            let _ = sessions.get_or_create(&kind);
            let _ = pushes.get_or_create(&kind);
            let _ = push_latency.get_or_create(&kind);
        }
        for result in ["issued", "failed"] {
            let _ = acme_orders.get_or_create(&ResultLabel { result });
        }
        Self {
            registry,
            sessions,
            pushes,
            push_latency,
            api,
            world_loads,
            acme_orders,
        }
    }
}

impl ControlMetrics {
    /// A node of `kind` (`agent`, `gateway`) got its first session here (`+1`) or lost its
    /// last one (`-1`).
    pub fn session(&self, kind: &'static str, delta: i64) {
        self.sessions
            .get_or_create(&KindLabel { kind })
            .inc_by(delta);
    }

    /// A snapshot was sent to a node of `kind`; `since_change` is how long after the change
    /// that made it (`None` for a session's first snapshot).
    pub fn pushed(&self, kind: &'static str, since_change: Option<Duration>) {
        let kind = KindLabel { kind };
        self.pushes.get_or_create(&kind).inc();
        if let Some(d) = since_change {
            self.push_latency
                .get_or_create(&kind)
                .observe(d.as_secs_f64());
        }
    }

    /// An API or UI request was answered. `route` is the matched route template.
    pub fn request(&self, route: &str, method: &str, status: u16) {
        self.api
            .get_or_create(&ApiLabels {
                route: route.to_string(),
                method: method.to_string(),
                status,
            })
            .inc();
    }

    /// The topology was read from the database in `took`.
    pub fn world_loaded(&self, took: Duration) {
        self.world_loads.observe(took.as_secs_f64());
    }

    /// An ACME order ended: a certificate was issued, or the order failed.
    pub fn acme_order(&self, issued: bool) {
        let result = if issued { "issued" } else { "failed" };
        self.acme_orders
            .get_or_create(&ResultLabel { result })
            .inc();
    }

    /// Everything, in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_metric_list_in_the_docs_is_the_codes() {
        let m = ControlMetrics::default();
        m.request("/api/v1/tunnels", "GET", 200);
        kakuremichi_testkit::metrics_doc::check(
            "control",
            "crates/control/src/metrics.rs",
            &m.encode(),
            "kakuremichi-control",
        );
    }

    #[test]
    fn counts_show_in_the_exposition() {
        let m = ControlMetrics::default();
        m.session("gateway", 1);
        m.session("agent", 1);
        m.session("agent", 1);
        m.session("agent", -1);
        m.pushed("gateway", Some(Duration::from_millis(3)));
        m.pushed("gateway", None);
        m.request("/api/v1/tunnels", "POST", 201);
        m.acme_order(true);
        let text = m.encode();
        for line in [
            "kakuremichi_control_node_sessions{kind=\"agent\"} 1",
            "kakuremichi_control_node_sessions{kind=\"gateway\"} 1",
            "kakuremichi_control_config_pushes_total{kind=\"gateway\"} 2",
            "kakuremichi_control_config_push_seconds_count{kind=\"gateway\"} 1",
            "kakuremichi_control_api_requests_total{route=\"/api/v1/tunnels\",method=\"POST\",status=\"201\"} 1",
            "kakuremichi_control_acme_orders_total{result=\"issued\"} 1",
            "kakuremichi_control_acme_orders_total{result=\"failed\"} 0",
            "kakuremichi_build_info{version=\"",
        ] {
            assert!(text.contains(line), "{line} not in\n{text}");
        }
    }
}
