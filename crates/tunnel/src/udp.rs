//! The WireGuard UDP socket, with batched I/O where Linux offers it.
//!
//! One syscall per 1420-byte packet (and its walk through the kernel's network stack) dominates
//! the cost of a userspace tunnel. Linux can take a whole burst of equal-sized datagrams in one
//! `sendmsg` (UDP GSO, `UDP_SEGMENT`) and hand back a burst of them from one `recvmsg` (UDP GRO).
//! Both are used when the kernel accepts them and quietly replaced by one datagram per call when
//! it does not.

mod buffers;

pub use buffers::SocketBuffers;
pub(crate) use buffers::WIREGUARD;

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

    /// Sends every datagram in `batch` and empties it: on Linux one `sendmmsg` for the lot,
    /// each run of equal-sized datagrams one GSO message in it. Returns the send calls made.
    /// What the socket buffer cannot take is dropped, like a NIC's full queue.
    pub fn send_batch(&self, batch: &mut Batch) -> u64 {
        let Some(to) = batch.to else { return 0 };
        let calls = match batch.runs.as_slice() {
            // A lone request or response, the common case: a plain sendto.
            [run] if run.count == 1 => {
                self.send(&batch.bytes, to);
                1
            }
            _ => self.send_runs(batch, to),
        };
        batch.clear();
        calls
    }

    #[cfg(target_os = "linux")]
    fn send_runs(&self, batch: &Batch, to: SocketAddr) -> u64 {
        let mut calls = 0;
        if self.gso.load(Ordering::Relaxed) {
            let runs = batch.runs().map(|(bytes, segment)| {
                // A run of one datagram needs no segmentation.
                let gso = if bytes.len() > segment { segment } else { 0 };
                (bytes, gso as u16)
            });
            match sendmmsg_all(&self.socket, to, runs, &mut calls) {
                Ok(()) => return calls,
                // Only the first GSO send of a socket is refused, in practice; should one be
                // refused after others went, resending those repeats a few datagrams, which
                // the peer's replay window discards.
                Err(e) if is_gso_refusal(&e) => {
                    tracing::debug!(error = %e, "UDP GSO unavailable; sending one datagram per message");
                    self.gso.store(false, Ordering::Relaxed);
                }
                Err(e) => {
                    log_send_error(e, to);
                    return calls;
                }
            }
        }
        let datagrams = batch.datagrams().map(|d| (d, 0));
        if let Err(e) = sendmmsg_all(&self.socket, to, datagrams, &mut calls) {
            log_send_error(e, to);
        }
        calls
    }

    #[cfg(not(target_os = "linux"))]
    fn send_runs(&self, batch: &Batch, to: SocketAddr) -> u64 {
        let mut calls = 0;
        for datagram in batch.datagrams() {
            self.send(datagram, to);
            calls += 1;
        }
        calls
    }
}

/// Datagrams to one address gathered for one send: runs of equal-sized datagrams (only the
/// last of a run may be shorter), the shape one UDP GSO message carries. At most
/// [`MAX_BATCH_BYTES`] in all, [`MAX_GSO_SEGMENTS`] per run and [`MAX_RUNS`] runs.
pub(crate) struct Batch {
    bytes: Vec<u8>,
    runs: Vec<Run>,
    to: Option<SocketAddr>,
}

struct Run {
    start: usize,
    /// Size of every datagram of the run but the last, which may be shorter.
    segment: usize,
    count: usize,
    /// False once a datagram shorter than `segment` ended the run.
    open: bool,
}

/// A batch's buffer: 64 KiB, more than [`MAX_BATCH_BYTES`], because the binaries' allocator
/// maps a block this large on its own (crates/kakuremichi/src/allocator.rs), so the pages an
/// idle peer never wrote to are never resident: with 65,000 bytes, each peer cost 60 KiB more.
const BATCH_CAPACITY: usize = 64 * 1024;

/// Most runs in one batch, and so messages in one `sendmmsg`.
pub const MAX_RUNS: usize = 64;

impl Batch {
    pub fn new() -> Self {
        Self {
            bytes: Vec::with_capacity(BATCH_CAPACITY),
            runs: Vec::with_capacity(MAX_RUNS),
            to: None,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    /// Adds a datagram for `to`; false, and nothing added, when it does not fit (the batch is
    /// full, or for another address): send the batch first.
    pub fn push(&mut self, datagram: &[u8], to: SocketAddr) -> bool {
        if self.bytes.len() + datagram.len() > MAX_BATCH_BYTES || self.to.is_some_and(|t| t != to) {
            return false;
        }
        let runs = self.runs.len();
        match self.runs.last_mut() {
            Some(run)
                if run.open && datagram.len() <= run.segment && run.count < MAX_GSO_SEGMENTS =>
            {
                run.count += 1;
                run.open = datagram.len() == run.segment;
            }
            _ if runs >= MAX_RUNS => return false,
            _ => self.runs.push(Run {
                start: self.bytes.len(),
                segment: datagram.len(),
                count: 1,
                open: true,
            }),
        }
        self.to = Some(to);
        self.bytes.extend_from_slice(datagram);
        true
    }

    pub fn clear(&mut self) {
        self.bytes.clear();
        self.runs.clear();
        self.to = None;
    }

    /// Datagrams in the batch.
    pub fn len(&self) -> usize {
        self.runs.iter().map(|r| r.count).sum()
    }

    /// The runs: their bytes and the size of their datagrams.
    fn runs(&self) -> impl Iterator<Item = (&[u8], usize)> {
        self.runs.iter().enumerate().map(|(i, run)| {
            let end = self.runs.get(i + 1).map_or(self.bytes.len(), |r| r.start);
            (&self.bytes[run.start..end], run.segment)
        })
    }

    /// Every datagram on its own, in order.
    fn datagrams(&self) -> impl Iterator<Item = &[u8]> {
        self.runs()
            .flat_map(|(bytes, segment)| bytes.chunks(segment.max(1)))
    }
}

fn log_send_error(e: io::Error, to: SocketAddr) {
    if e.kind() != io::ErrorKind::WouldBlock {
        tracing::debug!(%to, error = %e, "WireGuard send failed");
    }
}

#[cfg(target_os = "linux")]
fn is_gso_refusal(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EIO | libc::EINVAL | libc::ENOPROTOOPT)
    )
}

#[cfg(target_os = "linux")]
fn enable_gro(socket: &UdpSocket) {
    use std::os::fd::AsRawFd;
    set_int_option(socket.as_raw_fd(), libc::SOL_UDP, UDP_GRO, 1);
}

/// Sets an integer socket option; false where the kernel refused it.
#[cfg(target_os = "linux")]
fn set_int_option(
    fd: std::os::fd::RawFd,
    level: libc::c_int,
    option: libc::c_int,
    value: libc::c_int,
) -> bool {
    // SAFETY: `fd` is a socket the caller owns, and the pointer is to a c_int that outlives
    // the call.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            option,
            &value as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    r == 0
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

/// Sends `messages` to `to`, [`MAX_RUNS`] per `sendmmsg`; each is a datagram, or with a GSO
/// segment size (non-zero) a run of them. Counts the calls in `calls`. A full socket buffer
/// drops what is left, and another failure the one message it hit; only a GSO refusal is
/// returned, for the caller to send again without GSO.
#[cfg(target_os = "linux")]
fn sendmmsg_all<'a>(
    socket: &UdpSocket,
    to: SocketAddr,
    messages: impl Iterator<Item = (&'a [u8], u16)>,
    calls: &mut u64,
) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    const CONTROL: usize = 4; // u64s: CMSG_SPACE of a u16, aligned
    let to = socket2::SockAddr::from(to);
    let mut messages = messages.peekable();
    // SAFETY: all-zero is a valid value of these plain C structs (null pointers, zero lengths).
    let mut headers: [libc::mmsghdr; MAX_RUNS] = unsafe { std::mem::zeroed() };
    let mut iovs: [libc::iovec; MAX_RUNS] = unsafe { std::mem::zeroed() };
    let mut controls = [[0u64; CONTROL]; MAX_RUNS];
    while messages.peek().is_some() {
        let mut n = 0;
        for (bytes, gso) in messages.by_ref().take(MAX_RUNS) {
            iovs[n] = libc::iovec {
                iov_base: bytes.as_ptr() as *mut libc::c_void,
                iov_len: bytes.len(),
            };
            let msg = &mut headers[n].msg_hdr;
            msg.msg_name = to.as_ptr() as *mut libc::c_void;
            msg.msg_namelen = to.len();
            msg.msg_iov = &mut iovs[n];
            msg.msg_iovlen = 1;
            if gso == 0 {
                msg.msg_control = std::ptr::null_mut();
                msg.msg_controllen = 0;
            } else {
                msg.msg_control = controls[n].as_mut_ptr().cast();
                // SAFETY: CMSG_SPACE of a u16 fits in `controls[n]`; the header and its data
                // are written within it.
                unsafe {
                    msg.msg_controllen = libc::CMSG_SPACE(std::mem::size_of::<u16>() as u32) as _;
                    let cmsg = libc::CMSG_FIRSTHDR(msg);
                    (*cmsg).cmsg_level = libc::SOL_UDP;
                    (*cmsg).cmsg_type = UDP_SEGMENT;
                    (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<u16>() as u32) as _;
                    std::ptr::write_unaligned(libc::CMSG_DATA(cmsg) as *mut u16, gso);
                }
            }
            n += 1;
        }
        let mut sent = 0;
        while sent < n {
            // SAFETY: headers[sent..n] point at iovecs, control buffers, the address and the
            // batch's bytes, all alive and unmoved for the duration of the call.
            let r = unsafe {
                libc::sendmmsg(
                    socket.as_raw_fd(),
                    headers.as_mut_ptr().add(sent),
                    (n - sent) as libc::c_uint,
                    0,
                )
            };
            *calls += 1;
            if r >= 0 {
                sent += (r as usize).max(1);
                continue;
            }
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::WouldBlock {
                return Ok(());
            }
            if is_gso_refusal(&e) && headers[sent].msg_hdr.msg_controllen != 0 {
                return Err(e);
            }
            log_send_error(e, to.as_socket().unwrap_or(SocketAddr::from(([0; 4], 0))));
            sent += 1;
        }
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

    fn batch(datagrams: &[Vec<u8>], to: SocketAddr) -> Batch {
        let mut batch = Batch::new();
        for d in datagrams {
            assert!(batch.push(d, to));
        }
        batch
    }

    #[tokio::test]
    async fn a_batch_arrives_as_the_datagrams_it_was_made_of() {
        // Runs of several sizes: equal ones, one ended by a shorter datagram, a lone one.
        let sizes = [1000usize, 1000, 1000, 400, 1200, 1200, 300, 300, 300, 50];
        for gso in [true, false] {
            let (a, b) = pair(gso).await;
            let datagrams: Vec<Vec<u8>> = sizes
                .iter()
                .enumerate()
                .map(|(i, n)| vec![i as u8 + 1; *n])
                .collect();
            let mut batch = batch(&datagrams, b.local_addr().unwrap());
            assert_eq!(batch.len(), sizes.len());
            let calls = a.send_batch(&mut batch);
            assert!(batch.is_empty());
            assert_eq!(calls, 1, "gso={gso}: one sendmmsg");
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
        let mut batch = batch(&[vec![9u8; 300]], b.local_addr().unwrap());
        assert_eq!(a.send_batch(&mut batch), 1);
        assert_eq!(receive_datagrams(&b, 300).await, vec![vec![9u8; 300]]);
    }

    #[test]
    fn a_batch_refuses_what_does_not_fit() {
        let to: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let other: SocketAddr = "127.0.0.2:9".parse().unwrap();
        let mut b = Batch::new();
        assert!(b.push(&[1; 100], to));
        assert!(!b.push(&[1; 100], other), "another address");
        while b.push(&[1; 1400], to) {}
        assert!(b.bytes.len() <= MAX_BATCH_BYTES);
        assert!(
            b.bytes.len() + 1400 > MAX_BATCH_BYTES,
            "refused only when full"
        );
        b.clear();
        // Datagrams of ever-changing size each start a run: runs are bounded too.
        let mut pushed = 0;
        while b.push(&[1; 10][..1 + pushed % 2], to) {
            pushed += 1;
        }
        assert_eq!(b.runs.len(), MAX_RUNS);
        // A run holds at most what one GSO send may carry.
        b.clear();
        for _ in 0..MAX_GSO_SEGMENTS + 1 {
            assert!(b.push(&[1; 100], to));
        }
        assert_eq!(b.runs.len(), 2);
    }
}
