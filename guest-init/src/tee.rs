//! The guest's TEE: Intel TDX when the firmware says this is a TD, else the
//! simulated TDX module the host plays for this VM over the host API
//! (DESIGN §5). Both are a `TeeDevice` under the same `GuestPlatform`, so
//! the event log and everything above it run the same code on either.

use std::sync::Arc;

use dstack_attest::eventlog::{Event, parse_event_log_json};
use dstack_attest::platform::tdx::{TdxDevice, TdxPaths, TdxPlatform};
use dstack_attest::{
    Collateral, GuestPlatform, Measurement, Platform, PlatformError, PlatformKind, RUNTIME_LOG,
    TeeDevice,
};
use dstack_proto::host::{QuoteRequest, RtmrExtend};
use tokio::runtime::Handle;

use crate::hostapi::{HostApiError, HostClient};

/// Why the TEE could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TeeError {
    /// Not a TD, and the host plays no TEE for this VM either.
    #[error("this VM is not a TDX guest and the host offers no simulated TEE")]
    NoTee(#[source] HostApiError),
    /// The host's boot event log is unreadable.
    #[error("the host's boot event log is invalid")]
    BootLog(#[source] dstack_attest::EventLogError),
    /// The host names a TEE kind this guest does not know.
    #[error("the host offers an unknown TEE kind {0:?}")]
    UnknownKind(String),
}

/// The simulated TDX module, reached over the host API. Its methods block:
/// call them from blocking threads (`spawn_blocking`), never from async code.
#[derive(Debug)]
pub struct HostSimDevice {
    client: HostClient,
    runtime: Handle,
    boot_events: Vec<Event>,
}

impl HostSimDevice {
    /// Asks the host for the VM's simulated TEE.
    pub async fn connect(client: HostClient) -> Result<Self, TeeError> {
        let info = client.tee_info().await.map_err(TeeError::NoTee)?;
        if info.kind != "sim" {
            return Err(TeeError::UnknownKind(info.kind));
        }
        let boot_events = parse_event_log_json(&info.boot_event_log).map_err(TeeError::BootLog)?;
        Ok(Self {
            client,
            runtime: Handle::current(),
            boot_events,
        })
    }

    fn call<T>(
        &self,
        operation: &'static str,
        request: impl std::future::Future<Output = Result<T, HostApiError>>,
    ) -> Result<T, PlatformError> {
        self.runtime
            .block_on(request)
            .map_err(|e| PlatformError::Io {
                operation,
                path: self.client.endpoint().to_string(),
                source: std::io::Error::other(crate::boot::error_chain(&e)),
            })
    }
}

impl TeeDevice for HostSimDevice {
    fn kind(&self) -> PlatformKind {
        PlatformKind::Sim
    }

    fn quote(&self, report_data: &[u8; 64]) -> Result<Vec<u8>, PlatformError> {
        let request = QuoteRequest {
            report_data: report_data.to_vec(),
        };
        let response = self.call(
            "get a quote from the simulated TEE at",
            self.client.tee_quote(&request),
        )?;
        dstack_attest::Quote::parse(&response.quote)?;
        Ok(response.quote)
    }

    fn extend_rtmr3(&self, digest: &Measurement) -> Result<(), PlatformError> {
        let request = RtmrExtend {
            index: 3,
            digest: digest.to_vec(),
        };
        self.call(
            "extend RTMR3 of the simulated TEE at",
            self.client.tee_extend(&request),
        )
    }

    fn boot_events(&self) -> Result<Vec<Event>, PlatformError> {
        Ok(self.boot_events.clone())
    }

    fn collateral(&self) -> Result<Option<Collateral>, PlatformError> {
        let json = self.call(
            "get collateral from the simulated TEE at",
            self.client.tee_collateral(),
        )?;
        let collateral = Collateral::from_json(&json).map_err(|e| PlatformError::Io {
            operation: "parse collateral from",
            path: self.client.endpoint().to_string(),
            source: std::io::Error::other(e),
        })?;
        Ok(Some(collateral))
    }
}

/// The TEE this guest runs in: TDX if the firmware says so, else the host's
/// simulated one. Runtime events are logged at [`RUNTIME_LOG`].
pub async fn select(client: HostClient) -> Result<Arc<dyn Platform>, TeeError> {
    // Where RTMR3 is extended on TDX (Linux 6.16+); said in the boot log so
    // an operator sees at once whether the kernel can measure the boot.
    let measurements = TdxPaths::default().rtmr_sysfs;
    let has_measurements = measurements.join("rtmr3:sha384").exists();
    if TdxDevice::is_available() {
        if has_measurements {
            tracing::info!("TDX: RTMR3 extended through {}", measurements.display());
        } else {
            tracing::error!(
                "TDX: {} is absent: this kernel cannot extend RTMR3",
                measurements.display()
            );
        }
        return Ok(Arc::new(TdxPlatform::tdx()));
    }
    if has_measurements {
        tracing::info!("TSM measurements at {}", measurements.display());
    } else {
        tracing::info!(
            "no TDX: {} is absent; using the host's simulated TEE",
            measurements.display()
        );
    }
    let device = HostSimDevice::connect(client).await?;
    Ok(Arc::new(GuestPlatform::new(device, RUNTIME_LOG)))
}
