//! Test fixtures for the proxy tests: dialers standing in for the tunnel, an in-process Gateway
//! in front of two origins, small client helpers, and a streaming checksum.

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use kakuremichi_gateway::proxy::{self, BoxStream, Dialer, Proxy, ProxyConfig, RouteTable};
use kakuremichi_proto::GatewayRoute;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::origin::Origin;

pub const DEADLINE: Duration = Duration::from_secs(30);

/// Fails the test instead of hanging when `fut` does not finish within [`DEADLINE`].
pub async fn within<F: std::future::Future>(what: &str, fut: F) -> F::Output {
    kakuremichi_testkit::within(DEADLINE, what, fut).await
}

/// A Gateway routing `a.test` and `b.test` to two origins.
pub struct Setup {
    pub dialer: Arc<TestDialer>,
    pub gw: Gateway,
    pub a: Origin,
    pub b: Origin,
}

pub async fn setup(config: ProxyConfig) -> Setup {
    let dialer = Arc::new(TestDialer::default());
    let (a, b) = (Origin::start("a").await, Origin::start("b").await);
    let gw = Gateway::start(dialer.clone(), config).await;
    gw.route(&[
        ("a.test", dialer.map(agent(1, 8001), a.addr)),
        ("b.test", dialer.map(agent(2, 8002), b.addr)),
    ]);
    Setup { dialer, gw, a, b }
}

/// The origin's `/echo` answer: `origin`, `peer`, `method`, `path` and `header` lines.
pub struct Echo(pub String);

impl Echo {
    pub async fn from(response: reqwest::Response) -> Echo {
        assert_eq!(response.status(), StatusCode::OK);
        Echo(within("echo body", response.text()).await.unwrap())
    }

    pub fn field(&self, key: &str) -> &str {
        let prefix = format!("{key} ");
        self.0
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_default()
    }

    pub fn header(&self, name: &str) -> Vec<&str> {
        let prefix = format!("header {name}: ");
        self.0
            .lines()
            .filter_map(|l| l.strip_prefix(&prefix))
            .collect()
    }
}

pub async fn get(client: &reqwest::Client, url: &str) -> reqwest::Response {
    within(url, client.get(url).send()).await.unwrap()
}

/// Sends `request` verbatim and reads until the Gateway closes the connection.
pub async fn raw_exchange(addr: std::net::SocketAddr, request: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = within("raw answer", stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

/// Reads the response until `needle` has arrived; returns everything read.
pub async fn read_until(response: &mut reqwest::Response, seen: &mut String, needle: &str) {
    while !seen.contains(needle) {
        let chunk = within(needle, response.chunk()).await.unwrap();
        let chunk = chunk.unwrap_or_else(|| panic!("stream ended before {needle:?}: {seen:?}"));
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
}

/// Maps tunnel addresses to local origins and counts dials, like a tunnel that logs streams.
#[derive(Default)]
pub struct TestDialer {
    targets: Mutex<HashMap<SocketAddrV4, SocketAddr>>,
    dials: AtomicUsize,
}

impl TestDialer {
    /// Routes `agent` to `local`, returning the route a Gateway would get from Control.
    pub fn map(&self, agent: SocketAddrV4, local: SocketAddr) -> GatewayRoute {
        self.targets.lock().unwrap().insert(agent, local);
        GatewayRoute {
            tunnel_id: 1,
            agent_id: 1,
            agent_address: *agent.ip(),
            port: agent.port(),
            https_redirect: false,
            hsts_max_age: 0,
            replicas: Vec::new(),
            access: Default::default(),
            limits: Default::default(),
            plain_http_only: false,
            tcp_access: false,
            basic_auth: None,
            log_requests: false,
            error_page: None,
        }
    }

    pub fn dials(&self) -> usize {
        self.dials.load(Ordering::SeqCst)
    }
}

impl Dialer for TestDialer {
    fn dial(
        &self,
        addr: SocketAddrV4,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = io::Result<BoxStream>> + Send + '_>>
    {
        Box::pin(async move {
            self.dials.fetch_add(1, Ordering::SeqCst);
            let target = self.targets.lock().unwrap().get(&addr).copied();
            let target =
                target.ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no route"))?;
            Ok(Box::new(TcpStream::connect(target).await?) as BoxStream)
        })
    }
}

/// A tunnel whose dials never complete, as when an Agent is unreachable and packets vanish.
pub struct HangingDialer;

impl Dialer for HangingDialer {
    fn dial(
        &self,
        _addr: SocketAddrV4,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = io::Result<BoxStream>> + Send + '_>>
    {
        Box::pin(std::future::pending())
    }
}

pub fn agent(last_octet: u8, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::new(10, 77, 0, last_octet), port)
}

/// A Gateway proxy listener running in-process.
pub struct Gateway {
    pub addr: SocketAddr,
    pub routes: Arc<RouteTable>,
    shutdown: Option<oneshot::Sender<()>>,
    pub task: JoinHandle<io::Result<()>>,
}

impl Gateway {
    pub async fn start(dialer: Arc<dyn Dialer>, config: ProxyConfig) -> Gateway {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let routes = Arc::new(RouteTable::new());
        let proxy = Proxy::new(routes.clone(), dialer, config);
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(proxy::serve(listener, proxy, async move {
            let _ = rx.await;
        }));
        Gateway {
            addr,
            routes,
            shutdown: Some(tx),
            task,
        }
    }

    pub fn route(&self, routes: &[(&str, GatewayRoute)]) {
        self.routes.replace(
            routes
                .iter()
                .map(|(h, r)| (h.to_string(), r.clone()))
                .collect(),
        );
    }

    /// A client that resolves every `*.test` name used in these tests to the Gateway.
    pub fn client(&self) -> reqwest::Client {
        self.client_builder().build().unwrap()
    }

    pub fn client_builder(&self) -> reqwest::ClientBuilder {
        ["a.test", "b.test", "unknown.test"]
            .into_iter()
            .fold(reqwest::Client::builder().no_proxy(), |b, name| {
                b.resolve(name, self.addr)
            })
    }

    pub fn url(&self, host: &str, path: &str) -> String {
        format!("http://{host}:{}{path}", self.addr.port())
    }

    pub fn shutdown(&mut self) {
        let _ = self.shutdown.take().map(|tx| tx.send(()));
    }
}

/// Fails if this test process ever held half of `transferred` in memory (Linux only: elsewhere
/// the peak is unknown and the check is skipped). Tests share the process, so this is the peak
/// of everything running alongside, which is far below the bound when bodies stream.
pub fn assert_streamed(transferred: u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let peak_kib = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().strip_suffix("kB")?.trim().parse::<u64>().ok());
    if let Some(peak_kib) = peak_kib {
        let peak = peak_kib * 1024;
        assert!(
            peak < transferred / 2,
            "peak RSS {peak} B for {transferred} B: body buffered?"
        );
    }
}

/// A deterministic 1 MiB block; data streams are slices of it repeated.
fn pattern_block() -> &'static Bytes {
    static BLOCK: std::sync::OnceLock<Bytes> = std::sync::OnceLock::new();
    BLOCK.get_or_init(|| {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let words = (0..(1 << 17)).map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        });
        Bytes::from(words.flat_map(u64::to_le_bytes).collect::<Vec<u8>>())
    })
}

/// The next chunk of a pattern stream at `offset`, at most `remaining` bytes.
pub fn pattern_chunk(offset: u64, remaining: u64) -> Bytes {
    let block = pattern_block();
    let start = (offset % block.len() as u64) as usize;
    let len = (block.len() - start).min(remaining.min(usize::MAX as u64) as usize);
    block.slice(start..start + len)
}

/// The checksum of the first `n` bytes of the pattern stream.
pub fn pattern_checksum(n: u64) -> (u64, u64) {
    let mut sum = Checksum::default();
    let mut offset = 0;
    while offset < n {
        let chunk = pattern_chunk(offset, n - offset);
        sum.update(&chunk);
        offset += chunk.len() as u64;
    }
    sum.finish()
}

/// An order-sensitive 64-bit checksum over 8-byte words (fast enough unoptimised for 256 MiB),
/// independent of how the stream was chunked.
#[derive(Default)]
pub struct Checksum {
    hash: u64,
    count: u64,
    pending: Vec<u8>,
}

impl Checksum {
    pub fn update(&mut self, mut data: &[u8]) {
        self.count += data.len() as u64;
        if !self.pending.is_empty() {
            let take = (8 - self.pending.len()).min(data.len());
            self.pending.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.pending.len() < 8 {
                return;
            }
            let word = u64::from_le_bytes(self.pending[..].try_into().unwrap());
            self.mix(word);
            self.pending.clear();
        }
        let mut words = data.chunks_exact(8);
        for word in &mut words {
            self.mix(u64::from_le_bytes(word.try_into().unwrap()));
        }
        self.pending.extend_from_slice(words.remainder());
    }

    fn mix(&mut self, word: u64) {
        self.hash = (self.hash ^ word)
            .wrapping_mul(0x0000_0100_0000_01b3)
            .rotate_left(29);
    }

    /// `(byte count, digest)`.
    pub fn finish(mut self) -> (u64, u64) {
        let mut tail = [0u8; 8];
        tail[..self.pending.len()].copy_from_slice(&self.pending);
        self.mix(u64::from_le_bytes(tail));
        self.mix(self.count);
        (self.count, self.hash)
    }
}
