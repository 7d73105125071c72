#![no_main]
//! cargo-fuzz entry point of the `proto_relay_api` target; the body is `hush_fuzz_targets`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    (hush_fuzz_targets::target("proto_relay_api").unwrap().run)(data);
});
