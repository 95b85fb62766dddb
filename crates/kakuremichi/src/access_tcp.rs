//! `kakuremichi access tcp --hostname db.example.com --listen 127.0.0.1:5432`: a local port for
//! a `tcp` tunnel with access control (which has no public port). Each connection to it is
//! carried in a WebSocket to the tunnel's hostname over HTTPS (`/.kakuremichi/tcp` on any
//! Gateway), with the user's access token as the same cookie a browser would send.
//!
//! The token comes from signing in once in the browser, the same flow as a protected HTTP
//! tunnel's: Control's `/access/authorize` (the address the Gateway's `302` names), with this
//! command's loopback port and a random nonce, so Control hands the token to
//! `http://127.0.0.1:<port>/callback` instead of the tunnel. It is kept in the user's config
//! directory (`$XDG_CONFIG_HOME/kakuremichi/access/<hostname>.token`, mode 0600) until it expires.

use anyhow::{bail, Context};
use clap::Args;
use rand::Rng as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// The cookie a Gateway reads the access token from over HTTPS.
const ACCESS_COOKIE: &str = "__Host-km_access";
/// How long the browser sign-in may take.
const SIGN_IN_WITHIN: Duration = Duration::from_secs(600);
/// Largest WebSocket message accepted from the Gateway.
const MAX_MESSAGE: usize = 1 << 20;

#[derive(Args)]
pub struct AccessTcpArgs {
    /// The tunnel's hostname: a `tcp` tunnel with access control.
    #[arg(long)]
    hostname: String,
    /// Local address to listen on; every connection to it reaches the tunnel's target.
    #[arg(long)]
    listen: SocketAddr,
    /// A Gateway's HTTPS address (`host:port`), when the hostname's DNS does not lead to one.
    /// Default: the hostname, port 443.
    #[arg(long, env = "KAKUREMICHI_GATEWAY")]
    gateway: Option<String>,
    /// A CA certificate (PEM) to trust besides the public ones, e.g. Control's internal CA.
    #[arg(long, env = "KAKUREMICHI_CA_FILE")]
    ca_file: Option<PathBuf>,
    /// Only print the sign-in link; do not try to open a browser.
    #[arg(long)]
    no_browser: bool,
    /// Where the access token is kept. Default: $XDG_CONFIG_HOME/kakuremichi (or
    /// ~/.config/kakuremichi).
    #[arg(long, env = "KAKUREMICHI_CONFIG_DIR")]
    config_dir: Option<PathBuf>,
}

/// How the Gateway answered a signed-in check.
enum Check {
    SignedIn,
    /// Sign in at this URL (Control's `/access/authorize?...`).
    SignIn(String),
}

struct Tunnel {
    host: String,
    /// Where the Gateway's HTTPS port is.
    gateway: String,
    tls: Arc<rustls::ClientConfig>,
    http: reqwest::Client,
}

pub async fn run(args: AccessTcpArgs) -> anyhow::Result<()> {
    let host = args
        .hostname
        .trim()
        .trim_end_matches('.')
        .to_ascii_lowercase();
    if host.is_empty() || host.contains(['/', ':', ' ']) {
        bail!("--hostname takes a host name such as db.example.com");
    }
    let tunnel = Tunnel::new(&host, &args)?;
    let token_file = token_path(args.config_dir.as_deref(), &host)?;
    let mut token = std::fs::read_to_string(&token_file)
        .ok()
        .map(|t| t.trim().to_string());
    loop {
        match tunnel.check(token.as_deref()).await? {
            Check::SignedIn => break,
            Check::SignIn(url) => {
                let fresh = sign_in(&host, &url, args.no_browser).await?;
                crate::user_config::write_private(&token_file, fresh.as_bytes())?;
                token = Some(fresh);
            }
        }
    }
    let token = token.unwrap_or_default();
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    eprintln!(
        "Signed in. Connections to {} reach {host} (Ctrl-C to stop).",
        listener.local_addr()?
    );
    let tunnel = Arc::new(tunnel);
    loop {
        let (conn, peer) = tokio::select! {
            accepted = listener.accept() => accepted?,
            () = crate::signal::shutdown() => return Ok(()),
        };
        let (tunnel, token) = (tunnel.clone(), token.clone());
        tokio::spawn(async move {
            if let Err(e) = tunnel.carry(conn, &token).await {
                eprintln!("connection from {peer}: {e:#}");
            }
        });
    }
}

impl Tunnel {
    fn new(host: &str, args: &AccessTcpArgs) -> anyhow::Result<Tunnel> {
        let gateway = match &args.gateway {
            Some(g) if g.contains(':') => g.clone(),
            Some(g) => format!("{g}:443"),
            None => format!("{host}:443"),
        };
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        let mut http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(30));
        if let Some(path) = &args.ca_file {
            let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            use rustls::pki_types::{pem::PemObject as _, CertificateDer};
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert =
                    cert.with_context(|| format!("{}: not a PEM certificate", path.display()))?;
                roots.add(cert)?;
            }
            http = http.add_root_certificate(reqwest::Certificate::from_pem(&pem)?);
        }
        // reqwest resolves the hostname to the Gateway given (the Host and SNI stay the name).
        if args.gateway.is_some() {
            // (Host and SNI stay the tunnel's name; only where to connect changes.)
            let addr = std::net::ToSocketAddrs::to_socket_addrs(&gateway)
                .with_context(|| format!("--gateway {gateway}"))?
                .next()
                .context("--gateway resolves to no address")?;
            http = http.resolve(host, addr);
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Tunnel {
            host: host.to_string(),
            gateway,
            tls: Arc::new(tls),
            http: http.build()?,
        })
    }

    /// `https://host[:port]/.kakuremichi/tcp` (`scheme` `wss` for the WebSocket).
    fn url(&self, scheme: &str) -> String {
        let path = kakuremichi_gateway::proxy::TCP_PATH;
        match self.gateway.rsplit_once(':').map_or("443", |(_, p)| p) {
            "443" => format!("{scheme}://{}{path}", self.host),
            port => format!("{scheme}://{}:{port}{path}", self.host),
        }
    }

    /// Asks the Gateway (a plain GET, which touches no target) whether `token` lets us in.
    async fn check(&self, token: Option<&str>) -> anyhow::Result<Check> {
        let mut req = self.http.get(self.url("https"));
        if let Some(token) = token {
            req = req.header("cookie", format!("{ACCESS_COOKIE}={token}"));
        }
        let resp = req.send().await.with_context(|| {
            format!(
                "cannot reach {} over HTTPS (at {})",
                self.host, self.gateway
            )
        })?;
        match resp.status().as_u16() {
            // The tunnel's answer to a request that is not a WebSocket, past the access check.
            426 => Ok(Check::SignedIn),
            404 => bail!(
                "{} is not a tcp tunnel with access control on the Gateway at {} (404): check \
                 the name, and --gateway",
                self.host,
                self.gateway
            ),
            302 | 303 => {
                let to = resp
                    .headers()
                    .get("location")
                    .and_then(|l| l.to_str().ok())
                    .unwrap_or("");
                if !to.contains("/access/authorize?") {
                    bail!(
                        "{} sends us to {to:?}: not a kakuremichi sign-in",
                        self.host
                    );
                }
                Ok(Check::SignIn(to.to_string()))
            }
            status => {
                let body = resp.text().await.unwrap_or_default();
                bail!(
                    "{} answered {status}: {}",
                    self.host,
                    body.chars().take(300).collect::<String>()
                )
            }
        }
    }

    /// Carries one local connection through a WebSocket to the tunnel's target.
    async fn carry(&self, conn: TcpStream, token: &str) -> anyhow::Result<()> {
        let _ = conn.set_nodelay(true);
        let mut request = self.url("wss").into_client_request()?;
        request.headers_mut().insert(
            "cookie",
            HeaderValue::from_str(&format!("{ACCESS_COOKIE}={token}"))?,
        );
        let addr = &self.gateway;
        let tcp = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        let _ = tcp.set_nodelay(true);
        let config = WebSocketConfig::default()
            .max_message_size(Some(MAX_MESSAGE))
            .max_frame_size(Some(MAX_MESSAGE));
        let connector = tokio_tungstenite::Connector::Rustls(self.tls.clone());
        let (ws, _) = tokio_tungstenite::client_async_tls_with_config(
            request,
            tcp,
            Some(config),
            Some(connector),
        )
        .await
        .map_err(|e| match e {
            tokio_tungstenite::tungstenite::Error::Http(r) if r.status().is_redirection() => {
                anyhow::anyhow!("the sign-in expired: run the command again to sign in")
            }
            e => anyhow::anyhow!("opening the tunnel: {e}"),
        })?;
        kakuremichi_gateway::proxy::bridge_websocket(ws, conn).await;
        Ok(())
    }
}

/// Where the token of `host` is kept.
fn token_path(config_dir: Option<&Path>, host: &str) -> anyhow::Result<PathBuf> {
    let dir = crate::user_config::dir(config_dir)?;
    Ok(dir.join("access").join(format!("{host}.token")))
}

/// Signs in through the browser: opens (or prints) `authorize` with this command's loopback
/// port and a nonce, and waits for Control to hand the token to that port.
async fn sign_in(host: &str, authorize: &str, no_browser: bool) -> anyhow::Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let state: String = rand::thread_rng()
        .sample_iter(rand::distributions::Alphanumeric)
        .take(32)
        .map(char::from)
        .collect();
    let url = format!("{authorize}&cli_port={port}&state={state}");
    eprintln!("{host} needs you to sign in. Open this link in your browser:\n\n  {url}\n");
    if !no_browser {
        crate::user_config::open_in_browser(&url);
    }
    tokio::time::timeout(SIGN_IN_WITHIN, callback(listener, &state))
        .await
        .context("no sign-in within 10 minutes")?
}

/// Waits for `GET /callback?token=...&state=<state>` on `listener`; answers a small page.
async fn callback(listener: TcpListener, state: &str) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    loop {
        let (mut conn, _) = listener.accept().await?;
        let mut buf = vec![0u8; 8192];
        let mut len = 0;
        // The request line and headers; a browser sends them at once, and nothing else is needed.
        let head = loop {
            let n = match tokio::time::timeout(Duration::from_secs(10), conn.read(&mut buf[len..]))
                .await
            {
                Ok(Ok(n)) if n > 0 => n,
                _ => break None,
            };
            len += n;
            if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") || len == buf.len() {
                break Some(String::from_utf8_lossy(&buf[..len]).into_owned());
            }
        };
        let Some(head) = head else { continue };
        let target = head.split_whitespace().nth(1).unwrap_or("");
        let query = target.strip_prefix("/callback?").unwrap_or("");
        let mut token = None;
        let mut got_state = None;
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            match k.as_ref() {
                "token" => token = Some(v.into_owned()),
                "state" => got_state = Some(v.into_owned()),
                _ => {}
            }
        }
        let ok = got_state.as_deref() == Some(state) && token.is_some();
        let (status, text) = match ok {
            true => (
                "200 OK",
                "Signed in. You can close this page and go back to the terminal.",
            ),
            false => (
                "400 Bad Request",
                "This is not the sign-in this command is waiting for.",
            ),
        };
        let page = format!(
            "HTTP/1.1 {status}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\n\
             cache-control: no-store\r\nconnection: close\r\n\r\n{text}",
            text.len()
        );
        let _ = conn.write_all(page.as_bytes()).await;
        if ok {
            return Ok(token.unwrap_or_default());
        }
    }
}
