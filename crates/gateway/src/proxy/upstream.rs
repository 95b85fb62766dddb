//! Upstream HTTP/1.1 connections to Agents, driven by the task of the request that uses them.
//!
//! hyper-util's pooled client ran each upstream connection as a task of its own: a request went
//! to that task through a channel, its response and every body chunk came back through others,
//! and each request took the pool's lock twice. Here the request's own task polls the upstream
//! connection while it waits for the response head and while the response body streams
//! ([`ResponseBody`]), so a request costs no hand-off between tasks.
//!
//! Where idle connections wait:
//! - [`ConnUpstream`]: a client connection's own slot. The next request of an HTTP/1.1 client
//!   finds the connection its last one used, behind a lock no other client touches. A client
//!   connection quiet for [`HOLD`] gives it to the shared pool: an idle keep-alive client does
//!   not hold a tunnel stream (and the Agent's connection to the app) for itself.
//! - [`UpstreamPool`]: idle connections per Agent target, shared by every client connection:
//!   what a client connection held when it closed, and what concurrent HTTP/2 streams give
//!   back. At most `max_idle_per_target` of them per target; those idle for
//!   [`IDLE_TIMEOUT`], or closed by the Agent, are swept out.
//!
//! WebSocket upgrades take a connection the same way and then run it as a task of its own,
//! which hands the upgraded stream over once the origin has switched protocols.

use std::collections::HashMap;
use std::future::{poll_fn, Future};
use std::io;
use std::net::SocketAddrV4;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::forward::UpstreamBody;
use super::{BoxStream, Dialer};

/// How long an upstream connection may sit idle in the shared pool. Agents see every Gateway
/// connection as a tunnel stream, so idle ones are not free for them either.
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// How long a client connection with no request in flight keeps its upstream connection for its
/// next request, before giving it to the shared pool. A browser's requests for one page come
/// closer together than this; a keep-alive connection left open between pages does not.
pub(crate) const HOLD: Duration = Duration::from_secs(1);

/// How often the shared pool is swept of expired and closed connections.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// The most one read of an upstream connection takes (see [`CappedReads`]).
const READ_MAX: usize = 16 * 1024;

/// One upstream HTTP/1.1 connection: hyper's sender and the connection future that does its I/O,
/// which whoever holds the connection polls.
pub(crate) struct Upstream {
    target: SocketAddrV4,
    sender: http1::SendRequest<UpstreamBody>,
    conn: http1::Connection<TokioIo<CappedReads<BoxStream>>, UpstreamBody>,
    /// The connection future has completed (closed or failed) and must not be polled again.
    done: bool,
    /// Where it goes back to when its client connection closes.
    pool: Weak<UpstreamPool>,
    /// When it was last parked in the shared pool.
    parked_at: Instant,
}

impl Upstream {
    /// Advances the connection's I/O. False once it has ended.
    fn drive(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.done {
            if let Poll::Ready(result) = Pin::new(&mut self.conn).poll(cx) {
                if let Err(err) = result {
                    tracing::debug!(target_addr = %self.target, error = %err, "upstream connection ended");
                }
                self.done = true;
            }
        }
        !self.done
    }

    /// Whether it can take a request now: still open, and idle after its last exchange.
    fn ready(&mut self, cx: &mut Context<'_>) -> bool {
        self.drive(cx) && self.sender.is_ready()
    }

    /// [`Upstream::ready`] outside of any task: for connections being parked or swept, which no
    /// task will be woken for.
    fn ready_now(&mut self) -> bool {
        self.ready(&mut Context::from_waker(Waker::noop()))
    }

    /// Sends `request` and waits for the response head, driving the connection meanwhile.
    pub(crate) async fn send(
        &mut self,
        request: Request<UpstreamBody>,
    ) -> hyper::Result<Response<Incoming>> {
        let mut response = std::pin::pin!(self.sender.send_request(request));
        let (conn, done) = (&mut self.conn, &mut self.done);
        poll_fn(|cx| {
            if let Poll::Ready(result) = response.as_mut().poll(cx) {
                return Poll::Ready(result);
            }
            // What the connection reads may answer the request at once: look again before
            // going to sleep. Once it has ended, hyper fails the request instead.
            if !*done && Pin::new(&mut *conn).poll(cx).is_ready() {
                *done = true;
            }
            response.as_mut().poll(cx)
        })
        .await
    }

    /// Keeps it in the shared pool it came from, for any client connection's next request.
    fn to_pool(self: Box<Self>) {
        if let Some(pool) = self.pool.upgrade() {
            pool.park(self);
        }
    }

    /// Hands the connection to a task of its own, which serves `request` and then, if the
    /// origin switches protocols, gives the upgraded stream to `hyper::upgrade::on`.
    pub(crate) async fn send_upgrade(
        self,
        request: Request<UpstreamBody>,
    ) -> hyper::Result<Response<Incoming>> {
        let Upstream {
            mut sender,
            conn,
            target,
            ..
        } = self;
        tokio::spawn(async move {
            if let Err(err) = conn.with_upgrades().await {
                tracing::debug!(target_addr = %target, error = %err, "upgraded upstream connection ended");
            }
        });
        sender.send_request(request).await
    }
}

/// Idle upstream connections by Agent target, shared by every client connection of a proxy.
pub(crate) struct UpstreamPool {
    dialer: Arc<dyn Dialer>,
    connect_timeout: Duration,
    max_idle_per_target: usize,
    idle: Mutex<Idle>,
}

#[derive(Default)]
struct Idle {
    by_target: HashMap<SocketAddrV4, Vec<Upstream>>,
    /// A sweeper task is running.
    sweeping: bool,
}

impl UpstreamPool {
    pub(crate) fn new(
        dialer: Arc<dyn Dialer>,
        connect_timeout: Duration,
        max_idle_per_target: usize,
    ) -> Arc<Self> {
        Arc::new(Self {
            dialer,
            connect_timeout,
            max_idle_per_target,
            idle: Mutex::new(Idle::default()),
        })
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, Idle> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A connection to `target` that can take a request now: the client connection's own if it
    /// has one there, else an idle one from the pool, else a new one. Only opening a new one
    /// fails (the Agent cannot be reached, or not within the connect timeout).
    pub(crate) async fn lease(
        self: &Arc<Self>,
        home: &ConnUpstream,
        target: SocketAddrV4,
    ) -> io::Result<Box<Upstream>> {
        if let Some(mut upstream) = home.take(target) {
            if poll_fn(|cx| Poll::Ready(upstream.ready(cx))).await {
                return Ok(upstream);
            }
        }
        while let Some(mut upstream) = self.take(target) {
            if poll_fn(|cx| Poll::Ready(upstream.ready(cx))).await {
                return Ok(upstream);
            }
        }
        self.open(target).await
    }

    fn take(&self, target: SocketAddrV4) -> Option<Box<Upstream>> {
        let mut idle = self.idle();
        let parked = idle.by_target.get_mut(&target)?;
        let upstream = parked.pop();
        if parked.is_empty() {
            idle.by_target.remove(&target);
        }
        upstream.map(Box::new)
    }

    async fn open(self: &Arc<Self>, target: SocketAddrV4) -> io::Result<Box<Upstream>> {
        let timeout = self.connect_timeout;
        let stream = match tokio::time::timeout(timeout, self.dialer.dial(target)).await {
            Ok(stream) => stream?,
            Err(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("dialing {target} timed out after {timeout:?}"),
                ))
            }
        };
        // An HTTP/1.1 handshake sends nothing: it only sets the connection up.
        let (sender, conn) = http1::handshake(TokioIo::new(CappedReads(stream)))
            .await
            .map_err(io::Error::other)?;
        Ok(Box::new(Upstream {
            target,
            sender,
            conn,
            done: false,
            pool: Arc::downgrade(self),
            parked_at: Instant::now(),
        }))
    }

    /// Keeps `upstream` for a later request, if it can take one and its target has room.
    fn park(self: &Arc<Self>, mut upstream: Box<Upstream>) {
        if !upstream.ready_now() {
            return;
        }
        upstream.parked_at = Instant::now();
        let mut idle = self.idle();
        // Parked connections need a sweeper, which needs a runtime: a body dropped outside of
        // one (at shutdown) closes its connection instead.
        let start_sweeper = if idle.sweeping {
            None
        } else {
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => Some(runtime),
                Err(_) => return,
            }
        };
        let parked = idle.by_target.entry(upstream.target).or_default();
        if parked.len() >= self.max_idle_per_target {
            drop(idle);
            return; // closed here, outside the lock
        }
        parked.push(*upstream);
        if let Some(runtime) = start_sweeper {
            idle.sweeping = true;
            runtime.spawn(sweep(Arc::downgrade(self)));
        }
    }

    /// Drops the connections idle for too long or closed by the Agent. False once the pool is
    /// empty, which ends the sweeper until something is parked again.
    fn sweep(&self) -> bool {
        let mut closed = Vec::new();
        let mut idle = self.idle();
        idle.by_target.retain(|_, parked| {
            closed.extend(parked.extract_if(.., |upstream| {
                upstream.parked_at.elapsed() >= IDLE_TIMEOUT || !upstream.ready_now()
            }));
            !parked.is_empty()
        });
        let active = !idle.by_target.is_empty();
        idle.sweeping = active;
        drop(idle);
        drop(closed);
        active
    }

    /// How many connections wait in the shared pool (for tests).
    #[cfg(test)]
    fn parked(&self) -> usize {
        self.idle().by_target.values().map(Vec::len).sum()
    }
}

async fn sweep(pool: Weak<UpstreamPool>) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        match pool.upgrade() {
            Some(pool) if pool.sweep() => {}
            _ => return,
        }
    }
}

/// A client connection's own upstream connection, kept between its requests. When the client
/// connection closes, the connection goes to the shared pool.
#[derive(Default)]
pub(crate) struct ConnUpstream {
    slot: Mutex<Option<Box<Upstream>>>,
}

impl ConnUpstream {
    fn slot(&self) -> std::sync::MutexGuard<'_, Option<Box<Upstream>>> {
        self.slot.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn take(&self, target: SocketAddrV4) -> Option<Box<Upstream>> {
        let mut slot = self.slot();
        if slot.as_ref().is_some_and(|u| u.target == target) {
            slot.take()
        } else {
            None
        }
    }

    /// Takes `upstream` back after a request. A second one (concurrent HTTP/2 streams, or a
    /// request to another target) goes to the shared pool.
    fn give_back(&self, upstream: Box<Upstream>) {
        if upstream.done {
            return;
        }
        let mut slot = self.slot();
        if slot.is_none() {
            *slot = Some(upstream);
            return;
        }
        drop(slot);
        upstream.to_pool();
    }

    /// Gives the connection it keeps, if any, to the shared pool.
    pub(crate) fn release(&self) {
        let upstream = self.slot().take();
        if let Some(upstream) = upstream {
            upstream.to_pool();
        }
    }
}

impl Drop for ConnUpstream {
    fn drop(&mut self) {
        self.release();
    }
}

/// An origin's response body. One that came through a leased connection drives that connection
/// while it streams, and gives it back to its client connection once it has ended; a body
/// dropped before its end closes the connection, whose state is then mid-message.
pub(crate) struct ResponseBody {
    body: Incoming,
    lease: Option<(Box<Upstream>, Arc<ConnUpstream>)>,
}

impl ResponseBody {
    /// A body whose connection runs as a task of its own (upgrades).
    pub(crate) fn detached(body: Incoming) -> Self {
        Self { body, lease: None }
    }

    /// A body that reads through `upstream`, which goes back to `home` once the body has ended.
    pub(crate) fn leased(body: Incoming, upstream: Box<Upstream>, home: Arc<ConnUpstream>) -> Self {
        Self {
            body,
            lease: Some((upstream, home)),
        }
    }

    fn give_back(&mut self) {
        if let Some((upstream, home)) = self.lease.take() {
            home.give_back(upstream);
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        // hyper stops polling a body that says it has ended, so its end is often seen here.
        if self.body.is_end_stream() {
            self.give_back();
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let mut polled = Pin::new(&mut this.body).poll_frame(cx);
        if polled.is_pending() {
            if let Some((upstream, _)) = &mut this.lease {
                // Read what the connection has, then look again: data or the end may be there.
                upstream.drive(cx);
                polled = Pin::new(&mut this.body).poll_frame(cx);
            }
        }
        match &polled {
            Poll::Ready(None) => this.give_back(),
            Poll::Ready(Some(Ok(_))) if this.body.is_end_stream() => this.give_back(),
            Poll::Ready(Some(Err(_))) => this.lease = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// An upstream connection whose reads take at most [`READ_MAX`] bytes each.
///
/// hyper sizes its read buffer to what reads return, up to 400 KiB, and a response body's
/// chunks are split off that buffer, so while they are on their way to the client each new read
/// takes a new block. The allocator gives every block of 64 KiB or more fresh pages of its own
/// (kakuremichi's `allocator` module), so a download took a page fault, and the kernel zeroed a
/// page, for every 4 KiB it read. Capped reads keep the buffer at 32 KiB, in blocks the allocator
/// reuses. A response head larger than a read still arrives: hyper reads on until the head is
/// complete.
pub(crate) struct CappedReads<T>(pub(crate) T);

impl<T: AsyncRead + Unpin> AsyncRead for CappedReads<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if buf.remaining() <= READ_MAX {
            return Pin::new(&mut self.0).poll_read(cx, buf);
        }
        let mut part = buf.take(READ_MAX);
        std::task::ready!(Pin::new(&mut self.0).poll_read(cx, &mut part))?;
        let n = part.filled().len();
        // SAFETY: the inner read filled, so initialised, the first `n` bytes of `buf`'s
        // unfilled space, which `part` is a view of.
        unsafe { buf.assume_init(n) };
        buf.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for CappedReads<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;
