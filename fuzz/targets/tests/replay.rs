//! Runs every fuzz target on stable, without libFuzzer: over its committed corpus
//! (`fuzz/corpus/<target>/`, including inputs that once crashed), its generated seeds, and a
//! bounded number of deterministic mutations of them plus random inputs. A target panics when
//! its contract breaks, which fails the test.
//!
//! Each target gets a fixed number of generated inputs (fewer for the ones that open a device per
//! input); `HUSH_FUZZ_ITERATIONS` replaces that number for every target (a longer local run).
#![cfg(test)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use hush_fuzz_targets::mutate::{Rng, mutate, random};
use hush_fuzz_targets::{TARGETS, Target};

fn corpus_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../corpus")
        .join(name)
}

fn committed(name: &str) -> Vec<Vec<u8>> {
    let dir = corpus_dir(name);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files.iter().map(|p| std::fs::read(p).unwrap()).collect()
}

fn iterations(default: usize) -> usize {
    std::env::var("HUSH_FUZZ_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Runs `input` through `t`, naming the input when the contract breaks.
fn run(t: &Target, what: &str, input: &[u8]) {
    let r = std::panic::catch_unwind(|| (t.run)(input));
    if r.is_err() {
        panic!(
            "{}: {what} broke the contract; input ({} bytes): {}",
            t.name,
            input.len(),
            hex(input)
        );
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn replay(t: &Target, n: usize) -> Duration {
    // The clock only reports how long the replay took; inputs do not depend on it.
    #[allow(clippy::disallowed_methods)]
    let start = std::time::Instant::now();
    let corpus = committed(t.name);
    assert!(
        !corpus.is_empty(),
        "{}: the committed corpus is empty",
        t.name
    );
    for (i, c) in corpus.iter().enumerate() {
        run(t, &format!("committed input {i}"), c);
    }
    let mut pool = corpus;
    pool.extend((t.seeds)());
    for (i, s) in pool.iter().enumerate() {
        run(t, &format!("seed {i}"), s);
    }
    let mut rng = Rng::new(
        t.name
            .bytes()
            .fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b))),
    );
    for i in 0..iterations(n) {
        let input = if i % 10 == 9 {
            random(&mut rng, 512)
        } else {
            let a = &pool[rng.below(pool.len())];
            let b = &pool[rng.below(pool.len())];
            mutate(&mut rng, a, b)
        };
        run(t, &format!("generated input {i}"), &input);
    }
    start.elapsed()
}

macro_rules! replay_tests {
    ($($test:ident => $name:literal, $n:literal),* $(,)?) => {
        $(
            #[test]
            fn $test() {
                let t = hush_fuzz_targets::target($name).unwrap();
                let took = replay(t, $n);
                eprintln!("{}: {:?}", t.name, took);
            }
        )*

        #[test]
        fn every_target_has_a_replay_test() {
            let mut named = vec![$($name),*];
            let mut all: Vec<&str> = TARGETS.iter().map(|t| t.name).collect();
            named.sort_unstable();
            all.sort_unstable();
            assert_eq!(named, all);
        }
    };
}

replay_tests!(
    proto_wire_never_panics_and_round_trips => "proto_wire", 5000,
    proto_store_never_panics_and_round_trips => "proto_store", 5000,
    proto_relay_never_panics_and_round_trips => "proto_relay", 5000,
    proto_relay_api_never_panics_and_round_trips => "proto_relay_api", 5000,
    proto_client_never_panics_and_round_trips => "proto_client", 5000,
    proto_app_never_panics_and_round_trips => "proto_app", 5000,
    frame_parser_never_panics_and_reads_what_was_written => "frame", 5000,
    session_decrypt_refuses_without_changing_state => "session_decrypt", 1000,
    group_decrypt_refuses_without_changing_state => "group_decrypt", 1000,
    store_open_never_panics_on_corrupt_records => "store_open", 1000,
);

#[test]
fn committed_corpus_covers_every_target() {
    for t in TARGETS {
        assert!(
            !committed(t.name).is_empty(),
            "fuzz/corpus/{} is missing",
            t.name
        );
    }
}
