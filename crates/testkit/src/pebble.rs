//! A real ACME CA for the tests: Pebble and pebble-challtestsrv (Debian package `pebble`), each
//! started with its own config on free loopback ports and killed when dropped.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::eventually;

/// Returns false (after a loud SKIPPED line) when Pebble is not installed and the run does not
/// require it; panics with the install line when it does ([`crate::peers::must_run`]).
pub fn available(test: &str) -> bool {
    let found = crate::peers::find_in_path(&["pebble"]).is_some()
        && crate::peers::find_in_path(&["pebble-challtestsrv"]).is_some();
    let why = "pebble / pebble-challtestsrv not installed (sudo apt-get install -y pebble)";
    crate::peers::can_run(test, (!found).then(|| why.to_string()))
}

/// A process killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_tcp() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn free_udp() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Pebble + its DNS server.
pub struct Pebble {
    /// ACME directory URL.
    pub directory: String,
    /// PEM of the CA that signed Pebble's own HTTPS certificate (for `KAKUREMICHI_ACME_CA_ROOTS`).
    pub server_roots: PathBuf,
    /// Pebble's issuing root, which clients of the Gateways must trust.
    pub issuing_root: String,
    /// pebble-challtestsrv's management URL (`None` when Pebble asks a real DNS server).
    dns_management: Option<String>,
    log: PathBuf,
    http: reqwest::Client,
    _procs: Vec<Proc>,
}

impl Pebble {
    /// Starts Pebble validating HTTP-01 on `http_port` and TLS-ALPN-01 on `tls_port`; names
    /// not added with [`Pebble::point`] resolve to 127.0.0.9, where nothing listens.
    pub async fn start(
        dir: &Path,
        http_port: u16,
        tls_port: u16,
        validity_secs: Option<u64>,
    ) -> Pebble {
        Self::start_inner(dir, http_port, tls_port, validity_secs, None).await
    }

    /// Starts Pebble resolving every name through the DNS server at `dns_server` (`ip:port`, a
    /// real authoritative server such as [`crate::dns::Bind`]): DNS-01 is validated there.
    /// [`Pebble::point`] is not available.
    pub async fn start_with_dns(
        dir: &Path,
        http_port: u16,
        tls_port: u16,
        dns_server: &str,
    ) -> Pebble {
        Self::start_inner(dir, http_port, tls_port, None, Some(dns_server)).await
    }

    async fn start_inner(
        dir: &Path,
        http_port: u16,
        tls_port: u16,
        validity_secs: Option<u64>,
        real_dns: Option<&str>,
    ) -> Pebble {
        let (srv_cert, srv_key, ca_pem) = server_certificate();
        std::fs::write(dir.join("srv.pem"), srv_cert).unwrap();
        std::fs::write(dir.join("srv.key"), srv_key).unwrap();
        let server_roots = dir.join("pebble-ca.pem");
        std::fs::write(&server_roots, &ca_pem).unwrap();
        let (acme_port, mgmt_port, dns_port, dns_mgmt_port) =
            (free_tcp(), free_tcp(), free_udp(), free_tcp());
        let mut pebble = serde_json::json!({
            "listenAddress": format!("127.0.0.1:{acme_port}"),
            "managementListenAddress": format!("127.0.0.1:{mgmt_port}"),
            "certificate": dir.join("srv.pem"),
            "privateKey": dir.join("srv.key"),
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
        });
        if let Some(v) = validity_secs {
            pebble["certificateValidityPeriod"] = v.into();
        }
        let config = dir.join("pebble.json");
        std::fs::write(&config, serde_json::json!({ "pebble": pebble }).to_string()).unwrap();

        let mut procs = Vec::new();
        let dns_server = match real_dns {
            Some(server) => server.to_string(),
            None => {
                let dns = Command::new("pebble-challtestsrv")
                    .args(["-defaultIPv4", "127.0.0.9", "-defaultIPv6", ""])
                    .args(["-dns01", &format!("127.0.0.1:{dns_port}")])
                    .args(["-management", &format!("127.0.0.1:{dns_mgmt_port}")])
                    .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("start pebble-challtestsrv");
                procs.push(Proc(dns));
                format!("127.0.0.1:{dns_port}")
            }
        };
        let log = dir.join("pebble.log");
        let log_file = std::fs::File::create(&log).unwrap();
        let pebble = Command::new("pebble")
            .args(["-config", config.to_str().unwrap()])
            .args(["-dnsserver", &dns_server])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .spawn()
            .expect("start pebble");
        procs.push(Proc(pebble));

        let http = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap())
            .no_proxy()
            .build()
            .unwrap();
        let directory = format!("https://127.0.0.1:{acme_port}/dir");
        let roots_url = format!("https://127.0.0.1:{mgmt_port}/roots/0");
        let issuing_root = eventually(Duration::from_secs(20), "Pebble up", || {
            let (http, url, dir) = (http.clone(), roots_url.clone(), directory.clone());
            async move {
                http.get(&dir).send().await.ok()?.error_for_status().ok()?;
                let r = http.get(&url).send().await.ok()?.error_for_status().ok()?;
                r.text().await.ok()
            }
        })
        .await;
        let dns_management = real_dns.is_none().then(|| format!("http://127.0.0.1:{dns_mgmt_port}"));
        if let Some(management) = &dns_management {
            eventually(Duration::from_secs(20), "challtestsrv up", || {
                let (http, url) = (http.clone(), format!("{management}/clear-a"));
                async move {
                    let body = serde_json::json!({"host": "warmup.test."});
                    http.post(&url)
                        .json(&body)
                        .send()
                        .await
                        .ok()
                        .filter(|r| r.status().is_success())
                }
            })
            .await;
        }
        Pebble {
            directory,
            server_roots,
            issuing_root,
            dns_management,
            log,
            http,
            _procs: procs,
        }
    }

    /// Points `host` at `addresses` in the test DNS.
    pub async fn point(&self, host: &str, addresses: &[Ipv4Addr]) {
        let addrs: Vec<String> = addresses.iter().map(|a| a.to_string()).collect();
        let body = serde_json::json!({"host": format!("{host}."), "addresses": addrs});
        let management = self
            .dns_management
            .as_ref()
            .expect("Pebble::point needs pebble-challtestsrv (Pebble::start)");
        let r = self
            .http
            .post(format!("{management}/add-a"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "add-a {host}");
    }

    /// How many certificates Pebble issued so far (from its log).
    pub fn issued(&self) -> usize {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("Issued certificate serial"))
            .count()
    }

    /// How many orders Pebble received (`POST /order-plz`, from its log).
    pub fn orders(&self) -> usize {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("POST /order-plz"))
            .count()
    }
}

/// A throwaway CA and a server certificate for 127.0.0.1 and localhost (Pebble's HTTPS, a
/// PostgreSQL server's TLS): (cert, key, CA) as PEM.
pub fn server_certificate() -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let params =
        CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    (cert.pem(), key.serialize_pem(), ca_cert.pem())
}

/// The address a test Gateway listens on: `ip` with `port`.
pub fn at(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::from((ip, port))
}
