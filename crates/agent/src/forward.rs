//! Forwarding: each stream a Gateway opens to a tunnel port is spliced to that tunnel's target.

use crate::Services;
use kakuremichi_tunnel::{Acceptor, TunnelStream};
use std::time::Duration;
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
        let Some(target) = services.load().get(&port).cloned() else {
            // The tunnel was removed between the SYN and now: refuse by dropping.
            continue;
        };
        tokio::spawn(forward(stream, target, connect_timeout));
    }
}

async fn forward(mut stream: TunnelStream, target: String, connect_timeout: Duration) {
    let upstream = match tokio::time::timeout(connect_timeout, TcpStream::connect(&target)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::warn!(%target, error = %e, "cannot reach the tunnel's target; is the app running?");
            return;
        }
        Err(_) => {
            tracing::warn!(%target, timeout = ?connect_timeout, "the tunnel's target did not accept the connection in time");
            return;
        }
    };
    let _ = upstream.set_nodelay(true);
    let mut upstream = upstream;
    if let Err(e) = tokio::io::copy_bidirectional_with_sizes(
        &mut stream,
        &mut upstream,
        COPY_BUFFER,
        COPY_BUFFER,
    )
    .await
    {
        tracing::debug!(%target, error = %e, "forwarded connection ended with an error");
    }
}
