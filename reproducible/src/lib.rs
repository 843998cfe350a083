//! The dstack guest OS image, built deterministically from pinned inputs.
//!
//! An image is a directory with `bzImage` (our own kernel, compiled from the
//! pinned `linux-source-7.x` with the fragments in `kernel/`, everything
//! built in; or Debian's stock cloud kernel, to compare),
//! `initramfs.cpio.lz4` (the static dstack-init as `/init`, CA roots, a
//! library-complete `/sbin/mke2fs`, and with Debian's kernel the modules the
//! guest loads; no shell outside the -dev variant), `ovmf.fd`,
//! `metadata.json`, `sha256sum.txt` and `digest.txt` (the OS image hash,
//! upstream dstack's rule). Every input is pinned in `inputs.lock` by version
//! and sha256, and the same inputs give the same bytes: [`rebuild_check`]
//! builds the image twice from a source tree (two directories, two users,
//! other umask, locale and time zone) and compares every output byte.
//!
//! The initramfs contract with dstack-init (Debian's kernel only; ours has
//! no modules and no load-order file): modules live decompressed under
//! `/lib/modules/<kernel_version>/`, and `load-order` there lists, one per
//! line and relative to that directory, the files to `finit_module` in order
//! (`tdx_guest` fails with ENODEV outside a TDX guest).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod build;
mod certs;
mod compare;
mod cpio;
mod deb;
mod download;
mod elf;
mod error;
mod init_record;
mod inputs;
mod kernel;
mod lz4;
mod manifest;
mod modules;
mod progress;
mod rebuild;
mod seal;
mod stage;
mod supersede;
mod tool;
mod tree;

// The public interface is:
pub use build::{BuildOptions, CMDLINE, KernelChoice, build_image, fetch_pinned};
pub use compare::{Comparison, Difference, Side, compare_bytes, compare_dirs, first_difference};
pub use error::{BuildError, RebuildError};
pub use init_record::record_path as init_record_path;
pub use inputs::{
    ENGINE_IMAGE_PATH, EngineImage, LibseccompSource, PinnedPackage, Role, RustToolchain,
    engine_image, inputs_lock_text, libseccomp_source, pinned_packages, rust_toolchain,
};
pub use kernel::{
    BuiltKernel, FRAGMENTS, Fragment, KernelBuild, KernelProgress, build_kernel, cache_key,
    requested_options, toolchain_id,
};
pub use manifest::{
    BIOS_FILE, DIGEST_FILE, INITRD_FILE, ImageInputs, ImageManifest, InitBuild, InitInput,
    InputPackage, KERNEL_FILE, KernelBuildInput, METADATA_FILE, SHA256SUM_FILE, image_digest,
    list_images,
};
pub use progress::BuildProgress;
pub use rebuild::{
    BuildInfo, Explained, RebuildMode, RebuildOptions, RebuildProgress, RebuildReport, RebuildStep,
    rebuild_check,
};
pub use seal::{SealOptions, seal_image};
pub use supersede::Substitution;
