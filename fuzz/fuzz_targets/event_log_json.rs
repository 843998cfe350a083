#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(mut events) = dstack_attest::eventlog::parse_event_log_json(text) {
            let _ = dstack_attest::eventlog::verify_runtime_digests(&mut events);
            let _ = dstack_attest::eventlog::replay(&events);
        }
        let _ = dstack_attest::eventlog::parse_runtime_log(text);
    }
});
