//! The rtnetlink requests the guest needs: set a link up, add an IPv4
//! address, add a default route, and for compose networks create a bridge
//! and a veth pair whose far end lands in a service's network namespace.
//! Synchronous, one request at a time, each acknowledged (`NLM_F_ACK`), on
//! the netlink crates libcontainer already links. A socket works in the
//! network namespace of the thread that opened it.

use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsRawFd, BorrowedFd};

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage,
    NetlinkPayload,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage, AddressScope};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::protocols::NETLINK_ROUTE;
use netlink_sys::{Socket, SocketAddr};

/// An rtnetlink socket.
#[derive(Debug)]
pub struct Rtnl {
    socket: Socket,
    seq: u32,
}

/// What a request ended in when the kernel refused it.
fn kernel_error(code: i32) -> io::Error {
    // The kernel sends -errno.
    io::Error::from_raw_os_error(-code)
}

impl Rtnl {
    /// Opens and binds a route netlink socket.
    pub fn open() -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        Ok(Self { socket, seq: 0 })
    }

    /// Sets link `index` up.
    pub fn link_up(&mut self, index: u32) -> io::Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.header.flags = LinkFlags::Up;
        msg.header.change_mask = LinkFlags::Up;
        self.request(RouteNetlinkMessage::SetLink(msg), 0)
    }

    /// Creates bridge `name`; one already there is fine.
    pub fn add_bridge(&mut self, name: &str) -> io::Result<()> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.into()));
        msg.attributes
            .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(
                InfoKind::Bridge,
            )]));
        self.request_tolerating_exists(RouteNetlinkMessage::NewLink(msg))
    }

    /// Creates the veth pair `name` (here, enslaved to bridge `bridge`) and
    /// `peer` (created directly inside the namespace `netns`, so it never
    /// exists in this one).
    pub fn add_veth(
        &mut self,
        name: &str,
        bridge: u32,
        peer: &str,
        netns: BorrowedFd<'_>,
    ) -> io::Result<()> {
        let mut far = LinkMessage::default();
        far.attributes.push(LinkAttribute::IfName(peer.into()));
        far.attributes
            .push(LinkAttribute::NetNsFd(netns.as_raw_fd()));
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.into()));
        msg.attributes.push(LinkAttribute::Controller(bridge));
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(far))),
        ]));
        self.request(RouteNetlinkMessage::NewLink(msg), NLM_F_CREATE | NLM_F_EXCL)
    }

    /// Adds `addr/prefix` to link `index`; an address already there is fine.
    pub fn add_ipv4(&mut self, index: u32, addr: Ipv4Addr, prefix: u8) -> io::Result<()> {
        let mut msg = AddressMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.prefix_len = prefix;
        msg.header.scope = AddressScope::Universe;
        msg.header.index = index;
        msg.attributes
            .push(AddressAttribute::Local(IpAddr::V4(addr)));
        msg.attributes
            .push(AddressAttribute::Address(IpAddr::V4(addr)));
        if prefix < 31 {
            let host_bits = u32::MAX.checked_shr(u32::from(prefix)).unwrap_or(0);
            let broadcast = Ipv4Addr::from(u32::from(addr) | host_bits);
            msg.attributes.push(AddressAttribute::Broadcast(broadcast));
        }
        self.request_tolerating_exists(RouteNetlinkMessage::NewAddress(msg))
    }

    /// Adds a default route through `gateway` on link `index`; a default
    /// route already there is fine.
    pub fn add_default_route(&mut self, index: u32, gateway: Ipv4Addr) -> io::Result<()> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = AddressFamily::Inet;
        msg.header.destination_prefix_length = 0;
        msg.header.table = RouteHeader::RT_TABLE_MAIN;
        msg.header.protocol = RouteProtocol::Boot;
        msg.header.scope = RouteScope::Universe;
        msg.header.kind = RouteType::Unicast;
        msg.attributes
            .push(RouteAttribute::Gateway(RouteAddress::Inet(gateway)));
        msg.attributes.push(RouteAttribute::Oif(index));
        self.request_tolerating_exists(RouteNetlinkMessage::NewRoute(msg))
    }

    fn request_tolerating_exists(&mut self, msg: RouteNetlinkMessage) -> io::Result<()> {
        match self.request(msg, NLM_F_CREATE | NLM_F_EXCL) {
            Err(e) if e.raw_os_error() == Some(libc_eexist()) => Ok(()),
            other => other,
        }
    }

    /// Sends one request and waits for its acknowledgement.
    fn request(&mut self, msg: RouteNetlinkMessage, extra_flags: u16) -> io::Result<()> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_ACK | extra_flags;
        header.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
        packet.finalize();
        let mut buf = vec![0; packet.buffer_len()];
        packet.serialize(&mut buf);
        self.socket.send(&buf, 0)?;
        loop {
            let (reply, _) = self.socket.recv_from_full()?;
            let mut offset = 0;
            while offset < reply.len() {
                let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&reply[offset..])
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                let len = msg.header.length as usize;
                if msg.header.sequence_number == self.seq
                    && let NetlinkPayload::Error(err) = msg.payload
                {
                    return match err.code {
                        None => Ok(()),
                        Some(code) => Err(kernel_error(code.get())),
                    };
                }
                if len == 0 {
                    break;
                }
                offset += len;
            }
        }
    }
}

/// `EEXIST` without pulling in libc for one constant.
fn libc_eexist() -> i32 {
    nix::errno::Errno::EEXIST as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_errors_are_negated_errnos() {
        assert_eq!(kernel_error(-17).raw_os_error(), Some(libc_eexist()));
    }
}
