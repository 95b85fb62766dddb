//! Adapts a [`Dialer`] into a connector for hyper-util's pooled client, so upstream HTTP/1.1
//! connections to each Agent target are kept alive and reused instead of dialling a new tunnel
//! stream per request.

use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;

use super::{BoxStream, Dialer};

/// A `tower_service::Service<Uri>` that dials `http://<ipv4>:<port>` through the [`Dialer`],
/// bounded by the connect timeout so a silent tunnel becomes a 502 rather than a hang.
#[derive(Clone)]
pub(crate) struct DialConnector {
    dialer: Arc<dyn Dialer>,
    timeout: Duration,
}

impl DialConnector {
    pub(crate) fn new(dialer: Arc<dyn Dialer>, timeout: Duration) -> Self {
        Self { dialer, timeout }
    }
}

type DialFuture = Pin<Box<dyn Future<Output = io::Result<TunnelConn>> + Send>>;

impl tower_service::Service<Uri> for DialConnector {
    type Response = TunnelConn;
    type Error = io::Error;
    type Future = DialFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> DialFuture {
        let dialer = self.dialer.clone();
        let timeout = self.timeout;
        Box::pin(async move {
            let addr = target_addr(&uri)?;
            match tokio::time::timeout(timeout, dialer.dial(addr)).await {
                Ok(stream) => Ok(TunnelConn(TokioIo::new(stream?))),
                Err(_) => Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("dialing {addr} timed out after {timeout:?}"),
                )),
            }
        })
    }
}

/// The upstream URIs are built by the proxy from a route, so anything but `<ipv4>:<port>` here is
/// a bug; it still fails the request rather than panicking.
fn target_addr(uri: &Uri) -> io::Result<SocketAddrV4> {
    let invalid = || {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad upstream uri {uri}"),
        )
    };
    let ip: Ipv4Addr = uri
        .host()
        .and_then(|h| h.parse().ok())
        .ok_or_else(invalid)?;
    let port = uri.port_u16().ok_or_else(invalid)?;
    Ok(SocketAddrV4::new(ip, port))
}

/// A dialled tunnel stream as hyper's client wants it: hyper I/O traits plus [`Connection`].
pub(crate) struct TunnelConn(TokioIo<BoxStream>);

impl Connection for TunnelConn {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl Read for TunnelConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl Write for TunnelConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }
}
