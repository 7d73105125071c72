#![no_main]
//! cargo-fuzz entry point of the `session_decrypt` target; the body is `hush_fuzz_targets`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    (hush_fuzz_targets::target("session_decrypt").unwrap().run)(data);
});
