//! The kernel's WireGuard, configured from Rust as `wg-quick up` would do
//! it for upstream's `dstack-wg0.conf` (UPSTREAM §10.5): the device over
//! rtnetlink, its key and peers over the generic netlink family
//! `wireguard` (linux/wireguard.h), then its address, link and routes.
//! The private key goes to the kernel and nowhere else.

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};

use netlink_packet_core::{Emitable, NLA_F_NESTED, Nla};
use x25519_dalek::{PublicKey, StaticSecret};

use crate::netlink::{Genl, GenlMessage, Rtnl, encode_nlas};

/// The generic netlink family (`WG_GENL_NAME`).
const WG_GENL_NAME: &str = "wireguard";
/// `WG_GENL_VERSION`.
const WG_GENL_VERSION: u8 = 1;
/// `WG_CMD_SET_DEVICE`.
const WG_CMD_SET_DEVICE: u8 = 1;

/// `enum wgdevice_attribute`.
const WGDEVICE_A_IFNAME: u16 = 2;
const WGDEVICE_A_PRIVATE_KEY: u16 = 3;
const WGDEVICE_A_FLAGS: u16 = 5;
const WGDEVICE_A_LISTEN_PORT: u16 = 6;
const WGDEVICE_A_PEERS: u16 = 8;
/// `WGDEVICE_F_REPLACE_PEERS`: the peers given are all the peers.
const WGDEVICE_F_REPLACE_PEERS: u32 = 1;

/// `enum wgpeer_attribute`.
const WGPEER_A_PUBLIC_KEY: u16 = 1;
const WGPEER_A_FLAGS: u16 = 3;
const WGPEER_A_ENDPOINT: u16 = 4;
const WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL: u16 = 5;
const WGPEER_A_ALLOWEDIPS: u16 = 9;
/// `WGPEER_F_REPLACE_ALLOWEDIPS`: the allowed IPs given are all of them.
const WGPEER_F_REPLACE_ALLOWEDIPS: u32 = 2;

/// `enum wgallowedip_attribute`.
const WGALLOWEDIP_A_FAMILY: u16 = 1;
const WGALLOWEDIP_A_IPADDR: u16 = 2;
const WGALLOWEDIP_A_CIDR_MASK: u16 = 3;

/// `AF_INET`.
const AF_INET: u16 = 2;

/// Upstream's `PersistentKeepalive = 25` for every gateway peer.
pub(crate) const KEEPALIVE_SECS: u16 = 25;

/// A fresh WireGuard key pair: the secret (wiped when dropped) and its
/// public key.
pub(crate) fn generate_key() -> (StaticSecret, PublicKey) {
    let secret = StaticSecret::random_from_rng(rand_core::OsRng);
    let public = PublicKey::from(&secret);
    (secret, public)
}

/// One gateway as a peer of the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Peer {
    /// Its public key.
    pub(crate) public_key: [u8; 32],
    /// Where its encrypted UDP comes from and goes to.
    pub(crate) endpoint: SocketAddrV4,
    /// Its address inside the tunnel: the one allowed IP (a /32).
    pub(crate) tunnel_ip: Ipv4Addr,
}

/// What `WG_CMD_SET_DEVICE` sets.
pub(crate) struct Device<'a> {
    /// The interface.
    pub(crate) ifname: &'a str,
    /// The device's key; `None` keeps the one it has (a later update of
    /// the peers needs no secret).
    pub(crate) private_key: Option<&'a StaticSecret>,
    /// The UDP port it listens on.
    pub(crate) listen_port: u16,
    /// Every peer (the device's other peers are removed).
    pub(crate) peers: &'a [Peer],
}

/// A WireGuard netlink attribute. Integers are host-endian, as the
/// kernel's `nla_get_u16`/`nla_get_u32` read them.
enum Attr<'a> {
    Bytes(u16, &'a [u8]),
    Owned(u16, Vec<u8>),
    U8(u16, u8),
    U16(u16, u16),
    U32(u16, u32),
    /// Nested attributes, flagged `NLA_F_NESTED` as `wg(8)` sends them.
    Nested(u16, Vec<Attr<'a>>),
}

impl Nla for Attr<'_> {
    fn value_len(&self) -> usize {
        match self {
            Attr::Bytes(_, bytes) => bytes.len(),
            Attr::Owned(_, bytes) => bytes.len(),
            Attr::U8(..) => 1,
            Attr::U16(..) => 2,
            Attr::U32(..) => 4,
            Attr::Nested(_, inner) => Emitable::buffer_len(&inner.as_slice()),
        }
    }

    fn kind(&self) -> u16 {
        match self {
            Attr::Nested(kind, _) => kind | NLA_F_NESTED,
            Attr::Bytes(kind, _)
            | Attr::Owned(kind, _)
            | Attr::U8(kind, _)
            | Attr::U16(kind, _)
            | Attr::U32(kind, _) => *kind,
        }
    }

    fn emit_value(&self, buffer: &mut [u8]) {
        match self {
            Attr::Bytes(_, bytes) => buffer.copy_from_slice(bytes),
            Attr::Owned(_, bytes) => buffer.copy_from_slice(bytes),
            Attr::U8(_, value) => buffer[0] = *value,
            Attr::U16(_, value) => buffer.copy_from_slice(&value.to_ne_bytes()),
            Attr::U32(_, value) => buffer.copy_from_slice(&value.to_ne_bytes()),
            Attr::Nested(_, inner) => Emitable::emit(&inner.as_slice(), buffer),
        }
    }
}

/// `struct sockaddr_in`: family (host-endian), port and address (network
/// order), eight zero bytes.
fn sockaddr_in(addr: &SocketAddrV4) -> Vec<u8> {
    let mut out = Vec::with_capacity(16);
    out.extend_from_slice(&AF_INET.to_ne_bytes());
    out.extend_from_slice(&addr.port().to_be_bytes());
    out.extend_from_slice(&addr.ip().octets());
    out.extend_from_slice(&[0; 8]);
    out
}

fn peer_attrs(peer: &Peer) -> Attr<'_> {
    let allowed = Attr::Nested(
        0,
        vec![
            Attr::U16(WGALLOWEDIP_A_FAMILY, AF_INET),
            Attr::Owned(WGALLOWEDIP_A_IPADDR, peer.tunnel_ip.octets().to_vec()),
            Attr::U8(WGALLOWEDIP_A_CIDR_MASK, 32),
        ],
    );
    Attr::Nested(
        0,
        vec![
            Attr::Bytes(WGPEER_A_PUBLIC_KEY, &peer.public_key),
            Attr::U32(WGPEER_A_FLAGS, WGPEER_F_REPLACE_ALLOWEDIPS),
            Attr::Owned(WGPEER_A_ENDPOINT, sockaddr_in(&peer.endpoint)),
            Attr::U16(WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL, KEEPALIVE_SECS),
            Attr::Nested(WGPEER_A_ALLOWEDIPS, vec![allowed]),
        ],
    )
}

/// `WG_CMD_SET_DEVICE` for `device`, to the family `family`.
pub(crate) fn set_device_message(family: u16, device: &Device<'_>) -> GenlMessage {
    let mut ifname = device.ifname.as_bytes().to_vec();
    ifname.push(0);
    let mut attrs = vec![Attr::Owned(WGDEVICE_A_IFNAME, ifname)];
    if let Some(key) = device.private_key {
        attrs.push(Attr::Bytes(WGDEVICE_A_PRIVATE_KEY, key.as_bytes()));
    }
    attrs.push(Attr::U16(WGDEVICE_A_LISTEN_PORT, device.listen_port));
    attrs.push(Attr::U32(WGDEVICE_A_FLAGS, WGDEVICE_F_REPLACE_PEERS));
    attrs.push(Attr::Nested(
        WGDEVICE_A_PEERS,
        device.peers.iter().map(peer_attrs).collect(),
    ));
    GenlMessage {
        family,
        cmd: WG_CMD_SET_DEVICE,
        version: WG_GENL_VERSION,
        attrs: encode_nlas(&attrs),
    }
}

/// Setting up the WireGuard device failed at `step`.
#[derive(Debug, thiserror::Error)]
#[error("WireGuard device {ifname}: cannot {step}")]
pub struct WgError {
    /// The interface.
    pub ifname: String,
    /// What failed.
    pub step: &'static str,
    /// The kernel's answer.
    #[source]
    pub source: io::Error,
}

/// What one configuration of the tunnel changes, in the order it is done:
/// the link created, the device's key and peers, its address, the link
/// set up, routes added, then stale routes and addresses removed (the new
/// state is in place before the old one goes).
#[derive(Default)]
pub(crate) struct TunnelChange<'a> {
    /// Create the link (one already there is fine) and set it up: the
    /// first configuration, `device` then carrying the private key.
    pub(crate) create: bool,
    /// What to set over `WG_CMD_SET_DEVICE`; `None`: the peers stay.
    pub(crate) device: Option<Device<'a>>,
    /// The tunnel address to add (a /32, as `wg-quick`'s `Address`).
    pub(crate) add_address: Option<Ipv4Addr>,
    /// Tunnel addresses to remove (a gateway that handed another one).
    pub(crate) remove_addresses: &'a [Ipv4Addr],
    /// Gateways' tunnel addresses to route into the link (/32 each, as
    /// `wg-quick` does for `AllowedIPs`).
    pub(crate) add_routes: &'a [Ipv4Addr],
    /// Routes to gateways that are no longer peers.
    pub(crate) remove_routes: &'a [Ipv4Addr],
}

/// Applies `change` to the WireGuard link `ifname`. Blocking: call from a
/// blocking thread.
pub(crate) fn change(ifname: &str, change: &TunnelChange<'_>) -> Result<(), WgError> {
    let fail = |step: &'static str| {
        move |source| WgError {
            ifname: ifname.to_owned(),
            step,
            source,
        }
    };
    let mut rtnl = Rtnl::open().map_err(fail("open an rtnetlink socket"))?;
    if change.create {
        rtnl.add_wireguard(ifname)
            .map_err(fail("create the link (is CONFIG_WIREGUARD set?)"))?;
    }
    let index = nix::net::if_::if_nametoindex(ifname)
        .map_err(|e| io::Error::from_raw_os_error(e as i32))
        .map_err(fail("find the link"))?;
    if let Some(device) = &change.device {
        let mut genl = Genl::open().map_err(fail("open a generic netlink socket"))?;
        let family = genl
            .family_id(WG_GENL_NAME)
            .map_err(fail("find the wireguard netlink family"))?;
        genl.request(set_device_message(family, device))
            .map_err(fail("set its key and peers"))?;
    }
    if let Some(address) = change.add_address {
        rtnl.add_ipv4(index, address, 32)
            .map_err(fail("add its address"))?;
    }
    if change.create {
        rtnl.link_up(index).map_err(fail("set the link up"))?;
    }
    for ip in change.add_routes {
        rtnl.add_link_route(index, *ip, 32)
            .map_err(fail("route to a gateway's tunnel address"))?;
    }
    for ip in change.remove_routes {
        rtnl.del_link_route(index, *ip, 32)
            .map_err(fail("remove the route to a former gateway"))?;
    }
    for address in change.remove_addresses {
        rtnl.del_ipv4(index, *address, 32)
            .map_err(fail("remove its former address"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nla(kind: u16, value: &[u8]) -> Vec<u8> {
        let len = u16::try_from(4 + value.len()).unwrap();
        let mut out = [len.to_ne_bytes(), kind.to_ne_bytes()].concat();
        out.extend_from_slice(value);
        out.resize(out.len().next_multiple_of(4), 0);
        out
    }

    /// The gateway as the guest's one peer.
    fn gateway_peer() -> Peer {
        Peer {
            public_key: [0x22; 32],
            endpoint: "10.0.2.2:9013".parse().unwrap(),
            tunnel_ip: Ipv4Addr::new(10, 8, 0, 1),
        }
    }

    /// The attributes of `WG_CMD_SET_DEVICE` built by hand from the layout
    /// linux/wireguard.h documents: `struct nlattr` is `u16 nla_len` (header
    /// included, padding not) and `u16 nla_type`, values padded to 4 bytes.
    #[cfg(target_endian = "little")]
    #[test]
    fn set_device_is_laid_out_as_the_kernel_reads_it() {
        let secret = StaticSecret::from([0x11; 32]);
        let peers = [gateway_peer()];
        let device = Device {
            ifname: "dstack-wg0",
            private_key: Some(&secret),
            listen_port: 9182,
            peers: &peers,
        };
        let msg = set_device_message(0x1e, &device);
        assert_eq!((msg.family, msg.cmd, msg.version), (0x1e, 1, 1));

        #[rustfmt::skip]
        let allowed_ip: Vec<u8> = [
            &[6, 0, 1, 0, 2, 0, 0, 0][..],      // FAMILY: AF_INET (u16) + pad
            &[8, 0, 2, 0, 10, 8, 0, 1],         // IPADDR: 10.8.0.1
            &[5, 0, 3, 0, 32, 0, 0, 0],         // CIDR_MASK: 32 (u8) + pad
        ]
        .concat();
        #[rustfmt::skip]
        let endpoint: &[u8] = &[
            2, 0,                               // sin_family AF_INET, host order
            0x23, 0x35,                         // sin_port 9013, network order
            10, 0, 2, 2,                        // sin_addr
            0, 0, 0, 0, 0, 0, 0, 0,             // sin_zero
        ];
        #[rustfmt::skip]
        let peer: Vec<u8> = [
            nla(1, &[0x22; 32]),                      // PUBLIC_KEY
            nla(3, &2u32.to_le_bytes()),              // FLAGS: REPLACE_ALLOWEDIPS
            nla(4, endpoint),                         // ENDPOINT
            nla(5, &25u16.to_le_bytes()),             // PERSISTENT_KEEPALIVE_INTERVAL
            nla(9 | 0x8000, &nla(0x8000, &allowed_ip)), // ALLOWEDIPS [ one ]
        ]
        .concat();
        #[rustfmt::skip]
        let expected: Vec<u8> = [
            nla(2, b"dstack-wg0\0"),                  // IFNAME
            nla(3, &[0x11; 32]),                      // PRIVATE_KEY
            nla(6, &9182u16.to_le_bytes()),           // LISTEN_PORT
            nla(5, &1u32.to_le_bytes()),              // FLAGS: REPLACE_PEERS
            nla(8 | 0x8000, &nla(0x8000, &peer)),     // PEERS [ one ]
        ]
        .concat();
        assert_eq!(msg.attrs.as_slice(), expected.as_slice());
        // The lengths the kernel reads: key, flags, endpoint, keepalive
        // (2 bytes padded to 4), and the allowed IPs' two nest headers.
        assert_eq!(peer.len(), 36 + 8 + 20 + 8 + (4 + 4 + 24));
        assert_eq!(expected.len(), 16 + 36 + 8 + 8 + 4 + 4 + peer.len());

        // Without the key, the device keeps the one it has.
        let update = set_device_message(
            0x1e,
            &Device {
                private_key: None,
                ..device
            },
        );
        assert_eq!(update.attrs.len(), expected.len() - 36);
        assert!(!update.attrs.windows(32).any(|w| w == [0x11; 32]));
        assert!(!format!("{update:?}").contains("17, 17"));
    }

    /// The periodic update: every peer (two gateways here), the device's
    /// other peers dropped (`REPLACE_PEERS`), and no private key, so the
    /// key stays the one the kernel has, byte for byte what the kernel reads.
    #[cfg(target_endian = "little")]
    #[test]
    fn replacing_the_peers_sends_no_key() {
        let peers = [
            Peer {
                public_key: [0x22; 32],
                endpoint: "10.0.2.2:9013".parse().unwrap(),
                tunnel_ip: Ipv4Addr::new(10, 8, 0, 1),
            },
            Peer {
                public_key: [0x33; 32],
                endpoint: "192.0.2.7:9013".parse().unwrap(),
                tunnel_ip: Ipv4Addr::new(10, 8, 64, 1),
            },
        ];
        let device = Device {
            ifname: "dstack-wg0",
            private_key: None,
            listen_port: 9182,
            peers: &peers,
        };
        let msg = set_device_message(0x1e, &device);
        assert_eq!((msg.family, msg.cmd, msg.version), (0x1e, 1, 1));
        let peer = |key: u8, endpoint: [u8; 4], tunnel: [u8; 4]| -> Vec<u8> {
            #[rustfmt::skip]
            let allowed_ip: Vec<u8> = [
                &[6, 0, 1, 0, 2, 0, 0, 0][..],  // FAMILY: AF_INET + pad
                &[8, 0, 2, 0], &tunnel,         // IPADDR
                &[5, 0, 3, 0, 32, 0, 0, 0],     // CIDR_MASK: 32 + pad
            ]
            .concat();
            #[rustfmt::skip]
            let sockaddr: Vec<u8> = [
                &[2, 0, 0x23, 0x35][..],        // AF_INET, port 9013 (network order)
                &endpoint,
                &[0; 8],
            ]
            .concat();
            #[rustfmt::skip]
            let attrs: Vec<u8> = [
                nla(1, &[key; 32]),                           // PUBLIC_KEY
                nla(3, &2u32.to_le_bytes()),                  // FLAGS: REPLACE_ALLOWEDIPS
                nla(4, &sockaddr),                            // ENDPOINT
                nla(5, &25u16.to_le_bytes()),                 // PERSISTENT_KEEPALIVE_INTERVAL
                nla(9 | 0x8000, &nla(0x8000, &allowed_ip)),   // ALLOWEDIPS [ one ]
            ]
            .concat();
            nla(0x8000, &attrs)
        };
        let peers_nest = [
            peer(0x22, [10, 0, 2, 2], [10, 8, 0, 1]),
            peer(0x33, [192, 0, 2, 7], [10, 8, 64, 1]),
        ]
        .concat();
        #[rustfmt::skip]
        let expected: Vec<u8> = [
            nla(2, b"dstack-wg0\0"),                  // IFNAME
            nla(6, &9182u16.to_le_bytes()),           // LISTEN_PORT (unchanged: a no-op)
            nla(5, &1u32.to_le_bytes()),              // FLAGS: REPLACE_PEERS
            nla(8 | 0x8000, &peers_nest),             // PEERS [ two ]
        ]
        .concat();
        assert_eq!(msg.attrs.as_slice(), expected.as_slice());
        // No PRIVATE_KEY (type 3) at the device level.
        let kinds: Vec<u16> = netlink_packet_core::NlasIterator::new(&msg.attrs[..])
            .map(|nla| nla.unwrap().kind())
            .collect();
        assert_eq!(kinds, [2, 6, 5, 8]);
    }

    #[test]
    fn no_peers_is_an_empty_nest() {
        let device = Device {
            ifname: "wg",
            private_key: None,
            listen_port: 1,
            peers: &[],
        };
        let msg = set_device_message(1, &device);
        assert!(
            msg.attrs.ends_with(&[4, 0, 8, 0x80]),
            "{:?}",
            &msg.attrs[..]
        );
    }

    #[test]
    fn generated_keys_pair_up() {
        let (secret, public) = generate_key();
        assert_eq!(PublicKey::from(&secret), public);
        let (other, _) = generate_key();
        assert_ne!(secret.to_bytes(), other.to_bytes());
    }

    /// As root, in a network namespace of its own: the real kernel. Without
    /// WireGuard in it (CONFIG_WIREGUARD), the failure must name the step.
    #[test]
    fn brings_up_the_device_in_a_fresh_namespace() {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("SKIP: needs root (a network namespace)");
            return;
        }
        std::thread::spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let (secret, _) = generate_key();
            let peers = [gateway_peer()];
            let device = Device {
                ifname: "dstack-wg0",
                private_key: Some(&secret),
                listen_port: 9182,
                peers: &peers,
            };
            let routes = [Ipv4Addr::new(10, 8, 0, 1)];
            let create = TunnelChange {
                create: true,
                device: Some(device),
                add_address: Some(Ipv4Addr::new(10, 8, 0, 2)),
                add_routes: &routes,
                ..TunnelChange::default()
            };
            match change("dstack-wg0", &create) {
                Ok(()) => {
                    let routes = std::fs::read_to_string("/proc/thread-self/net/route").unwrap();
                    // 10.8.0.1 as the kernel prints it (little-endian hex).
                    assert!(routes.contains("dstack-wg0\t0100080A"), "{routes}");
                }
                Err(e) => {
                    eprintln!("no WireGuard in this kernel: {e}");
                    assert_eq!(e.step, "create the link (is CONFIG_WIREGUARD set?)");
                    assert_eq!(
                        e.source.raw_os_error(),
                        Some(nix::errno::Errno::EOPNOTSUPP as i32)
                    );
                }
            }
        })
        .join()
        .unwrap();
    }
}
