//! The kernel buffers of a UDP socket that takes bursts: the WireGuard socket, and a Gateway's
//! public UDP tunnel ports.
//!
//! A bulk transfer arrives in bursts of a whole TCP window per stream, and several streams' at
//! once. A receive buffer too small for a burst drops its tail, which the sender's TCP repairs
//! only slowly (smoltcp: by retransmission timeout, 1 s). Linux caps what a process may ask at
//! `net.core.rmem_max` / `wmem_max` (208 KiB on a stock kernel) unless it has `CAP_NET_ADMIN`,
//! which may ask past them (`SO_RCVBUFFORCE`). So: force where allowed, else ask, and say once
//! when the kernel gave less, and how to raise it.

use std::sync::atomic::{AtomicBool, Ordering};

/// Bytes asked for each of the WireGuard socket's receive and send buffers.
pub(crate) const SOCKET_BUFFER: usize = 8 << 20;

/// The WireGuard socket's buffers.
pub(crate) static WIREGUARD: SocketBuffers =
    SocketBuffers::new("the WireGuard socket", SOCKET_BUFFER);

/// What a kind of socket asks for each of its buffers, and whether a shortfall was said (once
/// per process and kind: a load generator starts a thousand devices, a Gateway a port per UDP
/// tunnel).
pub struct SocketBuffers {
    what: &'static str,
    bytes: usize,
    warned: AtomicBool,
}

impl SocketBuffers {
    /// Sockets called `what` in the warning ("the WireGuard socket"), asking `bytes` each way.
    pub const fn new(what: &'static str, bytes: usize) -> Self {
        Self {
            what,
            bytes,
            warned: AtomicBool::new(false),
        }
    }

    /// Sizes `sock`'s buffers for bursts; returns what the kernel reports (Linux doubles what
    /// it grants, for its bookkeeping) as (receive, send).
    pub fn apply(&self, sock: &socket2::Socket) -> (usize, usize) {
        if !force(sock, Direction::Receive, self.bytes) {
            let _ = sock.set_recv_buffer_size(self.bytes);
        }
        if !force(sock, Direction::Send, self.bytes) {
            let _ = sock.set_send_buffer_size(self.bytes);
        }
        let got = (
            sock.recv_buffer_size().unwrap_or(0),
            sock.send_buffer_size().unwrap_or(0),
        );
        if let Some(warning) = self.shortfall(got) {
            if !self.warned.swap(true, Ordering::Relaxed) {
                tracing::warn!("{warning}");
            }
        }
        got
    }

    /// What to tell the operator when the buffers reported are under what was asked.
    fn shortfall(&self, (recv, send): (usize, usize)) -> Option<String> {
        let bytes = self.bytes;
        if recv >= bytes && send >= bytes {
            return None;
        }
        Some(format!(
            "{} got buffers of {} KiB (receive) and {} KiB (send), under the {} KiB asked for: \
             bursts may be dropped and transfers slowed. Raise the kernel's limits (sysctl -w \
             net.core.rmem_max={bytes} net.core.wmem_max={bytes}, kept in /etc/sysctl.d/) or \
             give the process CAP_NET_ADMIN",
            self.what,
            recv >> 10,
            send >> 10,
            bytes >> 10,
        ))
    }
}

#[derive(Clone, Copy)]
enum Direction {
    Receive,
    Send,
}

/// Asks past the sysctl limit; false where the process may not (or the OS has no such option).
#[cfg(target_os = "linux")]
fn force(sock: &socket2::Socket, direction: Direction, bytes: usize) -> bool {
    use std::os::fd::AsRawFd;
    let option = match direction {
        Direction::Receive => libc::SO_RCVBUFFORCE,
        Direction::Send => libc::SO_SNDBUFFORCE,
    };
    super::set_int_option(
        sock.as_raw_fd(),
        libc::SOL_SOCKET,
        option,
        libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX),
    )
}

#[cfg(not(target_os = "linux"))]
fn force(_sock: &socket2::Socket, _direction: Direction, _bytes: usize) -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn socket() -> socket2::Socket {
        socket2::Socket::from(std::net::UdpSocket::bind("127.0.0.1:0").unwrap())
    }

    /// As root, the buffers are what was asked even where the sysctl limits are lower (as on a
    /// stock kernel, and on the test machines: 4 MiB): Linux grants the whole size, doubled.
    #[cfg(target_os = "linux")]
    #[test]
    fn root_gets_the_whole_buffer_past_the_sysctl_limit() {
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("not root: SO_RCVBUFFORCE is not allowed, nothing to check");
            return;
        }
        let sock = socket();
        let (recv, send) = WIREGUARD.apply(&sock);
        assert_eq!(recv, 2 * SOCKET_BUFFER, "receive buffer");
        assert_eq!(send, 2 * SOCKET_BUFFER, "send buffer");
        assert_eq!(WIREGUARD.shortfall((recv, send)), None);
    }

    /// Less than asked is said, with the sizes and the way to raise the limits.
    #[test]
    fn a_small_buffer_is_explained() {
        assert_eq!(WIREGUARD.shortfall((SOCKET_BUFFER, SOCKET_BUFFER)), None);
        let warning = WIREGUARD
            .shortfall((425_984, SOCKET_BUFFER))
            .expect("a warning");
        assert!(warning.starts_with("the WireGuard socket got"), "{warning}");
        assert!(warning.contains("416 KiB (receive)"), "{warning}");
        assert!(warning.contains("8192 KiB (send)"), "{warning}");
        assert!(
            warning.contains("net.core.rmem_max=8388608 net.core.wmem_max=8388608"),
            "{warning}"
        );
        assert!(WIREGUARD.shortfall((SOCKET_BUFFER, 0)).is_some());
        let other = SocketBuffers::new("a UDP tunnel's port", 4 << 20);
        let warning = other.shortfall((425_984, 425_984)).expect("a warning");
        assert!(
            warning.contains("under the 4096 KiB") && warning.contains("net.core.rmem_max=4194304"),
            "{warning}"
        );
    }
}
