//! Starting a VM (vsock backend, then QEMU), watching QEMU, and restarting
//! it with back-off when it exits unexpectedly.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::process::Signal;

use super::Supervisor;
use super::vm::{FIRST_BACKOFF, LastExit, Vm};
use crate::error::VmmError;
use crate::hostapi;
use crate::images::Image;
use crate::qemu::argv::{QemuSpec, qemu_argv};
use crate::qemu::process::{LaunchError, Proc, log_tail, write_pid};
use crate::sim_tee::{SimTd, SimTeeError, TdLaunch};
use crate::state::Desired;
use crate::vsock::{VsockDevice, remove_if_exists, start_backend, stop_backend};
use dstack_compose::{compose_hash, mr_config_id_v1};
use dstack_machine::{AcpiCache, AcpiSource, BootFiles, ProbeOptions, Shape, measure_td};

/// How long QEMU may take to create its QMP socket (it does so before the
/// guest runs a single instruction).
const QEMU_READY_TIMEOUT: Duration = Duration::from_secs(10);

impl Supervisor {
    /// Binds the VM's host API listener and serves it. Done when a VM is
    /// created or loaded, before QEMU ever starts, so the guest's first
    /// request always finds it.
    pub(super) fn attach(&self, vm: &Arc<Vm>) -> Result<(), VmmError> {
        vm.set_key_provider(self.key_provider.clone());
        let path = vm.dir.host_api_sock();
        let listener = hostapi::bind(&path).map_err(VmmError::io("listen on", path))?;
        let task = hostapi::serve(listener, vm.clone());
        if let Some(old) = vm
            .host_api
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .replace(task)
        {
            old.abort();
        }
        Ok(())
    }

    /// `POST /v1/vms/{vm}/start`: boots the VM unless QEMU already runs.
    ///
    /// `format_nonempty_disk` is the operator's one-shot opt-in for this
    /// boot: `Some` (an operator's start) stores it in the manifest, true
    /// or false, replacing whatever a previous request left pending;
    /// `None` (a deploy's first boot) keeps the manifest's. Asking for it
    /// while QEMU runs is refused: it would apply to no boot.
    pub(super) async fn start(
        &self,
        vm: &Arc<Vm>,
        format_nonempty_disk: Option<bool>,
    ) -> Result<(), VmmError> {
        let _op = vm.op.lock().await;
        if vm.is_removed() {
            return Err(VmmError::NotFound(vm.id.clone()));
        }
        if vm.qemu().is_some() {
            if format_nonempty_disk == Some(true) {
                return Err(VmmError::conflict(
                    "format_nonempty_disk",
                    format!(
                        "VM {} is running, and the opt-in applies to a boot: stop it first",
                        vm.manifest().name
                    ),
                ));
            }
            return Ok(());
        }
        if let Some(allow) = format_nonempty_disk {
            vm.set_format_nonempty_disk(allow)
                .map_err(VmmError::io("write", vm.dir.manifest()))?;
        }
        let previous = vm.manifest().desired;
        vm.set_desired(Desired::Running)
            .map_err(VmmError::io("write", vm.dir.manifest()))?;
        vm.run().backoff = FIRST_BACKOFF;
        if let Err(e) = self.launch(vm).await {
            // Not left "should run": a supervisor restart would retry it forever.
            let _ = vm.set_desired(previous);
            // No boot happened: the one-shot opt-in applies to none later.
            if format_nonempty_disk.is_some() {
                let _ = vm.set_format_nonempty_disk(false);
            }
            let mut run = vm.run();
            run.last_exit = LastExit::Clean;
            run.launch_error = Some(crate::error::error_chain(&e));
            return Err(e);
        }
        Ok(())
    }

    /// Starts the vsock backend and QEMU, and watches QEMU. The caller
    /// holds the VM's operation lock.
    pub(super) async fn launch(&self, vm: &Arc<Vm>) -> Result<(), VmmError> {
        let manifest = vm.manifest();
        let failed = |source| VmmError::Launch {
            vm: manifest.name.clone(),
            source,
        };
        let image = self
            .images
            .resolve(&manifest.image)
            .map_err(|_| failed(LaunchError::Image(manifest.image.clone())))?;
        for stale in vm.dir.run_files() {
            remove_if_exists(&stale).map_err(|source| {
                failed(LaunchError::Io {
                    path: stale.clone(),
                    source,
                })
            })?;
        }
        vm.set_os_image_hash(image.digest.clone());
        self.measure_sim_td(vm, &image).await.map_err(failed)?;
        let vsock = match &self.config.vsock {
            VsockDevice::VhostUser { binary } => Some(Arc::new(
                start_backend(binary, manifest.cid, &vm.dir)
                    .await
                    .map_err(failed)?,
            )),
            VsockDevice::Kernel => None,
        };
        let args = qemu_argv(&QemuSpec {
            manifest: &manifest,
            dir: &vm.dir,
            image: &image,
            accel: self.config.accel,
            vsock: self.config.vsock.kind(),
            mr_config_id: mr_config_id_v1(&compose_hash(vm.app_compose.as_bytes())),
        });
        tracing::info!(vm = %vm.id, "starting {} {}", self.config.qemu.display(), args.join(" "));
        let qemu = match spawn_qemu(&self.config.qemu, &args, vm).await {
            Ok(qemu) => Arc::new(qemu),
            Err(e) => {
                if let Some(vsock) = &vsock {
                    stop_backend(vsock).await;
                }
                let _ = remove_if_exists(&vm.dir.vsock_pid());
                return Err(failed(e));
            }
        };
        vm.update_guest(|guest| guest.new_boot());
        let serial = tokio::spawn(crate::serial::capture(
            vm.dir.serial_sock(),
            vm.serial_log.clone(),
        ));
        {
            let mut run = vm.run();
            run.qemu = Some(qemu.clone());
            run.vsock = vsock;
            if let Some(old) = run.serial.replace(serial) {
                old.abort();
            }
            run.last_exit = LastExit::Clean;
            run.launch_error = None;
            run.launched_at = Some(Instant::now());
        }
        tracing::info!(vm = %vm.id, pid = qemu.pid(), "QEMU started");
        self.watch(vm.clone(), qemu);
        Ok(())
    }

    /// On a sim TEE host, measures this boot of `vm` and installs its fresh
    /// simulated TDX module (RTMR3 at zero) before the guest can ask for it.
    async fn measure_sim_td(&self, vm: &Arc<Vm>, image: &Image) -> Result<(), LaunchError> {
        let Some(authority) = self.sim.clone() else {
            vm.set_sim_td(None);
            return Ok(());
        };
        let manifest = vm.manifest();
        let mr_config_id = mr_config_id_v1(&compose_hash(vm.app_compose.as_bytes()));
        let (image, path) = (image.clone(), vm.dir.sim_td());
        let (qemu, cache) = (
            self.config.qemu.clone(),
            AcpiCache::new(self.config.acpi_cache.clone()),
        );
        let vm_id = vm.id.clone();
        let td = tokio::task::spawn_blocking(move || {
            let files = BootFiles {
                firmware: &image.bios,
                kernel: &image.kernel,
                initrd: &image.initrd,
                cmdline: &image.cmdline,
            };
            let shape = Shape {
                vcpus: manifest.vcpu,
                memory_mb: manifest.memory_mb,
            };
            let started = Instant::now();
            let measured = measure_td(
                &files,
                shape,
                AcpiSource::Probe {
                    qemu: &qemu,
                    cache: &cache,
                    options: &ProbeOptions::default(),
                },
            )
            .map_err(LaunchError::Measure)?;
            tracing::info!(
                vm = %vm_id,
                "measured the boot as TDX would ({} vCPUs, {} MiB, QEMU {}; ACPI tables {:?}) in {:.1}s",
                shape.vcpus,
                shape.memory_mb,
                measured.qemu_version,
                measured.acpi_outcome,
                started.elapsed().as_secs_f64()
            );
            let launch = TdLaunch {
                measured: &measured.td,
                mr_config_id,
            };
            SimTd::boot(authority, &launch, path).map_err(LaunchError::SimTee)
        })
        .await
        .map_err(|e| {
            LaunchError::SimTee(SimTeeError::Io {
                operation: "measure",
                path: vm.dir.sim_td(),
                source: std::io::Error::other(e),
            })
        })??;
        vm.set_sim_td(Some(Arc::new(td)));
        Ok(())
    }

    /// Waits for QEMU to exit in the background, then cleans up and decides
    /// whether to restart it.
    pub(super) fn watch(&self, vm: Arc<Vm>, qemu: Arc<Proc>) {
        let supervisor = self.arc();
        tokio::spawn(async move {
            let status = qemu.wait().await;
            supervisor.on_qemu_exit(&vm, &qemu, status).await;
        });
    }

    async fn on_qemu_exit(
        &self,
        vm: &Arc<Vm>,
        qemu: &Arc<Proc>,
        status: Option<std::process::ExitStatus>,
    ) {
        let status_text = status.map_or_else(|| "unknown status".into(), |s| s.to_string());
        let expected = vm.run().stopping || vm.manifest().desired == Desired::Stopped;
        if !vm.cleanup_after_exit(qemu).await || vm.is_removed() || expected {
            return;
        }
        let guest = vm.guest();
        if guest.error.is_some() {
            // A failed boot ends in a clean power-off (dstack-init lingers,
            // then powers off): checked first so the VM shows as failed, and
            // not restarted into the same failure.
            tracing::warn!(vm = %vm.id, "guest failed to boot and exited ({status_text})");
            vm.run().last_exit = LastExit::Failed;
        } else if guest.powering_off {
            // The guest shut itself down on purpose (upstream marks such a VM
            // stopped): not a crash, and not to be booted again on our own.
            tracing::info!(vm = %vm.id, "guest powered off ({status_text})");
            if let Err(e) = vm.set_desired(Desired::Stopped) {
                tracing::warn!(vm = %vm.id, "cannot record the power-off: {e}");
            }
        } else {
            let tail = log_tail(&vm.dir.qemu_log(), 300);
            let tail = if tail.is_empty() {
                String::new()
            } else {
                format!("; its log ends: {tail}")
            };
            tracing::warn!(vm = %vm.id, "QEMU exited unexpectedly ({status_text}){tail}");
            vm.run().last_exit = LastExit::Crashed;
            self.schedule_restart(vm.clone());
        }
    }

    /// Boots a crashed VM again after its back-off, if it should still run.
    pub(super) fn schedule_restart(&self, vm: Arc<Vm>) {
        let delay = vm.next_backoff();
        let supervisor = self.arc();
        tracing::info!(vm = %vm.id, "restarting in {delay:?}");
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let op = vm.op.lock().await;
            let wanted = !vm.is_removed()
                && vm.manifest().desired == Desired::Running
                && vm.qemu().is_none()
                && vm.run().last_exit == LastExit::Crashed;
            if !wanted {
                return;
            }
            if let Err(e) = supervisor.launch(&vm).await {
                let text = crate::error::error_chain(&e);
                tracing::warn!(vm = %vm.id, "restart failed: {text}");
                vm.run().launch_error = Some(text);
                drop(op);
                supervisor.schedule_restart(vm);
            }
        });
    }
}

impl Vm {
    /// After `qemu` exited: stops the vsock backend and the serial reader,
    /// removes run files. Returns false if another caller already did (or
    /// `qemu` is not this VM's current QEMU).
    pub(super) async fn cleanup_after_exit(&self, qemu: &Arc<Proc>) -> bool {
        let _cleanup = self.cleanup.lock().await;
        let vsock = {
            let mut run = self.run();
            if !run.qemu.as_ref().is_some_and(|q| Arc::ptr_eq(q, qemu)) {
                return false;
            }
            run.qemu = None;
            run.vsock.take()
        };
        if let Some(vsock) = vsock {
            stop_backend(&vsock).await;
        }
        // The serial reader ends at EOF by itself; this covers a reader
        // still retrying its connect.
        if let Some(serial) = self.run().serial.take() {
            serial.abort();
        }
        for file in self.dir.run_files() {
            let _ = remove_if_exists(&file);
        }
        true
    }
}

/// Spawns QEMU, records its pid, and waits until it is up (its QMP socket
/// exists). On failure no QEMU is left running.
async fn spawn_qemu(
    program: &std::path::Path,
    args: &[String],
    vm: &Vm,
) -> Result<Proc, LaunchError> {
    let qemu = Proc::spawn(program, args, &vm.dir.qemu_log())?;
    let pid_file = vm.dir.qemu_pid();
    let ready = async {
        write_pid(&pid_file, qemu.pid()).map_err(|source| LaunchError::Io {
            path: pid_file.clone(),
            source,
        })?;
        let started = Instant::now();
        while !vm.dir.qmp_sock().exists() {
            if !qemu.is_running() {
                let status = qemu.wait().await;
                return Err(LaunchError::ExitedEarly {
                    what: "qemu",
                    status: status.map_or_else(|| "unknown status".into(), |s| s.to_string()),
                    log_tail: log_tail(&vm.dir.qemu_log(), 600),
                });
            }
            if started.elapsed() > QEMU_READY_TIMEOUT {
                return Err(LaunchError::NotReady {
                    what: "qemu",
                    path: vm.dir.qmp_sock(),
                    secs: QEMU_READY_TIMEOUT.as_secs(),
                });
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(())
    };
    match ready.await {
        Ok(()) => Ok(qemu),
        Err(e) => {
            let _ = qemu.signal(Signal::KILL);
            qemu.wait_timeout(Duration::from_secs(5)).await;
            let _ = remove_if_exists(&pid_file);
            Err(e)
        }
    }
}
