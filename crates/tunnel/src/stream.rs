//! A TCP connection through the tunnel, as a tokio `AsyncRead + AsyncWrite`.
//!
//! Reads and writes copy straight between the caller's buffer and the socket's buffers in the
//! peer's smoltcp stack, under the peer's lock; smoltcp's wakers wake the task when data or
//! window arrives. A write to an idle socket (a request, a response) is sent at once from the
//! writing task; a write behind data still in flight, and a read that reopens the window, nudge
//! the peer's driver, which sends in batches.

use crate::peer::Peer;
use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp;
use std::io;
use std::net::SocketAddrV4;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pub struct TunnelStream {
    peer: Arc<Peer>,
    /// `None` once the handle was taken back (see [`TunnelStream::into_handle`]).
    handle: Option<SocketHandle>,
    local: SocketAddrV4,
    remote: SocketAddrV4,
}

impl std::fmt::Debug for TunnelStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TunnelStream({} -> {})", self.local, self.remote)
    }
}

impl TunnelStream {
    pub(crate) fn new(
        peer: Arc<Peer>,
        handle: SocketHandle,
        local: SocketAddrV4,
        remote: SocketAddrV4,
    ) -> Self {
        Self {
            peer,
            handle: Some(handle),
            local,
            remote,
        }
    }

    pub fn local_addr(&self) -> SocketAddrV4 {
        self.local
    }

    pub fn peer_addr(&self) -> SocketAddrV4 {
        self.remote
    }

    /// Gives the socket back without closing it (the caller holds the peer's lock).
    pub(crate) fn into_handle(mut self) -> SocketHandle {
        self.handle.take().expect("handle present until dropped")
    }

    fn handle(&self) -> SocketHandle {
        self.handle.expect("handle present until dropped")
    }

    /// Waits until the connection is established; fails if it is refused or reset.
    pub(crate) async fn established(&self) -> io::Result<()> {
        std::future::poll_fn(|cx| {
            let mut st = self.peer.lock();
            if st.closed {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::NotConnected,
                    "WireGuard peer removed",
                )));
            }
            let socket = st.sockets.get_mut::<tcp::Socket>(self.handle());
            match socket.state() {
                tcp::State::SynSent | tcp::State::SynReceived => {
                    socket.register_send_waker(cx.waker());
                    Poll::Pending
                }
                tcp::State::Closed | tcp::State::TimeWait => Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::ConnectionRefused,
                    format!("connection to {} refused through the tunnel", self.remote),
                ))),
                _ => Poll::Ready(Ok(())),
            }
        })
        .await
    }
}

impl AsyncRead for TunnelStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut st = self.peer.lock();
        let socket = st.sockets.get_mut::<tcp::Socket>(self.handle());
        if socket.can_recv() {
            let queued = socket.recv_queue();
            let reopens_window = queued >= socket.recv_capacity() / 4;
            // Copied straight into the caller's free space, in two pieces where the receive
            // ring wraps. Not through `initialize_unfilled`: that zeroed all of the free space
            // first, on every read, and hyper's read buffer grows to 400 KiB of fresh pages: in a
            // download, the Gateway spent more on zeroing them (page faults included) than on
            // the copy.
            while buf.remaining() > 0 && socket.recv_queue() > 0 {
                let copied = socket.recv(|data| {
                    let n = data.len().min(buf.remaining());
                    buf.put_slice(&data[..n]);
                    (n, n)
                });
                match copied {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) => return Poll::Ready(Err(io::Error::other(e.to_string()))),
                }
            }
            drop(st);
            if reopens_window {
                self.peer.wake.notify_one();
            }
            return Poll::Ready(Ok(()));
        }
        if !socket.may_recv() {
            // FIN received (or the connection is gone): end of stream.
            return Poll::Ready(Ok(()));
        }
        socket.register_recv_waker(cx.waker());
        Poll::Pending
    }
}

impl AsyncWrite for TunnelStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut st = self.peer.lock();
        let socket = st.sockets.get_mut::<tcp::Socket>(self.handle());
        if socket.can_send() {
            let idle = socket.send_queue() == 0;
            let n = socket
                .send_slice(data)
                .map_err(|e| io::Error::other(e.to_string()));
            if idle {
                // The common request/response case: send it now, from this task.
                st.send_from_stream(&self.peer, self.handle());
            } else {
                // More data behind data in flight (a bulk transfer): the driver sends it in
                // batches as the window allows.
                drop(st);
                self.peer.wake.notify_one();
            }
            return Poll::Ready(n);
        }
        if !socket.may_send() {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "tunnel connection closed",
            )));
        }
        socket.register_send_waker(cx.waker());
        Poll::Pending
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.peer
            .lock()
            .sockets
            .get_mut::<tcp::Socket>(self.handle())
            .close();
        self.peer.wake.notify_one();
        Poll::Ready(Ok(()))
    }
}

impl Drop for TunnelStream {
    fn drop(&mut self) {
        let Some(handle) = self.handle.take() else {
            return;
        };
        let mut st = self.peer.lock();
        let socket = st.sockets.get_mut::<tcp::Socket>(handle);
        // Like a kernel socket closed with unread data, reset instead of a graceful FIN: the
        // other side is told at once that nobody will read what it sends.
        if socket.recv_queue() > 0 {
            socket.abort();
        } else {
            socket.close();
        }
        st.orphan(handle);
        drop(st);
        self.peer.wake.notify_one();
    }
}
