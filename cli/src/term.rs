//! The chat's terminal. When stdin and stdout are both terminals it switches to raw mode and
//! edits the line itself, so every key is seen (that is what "typing…" is sent from); lines
//! of output and a status line ("bob is typing…") are drawn above the line being edited.
//! Otherwise (pipes, files) it reads plain lines and prints plain lines.
//!
//! The screen in raw mode, bottom up: the prompt with the line being edited (the cursor is
//! there), the status line just above it when there is one, and above those everything
//! printed so far. Anything else that writes to stdout while raw mode is on breaks that
//! layout: output goes through [`Terminal::print`].
//!
//! The editing itself is [`Editor`], a state machine with no I/O: keys in, line and input out.
// Until the chat command is built on it.

use std::cell::Cell;
use std::fmt::Write as _;
use std::io::{IsTerminal, Write as _};

use crossterm::cursor::{MoveToColumn, MoveUp};
use crossterm::event::{Event, EventStream, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use crossterm::terminal::{Clear, ClearType};
use futures_util::StreamExt;
use tokio::io::AsyncBufReadExt;
use unicode_width::{UnicodeWidthChar, UnicodeWidthStr};

/// What the person at the keyboard did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Input {
    /// A finished line (Enter), without the newline.
    Line(String),
    /// The line being edited changed (a key typed or deleted) — the caller sends "typing" from it.
    Edited,
    /// End of input (Ctrl-D on an empty line, stdin closed) or Ctrl-C.
    Eof,
}

/// An editing key, as [`Editor`] understands it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Key {
    Char(char),
    Backspace,
    Delete,
    Enter,
    Left,
    Right,
    Home,
    End,
    /// Ctrl-U: clears the line.
    ClearLine,
    /// Ctrl-D: end of input on an empty line, otherwise deletes the character at the cursor.
    EndOfInput,
    /// Ctrl-C.
    Interrupt,
}

impl Key {
    /// The editing key a terminal key press stands for, if any.
    fn of(event: KeyEvent) -> Option<Key> {
        if event.kind == KeyEventKind::Release {
            return None;
        }
        let key = match event.code {
            KeyCode::Char(c) if event.modifiers.contains(KeyModifiers::CONTROL) => {
                match c.to_ascii_lowercase() {
                    'c' => Key::Interrupt,
                    'd' => Key::EndOfInput,
                    'u' => Key::ClearLine,
                    'a' => Key::Home,
                    'e' => Key::End,
                    'b' => Key::Left,
                    'f' => Key::Right,
                    'h' => Key::Backspace,
                    'j' | 'm' => Key::Enter,
                    _ => return None,
                }
            }
            KeyCode::Char(_) if event.modifiers.contains(KeyModifiers::ALT) => return None,
            KeyCode::Char(c) => Key::Char(c),
            KeyCode::Backspace => Key::Backspace,
            KeyCode::Delete => Key::Delete,
            KeyCode::Enter => Key::Enter,
            KeyCode::Left => Key::Left,
            KeyCode::Right => Key::Right,
            KeyCode::Home => Key::Home,
            KeyCode::End => Key::End,
            _ => return None,
        };
        Some(key)
    }
}

/// The line being edited and the cursor in it (a position between characters).
#[derive(Debug, Default)]
pub(crate) struct Editor {
    chars: Vec<char>,
    /// Always `<= chars.len()`.
    cursor: usize,
}

impl Editor {
    /// Applies one key. Returns the input it makes, if any: `Edited` when the text changed
    /// (not for cursor moves), `Line` on Enter (the editor is then empty), `Eof` on Ctrl-C or
    /// on Ctrl-D with nothing typed.
    pub(crate) fn key(&mut self, key: Key) -> Option<Input> {
        self.cursor = self.cursor.min(self.chars.len());
        match key {
            Key::Char(c) if c.is_control() => None,
            Key::Char(c) => {
                self.chars.insert(self.cursor, c);
                self.cursor += 1;
                Some(Input::Edited)
            }
            Key::Backspace if self.cursor > 0 => {
                self.cursor -= 1;
                self.chars.remove(self.cursor);
                Some(Input::Edited)
            }
            Key::Backspace => None,
            Key::EndOfInput if self.chars.is_empty() => Some(Input::Eof),
            Key::Delete | Key::EndOfInput if self.cursor < self.chars.len() => {
                self.chars.remove(self.cursor);
                Some(Input::Edited)
            }
            Key::Delete | Key::EndOfInput => None,
            Key::ClearLine if self.chars.is_empty() => None,
            Key::ClearLine => {
                self.chars.clear();
                self.cursor = 0;
                Some(Input::Edited)
            }
            Key::Interrupt => Some(Input::Eof),
            Key::Enter => {
                let line = self.chars.drain(..).collect();
                self.cursor = 0;
                Some(Input::Line(line))
            }
            Key::Left => {
                self.cursor = self.cursor.saturating_sub(1);
                None
            }
            Key::Right => {
                self.cursor = (self.cursor + 1).min(self.chars.len());
                None
            }
            Key::Home => {
                self.cursor = 0;
                None
            }
            Key::End => {
                self.cursor = self.chars.len();
                None
            }
        }
    }

    /// The line as typed so far.
    #[cfg(test)]
    pub(crate) fn text(&self) -> String {
        self.chars.iter().collect()
    }

    /// What of the line fits in `width` columns, keeping the cursor in view (as much of what
    /// is before the cursor as fits, then what follows it), and the cursor's column in that.
    pub(crate) fn view(&self, width: usize) -> (String, usize) {
        let cursor = self.cursor.min(self.chars.len());
        let (before, after) = self.chars.split_at(cursor);
        let mut used = 0;
        let mut start = cursor;
        for c in before.iter().rev() {
            let w = c.width().unwrap_or(0);
            if used + w > width {
                break;
            }
            used += w;
            start -= 1;
        }
        let column = used;
        let mut end = cursor;
        for c in after {
            let w = c.width().unwrap_or(0);
            if used + w > width {
                break;
            }
            used += w;
            end += 1;
        }
        let shown = self.chars.get(start..end).unwrap_or_default();
        (shown.iter().collect(), column)
    }
}

/// The chat's terminal: raw mode with a one-line editor when stdin and stdout are terminals;
/// plain line reading otherwise (pipes, tests without a pty), where `Edited` is never produced.
pub(crate) struct Terminal {
    mode: Mode,
}

enum Mode {
    Raw(Raw),
    Plain(Plain),
}

struct Plain {
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::io::Stdin>>,
    /// The status last printed, so that the same one is not printed again.
    status: Cell<Option<String>>,
}

struct Raw {
    prompt: String,
    editor: Editor,
    /// The status line on screen, if any.
    status: Cell<Option<String>>,
    events: EventStream,
    /// Declared last: raw mode is left after the screen is tidied and the reader stopped.
    _raw: RawMode,
}

/// Raw mode is on while this lives.
struct RawMode;

impl RawMode {
    fn enter() -> std::io::Result<RawMode> {
        crossterm::terminal::enable_raw_mode()?;
        Ok(RawMode)
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = crossterm::terminal::disable_raw_mode();
    }
}

impl Terminal {
    /// Prompt is e.g. "> ". Enters raw mode only when both stdin and stdout are terminals.
    pub(crate) fn new(prompt: &str) -> std::io::Result<Terminal> {
        let mode = if std::io::stdin().is_terminal() && std::io::stdout().is_terminal() {
            let raw = RawMode::enter()?;
            let raw = Raw {
                prompt: prompt.chars().filter(|c| !c.is_control()).collect(),
                editor: Editor::default(),
                status: Cell::new(None),
                events: EventStream::new(),
                _raw: raw,
            };
            let mut out = String::new();
            raw.draw(&mut out);
            emit(&out);
            Mode::Raw(raw)
        } else {
            Mode::Plain(Plain {
                lines: tokio::io::BufReader::new(tokio::io::stdin()).lines(),
                status: Cell::new(None),
            })
        };
        Ok(Terminal { mode })
    }

    /// Whether it edits lines itself (raw mode) — i.e. `Edited` can happen.
    pub(crate) fn is_interactive(&self) -> bool {
        matches!(self.mode, Mode::Raw(_))
    }

    /// Next input; cancel-safe (usable inside `tokio::select!` in a loop without losing keys
    /// or lines): keys wait in the event stream and lines in the reader until taken, and a key
    /// is applied only once it has been taken, with no await after it.
    ///
    /// In raw mode a finished line stays on screen after the prompt, as a terminal in line
    /// mode would leave it, and the prompt starts again empty below it.
    pub(crate) async fn next(&mut self) -> Input {
        match &mut self.mode {
            Mode::Plain(plain) => match plain.lines.next_line().await {
                Ok(Some(line)) => Input::Line(line),
                Ok(None) | Err(_) => Input::Eof,
            },
            Mode::Raw(raw) => loop {
                let event = match raw.events.next().await {
                    Some(Ok(event)) => event,
                    Some(Err(_)) | None => return Input::Eof,
                };
                if let Some(input) = raw.handle(event) {
                    return input;
                }
            },
        }
    }

    /// Prints one line of output above the line being edited, then redraws the prompt and the
    /// partial input (in raw mode: clear line, print with \r\n, redraw). In plain mode: println.
    /// A line with newlines in it is printed as several lines; in raw mode other control
    /// characters are left out (ESC too, so no colours there), tabs become spaces.
    pub(crate) fn print(&self, line: &str) {
        match &self.mode {
            Mode::Plain(_) => emit(&format!("{line}\n")),
            Mode::Raw(raw) => raw.above(line),
        }
    }

    /// Shows (or with None clears) a status line such as "bob is typing…" just above the
    /// prompt, replacing the previous one instead of adding lines; in plain mode prints it once
    /// as a normal line when Some (not again while it stays the same) and nothing when None.
    pub(crate) fn status(&self, status: Option<&str>) {
        match &self.mode {
            Mode::Plain(plain) => {
                let last = plain.status.take();
                if let Some(s) = status
                    && last.as_deref() != Some(s)
                {
                    emit(&format!("{s}\n"));
                }
                plain.status.set(status.map(str::to_string));
            }
            Mode::Raw(raw) => {
                let status = status.map(|s| s.replace(|c: char| c.is_control(), " "));
                let last = raw.status.take();
                if last == status {
                    raw.status.set(last);
                    return;
                }
                raw.status.set(last);
                let mut out = String::new();
                raw.clear(&mut out);
                raw.status.set(status);
                raw.draw(&mut out);
                emit(&out);
            }
        }
    }
}

impl Raw {
    /// Applies one terminal event; the input it makes, if any.
    fn handle(&mut self, event: Event) -> Option<Input> {
        match event {
            Event::Key(key) => {
                let input = self.editor.key(Key::of(key)?);
                if let Some(Input::Line(line)) = &input {
                    // Leave the finished line on screen above a fresh prompt.
                    self.above(&format!("{}{line}", self.prompt));
                } else {
                    let mut out = String::new();
                    self.draw_prompt(&mut out);
                    emit(&out);
                }
                input
            }
            Event::Resize(..) => {
                let mut out = String::new();
                self.clear(&mut out);
                self.draw(&mut out);
                emit(&out);
                None
            }
            _ => None,
        }
    }

    /// Prints `text` above the status and prompt, which are drawn again below it.
    fn above(&self, text: &str) {
        let mut out = String::new();
        self.clear(&mut out);
        for line in text.split('\n') {
            // Control characters would move the cursor or change the terminal under the
            // editor: they are left out (so an escape sequence in a peer's text is inert).
            out.extend(
                line.chars()
                    .map(|c| if c == '\t' { ' ' } else { c })
                    .filter(|c| !c.is_control()),
            );
            out.push_str("\r\n");
        }
        self.draw(&mut out);
        emit(&out);
    }

    /// Erases the status line and the prompt line, leaving the cursor where the status line
    /// (or, without one, the prompt) began.
    fn clear(&self, out: &mut String) {
        let status = self.status.take();
        if status.is_some() {
            let _ = write!(out, "{}", MoveUp(1));
        }
        self.status.set(status);
        let _ = write!(out, "\r{}", Clear(ClearType::FromCursorDown));
    }

    /// Draws the status line (if any) and the prompt line, from the start of a blank line.
    fn draw(&self, out: &mut String) {
        let status = self.status.take();
        if let Some(s) = &status {
            out.extend(fit(s, columns().saturating_sub(1)));
            out.push_str("\r\n");
        }
        self.status.set(status);
        self.draw_prompt(out);
    }

    /// Draws the prompt line again, the cursor in place.
    fn draw_prompt(&self, out: &mut String) {
        let prompt: String = fit(&self.prompt, columns().saturating_sub(2)).collect();
        let room = columns()
            .saturating_sub(1)
            .saturating_sub(prompt.width())
            .max(1);
        let (shown, column) = self.editor.view(room);
        let column = prompt.width() + column;
        let _ = write!(
            out,
            "\r{prompt}{shown}{}{}",
            Clear(ClearType::UntilNewLine),
            MoveToColumn(u16::try_from(column).unwrap_or(u16::MAX))
        );
    }
}

impl Drop for Raw {
    fn drop(&mut self) {
        // Take the status and prompt off the screen, so that what is printed after the chat
        // starts on a clean line.
        let mut out = String::new();
        self.clear(&mut out);
        emit(&out);
    }
}

/// The characters of `s` that fit in `width` columns.
fn fit(s: &str, width: usize) -> impl Iterator<Item = char> + '_ {
    let mut used = 0;
    s.chars().take_while(move |c| {
        used += c.width().unwrap_or(0);
        used <= width
    })
}

/// The terminal's width in columns.
fn columns() -> usize {
    match crossterm::terminal::size() {
        Ok((cols, _)) if cols > 0 => usize::from(cols),
        _ => 80,
    }
}

/// Writes to stdout; a closed stdout is not worth a panic.
fn emit(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn typed(editor: &mut Editor, text: &str) -> Vec<Option<Input>> {
        text.chars().map(|c| editor.key(Key::Char(c))).collect()
    }

    #[test]
    fn typing_edits_and_enter_gives_the_line() {
        let mut e = Editor::default();
        assert!(
            typed(&mut e, "hi there")
                .iter()
                .all(|i| *i == Some(Input::Edited))
        );
        assert_eq!(e.text(), "hi there");
        assert_eq!(e.key(Key::Enter), Some(Input::Line("hi there".into())));
        assert_eq!(e.text(), "");
        assert_eq!(e.key(Key::Enter), Some(Input::Line(String::new())));
    }

    #[test]
    fn backspace_removes_whole_characters() {
        let mut e = Editor::default();
        typed(&mut e, "né😀");
        assert_eq!(e.key(Key::Backspace), Some(Input::Edited));
        assert_eq!(e.text(), "né");
        assert_eq!(e.key(Key::Backspace), Some(Input::Edited));
        assert_eq!(e.text(), "n");
        assert_eq!(e.key(Key::Backspace), Some(Input::Edited));
        assert_eq!(e.key(Key::Backspace), None, "nothing left to delete");
        assert_eq!(e.text(), "");
    }

    #[test]
    fn ctrl_d_ends_only_an_empty_line() {
        let mut e = Editor::default();
        typed(&mut e, "ab");
        assert_eq!(
            e.key(Key::EndOfInput),
            None,
            "cursor at the end: nothing to delete"
        );
        assert_eq!(e.key(Key::Left), None);
        assert_eq!(e.key(Key::EndOfInput), Some(Input::Edited));
        assert_eq!(e.text(), "a");
        assert_eq!(e.key(Key::ClearLine), Some(Input::Edited));
        assert_eq!(e.text(), "");
        assert_eq!(e.key(Key::ClearLine), None);
        assert_eq!(e.key(Key::EndOfInput), Some(Input::Eof));
    }

    #[test]
    fn ctrl_c_ends_even_with_text() {
        let mut e = Editor::default();
        typed(&mut e, "half a thought");
        assert_eq!(e.key(Key::Interrupt), Some(Input::Eof));
    }

    #[test]
    fn control_characters_are_not_typed() {
        let mut e = Editor::default();
        assert_eq!(e.key(Key::Char('\u{1b}')), None);
        assert_eq!(e.key(Key::Char('\t')), None);
        assert_eq!(e.text(), "");
    }

    #[test]
    fn cursor_moves_and_edits_in_the_middle() {
        let mut e = Editor::default();
        typed(&mut e, "hllo");
        assert_eq!(e.key(Key::Home), None);
        assert_eq!(e.key(Key::Right), None);
        assert_eq!(e.key(Key::Char('e')), Some(Input::Edited));
        assert_eq!(e.text(), "hello");
        assert_eq!(e.key(Key::End), None);
        assert_eq!(e.key(Key::Right), None, "already at the end");
        typed(&mut e, "!");
        assert_eq!(e.text(), "hello!");
        e.key(Key::Home);
        assert_eq!(e.key(Key::Left), None, "already at the start");
        assert_eq!(e.key(Key::Backspace), None, "nothing before the cursor");
        assert_eq!(e.key(Key::Delete), Some(Input::Edited));
        assert_eq!(e.text(), "ello!");
        assert_eq!(e.key(Key::Enter), Some(Input::Line("ello!".into())));
    }

    #[test]
    fn view_keeps_the_cursor_in_sight() {
        let mut e = Editor::default();
        typed(&mut e, "abcdefghij");
        assert_eq!(e.view(20), ("abcdefghij".to_string(), 10));
        assert_eq!(e.view(4), ("ghij".to_string(), 4));
        e.key(Key::Home);
        assert_eq!(e.view(4), ("abcd".to_string(), 0));
        e.key(Key::Right);
        e.key(Key::Right);
        assert_eq!(e.view(4), ("abcd".to_string(), 2));
    }

    #[test]
    fn view_counts_wide_characters_as_two_columns() {
        let mut e = Editor::default();
        typed(&mut e, "a日本");
        assert_eq!(e.view(10), ("a日本".to_string(), 5));
        assert_eq!(e.view(4), ("日本".to_string(), 4));
        assert_eq!(e.view(3), ("本".to_string(), 2));
    }

    #[test]
    fn terminal_keys_map_to_editing_keys() {
        let ctrl = |c| KeyEvent::new(KeyCode::Char(c), KeyModifiers::CONTROL);
        assert_eq!(Key::of(ctrl('c')), Some(Key::Interrupt));
        assert_eq!(Key::of(ctrl('d')), Some(Key::EndOfInput));
        assert_eq!(Key::of(ctrl('u')), Some(Key::ClearLine));
        assert_eq!(Key::of(ctrl('x')), None);
        assert_eq!(
            Key::of(KeyEvent::new(KeyCode::Char('É'), KeyModifiers::SHIFT)),
            Some(Key::Char('É'))
        );
        assert_eq!(
            Key::of(KeyEvent::new(KeyCode::Backspace, KeyModifiers::NONE)),
            Some(Key::Backspace)
        );
        assert_eq!(
            Key::of(KeyEvent::new(KeyCode::Enter, KeyModifiers::NONE)),
            Some(Key::Enter)
        );
        let mut release = KeyEvent::new(KeyCode::Char('a'), KeyModifiers::NONE);
        release.kind = KeyEventKind::Release;
        assert_eq!(Key::of(release), None);
    }

    #[test]
    fn fit_cuts_at_the_width() {
        assert_eq!(fit("bob is typing…", 6).collect::<String>(), "bob is");
        assert_eq!(fit("日本", 3).collect::<String>(), "日");
        assert_eq!(fit("ok", 10).collect::<String>(), "ok");
    }
}
