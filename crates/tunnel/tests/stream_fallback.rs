//! WireGuard over a stream (the fallback when UDP is blocked): two devices whose UDP cannot reach
//! each other carry their tunnel over an in-memory byte stream, then return to UDP when it works.

use kakuremichi_tunnel::{
    Acceptor, AttachedStream, Device, DeviceConfig, PeerConfig, PrivateKey, StreamEnd, Transport,
};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

const GW: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
const AG: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
const DEADLINE: Duration = Duration::from_secs(10);

async fn device(address: Ipv4Addr) -> (Device, Acceptor) {
    Device::bind(DeviceConfig::new(
        PrivateKey::generate(),
        address,
        "127.0.0.1:0".parse().unwrap(),
    ))
    .await
    .unwrap()
}

async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    kakuremichi_testkit::eventually(DEADLINE, what, || std::future::ready(cond())).await;
}

struct Pair {
    gw: Device,
    ag: Device,
    acceptor: Acceptor,
    /// Where the agent's UDP goes while "blocked": a socket nobody reads.
    _black_hole: std::net::UdpSocket,
}

/// A gateway and an agent whose UDP goes into a black hole, so nothing answers over UDP.
async fn blocked_pair() -> Pair {
    let (gw, _) = device(GW).await;
    let (ag, acceptor) = device(AG).await;
    let black_hole = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    gw.set_peers(vec![PeerConfig {
        public_key: ag.public_key(),
        allowed_ip: AG,
        endpoint: None,
        persistent_keepalive: Some(15),
    }]);
    ag.set_listen_ports([8080]);
    ag.set_peers(vec![agent_peer(&gw, black_hole.local_addr().unwrap())]);
    Pair {
        gw,
        ag,
        acceptor,
        _black_hole: black_hole,
    }
}

fn agent_peer(gw: &Device, endpoint: SocketAddr) -> PeerConfig {
    PeerConfig {
        public_key: gw.public_key(),
        allowed_ip: GW,
        endpoint: Some(endpoint),
        persistent_keepalive: Some(15),
    }
}

/// Connects the two over an in-memory stream, as an Agent's TLS fallback would.
fn link(p: &Pair) -> AttachedStream {
    let (agent_side, gateway_side) = tokio::io::duplex(256 * 1024);
    let from: SocketAddr = "192.0.2.7:40000".parse().unwrap();
    p.gw.accept_stream(gateway_side, from);
    p.ag.attach_stream(
        &p.gw.public_key(),
        agent_side,
        "192.0.2.1:443".parse().unwrap(),
    )
    .unwrap()
}

/// Echoes `len` bytes through a new tunnel connection from the gateway to the agent.
async fn echo(p: &mut Pair, len: usize) {
    let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
    let expected = data.clone();
    let conn = timeout(DEADLINE, p.gw.connect(SocketAddrV4::new(AG, 8080)))
        .await
        .expect("connect in time")
        .expect("connect");
    let mut served = timeout(DEADLINE, p.acceptor.accept())
        .await
        .unwrap()
        .unwrap();
    let server = tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = served.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            served.write_all(&buf[..n]).await.unwrap();
        }
        served.shutdown().await.unwrap();
    });
    let (mut rd, mut wr) = tokio::io::split(conn);
    let writer = tokio::spawn(async move {
        wr.write_all(&data).await.unwrap();
        wr.shutdown().await.unwrap();
    });
    let mut back = Vec::new();
    timeout(DEADLINE * 3, rd.read_to_end(&mut back))
        .await
        .expect("echo in time")
        .unwrap();
    writer.await.unwrap();
    server.await.unwrap();
    assert!(
        back == expected,
        "echoed bytes differ ({} of {len})",
        back.len()
    );
}

#[tokio::test]
async fn tunnel_comes_up_over_a_stream_and_returns_to_udp() {
    let mut p = blocked_pair().await;
    let gw_key = p.gw.public_key();
    let ag_key = p.ag.public_key();
    // UDP gets nowhere: no handshake completes.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(p.ag.peer(&gw_key).unwrap().since_handshake.is_none());
    assert!(!p.ag.peer_stats()[0].is_up());
    assert_eq!(
        p.gw.peer_stats()[0].transport,
        None,
        "the gateway has no path yet"
    );

    let mut attached = link(&p);
    until("handshake over the stream", || {
        p.ag.peer(&gw_key).unwrap().since_handshake.is_some()
    })
    .await;
    until("the gateway uses the stream", || {
        p.gw.peer(&ag_key).unwrap().stream.is_some()
    })
    .await;
    assert_eq!(p.gw.peer(&ag_key).unwrap().endpoint, None, "no UDP seen");
    assert!(p.ag.peer(&gw_key).unwrap().stream.is_some());
    echo(&mut p, 4 << 20).await;
    // The metrics see the stream on both ends, and the bytes it carried.
    for (side, device) in [("agent", &p.ag), ("gateway", &p.gw)] {
        let stats = device.peer_stats().remove(0);
        assert_eq!(
            stats.transport,
            Some(Transport::Stream),
            "{side}: {stats:?}"
        );
        // 4 MiB went each way (the echo), sealed.
        assert!(
            stats.is_up() && stats.rx_bytes > 4 << 20 && stats.tx_bytes > 4 << 20,
            "{side}: {stats:?}"
        );
    }

    // UDP works again (the endpoint now reaches the gateway); a probe over UDP is answered over
    // UDP, and both sides leave the stream.
    p.ag.set_peers(vec![agent_peer(&p.gw, p.gw.local_addr().unwrap())]);
    p.ag.probe_udp(&gw_key);
    let end = timeout(DEADLINE, attached.closed())
        .await
        .expect("stream closed");
    assert_eq!(end, StreamEnd::Closed);
    assert_eq!(attached.closed().await, StreamEnd::Closed, "asked again");
    assert!(p.ag.peer(&gw_key).unwrap().stream.is_none());
    until("the gateway back on UDP", || {
        let s = p.gw.peer(&ag_key).unwrap();
        s.stream.is_none() && s.endpoint.is_some()
    })
    .await;
    assert!(p.ag.peer(&gw_key).unwrap().since_udp_rx.is_some());
    echo(&mut p, 1 << 20).await;
    for device in [&p.ag, &p.gw] {
        assert_eq!(device.peer_stats()[0].transport, Some(Transport::Udp));
    }
}

#[tokio::test]
async fn a_dropped_stream_leaves_the_peer_on_udp_and_a_new_one_takes_over() {
    let mut p = blocked_pair().await;
    let gw_key = p.gw.public_key();
    let attached = link(&p);
    until("handshake over the stream", || {
        p.ag.peer(&gw_key).unwrap().since_handshake.is_some()
    })
    .await;
    drop(attached);
    until("the agent off the stream", || {
        p.ag.peer(&gw_key).unwrap().stream.is_none()
    })
    .await;
    let _again = link(&p);
    until("the agent on the new stream", || {
        p.ag.peer(&gw_key).unwrap().stream.is_some()
    })
    .await;
    echo(&mut p, 256 * 1024).await;
}

#[tokio::test]
async fn garbage_on_an_accepted_stream_closes_it() {
    let (gw, _) = device(GW).await;
    // A zero length, and one beyond any WireGuard datagram.
    for garbage in [vec![0u8, 0], vec![0xff, 0xff, 1, 2, 3]] {
        let (mut ours, theirs) = tokio::io::duplex(4096);
        gw.accept_stream(theirs, "192.0.2.9:1234".parse().unwrap());
        ours.write_all(&garbage).await.unwrap();
        let mut buf = [0u8; 16];
        let n = timeout(DEADLINE, ours.read(&mut buf))
            .await
            .expect("the gateway closes the stream")
            .unwrap_or(0);
        assert_eq!(n, 0, "nothing is sent back");
    }
}

/// Whether the gateway closed the far end of `ours` (a refused or evicted stream).
async fn closed_by_gateway(ours: &mut tokio::io::DuplexStream) -> bool {
    let mut buf = [0u8; 16];
    // A zero timeout still polls the read once: ready only when the gateway dropped its end.
    matches!(
        timeout(Duration::ZERO, ours.read(&mut buf)).await,
        Ok(Ok(0))
    )
}

#[tokio::test]
async fn idle_unauthenticated_streams_do_not_lock_an_agent_out() {
    let mut p = blocked_pair().await;
    let gw_key = p.gw.public_key();
    // More idle streams than there are Agent slots (1,024), from many addresses, none of which
    // ever sends a WireGuard packet.
    let mut idle = Vec::new();
    for i in 0..1100u32 {
        let (ours, theirs) = tokio::io::duplex(1024);
        let from = SocketAddr::from(([198, 18, (i >> 8) as u8, i as u8], 40000));
        p.gw.accept_stream(theirs, from);
        idle.push(ours);
    }
    let _attached = link(&p);
    until("handshake over the stream", || {
        p.ag.peer(&gw_key).unwrap().since_handshake.is_some()
    })
    .await;
    echo(&mut p, 64 * 1024).await;
    // The idle ones have a small pool of their own: the oldest are closed to make room.
    timeout(DEADLINE, async {
        loop {
            let mut open = 0;
            for ours in &mut idle {
                if !closed_by_gateway(ours).await {
                    open += 1;
                }
            }
            if open <= 128 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("at most 128 idle streams stay open");

    // One address gets only a few waiting slots: the rest are closed at once.
    let mut refused = 0;
    let mut held = Vec::new();
    for _ in 0..20 {
        let (mut ours, theirs) = tokio::io::duplex(1024);
        p.gw.accept_stream(theirs, "203.0.113.5:50000".parse().unwrap());
        if closed_by_gateway(&mut ours).await {
            refused += 1;
        }
        held.push(ours);
    }
    assert_eq!(refused, 12, "20 streams from one address, 8 may wait");
}

/// Handshakes that arrive over a stream pass the same guard as over UDP: a flood of forged
/// initiations (valid mac1, anybody can compute it) puts the device under load, and from then
/// on it answers with cookie replies instead of spending X25519 on each.
#[tokio::test]
async fn forged_handshakes_over_an_accepted_stream_get_cookie_replies() {
    use blake2::digest::consts::U16;
    use blake2::digest::{FixedOutput, KeyInit, Update};
    use blake2::{Blake2s256, Blake2sMac, Digest};
    use kakuremichi_tunnel::frame;
    use rand::RngCore;

    let (gw, _) = device(GW).await;
    let (mut ours, theirs) = tokio::io::duplex(1 << 20);
    gw.accept_stream(theirs, "192.0.2.9:1234".parse().unwrap());
    let mac1_key = Blake2s256::new()
        .chain_update(b"mac1----")
        .chain_update(gw.public_key().as_bytes())
        .finalize();
    let mut wire = Vec::new();
    for i in 0..600u32 {
        let mut msg = [0u8; 148];
        msg[..4].copy_from_slice(&1u32.to_le_bytes());
        msg[4..8].copy_from_slice(&i.to_le_bytes());
        rand::thread_rng().fill_bytes(&mut msg[8..116]);
        let mut mac = <Blake2sMac<U16> as KeyInit>::new_from_slice(&mac1_key).unwrap();
        Update::update(&mut mac, &msg[..116]);
        msg[116..132].copy_from_slice(&mac.finalize_fixed());
        frame::encode(&mut wire, &msg);
    }
    let writer = tokio::spawn(async move {
        ours.write_all(&wire).await.unwrap();
        ours
    });
    let mut ours = writer.await.unwrap();
    let mut buf = Box::new([0u8; frame::MAX_FRAME]);
    let n = timeout(DEADLINE, frame::read(&mut ours, &mut buf))
        .await
        .expect("a cookie reply in time")
        .unwrap()
        .expect("a reply, not the end of the stream");
    assert_eq!((n, buf[0]), (64, 3), "a cookie reply");
}

#[tokio::test]
async fn udp_datagrams_cross_a_stream_too() {
    let p = blocked_pair().await;
    let ag_key = p.ag.public_key();
    let _attached = link(&p);
    until("the gateway uses the stream", || {
        p.gw.peer(&ag_key).unwrap().stream.is_some()
    })
    .await;
    let mut service = p.ag.bind_udp(53);
    let to = SocketAddrV4::new(AG, 53);
    let mut flow = p.gw.connect_udp(to).unwrap();
    for i in 0..200u32 {
        flow.send_to(&i.to_be_bytes(), to).unwrap();
        let (got, from) = timeout(DEADLINE, service.recv()).await.unwrap().unwrap();
        assert_eq!(&got[..], i.to_be_bytes());
        service.send_to(&got, from).unwrap();
        let (back, _) = timeout(DEADLINE, flow.recv()).await.unwrap().unwrap();
        assert_eq!(back, got);
    }
    assert!(
        p.gw.peer(&ag_key).unwrap().stream.is_some(),
        "still on the stream"
    );
    assert_eq!(p.gw.peer(&ag_key).unwrap().endpoint, None, "no UDP seen");
}
