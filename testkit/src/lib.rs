//! What Hush's tests share, written once: a relay started in process on `127.0.0.1:0` with a
//! temporary store ([`relay`]), the relay binary run as a child process for crash and restart
//! tests ([`process`]), accounts whose device lists and pre-keys are signed as clients sign them
//! ([`account`]), a raw client of the relay protocol ([`client`]), the clock in-process
//! relays run on, which a test moves forward ([`clock`]), and the receiving end of WebPush
//! wake-ups ([`web_push`]).
//!
//! It never depends on client-core, so that the relay's own tests can use it.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::disallowed_methods
)]

pub mod account;
pub mod client;
pub mod clock;
pub mod process;
pub mod relay;
pub mod web_push;

use std::path::Path;
use std::time::Duration;

pub use account::{TestAccount, random, sign_auth, sign_username};
pub use client::{Client, error_of, test_transport};
pub use clock::OffsetClock;
pub use process::{RelayProcess, relay_binary};
pub use relay::{TestRelay, test_config};

/// How long a test waits for an answer or an event before it fails.
pub const WAIT: Duration = Duration::from_secs(20);

/// Whether `needle` occurs anywhere in the files under `dir`.
pub fn dir_contains(dir: &Path, needle: &[u8]) -> bool {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        if p.is_dir() {
            for e in std::fs::read_dir(&p).unwrap() {
                stack.push(e.unwrap().path());
            }
        } else if let Ok(bytes) = std::fs::read(&p)
            && bytes.windows(needle.len()).any(|w| w == needle)
        {
            return true;
        }
    }
    false
}
