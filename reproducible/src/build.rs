//! `build_image`: from pinned packages and an init binary to a finished
//! image directory, written atomically.

use std::fmt;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::download::{self, sha256_file};
use crate::error::BuildError;
use crate::inputs::{self, PinnedPackage, Role};
use crate::kernel::{self, KernelBuild, KernelProgress};
use crate::manifest::{
    self, BIOS_FILE, CHECKSUMMED, DIGEST_FILE, INITRD_FILE, ImageInputs, ImageManifest, InitInput,
    InputPackage, KERNEL_FILE, KernelBuildInput, METADATA_FILE, SHA256SUM_FILE,
};
use crate::progress::BuildProgress;
use crate::supersede;
use crate::tree::Tree;
use crate::{certs, deb, elf, init_record, modules, stage};

/// The kernel command line of every image. `panic=-1` reboots at once on a
/// guest panic, which with QEMU's `-no-reboot` ends the VM; `rdinit=/init`
/// runs our PID1 straight from the initramfs.
pub const CMDLINE: &str = "console=ttyS0 panic=-1 rdinit=/init quiet loglevel=4";

/// Where the OVMF package keeps the firmware.
const OVMF_PATH: &str = "/usr/share/ovmf/OVMF.fd";
/// The guest's mkfs, and its configuration (ext4 defaults).
const MKE2FS: &str = "/sbin/mke2fs";
const MKE2FS_CONF: &str = "/etc/mke2fs.conf";
const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
const BUSYBOX: &str = "/bin/busybox";

/// Empty directories PID1 mounts on or writes to, with their modes.
const EMPTY_DIRS: &[(&str, u32)] = &[
    ("/data", 0o755),
    ("/dev", 0o755),
    ("/etc", 0o755),
    ("/proc", 0o555),
    ("/run", 0o755),
    ("/sys", 0o555),
    ("/tmp", 0o1777),
    ("/var/run", 0o755),
];

/// Commands the -dev image links to busybox: enough to look around a guest.
const BUSYBOX_APPLETS: &[&str] = &[
    "awk", "cat", "cp", "cut", "date", "df", "dmesg", "du", "echo", "env", "find", "free", "grep",
    "head", "hexdump", "ip", "kill", "less", "ln", "ls", "lsmod", "mkdir", "mount", "mv", "nc",
    "netstat", "ping", "ps", "rm", "sed", "sh", "sleep", "sort", "stat", "tail", "top", "tr",
    "umount", "uname", "vi", "wc", "wget", "xargs",
];

/// Which kernel the image boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KernelChoice {
    /// Our own, compiled from the pinned `linux-source-7.x` with the
    /// fragments in `reproducible/kernel/`: everything built in, no modules.
    #[default]
    Ours,
    /// Debian's stock cloud kernel and the modules the guest loads, for
    /// comparison.
    Debian,
}

/// What to build, and where.
pub struct BuildOptions {
    /// Directory the image directory `<out_dir>/<name>` is created in.
    pub out_dir: PathBuf,
    /// The static musl dstack-init binary, installed as `/init`.
    pub init_binary: PathBuf,
    /// Image name and directory name, e.g. `dstack-dev-0.1.0`.
    pub name: String,
    /// Build the -dev variant, which adds busybox as a shell.
    pub dev: bool,
    /// Cache of downloaded .debs, named by their sha256.
    pub cache_dir: PathBuf,
    /// The kernel to boot.
    pub kernel: KernelChoice,
    /// Cache of built kernels, by input hash.
    pub kernel_cache_dir: PathBuf,
    /// Parallel jobs when a kernel has to be compiled.
    pub jobs: usize,
    /// Called with each step as the build goes.
    pub progress: Option<Box<dyn Fn(BuildProgress) + Send>>,
    /// Take the newest version of a pinned package Debian no longer serves
    /// (reported, and recorded in metadata.json) instead of failing.
    pub allow_superseded: bool,
}

impl fmt::Debug for BuildOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BuildOptions")
            .field("out_dir", &self.out_dir)
            .field("init_binary", &self.init_binary)
            .field("name", &self.name)
            .field("dev", &self.dev)
            .field("cache_dir", &self.cache_dir)
            .field("kernel", &self.kernel)
            .field("kernel_cache_dir", &self.kernel_cache_dir)
            .field("jobs", &self.jobs)
            .field("progress", &self.progress.as_ref().map(|_| "<callback>"))
            .field("allow_superseded", &self.allow_superseded)
            .finish()
    }
}

impl BuildOptions {
    fn report(&self, step: BuildProgress) {
        if let Some(progress) = &self.progress {
            progress(step);
        }
    }
}

/// Builds the image `<out_dir>/<name>/` from the pinned packages and the
/// init binary. The directory appears complete or not at all; an existing
/// image of the same name is replaced. The same inputs give the same bytes.
pub fn build_image(opts: &BuildOptions) -> Result<ImageManifest, BuildError> {
    check_name(&opts.name)?;
    let init = fs::read(&opts.init_binary).map_err(BuildError::read(&opts.init_binary))?;
    elf::check_static(&opts.init_binary, &init)?;
    let init_build = init_record::load(&opts.init_binary, &init)?;

    let pinned: Vec<PinnedPackage> = inputs::pinned_packages()?
        .into_iter()
        .filter(|p| opts.dev || !p.dev_only)
        .filter(|p| match opts.kernel {
            KernelChoice::Ours => p.role != Role::Kernel,
            KernelChoice::Debian => p.role != Role::KernelSource,
        })
        .collect();
    let (packages, substitutions) = supersede::resolve(pinned, opts.allow_superseded, |p| {
        download::is_cached(&opts.cache_dir, p)
    })?;
    for substitution in substitutions {
        opts.report(BuildProgress::Superseded(substitution));
    }
    fs::create_dir_all(&opts.out_dir).map_err(BuildError::write(&opts.out_dir))?;
    // Everything is built next to its destination, so the final step is a
    // rename on one filesystem; the work dir vanishes on every exit path.
    let work = tempfile::Builder::new()
        .prefix(&format!(".{}.tmp-", opts.name))
        .tempdir_in(&opts.out_dir)
        .map_err(BuildError::write(&opts.out_dir))?;
    let root = work.path().join("root");
    let image = work.path().join("image");
    fs::create_dir(&image).map_err(BuildError::write(&image))?;

    let fetched = fetch_and_extract(opts, &packages, &root)?;
    let kernel = prepare_kernel(opts, &packages, &fetched)?;

    let mut tree = Tree::new();
    tree.add_file("/init", 0o755, init.clone())?;
    for (dir, mode) in EMPTY_DIRS {
        tree.add_dir(dir, *mode)?;
    }
    let engine = crate::inputs::engine_image()?;
    tree.add_file(
        crate::inputs::ENGINE_IMAGE_PATH,
        0o644,
        format!("{}\n", engine.reference()).into_bytes(),
    )?;
    let ca = names_with(&packages, Role::CaCertificates);
    tree.add_file(CA_BUNDLE, 0o644, certs::bundle(&root, &ca)?)?;
    let mkfs = names_with(&packages, Role::Mkfs);
    elf::copy_with_libraries(&root, &mut tree, &mkfs, MKE2FS)?;
    stage::copy_path(&root, &mut tree, &mkfs, MKE2FS_CONF)?;
    if let KernelSource::Debian { release, .. } = &kernel.source {
        let count = add_modules(&root, release, &mut tree)?;
        opts.report(BuildProgress::Modules { count });
    }
    if opts.dev {
        add_busybox(&root, &names_with(&packages, Role::Shell), &mut tree)?;
    }

    write_initramfs(opts, &tree, &image.join(INITRD_FILE))?;
    let vmlinuz = match &kernel.source {
        KernelSource::Debian { package, release } => {
            deb::resolve_file(&root, package, &format!("/boot/vmlinuz-{release}"))?
        }
        KernelSource::Built(built) => built.bzimage.clone(),
    };
    copy_file(&vmlinuz, &image.join(KERNEL_FILE))?;
    let ovmf = deb::resolve_file(&root, &names_with(&packages, Role::Firmware), OVMF_PATH)?;
    copy_file(&ovmf, &image.join(BIOS_FILE))?;

    let manifest = image_manifest(
        &opts.name,
        opts.dev,
        &kernel.release,
        ImageInputs {
            packages: packages
                .iter()
                .map(|p| InputPackage {
                    name: p.name.clone(),
                    version: p.version.clone(),
                    sha256: p.sha256.clone(),
                })
                .collect(),
            init: InitInput {
                sha256: hex::encode(Sha256::digest(&init)),
                size: init.len() as u64,
                build: init_build,
            },
            kernel_build: match &kernel.source {
                KernelSource::Built(built) => Some(KernelBuildInput {
                    fragments: kernel::FRAGMENTS
                        .iter()
                        .map(|f| f.name.to_owned())
                        .collect(),
                    cache_key: built.key.clone(),
                    toolchain: kernel.toolchain.clone(),
                }),
                KernelSource::Debian { .. } => None,
            },
        },
    );
    write_manifest_files(&image, &manifest)?;

    let dest = opts.out_dir.join(&opts.name);
    install(&image, &dest, &opts.out_dir)?;
    opts.report(BuildProgress::Written { dir: dest });
    Ok(manifest)
}

/// The manifest of an image of this builder's layout (file names, command
/// line, version) built from `inputs`.
pub(crate) fn image_manifest(
    name: &str,
    is_dev: bool,
    kernel_version: &str,
    inputs: ImageInputs,
) -> ImageManifest {
    ImageManifest {
        name: name.to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        kernel: KERNEL_FILE.to_owned(),
        initrd: INITRD_FILE.to_owned(),
        bios: BIOS_FILE.to_owned(),
        cmdline: CMDLINE.to_owned(),
        is_dev,
        kernel_version: kernel_version.to_owned(),
        inputs,
    }
}

/// Writes `metadata.json`, then `sha256sum.txt` over the image's files and
/// `digest.txt` (the OS image hash), into the finished image directory
/// `image`: the last step of every image, built here or sealed from
/// another build's files ([`crate::seal_image`]).
pub(crate) fn write_manifest_files(
    image: &Path,
    manifest: &ImageManifest,
) -> Result<(), BuildError> {
    let metadata_path = image.join(METADATA_FILE);
    let metadata = manifest.to_json().map_err(|source| BuildError::Metadata {
        path: metadata_path.clone(),
        source,
    })?;
    write_file(&metadata_path, &metadata)?;

    let mut sums = Vec::new();
    for name in CHECKSUMMED {
        sums.push((name, sha256_file(&image.join(name))?));
    }
    let sha256sum = manifest::sha256sum_text(&sums);
    write_file(&image.join(SHA256SUM_FILE), sha256sum.as_bytes())?;
    write_file(
        &image.join(DIGEST_FILE),
        manifest::digest_text(&sha256sum).as_bytes(),
    )?;
    sync_dir(image)
}

/// The one pinned package with `role`, fetched and verified into
/// `cache_dir`: its pin and its .deb. A superseded pin must be cached.
pub fn fetch_pinned(role: Role, cache_dir: &Path) -> Result<(PinnedPackage, PathBuf), BuildError> {
    let pinned: Vec<PinnedPackage> = inputs::pinned_packages()?
        .into_iter()
        .filter(|p| p.role == role)
        .collect();
    let (packages, _) = supersede::resolve(pinned, false, |p| download::is_cached(cache_dir, p))?;
    let package = packages
        .into_iter()
        .next()
        .ok_or_else(|| BuildError::InputsLock {
            reason: format!("no {role:?} package"),
        })?;
    let fetched = download::fetch_all(std::slice::from_ref(&package), cache_dir)?;
    let path = fetched
        .into_iter()
        .next()
        .map(|f| f.path)
        .unwrap_or_default();
    Ok((package, path))
}

/// An image name becomes a directory name: keep it one plain component.
pub(crate) fn check_name(name: &str) -> Result<(), BuildError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(BuildError::InvalidName {
            name: name.to_owned(),
        })
    }
}

/// The package names with `role`, for error messages.
fn names_with(packages: &[PinnedPackage], role: Role) -> String {
    let names: Vec<&str> = packages
        .iter()
        .filter(|p| p.role == role)
        .map(|p| p.name.as_str())
        .collect();
    names.join(", ")
}

fn fetch_and_extract(
    opts: &BuildOptions,
    packages: &[PinnedPackage],
    root: &Path,
) -> Result<Vec<download::Fetched>, BuildError> {
    let total = packages.len();
    for (i, pkg) in packages.iter().enumerate() {
        opts.report(BuildProgress::Downloading {
            index: i + 1,
            total,
            package: pkg.name.clone(),
            bytes: pkg.size,
        });
    }
    let fetched = download::fetch_all(packages, &opts.cache_dir)?;
    for (i, (pkg, deb)) in packages.iter().zip(&fetched).enumerate() {
        opts.report(BuildProgress::Downloaded {
            index: i + 1,
            total,
            package: pkg.name.clone(),
            bytes: pkg.size,
            cached: deb.cached,
        });
    }
    for (pkg, deb) in packages.iter().zip(&fetched) {
        // The kernel source is unpacked by the kernel build, in its own tree.
        if pkg.role == Role::KernelSource {
            continue;
        }
        opts.report(BuildProgress::Extracting {
            package: pkg.name.clone(),
        });
        deb::extract(&pkg.name, &deb.path, root)?;
    }
    Ok(fetched)
}

/// Where the image's kernel comes from.
enum KernelSource {
    /// Debian's package, unpacked in the build root.
    Debian { package: String, release: String },
    /// Our build, in the kernel cache.
    Built(kernel::BuiltKernel),
}

struct PreparedKernel {
    source: KernelSource,
    release: String,
    toolchain: String,
}

/// Finds Debian's kernel, or builds (or takes from the cache) our own.
fn prepare_kernel(
    opts: &BuildOptions,
    packages: &[PinnedPackage],
    fetched: &[download::Fetched],
) -> Result<PreparedKernel, BuildError> {
    let wanted = match opts.kernel {
        KernelChoice::Ours => Role::KernelSource,
        KernelChoice::Debian => Role::Kernel,
    };
    let (pkg, deb) = packages
        .iter()
        .zip(fetched)
        .find(|(p, _)| p.role == wanted)
        .ok_or_else(|| BuildError::InputsLock {
            reason: format!("no {wanted:?} package"),
        })?;
    if opts.kernel == KernelChoice::Debian {
        let release = inputs::kernel_release(pkg)?.to_owned();
        return Ok(PreparedKernel {
            source: KernelSource::Debian {
                package: pkg.name.clone(),
                release: release.clone(),
            },
            release,
            toolchain: String::new(),
        });
    }
    let progress = |step: KernelProgress| opts.report(BuildProgress::Kernel(step));
    let built = kernel::build_kernel(&KernelBuild {
        source_deb: &deb.path,
        source_sha256: &pkg.sha256,
        cache_dir: &opts.kernel_cache_dir,
        jobs: opts.jobs,
        progress: &progress,
    })?;
    opts.report(BuildProgress::KernelReady {
        release: built.release.clone(),
        cached: built.cached,
    });
    Ok(PreparedKernel {
        release: built.release.clone(),
        toolchain: built.toolchain.clone(),
        source: KernelSource::Built(built),
    })
}

/// Adds the wanted modules, decompressed, and their load-order file; returns
/// how many modules there are.
fn add_modules(root: &Path, release: &str, tree: &mut Tree) -> Result<usize, BuildError> {
    let modules = modules::resolve(&root.join("lib/modules").join(release), release)?;
    let mut load_order = String::new();
    for module in &modules {
        load_order.push_str(&module.path);
        load_order.push('\n');
    }
    let count = modules.len();
    for module in modules {
        let path = format!("/lib/modules/{release}/{}", module.path);
        tree.add_file(&path, 0o644, module.data)?;
    }
    tree.add_file(
        &format!("/lib/modules/{release}/load-order"),
        0o644,
        load_order.into_bytes(),
    )?;
    Ok(count)
}

fn add_busybox(root: &Path, package: &str, tree: &mut Tree) -> Result<(), BuildError> {
    let real = deb::resolve_file(root, package, BUSYBOX)?;
    let bytes = fs::read(&real).map_err(BuildError::read(&real))?;
    // The guest has no libc for busybox either.
    elf::check_static(&real, &bytes)?;
    stage::copy_path(root, tree, package, BUSYBOX)?;
    for applet in BUSYBOX_APPLETS {
        tree.add_symlink(&format!("/bin/{applet}"), "busybox")?;
    }
    Ok(())
}

/// Writes the tree as an LZ4-compressed (legacy frame) newc cpio; the
/// codec was picked by measured boot time (`lz4.rs`).
fn write_initramfs(opts: &BuildOptions, tree: &Tree, path: &Path) -> Result<(), BuildError> {
    let mut cpio = Vec::new();
    let bytes = crate::cpio::write_newc(tree, &mut cpio).map_err(BuildError::write(path))?;
    opts.report(BuildProgress::Cpio {
        entries: tree.len(),
        bytes,
    });
    let compressed = crate::lz4::compress_legacy(&cpio);
    write_file(path, &compressed)?;
    opts.report(BuildProgress::Compressed {
        bytes: compressed.len() as u64,
    });
    Ok(())
}

pub(crate) fn write_file(path: &Path, data: &[u8]) -> Result<(), BuildError> {
    let mut file = fs::File::create(path).map_err(BuildError::write(path))?;
    file.write_all(data).map_err(BuildError::write(path))?;
    file.sync_all().map_err(BuildError::write(path))
}

pub(crate) fn copy_file(from: &Path, to: &Path) -> Result<(), BuildError> {
    let data = fs::read(from).map_err(BuildError::read(from))?;
    write_file(to, &data)
}

fn sync_dir(dir: &Path) -> Result<(), BuildError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(BuildError::write(dir))
}

/// Moves the finished `staged` directory to `dest`. An existing image is
/// first renamed into a temporary directory (deleted afterwards), and put
/// back if the second rename fails: at no point is a partial image at
/// `dest`.
pub(crate) fn install(staged: &Path, dest: &Path, out_dir: &Path) -> Result<(), BuildError> {
    if fs::symlink_metadata(dest).is_err() {
        fs::rename(staged, dest).map_err(BuildError::write(dest))?;
        return sync_dir(out_dir);
    }
    let old = tempfile::Builder::new()
        .prefix(".old-")
        .tempdir_in(out_dir)
        .map_err(BuildError::write(out_dir))?;
    // Renaming a directory over an empty one replaces it.
    fs::rename(dest, old.path()).map_err(BuildError::write(dest))?;
    if let Err(e) = fs::rename(staged, dest) {
        let _ = fs::rename(old.path(), dest);
        return Err(BuildError::write(dest)(e));
    }
    sync_dir(out_dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_names_are_single_plain_components() {
        for good in ["dstack-dev-0.1.0", "dstack_0.1", "a"] {
            check_name(good).unwrap();
        }
        for bad in ["", ".hidden", "a/b", "..", "a b", "ü", &"x".repeat(129)] {
            assert!(
                matches!(check_name(bad), Err(BuildError::InvalidName { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn install_replaces_an_existing_image_whole() {
        let out = tempfile::tempdir().unwrap();
        let dest = out.path().join("img");
        fs::create_dir(&dest).unwrap();
        fs::write(dest.join("old-only"), b"old").unwrap();
        let staged = out.path().join(".staged");
        fs::create_dir(&staged).unwrap();
        fs::write(staged.join("new-only"), b"new").unwrap();
        install(&staged, &dest, out.path()).unwrap();
        assert!(dest.join("new-only").exists());
        assert!(!dest.join("old-only").exists());
        // Nothing left behind but the image.
        let left: Vec<_> = fs::read_dir(out.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, ["img"]);
    }

    #[test]
    fn dynamic_init_is_refused_before_any_download() {
        let out = tempfile::tempdir().unwrap();
        let opts = BuildOptions {
            out_dir: out.path().join("images"),
            init_binary: PathBuf::from("/bin/ls"),
            name: "t".into(),
            dev: false,
            cache_dir: out.path().join("cache"),
            kernel: KernelChoice::Ours,
            kernel_cache_dir: out.path().join("kernel"),
            jobs: 1,
            progress: None,
            allow_superseded: false,
        };
        if Path::new("/bin/ls").exists() {
            assert!(matches!(
                build_image(&opts),
                Err(BuildError::InitNotStatic { .. })
            ));
            assert!(!out.path().join("cache").exists());
            assert!(!out.path().join("images").exists());
        }
    }
}
