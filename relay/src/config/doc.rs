//! The documentation of the settings, rendered from their table: the settings table and the
//! sample file in docs/OPERATIONS.md, each between two marker comments. A test checks that the
//! document holds what is rendered here; running it with `HUSH_UPDATE_DOCS=1` rewrites them.

use std::fmt::Write;

use super::settings::{Config, Setting, all};
use super::value::readable;

/// A generated part of docs/OPERATIONS.md: its marker comments and its content.
pub(crate) struct Section {
    /// The line before it.
    pub(crate) begin: &'static str,
    /// The line after it.
    pub(crate) end: &'static str,
    /// What is between them.
    pub(crate) content: String,
}

/// The generated parts of docs/OPERATIONS.md.
pub(crate) fn sections() -> [Section; 2] {
    [
        Section {
            begin: "<!-- settings-table: generated from relay/src/config/settings.rs -->",
            end: "<!-- /settings-table -->",
            content: table(),
        },
        Section {
            begin: "<!-- settings-sample: generated from relay/src/config/settings.rs -->",
            end: "<!-- /settings-sample -->",
            content: format!("```toml\n{}```", sample()),
        },
    ]
}

/// A setting's doc comment as one line.
fn doc_line(s: &Setting) -> String {
    s.doc.lines().map(str::trim).collect::<Vec<_>>().join(" ")
}

/// The default as the documentation shows it: readable where the raw number is not.
fn doc_default(s: &Setting) -> String {
    let text = s.field.text(&Config::default());
    readable(s.value_name, &text).unwrap_or(text)
}

/// The settings table (Markdown).
pub(crate) fn table() -> String {
    let mut out = String::from(
        "| setting in the file | flag / environment variable | default | meaning |\n|---|---|---|---|\n",
    );
    for s in all() {
        let _ = writeln!(
            out,
            "| `{}` | `{}` / `{}` | `{}` | {} |",
            s.toml_key(),
            s.flag(),
            s.env(),
            doc_default(&s),
            doc_line(&s),
        );
    }
    out
}

/// The sample settings file: every setting at its default, each with its help line, flag and
/// environment variable as comments.
pub(crate) fn sample() -> String {
    let defaults = Config::default();
    let mut out = String::new();
    let mut open_table: Option<&str> = None;
    for s in all() {
        let value = s.field.toml(&defaults);
        let comment = format!("# {}\n# {}, {}\n", s.help, s.flag(), s.env());
        match (value, s.table) {
            (toml::Value::Table(fields), _) => {
                let _ = write!(out, "\n{comment}[{}]\n", s.toml_key());
                for (k, v) in fields {
                    let _ = writeln!(out, "{k} = {v}");
                }
                open_table = None;
            }
            (value, table) => {
                if let Some(t) = table.filter(|t| open_table != Some(*t)) {
                    let _ = write!(out, "\n[{t}]\n");
                    open_table = Some(t);
                }
                let note = readable(s.value_name, &s.field.text(&defaults))
                    .map(|r| format!("  # {r}"))
                    .unwrap_or_default();
                let _ = write!(out, "\n{comment}{} = {value}{note}\n", s.key);
            }
        }
    }
    out.trim_start().to_string()
}
