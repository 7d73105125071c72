//! `hush-vectors`: writes the Hush protocol test vectors (`*.json`) into a directory.
//!
//! ```text
//! cargo run -p hush-tests --bin hush-vectors -- tests/vectors
//! ```
//!
//! The output is deterministic: every vector is derived from the seed it records. The test
//! `vectors_regenerate_byte_identical` checks that the committed files are exactly what this writes.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let (Some(dir), None) = (args.next(), args.next()) else {
        eprintln!("usage: hush-vectors <output directory>   (e.g. tests/vectors)");
        return ExitCode::from(2);
    };
    match hush_tests::vectors::write_all(&PathBuf::from(dir)) {
        Ok(paths) => {
            for p in paths {
                println!("wrote {}", p.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("hush-vectors: {e}");
            ExitCode::FAILURE
        }
    }
}
