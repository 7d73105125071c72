//! `hush-load`: drives a Hush relay on loopback (see the library's documentation for the modes).
//! `hush-load ceiling-server …` is the ceiling server it starts as a child process.

use std::ffi::OsString;
use std::process::ExitCode;

use clap::Parser;
use hush_load::ceiling::{self, ServerOptions};
use hush_load::{Options, compare, run};

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == ceiling::SUBCOMMAND) {
        return ceiling_server(&ServerOptions::parse_from(args.into_iter().skip(1)));
    }
    let opts = Options::parse_from(args);
    // Diagnostics of the QUIC stack on demand (e.g. HUSH_LOAD_LOG=quinn_proto=debug), to stderr.
    if let Ok(filter) = std::env::var("HUSH_LOAD_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_ansi(false)
            .with_writer(std::io::stderr)
            .try_init();
    }
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
    let done = if opts.vs_ceiling {
        rt.block_on(compare(&opts)).map(|c| (c.to_string(), c.ok()))
    } else {
        rt.block_on(run(&opts)).map(|r| (r.to_string(), r.ok()))
    };
    match done {
        Ok((report, ok)) => {
            print!("{report}");
            if ok {
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

/// The ceiling server, on a runtime like the relay's (one worker per core).
fn ceiling_server(opts: &ServerOptions) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("hush-load ceiling-server: runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match rt.block_on(ceiling::serve(opts)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hush-load ceiling-server: {e}");
            ExitCode::FAILURE
        }
    }
}
