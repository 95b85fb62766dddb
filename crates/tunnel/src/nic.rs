//! The virtual network card between one peer's smoltcp stack and its WireGuard session.
//!
//! Inbound: decrypted IP packets are queued in `rx` and handed to smoltcp on the next poll.
//! Outbound: smoltcp writes an IP packet into a scratch buffer, which is encrypted straight into
//! a second scratch buffer and queued in a batch, which leaves in one non-blocking send call
//! (`sendmmsg` with GSO on Linux) when the driver's poll ends or a pass moved bulk data, or a
//! little later for a message a connection's own task sent (see [`Nic::flush_soon`]), unless
//! [`EARLY_FLUSH_DATAGRAMS`] are queued already. A full
//! socket buffer drops packets, exactly as a NIC would; TCP retransmits. No per-packet
//! allocation on the way out.
//!
//! Where UDP is blocked, the peer's path is a stream instead ([`StreamLink`]): sealed datagrams
//! are then framed into one batch per poll and queued to the stream's writer. The UDP path does
//! not change; it only checks first whether a stream is in use.
//!
//! Every datagram that leaves is counted in the peer's [`Counters`] (one relaxed atomic add),
//! and so is a change of path, for the metrics.

use crate::frame;
use crate::link::StreamLink;
use crate::pacing::Pacer;
use crate::peer::{Counters, Source, StreamPath};
use crate::udp::{Batch, Udp, MAX_BATCH_BYTES};
use boringtun::noise::{Tunn, TunnResult};
use smoltcp::phy::{self, Checksum, ChecksumCapabilities, DeviceCapabilities, Medium};
use smoltcp::time::Instant;
use std::collections::VecDeque;
use std::net::{SocketAddr, SocketAddrV4};
use std::sync::Arc;

/// MTU inside the tunnel: the WireGuard default, leaving room for IPv6 + UDP + WireGuard headers
/// on a 1500-byte link.
pub const TUNNEL_MTU: usize = 1420;

/// Largest WireGuard datagram we build: an MTU-sized packet plus the 32-byte data overhead, and
/// never below a handshake initiation (148 bytes).
pub const MAX_DATAGRAM: usize = TUNNEL_MTU + 32 + 16;

/// A packet within this many bytes of the MTU counts as full size (TCP options vary).
const FULL_SLACK: usize = 64;

/// Whether an IP packet of `len` bytes is full size: bulk data rather than a message or an ACK.
fn full_size(len: usize) -> bool {
    len + FULL_SLACK >= TUNNEL_MTU
}

/// Bound on decrypted packets waiting for smoltcp, so a flood cannot grow memory.
const RX_QUEUE_LIMIT: usize = 4096;

/// Queued datagrams from which a message leaves at once instead of in a deferred flush (see
/// [`Nic::flush_soon`]): a long burst of messages goes out in parts, so the peer, and the
/// chain behind it, start on the first ones while this thread still works on the rest.
pub const EARLY_FLUSH_DATAGRAMS: usize = 8;

pub(crate) struct Nic {
    pub tunn: Tunn,
    /// The peer's UDP endpoint: configured, or learned from its packets (roaming).
    pub endpoint: Option<SocketAddr>,
    pub udp: Arc<Udp>,
    /// Bytes sent and the path in use, for [`crate::Device::peer_stats`].
    counters: Arc<Counters>,
    /// The stream carrying this peer's traffic instead of UDP, while one is in use.
    stream: Option<StreamPath>,
    /// Framed datagrams for `stream`, queued to its writer on [`Nic::flush`].
    stream_batch: Vec<u8>,
    /// Datagrams in `stream_batch`.
    stream_datagrams: usize,
    pub rx: VecDeque<Vec<u8>>,
    /// IP packets handed to this NIC by the stack (wrapping); tells whether a poll sent anything.
    pub transmitted: u64,
    /// Of those, full-size packets: a socket that sent one may have more queued behind it.
    pub transmitted_full: u64,
    /// Full-size IP packets the stack took from `rx` (wrapping): bulk data arrived.
    pub received_full: u64,
    /// UDP send calls those packets took (a batch is one): packets per send shows the batching.
    pub udp_sends: u64,
    /// Flushes left to the peer's task by [`Nic::flush_soon`] (wrapping): batches of lone
    /// messages. Bulk data and its ACKs leave without one.
    pub deferred_flushes: u64,
    tx_plain: Vec<u8>,
    tx_sealed: Vec<u8>,
    /// Sealed datagrams waiting to leave together (see [`Nic::flush`]).
    batch: Batch,
    /// A flush of what is queued is on its way (see [`Nic::flush_soon`]).
    flush_due: bool,
    /// Holds datagrams back while the peer drops bursts.
    pub pacer: Pacer,
    /// The stack's clock at the pass that asked for the latest token.
    now: Instant,
}

impl Nic {
    pub fn new(
        tunn: Tunn,
        endpoint: Option<SocketAddr>,
        udp: Arc<Udp>,
        counters: Arc<Counters>,
    ) -> Self {
        Self {
            tunn,
            endpoint,
            udp,
            counters,
            stream: None,
            stream_batch: Vec::new(),
            stream_datagrams: 0,
            rx: VecDeque::new(),
            transmitted: 0,
            transmitted_full: 0,
            received_full: 0,
            udp_sends: 0,
            deferred_flushes: 0,
            tx_plain: vec![0; TUNNEL_MTU],
            tx_sealed: vec![0; MAX_DATAGRAM],
            batch: Batch::new(),
            flush_due: false,
            pacer: Pacer::default(),
            now: Instant::ZERO,
        }
    }

    /// Queues a decrypted packet for smoltcp; false when the queue is full (packet dropped).
    pub fn push_rx(&mut self, packet: &[u8]) -> bool {
        if self.rx.len() >= RX_QUEUE_LIMIT {
            return false;
        }
        self.rx.push_back(packet.to_vec());
        true
    }

    /// The stream in use, if any; a stream that ended is dropped here, which puts the peer back
    /// on its UDP endpoint.
    pub fn stream(&mut self) -> Option<&StreamPath> {
        if let Some(ended) = self.stream.take_if(|s| s.link().is_closed()) {
            self.stream_batch.clear();
            self.stream_datagrams = 0;
            self.counters.set_stream(None);
            tracing::info!(stream = %ended.link().remote, udp = ?self.endpoint, "WireGuard stream ended; peer back on UDP");
        }
        self.stream.as_ref()
    }

    /// Puts `stream` (a stream, or `None` for UDP) in place of the stream in use, and closes
    /// the one it replaces if this side opened it: the peer leaves it for good.
    pub fn set_stream(&mut self, stream: Option<StreamPath>) {
        self.counters
            .set_stream(stream.as_ref().map(|s| s.link().clone()));
        if let Some(StreamPath::Opened(left)) = std::mem::replace(&mut self.stream, stream) {
            left.close();
        }
    }

    /// Points the peer's UDP path at `endpoint` (configured, or learned from its packets).
    pub fn set_endpoint(&mut self, endpoint: SocketAddr) {
        self.endpoint = Some(endpoint);
        self.counters.set_endpoint();
    }

    /// Counts a datagram received from the peer and accepted by its session.
    pub fn received(&self, bytes: usize) {
        self.counters.received(bytes);
    }

    /// A handshake with the peer completed just now (a session was established).
    pub fn handshaken(&self) {
        self.counters.handshake_completed();
    }

    /// Whether `link` is the stream in use (even one that has just ended).
    pub fn is_on(&self, link: &StreamLink) -> bool {
        self.stream.as_ref().is_some_and(|s| s.link().same(link))
    }

    /// True when packets can be sent somewhere: a UDP endpoint or a live stream.
    pub fn has_path(&mut self) -> bool {
        self.stream().is_some() || self.endpoint.is_some()
    }

    /// Sends an already-sealed WireGuard datagram (a handshake message) at once, on the
    /// current path.
    pub fn send_datagram(&mut self, datagram: &[u8]) {
        if let Some(stream) = self.stream() {
            stream.link().send(datagram);
        } else if let Some(to) = self.endpoint {
            self.udp.send(datagram, to);
        } else {
            return;
        }
        self.counters.sent(datagram.len());
    }

    /// Answers a datagram on the path it came from.
    pub fn reply(&self, to: &Source, datagram: &[u8]) {
        self.counters.sent(datagram.len());
        match to {
            Source::Udp(addr) => self.udp.send(datagram, *addr),
            Source::Stream(link) => link.send(datagram),
        }
    }

    /// Sends over UDP even while a stream is in use: probes whether UDP works again.
    pub fn send_udp(&self, datagram: &[u8]) {
        if let Some(to) = self.endpoint {
            self.udp.send(datagram, to);
            self.counters.sent(datagram.len());
        }
    }

    /// Encrypts one IP packet and queues it for the next [`Nic::flush`].
    pub fn seal_and_send(&mut self, len: usize) {
        self.transmitted = self.transmitted.wrapping_add(1);
        if full_size(len) {
            self.transmitted_full = self.transmitted_full.wrapping_add(1);
        }
        let sealed = match self
            .tunn
            .encapsulate(&self.tx_plain[..len], &mut self.tx_sealed)
        {
            TunnResult::WriteToNetwork(d) => d.len(),
            TunnResult::Err(e) => {
                tracing::debug!(error = ?e, "WireGuard encapsulate failed");
                return;
            }
            _ => return,
        };
        if self.stream.is_some() && self.stream().is_some() {
            self.counters.sent(sealed);
            frame::encode(&mut self.stream_batch, &self.tx_sealed[..sealed]);
            self.stream_datagrams += 1;
            if self.stream_batch.len() >= MAX_BATCH_BYTES {
                self.flush();
            }
            return;
        }
        let Some(to) = self.endpoint else { return };
        self.counters.sent(sealed);
        let datagram = &self.tx_sealed[..sealed];
        if !self.batch.push(datagram, to) {
            let calls = self.udp.send_batch(&mut self.batch);
            self.udp_sends = self.udp_sends.wrapping_add(calls);
            self.batch.push(datagram, to);
        }
    }

    /// Encrypts and sends one UDP datagram of ours (see [`crate::datagram`]) at once, after whatever
    /// the stack had queued. `payload` fits one packet (the caller checked).
    pub fn send_datagram_to(&mut self, src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8]) {
        let len = crate::datagram::emit(&mut self.tx_plain, src, dst, payload);
        self.seal_and_send(len);
        self.flush();
    }

    /// Leaves the queued datagrams for a flush a little later, so that other connections'
    /// packets sent meanwhile join them in the same send call; true when the caller must
    /// arrange that flush (see the peer's driver): none is due yet.
    pub fn flush_soon(&mut self) -> bool {
        if self.batch.is_empty() && self.stream_batch.is_empty() {
            return false;
        }
        let arrange = !std::mem::replace(&mut self.flush_due, true);
        if arrange {
            self.deferred_flushes = self.deferred_flushes.wrapping_add(1);
        }
        arrange
    }

    /// Datagrams waiting for the next [`Nic::flush`].
    pub fn queued_datagrams(&self) -> usize {
        self.batch.len() + self.stream_datagrams
    }

    /// Sends the queued datagrams, in one syscall where the kernel allows.
    pub fn flush(&mut self) {
        self.flush_due = false;
        self.stream_datagrams = 0;
        if !self.stream_batch.is_empty() {
            // The next batch is likely the size of this one.
            let capacity = self.stream_batch.len();
            let batch = std::mem::replace(&mut self.stream_batch, Vec::with_capacity(capacity));
            if let Some(stream) = &self.stream {
                stream.link().send_framed(batch);
            }
        }
        if !self.batch.is_empty() {
            self.udp_sends = self
                .udp_sends
                .wrapping_add(self.udp.send_batch(&mut self.batch));
        }
    }
}

impl phy::Device for Nic {
    type RxToken<'a> = RxToken;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, now: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        let packet = self.rx.pop_front()?;
        self.now = now;
        if full_size(packet.len()) {
            self.received_full = self.received_full.wrapping_add(1);
        }
        Some((RxToken(packet), TxToken(self)))
    }

    fn transmit(&mut self, now: Instant) -> Option<Self::TxToken<'_>> {
        if !self.pacer.allows(now) {
            return None;
        }
        self.now = now;
        Some(TxToken(self))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ip;
        caps.max_transmission_unit = TUNNEL_MTU;
        // WireGuard authenticates every packet (Poly1305), so verifying IP/TCP checksums on
        // receive is redundant work; real peers still need them on what we send.
        let mut checksum = ChecksumCapabilities::default();
        checksum.ipv4 = Checksum::Tx;
        checksum.tcp = Checksum::Tx;
        checksum.udp = Checksum::Tx;
        checksum.icmpv4 = Checksum::Tx;
        caps.checksum = checksum;
        caps
    }
}

pub(crate) struct RxToken(Vec<u8>);

impl phy::RxToken for RxToken {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

pub(crate) struct TxToken<'a>(&'a mut Nic);

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let len = len.min(TUNNEL_MTU);
        let r = f(&mut self.0.tx_plain[..len]);
        if self.0.pacer.sent(&self.0.tx_plain[..len], self.0.now) {
            self.0.counters.retransmitted();
        }
        self.0.seal_and_send(len);
        r
    }
}
