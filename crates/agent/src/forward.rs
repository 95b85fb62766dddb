//! Forwarding: each stream a Gateway opens to a tunnel port is spliced to that tunnel's target.

use crate::{Service, Services};
use kakuremichi_tunnel::{Acceptor, TunnelStream};
use std::sync::Arc;
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
        let Some(service) = services.load().get(&port).cloned() else {
            // The tunnel was removed between the SYN and now: refuse by dropping.
            continue;
        };
        tokio::spawn(forward(stream, service, connect_timeout));
    }
}

async fn forward(mut stream: TunnelStream, service: Arc<Service>, connect_timeout: Duration) {
    let target = &service.target;
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
