//! Reading a TLS ClientHello without answering it: the server name decides whether the
//! connection is ours to terminate (an `http` tunnel) or a `tls` tunnel's to splice still
//! encrypted. The bytes read are kept and replayed ([`Prefixed`]) to whichever side takes the
//! connection. Parsing is rustls' own ClientHello reader ([`rustls::server::Acceptor`]).

use bytes::{Buf, Bytes, BytesMut};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// Most bytes read while looking for the end of a ClientHello (a post-quantum key share makes
/// one ~1.8 KB; TLS allows 16 KB per record). Beyond, the connection is handed on as is.
pub(crate) const MAX_HELLO_BYTES: usize = 16 * 1024;

/// What the first bytes of a connection said.
pub(crate) struct Hello {
    /// The SNI, lower case, when the ClientHello is complete and names one.
    pub server_name: Option<String>,
    /// Every byte read from the connection so far, to be replayed.
    pub consumed: Bytes,
}

/// Reads from `io` until a whole ClientHello is in (or it is not TLS, or too long, or the
/// client closes). Only the SNI is kept; whoever takes the connection sees `consumed` first.
pub(crate) async fn read_client_hello<S: AsyncRead + Unpin>(io: &mut S) -> io::Result<Hello> {
    let mut acceptor = rustls::server::Acceptor::default();
    let mut consumed = BytesMut::with_capacity(2048);
    let mut chunk = [0u8; 2048];
    loop {
        let n = io.read(&mut chunk).await?;
        if n == 0 {
            return Ok(Hello {
                server_name: None,
                consumed: consumed.freeze(),
            });
        }
        consumed.extend_from_slice(&chunk[..n]);
        let mut fresh = &chunk[..n];
        while !fresh.is_empty() {
            if !matches!(acceptor.read_tls(&mut fresh), Ok(n) if n > 0) {
                // Not TLS as rustls reads it: let the real handshake say so.
                return Ok(Hello {
                    server_name: None,
                    consumed: consumed.freeze(),
                });
            }
        }
        match acceptor.accept() {
            Ok(Some(accepted)) => {
                let name = accepted
                    .client_hello()
                    .server_name()
                    .map(|n| n.to_ascii_lowercase());
                return Ok(Hello {
                    server_name: name,
                    consumed: consumed.freeze(),
                });
            }
            Ok(None) if consumed.len() < MAX_HELLO_BYTES => continue,
            Ok(None) | Err(_) => {
                return Ok(Hello {
                    server_name: None,
                    consumed: consumed.freeze(),
                })
            }
        }
    }
}

/// A connection whose first bytes were already read: they are served again before the rest.
pub(crate) struct Prefixed<S> {
    prefix: Bytes,
    inner: S,
}

impl<S> Prefixed<S> {
    pub(crate) fn new(prefix: Bytes, inner: S) -> Self {
        Self { prefix, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// A real ClientHello, as a rustls client sends it for `name`.
    fn client_hello(name: &str) -> Vec<u8> {
        let roots = rustls::RootCertStore::empty();
        let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from(name.to_string()).unwrap();
        let mut conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
        let mut out = Vec::new();
        conn.write_tls(&mut out).unwrap();
        out
    }

    #[tokio::test]
    async fn finds_the_name_and_keeps_every_byte_even_when_split() {
        let hello = client_hello("DB.Example.com");
        let (mut client, mut server) = tokio::io::duplex(64);
        let sent = hello.clone();
        tokio::spawn(async move {
            // Dribbled in small pieces, as a slow client would.
            for piece in sent.chunks(7) {
                client.write_all(piece).await.unwrap();
            }
            client.write_all(b"after").await.unwrap();
            std::future::pending::<()>().await;
        });
        let got = read_client_hello(&mut server).await.unwrap();
        assert_eq!(got.server_name.as_deref(), Some("db.example.com"));
        assert!(got.consumed.starts_with(&hello));
        let mut replay = Prefixed::new(got.consumed.clone(), server);
        let mut all = vec![0u8; hello.len() + 5];
        replay.read_exact(&mut all).await.unwrap();
        assert_eq!(&all[..hello.len()], &hello[..]);
        assert_eq!(&all[hello.len()..], b"after");
    }

    #[tokio::test]
    async fn not_tls_or_closed_gives_no_name_and_the_bytes() {
        let (mut client, mut server) = tokio::io::duplex(64);
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let got = read_client_hello(&mut server).await.unwrap();
        assert_eq!(got.server_name, None);
        assert_eq!(&got.consumed[..], b"GET / HTTP/1.1\r\n\r\n");
        let (client, mut server) = tokio::io::duplex(64);
        drop(client);
        let got = read_client_hello(&mut server).await.unwrap();
        assert_eq!(got.server_name, None);
        assert!(got.consumed.is_empty());
    }
}
