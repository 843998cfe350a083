//! The attestation core of dstack-rs: TDX quote parsing and verification,
//! RTMR event logs and replay, and the TEE platform backends (TDX and the
//! simulated TEE).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod attestation;
pub mod collateral;
pub mod eventlog;
pub mod measures;
#[cfg(feature = "pccs")]
pub mod pccs;
pub mod platform;
pub mod quote;
pub mod rtmr;
pub mod scale;
pub mod sim;
pub mod verify;

#[cfg(test)]
mod testdata;

pub use attestation::{AttestationDecodeError, AttestationV0};
pub use collateral::{Collateral, CollateralError};
pub use eventlog::{Event, EventLogError, ReplayMismatch, RuntimeEvent};
pub use measures::Measures;
#[cfg(feature = "pccs")]
pub use pccs::{CollateralCache, PccsError};
pub use platform::{GuestPlatform, Platform, PlatformError, PlatformKind, RUNTIME_LOG, TeeDevice};
pub use quote::{Quote, QuoteParseError, Report, TdReport};
pub use rtmr::{Measurement, Rtmrs};
pub use sim::{SimAuthority, SimError, SimPlatform, SimTdIdentity};
pub use verify::{
    Policy, QuoteVerifier, TcbStatus, TeeKind, TrustAnchor, VerifiedQuote, VerifyError,
};
