//! The per-client connection cap: how many connections one client address may hold at once on
//! the public listeners (HTTP and HTTPS together). The listener-wide cap alone let one host fill
//! every slot with idle connections and lock everybody else out; with this cap such a host holds
//! its share and its further connections are closed at once, while other clients are served.
//!
//! IPv4 clients are keyed by address, IPv6 clients by their /64: one subscriber (or one VPS)
//! usually gets a whole /64 and could otherwise pick a fresh address per connection.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex, MutexGuard};

/// Whom a connection is counted against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum ClientKey {
    V4(Ipv4Addr),
    /// The upper 64 bits of an IPv6 address.
    V6Prefix(u64),
}

impl ClientKey {
    pub(crate) fn of(ip: IpAddr) -> Self {
        // A v4-mapped address (dual-stack socket) is the IPv4 client it stands for.
        match ip.to_canonical() {
            IpAddr::V4(v4) => ClientKey::V4(v4),
            IpAddr::V6(v6) => ClientKey::V6Prefix((u128::from(v6) >> 64) as u64),
        }
    }
}

/// Open connections per client, shared by the listeners of one Gateway. The map holds only
/// clients with at least one connection, so its size is bounded by the listener caps.
#[derive(Debug)]
pub(crate) struct ClientCap {
    max: usize,
    open: Mutex<HashMap<ClientKey, usize>>,
}

impl ClientCap {
    /// `max` connections per client; 0 is taken as 1 (a cap of none would serve nobody).
    pub(crate) fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            max: max.max(1),
            open: Mutex::new(HashMap::new()),
        })
    }

    /// Counts one more connection for `ip`, or `None` when that client is at its cap.
    pub(crate) fn try_acquire(self: &Arc<Self>, ip: IpAddr) -> Option<ClientPermit> {
        let key = ClientKey::of(ip);
        let mut open = self.lock();
        let count = open.entry(key).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(ClientPermit {
            cap: self.clone(),
            key,
        })
    }

    #[cfg(test)]
    fn open(&self, ip: IpAddr) -> usize {
        self.lock().get(&ClientKey::of(ip)).copied().unwrap_or(0)
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<ClientKey, usize>> {
        // The counts stay consistent even if a holder panicked: every update is one statement.
        self.open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// One counted connection; dropping it frees the client's place.
#[derive(Debug)]
pub(crate) struct ClientPermit {
    cap: Arc<ClientCap>,
    key: ClientKey,
}

impl Drop for ClientPermit {
    fn drop(&mut self) {
        let mut open = self.cap.lock();
        if let Some(count) = open.get_mut(&self.key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv6Addr;

    #[test]
    fn caps_each_client_and_frees_on_drop() {
        let cap = ClientCap::new(2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let first = cap.try_acquire(a).unwrap();
        let _second = cap.try_acquire(a).unwrap();
        assert!(
            cap.try_acquire(a).is_none(),
            "third connection of one client"
        );
        let _other = cap
            .try_acquire(b)
            .expect("another client has its own count");
        drop(first);
        assert!(
            cap.try_acquire(a).is_some(),
            "a freed place is usable again"
        );
    }

    #[test]
    fn ipv6_clients_share_their_slash_64_and_mapped_v4_is_v4() {
        let cap = ClientCap::new(1);
        let one: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let same_64: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let other_64: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        let held = cap.try_acquire(one).unwrap();
        assert!(cap.try_acquire(same_64).is_none());
        assert!(cap.try_acquire(other_64).is_some());
        drop(held);
        assert_eq!(cap.open(one), 0, "the entry goes with the last connection");

        let v4: IpAddr = "198.51.100.7".parse().unwrap();
        let mapped = IpAddr::V6(Ipv4Addr::new(198, 51, 100, 7).to_ipv6_mapped());
        let _held = cap.try_acquire(v4).unwrap();
        assert!(cap.try_acquire(mapped).is_none());
        assert_eq!(
            ClientKey::of(IpAddr::V6(Ipv6Addr::LOCALHOST)),
            ClientKey::V6Prefix(0)
        );
    }
}
