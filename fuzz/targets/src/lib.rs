//! The bodies of the Hush fuzz targets.
//!
//! Each target is a plain function from untrusted bytes to nothing. Its contract: it never panics
//! on any input, and where it runs a stateful operation that refuses the input, the state (every
//! store record) is what it was and the honest next message still decrypts. A broken contract is
//! reported by panicking, which libFuzzer (fuzz/, `cargo fuzz run <name>`) and the stable replay
//! test (`tests/replay.rs`, run by `cargo test`) both catch.
//!
//! [`TARGETS`] lists them with their seed generators; `fuzz/corpus/<name>/` holds the committed
//! seeds (regenerate with `cargo run -p hush-fuzz-targets --bin hush-fuzz-corpus -- fuzz/corpus`).

// A fuzz harness reports a broken contract by panicking, and the fixture is built from known-good
// inputs where a failure is a bug of the harness itself: unwrap, expect, panic and indexing are
// the point here, not a hazard.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

pub mod fixture;
pub mod frame;
pub mod mutate;
pub mod proto;
pub mod seeds;
pub mod session;
pub mod store;

/// One fuzz target.
pub struct Target {
    /// Its name: the cargo-fuzz binary and the corpus directory.
    pub name: &'static str,
    /// Its body.
    pub run: fn(&[u8]),
    /// A few valid inputs and edge cases.
    pub seeds: fn() -> Vec<Vec<u8>>,
}

/// Every target.
pub const TARGETS: &[Target] = &[
    Target {
        name: "proto_wire",
        run: proto::wire,
        seeds: seeds::proto_wire,
    },
    Target {
        name: "proto_store",
        run: proto::store,
        seeds: seeds::proto_store,
    },
    Target {
        name: "proto_relay",
        run: proto::relay,
        seeds: seeds::proto_relay,
    },
    Target {
        name: "proto_relay_api",
        run: proto::relay_api,
        seeds: seeds::proto_relay_api,
    },
    Target {
        name: "proto_client",
        run: proto::client,
        seeds: seeds::proto_client,
    },
    Target {
        name: "proto_app",
        run: proto::app,
        seeds: seeds::proto_app,
    },
    Target {
        name: "frame",
        run: frame::frames,
        seeds: seeds::frame,
    },
    Target {
        name: "session_decrypt",
        run: session::pairwise,
        seeds: seeds::session_decrypt,
    },
    Target {
        name: "group_decrypt",
        run: session::group,
        seeds: seeds::group_decrypt,
    },
    Target {
        name: "store_open",
        run: store::open,
        seeds: seeds::store_open,
    },
];

/// The target called `name`.
pub fn target(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}
