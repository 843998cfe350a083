//! The netlink requests the guest needs. rtnetlink: set a link up, add or
//! remove an IPv4 address, add a default route, add or remove a route to
//! one network, and create
//! links: for compose networks a bridge and a veth pair whose far end lands
//! in a service's network namespace, for the gateway a WireGuard device.
//! Generic netlink: resolve a family by name and send it a command (the
//! gateway's WireGuard configuration, `gateway::wireguard`). Synchronous,
//! one request at a time, each acknowledged (`NLM_F_ACK`), on the netlink
//! crates libcontainer already links. A socket works in the network
//! namespace of the thread that opened it.

use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsRawFd, BorrowedFd};

use netlink_packet_core::{
    DefaultNla, Emitable, NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST,
    NetlinkDeserializable, NetlinkHeader, NetlinkMessage, NetlinkPayload, NetlinkSerializable, Nla,
    NlaBuffer, NlasIterator,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage, AddressScope};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::protocols::{NETLINK_GENERIC, NETLINK_ROUTE};
use netlink_sys::{Socket, SocketAddr};
use zeroize::Zeroizing;

/// One netlink socket and its request counter: what rtnetlink and generic
/// netlink share (send one request, collect its answers up to the ack).
#[derive(Debug)]
struct Channel {
    socket: Socket,
    seq: u32,
}

impl Channel {
    fn open(protocol: isize) -> io::Result<Self> {
        let mut socket = Socket::new(protocol)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        Ok(Self { socket, seq: 0 })
    }

    /// Sends `msg` and waits for its acknowledgement; returns the answers
    /// the kernel sent before it (e.g. a generic netlink family's id).
    fn request<T>(&mut self, msg: T, extra_flags: u16) -> io::Result<Vec<T>>
    where
        T: NetlinkSerializable + NetlinkDeserializable,
    {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_ACK | extra_flags;
        header.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
        packet.finalize();
        // Wiped after use: a WireGuard request carries the device's private key.
        let mut buf = Zeroizing::new(vec![0; packet.buffer_len()]);
        packet.serialize(&mut buf);
        drop(packet);
        self.socket.send(&buf, 0)?;
        let mut answers = Vec::new();
        loop {
            let (reply, _) = self.socket.recv_from_full()?;
            let reply = Zeroizing::new(reply);
            let mut offset = 0;
            while offset < reply.len() {
                let msg = NetlinkMessage::<T>::deserialize(&reply[offset..])
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                let len = msg.header.length as usize;
                if msg.header.sequence_number == self.seq {
                    match msg.payload {
                        NetlinkPayload::Error(err) => {
                            return match err.code {
                                None => Ok(answers),
                                Some(code) => Err(kernel_error(code.get())),
                            };
                        }
                        NetlinkPayload::InnerMessage(answer) => answers.push(answer),
                        _ => {}
                    }
                }
                if len == 0 {
                    break;
                }
                // Messages in one datagram start at 4-byte boundaries.
                offset += len.next_multiple_of(4);
            }
        }
    }
}

/// An rtnetlink socket.
#[derive(Debug)]
pub struct Rtnl {
    channel: Channel,
}

/// What a request ended in when the kernel refused it.
fn kernel_error(code: i32) -> io::Error {
    // The kernel sends -errno.
    io::Error::from_raw_os_error(-code)
}

impl Rtnl {
    /// Opens and binds a route netlink socket.
    pub fn open() -> io::Result<Self> {
        Ok(Self {
            channel: Channel::open(NETLINK_ROUTE)?,
        })
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

    /// Creates the WireGuard device `name` (the kernel's, `CONFIG_WIREGUARD`);
    /// one already there is fine. Its keys and peers are set over generic
    /// netlink ([`Genl`]).
    pub fn add_wireguard(&mut self, name: &str) -> io::Result<()> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.into()));
        msg.attributes
            .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(
                InfoKind::Wireguard,
            )]));
        self.request_tolerating_exists(RouteNetlinkMessage::NewLink(msg))
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

    /// Routes `dest/prefix` straight out of link `index` (no next hop, as
    /// `ip route add DEST/PREFIX dev LINK`); a route already there is fine.
    pub fn add_link_route(&mut self, index: u32, dest: Ipv4Addr, prefix: u8) -> io::Result<()> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = AddressFamily::Inet;
        msg.header.destination_prefix_length = prefix;
        msg.header.table = RouteHeader::RT_TABLE_MAIN;
        msg.header.protocol = RouteProtocol::Boot;
        msg.header.scope = RouteScope::Link;
        msg.header.kind = RouteType::Unicast;
        msg.attributes
            .push(RouteAttribute::Destination(RouteAddress::Inet(dest)));
        msg.attributes.push(RouteAttribute::Oif(index));
        self.request_tolerating_exists(RouteNetlinkMessage::NewRoute(msg))
    }

    /// Removes `addr/prefix` from link `index` (`ip addr del`); an address
    /// already gone is fine.
    pub fn del_ipv4(&mut self, index: u32, addr: Ipv4Addr, prefix: u8) -> io::Result<()> {
        let mut msg = AddressMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.prefix_len = prefix;
        msg.header.index = index;
        msg.attributes
            .push(AddressAttribute::Local(IpAddr::V4(addr)));
        self.request_tolerating_gone(RouteNetlinkMessage::DelAddress(msg))
    }

    /// Removes the route to `dest/prefix` out of link `index` (`ip route del
    /// DEST/PREFIX dev LINK`); a route already gone is fine.
    pub fn del_link_route(&mut self, index: u32, dest: Ipv4Addr, prefix: u8) -> io::Result<()> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = AddressFamily::Inet;
        msg.header.destination_prefix_length = prefix;
        msg.header.table = RouteHeader::RT_TABLE_MAIN;
        // Any protocol, scope and type: the kernel matches on what is set.
        msg.header.scope = RouteScope::NoWhere;
        msg.attributes
            .push(RouteAttribute::Destination(RouteAddress::Inet(dest)));
        msg.attributes.push(RouteAttribute::Oif(index));
        self.request_tolerating_gone(RouteNetlinkMessage::DelRoute(msg))
    }

    /// A deletion whose object is not there: the kernel says
    /// `EADDRNOTAVAIL` for an address, `ESRCH` for a route.
    fn request_tolerating_gone(&mut self, msg: RouteNetlinkMessage) -> io::Result<()> {
        let gone = [
            nix::errno::Errno::EADDRNOTAVAIL as i32,
            nix::errno::Errno::ESRCH as i32,
        ];
        match self.request(msg, 0) {
            Err(e) if e.raw_os_error().is_some_and(|code| gone.contains(&code)) => Ok(()),
            other => other,
        }
    }

    fn request_tolerating_exists(&mut self, msg: RouteNetlinkMessage) -> io::Result<()> {
        match self.request(msg, NLM_F_CREATE | NLM_F_EXCL) {
            Err(e) if e.raw_os_error() == Some(libc_eexist()) => Ok(()),
            other => other,
        }
    }

    /// Sends one request and waits for its acknowledgement.
    fn request(&mut self, msg: RouteNetlinkMessage, extra_flags: u16) -> io::Result<()> {
        self.channel.request(msg, extra_flags).map(drop)
    }
}

/// The generic netlink controller's family id (`GENL_ID_CTRL`).
const GENL_ID_CTRL: u16 = 0x10;
/// `CTRL_CMD_GETFAMILY`: look a family up by name.
const CTRL_CMD_GETFAMILY: u8 = 3;
/// The controller's version.
const CTRL_VERSION: u8 = 2;
/// `CTRL_ATTR_FAMILY_ID` (u16).
const CTRL_ATTR_FAMILY_ID: u16 = 1;
/// `CTRL_ATTR_FAMILY_NAME` (NUL-terminated string).
const CTRL_ATTR_FAMILY_NAME: u16 = 2;
/// `sizeof(struct genlmsghdr)`: cmd, version, two reserved bytes.
const GENL_HDRLEN: usize = 4;

/// A generic netlink message: the family id as its netlink type, then
/// `struct genlmsghdr` and the attributes, already encoded. The attributes
/// are wiped when dropped and never shown: they may hold a private key.
pub struct GenlMessage {
    /// The family (its id, from [`Genl::family_id`]).
    pub family: u16,
    /// The family's command.
    pub cmd: u8,
    /// The family's version.
    pub version: u8,
    /// The encoded attributes ([`encode_nlas`]).
    pub attrs: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for GenlMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GenlMessage")
            .field("family", &self.family)
            .field("cmd", &self.cmd)
            .field("version", &self.version)
            .field("attrs_len", &self.attrs.len())
            .finish()
    }
}

impl NetlinkSerializable for GenlMessage {
    fn message_type(&self) -> u16 {
        self.family
    }

    fn buffer_len(&self) -> usize {
        GENL_HDRLEN + self.attrs.len()
    }

    fn serialize(&self, buffer: &mut [u8]) {
        buffer[..GENL_HDRLEN].copy_from_slice(&[self.cmd, self.version, 0, 0]);
        buffer[GENL_HDRLEN..].copy_from_slice(&self.attrs);
    }
}

impl NetlinkDeserializable for GenlMessage {
    type Error = netlink_packet_core::DecodeError;

    fn deserialize(header: &NetlinkHeader, payload: &[u8]) -> Result<Self, Self::Error> {
        if payload.len() < GENL_HDRLEN {
            return Err("generic netlink message shorter than its header".into());
        }
        Ok(Self {
            family: header.message_type,
            cmd: payload[0],
            version: payload[1],
            attrs: Zeroizing::new(payload[GENL_HDRLEN..].to_vec()),
        })
    }
}

/// `nlas` encoded one after the other, each padded to 4 bytes, in a buffer
/// that is wiped when dropped.
pub fn encode_nlas<T: Nla>(nlas: &[T]) -> Zeroizing<Vec<u8>> {
    let mut buf = Zeroizing::new(vec![0; Emitable::buffer_len(&nlas)]);
    Emitable::emit(&nlas, &mut buf);
    buf
}

/// A generic netlink socket (`NETLINK_GENERIC`).
#[derive(Debug)]
pub struct Genl {
    channel: Channel,
}

impl Genl {
    /// Opens and binds a generic netlink socket. The kernel's acks name
    /// only the header of the request they answer (`NETLINK_CAP_ACK`), so
    /// a refused request's attributes (a private key) are not sent back.
    pub fn open() -> io::Result<Self> {
        let channel = Channel::open(NETLINK_GENERIC)?;
        channel.socket.set_cap_ack(true)?;
        Ok(Self { channel })
    }

    /// The id of the family `name` (`CTRL_CMD_GETFAMILY`); `ENOENT` when
    /// the kernel has no such family.
    pub fn family_id(&mut self, name: &str) -> io::Result<u16> {
        let answers = self.channel.request(family_query(name), 0)?;
        answers
            .iter()
            .find_map(|answer| family_id_of(&answer.attrs))
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("the kernel named no id for the generic netlink family {name:?}"),
                )
            })
    }

    /// Sends `msg` and waits for the kernel to accept it.
    pub fn request(&mut self, msg: GenlMessage) -> io::Result<()> {
        self.channel.request(msg, 0).map(drop)
    }
}

/// `CTRL_CMD_GETFAMILY` for the family `name`.
fn family_query(name: &str) -> GenlMessage {
    let mut value = name.as_bytes().to_vec();
    value.push(0);
    GenlMessage {
        family: GENL_ID_CTRL,
        cmd: CTRL_CMD_GETFAMILY,
        version: CTRL_VERSION,
        attrs: encode_nlas(&[DefaultNla::new(CTRL_ATTR_FAMILY_NAME, value)]),
    }
}

/// `CTRL_ATTR_FAMILY_ID` among a controller answer's attributes.
fn family_id_of(attrs: &[u8]) -> Option<u16> {
    NlasIterator::new(attrs)
        .filter_map(Result::ok)
        .find(|nla: &NlaBuffer<&[u8]>| nla.kind() == CTRL_ATTR_FAMILY_ID)
        .and_then(|nla| Some(u16::from_ne_bytes(nla.value().get(..2)?.try_into().ok()?)))
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

    /// The whole `CTRL_CMD_GETFAMILY` request for "wireguard", laid out as
    /// `struct nlmsghdr`, `struct genlmsghdr` and one `struct nlattr`
    /// (linux/netlink.h, linux/genetlink.h) say, host-endian.
    #[cfg(target_endian = "little")]
    #[test]
    fn family_query_is_what_the_kernel_expects() {
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_ACK;
        header.sequence_number = 7;
        let mut packet = NetlinkMessage::new(
            header,
            NetlinkPayload::InnerMessage(family_query("wireguard")),
        );
        packet.finalize();
        let mut buf = vec![0; packet.buffer_len()];
        packet.serialize(&mut buf);
        #[rustfmt::skip]
        let expected: &[u8] = &[
            36, 0, 0, 0,            // nlmsg_len: 16 + 4 + 16
            0x10, 0,                // nlmsg_type: GENL_ID_CTRL
            0x05, 0,                // NLM_F_REQUEST | NLM_F_ACK
            7, 0, 0, 0,             // nlmsg_seq
            0, 0, 0, 0,             // nlmsg_pid
            3, 2, 0, 0,             // CTRL_CMD_GETFAMILY, version 2, reserved
            14, 0, 2, 0,            // nla_len 4 + 10, CTRL_ATTR_FAMILY_NAME
            b'w', b'i', b'r', b'e', b'g', b'u', b'a', b'r', b'd', 0,
            0, 0,                   // padding to 4 bytes
        ];
        assert_eq!(buf, expected);
    }

    #[cfg(target_endian = "little")]
    #[test]
    fn reads_the_family_id_from_the_controllers_answer() {
        // CTRL_ATTR_FAMILY_NAME "wg\0" (padded), then CTRL_ATTR_FAMILY_ID 0x1e.
        let mut header = NetlinkHeader::default();
        header.message_type = GENL_ID_CTRL;
        #[rustfmt::skip]
        let payload: &[u8] = &[
            1, 2, 0, 0,
            7, 0, 2, 0, b'w', b'g', 0, 0,
            6, 0, 1, 0, 0x1e, 0, 0, 0,
        ];
        let answer = GenlMessage::deserialize(&header, payload).unwrap();
        assert_eq!((answer.family, answer.cmd, answer.version), (0x10, 1, 2));
        assert_eq!(family_id_of(&answer.attrs), Some(0x1e));
        assert_eq!(family_id_of(&payload[4..12]), None);
        assert!(GenlMessage::deserialize(&header, &[1, 2]).is_err());
        // What Debug shows never includes the attributes.
        assert!(!format!("{answer:?}").contains("30"));
    }

    /// As root, in a network namespace of its own: generic netlink resolves
    /// families (its controller is always there), and a link route lands.
    #[test]
    fn resolves_families_and_routes_in_a_fresh_namespace() {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("SKIP: needs root (a network namespace)");
            return;
        }
        std::thread::spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let mut genl = Genl::open().unwrap();
            assert_eq!(genl.family_id("nlctrl").unwrap(), GENL_ID_CTRL);
            let err = genl.family_id("no-such-family").unwrap_err();
            assert_eq!(err.raw_os_error(), Some(nix::errno::Errno::ENOENT as i32));

            let mut rtnl = Rtnl::open().unwrap();
            let lo = nix::net::if_::if_nametoindex("lo").unwrap();
            rtnl.link_up(lo).unwrap();
            rtnl.add_ipv4(lo, Ipv4Addr::new(10, 8, 0, 2), 32).unwrap();
            for _ in 0..2 {
                rtnl.add_link_route(lo, Ipv4Addr::new(10, 8, 0, 1), 32)
                    .unwrap();
            }
            // Per thread: /proc/net follows the process's first thread.
            let routes = std::fs::read_to_string("/proc/thread-self/net/route").unwrap();
            let line = routes
                .lines()
                .find(|l| l.starts_with("lo\t0100080A"))
                .unwrap_or_else(|| panic!("{routes}"));
            // No gateway, host mask.
            let fields: Vec<&str> = line.split('\t').collect();
            assert_eq!((fields[2], fields[7]), ("00000000", "FFFFFFFF"), "{line}");

            // Deleted, and deleted again (already gone is fine).
            for _ in 0..2 {
                rtnl.del_link_route(lo, Ipv4Addr::new(10, 8, 0, 1), 32)
                    .unwrap();
                rtnl.del_ipv4(lo, Ipv4Addr::new(10, 8, 0, 2), 32).unwrap();
            }
            let routes = std::fs::read_to_string("/proc/thread-self/net/route").unwrap();
            assert!(!routes.contains("lo\t0100080A"), "{routes}");
            let addrs = nix::ifaddrs::getifaddrs().unwrap();
            assert!(
                !addrs.into_iter().any(|a| a
                    .address
                    .and_then(|s| s.as_sockaddr_in().map(|v4| v4.ip()))
                    == Some(Ipv4Addr::new(10, 8, 0, 2))),
                "the address is still there"
            );
        })
        .join()
        .unwrap();
    }
}
