//! The TEE platform behind one trait: quotes, RTMR3 extension and the event
//! log. `tdx` talks to the kernel's TDX guest interfaces; `sim` is the
//! simulated TEE used on hosts without TDX.

mod guest;
pub mod tdx;

pub use guest::{GuestPlatform, RUNTIME_LOG, TeeDevice};

use crate::collateral::Collateral;
use crate::eventlog::{Event, EventLogError, RuntimeEvent};
use crate::sim::SimError;

/// Why a platform operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PlatformError {
    /// A kernel interface could not be used.
    #[error("{operation} failed at {path}")]
    Io {
        /// What was being done.
        operation: &'static str,
        /// The file or directory involved.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The kernel exposes no way to extend RTMRs.
    #[error(
        "RTMR extension is not available: neither {sysfs} (Linux 6.16+ TSM measurements) nor a patched /dev/tdx_guest exists"
    )]
    RtmrExtendUnsupported {
        /// The sysfs path that was looked for.
        sysfs: String,
    },
    /// The configfs-tsm provider is not TDX.
    #[error("configfs-tsm provider is {0:?}, expected \"tdx_guest\"")]
    WrongProvider(String),
    /// Another process used the same configfs-tsm report entry concurrently.
    #[error(
        "configfs-tsm report generation changed from {before} to {after}: a concurrent writer interfered"
    )]
    ReportRace {
        /// Generation before our write.
        before: u64,
        /// Generation after our read.
        after: u64,
    },
    /// The event log could not be read.
    #[error("event log is unreadable")]
    EventLog(#[from] EventLogError),
    /// The simulated TEE failed.
    #[error("simulated TEE failed")]
    Sim(#[from] SimError),
    /// The quote returned by the platform is malformed.
    #[error("platform returned a malformed quote")]
    BadQuote(#[from] crate::quote::QuoteParseError),
}

/// Maps an I/O error on `path` during `operation` to [`PlatformError::Io`].
fn io(
    operation: &'static str,
    path: &std::path::Path,
) -> impl FnOnce(std::io::Error) -> PlatformError {
    let path = path.display().to_string();
    move |source| PlatformError::Io {
        operation,
        path,
        source,
    }
}

/// Which kind of TEE a platform is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PlatformKind {
    /// Intel TDX hardware.
    Tdx,
    /// The simulated TEE.
    Sim,
}

/// A TEE the guest runs in.
pub trait Platform: Send + Sync + std::fmt::Debug {
    /// Which kind of TEE this is.
    fn kind(&self) -> PlatformKind;

    /// A quote over the TD's measurements binding `report_data`.
    fn quote(&self, report_data: &[u8; 64]) -> Result<Vec<u8>, PlatformError>;

    /// Extend RTMR3 with `event`'s digest, then append it to the event log.
    /// The log line is written only after the extension succeeded, so the log
    /// never claims a measurement the register does not hold.
    fn emit_event(&self, event: &RuntimeEvent) -> Result<(), PlatformError>;

    /// The event log: boot events (RTMR0-2) followed by runtime events (RTMR3).
    fn event_log(&self) -> Result<Vec<Event>, PlatformError>;

    /// Collateral for this platform's quotes when the platform can supply
    /// it (the sim TEE always can); `None` leaves fetching it to verifiers.
    fn collateral(&self) -> Result<Option<Collateral>, PlatformError> {
        Ok(None)
    }
}
