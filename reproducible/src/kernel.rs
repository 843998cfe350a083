//! The purpose-built guest kernel: Debian's pinned `linux-source-7.x`,
//! configured from `allnoconfig` plus the fragments in `reproducible/kernel/`
//! (everything built in, no modules), compiled reproducibly and cached by the
//! hash of everything that decides its bytes.
//!
//! Reproducibility: the build runs in a fresh directory with a fixed
//! timestamp, user, host, locale, time zone and umask. The kernel build
//! already strips the source directory from file names it records
//! (`-fmacro-prefix-map`), and the config has no debug info, so two builds in
//! different directories give the same bzImage. The host compiler is an
//! input too: its version is part of the cache key and the image metadata.

use std::fmt::Write as _;
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};

use crate::error::BuildError;

/// One config fragment: its file name and text.
#[derive(Debug, Clone, Copy)]
pub struct Fragment {
    /// File name under `reproducible/kernel/`.
    pub name: &'static str,
    /// The fragment, `CONFIG_X=value` lines and `#` comments.
    pub text: &'static str,
}

macro_rules! fragment {
    ($name:literal) => {
        Fragment {
            name: $name,
            text: include_str!(concat!("../kernel/", $name)),
        }
    };
}

/// The checked-in fragments, one concern each, compiled into the crate so a
/// build can only use what this source tree says.
pub const FRAGMENTS: &[Fragment] = &[
    fragment!("base.config"),
    fragment!("platform.config"),
    fragment!("tdx.config"),
    fragment!("virtio.config"),
    fragment!("net.config"),
    fragment!("storage.config"),
    fragment!("containers.config"),
    fragment!("hardening.config"),
];

/// The fixed build time of every kernel (also what `uname -v` shows).
const BUILD_TIMESTAMP: &str = "Thu Jan  1 00:00:00 UTC 1970";
/// Bumped when the build procedure changes the bytes for the same inputs.
const RECIPE_VERSION: &str = "dstack-kernel-v1";

/// The options the fragments set, in order: `(CONFIG_NAME, value)` where
/// `value` is `y`, `n`, a number or a quoted string as written.
pub fn requested_options(fragments: &[Fragment]) -> Result<Vec<(String, String)>, BuildError> {
    let mut options: Vec<(String, String)> = Vec::new();
    for fragment in fragments {
        for (n, line) in fragment.text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = || BuildError::KernelFragment {
                fragment: fragment.name.to_owned(),
                line: n + 1,
                reason: format!("expected CONFIG_NAME=value, found {line:?}"),
            };
            let (name, value) = line.split_once('=').ok_or_else(bad)?;
            let valid_name = name.starts_with("CONFIG_")
                && name.len() > 7
                && name
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
            if !valid_name || value.is_empty() {
                return Err(bad());
            }
            if value == "m" {
                return Err(BuildError::KernelFragment {
                    fragment: fragment.name.to_owned(),
                    line: n + 1,
                    reason: format!("{name}=m: the guest kernel has no modules"),
                });
            }
            if let Some((_, earlier)) = options.iter().find(|(o, _)| o == name) {
                if earlier != value {
                    return Err(BuildError::KernelFragment {
                        fragment: fragment.name.to_owned(),
                        line: n + 1,
                        reason: format!("{name} is set to {earlier} by an earlier fragment"),
                    });
                }
                continue;
            }
            options.push((name.to_owned(), value.to_owned()));
        }
    }
    Ok(options)
}

/// The value of each option in a generated `.config` (`n` when unset).
fn config_value<'a>(config: &'a str, name: &str) -> &'a str {
    let set = format!("{name}=");
    config
        .lines()
        .find_map(|l| l.strip_prefix(&set))
        .unwrap_or("n")
}

/// The requested options the generated `.config` does not have as asked
/// (Kconfig silently drops an option whose dependencies are off).
fn unmet_options(config: &str, requested: &[(String, String)]) -> Vec<String> {
    requested
        .iter()
        .filter(|(name, want)| config_value(config, name) != want)
        .map(|(name, want)| format!("{name}={want} (got {})", config_value(config, name)))
        .collect()
}

/// The host toolchain that compiles the kernel, as one line per tool. It is
/// part of the cache key: another compiler gives other bytes.
pub fn toolchain_id() -> Result<String, BuildError> {
    let mut id = String::new();
    for (tool, arg) in [
        ("gcc", "--version"),
        ("ld", "--version"),
        ("make", "--version"),
    ] {
        let out = Command::new(tool)
            .arg(arg)
            .output()
            .map_err(|source| BuildError::Spawn { tool, source })?;
        let first = String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned();
        let _ = writeln!(id, "{first}");
    }
    Ok(id)
}

/// What decides a kernel's bytes, hashed: the source package, the
/// fragments, the toolchain and this recipe.
pub fn cache_key(source_sha256: &str, fragments: &[Fragment], toolchain: &str) -> String {
    let mut h = Sha256::new();
    h.update(RECIPE_VERSION.as_bytes());
    h.update(b"\0");
    h.update(source_sha256.as_bytes());
    for f in fragments {
        h.update(b"\0");
        h.update(f.name.as_bytes());
        h.update(b"\0");
        h.update(f.text.as_bytes());
    }
    h.update(b"\0");
    h.update(toolchain.as_bytes());
    hex::encode(h.finalize())
}

/// A kernel in the cache.
#[derive(Debug, Clone)]
pub struct BuiltKernel {
    /// `<cache>/<key>/bzImage`.
    pub bzimage: PathBuf,
    /// `<cache>/<key>/config`, the full generated config.
    pub config: PathBuf,
    /// `uname -r` of this kernel.
    pub release: String,
    /// The cache key (see [`cache_key`]).
    pub key: String,
    /// The host toolchain it was (or would be) built with ([`toolchain_id`]).
    pub toolchain: String,
    /// It was already cached; nothing was compiled.
    pub cached: bool,
}

/// Progress of a kernel build.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum KernelProgress {
    /// The source tarball is being unpacked.
    Unpacking,
    /// The config was generated and every requested option checked.
    Configured {
        /// Options the fragments set.
        options: usize,
    },
    /// `objects` compile and link steps have run so far (of about `expected`).
    Compiling {
        /// Steps done.
        objects: usize,
        /// Steps a build of this config took last time, or an estimate.
        expected: usize,
    },
}

/// Inputs of [`build_kernel`].
pub struct KernelBuild<'a> {
    /// The verified `linux-source-7.x` .deb.
    pub source_deb: &'a Path,
    /// Its pinned sha256.
    pub source_sha256: &'a str,
    /// Kernel cache directory (`~/.cache/dstack-rs/kernel`).
    pub cache_dir: &'a Path,
    /// Parallel jobs for make.
    pub jobs: usize,
    /// Called as the build goes.
    pub progress: &'a dyn Fn(KernelProgress),
}

impl std::fmt::Debug for KernelBuild<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelBuild")
            .field("source_deb", &self.source_deb)
            .field("source_sha256", &self.source_sha256)
            .field("cache_dir", &self.cache_dir)
            .field("jobs", &self.jobs)
            .finish_non_exhaustive()
    }
}

/// About how many steps (`CC`, `LD`, `AR`, ...) the build prints; only for
/// the progress bar.
const EXPECTED_STEPS: usize = 2600;

/// Returns the kernel for these inputs, from the cache or freshly built. A
/// failed build leaves nothing in the cache but its log.
pub fn build_kernel(b: &KernelBuild<'_>) -> Result<BuiltKernel, BuildError> {
    let toolchain = toolchain_id()?;
    let key = cache_key(b.source_sha256, FRAGMENTS, &toolchain);
    let dir = b.cache_dir.join(&key);
    let bzimage = dir.join("bzImage");
    let config = dir.join("config");
    let release_file = dir.join("release");
    if bzimage.is_file() && config.is_file() && release_file.is_file() {
        let release = fs::read_to_string(&release_file)
            .map_err(BuildError::read(&release_file))?
            .trim()
            .to_owned();
        return Ok(BuiltKernel {
            bzimage,
            config,
            release,
            key,
            toolchain,
            cached: true,
        });
    }
    fs::create_dir_all(b.cache_dir).map_err(BuildError::write(b.cache_dir))?;
    let work = tempfile::Builder::new()
        .prefix(".build-")
        .tempdir_in(b.cache_dir)
        .map_err(BuildError::write(b.cache_dir))?;
    let log_path = b.cache_dir.join(format!("{key}.log"));
    // One log per attempt: a failed attempt's log is replaced by the next.
    fs::write(&log_path, b"").map_err(BuildError::write(&log_path))?;

    (b.progress)(KernelProgress::Unpacking);
    let tree = unpack_source(b.source_deb, work.path())?;

    let requested = requested_options(FRAGMENTS)?;
    let mut merged = String::new();
    for f in FRAGMENTS {
        merged.push_str(f.text);
        merged.push('\n');
    }
    let merged_path = work.path().join("dstack.config");
    fs::write(&merged_path, merged).map_err(BuildError::write(&merged_path))?;
    let allconfig = format!("KCONFIG_ALLCONFIG={}", merged_path.display());
    run_make(&tree, &["allnoconfig", &allconfig], &log_path, None)?;
    let generated_path = tree.join(".config");
    let generated =
        fs::read_to_string(&generated_path).map_err(BuildError::read(&generated_path))?;
    let unmet = unmet_options(&generated, &requested);
    if !unmet.is_empty() {
        return Err(BuildError::KernelConfig { unmet });
    }
    (b.progress)(KernelProgress::Configured {
        options: requested.len(),
    });

    let jobs = format!("-j{}", b.jobs.max(1));
    let progress = |objects| {
        (b.progress)(KernelProgress::Compiling {
            objects,
            expected: EXPECTED_STEPS,
        })
    };
    run_make(&tree, &[&jobs, "bzImage"], &log_path, Some(&progress))?;
    let release = run_make_output(&tree, &["-s", "kernelrelease"])?;

    // Publish atomically: a half-copied kernel must never look cached.
    let staged = work.path().join("out");
    fs::create_dir(&staged).map_err(BuildError::write(&staged))?;
    copy(&tree.join("arch/x86/boot/bzImage"), &staged.join("bzImage"))?;
    copy(&generated_path, &staged.join("config"))?;
    fs::write(staged.join("release"), format!("{release}\n"))
        .map_err(BuildError::write(&staged))?;
    if dir.exists() {
        fs::remove_dir_all(&dir).map_err(BuildError::write(&dir))?;
    }
    fs::rename(&staged, &dir).map_err(BuildError::write(&dir))?;
    Ok(BuiltKernel {
        bzimage,
        config,
        release,
        key,
        toolchain,
        cached: false,
    })
}

/// Unpacks the .deb's source tarball into `work` and returns the tree.
fn unpack_source(deb: &Path, work: &Path) -> Result<PathBuf, BuildError> {
    let root = work.join("deb");
    crate::deb::extract("linux-source", deb, &root)?;
    let src = root.join("usr/src");
    let tarball = fs::read_dir(&src)
        .map_err(BuildError::read(&src))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("linux-source-") && n.ends_with(".tar.xz"))
        })
        .ok_or_else(|| BuildError::MissingFile {
            package: "linux-source".into(),
            path: "/usr/src/linux-source-*.tar.xz".into(),
        })?;
    let mut tar = Command::new("tar");
    tar.arg("-xJf").arg(&tarball).arg("-C").arg(work);
    if let Err(stderr) = crate::tool::run("tar", &mut tar)? {
        return Err(BuildError::Extract {
            package: tarball.display().to_string(),
            stderr,
        });
    }
    let _ = fs::remove_dir_all(&root);
    let name = tarball
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_suffix(".tar.xz"))
        .unwrap_or_default();
    Ok(work.join(name))
}

/// `make` in the kernel tree with the reproducible environment.
fn make_command(tree: &Path, args: &[&str]) -> Command {
    // umask through sh: std's Command has no safe umask, and the files the
    // build writes into the image must not depend on the caller's.
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("umask 022 && exec make \"$@\"")
        .arg("make")
        .args(args)
        .current_dir(tree)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("LC_ALL", "C")
        .env("TZ", "UTC")
        .env("KBUILD_BUILD_TIMESTAMP", BUILD_TIMESTAMP)
        .env("KBUILD_BUILD_USER", "dstack")
        .env("KBUILD_BUILD_HOST", "dstack")
        .env("KBUILD_BUILD_VERSION", "1")
        .env("SOURCE_DATE_EPOCH", "0");
    cmd
}

fn run_make(
    tree: &Path,
    args: &[&str],
    log_path: &Path,
    progress: Option<&dyn Fn(usize)>,
) -> Result<(), BuildError> {
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)
        .map_err(BuildError::write(log_path))?;
    let mut child = make_command(tree, args)
        .stdout(Stdio::piped())
        .stderr(log.try_clone().map_err(BuildError::write(log_path))?)
        .spawn()
        .map_err(|source| BuildError::Spawn {
            tool: "make",
            source,
        })?;
    let mut log = std::io::LineWriter::new(log);
    let mut steps = 0;
    if let Some(stdout) = child.stdout.take() {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            use std::io::Write as _;
            let _ = writeln!(log, "{line}");
            // kbuild's quiet lines: two spaces, the step, the target.
            if line.starts_with("  ") && !line.starts_with("   ") {
                steps += 1;
                if let Some(report) = progress
                    && steps % 20 == 0
                {
                    report(steps);
                }
            }
        }
    }
    let status = child.wait().map_err(|source| BuildError::Spawn {
        tool: "make",
        source,
    })?;
    if status.success() {
        return Ok(());
    }
    Err(BuildError::KernelBuild {
        step: args.join(" "),
        log: log_path.to_owned(),
        tail: tail(log_path, 15),
    })
}

fn run_make_output(tree: &Path, args: &[&str]) -> Result<String, BuildError> {
    crate::tool::run("make", &mut make_command(tree, args))?.map_err(|tail| {
        BuildError::KernelBuild {
            step: args.join(" "),
            log: PathBuf::new(),
            tail,
        }
    })
}

/// The last `n` lines of a log, for an error message.
fn tail(path: &Path, n: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn copy(from: &Path, to: &Path) -> Result<(), BuildError> {
    fs::copy(from, to).map_err(BuildError::write(to))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn option<'a>(options: &'a [(String, String)], name: &str) -> Option<&'a str> {
        options
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn fragments_build_in_tdx_measurements_and_quotes() {
        let options = requested_options(FRAGMENTS).unwrap();
        // RTMR3 is extended through the TSM-measurement sysfs
        // (/sys/devices/virtual/misc/tdx_guest/measurements/rtmr3:sha384).
        for name in [
            "CONFIG_INTEL_TDX_GUEST",
            "CONFIG_TDX_GUEST_DRIVER",
            "CONFIG_TSM_MEASUREMENTS",
            "CONFIG_TSM_REPORTS",
            "CONFIG_CONFIGFS_FS",
        ] {
            assert_eq!(option(&options, name), Some("y"), "{name}");
        }
    }

    #[test]
    fn fragments_have_no_modules_and_what_the_guest_runs() {
        let options = requested_options(FRAGMENTS).unwrap();
        assert_eq!(option(&options, "CONFIG_MODULES"), Some("n"));
        assert!(options.iter().all(|(_, v)| v != "m"));
        for name in [
            "CONFIG_VIRTIO_NET",
            "CONFIG_VIRTIO_BLK",
            "CONFIG_VIRTIO_VSOCKETS",
            "CONFIG_EXT4_FS",
            "CONFIG_DM_CRYPT",
            "CONFIG_DM_INTEGRITY",
            "CONFIG_OVERLAY_FS",
            "CONFIG_CGROUPS",
            "CONFIG_SECCOMP_FILTER",
            "CONFIG_WIREGUARD",
            "CONFIG_EFI_STUB",
        ] {
            assert_eq!(option(&options, name), Some("y"), "{name}");
        }
        for absent in ["CONFIG_SOUND", "CONFIG_USB_SUPPORT", "CONFIG_WLAN"] {
            assert_eq!(
                option(&options, absent),
                None,
                "{absent} is off by allnoconfig"
            );
        }
    }

    #[test]
    fn every_fragment_says_why() {
        for f in FRAGMENTS {
            assert!(
                f.text.lines().next().is_some_and(|l| l.starts_with("# ")),
                "{} must start with a comment saying what it is for",
                f.name
            );
        }
    }

    #[test]
    fn bad_fragments_are_refused_with_their_line() {
        let module = Fragment {
            name: "x.config",
            text: "# x\nCONFIG_FOO=m\n",
        };
        let err = requested_options(&[module]).unwrap_err();
        assert!(
            matches!(&err, BuildError::KernelFragment { line: 2, .. }),
            "{err}"
        );
        let garbage = Fragment {
            name: "x.config",
            text: "FOO=y\n",
        };
        assert!(requested_options(&[garbage]).is_err());
        let a = Fragment {
            name: "a.config",
            text: "CONFIG_FOO=y\n",
        };
        let b = Fragment {
            name: "b.config",
            text: "CONFIG_FOO=n\n",
        };
        assert!(requested_options(&[a, b]).is_err());
    }

    #[test]
    fn dropped_options_are_reported() {
        let config = "CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=\"x\"\n";
        let requested = vec![
            ("CONFIG_A".to_owned(), "y".to_owned()),
            ("CONFIG_B".to_owned(), "y".to_owned()),
            ("CONFIG_C".to_owned(), "\"x\"".to_owned()),
            ("CONFIG_D".to_owned(), "n".to_owned()),
        ];
        assert_eq!(unmet_options(config, &requested), ["CONFIG_B=y (got n)"]);
    }

    #[test]
    fn the_key_covers_source_fragments_and_toolchain() {
        let base = cache_key("aa", FRAGMENTS, "gcc 12");
        assert_eq!(base, cache_key("aa", FRAGMENTS, "gcc 12"));
        assert_ne!(base, cache_key("ab", FRAGMENTS, "gcc 12"));
        assert_ne!(base, cache_key("aa", FRAGMENTS, "gcc 13"));
        assert_ne!(base, cache_key("aa", &FRAGMENTS[1..], "gcc 12"));
    }
}
