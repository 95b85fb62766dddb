//! The admin listener's answers: `GET /healthz`, and `GET /metrics` as Prometheus text
//! (`metrics`) or, with `Accept: application/json`, the JSON of its first versions.

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::Incoming;

use super::forward::ProxyBody;
use super::metrics::{self, Sources};
use super::RouteTable;
use crate::streams::Splicer;

/// Whether a `/metrics` request asks for the JSON of the admin listener's first versions (its
/// own tests and scripts) instead of Prometheus' text.
fn wants_json(req: &Request<Incoming>) -> bool {
    req.headers()
        .get(http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.starts_with("application/json"))
}

pub(super) fn admin(req: &Request<Incoming>, sources: &Sources) -> Response<ProxyBody> {
    let (routes, streams) = (sources.routes.as_ref(), sources.streams.as_ref());
    let (status, body) = match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => (StatusCode::OK, Bytes::from_static(b"ok")),
        // Live tokio tasks: one per client connection and upgrade, so a leak shows as growth
        // under steady load (the soak test watches it).
        (&Method::GET, "/metrics") if !wants_json(req) => {
            let mut response = Response::new(Either::Right(Full::new(Bytes::from(
                metrics::encode(sources),
            ))));
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static(metrics::CONTENT_TYPE),
            );
            return response;
        }
        (&Method::GET, "/metrics") => {
            let tasks = tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks();
            let refused = routes.map(|r| refused_json(r)).unwrap_or_default();
            let streams = streams.map(|s| streams_json(s)).unwrap_or_default();
            let body = serde_json::json!({"tasks": tasks, "refused": refused, "streams": streams});
            (StatusCode::OK, Bytes::from(body.to_string()))
        }
        _ => (StatusCode::NOT_FOUND, Bytes::from_static(b"not found")),
    };
    let mut response = Response::new(Either::Right(Full::new(body)));
    *response.status_mut() = status;
    response
}

/// The stream tunnels' counters, by tunnel id.
fn streams_json(splicer: &Splicer) -> serde_json::Map<String, serde_json::Value> {
    let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    splicer
        .stats()
        .into_iter()
        .map(|(tunnel, s)| {
            let counts = serde_json::json!({
                "connections": load(&s.connections),
                "active": load(&s.active),
                "bytes_in": load(&s.bytes_in),
                "bytes_out": load(&s.bytes_out),
                "ip_denied": load(&s.ip_denied),
                "over_capacity": load(&s.over_capacity),
                "upstream_failed": load(&s.upstream_failed),
                "flows_expired": load(&s.flows_expired),
                "datagrams_dropped": load(&s.datagrams_dropped),
            });
            (tunnel.to_string(), counts)
        })
        .collect()
}

/// `{"<tunnel id>": {"ip_denied": n, "rate_limited": n, "concurrency": n}}`, by tunnel id.
fn refused_json(routes: &RouteTable) -> serde_json::Map<String, serde_json::Value> {
    let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    routes
        .limits()
        .refused()
        .into_iter()
        .map(|(tunnel, r)| {
            let counts = serde_json::json!({
                "ip_denied": load(&r.ip_denied),
                "rate_limited": load(&r.rate_limited),
                "concurrency": load(&r.concurrency),
            });
            (tunnel.to_string(), counts)
        })
        .collect()
}
