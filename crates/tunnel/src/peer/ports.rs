//! The local ports of a peer's stack. Inbound: smoltcp has no listen backlog, so a served port
//! gets one listening socket per SYN in a batch, and a few idle ones are kept between bursts.
//! Outbound: connections get ephemeral ports, handed out round-robin from a random start.

use super::MAX_SOCKETS;
use crate::device::Shared;
use smoltcp::iface::{SocketHandle, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::wire::{IpAddress, IpEndpoint};
use std::collections::{HashMap, HashSet};
use std::io;

/// Idle listening sockets kept per port between bursts of connections.
const IDLE_LISTENERS: usize = 8;
const EPHEMERAL_PORTS: std::ops::RangeInclusive<u16> = 49152..=65535;

/// Listening sockets of the served ports.
#[derive(Default)]
pub(super) struct Listeners {
    /// Sockets listening (or mid-handshake) on each port.
    by_port: HashMap<u16, Vec<SocketHandle>>,
    /// SYNs seen per port since the last poll: as many listeners are wanted.
    syns_in_batch: HashMap<u16, usize>,
}

impl Listeners {
    /// Makes sure an incoming SYN for a served port, from `remote`, finds a listening socket.
    /// smoltcp has no listen backlog, so we add one listener per SYN seen in this batch, and
    /// tell the stack which one the SYN is for (the n-th idle one for the n-th SYN of a batch),
    /// so that it is not looked for among every socket.
    pub fn prepare(
        &mut self,
        sockets: &mut SocketSet<'static>,
        shared: &Shared,
        port: u16,
        remote: IpEndpoint,
    ) {
        if !shared.listening(port) {
            return;
        }
        let seen = self.syns_in_batch.entry(port).or_default();
        *seen += 1;
        let wanted = *seen;
        let handles = self.by_port.entry(port).or_default();
        // The search stops at the `wanted`-th: during a burst most are mid-handshake.
        let mut idle = handles
            .iter()
            .filter(|h| sockets.get::<tcp::Socket>(**h).state() == tcp::State::Listen);
        let listener = match idle.nth(wanted - 1) {
            Some(&handle) => handle,
            None if sockets.len() >= MAX_SOCKETS => return,
            None => {
                let mut socket = shared.new_socket();
                if socket.listen(port).is_err() {
                    return;
                }
                let handle = sockets.add(socket);
                handles.push(handle);
                handle
            }
        };
        let local = IpEndpoint::new(IpAddress::Ipv4(shared.address), port);
        sockets.hint_tcp(local, remote, listener);
    }

    /// Ends a batch of received packets (the stack has seen its SYNs).
    pub fn end_batch(&mut self) {
        self.syns_in_batch.clear();
    }

    /// [`Listeners::take_established`] for the one socket that just took a packet: whether its
    /// connection got past the handshake (then it is taken out). Only its port's handles are
    /// looked at, not every listening socket's state. What else `take_established` does (a
    /// failed handshake, idle listeners to free) is left to the next full poll.
    pub fn take_if_established(
        &mut self,
        sockets: &SocketSet<'static>,
        handle: SocketHandle,
    ) -> Option<SocketHandle> {
        let socket = sockets.get::<tcp::Socket>(handle);
        if matches!(
            socket.state(),
            tcp::State::Listen | tcp::State::SynReceived | tcp::State::Closed
        ) {
            return None;
        }
        let port = socket.local_endpoint()?.port;
        let handles = self.by_port.get_mut(&port)?;
        let at = handles.iter().position(|h| *h == handle)?;
        handles.swap_remove(at);
        Some(handle)
    }

    /// Takes out the sockets whose connection got past the handshake; puts sockets whose
    /// handshake failed back to listening, and frees idle ones beyond [`IDLE_LISTENERS`] and
    /// those of ports no longer served.
    pub fn take_established(
        &mut self,
        sockets: &mut SocketSet<'static>,
        shared: &Shared,
    ) -> Vec<SocketHandle> {
        let mut established = Vec::new();
        for (port, handles) in self.by_port.iter_mut() {
            let serving = shared.listening(*port);
            let mut idle = 0;
            handles.retain(|h| {
                let socket = sockets.get_mut::<tcp::Socket>(*h);
                match socket.state() {
                    tcp::State::Listen => {
                        idle += 1;
                        if serving && idle <= IDLE_LISTENERS {
                            true
                        } else {
                            sockets.remove(*h);
                            false
                        }
                    }
                    tcp::State::SynReceived => true,
                    tcp::State::Closed => {
                        // The handshake failed (RST); listen again rather than reallocate.
                        let ok = serving && socket.listen(*port).is_ok();
                        if !ok {
                            sockets.remove(*h);
                        }
                        ok
                    }
                    _ => {
                        established.push(*h);
                        false
                    }
                }
            });
        }
        self.by_port.retain(|_, v| !v.is_empty());
        established
    }
}

/// Ephemeral ports of the connections this side opens.
pub(super) struct Ports {
    /// The port of each outgoing connection's socket, until the socket is freed.
    by_socket: HashMap<SocketHandle, u16>,
    used: HashSet<u16>,
    next: u16,
}

impl Ports {
    pub fn new() -> Self {
        let span = EPHEMERAL_PORTS.end() - EPHEMERAL_PORTS.start();
        Self {
            by_socket: HashMap::new(),
            used: HashSet::new(),
            next: EPHEMERAL_PORTS.start() + rand::random::<u16>() % span,
        }
    }

    /// A free port; it is taken only by [`Ports::bind`].
    pub fn alloc(&mut self) -> io::Result<u16> {
        for _ in EPHEMERAL_PORTS {
            let port = self.next;
            self.next = if port == *EPHEMERAL_PORTS.end() {
                *EPHEMERAL_PORTS.start()
            } else {
                port + 1
            };
            if !self.used.contains(&port) {
                return Ok(port);
            }
        }
        Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            "no free local port",
        ))
    }

    /// Takes `port` for the socket `handle` until [`Ports::release`].
    pub fn bind(&mut self, handle: SocketHandle, port: u16) {
        self.by_socket.insert(handle, port);
        self.used.insert(port);
    }

    /// Frees the port of a freed socket, if it had one.
    pub fn release(&mut self, handle: SocketHandle) {
        if let Some(port) = self.by_socket.remove(&handle) {
            self.used.remove(&port);
        }
    }

    pub fn trim(&mut self) {
        super::connections::shrink_map(&mut self.by_socket);
        if self.used.len() * 4 <= self.used.capacity() {
            self.used.shrink_to_fit();
        }
    }
}
