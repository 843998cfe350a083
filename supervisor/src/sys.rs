//! The supervisor's only `unsafe`: registering a pidfd with tokio's reactor.
//!
//! JUSTIFICATION: tokio 1.54 deprecated the safe `AsyncFd::new` family as
//! unsound (a generic `AsRawFd` may return different or closed fds) and its
//! replacement, `AsyncFd::register_with_interest`, is `unsafe`. Waiting for
//! a process through its pidfd is what lets us watch QEMUs that are not our
//! children (re-adopted after a restart) without polling, so we keep it,
//! wrapped here for an `OwnedFd`, for which the contract always holds.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::OwnedFd;

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// Registers an owned fd for readability with the current tokio runtime.
pub(crate) fn async_readable(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: `register_with_interest` requires that `as_raw_fd()` of the
    // inner value returns one valid, open fd referring to the same open file
    // description for the whole life of the `AsyncFd`. An `OwnedFd` owns its
    // fd exclusively, returns the same number on every call, and closes it
    // only when dropped — which happens only when the `AsyncFd` itself is
    // dropped (or `into_inner` hands it back), so the fd cannot be closed or
    // reused while registered.
    unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }.map_err(|e| e.into_parts().1)
}
