//! A flood of forged WireGuard handshake initiations, from one address at full speed, at both
//! devices of a tunnel while requests flow through it: the requests keep flowing (issue 14,
//! point 4). Half the initiations are random bytes of the right size and type; the other half
//! carry a valid mac1 (anybody who knows a public key can compute it) and, once the flooder
//! got a cookie reply, a valid mac2 too, so every one of WireGuard's defences has to hold.

use blake2::digest::consts::U16;
use blake2::digest::{FixedOutput, KeyInit, Update};
use blake2::{Blake2s256, Blake2sMac, Digest};
use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use kakuremichi_tunnel::{Device, DeviceConfig, PeerConfig, PrivateKey, PublicKey};
use rand::RngCore;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

const GW: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
const AG: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
/// An Agent that joins during the flood.
const LATE: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 3);
const DEADLINE: Duration = Duration::from_secs(10);
/// The figure: a flood at full speed for 10 s (the old receive loop failed within the
/// first second).
const FLOOD: Duration = Duration::from_secs(10);
/// A request through the tunnel slower than this counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(1);
const WORKERS: usize = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_flood_does_not_stall_requests_through_the_tunnel() {
    let (gw, ag) = pair().await;
    let flooder = Flooder::new(&[
        (gw.local_addr().unwrap(), gw.public_key()),
        (ag.local_addr().unwrap(), ag.public_key()),
    ]);
    let under_load = flooder.cookies.clone();
    // A thread of its own that stops by itself: a stalled runtime could not stop it.
    let flood = std::thread::spawn(move || flooder.run(FLOOD));
    let started = Instant::now();
    // A new Agent handshakes once the Gateway is under load (it sends cookie replies): it gets
    // one too, and succeeds on its next attempt, with a valid mac2, from an address of its own.
    let (gw2, first) = (gw.clone(), ag.public_key());
    let late = tokio::spawn(async move {
        while under_load.load(Ordering::Relaxed) == 0 && started.elapsed() < FLOOD {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        join_late(gw2, first).await
    });
    let mut workers = Vec::new();
    for _ in 0..WORKERS {
        let gw = gw.clone();
        workers.push(tokio::spawn(async move {
            let mut results = Vec::new();
            while started.elapsed() < FLOOD {
                let t = Instant::now();
                let ok = timeout(REQUEST_TIMEOUT, request(&gw))
                    .await
                    .is_ok_and(|r| r);
                results.push((ok, t.elapsed()));
            }
            results
        }));
    }
    let mut results = Vec::new();
    for w in workers {
        results.extend(w.await.unwrap());
    }
    let flood = flood.join().unwrap();
    let late = late.await.unwrap();
    let failed = results.iter().filter(|(ok, _)| !ok).count();
    let mut latency: Vec<Duration> = results.iter().map(|(_, d)| *d).collect();
    latency.sort();
    let pct = |p: usize| latency[(latency.len() * p / 100).min(latency.len() - 1)];
    eprintln!(
        "flood: {} packets in {:.1?} ({:.0}/s), {} cookie replies used; requests: {} of {} failed, \
         latency p50 {:.1?} p99 {:.1?} max {:.1?}; a new Agent's handshake took {:.1?}",
        flood.sent,
        flood.elapsed,
        flood.sent as f64 / flood.elapsed.as_secs_f64(),
        flood.cookies,
        failed,
        results.len(),
        pct(50),
        pct(99),
        latency.last().unwrap(),
        late,
    );
    // The old receive loop stalled at 22,000 initiations/s; this debug-build flooder sends
    // 40,000-80,000/s on a busy 2-core machine.
    assert!(
        flood.sent as f64 / flood.elapsed.as_secs_f64() > 10_000.0,
        "the flood was a flood"
    );
    assert!(results.len() >= 100, "requests flowed: {}", results.len());
    assert!(
        late.is_some(),
        "a new Agent completes its handshake during the flood"
    );
    assert!(
        failed * 100 < results.len(),
        "{failed} of {} requests failed during the flood",
        results.len()
    );
}

async fn bind(address: Ipv4Addr) -> (Device, kakuremichi_tunnel::Acceptor) {
    Device::bind(DeviceConfig::new(
        PrivateKey::generate(),
        address,
        "127.0.0.1:0".parse().unwrap(),
    ))
    .await
    .unwrap()
}

/// The Gateway's peer entry for an Agent.
fn agent(public_key: PublicKey, allowed_ip: Ipv4Addr) -> PeerConfig {
    PeerConfig {
        public_key,
        allowed_ip,
        endpoint: None,
        persistent_keepalive: None,
    }
}

/// An Agent's peer entry for the Gateway.
fn gateway(gw: &Device) -> PeerConfig {
    PeerConfig {
        public_key: gw.public_key(),
        allowed_ip: GW,
        endpoint: Some(gw.local_addr().unwrap()),
        persistent_keepalive: Some(25),
    }
}

/// A gateway-like device and an agent-like one (initiating, echoing on port 8080), handshaken.
async fn pair() -> (Device, Device) {
    let (gw, _) = bind(GW).await;
    let (ag, mut acceptor) = bind(AG).await;
    gw.set_peers(vec![agent(ag.public_key(), AG)]);
    ag.set_listen_ports([8080]);
    ag.set_peers(vec![gateway(&gw)]);
    tokio::spawn(async move {
        while let Some(mut s) = acceptor.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 64];
                if s.read_exact(&mut buf).await.is_ok() {
                    let _ = s.write_all(&buf).await;
                }
            });
        }
    });
    kakuremichi_testkit::eventually(DEADLINE, "the tunnel comes up", || request(&gw)).await;
    (gw, ag)
}

/// Adds a new Agent next to `first`; how long its handshake took, if it completed during the flood.
async fn join_late(gw: Device, first: PublicKey) -> Option<Duration> {
    let started = Instant::now();
    let (late, _) = bind(LATE).await;
    gw.set_peers(vec![agent(first, AG), agent(late.public_key(), LATE)]);
    late.set_peers(vec![gateway(&gw)]);
    let key = gw.public_key();
    timeout(FLOOD, async {
        while late.peer(&key).and_then(|p| p.since_handshake).is_none() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .ok()
    .map(|()| started.elapsed())
}

/// One request: a new connection through the tunnel, 64 bytes there and back.
async fn request(gw: &Device) -> bool {
    let Ok(mut c) = gw.connect(SocketAddrV4::new(AG, 8080)).await else {
        return false;
    };
    let sent = [0x5au8; 64];
    let mut back = [0u8; 64];
    c.write_all(&sent).await.is_ok() && c.read_exact(&mut back).await.is_ok() && back == sent
}

struct Target {
    addr: SocketAddr,
    mac1_key: [u8; 32],
    cookie_key: [u8; 32],
    cookie: Option<[u8; 16]>,
}

struct Flooder {
    socket: UdpSocket,
    targets: Vec<Target>,
    /// Cookie replies received so far: the target is under load.
    cookies: Arc<AtomicU64>,
}

struct FloodReport {
    sent: u64,
    elapsed: Duration,
    cookies: u64,
}

/// Remembered mac1 values by sender index: a cookie reply is encrypted with the mac1 of the
/// initiation it answers.
const MAC1_RING: usize = 4096;

impl Flooder {
    fn new(targets: &[(SocketAddr, PublicKey)]) -> Self {
        // An address of its own: a source address is all that tells an attacker from an Agent.
        let socket = UdpSocket::bind("127.0.0.2:0").unwrap();
        socket.set_nonblocking(true).unwrap();
        let hash = |label: &[u8], key: &PublicKey| -> [u8; 32] {
            Blake2s256::new()
                .chain_update(label)
                .chain_update(key.as_bytes())
                .finalize()
                .into()
        };
        let targets = targets
            .iter()
            .map(|(addr, key)| Target {
                addr: *addr,
                mac1_key: hash(b"mac1----", key),
                cookie_key: hash(b"cookie--", key),
                cookie: None,
            })
            .collect();
        Self {
            socket,
            targets,
            cookies: Arc::default(),
        }
    }

    fn run(mut self, duration: Duration) -> FloodReport {
        let mut rng = rand::thread_rng();
        let mut mac1s = vec![[0u8; 16]; MAC1_RING];
        let mut msg = [0u8; 148];
        msg[..4].copy_from_slice(&1u32.to_le_bytes());
        let (mut sent, mut cookies) = (0u64, 0u64);
        let started = Instant::now();
        while started.elapsed() < duration {
            let index = sent as u32;
            // Each target gets both kinds: random ones and ones with a valid mac1.
            let target = &self.targets[(sent / 2) as usize % self.targets.len()];
            msg[4..8].copy_from_slice(&index.to_le_bytes());
            rng.fill_bytes(&mut msg[8..]);
            if sent % 2 == 1 {
                let mac1 = mac(&target.mac1_key, &msg[..116]);
                msg[116..132].copy_from_slice(&mac1);
                mac1s[index as usize % MAC1_RING] = mac1;
                if let Some(cookie) = target.cookie {
                    let mac2 = mac(&cookie, &msg[..132]);
                    msg[132..].copy_from_slice(&mac2);
                }
            }
            if self.socket.send_to(&msg, target.addr).is_ok() {
                sent += 1;
            }
            if sent % 256 == 0 {
                cookies += self.take_cookies(&mac1s);
                self.cookies.store(cookies, Ordering::Relaxed);
            }
        }
        FloodReport {
            sent,
            elapsed: started.elapsed(),
            cookies,
        }
    }

    /// Reads the cookie replies that arrived and keeps each target's latest cookie.
    fn take_cookies(&mut self, mac1s: &[[u8; 16]]) -> u64 {
        let mut taken = 0;
        let mut buf = [0u8; 256];
        while let Ok((n, from)) = self.socket.recv_from(&mut buf) {
            let Some(target) = self.targets.iter_mut().find(|t| t.addr == from) else {
                continue;
            };
            if n != 64 || buf[0] != 3 {
                continue;
            }
            let index = u32::from_le_bytes(buf[4..8].try_into().unwrap());
            let cipher = XChaCha20Poly1305::new_from_slice(&target.cookie_key).unwrap();
            let payload = Payload {
                msg: &buf[32..64],
                aad: &mac1s[index as usize % MAC1_RING],
            };
            if let Ok(cookie) = cipher.decrypt(XNonce::from_slice(&buf[8..32]), payload) {
                target.cookie = cookie.try_into().ok();
                taken += 1;
            }
        }
        taken
    }
}

fn mac(key: &[u8], data: &[u8]) -> [u8; 16] {
    let mut m = <Blake2sMac<U16> as KeyInit>::new_from_slice(key).unwrap();
    Update::update(&mut m, data);
    m.finalize_fixed().into()
}
