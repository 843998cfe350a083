//! `dstack image ...`: list the supervisor's OS images, build new ones,
//! check that a build is reproducible.

mod measure;
mod rebuild_check;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use clap::{Args, Subcommand};
use dstack_proto::supervisor::ImageInfo;
use dstack_reproducible::{
    BuildOptions, BuildProgress, KernelChoice, KernelProgress, build_image, image_digest,
};
use hyper::Method;

use super::Failure;
use crate::client::Client;

/// Image commands.
#[derive(Debug, Subcommand)]
pub(crate) enum ImageCommand {
    /// List the OS images the supervisor can boot.
    Ls(LsArgs),
    /// Build the OS image (kernel, initramfs with dstack-init, firmware) from pinned inputs.
    Build(BuildArgs),
    /// Build the image twice from source (two directories, two users, other
    /// umask, locale and time zone) and compare every output byte.
    RebuildCheck(rebuild_check::RebuildCheckArgs),
    /// Predict the MRTD and RTMR0-2 a TD booted from the image reports for a
    /// VM shape (and mr_system, mr_aggregated), computed from its files.
    Measure(Box<measure::MeasureArgs>),
}

/// Arguments of `dstack image build`.
#[derive(Debug, Args)]
pub(crate) struct BuildArgs {
    /// The static (musl) dstack-init binary (default: next to `dstack`, then the cargo musl build).
    #[arg(long)]
    init: Option<PathBuf>,
    /// Where the image directory is created (default: the supervisor's images directory).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Image name (default: dstack-<version>, or dstack-dev-<version> with --dev).
    #[arg(long)]
    name: Option<String>,
    /// Build the -dev variant (adds a busybox shell; not for production).
    #[arg(long)]
    dev: bool,
    /// The kernel: `ours` (compiled from the pinned linux-source with
    /// reproducible/kernel/*.config, no modules; cached by input hash) or
    /// `debian` (Debian's stock cloud kernel with modules, for comparison).
    #[arg(long, value_enum, default_value_t = KernelArg::Ours)]
    kernel: KernelArg,
    #[command(flatten)]
    inputs: InputArgs,
}

/// Where the pinned inputs come from and how the kernel is compiled: the
/// same for `build` and `rebuild-check`.
#[derive(Debug, Args)]
pub(crate) struct InputArgs {
    /// Cache of downloaded packages [default: ~/.cache/dstack-rs/debs].
    #[arg(long)]
    pub(crate) cache: Option<PathBuf>,
    /// Cache of compiled kernels [default: ~/.cache/dstack-rs/kernel].
    #[arg(long)]
    pub(crate) kernel_cache: Option<PathBuf>,
    /// Parallel jobs when the kernel has to be compiled (default: all CPUs).
    #[arg(long)]
    pub(crate) jobs: Option<usize>,
    /// When Debian no longer serves a pinned package (a kernel security
    /// update replaces it), use the newest version instead of failing. The
    /// image then differs from the locked one; the substitution is printed
    /// and recorded in metadata.json.
    #[arg(long)]
    pub(crate) allow_superseded: bool,
}

/// `--kernel`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum KernelArg {
    /// Our purpose-built kernel.
    Ours,
    /// Debian's stock cloud kernel.
    Debian,
}

pub(super) fn cache_home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default()
        .join(".cache/dstack-rs")
}

/// Find dstack-init: next to this executable, else in the cargo target dir's
/// musl build (profile `guest`, the size-tuned one `make build` uses).
fn find_init() -> anyhow::Result<PathBuf> {
    let mut candidates = Vec::new();
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
    {
        candidates.push(dir.join("dstack-init"));
        candidates.push(dir.join("../x86_64-unknown-linux-musl/guest/dstack-init"));
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| cache_home().join("target"));
    candidates.push(target.join("x86_64-unknown-linux-musl/guest/dstack-init"));
    candidates
        .into_iter()
        .find(|p| p.is_file())
        .context("dstack-init not found: build it with `make build` (static musl with libseccomp, profile guest) or pass --init")
}

fn build(args: BuildArgs) -> Result<(), Failure> {
    let init = match args.init {
        Some(p) => p,
        None => find_init()?,
    };
    let out = args
        .out
        .unwrap_or_else(|| crate::client::default_state_dir().join("images"));
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let version = env!("CARGO_PKG_VERSION");
    let name = args.name.unwrap_or_else(|| {
        let variant = if args.dev { "dstack-dev" } else { "dstack" };
        match args.kernel {
            KernelArg::Ours => format!("{variant}-{version}"),
            KernelArg::Debian => format!("{variant}-{version}-debian-kernel"),
        }
    });
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} [{elapsed}] {bar:30} {pos}/{len} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    let progress_bar = bar.clone();
    let opts = BuildOptions {
        out_dir: out.clone(),
        init_binary: init,
        name,
        dev: args.dev,
        cache_dir: args
            .inputs
            .cache
            .unwrap_or_else(|| cache_home().join("debs")),
        kernel: match args.kernel {
            KernelArg::Ours => KernelChoice::Ours,
            KernelArg::Debian => KernelChoice::Debian,
        },
        kernel_cache_dir: args
            .inputs
            .kernel_cache
            .unwrap_or_else(|| cache_home().join("kernel")),
        jobs: args
            .inputs
            .jobs
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from)),
        progress: Some(Box::new(move |step| {
            match step {
            BuildProgress::Downloading {
                index,
                total,
                package,
                bytes,
            } => {
                progress_bar.set_length(total as u64);
                progress_bar.set_message(format!(
                    "fetching {package} ({:.1} MiB)",
                    bytes as f64 / 1048576.0
                ));
                progress_bar.set_position(index.saturating_sub(1) as u64);
            }
            BuildProgress::Downloaded {
                index,
                package,
                cached,
                ..
            } => {
                progress_bar.set_position(index as u64);
                progress_bar.set_message(format!(
                    "{package} verified{}",
                    if cached { " (cached)" } else { "" }
                ));
            }
            BuildProgress::Superseded(s) => progress_bar.println(format!(
                "warning: {} is no longer served by Debian; using {} (this image differs from the locked one)",
                s.pinned, s.using
            )),
            BuildProgress::Extracting { package } => {
                progress_bar.set_message(format!("extracting {package}"))
            }
            BuildProgress::Kernel(KernelProgress::Unpacking) => {
                progress_bar.set_message("kernel: unpacking linux-source")
            }
            BuildProgress::Kernel(KernelProgress::Configured { options }) => progress_bar
                .set_message(format!("kernel: configured ({options} options checked)")),
            BuildProgress::Kernel(KernelProgress::Compiling { objects, expected }) => {
                progress_bar.set_length(expected.max(objects) as u64);
                progress_bar.set_position(objects as u64);
                progress_bar.set_message("kernel: compiling (first build only; then cached)");
            }
            BuildProgress::KernelReady { release, cached } => {
                progress_bar.set_message(format!(
                    "kernel {release}{}",
                    if cached { " (cached)" } else { " built" }
                ))
            }
            BuildProgress::Modules { count } => {
                progress_bar.set_message(format!("{count} kernel modules"))
            }
            BuildProgress::Cpio { entries, .. } => {
                progress_bar.set_message(format!("initramfs: {entries} entries"))
            }
            BuildProgress::Compressed { bytes } => progress_bar.set_message(format!(
                "initramfs: {:.1} MiB compressed",
                bytes as f64 / 1048576.0
            )),
            _ => {}
        }
        })),
        allow_superseded: args.inputs.allow_superseded,
    };
    if !dstack_reproducible::init_record_path(&opts.init_binary).is_file() {
        eprintln!(
            "note: {} has no build record (built without scripts/build-init): metadata.json \
             will not name its toolchain",
            opts.init_binary.display()
        );
    }
    let start = Instant::now();
    let manifest = build_image(&opts).map_err(anyhow::Error::from)?;
    bar.finish_and_clear();
    let dir = out.join(&manifest.name);
    let digest = image_digest(&dir).map_err(anyhow::Error::from)?;
    println!(
        "built {} in {:.1}s",
        dir.display(),
        start.elapsed().as_secs_f64()
    );
    println!("kernel {}, os_image_hash {digest}", manifest.kernel_version);
    Ok(())
}

/// `--json` only.
#[derive(Debug, Args)]
pub(crate) struct LsArgs {
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub(crate) async fn run(cmd: ImageCommand, client: Client) -> Result<(), Failure> {
    match cmd {
        ImageCommand::Build(args) => build(args),
        ImageCommand::RebuildCheck(args) => rebuild_check::run(args),
        ImageCommand::Measure(args) => measure::run(*args),
        ImageCommand::Ls(args) => {
            let images: Vec<ImageInfo> =
                client.call(Method::GET, "/v1/images", None::<&()>).await?;
            if args.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&images).unwrap_or_default()
                );
                return Ok(());
            }
            println!("{:<32} {:<10} {:<5} DIGEST", "NAME", "VERSION", "DEV");
            for i in &images {
                println!(
                    "{:<32} {:<10} {:<5} {}",
                    i.name,
                    i.version,
                    if i.is_dev { "yes" } else { "no" },
                    i.digest
                );
            }
            Ok(())
        }
    }
}
