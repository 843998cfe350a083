#![no_main]
use dstack_attest::eventlog::{EventLogError, parse_ccel, replay};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(events) = parse_ccel(data) {
        // Parsed events name RTMR0-3 with 48-byte digests, so replay can only
        // object to a record posing as a dstack runtime event.
        if let Err(e) = replay(&events) {
            assert!(
                matches!(e, EventLogError::RuntimeDigestMismatch { .. }),
                "{e}"
            );
        }
    }
});
