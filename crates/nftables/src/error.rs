use std::io;
use std::time::Duration;

/// Everything that can go wrong building or applying a ruleset.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("invalid interface name {name:?}: {reason}")]
    InvalidIfName { name: String, reason: &'static str },

    #[error("invalid IPv4 prefix length /{len}: at most 32")]
    InvalidPrefixLen { len: u8 },

    #[error("invalid IPv4 network {text:?}: expected a.b.c.d/len")]
    InvalidCidr { text: String },

    /// Opening or configuring the NETLINK_NETFILTER socket failed
    /// (`EPROTONOSUPPORT` on opening: the kernel has no nfnetlink).
    #[error("nf_tables netlink socket: {what}: {source}")]
    Socket {
        what: &'static str,
        #[source]
        source: io::Error,
    },

    #[error("sending the nf_tables batch ({len} bytes): {source}")]
    Send {
        len: usize,
        #[source]
        source: io::Error,
    },

    #[error("receiving nf_tables acknowledgements: {0}")]
    Recv(#[source] io::Error),

    /// The kernel never answered some requests: not expected, since it
    /// processes the batch while `sendmsg` runs; a guard against hanging.
    #[error("no acknowledgement for {pending} of {total} nf_tables requests within {timeout:?}")]
    NoAck {
        pending: usize,
        total: usize,
        timeout: Duration,
    },

    #[error("malformed netlink reply from the kernel: {0}")]
    MalformedReply(&'static str),

    /// The kernel refused one request of the batch; nothing of the batch was
    /// applied. `request` is the request in nft's syntax, e.g.
    /// `add rule ip dstack forward masquerade`.
    #[error("nf_tables refused `{request}`: {}{}", errno_text(*.errno), detail_text(.detail))]
    Rejected {
        request: String,
        /// The positive errno, e.g. `EOPNOTSUPP` (95).
        errno: i32,
        /// The kernel's extended-ack message, when it gave one.
        detail: Option<String>,
    },

    /// The kernel refused the batch as a whole (answering its
    /// `NFNL_MSG_BATCH_BEGIN`): no nf_tables support (`EOPNOTSUPP`), no
    /// `CAP_NET_ADMIN` (`EPERM`), or the commit failed. Nothing was applied.
    #[error("nf_tables refused the batch: {}{}", errno_text(*.errno), detail_text(.detail))]
    BatchRejected { errno: i32, detail: Option<String> },
}

impl NftError {
    /// The kernel's errno, for the errors that carry one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NftError::Rejected { errno, .. } | NftError::BatchRejected { errno, .. } => {
                Some(*errno)
            }
            NftError::Socket { source, .. }
            | NftError::Send { source, .. }
            | NftError::Recv(source) => source.raw_os_error(),
            _ => None,
        }
    }

    /// Whether the kernel lacks nf_tables altogether (no nfnetlink, or no
    /// nf_tables subsystem even after trying to load its module).
    pub fn is_unsupported(&self) -> bool {
        match self {
            NftError::Socket { source, .. } => {
                source.raw_os_error() == Some(nix::errno::Errno::EPROTONOSUPPORT as i32)
            }
            NftError::BatchRejected { errno, .. } => *errno == nix::errno::Errno::EOPNOTSUPP as i32,
            _ => false,
        }
    }
}

fn errno_text(errno: i32) -> String {
    io::Error::from_raw_os_error(errno).to_string()
}

fn detail_text(detail: &Option<String>) -> String {
    match detail {
        Some(text) => format!(" ({text})"),
        None => String::new(),
    }
}
