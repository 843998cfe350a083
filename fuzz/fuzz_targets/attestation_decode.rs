//! The `/Attest` and RA-TLS `.8` attestation decoder: whatever a peer puts
//! in a certificate must give a result or an error, never a panic, and what
//! decodes must encode back to the same bytes.
#![no_main]

use dstack_attest::AttestationV0;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(attestation) = AttestationV0::from_bytes(data) {
        let again = AttestationV0::from_bytes(&attestation.to_bytes())
            .expect("an encoded attestation decodes");
        assert_eq!(again.to_bytes(), attestation.to_bytes());
    }
});
