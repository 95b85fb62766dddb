//! A peer's own task: feeds the stack the datagrams queued for it, runs the handshake timers,
//! polls the stack and sleeps until the next of: a datagram, a stream's nudge, a timer. While
//! it sleeps it also sends, without a poll, what connections' tasks left in the NIC's batch.

use super::{Inbound, Peer};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// How often boringtun's timers run (handshake retries, keepalives, session expiry).
const TIMER_TICK: Duration = Duration::from_millis(250);
/// Packets handed to the stack per poll; bounds the time the lock is held and, with at most one
/// GRO burst (64 datagrams) on top, stays below the NIC's receive queue limit.
const RX_BATCH: usize = 512;

/// The peer's task: feeds it datagrams, runs its timers and its stack, forever.
pub(crate) async fn drive(peer: Arc<Peer>, mut inbound: mpsc::Receiver<Inbound>) {
    let mut next_tick = Instant::now();
    let mut pending: Option<Inbound> = None;
    loop {
        let (deadline, more) = {
            let mut st = peer.lock();
            if let Some(d) = pending.take() {
                st.handle_inbound(&peer, &d);
                peer.handled();
            }
            // Count packets, not bursts: a GRO burst holds up to 64 of them.
            while st.nic.rx.len() < RX_BATCH {
                match inbound.try_recv() {
                    Ok(d) => {
                        st.handle_inbound(&peer, &d);
                        peer.handled();
                    }
                    Err(_) => break,
                }
            }
            let handled = st.nic.rx.len();
            if Instant::now() >= next_tick {
                st.update_timers();
                st.trim();
                next_tick = Instant::now() + TIMER_TICK;
            }
            let delay = st.poll(&peer);
            let more = handled >= RX_BATCH;
            // Data the pacer held back asks for a poll now (a delay of 0): tokio's timer rounds
            // that up to its next millisecond tick, the pacer's next window (see `pacing`).
            let deadline = match delay {
                _ if more => Instant::now(),
                Some(d) => (Instant::now() + d).min(next_tick),
                None => next_tick,
            };
            st.driver_wakes_at = deadline;
            (deadline, more)
        };
        if more {
            tokio::task::yield_now().await;
            continue;
        }
        let sleep = tokio::time::sleep_until(deadline);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                d = inbound.recv() => match d {
                    Some(d) => pending = Some(d),
                    None => return,
                },
                _ = peer.wake.notified() => {}
                _ = &mut sleep => {}
                _ = peer.flush.notified() => {
                    flush_when_idle(&peer).await;
                    continue;
                }
            }
            break;
        }
    }
}

/// Sends what connections' tasks queued in the NIC (see [`crate::nic::Nic::flush_soon`]), once
/// this thread has run every other task that was ready: their messages join the same send
/// call. tokio runs a yielding task again only when its thread would otherwise wait for I/O,
/// or after its periodic I/O check (every 61 tasks), so the wait is bounded.
async fn flush_when_idle(peer: &Peer) {
    tokio::task::yield_now().await;
    peer.lock().nic.flush();
}
