//! Forwarding: each stream a Gateway opens to a tunnel port is spliced to that tunnel's target.
//! The target's name is resolved first, apart from the connect, so that a failure says which
//! it was (the tunnel's `kakuremichi_agent_target_errors_total{kind}`).

use crate::metrics::{TargetError, TargetStats};
use crate::{Service, Services};
use kakuremichi_tunnel::{Acceptor, TunnelStream};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

/// Copy buffer per direction; larger than tokio's 8 KiB default to cut per-call overhead.
const COPY_BUFFER: usize = 64 * 1024;

pub(crate) async fn accept_loop(
    mut acceptor: Acceptor,
    services: Services,
    connect_timeout: Duration,
) {
    while let Some(stream) = acceptor.accept().await {
        let port = stream.local_addr().port();
        let Some(service) = services.load().get(&port).cloned() else {
            // The tunnel was removed between the SYN and now: refuse by dropping.
            continue;
        };
        tokio::spawn(forward(stream, service, connect_timeout));
    }
}

async fn forward(mut stream: TunnelStream, service: Arc<Service>, connect_timeout: Duration) {
    let target = &service.target;
    let Some(upstream) = connect(target, connect_timeout, &service.stats).await else {
        return;
    };
    let _ = upstream.set_nodelay(true);
    let mut upstream = upstream;
    let copy = tokio::io::copy_bidirectional_with_sizes(
        &mut stream,
        &mut upstream,
        COPY_BUFFER,
        COPY_BUFFER,
    );
    tokio::select! {
        result = copy => {
            if let Err(e) = result {
                tracing::debug!(%target, error = %e, "forwarded connection ended with an error");
            }
        }
        _ = service.retired.cancelled() => {
            tracing::debug!(%target, "tunnel changed; closing its open connection");
        }
    }
}

/// Connects to `target` (`host:port`) within `timeout`, counting the time it took or why it
/// failed in `stats`.
async fn connect(target: &str, timeout: Duration, stats: &TargetStats) -> Option<TcpStream> {
    let started = Instant::now();
    let attempt = async {
        let addrs: Vec<SocketAddr> = match tokio::net::lookup_host(target).await {
            Ok(addrs) => addrs.collect(),
            Err(e) => return Err((TargetError::Unresolved, e)),
        };
        if addrs.is_empty() {
            let e = io::Error::new(io::ErrorKind::NotFound, "the name has no address");
            return Err((TargetError::Unresolved, e));
        }
        TcpStream::connect(&addrs[..])
            .await
            .map_err(|e| (TargetError::of(&e), e))
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(Ok(s)) => {
            stats.connected(started.elapsed());
            Some(s)
        }
        Ok(Err((kind, e))) => {
            stats.failed(kind);
            if kind == TargetError::Unresolved {
                tracing::warn!(%target, error = %e, "cannot resolve the tunnel's target; is its name right?");
            } else {
                tracing::warn!(%target, error = %e, "cannot reach the tunnel's target; is the app running?");
            }
            None
        }
        Err(_) => {
            stats.failed(TargetError::Timeout);
            tracing::warn!(%target, ?timeout, "the tunnel's target did not accept the connection in time");
            None
        }
    }
}
