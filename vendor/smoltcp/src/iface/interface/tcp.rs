use super::*;

use crate::socket::tcp::Socket;

impl InterfaceInner {
    pub(crate) fn process_tcp<'frame>(
        &mut self,
        sockets: &mut SocketSet,
        ip_repr: IpRepr,
        ip_payload: &'frame [u8],
    ) -> Option<Packet<'frame>> {
        let (src_addr, dst_addr) = (ip_repr.src_addr(), ip_repr.dst_addr());
        let tcp_packet = check!(TcpPacket::new_checked(ip_payload));
        let tcp_repr = check!(TcpRepr::parse(
            &tcp_packet,
            &src_addr,
            &dst_addr,
            &self.caps.checksum
        ));

        // kakuremichi patch: the socket that took this connection's last segment first, then
        // every socket in turn (see `SocketSet::tcp_hints`).
        let accepts = |cx: &mut Self, item: &crate::iface::socket_set::Item| {
            Socket::downcast(&item.socket).is_some_and(|s| s.accepts(cx, &ip_repr, &tcp_repr))
        };
        #[cfg(feature = "alloc")]
        let tuple = (
            IpEndpoint::new(dst_addr, tcp_repr.dst_port),
            IpEndpoint::new(src_addr, tcp_repr.src_port),
        );
        #[cfg(feature = "alloc")]
        let hinted = sockets
            .tcp_hint(&tuple)
            .filter(|&h| sockets.item(h).is_some_and(|item| accepts(self, item)));
        #[cfg(not(feature = "alloc"))]
        let hinted = None;
        let handle = hinted.or_else(|| {
            let found = sockets
                .items()
                .find(|item| accepts(self, item))
                .map(|item| item.meta.handle)?;
            #[cfg(feature = "alloc")]
            sockets.set_tcp_hint(tuple, found);
            Some(found)
        });
        if let Some(handle) = handle {
            self.last_tcp = Some(handle);
            return sockets
                .get_mut::<Socket>(handle)
                .process(self, &ip_repr, &tcp_repr)
                .map(|(ip, tcp)| Packet::new(ip, IpPayload::Tcp(tcp)));
        }

        if tcp_repr.control == TcpControl::Rst
            || ip_repr.dst_addr().is_unspecified()
            || ip_repr.src_addr().is_unspecified()
        {
            // Never reply to a TCP RST packet with another TCP RST packet. We also never want to
            // send a TCP RST packet with unspecified addresses.
            None
        } else {
            // The packet wasn't handled by a socket, send a TCP RST packet.
            let (ip, tcp) = tcp::Socket::rst_reply(&ip_repr, &tcp_repr);
            Some(Packet::new(ip, IpPayload::Tcp(tcp)))
        }
    }
}
