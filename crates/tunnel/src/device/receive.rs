//! The device's receive loop: reads datagrams from the UDP socket (bursts of them, with GRO)
//! and routes each to its peer, by receiver index or, for a handshake initiation, by the
//! initiator's static key once the handshake guard let it through. Datagrams that arrive over
//! a stream (see [`crate::link`]) are routed the same way.

use super::Inner;
use crate::peer::{Inbound, Source};
use crate::udp::Udp;
use boringtun::noise::{Packet, Tunn};
use std::sync::Arc;

impl Inner {
    /// Routes a datagram (or a GRO burst of `segment`-byte datagrams from one sender) to its
    /// peer's task: by receiver index, or for a handshake initiation by the initiator's static key.
    pub(crate) fn deliver(&self, src: Source, data: &[u8], segment: usize) {
        let first = &data[..segment.min(data.len())];
        if segment < data.len() && data.chunks(segment.max(1)).any(|d| d.first() != Some(&4)) {
            // A burst routed by its first datagram would carry the handshake messages in it
            // past the guard below: those are taken one by one.
            for datagram in data.chunks(segment.max(1)) {
                self.deliver(src.clone(), datagram, datagram.len());
            }
            return;
        }
        // A GRO burst of data packets comes from one sender: route it by its first datagram;
        // the peer checks every datagram cryptographically anyway.
        let table = self.peers.load();
        let entry = match first.first() {
            Some(1 | 2) => self.admit_handshake(&src, first, &table),
            _ => match Tunn::parse_incoming_packet(first) {
                Ok(Packet::PacketCookieReply(p)) => table.by_index.get(&(p.receiver_idx >> 8)),
                Ok(Packet::PacketData(p)) => table.by_index.get(&(p.receiver_idx >> 8)),
                _ => None,
            },
        };
        match entry {
            // A datagram (a request, a response, an ACK) or a burst of them is handled right
            // here when the peer's stack is free; otherwise it goes to the peer's task.
            Some(e) if e.peer.receive_now(&src, data, segment) => {}
            Some(e) => {
                e.peer.queued();
                let queued = e.inbound.try_send(Inbound {
                    src,
                    data: data.to_vec(),
                    segment,
                });
                if queued.is_err() {
                    e.peer.handled();
                }
            }
            None => tracing::trace!(?src, "dropped datagram for no known peer"),
        }
    }
}

/// Reads datagrams and routes each to its peer's task.
pub(super) async fn receive_loop(udp: Arc<Udp>, device: std::sync::Weak<Inner>) {
    let mut buf = vec![0u8; 65536];
    loop {
        let (n, src, segment) = match udp.recv(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, "WireGuard receive error");
                tokio::task::yield_now().await;
                continue;
            }
        };
        let Some(device) = device.upgrade() else {
            return;
        };
        device.deliver(Source::Udp(src), &buf[..n], segment);
        drop(device);
        // A socket that is always readable (a flood) would otherwise hold this worker thread
        // for good: waiting for readiness does not count against tokio's cooperative budget.
        tokio::task::consume_budget().await;
    }
}
