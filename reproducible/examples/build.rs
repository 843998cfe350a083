//! Builds an image by hand, printing progress: the image assembler that
//! `dstack image rebuild-check --full` compiles from the checked source tree
//! in each of its two builds.
//!
//! cargo run -p dstack-reproducible --example build -- \
//!     --init <static-init> --out <dir> [--name NAME] [--dev] [--cache DIR]
//!     [--kernel ours|debian] [--kernel-cache DIR] [--jobs N]

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, bail};
use dstack_reproducible::{
    BuildOptions, BuildProgress, KernelChoice, KernelProgress, build_image, image_digest,
};

fn main() -> anyhow::Result<()> {
    let mut init = None;
    let mut out = None;
    let mut name = None;
    let mut dev = false;
    let mut allow_superseded = false;
    let mut cache = None;
    let mut kernel = KernelChoice::Ours;
    let mut kernel_cache = None;
    let mut jobs = std::thread::available_parallelism().map_or(1, usize::from);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--init" => init = args.next().map(PathBuf::from),
            "--out" => out = args.next().map(PathBuf::from),
            "--name" => name = args.next(),
            "--cache" => cache = args.next().map(PathBuf::from),
            "--dev" => dev = true,
            "--kernel" => {
                kernel = match args.next().as_deref() {
                    Some("ours") => KernelChoice::Ours,
                    Some("debian") => KernelChoice::Debian,
                    other => bail!("--kernel takes ours or debian, not {other:?}"),
                }
            }
            "--kernel-cache" => kernel_cache = args.next().map(PathBuf::from),
            "--jobs" => jobs = args.next().context("--jobs N")?.parse()?,
            "--allow-superseded" => allow_superseded = true,
            other => bail!("unknown argument {other}"),
        }
    }
    let home = std::env::var_os("HOME").context("HOME is not set")?;
    let cache_home = PathBuf::from(home).join(".cache/dstack-rs");
    let name = name.unwrap_or_else(|| {
        let variant = if dev { "dstack-dev" } else { "dstack" };
        format!("{variant}-{}", env!("CARGO_PKG_VERSION"))
    });
    let opts = BuildOptions {
        out_dir: out.context("--out is required")?,
        init_binary: init.context("--init is required")?,
        name,
        dev,
        cache_dir: cache.unwrap_or_else(|| cache_home.join("debs")),
        kernel,
        kernel_cache_dir: kernel_cache.unwrap_or_else(|| cache_home.join("kernel")),
        jobs,
        progress: Some(Box::new(print_progress)),
        allow_superseded,
    };
    let start = Instant::now();
    let manifest = build_image(&opts)?;
    let dir = opts.out_dir.join(&manifest.name);
    println!(
        "built {} (kernel {}) in {:.1}s, digest {}",
        dir.display(),
        manifest.kernel_version,
        start.elapsed().as_secs_f64(),
        image_digest(&dir)?
    );
    Ok(())
}

fn print_progress(step: BuildProgress) {
    match step {
        BuildProgress::Superseded(s) => {
            eprintln!(
                "warning: {} is no longer served; using {}",
                s.pinned, s.using
            )
        }
        BuildProgress::Downloaded {
            index,
            total,
            package,
            bytes,
            cached,
        } => {
            let from = if cached { "cache" } else { "network" };
            println!("[{index}/{total}] {package} ({bytes} bytes, {from})");
        }
        BuildProgress::Modules { count } => println!("modules: {count}"),
        BuildProgress::Kernel(KernelProgress::Configured { options }) => {
            println!("kernel: configured, {options} options checked")
        }
        BuildProgress::Kernel(KernelProgress::Compiling { objects, .. }) if objects % 500 == 0 => {
            println!("kernel: {objects} build steps")
        }
        BuildProgress::KernelReady { release, cached } => {
            let from = if cached { "cache" } else { "built" };
            println!("kernel {release} ({from})")
        }
        BuildProgress::Cpio { entries, bytes } => {
            println!("cpio: {entries} entries, {bytes} bytes")
        }
        BuildProgress::Compressed { bytes } => println!("lz4: {bytes} bytes"),
        BuildProgress::Written { dir } => println!("written: {}", dir.display()),
        _ => {}
    }
}
