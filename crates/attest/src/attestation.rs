//! dstack's `VersionedAttestation` in its legacy V0 form: SCALE-encoded,
//! first byte `0x00` (`dstack-attest/src/attestation.rs` upstream). Every
//! upstream verifier reads V0 (V1 is msgpack and only newer ones read it),
//! so V0 is what `/Attest` and certificates' `.8` extension carry.
//!
//! Layout (SCALE: little-endian integers, compact-length-prefixed vectors):
//! `0x00` (V0) · `0x00` (DstackTdx) · quote: `Vec<u8>` · event_log:
//! `Vec<{imr: u32, event_type: u32, digest: Vec<u8>, event: String,
//! event_payload: Vec<u8>}>` · runtime_events: `Vec<{event: String,
//! payload: Vec<u8>}>` · report_data: `[u8; 64]` · config: `String`.

use crate::eventlog::is_acpi_data_event;
use crate::scale::{Reader, ScaleError, Writer};
use crate::{Event, RuntimeEvent};

/// A V0 attestation: a TDX quote with its event log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttestationV0 {
    /// The TDX quote.
    pub quote: Vec<u8>,
    /// The full event log (boot and runtime events).
    pub event_log: Vec<Event>,
    /// The runtime (RTMR3) events, by name and payload.
    pub runtime_events: Vec<RuntimeEvent>,
    /// The report_data the quote binds.
    pub report_data: [u8; 64],
    /// The VM config JSON string.
    pub config: String,
}

/// Why attestation bytes could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum AttestationDecodeError {
    /// The bytes end early.
    #[error("attestation truncated at byte {0}")]
    Truncated(usize),
    /// Not a V0 DstackTdx attestation.
    #[error("not a V0 TDX attestation (version byte {version:#04x}, quote kind {kind:#04x})")]
    UnsupportedKind {
        /// The first byte.
        version: u8,
        /// The second byte.
        kind: u8,
    },
    /// A string field is not UTF-8.
    #[error("attestation string at byte {0} is not UTF-8")]
    Utf8(usize),
    /// Bytes are left after the last field.
    #[error("{0} trailing bytes after the attestation")]
    Trailing(usize),
}

impl AttestationV0 {
    /// An attestation of `quote` with its full `event_log`; the runtime
    /// events are taken from the log.
    pub fn new(
        quote: Vec<u8>,
        event_log: Vec<Event>,
        report_data: [u8; 64],
        config: String,
    ) -> Self {
        let runtime_events = event_log
            .iter()
            .filter(|e| e.is_runtime())
            .map(|e| RuntimeEvent {
                name: e.event.clone(),
                payload: e.event_payload.clone(),
            })
            .collect();
        Self {
            quote,
            event_log,
            runtime_events,
            report_data,
            config,
        }
    }

    /// The SCALE bytes, as upstream's `VersionedAttestation::to_bytes`.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(self.quote.len() + 4096);
        w.u8(0); // VersionedAttestation::V0
        w.u8(0); // AttestationQuote::DstackTdx
        w.bytes(&self.quote);
        w.compact(self.event_log.len());
        for event in &self.event_log {
            w.u32(event.imr);
            w.u32(event.event_type);
            w.bytes(&event.digest);
            w.string(&event.event);
            w.bytes(&event.event_payload);
        }
        w.compact(self.runtime_events.len());
        for event in &self.runtime_events {
            w.string(&event.name);
            w.bytes(&event.payload);
        }
        w.raw(&self.report_data);
        w.string(&self.config);
        w.finish()
    }

    /// The form certificates carry (upstream's `into_stripped`): the RTMR3
    /// events with their digests blanked (verifiers recompute them), and the
    /// RTMR0 `ACPI DATA` events with their digests and marker payload (what
    /// upstream's verifier needs for its OS-image check on the TDX-lite path).
    pub fn stripped(&self) -> Self {
        Self {
            event_log: self
                .event_log
                .iter()
                .filter_map(|e| {
                    if e.imr == 3 {
                        Some(Event {
                            digest: Vec::new(),
                            ..e.clone()
                        })
                    } else if is_acpi_data_event(e) {
                        Some(e.clone())
                    } else {
                        None
                    }
                })
                .collect(),
            ..self.clone()
        }
    }

    /// Decodes [`AttestationV0::to_bytes`] output.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, AttestationDecodeError> {
        let mut r = Reader::new(bytes);
        let version = r.u8()?;
        let kind = r.u8()?;
        if version != 0 || kind != 0 {
            return Err(AttestationDecodeError::UnsupportedKind { version, kind });
        }
        let quote = r.bytes()?.to_vec();
        let n = r.compact()?;
        let mut event_log = Vec::new();
        for _ in 0..n {
            event_log.push(Event {
                imr: r.u32()?,
                event_type: r.u32()?,
                digest: r.bytes()?.to_vec(),
                event: r.string()?,
                event_payload: r.bytes()?.to_vec(),
            });
        }
        let n = r.compact()?;
        let mut runtime_events = Vec::new();
        for _ in 0..n {
            runtime_events.push(RuntimeEvent {
                name: r.string()?,
                payload: r.bytes()?.to_vec(),
            });
        }
        let mut report_data = [0u8; 64];
        report_data.copy_from_slice(r.take(64)?);
        let config = r.string()?;
        if !r.remaining().is_empty() {
            return Err(AttestationDecodeError::Trailing(r.remaining().len()));
        }
        Ok(Self {
            quote,
            event_log,
            runtime_events,
            report_data,
            config,
        })
    }
}

impl From<ScaleError> for AttestationDecodeError {
    fn from(e: ScaleError) -> Self {
        match e {
            ScaleError::Utf8(at) => Self::Utf8(at),
            // No bool or Option in a V0 attestation: a bad tag cannot occur.
            ScaleError::Truncated(at) | ScaleError::Tag(at) => Self::Truncated(at),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> AttestationV0 {
        let runtime = RuntimeEvent {
            name: "app-id".into(),
            payload: vec![7; 20],
        };
        AttestationV0 {
            quote: vec![0xab; 5000],
            event_log: vec![
                Event {
                    imr: 0,
                    event_type: 0x8000_0001,
                    digest: vec![1; 48],
                    event: String::new(),
                    event_payload: vec![2; 70],
                },
                runtime.to_event(),
            ],
            runtime_events: vec![runtime],
            report_data: [9; 64],
            config: "{\"os_image_hash\":\"\"}".into(),
        }
    }

    #[test]
    fn v0_round_trips_and_starts_with_zero() {
        let att = sample();
        let bytes = att.to_bytes();
        assert_eq!(&bytes[..2], &[0, 0]);
        // quote length 5000 as a two-byte compact: (5000 << 2) | 1.
        assert_eq!(&bytes[2..4], &((5000u16 << 2) | 1).to_le_bytes());
        assert_eq!(AttestationV0::from_bytes(&bytes).unwrap(), att);
        let stripped = att.stripped();
        assert_eq!(stripped.event_log.len(), 1);
        assert!(stripped.event_log[0].digest.is_empty());
        assert_eq!(
            AttestationV0::from_bytes(&stripped.to_bytes()).unwrap(),
            stripped
        );
    }

    #[test]
    fn stripping_keeps_runtime_and_acpi_data_events() {
        let mut att = sample();
        let acpi = Event {
            imr: 0,
            event_type: crate::eventlog::EV_PLATFORM_CONFIG_FLAGS,
            digest: vec![4; 48],
            event: "acpi-loader".into(),
            event_payload: b"ACPI DATA".to_vec(),
        };
        att.event_log.insert(1, acpi.clone());
        let stripped = att.stripped();
        assert_eq!(stripped.event_log.len(), 2);
        assert_eq!(stripped.event_log[0], acpi, "kept whole");
        assert_eq!(stripped.event_log[1].event, "app-id");
        assert!(stripped.event_log[1].digest.is_empty());
    }

    #[test]
    fn malformed_bytes_are_errors() {
        let bytes = sample().to_bytes();
        for cut in [0, 1, 2, 100, bytes.len() - 1] {
            assert!(AttestationV0::from_bytes(&bytes[..cut]).is_err(), "{cut}");
        }
        let mut extra = bytes.clone();
        extra.push(0);
        assert_eq!(
            AttestationV0::from_bytes(&extra).unwrap_err(),
            AttestationDecodeError::Trailing(1)
        );
        assert!(matches!(
            AttestationV0::from_bytes(&[0x80, 0]),
            Err(AttestationDecodeError::UnsupportedKind { .. })
        ));
    }
}
