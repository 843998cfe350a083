//! Sending a batch and checking the kernel's answer to every request.
//!
//! The kernel runs the whole batch inside our `sendmsg` (netlink hands a
//! message to the kernel's side in the sender's context): it checks each
//! request, commits all of them or none, and queues the replies on our
//! socket before `sendmsg` returns, in request order: an ack (error 0) for
//! each request that asked for one and an error for each one it refused.
//! Errors about the batch as a whole (no nf_tables, no permission, a failed
//! commit) answer the BATCH_BEGIN message instead, and may be all there is.

use std::io;
use std::time::Duration;

use netlink_sys::protocols::NETLINK_NETFILTER;
use netlink_sys::{Socket, SocketAddr};
use nix::sys::socket::{GetSockOpt, SetSockOpt, getsockopt, setsockopt, sockopt};
use nix::sys::time::TimeVal;

use crate::NftError;
use crate::encode::Batch;
use crate::uapi::*;

/// How long to wait for a reply that should already be queued when
/// `sendmsg` returns: only a guard against blocking PID1 forever.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

pub(crate) fn apply(batch: &Batch) -> Result<(), NftError> {
    let socket = open(batch)?;
    let sent = socket
        .send_to(&batch.bytes, &SocketAddr::new(0, 0), 0)
        .map_err(|source| NftError::Send {
            len: batch.bytes.len(),
            source,
        })?;
    if sent != batch.bytes.len() {
        return Err(NftError::Send {
            len: batch.bytes.len(),
            source: io::Error::new(io::ErrorKind::WriteZero, format!("only {sent} bytes sent")),
        });
    }
    let mut acks = Acks::new(batch);
    while acks.pending() > 0 {
        let datagram = receive(&socket).map_err(|e| match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => NftError::NoAck {
                pending: acks.pending(),
                total: batch.requests.len(),
                timeout: REPLY_TIMEOUT,
            },
            _ => NftError::Recv(e),
        })?;
        acks.read(&datagram)?;
    }
    // Every request acked is not the end yet: a kernel that loads a module
    // for a request has been reported to ack it early, ahead of the real
    // answer, which can be a refusal (google/nftables issue 329); and a
    // batch without requests gets no ack, only maybe an error. Whatever
    // else the kernel says is queued by now, so read it without waiting.
    socket
        .set_non_blocking(true)
        .map_err(|source| NftError::Socket {
            what: "setting O_NONBLOCK",
            source,
        })?;
    loop {
        match receive(&socket) {
            Ok(datagram) => acks.read(&datagram)?,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) => return Err(NftError::Recv(e)),
        }
    }
}

/// The next datagram from the kernel.
fn receive(socket: &Socket) -> io::Result<Vec<u8>> {
    loop {
        let (datagram, from) = socket.recv_from_full()?;
        // Only the kernel (port 0) speaks for nf_tables; another process
        // could send to our port.
        if from.port_number() == 0 {
            return Ok(datagram);
        }
    }
}

fn open(batch: &Batch) -> Result<Socket, NftError> {
    let err = |what| move |source| NftError::Socket { what, source };
    let mut socket = Socket::new(NETLINK_NETFILTER).map_err(err("opening"))?;
    socket.bind_auto().map_err(err("binding"))?;
    // Errors echo only the refused request's header, not all of it.
    socket
        .set_cap_ack(true)
        .map_err(err("setting NETLINK_CAP_ACK"))?;
    // The kernel's error text, when it has one.
    socket
        .set_ext_ack(true)
        .map_err(err("setting NETLINK_EXT_ACK"))?;
    let timeout = TimeVal::new(REPLY_TIMEOUT.as_secs().cast_signed(), 0);
    setsockopt(&socket, sockopt::ReceiveTimeout, &timeout).map_err(|e| NftError::Socket {
        what: "setting SO_RCVTIMEO",
        source: e.into(),
    })?;
    // The whole batch must fit the send buffer, and every reply the receive
    // buffer (the kernel queues them all before we read one; each costs
    // well under 1 KiB of socket memory). The defaults (~200 KiB) hold a few
    // hundred requests; beyond, raise them.
    let send = batch.bytes.len() + 4096;
    let recv = batch.requests.len() * 1024 + 4096;
    raise_buffer(&socket, sockopt::SndBufForce, sockopt::SndBuf, send);
    raise_buffer(&socket, sockopt::RcvBufForce, sockopt::RcvBuf, recv);
    Ok(socket)
}

/// Raises a socket buffer to `size` if it is smaller. The FORCE option
/// passes the system maximum but needs CAP_NET_ADMIN in the initial user
/// namespace; without it the plain one applies, capped. Failure is not
/// reported here: a batch that still does not fit fails to send with
/// EMSGSIZE, and lost replies show as ENOBUFS.
fn raise_buffer<F, P>(socket: &Socket, force: F, plain: P, size: usize)
where
    F: SetSockOpt<Val = usize>,
    P: SetSockOpt<Val = usize> + GetSockOpt<Val = usize> + Copy,
{
    if getsockopt(socket, plain).is_ok_and(|current| current >= size) {
        return;
    }
    if setsockopt(socket, force, &size).is_err() {
        let _ = setsockopt(socket, plain, &size);
    }
}

/// The replies still expected.
#[derive(Debug)]
pub(crate) struct Acks<'a> {
    batch: &'a Batch,
    acked: Vec<bool>,
}

impl<'a> Acks<'a> {
    pub(crate) fn new(batch: &'a Batch) -> Self {
        Self {
            batch,
            acked: vec![false; batch.requests.len()],
        }
    }

    /// How many requests are not acked yet.
    pub(crate) fn pending(&self) -> usize {
        self.acked.iter().filter(|a| !**a).count()
    }

    /// Reads one datagram of replies; the first refusal is the error (the
    /// kernel then applied none of the batch: the replies after it do not
    /// matter).
    pub(crate) fn read(&mut self, mut datagram: &[u8]) -> Result<(), NftError> {
        while datagram.len() >= NLMSG_HDRLEN {
            let len = read_u32(datagram, 0) as usize;
            if len < NLMSG_HDRLEN || len > datagram.len() {
                return Err(NftError::MalformedReply("message length out of bounds"));
            }
            let ty = read_u16(datagram, 4);
            let flags = read_u16(datagram, 6);
            let seq = read_u32(datagram, 8);
            if ty == NLMSG_ERROR {
                self.error_message(seq, flags, &datagram[NLMSG_HDRLEN..len])?;
            }
            datagram = &datagram[len.next_multiple_of(4).min(datagram.len())..];
        }
        Ok(())
    }

    /// An NLMSG_ERROR payload: `struct nlmsgerr` (the negated errno, 0 for
    /// an ack, then the request's header), maybe extended-ack attributes.
    fn error_message(&mut self, seq: u32, flags: u16, payload: &[u8]) -> Result<(), NftError> {
        if payload.len() < 4 + NLMSG_HDRLEN {
            return Err(NftError::MalformedReply("short error message"));
        }
        let code = read_u32(payload, 0).cast_signed();
        let errno = code.checked_neg().filter(|e| *e >= 0);
        let Some(errno) = errno else {
            return Err(NftError::MalformedReply("positive error code"));
        };
        if seq == self.batch.begin_seq {
            // Only errors answer BATCH_BEGIN (we ask no ack for it).
            if errno != 0 {
                return Err(NftError::BatchRejected {
                    errno,
                    detail: ext_ack_message(flags, payload),
                });
            }
            return Ok(());
        }
        let Some(i) = self.batch.requests.iter().position(|r| r.seq == seq) else {
            return Ok(()); // not about this batch
        };
        if errno != 0 {
            return Err(NftError::Rejected {
                request: self.batch.requests[i].what.clone(),
                errno,
                detail: ext_ack_message(flags, payload),
            });
        }
        self.acked[i] = true;
        Ok(())
    }
}

/// NLMSGERR_ATTR_MSG, if the kernel gave one.
fn ext_ack_message(flags: u16, payload: &[u8]) -> Option<String> {
    if flags & NLM_F_ACK_TLVS == 0 {
        return None;
    }
    // The echoed request: its header only if capped, else all of it.
    let echoed = if flags & NLM_F_CAPPED != 0 {
        NLMSG_HDRLEN
    } else {
        read_u32(payload, 4) as usize
    };
    let mut attrs = payload.get((4 + echoed).next_multiple_of(4)..)?;
    while attrs.len() >= NLA_HDRLEN {
        let len = usize::from(read_u16(attrs, 0));
        let ty = read_u16(attrs, 2) & NLA_TYPE_MASK;
        let value = attrs.get(NLA_HDRLEN..len)?;
        if ty == NLMSGERR_ATTR_MSG {
            let text = value.split(|b| *b == 0).next().unwrap_or_default();
            return Some(String::from_utf8_lossy(text).into_owned());
        }
        attrs = attrs.get(len.next_multiple_of(4).min(attrs.len())..)?;
    }
    None
}

/// Host-order fields of netlink headers; callers check the length first.
fn read_u16(bytes: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([bytes[at], bytes[at + 1]])
}

fn read_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}
