//! The hostname → route table. Readers (every request) load an immutable snapshot without a lock;
//! a config update builds a new map and swaps it in atomically, so a request sees either the old
//! table or the new one, never a mix. The tunnels' limiters ([`Limits`]) follow the same updates.
//! A wildcard route `*.apps.test` serves every name one label below `apps.test` that has no
//! route of its own (see [`HostMap`]).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use kakuremichi_proto::GatewayRoute;

use crate::hostmap::HostMap;

use super::custom_pages::ErrorPages;
use super::limits::Limits;
use super::metrics::HttpMetrics;
use super::reqlog::RequestLog;

/// Hostname → route, swapped atomically when a new config snapshot arrives. Routes are shared
/// (`Arc`): a request takes a reference, not a copy of the route's lists.
#[derive(Debug)]
pub struct RouteTable {
    routes: ArcSwap<HostMap<Arc<GatewayRoute>>>,
    limits: Limits,
    metrics: Arc<HttpMetrics>,
    log: Arc<RequestLog>,
    pages: ErrorPages,
}

impl RouteTable {
    pub fn new() -> Self {
        Self {
            routes: ArcSwap::from_pointee(HostMap::default()),
            limits: Limits::default(),
            metrics: Arc::default(),
            log: Arc::default(),
            pages: ErrorPages::default(),
        }
    }

    /// The request log of the tunnels that keep one, and the access log.
    pub fn request_log(&self) -> &Arc<RequestLog> {
        &self.log
    }

    /// The custom error pages (set with each snapshot, before its routes: a route's page is
    /// there when the route is).
    pub fn error_pages(&self) -> &ErrorPages {
        &self.pages
    }

    /// The tunnels' request counters (Prometheus `/metrics`).
    pub fn metrics(&self) -> &Arc<HttpMetrics> {
        &self.metrics
    }

    /// The limiters (and refusal counters) of the tunnels that set limits.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Replaces the whole table. Hostnames are normalised the way request hosts are, so a route
    /// for `Example.COM.` matches a request for `example.com`.
    pub fn replace(&self, routes: BTreeMap<String, GatewayRoute>) {
        let map = routes
            .into_iter()
            .map(|(host, route)| (normalize_host(&host).into_owned(), Arc::new(route)))
            .collect::<HostMap<_>>();
        // Limiters first: a request that sees a new route finds its limiter already there.
        self.limits.update(map.values().map(|r| r.as_ref()));
        self.metrics.update(map.values().map(|r| r.tunnel_id));
        self.log
            .update(map.values().filter(|r| r.log_requests).map(|r| r.tunnel_id));
        self.routes.store(Arc::new(map));
    }

    /// The route for `host` (port already stripped) after normalisation: its own, else the
    /// wildcard one label up.
    pub fn get(&self, host: &str) -> Option<Arc<GatewayRoute>> {
        self.routes
            .load()
            .get(normalize_host(host).as_ref())
            .cloned()
    }

    pub fn len(&self) -> usize {
        self.routes.load().len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.load().is_empty()
    }
}

impl Default for RouteTable {
    fn default() -> Self {
        Self::new()
    }
}

/// Lowercases and drops one trailing dot (`Example.com.` → `example.com`); borrows when the host
/// is already normal, which is the common case on the request path.
pub(crate) fn normalize_host(host: &str) -> Cow<'_, str> {
    let trimmed = host.strip_suffix('.').unwrap_or(host);
    if trimmed.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(trimmed.to_ascii_lowercase())
    } else {
        Cow::Borrowed(trimmed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn route(port: u16) -> GatewayRoute {
        GatewayRoute {
            tunnel_id: 1,
            agent_id: 1,
            agent_address: Ipv4Addr::new(10, 0, 0, 2),
            port,
            https_redirect: false,
            hsts_max_age: 0,
            replicas: Vec::new(),
            access: Default::default(),
            limits: Default::default(),
            plain_http_only: false,
            tcp_access: false,
            basic_auth: None,
            log_requests: false,
            error_page: None,
        }
    }

    #[test]
    fn replace_normalises_and_swaps() {
        let table = RouteTable::new();
        assert!(table.is_empty());
        table.replace(BTreeMap::from([("Example.COM.".to_string(), route(1))]));
        assert_eq!(table.get("example.com"), Some(Arc::new(route(1))));
        assert_eq!(table.get("EXAMPLE.com."), Some(Arc::new(route(1))));
        assert_eq!(table.get("other.com"), None);
        table.replace(BTreeMap::from([("other.com".to_string(), route(2))]));
        assert_eq!(table.len(), 1);
        assert_eq!(table.get("example.com"), None);
        assert_eq!(table.get("other.com"), Some(Arc::new(route(2))));
    }

    #[test]
    fn a_wildcard_route_serves_one_label_below_and_exact_routes_win() {
        let table = RouteTable::new();
        table.replace(BTreeMap::from([
            ("*.Apps.Test.".to_string(), route(1)),
            ("a.apps.test".to_string(), route(2)),
        ]));
        assert_eq!(table.len(), 2);
        assert_eq!(
            table.get("a.apps.test"),
            Some(Arc::new(route(2))),
            "exact wins"
        );
        assert_eq!(table.get("B.apps.test."), Some(Arc::new(route(1))));
        assert_eq!(table.get("c.apps.test"), Some(Arc::new(route(1))));
        assert_eq!(table.get("apps.test"), None);
        assert_eq!(table.get("x.a.apps.test"), None);
        assert_eq!(table.get("*.apps.test"), None);
        table.replace(BTreeMap::new());
        assert_eq!(table.get("b.apps.test"), None, "hot swap");
    }
}
