//! The one error type of the crate.

use std::io;

/// Why formatting or opening a LUKS2 volume failed.
///
/// Header problems come in two kinds: [`Luks2Error::Corrupt`] (the bytes do
/// not form a consistent LUKS2 header: a bad checksum, a missing field, copies
/// that disagree) and [`Luks2Error::Unsupported`] (a well-formed header that
/// asks for something this crate refuses, such as another cipher or KDF). A
/// header that passes both but does not open with the passphrase is
/// [`Luks2Error::WrongPassphrase`]. No variant ever carries key material.
#[derive(Debug, thiserror::Error)]
pub enum Luks2Error {
    /// Reading or writing the device failed.
    #[error("{context}")]
    Io {
        /// What was being read or written.
        context: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The header is not a consistent LUKS2 header.
    #[error("corrupt LUKS2 header: {what}: {detail}")]
    Corrupt {
        /// The field or structure at fault, e.g. `primary header checksum`
        /// or `keyslots.0.kdf.salt`.
        what: String,
        /// What is wrong with it.
        detail: String,
    },
    /// The header is well-formed but asks for something outside the one
    /// layout this crate accepts.
    #[error("unsupported LUKS2 header: {what} is {found}; only {expected} is accepted")]
    Unsupported {
        /// The field at fault, as a JSON path (`keyslots.0.area.encryption`)
        /// or a binary header field (`secondary header hdr_offset`).
        what: String,
        /// What the header has there.
        found: String,
        /// What this crate accepts there.
        expected: String,
    },
    /// The header is valid but the passphrase does not open its keyslot: the
    /// volume key recovered with it does not match the header's digest.
    #[error("wrong passphrase: the LUKS2 keyslot does not open with it")]
    WrongPassphrase,
    /// The device cannot hold the metadata and a data segment.
    #[error("device of {size} bytes is too small for LUKS2: it needs at least {need} bytes")]
    TooSmall {
        /// The device's size in bytes.
        size: u64,
        /// The smallest size accepted.
        need: u64,
    },
}

impl Luks2Error {
    pub(crate) fn corrupt(what: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::Corrupt {
            what: what.into(),
            detail: detail.into(),
        }
    }

    pub(crate) fn unsupported(
        what: impl Into<String>,
        found: impl Into<String>,
        expected: impl Into<String>,
    ) -> Self {
        Self::Unsupported {
            what: what.into(),
            found: found.into(),
            expected: expected.into(),
        }
    }

    pub(crate) fn io(context: &'static str) -> impl FnOnce(io::Error) -> Self {
        move |source| Self::Io { context, source }
    }
}
