//! dstack runtime events: the RTMR3 measurements made after boot (app id,
//! compose hash, key provider, app-defined events), their digest, and the
//! on-disk log `/run/log/dstack/runtime_events.log`.

use base64::Engine;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use serde::Deserialize;
use sha2::{Digest, Sha384};

use super::{DSTACK_RUNTIME_EVENT_TYPE, Event, EventLogError, RUNTIME_EVENT_IMR};
use crate::rtmr::Measurement;

/// Standard base64 as dstack writes it; missing padding is tolerated on input.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// One runtime event: a name and the bytes measured with it into RTMR3.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuntimeEvent {
    /// Event name, e.g. `compose-hash`.
    pub name: String,
    /// Raw payload.
    pub payload: Vec<u8>,
}

impl RuntimeEvent {
    /// The digest extended into RTMR3 (dstack event-log v1):
    /// `SHA384(type_le || ":" || name || ":" || payload)`.
    pub fn digest(&self) -> Measurement {
        runtime_digest(&self.name, &self.payload)
    }

    /// This event as it appears in an event log (RTMR3, digest filled in).
    pub fn to_event(&self) -> Event {
        Event {
            imr: RUNTIME_EVENT_IMR,
            event_type: DSTACK_RUNTIME_EVENT_TYPE,
            digest: self.digest().to_vec(),
            event: self.name.clone(),
            event_payload: self.payload.clone(),
        }
    }

    /// This event as one line of the runtime event log,
    /// `{"event":<name>,"payload":<base64>}`, without the trailing newline.
    pub fn to_log_line(&self) -> String {
        // A JSON string value's Display is its escaped form and cannot fail,
        // unlike serializing a struct.
        let name = serde_json::Value::String(self.name.clone());
        format!(
            r#"{{"event":{name},"payload":"{}"}}"#,
            BASE64.encode(&self.payload)
        )
    }
}

/// `SHA384(type_le || ":" || name || ":" || payload)`, dstack's v1 digest.
fn runtime_digest(name: &str, payload: &[u8]) -> Measurement {
    let mut hasher = Sha384::new();
    hasher.update(DSTACK_RUNTIME_EVENT_TYPE.to_le_bytes());
    hasher.update(b":");
    hasher.update(name.as_bytes());
    hasher.update(b":");
    hasher.update(payload);
    hasher.finalize().into()
}

/// The digest a runtime event must have, checked against the one it carries
/// (if any); `None` for other events. Shared by replay and
/// [`verify_runtime_digests`] so both bind the payload the same way.
pub(super) fn checked_runtime_digest(
    index: usize,
    event: &Event,
) -> Result<Option<Measurement>, EventLogError> {
    if !event.is_runtime() {
        return Ok(None);
    }
    let digest = runtime_digest(&event.event, &event.event_payload);
    if !event.digest.is_empty() && event.digest != digest {
        return Err(EventLogError::RuntimeDigestMismatch {
            index,
            name: event.event.clone(),
        });
    }
    Ok(Some(digest))
}

/// Checks that each runtime event (RTMR3, [`DSTACK_RUNTIME_EVENT_TYPE`])
/// carries the digest its name and payload give, so a changed payload is
/// caught even before replay. Empty digests, which dstack's `/GetQuote`
/// leaves blank for runtime events, are filled in.
pub fn verify_runtime_digests(events: &mut [Event]) -> Result<(), EventLogError> {
    for (index, event) in events.iter_mut().enumerate() {
        if let Some(digest) = checked_runtime_digest(index, event)? {
            event.digest = digest.to_vec();
        }
    }
    Ok(())
}

/// One line of the runtime event log.
#[derive(Deserialize)]
struct LogLine {
    event: String,
    payload: String,
    #[serde(default)]
    version: Option<u32>,
}

/// Parses the runtime event log: one JSON object per line,
/// `{"event":<name>,"payload":<base64>}`. Blank lines are skipped. Lines with
/// `"version"` other than 1 are refused, since their digest is computed
/// differently (dstack's event-log v2).
pub fn parse_runtime_log(text: &str) -> Result<Vec<RuntimeEvent>, EventLogError> {
    let mut events = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line_no = number.saturating_add(1);
        if line.trim().is_empty() {
            continue;
        }
        let parsed: LogLine =
            serde_json::from_str(line).map_err(|source| EventLogError::RuntimeLogLine {
                line: line_no,
                source,
            })?;
        if let Some(version) = parsed.version.filter(|&v| v != 1) {
            return Err(EventLogError::UnsupportedVersion {
                line: line_no,
                version,
            });
        }
        let payload = BASE64.decode(parsed.payload.as_bytes()).map_err(|source| {
            EventLogError::RuntimeLogPayload {
                line: line_no,
                source,
            }
        })?;
        events.push(RuntimeEvent {
            name: parsed.event,
            payload,
        });
    }
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app_id() -> RuntimeEvent {
        RuntimeEvent {
            name: "app-id".into(),
            payload: vec![0xde, 0xad, 0xbe, 0xef],
        }
    }

    #[test]
    fn digest_is_sha384_of_type_name_and_payload() {
        // Built byte by byte: 0x08000001 little-endian, then the separators.
        let mut preimage = vec![0x01, 0x00, 0x00, 0x08, b':'];
        preimage.extend_from_slice(b"app-id:");
        preimage.extend_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
        let expected: Measurement = Sha384::digest(&preimage).into();
        assert_eq!(app_id().digest(), expected);

        let empty = RuntimeEvent {
            name: "system-ready".into(),
            payload: Vec::new(),
        };
        let expected: Measurement = Sha384::digest(b"\x01\x00\x00\x08:system-ready:").into();
        assert_eq!(empty.digest(), expected);
    }

    #[test]
    fn to_event_targets_rtmr3_with_the_digest() {
        let event = app_id().to_event();
        assert_eq!(event.imr, 3);
        assert_eq!(event.event_type, 0x0800_0001);
        assert_eq!(event.digest, app_id().digest().to_vec());
        assert_eq!(event.event, "app-id");
        assert_eq!(event.event_payload, vec![0xde, 0xad, 0xbe, 0xef]);
        assert!(event.is_runtime());
    }

    #[test]
    fn log_lines_round_trip() {
        let quoted = RuntimeEvent {
            name: "say \"hi\"\n".into(),
            payload: vec![1, 2, 3],
        };
        assert_eq!(
            app_id().to_log_line(),
            r#"{"event":"app-id","payload":"3q2+7w=="}"#
        );
        assert_eq!(
            quoted.to_log_line(),
            r#"{"event":"say \"hi\"\n","payload":"AQID"}"#
        );
        let text = format!("{}\n\n{}\n", app_id().to_log_line(), quoted.to_log_line());
        assert_eq!(parse_runtime_log(&text).unwrap(), vec![app_id(), quoted]);
    }

    #[test]
    fn log_accepts_unpadded_base64_and_version_1() {
        let text = "{\"event\":\"a\",\"payload\":\"AQI\"}\n{\"event\":\"b\",\"payload\":\"\",\"version\":1}";
        let events = parse_runtime_log(text).unwrap();
        assert_eq!(events[0].payload, vec![1, 2]);
        assert_eq!(events[1].name, "b");
        assert!(events[1].payload.is_empty());
    }

    #[test]
    fn log_errors_name_the_line() {
        let good = app_id().to_log_line();
        let err = parse_runtime_log(&format!("{good}\nnot json")).unwrap_err();
        assert!(
            matches!(err, EventLogError::RuntimeLogLine { line: 2, .. }),
            "{err:?}"
        );
        let err = parse_runtime_log(r#"{"event":"a","payload":"!!"}"#).unwrap_err();
        assert!(
            matches!(err, EventLogError::RuntimeLogPayload { line: 1, .. }),
            "{err:?}"
        );
        let err = parse_runtime_log(r#"{"event":"a","payload":"","version":2}"#).unwrap_err();
        assert!(
            matches!(
                err,
                EventLogError::UnsupportedVersion {
                    line: 1,
                    version: 2
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn verify_fills_blank_digests_and_catches_tampering() {
        let boot = Event {
            imr: 0,
            event_type: 4,
            digest: vec![9; 48],
            event: String::new(),
            event_payload: vec![1],
        };
        let mut blank = app_id().to_event();
        blank.digest.clear();
        let mut events = vec![boot.clone(), blank, app_id().to_event()];
        verify_runtime_digests(&mut events).unwrap();
        assert_eq!(events[1], app_id().to_event());
        assert_eq!(events[0], boot, "boot events are left alone");

        let mut tampered = vec![boot, app_id().to_event()];
        tampered[1].event_payload[0] ^= 1;
        let err = verify_runtime_digests(&mut tampered).unwrap_err();
        assert!(
            matches!(&err, EventLogError::RuntimeDigestMismatch { index: 1, name } if name == "app-id"),
            "{err:?}"
        );

        let mut renamed = vec![app_id().to_event()];
        renamed[0].event = "compose-hash".into();
        assert!(verify_runtime_digests(&mut renamed).is_err());
    }
}
