//! Secret hygiene: a full conversation between client engines over a real relay on loopback,
//! with every `tracing` event of the process (engines, client-core, relay, QUIC) captured at
//! TRACE level, must not show any key, token or plaintext it used — not in the logs, not in the
//! `Debug` output of the public types. The keys are read back from the engines' own stores after
//! the conversation (identity and account secrets, pre-key secrets, session root, chain,
//! ratchet and skipped keys, sender keys) and searched for raw, in hex and as a `Debug` byte list.
//!
//! (This lives in the CLI's crate because it is the one that links the client engine, the relay
//! and a `tracing` subscriber.)
#![cfg(test)]
#![allow(clippy::disallowed_methods)]

use std::fmt::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use hush_client::{Engine, EngineConfig, Event};
use hush_core::store::kv::{KvStore, Namespace};
use hush_proto::Message;
use hush_proto::store as pstore;
use hush_relay::config::{Config, StoreKind};
use hush_store_sled::SledKv;
use hush_testkit::random;
use tokio::sync::mpsc::UnboundedReceiver;
use tracing::field::{Field, Visit};
use tracing::level_filters::LevelFilter;
use tracing::subscriber::Interest;
use tracing::{Metadata, Subscriber, span};
use tracing_subscriber::util::SubscriberInitExt;
use zeroize::Zeroizing;

const WAIT: Duration = Duration::from_secs(30);

/// The process's log: every span's and event's level, target, name and fields, as text.
///
/// Events also arrive while a thread ends, from its thread-local destructors (sled's deferred
/// clean-up runs when a thread's epoch handle goes, and logs through `log`). Any thread-local
/// a subscriber used there may already be gone, and a panic in a thread-local destructor aborts
/// the process; so this one keeps no per-thread state (no span stack, no formatting buffer) and
/// never panics: each record is formatted on its own and appended under the lock.
#[derive(Clone, Default)]
struct Captured {
    text: Arc<Mutex<Vec<u8>>>,
    next_span: Arc<AtomicU64>,
}

impl Captured {
    fn contents(&self) -> Vec<u8> {
        self.text
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn append(&self, line: &str) {
        let mut text = self.text.lock().unwrap_or_else(PoisonError::into_inner);
        text.extend_from_slice(line.as_bytes());
        text.push(b'\n');
    }
}

/// Writes fields as `name=value`: strings as they are, everything else as the `fmt` layer
/// would (`Debug`, and `Display` for errors and `%` fields).
struct Fields<'a>(&'a mut String);

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        let _ = write!(self.0, " {}={value}", field.name());
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        let _ = write!(self.0, " {}={value}", field.name());
        let mut source = value.source();
        while let Some(s) = source {
            let _ = write!(self.0, ": {s}");
            source = s.source();
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let _ = write!(self.0, " {}={value:?}", field.name());
    }
}

impl Subscriber for Captured {
    fn register_callsite(&self, _: &'static Metadata<'static>) -> Interest {
        Interest::always()
    }
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(LevelFilter::TRACE)
    }
    fn new_span(&self, span: &span::Attributes<'_>) -> span::Id {
        let id = span::Id::from_u64(self.next_span.fetch_add(1, Ordering::Relaxed) + 1);
        let m = span.metadata();
        let mut line = format!("{} {}: span {}", m.level(), m.target(), m.name());
        span.record(&mut Fields(&mut line));
        self.append(&line);
        id
    }
    fn record(&self, id: &span::Id, values: &span::Record<'_>) {
        let mut line = format!("span {} recorded:", id.into_u64());
        values.record(&mut Fields(&mut line));
        self.append(&line);
    }
    fn record_follows_from(&self, _: &span::Id, _: &span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let m = event.metadata();
        let mut line = format!("{} {}:", m.level(), m.target());
        event.record(&mut Fields(&mut line));
        self.append(&line);
    }
    fn enter(&self, _: &span::Id) {}
    fn exit(&self, _: &span::Id) {}
}

fn relay_config(dir: &Path) -> Config {
    Config {
        metrics_listen: None,
        log: "trace".into(),
        ..hush_testkit::test_config(StoreKind::Sled, dir)
    }
}

async fn messages(engine: &Engine, rx: &mut UnboundedReceiver<Event>, n: usize) -> Vec<Event> {
    let mut got = Vec::new();
    while got.len() < n {
        let ev = tokio::time::timeout(WAIT, rx.recv())
            .await
            .expect("no message in time")
            .expect("engine gone");
        if let Event::Message { id, .. } = &ev {
            engine.ack(*id).unwrap();
            got.push(ev);
        }
    }
    got
}

/// The secrets in a profile's store, by what they are.
fn secrets_in(profile: &Path, key: &[u8; 32]) -> Vec<(String, Vec<u8>)> {
    let store = {
        let mut tries = 0;
        loop {
            // The engine's database may take a moment to release its lock after shutdown.
            match SledKv::open_labelled(
                &profile.join("db"),
                Zeroizing::new(*key),
                hush_client::engine::DB_STORE_LABEL,
                Box::new(rand_core::UnwrapErr(rand::rngs::SysRng)),
            ) {
                Ok(s) => break s,
                Err(e) => {
                    tries += 1;
                    assert!(tries < 500, "store does not open: {e}");
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
    };
    let mut out: Vec<(String, Vec<u8>)> = Vec::new();
    let mut add = |what: &str, b: &[u8]| {
        if !b.is_empty() {
            out.push((what.to_owned(), b.to_vec()));
        }
    };
    for (_, v) in store.scan(Namespace::Identity).unwrap() {
        if let Ok(k) = pstore::DeviceKeys::decode(v.as_slice()) {
            add("account secret", &k.account_secret);
            add("identity signing secret", &k.identity_signing_secret);
            add("identity DH secret", &k.identity_dh_secret);
        }
    }
    for (_, v) in store.scan(Namespace::SignedPreKeys).unwrap() {
        add(
            "signed pre-key secret",
            &pstore::SignedPreKeySecret::decode(v.as_slice())
                .unwrap()
                .secret,
        );
    }
    for (_, v) in store.scan(Namespace::OneTimePreKeys).unwrap() {
        add(
            "one-time pre-key secret",
            &pstore::OneTimePreKeySecret::decode(v.as_slice())
                .unwrap()
                .secret,
        );
    }
    for (_, v) in store.scan(Namespace::KemPreKeys).unwrap() {
        add(
            "ML-KEM seed",
            &pstore::KemPreKeySecret::decode(v.as_slice()).unwrap().seed,
        );
    }
    for (_, v) in store.scan(Namespace::Sessions).unwrap() {
        let r = pstore::SessionRecord::decode(v.as_slice()).unwrap();
        for s in r.current.iter().chain(&r.archived) {
            add("root key", &s.root_key);
            add("sending ratchet private key", &s.sending_ratchet_private);
            for c in s.sending_chain.iter().chain(&s.receiving_chain) {
                add("chain key", &c.chain_key);
            }
            for k in &s.skipped {
                add("skipped message key", &k.message_key);
            }
        }
    }
    for (_, v) in store.scan(Namespace::SenderKeys).unwrap() {
        let r = pstore::SenderKeyRecord::decode(v.as_slice()).unwrap();
        for s in &r.states {
            add("sender chain key", &s.chain_key);
            add("sender signing key", &s.signing_private);
            add("sender initial chain key", &s.initial_chain_key);
            for k in &s.skipped {
                add("sender skipped key", &k.message_key);
            }
        }
    }
    out
}

/// Whether `haystack` (the UTF-8 text of logs or `Debug` output) shows `secret` raw, in hex
/// (either case) or as a `Debug` byte list. Raw bytes can only appear in text if they are UTF-8.
fn shows(haystack: &str, secret: &[u8]) -> Option<&'static str> {
    // Long enough to be unmistakable, short enough to catch a truncated print.
    let part = &secret[..secret.len().min(16)];
    if let Ok(raw) = std::str::from_utf8(part)
        && part.len() >= 8
        && haystack.contains(raw)
    {
        return Some("raw");
    }
    if haystack.contains(&hex::encode(part)) || haystack.contains(&hex::encode_upper(part)) {
        return Some("hex");
    }
    let list = format!("{:?}", &part[..part.len().min(8)]);
    if part.len() >= 8 && haystack.contains(list.trim_end_matches(']')) {
        return Some("Debug list");
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_conversation_logs_and_debug_prints_no_key_token_or_plaintext() {
    let logs = Captured::default();
    // Also takes the `log` records (rustls, sled) as events.
    logs.clone().init();

    let started = std::time::Instant::now();
    let relay_dir = tempfile::tempdir().unwrap();
    let relay = hush_relay::start(relay_config(relay_dir.path()))
        .await
        .unwrap();
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let keys: Vec<[u8; 32]> = (0..3).map(|_| random()).collect();
    let cfg = |i: usize| EngineConfig {
        profile: dirs[i].path().to_path_buf(),
        at_rest_key: Zeroizing::new(keys[i]),
        relay: relay.addr,
        pin: relay.fingerprint.clone(),
    };
    let mut debug = String::new();
    debug += &format!("{:?}", cfg(0).relay);
    let (alice, mut a_rx) = Engine::create_account(cfg(0)).await.unwrap();
    let (bob, mut b_rx) = Engine::create_account(cfg(1)).await.unwrap();
    let (carol, mut c_rx) = Engine::create_account(cfg(2)).await.unwrap();
    for e in [&alice, &bob, &carol] {
        e.connected(WAIT).await.unwrap();
    }
    let ids: Vec<_> = [&alice, &bob, &carol]
        .iter()
        .map(|e| e.address().unwrap().account)
        .collect();

    // Pairwise both ways, a group of three, an ephemeral message.
    let text = |who: &str, i: u32| format!("confidential {who} plaintext number {i:04}");
    let mut plaintexts = Vec::new();
    for i in 0..10 {
        alice
            .send(&ids[1], text("a2b", i).as_bytes())
            .await
            .unwrap();
        plaintexts.push(text("a2b", i));
    }
    for ev in messages(&bob, &mut b_rx, 10).await {
        debug += &format!("{ev:?}");
    }
    bob.send(&ids[0], text("b2a", 0).as_bytes()).await.unwrap();
    plaintexts.push(text("b2a", 0));
    for ev in messages(&alice, &mut a_rx, 1).await {
        debug += &format!("{ev:?}");
    }
    let g = alice
        .create_group("hygiene-group-name", &[ids[1], ids[2]])
        .await
        .unwrap();
    for i in 0..5 {
        alice
            .send_group(&g, text("group", i).as_bytes())
            .await
            .unwrap();
        plaintexts.push(text("group", i));
    }
    for ev in messages(&bob, &mut b_rx, 5).await {
        debug += &format!("{ev:?}");
    }
    for ev in messages(&carol, &mut c_rx, 5).await {
        debug += &format!("{ev:?}");
    }
    carol
        .send_group(&g, text("carol-group", 0).as_bytes())
        .await
        .unwrap();
    plaintexts.push(text("carol-group", 0));
    for ev in messages(&alice, &mut a_rx, 1).await {
        debug += &format!("{ev:?}");
    }
    for ev in messages(&bob, &mut b_rx, 1).await {
        debug += &format!("{ev:?}");
    }
    bob.send_ephemeral(&ids[0], text("typing", 0).as_bytes())
        .await
        .unwrap();
    plaintexts.push(text("typing", 0));
    for ev in messages(&alice, &mut a_rx, 1).await {
        debug += &format!("{ev:?}");
    }
    debug += &format!("{:?}", alice.address().unwrap());
    debug += &format!("{:?}", g);
    for e in [alice, bob, carol] {
        e.shutdown().await;
    }
    relay.stop().await;

    let logs = String::from_utf8(logs.contents()).unwrap();
    assert!(
        logs.len() > 10_000 && logs.contains("TRACE"),
        "the capture saw almost nothing ({} bytes)",
        logs.len()
    );
    println!("conversation done after {:?}", started.elapsed());
    let mut secrets: Vec<(String, Vec<u8>)> = Vec::new();
    for (i, d) in dirs.iter().enumerate() {
        secrets.push(("at-rest key".into(), keys[i].to_vec()));
        secrets.extend(secrets_in(d.path(), &keys[i]));
    }
    for p in &plaintexts {
        secrets.push(("plaintext".into(), p.as_bytes().to_vec()));
    }
    let kinds: std::collections::BTreeSet<&str> = secrets.iter().map(|(w, _)| w.as_str()).collect();
    for must in [
        "identity signing secret",
        "identity DH secret",
        "account secret",
        "root key",
        "chain key",
        "sender chain key",
        "sender signing key",
        "signed pre-key secret",
        "one-time pre-key secret",
        "ML-KEM seed",
    ] {
        assert!(kinds.contains(must), "no {must} found to search for");
    }
    // The search itself finds each form.
    let probe = random::<32>();
    for (text, how) in [
        (format!("k={}", hex::encode(probe)), "hex"),
        (format!("k={}", hex::encode_upper(&probe[..16])), "hex"),
        (format!("k={probe:?}"), "Debug list"),
    ] {
        assert_eq!(shows(&text, &probe), Some(how), "{text}");
    }
    for (what, s) in &secrets {
        if let Some(how) = shows(&logs, s) {
            panic!("the logs show a {what} ({how})");
        }
        if let Some(how) = shows(&debug, s) {
            panic!("Debug output shows a {what} ({how})");
        }
    }
    // Plaintext fragments too ("confidential" is in every one).
    assert!(!logs.contains("confidential"));
    assert!(!debug.contains("confidential"));
    println!(
        "searched {} bytes of logs and {} of Debug output for {} secrets; {:?} in all",
        logs.len(),
        debug.len(),
        secrets.len(),
        started.elapsed()
    );
}
