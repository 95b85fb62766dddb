//! Framing of WireGuard datagrams on a byte stream (the TCP/TLS fallback when UDP is blocked).
//!
//! Each datagram travels as a 2-byte big-endian length followed by the datagram, both ways. A
//! stream has no datagram boundaries, so a frame may arrive split across reads or several in one;
//! the reader reassembles them. A zero or oversized length cannot come from a correct peer (no
//! WireGuard message is empty or larger than an MTU-sized packet plus its overhead): it ends the
//! stream rather than being skipped, since the byte stream is out of step from there on.

use std::io;
use tokio::io::{AsyncRead, AsyncReadExt};

/// ALPN protocol id of this framing carried over TLS (what a Gateway's HTTPS listener hands to
/// its WireGuard device instead of HTTP).
pub const TLS_ALPN: &[u8] = b"kakuremichi-wg/1";

/// Largest datagram accepted in a frame. Generous compared with what we send
/// (`nic::MAX_DATAGRAM`) so that a peer with a larger MTU is not cut off.
pub const MAX_FRAME: usize = 8192;

/// Appends one frame carrying `datagram` to `out`. Datagrams above [`MAX_FRAME`] are never
/// built here (the NIC's MTU bounds them); one that were would be refused by the reader.
pub fn encode(out: &mut Vec<u8>, datagram: &[u8]) {
    debug_assert!(!datagram.is_empty() && datagram.len() <= MAX_FRAME);
    out.extend_from_slice(&(datagram.len() as u16).to_be_bytes());
    out.extend_from_slice(datagram);
}

/// Reads the next frame into `buf`; returns the datagram's length, or `None` at a clean end of
/// stream (between frames). A bad length or an end of stream inside a frame is `InvalidData` /
/// `UnexpectedEof`.
pub async fn read<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut [u8; MAX_FRAME],
) -> io::Result<Option<usize>> {
    let mut header = [0u8; 2];
    // The first byte separately: EOF before it is a clean end, after it a truncated frame.
    if reader.read(&mut header[..1]).await? == 0 {
        return Ok(None);
    }
    reader.read_exact(&mut header[1..]).await?;
    let len = usize::from(u16::from_be_bytes(header));
    if len == 0 || len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("bad WireGuard frame length {len} (1..={MAX_FRAME} expected)"),
        ));
    }
    reader.read_exact(&mut buf[..len]).await?;
    Ok(Some(len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::pin::Pin;
    use std::task::{Context, Poll};
    use tokio::io::ReadBuf;

    /// Hands out its bytes one at a time: every frame arrives split at every possible point.
    struct Trickle(Vec<u8>, usize);

    impl AsyncRead for Trickle {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            if let Some(&b) = self.0.get(self.1) {
                buf.put_slice(&[b]);
                self.1 += 1;
            }
            Poll::Ready(Ok(()))
        }
    }

    fn datagrams() -> Vec<Vec<u8>> {
        vec![vec![1], vec![4; 32], vec![0xab; 1468], vec![7; MAX_FRAME]]
    }

    async fn read_all<R: AsyncRead + Unpin>(mut r: R) -> (Vec<Vec<u8>>, io::Result<()>) {
        let mut buf = Box::new([0u8; MAX_FRAME]);
        let mut out = Vec::new();
        loop {
            match read(&mut r, &mut buf).await {
                Ok(Some(n)) => out.push(buf[..n].to_vec()),
                Ok(None) => return (out, Ok(())),
                Err(e) => return (out, Err(e)),
            }
        }
    }

    #[tokio::test]
    async fn round_trip_in_one_read_and_split_byte_by_byte() {
        let mut wire = Vec::new();
        for d in datagrams() {
            encode(&mut wire, &d);
        }
        let (whole, end) = read_all(&wire[..]).await;
        assert!(end.is_ok());
        assert_eq!(whole, datagrams());
        let (split, end) = read_all(Trickle(wire, 0)).await;
        assert!(end.is_ok());
        assert_eq!(split, datagrams());
    }

    #[tokio::test]
    async fn bad_lengths_end_the_stream_with_an_error() {
        for header in [
            [0u8, 0],
            ((MAX_FRAME + 1) as u16).to_be_bytes(),
            [0xff, 0xff],
        ] {
            let mut wire = Vec::new();
            encode(&mut wire, b"ok");
            wire.extend_from_slice(&header);
            wire.extend_from_slice(&[0; 64]);
            let (frames, end) = read_all(&wire[..]).await;
            assert_eq!(frames, vec![b"ok".to_vec()], "frames before the bad one");
            assert_eq!(end.unwrap_err().kind(), io::ErrorKind::InvalidData);
        }
    }

    #[tokio::test]
    async fn truncated_frames_are_errors_not_clean_ends() {
        let mut wire = Vec::new();
        encode(&mut wire, &[9; 100]);
        for cut in 1..wire.len() {
            let (frames, end) = read_all(Trickle(wire[..cut].to_vec(), 0)).await;
            assert!(frames.is_empty());
            assert_eq!(end.unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
        }
    }
}
