//! The HAProxy PROXY protocol, v1 (text) and v2 (binary), as the gateway
//! uses it (UPSTREAM §10.2): read from clients when `inbound_pp_enabled` (e.g.
//! behind a load balancer), and written to apps whose port policy asks for it.
//!
//! Spec: <https://www.haproxy.org/download/2.8/doc/proxy-protocol.txt>.
//!
//! Upstream writes outbound whatever header it holds for the connection,
//! re-encoded in that header's own version: the header read from the client
//! when inbound PROXY protocol is on (so v1 in, v1 out), otherwise one it
//! synthesises from the TCP peer and local addresses, which is always v2
//! (`pp.rs` `create_inbound_pp_header`, `proxy_protocol::encode`). The same
//! pair here is [`ProxyHeader::from_connection`] + [`encode_outbound`].
//!
//! Where this differs from upstream (which uses the `proxy-protocol` crate):
//! a v1 line is read in chunks and any over-read returned, not byte by byte;
//! `AF_UNIX` v2 headers carry no addresses here, and TLVs are not forwarded;
//! outbound, v4-mapped IPv6 endpoints are written as IPv4 and mixed families
//! as IPv6 (upstream writes `UNSPEC` for mixed families, losing the client).

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

/// Longest v1 line, CRLF included (spec §2.1).
pub const V1_MAX_LEN: usize = 107;
/// Longest v2 header accepted, as upstream (the spec allows 16 + 65535).
pub const V2_MAX_LEN: usize = 2048;

const V1_PREFIX: &[u8] = b"PROXY ";
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// Signature, version/command, family/transport, length.
const V2_FIXED_LEN: usize = 16;
const V2_INET_LEN: usize = 12;
const V2_INET6_LEN: usize = 36;
const V2_UNIX_LEN: usize = 216;

/// Which PROXY protocol version a header was read in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// The text format.
    V1,
    /// The binary format.
    V2,
}

/// The v2 command; v1 headers are always [`Command::Proxy`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Connection made by the proxy itself (health check): use the real
    /// endpoints, ignore any address block.
    Local,
    /// Relayed on behalf of a client whose addresses follow.
    Proxy,
}

/// The transport the proxied connection used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Not given (v1 `UNKNOWN`, v2 `UNSPEC`).
    Unspec,
    /// TCP (v1 `TCP4`/`TCP6`, v2 `STREAM`).
    Stream,
    /// UDP (v2 `DGRAM`).
    Datagram,
}

/// The proxied connection's endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyAddrs {
    /// The client.
    pub src: SocketAddr,
    /// The address the client connected to.
    pub dst: SocketAddr,
}

/// A decoded PROXY protocol header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyHeader {
    /// The wire version it came in (and is re-encoded in).
    pub version: Version,
    /// Local (no client) or proxied.
    pub command: Command,
    /// The proxied transport.
    pub transport: Transport,
    /// The endpoints; `None` for v1 `UNKNOWN`, v2 `LOCAL`, `UNSPEC`, and
    /// `AF_UNIX` (whose socket paths the gateway has no use for).
    pub addrs: Option<ProxyAddrs>,
}

impl ProxyHeader {
    /// The header upstream synthesises when inbound PROXY protocol is off: v2,
    /// `PROXY`, `STREAM`, from the accepted socket's peer and local address.
    pub fn from_connection(peer: SocketAddr, local: SocketAddr) -> Self {
        Self {
            version: Version::V2,
            command: Command::Proxy,
            transport: Transport::Stream,
            addrs: Some(ProxyAddrs {
                src: peer,
                dst: local,
            }),
        }
    }

    /// The client's address, when the header carries one.
    pub fn source(&self) -> Option<SocketAddr> {
        self.addrs.map(|a| a.src)
    }
}

impl fmt::Display for ProxyHeader {
    /// The client address for logs, like upstream's `DisplayAddr`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.addrs {
            Some(a) => write!(f, "{}", a.src),
            None => f.write_str("<unknown>"),
        }
    }
}

/// Why a PROXY header could not be read.
#[derive(Debug, thiserror::Error)]
pub enum PpError {
    /// The stream starts with neither `PROXY ` nor the v2 signature.
    #[error("no PROXY protocol header")]
    NotProxyProtocol,
    /// No CRLF within the first 107 bytes of a v1 header.
    #[error("PROXY v1 line has no CRLF within {V1_MAX_LEN} bytes")]
    V1TooLong,
    /// A v1 line that does not follow the grammar.
    #[error("invalid PROXY v1 {0}")]
    V1Invalid(&'static str),
    /// The v2 version nibble is not 2.
    #[error("unsupported PROXY v2 version {0}")]
    V2Version(u8),
    /// The v2 command nibble is neither LOCAL nor PROXY.
    #[error("unknown PROXY v2 command {0:#x}")]
    V2Command(u8),
    /// The v2 address family nibble is unknown.
    #[error("unknown PROXY v2 address family {0:#x}")]
    V2Family(u8),
    /// The v2 transport nibble is unknown.
    #[error("unknown PROXY v2 transport {0:#x}")]
    V2Transport(u8),
    /// The v2 address block is shorter than its family requires.
    #[error("PROXY v2 address block of {len} bytes is too short for its family ({need} needed)")]
    V2AddressTooShort {
        /// Declared length after the fixed 16 bytes.
        len: usize,
        /// What the family needs.
        need: usize,
    },
    /// A v2 header longer than [`V2_MAX_LEN`].
    #[error("PROXY v2 header of {0} bytes exceeds {V2_MAX_LEN}")]
    Oversized(usize),
    /// The peer closed the connection inside the header.
    #[error("connection closed after {read} bytes of the PROXY header")]
    Eof {
        /// Bytes received before the close.
        read: usize,
    },
    /// The header did not arrive in time.
    #[error("no complete PROXY header within {0:?}")]
    Timeout(Duration),
    /// Reading from the client failed.
    #[error("failed to read the PROXY header")]
    Io(#[source] std::io::Error),
}

/// Outcome of parsing the start of a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PpParse {
    /// Incomplete: the buffer may be filled up to `limit` bytes. For v2 that
    /// is exactly the header; a v1 line's end is only known from its CRLF, so
    /// there it is the 107-byte cap and a read can go past the header.
    NeedMore {
        /// How far the buffer may be filled (always more than it holds now).
        limit: usize,
    },
    /// Complete: the header took the first `len` bytes.
    Done {
        /// The header.
        header: ProxyHeader,
        /// Its length on the wire.
        len: usize,
    },
}

/// Parses a PROXY header at the start of `bytes`, a prefix of the stream.
///
/// Refuses as soon as the bytes seen cannot start a header, so a client
/// speaking TLS or HTTP directly is turned away on its first read.
pub fn parse_proxy_header(bytes: &[u8]) -> Result<PpParse, PpError> {
    if bytes.is_empty() {
        return Ok(PpParse::NeedMore {
            limit: V2_FIXED_LEN,
        });
    }
    if is_prefix_of(bytes, V1_PREFIX) {
        return parse_v1(bytes);
    }
    if is_prefix_of(bytes, V2_SIGNATURE) {
        return parse_v2(bytes);
    }
    Err(PpError::NotProxyProtocol)
}

/// Whether `bytes` and `signature` agree on their common length.
fn is_prefix_of(bytes: &[u8], signature: &[u8]) -> bool {
    let n = bytes.len().min(signature.len());
    bytes[..n] == signature[..n]
}

fn parse_v1(bytes: &[u8]) -> Result<PpParse, PpError> {
    let window = &bytes[..bytes.len().min(V1_MAX_LEN)];
    let Some(end) = window.windows(2).position(|w| w == b"\r\n") else {
        if bytes.len() >= V1_MAX_LEN {
            return Err(PpError::V1TooLong);
        }
        return Ok(PpParse::NeedMore { limit: V1_MAX_LEN });
    };
    if end < V1_PREFIX.len() {
        // A CRLF inside what should be `PROXY `.
        return Err(PpError::NotProxyProtocol);
    }
    let header = parse_v1_line(&bytes[V1_PREFIX.len()..end])?;
    Ok(PpParse::Done {
        header,
        len: end + 2,
    })
}

/// Parses what follows `PROXY ` up to the CRLF.
fn parse_v1_line(line: &[u8]) -> Result<ProxyHeader, PpError> {
    if !line.is_ascii() {
        return Err(PpError::V1Invalid("line (not ASCII)"));
    }
    let line = std::str::from_utf8(line).map_err(|_| PpError::V1Invalid("line (not ASCII)"))?;
    let mut fields = line.split(' ');
    let unknown = ProxyHeader {
        version: Version::V1,
        command: Command::Proxy,
        transport: Transport::Unspec,
        addrs: None,
    };
    let v6 = match fields.next() {
        // The spec has receivers ignore everything after UNKNOWN.
        Some("UNKNOWN") => return Ok(unknown),
        Some("TCP4") => false,
        Some("TCP6") => true,
        _ => return Err(PpError::V1Invalid("protocol")),
    };
    let mut next = |what| fields.next().ok_or(PpError::V1Invalid(what));
    let (src_ip, dst_ip) = (next("source address")?, next("destination address")?);
    let (src_port, dst_port) = (next("source port")?, next("destination port")?);
    if fields.next().is_some() {
        return Err(PpError::V1Invalid("line (extra fields)"));
    }
    let ip = |text: &str, what| {
        let parsed: Result<std::net::IpAddr, _> = if v6 {
            text.parse::<Ipv6Addr>().map(Into::into)
        } else {
            text.parse::<Ipv4Addr>().map(Into::into)
        };
        parsed.map_err(|_| PpError::V1Invalid(what))
    };
    let (src_ip, dst_ip) = (
        ip(src_ip, "source address")?,
        ip(dst_ip, "destination address")?,
    );
    let src_port = v1_port(src_port).ok_or(PpError::V1Invalid("source port"))?;
    let dst_port = v1_port(dst_port).ok_or(PpError::V1Invalid("destination port"))?;
    let src = SocketAddr::new(src_ip, src_port);
    let dst = SocketAddr::new(dst_ip, dst_port);
    Ok(ProxyHeader {
        transport: Transport::Stream,
        addrs: Some(ProxyAddrs { src, dst }),
        ..unknown
    })
}

/// A v1 port: 1 to 5 decimal digits, at most 65535 (no sign, no spaces).
fn v1_port(text: &str) -> Option<u16> {
    if text.is_empty() || text.len() > 5 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

fn parse_v2(bytes: &[u8]) -> Result<PpParse, PpError> {
    // The fixed part is checked byte by byte as it arrives.
    if let Some(&ver_cmd) = bytes.get(12) {
        if ver_cmd >> 4 != 2 {
            return Err(PpError::V2Version(ver_cmd >> 4));
        }
        if ver_cmd & 0xf > 1 {
            return Err(PpError::V2Command(ver_cmd & 0xf));
        }
    }
    if let Some(&fam) = bytes.get(13) {
        if fam >> 4 > 3 {
            return Err(PpError::V2Family(fam >> 4));
        }
        if fam & 0xf > 2 {
            return Err(PpError::V2Transport(fam & 0xf));
        }
    }
    if bytes.len() < V2_FIXED_LEN {
        return Ok(PpParse::NeedMore {
            limit: V2_FIXED_LEN,
        });
    }
    let len = usize::from(u16::from_be_bytes([bytes[14], bytes[15]]));
    let total = V2_FIXED_LEN + len;
    if total > V2_MAX_LEN {
        return Err(PpError::Oversized(total));
    }
    if bytes.len() < total {
        return Ok(PpParse::NeedMore { limit: total });
    }
    let command = if bytes[12] & 0xf == 0 {
        Command::Local
    } else {
        Command::Proxy
    };
    let transport = match bytes[13] & 0xf {
        0 => Transport::Unspec,
        1 => Transport::Stream,
        _ => Transport::Datagram,
    };
    let block = &bytes[V2_FIXED_LEN..total];
    let need = match bytes[13] >> 4 {
        0 => 0,
        1 => V2_INET_LEN,
        2 => V2_INET6_LEN,
        _ => V2_UNIX_LEN,
    };
    // LOCAL: "the receiver must ... discard the protocol block including the
    // family", so its block is not checked against the family.
    let addrs = match command {
        Command::Local => None,
        Command::Proxy if block.len() < need => {
            return Err(PpError::V2AddressTooShort {
                len: block.len(),
                need,
            });
        }
        // Any TLVs after the addresses are skipped.
        Command::Proxy => v2_addrs(bytes[13] >> 4, block),
    };
    Ok(PpParse::Done {
        header: ProxyHeader {
            version: Version::V2,
            command,
            transport,
            addrs,
        },
        len: total,
    })
}

/// Decodes the address block of a PROXY command; `block` is long enough.
fn v2_addrs(family: u8, block: &[u8]) -> Option<ProxyAddrs> {
    let port = |at: usize| u16::from_be_bytes([block[at], block[at + 1]]);
    match family {
        1 => {
            let ip =
                |at: usize| Ipv4Addr::new(block[at], block[at + 1], block[at + 2], block[at + 3]);
            Some(ProxyAddrs {
                src: SocketAddr::new(ip(0).into(), port(8)),
                dst: SocketAddr::new(ip(4).into(), port(10)),
            })
        }
        2 => {
            let ip = |at: usize| {
                let mut octets = [0u8; 16];
                octets.copy_from_slice(&block[at..at + 16]);
                Ipv6Addr::from(octets)
            };
            Some(ProxyAddrs {
                src: SocketAddr::new(ip(0).into(), port(32)),
                dst: SocketAddr::new(ip(16).into(), port(34)),
            })
        }
        _ => None,
    }
}

/// Reads a PROXY v1 or v2 header from `stream` within `timeout`.
///
/// Returns the header and any bytes read past it. A v2 header is read exactly
/// (its length is in its first 16 bytes), so nothing is left over; a v1 line
/// is read in chunks of up to 107 bytes because only its CRLF marks its end,
/// and whatever followed it in those chunks comes back as leftover, to be
/// processed before the rest of the stream. Also a 15-byte `PROXY UNKNOWN`
/// line can leave one byte over from the first 16-byte read.
pub async fn read_proxy_header<S: AsyncRead + Unpin>(
    stream: &mut S,
    timeout: Duration,
) -> Result<(ProxyHeader, Vec<u8>), PpError> {
    tokio::time::timeout(timeout, read_header(stream))
        .await
        .map_err(|_| PpError::Timeout(timeout))?
}

async fn read_header<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<(ProxyHeader, Vec<u8>), PpError> {
    let mut buf = Vec::with_capacity(V1_MAX_LEN);
    loop {
        let limit = match parse_proxy_header(&buf)? {
            PpParse::Done { header, len } => {
                let leftover = buf.split_off(len);
                return Ok((header, leftover));
            }
            PpParse::NeedMore { limit } => limit,
        };
        let filled = buf.len();
        buf.resize(limit, 0);
        let n = stream.read(&mut buf[filled..]).await.map_err(PpError::Io)?;
        buf.truncate(filled + n);
        if n == 0 {
            return Err(PpError::Eof { read: filled });
        }
    }
}

/// Puts both endpoints in one family: v4-mapped IPv6 addresses become IPv4
/// (what a dual-stack listener reports for IPv4 clients), and if the families
/// still differ the IPv4 one is mapped into IPv6, so the client address is
/// never lost (upstream sends UNSPEC there).
fn same_family(src: SocketAddr, dst: SocketAddr) -> (SocketAddr, SocketAddr) {
    let canonical = |a: SocketAddr| SocketAddr::new(a.ip().to_canonical(), a.port());
    let (src, dst) = (canonical(src), canonical(dst));
    let as_v6 = |a: SocketAddr| match a {
        SocketAddr::V4(v4) => SocketAddr::new(v4.ip().to_ipv6_mapped().into(), v4.port()),
        v6 => v6,
    };
    if src.is_ipv4() == dst.is_ipv4() {
        (src, dst)
    } else {
        (as_v6(src), as_v6(dst))
    }
}

/// Encodes a v1 `TCP4`/`TCP6` line for a proxied TCP connection.
pub fn encode_v1(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let (src, dst) = same_family(src, dst);
    let proto = if src.is_ipv4() { "TCP4" } else { "TCP6" };
    format!(
        "PROXY {proto} {} {} {} {}\r\n",
        src.ip(),
        dst.ip(),
        src.port(),
        dst.port()
    )
    .into_bytes()
}

/// Encodes a v2 `PROXY` / `STREAM` header (no TLVs) for a proxied TCP
/// connection.
pub fn encode_v2(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    encode_v2_parts(Command::Proxy, Transport::Stream, Some((src, dst)))
}

fn encode_v2_parts(
    command: Command,
    transport: Transport,
    addrs: Option<(SocketAddr, SocketAddr)>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(V2_FIXED_LEN + V2_INET6_LEN);
    out.extend_from_slice(V2_SIGNATURE);
    out.push(match command {
        Command::Local => 0x20,
        Command::Proxy => 0x21,
    });
    let Some((src, dst)) = addrs else {
        out.extend_from_slice(&[0x00, 0, 0]);
        return out;
    };
    let transport = match transport {
        Transport::Unspec => 0,
        Transport::Stream => 1,
        Transport::Datagram => 2,
    };
    match same_family(src, dst) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            out.push(0x10 | transport);
            out.extend_from_slice(&[0, 12]);
            out.extend_from_slice(&s.ip().octets());
            out.extend_from_slice(&d.ip().octets());
        }
        (s, d) => {
            out.push(0x20 | transport);
            out.extend_from_slice(&[0, 36]);
            for a in [s, d] {
                let ip = match a.ip() {
                    std::net::IpAddr::V6(ip) => ip,
                    std::net::IpAddr::V4(ip) => ip.to_ipv6_mapped(),
                };
                out.extend_from_slice(&ip.octets());
            }
        }
    }
    out.extend_from_slice(&src.port().to_be_bytes());
    out.extend_from_slice(&dst.port().to_be_bytes());
    out
}

/// The header to send an app, as upstream does: `header` re-encoded in its
/// own version, so a v1 header read from the client goes out as v1 and a v2
/// one (including [`ProxyHeader::from_connection`]'s) as v2. A header without
/// addresses goes out as v1 `UNKNOWN` or v2 with family `UNSPEC` (keeping a v2
/// `LOCAL` command); TLVs read inbound are not forwarded.
pub fn encode_outbound(header: &ProxyHeader) -> Vec<u8> {
    let addrs = header.addrs.map(|a| (a.src, a.dst));
    match (header.version, addrs) {
        (Version::V1, Some((src, dst))) => encode_v1(src, dst),
        (Version::V1, None) => b"PROXY UNKNOWN\r\n".to_vec(),
        (Version::V2, addrs) => encode_v2_parts(header.command, header.transport, addrs),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use tokio::io::{AsyncWriteExt, ReadBuf};

    use super::*;

    const T: Duration = Duration::from_secs(5);

    /// A stream that hands out pre-cut chunks, one per read, then EOF.
    struct Chunked(VecDeque<Vec<u8>>);

    impl Chunked {
        fn new(chunks: impl IntoIterator<Item = Vec<u8>>) -> Self {
            Self(chunks.into_iter().filter(|c| !c.is_empty()).collect())
        }
    }

    impl AsyncRead for Chunked {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            if let Some(mut chunk) = self.0.pop_front() {
                let n = chunk.len().min(buf.remaining());
                buf.put_slice(&chunk[..n]);
                if n < chunk.len() {
                    chunk.drain(..n);
                    self.0.push_front(chunk);
                }
            }
            Poll::Ready(Ok(()))
        }
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn v1(src: &str, dst: &str) -> ProxyHeader {
        ProxyHeader {
            version: Version::V1,
            command: Command::Proxy,
            transport: Transport::Stream,
            addrs: Some(ProxyAddrs {
                src: sa(src),
                dst: sa(dst),
            }),
        }
    }

    fn v2(src: &str, dst: &str) -> ProxyHeader {
        ProxyHeader {
            version: Version::V2,
            ..v1(src, dst)
        }
    }

    fn done(bytes: &[u8]) -> (ProxyHeader, usize) {
        match parse_proxy_header(bytes).expect("parse") {
            PpParse::Done { header, len } => (header, len),
            other => panic!("expected Done, got {other:?}"),
        }
    }

    fn err(bytes: &[u8]) -> PpError {
        parse_proxy_header(bytes).expect_err("should fail")
    }

    /// The spec's examples, assembled by hand: 192.168.0.1:56324 →
    /// 192.168.0.11:443 (56324 = 0xdc04, 443 = 0x01bb).
    const V2_INET: [u8; 28] = [
        0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a, // signature
        0x21, // v2, PROXY
        0x11, // INET, STREAM
        0x00, 0x0c, // 12 bytes of addresses
        192, 168, 0, 1, 192, 168, 0, 11, // src, dst
        0xdc, 0x04, 0x01, 0xbb, // ports
    ];

    fn v2_inet6() -> Vec<u8> {
        let mut b = V2_SIGNATURE.to_vec();
        b.extend_from_slice(&[0x21, 0x21, 0x00, 0x24]);
        b.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        b.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        b.extend_from_slice(&[0xdc, 0x04, 0x01, 0xbb]);
        b
    }

    fn v2_raw(ver_cmd: u8, fam: u8, block: &[u8]) -> Vec<u8> {
        let mut b = V2_SIGNATURE.to_vec();
        b.extend_from_slice(&[ver_cmd, fam]);
        b.extend_from_slice(&u16::try_from(block.len()).unwrap().to_be_bytes());
        b.extend_from_slice(block);
        b
    }

    #[test]
    fn encode_spec_vectors() {
        let (s4, d4) = (sa("192.168.0.1:56324"), sa("192.168.0.11:443"));
        assert_eq!(
            encode_v1(s4, d4),
            b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"
        );
        assert_eq!(encode_v2(s4, d4), V2_INET);
        let (s6, d6) = (sa("[2001:db8::1]:56324"), sa("[2001:db8::2]:443"));
        assert_eq!(
            encode_v1(s6, d6),
            b"PROXY TCP6 2001:db8::1 2001:db8::2 56324 443\r\n"
        );
        assert_eq!(encode_v2(s6, d6), v2_inet6());
    }

    #[test]
    fn encode_mixed_and_mapped_families() {
        // Mixed: the IPv4 side is mapped into IPv6.
        assert_eq!(
            encode_v1(sa("1.2.3.4:5"), sa("[2001:db8::2]:443")),
            b"PROXY TCP6 ::ffff:1.2.3.4 2001:db8::2 5 443\r\n"
        );
        let bytes = encode_v2(sa("[2001:db8::1]:5"), sa("10.0.0.1:443"));
        assert_eq!(bytes[13], 0x21);
        assert_eq!(
            done(&bytes).0.addrs.unwrap().dst,
            sa("[::ffff:10.0.0.1]:443")
        );
        // Both v4-mapped (a dual-stack listener): plain IPv4.
        assert_eq!(
            encode_v1(sa("[::ffff:1.2.3.4]:5"), sa("[::ffff:10.0.0.1]:443")),
            b"PROXY TCP4 1.2.3.4 10.0.0.1 5 443\r\n"
        );
        assert_eq!(
            encode_v2(sa("[::ffff:192.168.0.1]:56324"), sa("192.168.0.11:443")),
            V2_INET
        );
    }

    #[test]
    fn parse_spec_vectors() {
        let line = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n";
        assert_eq!(
            done(line),
            (v1("192.168.0.1:56324", "192.168.0.11:443"), line.len())
        );
        let line = b"PROXY TCP6 2001:db8::1 2001:db8::2 56324 443\r\n";
        assert_eq!(
            done(line),
            (v1("[2001:db8::1]:56324", "[2001:db8::2]:443"), line.len())
        );
        assert_eq!(
            done(&V2_INET),
            (v2("192.168.0.1:56324", "192.168.0.11:443"), 28)
        );
        assert_eq!(
            done(&v2_inet6()),
            (v2("[2001:db8::1]:56324", "[2001:db8::2]:443"), 52)
        );
    }

    #[test]
    fn v1_unknown() {
        let unknown = ProxyHeader {
            version: Version::V1,
            command: Command::Proxy,
            transport: Transport::Unspec,
            addrs: None,
        };
        assert_eq!(done(b"PROXY UNKNOWN\r\n"), (unknown, 15));
        // The spec's worst case is exactly 107 bytes.
        let longest = format!(
            "PROXY UNKNOWN {a} {a} 65535 65535\r\n",
            a = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
        );
        assert_eq!(longest.len(), V1_MAX_LEN);
        assert_eq!(done(longest.as_bytes()), (unknown, V1_MAX_LEN));
        assert_eq!(encode_outbound(&unknown), b"PROXY UNKNOWN\r\n");
        assert_eq!(unknown.to_string(), "<unknown>");
    }

    #[test]
    fn v1_too_long() {
        let mut line = b"PROXY UNKNOWN ".to_vec();
        line.resize(V1_MAX_LEN, b'x');
        assert!(matches!(err(&line), PpError::V1TooLong));
        // CRLF at bytes 107..109 is one byte too late.
        line.truncate(V1_MAX_LEN - 1);
        line.extend_from_slice(b"\r\n");
        assert_eq!(line.len(), V1_MAX_LEN + 1);
        assert!(matches!(err(&line), PpError::V1TooLong));
    }

    #[test]
    fn v1_malformed() {
        for (line, what) in [
            (&b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n"[..], "protocol"),
            (b"PROXY \r\n", "protocol"),
            (b"PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n", "protocol"),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", "destination port"),
            (b"PROXY TCP4 1.2.3.4\r\n", "destination address"),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
                "line (extra fields)",
            ),
            (
                b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n",
                "line (extra fields)",
            ),
            (b"PROXY TCP4 1.2.3.4  5.6.7.8 1\r\n", "destination address"),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n",
                "line (extra fields)",
            ),
            (b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n", "source address"),
            (b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n", "source address"),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", "source port"),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n", "source port"),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 1 000002\r\n",
                "destination port",
            ),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 -2\r\n", "destination port"),
            (b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n", "source address"),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n\r\n", "destination port"),
            (b"PROXY TCP4 1.2.3.4 5.6.7.\xff 1 2\r\n", "line (not ASCII)"),
        ] {
            match err(line) {
                PpError::V1Invalid(w) => assert_eq!(w, what, "{:?}", String::from_utf8_lossy(line)),
                other => panic!("{:?}: {other:?}", String::from_utf8_lossy(line)),
            }
        }
        // Port 0 and the extremes are legal.
        assert_eq!(
            done(b"PROXY TCP4 0.0.0.0 255.255.255.255 0 65535\r\n").0,
            v1("0.0.0.0:0", "255.255.255.255:65535")
        );
    }

    #[test]
    fn not_proxy_protocol() {
        for bytes in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"POST",
            b"\x16\x03\x01\x02\x00",
            b"PROXY\r\n",
            b"\r\n\r\n\0\r\nQUIT\r",
            b"proxy TCP4",
        ] {
            assert!(matches!(err(bytes), PpError::NotProxyProtocol), "{bytes:?}");
        }
    }

    #[test]
    fn v2_commands_and_families() {
        // LOCAL: addresses ignored, even garbage or a short block.
        let local = v2_raw(0x20, 0x11, &[1, 2, 3]);
        let (h, len) = done(&local);
        assert_eq!((h.command, h.addrs, len), (Command::Local, None, 19));
        assert_eq!(encode_outbound(&h), v2_raw(0x20, 0x00, &[]));
        // PROXY with UNSPEC family.
        let (h, _) = done(&v2_raw(0x21, 0x00, &[]));
        assert_eq!(
            (h.command, h.transport, h.addrs),
            (Command::Proxy, Transport::Unspec, None)
        );
        // AF_UNIX: accepted, no addresses.
        let (h, len) = done(&v2_raw(0x21, 0x31, &[0; 216]));
        assert_eq!((h.addrs, len), (None, 232));
        // DGRAM is recorded.
        let mut dgram = V2_INET.to_vec();
        dgram[13] = 0x12;
        let (h, _) = done(&dgram);
        assert_eq!(h.transport, Transport::Datagram);
        assert_eq!(encode_outbound(&h), dgram);
    }

    #[test]
    fn v2_tlvs_are_skipped() {
        let mut block = V2_INET[16..].to_vec();
        // PP2_TYPE_ALPN "h2", PP2_TYPE_NOOP with 3 bytes.
        block.extend_from_slice(&[0x01, 0x00, 0x02, b'h', b'2', 0x04, 0x00, 0x03, 0, 0, 0]);
        let bytes = v2_raw(0x21, 0x11, &block);
        assert_eq!(
            done(&bytes),
            (v2("192.168.0.1:56324", "192.168.0.11:443"), 16 + 23)
        );
    }

    #[test]
    fn v2_malformed() {
        assert!(matches!(
            err(&v2_raw(0x11, 0x11, &[])),
            PpError::V2Version(1)
        ));
        assert!(matches!(
            err(&v2_raw(0x31, 0x11, &[])),
            PpError::V2Version(3)
        ));
        assert!(matches!(
            err(&v2_raw(0x22, 0x11, &[])),
            PpError::V2Command(2)
        ));
        assert!(matches!(
            err(&v2_raw(0x21, 0x41, &[])),
            PpError::V2Family(4)
        ));
        assert!(matches!(
            err(&v2_raw(0x21, 0x13, &[])),
            PpError::V2Transport(3)
        ));
        // Checked as soon as the byte arrives.
        assert!(matches!(
            err(&v2_raw(0x11, 0x11, &[])[..13]),
            PpError::V2Version(1)
        ));
        assert!(matches!(
            err(&v2_raw(0x21, 0x11, &[0; 11])),
            PpError::V2AddressTooShort { len: 11, need: 12 }
        ));
        assert!(matches!(
            err(&v2_raw(0x21, 0x21, &[0; 12])),
            PpError::V2AddressTooShort { len: 12, need: 36 }
        ));
        assert!(matches!(
            err(&v2_raw(0x21, 0x31, &[0; 100])),
            PpError::V2AddressTooShort {
                len: 100,
                need: 216
            }
        ));
    }

    #[test]
    fn v2_size_cap() {
        let fits = v2_raw(0x21, 0x11, &[0; V2_MAX_LEN - 16]);
        assert_eq!(done(&fits).1, V2_MAX_LEN);
        // Refused from the length field alone.
        let over = v2_raw(0x21, 0x11, &[0; V2_MAX_LEN - 15]);
        assert!(matches!(err(&over[..16]), PpError::Oversized(2049)));
        let mut max = v2_raw(0x21, 0x11, &[]);
        max[14..16].copy_from_slice(&[0xff, 0xff]);
        assert!(matches!(err(&max), PpError::Oversized(65551)));
    }

    #[test]
    fn prefixes_need_more_and_make_progress() {
        let line = b"PROXY TCP6 2001:db8::1 2001:db8::2 56324 443\r\n".to_vec();
        for bytes in [line, V2_INET.to_vec(), v2_inet6()] {
            for cut in 0..bytes.len() {
                match parse_proxy_header(&bytes[..cut]).expect("prefix") {
                    PpParse::NeedMore { limit } => assert!(limit > cut),
                    other => panic!("cut {cut}: {other:?}"),
                }
            }
        }
        // v2 asks for exactly its length.
        assert_eq!(
            parse_proxy_header(&V2_INET[..16]).unwrap(),
            PpParse::NeedMore { limit: 28 }
        );
    }

    #[test]
    fn outbound_mirrors_upstream() {
        // Inbound PP off: the synthesised header goes out as v2.
        let h = ProxyHeader::from_connection(sa("192.168.0.1:56324"), sa("192.168.0.11:443"));
        assert_eq!(encode_outbound(&h), V2_INET);
        assert_eq!(h.to_string(), "192.168.0.1:56324");
        assert_eq!(h.source(), Some(sa("192.168.0.1:56324")));
        // Inbound v1 goes out as v1, inbound v2 as v2.
        let line = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n";
        assert_eq!(encode_outbound(&done(line).0), line);
        assert_eq!(encode_outbound(&done(&v2_inet6()).0), v2_inet6());
    }

    #[test]
    fn round_trips() {
        for (s, d) in [
            ("1.2.3.4:1", "5.6.7.8:65535"),
            ("[::1]:0", "[fe80::1:2:3:4]:443"),
            ("[2001:db8:0:0:1:0:0:1]:9", "[::]:10"),
        ] {
            let (s, d) = (sa(s), sa(d));
            let want = ProxyAddrs { src: s, dst: d };
            assert_eq!(done(&encode_v1(s, d)).0.addrs, Some(want));
            assert_eq!(done(&encode_v2(s, d)).0.addrs, Some(want));
        }
    }

    #[tokio::test]
    async fn read_every_split() {
        let payload = b"\x16\x03\x01 client hello";
        for header in [
            b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n".to_vec(),
            b"PROXY UNKNOWN\r\n".to_vec(),
            V2_INET.to_vec(),
            v2_inet6(),
        ] {
            let (expected, len) = done(&header);
            let mut sent = header.clone();
            sent.extend_from_slice(payload);
            for cut in 0..=sent.len() {
                let mut s = Chunked::new([sent[..cut].to_vec(), sent[cut..].to_vec()]);
                let (h, leftover) = read_proxy_header(&mut s, T).await.expect("read");
                assert_eq!(h, expected, "cut {cut}");
                let mut rest = Vec::new();
                s.read_to_end(&mut rest).await.unwrap();
                // Nothing lost, nothing duplicated.
                assert_eq!([leftover.clone(), rest].concat(), &sent[len..], "cut {cut}");
                if header.starts_with(V2_SIGNATURE) {
                    assert!(leftover.is_empty(), "v2 over-read at cut {cut}");
                }
            }
        }
    }

    #[tokio::test]
    async fn read_v1_leftover_is_bounded() {
        let line = b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n";
        let mut sent = line.to_vec();
        sent.extend_from_slice(&[0xab; 500]);
        let mut s = Chunked::new([sent]);
        let (_, leftover) = read_proxy_header(&mut s, T).await.unwrap();
        assert_eq!(leftover, vec![0xab; V1_MAX_LEN - line.len()]);
    }

    #[tokio::test]
    async fn read_slow_writer_over_duplex() {
        let (mut client, mut server) = tokio::io::duplex(64);
        let sent = [&v2_inet6()[..], b"data"].concat();
        let writer = tokio::spawn(async move {
            for b in sent {
                client.write_all(&[b]).await.unwrap();
                tokio::task::yield_now().await;
            }
            client
        });
        let (h, leftover) = read_proxy_header(&mut server, T).await.unwrap();
        assert_eq!(h, v2("[2001:db8::1]:56324", "[2001:db8::2]:443"));
        assert!(leftover.is_empty());
        let _client = writer.await.unwrap();
        let mut rest = [0u8; 4];
        server.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"data");
    }

    #[tokio::test]
    async fn read_timeout() {
        let (mut client, mut server) = tokio::io::duplex(64);
        client.write_all(b"PROXY TCP4 1.2.3.4").await.unwrap();
        let t = Duration::from_millis(50);
        assert!(matches!(
            read_proxy_header(&mut server, t).await,
            Err(PpError::Timeout(d)) if d == t
        ));
        // Silence counts too.
        let (_client, mut server) = tokio::io::duplex(64);
        assert!(matches!(
            read_proxy_header(&mut server, t).await,
            Err(PpError::Timeout(_))
        ));
    }

    #[tokio::test]
    async fn read_eof_and_errors() {
        let (mut client, mut server) = tokio::io::duplex(64);
        client.write_all(&V2_INET[..20]).await.unwrap();
        drop(client);
        assert!(matches!(
            read_proxy_header(&mut server, T).await,
            Err(PpError::Eof { read: 20 })
        ));
        let mut s = Chunked::new([]);
        assert!(matches!(
            read_proxy_header(&mut s, T).await,
            Err(PpError::Eof { read: 0 })
        ));
        let (mut client, mut server) = tokio::io::duplex(64);
        client.write_all(b"\x16\x03\x01\x00\x10").await.unwrap();
        assert!(matches!(
            read_proxy_header(&mut server, T).await,
            Err(PpError::NotProxyProtocol)
        ));
        let mut s = Chunked::new([v2_raw(0x21, 0x11, &[0; 3000])]);
        assert!(matches!(
            read_proxy_header(&mut s, T).await,
            Err(PpError::Oversized(3016))
        ));
    }
}
