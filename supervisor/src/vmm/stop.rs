//! Graceful stop (guest, then ACPI, then SIGKILL) and removal.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rustix::process::Signal;

use super::Supervisor;
use super::vm::{LastExit, Vm};
use crate::error::VmmError;
use crate::guest_client::GuestClient;
use crate::qemu::process::Proc;
use crate::qemu::qmp;
use crate::state::Desired;
use crate::vsock::stop_backend;

/// How long the guest has to accept a shutdown request.
const GUEST_REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

impl Supervisor {
    /// `POST /v1/vms/{vm}/stop`: the VM is stopped, and stays stopped.
    /// With `force`, QEMU is killed at once (the guest gets no chance to
    /// unmount its disk).
    pub(super) async fn stop(&self, vm: &Arc<Vm>, force: bool) -> Result<(), VmmError> {
        let _op = vm.op.lock().await;
        // Recorded first: from here on a QEMU exit is expected, and a
        // pending automatic restart finds nothing to do.
        vm.set_desired(Desired::Stopped)
            .map_err(VmmError::io("write", vm.dir.manifest()))?;
        {
            let mut run = vm.run();
            run.last_exit = LastExit::Clean;
            run.launch_error = None;
        }
        let Some(qemu) = vm.qemu() else {
            return Ok(());
        };
        vm.run().stopping = true;
        if force {
            self.kill(vm, &qemu).await;
        } else {
            self.shut_down(vm, &qemu).await;
        }
        vm.cleanup_after_exit(&qemu).await;
        vm.run().stopping = false;
        Ok(())
    }

    /// Brings QEMU down: ask the guest and wait; press the ACPI power button
    /// and wait; then SIGKILL.
    async fn shut_down(&self, vm: &Vm, qemu: &Proc) {
        let timeouts = self.config.stop_timeouts;
        let guest = GuestClient::new(vm.dir.vsock(), GUEST_REQUEST_TIMEOUT);
        match guest.shutdown().await {
            Ok(()) => {
                tracing::info!(vm = %vm.id, "guest accepted shutdown");
                if qemu.wait_timeout(timeouts.guest).await {
                    return;
                }
                tracing::warn!(vm = %vm.id, "guest still up after {:?}", timeouts.guest);
            }
            Err(e) => tracing::info!(
                vm = %vm.id,
                "guest shutdown request failed ({}); using ACPI",
                crate::error::error_chain(&e)
            ),
        }
        if !qemu.is_running() {
            return;
        }
        match qmp::system_powerdown(&vm.dir.qmp_sock()).await {
            Ok(()) => {
                if qemu.wait_timeout(timeouts.acpi).await {
                    return;
                }
                tracing::warn!(vm = %vm.id, "no ACPI power-off after {:?}; killing", timeouts.acpi);
            }
            Err(e) => tracing::warn!(vm = %vm.id, "QMP power-down failed: {e}; killing"),
        }
        self.kill(vm, qemu).await;
    }

    async fn kill(&self, vm: &Vm, qemu: &Proc) {
        let _ = qemu.signal(Signal::KILL);
        if !qemu.wait_timeout(self.config.stop_timeouts.kill).await {
            tracing::error!(vm = %vm.id, pid = qemu.pid(), "QEMU survived SIGKILL");
        }
    }

    /// `DELETE /v1/vms/{vm}`: stop (or with `force`, kill), then delete
    /// every file and free the CID.
    pub(super) async fn remove(&self, vm: &Arc<Vm>, force: bool) -> Result<(), VmmError> {
        self.stop(vm, force).await?;
        let _op = vm.op.lock().await;
        if vm.removed.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        if vm.qemu().is_some() {
            // Someone started it between our stop and here: not removable now.
            vm.removed.store(false, Ordering::SeqCst);
            return Err(VmmError::WrongState {
                vm: vm.manifest().name,
                state: "running".into(),
                action: "remove",
            });
        }
        // A backend whose QEMU never came up (adopted half-state).
        let vsock = vm.run().vsock.take();
        if let Some(vsock) = vsock {
            stop_backend(&vsock).await;
        }
        self.forget(&vm.id);
        if let Some(task) = vm.host_api.lock().unwrap_or_else(|e| e.into_inner()).take() {
            task.abort();
        }
        if let Some(serial) = vm.run().serial.take() {
            serial.abort();
        }
        std::fs::remove_dir_all(vm.dir.root()).map_err(VmmError::io("remove", vm.dir.root()))?;
        self.release_cid(&vm.id);
        tracing::info!(vm = %vm.id, "removed");
        Ok(())
    }
}
