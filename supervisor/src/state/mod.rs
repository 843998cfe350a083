//! Everything the supervisor keeps on disk, and how it is written.
//!
//! Layout under the state dir: `images/<name>/`, `vms/<id>/` (see
//! [`VmDir`]), `cids.json`, `uploads/` (blobs uploaded for a deploy, see
//! [`blobs`]). Every file that must survive a crash is written
//! with [`write_atomic`].

mod atomic;
pub mod blobs;
mod cids;
mod manifest;
mod status;
mod vmdir;

pub use atomic::{write_atomic, write_json_atomic};
pub use cids::{CidAllocator, FIRST_CID};
pub use manifest::{Desired, Manifest};
pub use status::{GuestStatus, MAX_EVENTS};
pub use vmdir::VmDir;
