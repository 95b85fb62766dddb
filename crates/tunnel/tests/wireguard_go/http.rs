//! The test data and the HTTP spoken by hand of the wireguard-go interoperability tests: random
//! payloads, and the one-request echo server of direction B on a tunnel stream.

use super::*;

/// Deterministic pseudo-random bytes (xorshift64*), different per seed.
pub(super) fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

pub(super) fn seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    t ^ (u64::from(std::process::id()) << 32)
}

// ---------------------------------------------------------------------------------------------
// HTTP by hand

/// Reads up to the end of the header block; returns (header text, body bytes already read).
pub(super) async fn read_head(s: &mut TunnelStream) -> (String, Vec<u8>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            return (head, buf[end + 4..].to_vec());
        }
        let n = s.read(&mut chunk).await.expect("read request head");
        assert!(n > 0, "connection closed before the end of the headers");
        buf.extend_from_slice(&chunk[..n]);
    }
}

pub(super) fn content_length(head: &str) -> usize {
    head.lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.trim()
                .eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or_else(|| panic!("no Content-Length in:\n{head}"))
}

/// Direction B's server: answers one HTTP POST by echoing its body.
pub(super) async fn echo_one_post(s: &mut TunnelStream) -> usize {
    let (head, mut body) = read_head(s).await;
    assert!(
        head.starts_with("POST /echo "),
        "unexpected request:\n{head}"
    );
    let len = content_length(&head);
    let mut chunk = vec![0u8; 64 * 1024];
    while body.len() < len {
        let n = s.read(&mut chunk).await.expect("read request body");
        assert!(n > 0, "client closed after {} of {len} bytes", body.len());
        body.extend_from_slice(&chunk[..n]);
    }
    assert_eq!(body.len(), len, "client sent more than Content-Length");
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\
         Content-Length: {len}\r\nConnection: close\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.expect("write head");
    s.write_all(&body).await.expect("write body");
    s.shutdown().await.expect("shutdown");
    // Wait for curl to close its side, so our FIN and all data are acknowledged.
    let n = s.read(&mut chunk).await.expect("read after response");
    assert_eq!(n, 0, "unexpected data after the request");
    len
}
