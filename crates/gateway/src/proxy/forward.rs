//! Forwarding one client request: route lookup, the upstream request over a tunnel connection
//! (see `upstream`), and for HTTP/1.1 WebSocket upgrades the byte splice once both sides have
//! switched protocols. Bodies are passed through as hyper streams, so nothing is buffered whole; a request
//! body that stalls is cut (408), and so is a spliced connection that carries nothing.

use std::error::Error as StdError;

use bytes::Bytes;
use http::header::UPGRADE;
use http::uri::PathAndQuery;
use http::{Extensions, Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{Either, Empty, Full};
use hyper::body::{Body, Incoming};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use kakuremichi_proto::GatewayRoute;
use std::net::SocketAddrV4;
use std::sync::Arc;
use std::time::Instant;

use super::access;
use super::headers::{self, ClientHost, HostError};
use super::limits::Counted;
use super::metrics::{Denied, InFlight, TunnelStats, UpstreamError};
use super::pages;
use super::redirect;
use super::reqlog;
use super::server::{ClientConn, ConnGuard};
use super::timeouts::{Abandoned, BodyError, IdleIo, RequestBody};
use super::upstream::ResponseBody;
use super::{Proxy, Scheme};
use tokio::sync::OwnedSemaphorePermit;

/// Either the origin's streamed body (holding the tunnel's concurrency permit, if it has a cap)
/// or a page the proxy wrote itself.
pub(crate) type ProxyBody = Either<Counted<ResponseBody>, Full<Bytes>>;

/// The client's streamed body, or nothing: a request known to have no body can be sent again to
/// another replica when a connect fails.
pub(crate) type UpstreamBody = Either<RequestBody, Empty<Bytes>>;

#[derive(Debug, thiserror::Error)]
enum ForwardError {
    #[error("cannot reach the Agent: {0}")]
    Dial(std::io::Error),
    #[error("{}", chain(.0))]
    Upstream(#[from] hyper::Error),
    #[error("the route lists no Agent to send to")]
    NoTarget,
    #[error("origin answered 101 Switching Protocols to a request that did not ask to upgrade")]
    UnexpectedUpgrade,
    #[error("origin switched to a protocol other than websocket")]
    UnexpectedProtocol,
}

impl ForwardError {
    /// How the request failed toward the Agent, for the tunnel's metrics.
    fn kind(&self) -> UpstreamError {
        match self {
            ForwardError::Dial(err) if err.kind() == std::io::ErrorKind::TimedOut => {
                UpstreamError::Timeout
            }
            ForwardError::Dial(_) | ForwardError::NoTarget => UpstreamError::Connect,
            _ => UpstreamError::Reset,
        }
    }
}

impl Proxy {
    /// Answers one client request; every failure becomes a response, never an error or a panic.
    /// Pages the Gateway writes itself carry a request id; requests of tunnels that log them
    /// (and every request, with the access log) are recorded when their response ends.
    pub(crate) async fn handle(
        &self,
        mut req: Request<Incoming>,
        conn: ClientConn,
    ) -> Response<ProxyBody> {
        let started = Instant::now();
        let host = headers::client_host(req.uri(), req.headers());
        let route = host.as_ref().ok().and_then(|h| self.routes.get(&h.name));
        let log = self.routes.request_log();
        let tunnel = route.as_ref().map(|r| r.tunnel_id);
        let seen = log
            .wants(tunnel)
            .then(|| reqlog::Seen::new(log.clone(), &mut req, conn.peer.ip(), tunnel));
        let mut response = self
            .answer(req, conn, host, route.as_deref(), started)
            .await;
        let page = matches!(response.body(), Either::Right(_)) && response.status().as_u16() >= 400;
        if !page && seen.is_none() {
            return response;
        }
        let id = reqlog::request_id();
        if page {
            // Only now, for the Gateway's own pages, is a custom page looked up.
            let custom = self.routes.error_pages().for_route(route.as_deref());
            pages::stamp(&mut response, &id, custom.as_deref(), |b| {
                Either::Right(Full::new(b))
            });
        }
        if let Some(seen) = seen {
            let mut pending = seen.responded(id, response.status().as_u16());
            match response.body_mut() {
                Either::Left(streamed) => streamed.log(pending, started),
                Either::Right(page) => {
                    let size = page.size_hint().exact().unwrap_or(0);
                    pending.sent(usize::try_from(size).unwrap_or(usize::MAX));
                    pending.finish(started.elapsed());
                }
            }
        }
        response
    }

    /// [`Proxy::handle`] without the logging: the response, counted in the tunnel's metrics.
    async fn answer(
        &self,
        req: Request<Incoming>,
        conn: ClientConn,
        host: Result<ClientHost, HostError>,
        route: Option<&GatewayRoute>,
        started: Instant,
    ) -> Response<ProxyBody> {
        // CONNECT would turn the Gateway into an open forward proxy.
        if req.method() == Method::CONNECT {
            return local(pages::method_not_allowed());
        }
        if conn.scheme == Scheme::Http {
            if let Some(token) = redirect::acme_token(req.uri().path()) {
                return local(redirect::challenge_answer(self.certs.http01(token)));
            }
        }
        let host = match host {
            Ok(host) => host,
            Err(HostError::Missing) => return local(pages::not_found(None)),
            Err(HostError::Invalid) => return local(pages::bad_request()),
        };
        let Some(route) = route else {
            return local(pages::not_found(Some(&host.name)));
        };
        let Some(stats) = self.routes.metrics().tunnel(route.tunnel_id) else {
            return self.routed(req, conn, &host, route, None).await;
        };
        let in_flight = stats.begin();
        let mut response = self.routed(req, conn, &host, route, Some(&in_flight)).await;
        stats.responded(response.status(), started.elapsed());
        match response.body_mut() {
            Either::Left(streamed) => streamed.measure(in_flight, started),
            Either::Right(page) => {
                let size = page.size_hint().exact().unwrap_or(0);
                stats.bytes_out(usize::try_from(size).unwrap_or(usize::MAX));
                stats.finished(started.elapsed());
            }
        }
        response
    }

    /// [`Proxy::handle`] once the request's route is known; `in_flight` counts it (and what
    /// went wrong) for its tunnel.
    async fn routed(
        &self,
        mut req: Request<Incoming>,
        conn: ClientConn,
        host: &ClientHost,
        route: &GatewayRoute,
        in_flight: Option<&InFlight>,
    ) -> Response<ProxyBody> {
        let count = |f: &dyn Fn(&TunnelStats)| {
            if let Some(in_flight) = in_flight {
                f(in_flight.stats());
            }
        };
        // The tunnel's IP lists and rate before anything else; ACME validations always pass.
        let limiter = self
            .routes
            .limits()
            .get(route.tunnel_id)
            .filter(|_| !redirect::is_acme_path(req.uri().path()));
        if let Some(limiter) = &limiter {
            if let Err(page) = limiter.admit(conn.peer.ip()) {
                return local(*page);
            }
        }
        let has_certificate = self.certs.has_certificate(&host.name);
        if redirect::should_redirect(conn.scheme, route, has_certificate) {
            let path = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
            let to = redirect::location(&host.name, self.config.https_port, path);
            return local(redirect::redirect(&to));
        }
        // Basic authentication, then the sign-in of access control; the app sees neither's
        // credentials.
        if let Some(check) = &route.basic_auth {
            let given = req.headers().get(http::header::AUTHORIZATION);
            if !given.is_some_and(|v| check.admits(v.as_bytes())) {
                count(&|s| s.denied(Denied::BasicAuth));
                return local(pages::basic_auth_required());
            }
            req.headers_mut().remove(http::header::AUTHORIZATION);
        }
        if let Err(page) = self.access.admit(&mut req, host, route, conn.scheme) {
            count(&|s| s.denied(Denied::Access));
            return local(*page);
        }
        if route.tcp_access {
            return self.tcp_access(req, host, route, conn).await;
        }
        // Only requests that reach the origin occupy one of its concurrent slots.
        let permit = match limiter.map(|l| l.acquire()).transpose() {
            Ok(permit) => permit.flatten(),
            Err(page) => return local(*page),
        };
        let scheme = conn.scheme;
        let stats = in_flight.map(InFlight::shared);
        match self.forward(req, host, route, conn, permit, stats).await {
            Ok(mut response) => {
                redirect::add_hsts(response.headers_mut(), scheme, route);
                response
            }
            Err(ForwardError::Upstream(err)) if BodyError::is_idle(&err) => {
                tracing::debug!(host = %host.name, error = %chain(&err), "request body stalled");
                local(pages::request_timeout())
            }
            // Not the Agent's failure: the client reset the request or went away mid-body.
            Err(ForwardError::Upstream(err)) if BodyError::is_client(&err) => {
                tracing::debug!(host = %host.name, error = %chain(&err), "client abandoned its request");
                let mut page = local(pages::bad_request());
                page.extensions_mut().insert(Abandoned);
                page
            }
            Err(err) => {
                tracing::warn!(host = %host.name, error = %err, "upstream request failed");
                count(&|s| s.upstream_error(err.kind()));
                local(pages::bad_gateway())
            }
        }
    }

    async fn forward(
        &self,
        mut req: Request<Incoming>,
        host: &ClientHost,
        route: &GatewayRoute,
        conn: ClientConn,
        permit: Option<OwnedSemaphorePermit>,
        stats: Option<Arc<TunnelStats>>,
    ) -> Result<Response<ProxyBody>, ForwardError> {
        let upgrade = headers::upgrade_request(req.version(), req.headers());
        // Taken before the request is moved upstream; it resolves once our 101 reaches the client.
        let client_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut req));

        let (mut parts, body) = req.into_parts();
        let logged = parts.extensions.remove::<reqlog::BytesIn>();
        let body = RequestBody::new(body, self.config.body_timeout, access::remove_user_header)
            .counting(stats)
            .logging(logged);
        // Agents speak HTTP/1.1 whatever the client spoke; hyper's server-side extensions mean
        // nothing to its client.
        parts.version = Version::HTTP_11;
        parts.extensions = Extensions::new();
        headers::prepare_request(
            &mut parts.headers,
            host,
            conn.peer.ip(),
            conn.scheme,
            upgrade,
        );

        origin_form(&mut parts.uri);
        let upgrading = client_upgrade.is_some();
        let mut response = if route.replicas.is_empty() {
            let target = SocketAddrV4::new(route.agent_address, route.port);
            let request = Request::from_parts(parts, Either::Left(body));
            self.exchange(&conn, target, request, upgrading).await?
        } else {
            self.send_to_replicas(&conn, route, parts, body, upgrading)
                .await?
        };

        let mut switched_to = None;
        let mut permit = permit;
        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            let client_upgrade = client_upgrade.ok_or(ForwardError::UnexpectedUpgrade)?;
            switched_to = response.headers().get(UPGRADE).cloned();
            // Only WebSocket was asked for; an origin switching to anything else is not spliced.
            if !switched_to.as_ref().is_some_and(headers::is_websocket) {
                return Err(ForwardError::UnexpectedProtocol);
            }
            let upstream_upgrade = hyper::upgrade::on(&mut response);
            // The upgraded connection keeps the request's concurrency slot until it closes.
            tokio::spawn(splice(
                client_upgrade,
                upstream_upgrade,
                (conn.guard, permit.take()),
                self.config.websocket_idle_timeout,
                host.name.clone(),
            ));
        }
        headers::prepare_response(response.headers_mut(), switched_to);
        Ok(response.map(|body| Either::Left(Counted::new(body, permit))))
    }
}

impl Proxy {
    /// Sends `request` to `target` over a connection of the client connection's, the shared
    /// pool's or a new one (see `upstream`). An upgrade's connection runs as a task of its own.
    async fn exchange(
        &self,
        conn: &ClientConn,
        target: SocketAddrV4,
        request: Request<UpstreamBody>,
        upgrade: bool,
    ) -> Result<Response<ResponseBody>, ForwardError> {
        let mut upstream = self
            .upstreams
            .lease(&conn.upstream, target)
            .await
            .map_err(ForwardError::Dial)?;
        if upgrade {
            let response = upstream.send_upgrade(request).await?;
            return Ok(response.map(ResponseBody::detached));
        }
        let response = upstream.send(request).await?;
        let home = conn.upstream.clone();
        Ok(response.map(|body| ResponseBody::leased(body, upstream, home)))
    }

    /// Sends a request of a tunnel with replicas, in the balancer's order. A failed connect marks
    /// that Agent down and, when the request has no body (so nothing was consumed), moves on to
    /// the next Agent; any other error ends the request as usual.
    async fn send_to_replicas(
        &self,
        conn: &ClientConn,
        route: &GatewayRoute,
        parts: http::request::Parts,
        body: RequestBody,
        upgrade: bool,
    ) -> Result<Response<ResponseBody>, ForwardError> {
        let order = self.balancer.order(route.tunnel_id, route.replicas.clone());
        let retryable = body.is_end_stream();
        let mut body = Some(body);
        let last = order.len().saturating_sub(1);
        for (i, target) in order.iter().enumerate() {
            let upstream_body = match body.take() {
                Some(b) if !retryable => Either::Left(b),
                _ => Either::Right(Empty::new()),
            };
            let mut request = Request::new(upstream_body);
            *request.method_mut() = parts.method.clone();
            *request.uri_mut() = parts.uri.clone();
            *request.version_mut() = parts.version;
            *request.headers_mut() = parts.headers.clone();
            let addr = SocketAddrV4::new(target.agent_address, target.port);
            match self.exchange(conn, addr, request, upgrade).await {
                Ok(response) => {
                    self.balancer.succeeded(target.agent_id);
                    return Ok(response);
                }
                Err(ForwardError::Dial(e)) => {
                    let skip = self.balancer.failed(target.agent_id);
                    let retry = retryable && i < last;
                    tracing::warn!(
                        tunnel_id = route.tunnel_id,
                        agent_id = target.agent_id,
                        error = %chain(&e),
                        "cannot reach this replica; skipping it for {skip:?}{}",
                        if retry { ", trying the next one" } else { "" }
                    );
                    if !retry {
                        return Err(ForwardError::Dial(e));
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Err(ForwardError::NoTarget)
    }
}

/// Makes `uri` the `/path?query` an HTTP/1.1 origin expects; an HTTP/2 client's request (and an
/// HTTP/1.1 one in absolute form) names the scheme and host, which `Host` carries instead.
fn origin_form(uri: &mut Uri) {
    if uri.scheme().is_none() && uri.authority().is_none() {
        return;
    }
    let path_and_query = uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    *uri = Uri::from(path_and_query);
}

/// Copies bytes both ways between the upgraded client and origin connections until either side
/// closes, no byte has gone either way for `idle_timeout`, or the server's drain deadline passes.
async fn splice(
    client: OnUpgrade,
    upstream: OnUpgrade,
    (mut guard, _permit): (ConnGuard, Option<OwnedSemaphorePermit>),
    idle_timeout: std::time::Duration,
    host: String,
) {
    let run = async {
        let (client, upstream) = tokio::try_join!(client, upstream)?;
        let mut client = IdleIo::new(TokioIo::new(client));
        let mut upstream = TokioIo::new(upstream);
        let idle = client.idle_for(idle_timeout);
        tokio::select! {
            copied = tokio::io::copy_bidirectional(&mut client, &mut upstream) => { copied?; }
            () = idle => tracing::debug!(host = %host, "closing an idle upgraded connection"),
        }
        Ok::<_, Box<dyn StdError + Send + Sync>>(())
    };
    tokio::select! {
        result = run => {
            if let Err(err) = result {
                tracing::debug!(host = %host, error = %chain(err.as_ref()), "upgraded connection ended");
            }
        }
        () = guard.stopped() => {}
    }
}

pub(crate) fn local(page: Response<Full<Bytes>>) -> Response<ProxyBody> {
    page.map(Either::Right)
}

/// An error and its sources on one line: hyper's own message ("error from user's Body stream")
/// says little without the cause.
fn chain(err: &(dyn StdError + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origin_form_keeps_only_the_path_and_query() {
        let cases = [
            ("/a/b?c=d", "/a/b?c=d"),
            ("https://example.com", "/"),
            ("https://example.com/x?y", "/x?y"),
            ("http://example.com:8080/", "/"),
            ("*", "*"),
        ];
        for (given, sent) in cases {
            let mut uri: Uri = given.parse().unwrap();
            origin_form(&mut uri);
            assert_eq!(uri, sent, "{given}");
        }
    }
}
