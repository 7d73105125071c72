//! `uniffi-bindgen`: the binding generator, built from the same uniffi version as `hush-ffi`.
//! See docs/MOBILE.md for the command that generates the Kotlin, Swift and Python bindings.

fn main() {
    uniffi::uniffi_bindgen_main();
}
