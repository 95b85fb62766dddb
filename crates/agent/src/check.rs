//! Checking a tunnel's target on Control's request (`POST /api/v1/tunnels/{id}/check`): the
//! Agent connects to the target as it would for a visitor and says how it went, so a wrong
//! target ("connection refused from app:3000") is found before a visitor finds it. An `http`
//! tunnel's target is also sent `GET /` and its status line reported.

use arc_swap::ArcSwapOption;
use kakuremichi_node::QueryHandler;
use kakuremichi_proto::{Answer, ConfigSnapshot, Query, TargetCheck, TunnelProtocol};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long an HTTP target may take to send its status line once connected.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// The most of an HTTP answer read to find its status line.
const MAX_STATUS_LINE: usize = 1024;

/// Answers Control's target checks from the snapshot `current` holds.
pub(crate) fn handler(
    current: Arc<ArcSwapOption<ConfigSnapshot>>,
    connect_timeout: Duration,
) -> QueryHandler {
    Arc::new(move |query| {
        let current = current.clone();
        Box::pin(async move {
            let Query::CheckTarget { tunnel_id } = query else {
                return Answer::error("an Agent answers target checks only");
            };
            let service = current.load().as_ref().and_then(|snapshot| {
                snapshot
                    .services
                    .iter()
                    .find(|s| s.tunnel_id == tunnel_id)
                    .cloned()
            });
            let Some(service) = service else {
                return Answer::error(format!(
                    "this Agent serves no tunnel {tunnel_id} (its config may not have arrived yet)"
                ));
            };
            let host = service.hostname.trim_start_matches("*.");
            let check = match service.protocol {
                TunnelProtocol::Udp => check_udp(&service.target).await,
                TunnelProtocol::Http => {
                    check_tcp(&service.target, connect_timeout, Some(host)).await
                }
                _ => check_tcp(&service.target, connect_timeout, None).await,
            };
            tracing::info!(tunnel_id, target = %service.target, ok = check.ok, detail = %check.detail, "checked a tunnel's target for Control");
            Answer::CheckTarget { check }
        })
    })
}

fn failed(target: &str, detail: String) -> TargetCheck {
    TargetCheck {
        target: target.to_string(),
        ok: false,
        connect_us: None,
        detail,
    }
}

/// The addresses `target` resolves to, or why it does not.
async fn resolve(target: &str, limit: Duration) -> Result<Vec<SocketAddr>, String> {
    match tokio::time::timeout(limit, tokio::net::lookup_host(target)).await {
        Err(_) => Err(format!(
            "cannot resolve {target}: no answer within {limit:?}"
        )),
        Ok(Err(e)) => Err(format!("cannot resolve {target}: {e}")),
        Ok(Ok(addrs)) => {
            let addrs: Vec<SocketAddr> = addrs.collect();
            if addrs.is_empty() {
                Err(format!("{target} resolves to no address"))
            } else {
                Ok(addrs)
            }
        }
    }
}

/// A UDP target has no connection to open: resolving it is all that can be checked.
async fn check_udp(target: &str) -> TargetCheck {
    match resolve(target, Duration::from_secs(5)).await {
        Ok(addrs) => TargetCheck {
            target: target.to_string(),
            ok: true,
            connect_us: None,
            detail: format!(
                "resolves to {}; UDP has no handshake to test, so send the app a datagram \
                 through the tunnel to be sure",
                addrs[0]
            ),
        },
        Err(e) => failed(target, e),
    }
}

/// Connects to `target` (each address in turn, as forwarding does) and, for an HTTP target
/// (`host` given), reads the status line of its answer to `GET /`.
async fn check_tcp(target: &str, limit: Duration, host: Option<&str>) -> TargetCheck {
    let started = Instant::now();
    let addrs = match resolve(target, limit).await {
        Ok(addrs) => addrs,
        Err(e) => return failed(target, e),
    };
    let mut errors = Vec::new();
    let mut connected = None;
    for addr in addrs {
        let left = limit.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => {
                connected = Some(stream);
                break;
            }
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => errors.push(
                format!("connection refused from {target} ({addr}): nothing listens there; is the app running?"),
            ),
            Ok(Err(e)) => errors.push(format!("cannot connect to {target} ({addr}): {e}")),
            Err(_) => {
                errors.push(format!(
                    "no answer from {target} ({addr}) within {limit:?} (a firewall, or a host that is down)"
                ));
                break;
            }
        }
    }
    let Some(mut stream) = connected else {
        return failed(target, errors.join("; "));
    };
    let connect_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    let check = |ok, detail| TargetCheck {
        target: target.to_string(),
        ok,
        connect_us: Some(connect_us),
        detail,
    };
    let Some(host) = host else {
        return check(true, "the target accepted a TCP connection".into());
    };
    match status_line(&mut stream, host).await {
        Ok(line) => check(true, line),
        Err(why) => check(false, why),
    }
}

/// Sends `GET /` and returns the answer's status line, or what went wrong in words.
async fn status_line(stream: &mut TcpStream, host: &str) -> Result<String, String> {
    let request = format!(
        "GET / HTTP/1.1\r\nHost: {host}\r\nUser-Agent: kakuremichi-check\r\nAccept: */*\r\n\
         Connection: close\r\n\r\n"
    );
    let exchange = async {
        stream.write_all(request.as_bytes()).await?;
        let mut buf = Vec::with_capacity(256);
        let mut chunk = [0u8; 256];
        while buf.len() < MAX_STATUS_LINE && !buf.contains(&b'\n') {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        Ok::<_, std::io::Error>(buf)
    };
    let buf = match tokio::time::timeout(ANSWER_TIMEOUT, exchange).await {
        Err(_) => {
            return Err(format!(
                "the target accepted the connection but sent no HTTP answer to GET / within \
                 {ANSWER_TIMEOUT:?}"
            ))
        }
        Ok(Err(e)) => return Err(format!("the connection broke during GET /: {e}")),
        Ok(Ok(buf)) => buf,
    };
    if buf.is_empty() {
        return Err(
            "the target accepted the connection, then closed it without answering GET /".into(),
        );
    }
    if buf[0] == 0x15 || buf[0] == 0x16 {
        return Err(
            "the target answered with TLS, not plain HTTP: point the tunnel at the app's HTTP port"
                .into(),
        );
    }
    let line = buf.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line).trim().to_string();
    if line.starts_with("HTTP/") {
        Ok(kakuremichi_proto::query::cut(&line, 200))
    } else {
        Err(format!(
            "the target does not speak HTTP (it answered {:?})",
            kakuremichi_proto::query::cut(&line, 60)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    #[tokio::test]
    async fn a_refused_target_is_named_with_its_address() {
        // A port that was just free: nothing listens there.
        let port = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let target = format!("127.0.0.1:{port}");
        let check = check_tcp(&target, Duration::from_secs(5), Some("app.test")).await;
        assert!(!check.ok);
        assert_eq!(check.connect_us, None);
        assert!(
            check
                .detail
                .starts_with(&format!("connection refused from {target}")),
            "{}",
            check.detail
        );
    }

    #[tokio::test]
    async fn an_http_target_reports_its_status_line() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = listener.local_addr().unwrap().to_string();
        let app = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 512];
            let n = s.read(&mut buf).await.unwrap();
            let request = String::from_utf8_lossy(&buf[..n]).to_string();
            s.write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n")
                .await
                .unwrap();
            request
        });
        let check = check_tcp(&target, Duration::from_secs(5), Some("app.test")).await;
        assert!(check.ok, "{check:?}");
        assert!(check.connect_us.is_some());
        assert_eq!(check.detail, "HTTP/1.1 503 Service Unavailable");
        let request = app.await.unwrap();
        assert!(
            request.starts_with("GET / HTTP/1.1\r\nHost: app.test\r\n"),
            "{request}"
        );
    }

    #[tokio::test]
    async fn a_target_that_is_not_http_is_told_apart() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            s.write_all(b"220 mail.example.com ESMTP\r\n")
                .await
                .unwrap();
        });
        let check = check_tcp(&target, Duration::from_secs(5), Some("app.test")).await;
        assert!(!check.ok);
        assert!(
            check.detail.contains("does not speak HTTP"),
            "{}",
            check.detail
        );
    }
}
