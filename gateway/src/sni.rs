//! Reading a TLS ClientHello far enough to route the connection (UPSTREAM
//! §10.1): the server name (SNI) picks the app, ALPN is kept for the
//! terminating side.
//!
//! The parser is sans-I/O ([`parse_client_hello`] over the bytes seen so far,
//! answering "need more" or "done"); [`read_client_hello`] drives it over a
//! stream and returns the exact bytes it consumed, so they can be replayed to
//! a passthrough backend or fed to rustls.
//!
//! Stricter than upstream's `extract_sni`, which scans the first record's
//! payload leniently: here the message is reassembled across records (a
//! ClientHello may legally span several), every length is checked, and the
//! server name must be a single well-formed DNS `host_name` (upstream skips
//! other name types and takes any UTF-8). A ClientHello without SNI is not an
//! error here; the caller decides (upstream refuses it).

use tokio::io::{AsyncRead, AsyncReadExt};

/// Upstream's cap on the bytes buffered while looking for the ClientHello.
pub const MAX_CLIENT_HELLO: usize = 4096;

const CONTENT_TYPE_HANDSHAKE: u8 = 22;
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
const RECORD_HEADER_LEN: usize = 5;
const HANDSHAKE_HEADER_LEN: usize = 4;
/// RFC 8446 §5.1: a plaintext record carries at most 2^14 bytes.
const MAX_FRAGMENT_LEN: usize = 1 << 14;
const EXT_SERVER_NAME: u16 = 0;
const EXT_ALPN: u16 = 16;
const NAME_TYPE_HOST_NAME: u8 = 0;
const MAX_SESSION_ID_LEN: usize = 32;
const MAX_HOST_NAME_LEN: usize = 253;
const MAX_LABEL_LEN: usize = 63;

/// What the gateway needs from a ClientHello.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientHello {
    /// The `host_name` from the server_name extension, lowercased and checked.
    pub sni: Option<String>,
    /// ALPN protocol names in the client's order; empty without the extension.
    pub alpn: Vec<Vec<u8>>,
}

/// Outcome of parsing a prefix of the client's byte stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseState {
    /// The ClientHello is incomplete: at least `total` bytes (counted from the
    /// start of the stream) are needed before it can be complete.
    NeedMore {
        /// A lower bound on the stream length that could complete the message;
        /// never more than the real length, so reading up to it never blocks
        /// on bytes the client will not send.
        total: usize,
    },
    /// The ClientHello is complete; `consumed` bytes of input made it up.
    Done {
        /// The parsed message.
        hello: ClientHello,
        /// How many input bytes the records carrying the message took (the
        /// last record may be cut short if the message ends inside it).
        consumed: usize,
    },
}

/// Why a ClientHello could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SniError {
    /// The first byte(s) are not a TLS handshake record (plain HTTP, SSLv2, ...).
    #[error("not a TLS handshake record (content type {0})")]
    NotHandshake(u8),
    /// The first handshake message is something other than a ClientHello.
    #[error("first handshake message is not a ClientHello (type {0})")]
    NotClientHello(u8),
    /// The ClientHello needs more than the allowed number of bytes.
    #[error("ClientHello needs at least {needed} bytes, more than the {max} allowed")]
    Oversized {
        /// Lower bound on the bytes the message needs.
        needed: usize,
        /// The cap it exceeds.
        max: usize,
    },
    /// The records or the ClientHello violate the TLS encoding.
    #[error("malformed ClientHello")]
    Malformed(#[from] Malformed),
    /// The peer closed the connection before the ClientHello was complete.
    #[error("connection closed after {read} bytes, before the ClientHello was complete")]
    Eof {
        /// Bytes received before the close.
        read: usize,
    },
    /// Reading from the client failed.
    #[error("failed to read the ClientHello")]
    Io(#[source] std::io::Error),
}

/// The encoding error found in a ClientHello.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    /// The record's protocol major version is not 3 (SSL 3.0 / TLS).
    #[error("record version {0:#06x} is not TLS")]
    RecordVersion(u16),
    /// A handshake record with no payload (forbidden by RFC 8446 §5.1).
    #[error("empty handshake record")]
    EmptyRecord,
    /// A record longer than 2^14 bytes.
    #[error("record length {0} exceeds 2^14")]
    RecordTooLong(usize),
    /// A field runs past the end of its enclosing structure.
    #[error("{0} runs past the end of its enclosing structure")]
    Truncated(&'static str),
    /// A field's length is outside what the encoding allows.
    #[error("{0} has an invalid length")]
    BadLength(&'static str),
    /// Bytes left over after a structure that should fill its container.
    #[error("unexpected bytes after the {0}")]
    TrailingBytes(&'static str),
    /// The same extension appears twice (RFC 8446 §4.2).
    #[error("duplicate {0} extension")]
    DuplicateExtension(&'static str),
    /// A server name entry whose type is not `host_name` (RFC 6066 §3).
    #[error("server name type {0} is not host_name")]
    NameType(u8),
    /// More than one `host_name` in the server name list (RFC 6066 §3).
    #[error("more than one host_name in the server name list")]
    MultipleHostNames,
    /// The `host_name` is not a DNS name the gateway will route.
    #[error("invalid server name")]
    ServerName(#[source] NameError),
}

/// Why a server name is not an acceptable DNS name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The name is empty.
    #[error("name is empty")]
    Empty,
    /// Longer than 253 bytes.
    #[error("name is {0} bytes, more than 253")]
    TooLong(usize),
    /// Leading, trailing or doubled dot.
    #[error("name has an empty label")]
    EmptyLabel,
    /// A label longer than 63 bytes.
    #[error("label is {0} bytes, more than 63")]
    LabelTooLong(usize),
    /// A byte outside `[a-z0-9-.*_]` (after lowercasing).
    #[error("byte {0:#04x} is not allowed in a name")]
    BadByte(u8),
}

/// Lowercases `raw` and checks it is a DNS name the gateway routes on: at
/// most 253 bytes, no empty label (so no trailing dot, which RFC 6066 also
/// forbids), labels of at most 63 bytes, only `[a-z0-9-.*_]`.
///
/// `_` and `*` are accepted because they occur in real names (`_acme`,
/// service labels, wildcards in tests); anything else, notably non-ASCII and
/// whitespace, can never match a route or a TXT record and is refused early.
pub fn normalize_host_name(raw: &[u8]) -> Result<String, NameError> {
    if raw.is_empty() {
        return Err(NameError::Empty);
    }
    if raw.len() > MAX_HOST_NAME_LEN {
        return Err(NameError::TooLong(raw.len()));
    }
    let name: Vec<u8> = raw.to_ascii_lowercase();
    if let Some(&bad) = name
        .iter()
        .find(|b| !matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'*' | b'_'))
    {
        return Err(NameError::BadByte(bad));
    }
    for label in name.split(|&b| b == b'.') {
        if label.is_empty() {
            return Err(NameError::EmptyLabel);
        }
        if label.len() > MAX_LABEL_LEN {
            return Err(NameError::LabelTooLong(label.len()));
        }
    }
    // Every byte was checked to be ASCII above.
    Ok(name.into_iter().map(char::from).collect())
}

/// Parses the TLS records in `bytes` (a prefix of what the client sent) and
/// reports whether they hold a complete ClientHello.
///
/// The message may span several handshake records; records of any other
/// content type before it is complete are refused (RFC 8446 §5.1 forbids
/// interleaving). Errors are reported as soon as the bytes seen prove them,
/// and a prefix of a valid stream always yields [`ParseState::NeedMore`].
pub fn parse_client_hello(bytes: &[u8]) -> Result<ParseState, SniError> {
    // Handshake bytes reassembled from the record payloads seen so far.
    let mut handshake: Vec<u8> = Vec::new();
    let mut pos = 0;
    loop {
        let rest = &bytes[pos..];
        check_record_prefix(rest)?;
        if rest.len() < RECORD_HEADER_LEN {
            // Another record is needed; it carries at least the missing
            // handshake bytes (and at least one byte, as records are non-empty).
            let missing = handshake_target(&handshake) - handshake.len();
            return Ok(ParseState::NeedMore {
                total: pos + RECORD_HEADER_LEN + missing,
            });
        }
        let len = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
        if len == 0 {
            return Err(Malformed::EmptyRecord.into());
        }
        if len > MAX_FRAGMENT_LEN {
            return Err(Malformed::RecordTooLong(len).into());
        }
        let payload_start = pos + RECORD_HEADER_LEN;
        let end = payload_start + len;
        let available = end.min(bytes.len());
        let before = handshake.len();
        handshake.extend_from_slice(&bytes[payload_start..available]);

        if let Some(&msg_type) = handshake.first()
            && msg_type != HANDSHAKE_CLIENT_HELLO
        {
            return Err(SniError::NotClientHello(msg_type));
        }
        let target = handshake_target(&handshake);
        if handshake.len() >= target && handshake.len() >= HANDSHAKE_HEADER_LEN {
            let hello = parse_body(&handshake[HANDSHAKE_HEADER_LEN..target])?;
            return Ok(ParseState::Done {
                hello,
                consumed: payload_start + (target - before),
            });
        }
        if available < end {
            // This record is cut short. Either the message ends inside it,
            // or the whole record plus a further record are needed.
            let total = if target <= before + len {
                payload_start + (target - before)
            } else {
                end + RECORD_HEADER_LEN + (target - (before + len))
            };
            return Ok(ParseState::NeedMore { total });
        }
        pos = end;
    }
}

/// Checks whatever part of a record header is present: content type, then
/// the protocol major version.
fn check_record_prefix(rest: &[u8]) -> Result<(), SniError> {
    if let Some(&content_type) = rest.first()
        && content_type != CONTENT_TYPE_HANDSHAKE
    {
        return Err(SniError::NotHandshake(content_type));
    }
    if let Some(&major) = rest.get(1)
        && major != 3
    {
        let minor = rest.get(2).copied().unwrap_or(0);
        return Err(Malformed::RecordVersion(u16::from_be_bytes([major, minor])).into());
    }
    Ok(())
}

/// The handshake length at which the ClientHello is complete: the header plus
/// the body once the header is known, else just the header (a lower bound).
fn handshake_target(handshake: &[u8]) -> usize {
    match handshake.get(..HANDSHAKE_HEADER_LEN) {
        Some(h) => HANDSHAKE_HEADER_LEN + u24(h[1], h[2], h[3]),
        None => HANDSHAKE_HEADER_LEN,
    }
}

fn u24(a: u8, b: u8, c: u8) -> usize {
    (usize::from(a) << 16) | (usize::from(b) << 8) | usize::from(c)
}

/// Reads a ClientHello from `stream`, buffering at most `max` bytes.
///
/// Reads only as far as the parser says the message may need, so the returned
/// bytes end where the ClientHello ends (at a record boundary unless the last
/// record carries more than the message) and nothing after it is consumed.
/// The caller applies its own timeout.
pub async fn read_client_hello<S: AsyncRead + Unpin>(
    stream: &mut S,
    max: usize,
) -> Result<(Vec<u8>, ClientHello), SniError> {
    let mut buf = Vec::with_capacity(max.min(MAX_CLIENT_HELLO));
    loop {
        let total = match parse_client_hello(&buf)? {
            ParseState::Done { hello, .. } => return Ok((buf, hello)),
            ParseState::NeedMore { total } => total,
        };
        if total > max {
            return Err(SniError::Oversized { needed: total, max });
        }
        let filled = buf.len();
        buf.resize(total, 0);
        let n = stream
            .read(&mut buf[filled..])
            .await
            .map_err(SniError::Io)?;
        buf.truncate(filled + n);
        if n == 0 {
            return Err(SniError::Eof { read: filled });
        }
    }
}

/// A bounds-checked cursor over one structure of the ClientHello.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], Malformed> {
        if n > self.buf.len() {
            return Err(Malformed::Truncated(what));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, Malformed> {
        Ok(self.take(1, what)?[0])
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, Malformed> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    /// A vector with a one-byte length prefix.
    fn vec8(&mut self, what: &'static str) -> Result<&'a [u8], Malformed> {
        let len = usize::from(self.u8(what)?);
        self.take(len, what)
    }

    /// A vector with a two-byte length prefix.
    fn vec16(&mut self, what: &'static str) -> Result<&'a [u8], Malformed> {
        let len = usize::from(self.u16(what)?);
        self.take(len, what)
    }
}

/// Parses a ClientHello body (RFC 8446 §4.1.2, RFC 5246 §7.4.1.2).
fn parse_body(body: &[u8]) -> Result<ClientHello, Malformed> {
    let mut r = Reader::new(body);
    r.take(2, "legacy_version")?;
    r.take(32, "random")?;
    if r.vec8("session id")?.len() > MAX_SESSION_ID_LEN {
        return Err(Malformed::BadLength("session id"));
    }
    let suites = r.vec16("cipher suites")?;
    if suites.is_empty() || suites.len() % 2 != 0 {
        return Err(Malformed::BadLength("cipher suites"));
    }
    if r.vec8("compression methods")?.is_empty() {
        return Err(Malformed::BadLength("compression methods"));
    }
    let mut hello = ClientHello::default();
    // A TLS 1.2 ClientHello may end here, with no extensions at all.
    if r.is_empty() {
        return Ok(hello);
    }
    let mut extensions = Reader::new(r.vec16("extensions")?);
    if !r.is_empty() {
        return Err(Malformed::TrailingBytes("extensions"));
    }
    let mut seen_alpn = false;
    while !extensions.is_empty() {
        let ext_type = extensions.u16("extension type")?;
        let data = extensions.vec16("extension")?;
        match ext_type {
            EXT_SERVER_NAME => {
                if hello.sni.is_some() {
                    return Err(Malformed::DuplicateExtension("server_name"));
                }
                hello.sni = Some(parse_server_name(data)?);
            }
            EXT_ALPN => {
                if seen_alpn {
                    return Err(Malformed::DuplicateExtension("ALPN"));
                }
                seen_alpn = true;
                hello.alpn = parse_alpn(data)?;
            }
            _ => {}
        }
    }
    Ok(hello)
}

/// Parses the server_name extension (RFC 6066 §3) down to its one host name.
fn parse_server_name(data: &[u8]) -> Result<String, Malformed> {
    let mut ext = Reader::new(data);
    let list = ext.vec16("server name list")?;
    if !ext.is_empty() {
        return Err(Malformed::TrailingBytes("server name list"));
    }
    if list.is_empty() {
        return Err(Malformed::BadLength("server name list"));
    }
    let mut list = Reader::new(list);
    let mut host_name = None;
    while !list.is_empty() {
        let name_type = list.u8("server name type")?;
        let name = list.vec16("server name")?;
        if name_type != NAME_TYPE_HOST_NAME {
            return Err(Malformed::NameType(name_type));
        }
        if host_name.is_some() {
            return Err(Malformed::MultipleHostNames);
        }
        host_name = Some(name);
    }
    let name = host_name.ok_or(Malformed::BadLength("server name list"))?;
    normalize_host_name(name).map_err(Malformed::ServerName)
}

/// Parses the ALPN extension (RFC 7301 §3.1).
fn parse_alpn(data: &[u8]) -> Result<Vec<Vec<u8>>, Malformed> {
    let mut ext = Reader::new(data);
    let list = ext.vec16("ALPN protocol list")?;
    if !ext.is_empty() {
        return Err(Malformed::TrailingBytes("ALPN protocol list"));
    }
    if list.is_empty() {
        return Err(Malformed::BadLength("ALPN protocol list"));
    }
    let mut list = Reader::new(list);
    let mut protocols = Vec::new();
    while !list.is_empty() {
        let name = list.vec8("ALPN protocol name")?;
        if name.is_empty() {
            return Err(Malformed::BadLength("ALPN protocol name"));
        }
        protocols.push(name.to_vec());
    }
    Ok(protocols)
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::pin::Pin;
    use std::sync::Arc;
    use std::task::{Context, Poll};

    use rustls::pki_types::ServerName;
    use tokio::io::ReadBuf;

    use super::*;

    /// A stream that hands out pre-cut chunks, one per read, then EOF; so a
    /// test controls exactly where the reader sees a boundary.
    struct Chunked {
        chunks: VecDeque<Vec<u8>>,
        reads: usize,
    }

    impl Chunked {
        fn new(chunks: impl IntoIterator<Item = Vec<u8>>) -> Self {
            Self {
                chunks: chunks.into_iter().filter(|c| !c.is_empty()).collect(),
                reads: 0,
            }
        }
    }

    impl AsyncRead for Chunked {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            self.reads += 1;
            if let Some(mut chunk) = self.chunks.pop_front() {
                let n = chunk.len().min(buf.remaining());
                buf.put_slice(&chunk[..n]);
                if n < chunk.len() {
                    chunk.drain(..n);
                    self.chunks.push_front(chunk);
                }
            }
            Poll::Ready(Ok(()))
        }
    }

    /// A stream whose reads fail.
    struct Failing;

    impl AsyncRead for Failing {
        fn poll_read(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            _buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            Poll::Ready(Err(std::io::Error::other("boom")))
        }
    }

    /// The first flight of a real rustls client.
    fn rustls_hello(sni: Option<&str>, alpn: &[&[u8]], max_fragment: Option<usize>) -> Vec<u8> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        config.max_fragment_size = max_fragment;
        let name = match sni {
            Some(s) => ServerName::try_from(s.to_owned()).expect("server name"),
            // rustls sends no SNI for an IP address.
            None => ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()),
        };
        let mut conn = rustls::ClientConnection::new(Arc::new(config), name).expect("client");
        let mut out = Vec::new();
        while conn.wants_write() {
            conn.write_tls(&mut out).expect("write_tls");
        }
        out
    }

    /// What rustls' own server-side parser makes of the same bytes.
    fn rustls_view(bytes: &[u8]) -> ClientHello {
        let mut acceptor = rustls::server::Acceptor::default();
        let mut rd = bytes;
        while !rd.is_empty() {
            acceptor.read_tls(&mut rd).expect("read_tls");
        }
        let accepted = acceptor
            .accept()
            .map_err(|(e, _)| e)
            .expect("accept")
            .expect("complete");
        let ch = accepted.client_hello();
        ClientHello {
            sni: ch.server_name().map(str::to_owned),
            alpn: ch
                .alpn()
                .map(|a| a.map(<[u8]>::to_vec).collect())
                .unwrap_or_default(),
        }
    }

    fn done(bytes: &[u8]) -> ClientHello {
        match parse_client_hello(bytes).expect("parse") {
            ParseState::Done { hello, consumed } => {
                assert_eq!(consumed, bytes.len());
                hello
            }
            other => panic!("expected Done, got {other:?}"),
        }
    }

    fn malformed(bytes: &[u8]) -> Malformed {
        match parse_client_hello(bytes) {
            Err(SniError::Malformed(m)) => m,
            other => panic!("expected Malformed, got {other:?}"),
        }
    }

    /// Re-cuts the handshake payload of single-record `hello` into records
    /// of the given payload sizes (the last takes the rest).
    fn resplit(hello: &[u8], sizes: &[usize]) -> Vec<u8> {
        assert_eq!(hello[0], CONTENT_TYPE_HANDSHAKE);
        let payload = &hello[RECORD_HEADER_LEN..];
        assert_eq!(
            usize::from(u16::from_be_bytes([hello[3], hello[4]])),
            payload.len()
        );
        let mut out = Vec::new();
        let mut rest = payload;
        for (i, &size) in sizes.iter().enumerate() {
            let size = if i + 1 == sizes.len() {
                rest.len()
            } else {
                size
            };
            let (frag, tail) = rest.split_at(size);
            out.extend_from_slice(&hello[..3]);
            out.extend_from_slice(&u16::try_from(frag.len()).unwrap().to_be_bytes());
            out.extend_from_slice(frag);
            rest = tail;
        }
        out
    }

    // --- A hand-built ClientHello, for the malformed cases. ---

    fn vec8(data: &[u8]) -> Vec<u8> {
        let mut v = vec![u8::try_from(data.len()).unwrap()];
        v.extend_from_slice(data);
        v
    }

    fn vec16(data: &[u8]) -> Vec<u8> {
        let mut v = u16::try_from(data.len()).unwrap().to_be_bytes().to_vec();
        v.extend_from_slice(data);
        v
    }

    fn ext(ext_type: u16, data: &[u8]) -> Vec<u8> {
        let mut v = ext_type.to_be_bytes().to_vec();
        v.extend(vec16(data));
        v
    }

    fn sni_ext(names: &[(u8, &[u8])]) -> Vec<u8> {
        let list: Vec<u8> = names
            .iter()
            .flat_map(|(t, n)| {
                let mut e = vec![*t];
                e.extend(vec16(n));
                e
            })
            .collect();
        ext(EXT_SERVER_NAME, &vec16(&list))
    }

    fn alpn_ext(protocols: &[&[u8]]) -> Vec<u8> {
        let list: Vec<u8> = protocols.iter().flat_map(|p| vec8(p)).collect();
        ext(EXT_ALPN, &vec16(&list))
    }

    /// A ClientHello body up to and including the compression methods.
    fn body_prefix() -> Vec<u8> {
        let mut b = vec![3, 3];
        b.extend([7u8; 32]);
        b.extend(vec8(&[1; 32]));
        b.extend(vec16(&[0x13, 0x01, 0x13, 0x02]));
        b.extend(vec8(&[0]));
        b
    }

    fn record(body: &[u8]) -> Vec<u8> {
        let mut hs = vec![HANDSHAKE_CLIENT_HELLO];
        hs.extend_from_slice(&u32::try_from(body.len()).unwrap().to_be_bytes()[1..]);
        hs.extend_from_slice(body);
        let mut rec = vec![CONTENT_TYPE_HANDSHAKE, 3, 1];
        rec.extend(vec16(&hs));
        rec
    }

    fn hello_with(extensions: &[Vec<u8>]) -> Vec<u8> {
        let mut body = body_prefix();
        body.extend(vec16(&extensions.concat()));
        record(&body)
    }

    #[test]
    fn rustls_hello_parses_like_rustls() {
        for (sni, alpn) in [
            (Some("example.com"), vec![]),
            (Some("Example.COM"), vec![&b"h2"[..], b"http/1.1"]),
            (None, vec![&b"h2"[..]]),
            (
                Some("3327603e03f5bd1f830812ca4a789277fc31f577-443s.app.dstack.org"),
                vec![],
            ),
        ] {
            let bytes = rustls_hello(sni, &alpn, None);
            let hello = done(&bytes);
            assert_eq!(hello, rustls_view(&bytes));
            assert_eq!(hello.sni, sni.map(str::to_ascii_lowercase));
            assert_eq!(
                hello.alpn,
                alpn.iter().map(|p| p.to_vec()).collect::<Vec<_>>()
            );
        }
    }

    #[test]
    fn every_prefix_needs_more_with_an_honest_bound() {
        let bytes = rustls_hello(Some("app.example.com"), &[b"h2"], None);
        for cut in 0..bytes.len() {
            match parse_client_hello(&bytes[..cut]).expect("prefix") {
                ParseState::NeedMore { total } => {
                    assert!(total > cut, "cut {cut}: bound {total} makes no progress");
                    assert!(total <= bytes.len(), "cut {cut}: bound {total} overshoots");
                }
                other => panic!("cut {cut}: {other:?}"),
            }
        }
    }

    #[test]
    fn rustls_multi_record_hello() {
        // rustls itself fragments the first flight at max_fragment_size.
        let bytes = rustls_hello(Some("multi.example.com"), &[b"h2"], Some(64));
        let records = count_records(&bytes);
        assert!(records > 3, "expected several records, got {records}");
        assert_eq!(done(&bytes), rustls_view(&bytes));
        for cut in 0..bytes.len() {
            match parse_client_hello(&bytes[..cut]).expect("prefix") {
                ParseState::NeedMore { total } => assert!(cut < total && total <= bytes.len()),
                other => panic!("cut {cut}: {other:?}"),
            }
        }
    }

    fn count_records(mut bytes: &[u8]) -> usize {
        let mut n = 0;
        while !bytes.is_empty() {
            let len = usize::from(u16::from_be_bytes([bytes[3], bytes[4]]));
            bytes = &bytes[RECORD_HEADER_LEN + len..];
            n += 1;
        }
        n
    }

    #[test]
    fn hand_split_two_records_at_every_point() {
        let single = rustls_hello(Some("split.example.com"), &[b"http/1.1"], None);
        let expected = done(&single);
        let payload_len = single.len() - RECORD_HEADER_LEN;
        // Includes splits inside the 4-byte handshake header.
        for first in 1..payload_len {
            let bytes = resplit(&single, &[first, 0]);
            assert_eq!(done(&bytes), expected, "split at {first}");
        }
        let three = resplit(&single, &[1, 2, 0]);
        assert_eq!(done(&three), expected);
        assert_eq!(rustls_view(&three), expected);
    }

    #[tokio::test]
    async fn read_at_every_byte_boundary() {
        let bytes = rustls_hello(Some("boundary.example.com"), &[b"h2"], None);
        let expected = rustls_view(&bytes);
        for cut in 0..=bytes.len() {
            let mut stream = Chunked::new([bytes[..cut].to_vec(), bytes[cut..].to_vec()]);
            let (read, hello) = read_client_hello(&mut stream, MAX_CLIENT_HELLO)
                .await
                .expect("read");
            assert_eq!(read, bytes, "cut {cut}");
            assert_eq!(hello, expected);
        }
    }

    #[tokio::test]
    async fn read_multi_record_one_byte_at_a_time() {
        let bytes = rustls_hello(Some("slow.example.com"), &[], Some(100));
        let mut stream = Chunked::new(bytes.iter().map(|&b| vec![b]));
        let (read, hello) = read_client_hello(&mut stream, MAX_CLIENT_HELLO)
            .await
            .expect("read");
        assert_eq!(read, bytes);
        assert_eq!(hello.sni.as_deref(), Some("slow.example.com"));
    }

    #[tokio::test]
    async fn read_stops_at_the_end_of_the_hello() {
        let bytes = rustls_hello(Some("exact.example.com"), &[], None);
        let mut sent = bytes.clone();
        sent.extend_from_slice(b"\x17\x03\x03 early data that must stay unread");
        let mut stream = Chunked::new([sent.clone()]);
        let (read, _) = read_client_hello(&mut stream, MAX_CLIENT_HELLO)
            .await
            .expect("read");
        assert_eq!(read, bytes);
        // Record and handshake headers first, then the rest of the record.
        assert_eq!(stream.reads, 2);
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest).await.expect("rest");
        assert_eq!(rest, sent[bytes.len()..]);
    }

    #[tokio::test]
    async fn read_eof_before_complete() {
        let bytes = rustls_hello(Some("eof.example.com"), &[], None);
        for cut in [0, 1, 5, 9, bytes.len() - 1] {
            let mut stream = Chunked::new([bytes[..cut].to_vec()]);
            match read_client_hello(&mut stream, MAX_CLIENT_HELLO).await {
                Err(SniError::Eof { read }) => assert_eq!(read, cut),
                other => panic!("cut {cut}: {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn read_io_error() {
        assert!(matches!(
            read_client_hello(&mut Failing, MAX_CLIENT_HELLO).await,
            Err(SniError::Io(_))
        ));
    }

    #[tokio::test]
    async fn read_oversized_fails_before_reading_the_body() {
        let bytes = rustls_hello(Some("big.example.com"), &[], None);
        let max = bytes.len() - 1;
        let mut stream = Chunked::new([bytes.clone()]);
        match read_client_hello(&mut stream, max).await {
            Err(SniError::Oversized { needed, max: m }) => {
                assert_eq!(m, max);
                assert!(needed > max);
            }
            other => panic!("{other:?}"),
        }
        // Only the record and handshake headers were read.
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest).await.expect("rest");
        assert_eq!(rest.len(), bytes.len() - 9);

        // A hello that fits exactly is accepted.
        let mut stream = Chunked::new([bytes.clone()]);
        assert!(read_client_hello(&mut stream, bytes.len()).await.is_ok());
    }

    #[tokio::test]
    async fn read_oversized_padding_hello() {
        // A handshake length beyond the cap is refused from its header alone.
        let mut body = body_prefix();
        body.extend(vec16(&ext(21, &[0; 5000])));
        let bytes = record(&body);
        let mut stream = Chunked::new([bytes]);
        assert!(matches!(
            read_client_hello(&mut stream, MAX_CLIENT_HELLO).await,
            Err(SniError::Oversized { .. })
        ));
    }

    #[tokio::test]
    async fn read_rejects_plain_http_on_the_first_byte() {
        let mut stream = Chunked::new([b"GET / HTTP/1.1\r\n\r\n".to_vec()]);
        assert!(matches!(
            read_client_hello(&mut stream, MAX_CLIENT_HELLO).await,
            Err(SniError::NotHandshake(b'G'))
        ));
    }

    #[test]
    fn hand_built_hello_parses() {
        let bytes = hello_with(&[
            ext(0xff01, &[0]),
            // signature_algorithms, which rustls insists on.
            ext(13, &vec16(&[0x08, 0x04])),
            sni_ext(&[(0, b"A-b_c.Example.org")]),
            alpn_ext(&[b"h2", b"http/1.1"]),
        ]);
        let hello = done(&bytes);
        assert_eq!(hello.sni.as_deref(), Some("a-b_c.example.org"));
        assert_eq!(hello.alpn, vec![b"h2".to_vec(), b"http/1.1".to_vec()]);
        assert_eq!(rustls_view(&bytes), hello);
    }

    #[test]
    fn hello_without_extensions() {
        assert_eq!(done(&record(&body_prefix())), ClientHello::default());
        // An empty extensions block is fine too.
        assert_eq!(done(&hello_with(&[])), ClientHello::default());
    }

    #[test]
    fn not_a_handshake() {
        for first in [0x17u8, 0x15, 0x14, 0x80, b'G', b'P'] {
            assert!(matches!(
                parse_client_hello(&[first]),
                Err(SniError::NotHandshake(t)) if t == first
            ));
        }
        // A later record of another type, before the hello is complete.
        let single = hello_with(&[sni_ext(&[(0, b"a.b")])]);
        let mut two = resplit(&single, &[10, 0]);
        two[RECORD_HEADER_LEN + 10] = 0x15;
        assert!(matches!(
            parse_client_hello(&two),
            Err(SniError::NotHandshake(0x15))
        ));
    }

    #[test]
    fn not_a_client_hello() {
        let mut bytes = hello_with(&[]);
        bytes[RECORD_HEADER_LEN] = 2; // ServerHello
        assert!(matches!(
            parse_client_hello(&bytes[..RECORD_HEADER_LEN + 1]),
            Err(SniError::NotClientHello(2))
        ));
    }

    #[test]
    fn record_errors() {
        assert_eq!(malformed(&[22, 2, 0]), Malformed::RecordVersion(0x0200));
        assert_eq!(malformed(&[22, 3, 1, 0, 0]), Malformed::EmptyRecord);
        assert_eq!(
            malformed(&[22, 3, 1, 0x40, 0x01]),
            Malformed::RecordTooLong(0x4001)
        );
    }

    #[test]
    fn truncated_lengths() {
        // Handshake length shorter than its content: the session id runs out.
        let mut body = body_prefix();
        body.truncate(40);
        assert_eq!(
            malformed(&record(&body)),
            Malformed::Truncated("session id")
        );
        assert_eq!(
            malformed(&record(&[3, 3, 0])),
            Malformed::Truncated("random")
        );
        // One stray byte where the extensions length would be.
        let mut body = body_prefix();
        body.push(0);
        assert_eq!(
            malformed(&record(&body)),
            Malformed::Truncated("extensions")
        );
        // Extensions length claims more than the body holds.
        let mut body = body_prefix();
        body.extend([0, 10, 0, 0]);
        assert_eq!(
            malformed(&record(&body)),
            Malformed::Truncated("extensions")
        );
        // Bytes after the extensions block.
        let mut body = body_prefix();
        body.extend([0, 0, 9]);
        assert_eq!(
            malformed(&record(&body)),
            Malformed::TrailingBytes("extensions")
        );
    }

    #[test]
    fn bad_fixed_fields() {
        let mut body = vec![3, 3];
        body.extend([0; 32]);
        body.extend(vec8(&[0; 33]));
        body.extend(vec16(&[0x13, 0x01]));
        body.extend(vec8(&[0]));
        assert_eq!(
            malformed(&record(&body)),
            Malformed::BadLength("session id")
        );

        for suites in [&[][..], &[0x13][..], &[0x13, 0x01, 0x13][..]] {
            let mut body = vec![3, 3];
            body.extend([0; 32]);
            body.extend(vec8(&[]));
            body.extend(vec16(suites));
            body.extend(vec8(&[0]));
            assert_eq!(
                malformed(&record(&body)),
                Malformed::BadLength("cipher suites")
            );
        }

        let mut body = vec![3, 3];
        body.extend([0; 32]);
        body.extend(vec8(&[]));
        body.extend(vec16(&[0x13, 0x01]));
        body.extend(vec8(&[]));
        assert_eq!(
            malformed(&record(&body)),
            Malformed::BadLength("compression methods")
        );
    }

    #[test]
    fn bad_extension_lengths() {
        // An extension whose length runs past the block.
        let mut exts = ext(0xff01, &[0]);
        exts[3] = 9;
        assert_eq!(
            malformed(&hello_with(&[exts])),
            Malformed::Truncated("extension")
        );
        // Half an extension header.
        assert_eq!(
            malformed(&hello_with(&[vec![0]])),
            Malformed::Truncated("extension type")
        );
        // server name list shorter than the extension.
        let mut sni = sni_ext(&[(0, b"a.b")]);
        sni.push(0);
        let len = u16::from_be_bytes([sni[2], sni[3]]) + 1;
        sni[2..4].copy_from_slice(&len.to_be_bytes());
        assert_eq!(
            malformed(&hello_with(&[sni])),
            Malformed::TrailingBytes("server name list")
        );
        // server name list longer than the extension.
        let mut sni = sni_ext(&[(0, b"a.b")]);
        sni[5] += 1;
        assert_eq!(
            malformed(&hello_with(&[sni])),
            Malformed::Truncated("server name list")
        );
        // Name longer than the list.
        let mut sni = sni_ext(&[(0, b"a.b")]);
        sni[8] += 1;
        assert_eq!(
            malformed(&hello_with(&[sni])),
            Malformed::Truncated("server name")
        );
        assert_eq!(
            malformed(&hello_with(&[ext(EXT_SERVER_NAME, &[])])),
            Malformed::Truncated("server name list")
        );
        assert_eq!(
            malformed(&hello_with(&[sni_ext(&[])])),
            Malformed::BadLength("server name list")
        );
    }

    #[test]
    fn server_name_rules() {
        assert_eq!(
            malformed(&hello_with(&[
                sni_ext(&[(0, b"a.b")]),
                sni_ext(&[(0, b"c.d")])
            ])),
            Malformed::DuplicateExtension("server_name")
        );
        assert_eq!(
            malformed(&hello_with(&[sni_ext(&[(1, b"a.b")])])),
            Malformed::NameType(1)
        );
        assert_eq!(
            malformed(&hello_with(&[sni_ext(&[(0, b"a.b"), (0, b"c.d")])])),
            Malformed::MultipleHostNames
        );
        assert_eq!(
            malformed(&hello_with(&[sni_ext(&[(0, b"a..b")])])),
            Malformed::ServerName(NameError::EmptyLabel)
        );
    }

    #[test]
    fn host_name_validation() {
        assert_eq!(
            normalize_host_name(b"A.Example.COM").unwrap(),
            "a.example.com"
        );
        assert_eq!(normalize_host_name(b"*.x-y_z.9").unwrap(), "*.x-y_z.9");
        assert_eq!(normalize_host_name(b""), Err(NameError::Empty));
        for bad in [&b".a.b"[..], b"a.b.", b"a..b", b"."] {
            assert_eq!(
                normalize_host_name(bad),
                Err(NameError::EmptyLabel),
                "{bad:?}"
            );
        }
        for (bad, byte) in [
            (&b"a b"[..], b' '),
            (b"a/b", b'/'),
            (b"a\0b", 0),
            (b"caf\xc3\xa9", 0xc3),
            (b"a:443", b':'),
        ] {
            assert_eq!(normalize_host_name(bad), Err(NameError::BadByte(byte)));
        }
        let label = [b'a'; 63];
        let name = [
            &label[..],
            b".",
            &label[..],
            b".",
            &label[..],
            b".",
            &label[..61],
        ]
        .concat();
        assert_eq!(name.len(), 253);
        assert!(normalize_host_name(&name).is_ok());
        let long = [&name[..], b"a"].concat();
        assert_eq!(normalize_host_name(&long), Err(NameError::TooLong(254)));
        assert_eq!(
            normalize_host_name(&[b'a'; 64]),
            Err(NameError::LabelTooLong(64))
        );
    }

    #[test]
    fn alpn_rules() {
        assert_eq!(
            malformed(&hello_with(&[alpn_ext(&[b"h2"]), alpn_ext(&[b"h2"])])),
            Malformed::DuplicateExtension("ALPN")
        );
        assert_eq!(
            malformed(&hello_with(&[alpn_ext(&[])])),
            Malformed::BadLength("ALPN protocol list")
        );
        assert_eq!(
            malformed(&hello_with(&[alpn_ext(&[b"h2", b""])])),
            Malformed::BadLength("ALPN protocol name")
        );
        let mut alpn = alpn_ext(&[b"h2"]);
        alpn[6] = 5;
        assert_eq!(
            malformed(&hello_with(&[alpn])),
            Malformed::Truncated("ALPN protocol name")
        );
    }

    #[test]
    fn done_reports_the_consumed_length() {
        // A record that carries more than the hello: Done stops at the message.
        let single = hello_with(&[sni_ext(&[(0, b"a.b")])]);
        let mut padded = single.clone();
        padded.extend_from_slice(&[0xaa; 3]);
        let len = u16::from_be_bytes([padded[3], padded[4]]) + 3;
        padded[3..5].copy_from_slice(&len.to_be_bytes());
        match parse_client_hello(&padded).expect("parse") {
            ParseState::Done { consumed, hello } => {
                assert_eq!(consumed, single.len());
                assert_eq!(hello.sni.as_deref(), Some("a.b"));
            }
            other => panic!("{other:?}"),
        }
        // And the prefix bound points at the message end, not the record end.
        match parse_client_hello(&padded[..single.len() - 1]).expect("parse") {
            ParseState::NeedMore { total } => assert_eq!(total, single.len()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn garbage_never_panics() {
        // A cheap deterministic fuzz: mutate a real hello byte by byte.
        let bytes = rustls_hello(Some("fuzz.example.com"), &[b"h2"], Some(200));
        for i in 0..bytes.len() {
            for v in [0u8, 1, 0x7f, 0xff] {
                let mut m = bytes.clone();
                m[i] = v;
                let _ = parse_client_hello(&m);
                let _ = parse_client_hello(&m[..i]);
            }
        }
    }
}
