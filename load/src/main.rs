//! `hush-load`: drives a Hush relay on loopback (see the library's documentation for the modes).

use std::process::ExitCode;

use clap::Parser;
use hush_load::{Options, run};

fn main() -> ExitCode {
    let opts = Options::parse();
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all();
    if opts.threads > 0 {
        rt.worker_threads(opts.threads);
    }
    let rt = match rt.build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("hush-load: runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match rt.block_on(run(&opts)) {
        Ok(report) => {
            print!("{report}");
            if report.ok() {
                ExitCode::SUCCESS
            } else {
                eprintln!("hush-load: the run had errors, refusals or losses (see above)");
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("hush-load: {e}");
            ExitCode::from(2)
        }
    }
}
