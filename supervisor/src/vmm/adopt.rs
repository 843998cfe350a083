//! Start-up: load every VM directory, re-adopt the QEMU and vsock backend
//! processes a previous supervisor left running, and restart VMs that
//! should run but do not.

use std::collections::BTreeMap;
use std::fs;
use std::sync::Arc;

use super::Supervisor;
use super::deploy::STAGING_PREFIX;
use super::vm::{LastExit, Vm};
use crate::error::VmmError;
use crate::qemu::argv::name_arg;
use crate::qemu::process::{Proc, is_ours, read_pid};
use crate::state::{Desired, Manifest, VmDir};
use crate::vsock::{backend_marker, remove_if_exists, stop_backend};

impl Supervisor {
    pub(super) async fn load_all(&self) -> Result<(), VmmError> {
        let vms_dir = self.config.vms_dir();
        let entries = fs::read_dir(&vms_dir).map_err(VmmError::io("read", &vms_dir))?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(STAGING_PREFIX) {
                // A deploy interrupted by a crash: it never existed.
                tracing::info!("removing interrupted deploy {name}");
                let _ = fs::remove_dir_all(entry.path());
                continue;
            }
            if name.starts_with('.') || !entry.path().is_dir() {
                continue;
            }
            let dir = VmDir::at(entry.path());
            match load(&dir, &name) {
                Ok((manifest, app_compose)) => {
                    let vm = Arc::new(Vm::new(
                        dir,
                        manifest,
                        app_compose,
                        self.config.log_max_bytes,
                        self.config.registry_aliases.clone(),
                        self.config.engine_registry.clone(),
                        self.config.guest_pccs_url.clone(),
                    ));
                    if let Some(authority) = &self.sim {
                        match crate::sim_tee::SimTd::resume(authority.clone(), vm.dir.sim_td()) {
                            Ok(td) => vm.set_sim_td(td.map(Arc::new)),
                            Err(e) => {
                                tracing::warn!(vm = %vm.id, "{}", crate::error::error_chain(&e))
                            }
                        }
                    }
                    self.attach(&vm)?;
                    self.insert(vm);
                }
                // Left in place for the operator: deleting what we cannot
                // read could destroy a disk with data on it.
                Err(reason) => {
                    tracing::error!(dir = %entry.path().display(), "skipping VM: {reason}")
                }
            }
        }
        let vms = self.all();
        let cids: BTreeMap<String, u32> = vms
            .iter()
            .map(|vm| (vm.id.clone(), vm.manifest().cid))
            .collect();
        self.cids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .reconcile(&cids)
            .map_err(VmmError::io("write", self.config.cids_file()))?;
        for vm in vms {
            self.adopt(&vm).await;
        }
        Ok(())
    }

    /// Re-attaches to a VM's processes if they are still ours and alive;
    /// otherwise cleans up what is left and restarts it if it should run.
    async fn adopt(&self, vm: &Arc<Vm>) {
        let marker = name_arg(&vm.id);
        let qemu = read_pid(&vm.dir.qemu_pid())
            .filter(|pid| is_ours(*pid, &marker))
            .and_then(Proc::adopt);
        let vsock = read_pid(&vm.dir.vsock_pid())
            .filter(|pid| is_ours(*pid, &backend_marker(&vm.dir)))
            .and_then(Proc::adopt);
        if let Some(qemu) = qemu {
            let qemu = Arc::new(qemu);
            if vsock.is_none()
                && matches!(
                    self.config.vsock,
                    crate::vsock::VsockDevice::VhostUser { .. }
                )
            {
                tracing::warn!(vm = %vm.id, "vsock backend is gone; the guest is unreachable until restarted");
            }
            tracing::info!(vm = %vm.id, pid = qemu.pid(), "re-adopted running QEMU");
            let serial = tokio::spawn(crate::serial::capture(
                vm.dir.serial_sock(),
                vm.serial_log.clone(),
            ));
            {
                let mut run = vm.run();
                run.qemu = Some(qemu.clone());
                run.vsock = vsock.map(Arc::new);
                run.serial = Some(serial);
                run.launched_at = Some(std::time::Instant::now());
            }
            self.watch(vm.clone(), qemu);
            if vm.manifest().desired == Desired::Stopped {
                // A stop was under way when the previous supervisor went away.
                tracing::info!(vm = %vm.id, "finishing an interrupted stop");
                let supervisor = self.arc();
                let vm = vm.clone();
                tokio::spawn(async move {
                    if let Err(e) = supervisor.stop(&vm, false).await {
                        tracing::warn!(vm = %vm.id, "cannot finish the stop: {e}");
                    }
                });
            }
            return;
        }
        if let Some(vsock) = vsock {
            tracing::info!(vm = %vm.id, "stopping orphaned vsock backend");
            stop_backend(&vsock).await;
        }
        for file in vm.dir.run_files() {
            let _ = remove_if_exists(&file);
        }
        if vm.manifest().desired != Desired::Running {
            return;
        }
        if vm.guest().error.is_some() {
            vm.run().last_exit = LastExit::Failed;
        } else {
            tracing::info!(vm = %vm.id, "should run but QEMU is gone; restarting");
            vm.run().last_exit = LastExit::Crashed;
            self.schedule_restart(vm.clone());
        }
    }
}

/// Reads a VM directory's manifest and app-compose.json.
fn load(dir: &VmDir, name: &str) -> Result<(Manifest, String), String> {
    let manifest = Manifest::load(&dir.manifest())
        .map_err(|e| format!("cannot read {}: {e}", dir.manifest().display()))?;
    if manifest.id != name {
        return Err(format!(
            "manifest id {:?} does not match its directory",
            manifest.id
        ));
    }
    let app_compose = fs::read_to_string(dir.app_compose())
        .map_err(|e| format!("cannot read {}: {e}", dir.app_compose().display()))?;
    Ok((manifest, app_compose))
}
