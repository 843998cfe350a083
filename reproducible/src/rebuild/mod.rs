//! `dstack image rebuild-check`: the image built twice from one source
//! tree, in two directories, as two users, with different umask, locale and
//! time zone, and every output compared byte for byte.
//!
//! Each build copies the source, gets its own HOME, CARGO_HOME (the
//! caller's crate registry linked read-only: no network), Rust toolchain
//! (the caller's, linked to another path), target dir and caches, and runs
//! `scripts/build-init` (dstack-init and libseccomp from source, the way
//! `make build` builds them) and then the image assembly. Then the outputs
//! are compared: dstack-init, its build record, libseccomp.a and every file
//! of the image.
//!
//! - [`RebuildMode::Full`]: nothing reused. dstack-init with every crate,
//!   the assembler from the source tree, the kernel from an empty cache.
//! - [`RebuildMode::Reduced`] (CI): dstack-init's dependencies come from a
//!   warm target dir (copied; the workspace's own crates, libseccomp and the
//!   final link are rebuilt), the kernel from the kernel cache (whose own
//!   reproducibility `kernel-twice` checks) and the assembler is this
//!   binary.

mod copy;
mod run;
mod side;
mod users;

use std::ffi::OsString;
use std::fmt;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::compare::{self, Comparison, Difference, Side};
use crate::error::{BuildError, RebuildError};
use crate::inputs;
use copy::Owner;
use side::{Build, CargoHome, Shared};
use users::{Account, CreatedUsers};

/// How much a rebuild check rebuilds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RebuildMode {
    /// Every crate, the assembler and the kernel, from nothing.
    Full,
    /// Dependencies of dstack-init from a warm target dir, the cached
    /// kernel, and this binary as the assembler: what CI runs.
    Reduced,
}

impl fmt::Display for RebuildMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RebuildMode::Full => "full",
            RebuildMode::Reduced => "reduced",
        })
    }
}

/// One step of one build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RebuildStep {
    /// Copying the source and linking the caches.
    Prepare,
    /// `scripts/build-init`: libseccomp and dstack-init.
    Init,
    /// The image assembler from the source tree (full mode).
    Assembler,
    /// The image: packages, kernel, initramfs, metadata.
    Image,
}

impl fmt::Display for RebuildStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RebuildStep::Prepare => "prepare",
            RebuildStep::Init => "dstack-init",
            RebuildStep::Assembler => "assembler",
            RebuildStep::Image => "image",
        })
    }
}

/// What a rebuild check reports as it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RebuildProgress {
    /// Something the caller should know (who builds, what is reused).
    Note(String),
    /// A step started.
    Started {
        /// Which build.
        side: Side,
        /// The step.
        step: RebuildStep,
    },
    /// A step is running (about once a second).
    Running {
        /// Which build.
        side: Side,
        /// The step.
        step: RebuildStep,
        /// Time since it started.
        elapsed: Duration,
        /// The last line of its output.
        last_line: String,
    },
    /// A step finished.
    Finished {
        /// Which build.
        side: Side,
        /// The step.
        step: RebuildStep,
        /// How long it took.
        elapsed: Duration,
    },
    /// The outputs are being compared.
    Comparing,
}

/// What to check, and with what.
pub struct RebuildOptions {
    /// The source tree to build (a git checkout: its tracked and untracked,
    /// not ignored files are copied; otherwise everything but `target/`).
    pub source: PathBuf,
    /// How much to rebuild.
    pub mode: RebuildMode,
    /// The two users to build as (root only); `None`: create
    /// `dstack-rebuild-a` and `-b` when root, else build twice as the caller.
    pub users: Option<[String; 2]>,
    /// Directory the work dir is created in (default: the system's temp dir).
    pub work_parent: Option<PathBuf>,
    /// Keep the work dir (both builds and their logs) afterwards.
    pub keep: bool,
    /// The caller's CARGO_HOME, whose registry the builds use offline.
    pub cargo_home: PathBuf,
    /// Reduced: the target dir whose dstack-init dependencies are reused.
    pub seed_target: Option<PathBuf>,
    /// The .deb cache.
    pub debs: PathBuf,
    /// Downloaded sources (libseccomp's).
    pub downloads: PathBuf,
    /// Reduced: the kernel cache.
    pub kernels: PathBuf,
    /// Reduced: the assembler, run as `<program> <args> --init ... --out ...`
    /// (e.g. this dstack binary with `image build`).
    pub assembler: (PathBuf, Vec<OsString>),
    /// Parallel jobs for the kernel.
    pub jobs: usize,
    /// Pass `--allow-superseded` to the image builds.
    pub allow_superseded: bool,
    /// Also compare build a's image with this image directory.
    pub against: Option<PathBuf>,
    /// Called as the check goes.
    pub progress: Option<Box<dyn Fn(RebuildProgress) + Send>>,
}

impl fmt::Debug for RebuildOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RebuildOptions")
            .field("source", &self.source)
            .field("mode", &self.mode)
            .field("users", &self.users)
            .field("work_parent", &self.work_parent)
            .field("keep", &self.keep)
            .field("seed_target", &self.seed_target)
            .field("against", &self.against)
            .finish_non_exhaustive()
    }
}

impl RebuildOptions {
    fn report(&self, p: RebuildProgress) {
        if let Some(progress) = &self.progress {
            progress(p);
        }
    }
}

/// A differing file, with what diffoscope says about it when installed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explained {
    /// The difference.
    pub difference: Difference,
    /// diffoscope's text report (its first lines), if it ran.
    pub diffoscope: Option<String>,
}

/// Who built where, and in what environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildInfo {
    /// The user it ran as.
    pub user: String,
    /// Its root directory.
    pub dir: PathBuf,
    /// Its steps' umask.
    pub umask: String,
    /// Its `LC_ALL`.
    pub locale: String,
    /// Its `TZ`.
    pub tz: String,
}

impl fmt::Display for BuildInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} in {} (umask {}, LC_ALL={}, TZ={})",
            self.user,
            self.dir.display(),
            self.umask,
            self.locale,
            self.tz
        )
    }
}

/// The verdict of a rebuild check.
#[derive(Debug, Clone)]
pub struct RebuildReport {
    /// How much was rebuilt.
    pub mode: RebuildMode,
    /// Builds a and b.
    pub builds: [BuildInfo; 2],
    /// Build a against build b: every output file.
    pub comparison: Comparison,
    /// The differences, explained.
    pub explained: Vec<Explained>,
    /// Build a's image against the `against` image, if asked.
    pub against: Option<(PathBuf, Comparison)>,
    /// How long each step took.
    pub timings: Vec<(Side, RebuildStep, Duration)>,
    /// Build a's OS image hash.
    pub digest: String,
    /// The work dir, when kept.
    pub kept: Option<PathBuf>,
    /// diffoscope is not installed: differences are shown by offset only.
    pub no_diffoscope: bool,
}

impl RebuildReport {
    /// Both builds gave the same bytes (and match `against`, if given).
    pub fn is_reproducible(&self) -> bool {
        self.comparison.is_identical()
            && self.against.as_ref().is_none_or(|(_, c)| c.is_identical())
    }
}

/// Builds the image twice from `opts.source` and compares the outputs.
pub fn rebuild_check(opts: &RebuildOptions) -> Result<RebuildReport, RebuildError> {
    let source = opts
        .source
        .canonicalize()
        .map_err(BuildError::read(&opts.source))?;
    if !source.join("Cargo.lock").is_file() || !source.join("scripts/build-init").is_file() {
        return Err(RebuildError::NotASource { path: source });
    }
    // The toolchain first: nothing else is worth doing with the wrong one.
    let rustc_vv = tool_output("rustc", &["-vV"])?;
    inputs::rust_toolchain()?.check(&rustc_vv)?;
    let sysroot = PathBuf::from(tool_output("rustc", &["--print", "sysroot"])?);
    let seccomp = inputs::libseccomp_source()?;
    let reduced = opts.mode == RebuildMode::Reduced;
    if reduced {
        let lock = source.join("reproducible/inputs.lock");
        let text = fs::read_to_string(&lock).map_err(BuildError::read(&lock))?;
        if text != inputs::inputs_lock_text() {
            return Err(RebuildError::LockMismatch { source_dir: source });
        }
        if side::built_kernels(&opts.kernels)?.is_empty() {
            return Err(RebuildError::NoCachedKernel {
                dir: opts.kernels.clone(),
            });
        }
    }

    let mut created = CreatedUsers::default();
    let accounts = accounts(opts, &mut created)?;
    if accounts[0] == accounts[1] && accounts[0].uid == users::effective_uid()? {
        opts.report(RebuildProgress::Note(format!(
            "not root: both builds run as {} (in different directories, with different umask, \
             locale and time zone); run as root to build as two users",
            accounts[0].name
        )));
    }
    let work = tempfile::Builder::new()
        .prefix("dstack-rebuild-")
        .tempdir_in(opts.work_parent.clone().unwrap_or_else(std::env::temp_dir))
        .map_err(BuildError::write(std::env::temp_dir()))?;
    // Kept (on failure too) when asked; removed on every exit otherwise.
    let (work_guard, work_path) = if opts.keep {
        (None, work.keep())
    } else {
        let path = work.path().to_owned();
        (Some(work), path)
    };
    // The builds' users must be able to reach their own directories.
    fs::set_permissions(&work_path, fs::Permissions::from_mode(0o755))
        .map_err(BuildError::write(&work_path))?;
    let logs = work_path.join("logs");
    fs::create_dir(&logs).map_err(BuildError::write(&logs))?;
    opts.report(RebuildProgress::Note(format!(
        "{} rebuild of {} in {} as {} and {}",
        opts.mode,
        source.display(),
        work_path.display(),
        accounts[0].name,
        accounts[1].name
    )));

    // One snapshot of the source, which both builds copy: a tree being
    // edited while the check runs still gives both the same files.
    let snapshot = work_path.join("source");
    let files = source_files(&source)?;
    copy::files(&source, &files, &snapshot, None)?;
    let shared = Shared {
        source_files: files,
        source: snapshot,
        cargo_home: opts.cargo_home.clone(),
        sysroot: sysroot.clone(),
        seed_target: opts.seed_target.clone().filter(|_| reduced),
        debs: opts.debs.clone(),
        downloads: opts.downloads.clone(),
        kernels: reduced.then(|| opts.kernels.clone()),
        libseccomp_dir_name: format!("libseccomp-{}", seccomp.version),
    };
    if let Some(seed) = &shared.seed_target {
        let record = seed.join(side::INIT_TARGET).join(side::INIT_PROFILE);
        if !record.join("dstack-init.build.json").is_file() {
            opts.report(RebuildProgress::Note(format!(
                "{} has no dstack-init built by scripts/build-init: each build compiles every \
                 crate (about 10 minutes on 2 cores)",
                seed.display()
            )));
        }
    }
    // Reduced: both builds assemble with a copy of the given binary, which
    // their users can run.
    let assembler = if reduced {
        let bin = work_path.join("bin");
        fs::create_dir(&bin).map_err(BuildError::write(&bin))?;
        let copy = bin.join("assembler");
        fs::copy(&opts.assembler.0, &copy).map_err(BuildError::write(&copy))?;
        fs::set_permissions(&copy, fs::Permissions::from_mode(0o755))
            .map_err(BuildError::write(&copy))?;
        Some((copy, opts.assembler.1.clone()))
    } else {
        None
    };
    let toolchain_name = sysroot
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "rust".into());

    let mut timings = Vec::new();
    let euid = users::effective_uid()?;
    let builds: Vec<(Build, &Account, Option<Owner>)> = [Side::A, Side::B]
        .into_iter()
        .zip(&accounts)
        .map(|(side, account)| {
            // Another account than ours: root hands it its directories and
            // switches to it for every step.
            let owner = (account.uid != euid).then_some(Owner {
                uid: account.uid,
                gid: account.gid,
            });
            let cargo_home = match (reduced, owner) {
                (false, _) => CargoHome::Own,
                (true, Some(_)) => CargoHome::MountedAt(opts.cargo_home.clone()),
                (true, None) => CargoHome::Callers(opts.cargo_home.clone()),
            };
            (
                Build::new(&work_path, side, &toolchain_name, cargo_home),
                account,
                owner,
            )
        })
        .collect();
    for (build, _, owner) in &builds {
        prepare(opts, &shared, build, *owner, &mut timings)?;
    }
    for (build, account, owner) in &builds {
        run_steps(
            opts,
            build,
            account,
            *owner,
            assembler.as_ref(),
            &logs,
            &mut timings,
        )?;
    }
    let builds: Vec<Build> = builds.into_iter().map(|(b, _, _)| b).collect();

    opts.report(RebuildProgress::Comparing);
    let outputs = work_path.join("outputs");
    let mut digest = String::new();
    for build in &builds {
        let dir = outputs.join(build.side.to_string());
        let image = collect(build, &dir, &shared.libseccomp_dir_name, opts.mode)?;
        if build.side == Side::A {
            digest = crate::manifest::image_digest(&image)?;
        }
    }
    let comparison = compare::compare_dirs(&outputs.join("a"), &outputs.join("b"))?;
    let against = match &opts.against {
        Some(reference) => Some((
            reference.clone(),
            compare::compare_dirs(reference, &outputs.join("a/image"))?,
        )),
        None => None,
    };
    let diffoscope = which("diffoscope");
    let explained = comparison
        .differences
        .iter()
        .map(|d| Explained {
            diffoscope: match (d, &diffoscope) {
                (Difference::Content { path, .. }, Some(tool)) => Some(run_diffoscope(
                    tool,
                    &outputs.join("a").join(path),
                    &outputs.join("b").join(path),
                )),
                _ => None,
            },
            difference: d.clone(),
        })
        .collect();
    let kept = opts.keep.then(|| work_path.clone());
    drop(created);
    drop(work_guard);
    let info = |build: &Build, account: &Account| BuildInfo {
        user: account.name.clone(),
        dir: build.root.clone(),
        umask: build.variation.umask.to_owned(),
        locale: build.variation.locale.to_owned(),
        tz: build.variation.tz.to_owned(),
    };
    Ok(RebuildReport {
        mode: opts.mode,
        builds: [
            info(&builds[0], &accounts[0]),
            info(&builds[1], &accounts[1]),
        ],
        comparison,
        explained,
        against,
        timings,
        digest,
        kept,
        no_diffoscope: diffoscope.is_none(),
    })
}

/// The two accounts the builds run as.
fn accounts(
    opts: &RebuildOptions,
    created: &mut CreatedUsers,
) -> Result<[Account; 2], RebuildError> {
    let root = users::effective_uid()? == 0;
    match (&opts.users, root) {
        (Some(_), false) => Err(RebuildError::UsersNeedRoot),
        (Some([a, b]), true) => {
            let find = |name: &String| {
                users::lookup(name)?.ok_or_else(|| RebuildError::NoSuchUser { name: name.clone() })
            };
            Ok([find(a)?, find(b)?])
        }
        (None, true) => Ok([
            users::ensure_system_user(users::DEFAULT_USERS[0], created)?,
            users::ensure_system_user(users::DEFAULT_USERS[1], created)?,
        ]),
        (None, false) => {
            let me = users::current()?;
            Ok([me.clone(), me])
        }
    }
}

/// Fills one build's directory.
fn prepare(
    opts: &RebuildOptions,
    shared: &Shared,
    build: &Build,
    owner: Option<Owner>,
    timings: &mut Vec<(Side, RebuildStep, Duration)>,
) -> Result<(), RebuildError> {
    let side = build.side;
    let started = std::time::Instant::now();
    opts.report(RebuildProgress::Started {
        side,
        step: RebuildStep::Prepare,
    });
    build.prepare(shared, owner, &|what| {
        opts.report(RebuildProgress::Running {
            side,
            step: RebuildStep::Prepare,
            elapsed: started.elapsed(),
            last_line: what,
        })
    })?;
    let elapsed = started.elapsed();
    opts.report(RebuildProgress::Finished {
        side,
        step: RebuildStep::Prepare,
        elapsed,
    });
    timings.push((side, RebuildStep::Prepare, elapsed));
    Ok(())
}

/// Runs one build's steps: dstack-init, (full) the assembler, the image.
fn run_steps(
    opts: &RebuildOptions,
    build: &Build,
    account: &Account,
    owner: Option<Owner>,
    assembler: Option<&(PathBuf, Vec<OsString>)>,
    logs: &Path,
    timings: &mut Vec<(Side, RebuildStep, Duration)>,
) -> Result<(), RebuildError> {
    let side = build.side;
    let ctx = run::StepContext {
        side: side.to_string(),
        user: owner.map(|o| (o.uid, o.gid)),
        umask: build.variation.umask,
        env: build.env(account),
        cwd: build.src.clone(),
        mount: match &build.cargo_home_seen {
            CargoHome::MountedAt(seen) => {
                Some(run::Mount::new(build.cargo_home.clone(), seen.clone()))
            }
            _ => None,
        },
    };
    let mut step = |step: RebuildStep, program: &Path, args: Vec<OsString>| {
        opts.report(RebuildProgress::Started { side, step });
        let log = logs.join(format!("{side}-{step}.log"));
        let elapsed = run::step(
            &ctx,
            &step.to_string(),
            program,
            &args,
            &log,
            &|elapsed, line| {
                opts.report(RebuildProgress::Running {
                    side,
                    step,
                    elapsed,
                    last_line: line,
                })
            },
        )?;
        opts.report(RebuildProgress::Finished {
            side,
            step,
            elapsed,
        });
        timings.push((side, step, elapsed));
        Ok::<_, RebuildError>(log)
    };

    let init_log = step(
        RebuildStep::Init,
        &build.src.join("scripts/build-init"),
        vec!["--offline".into()],
    )?;
    let compiled = fs::read_to_string(&init_log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.trim_start().starts_with("Compiling "))
        .count();
    opts.report(RebuildProgress::Note(format!(
        "build {side}: dstack-init compiled {compiled} crates"
    )));

    let (program, mut args) = match assembler {
        Some((program, args)) => (program.clone(), args.clone()),
        None => {
            step(
                RebuildStep::Assembler,
                &build.toolchain.join("bin/cargo"),
                [
                    "build",
                    "--locked",
                    "--offline",
                    "-p",
                    "dstack-reproducible",
                    "--example",
                    "build",
                ]
                .map(OsString::from)
                .to_vec(),
            )?;
            (build.target.join("debug/examples/build"), Vec::new())
        }
    };
    args.extend([
        "--init".into(),
        build.init().into(),
        "--out".into(),
        build.out.clone().into(),
        "--cache".into(),
        build.debs().into(),
        "--kernel-cache".into(),
        build.kernels().into(),
        "--jobs".into(),
        opts.jobs.to_string().into(),
    ]);
    if opts.allow_superseded {
        args.push("--allow-superseded".into());
    }
    step(RebuildStep::Image, &program, args)?;
    Ok(())
}

/// Links (or copies) a build's outputs into `dir`: dstack-init and its
/// build record, libseccomp.a, the image (and, full, the kernel's config).
/// Returns the image directory there.
fn collect(
    build: &Build,
    dir: &Path,
    libseccomp_dir_name: &str,
    mode: RebuildMode,
) -> Result<PathBuf, RebuildError> {
    let init = build.init();
    let images: Vec<PathBuf> = fs::read_dir(&build.out)
        .map_err(BuildError::read(&build.out))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.is_dir()
                && !p
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    let [image] = images.as_slice() else {
        return Err(RebuildError::NoImage {
            side: build.side.to_string(),
            count: images.len(),
            dir: build.out.clone(),
        });
    };
    let mut files = vec![
        (init.clone(), "dstack-init".to_owned()),
        (
            crate::init_record::record_path(&init),
            "dstack-init.build.json".to_owned(),
        ),
        (
            build
                .cache
                .join(format!("{libseccomp_dir_name}-musl/libseccomp.a")),
            "libseccomp.a".to_owned(),
        ),
    ];
    for entry in fs::read_dir(image).map_err(BuildError::read(image))? {
        let entry = entry.map_err(BuildError::read(image))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        files.push((entry.path(), format!("image/{name}")));
    }
    if mode == RebuildMode::Full {
        for key in side::built_kernels(&build.kernels())? {
            for f in ["config", "release"] {
                files.push((build.kernels().join(&key).join(f), format!("kernel/{f}")));
            }
        }
    }
    for (from, name) in files {
        let to = dir.join(&name);
        copy::create_dirs(to.parent().unwrap_or(dir), None)?;
        if fs::hard_link(&from, &to).is_err() {
            fs::copy(&from, &to).map_err(BuildError::read(&from))?;
        }
    }
    Ok(dir.join("image"))
}

/// The files of the source tree to copy: git's tracked and untracked
/// (not ignored) files in a checkout, else everything but build outputs.
fn source_files(source: &Path) -> Result<Vec<PathBuf>, RebuildError> {
    if source.join(".git").exists()
        && let Ok(out) = Command::new("git")
            .arg("-C")
            .arg(source)
            .args([
                "ls-files",
                "-z",
                "--cached",
                "--others",
                "--exclude-standard",
            ])
            .output()
        && out.status.success()
    {
        return Ok(out
            .stdout
            .split(|b| *b == 0)
            .filter(|p| !p.is_empty())
            .map(|p| PathBuf::from(String::from_utf8_lossy(p).into_owned()))
            .collect());
    }
    let mut files = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = source.join(&rel);
        for entry in fs::read_dir(&dir).map_err(BuildError::read(&dir))? {
            let entry = entry.map_err(BuildError::read(&dir))?;
            let rel = rel.join(entry.file_name());
            let skipped = ["target", ".git", "fuzz/target", "contracts/node_modules"]
                .iter()
                .any(|s| rel == Path::new(s));
            if skipped {
                continue;
            }
            if entry
                .file_type()
                .map_err(BuildError::read(entry.path()))?
                .is_dir()
            {
                stack.push(rel);
            } else {
                files.push(rel);
            }
        }
    }
    files.sort();
    Ok(files)
}

/// A tool's trimmed standard output.
fn tool_output(tool: &str, args: &[&str]) -> Result<String, RebuildError> {
    let out = Command::new(tool)
        .args(args)
        .output()
        .map_err(|source| RebuildError::Spawn {
            tool: tool.into(),
            source,
        })?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The full path of `tool` on PATH.
fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join(tool))
            .find(|p| p.is_file())
    })
}

/// The lines of a diffoscope report that are shown.
const DIFFOSCOPE_LINES: usize = 120;

/// diffoscope's text report on two files, its first lines.
fn run_diffoscope(tool: &Path, a: &Path, b: &Path) -> String {
    let out = Command::new(tool)
        .arg("--text")
        .arg("-")
        .arg(a)
        .arg(b)
        .output();
    match out {
        Ok(out) => {
            let text = String::from_utf8_lossy(&out.stdout);
            let lines: Vec<&str> = text.lines().collect();
            let mut shown = lines[..lines.len().min(DIFFOSCOPE_LINES)].join("\n");
            if lines.len() > DIFFOSCOPE_LINES {
                shown.push_str(&format!(
                    "\n… {} more lines (rerun with --keep and run diffoscope on the kept outputs)",
                    lines.len() - DIFFOSCOPE_LINES
                ));
            }
            if shown.is_empty() {
                shown = String::from_utf8_lossy(&out.stderr).trim().to_owned();
            }
            shown
        }
        Err(e) => format!("diffoscope did not run: {e}"),
    }
}
