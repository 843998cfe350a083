//! TDX event logs: the firmware's CCEL table (RTMR0-2), dstack's runtime
//! events (RTMR3), and replaying both into register values.
//!
//! Every [`Event`] a parser here returns is one that was extended into an RTMR,
//! so replaying the list accounts for every event a caller may look at.
//! Only the digest is measured: for boot events the name and payload are
//! informational, while for runtime events the digest is recomputed from the
//! name and payload (see [`verify_runtime_digests`]) so those are bound too.

mod ccel;
mod replay;
mod runtime;

use serde::{Deserialize, Serialize};

pub mod key_provider;
pub mod names;

pub use ccel::{
    EV_EFI_ACTION, EV_EFI_BOOT_SERVICES_APPLICATION, EV_EFI_HANDOFF_TABLES2,
    EV_EFI_PLATFORM_FIRMWARE_BLOB2, EV_EFI_VARIABLE_AUTHORITY, EV_EFI_VARIABLE_BOOT,
    EV_EFI_VARIABLE_DRIVER_CONFIG, EV_NO_ACTION, EV_PLATFORM_CONFIG_FLAGS, EV_SEPARATOR,
    TPM_ALG_SHA384, parse_ccel,
};
pub use replay::{ReplayMismatch, check_replay, check_runtime_replay, replay};
pub use runtime::{RuntimeEvent, parse_runtime_log, verify_runtime_digests};

/// Event type of dstack runtime events (not a TCG type; chosen by dstack).
pub const DSTACK_RUNTIME_EVENT_TYPE: u32 = 0x0800_0001;

/// The RTMR that dstack runtime events extend.
pub const RUNTIME_EVENT_IMR: u32 = 3;

/// The payload TDVF logs for each of its three RTMR0 ACPI measurements.
pub const ACPI_DATA_PAYLOAD: &[u8] = b"ACPI DATA";
/// The names dstack gives the three RTMR0 `ACPI DATA` events, in log order
/// (the payload is the same marker for all three).
pub const ACPI_DATA_EVENT_NAMES: [&str; 3] = ["acpi-loader", "acpi-rsdp", "acpi-tables"];

/// Whether `event` is one of TDVF's RTMR0 `ACPI DATA` measurements.
pub fn is_acpi_data_event(event: &Event) -> bool {
    event.imr == 0
        && event.event_type == EV_PLATFORM_CONFIG_FLAGS
        && event.event_payload == ACPI_DATA_PAYLOAD
}

/// Names the RTMR0 `ACPI DATA` events `acpi-loader`, `acpi-rsdp`,
/// `acpi-tables` in log order, as dstack labels them before serving a log.
pub fn label_acpi_data_events(events: &mut [Event]) {
    for (event, name) in events
        .iter_mut()
        .filter(|e| is_acpi_data_event(e))
        .zip(ACPI_DATA_EVENT_NAMES)
    {
        event.event = name.to_owned();
    }
}

/// One measured event, as dstack's `/GetQuote` and `tcb_info` JSON show it.
///
/// In JSON, `digest` and `event_payload` are lowercase hex without `0x`; a
/// `0x` prefix is accepted on input. `digest` may be missing or empty (dstack
/// blanks runtime-event digests in `/GetQuote`; see [`verify_runtime_digests`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "EventRepr")]
pub struct Event {
    /// RTMR index, 0-3 (the TCG/CC MR index minus one).
    pub imr: u32,
    /// TCG event type, or [`DSTACK_RUNTIME_EVENT_TYPE`].
    pub event_type: u32,
    /// SHA-384 digest extended into the register.
    #[serde(serialize_with = "hex_bytes::serialize")]
    pub digest: Vec<u8>,
    /// Event name: empty for firmware events, e.g. `app-id` for runtime events.
    pub event: String,
    /// Raw event data.
    #[serde(serialize_with = "hex_bytes::serialize")]
    pub event_payload: Vec<u8>,
}

impl Event {
    /// Whether this is a dstack runtime event, whose digest derives from its
    /// name and payload.
    pub fn is_runtime(&self) -> bool {
        self.imr == RUNTIME_EVENT_IMR && self.event_type == DSTACK_RUNTIME_EVENT_TYPE
    }
}

/// The accepted JSON input shape; a separate type so `version` (dstack HEAD's
/// event-log v2 marker) can be refused instead of silently ignored.
#[derive(Deserialize)]
struct EventRepr {
    imr: u32,
    event_type: u32,
    #[serde(default, deserialize_with = "hex_bytes::deserialize")]
    digest: Vec<u8>,
    event: String,
    #[serde(deserialize_with = "hex_bytes::deserialize")]
    event_payload: Vec<u8>,
    #[serde(default)]
    version: Option<u32>,
}

impl TryFrom<EventRepr> for Event {
    type Error = String;

    fn try_from(repr: EventRepr) -> Result<Self, String> {
        // A v2 runtime event's digest is over canonical JSON, not the v1
        // preimage; accepting it as v1 would only fail later, less clearly.
        if let Some(version) = repr.version.filter(|&v| v != 1) {
            return Err(format!(
                "event log version {version} is not supported (only 1)"
            ));
        }
        Ok(Self {
            imr: repr.imr,
            event_type: repr.event_type,
            digest: repr.digest,
            event: repr.event,
            event_payload: repr.event_payload,
        })
    }
}

/// Parses dstack's `event_log` JSON: an array of [`Event`].
pub fn parse_event_log_json(json: &str) -> Result<Vec<Event>, EventLogError> {
    serde_json::from_str(json).map_err(EventLogError::Json)
}

/// Why an event log could not be parsed, checked, or replayed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EventLogError {
    /// The CCEL ends in the middle of a record.
    #[error("CCEL truncated: {needed} bytes needed at offset {offset}")]
    Truncated {
        /// Where the short read started.
        offset: usize,
        /// How many bytes it needed.
        needed: usize,
    },
    /// The first record is not a TCG crypto-agile "Spec ID Event03" header.
    #[error("CCEL header is not a TCG crypto-agile Spec ID event: {reason}")]
    BadHeader {
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The header declares no SHA-384 digests, the only kind TDX RTMRs use.
    #[error("CCEL header declares no SHA-384 digests")]
    NoSha384Bank,
    /// A record uses a digest algorithm the header did not declare, so its
    /// size (and everything after it) is unknown.
    #[error("CCEL record at offset {offset} uses undeclared digest algorithm {algorithm:#06x}")]
    UnknownAlgorithm {
        /// Start of the record.
        offset: usize,
        /// The TPM_ALG_ID found.
        algorithm: u16,
    },
    /// A measured record carries no SHA-384 digest.
    #[error("CCEL record at offset {offset} has no SHA-384 digest")]
    MissingDigest {
        /// Start of the record.
        offset: usize,
    },
    /// A record carries two SHA-384 digests; which one was extended is ambiguous.
    #[error("CCEL record at offset {offset} has more than one SHA-384 digest")]
    DuplicateDigest {
        /// Start of the record.
        offset: usize,
    },
    /// A record targets a CC measurement register TDX does not have.
    #[error("CCEL record at offset {offset} targets MR index {mr_index}; TDX has 1-4 (RTMR0-3)")]
    UnsupportedRegister {
        /// Start of the record.
        offset: usize,
        /// The CC MR index found.
        mr_index: u32,
    },
    /// An event names an RTMR past RTMR3.
    #[error("event {index} targets RTMR{imr}; a TD has RTMR0-3")]
    RegisterOutOfRange {
        /// Position of the event in the log.
        index: usize,
        /// The `imr` it names.
        imr: u32,
    },
    /// An event's digest is not 48 bytes (SHA-384).
    #[error("event {index} has a {len}-byte digest; RTMR events need 48")]
    BadDigestLength {
        /// Position of the event in the log.
        index: usize,
        /// Length of its digest.
        len: usize,
    },
    /// A runtime event's digest differs from the one its name and payload give:
    /// the payload (or name) was changed after measurement.
    #[error(
        "runtime event {index} ({name:?}) has a digest that does not match its name and payload"
    )]
    RuntimeDigestMismatch {
        /// Position of the event in the log.
        index: usize,
        /// The event's name.
        name: String,
    },
    /// A runtime event log line is not the expected JSON object.
    #[error("runtime event log line {line} is malformed")]
    RuntimeLogLine {
        /// 1-based line number.
        line: usize,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
    /// A runtime event log line's payload is not base64.
    #[error("runtime event log line {line} has a payload that is not base64")]
    RuntimeLogPayload {
        /// 1-based line number.
        line: usize,
        /// The decoding error.
        #[source]
        source: base64::DecodeError,
    },
    /// A runtime event log line uses a digest version other than 1.
    #[error("runtime event log line {line} uses event log version {version}; only 1 is supported")]
    UnsupportedVersion {
        /// 1-based line number.
        line: usize,
        /// The version found.
        version: u32,
    },
    /// The event log JSON is malformed.
    #[error("event log JSON is malformed")]
    Json(#[source] serde_json::Error),
    /// The log replays to registers other than the ones the quote reports.
    #[error(transparent)]
    Mismatch(#[from] ReplayMismatch),
}

/// Serde helpers for bytes as lowercase hex, accepting a `0x` prefix on input.
mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub(super) fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&hex::encode(bytes))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(deserializer)?;
        let digits = text
            .strip_prefix("0x")
            .or_else(|| text.strip_prefix("0X"))
            .unwrap_or(&text);
        hex::decode(digits).map_err(D::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_event() -> Event {
        Event {
            imr: 3,
            event_type: DSTACK_RUNTIME_EVENT_TYPE,
            digest: vec![0xAB; 48],
            event: "app-id".into(),
            event_payload: vec![0xDE, 0xAD, 0xBE, 0xEF],
        }
    }

    #[test]
    fn event_json_uses_dstack_field_names_and_lowercase_hex() {
        let json = serde_json::to_string(&sample_event()).unwrap();
        let expected = format!(
            r#"{{"imr":3,"event_type":134217729,"digest":"{}","event":"app-id","event_payload":"deadbeef"}}"#,
            "ab".repeat(48)
        );
        assert_eq!(json, expected);
        let back: Event = serde_json::from_str(&json).unwrap();
        assert_eq!(back, sample_event());
    }

    #[test]
    fn event_json_accepts_0x_prefix_and_uppercase_hex() {
        let json = format!(
            r#"{{"imr":3,"event_type":134217729,"digest":"0x{}","event":"app-id","event_payload":"0XDEADBEEF"}}"#,
            "AB".repeat(48)
        );
        let event: Event = serde_json::from_str(&json).unwrap();
        assert_eq!(event, sample_event());
    }

    #[test]
    fn event_json_missing_digest_means_empty() {
        let json = r#"{"imr":3,"event_type":134217729,"event":"x","event_payload":""}"#;
        let event: Event = serde_json::from_str(json).unwrap();
        assert!(event.digest.is_empty());
        assert!(event.event_payload.is_empty());
        assert!(event.is_runtime());
    }

    #[test]
    fn event_json_rejects_bad_hex_and_v2_events() {
        let bad_hex = r#"[{"imr":0,"event_type":1,"digest":"zz","event":"","event_payload":""}]"#;
        assert!(matches!(
            parse_event_log_json(bad_hex),
            Err(EventLogError::Json(_))
        ));

        let v2 = r#"[{"imr":3,"event_type":134217729,"digest":"","event":"a","event_payload":"","version":2}]"#;
        let err = parse_event_log_json(v2).unwrap_err();
        let EventLogError::Json(source) = &err else {
            panic!("unexpected error {err:?}")
        };
        assert!(
            source.to_string().contains("version 2 is not supported"),
            "{source}"
        );

        // Explicit version 1 is what older dstack never writes but is harmless.
        let v1 = r#"[{"imr":3,"event_type":134217729,"digest":"","event":"a","event_payload":"","version":1}]"#;
        assert_eq!(parse_event_log_json(v1).unwrap().len(), 1);
    }

    #[test]
    fn parse_event_log_json_reads_an_array() {
        let events = vec![
            sample_event(),
            Event {
                imr: 0,
                event_type: 4,
                ..sample_event()
            },
        ];
        let json = serde_json::to_string(&events).unwrap();
        assert_eq!(parse_event_log_json(&json).unwrap(), events);
        assert!(matches!(
            parse_event_log_json("{}"),
            Err(EventLogError::Json(_))
        ));
    }
}
