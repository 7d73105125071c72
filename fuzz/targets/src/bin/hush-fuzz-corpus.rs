//! Writes the seed corpus of every fuzz target: `hush-fuzz-corpus DIR` creates `DIR/<target>/`
//! with one file per seed (named by the seed's index), replacing what was there.
#![allow(clippy::expect_used)] // a command-line tool: a failure ends it with the reason.

use std::path::PathBuf;

fn main() {
    let dir: PathBuf = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("fuzz/corpus"));
    for t in hush_fuzz_targets::TARGETS {
        let d = dir.join(t.name);
        if d.exists() {
            std::fs::remove_dir_all(&d).expect("remove the old corpus");
        }
        std::fs::create_dir_all(&d).expect("create the corpus directory");
        let seeds = (t.seeds)();
        for (i, s) in seeds.iter().enumerate() {
            std::fs::write(d.join(format!("seed-{i:03}")), s).expect("write a seed");
        }
        println!("{}: {} seeds", t.name, seeds.len());
    }
}
