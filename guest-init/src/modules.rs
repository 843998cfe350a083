//! Kernel modules: the image builder writes
//! `/lib/modules/<release>/load-order` (one path per line, relative to that
//! directory, dependencies first, already decompressed) and PID1 loads each
//! with `finit_module`. There is no modprobe and no modules.dep in the guest.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use nix::errno::Errno;

use crate::sys::Syscall;

/// Modules without which the guest cannot boot: the host link (vsock) and
/// the network. A failure to load one of these stops the boot.
pub const REQUIRED: &[&str] = &[
    "vsock",
    "vmw_vsock_virtio_transport_common",
    "vmw_vsock_virtio_transport",
    "failover",
    "net_failover",
    "virtio_net",
];

/// Modules the boot waits for before talking to the host: the required
/// ones and the data disk's driver. The rest load in the background.
pub const EARLY: &[&str] = &[
    "vsock",
    "vmw_vsock_virtio_transport_common",
    "vmw_vsock_virtio_transport",
    "failover",
    "net_failover",
    "virtio_net",
    "virtio_blk",
];

/// Modules the app needs before it starts: the encrypted data disk's
/// (device-mapper, dm-crypt and the xts template) and the containers' root
/// filesystems (overlays).
pub const FOR_APP: &[&str] = &["overlay", "dm_mod", "dm_crypt", "xts"];

/// Splits a load order after its last module named in `names`. The order
/// lists dependencies first, so the first part is complete on its own.
pub fn split_after(order: Vec<String>, names: &[&str]) -> (Vec<String>, Vec<String>) {
    let cut = order
        .iter()
        .rposition(|p| names.contains(&module_name(p).as_str()))
        .map_or(0, |i| i + 1);
    let mut first = order;
    let rest = first.split_off(cut);
    (first, rest)
}

/// Loading modules failed.
#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    /// The load-order file cannot be read.
    #[error("cannot read {path}")]
    LoadOrder {
        /// Its path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A required module failed to load.
    #[error("cannot load required module {name} ({path})")]
    Required {
        /// Module name.
        name: String,
        /// Its path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: Errno,
    },
}

/// The module name a path defines: `kernel/drivers/md/dm-mod.ko` → `dm_mod`.
pub fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.find(".ko").map_or(file, |i| &file[..i]);
    stem.replace('-', "_")
}

/// Parses load-order text: one relative path per line; blank lines and
/// `#` comments are skipped.
pub fn parse_load_order(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect()
}

/// What happened to one module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModuleOutcome {
    /// Loaded now.
    Loaded,
    /// Already loaded (or built in).
    AlreadyLoaded,
    /// Refused because the hardware is absent (`ENODEV`), e.g. `tdx_guest`
    /// outside a TDX guest. Not an error.
    NoDevice,
    /// Failed; the boot goes on without it.
    Failed(Errno),
}

/// Loads every module `load_order` names, in order, from `dir`.
///
/// Returns each module's name and outcome; the first failure of a
/// [`REQUIRED`] module is an error.
pub fn load_all(
    sys: &dyn Syscall,
    dir: &Path,
    load_order: &[String],
) -> Result<Vec<(String, ModuleOutcome)>, ModuleError> {
    let mut report = Vec::with_capacity(load_order.len());
    for rel in load_order {
        let name = module_name(rel);
        let path = dir.join(rel);
        let started = std::time::Instant::now();
        let result = sys.load_module(&path);
        tracing::debug!(
            "module {name}: {:?} in {} ms",
            result,
            started.elapsed().as_millis()
        );
        let outcome = match result {
            Ok(()) => ModuleOutcome::Loaded,
            Err(Errno::EEXIST) => ModuleOutcome::AlreadyLoaded,
            Err(Errno::ENODEV) if !REQUIRED.contains(&name.as_str()) => ModuleOutcome::NoDevice,
            Err(source) if REQUIRED.contains(&name.as_str()) => {
                return Err(ModuleError::Required { name, path, source });
            }
            Err(e) => ModuleOutcome::Failed(e),
        };
        report.push((name, outcome));
    }
    Ok(report)
}

/// The load-order file for the running kernel `release`, under `root`
/// (`/lib/modules` in the guest).
pub fn load_order_path(root: &Path, release: &str) -> PathBuf {
    root.join(release).join("load-order")
}

/// Reads and parses the load-order file; a missing file means "nothing to
/// load" (a kernel with everything built in).
pub fn read_load_order(path: &Path) -> Result<Option<Vec<String>>, ModuleError> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some(parse_load_order(&text))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(ModuleError::LoadOrder {
            path: path.to_owned(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::fake::{Call, RecordingSyscall};

    const ORDER: &str = "\
# written by dstack image build
kernel/net/vmw_vsock/vsock.ko
kernel/net/vmw_vsock/vmw_vsock_virtio_transport_common.ko

kernel/drivers/virt/coco/tdx-guest/tdx-guest.ko
kernel/drivers/md/dm-mod.ko
kernel/drivers/input/evdev.ko
";

    #[test]
    fn parses_paths_and_names() {
        let order = parse_load_order(ORDER);
        assert_eq!(order.len(), 5);
        assert_eq!(order[0], "kernel/net/vmw_vsock/vsock.ko");
        assert_eq!(module_name(&order[2]), "tdx_guest");
        assert_eq!(module_name("x/dm-mod.ko.xz"), "dm_mod");
    }

    #[test]
    fn loads_in_order_and_classifies_outcomes() {
        let sys = RecordingSyscall::default();
        let dir = Path::new("/lib/modules/6.12");
        sys.fail(
            "/lib/modules/6.12/kernel/net/vmw_vsock/vsock.ko",
            Errno::EEXIST,
        );
        sys.fail(
            "/lib/modules/6.12/kernel/drivers/virt/coco/tdx-guest/tdx-guest.ko",
            Errno::ENODEV,
        );
        sys.fail(
            "/lib/modules/6.12/kernel/drivers/md/dm-mod.ko",
            Errno::EINVAL,
        );
        let report = load_all(&sys, dir, &parse_load_order(ORDER)).unwrap();
        let outcomes: Vec<_> = report.iter().map(|(_, o)| o.clone()).collect();
        assert_eq!(
            outcomes,
            [
                ModuleOutcome::AlreadyLoaded,
                ModuleOutcome::Loaded,
                ModuleOutcome::NoDevice,
                ModuleOutcome::Failed(Errno::EINVAL),
                ModuleOutcome::Loaded,
            ]
        );
        let loads: Vec<_> = sys
            .calls()
            .into_iter()
            .map(|c| match c {
                Call::LoadModule(p) => p,
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert!(loads[4].ends_with("evdev.ko"));
    }

    #[test]
    fn a_required_module_failure_stops_with_its_name() {
        let sys = RecordingSyscall::default();
        sys.fail("/m/kernel/net/vmw_vsock/vsock.ko", Errno::ENOEXEC);
        let err = load_all(&sys, Path::new("/m"), &parse_load_order(ORDER)).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("cannot load required module vsock"),
            "{err}"
        );
    }

    #[test]
    fn splits_after_the_last_early_module() {
        let order = parse_load_order(
            "kernel/vsock.ko\nkernel/overlay.ko\nkernel/virtio_blk.ko\nkernel/dm-mod.ko\nkernel/button.ko\n",
        );
        let (early, late) = split_after(order.clone(), EARLY);
        assert_eq!(early, order[..3]);
        assert_eq!(late, order[3..]);
        // overlay came early already; the disk's device-mapper is the app's.
        let (for_app, rest) = split_after(late, FOR_APP);
        assert_eq!(for_app, order[3..4]);
        assert_eq!(rest, order[4..]);
        let (early, late) = split_after(parse_load_order("kernel/evdev.ko\n"), EARLY);
        assert!(early.is_empty());
        assert_eq!(late.len(), 1);
    }

    #[test]
    fn a_missing_load_order_is_nothing_to_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = load_order_path(dir.path(), "6.12.0");
        assert!(read_load_order(&path).unwrap().is_none());
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, ORDER).unwrap();
        assert_eq!(read_load_order(&path).unwrap().unwrap().len(), 5);
    }
}
