#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = dstack_attest::Quote::parse(data);
});
