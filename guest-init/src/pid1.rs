//! PID1's life: boot, run until asked to stop, go down. PID1 must never
//! exit (the kernel panics when it does): every error ends in an orderly
//! power-off, a panic included.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dstack_proto::host::events;

use crate::app::RuntimeFactory;
use crate::boot::{Boot, BootConfig, BootError, error_chain, phase};
use crate::shutdown::{self, Teardown};
use crate::state::{ServicesRef, ShutdownReason};
use crate::sys::{LinuxSyscall, RebootCmd, Syscall};
use crate::{console, power, probe};

/// How long a failed guest stays up so the host can read why.
pub const ERROR_LINGER: Duration = Duration::from_secs(20);

/// Runs the guest as PID1 and powers off at the end; never returns.
pub fn main_as_pid1(factory: RuntimeFactory) -> ! {
    let start = Instant::now();
    console::init(start);
    shutdown::install_panic_hook();
    let sys: Arc<dyn Syscall> = Arc::new(LinuxSyscall);
    // Two workers: blocking steps (mke2fs, libcontainer) run on the blocking
    // pool, so the control server and reaper stay responsive.
    match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(run(sys.clone(), BootConfig::default(), factory)),
        Err(e) => eprintln!("dstack-init: cannot start the async runtime: {e}"),
    }
    // Power-off failed or never ran: try again, and never return.
    loop {
        sys.sync();
        let _ = sys.reboot(RebootCmd::PowerOff);
        std::thread::sleep(Duration::from_secs(5));
    }
}

/// Boots, waits for a shutdown request, and shuts down. Returns only when
/// power-off failed.
pub async fn run(sys: Arc<dyn Syscall>, cfg: BootConfig, factory: RuntimeFactory) {
    let mut boot = Boot::new(sys, cfg);
    if let Err(e) = boot.early() {
        // No vsock yet: the console is the only witness.
        tracing::error!("boot failed: {}", error_chain(&e));
        tokio::time::sleep(Duration::from_secs(1)).await;
        return power_off(&boot, None).await;
    }
    tokio::spawn(boot.reaper.clone().run(boot.sys.clone()));
    if let Err(e) = power::watch_signals(&boot.shutdown) {
        tracing::warn!("cannot watch SIGTERM/SIGINT: {e}");
    }
    if let Some(probe) = probe::requested(&probe::kernel_cmdline()) {
        probe::run(probe, &boot.shutdown).await;
        return power_off(&boot, None).await;
    }

    let services = match boot_app(&mut boot, factory).await {
        Ok(services) => {
            boot.phase(phase::RUNNING);
            Some(services)
        }
        Err(e) => {
            fail(&boot, &e).await;
            boot.state.services()
        }
    };
    let reason = boot.shutdown.wait().await;
    tracing::info!("shutting down ({reason})");
    power_off(&boot, services.as_deref()).await;
}

async fn boot_app(boot: &mut Boot, factory: RuntimeFactory) -> Result<ServicesRef, BootError> {
    boot.load_modules().await?;
    let bundle = boot.fetch_config().await?;
    boot.apply_config(&bundle).await?;
    boot.finish_background().await?;
    let compose = boot.unlock(&bundle).await?;
    let runtime = boot.run_app(&bundle, compose, factory).await?;
    let services: ServicesRef = runtime;
    Ok(services)
}

/// Reports a failed boot and keeps the guest (and guest control) up for
/// [`ERROR_LINGER`] or until asked to stop, whichever is first.
async fn fail(boot: &Boot, error: &BootError) {
    let reason = error_chain(error);
    tracing::error!("boot failed: {reason}");
    boot.state.set_error(reason.clone());
    boot.state.enter_phase(phase::FAILED);
    boot.notifier.send(events::BOOT_ERROR, reason);
    tokio::select! {
        _ = tokio::time::sleep(ERROR_LINGER) => {}
        _ = boot.shutdown.wait() => {}
    }
    boot.shutdown.request(ShutdownReason::BootFailed);
}

async fn power_off(boot: &Boot, services: Option<&dyn crate::state::Services>) {
    let data = boot
        .data_mounted
        .as_deref()
        .map(|plain| (boot.cfg.data_dir.as_path(), plain));
    let teardown = Teardown {
        sys: &*boot.sys,
        notifier: &boot.notifier,
        shipper: boot.shipper.as_ref(),
        data,
        mapper: &*boot.mapper,
    };
    shutdown::power_off(&teardown, services).await;
}
