//! The dstack guest OS image, built deterministically from pinned inputs.
//!
//! An image is a directory with `bzImage` (Debian's 6.12 cloud kernel, as
//! shipped), `initramfs.cpio.gz` (the static dstack-init as `/init`, the
//! kernel modules the guest loads, CA roots and a library-complete
//! `/sbin/mke2fs`; no shell outside the -dev variant), `ovmf.fd`,
//! `metadata.json`, `sha256sum.txt` and `digest.txt` (the OS image hash,
//! upstream dstack's rule). Every input is pinned in `inputs.lock` by version
//! and sha256, and the same inputs give the same bytes.
//!
//! The initramfs contract with dstack-init: modules live decompressed under
//! `/lib/modules/<kernel_version>/`, and `load-order` there lists, one per
//! line and relative to that directory, the files to `finit_module` in order
//! (`tdx_guest` fails with ENODEV outside a TDX guest).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod build;
mod certs;
mod cpio;
mod deb;
mod download;
mod elf;
mod error;
mod inputs;
mod manifest;
mod modules;
mod progress;
mod stage;
mod supersede;
mod tree;

// The public interface is:
pub use build::{BuildOptions, CMDLINE, build_image};
pub use error::BuildError;
pub use inputs::{PinnedPackage, Role, pinned_packages};
pub use manifest::{
    BIOS_FILE, DIGEST_FILE, INITRD_FILE, ImageInputs, ImageManifest, InitInput, InputPackage,
    KERNEL_FILE, METADATA_FILE, SHA256SUM_FILE, image_digest, list_images,
};
pub use progress::BuildProgress;
pub use supersede::Substitution;
