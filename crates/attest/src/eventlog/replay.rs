//! Replaying an event log into RTMR values and comparing them with a quote.

use super::runtime::checked_runtime_digest;
use super::{Event, EventLogError};
use crate::rtmr::{Measurement, Rtmrs};

/// The first register whose replayed value differs from the quoted one.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone, Copy)]
#[error(
    "RTMR{register} mismatch: quote has {}, event log replays to {}",
    hex::encode(expected),
    hex::encode(replayed)
)]
pub struct ReplayMismatch {
    /// RTMR index, 0-3.
    pub register: usize,
    /// The value the quote reports.
    pub expected: Measurement,
    /// The value the event log replays to.
    pub replayed: Measurement,
}

/// Folds the events' digests into RTMR0-3, starting from zero registers.
///
/// Runtime events are replayed with the digest recomputed from their name and
/// payload, so a blank digest (as `/GetQuote` serves them) is fine and a
/// changed payload changes RTMR3; a non-blank digest that disagrees is an
/// error. Other events must carry a 48-byte digest and name RTMR0-3.
pub fn replay(events: &[Event]) -> Result<Rtmrs, EventLogError> {
    let mut rtmrs = Rtmrs::default();
    for (index, event) in events.iter().enumerate() {
        let digest = match checked_runtime_digest(index, event)? {
            Some(digest) => digest,
            None => <Measurement>::try_from(event.digest.as_slice()).map_err(|_| {
                EventLogError::BadDigestLength {
                    index,
                    len: event.digest.len(),
                }
            })?,
        };
        let register = usize::try_from(event.imr).unwrap_or(usize::MAX);
        rtmrs
            .extend(register, &digest)
            .map_err(|_| EventLogError::RegisterOutOfRange {
                index,
                imr: event.imr,
            })?;
    }
    Ok(rtmrs)
}

/// Replays `events` and compares the result with the registers a quote
/// reports; on success returns the (equal) replayed values.
///
/// Errors are [`EventLogError::Mismatch`] naming the first register that
/// differs, or the [`replay`] error for a log that cannot be replayed.
pub fn check_replay(events: &[Event], expected: &Rtmrs) -> Result<Rtmrs, EventLogError> {
    let replayed = replay(events)?;
    let differing = (0..expected.0.len()).find(|&i| expected.0[i] != replayed.0[i]);
    match differing {
        None => Ok(replayed),
        Some(register) => Err(ReplayMismatch {
            register,
            expected: expected.0[register],
            replayed: replayed.0[register],
        }
        .into()),
    }
}

/// Replays only the RTMR3 (runtime) events and compares RTMR3 with the
/// quote: the check for a stripped log (a certificate's `.8`), which keeps
/// the runtime events but not the boot events that RTMR0-2 fold.
pub fn check_runtime_replay(events: &[Event], expected: &Rtmrs) -> Result<(), EventLogError> {
    let runtime: Vec<Event> = events
        .iter()
        .filter(|e| e.imr == RUNTIME_REGISTER)
        .cloned()
        .collect();
    let replayed = replay(&runtime)?;
    if replayed.0[RUNTIME_REGISTER_INDEX] == expected.0[RUNTIME_REGISTER_INDEX] {
        Ok(())
    } else {
        Err(ReplayMismatch {
            register: RUNTIME_REGISTER_INDEX,
            expected: expected.0[RUNTIME_REGISTER_INDEX],
            replayed: replayed.0[RUNTIME_REGISTER_INDEX],
        }
        .into())
    }
}

const RUNTIME_REGISTER: u32 = super::RUNTIME_EVENT_IMR;
const RUNTIME_REGISTER_INDEX: usize = 3;

#[cfg(test)]
mod tests {
    use sha2::{Digest, Sha384};

    use super::*;
    use crate::eventlog::{RuntimeEvent, parse_ccel, verify_runtime_digests};
    use crate::testdata::read_testdata;

    fn sample_events() -> Vec<Event> {
        parse_ccel(&read_testdata("ccel.bin")).unwrap()
    }

    /// Replay written out independently of `rtmr::extend` and `replay`.
    fn fold_by_hand(events: &[Event]) -> [[u8; 48]; 4] {
        let mut registers = [[0u8; 48]; 4];
        for event in events {
            let register = &mut registers[event.imr as usize];
            let mut input = register.to_vec();
            input.extend_from_slice(&event.digest);
            register.copy_from_slice(&Sha384::digest(&input));
        }
        registers
    }

    fn with_runtime_events(mut events: Vec<Event>) -> Vec<Event> {
        for (name, payload) in [
            ("system-preparing", &b""[..]),
            ("app-id", &[0x11; 20]),
            ("system-ready", b""),
        ] {
            let runtime = RuntimeEvent {
                name: name.into(),
                payload: payload.to_vec(),
            };
            events.push(runtime.to_event());
        }
        events
    }

    #[test]
    fn sample_replays_to_the_hand_folded_registers() {
        let events = sample_events();
        let rtmrs = replay(&events).unwrap();
        assert_eq!(rtmrs.0, fold_by_hand(&events));
        // The sample only has firmware events: RTMR0 and RTMR1 move, 2 and 3 don't.
        assert_ne!(rtmrs.0[0], [0; 48]);
        assert_ne!(rtmrs.0[1], [0; 48]);
        assert_eq!(rtmrs.0[2], [0; 48]);
        assert_eq!(rtmrs.0[3], [0; 48]);
        assert_eq!(check_replay(&events, &rtmrs).unwrap(), rtmrs);
    }

    #[test]
    fn a_changed_digest_is_reported_against_its_register() {
        let events = sample_events();
        let quoted = replay(&events).unwrap();
        for (index, register) in [(0, 0), (11, 1)] {
            let mut tampered = events.clone();
            assert_eq!(tampered[index].imr as usize, register);
            tampered[index].digest[7] ^= 0x01;
            let err = check_replay(&tampered, &quoted).unwrap_err();
            let EventLogError::Mismatch(mismatch) = err else {
                panic!("unexpected {err:?}")
            };
            assert_eq!(mismatch.register, register);
            assert_eq!(mismatch.expected, quoted.0[register]);
            assert_eq!(mismatch.replayed, fold_by_hand(&tampered)[register]);
        }
    }

    #[test]
    fn runtime_events_replay_into_rtmr3_even_with_blank_digests() {
        let events = with_runtime_events(sample_events());
        let quoted = Rtmrs(fold_by_hand(&events));
        assert_ne!(quoted.0[3], [0; 48]);
        assert_eq!(check_replay(&events, &quoted).unwrap(), quoted);

        // As /GetQuote serves them: runtime digests blanked.
        let mut blanked = events.clone();
        blanked
            .iter_mut()
            .filter(|e| e.is_runtime())
            .for_each(|e| e.digest.clear());
        assert_eq!(check_replay(&blanked, &quoted).unwrap(), quoted);
        verify_runtime_digests(&mut blanked).unwrap();
        assert_eq!(blanked, events);
    }

    #[test]
    fn a_tampered_runtime_payload_is_caught() {
        let events = with_runtime_events(sample_events());
        let quoted = replay(&events).unwrap();
        let app_id = events.iter().position(|e| e.event == "app-id").unwrap();

        let mut tampered = events.clone();
        tampered[app_id].event_payload[0] ^= 0xff;
        let err = verify_runtime_digests(&mut tampered.clone()).unwrap_err();
        assert!(
            matches!(err, EventLogError::RuntimeDigestMismatch { index, .. } if index == app_id)
        );
        assert!(matches!(
            check_replay(&tampered, &quoted),
            Err(EventLogError::RuntimeDigestMismatch { .. })
        ));

        // With the digest blanked too, the payload alone moves RTMR3.
        tampered[app_id].digest.clear();
        let err = check_replay(&tampered, &quoted).unwrap_err();
        assert!(
            matches!(
                err,
                EventLogError::Mismatch(ReplayMismatch { register: 3, .. })
            ),
            "{err:?}"
        );
    }

    #[test]
    fn unreplayable_events_are_errors() {
        let mut events = sample_events();
        events[2].imr = 4;
        assert!(matches!(
            replay(&events),
            Err(EventLogError::RegisterOutOfRange { index: 2, imr: 4 })
        ));
        let mut events = sample_events();
        events[5].digest.pop();
        assert!(matches!(
            replay(&events),
            Err(EventLogError::BadDigestLength { index: 5, len: 47 })
        ));
        assert_eq!(replay(&[]).unwrap(), Rtmrs::default());
    }

    #[test]
    fn mismatch_message_names_register_and_both_values() {
        let mismatch = ReplayMismatch {
            register: 2,
            expected: [0xaa; 48],
            replayed: [0x0b; 48],
        };
        assert_eq!(
            mismatch.to_string(),
            format!(
                "RTMR2 mismatch: quote has {}, event log replays to {}",
                "aa".repeat(48),
                "0b".repeat(48)
            )
        );
        assert_eq!(
            EventLogError::from(mismatch).to_string(),
            mismatch.to_string()
        );
    }
}
