//! In-process roles for the HTTPS tests: Control with given TLS settings, Gateways bound to chosen
//! 127.0.0.x addresses (so the CA can reach each one), an Agent and an origin, plus HTTPS clients
//! that trust a given root and resolve names to a chosen Gateway.

#![allow(dead_code)] // not every test uses every helper

pub mod pebble;

use crate::common::{eventually, Api, ADMIN_EMAIL, ADMIN_PASSWORD};
use kakuremichi_node::Secret;
use serde_json::{json, Value};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

pub use crate::common::{spawn_gateway, Stop};

pub struct Control {
    pub api: Api,
    pub stop: Stop,
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Control {
    /// Stops Control and waits until it is gone.
    pub async fn shut_down(self) {
        drop(self.stop);
        let _ = tokio::time::timeout(Duration::from_secs(30), self.task).await;
    }
}

pub async fn start_control(
    dir: &Path,
    edit: impl FnOnce(&mut kakuremichi_control::ControlConfig),
) -> Control {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let mut config = kakuremichi_control::ControlConfig {
        data_dir: dir.to_path_buf(),
        admin_email: Some(ADMIN_EMAIL.into()),
        admin_password: Some(ADMIN_PASSWORD.into()),
        ..Default::default()
    };
    config.acme.retry_base = Duration::from_secs(1);
    config.acme.retry_cap = Duration::from_secs(2);
    edit(&mut config);
    let (stop, wait) = Stop::new();
    let task = tokio::spawn(kakuremichi_control::run(config, listener, wait()));
    let api = Api::login(base).await;
    Control { api, stop, task }
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

pub struct Gateway {
    pub addrs: Addrs,
    pub token: String,
    pub wg: SocketAddr,
    pub dir: PathBuf,
    pub stop: Stop,
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Gateway {
    pub async fn shut_down(self) -> (String, SocketAddr, PathBuf, Addrs) {
        drop(self.stop);
        let _ = tokio::time::timeout(Duration::from_secs(40), self.task).await;
        (self.token, self.wg, self.dir, self.addrs)
    }
}

pub async fn create_gateway(api: &Api, name: &str, addrs: Addrs, dir: PathBuf) -> Gateway {
    let wg = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let created = api
        .post(
            "gateways",
            json!({"name": name, "public_endpoint": wg.local_addr().unwrap().to_string()}),
        )
        .await;
    let token = created["token"].as_str().unwrap().to_string();
    start_gateway(&api.base, token, wg, addrs, dir).await
}

pub async fn start_gateway(
    control: &str,
    token: String,
    wg: std::net::UdpSocket,
    addrs: Addrs,
    dir: PathBuf,
) -> Gateway {
    let http = TcpListener::bind(addrs.http()).await.unwrap();
    let https = TcpListener::bind(addrs.https()).await.unwrap();
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let wg_addr = wg.local_addr().unwrap();
    let listeners = kakuremichi_gateway::GatewayListeners {
        http,
        https,
        admin,
        wg,
    };
    let (stop, task) = spawn_gateway(control, &token, listeners, dir.clone());
    Gateway {
        addrs,
        token,
        wg: wg_addr,
        dir,
        stop,
        task,
    }
}

/// An Agent and a hello origin; returns the agent id, the origin's address and their stops.
pub async fn start_agent_and_origin(api: &Api, dir: PathBuf) -> (i64, SocketAddr, Vec<Stop>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = listener.local_addr().unwrap();
    let (origin_stop, wait) = Stop::new();
    tokio::spawn(kakuremichi::hello::serve(
        listener,
        "https-test".into(),
        wait(),
    ));
    let created = api.post("agents", json!({"name": "home"})).await;
    let mut config = kakuremichi_agent::AgentConfig::new(
        api.base.clone(),
        Secret::new(created["api_key"].as_str().unwrap().to_string()),
    );
    config.data_dir = Some(dir);
    let (agent_stop, wait) = Stop::new();
    tokio::spawn(kakuremichi_agent::run(config, wait()));
    (
        created["id"].as_i64().unwrap(),
        origin,
        vec![agent_stop, origin_stop],
    )
}

/// Waits until the tunnel's certificate has `status`; returns the certificate object.
pub async fn wait_certificate(api: &Api, tunnel: i64, status: &str, within: Duration) -> Value {
    let path = format!("tunnels/{tunnel}");
    eventually(
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
