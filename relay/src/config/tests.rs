use super::settings::Setting;
use super::*;
use std::collections::HashMap;

fn no_env(_: &str) -> Option<String> {
    None
}

fn run(args: &[&str], env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
    let argv = std::iter::once("hush-relay").chain(args.iter().copied());
    match parse_from_env(argv, env)? {
        Command::Run(c) => Ok(c),
        other => panic!("expected run, got {other:?}"),
    }
}

fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
    let m: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |k| m.get(k).cloned()
}

fn file(text: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relay.toml");
    std::fs::write(&path, text).unwrap();
    let p = path.to_str().unwrap().to_string();
    (dir, p)
}

#[test]
fn defaults() {
    let c = run(&[], &no_env).unwrap();
    assert_eq!(c, Config::default());
    assert_eq!(c.data_dir, PathBuf::from("./hush-data"));
    assert_eq!(c.listen, "[::]:4433".parse().unwrap());
    assert_eq!(c.metrics_listen, Some("127.0.0.1:9464".parse().unwrap()));
    assert_eq!(c.store, StoreKind::Sled);
    assert_eq!(c.cert_names, vec!["localhost".to_string()]);
    assert_eq!(c.max_connections, 10_000);
    assert_eq!(c.max_connections_per_block, 1024);
    assert_eq!(c.max_connections_per_account, 32);
    assert_eq!(c.block_prefix_v4, 24);
    assert_eq!(c.block_prefix_v6, 48);
    assert_eq!(c.max_pending_links, 10_000);
    assert_eq!(c.max_pending_links_per_block, 16);
    assert_eq!(c.frame_read_timeout_ms, 10_000);
    assert_eq!(c.frame_read_min_bytes_per_sec, 16_384);
    assert_eq!(c.idle_timeout_ms, 60_000);
    assert_eq!(c.max_frame_bytes, 1 << 20);
    assert_eq!(c.max_envelope_bytes, 64 << 10);
    assert_eq!(c.max_envelopes_per_send, 1200);
    assert_eq!(c.max_devices_per_account, 16);
    assert_eq!(c.mailbox_ttl_ms, 2_592_000_000);
    assert_eq!(c.max_queue_len, 10_000);
    assert_eq!(c.max_queue_bytes, 128 << 20);
    assert_eq!(c.max_queue_len_per_sender, 1000);
    assert_eq!(c.max_queue_bytes_per_sender, 16 << 20);
    assert_eq!(c.max_account_mailbox_bytes, 512 << 20);
    assert_eq!(c.max_mailbox_bytes, 16 << 30);
    assert_eq!(c.rate.one_time_keys_per_target, RateLimit::new(0.05, 30));
    assert_eq!(c.rate.one_time_keys_per_pair, RateLimit::new(0.001, 3));
    assert_eq!(c.rate.one_time_keys_per_requester, RateLimit::new(1.0, 200));
    assert_eq!(c.sweep_interval_ms, 60_000);
    assert_eq!(c.flush_batch_max, 1024);
    assert_eq!(c.blob_max_bytes, 100 << 20);
    assert_eq!(c.blob_ttl_ms, 2_592_000_000);
    assert_eq!(c.rate.sends, RateLimit::new(200.0, 400));
    assert_eq!(c.rate.prekey_fetches, RateLimit::new(20.0, 100));
    assert_eq!(c.rate.account_creations, RateLimit::new(1.0, 10));
    assert_eq!(c.rate.uploads, RateLimit::new(10.0, 20));
    assert_eq!(c.rate.blob_uploads, RateLimit::new(2.0, 10));
    assert_eq!(c.rate.blob_downloads, RateLimit::new(10.0, 100));
    assert_eq!(c.rate.account_blob_downloads, RateLimit::new(20.0, 200));
    assert_eq!(c.rate.account_blob_download_mib, RateLimit::new(10.0, 2048));
    assert_eq!(c.blob_account_max_bytes, 2 << 30);
    assert_eq!(c.blob_total_max_bytes, 100 << 30);
    assert_eq!(c.blob_request_timeout_ms, 10_000);
    assert_eq!(c.blob_chunk_timeout_ms, 30_000);
    assert_eq!(c.sled_cache_bytes, 64 << 20);
    assert_eq!(c.retry_under_load_connections, 2000);
    assert!(!c.push.allow_plain_http);
    assert_eq!(c.push.timeout_ms, 10_000);
    assert_eq!(c.log, "info");
    c.validate().unwrap();
}

#[test]
fn file_then_env_then_flag() {
    let (_d, path) = file(
        r#"
        data_dir = "/from/file"
        listen = "127.0.0.1:1111"
        max_queue_len = 5
        idle_timeout_ms = 7
        cert_names = ["a.test", "b.test"]
        metrics_listen = "off"

        [rate.sends]
        burst = 800

        [rate.uploads]
        per_second = 0.5
        burst = 3

        [rate.one_time_keys_per_pair]
        burst = 5

        [push]
        timeout_ms = 1234
        "#,
    );
    // File only.
    let c = run(&["--config", &path], &no_env).unwrap();
    assert_eq!(c.data_dir, PathBuf::from("/from/file"));
    assert_eq!(c.listen, "127.0.0.1:1111".parse().unwrap());
    assert_eq!(c.max_queue_len, 5);
    assert_eq!(c.cert_names, vec!["a.test".to_string(), "b.test".into()]);
    assert_eq!(c.metrics_listen, None);
    assert_eq!(c.rate.sends, RateLimit::new(200.0, 800), "burst only");
    assert_eq!(c.rate.uploads, RateLimit::new(0.5, 3));
    assert_eq!(c.rate.one_time_keys_per_pair, RateLimit::new(0.001, 5));
    assert_eq!(c.push.timeout_ms, 1234);

    // The environment beats the file, and can name the file.
    let env = env_of(&[
        ("HUSH_RELAY_CONFIG", &path),
        ("HUSH_RELAY_DATA_DIR", "/from/env"),
        ("HUSH_RELAY_MAX_QUEUE_LEN", "6"),
        ("HUSH_RELAY_RATE_SENDS", "1/2"),
        ("HUSH_RELAY_LISTEN", ""),
    ]);
    let c = run(&[], &env).unwrap();
    assert_eq!(c.data_dir, PathBuf::from("/from/env"));
    assert_eq!(c.max_queue_len, 6);
    assert_eq!(c.rate.sends, RateLimit::new(1.0, 2));
    assert_eq!(c.idle_timeout_ms, 7, "still from the file");
    assert_eq!(
        c.listen,
        "127.0.0.1:1111".parse().unwrap(),
        "empty env is unset"
    );

    // Flags beat both, also after the subcommand.
    let argv = [
        "hush-relay",
        "export",
        "--out",
        "/tmp/x.bk",
        "--data-dir",
        "/from/flag",
        "--rate-sends=3/4",
    ];
    match parse_from_env(argv, &env).unwrap() {
        Command::Export { config, out } => {
            assert_eq!(out, PathBuf::from("/tmp/x.bk"));
            assert_eq!(config.data_dir, PathBuf::from("/from/flag"));
            assert_eq!(config.rate.sends, RateLimit::new(3.0, 4));
            assert_eq!(config.max_queue_len, 6);
        }
        other => panic!("{other:?}"),
    }
    let c = run(
        &[
            "--max-queue-len",
            "9",
            "--metrics-listen",
            "[::1]:9000",
            "run",
        ],
        &env,
    )
    .unwrap();
    assert_eq!(c.max_queue_len, 9);
    assert_eq!(c.metrics_listen, Some("[::1]:9000".parse().unwrap()));
    // --config beats HUSH_RELAY_CONFIG.
    let (_d2, other) = file("max_queue_len = 77\n");
    let c = run(
        &["--config", &other],
        &env_of(&[("HUSH_RELAY_CONFIG", &path)]),
    )
    .unwrap();
    assert_eq!(c.max_queue_len, 77);
    assert_eq!(c.data_dir, Config::default().data_dir);
}

#[test]
fn subcommands() {
    let p = |args: &[&str]| {
        parse_from_env(
            std::iter::once("hush-relay").chain(args.iter().copied()),
            &no_env,
        )
        .unwrap()
    };
    assert_eq!(p(&["run"]), Command::Run(Config::default()));
    assert_eq!(p(&[]), Command::Run(Config::default()));
    assert_eq!(p(&["fingerprint"]), Command::Fingerprint(Config::default()));
    assert_eq!(
        p(&["import", "--from", "b.bk"]),
        Command::Import {
            config: Config::default(),
            from: "b.bk".into()
        }
    );
    assert!(matches!(
        parse_from_env(["hush-relay", "export"], &no_env),
        Err(ConfigError::Usage(_))
    ));
    assert!(matches!(
        parse_from_env(["hush-relay", "serve"], &no_env),
        Err(ConfigError::Usage(_))
    ));
    let c = run(&["--push-allow-plain-http"], &no_env).unwrap();
    assert!(c.push.allow_plain_http);
    let c = run(
        &["--push-allow-plain-http=false"],
        &env_of(&[("HUSH_RELAY_PUSH_ALLOW_PLAIN_HTTP", "true")]),
    )
    .unwrap();
    assert!(!c.push.allow_plain_http);
}

#[test]
fn unknown_keys_are_errors_naming_the_key() {
    for (text, key) in [
        ("max_conections = 5\n", "max_conections"),
        ("[rate.sends]\nper_second = 1\nbrust = 2\n", "brust"),
        ("[rate.sendz]\nburst = 2\n", "sendz"),
        ("[push]\ntimeout = 2\n", "timeout"),
    ] {
        let (_d, path) = file(text);
        match run(&["--config", &path], &no_env) {
            Err(e @ ConfigError::FileKey { .. }) => {
                let message = e.to_string();
                assert!(message.contains(key), "{message}");
                assert!(message.contains("relay.toml"), "{message}");
            }
            other => panic!("{text}: {other:?}"),
        }
    }
}

#[test]
fn bad_values_are_errors() {
    let bad_file = [
        "listen = \"nowhere\"\n",
        "max_connections = -1\n",
        "max_connections = \"many\"\n",
        "store = \"postgres\"\n",
        "[rate.sends]\nburst = 1.5\n",
        "this is not toml",
    ];
    for text in bad_file {
        let (_d, path) = file(text);
        assert!(
            matches!(
                run(&["--config", &path], &no_env),
                Err(ConfigError::File { .. } | ConfigError::FileKey { .. })
            ),
            "{text}"
        );
    }
    let (_d, path) = file("max_connections = -1\n");
    match run(&["--config", &path], &no_env) {
        Err(ConfigError::FileKey { key, reason, .. }) => {
            assert_eq!(key, "max_connections");
            assert!(reason.contains("-1"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        run(&["--config", "/nonexistent/relay.toml"], &no_env),
        Err(ConfigError::ReadFile { .. })
    ));
    for (args, origin) in [
        (&["--listen", "4433"][..], "--listen"),
        (&["--max-queue-len=-3"][..], "--max-queue-len"),
        (&["--store", "disk"][..], "--store"),
        (
            &["--push-allow-plain-http=maybe"][..],
            "--push-allow-plain-http",
        ),
        (&["--metrics-listen", "on"][..], "--metrics-listen"),
    ] {
        match run(args, &no_env) {
            Err(ConfigError::Value { origin: o, .. }) => assert_eq!(o, origin),
            other => panic!("{args:?}: {other:?}"),
        }
    }
    match run(&[], &env_of(&[("HUSH_RELAY_MAX_CONNECTIONS", "lots")])) {
        Err(ConfigError::Value { origin, value, .. }) => {
            assert_eq!(origin, "HUSH_RELAY_MAX_CONNECTIONS");
            assert_eq!(value, "lots");
        }
        other => panic!("{other:?}"),
    }
    for (args, setting) in [
        (&["--max-frame-bytes", "0"][..], "max_frame_bytes"),
        (&["--blob-ttl-ms", "0"][..], "blob_ttl_ms"),
        (&["--max-connections", "0"][..], "max_connections"),
        (
            &["--max-connections-per-block", "0"][..],
            "max_connections_per_block",
        ),
        (&["--max-pending-links", "0"][..], "max_pending_links"),
        (&["--block-prefix-v4", "33"][..], "block_prefix_v4"),
        (&["--block-prefix-v6", "129"][..], "block_prefix_v6"),
        (
            &["--frame-read-min-bytes-per-sec", "0"][..],
            "frame_read_min_bytes_per_sec",
        ),
        (&["--max-mailbox-bytes", "0"][..], "max_mailbox_bytes"),
        (
            &["--rate-one-time-keys-per-pair", "0/3"][..],
            "rate_one_time_keys_per_pair",
        ),
        (&["--rate-uploads", "1/0"][..], "rate_uploads"),
        (&["--rate-sends", "0/5"][..], "rate_sends"),
        (&["--rate-sends", "NaN/5"][..], "rate_sends"),
        (&["--rate-sends", "inf/5"][..], "rate_sends"),
        (
            &["--max-envelope-bytes", "2000000"][..],
            "max_envelope_bytes",
        ),
        (&["--cert-names", " , "][..], "cert_names"),
        (&["--log", " "][..], "log"),
        (&["--push-timeout-ms", "0"][..], "push_timeout_ms"),
    ] {
        match run(args, &no_env) {
            Err(ConfigError::Invalid { setting: s, .. }) => assert_eq!(s, setting, "{args:?}"),
            other => panic!("{args:?}: {other:?}"),
        }
    }
    let (_d, path) = file("[rate.blob_uploads]\nburst = 0\n");
    assert!(matches!(
        run(&["--config", &path], &no_env),
        Err(ConfigError::Invalid {
            setting: "rate_blob_uploads",
            ..
        })
    ));
}

#[test]
fn rate_syntax() {
    assert_eq!("200/400".parse(), Ok(RateLimit::new(200.0, 400)));
    assert_eq!(" 0.5 / 10 ".parse(), Ok(RateLimit::new(0.5, 10)));
    assert_eq!("1_000/2_000".parse::<RateLimit>().unwrap().burst, 2000);
    for bad in ["200", "200/", "/400", "a/b", "1/2/3", "1/-2", "1/2.5", ""] {
        assert!(bad.parse::<RateLimit>().is_err(), "{bad}");
    }
    assert_eq!(RateLimit::new(200.0, 400).to_string(), "200/400");
    assert_eq!(RateLimit::new(0.5, 10).to_string(), "0.5/10");
    let c = run(&["--rate-account-creations", "0.1/3"], &no_env).unwrap();
    assert_eq!(c.rate.account_creations, RateLimit::new(0.1, 3));
}

#[test]
fn the_documented_example_file_parses() {
    let doc = include_str!("mod.rs");
    let start = doc.find("//! ```toml\n").unwrap() + "//! ```toml\n".len();
    let end = start + doc[start..].find("//! ```").unwrap();
    let text: String = doc[start..end]
        .lines()
        .map(|l| l.trim_start_matches("//!").trim_start())
        .collect::<Vec<_>>()
        .join("\n");
    let (_d, path) = file(&text);
    let c = run(&["--config", &path], &no_env).unwrap();
    assert_eq!(c.cert_names, vec!["relay.example.org".to_string()]);
    assert_eq!(c.push.timeout_ms, 5000);
}

#[test]
fn every_setting_has_a_documented_flag_and_variable() {
    let all = settings::all();
    let names: Vec<_> = all.iter().map(|s| s.name).collect();
    assert_eq!(names, SETTINGS, "SETTINGS lists the table");
    let cmd = command(&all);
    let args: Vec<_> = cmd
        .get_arguments()
        .filter(|a| a.get_long().is_some())
        .collect();
    let help = command(&all).render_long_help().to_string();
    let mut defaults = Config::default();
    for s in &all {
        let arg = args
            .iter()
            .find(|a| a.get_id() == s.name)
            .unwrap_or_else(|| panic!("no flag for {}", s.name));
        assert_eq!(format!("--{}", arg.get_long().unwrap()), s.flag());
        let line = arg.get_help().unwrap().to_string();
        assert!(!line.contains('\n'), "{}: one line", s.name);
        assert!(line.contains("[default: "), "{}: {line}", s.name);
        assert!(line.contains(&format!("[env: {}]", s.env())), "{line}");
        if s.name.ends_with("_ms") {
            assert!(line.contains("(ms)"), "{}: {line}", s.name);
        }
        if s.name.ends_with("_bytes") {
            assert!(line.contains("(bytes)"), "{}: {line}", s.name);
        }
        // `--help` lists it, with its variable.
        assert!(help.contains(&s.flag()), "{}", s.name);
        assert!(help.contains(&format!("[env: {}]", s.env())), "{}", s.name);
        // Its default, as shown, is accepted by the parser.
        let shown = s.shown_default();
        let shown = shown.split(' ').next().unwrap();
        s.field
            .set_text(&mut defaults, shown)
            .unwrap_or_else(|e| panic!("{}: {e}", s.name));
    }
    assert_eq!(defaults, Config::default(), "help shows the real defaults");
    // No flag without a setting (besides --config and the subcommands' own).
    for a in &args {
        let id = a.get_id().as_str();
        assert!(id == "config" || SETTINGS.contains(&id), "{id}");
    }
    assert!(help.contains("--rate-sends <RATE/BURST>"));
    assert!(help.contains("--max-queue-len <N>"));
    assert!(help.contains("--push-allow-plain-http[=<BOOL>]"));
    assert!(help.contains("fingerprint"));
    assert!(matches!(
        parse_from_env(["hush-relay", "--help"], &no_env),
        Err(ConfigError::Usage(e)) if e.kind() == clap::error::ErrorKind::DisplayHelp
    ));
}

/// docs/OPERATIONS.md holds the settings table and sample rendered from the table of settings.
/// `HUSH_UPDATE_DOCS=1 cargo test -p hush-relay config::tests` rewrites them.
#[test]
fn the_operations_guide_holds_the_generated_settings() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/OPERATIONS.md");
    let mut text = std::fs::read_to_string(&path).unwrap();
    let update = std::env::var_os("HUSH_UPDATE_DOCS").is_some_and(|v| v == "1");
    for section in doc::sections() {
        let start = text
            .find(section.begin)
            .unwrap_or_else(|| panic!("no {} in OPERATIONS.md", section.begin))
            + section.begin.len();
        let end = start
            + text[start..]
                .find(section.end)
                .unwrap_or_else(|| panic!("no {} in OPERATIONS.md", section.end));
        let want = format!("\n{}\n", section.content);
        if update {
            text.replace_range(start..end, &want);
        } else {
            assert!(
                text[start..end] == want,
                "OPERATIONS.md differs from the settings between {} and {}; \
                 run with HUSH_UPDATE_DOCS=1 to rewrite it. Expected:\n{want}",
                section.begin,
                section.end,
            );
        }
    }
    if update {
        std::fs::write(&path, text).unwrap();
    }
}

#[test]
fn the_sample_file_yields_exactly_the_defaults() {
    let sample = doc::sample();
    let (_d, path) = file(&sample);
    assert_eq!(
        run(&["--config", &path], &no_env).unwrap(),
        Config::default()
    );
    for s in settings::all() {
        assert!(sample.contains(&format!("# {}, {}\n", s.flag(), s.env())));
    }
    let table = doc::table();
    for s in settings::all() {
        assert!(table.contains(&format!(
            "| `{}` | `{}` / `{}` |",
            s.toml_key(),
            s.flag(),
            s.env()
        )));
    }
}

/// The settings file for one setting's value.
fn file_setting(s: &Setting, value: toml::Value) -> String {
    let mut doc = toml::Table::new();
    match s.table {
        None => {
            doc.insert(s.key.into(), value);
        }
        Some(t) => {
            let mut inner = toml::Table::new();
            inner.insert(s.key.into(), value);
            doc.insert(t.into(), toml::Value::Table(inner));
        }
    }
    toml::to_string(&doc).unwrap()
}

#[test]
fn each_setting_by_file_then_variable_then_flag() {
    let defaults = Config::default();
    for s in settings::all() {
        let default = s.field.text(&defaults);
        let (in_file, file_value) = s.field.variant(&defaults, 1);
        let (in_env, _) = s.field.variant(&defaults, 2);
        let (in_flag, _) = s.field.variant(&defaults, 3);
        assert_ne!(in_file, default, "{}", s.name);
        assert_ne!(in_env, in_file, "{}", s.name);
        assert_ne!(in_flag, in_env, "{}", s.name);

        let (_d, path) = file(&file_setting(&s, file_value));
        let c = run(&["--config", &path], &no_env).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.field.text(&c), in_file, "{}: from the file", s.name);
        let mut expected = defaults.clone();
        s.field.set_text(&mut expected, &in_file).unwrap();
        assert_eq!(c, expected, "{}: the file sets only it", s.name);

        let env = env_of(&[(&s.env(), &in_env)]);
        let c = run(&["--config", &path], &env).unwrap();
        assert_eq!(
            s.field.text(&c),
            in_env,
            "{}: the variable beats the file",
            s.name
        );

        let flag = format!("{}={in_flag}", s.flag());
        let c = run(&["--config", &path, &flag], &env).unwrap();
        assert_eq!(s.field.text(&c), in_flag, "{}: the flag beats both", s.name);
        match parse_from_env(["hush-relay", "fingerprint", &flag], &no_env).unwrap() {
            Command::Fingerprint(c) => assert_eq!(s.field.text(&c), in_flag, "{}", s.name),
            other => panic!("{other:?}"),
        }
    }
}
