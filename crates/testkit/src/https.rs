//! The HTTPS tests' part of the kit: Control with fast ACME retries, Gateways on chosen
//! 127.0.0.x addresses (so the CA can reach each one), and HTTPS clients that trust a given root
//! and resolve names to a chosen Gateway.

use crate::roles::{control_config, start_agent, start_origin, InProcessControl, InProcessGateway};
use crate::{Api, Stop};
use serde_json::Value;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Control and the admin's API.
pub struct Control {
    pub api: Api,
    pub running: InProcessControl,
}

impl Control {
    /// Stops Control and waits until it is gone.
    pub async fn shut_down(self) {
        self.running.shut_down().await;
    }
}

/// Control with ACME retries after 1-2 s (not minutes), then `edit`ed.
pub async fn start_control(
    dir: &Path,
    edit: impl FnOnce(&mut kakuremichi_control::ControlConfig),
) -> Control {
    let mut config = control_config(dir);
    config.acme.retry_base = Duration::from_secs(1);
    config.acme.retry_cap = Duration::from_secs(2);
    edit(&mut config);
    let running = InProcessControl::start(config).await;
    let api = Api::login(running.base.clone()).await;
    Control { api, running }
}

/// Where a Gateway listens; the same ports on different 127.0.0.x for every Gateway of a test.
#[derive(Clone, Copy)]
pub struct Addrs {
    pub ip: Ipv4Addr,
    pub http: u16,
    pub https: u16,
}

impl Addrs {
    pub fn http(&self) -> SocketAddr {
        SocketAddr::from((self.ip, self.http))
    }
    pub fn https(&self) -> SocketAddr {
        SocketAddr::from((self.ip, self.https))
    }
}

/// Picks HTTP and HTTPS ports free on every one of `ips`.
pub fn ports_for(ips: &[Ipv4Addr]) -> (u16, u16) {
    'retry: loop {
        let probe = |ip| std::net::TcpListener::bind(SocketAddr::from((ip, 0)));
        let (a, b) = (probe(ips[0]).unwrap(), probe(ips[0]).unwrap());
        let (http, https) = (
            a.local_addr().unwrap().port(),
            b.local_addr().unwrap().port(),
        );
        drop((a, b));
        for ip in ips {
            for port in [http, https] {
                if std::net::TcpListener::bind(SocketAddr::from((*ip, port))).is_err() {
                    continue 'retry;
                }
            }
        }
        return (http, https);
    }
}

/// Creates Gateway `name` and starts it with HTTP and HTTPS on `addrs`.
pub async fn create_gateway(api: &Api, name: &str, addrs: Addrs, dir: PathBuf) -> InProcessGateway {
    InProcessGateway::create(api, name, Some((addrs.http(), addrs.https())), dir).await
}

/// One Gateway per address of `ips` (`gw0`, `gw1`, ...), all with the same HTTP and HTTPS ports,
/// their data under `dir`: where each listens, and the running Gateways.
pub async fn create_gateways(
    api: &Api,
    ips: &[Ipv4Addr],
    dir: &std::path::Path,
) -> (Vec<Addrs>, Vec<InProcessGateway>) {
    let (http, https) = ports_for(ips);
    let addrs: Vec<Addrs> = ips.iter().map(|&ip| Addrs { ip, http, https }).collect();
    let mut running = Vec::new();
    for (i, a) in addrs.iter().enumerate() {
        let name = format!("gw{i}");
        running.push(create_gateway(api, &name, *a, dir.join(&name)).await);
    }
    (addrs, running)
}

/// Starts a known Gateway (by `token`, on `wg`) again with HTTP and HTTPS on `addrs`.
pub async fn start_gateway(
    control: &str,
    token: String,
    wg: std::net::UdpSocket,
    addrs: Addrs,
    dir: PathBuf,
) -> InProcessGateway {
    InProcessGateway::start(control, token, wg, Some((addrs.http(), addrs.https())), dir).await
}

/// An Agent and a hello origin; returns the agent id, the origin's address and their stops.
pub async fn start_agent_and_origin(api: &Api, dir: PathBuf) -> (i64, SocketAddr, Vec<Stop>) {
    let (origin, origin_stop) = start_origin("https-test").await;
    let (agent_id, agent_stop) = start_agent(api, "home", dir).await;
    (agent_id, origin, vec![agent_stop, origin_stop])
}

/// Waits until the tunnel's certificate has `status`; returns the certificate object.
pub async fn wait_certificate(api: &Api, tunnel: i64, status: &str, within: Duration) -> Value {
    let path = format!("tunnels/{tunnel}");
    // Slower than `eventually`: every poll counts against the API's per-user rate limit.
    crate::wait::eventually_every(
        Duration::from_millis(200),
        within,
        &format!("tunnel {tunnel} certificate {status}"),
        || {
            let (api, path) = (api.clone(), path.clone());
            async move {
                let t = api.get(&path).await;
                (t["certificate"]["status"] == status).then(|| t["certificate"].clone())
            }
        },
    )
    .await
}

/// A client trusting only `root_pem`, sending every name to `gateway` (an HTTPS address).
pub fn https_client(root_pem: &str, hosts: &[&str], gateway: SocketAddr) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(root_pem.as_bytes()).unwrap())
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .no_proxy();
    for host in hosts {
        builder = builder.resolve(host, gateway);
    }
    builder.build().unwrap()
}

/// GET `https://host:port/` through `gateway`: status, or 0 on any error.
pub async fn https_get(
    root_pem: &str,
    host: &str,
    gateway: SocketAddr,
) -> (u16, reqwest::header::HeaderMap) {
    let client = https_client(root_pem, &[host], gateway);
    match client
        .get(format!("https://{host}:{}/", gateway.port()))
        .send()
        .await
    {
        Ok(r) => (r.status().as_u16(), r.headers().clone()),
        Err(_) => (0, Default::default()),
    }
}

/// A raw TLS handshake for `sni` that accepts any certificate: Ok(chain) or the handshake error.
pub async fn handshake(
    addr: SocketAddr,
    sni: &str,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, std::io::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from(sni.to_string()).unwrap();
    let stream = connector.connect(name, tcp).await?;
    Ok(stream
        .get_ref()
        .1
        .peer_certificates()
        .unwrap_or_default()
        .to_vec())
}

#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
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
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
