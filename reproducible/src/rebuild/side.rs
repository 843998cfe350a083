//! One build of a rebuild check: its directory layout, how it is filled
//! from the source tree and the shared caches, and the environment it runs
//! in. The two builds differ on purpose in everything that must not matter:
//! directory (and its depth), user, home, umask, locale and time zone.

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::copy::{self, How, Owner};
use super::users::Account;
use crate::compare::Side;
use crate::error::BuildError;

/// The target triple and profile dstack-init is built for.
pub(crate) const INIT_TARGET: &str = "x86_64-unknown-linux-musl";
pub(crate) const INIT_PROFILE: &str = "guest";

/// How a build's environment differs from the other's.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Variation {
    pub(crate) umask: &'static str,
    pub(crate) locale: &'static str,
    pub(crate) tz: &'static str,
    /// Path components between the work dir and the build's root.
    nesting: &'static [&'static str],
}

/// Side a, then side b.
const VARIATIONS: [Variation; 2] = [
    Variation {
        umask: "022",
        locale: "C.UTF-8",
        tz: "UTC",
        nesting: &["a"],
    },
    Variation {
        umask: "077",
        locale: "POSIX",
        tz: "Pacific/Chatham",
        nesting: &["b", "elsewhere", "deeper"],
    },
];

/// What both builds are filled from.
#[derive(Debug)]
pub(crate) struct Shared {
    /// The source tree and the files of it to copy.
    pub(crate) source: PathBuf,
    pub(crate) source_files: Vec<PathBuf>,
    /// The caller's CARGO_HOME (its registry is linked, read-only).
    pub(crate) cargo_home: PathBuf,
    /// The caller's Rust toolchain (`rustc --print sysroot`).
    pub(crate) sysroot: PathBuf,
    /// A target dir whose dstack-init dependencies are reused (reduced).
    pub(crate) seed_target: Option<PathBuf>,
    /// The .deb cache.
    pub(crate) debs: PathBuf,
    /// Downloaded sources (libseccomp's).
    pub(crate) downloads: PathBuf,
    /// The kernel cache whose built kernels are reused (reduced).
    pub(crate) kernels: Option<PathBuf>,
    /// `libseccomp-<version>`, the name of its source download.
    pub(crate) libseccomp_dir_name: String,
}

/// Where a build's CARGO_HOME is, and the path its steps see it at.
///
/// cargo fingerprints every crate by the absolute path of its source,
/// which lies in CARGO_HOME: a dependency cache built with one CARGO_HOME
/// path is reused only under the same path. So a reduced check shows each
/// build its own CARGO_HOME at the caller's path (a private mount, as root;
/// the caller's own CARGO_HOME when both builds run as the caller), and a
/// full check, which reuses nothing, puts it at the build's own path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CargoHome {
    /// The build's own, at its own path.
    Own,
    /// The build's own, mounted over the caller's path for its steps.
    MountedAt(PathBuf),
    /// The caller's, shared (both builds run as the caller).
    Callers(PathBuf),
}

/// The directories of one build.
#[derive(Debug, Clone)]
pub(crate) struct Build {
    pub(crate) side: Side,
    pub(crate) variation: Variation,
    pub(crate) root: PathBuf,
    pub(crate) src: PathBuf,
    pub(crate) home: PathBuf,
    /// The build's own CARGO_HOME directory.
    pub(crate) cargo_home: PathBuf,
    /// How its steps see a CARGO_HOME.
    pub(crate) cargo_home_seen: CargoHome,
    pub(crate) toolchain: PathBuf,
    pub(crate) target: PathBuf,
    pub(crate) cache: PathBuf,
    pub(crate) tmp: PathBuf,
    pub(crate) out: PathBuf,
}

impl Build {
    /// The layout of `side`'s build under `work`.
    pub(crate) fn new(
        work: &Path,
        side: Side,
        toolchain_name: &str,
        cargo_home_seen: CargoHome,
    ) -> Self {
        let variation = VARIATIONS[match side {
            Side::A => 0,
            Side::B => 1,
        }];
        let root = variation
            .nesting
            .iter()
            .fold(work.to_owned(), |p, c| p.join(c));
        let home = root.join("home");
        Build {
            side,
            variation,
            src: root.join("src/dstack"),
            cargo_home: home.join(".cargo"),
            cargo_home_seen,
            toolchain: home.join(".rustup/toolchains").join(toolchain_name),
            home,
            target: root.join("target"),
            cache: root.join("cache"),
            tmp: root.join("tmp"),
            out: root.join("out"),
            root,
        }
    }

    /// The .deb cache of this build.
    pub(crate) fn debs(&self) -> PathBuf {
        self.cache.join("debs")
    }

    /// The kernel cache of this build.
    pub(crate) fn kernels(&self) -> PathBuf {
        self.cache.join("kernel")
    }

    /// Where scripts/build-init leaves dstack-init.
    pub(crate) fn init(&self) -> PathBuf {
        self.target
            .join(INIT_TARGET)
            .join(INIT_PROFILE)
            .join("dstack-init")
    }

    /// Copies the source, links the toolchain, the crate registry and the
    /// package caches, and (reduced) copies the warm dependency cache, all
    /// owned by `owner` where the build writes. `report` names each part.
    pub(crate) fn prepare(
        &self,
        shared: &Shared,
        owner: Option<Owner>,
        report: &dyn Fn(String),
    ) -> Result<(), BuildError> {
        copy::create_dirs(&self.root, owner)?;
        // Each build's tree is its user's alone.
        let top = self.root.ancestors().nth(self.variation.nesting.len() - 1);
        if let Some(top) = top {
            std::fs::set_permissions(top, std::fs::Permissions::from_mode(0o700))
                .map_err(BuildError::write(top))?;
        }
        for dir in [&self.home, &self.tmp, &self.out, &self.cache, &self.target] {
            copy::create_dirs(dir, owner)?;
        }
        let keep_all = |_: &Path| false;
        if let Some(seed) = &shared.seed_target {
            // The dependencies of dstack-init as the last build-init there
            // left them; the build recompiles the workspace's own crates.
            for part in [
                PathBuf::from(INIT_TARGET).join(INIT_PROFILE),
                INIT_PROFILE.into(),
            ] {
                let from = seed.join(&part);
                if from.is_dir() {
                    report(format!(
                        "copying the warm dependency cache {}",
                        from.display()
                    ));
                    let skip = |p: &Path| p.starts_with("incremental") || p.starts_with("examples");
                    copy::tree(&from, &self.target.join(&part), How::Copy, owner, &skip)?;
                }
            }
        }
        report(format!(
            "copying the source tree ({} files)",
            shared.source_files.len()
        ));
        copy::files(&shared.source, &shared.source_files, &self.src, owner)?;

        report(format!(
            "linking the Rust toolchain {}",
            shared.sysroot.display()
        ));
        for part in ["bin", "lib"] {
            copy::tree(
                &shared.sysroot.join(part),
                &self.toolchain.join(part),
                How::Link,
                owner,
                &keep_all,
            )?;
        }
        if !matches!(self.cargo_home_seen, CargoHome::Callers(_)) {
            report(format!(
                "linking the crate registry {}",
                shared.cargo_home.join("registry").display()
            ));
            for part in ["registry", "git"] {
                let from = shared.cargo_home.join(part);
                if from.is_dir() {
                    copy::tree(
                        &from,
                        &self.cargo_home.join(part),
                        How::Link,
                        owner,
                        &keep_all,
                    )?;
                }
            }
            copy::create_dirs(&self.cargo_home, owner)?;
        }
        report("linking the package caches".into());
        if shared.debs.is_dir() {
            let only_debs =
                |p: &Path| p.extension().is_none_or(|e| e != "deb") || p.components().count() > 1;
            copy::tree(&shared.debs, &self.debs(), How::Link, owner, &only_debs)?;
        }
        let seccomp_src = shared.downloads.join(&shared.libseccomp_dir_name);
        if seccomp_src.is_dir() {
            copy::tree(
                &seccomp_src,
                &self
                    .cache
                    .join("downloads")
                    .join(&shared.libseccomp_dir_name),
                How::Link,
                owner,
                &keep_all,
            )?;
        }
        copy::create_dirs(&self.kernels(), owner)?;
        if let Some(kernels) = &shared.kernels {
            for key in built_kernels(kernels)? {
                copy::tree(
                    &kernels.join(&key),
                    &self.kernels().join(&key),
                    How::Link,
                    owner,
                    &keep_all,
                )?;
            }
        }
        Ok(())
    }

    /// The CARGO_HOME its steps see.
    pub(crate) fn cargo_home_env(&self) -> PathBuf {
        match &self.cargo_home_seen {
            CargoHome::Own => self.cargo_home.clone(),
            CargoHome::MountedAt(path) | CargoHome::Callers(path) => path.clone(),
        }
    }

    /// The whole environment of this build's steps.
    pub(crate) fn env(&self, account: &Account) -> Vec<(String, OsString)> {
        let mut path = self.toolchain.join("bin").into_os_string();
        path.push(":/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
        vec![
            ("PATH".into(), path),
            ("HOME".into(), self.home.clone().into()),
            ("USER".into(), account.name.clone().into()),
            ("LOGNAME".into(), account.name.clone().into()),
            ("CARGO_HOME".into(), self.cargo_home_env().into()),
            ("CARGO_TARGET_DIR".into(), self.target.clone().into()),
            // Offline: every crate is in the linked registry already.
            ("CARGO_NET_OFFLINE".into(), "true".into()),
            ("DSTACK_CACHE_DIR".into(), self.cache.clone().into()),
            ("TMPDIR".into(), self.tmp.clone().into()),
            ("LC_ALL".into(), self.variation.locale.into()),
            ("TZ".into(), self.variation.tz.into()),
        ]
    }
}

/// The complete kernel builds in a kernel cache (`<key>/bzImage`, `config`
/// and `release`), by key.
pub(crate) fn built_kernels(cache: &Path) -> Result<Vec<String>, BuildError> {
    let mut keys = Vec::new();
    let Ok(entries) = std::fs::read_dir(cache) else {
        return Ok(keys);
    };
    for entry in entries {
        let entry = entry.map_err(BuildError::read(cache))?;
        let dir = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let complete = ["bzImage", "config", "release"]
            .iter()
            .all(|f| dir.join(f).is_file());
        if !name.starts_with('.') && complete {
            keys.push(name);
        }
    }
    keys.sort();
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_two_builds_differ_in_everything_that_must_not_matter() {
        let work = Path::new("/w");
        let (a, b) = (
            Build::new(work, Side::A, "tc", CargoHome::Own),
            Build::new(
                work,
                Side::B,
                "tc",
                CargoHome::MountedAt("/root/.cargo".into()),
            ),
        );
        assert_eq!(a.src, Path::new("/w/a/src/dstack"));
        assert_eq!(b.src, Path::new("/w/b/elsewhere/deeper/src/dstack"));
        assert_ne!(a.src.components().count(), b.src.components().count());
        assert_ne!(a.variation.umask, b.variation.umask);
        assert_ne!(a.variation.locale, b.variation.locale);
        assert_ne!(a.variation.tz, b.variation.tz);
        assert_eq!(
            b.init(),
            Path::new("/w/b/elsewhere/deeper/target/x86_64-unknown-linux-musl/guest/dstack-init")
        );
        let account = Account {
            name: "u".into(),
            uid: 1,
            gid: 1,
        };
        let env = a.env(&account);
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        assert_eq!(get("HOME"), Some("/w/a/home".into()));
        assert_eq!(get("CARGO_HOME"), Some("/w/a/home/.cargo".into()));
        let env_b = b.env(&account);
        assert!(env_b.contains(&("CARGO_HOME".into(), "/root/.cargo".into())));
        assert!(
            get("PATH")
                .unwrap()
                .to_string_lossy()
                .starts_with("/w/a/home/.rustup/toolchains/tc/bin:")
        );
    }

    #[test]
    fn only_complete_kernel_builds_are_reused() {
        let cache = tempfile::tempdir().unwrap();
        for (key, files) in [
            ("k1", &["bzImage", "config", "release"][..]),
            ("k2", &["bzImage"][..]),
            (".build-x", &["bzImage", "config", "release"][..]),
        ] {
            std::fs::create_dir(cache.path().join(key)).unwrap();
            for f in files {
                std::fs::write(cache.path().join(key).join(f), b"x").unwrap();
            }
        }
        std::fs::write(cache.path().join("k1.log"), b"log").unwrap();
        assert_eq!(built_kernels(cache.path()).unwrap(), ["k1"]);
        assert!(
            built_kernels(&cache.path().join("none"))
                .unwrap()
                .is_empty()
        );
    }
}
