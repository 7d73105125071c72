//! `hush-relay`: parses settings and signals, then runs the relay (see `hush_relay::start`).

use std::process::ExitCode;

use hush_relay::config::{self, Command};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cmd = match config::parse_from(std::env::args_os()) {
        Ok(c) => c,
        Err(config::ConfigError::Usage(e)) => e.exit(),
        Err(e) => {
            eprintln!("hush-relay: {e}");
            return ExitCode::from(2);
        }
    };
    let filter = match &cmd {
        Command::Run(c) | Command::Fingerprint(c) => c.log.clone(),
        Command::Export { config, .. } | Command::Import { config, .. } => config.log.clone(),
    };
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, never into a log file or journal.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match run(cmd) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hush-relay: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cmd: Command) -> Result<(), Box<dyn std::error::Error>> {
    match cmd {
        Command::Run(cfg) => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let running = hush_relay::start(cfg).await?;
                println!("listening on {} (udp)", running.addr);
                if let Some(t) = running.tcp_addr {
                    println!("TLS over TCP on {t}");
                }
                if let Some(m) = running.metrics_addr {
                    println!("metrics on http://{m}/metrics, health on http://{m}/health");
                }
                println!(
                    "certificate fingerprint (pin this): {}",
                    running.fingerprint
                );
                let shutdown = running.shutdown.clone();
                tokio::spawn(async move {
                    wait_for_signal().await;
                    tracing::info!("signal received: draining");
                    shutdown.cancel();
                });
                running.wait().await;
                tracing::info!("stopped");
                Ok::<_, Box<dyn std::error::Error>>(())
            })
        }
        Command::Fingerprint(cfg) => {
            let id = hush_relay::tls::load_or_create(&cfg.data_dir, &cfg.cert_names)?;
            println!("{}", hush_relay::tls::fingerprint(&id.cert));
            Ok(())
        }
        Command::Export { config, out } => {
            let db = hush_relay::store::sled_store::open_db_with_cache(
                &config.data_dir.join("db"),
                config.sled_cache_bytes,
            )?;
            let blobs = config.data_dir.join(hush_relay::BLOBS_DIR);
            let stats = hush_relay::backup::export_with_blobs(&db, Some(&blobs), &out)?;
            println!("exported {stats:?} to {}", out.display());
            Ok(())
        }
        Command::Import { config, from } => {
            let db = hush_relay::store::sled_store::open_db_with_cache(
                &config.data_dir.join("db"),
                config.sled_cache_bytes,
            )?;
            let blobs = config.data_dir.join(hush_relay::BLOBS_DIR);
            let stats = hush_relay::backup::import_with_blobs(&from, &db, Some(&blobs))?;
            println!("imported {stats:?} from {}", from.display());
            Ok(())
        }
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
