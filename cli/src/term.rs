//! The chat's terminal (plain line reading).

use tokio::io::{AsyncBufReadExt, BufReader, Lines, Stdin};

/// What the person at the keyboard did.
pub(crate) enum Input {
    /// A finished line.
    Line(String),
    /// The line being edited changed.
    #[allow(dead_code)]
    Edited,
    /// End of input.
    Eof,
}

/// The chat's terminal.
pub(crate) struct Terminal {
    lines: Lines<BufReader<Stdin>>,
}

impl Terminal {
    pub(crate) fn new(_prompt: &str) -> std::io::Result<Self> {
        Ok(Self {
            lines: BufReader::new(tokio::io::stdin()).lines(),
        })
    }

    pub(crate) async fn next(&mut self) -> Input {
        match self.lines.next_line().await {
            Ok(Some(l)) => Input::Line(l),
            _ => Input::Eof,
        }
    }

    pub(crate) fn print(&self, line: &str) {
        say!("{line}");
    }

    pub(crate) fn status(&self, status: Option<&str>) {
        if let Some(s) = status {
            say!("{s}");
        }
    }
}
