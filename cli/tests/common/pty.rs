//! A program in a pseudo-terminal, as a person at a terminal runs it: keys are written to it,
//! and what it shows is read in a background thread and waited for with a deadline.
//!
//! ```ignore
//! let mut alice = Pty::hush(&["--profile", dir, "chat", "bob"], &[]);
//! alice.expect("chatting with bob", Duration::from_secs(5))?;
//! alice.send("hello\r");
//! ```
//!
//! [`Pty::expect`] matches the output as a stream, with escape sequences and carriage returns
//! taken out, and only looks past what the previous `expect` matched, so waiting for the same
//! text twice waits for it to be shown twice. [`Pty::screen`] and [`Pty::expect_screen`] look
//! at the screen itself, as a terminal emulator draws it: for what replaces what, or where the
//! cursor is.

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use portable_pty::{Child, CommandBuilder, MasterPty, PtySize, native_pty_system};

/// The terminal's size: a common default.
pub(crate) const ROWS: u16 = 24;
pub(crate) const COLS: u16 = 80;

/// What the program has written so far, and whether it can write more.
struct Screen {
    bytes: Vec<u8>,
    closed: bool,
    emulator: vt100::Parser,
}

struct Shared {
    screen: Mutex<Screen>,
    changed: Condvar,
}

pub(crate) struct Pty {
    child: Box<dyn Child + Send + Sync>,
    writer: Box<dyn Write + Send>,
    shared: Arc<Shared>,
    /// Where in the plain output the next `expect` starts looking.
    seen: usize,
    _master: Box<dyn MasterPty + Send>,
}

impl Pty {
    /// Runs `program` with `args`, with this process's environment plus `env` (and `TERM`
    /// set to `xterm-256color` unless `env` names it), in a new 24×80 terminal of its own.
    pub(crate) fn spawn(program: impl AsRef<OsStr>, args: &[&str], env: &[(&str, &str)]) -> Pty {
        let mut cmd = CommandBuilder::new(program);
        cmd.args(args);
        cmd.env("TERM", "xterm-256color");
        for (k, v) in env {
            cmd.env(k, v);
        }
        if let Ok(dir) = std::env::current_dir() {
            cmd.cwd(dir);
        }
        Pty::spawn_command(cmd)
    }

    /// Runs this build's `hush` with `args` and `env` (see [`Pty::spawn`]).
    pub(crate) fn hush(args: &[&str], env: &[(&str, &str)]) -> Pty {
        Pty::spawn(env!("CARGO_BIN_EXE_hush"), args, env)
    }

    /// Runs `cmd` as it is built, in a new 24×80 terminal of its own (its session's
    /// controlling terminal).
    pub(crate) fn spawn_command(cmd: CommandBuilder) -> Pty {
        let pair = native_pty_system()
            .openpty(PtySize {
                rows: ROWS,
                cols: COLS,
                pixel_width: 0,
                pixel_height: 0,
            })
            .expect("no pseudo-terminal could be opened");
        let child = pair
            .slave
            .spawn_command(cmd)
            .expect("the program could not be started in the pseudo-terminal");
        // Only the child holds the terminal's other end now, so reading ends when it exits.
        drop(pair.slave);
        let mut reader = pair.master.try_clone_reader().expect("pty reader");
        let writer = pair.master.take_writer().expect("pty writer");
        let shared = Arc::new(Shared {
            screen: Mutex::new(Screen {
                bytes: Vec::new(),
                closed: false,
                emulator: vt100::Parser::new(
                    std::num::NonZeroU16::new(ROWS).unwrap(),
                    std::num::NonZeroU16::new(COLS).unwrap(),
                    0,
                ),
            }),
            changed: Condvar::new(),
        });
        let sink = Arc::clone(&shared);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                let n = match reader.read(&mut buf) {
                    Ok(0) | Err(_) => 0,
                    Ok(n) => n,
                };
                let mut screen = sink.screen.lock().unwrap();
                if n == 0 {
                    screen.closed = true;
                } else {
                    screen.bytes.extend_from_slice(&buf[..n]);
                    screen.emulator.process(&buf[..n]);
                }
                sink.changed.notify_all();
                if n == 0 {
                    return;
                }
            }
        });
        Pty {
            child,
            writer,
            shared,
            seen: 0,
            _master: pair.master,
        }
    }

    /// Types `keys`: text as it is, `"\r"` for Enter, `"\x7f"` for Backspace, `"\x03"` for
    /// Ctrl-C, `"\x04"` for Ctrl-D, `"\x15"` for Ctrl-U, `"\x1b[D"` for Left.
    pub(crate) fn send(&mut self, keys: &str) {
        self.send_bytes(keys.as_bytes());
    }

    pub(crate) fn send_bytes(&mut self, bytes: &[u8]) {
        self.writer
            .write_all(bytes)
            .and_then(|()| self.writer.flush())
            .expect("writing to the pseudo-terminal");
    }

    /// Waits up to `within` for `text` to be shown after what the previous `expect` matched.
    /// On failure, says so with all the output so far.
    pub(crate) fn expect(&mut self, text: &str, within: Duration) -> Result<(), String> {
        let deadline = Instant::now() + within;
        let mut screen = self.shared.screen.lock().unwrap();
        loop {
            let shown = plain(&screen.bytes);
            if let Some(at) = shown.get(self.seen..).and_then(|rest| rest.find(text)) {
                self.seen += at + text.len();
                return Ok(());
            }
            let now = Instant::now();
            if screen.closed || now >= deadline {
                let why = if screen.closed {
                    "the program closed the terminal"
                } else {
                    "time ran out"
                };
                return Err(format!(
                    "{text:?} was not shown within {within:?} ({why}); the output so far:\n{shown}"
                ));
            }
            screen = self
                .shared
                .changed
                .wait_timeout(screen, deadline - now)
                .unwrap()
                .0;
        }
    }

    /// The screen as it is now: its rows, each without trailing blanks.
    pub(crate) fn screen(&self) -> Vec<String> {
        rows(&self.shared.screen.lock().unwrap().emulator)
    }

    /// The cursor's place on the screen now: (row, column), from 0.
    pub(crate) fn cursor(&self) -> (u16, u16) {
        self.shared
            .screen
            .lock()
            .unwrap()
            .emulator
            .screen()
            .cursor_position()
    }

    /// Waits up to `within` for the screen's rows to be as `wanted` says (it is asked again
    /// each time output comes), and gives them. On failure, says so with the screen and all
    /// the output so far.
    pub(crate) fn expect_screen(
        &mut self,
        what: &str,
        within: Duration,
        wanted: impl Fn(&[String]) -> bool,
    ) -> Result<Vec<String>, String> {
        let deadline = Instant::now() + within;
        let mut screen = self.shared.screen.lock().unwrap();
        loop {
            let rows = rows(&screen.emulator);
            if wanted(&rows) {
                return Ok(rows);
            }
            let now = Instant::now();
            if screen.closed || now >= deadline {
                return Err(format!(
                    "the screen did not show {what} within {within:?}; the screen:\n{}\nthe output so far:\n{}",
                    rows.join("\n"),
                    plain(&screen.bytes)
                ));
            }
            screen = self
                .shared
                .changed
                .wait_timeout(screen, deadline - now)
                .unwrap()
                .0;
        }
    }

    /// All the output so far, escape sequences and carriage returns taken out.
    pub(crate) fn output(&self) -> String {
        plain(&self.shared.screen.lock().unwrap().bytes)
    }

    /// All the output so far as written, escape sequences included.
    pub(crate) fn raw_output(&self) -> Vec<u8> {
        self.shared.screen.lock().unwrap().bytes.clone()
    }

    /// Waits up to `within` for the program to exit (it closes the terminal as it does), and
    /// gives its exit code. On failure, says so with all the output so far.
    pub(crate) fn wait(&mut self, within: Duration) -> Result<u32, String> {
        let deadline = Instant::now() + within;
        let mut screen = self.shared.screen.lock().unwrap();
        while !screen.closed {
            let now = Instant::now();
            if now >= deadline {
                return Err(format!(
                    "the program did not exit within {within:?}; the output so far:\n{}",
                    plain(&screen.bytes)
                ));
            }
            screen = self
                .shared
                .changed
                .wait_timeout(screen, deadline - now)
                .unwrap()
                .0;
        }
        drop(screen);
        self.child
            .wait()
            .map(|status| status.exit_code())
            .map_err(|e| format!("waiting for the program: {e}"))
    }
}

impl Drop for Pty {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn rows(emulator: &vt100::Parser) -> Vec<String> {
    emulator
        .screen()
        .rows(0, COLS)
        .map(|row| row.trim_end().to_string())
        .collect()
}

/// `bytes` as text, without escape sequences (CSI, OSC and the like), carriage returns and
/// other control characters but newlines and tabs. An escape sequence or character cut off at
/// the end is left out, so the text only ever grows as more output comes.
pub(crate) fn plain(bytes: &[u8]) -> String {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b != 0x1b {
            if b >= 0x20 || b == b'\n' || b == b'\t' {
                out.push(b);
            }
            i += 1;
            continue;
        }
        let Some(&kind) = bytes.get(i + 1) else {
            break;
        };
        match kind {
            b'[' => {
                // Parameters and intermediates, then one final byte.
                let mut j = i + 2;
                while bytes.get(j).is_some_and(|b| (0x20..=0x3f).contains(b)) {
                    j += 1;
                }
                match bytes.get(j) {
                    None => break,
                    Some(b) if (0x40..=0x7e).contains(b) => i = j + 1,
                    Some(_) => i = j,
                }
            }
            b']' | b'P' | b'_' | b'^' | b'X' => {
                // A string, ended by BEL or ESC \.
                let rest = &bytes[i + 2..];
                let end = rest.iter().enumerate().find_map(|(k, &b)| match b {
                    0x07 => Some(k + 1),
                    0x1b if rest.get(k + 1) == Some(&b'\\') => Some(k + 2),
                    _ => None,
                });
                match end {
                    Some(len) => i += 2 + len,
                    None => break,
                }
            }
            b'(' | b')' | b'*' | b'+' | b'#' | b'%' => {
                if i + 2 >= bytes.len() {
                    break;
                }
                i += 3;
            }
            _ => i += 2,
        }
    }
    // Leave out a character cut off at the end.
    let mut cut = out.len();
    for back in 1..=3.min(out.len()) {
        let b = out[out.len() - back];
        if b & 0xc0 != 0x80 {
            let needs = match b {
                0xc0..=0xdf => 2,
                0xe0..=0xef => 3,
                0xf0..=0xf7 => 4,
                _ => 1,
            };
            if needs > back {
                cut = out.len() - back;
            }
            break;
        }
    }
    String::from_utf8_lossy(&out[..cut]).into_owned()
}
