//! `tcp`, `udp` and `tls` tunnels: connections carried as bytes (UDP: datagrams), not as HTTP
//! requests, to the Agent serving the tunnel (which connects them to its target, as for HTTP).
//!
//! - `tcp`: a public port of its own on every Gateway ([`PublicPorts`]).
//! - `udp`: the same, with a flow table per port (`udp`); datagrams cross the tunnel as
//!   datagrams.
//! - `tls`: on the HTTPS port, next to the HTTP tunnels. The ClientHello is read (not answered);
//!   when its SNI names a `tls` tunnel ([`Passthrough`]) the connection, ClientHello included, is
//!   spliced still encrypted and the origin terminates TLS. Otherwise the bytes are replayed to
//!   the Gateway's own TLS. While no `tls` tunnel exists, HTTPS connections skip this step.
//!
//! Either way a connection is admitted by the tunnel's IP lists and `max_connections`, may be
//! preceded by a PROXY protocol header (`proxy_header`), and is counted ([`StreamStats`]).

mod ports;
mod proxy_header;
pub(crate) mod sni;
mod splice;
mod udp;

pub use ports::PublicPorts;
pub use splice::{Splicer, StreamStats};

use arc_swap::ArcSwap;
use bytes::Bytes;
use kakuremichi_proto::StreamRoute;
use splice::StreamTarget;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};

/// `tls` tunnels by hostname, read by every HTTPS connection without a lock.
pub struct Passthrough {
    splicer: Arc<Splicer>,
    routes: ArcSwap<HashMap<String, Arc<StreamTarget>>>,
}

impl Passthrough {
    pub(crate) fn new(splicer: Arc<Splicer>) -> Self {
        Self {
            splicer,
            routes: ArcSwap::from_pointee(HashMap::new()),
        }
    }

    pub(crate) fn splicer(&self) -> &Arc<Splicer> {
        &self.splicer
    }

    /// True while no `tls` tunnel exists: HTTPS connections then go straight to our TLS.
    pub(crate) fn is_empty(&self) -> bool {
        self.routes.load().is_empty()
    }

    /// Serves exactly `routes` (hostnames already lower case); a hostname that goes away or
    /// changes Agents closes its open connections.
    pub(crate) fn apply(&self, routes: &BTreeMap<String, StreamRoute>) {
        let old = self.routes.load_full();
        let next: HashMap<String, Arc<StreamTarget>> = routes
            .iter()
            .map(|(host, route)| {
                let host = crate::proxy::routes::normalize_host(host).into_owned();
                let target = match old.get(&host) {
                    Some(t) if t.route == *route => t.clone(),
                    _ => self.splicer.target(route.clone()),
                };
                (host, target)
            })
            .collect();
        for (host, t) in old.iter() {
            if !next.get(host).is_some_and(|n| Arc::ptr_eq(n, t)) {
                t.retired.cancel();
            }
        }
        self.routes.store(Arc::new(next));
    }

    /// Splices the connection if `server_name` belongs to a `tls` tunnel; otherwise hands the
    /// client back (`Err`) for the Gateway's own TLS.
    pub(crate) async fn try_splice<C>(
        &self,
        server_name: Option<&str>,
        client: C,
        consumed: Bytes,
        peer: SocketAddr,
        local: SocketAddr,
    ) -> Result<(), (C, Bytes)>
    where
        C: AsyncRead + AsyncWrite + Unpin,
    {
        let target = server_name.and_then(|n| self.routes.load().get(n).cloned());
        let Some(target) = target else {
            return Err((client, consumed));
        };
        let stop = target.retired.child_token();
        let Some(admitted) = self.splicer.admit(&target, peer.ip()) else {
            return Ok(());
        };
        self.splicer
            .clone()
            .splice(client, peer, local, admitted, consumed, stop)
            .await;
        Ok(())
    }
}
