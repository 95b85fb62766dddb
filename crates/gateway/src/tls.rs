//! TLS for the Gateway's HTTPS listener: the certificates of every hostname it serves, chosen by
//! SNI, and the ACME challenges Control asks it to answer.
//!
//! Everything lives in [`CertStore`], whose maps are rebuilt from each config snapshot and swapped
//! atomically: a handshake sees the old set or the new one, established connections are never
//! touched, and nothing restarts. An unknown SNI (or none) gets no certificate, so the client sees
//! a clean handshake failure rather than another site's certificate. A ClientHello offering only
//! `acme-tls/1` is the CA validating TLS-ALPN-01: it gets that hostname's challenge certificate.
//! A certificate stored under a wildcard (`*.apps.test`) serves every SNI one label below
//! (`a.apps.test`) that has no certificate of its own, as the route table does (see [`HostMap`]).
//!
//! A ClientHello offering `kakuremichi-wg/1` is an Agent whose UDP is blocked, carrying WireGuard
//! over TLS instead (see [`WG_TLS_ALPN`]): the connection goes to the WireGuard device rather than
//! to HTTP. WireGuard authenticates both ends itself, so TLS is only there to pass firewalls
//! that allow HTTPS alone; such clients do not verify the certificate, and when the SNI names no
//! hostname of ours they get a self-signed one made at start.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use arc_swap::{ArcSwap, ArcSwapOption};
use kakuremichi_proto::{AcmeChallenges, TlsCertificate};
use kakuremichi_tunnel::Device;
use rustls::crypto::ring::default_provider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

use crate::hostmap::HostMap;
use crate::proxy::routes::normalize_host;

/// ALPN protocol id of TLS-ALPN-01 validation (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// ALPN protocol id of WireGuard carried over TLS: the fallback of Agents whose UDP is blocked.
/// Frames are a 2-byte big-endian length and one WireGuard datagram, both ways.
pub const WG_TLS_ALPN: &[u8] = kakuremichi_tunnel::frame::TLS_ALPN;

/// Why a certificate from a snapshot cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("no certificate in the PEM chain")]
    NoCertificate,
    #[error("unreadable PEM: {0}")]
    Pem(String),
    #[error("unusable private key: {0}")]
    Key(String),
}

/// Parses a PEM chain and key into what rustls serves.
pub fn certified_key(cert: &TlsCertificate) -> Result<Arc<CertifiedKey>, CertError> {
    let chain = CertificateDer::pem_slice_iter(cert.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertError::Pem(e.to_string()))?;
    if chain.is_empty() {
        return Err(CertError::NoCertificate);
    }
    // The key's error would describe the key; say only that it is bad.
    let key = PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes())
        .map_err(|_| CertError::Key("not a PEM private key".into()))?;
    let signer = default_provider()
        .key_provider
        .load_private_key(key)
        .map_err(|_| CertError::Key("unsupported key type".into()))?;
    Ok(Arc::new(CertifiedKey::new(chain, signer)))
}

/// TLS-ALPN-01 challenges, by exact hostname (a CA never validates a wildcard that way).
type KeyMap = HashMap<String, Arc<CertifiedKey>>;

/// The certificates by hostname, and the hostnames that must get none (swapped together).
#[derive(Default)]
struct Certs {
    by_host: HostMap<Arc<CertifiedKey>>,
    /// Exact names of `tls: off` tunnels: no certificate, even when a wildcard's covers them.
    plain: HashSet<String>,
}

impl Certs {
    fn get(&self, host: &str) -> Option<&Arc<CertifiedKey>> {
        if !self.plain.is_empty() && self.plain.contains(host) {
            return None;
        }
        self.by_host.get(host)
    }
}

/// Certificates and ACME challenges of one Gateway, hot-swapped on every snapshot.
#[derive(Default)]
pub struct CertStore {
    certs: ArcSwap<Certs>,
    alpn: ArcSwap<KeyMap>,
    http01: ArcSwap<HashMap<String, String>>,
    /// Served to WireGuard-over-TLS clients whose SNI names no hostname of ours.
    wg_fallback_cert: OnceLock<Option<Arc<CertifiedKey>>>,
    /// Where WireGuard-over-TLS connections go, once the tunnel is up.
    wireguard: ArcSwapOption<Device>,
    /// When each certificate Control sent expires (Unix seconds), by the name it came under.
    expiry: ArcSwap<Vec<(String, i64)>>,
}

impl fmt::Debug for CertStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertStore")
            .field("hostnames", &self.certs.load().by_host.len())
            .field("tls_alpn01", &self.alpn.load().len())
            .field("http01", &self.http01.load().len())
            .finish()
    }
}

impl CertStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Replaces every certificate and challenge; `plain` names the hostnames that get no
    /// certificate at all (`tls: off` tunnels). A certificate that cannot be parsed is logged and
    /// left out (that hostname then fails its handshakes) instead of failing the whole snapshot.
    pub fn apply(
        &self,
        certificates: &BTreeMap<String, TlsCertificate>,
        acme: &AcmeChallenges,
        plain: HashSet<String>,
    ) {
        self.expiry.store(Arc::new(
            certificates
                .iter()
                .filter_map(|(host, cert)| Some((host.clone(), not_after(cert)?)))
                .collect(),
        ));
        self.certs.store(Arc::new(Certs {
            by_host: parse_all(certificates.iter()),
            plain: plain
                .iter()
                .map(|h| normalize_host(h).into_owned())
                .collect(),
        }));
        self.alpn.store(Arc::new(parse_all(
            acme.tls_alpn01
                .iter()
                .map(|(host, c)| (host, &c.certificate)),
        )));
        self.http01.store(Arc::new(
            acme.http01
                .iter()
                .map(|(t, k)| (t.clone(), k.clone()))
                .collect(),
        ));
    }

    /// True when a certificate for `host` (already normalised) is loaded, its own or a
    /// wildcard's.
    pub fn has_certificate(&self, host: &str) -> bool {
        self.certs.load().get(host).is_some()
    }

    /// When each certificate expires (Unix seconds), by the hostname Control sent it under
    /// (`*.example.com` for a wildcard).
    pub fn expiry(&self) -> Arc<Vec<(String, i64)>> {
        self.expiry.load_full()
    }

    /// The key authorization for an HTTP-01 token, if Control pushed one.
    pub fn http01(&self, token: &str) -> Option<String> {
        self.http01.load().get(token).cloned()
    }

    pub fn len(&self) -> usize {
        self.certs.load().by_host.len()
    }

    pub fn is_empty(&self) -> bool {
        self.certs.load().by_host.is_empty()
    }

    /// Sends WireGuard-over-TLS connections to `device` from now on.
    pub fn set_wireguard(&self, device: Device) {
        self.wireguard.store(Some(Arc::new(device)));
    }

    /// The WireGuard device, once the tunnel is up (its peers are in `/metrics`).
    pub fn wireguard(&self) -> Option<Arc<Device>> {
        self.wireguard.load_full()
    }

    /// Hands a TLS connection that negotiated [`WG_TLS_ALPN`] to the WireGuard device; without
    /// one yet (no config from Control so far) it is closed.
    pub(crate) fn hand_over_wireguard<S>(&self, stream: S, remote: SocketAddr)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
    {
        match self.wireguard.load_full() {
            Some(device) => device.accept_stream(stream, remote),
            None => tracing::debug!(%remote, "WireGuard over TLS before the tunnel is up; closed"),
        }
    }

    /// The certificate for a WireGuard-over-TLS client: ours for its SNI, else a self-signed one.
    fn select_wireguard(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        self.select(sni, false).or_else(|| {
            self.wg_fallback_cert
                .get_or_init(|| match self_signed_wireguard() {
                    Ok(key) => Some(key),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot make a certificate for WireGuard over TLS");
                        None
                    }
                })
                .clone()
        })
    }

    /// The certificate for a ClientHello's SNI and ALPN offer.
    fn select(&self, sni: Option<&str>, alpn_acme: bool) -> Option<Arc<CertifiedKey>> {
        let host = normalize_host(sni?);
        if alpn_acme {
            return self.alpn.load().get(host.as_ref()).cloned();
        }
        self.certs.load().get(host.as_ref()).cloned()
    }

    /// A rustls server configuration backed by this store: TLS 1.2 and 1.3 only, the provider's
    /// modern cipher suites, ALPN h2 and http/1.1 (plus `acme-tls/1` for validation).
    pub fn server_config(self: &Arc<Self>) -> Arc<ServerConfig> {
        let mut config = ServerConfig::builder_with_provider(Arc::new(default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .expect("ring supports TLS 1.2 and 1.3")
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(Resolver(self.clone())));
        // Resumption by stateless tickets (keys rotated by rustls, in memory only) instead of
        // a server-side session cache: a cache entry per recent client, allocated among the
        // connections' buffers, kept heap pages resident after a burst of new clients, and 256
        // entries resume few clients of a busy Gateway anyway.
        match rustls::crypto::ring::Ticketer::new() {
            Ok(ticketer) => {
                config.ticketer = ticketer;
                config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
            }
            Err(e) => {
                tracing::warn!(error = %e, "no TLS session tickets; clients will not resume sessions")
            }
        }
        config.alpn_protocols = vec![
            b"h2".to_vec(),
            b"http/1.1".to_vec(),
            ACME_TLS_ALPN.to_vec(),
            WG_TLS_ALPN.to_vec(),
        ];
        Arc::new(config)
    }
}

/// A throwaway self-signed certificate: WireGuard-over-TLS clients do not verify it.
fn self_signed_wireguard() -> Result<Arc<CertifiedKey>, CertError> {
    let made = rcgen::generate_simple_self_signed(vec!["kakuremichi-gateway".to_string()])
        .map_err(|e| CertError::Key(e.to_string()))?;
    certified_key(&TlsCertificate {
        cert_pem: made.cert.pem(),
        key_pem: made.signing_key.serialize_pem(),
    })
}

/// The `notAfter` (Unix seconds) of a certificate's leaf, if it parses.
fn not_after(cert: &TlsCertificate) -> Option<i64> {
    let leaf = CertificateDer::pem_slice_iter(cert.cert_pem.as_bytes())
        .next()?
        .ok()?;
    let (_, parsed) = x509_parser::parse_x509_certificate(&leaf).ok()?;
    Some(parsed.validity().not_after.timestamp())
}

fn parse_all<'a, M: FromIterator<(String, Arc<CertifiedKey>)>>(
    entries: impl Iterator<Item = (&'a String, &'a TlsCertificate)>,
) -> M {
    entries
        .filter_map(|(host, cert)| match certified_key(cert) {
            Ok(key) => Some((normalize_host(host).into_owned(), key)),
            Err(e) => {
                tracing::warn!(%host, error = %e, "ignoring an unusable certificate from Control");
                None
            }
        })
        .collect()
}

#[derive(Debug)]
struct Resolver(Arc<CertStore>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // RFC 8737: the validation handshake offers acme-tls/1 and nothing else.
        let offers = |alpn: &[u8]| hello.alpn().is_some_and(|mut o| o.any(|p| p == alpn));
        if offers(WG_TLS_ALPN) {
            return self.0.select_wireguard(hello.server_name());
        }
        self.0.select(hello.server_name(), offers(ACME_TLS_ALPN))
    }
}

#[cfg(test)]
mod tests;
