//! The Agent's way around blocked UDP: when WireGuard over UDP to a Gateway gets no answer, carry
//! it over TLS to the Gateway's HTTPS port (ALPN `kakuremichi-wg/1`, which the Gateway hands to
//! its WireGuard device instead of HTTP), and go back to UDP as soon as UDP answers again.
//!
//! One [`Supervisor`] task per Gateway peer decides:
//! - UDP is failing when no authenticated packet arrived for [`FALLBACK_AFTER`] since the peer
//!   was set up, or, on a tunnel that worked, for one silent keepalive interval plus that (the
//!   tunnel then re-handshakes every 1–2 s on its own before we give up on UDP);
//! - while on TLS, a handshake is sent over UDP every [`UDP_PROBE`]; the tunnel switches back
//!   and closes the stream when one is answered over UDP;
//! - a failed or dropped TLS connection is retried with backoff while UDP still fails.
//!
//! The certificate is not verified: WireGuard authenticates the Gateway by its static key (and
//! a man in the middle sees only WireGuard ciphertext), and the Gateway's HTTPS certificates are
//! for the tunnels' hostnames, not for its endpoint. TLS only gets the traffic through firewalls
//! that let HTTPS alone pass.

use kakuremichi_node::Backoff;
use kakuremichi_tunnel::{Device, PublicKey, StreamEnd};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{ring, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;

/// No answer over UDP for this long after the peer was set up: fall back to TLS.
pub const FALLBACK_AFTER: Duration = Duration::from_secs(5);
/// On a tunnel that worked, silence this long means the path is gone (one keepalive interval,
/// as the tunnel sees it, plus [`FALLBACK_AFTER`] of its own re-handshaking).
const SILENCE: Duration = Duration::from_secs(15 + 4 + 5);
/// While on TLS, how often a handshake is tried over UDP.
pub const UDP_PROBE: Duration = Duration::from_secs(30);
/// Bound on the TCP connect and on the TLS handshake, each.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the peer's state is looked at.
const CHECK: Duration = Duration::from_millis(250);
/// A stream that lasted this long was a success: the next reconnect starts its backoff over.
const STABLE: Duration = Duration::from_secs(30);

/// The supervising task of one Gateway peer; dropping it stops the task and closes its stream.
pub(crate) struct Supervisor {
    /// `host:port` the fallback connects to; a change restarts the supervisor.
    pub target: String,
    task: JoinHandle<()>,
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Supervisor {
    pub fn start(
        device: Device,
        peer: PublicKey,
        gateway: String,
        host: String,
        port: u16,
    ) -> Self {
        let target = format!("{host}:{port}");
        let task = tokio::spawn(supervise(device, peer, gateway, host, port));
        Self { target, task }
    }
}

/// The host part of a Gateway endpoint (`host:port`, `[v6]:port`).
pub(crate) fn endpoint_host(endpoint: &str) -> Option<&str> {
    let (host, _) = endpoint.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    (!host.is_empty()).then_some(host)
}

async fn supervise(device: Device, peer: PublicKey, gateway: String, host: String, port: u16) {
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
    let mut retry = false;
    loop {
        if !retry {
            wait_until_udp_fails(&device, &peer).await;
        }
        let tls = match connect(&host, port).await {
            Ok(tls) => tls,
            Err(e) => {
                tracing::warn!(%gateway, target = %format!("{host}:{port}"), error = %e, "WireGuard over UDP gets no answer and the TLS fallback failed; retrying");
                tokio::time::sleep(backoff.next_delay()).await;
                retry = udp_failing(&device, &peer, None);
                continue;
            }
        };
        if retry && !udp_failing(&device, &peer, None) {
            // UDP answered while we were connecting (a link that came back): no need for TLS.
            retry = false;
            continue;
        }
        let (tls, remote) = tls;
        let mut attached = match device.attach_stream(&peer, tls, remote) {
            Ok(a) => a,
            Err(_) => return, // the peer is gone; the Agent drops this supervisor
        };
        tracing::info!(%gateway, %remote, "no WireGuard answer over UDP; tunnel now carried over TLS");
        let since = Instant::now();
        let mut probe = tokio::time::interval_at(since + UDP_PROBE, UDP_PROBE);
        let end = loop {
            tokio::select! {
                end = attached.closed() => break end,
                _ = probe.tick() => device.probe_udp(&peer),
            }
        };
        if since.elapsed() >= STABLE {
            backoff.reset();
        }
        let on_udp =
            end == StreamEnd::Closed && device.peer(&peer).is_some_and(|s| s.stream.is_none());
        if on_udp {
            tracing::info!(%gateway, "WireGuard over UDP answers again; TLS fallback closed");
            backoff.reset();
            retry = false;
        } else {
            tracing::warn!(%gateway, %remote, %end, "WireGuard TLS fallback stream ended; reconnecting");
            tokio::time::sleep(backoff.next_delay()).await;
            retry = true;
        }
    }
}

/// True when the peer should fall back: not on a stream, and nothing heard over UDP for too long.
/// `started` is when the peer was set up (for a peer never heard from).
fn udp_failing(device: &Device, peer: &PublicKey, started: Option<Instant>) -> bool {
    let Some(status) = device.peer(peer) else {
        return false;
    };
    if status.stream.is_some() {
        return false;
    }
    match status.since_udp_rx {
        Some(silence) => silence >= SILENCE,
        None => started.is_none_or(|t| t.elapsed() >= FALLBACK_AFTER),
    }
}

async fn wait_until_udp_fails(device: &Device, peer: &PublicKey) {
    let started = Instant::now();
    let mut check = tokio::time::interval(CHECK);
    loop {
        check.tick().await;
        if udp_failing(device, peer, Some(started)) {
            return;
        }
    }
}

type Tls = tokio_rustls::client::TlsStream<TcpStream>;

/// Opens TLS to `host:port` offering only the WireGuard ALPN; fails unless the server picks it.
async fn connect(host: &str, port: u16) -> io::Result<(Tls, SocketAddr)> {
    let addr = tokio::net::lookup_host((host, port))
        .await?
        .find(SocketAddr::is_ipv4)
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no IPv4 address"))?;
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TCP connect timed out"))??;
    let _ = tcp.set_nodelay(true);
    let name = ServerName::try_from(host.to_string())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let tls = tokio::time::timeout(CONNECT_TIMEOUT, connector().connect(name, tcp))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))??;
    if tls.get_ref().1.alpn_protocol() != Some(kakuremichi_tunnel::frame::TLS_ALPN) {
        return Err(io::Error::other(
            "the server there is not a kakuremichi Gateway accepting WireGuard over TLS (ALPN kakuremichi-wg/1)",
        ));
    }
    Ok((tls, addr))
}

fn connector() -> TlsConnector {
    let provider = Arc::new(ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(WireguardAuthenticates(provider)))
        .with_no_client_auth();
    config.alpn_protocols = vec![kakuremichi_tunnel::frame::TLS_ALPN.to_vec()];
    TlsConnector::from(Arc::new(config))
}

/// Accepts any certificate (see the module comment) but still checks the handshake signatures,
/// so the TLS session itself is sound.
#[derive(Debug)]
struct WireguardAuthenticates(Arc<CryptoProvider>);

impl ServerCertVerifier for WireguardAuthenticates {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_hosts() {
        assert_eq!(
            endpoint_host("gw.example.com:51820"),
            Some("gw.example.com")
        );
        assert_eq!(endpoint_host("198.51.100.4:51820"), Some("198.51.100.4"));
        assert_eq!(endpoint_host("[2001:db8::1]:51820"), Some("2001:db8::1"));
        assert_eq!(endpoint_host("nohost"), None);
        assert_eq!(endpoint_host(":51820"), None);
    }
}
