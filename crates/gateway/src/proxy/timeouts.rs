//! Timeouts hyper does not give us, each closing a way for a client to hold a connection (and its
//! slot) while sending nothing:
//! - [`Activity`]: a connection's first request must arrive within the header timeout (hyper's
//!   own HTTP/1 header timer only starts once the protocol is known, so a client sending no byte
//!   at all was held forever), and a connection with no request in flight is closed after the
//!   idle timeout (HTTP/2 has no idle limit in hyper; its pings only catch vanished peers).
//!   It also closes an HTTP/2 connection that keeps cancelling its requests: the "rapid reset"
//!   flood (CVE-2023-44487) opens and resets streams so fast that h2's own limit, which counts
//!   only streams reset before the server accepted them, never trips, while every stream costs
//!   a request to an Agent.
//! - [`RequestBody`]: a request body that sends nothing for the body timeout is cut, and the
//!   client gets 408. Trailers pass through it, so it is also where client trailers are cleaned.
//! - [`IdleIo`]: an upgraded (WebSocket) connection with no byte either way for the WebSocket
//!   idle timeout is closed.

use std::error::Error as StdError;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};

use super::metrics::TunnelStats;

/// Requests a connection may cancel (reset before their response) before it is closed, if
/// they are also at least half of its requests. A browser cancels a few when the user moves on.
const MAX_CANCELLED: u64 = 100;

/// What the idle watchdog of one connection knows.
#[derive(Debug, Clone, Copy)]
struct State {
    in_flight: usize,
    /// Requests seen on the connection so far.
    requests: u64,
    /// Requests dropped by the client before their response was ready.
    cancelled: u64,
    /// When `in_flight` last dropped to 0 (or the connection opened).
    idle_since: Instant,
}

/// Requests in flight on one client connection, for its idle watchdog.
#[derive(Clone)]
pub(crate) struct Activity {
    state: Arc<watch::Sender<State>>,
}

impl Activity {
    pub(crate) fn new() -> Self {
        let (state, _) = watch::channel(State {
            in_flight: 0,
            requests: 0,
            cancelled: 0,
            idle_since: Instant::now(),
        });
        Self {
            state: Arc::new(state),
        }
    }

    /// Marks a request as in flight until the returned guard (kept with its response body) drops.
    pub(crate) fn start(&self) -> InFlight {
        self.state.send_modify(|s| {
            s.in_flight += 1;
            s.requests += 1;
        });
        InFlight {
            state: self.state.clone(),
            responded: false,
        }
    }

    /// Resolves once the connection is due to close: no request yet after `first_request`, no
    /// request in flight for `idle`, or too many requests cancelled. Meanwhile, once in each
    /// stretch without a request in flight, `on_quiet` runs after `quiet` of it (if that comes
    /// before the close): what the connection keeps for its next request can go where others
    /// use it.
    pub(crate) async fn expired(
        &self,
        first_request: Duration,
        idle: Duration,
        quiet: Duration,
        mut on_quiet: impl FnMut(),
    ) {
        let mut rx = self.state.subscribe();
        // The stretch (by its start) `on_quiet` last ran in.
        let mut quieted = None;
        loop {
            let state = *rx.borrow_and_update();
            if state.cancelled > MAX_CANCELLED && state.cancelled * 2 > state.requests {
                tracing::debug!(
                    cancelled = state.cancelled,
                    "client keeps cancelling requests"
                );
                return;
            }
            if state.in_flight > 0 {
                if rx.changed().await.is_err() {
                    return std::future::pending().await;
                }
                continue;
            }
            let limit = if state.requests == 0 {
                first_request
            } else {
                idle
            };
            let close_at = state.idle_since + limit;
            let quiet_at = Some(state.idle_since + quiet).filter(|at| {
                state.requests > 0 && quieted != Some(state.idle_since) && *at < close_at
            });
            tokio::select! {
                () = tokio::time::sleep_until(quiet_at.unwrap_or(close_at)) => {
                    if quiet_at.is_none() {
                        return;
                    }
                    quieted = Some(state.idle_since);
                    on_quiet();
                }
                changed = rx.changed() => if changed.is_err() {
                    return std::future::pending().await;
                },
            }
        }
    }
}

/// One request in flight; see [`Activity::start`].
pub(crate) struct InFlight {
    state: Arc<watch::Sender<State>>,
    /// Set once the response exists; dropped before that, the request was cancelled.
    responded: bool,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let cancelled = !self.responded;
        self.state.send_modify(|s| {
            s.cancelled += u64::from(cancelled);
            s.in_flight = s.in_flight.saturating_sub(1);
            if s.in_flight == 0 {
                s.idle_since = Instant::now();
            }
        });
    }
}

/// A response body that keeps its request counted as in flight until it is sent or dropped.
pub(crate) struct Tracked<B> {
    inner: B,
    _in_flight: InFlight,
}

/// Marks a response to a request its client abandoned (see [`BodyError::is_client`]): nobody
/// will read it, so its connection counts the request as cancelled.
#[derive(Clone, Copy)]
pub(crate) struct Abandoned;

impl<B> Tracked<B> {
    /// `response` is false for a request the client abandoned, which counts as cancelled.
    pub(crate) fn new(inner: B, mut in_flight: InFlight, response: bool) -> Self {
        in_flight.responded = response;
        Self {
            inner,
            _in_flight: in_flight,
        }
    }
}

impl<B: Body + Unpin> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Why a client's request body ended early.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BodyError {
    #[error("reading the client's request body: {0}")]
    Client(#[from] hyper::Error),
    #[error("the client sent no request body data for {0:?}")]
    Idle(Duration),
}

impl BodyError {
    /// Whether `err` (or one of its causes) is a body the client stopped sending.
    pub(crate) fn is_idle(err: &(dyn StdError + 'static)) -> bool {
        matches!(Self::within(err), Some(BodyError::Idle(_)))
    }

    /// Whether `err` (or one of its causes) is a body the client broke off: it reset the
    /// request (HTTP/2) or closed its connection in the middle of it.
    pub(crate) fn is_client(err: &(dyn StdError + 'static)) -> bool {
        matches!(Self::within(err), Some(BodyError::Client(_)))
    }

    fn within<'a>(err: &'a (dyn StdError + 'static)) -> Option<&'a BodyError> {
        std::iter::successors(Some(err), |e| (*e).source()).find_map(|e| e.downcast_ref())
    }
}

/// The client's request body on its way upstream: cut after `timeout` without a frame, and with
/// `clean_trailers` applied to its trailers.
pub(crate) struct RequestBody {
    inner: Incoming,
    timeout: Duration,
    /// Started when the upstream side waits for data, so a slow origin is not the client's fault.
    wait: Option<Pin<Box<Sleep>>>,
    clean_trailers: fn(&mut HeaderMap),
    /// The tunnel's metrics, which count the bytes received.
    stats: Option<Arc<TunnelStats>>,
    /// The request's own count, when it is logged.
    logged: Option<super::reqlog::BytesIn>,
}

impl RequestBody {
    pub(crate) fn new(
        inner: Incoming,
        timeout: Duration,
        clean_trailers: fn(&mut HeaderMap),
    ) -> Self {
        Self {
            inner,
            timeout,
            wait: None,
            clean_trailers,
            stats: None,
            logged: None,
        }
    }

    /// Counts the body's bytes in `stats`.
    pub(crate) fn counting(mut self, stats: Option<Arc<TunnelStats>>) -> Self {
        self.stats = stats;
        self
    }

    /// Also counts the body's bytes for the request log.
    pub(crate) fn logging(mut self, logged: Option<super::reqlog::BytesIn>) -> Self {
        self.logged = logged;
        self
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.wait = None;
                if let Some(data) = frame.as_ref().and_then(|f| f.as_ref().ok()?.data_ref()) {
                    if let Some(stats) = &this.stats {
                        stats.bytes_in(data.len());
                    }
                    if let Some(logged) = &this.logged {
                        logged
                            .0
                            .fetch_add(data.len() as u64, std::sync::atomic::Ordering::Relaxed);
                    }
                }
                let frame = frame.map(|f| {
                    f.map(|frame| match frame.into_trailers() {
                        Ok(mut trailers) => {
                            (this.clean_trailers)(&mut trailers);
                            Frame::trailers(trailers)
                        }
                        Err(frame) => frame,
                    })
                    .map_err(BodyError::from)
                });
                Poll::Ready(frame)
            }
            Poll::Pending => {
                let timeout = this.timeout;
                let wait = this
                    .wait
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                ready!(wait.as_mut().poll(cx));
                Poll::Ready(Some(Err(BodyError::Idle(timeout))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// An upgraded client connection that records when a byte last went either way.
pub(crate) struct IdleIo<T> {
    inner: T,
    started: Instant,
    /// Milliseconds from `started` to the last byte read or written.
    last: Arc<AtomicU64>,
}

impl<T> IdleIo<T> {
    pub(crate) fn new(inner: T) -> Self {
        Self {
            inner,
            started: Instant::now(),
            last: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Resolves once no byte has gone either way for `timeout`.
    pub(crate) fn idle_for(&self, timeout: Duration) -> impl Future<Output = ()> + 'static {
        let (started, last) = (self.started, self.last.clone());
        async move {
            loop {
                let since = started + Duration::from_millis(last.load(Ordering::Relaxed));
                if since + timeout <= Instant::now() {
                    return;
                }
                tokio::time::sleep_until(since + timeout).await;
            }
        }
    }

    fn touch(&self) {
        let elapsed = self.started.elapsed().as_millis();
        self.last.store(
            u64::try_from(elapsed).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for IdleIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        if buf.filled().len() > before {
            self.touch();
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for IdleIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = ready!(Pin::new(&mut self.inner).poll_write(cx, data))?;
        if written > 0 {
            self.touch();
        }
        Poll::Ready(Ok(written))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;
