//! Progress reports of an image build, for the CLI's progress display.

use std::path::PathBuf;

/// One step of an image build, reported as it happens.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BuildProgress {
    /// Package `index` of `total` (1-based) is about to be fetched;
    /// `bytes` is its pinned .deb size.
    Downloading {
        /// 1-based position among the packages this build uses.
        index: usize,
        /// Number of packages this build uses.
        total: usize,
        /// Package name.
        package: String,
        /// Size of the .deb in bytes.
        bytes: u64,
    },
    /// Package `index` of `total` is present and its sha256 verified.
    Downloaded {
        /// 1-based position among the packages this build uses.
        index: usize,
        /// Number of packages this build uses.
        total: usize,
        /// Package name.
        package: String,
        /// Size of the .deb in bytes.
        bytes: u64,
        /// It came from the cache, not the network.
        cached: bool,
    },
    /// A pinned package is no longer served; a newer version is used.
    Superseded(crate::Substitution),
    /// A verified package is being unpacked.
    Extracting {
        /// Package name.
        package: String,
    },
    /// Our kernel is being built.
    Kernel(crate::kernel::KernelProgress),
    /// The kernel is ready (built now or taken from the cache).
    KernelReady {
        /// Its release.
        release: String,
        /// It came from the cache.
        cached: bool,
    },
    /// The kernel modules were resolved and decompressed.
    Modules {
        /// Number of modules in the load order.
        count: usize,
    },
    /// The initramfs archive was written.
    Cpio {
        /// Number of archive entries.
        entries: usize,
        /// Uncompressed archive size.
        bytes: u64,
    },
    /// The initramfs was compressed.
    Compressed {
        /// Compressed size.
        bytes: u64,
    },
    /// The finished image is in place.
    Written {
        /// The image directory.
        dir: PathBuf,
    },
}
