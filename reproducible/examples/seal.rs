//! Seals an image from another build system's files: the image step of the
//! Yocto layer (`yocto/meta-dstack-rs`, image type `dstack`), which builds
//! this example as `dstack-image-seal` for the build host.
//!
//! cargo run -p dstack-reproducible --example seal -- --out <dir> --name <name> \
//!     --kernel <bzImage> --kernel-release <release> --rootfs <dir> --firmware <ovmf.fd> \
//!     [--init-record <dstack-init.build.json>] [--package <inputs.lock name>]... \
//!     [--kernel-toolchain-file <file>] [--dev]

use std::path::PathBuf;

use anyhow::{Context, bail};
use dstack_reproducible::{SealOptions, image_digest, seal_image};

fn main() -> anyhow::Result<()> {
    let mut out = None;
    let mut name = None;
    let mut kernel = None;
    let mut kernel_release = None;
    let mut rootfs = None;
    let mut firmware = None;
    let mut init_record = None;
    let mut packages = Vec::new();
    let mut kernel_toolchain = None;
    let mut dev = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--out" => out = Some(PathBuf::from(value()?)),
            "--name" => name = Some(value()?),
            "--kernel" => kernel = Some(PathBuf::from(value()?)),
            "--kernel-release" => kernel_release = Some(value()?),
            "--rootfs" => rootfs = Some(PathBuf::from(value()?)),
            "--firmware" => firmware = Some(PathBuf::from(value()?)),
            "--init-record" => init_record = Some(PathBuf::from(value()?)),
            "--package" => packages.push(value()?),
            "--kernel-toolchain-file" => {
                let path = value()?;
                kernel_toolchain = Some(
                    std::fs::read_to_string(&path)
                        .with_context(|| format!("cannot read {path}"))?,
                );
            }
            "--dev" => dev = true,
            other => bail!("unknown argument {other}"),
        }
    }
    let opts = SealOptions {
        out_dir: out.context("--out is required")?,
        name: name.context("--name is required")?,
        kernel: kernel.context("--kernel is required")?,
        kernel_release: kernel_release.context("--kernel-release is required")?,
        rootfs: rootfs.context("--rootfs is required")?,
        firmware: firmware.context("--firmware is required")?,
        init_record,
        packages,
        kernel_toolchain,
        dev,
    };
    let manifest = seal_image(&opts)?;
    let dir = opts.out_dir.join(&manifest.name);
    println!(
        "sealed {} (kernel {}), digest {}",
        dir.display(),
        manifest.kernel_version,
        image_digest(&dir)?
    );
    Ok(())
}
