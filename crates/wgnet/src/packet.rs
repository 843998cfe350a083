//! Just enough IPv4/TCP header reading to route a packet to its connection.
//!
//! smoltcp finds the socket for a segment by asking every socket in a set
//! whether it accepts it; with thousands of connections that is a scan per
//! packet. The stack instead keys connections by their 4-tuple and hands
//! smoltcp a set holding only the matching socket, so it needs the tuple first.

use std::net::{Ipv4Addr, SocketAddrV4};

const IPV4_MIN_HEADER: usize = 20;
const TCP_MIN_HEADER: usize = 20;
const PROTO_TCP: u8 = 6;
const FLAG_RST: u8 = 0x04;
const FLAG_SYN: u8 = 0x02;
const FLAG_ACK: u8 = 0x10;

/// The fields of a TCP segment that pick its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TcpMeta {
    /// Sender's address and port.
    pub(crate) src: SocketAddrV4,
    /// Receiver's address and port.
    pub(crate) dst: SocketAddrV4,
    /// A connection request: SYN without ACK or RST.
    pub(crate) is_syn: bool,
}

/// The destination of an IPv4 packet, if it has a whole IPv4 header.
pub(crate) fn ipv4_dst(packet: &[u8]) -> Option<Ipv4Addr> {
    if packet.len() < IPV4_MIN_HEADER || packet[0] >> 4 != 4 {
        return None;
    }
    Some(Ipv4Addr::new(
        packet[16], packet[17], packet[18], packet[19],
    ))
}

/// The routing fields of an unfragmented IPv4 TCP segment; `None` for anything else.
pub(crate) fn parse_tcp(packet: &[u8]) -> Option<TcpMeta> {
    if packet.len() < IPV4_MIN_HEADER || packet[0] >> 4 != 4 {
        return None;
    }
    let header_len = usize::from(packet[0] & 0x0f) * 4;
    let total_len = usize::from(u16::from_be_bytes([packet[2], packet[3]]));
    if header_len < IPV4_MIN_HEADER
        || total_len < header_len + TCP_MIN_HEADER
        || total_len > packet.len()
    {
        return None;
    }
    // A fragment has no (or only part of a) TCP header; no reassembly here,
    // and WireGuard peers size their MTU so that TCP never fragments.
    let fragment = u16::from_be_bytes([packet[6], packet[7]]);
    if fragment & 0x3fff != 0 || packet[9] != PROTO_TCP {
        return None;
    }
    let src_ip = Ipv4Addr::new(packet[12], packet[13], packet[14], packet[15]);
    let dst_ip = Ipv4Addr::new(packet[16], packet[17], packet[18], packet[19]);
    let tcp = &packet[header_len..total_len];
    let src_port = u16::from_be_bytes([tcp[0], tcp[1]]);
    let dst_port = u16::from_be_bytes([tcp[2], tcp[3]]);
    let flags = tcp[13];
    Some(TcpMeta {
        src: SocketAddrV4::new(src_ip, src_port),
        dst: SocketAddrV4::new(dst_ip, dst_port),
        is_syn: flags & (FLAG_SYN | FLAG_ACK | FLAG_RST) == FLAG_SYN,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 20-byte IPv4 header plus a 20-byte TCP header with `flags`.
    fn segment(flags: u8) -> Vec<u8> {
        let mut p = vec![0u8; 40];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&40u16.to_be_bytes());
        p[9] = PROTO_TCP;
        p[12..16].copy_from_slice(&[10, 0, 0, 2]);
        p[16..20].copy_from_slice(&[10, 0, 0, 1]);
        p[20..22].copy_from_slice(&40000u16.to_be_bytes());
        p[22..24].copy_from_slice(&80u16.to_be_bytes());
        p[20 + 12] = 0x50;
        p[20 + 13] = flags;
        p
    }

    #[test]
    fn parses_a_syn() {
        let meta = parse_tcp(&segment(FLAG_SYN)).unwrap();
        assert_eq!(meta.src, "10.0.0.2:40000".parse().unwrap());
        assert_eq!(meta.dst, "10.0.0.1:80".parse().unwrap());
        assert!(meta.is_syn);
        assert!(!parse_tcp(&segment(FLAG_SYN | FLAG_ACK)).unwrap().is_syn);
        assert_eq!(
            ipv4_dst(&segment(0)),
            Some(Ipv4Addr::new(10, 0, 0, 1)),
            "destination read from the header"
        );
    }

    #[test]
    fn rejects_what_it_cannot_route() {
        let mut udp = segment(0);
        udp[9] = 17;
        assert_eq!(parse_tcp(&udp), None);
        let mut fragment = segment(0);
        fragment[6] = 0x20; // more fragments
        assert_eq!(parse_tcp(&fragment), None);
        let mut short = segment(0);
        short[2..4].copy_from_slice(&30u16.to_be_bytes());
        assert_eq!(parse_tcp(&short), None);
        assert_eq!(parse_tcp(&segment(0)[..39]), None);
        let mut v6 = segment(0);
        v6[0] = 0x60;
        assert_eq!(parse_tcp(&v6), None);
        assert_eq!(ipv4_dst(&v6), None);
    }
}
