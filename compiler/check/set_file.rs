//! Sets read from files: `set blocklist = file "blocklist.txt";`. The file holds one
//! element a line, in the formats threat feeds and allowlists use: an address
//! (`192.0.2.7`, `2001:db8::1`), a prefix (`198.51.100.0/24`), an integer (a port, a uid)
//! or an inclusive range (`8000..8099`). Blank lines and comments (`#` or `//` to the
//! end of the line, and `;` after an element, as in Spamhaus' DROP list) are skipped.
//! A malformed line is an error with its file, line and column.
//!
//! The elements become a `hir::Test::InFile`: the set is always a map, whatever its
//! size, because `skpc run` replaces its contents when the file changes, without
//! loading a new program (docs/operations.md).

use std::io::Read;
use std::path::{Path, PathBuf};

use logos::Logos;

use super::values::Val;
use super::Checker;
use crate::diag::{Code, Diag};
use crate::hir::FileSet;
use crate::syntax::ast;
use crate::syntax::lexer::Tok;
use crate::syntax::Span;

/// The largest set file read, in bytes (a feed of 4 million prefixes is about 80 MB).
pub const MAX_SET_FILE_BYTES: u64 = 256 << 20;

/// What a file set declaration resolved to, for `in`.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct LoadedSet {
    /// Index in `hir::Policy::file_sets`.
    pub id: usize,
    /// The elements, each with the span of the `file "..."` (they have none in the policy).
    pub elems: Vec<(Val, Span)>,
}

/// A malformed line of a set file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct LineError {
    /// 1-based line and character column.
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// The elements of a set file's text, in file order.
pub(super) fn parse_set_file(text: &str) -> Result<Vec<Val>, LineError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        // `;` starts a comment after an element (Spamhaus: `1.2.3.0/24 ; SBL123`).
        let content = line.split(';').next().unwrap_or("");
        let mut lexer = Tok::lexer(content);
        let mut toks: Vec<(Tok, usize)> = Vec::with_capacity(3);
        while let Some(t) = lexer.next() {
            let at = lexer.span().start;
            match t {
                Ok(tok) => toks.push((tok, at)),
                Err(_) => {
                    return Err(LineError {
                        line: i + 1,
                        column: column(line, at),
                        message: format!(
                            "`{}` is not an address, prefix, integer or range",
                            lexer.slice()
                        ),
                    })
                }
            }
        }
        let bad = |at: usize, what: &str| LineError {
            line: i + 1,
            column: column(line, at),
            message: what.to_string(),
        };
        let val = match toks.as_slice() {
            [] => continue,
            [(Tok::Ip(ip), _)] => Val::Ip(*ip),
            [(Tok::Int(v), _)] => Val::Int(*v),
            [(Tok::Int(lo), _), (Tok::DotDot, _), (Tok::Int(hi), at)] => {
                if lo > hi {
                    return Err(bad(*at, &format!("the range {lo}..{hi} is reversed")));
                }
                Val::Range(*lo, *hi)
            }
            [(_, at)] => {
                return Err(bad(
                    *at,
                    "expected an address, a prefix, an integer or a range `a..b`",
                ))
            }
            [_, (_, at), ..] => {
                return Err(bad(
                    *at,
                    "one element a line: this is a second one (comments start with `#`)",
                ))
            }
        };
        out.push(val);
    }
    Ok(out)
}

/// The 1-based character column of byte `at` of `line`.
fn column(line: &str, at: usize) -> usize {
    line.get(..at).map_or(at, |s| s.chars().count()) + 1
}

/// Reads a set file: a regular file of at most [`MAX_SET_FILE_BYTES`], UTF-8.
fn read_set_file(path: &Path) -> Result<String, String> {
    let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("it is not a regular file".into());
    }
    if meta.len() > MAX_SET_FILE_BYTES {
        return Err(format!(
            "it is {} bytes, more than the {MAX_SET_FILE_BYTES} a set file may have",
            meta.len()
        ));
    }
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_SET_FILE_BYTES).read_to_string(&mut text))
        .map_err(|e| e.to_string())?;
    Ok(text)
}

impl Checker {
    /// `set NAME = file "PATH";`: reads and parses the file.
    pub(super) fn file_set(&mut self, name: &ast::Ident, path: &[u8], span: Span) -> Option<Val> {
        let written = String::from_utf8_lossy(path).into_owned();
        let resolved: PathBuf = match &self.base_dir {
            Some(dir) if Path::new(&written).is_relative() => dir.join(&written),
            _ => PathBuf::from(&written),
        };
        // On an error the name is still declared (empty), so that its uses are not
        // reported as unknown names as well.
        let text = match read_set_file(&resolved) {
            Ok(t) => t,
            Err(why) => {
                self.err(
                    Diag::new(
                        Code::SetFileUnreadable,
                        format!("cannot read the set file {}: {why}", resolved.display()),
                        span,
                    )
                    .label("read here")
                    .help("a relative path is relative to the policy file's directory; check the name and permissions"),
                );
                String::new()
            }
        };
        let vals = match parse_set_file(&text) {
            Ok(v) => v,
            Err(e) => {
                self.err(
                    Diag::new(
                        Code::SetFileLine,
                        format!(
                            "{}:{}:{}: {}",
                            resolved.display(),
                            e.line,
                            e.column,
                            e.message
                        ),
                        span,
                    )
                    .label("in this file")
                    .help("one address, prefix (`10.0.0.0/8`), integer or range (`8000..8099`) a line; `#` starts a comment"),
                );
                Vec::new()
            }
        };
        let id = self.file_sets.len();
        self.file_sets.push(FileSet {
            name: name.node.to_string(),
            path: resolved,
            span,
            elements: vals.len(),
        });
        self.loaded_sets.push(LoadedSet {
            id,
            elems: vals.into_iter().map(|v| (v, span)).collect(),
        });
        Some(Val::FileSet(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::syntax::lexer::IpLit;

    #[test]
    fn feeds_parse_with_their_comments() {
        let text = "# FireHOL level1\n\n10.0.0.0/8\n192.0.2.7 ; SBL123\n  2001:db8::/32 # doc\n80\n8000..8099\n";
        let v = parse_set_file(text).expect("parses");
        assert_eq!(v.len(), 5);
        assert!(matches!(v[0], Val::Ip(IpLit::V4(_, Some(8)))));
        assert!(matches!(v[1], Val::Ip(IpLit::V4(_, None))));
        assert!(matches!(v[2], Val::Ip(IpLit::V6(_, Some(32)))));
        assert_eq!(v[3], Val::Int(80));
        assert_eq!(v[4], Val::Range(8000, 8099));
    }

    #[test]
    fn a_bad_line_says_where() {
        let e = parse_set_file("10.0.0.1\n  10.0.0.300\n").unwrap_err();
        assert_eq!((e.line, e.column), (2, 3), "{e:?}");
        let e = parse_set_file("1.2.3.4 5.6.7.8\n").unwrap_err();
        assert_eq!((e.line, e.column), (1, 9), "{e:?}");
        assert!(e.message.contains("one element a line"), "{e:?}");
        let e = parse_set_file("9..3\n").unwrap_err();
        assert!(e.message.contains("reversed"), "{e:?}");
        let e = parse_set_file("\"x\"\n").unwrap_err();
        assert_eq!((e.line, e.column), (1, 1), "{e:?}");
    }
}
