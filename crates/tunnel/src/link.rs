//! WireGuard over a byte stream: the fallback path when UDP between an Agent and a Gateway is
//! blocked. The stream itself (TCP, TLS, anything ordered and reliable) is opened by the caller;
//! this module carries framed datagrams (see [`crate::frame`]) over it, both ways.
//!
//! A [`StreamLink`] is what a peer sends to when it uses a stream instead of its UDP endpoint.
//! Its task reads frames and hands each to the device's routing, exactly like a UDP datagram, so
//! the noise sessions do not know which path a packet took. Outbound datagrams arrive as ready
//! framed batches through a bounded queue (a full queue drops them, like a busy NIC) and leave
//! in as few writes as possible.
//!
//! A link ends when its stream fails or closes, when it is closed locally, when nothing arrives
//! for [`IDLE_TIMEOUT`] (keepalives flow every 15 s), or when no authenticated WireGuard packet
//! arrived on it within [`AUTH_DEADLINE`] (a scanner or a stranger holding a connection open).
//! Streams we accept have less time, and slots of their own until they authenticate: see
//! [`crate::admission`].

use crate::admission::{self, StreamSlots};
use crate::device::{Device, Inner};
use crate::frame::{self, MAX_FRAME};
use crate::PublicKey;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Framed batches waiting for the writer; beyond this, batches are dropped.
const WRITE_QUEUE: usize = 256;
/// Most bytes gathered into one write.
const WRITE_CHUNK: usize = 64 * 1024;
/// Read buffer of a stream. Small: a Gateway may hold many streams that carry little.
const READ_BUFFER: usize = 16 * 1024;
/// A stream with no frame at all for this long is dead (keepalives are sent every 15 s).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// A stream we opened must carry an authenticated WireGuard packet within this time.
pub const AUTH_DEADLINE: Duration = Duration::from_secs(15);

/// Why a stream link ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEnd {
    /// Closed on this side: the peer went back to UDP, was removed, or the device stopped.
    Closed,
    /// The other side closed the stream.
    Eof,
    /// Nothing arrived for 60 s (keepalives flow every 15 s), or nothing authenticated within
    /// 15 s (5 s on an accepted stream).
    Timeout,
    /// The stream failed or carried a bad frame.
    Error(String),
}

impl std::fmt::Display for StreamEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StreamEnd::Closed => f.write_str("closed locally"),
            StreamEnd::Eof => f.write_str("closed by the other side"),
            StreamEnd::Timeout => f.write_str("timed out"),
            StreamEnd::Error(e) => write!(f, "failed: {e}"),
        }
    }
}

/// A stream this side opened to carry one peer's WireGuard traffic (see
/// [`Device::attach_stream`]). Dropping it closes the stream.
pub struct AttachedStream {
    link: Arc<StreamLink>,
    task: JoinHandle<StreamEnd>,
    ended: Option<StreamEnd>,
}

impl AttachedStream {
    /// Waits until the stream ends and says why. [`StreamEnd::Closed`] after a switch back to
    /// UDP (the peer's [`crate::PeerStatus::stream`] is then `None`). Cancel-safe, and may be
    /// called again after the end.
    pub async fn closed(&mut self) -> StreamEnd {
        if let Some(end) = &self.ended {
            return end.clone();
        }
        let end = (&mut self.task).await.unwrap_or(StreamEnd::Closed);
        self.ended = Some(end.clone());
        end
    }
}

impl Drop for AttachedStream {
    fn drop(&mut self) {
        self.link.close();
    }
}

impl Device {
    /// Carries `peer`'s WireGuard traffic over `stream`, which this side opened to the peer
    /// (an Agent whose UDP gets no answer), and handshakes over it at once. The peer returns to
    /// UDP, closing the stream, when a handshake sent with [`Device::probe_udp`] is answered
    /// over UDP; if the stream ends first, the peer is back on UDP too.
    pub fn attach_stream<S>(
        &self,
        peer: &PublicKey,
        stream: S,
        remote: SocketAddr,
    ) -> io::Result<AttachedStream>
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let entry = self
            .inner
            .peers
            .load()
            .by_key
            .get(peer)
            .cloned()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such WireGuard peer"))?;
        let (link, task) = spawn(
            stream,
            remote,
            Arc::downgrade(&self.inner),
            &self.inner.streams,
            None,
        )
        .ok_or_else(|| io::Error::other("stream refused"))?;
        entry.peer.attach(link.clone());
        Ok(AttachedStream {
            link,
            task,
            ended: None,
        })
    }

    /// Serves a stream another node opened to carry its WireGuard traffic (a Gateway accepting
    /// an Agent's fallback). Its datagrams are routed like UDP ones; the peer that authenticates
    /// one uses the stream from then on, until it is heard over UDP again or the stream ends.
    /// Until its first authenticated packet, the stream holds only a waiting slot (see
    /// [`crate::admission`]); one from a source that holds too many is closed at once.
    pub fn accept_stream<S>(&self, stream: S, remote: SocketAddr)
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let slots = self.inner.stream_slots.clone();
        let spawned = spawn(
            stream,
            remote,
            Arc::downgrade(&self.inner),
            &self.inner.streams,
            Some(slots),
        );
        if spawned.is_none() {
            tracing::debug!(%remote, "too many unauthenticated WireGuard streams from this address; refused one");
        }
    }

    /// Sends `peer` a handshake initiation over UDP even while it uses a stream, to find out
    /// whether UDP works again.
    pub fn probe_udp(&self, peer: &PublicKey) {
        if let Some(e) = self.inner.peers.load().by_key.get(peer) {
            e.peer.probe_udp();
        }
    }
}

/// One stream carrying WireGuard datagrams.
pub(crate) struct StreamLink {
    pub id: u64,
    pub remote: SocketAddr,
    tx: mpsc::Sender<Vec<u8>>,
    cancel: CancellationToken,
    /// Whether a peer authenticated a packet from this stream ([`admission::PENDING`], ...).
    pub admission: AtomicU8,
    /// The slots of an accepted stream; `None` for one this side opened.
    slots: Option<Arc<StreamSlots>>,
}

impl std::fmt::Debug for StreamLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StreamLink#{}({})", self.id, self.remote)
    }
}

impl StreamLink {
    pub fn is_closed(&self) -> bool {
        self.cancel.is_cancelled() || self.tx.is_closed()
    }

    pub fn close(&self) {
        self.cancel.cancel();
    }

    /// Queues framed bytes (one or more frames) for the writer; drops them when it is behind.
    pub fn send_framed(&self, framed: Vec<u8>) {
        if self.tx.try_send(framed).is_err() {
            tracing::trace!(remote = %self.remote, "WireGuard stream queue full; dropped a batch");
        }
    }

    /// Frames and queues one datagram (a handshake message) at once.
    pub fn send(&self, datagram: &[u8]) {
        let mut framed = Vec::with_capacity(datagram.len() + 2);
        frame::encode(&mut framed, datagram);
        self.send_framed(framed);
    }

    pub fn same(&self, other: &StreamLink) -> bool {
        self.id == other.id
    }

    /// Called for every authenticated packet from this stream: false when the stream may not
    /// carry the peer (its waiting slot is gone, or every Agent slot is taken); it is closed.
    pub fn authenticate(&self) -> bool {
        if self.admission.load(Ordering::Acquire) == admission::AUTHENTICATED {
            return true;
        }
        let admitted = match &self.slots {
            Some(slots) => slots.promote(self),
            None => self
                .admission
                .compare_exchange(
                    admission::PENDING,
                    admission::AUTHENTICATED,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_ok(),
        };
        if !admitted {
            self.close();
        }
        admitted
    }
}

/// Starts carrying WireGuard over `io`; the task's result says why the link ended. With
/// `slots` (an accepted stream), `None` when they have no room for it.
pub(crate) fn spawn<S>(
    io: S,
    remote: SocketAddr,
    device: Weak<Inner>,
    parent: &CancellationToken,
    slots: Option<Arc<StreamSlots>>,
) -> Option<(Arc<StreamLink>, tokio::task::JoinHandle<StreamEnd>)>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    static NEXT_ID: AtomicU64 = AtomicU64::new(1);
    let (tx, rx) = mpsc::channel(WRITE_QUEUE);
    let link = Arc::new(StreamLink {
        id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
        remote,
        tx,
        cancel: parent.child_token(),
        admission: AtomicU8::new(admission::PENDING),
        slots,
    });
    // Before the task runs: its first packet may authenticate at once.
    if let Some(slots) = &link.slots {
        if !slots.admit(&link, remote) {
            return None;
        }
    }
    let task = tokio::spawn(run(io, link.clone(), rx, device));
    Some((link, task))
}

async fn run<S>(
    io: S,
    link: Arc<StreamLink>,
    rx: mpsc::Receiver<Vec<u8>>,
    device: Weak<Inner>,
) -> StreamEnd
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (reader, writer) = tokio::io::split(io);
    let deadline = match link.slots {
        Some(_) => admission::PENDING_DEADLINE,
        None => AUTH_DEADLINE,
    };
    let auth_deadline = tokio::time::sleep(deadline);
    tokio::pin!(auth_deadline);
    let read = read_loop(reader, link.clone(), device);
    tokio::pin!(read);
    let write = write_loop(writer, rx);
    tokio::pin!(write);
    let mut auth_checked = false;
    let end = loop {
        tokio::select! {
            end = &mut read => break end,
            result = &mut write => break match result {
                Ok(()) => StreamEnd::Closed,
                Err(e) => StreamEnd::Error(e.to_string()),
            },
            () = link.cancel.cancelled() => break StreamEnd::Closed,
            () = &mut auth_deadline, if !auth_checked => {
                if link.admission.load(Ordering::Acquire) != admission::AUTHENTICATED {
                    break StreamEnd::Timeout;
                }
                auth_checked = true;
            }
        }
    };
    // Peers check this before sending, and fall back to UDP.
    link.cancel.cancel();
    if let Some(slots) = &link.slots {
        slots.release(&link);
    }
    tracing::debug!(remote = %link.remote, %end, "WireGuard stream ended");
    end
}

async fn read_loop<R: AsyncRead + Unpin>(
    reader: R,
    link: Arc<StreamLink>,
    device: Weak<Inner>,
) -> StreamEnd {
    let mut reader = BufReader::with_capacity(READ_BUFFER, reader);
    let mut buf = Box::new([0u8; MAX_FRAME]);
    loop {
        let n = match tokio::time::timeout(IDLE_TIMEOUT, frame::read(&mut reader, &mut buf)).await {
            Err(_) => return StreamEnd::Timeout,
            Ok(Ok(Some(n))) => n,
            Ok(Ok(None)) => return StreamEnd::Eof,
            Ok(Err(e)) => {
                if e.kind() == io::ErrorKind::InvalidData {
                    tracing::warn!(remote = %link.remote, error = %e, "closing a WireGuard stream that sent a bad frame");
                }
                return StreamEnd::Error(e.to_string());
            }
        };
        let Some(device) = device.upgrade() else {
            return StreamEnd::Closed;
        };
        device.deliver(crate::peer::Source::Stream(link.clone()), &buf[..n], n);
    }
}

async fn write_loop<W: AsyncWrite>(writer: W, mut rx: mpsc::Receiver<Vec<u8>>) -> io::Result<()> {
    tokio::pin!(writer);
    // Grows to what the traffic needs; an idle stream holds no large buffer.
    let mut chunk = Vec::new();
    while let Some(first) = rx.recv().await {
        chunk.clear();
        chunk.extend_from_slice(&first);
        // Everything already queued leaves in one write (one TLS record where it fits).
        while chunk.len() < WRITE_CHUNK {
            match rx.try_recv() {
                Ok(more) => chunk.extend_from_slice(&more),
                Err(_) => break,
            }
        }
        writer.write_all(&chunk).await?;
        writer.flush().await?;
    }
    Ok(())
}
