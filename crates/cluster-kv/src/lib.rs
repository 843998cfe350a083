//! Shared state for gateway replicas, on a real etcd cluster, sealed.
//!
//! Several replicas (each a confidential VM) share registrations,
//! certificates with their private keys, locks and connection counts
//! through etcd. etcd may run on a host the replicas do not trust, so every
//! value is sealed with AES-256-GCM under a [`SealKey`] that all replicas
//! derive from their shared app key: the host cannot read values, change
//! them, or move one to another key or namespace (the full etcd key is
//! authenticated with it) without [`KvError::Tampered`].
//!
//! What the host still sees and can do, by design of any remote store:
//! - **Key names are in the clear**, as are value sizes, write times,
//!   revisions and which keys share a lease. Keep secrets out of key names
//!   (use ids, not domain-plus-token strings).
//! - It can delete values, withhold them, stall the cluster, or put back an
//!   **older sealed value of the same key** (a rollback): sealing proves a
//!   value was written by a replica for that key, not that it is the newest.
//!   Treat stored state as authentic but possibly stale.
//! - Locks are only as exclusive as etcd is honest; use
//!   [`LockGuard::revision`] as a fencing token where it matters.
//!
//! Layout under the namespace (e.g. `/dstack-gateway/<app-id>/`):
//! `kv/<key>` for values, `lock/<name>` for lock records. Values are
//! `1 || nonce(12) || AES-256-GCM(JSON)`.
//!
//! Availability: the client balances over all endpoints and retries a
//! failed call on another member until [`ConnectOptions::request_timeout`];
//! watches resume from their last revision; leases are refreshed through
//! any member. A 3-member cluster keeps working with one member down.
//!
//! Transport: plain `http://` or `https://` with [`TlsConfig`] (CA, optional
//! client certificate). TLS protects against the network, not against
//! etcd's host, which is what sealing is for.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod client;
mod error;
mod lease;
mod lock;
mod seal;
mod status;
mod watch;

#[doc(hidden)]
pub mod testing;

pub use client::{ClientIdentity, ClusterKv, ConnectOptions, Entry, Snapshot, TlsConfig};
pub use error::KvError;
pub use lease::Lease;
pub use lock::LockGuard;
pub use seal::SealKey;
pub use status::{ClusterStatus, MemberInfo};
pub use watch::{Event, Watch};
