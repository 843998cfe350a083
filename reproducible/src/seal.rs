//! `seal_image`: an image directory from files another build system made
//! (the Yocto layer in `yocto/`): its kernel, its root filesystem tree and
//! its firmware. The initramfs is packed, and `metadata.json`,
//! `sha256sum.txt` and `digest.txt` are written, by the same code as
//! [`crate::build_image`]'s, so `dstack image measure` and `dstack verify`
//! read a sealed image as they read a built one.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::build;
use crate::error::BuildError;
use crate::inputs::{self, Role};
use crate::kernel::{self, FRAGMENTS};
use crate::manifest::{
    BIOS_FILE, INITRD_FILE, ImageInputs, ImageManifest, InitInput, InputPackage, KERNEL_FILE,
    KernelBuildInput,
};
use crate::tree::Tree;
use crate::{elf, init_record};

/// What to seal, and where.
#[derive(Debug, Clone)]
pub struct SealOptions {
    /// Directory the image directory `<out_dir>/<name>` is created in.
    pub out_dir: PathBuf,
    /// Image name and directory name.
    pub name: String,
    /// The kernel (a bzImage).
    pub kernel: PathBuf,
    /// Its release (`uname -r`).
    pub kernel_release: String,
    /// The root filesystem, packed as the initramfs; its `/init` is PID1.
    pub rootfs: PathBuf,
    /// The firmware.
    pub firmware: PathBuf,
    /// The build record of `/init` (`dstack-init.build.json`'s shape), if
    /// the build wrote one: checked against the binary, copied into
    /// metadata.json.
    pub init_record: Option<PathBuf>,
    /// Names of the `inputs.lock` packages the build used, recorded with
    /// their pinned versions and hashes.
    pub packages: Vec<String>,
    /// The compiler, linker and make that built the kernel from the pinned
    /// source and [`FRAGMENTS`], one line each; `None` for a kernel built
    /// otherwise.
    pub kernel_toolchain: Option<String>,
    /// The root filesystem is a -dev variant (has a shell).
    pub dev: bool,
}

/// Seals the image `<out_dir>/<name>/` from `opts`' files. As with
/// [`crate::build_image`], the directory appears complete or not at all,
/// and the same files give the same bytes.
pub fn seal_image(opts: &SealOptions) -> Result<ImageManifest, BuildError> {
    build::check_name(&opts.name)?;
    let tree = read_tree(&opts.rootfs)?;
    let init_path = opts.rootfs.join("init");
    let init = fs::read(&init_path).map_err(BuildError::read(&init_path))?;
    elf::check_static(&init_path, &init)?;
    let init_build = match &opts.init_record {
        Some(record) => Some(init_record::read(record, &init_path, &init)?),
        None => None,
    };
    let pinned = inputs::pinned_packages()?;
    let mut packages = Vec::new();
    for name in &opts.packages {
        let pin =
            pinned
                .iter()
                .find(|p| &p.name == name)
                .ok_or_else(|| BuildError::InputsLock {
                    reason: format!("{name} is not pinned"),
                })?;
        packages.push(InputPackage {
            name: pin.name.clone(),
            version: pin.version.clone(),
            sha256: pin.sha256.clone(),
        });
    }
    let kernel_build = match &opts.kernel_toolchain {
        Some(toolchain) => {
            let source = pinned
                .iter()
                .find(|p| p.role == Role::KernelSource)
                .ok_or_else(|| BuildError::InputsLock {
                    reason: "no kernel-source package".into(),
                })?;
            Some(KernelBuildInput {
                fragments: FRAGMENTS.iter().map(|f| f.name.to_owned()).collect(),
                cache_key: kernel::cache_key(&source.sha256, FRAGMENTS, toolchain),
                toolchain: toolchain.clone(),
            })
        }
        None => None,
    };

    fs::create_dir_all(&opts.out_dir).map_err(BuildError::write(&opts.out_dir))?;
    let work = tempfile::Builder::new()
        .prefix(&format!(".{}.tmp-", opts.name))
        .tempdir_in(&opts.out_dir)
        .map_err(BuildError::write(&opts.out_dir))?;
    let image = work.path().join("image");
    fs::create_dir(&image).map_err(BuildError::write(&image))?;

    let mut cpio = Vec::new();
    crate::cpio::write_newc(&tree, &mut cpio).map_err(BuildError::write(INITRD_FILE))?;
    build::write_file(
        &image.join(INITRD_FILE),
        &crate::lz4::compress_legacy(&cpio),
    )?;
    build::copy_file(&opts.kernel, &image.join(KERNEL_FILE))?;
    build::copy_file(&opts.firmware, &image.join(BIOS_FILE))?;

    let manifest = build::image_manifest(
        &opts.name,
        opts.dev,
        &opts.kernel_release,
        ImageInputs {
            packages,
            init: InitInput {
                sha256: hex::encode(Sha256::digest(&init)),
                size: init.len() as u64,
                build: init_build,
            },
            kernel_build,
        },
    );
    build::write_manifest_files(&image, &manifest)?;
    build::install(&image, &opts.out_dir.join(&opts.name), &opts.out_dir)?;
    Ok(manifest)
}

/// The directory `root` as an initramfs tree: directories, regular files
/// and symlinks with their permission bits; owners and times are not kept
/// (every entry is root's, every mtime 0, as in a built image).
fn read_tree(root: &Path) -> Result<Tree, BuildError> {
    let mut tree = Tree::new();
    let mut pending = vec![PathBuf::new()];
    while let Some(rel) = pending.pop() {
        let dir = root.join(&rel);
        let entries = fs::read_dir(&dir).map_err(BuildError::read(&dir))?;
        for entry in entries {
            let entry = entry.map_err(BuildError::read(&dir))?;
            let path = entry.path();
            let inner = rel.join(entry.file_name());
            let guest = format!("/{}", inner.display());
            let meta = fs::symlink_metadata(&path).map_err(BuildError::read(&path))?;
            let mode = meta.permissions().mode() & 0o7777;
            let kind = meta.file_type();
            if kind.is_dir() {
                tree.add_dir(&guest, mode)?;
                pending.push(inner);
            } else if kind.is_file() {
                let data = fs::read(&path).map_err(BuildError::read(&path))?;
                tree.add_file(&guest, mode, data)?;
            } else if kind.is_symlink() {
                let target = fs::read_link(&path).map_err(BuildError::read(&path))?;
                tree.add_symlink(&guest, &target.to_string_lossy())?;
            } else {
                return Err(BuildError::UnsupportedNode { path });
            }
        }
    }
    Ok(tree)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;
    use crate::manifest::{DIGEST_FILE, SHA256SUM_FILE};

    /// The smallest ELF64 executable goblin parses: a header and no program
    /// headers, so no interpreter and no libraries (static).
    fn static_elf() -> Vec<u8> {
        let mut elf = vec![0u8; 64];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2; // 64-bit
        elf[5] = 1; // little endian
        elf[6] = 1; // version
        elf[16] = 2; // ET_EXEC
        elf[18] = 0x3e; // x86-64
        elf[20] = 1; // version
        elf[52] = 64; // header size
        elf[54] = 56; // program header entry size
        elf[58] = 64; // section header entry size
        elf
    }

    fn fixture(dir: &Path) -> SealOptions {
        let rootfs = dir.join("rootfs");
        fs::create_dir_all(rootfs.join("etc/ssl/certs")).unwrap();
        fs::create_dir_all(rootfs.join("tmp")).unwrap();
        fs::set_permissions(rootfs.join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
        fs::write(rootfs.join("init"), static_elf()).unwrap();
        fs::set_permissions(rootfs.join("init"), fs::Permissions::from_mode(0o755)).unwrap();
        fs::write(rootfs.join("etc/ssl/certs/ca-certificates.crt"), b"roots\n").unwrap();
        fs::create_dir_all(rootfs.join("sbin")).unwrap();
        symlink("mke2fs.e2fsprogs", rootfs.join("sbin/mke2fs")).unwrap();
        fs::write(dir.join("bzImage"), b"kernel").unwrap();
        fs::write(dir.join("ovmf.fd"), b"firmware").unwrap();
        SealOptions {
            out_dir: dir.join("images"),
            name: "dstack-yocto-0.1.0".into(),
            kernel: dir.join("bzImage"),
            kernel_release: "7.2.12".into(),
            rootfs,
            firmware: dir.join("ovmf.fd"),
            init_record: None,
            packages: vec!["ovmf".into()],
            kernel_toolchain: Some("gcc 15\nld 2.45\nmake 4.4\n".into()),
            dev: false,
        }
    }

    #[test]
    fn a_sealed_image_has_the_built_images_files_and_digest_rule() {
        let dir = tempfile::tempdir().unwrap();
        let opts = fixture(dir.path());
        let manifest = seal_image(&opts).unwrap();
        let image = opts.out_dir.join(&opts.name);
        for file in [
            KERNEL_FILE,
            INITRD_FILE,
            BIOS_FILE,
            "metadata.json",
            SHA256SUM_FILE,
        ] {
            assert!(image.join(file).is_file(), "{file}");
        }
        assert_eq!(ImageManifest::load(&image).unwrap(), manifest);
        assert_eq!(manifest.cmdline, crate::CMDLINE);
        assert_eq!(manifest.inputs.packages[0].name, "ovmf");
        let kernel_build = manifest.inputs.kernel_build.as_ref().unwrap();
        assert_eq!(kernel_build.fragments.len(), FRAGMENTS.len());
        let sums = fs::read(image.join(SHA256SUM_FILE)).unwrap();
        let digest = fs::read_to_string(image.join(DIGEST_FILE)).unwrap();
        assert_eq!(digest, format!("{}\n", hex::encode(Sha256::digest(&sums))));
        // Nothing but the image is left in the output directory.
        let left: Vec<_> = fs::read_dir(&opts.out_dir).unwrap().collect();
        assert_eq!(left.len(), 1);
    }

    #[test]
    fn the_initramfs_keeps_modes_and_links_and_drops_owners_and_times() {
        let dir = tempfile::tempdir().unwrap();
        let opts = fixture(dir.path());
        let tree = read_tree(&opts.rootfs).unwrap();
        let mut cpio = Vec::new();
        crate::cpio::write_newc(&tree, &mut cpio).unwrap();
        // read_newc also checks that every owner and mtime is 0.
        let entries = crate::cpio::tests::read_newc(&cpio);
        let find = |name: &str| entries.iter().find(|e| e.0 == name).unwrap();
        assert_eq!(find("tmp").1 & 0o7777, 0o1777);
        assert_eq!(find("init").1 & 0o7777, 0o755);
        assert_eq!(find("sbin/mke2fs").4, b"mke2fs.e2fsprogs");
        // The same tree sealed twice gives the same bytes.
        let first = seal_image(&opts).unwrap();
        let sums = fs::read(opts.out_dir.join(&opts.name).join(SHA256SUM_FILE)).unwrap();
        assert_eq!(seal_image(&opts).unwrap(), first);
        assert_eq!(
            fs::read(opts.out_dir.join(&opts.name).join(SHA256SUM_FILE)).unwrap(),
            sums
        );
    }

    #[test]
    fn a_dynamic_init_a_wrong_record_and_an_unpinned_package_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut opts = fixture(dir.path());
        opts.packages = vec!["no-such-package".into()];
        assert!(matches!(
            seal_image(&opts),
            Err(BuildError::InputsLock { .. })
        ));
        opts.packages.clear();
        let record = dir.path().join("dstack-init.build.json");
        fs::write(&record, br#"{"init_sha256": "00", "build": {"rustc": "r", "cargo": "c", "cargo_lock_sha256": "l", "target": "t", "profile": "guest", "libseccomp_version": "2.6.0", "libseccomp_sha256": "s", "c_toolchain": "cc"}}"#).unwrap();
        opts.init_record = Some(record);
        assert!(matches!(
            seal_image(&opts),
            Err(BuildError::InitRecordMismatch { .. })
        ));
        opts.init_record = None;
        if Path::new("/bin/ls").exists() {
            fs::copy("/bin/ls", opts.rootfs.join("init")).unwrap();
            assert!(matches!(
                seal_image(&opts),
                Err(BuildError::InitNotStatic { .. })
            ));
        }
        assert!(!opts.out_dir.join(&opts.name).exists());
    }
}
