//! The crypto benchmarks: Hush (`hush.rs`) and vodozemac, Matrix's Olm and Megolm (`peer.rs`), in
//! one binary and interleaved, so that each Hush figure and its vodozemac counterpart are measured
//! within seconds of each other, under the same machine load.
//!
//! `cargo bench -p hush-bench --bench crypto`, then `cargo run -p hush-bench --bin bench-report`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

use criterion::{criterion_group, criterion_main};

mod hush;
mod peer;

criterion_group!(
    benches,
    hush::session_setup,
    peer::session_setup,
    hush::ratchet,
    hush::sealed,
    peer::olm,
    hush::new_chain,
    peer::olm_new_chain,
    hush::skipped,
    peer::olm_skipped,
    peer::megolm,
    hush::device,
);
criterion_main!(benches);
