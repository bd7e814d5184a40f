//! Diagnostics: every error and warning of every pass, rendered with codespan-reporting
//! (file:line:col, the source line with the span underlined, a help line with the fix).

use codespan_reporting::diagnostic::{Diagnostic, Label};
use codespan_reporting::files::SimpleFile;
use codespan_reporting::term::{self, termcolor};

use crate::syntax::Span;

mod code;

pub use code::Code;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Warning,
    Error,
}

/// One diagnostic. `code` is stable (documented in docs/language.md) and decides the
/// severity; `help` says how to fix it where that is knowable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diag {
    pub severity: Severity,
    pub code: Code,
    pub message: String,
    pub span: Span,
    pub label: String,
    pub secondary: Vec<(Span, String)>,
    pub help: Option<String>,
    pub notes: Vec<String>,
}

impl Diag {
    /// A diagnostic with `code`'s severity.
    pub fn new(code: Code, message: impl Into<String>, span: Span) -> Diag {
        Diag {
            severity: code.severity(),
            code,
            message: message.into(),
            span,
            label: String::new(),
            secondary: Vec::new(),
            help: None,
            notes: Vec::new(),
        }
    }

    pub fn label(mut self, label: impl Into<String>) -> Diag {
        self.label = label.into();
        self
    }

    pub fn help(mut self, help: impl Into<String>) -> Diag {
        self.help = Some(help.into());
        self
    }

    pub fn note(mut self, note: impl Into<String>) -> Diag {
        self.notes.push(note.into());
        self
    }

    pub fn secondary(mut self, span: Span, label: impl Into<String>) -> Diag {
        self.secondary.push((span, label.into()));
        self
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }

    fn to_codespan(&self, source_len: usize) -> Diagnostic<()> {
        // Clamp so that a span at end-of-file still renders.
        let clamp =
            |s: Span| s.start.min(source_len)..s.end.min(source_len).max(s.start.min(source_len));
        let base = match self.severity {
            Severity::Error => Diagnostic::error(),
            Severity::Warning => Diagnostic::warning(),
        };
        let mut labels = vec![Label::primary((), clamp(self.span)).with_message(&self.label)];
        labels.extend(
            self.secondary
                .iter()
                .map(|(s, m)| Label::secondary((), clamp(*s)).with_message(m)),
        );
        let mut notes: Vec<String> = self.notes.clone();
        if let Some(h) = &self.help {
            notes.push(format!("help: {h}"));
        }
        base.with_code(self.code.as_str())
            .with_message(&self.message)
            .with_labels(labels)
            .with_notes(notes)
    }
}

/// A place in the source as a person counts it: 1-based line, 1-based column in
/// characters (not bytes), the way the rendered diagnostics show it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Position {
    pub line: u32,
    pub column: u32,
}

/// The position of byte `offset` in `source`. An offset past the end is the end (a span
/// at end-of-file); one inside a multi-byte character (no span ends there) counts as just past it.
pub fn position(source: &str, offset: usize) -> Position {
    let bytes = &source.as_bytes()[..offset.min(source.len())];
    let line_start = bytes
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |newline| newline + 1);
    let line = bytes.iter().filter(|&&b| b == b'\n').count() + 1;
    // Characters, not bytes: count every byte that starts a UTF-8 sequence (working on
    // bytes keeps an offset that is not on a character boundary from panicking).
    let column = bytes[line_start..]
        .iter()
        .filter(|&&b| b & 0xC0 != 0x80)
        .count()
        + 1;
    Position {
        line: u32::try_from(line).unwrap_or(u32::MAX),
        column: u32::try_from(column).unwrap_or(u32::MAX),
    }
}

impl Diag {
    /// Where the primary span starts and ends (`end` is just past its last character).
    pub fn range_in(&self, source: &str) -> (Position, Position) {
        (
            position(source, self.span.start),
            position(source, self.span.end.max(self.span.start)),
        )
    }

    /// The severity's name, as rendered and in JSON: `error` or `warning`.
    pub fn severity_name(&self) -> &'static str {
        sev(self)
    }
}

/// Whether to color rendered diagnostics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ColorChoice {
    Auto,
    Always,
    Never,
}

/// Renders diagnostics as plain text (for tests and snapshots).
pub fn render_plain(file_name: &str, source: &str, diags: &[Diag]) -> String {
    let file = SimpleFile::new(file_name, source);
    let config = term::Config::default();
    let mut out = String::new();
    for d in diags {
        match term::emit_into_string(&config, &file, &d.to_codespan(source.len())) {
            Ok(s) => out.push_str(&s),
            Err(e) => out.push_str(&format!(
                "{}[{}]: {} (could not render: {e})\n",
                sev(d),
                d.code,
                d.message
            )),
        }
    }
    out
}

fn sev(d: &Diag) -> &'static str {
    match d.severity {
        Severity::Error => "error",
        Severity::Warning => "warning",
    }
}

/// Writes diagnostics to stderr, colored as `color` says.
pub fn emit_stderr(file_name: &str, source: &str, diags: &[Diag], color: ColorChoice) {
    let choice = match color {
        ColorChoice::Always => termcolor::ColorChoice::Always,
        ColorChoice::Never => termcolor::ColorChoice::Never,
        ColorChoice::Auto => {
            if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
                termcolor::ColorChoice::Auto
            } else {
                termcolor::ColorChoice::Never
            }
        }
    };
    let mut stream = termcolor::StandardStream::stderr(choice);
    let file = SimpleFile::new(file_name, source);
    let config = term::Config::default();
    for d in diags {
        if term::emit_to_write_style(&mut stream, &config, &file, &d.to_codespan(source.len()))
            .is_err()
        {
            eprintln!("{}[{}]: {}", sev(d), d.code, d.message);
        }
    }
}

/// "did you mean" by edit distance: the closest candidate within a third of the length.
pub fn did_you_mean<'a>(
    name: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    // Nobody mistypes a 100-character name; and a long name against many candidates
    // would cost time for nothing.
    if name.len() > 64 {
        return None;
    }
    let limit = (name.len() / 3).max(1);
    candidates
        .into_iter()
        // The distance is at least the difference in length: skip hopeless candidates.
        .filter(|c| c.len().abs_diff(name.len()) <= limit)
        .map(|c| (levenshtein(name, c), c))
        .filter(|(d, _)| *d <= limit)
        .min()
        .map(|(_, c)| c)
}

/// Optimal-string-alignment distance: edits plus adjacent transpositions (`prot` -> `port`).
fn levenshtein(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut v = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                v = v.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = v;
        }
    }
    d[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_close_names_only() {
        assert_eq!(did_you_mean("remot", ["remote", "local"]), Some("remote"));
        assert_eq!(did_you_mean("prot", ["port", "pid"]), Some("port"));
        assert_eq!(did_you_mean("zzzzzz", ["port", "pid"]), None);
    }

    #[test]
    fn positions_count_lines_and_characters_from_one() {
        let src = "pass;\n# é\ndrop if x;";
        assert_eq!(position(src, 0), Position { line: 1, column: 1 });
        assert_eq!(position(src, 5), Position { line: 1, column: 6 });
        assert_eq!(position(src, 6), Position { line: 2, column: 1 });
        // `é` is two bytes and one column.
        assert_eq!(position(src, 10), Position { line: 2, column: 4 });
        // Inside a character: just past it; past the end: the end.
        assert_eq!(position(src, 9), Position { line: 2, column: 4 });
        assert_eq!(
            position(src, 999),
            Position {
                line: 3,
                column: 11
            }
        );
    }

    #[test]
    fn renders_file_line_and_column() {
        let d = Diag::new(Code::UnknownField, "unknown field `prot`", Span::new(8, 12))
            .help("write `port`");
        let out = render_plain("p.skp", "drop if prot == 1;\n", &[d]);
        assert!(out.contains("p.skp:1:9"), "{out}");
        assert!(out.contains("help: write `port`"), "{out}");
    }
}
