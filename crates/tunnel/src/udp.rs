//! The WireGuard UDP socket, with batched I/O where Linux offers it.
//!
//! One syscall per 1420-byte packet (and its walk through the kernel's network stack) dominates
//! the cost of a userspace tunnel. Linux can take a whole burst of equal-sized datagrams in one
//! `sendmsg` (UDP GSO, `UDP_SEGMENT`) and hand back a burst of them from one `recvmsg` (UDP GRO).
//! Both are used when the kernel accepts them and quietly replaced by one datagram per call when
//! it does not.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
#[cfg(target_os = "linux")]
use std::sync::atomic::Ordering;
#[cfg(target_os = "linux")]
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// Linux ABI values (`linux/udp.h`); not exported by the libc crate for every target.
#[cfg(target_os = "linux")]
const UDP_SEGMENT: libc::c_int = 103;
#[cfg(target_os = "linux")]
const UDP_GRO: libc::c_int = 104;

/// Most datagrams the kernel accepts in one GSO send.
pub const MAX_GSO_SEGMENTS: usize = 64;
/// Largest batch in bytes (a UDP payload must stay below 64 KiB).
pub const MAX_BATCH_BYTES: usize = 65_000;

pub(crate) struct Udp {
    socket: UdpSocket,
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    gso: AtomicBool,
}

impl Udp {
    /// `KAKUREMICHI_UDP_OFFLOAD` = `off`, `gso`, `gro` or `both` (default) chooses the batching
    /// used, for kernels or middleboxes that misbehave with it.
    pub fn new(socket: UdpSocket) -> Self {
        let setting = std::env::var("KAKUREMICHI_UDP_OFFLOAD")
            .unwrap_or_default()
            .to_ascii_lowercase();
        let (gso, gro) = match setting.as_str() {
            "off" | "none" => (false, false),
            "gso" => (true, false),
            "gro" => (false, true),
            _ => (true, true),
        };
        #[cfg(target_os = "linux")]
        if gro {
            enable_gro(&socket);
        }
        let _ = gro;
        Self {
            socket,
            gso: AtomicBool::new(gso && cfg!(target_os = "linux")),
        }
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// Receives one datagram, or a GRO burst of them; returns its length, the sender and the
    /// size of each datagram in the burst (`len` when it is a single one).
    pub async fn recv(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr, usize)> {
        #[cfg(target_os = "linux")]
        loop {
            self.socket.readable().await?;
            match self
                .socket
                .try_io(Interest::READABLE, || recvmsg_gro(&self.socket, buf))
            {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                other => return other,
            }
        }
        #[cfg(not(target_os = "linux"))]
        loop {
            match self.socket.recv_from(buf).await {
                Ok((n, from)) => return Ok((n, from, n)),
                // Windows reports an ICMP "port unreachable" for an earlier send as an error of
                // this receive (WSAECONNRESET): one peer gone, not the socket.
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Sends one datagram without waiting; a full socket buffer drops it, like a NIC.
    ///
    /// The syscall is made directly on the non-blocking socket rather than through tokio's
    /// `try_send_to`, which refuses (WouldBlock) until the runtime has *seen* the socket become
    /// writable, and so would drop the first datagrams after binding.
    pub fn send(&self, datagram: &[u8], to: SocketAddr) {
        if let Err(e) = socket2::SockRef::from(&self.socket).send_to(datagram, &to.into()) {
            log_send_error(e, to);
        }
    }

    /// Sends `data`, a run of datagrams of `segment` bytes each (the last may be shorter).
    pub fn send_batch(&self, data: &[u8], segment: usize, to: SocketAddr) {
        if data.len() <= segment {
            return self.send(data, to);
        }
        #[cfg(target_os = "linux")]
        if self.gso.load(Ordering::Relaxed) {
            match sendmsg_gso(&self.socket, data, segment, to) {
                Ok(()) => return,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EIO | libc::EINVAL | libc::ENOPROTOOPT)
                    ) =>
                {
                    tracing::debug!(error = %e, "UDP GSO unavailable; sending one datagram per call");
                    self.gso.store(false, Ordering::Relaxed);
                }
                Err(e) => return log_send_error(e, to),
            }
        }
        for chunk in data.chunks(segment) {
            self.send(chunk, to);
        }
    }
}

fn log_send_error(e: io::Error, to: SocketAddr) {
    if e.kind() != io::ErrorKind::WouldBlock {
        tracing::debug!(%to, error = %e, "WireGuard send failed");
    }
}

#[cfg(target_os = "linux")]
fn enable_gro(socket: &UdpSocket) {
    use std::os::fd::AsRawFd;
    let on: libc::c_int = 1;
    // SAFETY: a valid fd and a pointer to a c_int that outlives the call.
    let _ = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_UDP,
            UDP_GRO,
            &on as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
}

#[cfg(target_os = "linux")]
fn recvmsg_gro(socket: &UdpSocket, buf: &mut [u8]) -> io::Result<(usize, SocketAddr, usize)> {
    use std::os::fd::AsRawFd;
    let mut name: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut control = [0u64; 8]; // room for one cmsg carrying an int, aligned
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (&mut name as *mut libc::sockaddr_storage).cast();
    msg.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: every pointer in `msg` refers to a live local buffer of the stated length.
    let n = unsafe { libc::recvmsg(socket.as_raw_fd(), &mut msg, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = n as usize;
    let mut segment = n;
    // SAFETY: the CMSG_* walk stays within `control`, as the kernel filled it in.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_UDP && (*cmsg).cmsg_type == UDP_GRO {
                let size = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg) as *const libc::c_int);
                if size > 0 {
                    segment = size as usize;
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    // SAFETY: the kernel wrote a socket address of `msg_namelen` bytes into `name`.
    let from = unsafe { socket2::SockAddr::new(name, msg.msg_namelen) };
    let from = from
        .as_socket()
        .ok_or_else(|| io::Error::other("datagram from a non-IP address"))?;
    Ok((n, from, segment.min(n).max(1)))
}

#[cfg(target_os = "linux")]
fn sendmsg_gso(socket: &UdpSocket, data: &[u8], segment: usize, to: SocketAddr) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let to = socket2::SockAddr::from(to);
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    let mut control = [0u64; 8];
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = to.as_ptr() as *mut libc::c_void;
    msg.msg_namelen = to.len();
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    // SAFETY: CMSG_SPACE of a u16 fits in `control`; the header is written within it.
    unsafe {
        msg.msg_controllen = libc::CMSG_SPACE(std::mem::size_of::<u16>() as u32) as _;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_UDP;
        (*cmsg).cmsg_type = UDP_SEGMENT;
        (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<u16>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg) as *mut u16, segment as u16);
    }
    // SAFETY: every pointer in `msg` refers to live memory of the stated length.
    let n = unsafe { libc::sendmsg(socket.as_raw_fd(), &msg, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn pair(gso: bool) -> (Udp, Udp) {
        let a = Udp::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        a.gso
            .store(gso && cfg!(target_os = "linux"), Ordering::Relaxed);
        let b = Udp::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        (a, b)
    }

    /// Receives until `total` bytes arrived; returns the datagrams, split by reported segment.
    async fn receive_datagrams(b: &Udp, total: usize) -> Vec<Vec<u8>> {
        let mut got = Vec::new();
        let mut received = 0;
        let mut buf = vec![0u8; 65536];
        while received < total {
            let (n, _, segment) = tokio::time::timeout(Duration::from_secs(5), b.recv(&mut buf))
                .await
                .unwrap()
                .unwrap();
            received += n;
            got.extend(buf[..n].chunks(segment).map(<[u8]>::to_vec));
        }
        got
    }

    #[tokio::test]
    async fn a_batch_arrives_as_the_datagrams_it_was_made_of() {
        for gso in [true, false] {
            let (a, b) = pair(gso).await;
            let sizes = [1000usize, 1000, 1000, 400];
            let datagrams: Vec<Vec<u8>> = sizes
                .iter()
                .enumerate()
                .map(|(i, n)| vec![i as u8 + 1; *n])
                .collect();
            a.send_batch(&datagrams.concat(), 1000, b.local_addr().unwrap());
            assert_eq!(
                receive_datagrams(&b, sizes.iter().sum()).await,
                datagrams,
                "gso={gso}"
            );
        }
    }

    #[tokio::test]
    async fn a_single_datagram_is_sent_plainly() {
        let (a, b) = pair(true).await;
        a.send_batch(&[9u8; 300], 1000, b.local_addr().unwrap());
        assert_eq!(receive_datagrams(&b, 300).await, vec![vec![9u8; 300]]);
    }
}
