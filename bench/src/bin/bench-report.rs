//! Prints the Hush / vodozemac comparison from criterion's results.
//!
//! Run after the benches:
//!
//! ```sh
//! cargo bench -p hush-bench -- --warm-up-time 1 --measurement-time 3
//! cargo run -p hush-bench --bin bench-report            # or: -- path/to/target/criterion
//! ```
//!
//! It reads `<criterion dir>/<bench id>/new/estimates.json` (the latest run of each bench) and
//! prints Markdown tables with criterion's median estimate per operation, Hush's time divided by
//! vodozemac's, and the speed-up (vodozemac's time divided by Hush's), then the targets.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// One compared operation: a label, Hush's bench id, vodozemac's bench id.
type Row = (&'static str, &'static str, &'static str);

const SETUP: &[Row] = &[
    (
        "initiator: PQXDH with ML-KEM-768 / Olm outbound",
        "hush_pqxdh/initiate",
        "vodozemac_olm_session/create_outbound",
    ),
    (
        "initiator incl. bundle verification (Hush) / Olm outbound",
        "hush_pqxdh/verify_bundle_and_initiate",
        "vodozemac_olm_session/create_outbound",
    ),
    (
        "responder incl. first decrypt / Olm inbound from pre-key message",
        "hush_pqxdh/respond",
        "vodozemac_olm_session/create_inbound",
    ),
];

const RATCHET: &[Row] = &[
    (
        "encrypt 256 B",
        "hush_ratchet/encrypt/256",
        "vodozemac_olm/encrypt/256",
    ),
    (
        "decrypt 256 B",
        "hush_ratchet/decrypt/256",
        "vodozemac_olm/decrypt/256",
    ),
    (
        "encrypt + decrypt 256 B",
        "hush_ratchet/round_trip/256",
        "vodozemac_olm/round_trip/256",
    ),
    (
        "encrypt 4 KiB",
        "hush_ratchet/encrypt/4096",
        "vodozemac_olm/encrypt/4096",
    ),
    (
        "decrypt 4 KiB",
        "hush_ratchet/decrypt/4096",
        "vodozemac_olm/decrypt/4096",
    ),
    (
        "encrypt + decrypt 4 KiB",
        "hush_ratchet/round_trip/4096",
        "vodozemac_olm/round_trip/4096",
    ),
    (
        "new chain: first encrypt (DH step)",
        "hush_new_chain_256/encrypt",
        "vodozemac_olm_new_chain_256/encrypt",
    ),
    (
        "new chain: first decrypt (DH step)",
        "hush_new_chain_256/decrypt",
        "vodozemac_olm_new_chain_256/decrypt",
    ),
    (
        "decrypt after 100 skipped",
        "hush_decrypt_after_skipping_256/100",
        "vodozemac_olm_decrypt_after_skipping_256/100",
    ),
    (
        "decrypt after 1000 skipped",
        "hush_decrypt_after_skipping_256/1000",
        "vodozemac_olm_decrypt_after_skipping_256/1000",
    ),
];

const GROUP: &[Row] = &[
    (
        "sender key / Megolm encrypt 256 B",
        "group_send_256B/sender_key/10",
        "vodozemac_megolm_256/encrypt",
    ),
    (
        "sender key / Megolm decrypt 256 B, in order",
        "sender_key_decrypt_256B/in_order",
        "vodozemac_megolm_256/decrypt_in_order",
    ),
    (
        "sender key / Megolm decrypt 256 B, 1000 ahead",
        "sender_key_decrypt_256B/after_skipping_1000",
        "vodozemac_megolm_256/decrypt_after_skipping_1000",
    ),
];

/// Hush-only figures: (label, bench id).
const HUSH_ONLY: &[(&str, &str)] = &[
    (
        "Device::encrypt 256 B, MemoryKv",
        "hush_device_memory/encrypt_256",
    ),
    (
        "Device::decrypt 256 B, MemoryKv",
        "hush_device_memory/decrypt_256",
    ),
    (
        "Device::encrypt 256 B, SledKv (encrypted, flushed commit)",
        "hush_device_sled/encrypt_256",
    ),
    (
        "Device::decrypt 256 B, SledKv (encrypted, flushed commit)",
        "hush_device_sled/decrypt_256",
    ),
    (
        "group send, 10 devices, pairwise fan-out",
        "group_send_256B/pairwise_fanout/10",
    ),
    (
        "group send, 100 devices, pairwise fan-out",
        "group_send_256B/pairwise_fanout/100",
    ),
    (
        "group send, 1000 devices, pairwise fan-out",
        "group_send_256B/pairwise_fanout/1000",
    ),
];

/// Criterion's median estimate for `id`, in nanoseconds.
fn median_ns(dir: &Path, id: &str) -> Option<f64> {
    let path = dir.join(id).join("new").join("estimates.json");
    let text = std::fs::read_to_string(path).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v.get("median")?.get("point_estimate")?.as_f64()
}

fn fmt_time(ns: Option<f64>) -> String {
    match ns {
        None => "—".to_owned(),
        Some(ns) if ns >= 1_000_000.0 => format!("{:.2} ms", ns / 1_000_000.0),
        Some(ns) if ns >= 100_000.0 => format!("{:.0} µs", ns / 1000.0),
        Some(ns) if ns >= 10_000.0 => format!("{:.1} µs", ns / 1000.0),
        Some(ns) => format!("{:.2} µs", ns / 1000.0),
    }
}

fn compare(dir: &Path, title: &str, rows: &[Row]) -> usize {
    println!("### {title}\n");
    println!("| operation | Hush | vodozemac | Hush / vodozemac | speed-up |");
    println!("|---|---|---|---|---|");
    let mut found = 0;
    for (label, hush, peer) in rows {
        let (h, p) = (median_ns(dir, hush), median_ns(dir, peer));
        found += usize::from(h.is_some()) + usize::from(p.is_some());
        let (ratio, speedup) = match (h, p) {
            (Some(h), Some(p)) if h > 0.0 && p > 0.0 => {
                (format!("{:.2}", h / p), format!("{:.1}×", p / h))
            }
            _ => ("—".to_owned(), "—".to_owned()),
        };
        println!(
            "| {label} | {} | {} | {ratio} | {speedup} |",
            fmt_time(h),
            fmt_time(p)
        );
    }
    println!();
    found
}

fn verdict(ok: Option<bool>) -> &'static str {
    match ok {
        Some(true) => "met",
        Some(false) => "NOT met",
        None => "not measured",
    }
}

fn main() -> ExitCode {
    let dir = std::env::args_os().nth(1).map_or_else(
        || PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target/criterion")),
        PathBuf::from,
    );
    println!(
        "Criterion results in {} (median estimates)\n",
        dir.display()
    );
    let mut found = compare(&dir, "Session setup", SETUP);
    found += compare(&dir, "Double Ratchet / Olm, existing chain", RATCHET);
    found += compare(&dir, "Sender keys / Megolm", GROUP);
    println!("### Hush only\n");
    println!("| operation | time |");
    println!("|---|---|");
    for (label, id) in HUSH_ONLY {
        let t = median_ns(&dir, id);
        found += usize::from(t.is_some());
        println!("| {label} | {} |", fmt_time(t));
    }
    println!();
    if found == 0 {
        eprintln!(
            "no criterion results under {}: run `cargo bench -p hush-bench` first",
            dir.display()
        );
        return ExitCode::FAILURE;
    }

    println!("### Targets\n");
    let speedup = |size: &str| {
        let h = median_ns(&dir, &format!("hush_ratchet/round_trip/{size}"))?;
        let p = median_ns(&dir, &format!("vodozemac_olm/round_trip/{size}"))?;
        Some(p / h)
    };
    for size in ["256", "4096"] {
        let s = speedup(size);
        println!(
            "- ratchet encrypt+decrypt ({size} B) ≥ 3× faster than Olm: {:.1}× — {}",
            s.unwrap_or(f64::NAN),
            verdict(s.map(|s| s >= 3.0))
        );
    }
    for id in [
        "hush_pqxdh/initiate",
        "hush_pqxdh/verify_bundle_and_initiate",
    ] {
        let t = median_ns(&dir, id);
        println!(
            "- initiator session setup with ML-KEM ≤ 300 µs ({id}): {} — {}",
            fmt_time(t),
            verdict(t.map(|t| t <= 300_000.0))
        );
    }
    ExitCode::SUCCESS
}
