//! The one error type of an image build.
//!
//! Messages are short and never repeat their `#[source]`: the CLI walks the
//! chain and prints each cause once.

use std::io;
use std::path::PathBuf;

/// Why an image build, or reading built images, failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The checked-in `inputs.lock` does not parse or is inconsistent.
    #[error("invalid inputs.lock: {reason}")]
    InputsLock {
        /// What is wrong with it.
        reason: String,
    },
    /// The image name is not a single plain file name.
    #[error("invalid image name {name:?}: use letters, digits, '.', '_' and '-' only")]
    InvalidName {
        /// The name that was given.
        name: String,
    },
    /// A host tool (apt-get, dpkg-deb) could not be started.
    #[error("cannot run {tool}")]
    Spawn {
        /// The program that failed to start.
        tool: &'static str,
        /// Why it failed to start.
        #[source]
        source: io::Error,
    },
    /// `apt-get download` exited with an error.
    #[error(
        "apt-get download {packages} failed (are their suites in the apt sources, and \
         `apt-get update` run?): {stderr}"
    )]
    Download {
        /// The requested `NAME=VERSION`s, space-separated.
        packages: String,
        /// apt-get's own message.
        stderr: String,
    },
    /// A pinned package is no longer served by the Debian mirror (and is not
    /// cached), and the build does not allow a newer one.
    #[error(
        "{package} is no longer served by Debian (superseded) and is not in the cache: bump the pin in reproducible/inputs.lock, or build with --allow-superseded to take the newest version (the image then differs from the locked one)"
    )]
    Superseded {
        /// `name=version`.
        package: String,
    },
    /// `apt-get download` succeeded but left no .deb for a package.
    #[error("apt-get download {package} left no .deb in {dir}")]
    DownloadMissing {
        /// Package name.
        package: String,
        /// The directory it ran in.
        dir: PathBuf,
    },
    /// A downloaded or cached .deb does not have its pinned sha256; the file
    /// has been deleted.
    #[error("{package}: sha256 of {path} is {actual}, pinned {expected}; the file was deleted")]
    Sha256Mismatch {
        /// Package name.
        package: String,
        /// The sha256 pinned in inputs.lock.
        expected: String,
        /// The sha256 of the file on disk.
        actual: String,
        /// The file that was refused (and removed).
        path: PathBuf,
    },
    /// `dpkg-deb -x` failed.
    #[error("cannot extract {package}: {stderr}")]
    Extract {
        /// Package name.
        package: String,
        /// dpkg-deb's own message.
        stderr: String,
    },
    /// A file the image needs is not in the package that should ship it.
    #[error("{path} is missing from package {package}")]
    MissingFile {
        /// Package name.
        package: String,
        /// The path inside the package.
        path: String,
    },
    /// A symlink inside an extracted package points outside it or loops.
    #[error("symlink {path} does not resolve inside the extracted packages")]
    BadSymlink {
        /// The link, relative to the package root.
        path: String,
    },
    /// Reading a file or directory failed.
    #[error("cannot read {path}")]
    Read {
        /// What was being read.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// Writing a file or directory failed.
    #[error("cannot write {path}")]
    Write {
        /// What was being written.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// A module the guest needs is not a loadable module of the kernel.
    #[error("kernel module {name} is not in the kernel package")]
    ModuleMissing {
        /// Module name.
        name: String,
    },
    /// The module dependencies contain a cycle.
    #[error("kernel module dependency cycle through {name}")]
    ModuleCycle {
        /// A module on the cycle.
        name: String,
    },
    /// A compressed kernel module could not be decompressed.
    #[error("cannot decompress kernel module {path}: {reason}")]
    Decompress {
        /// The module file.
        path: PathBuf,
        /// The decoder's message.
        reason: String,
    },
    /// An ELF file the image ships could not be parsed.
    #[error("{path} is not a valid ELF file: {reason}")]
    Elf {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        reason: String,
    },
    /// A shared library that a shipped binary needs is in no pinned package.
    #[error("{library}, needed by {needed_by}, is in no pinned package")]
    MissingLibrary {
        /// The DT_NEEDED soname or interpreter path.
        library: String,
        /// The binary or library that needs it.
        needed_by: String,
    },
    /// The init binary is dynamically linked: the guest has no libc for it.
    #[error("init binary {path} is not statically linked")]
    InitNotStatic {
        /// The init binary.
        path: PathBuf,
    },
    /// A root filesystem to seal holds a device node, socket or FIFO.
    #[error("{path}: only directories, regular files and symlinks can go into the initramfs")]
    UnsupportedNode {
        /// The device node, socket or FIFO found.
        path: PathBuf,
    },
    /// Two inputs put different things at the same initramfs path.
    #[error("two inputs both provide /{path}")]
    Conflict {
        /// The initramfs path.
        path: String,
    },
    /// An image's metadata.json does not parse.
    #[error("invalid image metadata {path}")]
    Metadata {
        /// The metadata.json file.
        path: PathBuf,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
    /// An image directory's name differs from the name in its metadata.
    #[error("image directory {dir} holds an image named {name:?}")]
    NameMismatch {
        /// The image directory.
        dir: PathBuf,
        /// The name in its metadata.json.
        name: String,
    },
    /// A kernel config fragment has a line that is not `CONFIG_X=value`,
    /// asks for a module, or contradicts another fragment.
    #[error("kernel fragment {fragment} line {line}: {reason}")]
    KernelFragment {
        /// The fragment's file name.
        fragment: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// Kconfig dropped options the fragments ask for (their dependencies
    /// are off): the kernel would silently lack them.
    #[error("the kernel config does not have what the fragments ask for: {}", unmet.join(", "))]
    KernelConfig {
        /// `CONFIG_X=want (got value)` for each.
        unmet: Vec<String>,
    },
    /// dstack-init was compiled with another Rust toolchain than the one
    /// `inputs.lock` pins.
    #[error(
        "dstack-init was built with rustc {used}, but reproducible/inputs.lock pins {pinned}: \
         build it with the pinned toolchain (scripts/build-init checks it; rustup cannot \
         download here) or bump [rust] in the lock"
    )]
    ToolchainMismatch {
        /// `release (commit-hash)` pinned in the lock.
        pinned: String,
        /// `release (commit-hash)` that was used.
        used: String,
    },
    /// The init binary's build record (`<init>.build.json`) is unreadable.
    #[error("invalid init build record {path}")]
    InitRecord {
        /// The record file.
        path: PathBuf,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
    /// The build record beside the init binary describes another binary.
    #[error(
        "{record} describes a dstack-init with sha256 {recorded}, not {init} (sha256 {actual}): \
         rebuild it with scripts/build-init"
    )]
    InitRecordMismatch {
        /// The record file.
        record: PathBuf,
        /// The init binary.
        init: PathBuf,
        /// sha256 the record names.
        recorded: String,
        /// sha256 of the binary.
        actual: String,
    },
    /// A step of the kernel build failed.
    #[error("kernel build `make {step}` failed (log: {}):\n{tail}", log.display())]
    KernelBuild {
        /// The make arguments.
        step: String,
        /// The full build log.
        log: PathBuf,
        /// Its last lines.
        tail: String,
    },
}

impl BuildError {
    /// Maps an I/O error while reading `path`.
    pub(crate) fn read(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| Self::Read { path, source }
    }

    /// Maps an I/O error while writing `path`.
    pub(crate) fn write(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| Self::Write { path, source }
    }
}

/// Why a rebuild check could not run to a verdict. (Differing outputs are
/// not an error: they are the check's answer, in its report.)
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RebuildError {
    /// Preparing a build or reading its outputs failed.
    #[error(transparent)]
    Build(#[from] BuildError),
    /// The source directory is not a dstack-rs tree.
    #[error(
        "{path} is not a dstack-rs source tree (no Cargo.lock and scripts/build-init): pass --source DIR"
    )]
    NotASource {
        /// The directory given.
        path: PathBuf,
    },
    /// A reduced check assembles with this binary, whose inputs.lock is not the source's.
    #[error(
        "{source_dir}'s reproducible/inputs.lock differs from this dstack's: a reduced check \
         assembles the image with this binary, so build dstack from that tree, or use --full \
         (which builds the assembler from the source)"
    )]
    LockMismatch {
        /// The source tree.
        source_dir: PathBuf,
    },
    /// A reduced check reuses the cached kernel, and there is none.
    #[error(
        "no built kernel in {dir}: a reduced check reuses the cached kernel (its own \
         reproducibility is kernel-twice's); build the image once first (`make image`), or use --full"
    )]
    NoCachedKernel {
        /// The kernel cache.
        dir: PathBuf,
    },
    /// `--users` names an account that does not exist.
    #[error("user {name} does not exist")]
    NoSuchUser {
        /// The name given.
        name: String,
    },
    /// Only root can build as other users.
    #[error("building as other users (--users) needs root")]
    UsersNeedRoot,
    /// `useradd` failed.
    #[error("cannot create the build user {name}: {stderr}")]
    CreateUser {
        /// The user.
        name: String,
        /// useradd's message.
        stderr: String,
    },
    /// A host tool the check runs (git, id, useradd) could not start.
    #[error("cannot run {tool}")]
    Spawn {
        /// The program.
        tool: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A build step exited with an error.
    #[error("build {side}: {step} failed ({status}); the last lines of {}:\n{tail}", log.display())]
    Step {
        /// Which build (`a` or `b`).
        side: String,
        /// The step.
        step: String,
        /// How it ended.
        status: String,
        /// Its full log.
        log: PathBuf,
        /// The log's last lines.
        tail: String,
    },
    /// A build produced no image directory, or more than one.
    #[error("build {side} left {count} image directories in {dir}, expected one")]
    NoImage {
        /// Which build.
        side: String,
        /// How many there were.
        count: usize,
        /// The output directory.
        dir: PathBuf,
    },
}
