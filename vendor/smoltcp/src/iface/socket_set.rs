use core::fmt;
use managed::ManagedSlice;

use super::socket_meta::Meta;
use crate::socket::{AnySocket, Socket};

/// Opaque struct with space for storing one socket.
///
/// This is public so you can use it to allocate space for storing
/// sockets when creating an Interface.
#[derive(Debug, Default)]
pub struct SocketStorage<'a> {
    inner: Option<Item<'a>>,
}

impl<'a> SocketStorage<'a> {
    pub const EMPTY: Self = Self { inner: None };
}

/// An item of a socket set.
#[derive(Debug)]
pub(crate) struct Item<'a> {
    pub(crate) meta: Meta,
    pub(crate) socket: Socket<'a>,
}

/// A handle, identifying a socket in an Interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct SocketHandle(usize);

impl fmt::Display for SocketHandle {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// An extensible set of sockets.
///
/// The lifetime `'a` is used when storing a `Socket<'a>`.  If you're using
/// owned buffers for your sockets (passed in as `Vec`s) you can use
/// `SocketSet<'static>`.
/// kakuremichi patch: a TCP connection's (local, remote) endpoints.
#[cfg(all(feature = "alloc", feature = "socket-tcp"))]
pub(crate) type TcpTuple = (crate::wire::IpEndpoint, crate::wire::IpEndpoint);

/// kakuremichi patch: the map of `tcp_hints`. A hash map with std: the B-tree's lookup, a dozen
/// compares of two endpoints each, was 4.5 % of a busy Agent's CPU. SipHash, keyed per set, so
/// no peer can choose tuples that collide.
#[cfg(all(feature = "std", feature = "socket-tcp"))]
type TcpHints = std::collections::HashMap<TcpTuple, SocketHandle>;
#[cfg(all(feature = "alloc", not(feature = "std"), feature = "socket-tcp"))]
type TcpHints = alloc::collections::BTreeMap<TcpTuple, SocketHandle>;

#[derive(Debug)]
pub struct SocketSet<'a> {
    sockets: ManagedSlice<'a, SocketStorage<'a>>,
    /// kakuremichi patch: which socket last took the segments of a TCP connection. Finding the
    /// socket of an arriving segment asked every socket in turn, so each segment cost O(sockets):
    /// at 10,000 concurrent connections a request cost ~1 ms of CPU. A hint is only a hint: the
    /// socket it names is asked whether it accepts the segment, as the scan would, and the scan
    /// runs when it does not (a stale hint: a socket removed, its slot reused, a connection
    /// closed). Bounded: cleared when it outgrows twice the slots.
    #[cfg(all(feature = "alloc", feature = "socket-tcp"))]
    tcp_hints: TcpHints,
    /// kakuremichi patch: how many slots hold a socket, and an index below which no slot is
    /// free. Counting the sockets and finding a free slot walked every slot (528 bytes each),
    /// so opening a connection cost O(sockets): two walks over ~5 MB at 10,000 connections.
    live: usize,
    free_from: usize,
}

impl<'a> SocketSet<'a> {
    /// Create a socket set using the provided storage.
    pub fn new<SocketsT>(sockets: SocketsT) -> SocketSet<'a>
    where
        SocketsT: Into<ManagedSlice<'a, SocketStorage<'a>>>,
    {
        let sockets = sockets.into();
        let live = sockets.iter().filter(|s| s.inner.is_some()).count();
        SocketSet {
            sockets,
            #[cfg(all(feature = "alloc", feature = "socket-tcp"))]
            tcp_hints: TcpHints::new(),
            live,
            free_from: 0,
        }
    }

    /// Add a socket to the set, and return its handle.
    ///
    /// # Panics
    /// This function panics if the storage is fixed-size (not a `Vec`) and is full.
    pub fn add<T: AnySocket<'a>>(&mut self, socket: T) -> SocketHandle {
        fn put<'a>(index: usize, slot: &mut SocketStorage<'a>, socket: Socket<'a>) -> SocketHandle {
            net_trace!("[{}]: adding", index);
            let handle = SocketHandle(index);
            let mut meta = Meta::default();
            meta.handle = handle;
            *slot = SocketStorage {
                inner: Some(Item { meta, socket }),
            };
            handle
        }

        let socket = socket.upcast();
        self.live += 1;

        // kakuremichi patch: no slot below `free_from` is free.
        let from = self.free_from.min(self.sockets.len());
        for (index, slot) in self.sockets.iter_mut().enumerate().skip(from) {
            if slot.inner.is_none() {
                self.free_from = index + 1;
                return put(index, slot, socket);
            }
        }

        self.free_from = self.sockets.len() + 1;
        match &mut self.sockets {
            ManagedSlice::Borrowed(_) => panic!("adding a socket to a full SocketSet"),
            #[cfg(feature = "alloc")]
            ManagedSlice::Owned(sockets) => {
                sockets.push(SocketStorage { inner: None });
                let index = sockets.len() - 1;
                put(index, &mut sockets[index], socket)
            }
        }
    }

    /// Get a socket from the set by its handle, as mutable.
    ///
    /// # Panics
    /// This function may panic if the handle does not belong to this socket set
    /// or the socket has the wrong type.
    pub fn get<T: AnySocket<'a>>(&self, handle: SocketHandle) -> &T {
        match self.sockets[handle.0].inner.as_ref() {
            Some(item) => {
                T::downcast(&item.socket).expect("handle refers to a socket of a wrong type")
            }
            None => panic!("handle does not refer to a valid socket"),
        }
    }

    /// Get a mutable socket from the set by its handle, as mutable.
    ///
    /// # Panics
    /// This function may panic if the handle does not belong to this socket set
    /// or the socket has the wrong type.
    pub fn get_mut<T: AnySocket<'a>>(&mut self, handle: SocketHandle) -> &mut T {
        match self.sockets[handle.0].inner.as_mut() {
            Some(item) => T::downcast_mut(&mut item.socket)
                .expect("handle refers to a socket of a wrong type"),
            None => panic!("handle does not refer to a valid socket"),
        }
    }

    /// Remove a socket from the set, without changing its state.
    ///
    /// # Panics
    /// This function may panic if the handle does not belong to this socket set.
    pub fn remove(&mut self, handle: SocketHandle) -> Socket<'a> {
        net_trace!("[{}]: removing", handle.0);
        match self.sockets[handle.0].inner.take() {
            Some(item) => {
                self.live -= 1;
                self.free_from = self.free_from.min(handle.0);
                item.socket
            }
            None => panic!("handle does not refer to a valid socket"),
        }
    }

    /// kakuremichi patch: how many sockets the set holds, without walking it.
    pub fn len(&self) -> usize {
        self.live
    }

    /// kakuremichi patch: whether the set holds no socket.
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Get an iterator to the inner sockets.
    pub fn iter(&self) -> impl Iterator<Item = (SocketHandle, &Socket<'a>)> {
        self.items().map(|i| (i.meta.handle, &i.socket))
    }

    /// Get a mutable iterator to the inner sockets.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (SocketHandle, &mut Socket<'a>)> {
        self.items_mut().map(|i| (i.meta.handle, &mut i.socket))
    }

    /// Iterate every socket in this set.
    pub(crate) fn items(&self) -> impl Iterator<Item = &Item<'a>> + '_ {
        self.sockets.iter().filter_map(|x| x.inner.as_ref())
    }

    /// Iterate every socket in this set.
    pub(crate) fn items_mut(&mut self) -> impl Iterator<Item = &mut Item<'a>> + '_ {
        self.sockets.iter_mut().filter_map(|x| x.inner.as_mut())
    }

    /// kakuremichi patch: the socket in `handle`'s slot, if there is one (a hint may be stale).
    pub(crate) fn item(&self, handle: SocketHandle) -> Option<&Item<'a>> {
        self.sockets.get(handle.0)?.inner.as_ref()
    }

    /// kakuremichi patch: the socket in `handle`'s slot, as mutable (one socket's egress).
    pub(crate) fn item_mut(&mut self, handle: SocketHandle) -> Option<&mut Item<'a>> {
        self.sockets.get_mut(handle.0)?.inner.as_mut()
    }

    /// kakuremichi patch: see `tcp_hints`.
    #[cfg(all(feature = "alloc", feature = "socket-tcp"))]
    pub(crate) fn tcp_hint(&self, tuple: &TcpTuple) -> Option<SocketHandle> {
        self.tcp_hints.get(tuple).copied()
    }

    /// kakuremichi patch: see `tcp_hints`.
    #[cfg(all(feature = "alloc", feature = "socket-tcp"))]
    pub(crate) fn set_tcp_hint(&mut self, tuple: TcpTuple, handle: SocketHandle) {
        if self.tcp_hints.len() >= 2 * self.sockets.len() + 64 {
            self.tcp_hints.clear();
        }
        self.tcp_hints.insert(tuple, handle);
    }

    /// kakuremichi patch: names the socket that is to take the segments of a TCP connection
    /// before any has arrived: the listening socket meant for a SYN. Without it a SYN found its
    /// listener by asking every socket in turn, O(sockets) per new connection. Only a hint, as
    /// those the set learns itself: a socket that does not accept the segment is passed over.
    /// A hint naming a socket that already holds this connection is kept (a SYN sent again
    /// belongs to it, not to a fresh listener).
    #[cfg(all(feature = "alloc", feature = "socket-tcp"))]
    pub fn hint_tcp(
        &mut self,
        local: crate::wire::IpEndpoint,
        remote: crate::wire::IpEndpoint,
        handle: SocketHandle,
    ) {
        let tuple = (local, remote);
        let holds = |item: &Item<'_>| {
            crate::socket::tcp::Socket::downcast(&item.socket).is_some_and(|s| {
                s.local_endpoint() == Some(local) && s.remote_endpoint() == Some(remote)
            })
        };
        if let Some(&current) = self.tcp_hints.get(&tuple) {
            if self.item(current).is_some_and(holds) {
                return;
            }
        }
        self.set_tcp_hint(tuple, handle);
    }

    #[cfg(all(test, feature = "alloc", feature = "socket-tcp"))]
    pub(crate) fn tcp_hints_len(&self) -> usize {
        self.tcp_hints.len()
    }

    #[cfg(all(test, feature = "std", feature = "socket-tcp"))]
    pub(crate) fn tcp_hints_capacity(&self) -> usize {
        self.tcp_hints.capacity()
    }

    /// kakuremichi patch: the number of slots, those holding a socket and free ones (see `trim`).
    pub fn slots(&self) -> usize {
        self.sockets.len()
    }

    /// kakuremichi patch: gives back storage that a burst of sockets left behind. The empty
    /// slots at the end of the set are dropped (the remaining sockets keep their handles), and
    /// when what is left fills at most a quarter of the allocation, the allocation shrinks to
    /// twice that. Without it a set keeps its largest size for good, and every poll walks it.
    #[cfg(feature = "alloc")]
    pub fn trim(&mut self) {
        if let ManagedSlice::Owned(sockets) = &mut self.sockets {
            let used = sockets
                .iter()
                .rposition(|slot| slot.inner.is_some())
                .map_or(0, |last| last + 1);
            sockets.truncate(used);
            if used <= sockets.capacity() / 4 {
                sockets.shrink_to(used * 2);
            }
        }
        // Hints of closed connections stay until the map outgrows the set; a hash map keeps
        // its allocation when cleared. Forget the hints whose slot is empty once they clearly
        // outnumber the sockets (so not on every call), then give back the room they took.
        #[cfg(all(feature = "std", feature = "socket-tcp"))]
        {
            if self.tcp_hints.len() > self.live + 64 {
                let sockets = &self.sockets;
                self.tcp_hints
                    .retain(|_, h| sockets.get(h.0).is_some_and(|s| s.inner.is_some()));
            }
            let len = self.tcp_hints.len();
            if self.tcp_hints.capacity() > 4 * len + 64 {
                self.tcp_hints.shrink_to(2 * len);
            }
        }
    }
}

// kakuremichi patch regression test.
#[cfg(all(test, feature = "alloc", feature = "socket-tcp"))]
mod trim_test {
    use super::*;
    use crate::socket::tcp;
    use alloc::vec;
    use alloc::vec::Vec;

    fn socket() -> tcp::Socket<'static> {
        tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; 64]),
            tcp::SocketBuffer::new(vec![0; 64]),
        )
    }

    fn slots(set: &SocketSet<'_>) -> (usize, usize) {
        match &set.sockets {
            ManagedSlice::Owned(v) => (v.len(), v.capacity()),
            ManagedSlice::Borrowed(b) => (b.len(), b.len()),
        }
    }

    #[test]
    fn test_trim_gives_back_the_slots_a_burst_left() {
        let mut set = SocketSet::new(Vec::new());
        let kept = set.add(socket());
        let burst: Vec<_> = (0..99).map(|_| set.add(socket())).collect();
        let last = set.add(socket());
        for handle in burst {
            set.remove(handle);
        }
        set.trim();
        // The last socket holds its slot: nothing can be dropped yet.
        assert_eq!(slots(&set).0, 101);
        set.remove(last);
        set.trim();
        let (len, capacity) = slots(&set);
        assert_eq!(len, 1);
        assert!(capacity <= 2, "{capacity}");
        // The socket kept its handle, and the set grows again as needed.
        let _ = set.get_mut::<tcp::Socket>(kept);
        assert_eq!(set.add(socket()), SocketHandle(1));
        assert_eq!(set.iter().count(), 2);
    }

    #[test]
    fn test_len_and_free_slots_without_a_walk() {
        let mut set = SocketSet::new(Vec::new());
        assert!(set.is_empty());
        let handles: Vec<_> = (0..10).map(|_| set.add(socket())).collect();
        assert_eq!(set.len(), 10);
        // A freed slot is reused, the lowest first, as the full scan did.
        set.remove(handles[7]);
        set.remove(handles[3]);
        assert_eq!(set.len(), 8);
        assert_eq!(set.add(socket()), handles[3]);
        assert_eq!(set.add(socket()), handles[7]);
        assert_eq!(set.add(socket()), SocketHandle(10));
        assert_eq!(set.len(), 11);
        // After a trim dropped the free slots at the end, the next one is appended again.
        for handle in [SocketHandle(10), handles[9], handles[8], handles[0]] {
            set.remove(handle);
        }
        set.trim();
        assert_eq!(slots(&set).0, 8);
        assert_eq!(set.add(socket()), handles[0]);
        assert_eq!(set.add(socket()), SocketHandle(8));
        assert_eq!(set.len(), set.iter().count());
        assert_eq!(set.len(), 9);
    }

    #[cfg(feature = "std")]
    #[test]
    fn test_trim_forgets_the_hints_of_closed_connections() {
        use crate::wire::{IpEndpoint, Ipv4Address};
        let tuple = |port: u16| {
            (
                IpEndpoint::new(Ipv4Address::new(10, 0, 0, 1).into(), 80),
                IpEndpoint::new(Ipv4Address::new(10, 0, 0, 2).into(), port),
            )
        };
        let mut set = SocketSet::new(Vec::new());
        let kept = set.add(socket());
        set.set_tcp_hint(tuple(1), kept);
        let burst: Vec<_> = (0..1000).map(|_| set.add(socket())).collect();
        for (port, &handle) in (2..).zip(&burst) {
            set.set_tcp_hint(tuple(port), handle);
        }
        assert_eq!(set.tcp_hints_len(), 1001);
        // Every socket is still there: nothing to forget.
        set.trim();
        assert_eq!(set.tcp_hints_len(), 1001);
        for handle in burst {
            set.remove(handle);
        }
        set.trim();
        assert_eq!(set.tcp_hints_len(), 1);
        assert_eq!(set.tcp_hint(&tuple(1)), Some(kept));
        let capacity = set.tcp_hints_capacity();
        assert!(capacity <= 64, "{capacity}");
    }
}
