//! Builds (or finds in the cache) our kernel alone and prints `<key> <bzImage>`;
//! tests/kernel-twice.sh runs it against two caches and compares the bytes.
//!
//! cargo run -p dstack-reproducible --example kernel -- --cache <dir> [--debs <dir>] [--jobs N]

use std::path::PathBuf;

use anyhow::{Context, bail};
use dstack_reproducible::{KernelBuild, KernelProgress, Role, build_kernel, fetch_pinned};

fn main() -> anyhow::Result<()> {
    let home = PathBuf::from(std::env::var_os("HOME").context("HOME is not set")?);
    let mut cache = None;
    let mut debs = home.join(".cache/dstack-rs/debs");
    let mut jobs = std::thread::available_parallelism().map_or(1, usize::from);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--cache" => cache = args.next().map(PathBuf::from),
            "--debs" => debs = args.next().map(PathBuf::from).context("--debs DIR")?,
            "--jobs" => jobs = args.next().context("--jobs N")?.parse()?,
            other => bail!("unknown argument {other}"),
        }
    }
    let cache = cache.context("--cache is required")?;
    let (source, deb) = fetch_pinned(Role::KernelSource, &debs)?;
    let progress = |step: KernelProgress| {
        if let KernelProgress::Compiling { objects, .. } = step {
            if objects % 500 == 0 {
                eprintln!("kernel: {objects} build steps");
            }
        } else {
            eprintln!("kernel: {step:?}");
        }
    };
    let built = build_kernel(&KernelBuild {
        source_deb: &deb,
        source_sha256: &source.sha256,
        cache_dir: &cache,
        jobs,
        progress: &progress,
    })?;
    println!("{} {}", built.key, built.bzimage.display());
    Ok(())
}
