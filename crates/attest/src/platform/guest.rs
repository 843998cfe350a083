//! The guest side of every TEE: a [`TeeDevice`] (what the hardware, or the
//! host playing it, does) plus the runtime event log the guest keeps. The
//! log logic is written once, so the TDX and the simulated TEE differ only
//! at the device boundary.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::{Platform, PlatformError, PlatformKind, io};
use crate::collateral::Collateral;
use crate::eventlog::{Event, RuntimeEvent, parse_runtime_log};
use crate::rtmr::Measurement;

/// Where dstack keeps the runtime (RTMR3) event log (UPSTREAM.md §2.1).
pub const RUNTIME_LOG: &str = "/run/log/dstack/runtime_events.log";

/// What a TEE does for the guest: the device boundary.
pub trait TeeDevice: Send + Sync + std::fmt::Debug {
    /// Which kind of TEE this is.
    fn kind(&self) -> PlatformKind;
    /// A quote over the TD's current measurements binding `report_data`.
    fn quote(&self, report_data: &[u8; 64]) -> Result<Vec<u8>, PlatformError>;
    /// Extends RTMR3 with `digest`.
    fn extend_rtmr3(&self, digest: &Measurement) -> Result<(), PlatformError>;
    /// The boot-time events (RTMR0-2), as firmware recorded them.
    fn boot_events(&self) -> Result<Vec<Event>, PlatformError>;
    /// Collateral for the device's quotes, when it can supply it.
    fn collateral(&self) -> Result<Option<Collateral>, PlatformError> {
        Ok(None)
    }
}

/// A guest's [`Platform`]: a device plus the runtime event log file.
#[derive(Debug)]
pub struct GuestPlatform<D> {
    device: D,
    runtime_log: PathBuf,
}

impl<D: TeeDevice> GuestPlatform<D> {
    /// `device`, logging runtime events to `runtime_log`.
    pub fn new(device: D, runtime_log: impl Into<PathBuf>) -> Self {
        Self {
            device,
            runtime_log: runtime_log.into(),
        }
    }

    /// The device.
    pub fn device(&self) -> &D {
        &self.device
    }

    /// The runtime event log file.
    pub fn runtime_log(&self) -> &Path {
        &self.runtime_log
    }
}

impl<D: TeeDevice> Platform for GuestPlatform<D> {
    fn kind(&self) -> PlatformKind {
        self.device.kind()
    }

    fn quote(&self, report_data: &[u8; 64]) -> Result<Vec<u8>, PlatformError> {
        self.device.quote(report_data)
    }

    fn emit_event(&self, event: &RuntimeEvent) -> Result<(), PlatformError> {
        let log_path = &self.runtime_log;
        if let Some(dir) = log_path.parent() {
            std::fs::create_dir_all(dir).map_err(io("create log directory", dir))?;
        }
        let mut log = {
            use std::os::unix::fs::OpenOptionsExt;
            OpenOptions::new()
                .append(true)
                .create(true)
                .mode(0o600)
                .open(log_path)
                .map_err(io("open runtime event log", log_path))?
        };
        // Serialise extend+append across processes so log order equals
        // extend order; the line is written only once the register holds it.
        log.lock().map_err(io("lock runtime event log", log_path))?;
        self.device.extend_rtmr3(&event.digest())?;
        let mut line = event.to_log_line();
        line.push('\n');
        log.write_all(line.as_bytes())
            .and_then(|()| log.sync_data())
            .map_err(io("append runtime event log", log_path))?;
        Ok(())
    }

    fn event_log(&self) -> Result<Vec<Event>, PlatformError> {
        let mut events = self.device.boot_events()?;
        match std::fs::read_to_string(&self.runtime_log) {
            Ok(text) => events.extend(parse_runtime_log(&text)?.iter().map(RuntimeEvent::to_event)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("read runtime event log", &self.runtime_log)(e)),
        }
        Ok(events)
    }

    fn collateral(&self) -> Result<Option<Collateral>, PlatformError> {
        self.device.collateral()
    }
}
