//! How packets leave and arrive: in batches, on the task that sent or received them, without a
//! poll of the whole stack.

use super::{dial, pair, DEADLINE};
use kakuremichi_tunnel::{Acceptor, TunnelStream};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::timeout;

/// One stream's window leaves in bursts: many packets per UDP send (GSO), not one send (and one
/// wake-up of the peer's task) per packet, which cost a single stream 90% of its throughput.
#[tokio::test]
async fn a_bulk_stream_sends_its_packets_in_batches() {
    let (gw, _ag, acceptor) = pair().await;
    const BYTES: usize = 16 << 20;
    let sink = tokio::spawn(count_to_end(acceptor));
    let mut c = dial(&gw).await;
    let before = gw.peers()[0].clone();
    upload(&mut c, &vec![7u8; BYTES]).await;
    assert_eq!(timeout(DEADLINE, sink).await.unwrap().unwrap(), BYTES);
    let after = gw.peers()[0].clone();
    let packets = after.tx_packets - before.tx_packets;
    let sends = after.tx_udp_sends - before.tx_udp_sends;
    assert!(packets as usize >= BYTES / 1420, "{packets} packets sent");
    let per_send = packets as f64 / sends.max(1) as f64;
    eprintln!("{packets} packets in {sends} UDP sends: {per_send:.1} per send");
    assert!(
        per_send >= 4.0,
        "{packets} packets took {sends} UDP sends ({per_send:.1} per send): not batched"
    );
}

/// Accepts one stream and reads it to its end: the number of bytes that arrived.
async fn count_to_end(mut acceptor: Acceptor) -> usize {
    let mut s = acceptor.accept().await.unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0;
    loop {
        match s.read(&mut buf).await.unwrap() {
            0 => return total,
            n => total += n,
        }
    }
}

/// Writes all of `data` and closes the sending side, within a minute.
async fn upload(c: &mut TunnelStream, data: &[u8]) {
    timeout(Duration::from_secs(60), async {
        c.write_all(data).await.unwrap();
        c.shutdown().await.unwrap();
    })
    .await
    .expect("upload finishes");
}

// Requests and responses one at a time, as over a keep-alive HTTP connection: each arrives as a
// single datagram, which the receiving task hands to the stack itself rather than queueing it
// for the peer's task, on both sides; and every byte still arrives, in order.
#[tokio::test]
async fn single_datagrams_are_handled_on_arrival() {
    const ROUNDS: usize = 200;
    let (gw, ag, mut acceptor) = pair().await;
    let echo = tokio::spawn(async move {
        let mut s = acceptor.accept().await.unwrap();
        let mut buf = [0u8; 600];
        for _ in 0..ROUNDS {
            s.read_exact(&mut buf).await.unwrap();
            s.write_all(&buf).await.unwrap();
        }
    });
    let mut c = dial(&gw).await;
    let (gw_before, ag_before) = (gw.peers()[0].rx_on_arrival, ag.peers()[0].rx_on_arrival);
    for round in 0..ROUNDS {
        let request = [round as u8; 600];
        c.write_all(&request).await.unwrap();
        let mut response = [0u8; 600];
        timeout(DEADLINE, c.read_exact(&mut response))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(response, request, "round {round}");
    }
    timeout(DEADLINE, echo).await.unwrap().unwrap();
    let gw_on_arrival = gw.peers()[0].rx_on_arrival - gw_before;
    let ag_on_arrival = ag.peers()[0].rx_on_arrival - ag_before;
    eprintln!("of {ROUNDS} responses and requests: {gw_on_arrival} and {ag_on_arrival} handled on arrival");
    // Nearly all: a datagram arriving while a stream task holds the stack is queued instead.
    assert!(
        gw_on_arrival as usize >= ROUNDS / 2,
        "Gateway side: {gw_on_arrival} of {ROUNDS}"
    );
    assert!(
        ag_on_arrival as usize >= ROUNDS / 2,
        "Agent side: {ag_on_arrival} of {ROUNDS}"
    );
}

// Connections opened one after another: the SYN, the SYN-ACK and the handshake's last ACK are
// each answered by the socket that takes them, on both sides, without a poll of the whole stack
// (every socket asked), which made opening a connection cost O(connections).
#[tokio::test]
async fn opening_a_connection_asks_no_other_socket() {
    const CONNECTIONS: usize = 100;
    let (gw, ag, mut acceptor) = pair().await;
    let (gw_before, ag_before) = (gw.peers()[0].full_polls, ag.peers()[0].full_polls);
    let mut held = Vec::new();
    for _ in 0..CONNECTIONS {
        let dialled = dial(&gw).await;
        let accepted = timeout(DEADLINE, acceptor.accept())
            .await
            .expect("accepted in time")
            .expect("accepted");
        held.push((dialled, accepted));
    }
    let gw_polls = gw.peers()[0].full_polls - gw_before;
    let ag_polls = ag.peers()[0].full_polls - ag_before;
    eprintln!("{CONNECTIONS} connections: {gw_polls} and {ag_polls} full polls");
    // The peers' own timers (every 250 ms) and a packet arriving while the stack is busy
    // still poll it all; per connection it took two or three.
    assert!(
        gw_polls < CONNECTIONS as u64 / 2,
        "Gateway side: {gw_polls}"
    );
    assert!(ag_polls < CONNECTIONS as u64 / 2, "Agent side: {ag_polls}");
    // They work.
    let (mut c, mut s) = held.pop().unwrap();
    c.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    timeout(DEADLINE, s.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"ping");
}

// A current-thread runtime: the peer's driver task runs only when this test yields. The packet
// is built and sealed by the writing task, with no poll of the whole stack; it leaves in the
// send call that follows once the thread has run what was ready (see the next test).
#[tokio::test]
async fn a_write_to_an_idle_connection_is_sealed_before_the_writer_yields() {
    let (gw, _ag, mut acceptor) = pair().await;
    let echo = tokio::spawn(async move {
        let mut s = acceptor.accept().await.unwrap();
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).await.unwrap();
        s.write_all(&buf).await.unwrap();
    });
    let mut c = dial(&gw).await;
    let before = gw.peers()[0].clone();
    // One poll of the write, no await in between: only the writing task can have sent it.
    let written = std::future::poll_fn(|cx| {
        std::task::Poll::Ready(std::pin::Pin::new(&mut c).poll_write(cx, b"hello"))
    })
    .await;
    assert!(
        matches!(written, std::task::Poll::Ready(Ok(5))),
        "{written:?}"
    );
    let after = gw.peers()[0].clone();
    assert!(
        after.tx_packets > before.tx_packets,
        "the request waited for the peer's task"
    );
    assert_eq!(
        after.full_polls, before.full_polls,
        "the stack was polled whole"
    );
    let mut buf = [0u8; 5];
    timeout(DEADLINE, c.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"hello");
    echo.await.unwrap();
}

// Bulk data does not wait for the batch of lone messages: the writing task sends the full-size
// segments it sealed before it yields. Left for the peer's task to send once the thread had run
// every other ready task, a download's data (and the ACKs that open its window) came later,
// and downloads moved 4-8 % less.
#[tokio::test]
async fn a_bulk_write_leaves_before_the_writer_yields() {
    let (gw, _ag, mut acceptor) = pair().await;
    const BYTES: usize = 16 * 1024;
    let sink = tokio::spawn(async move {
        let mut s = acceptor.accept().await.unwrap();
        let mut buf = vec![0u8; BYTES];
        s.read_exact(&mut buf).await.unwrap();
        buf
    });
    let mut c = dial(&gw).await;
    let before = gw.peers()[0].clone();
    let data = vec![9u8; BYTES];
    // One poll of the write, no await in between: what was sent, the writing task sent.
    let written = std::future::poll_fn(|cx| {
        std::task::Poll::Ready(std::pin::Pin::new(&mut c).poll_write(cx, &data))
    })
    .await;
    assert!(
        matches!(written, std::task::Poll::Ready(Ok(n)) if n == BYTES),
        "{written:?}"
    );
    let after = gw.peers()[0].clone();
    assert!(
        after.tx_packets >= before.tx_packets + 2,
        "{} packets sealed: the write did not leave as full-size segments",
        after.tx_packets - before.tx_packets
    );
    assert!(
        after.tx_udp_sends > before.tx_udp_sends,
        "{} packets sealed, none sent: the bulk data waited for the peer's task",
        after.tx_packets - before.tx_packets
    );
    assert_eq!(timeout(DEADLINE, sink).await.unwrap().unwrap(), data);
}

// The ACKs of bulk data leave at once, from the task that took the data in: left for the peer's
// task with the lone messages, they left only after every other task ready on the thread had
// run, and the sender's window waited for them (a download moved 4 % less).
#[tokio::test]
async fn the_acks_of_bulk_data_leave_at_once() {
    let (gw, ag, acceptor) = pair().await;
    const BYTES: usize = 8 << 20;
    let sink = tokio::spawn(count_to_end(acceptor));
    let mut c = dial(&gw).await;
    let before = ag.peers()[0].clone();
    upload(&mut c, &vec![5u8; BYTES]).await;
    assert_eq!(timeout(DEADLINE, sink).await.unwrap().unwrap(), BYTES);
    let after = ag.peers()[0].clone();
    let sends = after.tx_udp_sends - before.tx_udp_sends;
    let deferred = after.tx_deferred_flushes - before.tx_deferred_flushes;
    eprintln!(
        "the receiver sent {} packets in {sends} UDP sends, {deferred} of them left to its peer's task",
        after.tx_packets - before.tx_packets
    );
    assert!(sends > 0, "the receiver sent no ACKs");
    assert!(
        deferred * 4 <= sends,
        "{deferred} of the receiver's {sends} sends waited for the peer's task: the ACKs of bulk data were deferred"
    );
}

// Connections whose messages are written one after another, as the tasks of many HTTP
// connections answer on one thread: their packets leave together, in one send call, instead
// of one sendto each (a syscall, and a trip through the kernel's network stack, per message).
#[tokio::test]
async fn messages_of_many_connections_leave_in_one_send() {
    const CONNECTIONS: usize = 16;
    let (gw, _ag, acceptor) = pair().await;
    let (mut conns, server) = dial_many(&gw, acceptor, CONNECTIONS).await;
    let before = gw.peers()[0].clone();
    write_messages_in_one_poll(&mut conns, || {}).await;
    expect_messages(server, CONNECTIONS).await;
    let after = gw.peers()[0].clone();
    let packets = after.tx_packets - before.tx_packets;
    let sends = after.tx_udp_sends - before.tx_udp_sends;
    eprintln!("{packets} packets in {sends} UDP send calls");
    assert!(packets as usize >= CONNECTIONS, "{packets} packets");
    assert!(
        sends * 4 <= packets,
        "{packets} packets took {sends} send calls: not batched across connections"
    );
}

// A long burst of messages, as when one thread answers many HTTP connections in one go: the
// first ones leave while the rest are still being written, in sends of a few datagrams, so the
// peer (and the origin and client behind it) has work before the burst ends. Held back to the
// burst's end, they left the rest of the chain idle while this thread worked.
#[tokio::test]
async fn a_long_burst_of_messages_leaves_in_parts() {
    const CONNECTIONS: usize = 32;
    let (gw, _ag, acceptor) = pair().await;
    let (mut conns, server) = dial_many(&gw, acceptor, CONNECTIONS).await;
    let before = gw.peers()[0].clone();
    let mut during = None;
    write_messages_in_one_poll(&mut conns, || during = Some(gw.peers()[0].clone())).await;
    let during = during.unwrap();
    expect_messages(server, CONNECTIONS).await;
    let sealed = during.tx_packets - before.tx_packets;
    let sent = during.tx_udp_sends - before.tx_udp_sends;
    eprintln!("{sealed} packets sealed, {sent} sends while the burst was written");
    assert!(sealed as usize >= CONNECTIONS, "{sealed} packets sealed");
    let parts = (CONNECTIONS / kakuremichi_tunnel::EARLY_FLUSH_DATAGRAMS - 1) as u64;
    assert!(
        sent >= parts,
        "{sealed} packets sealed, {sent} sent while the burst was written: held to its end"
    );
}

/// `n` connections from `gw`, and a task that accepts them and reads `message(i)` from the i-th.
async fn dial_many(
    gw: &kakuremichi_tunnel::Device,
    mut acceptor: Acceptor,
    n: usize,
) -> (Vec<TunnelStream>, tokio::task::JoinHandle<Vec<Vec<u8>>>) {
    let server = tokio::spawn(async move {
        let mut streams = Vec::new();
        for _ in 0..n {
            streams.push(acceptor.accept().await.unwrap());
        }
        let mut got = Vec::new();
        for (i, s) in streams.iter_mut().enumerate() {
            let mut buf = vec![0u8; message(i).len()];
            s.read_exact(&mut buf).await.unwrap();
            got.push(buf);
        }
        got
    });
    let mut conns = Vec::new();
    for _ in 0..n {
        conns.push(dial(gw).await);
    }
    (conns, server)
}

/// Writes `message(i)` on the i-th connection, all in one poll, as the tasks of one thread do
/// in a burst; `before_return` runs after the last write, before the poll returns.
async fn write_messages_in_one_poll(conns: &mut [TunnelStream], mut before_return: impl FnMut()) {
    std::future::poll_fn(|cx| {
        for (i, c) in conns.iter_mut().enumerate() {
            let written = std::pin::Pin::new(c).poll_write(cx, &message(i));
            assert!(matches!(written, std::task::Poll::Ready(Ok(n)) if n == message(i).len()));
        }
        before_return();
        std::task::Poll::Ready(())
    })
    .await;
}

/// Every connection's message arrived whole, within the deadline.
async fn expect_messages(server: tokio::task::JoinHandle<Vec<Vec<u8>>>, n: usize) {
    let got = timeout(DEADLINE, server).await.unwrap().unwrap();
    assert_eq!(got.len(), n);
    for (i, m) in got.iter().enumerate() {
        assert_eq!(*m, message(i), "connection {i}");
    }
}

fn message(i: usize) -> Vec<u8> {
    vec![i as u8; if i.is_multiple_of(2) { 100 } else { 700 }]
}

// Equal-sized messages of many connections leave as one GSO send and arrive as one GRO burst.
// The receiving task hands the burst to the stack itself, as it does a single datagram: no
// queue, copy and wake-up of the peer's task, and no poll of the whole stack per burst.
#[tokio::test]
async fn a_burst_for_many_connections_is_handled_on_arrival() {
    const CONNECTIONS: usize = 8;
    const ROUNDS: usize = 20;
    let (gw, ag, mut acceptor) = pair().await;
    let server = tokio::spawn(async move {
        let mut streams = Vec::new();
        for _ in 0..CONNECTIONS {
            streams.push(acceptor.accept().await.unwrap());
        }
        streams
    });
    let mut conns = Vec::new();
    for _ in 0..CONNECTIONS {
        conns.push(dial(&gw).await);
    }
    let mut streams = timeout(DEADLINE, server).await.unwrap().unwrap();
    let before = ag.peers()[0].clone();
    for round in 0..ROUNDS {
        let message = [round as u8; 300];
        std::future::poll_fn(|cx| {
            for c in conns.iter_mut() {
                let written = std::pin::Pin::new(c).poll_write(cx, &message);
                assert!(matches!(written, std::task::Poll::Ready(Ok(300))));
            }
            std::task::Poll::Ready(())
        })
        .await;
        for (i, s) in streams.iter_mut().enumerate() {
            let mut buf = [0u8; 300];
            timeout(DEADLINE, s.read_exact(&mut buf))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(buf, message, "round {round}, connection {i}");
        }
    }
    let after = ag.peers()[0].clone();
    let on_arrival = after.rx_on_arrival - before.rx_on_arrival;
    let polls = after.full_polls - before.full_polls;
    eprintln!("{ROUNDS} rounds of {CONNECTIONS} messages: {on_arrival} arrivals handled on arrival, {polls} full polls");
    // Sent to the peer's task, each burst cost a full poll (20 of 20, none on arrival). The
    // task still polls it all when a socket's timer (a delayed ACK) is due before its own.
    assert!(
        on_arrival as usize >= ROUNDS / 2,
        "{on_arrival} of {ROUNDS} bursts handled on arrival"
    );
    assert!(
        polls < ROUNDS as u64,
        "{polls} full polls for {ROUNDS} bursts"
    );
}

/// A paced peer gets no more than its cap, and its task waits for the next millisecond when the
/// NIC holds datagrams back rather than polling the stack again at once: smoltcp asks to be
/// polled now while a socket has data it could not send, and answering that with a yield
/// instead of a sleep polled 94,561 times for this transfer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paced_peer_waits_for_its_next_window_instead_of_spinning() {
    const BYTES: usize = 4 << 20;
    const PER_MS: u32 = 16;
    let (gw, ag, acceptor) = pair().await;
    gw.pin_pacing(&ag.public_key(), PER_MS);
    let sink = tokio::spawn(count_to_end(acceptor));
    let mut c = dial(&gw).await;
    let before = gw.peers()[0].clone();
    let started = std::time::Instant::now();
    upload(&mut c, &vec![7u8; BYTES]).await;
    assert_eq!(timeout(DEADLINE, sink).await.unwrap().unwrap(), BYTES);
    let ms = started.elapsed().as_millis() as u64;
    let after = gw.peers()[0].clone();
    let packets = after.tx_packets - before.tx_packets;
    let polls = after.full_polls - before.full_polls;
    eprintln!("{packets} packets in {ms} ms at {PER_MS} per ms: {polls} full polls");
    assert!(
        packets <= u64::from(PER_MS) * (ms + 1),
        "{packets} packets in {ms} ms: not paced at {PER_MS} per ms"
    );
    // A wait per window, and a poll for each burst of ACKs; spinning polled thousands of times
    // per millisecond.
    assert!(
        polls <= 4 * (ms + 1) + 100,
        "{polls} full polls in {ms} ms: the paced peer's task spins"
    );
}
