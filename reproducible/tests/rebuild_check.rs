//! The rebuild check's machinery end to end, in seconds: a stand-in source
//! tree whose `scripts/build-init` and assembler are small scripts, so the
//! copies, users, environments, steps, comparison and report all run for
//! real without compiling anything. (The real reduced check is `make
//! rebuild-check`; the full one `dstack image rebuild-check --full`.)
#![allow(clippy::tests_outside_test_module)] // an integration test crate is all tests

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use dstack_reproducible::{
    Difference, RebuildMode, RebuildOptions, RebuildStep, inputs_lock_text, rebuild_check,
};

/// `build-init` stand-in: a fixed "binary", its record and libseccomp.a,
/// plus (when the tree has a LEAK file) the build directory and user.
const BUILD_INIT: &str = r#"#!/bin/sh
set -eu
out="$CARGO_TARGET_DIR/x86_64-unknown-linux-musl/guest"
mkdir -p "$out" "$DSTACK_CACHE_DIR/libseccomp-2.6.0-2-musl"
printf 'ELF init' > "$out/dstack-init"
if [ -f LEAK ]; then printf ' built in %s by %s' "$PWD" "$USER" >> "$out/dstack-init"; fi
printf '{"init_sha256": "x"}\n' > "$out/dstack-init.build.json"
printf 'seccomp' > "$DSTACK_CACHE_DIR/libseccomp-2.6.0-2-musl/libseccomp.a"
echo "   Compiling dstack-init v0.1.0"
"#;

/// Assembler stand-in: `--init I --out O ...` makes `O/dstack-t/` from I.
const ASSEMBLER: &str = r#"#!/bin/sh
set -eu
while [ $# -gt 0 ]; do
  case "$1" in --init) init=$2; shift 2 ;; --out) out=$2; shift 2 ;; *) shift ;; esac
done
mkdir -p "$out/dstack-t"
cp "$init" "$out/dstack-t/initramfs.cpio.lz4"
printf 'kernel' > "$out/dstack-t/bzImage"
sha256sum "$out/dstack-t/initramfs.cpio.lz4" | cut -d' ' -f1 > "$out/dstack-t/digest.txt"
"#;

fn write_script(path: &Path, text: &str) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, text).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
}

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new(leak: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        // World-readable: the build users copy nothing from here themselves,
        // but root's copies must reach them.
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let src = dir.path().join("src");
        write_script(&src.join("scripts/build-init"), BUILD_INIT);
        fs::write(src.join("Cargo.lock"), "# lock\n").unwrap();
        fs::create_dir_all(src.join("reproducible")).unwrap();
        fs::write(src.join("reproducible/inputs.lock"), inputs_lock_text()).unwrap();
        if leak {
            fs::write(src.join("LEAK"), "").unwrap();
        }
        write_script(&dir.path().join("assembler"), ASSEMBLER);
        let kernel = dir.path().join("kernels/k1");
        fs::create_dir_all(&kernel).unwrap();
        for f in ["bzImage", "config", "release"] {
            fs::write(kernel.join(f), f).unwrap();
        }
        fs::create_dir_all(dir.path().join("cargo-home/registry")).unwrap();
        Fixture { dir }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn options(&self) -> RebuildOptions {
        let root = fs::metadata("/proc/self")
            .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
            .unwrap_or(false);
        RebuildOptions {
            source: self.path("src"),
            mode: RebuildMode::Reduced,
            // As root: another user than root, without creating accounts
            // (tests run in parallel).
            users: root.then(|| ["nobody".to_owned(), "nobody".to_owned()]),
            work_parent: Some(self.dir.path().to_owned()),
            keep: false,
            cargo_home: self.path("cargo-home"),
            seed_target: None,
            debs: self.path("debs"),
            downloads: self.path("downloads"),
            kernels: self.path("kernels"),
            assembler: (self.path("assembler"), Vec::new()),
            jobs: 1,
            allow_superseded: false,
            against: None,
            progress: None,
        }
    }
}

#[test]
fn identical_builds_in_two_directories_pass() {
    let fixture = Fixture::new(false);
    let report = rebuild_check(&fixture.options()).unwrap();
    assert!(report.is_reproducible(), "{:?}", report.comparison);
    assert_eq!(
        report.comparison.identical,
        [
            "dstack-init",
            "dstack-init.build.json",
            "image/bzImage",
            "image/digest.txt",
            "image/initramfs.cpio.lz4",
            "libseccomp.a",
        ]
    );
    let [a, b] = &report.builds;
    assert_ne!(a.dir, b.dir);
    assert_ne!((&a.umask, &a.locale, &a.tz), (&b.umask, &b.locale, &b.tz));
    let steps: Vec<RebuildStep> = report.timings.iter().map(|(_, s, _)| *s).collect();
    assert_eq!(
        steps,
        [
            RebuildStep::Prepare,
            RebuildStep::Prepare,
            RebuildStep::Init,
            RebuildStep::Image,
            RebuildStep::Init,
            RebuildStep::Image
        ]
    );
    // The work dir is gone unless kept.
    assert!(!a.dir.exists());

    // The image a rebuild is checked against: a match, then one byte off.
    let reference = fixture.path("reference");
    fs::create_dir(&reference).unwrap();
    fs::write(reference.join("bzImage"), "kernel").unwrap();
    fs::write(reference.join("initramfs.cpio.lz4"), "ELF init").unwrap();
    fs::write(reference.join("digest.txt"), format!("{}\n", report.digest)).unwrap();
    let mut opts = fixture.options();
    opts.against = Some(reference.clone());
    assert!(rebuild_check(&opts).unwrap().is_reproducible());
    fs::write(reference.join("bzImage"), "kernek").unwrap();
    let report = rebuild_check(&opts).unwrap();
    assert!(!report.is_reproducible());
    let (_, against) = report.against.unwrap();
    assert_eq!(against.differences.len(), 1);
    assert_eq!(against.differences[0].path(), "bzImage");
}

#[test]
fn a_build_that_records_its_directory_is_caught_and_named() {
    let fixture = Fixture::new(true);
    let report = rebuild_check(&fixture.options()).unwrap();
    assert!(!report.is_reproducible());
    let differing: Vec<&str> = report
        .comparison
        .differences
        .iter()
        .map(Difference::path)
        .collect();
    assert_eq!(
        differing,
        [
            "dstack-init",
            "image/digest.txt",
            "image/initramfs.cpio.lz4"
        ]
    );
    let Difference::Content { offset, .. } = &report.comparison.differences[0] else {
        panic!("{:?}", report.comparison.differences[0])
    };
    // "ELF init built in <dir>": the directories differ from their 'a'/'b'.
    let a_dir = report.builds[0].dir.to_string_lossy().into_owned();
    let expected = "ELF init built in ".len() + a_dir.rfind("/a").unwrap() + 1;
    assert_eq!(*offset, expected as u64);
    let shown = report.comparison.differences[0].to_string();
    assert!(
        shown.starts_with("dstack-init: differs from byte"),
        "{shown}"
    );
}

#[test]
fn a_source_without_the_build_script_is_refused() {
    let fixture = Fixture::new(false);
    fs::remove_file(fixture.path("src/scripts/build-init")).unwrap();
    let err = rebuild_check(&fixture.options()).unwrap_err();
    assert!(
        matches!(err, dstack_reproducible::RebuildError::NotASource { .. }),
        "{err}"
    );
}
