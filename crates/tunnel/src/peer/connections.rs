//! A peer's TCP connections as the receive path needs them: established ones by (local port,
//! remote port), so a received packet finds its socket without asking every socket; and
//! orphans, the sockets of dropped streams, freed once they have closed (or aborted after
//! [`ORPHAN_DEADLINE`]).

use super::ports::Ports;
use smoltcp::iface::{SocketHandle, SocketSet};
use smoltcp::socket::tcp;
use std::collections::HashMap;
use std::time::Duration;
use tokio::time::Instant;

/// A dropped stream's socket is forcibly aborted after this long if it has not closed.
const ORPHAN_DEADLINE: Duration = Duration::from_secs(60);

#[derive(Default)]
pub(super) struct Connections {
    /// Established connections by (local port, remote port); `ports` is the reverse.
    by_ports: HashMap<(u16, u16), SocketHandle>,
    ports: HashMap<SocketHandle, (u16, u16)>,
    /// Sockets nobody owns any more, and since when.
    orphans: Vec<(SocketHandle, Instant)>,
}

impl Connections {
    pub fn add(&mut self, key: (u16, u16), handle: SocketHandle) {
        if let Some(old) = self.by_ports.insert(key, handle) {
            self.ports.remove(&old);
        }
        self.ports.insert(handle, key);
    }

    /// The established connection a packet with these (local, remote) ports belongs to.
    pub fn get(&self, key: (u16, u16)) -> Option<SocketHandle> {
        self.by_ports.get(&key).copied()
    }

    pub fn orphan(&mut self, handle: SocketHandle) {
        self.orphans.push((handle, Instant::now()));
    }

    /// Frees the sockets of orphans that have closed, with their ports; aborts those that
    /// did not close in time.
    pub fn collect_orphans(&mut self, sockets: &mut SocketSet<'static>, local_ports: &mut Ports) {
        let now = Instant::now();
        let Self {
            orphans,
            by_ports,
            ports,
        } = self;
        orphans.retain(|(handle, since)| {
            let socket = sockets.get_mut::<tcp::Socket>(*handle);
            if now.duration_since(*since) > ORPHAN_DEADLINE {
                socket.abort();
            }
            if matches!(socket.state(), tcp::State::Closed | tcp::State::TimeWait) {
                if let Some(key) = ports.remove(handle) {
                    if by_ports.get(&key) == Some(handle) {
                        by_ports.remove(&key);
                    }
                }
                sockets.remove(*handle);
                local_ports.release(*handle);
                false
            } else {
                true
            }
        });
    }

    pub fn trim(&mut self) {
        shrink_map(&mut self.by_ports);
        shrink_map(&mut self.ports);
        if self.orphans.len() * 4 <= self.orphans.capacity() {
            self.orphans.shrink_to_fit();
        }
    }
}

/// Shrinks a map that is at most a quarter full (hash maps never shrink on their own).
pub(super) fn shrink_map<K: Eq + std::hash::Hash, V>(map: &mut HashMap<K, V>) {
    if map.len() * 4 <= map.capacity() {
        map.shrink_to_fit();
    }
}
