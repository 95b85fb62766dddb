//! Forwarding one client request: route lookup, the upstream request through the pooled tunnel
//! client, and for HTTP/1.1 upgrades (WebSocket) the byte splice once both sides have switched
//! protocols. Bodies are passed through as hyper streams, so nothing is buffered whole.

use std::error::Error as StdError;

use bytes::Bytes;
use http::header::UPGRADE;
use http::{Extensions, Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use kakuremichi_proto::GatewayRoute;

use super::headers::{self, ClientHost, HostError};
use super::pages;
use super::redirect;
use super::server::{ClientConn, ConnGuard};
use super::{Proxy, Scheme};

/// Either the origin's streamed body or a page the proxy wrote itself.
pub(crate) type ProxyBody = Either<Incoming, Full<Bytes>>;

#[derive(Debug, thiserror::Error)]
enum ForwardError {
    #[error("cannot build upstream uri: {0}")]
    Uri(#[from] http::Error),
    #[error("{}", chain(.0))]
    Upstream(#[from] hyper_util::client::legacy::Error),
    #[error("origin answered 101 Switching Protocols to a request that did not ask to upgrade")]
    UnexpectedUpgrade,
}

impl Proxy {
    /// Answers one client request; every failure becomes a response, never an error or a panic.
    pub(crate) async fn handle(
        &self,
        mut req: Request<Incoming>,
        conn: ClientConn,
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
        let host = match headers::client_host(req.uri(), req.headers()) {
            Ok(host) => host,
            Err(HostError::Missing) => return local(pages::not_found(None)),
            Err(HostError::Invalid) => return local(pages::bad_request()),
        };
        let Some(route) = self.routes.get(&host.name) else {
            return local(pages::not_found(Some(&host.name)));
        };
        let has_certificate = self.certs.has_certificate(&host.name);
        if redirect::should_redirect(conn.scheme, &route, has_certificate) {
            let path = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
            let to = redirect::location(&host.name, self.config.https_port, path);
            return local(redirect::redirect(&to));
        }
        if let Err(page) = self.access.admit(&mut req, &host, &route, conn.scheme) {
            return local(*page);
        }
        let scheme = conn.scheme;
        match self.forward(req, &host, &route, conn).await {
            Ok(mut response) => {
                redirect::add_hsts(response.headers_mut(), scheme, &route);
                response
            }
            Err(err) => {
                tracing::warn!(host = %host.name, error = %err, "upstream request failed");
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
    ) -> Result<Response<ProxyBody>, ForwardError> {
        let upgrade = headers::upgrade_request(req.version(), req.headers());
        // Taken before the request is moved upstream; it resolves once our 101 reaches the client.
        let client_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut req));

        let (mut parts, body) = req.into_parts();
        parts.uri = upstream_uri(route, &parts.uri)?;
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

        let mut response = self
            .client
            .request(Request::from_parts(parts, body))
            .await?;

        let mut switched_to = None;
        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            let client_upgrade = client_upgrade.ok_or(ForwardError::UnexpectedUpgrade)?;
            let upstream_upgrade = hyper::upgrade::on(&mut response);
            switched_to = response.headers().get(UPGRADE).cloned();
            tokio::spawn(splice(
                client_upgrade,
                upstream_upgrade,
                conn.guard,
                host.name.clone(),
            ));
        }
        headers::prepare_response(response.headers_mut(), switched_to);
        Ok(response.map(Either::Left))
    }
}

/// `http://<agent_address>:<port><path?query>`: the pool key is the tunnel target.
fn upstream_uri(route: &GatewayRoute, uri: &Uri) -> Result<Uri, http::Error> {
    let path_and_query = uri.path_and_query().map_or("/", |pq| pq.as_str());
    Uri::builder()
        .scheme("http")
        .authority(format!("{}:{}", route.agent_address, route.port))
        .path_and_query(path_and_query)
        .build()
}

/// Copies bytes both ways between the upgraded client and origin connections until either side
/// closes, or the server's drain deadline passes.
async fn splice(client: OnUpgrade, upstream: OnUpgrade, mut guard: ConnGuard, host: String) {
    let run = async {
        let (client, upstream) = tokio::try_join!(client, upstream)?;
        let (mut client, mut upstream) = (TokioIo::new(client), TokioIo::new(upstream));
        tokio::io::copy_bidirectional(&mut client, &mut upstream).await?;
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

fn local(page: Response<Full<Bytes>>) -> Response<ProxyBody> {
    page.map(Either::Right)
}

/// An error and its sources on one line: hyper-util's own message ("client error (Connect)")
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
    use std::net::Ipv4Addr;

    #[test]
    fn upstream_uri_targets_the_agent() {
        let route = GatewayRoute {
            tunnel_id: 1,
            agent_id: 2,
            agent_address: Ipv4Addr::new(10, 77, 0, 3),
            port: 10007,
            https_redirect: false,
            hsts_max_age: 0,
            access: Default::default(),
        };
        let uri: Uri = "/a/b?c=d".parse().unwrap();
        assert_eq!(
            upstream_uri(&route, &uri).unwrap(),
            "http://10.77.0.3:10007/a/b?c=d"
        );
        let uri: Uri = "https://example.com".parse().unwrap();
        assert_eq!(
            upstream_uri(&route, &uri).unwrap(),
            "http://10.77.0.3:10007/"
        );
    }
}
