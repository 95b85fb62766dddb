//! Streaming transfers through a Gateway, checked without keeping the data in memory.

use std::net::SocketAddr;

/// Downloads `/bytes?n=size`, checking every byte against the pattern without keeping it.
pub async fn download(
    http: &reqwest::Client,
    gw: SocketAddr,
    host: &str,
    size: u64,
) -> (u64, bool) {
    let mut resp = http
        .get(format!("http://{gw}/bytes?n={size}"))
        .header("host", host)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut offset = 0u64;
    let mut ok = true;
    while let Some(chunk) = resp.chunk().await.unwrap() {
        ok &= chunk
            .iter()
            .enumerate()
            .all(|(k, b)| *b == kakuremichi::hello::pattern_byte(offset + k as u64));
        offset += chunk.len() as u64;
    }
    (offset, ok)
}

/// Streams `size` pattern bytes to `/upload`; returns the origin's answer and our own digest.
pub async fn upload(
    http: &reqwest::Client,
    gw: SocketAddr,
    host: &str,
    size: u64,
) -> (serde_json::Value, String) {
    use sha2::Digest;
    const CHUNK: u64 = 256 * 1024;
    let body = futures_util::stream::unfold(0u64, move |sent| async move {
        if sent >= size {
            return None;
        }
        let len = CHUNK.min(size - sent) as usize;
        let mut buf = vec![0u8; len];
        kakuremichi::hello::fill_pattern(sent, &mut buf);
        Some((
            Ok::<_, std::io::Error>(bytes::Bytes::from(buf)),
            sent + len as u64,
        ))
    });
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; CHUNK as usize];
    let mut off = 0u64;
    while off < size {
        let len = CHUNK.min(size - off) as usize;
        kakuremichi::hello::fill_pattern(off, &mut buf[..len]);
        hasher.update(&buf[..len]);
        off += len as u64;
    }
    let resp = http
        .post(format!("http://{gw}/upload"))
        .header("host", host)
        .body(reqwest::Body::wrap_stream(body))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    (resp.json().await.unwrap(), hex::encode(hasher.finalize()))
}
