//! Measures one-stream throughput between two devices on loopback, and the CPU it costs:
//! `cargo run --release -p kakuremichi-tunnel --example throughput [MiB] [streams]`.

use kakuremichi_tunnel::{Device, DeviceConfig, PeerConfig, PrivateKey};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks: f64 = fields.get(11).and_then(|u| u.parse().ok()).unwrap_or(0.0)
        + fields.get(12).and_then(|s| s.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

#[tokio::main]
async fn main() {
    let mib: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1024);
    let streams: usize = std::env::args()
        .nth(2)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1);
    let gw_ip = Ipv4Addr::new(10, 77, 0, 1);
    let ag_ip = Ipv4Addr::new(10, 77, 0, 2);
    let (gw, _) = Device::bind(DeviceConfig::new(
        PrivateKey::generate(),
        gw_ip,
        "127.0.0.1:0".parse().unwrap(),
    ))
    .await
    .unwrap();
    let (ag, mut acceptor) = Device::bind(DeviceConfig::new(
        PrivateKey::generate(),
        ag_ip,
        "127.0.0.1:0".parse().unwrap(),
    ))
    .await
    .unwrap();
    gw.set_peers(vec![PeerConfig {
        public_key: ag.public_key(),
        allowed_ip: ag_ip,
        endpoint: None,
        persistent_keepalive: None,
    }]);
    ag.set_listen_ports([80]);
    ag.set_peers(vec![PeerConfig {
        public_key: gw.public_key(),
        allowed_ip: gw_ip,
        endpoint: Some(gw.local_addr().unwrap()),
        persistent_keepalive: Some(25),
    }]);
    while gw.peers()[0].since_handshake.is_none() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let bytes = mib << 20;
    tokio::spawn(async move {
        while let Some(mut s) = acceptor.accept().await {
            tokio::spawn(async move {
                let buf = vec![7u8; 256 * 1024];
                let mut left = bytes;
                while left > 0 {
                    let n = left.min(buf.len());
                    s.write_all(&buf[..n]).await.unwrap();
                    left -= n;
                }
                s.shutdown().await.unwrap();
            });
        }
    });
    let cpu0 = cpu_seconds();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..streams {
        let gw = gw.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = gw.connect(SocketAddrV4::new(ag_ip, 80)).await.unwrap();
            let mut buf = vec![0u8; 256 * 1024];
            let mut total = 0;
            loop {
                let n = c.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                total += n;
            }
            total
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    let gib = total as f64 / (1u64 << 30) as f64;
    println!(
        "{streams} stream(s), {:.0} MiB in {secs:.2} s: {:.2} Gbit/s, {:.1} CPU-s/GiB (both ends), {} segments sent again",
        total as f64 / 1048576.0,
        total as f64 * 8.0 / secs / 1e9,
        cpu / gib,
        ag.peers()[0].tx_retransmits
    );
}
