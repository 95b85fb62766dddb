//! Custom error pages: HTML set in Control (per tunnel, or one global page) that replaces the
//! pages the Gateway writes itself (404, 502, 429, ...). Served as is, with two placeholders
//! filled in: `{{request_id}}` and `{{status}}` (the three-digit code). Nothing else in the page
//! is interpreted.
//!
//! The snapshot carries each distinct page once, by digest; routes name theirs by digest. The
//! pages sit behind an [`ArcSwap`] replaced with each snapshot, like the route table, and are
//! only looked at when a response is one of the Gateway's own pages.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::Arc;

use arc_swap::ArcSwap;
use kakuremichi_proto::GatewayRoute;

/// The placeholder replaced by the request's id.
pub const REQUEST_ID_PLACEHOLDER: &str = "{{request_id}}";
/// The placeholder replaced by the response's status code (`502`).
pub const STATUS_PLACEHOLDER: &str = "{{status}}";

/// The custom pages of the current snapshot.
#[derive(Debug, Default)]
pub struct ErrorPages {
    current: ArcSwap<Pages>,
}

#[derive(Debug, Default)]
struct Pages {
    by_digest: HashMap<String, Arc<str>>,
    default: Option<Arc<str>>,
}

impl ErrorPages {
    /// Replaces every page: `pages` by digest, `default` the digest of the page for routes
    /// without one of their own and for unknown hosts.
    pub fn replace(&self, pages: &BTreeMap<String, String>, default: Option<&str>) {
        let by_digest: HashMap<String, Arc<str>> = pages
            .iter()
            .map(|(digest, html)| (digest.clone(), Arc::from(html.as_str())))
            .collect();
        let default = default.and_then(|d| by_digest.get(d).cloned());
        self.current.store(Arc::new(Pages { by_digest, default }));
    }

    /// The page for a response about `route` (`None`: no route, as for an unknown host): the
    /// route's own, else the default; `None` keeps the Gateway's built-in page.
    pub(crate) fn for_route(&self, route: Option<&GatewayRoute>) -> Option<Arc<str>> {
        let pages = self.current.load();
        route
            .and_then(|r| r.error_page.as_deref())
            .and_then(|digest| pages.by_digest.get(digest))
            .or(pages.default.as_ref())
            .cloned()
    }
}

/// `template` with [`REQUEST_ID_PLACEHOLDER`] and [`STATUS_PLACEHOLDER`] filled in, in one pass
/// (a placeholder's value is never read again as a placeholder).
pub(crate) fn fill(template: &str, status: u16, request_id: &str) -> String {
    let mut out = String::with_capacity(template.len() + 16);
    let mut rest = template;
    while let Some(at) = rest.find("{{") {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        if let Some(after) = tail.strip_prefix(REQUEST_ID_PLACEHOLDER) {
            out.push_str(&super::pages::escape(request_id));
            rest = after;
        } else if let Some(after) = tail.strip_prefix(STATUS_PLACEHOLDER) {
            let _ = write!(out, "{status}");
            rest = after;
        } else {
            out.push_str("{{");
            rest = &tail[2..];
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn route(error_page: Option<&str>) -> GatewayRoute {
        GatewayRoute {
            tunnel_id: 1,
            agent_id: 1,
            agent_address: Ipv4Addr::new(10, 77, 0, 2),
            port: 1,
            https_redirect: false,
            hsts_max_age: 0,
            replicas: Vec::new(),
            access: Default::default(),
            limits: Default::default(),
            plain_http_only: false,
            tcp_access: false,
            basic_auth: None,
            log_requests: false,
            error_page: error_page.map(str::to_owned),
        }
    }

    #[test]
    fn placeholders_are_filled_and_nothing_else_is_touched() {
        assert_eq!(
            fill("<p>{{status}} {{request_id}}</p>{{ other }}{{", 502, "abc"),
            "<p>502 abc</p>{{ other }}{{"
        );
        assert_eq!(fill("{{request_id}}{{request_id}}", 404, "x"), "xx");
        assert_eq!(fill("no placeholder", 404, "x"), "no placeholder");
        assert_eq!(fill("{{{{status}}}}", 429, "x"), "{{429}}");
    }

    #[test]
    fn a_route_gets_its_page_else_the_default_else_none() {
        let pages = ErrorPages::default();
        assert!(pages.for_route(Some(&route(Some("own")))).is_none());
        pages.replace(
            &BTreeMap::from([
                ("own".to_string(), "OWN".to_string()),
                ("global".to_string(), "GLOBAL".to_string()),
            ]),
            Some("global"),
        );
        assert_eq!(
            pages.for_route(Some(&route(Some("own")))).as_deref(),
            Some("OWN")
        );
        assert_eq!(
            pages.for_route(Some(&route(None))).as_deref(),
            Some("GLOBAL")
        );
        assert_eq!(pages.for_route(None).as_deref(), Some("GLOBAL"));
        assert_eq!(
            pages.for_route(Some(&route(Some("gone")))).as_deref(),
            Some("GLOBAL")
        );
        pages.replace(
            &BTreeMap::from([("own".to_string(), "OWN".to_string())]),
            None,
        );
        assert!(pages.for_route(None).is_none());
        assert!(pages.for_route(Some(&route(None))).is_none());
    }
}
