//! `dstack image rebuild-check`: the security team's bit-for-bit rebuild.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use dstack_reproducible::{
    Difference, RebuildMode, RebuildOptions, RebuildProgress, RebuildReport, rebuild_check,
};

use super::cache_home;
use crate::commands::Failure;

/// Arguments of `dstack image rebuild-check`.
#[derive(Debug, Args)]
pub(crate) struct RebuildCheckArgs {
    /// Rebuild everything: every crate of dstack-init, the image assembler
    /// from the source, the kernel from an empty cache (about 45 minutes on
    /// 2 cores). Without it: the reduced check CI runs (dstack-init's
    /// dependencies from the warm target dir, the cached kernel, this binary
    /// as the assembler).
    #[arg(long)]
    full: bool,
    /// The source tree (default: the checkout this dstack was built from).
    #[arg(long)]
    source: Option<PathBuf>,
    /// The two users to build as, `A,B` (root only). Default as root:
    /// throwaway system users dstack-rebuild-a and dstack-rebuild-b;
    /// otherwise both builds run as you, in different directories.
    #[arg(long, value_name = "A,B")]
    users: Option<String>,
    /// Where the work directory is created (default: the temp dir).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Keep the work directory (both builds, their logs and outputs).
    #[arg(long)]
    keep: bool,
    /// Reduced check: the target dir whose dstack-init dependencies are
    /// reused (default: $CARGO_TARGET_DIR, else ~/.cache/dstack-rs/target).
    #[arg(long)]
    seed_target: Option<PathBuf>,
    /// Also compare the image with this image directory (e.g. the one
    /// `make image` built).
    #[arg(long)]
    against: Option<PathBuf>,
    #[command(flatten)]
    inputs: super::InputArgs,
}

/// The checkout this binary was built from.
fn build_checkout() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

fn minutes(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

/// Prints progress: a spinner with the step's last output line on a
/// terminal, one line a minute otherwise (CI logs).
fn progress_printer() -> (
    indicatif::ProgressBar,
    impl Fn(RebuildProgress) + Send + 'static,
) {
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    let tty = std::io::stderr().is_terminal();
    if tty {
        bar.enable_steady_tick(Duration::from_millis(120));
    }
    let printer = bar.clone();
    let suspender = bar.clone();
    let last_beat = Mutex::new(0u64);
    let print = move |line: String| suspender.suspend(|| eprintln!("{line}"));
    let report = move |p: RebuildProgress| match p {
        RebuildProgress::Note(note) => print(note),
        RebuildProgress::Started { side, step } => {
            if let Ok(mut beat) = last_beat.lock() {
                *beat = 0;
            }
            print(format!("build {side}: {step} ..."));
        }
        RebuildProgress::Running {
            side,
            step,
            elapsed,
            last_line,
        } => {
            let line: String = last_line.chars().take(100).collect();
            let msg = format!("build {side}: {step} [{}] {line}", minutes(elapsed));
            if tty {
                printer.set_message(msg);
            } else if let Ok(mut beat) = last_beat.lock()
                && elapsed.as_secs() / 60 > *beat
            {
                *beat = elapsed.as_secs() / 60;
                print(msg);
            }
        }
        RebuildProgress::Finished {
            side,
            step,
            elapsed,
        } => print(format!("build {side}: {step} done in {}", minutes(elapsed))),
        RebuildProgress::Comparing => print("comparing the outputs".into()),
        _ => {}
    };
    (bar, report)
}

pub(super) fn run(args: RebuildCheckArgs) -> Result<(), Failure> {
    let users = match &args.users {
        None => None,
        Some(list) => match list.split_once(',') {
            Some((a, b)) if !a.is_empty() && !b.is_empty() && !b.contains(',') => {
                Some([a.to_owned(), b.to_owned()])
            }
            _ => {
                return Err(anyhow::anyhow!("--users takes two user names: A,B").into());
            }
        },
    };
    let home = cache_home();
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .context("neither CARGO_HOME nor HOME is set")?;
    let seed_target = args.seed_target.unwrap_or_else(|| {
        std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| home.join("target"))
    });
    let assembler = std::env::current_exe().context("cannot find this dstack binary")?;
    let mode = if args.full {
        RebuildMode::Full
    } else {
        RebuildMode::Reduced
    };
    let (bar, report) = progress_printer();
    let opts = RebuildOptions {
        source: args.source.unwrap_or_else(build_checkout),
        mode,
        users,
        work_parent: args.work_dir,
        keep: args.keep,
        cargo_home,
        seed_target: Some(seed_target),
        debs: args.inputs.cache.unwrap_or_else(|| home.join("debs")),
        downloads: home.join("downloads"),
        kernels: args
            .inputs
            .kernel_cache
            .unwrap_or_else(|| home.join("kernel")),
        assembler: (assembler, vec!["image".into(), "build".into()]),
        jobs: args
            .inputs
            .jobs
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from)),
        allow_superseded: args.inputs.allow_superseded,
        against: args.against,
        progress: Some(Box::new(report)),
    };
    let result = rebuild_check(&opts);
    bar.finish_and_clear();
    // Could not run to a verdict: exit 2, apart from "differs" (1).
    let report = result.map_err(|e| Failure::BadInput(e.into()))?;
    print_report(&report);
    if report.is_reproducible() {
        Ok(())
    } else {
        let differing = report.comparison.differences.len()
            + report
                .against
                .as_ref()
                .map_or(0, |(_, c)| c.differences.len());
        Err(Failure::Rejected(format!(
            "not reproducible: {differing} output file(s) differ"
        )))
    }
}

fn print_report(report: &RebuildReport) {
    println!("{} rebuild check", report.mode);
    for (side, build) in ["a", "b"].iter().zip(&report.builds) {
        println!("  build {side}: {build}");
    }
    for (side, name) in [
        (dstack_reproducible::Side::A, "a"),
        (dstack_reproducible::Side::B, "b"),
    ] {
        let steps: Vec<String> = report
            .timings
            .iter()
            .filter(|(s, _, _)| *s == side)
            .map(|(_, step, d)| format!("{step} {}", minutes(*d)))
            .collect();
        println!("  build {name} took: {}", steps.join(", "));
    }
    let c = &report.comparison;
    println!(
        "identical ({} files): {}",
        c.identical.len(),
        c.identical.join(", ")
    );
    for explained in &report.explained {
        println!("DIFFERS {}", explained.difference);
        if let Some(text) = &explained.diffoscope {
            println!("  diffoscope:\n{text}");
        }
    }
    let content_differs = report
        .explained
        .iter()
        .any(|e| matches!(e.difference, Difference::Content { .. }));
    if report.no_diffoscope && content_differs {
        println!(
            "(diffoscope would show what differs inside these files: install it with \
             apt-get install --no-install-recommends diffoscope-minimal, then rerun)"
        );
    }
    if let Some((reference, against)) = &report.against {
        if against.is_identical() {
            println!(
                "build a's image is identical to {} ({} files)",
                reference.display(),
                against.identical.len()
            );
        }
        for d in &against.differences {
            println!(
                "DIFFERS from {} (a = it, b = build a): {d}",
                reference.display()
            );
        }
    }
    if let Some(kept) = &report.kept {
        println!("kept {} (outputs/a, outputs/b, logs/)", kept.display());
    }
    if report.is_reproducible() {
        println!("reproducible: os_image_hash {}", report.digest);
    }
}
