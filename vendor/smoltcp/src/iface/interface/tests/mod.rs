#[cfg(feature = "proto-ipv4")]
mod ipv4;
#[cfg(feature = "proto-ipv6")]
mod ipv6;
#[cfg(feature = "proto-sixlowpan")]
mod sixlowpan;

#[allow(unused)]
use std::vec::Vec;

use crate::tests::setup;

use rstest::*;

use super::*;

use crate::iface::Interface;
use crate::phy::ChecksumCapabilities;
#[cfg(feature = "alloc")]
use crate::phy::Loopback;
use crate::time::Instant;

#[allow(unused)]
fn fill_slice(s: &mut [u8], val: u8) {
    for x in s.iter_mut() {
        *x = val
    }
}

#[allow(unused)]
fn recv_all(device: &mut crate::tests::TestingDevice, timestamp: Instant) -> Vec<Vec<u8>> {
    let mut pkts = Vec::new();
    while let Some(pkt) = device.tx_queue.pop_front() {
        pkts.push(pkt)
    }
    pkts
}

#[derive(Debug, PartialEq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
struct MockTxToken;

impl TxToken for MockTxToken {
    fn consume<R, F>(self, len: usize, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        let mut junk = [0; 1536];
        f(&mut junk[..len])
    }
}

#[test]
#[should_panic(expected = "The hardware address does not match the medium of the interface.")]
#[cfg(all(feature = "medium-ip", feature = "medium-ethernet", feature = "alloc"))]
fn test_new_panic() {
    let mut device = Loopback::new(Medium::Ethernet);
    let config = Config::new(HardwareAddress::Ip);
    Interface::new(config, &mut device, Instant::ZERO);
}

#[cfg(feature = "socket-udp")]
#[rstest]
#[case::ip(Medium::Ip)]
#[cfg(feature = "medium-ip")]
#[case::ethernet(Medium::Ethernet)]
#[cfg(feature = "medium-ethernet")]
#[case::ieee802154(Medium::Ieee802154)]
#[cfg(feature = "medium-ieee802154")]
fn test_handle_udp_broadcast(#[case] medium: Medium) {
    use crate::socket::udp;
    use crate::wire::IpEndpoint;

    static UDP_PAYLOAD: [u8; 5] = [0x48, 0x65, 0x6c, 0x6c, 0x6f];

    let (mut iface, mut sockets, _device) = setup(medium);

    let rx_buffer = udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY], vec![0; 15]);
    let tx_buffer = udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY], vec![0; 15]);

    let udp_socket = udp::Socket::new(rx_buffer, tx_buffer);

    let mut udp_bytes = vec![0u8; 13];
    let mut packet = UdpPacket::new_unchecked(&mut udp_bytes);

    let socket_handle = sockets.add(udp_socket);

    #[cfg(feature = "proto-ipv6")]
    let src_ip = Ipv6Address::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);
    #[cfg(all(not(feature = "proto-ipv6"), feature = "proto-ipv4"))]
    let src_ip = Ipv4Address::new(0x7f, 0x00, 0x00, 0x02);

    let udp_repr = UdpRepr {
        src_port: 67,
        dst_port: 68,
    };

    #[cfg(feature = "proto-ipv6")]
    let ip_repr = IpRepr::Ipv6(Ipv6Repr {
        src_addr: src_ip,
        dst_addr: IPV6_LINK_LOCAL_ALL_NODES,
        next_header: IpProtocol::Udp,
        payload_len: udp_repr.header_len() + UDP_PAYLOAD.len(),
        hop_limit: 0x40,
    });
    #[cfg(all(not(feature = "proto-ipv6"), feature = "proto-ipv4"))]
    let ip_repr = IpRepr::Ipv4(Ipv4Repr {
        src_addr: src_ip,
        dst_addr: Ipv4Address::BROADCAST,
        next_header: IpProtocol::Udp,
        payload_len: udp_repr.header_len() + UDP_PAYLOAD.len(),
        hop_limit: 0x40,
    });
    let dst_addr = ip_repr.dst_addr();

    // Bind the socket to port 68
    let socket = sockets.get_mut::<udp::Socket>(socket_handle);
    assert_eq!(socket.bind(68), Ok(()));
    assert!(!socket.can_recv());
    assert!(socket.can_send());

    udp_repr.emit(
        &mut packet,
        &ip_repr.src_addr(),
        &ip_repr.dst_addr(),
        UDP_PAYLOAD.len(),
        |buf| buf.copy_from_slice(&UDP_PAYLOAD),
        &ChecksumCapabilities::default(),
    );

    // Packet should be handled by bound UDP socket
    assert_eq!(
        iface.inner.process_udp(
            &mut sockets,
            PacketMeta::default(),
            false,
            ip_repr,
            packet.into_inner(),
        ),
        None
    );

    // Make sure the payload to the UDP packet processed by process_udp is
    // appended to the bound sockets rx_buffer
    let socket = sockets.get_mut::<udp::Socket>(socket_handle);
    assert!(socket.can_recv());
    assert_eq!(
        socket.recv(),
        Ok((
            &UDP_PAYLOAD[..],
            udp::UdpMetadata {
                local_address: Some(dst_addr),
                ..IpEndpoint::new(src_ip.into(), 67).into()
            }
        ))
    );
}

#[test]
#[cfg(all(feature = "medium-ip", feature = "socket-tcp", feature = "proto-ipv6"))]
pub fn tcp_not_accepted() {
    let (mut iface, mut sockets, _) = setup(Medium::Ip);
    let tcp = TcpRepr {
        src_port: 4242,
        dst_port: 4243,
        control: TcpControl::Syn,
        seq_number: TcpSeqNumber(-10001),
        ack_number: None,
        window_len: 256,
        window_scale: None,
        max_seg_size: None,
        sack_permitted: false,
        sack_ranges: [None, None, None],
        timestamp: None,
        payload: &[],
    };

    let mut tcp_bytes = vec![0u8; tcp.buffer_len()];

    tcp.emit(
        &mut TcpPacket::new_unchecked(&mut tcp_bytes),
        &Ipv6Address::new(0xfe80, 0, 0, 0, 0, 0, 0, 2).into(),
        &Ipv6Address::new(0xfe80, 0, 0, 0, 0, 0, 0, 1).into(),
        &ChecksumCapabilities::default(),
    );

    assert_eq!(
        iface.inner.process_tcp(
            &mut sockets,
            IpRepr::Ipv6(Ipv6Repr {
                src_addr: Ipv6Address::new(0xfe80, 0, 0, 0, 0, 0, 0, 2),
                dst_addr: Ipv6Address::new(0xfe80, 0, 0, 0, 0, 0, 0, 1),
                next_header: IpProtocol::Tcp,
                payload_len: tcp.buffer_len(),
                hop_limit: 64,
            }),
            &tcp_bytes,
        ),
        Some(Packet::new_ipv6(
            Ipv6Repr {
                src_addr: Ipv6Address::new(0xfe80, 0, 0, 0, 0, 0, 0, 1),
                dst_addr: Ipv6Address::new(0xfe80, 0, 0, 0, 0, 0, 0, 2),
                next_header: IpProtocol::Tcp,
                payload_len: tcp.buffer_len(),
                hop_limit: 64,
            },
            IpPayload::Tcp(TcpRepr {
                src_port: 4243,
                dst_port: 4242,
                control: TcpControl::Rst,
                seq_number: TcpSeqNumber(0),
                ack_number: Some(TcpSeqNumber(-10000)),
                window_len: 0,
                window_scale: None,
                max_seg_size: None,
                sack_permitted: false,
                sack_ranges: [None, None, None],
                timestamp: None,
                payload: &[],
            })
        ))
    );
    // Unspecified destination address.
    tcp.emit(
        &mut TcpPacket::new_unchecked(&mut tcp_bytes),
        &Ipv6Address::new(0xfe80, 0, 0, 0, 0, 0, 0, 2).into(),
        &Ipv6Address::UNSPECIFIED.into(),
        &ChecksumCapabilities::default(),
    );

    assert_eq!(
        iface.inner.process_tcp(
            &mut sockets,
            IpRepr::Ipv6(Ipv6Repr {
                src_addr: Ipv6Address::new(0xfe80, 0, 0, 0, 0, 0, 0, 2),
                dst_addr: Ipv6Address::UNSPECIFIED,
                next_header: IpProtocol::Tcp,
                payload_len: tcp.buffer_len(),
                hop_limit: 64,
            }),
            &tcp_bytes,
        ),
        None,
    );
}

// kakuremichi patch regression test: `poll_egress_socket` sends what the named socket has queued
// and leaves every other socket alone; `poll_egress` still serves them all.
#[cfg(all(feature = "socket-tcp", feature = "medium-ip", feature = "proto-ipv4"))]
#[test]
fn test_poll_egress_socket_sends_only_that_socket() {
    use crate::socket::tcp;

    let (mut iface, mut sockets, mut device) = setup(Medium::Ip);
    let mut handles = Vec::new();
    for port in [49500u16, 49501] {
        let mut socket = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; 64]),
            tcp::SocketBuffer::new(vec![0; 64]),
        );
        socket
            .connect(iface.context(), (IpAddress::v4(192, 168, 1, 2), 80), port)
            .unwrap();
        handles.push(sockets.add(socket));
    }
    let src_ports = |packets: Vec<Vec<u8>>| -> Vec<u16> {
        packets
            .iter()
            .map(|p| {
                let ip = Ipv4Packet::new_checked(&p[..]).unwrap();
                let tcp = TcpPacket::new_checked(ip.payload()).unwrap();
                assert!(tcp.syn());
                tcp.src_port()
            })
            .collect()
    };

    // Both sockets have a SYN to send; only the second one's leaves.
    iface.poll_egress_socket(Instant::ZERO, &mut device, &mut sockets, handles[1]);
    assert_eq!(src_ports(recv_all(&mut device, Instant::ZERO)), [49501]);
    // The first one's is still there for a full egress pass (the second's is in flight).
    iface.poll_egress(Instant::ZERO, &mut device, &mut sockets);
    assert_eq!(src_ports(recv_all(&mut device, Instant::ZERO)), [49500]);
}

// kakuremichi patch regression test: an arriving segment goes to the socket of its connection,
// found through `SocketSet::tcp_hints` once known; a stale hint (the socket removed, its slot
// reused by a socket of another connection) falls back to asking every socket.
#[cfg(all(feature = "socket-tcp", feature = "medium-ip", feature = "proto-ipv4"))]
#[test]
fn test_tcp_segment_finds_its_socket_through_a_hint() {
    use crate::socket::tcp;

    let (mut iface, mut sockets, _) = setup(Medium::Ip);
    let local = Ipv4Address::new(192, 168, 1, 1);
    let remote = Ipv4Address::new(192, 168, 1, 2);
    let listener = |port: u16| {
        let mut socket = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; 64]),
            tcp::SocketBuffer::new(vec![0; 64]),
        );
        socket.listen(port).unwrap();
        socket
    };
    let syn = |iface: &mut Interface, sockets: &mut SocketSet, from: u16, to: u16| {
        let tcp = TcpRepr {
            src_port: from,
            dst_port: to,
            control: TcpControl::Syn,
            seq_number: TcpSeqNumber(1000),
            ack_number: None,
            window_len: 256,
            window_scale: None,
            max_seg_size: None,
            sack_permitted: false,
            sack_ranges: [None, None, None],
            timestamp: None,
            payload: &[],
        };
        let mut bytes = vec![0u8; tcp.buffer_len()];
        tcp.emit(
            &mut TcpPacket::new_unchecked(&mut bytes),
            &remote.into(),
            &local.into(),
            &ChecksumCapabilities::default(),
        );
        let ip = IpRepr::Ipv4(Ipv4Repr {
            src_addr: remote,
            dst_addr: local,
            next_header: IpProtocol::Tcp,
            payload_len: tcp.buffer_len(),
            hop_limit: 64,
        });
        iface
            .inner
            .process_tcp(sockets, ip, &bytes)
            .map(|p| match p.payload() {
                IpPayload::Tcp(tcp) => tcp.control,
                _ => unreachable!(),
            })
    };
    let state = |sockets: &SocketSet, h| sockets.get::<tcp::Socket>(h).state();
    let tuple = |to: u16, from: u16| {
        (
            IpEndpoint::new(local.into(), to),
            IpEndpoint::new(remote.into(), from),
        )
    };

    let a = sockets.add(listener(80));
    let b = sockets.add(listener(81));
    assert_eq!(
        syn(&mut iface, &mut sockets, 4000, 81),
        None,
        "taken; its SYN-ACK leaves on egress"
    );
    assert_eq!(state(&sockets, b), tcp::State::SynReceived);
    assert_eq!(state(&sockets, a), tcp::State::Listen);
    assert_eq!(sockets.tcp_hint(&tuple(81, 4000)), Some(b));
    assert_eq!(sockets.tcp_hints_len(), 1);

    // The hint for 80 <- 4001 names `a`; then `a` goes and its slot takes a listener on 82.
    assert_eq!(syn(&mut iface, &mut sockets, 4001, 80), None);
    assert_eq!(sockets.tcp_hint(&tuple(80, 4001)), Some(a));
    sockets.remove(a);
    let c = sockets.add(listener(82));
    assert_eq!(c, a, "the slot is reused");
    // A segment of the old connection: the hinted socket does not accept it, nothing else does.
    assert_eq!(
        syn(&mut iface, &mut sockets, 4001, 80),
        Some(TcpControl::Rst)
    );
    assert_eq!(state(&sockets, c), tcp::State::Listen);
    // A segment for the new listener finds it by asking every socket.
    assert_eq!(syn(&mut iface, &mut sockets, 4002, 82), None);
    assert_eq!(state(&sockets, c), tcp::State::SynReceived);
    assert_eq!(sockets.tcp_hint(&tuple(82, 4002)), Some(c));

    // A hint given before the first segment (`hint_tcp`): of two sockets listening on 83, the
    // SYN goes to the one named, though the scan would have found the other first.
    let first = sockets.add(listener(83));
    let named = sockets.add(listener(83));
    let (local, remote) = tuple(83, 4003);
    sockets.hint_tcp(local, remote, named);
    assert_eq!(syn(&mut iface, &mut sockets, 4003, 83), None);
    assert_eq!(state(&sockets, named), tcp::State::SynReceived);
    assert_eq!(state(&sockets, first), tcp::State::Listen);
    // The SYN sent again goes to the socket that holds its connection, not to a listener
    // named for it.
    sockets.hint_tcp(local, remote, first);
    assert_eq!(sockets.tcp_hint(&tuple(83, 4003)), Some(named));
    assert_eq!(syn(&mut iface, &mut sockets, 4003, 83), None);
    assert_eq!(state(&sockets, first), tcp::State::Listen);
}

// kakuremichi patch regression test: after the ingress of one packet, `last_tcp_socket` names
// the socket that took it (none when the interface answered it itself), and `socket_poll_at`
// gives that socket's next poll, as `poll_at` does over every socket.
#[cfg(all(feature = "socket-tcp", feature = "medium-ip", feature = "proto-ipv4"))]
#[test]
fn test_last_tcp_socket_and_its_poll_at() {
    use crate::socket::tcp;

    let (mut iface, mut sockets, mut device) = setup(Medium::Ip);
    let local = Ipv4Address::new(192, 168, 1, 1);
    let remote = Ipv4Address::new(192, 168, 1, 2);
    let listener = |port: u16| {
        let mut socket = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; 64]),
            tcp::SocketBuffer::new(vec![0; 64]),
        );
        socket.listen(port).unwrap();
        socket
    };
    let syn = |to: u16| -> Vec<u8> {
        let tcp = TcpRepr {
            src_port: 4000,
            dst_port: to,
            control: TcpControl::Syn,
            seq_number: TcpSeqNumber(1000),
            ack_number: None,
            window_len: 256,
            window_scale: None,
            max_seg_size: None,
            sack_permitted: false,
            sack_ranges: [None, None, None],
            timestamp: None,
            payload: &[],
        };
        let ip = Ipv4Repr {
            src_addr: remote,
            dst_addr: local,
            next_header: IpProtocol::Tcp,
            payload_len: tcp.buffer_len(),
            hop_limit: 64,
        };
        let mut bytes = vec![0u8; ip.buffer_len() + tcp.buffer_len()];
        let mut packet = Ipv4Packet::new_unchecked(&mut bytes);
        ip.emit(&mut packet, &ChecksumCapabilities::default());
        tcp.emit(
            &mut TcpPacket::new_unchecked(packet.payload_mut()),
            &remote.into(),
            &local.into(),
            &ChecksumCapabilities::default(),
        );
        bytes
    };
    let now = Instant::from_millis(1000);

    let idle = sockets.add(listener(80));
    let taker = sockets.add(listener(81));
    assert_eq!(
        iface.socket_poll_at(now, &sockets, taker),
        None,
        "a listener waits"
    );
    device.rx_queue.push_back(syn(81));
    iface.poll_ingress_single(now, &mut device, &mut sockets);
    assert_eq!(iface.last_tcp_socket(), Some(taker));
    assert_eq!(
        iface.socket_poll_at(now, &sockets, taker),
        Some(Instant::ZERO),
        "its SYN-ACK is due now"
    );
    assert_eq!(iface.socket_poll_at(now, &sockets, idle), None);
    iface.poll_egress_socket(now, &mut device, &mut sockets, taker);
    assert_eq!(recv_all(&mut device, now).len(), 1, "the SYN-ACK");
    let armed = iface.socket_poll_at(now, &sockets, taker);
    assert!(
        armed.is_some_and(|t| t > now),
        "{armed:?}: its retransmission"
    );
    assert_eq!(armed, iface.poll_at(now, &sockets));

    // A SYN to a port nobody listens on: the interface answers with a reset itself.
    device.rx_queue.push_back(syn(82));
    iface.poll_ingress_single(now, &mut device, &mut sockets);
    assert_eq!(iface.last_tcp_socket(), None);
    assert_eq!(recv_all(&mut device, now).len(), 1, "the RST");
}
