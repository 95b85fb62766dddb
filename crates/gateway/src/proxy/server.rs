//! Listeners: the accept loop with its connection caps (per listener, and per client on the
//! public listeners), per-connection HTTP/1.1 + h2c serving with header, idle and HTTP/2 stream
//! limits, and graceful drain on shutdown. The public proxy listener and the admin (health)
//! listener share all of it and differ only in what answers requests; the HTTPS listener adds a
//! TLS handshake (bounded by a timeout) in front of the same HTTP serving.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;

use super::admin::admin;
use super::client_cap::{ClientCap, ClientPermit};
use super::forward::ProxyBody;
use super::metrics::Handshake;
use super::metrics::Sources;
use super::timeouts::{Abandoned, Activity, Tracked};
use super::{Proxy, RouteTable, Scheme};
use crate::streams::sni::{read_client_hello, Prefixed};
use crate::tls::{ACME_TLS_ALPN, WG_TLS_ALPN};

/// How long in-flight requests (and upgraded connections) may run after shutdown is requested.
const DRAIN_DEADLINE: Duration = Duration::from_secs(30);
/// Pause after an accept error such as EMFILE, so a full fd table does not become a busy loop.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);
const H2_KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// Streams an HTTP/2 client may reset before the server accepted them (the "rapid reset"
/// flood, CVE-2023-44487); more ends the connection with GOAWAY. h2's own default.
const H2_MAX_PENDING_ACCEPT_RESETS: usize = 20;
/// Streams the server may reset because the client misbehaved before GOAWAY (RUSTSEC-2024-0003).
const H2_MAX_LOCAL_ERROR_RESETS: usize = 256;
/// How long a connection closed for idling may take to finish what it was doing.
const IDLE_CLOSE_GRACE: Duration = Duration::from_secs(5);
const ADMIN_MAX_CONNECTIONS: usize = 64;
const ADMIN_LIMITS: ConnLimits = ConnLimits {
    header_read_timeout: Duration::from_secs(10),
    idle_timeout: Duration::from_secs(60),
    h2_max_streams: 16,
};

/// The per-connection limits of a listener.
#[derive(Debug, Clone, Copy)]
struct ConnLimits {
    header_read_timeout: Duration,
    idle_timeout: Duration,
    h2_max_streams: u32,
}

impl ConnLimits {
    fn of(config: &super::ProxyConfig) -> Self {
        Self {
            header_read_timeout: config.header_read_timeout,
            idle_timeout: config.idle_timeout,
            h2_max_streams: config.h2_max_streams,
        }
    }
}

/// Serves the proxy for plain-HTTP clients (`X-Forwarded-Proto: http`).
pub async fn serve(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    serve_with_scheme(listener, proxy, Scheme::Http, shutdown).await
}

/// Serves HTTP/1.1 and h2c (prior knowledge) on `listener` until `shutdown` resolves, then stops
/// accepting and lets in-flight requests finish for up to 30 s. `scheme` is what the clients of
/// this listener used, as reported to origins.
pub async fn serve_with_scheme(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    scheme: Scheme,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let limits = ConnLimits::of(&proxy.config);
    let max_connections = proxy.config.max_connections;
    let site = Site {
        builder: http_builder(limits),
        limits,
        scheme,
        client_cap: Some(proxy.client_cap.clone()),
        proxy: Some(proxy),
        tls: None,
        sources: Sources::default(),
    };
    accept_loop(listener, site, max_connections, shutdown).await
}

/// Serves HTTPS on `listener`: TLS with the certificate chosen by SNI from the proxy's
/// [`CertStore`](crate::tls::CertStore), then HTTP/2 or HTTP/1.1 as negotiated by ALPN, with the
/// same limits and drain as [`serve_with_scheme`].
pub async fn serve_tls(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let limits = ConnLimits::of(&proxy.config);
    let max_connections = proxy.config.max_connections;
    let tls = Tls {
        acceptor: TlsAcceptor::from(proxy.certs().server_config()),
        handshake_timeout: proxy.config.tls_handshake_timeout,
    };
    let site = Site {
        builder: http_builder(limits),
        limits,
        scheme: Scheme::Https,
        client_cap: Some(proxy.client_cap.clone()),
        proxy: Some(proxy),
        tls: Some(tls),
        sources: Sources::default(),
    };
    accept_loop(listener, site, max_connections, shutdown).await
}

/// The admin listener: `GET /healthz` → 200 "ok", `GET /metrics` → the Prometheus metrics
/// (`proxy::metrics`), or with `Accept: application/json` `{"tasks":N,"refused":{}}` (live
/// tokio tasks); anything else 404.
pub async fn serve_admin(
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    serve_admin_site(listener, Sources::default(), shutdown).await
}

/// [`serve_admin`] whose `/metrics` also reports the requests that `routes`' limits refused:
/// `"refused": {"<tunnel id>": {"ip_denied": n, "rate_limited": n, "concurrency": n}}`, one
/// entry per tunnel that has limits (counters since the Gateway started, or since the tunnel got
/// limits).
pub async fn serve_admin_with_limits(
    listener: TcpListener,
    routes: Arc<RouteTable>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let sources = Sources {
        http: Some(routes.metrics().clone()),
        routes: Some(routes),
        ..Sources::default()
    };
    serve_admin_site(listener, sources, shutdown).await
}

/// [`serve_admin_with_limits`] for `proxy`, whose `/metrics` also has the stream tunnels'
/// counters: `"streams": {"<tunnel id>": {"connections": n, "active": n, "bytes_in": n,
/// "bytes_out": n, "ip_denied": n, "over_capacity": n, "upstream_failed": n, "flows_expired": n,
/// "datagrams_dropped": n}}` (a UDP flow counts as a connection).
pub async fn serve_admin_for(
    listener: TcpListener,
    proxy: &Proxy,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let sources = Sources {
        http: Some(proxy.routes().metrics().clone()),
        routes: Some(proxy.routes().clone()),
        streams: Some(proxy.passthrough().splicer().clone()),
        certs: Some(proxy.certs().clone()),
    };
    serve_admin_site(listener, sources, shutdown).await
}

async fn serve_admin_site(
    listener: TcpListener,
    sources: Sources,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let site = Site {
        builder: http_builder(ADMIN_LIMITS),
        limits: ADMIN_LIMITS,
        scheme: Scheme::Http,
        client_cap: None,
        proxy: None,
        tls: None,
        sources,
    };
    accept_loop(listener, site, ADMIN_MAX_CONNECTIONS, shutdown).await
}

fn http_builder(limits: ConnLimits) -> Arc<Builder<TokioExecutor>> {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    // HTTP/2 has no header-read timeout: the idle watchdog in `serve_io` bounds idle
    // connections, and pings free the slots of vanished peers sooner.
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(H2_KEEP_ALIVE_INTERVAL)
        .keep_alive_timeout(H2_KEEP_ALIVE_INTERVAL)
        .max_concurrent_streams(limits.h2_max_streams.max(1))
        .max_pending_accept_reset_streams(H2_MAX_PENDING_ACCEPT_RESETS)
        .max_local_error_reset_streams(H2_MAX_LOCAL_ERROR_RESETS);
    Arc::new(builder)
}

/// What a listener serves: the proxy, or (`proxy: None`) the admin endpoints.
#[derive(Clone)]
struct Site {
    builder: Arc<Builder<TokioExecutor>>,
    limits: ConnLimits,
    scheme: Scheme,
    /// The per-client cap; `None` on the admin listener.
    client_cap: Option<Arc<ClientCap>>,
    proxy: Option<Arc<Proxy>>,
    tls: Option<Tls>,
    /// Admin only: what `/metrics` reports.
    sources: Sources,
}

#[derive(Clone)]
struct Tls {
    acceptor: TlsAcceptor,
    handshake_timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    Running,
    Draining,
    Stopped,
}

/// Held, through clones, by everything serving one client connection, spliced upgrades included:
/// it occupies the connection's slot under the cap until the last clone is gone, and tells the
/// holders when to drain and when to stop.
#[derive(Clone)]
pub(crate) struct ConnGuard {
    _slot: Arc<Slot>,
    phase: watch::Receiver<Phase>,
}

/// A connection's place under the listener cap and under its client's cap.
struct Slot {
    _listener: OwnedSemaphorePermit,
    _client: Option<ClientPermit>,
}

impl ConnGuard {
    pub(crate) async fn draining(&mut self) {
        self.reached(Phase::Draining).await
    }

    pub(crate) async fn stopped(&mut self) {
        self.reached(Phase::Stopped).await
    }

    async fn reached(&mut self, phase: Phase) {
        // An error means the listener is gone altogether, which is as stopped as it gets.
        let _ = self.phase.wait_for(|current| *current >= phase).await;
    }
}

/// The client connection a request arrived on.
#[derive(Clone)]
pub(crate) struct ClientConn {
    pub(crate) peer: SocketAddr,
    pub(crate) scheme: Scheme,
    pub(crate) guard: ConnGuard,
    /// The upstream connection its last request used, for its next one.
    pub(crate) upstream: Arc<super::upstream::ConnUpstream>,
}

async fn accept_loop(
    listener: TcpListener,
    site: Site,
    max_connections: usize,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    // Bounded by what `acquire_many` (u32) and the semaphore can count; 0 would serve nobody.
    let max = max_connections.clamp(1, (u32::MAX as usize).min(Semaphore::MAX_PERMITS));
    let slots = Arc::new(Semaphore::new(max));
    let (phase_tx, phase_rx) = watch::channel(Phase::Running);
    let mut shutdown = pin!(shutdown);
    loop {
        // The slot is taken before accepting: clients over the cap wait in the kernel backlog and
        // are served as soon as a slot frees, rather than being accepted only to be reset.
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break, // the semaphore is never closed
            },
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    accept_failed(err).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let client = match &site.client_cap {
            Some(cap) => match cap.try_acquire(peer.ip()) {
                Some(permit) => Some(permit),
                None => {
                    refuse_over_client_cap(stream, peer);
                    continue;
                }
            },
            None => None,
        };
        // Small writes (SSE events, WebSocket frames) must not wait for Nagle.
        let _ = stream.set_nodelay(true);
        let slot = Slot {
            _listener: slot,
            _client: client,
        };
        let guard = ConnGuard {
            _slot: Arc::new(slot),
            phase: phase_rx.clone(),
        };
        tokio::spawn(serve_connection(site.clone(), stream, peer, guard));
    }
    drop(listener);
    drain(&slots, max, &phase_tx).await;
    Ok(())
}

/// Closes a connection of a client at its cap with a reset: no TIME_WAIT left on our side, and
/// the slot it held is free for the next accept at once.
fn refuse_over_client_cap(stream: TcpStream, peer: SocketAddr) {
    tracing::debug!(%peer, "client at its connection cap; connection refused");
    let _ = stream.set_zero_linger();
}

async fn accept_failed(err: io::Error) {
    // A client that gave up between SYN and accept is not our problem; anything else (EMFILE,
    // ENOBUFS) is, and retrying at once would spin.
    if !matches!(
        err.kind(),
        io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
    ) {
        tracing::warn!(error = %err, "accept failed");
        tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
    }
}

async fn drain(slots: &Semaphore, max: usize, phase_tx: &watch::Sender<Phase>) {
    let _ = phase_tx.send(Phase::Draining);
    // Every slot back means every connection, spliced upgrades included, has finished.
    let all_idle = slots.acquire_many(max as u32);
    if tokio::time::timeout(DRAIN_DEADLINE, all_idle)
        .await
        .is_err()
    {
        tracing::warn!("drain deadline passed, closing the remaining connections");
    }
    let _ = phase_tx.send(Phase::Stopped);
}

async fn serve_connection(site: Site, stream: TcpStream, peer: SocketAddr, guard: ConnGuard) {
    let Some(tls) = site.tls.clone() else {
        return serve_io(site, stream, peer, guard).await;
    };
    let passthrough = site.proxy.as_ref().map(|p| p.passthrough().clone());
    let Some(passthrough) = passthrough.filter(|p| !p.is_empty()) else {
        return serve_tls_conn(site, tls, stream, peer, guard).await;
    };
    // Some tunnels are `tls` (passthrough): the ClientHello's name says whose connection it is.
    let mut stream = stream;
    let hello = tokio::time::timeout(tls.handshake_timeout, read_client_hello(&mut stream));
    let hello = match hello.await {
        Ok(Ok(hello)) => hello,
        Ok(Err(_)) | Err(_) => {
            tracing::debug!(%peer, "no TLS ClientHello in time");
            return;
        }
    };
    let Ok(local) = stream.local_addr() else {
        return;
    };
    let mut stopped = guard.clone();
    let name = hello.server_name.as_deref();
    let spliced = tokio::select! {
        spliced = passthrough.try_splice(name, stream, hello.consumed, peer, local) => spliced,
        // A spliced stream has no request to finish: it closes when the drain deadline passes.
        () = stopped.stopped() => return,
    };
    if let Err((stream, consumed)) = spliced {
        serve_tls_conn(site, tls, Prefixed::new(consumed, stream), peer, guard).await
    }
}

/// Our own TLS on a connection (whose ClientHello may have been read already), then HTTP.
async fn serve_tls_conn<IO>(site: Site, tls: Tls, stream: IO, peer: SocketAddr, guard: ConnGuard)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let handshake = tokio::time::timeout(tls.handshake_timeout, tls.acceptor.accept(stream));
    let count = |result| {
        if let Some(proxy) = &site.proxy {
            proxy.routes().metrics().handshake(result);
        }
    };
    let stream = match handshake.await {
        Ok(Ok(stream)) => {
            count(Handshake::Ok);
            stream
        }
        Ok(Err(err)) => {
            // Unknown names, scanners and old clients end here; routine on a public port.
            tracing::debug!(%peer, error = %err, "TLS handshake failed");
            count(Handshake::Failed);
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            count(Handshake::Timeout);
            return;
        }
    };
    if stream.get_ref().1.alpn_protocol() == Some(ACME_TLS_ALPN) {
        // A TLS-ALPN-01 validation: the handshake was the whole answer (RFC 8737 §3).
        let mut stream = stream;
        let _ = tokio::io::AsyncWriteExt::shutdown(&mut stream).await;
        return;
    }
    if stream.get_ref().1.alpn_protocol() == Some(WG_TLS_ALPN) {
        // WireGuard from an Agent whose UDP is blocked: the tunnel takes the connection (and
        // bounds how many it holds); it leaves the HTTP connection cap.
        if let Some(proxy) = &site.proxy {
            proxy.certs().hand_over_wireguard(stream, peer);
        }
        return;
    }
    serve_io(site, stream, peer, guard).await
}

async fn serve_io<IO>(site: Site, stream: IO, peer: SocketAddr, mut guard: ConnGuard)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let builder = site.builder.clone();
    let limits = site.limits;
    let activity = Activity::new();
    let home = Arc::<super::upstream::ConnUpstream>::default();
    let conn = ClientConn {
        peer,
        scheme: site.scheme,
        guard: guard.clone(),
        upstream: home.clone(),
    };
    let service = ConnService {
        site,
        conn,
        activity: activity.clone(),
    };
    let mut conn = pin!(builder.serve_connection_with_upgrades(TokioIo::new(stream), service));
    // A client connection keeps its upstream connection between requests only while it is
    // busy: once it has been quiet for a moment, other client connections may use it.
    let idle = activity.expired(
        limits.header_read_timeout,
        limits.idle_timeout,
        super::upstream::HOLD,
        move || home.release(),
    );
    let grace = tokio::select! {
        result = conn.as_mut() => return log_connection_end(result, peer),
        () = guard.draining() => None,
        () = idle => {
            tracing::debug!(%peer, "closing an idle client connection");
            Some(tokio::time::sleep(IDLE_CLOSE_GRACE))
        }
    };
    // HTTP/2 says GOAWAY; an idle HTTP/1.1 connection (or one still being identified) closes.
    conn.as_mut().graceful_shutdown();
    let grace = async move {
        match grace {
            Some(grace) => grace.await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        result = conn.as_mut() => log_connection_end(result, peer),
        () = guard.stopped() => {}
        () = grace => {}
    }
}

fn log_connection_end(
    result: Result<(), Box<dyn std::error::Error + Send + Sync>>,
    peer: SocketAddr,
) {
    // Client-side failures (resets, timeouts, garbage) are routine on a public listener.
    if let Err(err) = result {
        tracing::debug!(%peer, error = %err, "client connection ended with error");
    }
}

/// The per-connection hyper service: one concrete type for both sites so a single connection
/// driver serves them.
struct ConnService {
    site: Site,
    conn: ClientConn,
    activity: Activity,
}

/// A response whose request counts as in flight (for the idle timeout) until its body is done.
type ConnResponse = Response<Tracked<ProxyBody>>;
type ServiceFuture = Pin<Box<dyn Future<Output = Result<ConnResponse, Infallible>> + Send>>;

impl hyper::service::Service<Request<Incoming>> for ConnService {
    type Response = ConnResponse;
    type Error = Infallible;
    type Future = ServiceFuture;

    fn call(&self, req: Request<Incoming>) -> ServiceFuture {
        let in_flight = self.activity.start();
        match &self.site.proxy {
            Some(proxy) => {
                let (proxy, conn) = (proxy.clone(), self.conn.clone());
                Box::pin(async move {
                    let mut response = proxy.handle(req, conn).await;
                    let abandoned = response.extensions_mut().remove::<Abandoned>().is_some();
                    Ok(response.map(|body| Tracked::new(body, in_flight, !abandoned)))
                })
            }
            None => {
                let response =
                    admin(&req, &self.site.sources).map(|body| Tracked::new(body, in_flight, true));
                Box::pin(std::future::ready(Ok(response)))
            }
        }
    }
}
