//! Userspace WireGuard with a userspace TCP/IP stack: dial and accept TCP streams, and send
//! and receive UDP datagrams, through the tunnel without root, a TUN device or any capability.
//!
//! A [`Device`] owns one UDP socket and any number of peers. Each peer has its own noise session
//! (boringtun) and its own TCP/IP stack (smoltcp) driven by its own task, so peers never contend
//! with each other. One receive loop reads datagrams and routes each to its peer by the receiver
//! index (or, for a handshake initiation, by the initiator's static key); a single datagram is
//! handled right there when its peer's stack is free, a burst is queued for the peer's task.
//! Handshake messages pass the `guard` module (mac1, cookies under load, a rate per source)
//! before any X25519 work is spent on them, so a flood of forged ones cannot stall the loop.
//!
//! Where UDP is blocked, a peer's datagrams can travel over a byte stream instead (TCP/TLS,
//! opened by the caller): [`Device::attach_stream`] on the side that dials (an Agent),
//! [`Device::accept_stream`] on the side that accepts (a Gateway). See the `link` module and [`frame`].
//!
//! The crates doing the work are wrapped here so that replacing one (e.g. boringtun by gotatun)
//! touches only this crate.
//!
//! Layout, one file per concern as in wireguard-go's `device` package:
//! - `config`: [`DeviceConfig`] and [`PeerConfig`], what callers build a device from.
//! - `device`: the [`Device`], its peer table and its UDP receive loop.
//! - `peer`: one peer: its state (ports, connections, handshake timers, counters), its stack,
//!   its receive side, its path (UDP or a stream), its [`PeerStatus`] and the lock-free
//!   counters of [`PeerStats`] (metrics).
//! - `nic`: the virtual network card between a peer's stack and its noise session.
//! - `stream`: [`TunnelStream`], a TCP connection through the tunnel.
//! - `datagram`: [`TunnelUdp`], UDP through the tunnel, one IP packet per datagram.
//! - `link`, [`frame`], `admission`: WireGuard over a byte stream, and room for accepted ones.
//! - `guard`: admission of handshake messages; `udp`: the socket with GSO/GRO; `keys`.

mod admission;
mod config;
mod datagram;
mod device;
pub mod frame;
mod guard;
mod keys;
mod link;
mod nic;
mod pacing;
mod peer;
mod stream;
mod udp;

pub use config::{DeviceConfig, PeerConfig};
pub use datagram::{Datagram, TunnelUdp, UdpSender, MAX_UDP_PAYLOAD};
pub use device::{Acceptor, Device};
pub use keys::{KeyError, PrivateKey, PublicKey};
pub use link::{AttachedStream, StreamEnd};
pub use nic::{EARLY_FLUSH_DATAGRAMS, TUNNEL_MTU};
pub use peer::{PeerStats, PeerStatus, Transport, REJECT_AFTER_TIME};
pub use stream::TunnelStream;
pub use udp::SocketBuffers;
