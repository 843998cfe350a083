//! The way down: stop the services, flush, unmount the data disk, tell the
//! host, power off. Also the panic hook: a panic in PID1 would be a kernel
//! panic, so it logs and powers off instead.

use std::path::Path;
use std::time::Duration;

use dstack_proto::host::events;
use nix::errno::Errno;
use nix::mount::MsFlags;

use crate::logship::LogShipper;
use crate::notify::Notifier;
use crate::state::Services;
use crate::sys::{LinuxSyscall, MountSpec, RebootCmd, Syscall};

/// How often an unmount is tried while something still holds the disk.
const UMOUNT_TRIES: u32 = 15;
const UMOUNT_PAUSE: Duration = Duration::from_millis(200);

/// What the shutdown sequence works with.
#[derive(Debug)]
pub struct Teardown<'a> {
    /// The kernel.
    pub sys: &'a dyn Syscall,
    /// Host notifications.
    pub notifier: &'a Notifier,
    /// The log shipper, if it runs.
    pub shipper: Option<&'a LogShipper>,
    /// The data disk's mount point and plaintext device, if mounted.
    pub data: Option<(&'a Path, &'a Path)>,
    /// Removes the data disk's dm-crypt mapping after the unmount.
    pub mapper: &'a dyn crate::disk::Mapper,
}

/// The exact console line of a clean unmount (tests look for it).
pub fn clean_unmount_line(target: &Path) -> String {
    format!("unmounted {} cleanly", target.display())
}

/// Unmounts `target`, retrying while busy; if it stays busy, remounts it
/// read-only so the filesystem is consistent at power-off. Returns whether
/// the unmount succeeded.
pub async fn unmount_data(sys: &dyn Syscall, target: &Path, device: &Path) -> bool {
    let mut last = Errno::EBUSY;
    for _ in 0..UMOUNT_TRIES {
        match sys.umount(target) {
            Ok(()) => {
                tracing::info!("{}", clean_unmount_line(target));
                return true;
            }
            Err(e) => last = e,
        }
        if last != Errno::EBUSY {
            break;
        }
        tokio::time::sleep(UMOUNT_PAUSE).await;
    }
    tracing::error!("cannot unmount {}: {last}", target.display());
    let remount = MountSpec {
        source: device.display().to_string(),
        target: target.display().to_string(),
        fstype: "ext4".into(),
        flags: MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
        data: None,
    };
    match sys.mount(&remount) {
        Ok(()) => tracing::warn!("remounted {} read-only instead", target.display()),
        Err(e) => tracing::error!("cannot remount {} read-only: {e}", target.display()),
    }
    false
}

/// Runs the shutdown sequence; returns only if power-off failed (or the
/// kernel is a fake).
pub async fn power_off(t: &Teardown<'_>, services: Option<&dyn Services>) {
    if let Some(services) = services {
        tracing::info!("stopping services");
        t.notifier
            .send(events::SHUTDOWN_PROGRESS, "stopping services");
        services.stop_all().await;
        tracing::info!("services stopped");
    }
    t.sys.sync();
    if let Some((target, device)) = t.data
        && unmount_data(t.sys, target, device).await
    {
        // The kernel drops the volume key with the mapping.
        match t.mapper.unmap() {
            Ok(()) => tracing::info!("closed the encrypted data disk"),
            Err(e) => tracing::warn!("{}", crate::boot::error_chain(&e)),
        }
    }
    tracing::info!("powering off");
    t.notifier.send(events::SHUTDOWN_PROGRESS, "powering off");
    if let Some(shipper) = t.shipper {
        shipper.flush(Duration::from_secs(1)).await;
    }
    t.notifier.flush(Duration::from_secs(2)).await;
    t.sys.sync();
    if let Err(e) = t.sys.reboot(RebootCmd::PowerOff) {
        tracing::error!("power-off failed: {e}");
    }
}

/// Logs a panic and powers the machine off, so a bug in PID1 ends the VM
/// cleanly instead of as a kernel panic.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        // Straight to stderr: the logger's locks may be what panicked.
        eprintln!(
            "[{:>7} ms] ERROR dstack-init panicked: {info}; powering off",
            crate::console::elapsed_ms()
        );
        let sys = LinuxSyscall;
        sys.sync();
        let _ = sys.reboot(RebootCmd::PowerOff);
    }));
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::Mutex;

    use dstack_proto::guest::ContainerInfo;

    use super::*;
    use crate::sys::fake::{Call, RecordingSyscall};

    #[derive(Default)]
    struct Stopper(Mutex<bool>);

    impl Services for Stopper {
        fn list(&self) -> Vec<ContainerInfo> {
            Vec::new()
        }
        fn stop_all(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
            Box::pin(async { *self.0.lock().unwrap() = true })
        }
    }

    #[tokio::test]
    async fn stops_syncs_unmounts_then_powers_off() {
        let sys = RecordingSyscall::default();
        let notifier = Notifier::detached();
        let stopper = Stopper::default();
        let mapper = crate::disk::fake::FakeMapper::default();
        let t = Teardown {
            sys: &sys,
            notifier: &notifier,
            shipper: None,
            data: Some((Path::new("/data"), Path::new("/dev/dm-0"))),
            mapper: &mapper,
        };
        power_off(&t, Some(&stopper)).await;
        assert!(*stopper.0.lock().unwrap());
        assert_eq!(
            sys.calls(),
            [
                Call::Sync,
                Call::Umount("/data".into()),
                Call::Sync,
                Call::Reboot(RebootCmd::PowerOff)
            ]
        );
        // The mapping goes after the unmount, so the kernel forgets the key.
        assert_eq!(*mapper.unmaps.lock().unwrap(), 1);
        assert_eq!(
            clean_unmount_line(Path::new("/data")),
            "unmounted /data cleanly"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_busy_disk_is_remounted_read_only() {
        let sys = RecordingSyscall::default();
        sys.fail("umount /data", Errno::EBUSY);
        assert!(!unmount_data(&sys, Path::new("/data"), Path::new("/dev/vda")).await);
        let calls = sys.calls();
        let tries = calls
            .iter()
            .filter(|c| matches!(c, Call::Umount(_)))
            .count();
        assert_eq!(tries, UMOUNT_TRIES as usize);
        let Some(Call::Mount(m)) = calls.last() else {
            panic!("{calls:?}")
        };
        assert!(m.flags.contains(MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY));
    }
}
