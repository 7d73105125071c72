//! The pseudo-terminal harness (`common::pty`) proves itself on `hush --help`, `cat` and
//! `stty`; then the chat's terminal (`src/term.rs`) is run in a real terminal and typed at:
//! raw mode while it runs, keys edited into lines, "typing" from every edit, and the terminal
//! as it was afterwards. The program typed at is this test binary again, running
//! `terminal_child` (a few lines of chat loop on `Terminal`, with no relay).
#![cfg(test)]
#![allow(clippy::disallowed_methods)]

mod common;
#[path = "../src/term.rs"]
mod term;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::pty::{Pty, plain};
use term::{Input, Terminal};

const WAIT: Duration = Duration::from_secs(5);

/// Set (to anything) in the environment of the copy of this binary that `terminal_child` runs in.
const CHILD: &str = "HUSH_TERM_TEST_CHILD";

#[test]
fn plain_takes_out_escape_sequences() {
    assert_eq!(
        plain(b"\x1b[2K\r> hi\x1b[0J\x1b[5G\x1b]0;title\x07there\x1b7\x1b(Bok\r\n"),
        "> hithereok\n"
    );
    assert_eq!(plain(b"cut \x1b[1"), "cut ");
    assert_eq!(plain(b"cut \x1b"), "cut ");
    assert_eq!(plain("né".as_bytes()), "né");
    assert_eq!(plain(&"né".as_bytes()[..2]), "n");
    assert_eq!(plain("a😀".as_bytes()), "a😀");
    assert_eq!(plain(&"a😀".as_bytes()[..3]), "a");
}

#[test]
fn hush_help_in_a_pty() {
    let mut p = Pty::hush(&["--help"], &[]);
    p.expect("End-to-end encrypted chat", WAIT).unwrap();
    assert_eq!(p.wait(WAIT).unwrap(), 0);
}

#[test]
fn keys_reach_the_program_and_its_output_comes_back() {
    let mut p = Pty::spawn("cat", &[], &[]);
    p.send("hello pty\r");
    // Once echoed by the terminal, once written back by `cat`.
    p.expect("hello pty\n", WAIT).unwrap();
    p.expect("hello pty\n", WAIT).unwrap();
    let err = p
        .expect("never shown", Duration::from_millis(200))
        .unwrap_err();
    assert!(err.contains("hello pty"), "{err}");
    p.send("\x04");
    assert_eq!(p.wait(WAIT).unwrap(), 0);
}

#[test]
fn the_program_has_a_terminal_of_its_own() {
    let mut p = Pty::spawn("sh", &["-c", "stty size; tty"], &[]);
    p.expect("24 80\n/dev/pts/", WAIT).unwrap();
    assert_eq!(p.wait(WAIT).unwrap(), 0);
}

/// Not a test by itself: the program the tests below run, in a terminal or not. Prints the
/// mode, each line (`line: …`) and Eof; shows the number of edits as the status; a line
/// `status TEXT` sets the status and `quiet` clears it. Before it exits it says whether the
/// terminal's modes are as they were. Without `HUSH_TERM_TEST_CHILD` it does nothing.
#[test]
fn terminal_child() {
    if std::env::var_os(CHILD).is_none() {
        return;
    }
    let before = stty();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut term = Terminal::new("> ").unwrap();
        if term.is_interactive() {
            let raw = stty() != before;
            term.print(if raw { "raw mode on" } else { "raw mode off" });
            term.print("mode: interactive");
        } else {
            term.print("mode: plain");
        }
        let mut edits = 0;
        loop {
            match term.next().await {
                Input::Edited => {
                    edits += 1;
                    term.status(Some(&format!("edits: {edits}")));
                }
                Input::Line(line) => match line.strip_prefix("status ") {
                    Some(status) => term.status(Some(status)),
                    None if line == "quiet" => term.status(None),
                    None if line == "evil" => term.print("two\nlines \x1b[2Jand\ta\x07 bell"),
                    None => term.print(&format!("line: {line}")),
                },
                Input::Eof => {
                    term.print("eof");
                    break;
                }
            }
        }
    });
    let restored = stty() == before;
    println!(
        "{}",
        if restored {
            "modes restored"
        } else {
            "modes left changed"
        }
    );
}

/// The terminal modes of this process's stdin, as `stty -g` gives them.
fn stty() -> String {
    let out = Command::new("stty")
        .arg("-g")
        .stdin(Stdio::inherit())
        .stderr(Stdio::null())
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn child_args() -> [&'static str; 4] {
    [
        "terminal_child",
        "--exact",
        "--nocapture",
        "--test-threads=1",
    ]
}

fn child_in_a_pty() -> Pty {
    let me = std::env::current_exe().unwrap();
    let mut p = Pty::spawn(me, &child_args(), &[(CHILD, "1")]);
    p.expect("raw mode on", WAIT).unwrap();
    p.expect("mode: interactive", WAIT).unwrap();
    p
}

#[test]
fn terminal_edits_lines_in_raw_mode() {
    let mut p = child_in_a_pty();
    // Every key that changes the line is an edit; Backspace takes a whole character.
    p.send("héllo");
    p.expect("edits: 5", WAIT).unwrap();
    p.send("\x7f");
    p.expect("edits: 6", WAIT).unwrap();
    p.send("\r");
    p.expect("> héll\n", WAIT).unwrap();
    p.expect("line: héll", WAIT).unwrap();
    // Left and typing in the middle; Ctrl-U clears the line.
    p.send("ac\x1b[Db");
    p.expect("edits: 9", WAIT).unwrap();
    p.send("\r");
    p.expect("line: abc", WAIT).unwrap();
    p.send("junk\x15");
    p.expect("edits: 14", WAIT).unwrap();
    // The status stands just above the prompt, and a new one replaces it.
    p.send("status bob is typing…\r");
    p.expect("bob is typing…", WAIT).unwrap();
    p.expect_screen("the status above an empty prompt", WAIT, |rows| {
        bottom(rows, 3) == ["> status bob is typing…", "bob is typing…", ">"]
            && no_status(rows, "edits")
    })
    .unwrap();
    p.send("x\r");
    p.expect("line: x", WAIT).unwrap();
    // Typing "x" made the edits status replace that one; the line is printed above it.
    p.expect_screen("a line printed above the status", WAIT, |rows| {
        bottom(rows, 4) == ["> x", "line: x", "edits: 36", ">"]
    })
    .unwrap();
    p.send("ab");
    let rows = p
        .expect_screen("the edits status in place of the other", WAIT, |rows| {
            let b = bottom(rows, 3);
            b.len() == 3 && b[0] == "line: x" && b[1] == "edits: 38" && b[2] == "> ab"
        })
        .unwrap();
    assert!(!rows.iter().any(|r| r == "bob is typing…"), "{rows:#?}");
    assert_eq!(
        rows.iter().filter(|r| r.starts_with("edits")).count(),
        1,
        "{rows:#?}"
    );
    let prompt_row = u16::try_from(rows.iter().rposition(|r| !r.is_empty()).unwrap()).unwrap();
    assert_eq!(p.cursor(), (prompt_row, 4));
    p.send("\x15evil\r");
    // What is left of an escape sequence is plain text.
    p.expect("two\nlines [2Jand a bell\n", WAIT).unwrap();
    p.send("\x15quiet\r");
    p.expect_screen("no status", WAIT, |rows| {
        bottom(rows, 3) == ["lines [2Jand a bell", "> quiet", ">"] && no_status(rows, "edits")
    })
    .unwrap();
    // Ctrl-D on an empty line ends the input, and the terminal is left as it was.
    p.send("\x04");
    p.expect("eof", WAIT).unwrap();
    p.expect("modes restored", WAIT).unwrap();
    assert_eq!(p.wait(WAIT).unwrap(), 0);
}

/// The last `n` rows up to the last one with something on it.
fn bottom(rows: &[String], n: usize) -> Vec<&str> {
    let end = rows
        .iter()
        .rposition(|r| !r.is_empty())
        .map_or(0, |i| i + 1);
    rows[end.saturating_sub(n)..end]
        .iter()
        .map(String::as_str)
        .collect()
}

/// Whether no row on the screen is a status starting with `text`.
fn no_status(rows: &[String], text: &str) -> bool {
    !rows.iter().any(|r| r.starts_with(text))
}

#[test]
fn a_long_line_scrolls_within_its_row() {
    let mut p = child_in_a_pty();
    p.send(&"a".repeat(100));
    p.expect("edits: 100", WAIT).unwrap();
    // The prompt and as much of the line as fits before the last column, the cursor after it.
    let shown = format!("> {}", "a".repeat(77));
    let rows = p
        .expect_screen("the end of the line on one row", WAIT, |rows| {
            bottom(rows, 2) == ["edits: 100", shown.as_str()]
        })
        .unwrap();
    let prompt_row =
        u16::try_from(rows.len() - 1 - rows.iter().rev().position(|r| !r.is_empty()).unwrap())
            .unwrap();
    assert_eq!(p.cursor(), (prompt_row, 79));
    p.send("\r");
    p.expect(&format!("line: {}", "a".repeat(100)), WAIT)
        .unwrap();
    p.send("\x04");
    p.expect("modes restored", WAIT).unwrap();
}

#[test]
fn ctrl_c_ends_the_input_and_the_terminal_is_restored() {
    let mut p = child_in_a_pty();
    p.send("half a thought\x03");
    p.expect("eof", WAIT).unwrap();
    p.expect("modes restored", WAIT).unwrap();
    assert_eq!(p.wait(WAIT).unwrap(), 0);
    assert!(!p.output().contains("line: half"), "{}", p.output());
}

#[test]
fn terminal_reads_plain_lines_without_a_terminal() {
    let me = std::env::current_exe().unwrap();
    let mut child = Command::new(me)
        .args(child_args())
        .env(CHILD, "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(
            "hello\nstatus bob is typing…\nstatus bob is typing…\nquiet\nstatus bob is typing…\n"
                .as_bytes(),
        )
        .unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let out = String::from_utf8(out.stdout).unwrap();
    assert!(out.contains("mode: plain\nline: hello\n"), "{out}");
    // A status is printed once while it stays the same, and again after it was cleared.
    assert_eq!(out.matches("bob is typing…\n").count(), 2, "{out}");
    assert!(out.contains("eof\n"), "{out}");
    assert!(!out.contains("edits"), "{out}");
    assert!(!out.contains('\x1b'), "{out}");
}
