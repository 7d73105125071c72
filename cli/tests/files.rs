//! Files between two `hush` processes through a `hush-relay` process on 127.0.0.1: Alice sends
//! one with `hush attach`, Bob writes it to disk with `hush save` (by `last` or by message id)
//! and gets the very bytes she sent; an existing file is never replaced; a file the relay no
//! longer has, and one altered on the relay's disk, are said in words and nothing is written.
#![cfg(test)]
#![allow(clippy::disallowed_methods)]

mod common;
use common::*;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use rand::RngExt;
use sha2::{Digest, Sha256};

/// `hush --profile PROFILE ARGS` run in the directory `cwd`.
fn hush_in(cwd: &Path, profile: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hush"))
        .current_dir(cwd)
        .arg("--profile")
        .arg(profile)
        .args(args)
        .output()
        .unwrap()
}

/// Alice and Bob, each with a profile of their own on `relay`.
struct Pair {
    _dir: tempfile::TempDir,
    alice: PathBuf,
    bob: PathBuf,
    /// Bob's working directory, where `hush save` writes by default.
    cwd: PathBuf,
    /// Where the files Alice sends are made.
    src: PathBuf,
}

fn pair(relay: &RelayProcess) -> Pair {
    let dir = tempfile::tempdir().unwrap();
    let (alice, bob) = (dir.path().join("alice"), dir.path().join("bob"));
    let (cwd, src) = (dir.path().join("cwd"), dir.path().join("src"));
    std::fs::create_dir(&cwd).unwrap();
    std::fs::create_dir(&src).unwrap();
    let addr = relay.addr.to_string();
    for (profile, name) in [(&alice, "alice"), (&bob, "bob")] {
        let o = hush(
            profile,
            &[
                "init", "--relay", &addr, "--pin", &relay.pin, "--name", name,
            ],
        );
        assert!(o.status.success(), "{}", stderr(&o));
    }
    Pair {
        _dir: dir,
        alice,
        bob,
        cwd,
        src,
    }
}

/// A file of `len` random bytes named `name` in `dir`.
fn random_file(dir: &Path, name: &str, len: usize) -> (PathBuf, Vec<u8>) {
    let mut data = vec![0u8; len];
    rand::rng().fill(&mut data[..]);
    let path = dir.join(name);
    std::fs::write(&path, &data).unwrap();
    (path, data)
}

/// Alice attaches `file` for Bob; returns the message id it printed.
fn attach(p: &Pair, file: &Path) -> String {
    let o = hush(&p.alice, &["attach", "bob", file.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    // Not a terminal: no progress bar, nothing on stderr.
    assert_eq!(stderr(&o), "");
    let out = stdout(&o);
    let id = out
        .strip_prefix("sent ")
        .and_then(|s| s.strip_suffix('\n'))
        .unwrap_or_else(|| panic!("{out}"))
        .to_owned();
    assert_eq!(id.len(), 32, "{out}");
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{out}");
    id
}

fn sha256_of(path: &Path) -> Vec<u8> {
    Sha256::digest(std::fs::read(path).unwrap()).to_vec()
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn a_3_mb_file_is_saved_by_last_and_by_id_with_the_sent_bytes() {
    let relay_dir = tempfile::tempdir().unwrap();
    let relay = spawn_relay(relay_dir.path(), &[]);
    let p = pair(&relay);
    let (file, data) = random_file(&p.src, "photo.jpg", 3_000_000);
    let sent_digest = Sha256::digest(&data).to_vec();
    let id = attach(&p, &file);
    let short = &id[..8];

    // `last`, into the current directory under the file's own name.
    let o = hush_in(&p.cwd, &p.bob, &["save", "last"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stdout(&o),
        "saved photo.jpg (3.0 MB) from alice to ./photo.jpg\n"
    );
    assert_eq!(stderr(&o), "");
    assert_eq!(sha256_of(&p.cwd.join("photo.jpg")), sent_digest);

    // Saving it again where it is does not replace it.
    let again = hush_in(&p.cwd, &p.bob, &["save", "last"]);
    assert!(!again.status.success());
    assert_eq!(
        stderr(&again),
        "hush: ./photo.jpg already exists; it is not replaced (choose another name with --out \
         PATH)\n"
    );
    assert_eq!(stdout(&again), "");
    assert_eq!(files_in(&p.cwd), ["photo.jpg"]);

    // By the id prefix the history shows, to a path of Bob's choosing.
    let h = hush(&p.bob, &["history", "alice"]);
    assert!(h.status.success(), "{}", stderr(&h));
    assert_eq!(
        untimed(&stdout(&h)),
        [format!(
            "alice: [file photo.jpg (3.0 MB): hush save {short}]"
        )]
    );
    let out = p.cwd.join("copy.bin");
    let o = hush_in(
        &p.cwd,
        &p.bob,
        &["save", short, "--out", out.to_str().unwrap()],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stdout(&o),
        format!("saved photo.jpg (3.0 MB) from alice to {}\n", out.display())
    );
    assert_eq!(sha256_of(&out), sent_digest);

    // By the whole id, in capitals, into a directory: the file's own name inside it.
    let o = hush_in(
        &p.cwd,
        &p.bob,
        &["save", &id.to_uppercase(), "--out", p.src.to_str().unwrap()],
    );
    assert!(!o.status.success());
    assert_eq!(
        stderr(&o),
        format!(
            "hush: {} already exists; it is not replaced (choose another name with --out PATH)\n",
            p.src.join("photo.jpg").display()
        )
    );
    let elsewhere = p.cwd.join("dir");
    std::fs::create_dir(&elsewhere).unwrap();
    let o = hush_in(
        &p.cwd,
        &p.bob,
        &[
            "save",
            &id.to_uppercase(),
            "--out",
            elsewhere.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stdout(&o),
        format!(
            "saved photo.jpg (3.0 MB) from alice to {}\n",
            elsewhere.join("photo.jpg").display()
        )
    );
    assert_eq!(sha256_of(&elsewhere.join("photo.jpg")), sent_digest);

    // Ids that name no file.
    let o = hush_in(&p.cwd, &p.bob, &["save", "1234"]);
    assert!(!o.status.success());
    assert_eq!(
        stderr(&o),
        "hush: `1234` is not a message id: give `last`, or the id shown with the file (8 to 32 \
         hex digits)\n"
    );
    let other: String = std::iter::once(if id.starts_with('0') { '1' } else { '0' })
        .chain(id.chars().skip(1).take(7))
        .collect();
    let o = hush_in(&p.cwd, &p.bob, &["save", &other]);
    assert!(!o.status.success());
    assert_eq!(
        stderr(&o),
        format!("hush: no file has a message id starting with {other}\n")
    );
    // Alice has received no file.
    let o = hush_in(&p.cwd, &p.alice, &["save", "last"]);
    assert!(!o.status.success());
    assert_eq!(stderr(&o), "hush: no file has been received yet\n");
    assert_eq!(files_in(&p.cwd), ["copy.bin", "dir", "photo.jpg"]);
}

#[test]
fn a_file_the_relay_no_longer_has_is_said_to_be_gone() {
    let relay_dir = tempfile::tempdir().unwrap();
    // Files expire 1 ms after their upload began: by the time Bob asks for one (another
    // process, a new connection), it has. The sweeper stays out of the way (it would delete the
    // upload itself).
    let relay = spawn_relay(
        relay_dir.path(),
        &["--blob-ttl-ms", "1", "--sweep-interval-ms", "3600000"],
    );
    let p = pair(&relay);
    let (file, _) = random_file(&p.src, "notes.txt", 10_000);
    attach(&p, &file);
    let o = hush_in(&p.cwd, &p.bob, &["save", "last"]);
    assert!(!o.status.success());
    assert_eq!(
        stderr(&o),
        "hush: notes.txt is no longer on the relay (expired or deleted); ask alice to send it \
         again\n"
    );
    assert_eq!(stdout(&o), "");
    assert!(files_in(&p.cwd).is_empty());
}

#[test]
fn a_file_altered_on_the_relay_is_refused_and_nothing_is_saved() {
    let relay_dir = tempfile::tempdir().unwrap();
    let relay = spawn_relay(relay_dir.path(), &[]);
    let p = pair(&relay);
    let (file, _) = random_file(&p.src, "report.pdf", 200_000);
    let id = attach(&p, &file);

    // Someone with the relay's disk flips one bit of the stored (encrypted) file.
    let blobs = relay_dir.path().join("blobs");
    let stored = files_in(&blobs);
    assert_eq!(stored.len(), 1, "{stored:?}");
    let path = blobs.join(&stored[0]);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[100_000] ^= 1;
    std::fs::write(&path, &bytes).unwrap();

    let o = hush_in(&p.cwd, &p.bob, &["save", &id[..12]]);
    assert!(!o.status.success());
    assert_eq!(
        stderr(&o),
        "hush: report.pdf was altered on the relay or on its way: its digest does not match the \
         one alice sent; nothing was saved\n"
    );
    assert_eq!(stdout(&o), "");
    assert!(files_in(&p.cwd).is_empty());
}
