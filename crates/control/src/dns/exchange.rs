//! One DNS request and its answer, over UDP with a TCP retry when the answer is truncated, signed
//! with TSIG when a key is given. hickory-proto builds, signs, parses and verifies every message;
//! this file only moves the bytes (a datagram, or RFC 7766's two-byte length prefix on TCP).
//!
//! We do not use hickory-net's client streams: their TSIG verifier turns a server's unsigned
//! BADSIG/BADKEY/BADTIME answer into an opaque verification error, and telling the user which of
//! the three it was is the point of the "test connection" action.

use super::{DnsError, OP_TIMEOUT};
use hickory_proto::op::Message;
use hickory_proto::rr::rdata::tsig::TsigError;
use hickory_proto::rr::TSigner;
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpStream, UdpSocket};

/// The largest answer we accept over UDP (EDNS lets servers send up to this).
const UDP_MAX: usize = 4096;

/// Sends `request` to `server` (`host:port`, resolved here) and returns the verified answer.
pub async fn exchange(
    server: &str,
    request: Message,
    signer: Option<&TSigner>,
) -> Result<Message, DnsError> {
    match tokio::time::timeout(OP_TIMEOUT, exchange_inner(server, request, signer)).await {
        Ok(result) => result,
        Err(_) => Err(unreachable(
            server,
            format!("no answer within {} s", OP_TIMEOUT.as_secs()),
        )),
    }
}

async fn exchange_inner(
    server: &str,
    mut request: Message,
    signer: Option<&TSigner>,
) -> Result<Message, DnsError> {
    let addr = resolve(server).await?;
    let mut verifier = None;
    if let Some(signer) = signer {
        verifier = request
            .finalize(signer, unix_now())
            .map_err(|e| DnsError::Invalid(format!("cannot sign the request with TSIG: {e}")))?;
    }
    let bytes = request
        .to_vec()
        .map_err(|e| DnsError::Invalid(format!("cannot encode the request: {e}")))?;
    let mut raw = udp(server, addr, &bytes, request.id).await?;
    let mut answer = parse(&raw)?;
    if answer.truncation {
        raw = tcp(server, addr, &bytes).await?;
        answer = parse(&raw)?;
    }
    if answer.id != request.id {
        return Err(DnsError::BadResponse(format!(
            "{server} answered another request (id {} for {})",
            answer.id, request.id
        )));
    }
    if let Some(error) = answer.signature().and_then(|s| s.data.error) {
        return Err(DnsError::Auth(tsig_error(&error)));
    }
    if let Some(mut verifier) = verifier {
        if answer.signature().is_none() {
            return Err(DnsError::Auth(format!(
                "{server} answered without a TSIG signature ({}): is the key configured there?",
                answer.response_code
            )));
        }
        verifier.verify(&raw).map_err(|e| {
            DnsError::Auth(format!(
                "the answer's TSIG signature does not verify ({e}): check key_secret"
            ))
        })?;
    }
    Ok(answer)
}

fn tsig_error(error: &TsigError) -> String {
    match error {
        TsigError::BadSig => "TSIG signature rejected (BADSIG): key_secret or key_algorithm \
                              does not match the server's key"
            .into(),
        TsigError::BadKey => "TSIG key unknown to the server (BADKEY): check key_name and \
                              key_algorithm"
            .into(),
        TsigError::BadTime => "TSIG time rejected (BADTIME): this host's clock and the \
                               server's differ by more than 5 minutes"
            .into(),
        other => format!("TSIG error {other:?}"),
    }
}

fn parse(raw: &[u8]) -> Result<Message, DnsError> {
    Message::from_vec(raw).map_err(|e| DnsError::BadResponse(format!("undecodable answer: {e}")))
}

pub fn unreachable(server: &str, reason: impl Into<String>) -> DnsError {
    DnsError::Unreachable {
        address: server.to_string(),
        reason: reason.into(),
    }
}

async fn resolve(server: &str) -> Result<SocketAddr, DnsError> {
    tokio::net::lookup_host(server)
        .await
        .map_err(|e| unreachable(server, format!("cannot resolve: {e}")))?
        .next()
        .ok_or_else(|| unreachable(server, "the name has no address"))
}

async fn udp(server: &str, addr: SocketAddr, bytes: &[u8], id: u16) -> Result<Vec<u8>, DnsError> {
    let local: SocketAddr = if addr.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let io = |e: std::io::Error| unreachable(server, e.to_string());
    let socket = UdpSocket::bind(local).await.map_err(io)?;
    // Connected: the kernel drops datagrams from anyone else and reports ICMP refusals.
    socket.connect(addr).await.map_err(io)?;
    socket.send(bytes).await.map_err(io)?;
    let mut buf = vec![0u8; UDP_MAX];
    loop {
        let n = socket.recv(&mut buf).await.map_err(io)?;
        // A stray datagram with another id is not our answer: keep waiting (bounded above).
        if n >= 2 && u16::from_be_bytes([buf[0], buf[1]]) == id {
            return Ok(buf[..n].to_vec());
        }
    }
}

async fn tcp(server: &str, addr: SocketAddr, bytes: &[u8]) -> Result<Vec<u8>, DnsError> {
    let io = |e: std::io::Error| unreachable(server, format!("over TCP: {e}"));
    let len = u16::try_from(bytes.len())
        .map_err(|_| DnsError::Invalid("the request is larger than 64 KiB".into()))?;
    let mut stream = TcpStream::connect(addr).await.map_err(io)?;
    let mut framed = len.to_be_bytes().to_vec();
    framed.extend_from_slice(bytes);
    stream.write_all(&framed).await.map_err(io)?;
    let answer_len = stream.read_u16().await.map_err(io)?;
    let mut answer = vec![0u8; usize::from(answer_len)];
    stream.read_exact(&mut answer).await.map_err(io)?;
    Ok(answer)
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
