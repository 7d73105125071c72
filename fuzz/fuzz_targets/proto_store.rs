#![no_main]
//! cargo-fuzz entry point of the `proto_store` target; the body is `hush_fuzz_targets`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    (hush_fuzz_targets::target("proto_store").unwrap().run)(data);
});
