//! The bindings end to end: generates the Kotlin, Swift and Python bindings from the built
//! library (library mode, in process), then runs tests/python/test_hush.py with Python and
//! tests/kotlin/TestHush.kt on a JVM, each against a real `hush-relay` process on 127.0.0.1:
//! two clients chat 1:1 and in a group with receipts and typing through their listeners, send
//! and fetch attachments, and bad input raises.
//!
//! The library and the relay binary are found in the target directory of this test binary
//! (`<target>/<profile>/deps/` holds this binary and `libhush_ffi.so`; the relay binary is in
//! `<target>/<profile>/`). `cargo test --workspace` builds the relay binary (the relay's own
//! tests need it); when it is missing or older than the relay's sources (`cargo test -p
//! hush-ffi` alone), this test builds it with cargo first.
//!
//! The Kotlin test needs a JDK, JNA and a Kotlin 2.x compiler: `scripts/kotlin-toolchain`
//! installs them and prints the variables that name them (`eval "$(bash
//! scripts/kotlin-toolchain)"`; `scripts/test` does this). Without them the test fails.
#![cfg(test)]
#![allow(clippy::disallowed_methods)]

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use hush_testkit::RelayProcess;
use uniffi::{GenerateOptions, TargetLanguage};

/// Longest the Python test may run.
const PYTHON_DEADLINE: Duration = Duration::from_secs(300);
/// Longest the Kotlin compiler may run on the bindings and the test.
const KOTLIN_COMPILE_DEADLINE: Duration = Duration::from_secs(300);
/// Longest the Kotlin test may run.
const KOTLIN_DEADLINE: Duration = Duration::from_secs(300);

/// `<target>/<profile>/deps`, where this test binary is.
fn deps_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    exe.parent().expect("test binary directory").to_path_buf()
}

fn cdylib() -> PathBuf {
    let name = format!(
        "{}hush_ffi{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    );
    let deps = deps_dir();
    [deps.join(&name), deps.parent().unwrap().join(&name)]
        .into_iter()
        .find(|p| p.exists())
        .unwrap_or_else(|| {
            panic!(
                "{name} is not in {} nor its parent: build it with `cargo build -p hush-ffi`",
                deps.display()
            )
        })
}

fn generate(lib: &Path, out: &Path, language: TargetLanguage) {
    uniffi::generate(GenerateOptions {
        languages: vec![language.clone()],
        source: lib.to_str().unwrap().into(),
        out_dir: out.to_str().unwrap().into(),
        config_override: None,
        format: false,
        crate_filter: None,
        metadata_no_deps: true,
    })
    .unwrap_or_else(|e| panic!("generating {language:?} bindings failed: {e:#}"));
}

fn files_with(dir: &Path, ext: &str) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .collect()
}

/// Kotlin and Swift bindings are generated and hold the client's API (no Swift compiler here:
/// its content is checked instead; the Kotlin bindings are also compiled and run below).
#[test]
fn kotlin_and_swift_bindings_are_generated() {
    let lib = cdylib();
    let out = tempfile::tempdir().unwrap();
    let kotlin = out.path().join("kotlin");
    let swift = out.path().join("swift");
    generate(&lib, &kotlin, TargetLanguage::Kotlin);
    generate(&lib, &swift, TargetLanguage::Swift);

    let kt = walk(&kotlin, "kt");
    assert_eq!(kt.len(), 1, "one Kotlin file: {kt:?}");
    let kt = std::fs::read_to_string(&kt[0]).unwrap();
    for needle in [
        "class HushClient",
        "suspend fun `sendText`",
        "interface HushListener",
        "sealed class HushException",
        "sealed class HushEvent",
    ] {
        assert!(kt.contains(needle), "Kotlin bindings lack `{needle}`");
    }

    let sw = files_with(&swift, "swift");
    assert_eq!(sw.len(), 1, "one Swift file: {sw:?}");
    let sw = std::fs::read_to_string(&sw[0]).unwrap();
    for needle in [
        "class HushClient",
        "func sendText(",
        "async throws",
        "protocol HushListener",
        "enum HushError",
        "enum HushEvent",
    ] {
        assert!(sw.contains(needle), "Swift bindings lack `{needle}`");
    }
    assert!(
        !files_with(&swift, "h").is_empty() && !files_with(&swift, "modulemap").is_empty(),
        "Swift needs the C header and module map"
    );
}

fn walk(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p, ext));
        } else if p.extension().is_some_and(|x| x == ext) {
            out.push(p);
        }
    }
    out
}

/// The Python bindings drive two clients through a real relay process.
#[test]
fn python_clients_chat_through_a_relay_process() {
    let lib = cdylib();
    let relay_bin = hush_testkit::relay_binary();
    let out = tempfile::tempdir().unwrap();
    let py = out.path().join("python");
    generate(&lib, &py, TargetLanguage::Python);
    assert!(py.join("hush_ffi.py").exists(), "no hush_ffi.py generated");
    // The module loads the library from its own directory.
    std::fs::copy(&lib, py.join(lib.file_name().unwrap())).unwrap();

    let relay_dir = tempfile::tempdir().unwrap();
    // Push wake-ups go to the test's endpoint on loopback, over plain HTTP.
    let mut args = hush_testkit::process::GENEROUS_RATES.to_vec();
    args.push("--push-allow-plain-http");
    let relay = RelayProcess::spawn(&relay_bin, relay_dir.path(), &args);
    let work = tempfile::tempdir().unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/test_hush.py");
    let mut cmd = Command::new("python3");
    cmd.arg("-u")
        .arg(&script)
        .env("PYTHONPATH", &py)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("HUSH_RELAY_ADDR", relay.addr.to_string())
        .env("HUSH_RELAY_PIN", &relay.pin)
        .env("HUSH_TEST_DIR", work.path())
        .stdin(Stdio::null());
    let status = run_bounded(&mut cmd, "the Python test", PYTHON_DEADLINE);
    drop(relay);
    assert!(status.success(), "the Python test failed: {status}");
}

/// Runs `cmd` to its end, killed after `deadline`. The programs run here wait on events with
/// timeouts of their own; this only guards against a hang of the interpreter, the compiler or
/// the JVM.
fn run_bounded(cmd: &mut Command, what: &str, deadline: Duration) -> ExitStatus {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: cannot start `{program}`: {e}"));
    let pid = child.id();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let what_ = what.to_owned();
    let watchdog = std::thread::spawn(move || {
        if done_rx.recv_timeout(deadline).is_err() {
            eprintln!("{what_} ran over {deadline:?}: killing it");
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
        }
    });
    let status = child.wait().unwrap();
    let _ = done_tx.send(());
    watchdog.join().unwrap();
    status
}

/// A file the Kotlin toolchain names in an environment variable (see `scripts/kotlin-toolchain`).
fn kotlin_tool(var: &str) -> String {
    let value = std::env::var(var).unwrap_or_else(|_| {
        panic!(
            "{var} is not set: the Kotlin bindings test needs a JDK, JNA and a Kotlin compiler; \
             run the tests with `bash scripts/test`, or first `eval \"$(bash \
             scripts/kotlin-toolchain)\"`, which installs them and sets {var}"
        )
    });
    for part in std::env::split_paths(&value) {
        assert!(
            part.is_file(),
            "{var} names {}, which is not a file: run `bash scripts/kotlin-toolchain` again",
            part.display()
        );
    }
    value
}

/// The Kotlin bindings, compiled with tests/kotlin/TestHush.kt by a Kotlin 2.x compiler, drive
/// two clients through a real relay process on a JVM, through JNA and kotlinx-coroutines.
#[test]
fn kotlin_clients_chat_through_a_relay_process() {
    let java = kotlin_tool("HUSH_JAVA");
    let compiler = kotlin_tool("HUSH_KOTLIN_COMPILER_CP");
    let class_path: Vec<PathBuf> = [
        "HUSH_KOTLIN_STDLIB",
        "HUSH_KOTLIN_COROUTINES",
        "HUSH_JNA_JAR",
    ]
    .into_iter()
    .map(|var| PathBuf::from(kotlin_tool(var)))
    .collect();
    let lib = cdylib();
    let relay_bin = hush_testkit::relay_binary();
    let out = tempfile::tempdir().unwrap();
    let kotlin = out.path().join("kotlin");
    generate(&lib, &kotlin, TargetLanguage::Kotlin);
    let mut sources = walk(&kotlin, "kt");
    assert_eq!(sources.len(), 1, "one Kotlin file: {sources:?}");
    sources.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/kotlin/TestHush.kt"));

    let jar = out.path().join("hush-test.jar");
    let started = Instant::now();
    let mut compile = Command::new(&java);
    compile
        .arg("-cp")
        .arg(&compiler)
        .arg("org.jetbrains.kotlin.cli.jvm.K2JVMCompiler")
        .args(["-no-stdlib", "-no-reflect", "-jvm-target", "17"])
        .arg("-cp")
        .arg(std::env::join_paths(&class_path).unwrap())
        .arg("-d")
        .arg(&jar)
        .args(&sources)
        .stdin(Stdio::null());
    let status = run_bounded(&mut compile, "the Kotlin compiler", KOTLIN_COMPILE_DEADLINE);
    assert!(
        status.success(),
        "compiling the Kotlin bindings and test failed: {status}"
    );
    eprintln!("kotlin: compiled in {:.1?}", started.elapsed());

    let relay_dir = tempfile::tempdir().unwrap();
    let relay = RelayProcess::spawn(
        &relay_bin,
        relay_dir.path(),
        hush_testkit::process::GENEROUS_RATES,
    );
    let work = tempfile::tempdir().unwrap();
    let mut run_cp = vec![jar];
    run_cp.extend(class_path);
    let started = Instant::now();
    let mut run = Command::new(&java);
    run.arg(format!(
        "-Djna.library.path={}",
        lib.parent().unwrap().display()
    ))
    .arg("-cp")
    .arg(std::env::join_paths(&run_cp).unwrap())
    .arg("TestHushKt")
    .env("HUSH_RELAY_ADDR", relay.addr.to_string())
    .env("HUSH_RELAY_PIN", &relay.pin)
    .env("HUSH_TEST_DIR", work.path())
    .stdin(Stdio::null());
    let status = run_bounded(&mut run, "the Kotlin test", KOTLIN_DEADLINE);
    drop(relay);
    assert!(status.success(), "the Kotlin test failed: {status}");
    eprintln!("kotlin: the test ran in {:.1?}", started.elapsed());
}
