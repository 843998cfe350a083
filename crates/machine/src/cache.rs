//! Probed ACPI blobs, kept on disk so each (QEMU, firmware, machine) is
//! probed once.
//!
//! The key is SHA-256 over the QEMU binary's `-version` output, the
//! firmware's SHA-256 and the probe's command line with every path
//! replaced by a placeholder: the command line names the shape, the
//! machine options, the devices and the kernel command line, and the
//! paths (image files, work directory) say nothing about the tables. The
//! kernel and initrd are not in the key: QEMU builds the tables before
//! the firmware loads them.
//!
//! An entry is one file, `<key>.acpi`, replaced atomically (write, fsync,
//! rename): a magic, the key, the three blobs length-prefixed, and SHA-256
//! of all of it. An entry that fails any check is probed again and
//! replaced, never used.

use std::fs;
use std::io::{self, Read as _};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::acpi::AcpiBlobs;
use crate::argv::{BootFiles, Shape};
use crate::probe::{ProbeError, ProbeOptions, probe_acpi_tables, probe_argv};
use dstack_firmware::AcpiTables;

/// First bytes of an entry; the version changes with the layout.
const MAGIC: &[u8; 16] = b"dstack-acpi\0\0\0v1";
/// Domain separation of the key's hash.
const KEY_DOMAIN: &[u8] = b"dstack-machine acpi-cache key v1\0";
/// Entries are readable by all (the blobs are public facts of the machine).
const ENTRY_MODE: u32 = 0o644;

/// What identifies one set of probed blobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CacheKey([u8; 32]);

impl CacheKey {
    /// The key of a probe, from its parts: QEMU's `-version` output, the
    /// firmware's SHA-256, and the probe's arguments with paths normalised.
    pub fn from_parts(qemu_version: &[u8], firmware_sha256: &[u8; 32], argv: &[String]) -> Self {
        let mut h = Sha256::new();
        h.update(KEY_DOMAIN);
        let mut field = |bytes: &[u8]| {
            h.update(u64::try_from(bytes.len()).unwrap_or(u64::MAX).to_le_bytes());
            h.update(bytes);
        };
        field(qemu_version);
        field(firmware_sha256);
        for arg in argv {
            field(arg.as_bytes());
        }
        Self(h.finalize().into())
    }

    /// The key in hex, as entries are named.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

/// How a lookup was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    /// From a valid entry.
    Hit,
    /// No entry: probed and stored.
    Miss,
    /// An entry that failed its checks: probed again and replaced.
    Corrupt,
}

/// A lookup that failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CacheError {
    /// `qemu -version` could not be run or failed.
    #[error("cannot ask {} for its version", qemu.display())]
    QemuVersion {
        /// The QEMU binary.
        qemu: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The firmware could not be read.
    #[error("cannot read the firmware {}", path.display())]
    Firmware {
        /// The firmware file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The probe failed.
    #[error("probing QEMU's ACPI tables failed")]
    Probe(#[source] ProbeError),
    /// The probed blobs could not be stored.
    #[error("cannot store {}", path.display())]
    Store {
        /// The entry.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// Probed ACPI blobs in a directory, one file per key.
#[derive(Debug, Clone)]
pub struct AcpiCache {
    dir: PathBuf,
}

impl AcpiCache {
    /// A cache in `dir` (created on first store).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The key for probing `image` at `shape` with `qemu` and `options`.
    pub fn key(
        qemu: &Path,
        image: &BootFiles<'_>,
        shape: Shape,
        options: &ProbeOptions,
    ) -> Result<CacheKey, CacheError> {
        let version = qemu_version(qemu)?;
        let firmware = sha256_file(image.firmware).map_err(|source| CacheError::Firmware {
            path: image.firmware.to_owned(),
            source,
        })?;
        let normalised = BootFiles {
            firmware: Path::new("<firmware>"),
            kernel: Path::new("<kernel>"),
            initrd: Path::new("<initrd>"),
            cmdline: image.cmdline,
        };
        let argv = probe_argv(&normalised, shape, Path::new("<work>"), options);
        Ok(CacheKey::from_parts(&version, &firmware, &argv))
    }

    /// The blobs for `image` at `shape`: from the cache, or probed with
    /// `qemu` in `work_dir` and stored.
    pub fn get_or_probe(
        &self,
        qemu: &Path,
        image: &BootFiles<'_>,
        shape: Shape,
        work_dir: &Path,
        options: &ProbeOptions,
    ) -> Result<(AcpiTables, CacheOutcome), CacheError> {
        let key = Self::key(qemu, image, shape, options)?;
        self.get_or_insert_with(&key, || {
            probe_acpi_tables(qemu, image, shape, work_dir, options)
        })
    }

    /// The blobs stored under `key`, or `probe`'s, stored under it.
    pub fn get_or_insert_with(
        &self,
        key: &CacheKey,
        probe: impl FnOnce() -> Result<AcpiTables, ProbeError>,
    ) -> Result<(AcpiTables, CacheOutcome), CacheError> {
        let outcome = match self.lookup(key) {
            Lookup::Valid(blobs) => return Ok((blobs, CacheOutcome::Hit)),
            Lookup::Absent => CacheOutcome::Miss,
            Lookup::Corrupt => CacheOutcome::Corrupt,
        };
        let blobs = probe().map_err(CacheError::Probe)?;
        self.store(key, &blobs)?;
        Ok((blobs, outcome))
    }

    /// Where the entry for `key` lives.
    pub fn entry_path(&self, key: &CacheKey) -> PathBuf {
        self.dir.join(format!("{}.acpi", key.to_hex()))
    }

    fn lookup(&self, key: &CacheKey) -> Lookup {
        match fs::read(self.entry_path(key)) {
            Ok(bytes) => decode(key, &bytes).map_or(Lookup::Corrupt, Lookup::Valid),
            // Unreadable is as good as absent: probing again is always safe.
            Err(e) if e.kind() == io::ErrorKind::NotFound => Lookup::Absent,
            Err(_) => Lookup::Corrupt,
        }
    }

    fn store(&self, key: &CacheKey, blobs: &AcpiTables) -> Result<(), CacheError> {
        let path = self.entry_path(key);
        fs::create_dir_all(&self.dir)
            .and_then(|()| dstack_fsutil::write_atomic(&path, &encode(key, blobs), ENTRY_MODE))
            .map_err(|source| CacheError::Store { path, source })
    }
}

enum Lookup {
    Valid(AcpiTables),
    Absent,
    Corrupt,
}

/// An entry's bytes.
fn encode(key: &CacheKey, blobs: &AcpiTables) -> Vec<u8> {
    let mut out = Vec::with_capacity(
        MAGIC.len() + 32 + 12 + blobs.loader.len() + blobs.rsdp.len() + blobs.tables.len() + 32,
    );
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&key.0);
    for blob in [&blobs.loader, &blobs.rsdp, &blobs.tables] {
        let len = u32::try_from(blob.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(blob);
    }
    let digest = Sha256::digest(&out);
    out.extend_from_slice(&digest);
    out
}

/// The blobs of an entry that passes every check, `None` otherwise.
fn decode(key: &CacheKey, bytes: &[u8]) -> Option<AcpiTables> {
    let (body, digest) = bytes.split_at_checked(bytes.len().checked_sub(32)?)?;
    if Sha256::digest(body)[..] != *digest {
        return None;
    }
    let rest = body.strip_prefix(MAGIC)?.strip_prefix(&key.0)?;
    let mut rest = rest;
    let mut take = || -> Option<Vec<u8>> {
        let (len, tail) = rest.split_first_chunk::<4>()?;
        let len = usize::try_from(u32::from_le_bytes(*len)).ok()?;
        let (blob, tail) = tail.split_at_checked(len)?;
        rest = tail;
        Some(blob.to_vec())
    };
    let blobs = AcpiTables {
        loader: take()?,
        rsdp: take()?,
        tables: take()?,
    };
    if !rest.is_empty() || blobs.check().is_err() {
        return None;
    }
    Some(blobs)
}

/// `qemu -version`'s output.
pub(crate) fn qemu_version(qemu: &Path) -> Result<Vec<u8>, CacheError> {
    let failed = |source| CacheError::QemuVersion {
        qemu: qemu.to_owned(),
        source,
    };
    let out = Command::new(qemu)
        .arg("-version")
        .output()
        .map_err(failed)?;
    if !out.status.success() || out.stdout.is_empty() {
        return Err(failed(io::Error::other(format!(
            "it exited ({}) saying {:?}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))));
    }
    Ok(out.stdout)
}

fn sha256_file(path: &Path) -> io::Result<[u8; 32]> {
    let mut file = fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(h.finalize().into());
        }
        h.update(&buf[..n]);
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;
    use crate::acpi::tests::sample;
    use crate::probe::ProbeVsock;

    const SHAPE: Shape = Shape {
        vcpus: 1,
        memory_mb: 1024,
    };

    /// A `qemu` that only answers `-version`, and an image.
    struct Setup {
        dir: tempfile::TempDir,
    }

    impl Setup {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let setup = Self { dir };
            setup.set_version("QEMU emulator version 10.0.2");
            fs::write(setup.path("ovmf.fd"), b"firmware v1").unwrap();
            setup
        }
        fn path(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }
        fn set_version(&self, version: &str) {
            let qemu = self.path("qemu");
            fs::write(&qemu, format!("#!/bin/sh\necho '{version}'\n")).unwrap();
            fs::set_permissions(&qemu, fs::Permissions::from_mode(0o755)).unwrap();
        }
        fn key(&self, cmdline: &str, shape: Shape) -> CacheKey {
            let firmware = self.path("ovmf.fd");
            let image = BootFiles {
                firmware: &firmware,
                kernel: Path::new("/elsewhere/bzImage"),
                initrd: Path::new("/elsewhere/initrd"),
                cmdline,
            };
            AcpiCache::key(&self.path("qemu"), &image, shape, &ProbeOptions::default()).unwrap()
        }
    }

    /// A probe that counts its calls.
    fn counting(calls: &Cell<u32>) -> impl FnOnce() -> Result<AcpiTables, ProbeError> + '_ {
        move || {
            calls.set(calls.get() + 1);
            Ok(sample())
        }
    }

    #[test]
    fn a_second_lookup_is_a_hit_without_probing() {
        let setup = Setup::new();
        let cache = AcpiCache::new(setup.path("cache"));
        let key = setup.key("console=ttyS0", SHAPE);
        let calls = Cell::new(0);
        let (blobs, outcome) = cache.get_or_insert_with(&key, counting(&calls)).unwrap();
        assert_eq!((outcome, calls.get()), (CacheOutcome::Miss, 1));
        assert_eq!(blobs, sample());
        let (again, outcome) = cache.get_or_insert_with(&key, counting(&calls)).unwrap();
        assert_eq!((outcome, calls.get()), (CacheOutcome::Hit, 1));
        assert_eq!(again, blobs);
        let mode = fs::metadata(cache.entry_path(&key))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, ENTRY_MODE);
    }

    #[test]
    fn the_key_follows_qemu_firmware_shape_and_cmdline_not_paths() {
        let setup = Setup::new();
        let base = setup.key("console=ttyS0", SHAPE);
        assert_eq!(base, setup.key("console=ttyS0", SHAPE), "deterministic");
        assert_ne!(base, setup.key("console=ttyS0 quiet", SHAPE));
        let two = Shape { vcpus: 2, ..SHAPE };
        assert_ne!(base, setup.key("console=ttyS0", two));
        let more = Shape {
            memory_mb: 2048,
            ..SHAPE
        };
        assert_ne!(base, setup.key("console=ttyS0", more));
        setup.set_version("QEMU emulator version 10.1.0");
        assert_ne!(base, setup.key("console=ttyS0", SHAPE));
        setup.set_version("QEMU emulator version 10.0.2");
        fs::write(setup.path("ovmf.fd"), b"firmware v2").unwrap();
        assert_ne!(base, setup.key("console=ttyS0", SHAPE));
        fs::write(setup.path("ovmf.fd"), b"firmware v1").unwrap();
        // The same firmware bytes elsewhere, other kernel paths: same key.
        fs::create_dir(setup.path("copy")).unwrap();
        fs::copy(setup.path("ovmf.fd"), setup.path("copy/ovmf.fd")).unwrap();
        let firmware = setup.path("copy/ovmf.fd");
        let moved = BootFiles {
            firmware: &firmware,
            kernel: Path::new("/other/bzImage"),
            initrd: Path::new("/other/initrd"),
            cmdline: "console=ttyS0",
        };
        let options = ProbeOptions::default();
        assert_eq!(
            base,
            AcpiCache::key(&setup.path("qemu"), &moved, SHAPE, &options).unwrap()
        );
        let wider = ProbeOptions {
            phys_bits: 52,
            ..options.clone()
        };
        assert_ne!(
            base,
            AcpiCache::key(&setup.path("qemu"), &moved, SHAPE, &wider).unwrap(),
            "another address width for the firmware"
        );
        let vhost_user = ProbeOptions {
            vsock: ProbeVsock::VhostUser {
                backend: "/usr/bin/vhost-device-vsock".into(),
            },
            ..options
        };
        assert_ne!(
            base,
            AcpiCache::key(&setup.path("qemu"), &moved, SHAPE, &vhost_user).unwrap(),
            "another device in the vsock slot"
        );
    }

    #[test]
    fn a_changed_key_misses() {
        let setup = Setup::new();
        let cache = AcpiCache::new(setup.path("cache"));
        let calls = Cell::new(0);
        let one = setup.key("console=ttyS0", SHAPE);
        cache.get_or_insert_with(&one, counting(&calls)).unwrap();
        setup.set_version("QEMU emulator version 10.1.0");
        let other = setup.key("console=ttyS0", SHAPE);
        let (_, outcome) = cache.get_or_insert_with(&other, counting(&calls)).unwrap();
        assert_eq!((outcome, calls.get()), (CacheOutcome::Miss, 2));
    }

    #[test]
    fn a_corrupt_entry_is_probed_again_and_replaced() {
        let setup = Setup::new();
        let cache = AcpiCache::new(setup.path("cache"));
        let key = setup.key("console=ttyS0", SHAPE);
        let calls = Cell::new(0);
        cache.get_or_insert_with(&key, counting(&calls)).unwrap();
        let path = cache.entry_path(&key);
        let good = fs::read(&path).unwrap();
        let mut flipped = good.clone();
        flipped[100] ^= 1;
        let wrong_key = encode(&CacheKey([9; 32]), &sample());
        let mut bad_blob = sample();
        bad_blob.rsdp[0] = b'X';
        for corrupt in [
            flipped,
            good[..good.len() - 1].to_vec(),
            Vec::new(),
            wrong_key,
            // Consistent, but not blobs QEMU makes.
            encode(&key, &bad_blob),
        ] {
            fs::write(&path, &corrupt).unwrap();
            let before = calls.get();
            let (blobs, outcome) = cache.get_or_insert_with(&key, counting(&calls)).unwrap();
            assert_eq!((outcome, calls.get()), (CacheOutcome::Corrupt, before + 1));
            assert_eq!(blobs, sample());
            assert_eq!(fs::read(&path).unwrap(), good, "replaced by a good entry");
        }
    }

    #[test]
    fn a_failed_probe_stores_nothing() {
        let setup = Setup::new();
        let cache = AcpiCache::new(setup.path("cache"));
        let key = setup.key("console=ttyS0", SHAPE);
        let err = cache
            .get_or_insert_with(&key, || Err(ProbeError::MissingFile("etc/acpi/rsdp")))
            .unwrap_err();
        assert!(matches!(err, CacheError::Probe(_)), "{err}");
        assert!(!cache.entry_path(&key).exists());
    }

    #[test]
    fn entries_round_trip() {
        let key = CacheKey([5; 32]);
        assert_eq!(decode(&key, &encode(&key, &sample())), Some(sample()));
    }

    #[test]
    fn a_missing_qemu_or_firmware_is_named() {
        let setup = Setup::new();
        let firmware = setup.path("ovmf.fd");
        let image = BootFiles {
            firmware: &firmware,
            kernel: Path::new("/k"),
            initrd: Path::new("/i"),
            cmdline: "",
        };
        let options = ProbeOptions::default();
        let err = AcpiCache::key(&setup.path("no-qemu"), &image, SHAPE, &options).unwrap_err();
        assert!(matches!(err, CacheError::QemuVersion { .. }), "{err}");
        let missing = setup.path("missing.fd");
        let image = BootFiles {
            firmware: &missing,
            ..image
        };
        let err = AcpiCache::key(&setup.path("qemu"), &image, SHAPE, &options).unwrap_err();
        assert!(matches!(err, CacheError::Firmware { .. }), "{err}");
    }
}
