#![no_main]
//! cargo-fuzz entry point of the `group_decrypt` target; the body is `hush_fuzz_targets`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    (hush_fuzz_targets::target("group_decrypt").unwrap().run)(data);
});
