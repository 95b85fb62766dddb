use super::*;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};

use http_body_util::{BodyExt, Either, Empty};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Dials every target to one local origin, and counts the dials.
struct ToOrigin {
    origin: SocketAddr,
    dials: AtomicUsize,
}

impl Dialer for ToOrigin {
    fn dial(
        &self,
        _addr: SocketAddrV4,
    ) -> Pin<Box<dyn Future<Output = io::Result<BoxStream>> + Send + '_>> {
        Box::pin(async move {
            self.dials.fetch_add(1, Ordering::SeqCst);
            Ok(Box::new(TcpStream::connect(self.origin).await?) as BoxStream)
        })
    }
}

/// An origin that answers every request on a connection with `ok`, keeping it open until
/// `close` turns true.
async fn origin() -> (SocketAddr, watch::Sender<bool>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (close, closed) = watch::channel(false);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut closed = closed.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                loop {
                    tokio::select! {
                        read = stream.read(&mut buf) => match read {
                            // Each test request arrives in one read.
                            Ok(n) if n > 0 => {
                                let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                                if stream.write_all(answer).await.is_err() {
                                    return;
                                }
                            }
                            _ => return,
                        },
                        () = async { let _ = closed.wait_for(|c| *c).await; } => return,
                    }
                }
            });
        }
    });
    (addr, close)
}

fn pool(origin: SocketAddr, max_idle: usize) -> (Arc<UpstreamPool>, Arc<ToOrigin>) {
    let dialer = Arc::new(ToOrigin {
        origin,
        dials: AtomicUsize::new(0),
    });
    let pool = UpstreamPool::new(dialer.clone(), Duration::from_secs(5), max_idle);
    (pool, dialer)
}

fn target(port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::new(10, 77, 0, 9), port)
}

/// One GET to `target` through `pool`, read to its end, so its connection goes back to `home`:
/// the response's headers, once its body was `ok`.
async fn exchange(
    pool: &Arc<UpstreamPool>,
    home: &Arc<ConnUpstream>,
    target: SocketAddrV4,
) -> http::HeaderMap {
    let mut upstream = pool.lease(home, target).await.unwrap();
    let request = Request::builder()
        .uri("/")
        .header("host", "a.test")
        .body(Either::Right(Empty::new()))
        .unwrap();
    let (head, body) = upstream.send(request).await.unwrap().into_parts();
    let body = ResponseBody::leased(body, upstream, home.clone());
    assert_eq!(body.collect().await.unwrap().to_bytes(), "ok");
    head.headers
}

#[tokio::test]
async fn a_client_connection_reuses_its_own_upstream_connection() {
    let (origin, _close) = origin().await;
    let (pool, dialer) = pool(origin, 8);
    let home = Arc::new(ConnUpstream::default());
    for _ in 0..3 {
        exchange(&pool, &home, target(1)).await;
    }
    assert_eq!(dialer.dials.load(Ordering::SeqCst), 1);
    assert_eq!(pool.parked(), 0, "it stays with its client connection");

    // Another target does not take it: a second connection, which the client connection's
    // slot, already full, passes on to the shared pool.
    exchange(&pool, &home, target(2)).await;
    assert_eq!(dialer.dials.load(Ordering::SeqCst), 2);
    assert_eq!(pool.parked(), 1);
    assert!(home.take(target(1)).is_some());
}

#[tokio::test]
async fn closed_client_connections_leave_their_upstream_to_the_next_ones_up_to_the_cap() {
    let (origin, _close) = origin().await;
    let (pool, dialer) = pool(origin, 2);
    let homes: Vec<_> = (0..3).map(|_| Arc::new(ConnUpstream::default())).collect();
    for home in &homes {
        // Opened side by side, as for three clients at once.
        home.give_back(pool.open(target(1)).await.unwrap());
    }
    for home in &homes {
        exchange(&pool, home, target(1)).await;
    }
    assert_eq!(dialer.dials.load(Ordering::SeqCst), 3);
    drop(homes);
    assert_eq!(pool.parked(), 2, "the pool keeps two per target");

    let home = Arc::new(ConnUpstream::default());
    exchange(&pool, &home, target(1)).await;
    assert_eq!(
        dialer.dials.load(Ordering::SeqCst),
        3,
        "a parked one was used"
    );
    assert_eq!(pool.parked(), 1);
}

#[tokio::test]
async fn the_sweep_drops_expired_connections_and_those_the_origin_closed() {
    let (origin, close) = origin().await;
    let (pool, dialer) = pool(origin, 8);
    let homes: Vec<_> = (0..3).map(|_| Arc::new(ConnUpstream::default())).collect();
    for home in &homes {
        let upstream = pool.open(target(1)).await.unwrap();
        home.give_back(upstream);
        exchange(&pool, home, target(1)).await;
    }
    drop(homes);
    assert_eq!(pool.parked(), 3);

    pool.idle().by_target.get_mut(&target(1)).unwrap()[0].parked_at -= IDLE_TIMEOUT;
    assert!(pool.sweep());
    assert_eq!(pool.parked(), 2, "the expired one is gone");

    close.send(true).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while pool.sweep() {
        assert!(Instant::now() < deadline, "closed connections still parked");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(pool.parked(), 0);
    assert!(!pool.idle().sweeping, "an empty pool needs no sweeper");

    // Nothing closed is handed out: a new connection is opened.
    let home = Arc::new(ConnUpstream::default());
    let _ = close.send(false);
    exchange(&pool, &home, target(1)).await;
    assert_eq!(dialer.dials.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn a_released_connection_serves_the_next_client_connection() {
    let (origin, _close) = origin().await;
    let (pool, dialer) = pool(origin, 8);
    let quiet = Arc::new(ConnUpstream::default());
    exchange(&pool, &quiet, target(1)).await;
    quiet.release();
    assert_eq!(pool.parked(), 1);
    assert!(
        quiet.take(target(1)).is_none(),
        "it left the client connection"
    );
    quiet.release(); // with nothing left to give, nothing happens
    assert_eq!(pool.parked(), 1);

    let other = Arc::new(ConnUpstream::default());
    exchange(&pool, &other, target(1)).await;
    assert_eq!(
        dialer.dials.load(Ordering::SeqCst),
        1,
        "the released one was used"
    );
    assert_eq!(pool.parked(), 0);
}

/// Reads of an upstream connection take at most `READ_MAX` bytes, whatever room the reader
/// offers, and every byte arrives in order.
#[tokio::test]
async fn upstream_reads_are_capped_and_lose_nothing() {
    let data: Vec<u8> = (0..200_000).map(|i| (i % 251) as u8).collect();
    let mut capped = CappedReads(&data[..]);
    let mut got = Vec::new();
    let mut space = vec![0u8; 400 * 1024];
    loop {
        let n = capped.read(&mut space).await.unwrap();
        assert!(n <= READ_MAX, "one read took {n} bytes");
        if n == 0 {
            break;
        }
        got.extend_from_slice(&space[..n]);
    }
    assert!(
        got == data,
        "{} of {} bytes, not in order",
        got.len(),
        data.len()
    );
}

/// A response head larger than one capped read still arrives whole: hyper reads on until the
/// head is complete.
#[tokio::test]
async fn a_response_head_larger_than_a_read_arrives() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = listener.local_addr().unwrap();
    let cookie = "c".repeat(4 * READ_MAX);
    let answer = format!("HTTP/1.1 200 OK\r\nx-big: {cookie}\r\ncontent-length: 2\r\n\r\nok");
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 4096];
        let _ = stream.read(&mut buf).await;
        stream.write_all(answer.as_bytes()).await.unwrap();
        let _ = stream.read(&mut buf).await;
    });
    let (pool, _) = pool(origin, 8);
    let home = Arc::new(ConnUpstream::default());
    let headers = exchange(&pool, &home, target(1)).await;
    assert_eq!(headers["x-big"], cookie.as_str());
}
