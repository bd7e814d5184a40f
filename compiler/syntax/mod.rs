//! Syntax: lexer (logos), parser (lalrpop, grammar/skp.lalrpop), AST with spans.
//! `parse` never panics; it returns the AST of every item that parsed and a diagnostic
//! for every item that did not.

pub mod ast;
pub mod lexer;
mod span;

pub use span::{Span, Spanned};

use lalrpop_util::{lalrpop_mod, ParseError};

use crate::diag::{Code, Diag};
use lexer::{LexError, Tok};

lalrpop_mod!(
    #[allow(
        clippy::all,
        clippy::pedantic,
        unused_parens,
        unused_imports,
        dead_code
    )]
    grammar,
    "/skp.rs"
);

/// `first` and the boxed conditions after it, unboxed into one list (the parser's
/// `and`/`or` chains; grammar/skp.lalrpop says why conditions travel boxed there).
#[allow(clippy::boxed_local, clippy::vec_box)]
fn chain(first: Box<ast::Cond>, rest: Vec<Box<ast::Cond>>) -> Vec<ast::Cond> {
    let mut all = Vec::with_capacity(1 + rest.len());
    all.push(*first);
    all.extend(rest.into_iter().map(|c| *c));
    all
}

/// Deepest nesting of parentheses, `not`s and braces a policy may use. The limit keeps
/// every later pass (which may recurse over conditions) far from the stack's end.
pub const MAX_NESTING: usize = 64;

/// Parses a policy: the AST (of every item that parsed) and the diagnostics.
pub fn parse(source: &str) -> (ast::Policy, Vec<Diag>) {
    // The parser takes the tokens straight from the lexer; the stream watches the nesting
    // on the way and ends early (an end of file for the parser) at the first token that
    // nests too deep.
    let mut stream = Guarded::new(source);
    let mut recovered = Vec::new();
    let result = grammar::PolicyParser::new().parse(&mut recovered, &mut stream);
    // The parser may stop before the end (an error it cannot recover from): the rest of
    // the source still counts for the lexer's errors and the nesting limit.
    while stream.next().is_some() {}
    let mut diags: Vec<Diag> = Vec::new();
    if stream.nesting.is_some() {
        // Too deep: the nesting error alone (after the lexer's), no parse.
        stream.tokens.by_ref().for_each(drop);
    }
    let Guarded {
        tokens,
        semis,
        nesting,
        ..
    } = stream;
    let lex_errors = tokens.errors;
    diags.extend(
        lex_errors
            .iter()
            .map(|(span, e)| lex_diag(source, *span, e)),
    );
    if let Some(d) = nesting {
        diags.push(d);
        return (ast::Policy { items: Vec::new() }, diags);
    }
    // A syntax error between a lexer error and the end of its statement (the next `;`)
    // is most likely that error's consequence (a dropped `@`, a string that swallowed the
    // `;`): report the lexer error alone.
    // Both lists are in source order, so each lookup is a binary search (no quadratic
    // time on inputs with many errors).
    let muted: Vec<(usize, usize)> = lex_errors
        .iter()
        .map(|(span, _)| {
            let i = semis.partition_point(|&l| l < span.end);
            (span.start, semis.get(i).copied().unwrap_or(usize::MAX))
        })
        .collect();
    let mut parse_diags: Vec<Diag> = recovered
        .into_iter()
        .map(|r| parse_diag(source, r.error))
        .collect();
    let policy = match result {
        Ok(p) => p,
        Err(e) => {
            parse_diags.push(parse_diag(source, e));
            ast::Policy { items: Vec::new() }
        }
    };
    // `muted` is sorted by start and its ends never decrease: the last range starting at
    // or before a diagnostic is the only one that can contain it.
    parse_diags.retain(|d| {
        let i = muted.partition_point(|&(lo, _)| lo <= d.span.start);
        i == 0 || muted[i - 1].1 < d.span.start
    });
    diags.extend(parse_diags);
    (policy, diags)
}

/// The lexer's tokens as the parser takes them, with what `parse` needs to know about
/// them afterwards: where the `;`s are, and the first token nested deeper than
/// [`MAX_NESTING`] (at which the stream ends, before the parser builds a deep tree).
struct Guarded<'s> {
    tokens: lexer::TokenStream<'s>,
    /// Start offsets of the `;` tokens so far.
    semis: Vec<usize>,
    depth: usize,
    nots: usize,
    /// The nesting error, once found: the stream has ended.
    nesting: Option<Diag>,
}

impl<'s> Guarded<'s> {
    fn new(source: &'s str) -> Guarded<'s> {
        Guarded {
            tokens: lexer::TokenStream::new(source),
            semis: Vec::new(),
            depth: 0,
            nots: 0,
            nesting: None,
        }
    }
}

impl Iterator for Guarded<'_> {
    type Item = Result<(usize, Tok, usize), LexError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.nesting.is_some() {
            return None;
        }
        let (l, tok, r) = self.tokens.next()?;
        match tok {
            Tok::LParen | Tok::LBrace | Tok::LBracket => self.depth += 1,
            Tok::RParen | Tok::RBrace | Tok::RBracket => self.depth = self.depth.saturating_sub(1),
            _ => {}
        }
        self.nots = if matches!(tok, Tok::Not) {
            self.nots + 1
        } else {
            0
        };
        if self.depth + self.nots > MAX_NESTING {
            self.nesting = Some(nesting_error(l, r));
            return None;
        }
        if matches!(tok, Tok::Semi) {
            self.depth = 0;
            self.semis.push(l);
        }
        Some(Ok((l, tok, r)))
    }
}

/// Nesting deeper than [`MAX_NESTING`] at the token `l..r`.
fn nesting_error(l: usize, r: usize) -> Diag {
    Diag::new(
        Code::TooDeep,
        format!("nesting deeper than {MAX_NESTING} levels"),
        Span::new(l, r),
    )
    .label("too deep here")
    .help("split the condition into several rules, or name parts of it with `set`")
}

fn lex_diag(source: &str, span: Span, e: &LexError) -> Diag {
    let text = source.get(span.range()).unwrap_or("");
    match e {
        LexError::UnexpectedChar => Diag::new(
            Code::UnexpectedChar,
            {
                let first = text.chars().next().unwrap_or(' ').escape_debug();
                match text.chars().count() {
                    0 | 1 => format!("unexpected character `{first}`"),
                    n => format!("{n} unexpected characters, starting with `{first}`"),
                }
            },
            span,
        )
        .label("not part of the language")
        .help("comments start with `#` or `//`; strings go in double quotes"),
        LexError::IntTooLarge => Diag::new(
            Code::IntTooLarge,
            "integer literal does not fit in 64 bits",
            span,
        )
        .label("too large")
        .help(format!("the largest integer is {}", u64::MAX)),
        LexError::BadAddress(a) => Diag::new(
            Code::BadAddress,
            format!("`{a}` is not a valid IP address"),
            span,
        )
        .label("invalid address")
        .help("IPv4 is four numbers 0-255 (`10.0.0.1`); IPv6 is hex groups with `::` (`fd00::1`)"),
        LexError::BadPrefix { max } => {
            Diag::new(Code::BadAddress, "CIDR prefix length out of range", span)
                .label(format!("prefix must be 0..={max}"))
                .help(format!(
                    "write the prefix length as a number from 0 to {max}, e.g. `10.0.0.0/8`"
                ))
        }
        LexError::BadEscape(esc) => Diag::new(
            Code::BadString,
            format!("unknown escape `{esc}` in string"),
            span,
        )
        .label("bad escape")
        .help("the escapes are \\r \\n \\t \\0 \\\\ \\\" and \\xNN (two hex digits)"),
        LexError::UnterminatedString => Diag::new(Code::BadString, "unterminated string", span)
            .label("string starts here")
            .help("close the string with `\"` on the same line"),
    }
}

fn parse_diag(source: &str, e: ParseError<usize, Tok, LexError>) -> Diag {
    let expected_list = |expected: &[String]| {
        let mut names: Vec<String> = expected.iter().map(|s| pretty_expected(s)).collect();
        names.sort();
        names.dedup();
        match names.len() {
            0 => String::new(),
            1..=8 => format!("expected {}", names.join(", ")),
            _ => format!("expected one of {} and more", names[..8].join(", ")),
        }
    };
    match e {
        ParseError::InvalidToken { location } => Diag::new(
            Code::UnexpectedChar,
            "invalid token",
            Span::new(location, location + 1),
        )
        .label("here"),
        ParseError::UnrecognizedEof { location, expected } => {
            let at = location.min(source.len());
            Diag::new(Code::Syntax, "unexpected end of file", Span::new(at, at))
                .label(expected_list(&expected))
                .help("every rule and declaration ends with `;`; blocks close with `}`")
        }
        ParseError::UnrecognizedToken {
            token: (l, tok, r),
            expected,
        } => {
            let mut d = Diag::new(Code::Syntax, format!("unexpected {tok}"), Span::new(l, r))
                .label(expected_list(&expected));
            d = match &tok {
                Tok::Ident(name)
                    if ["KiB", "MiB", "GiB"]
                        .iter()
                        .any(|u| u.eq_ignore_ascii_case(name)) =>
                {
                    d.help("size units are written `KiB`, `MiB`, `GiB`, right after the number")
                }
                Tok::Ident(_) if expected.iter().any(|x| x == "\";\"") => {
                    d.help("did you forget `;` at the end of the previous rule?")
                }
                Tok::Assign if expected.iter().any(|x| x == "\"==\"") => {
                    d.help("comparisons use `==`")
                }
                Tok::Semi if expected.iter().any(|x| x == "\"default\"") => {
                    d.help("remove the extra `;` (there are no empty statements)")
                }
                _ if expected.iter().any(|x| x == "\";\"") => d.help("end the rule with `;`"),
                _ => d.help("see docs/language.md for the grammar"),
            };
            d
        }
        ParseError::ExtraToken { token: (l, tok, r) } => {
            Diag::new(Code::Syntax, format!("unexpected {tok}"), Span::new(l, r))
                .label("nothing may follow here")
        }
        ParseError::User { error } => {
            Diag::new(Code::UnexpectedChar, format!("{error:?}"), Span::new(0, 0))
        }
    }
}

fn pretty_expected(s: &str) -> String {
    match s {
        "INT" => "a number".into(),
        "IP" => "an address".into(),
        "STR" => "a string".into(),
        "IDENT" => "a name".into(),
        "UNIT" => "`KiB`/`MiB`/`GiB`".into(),
        other => format!("`{}`", other.trim_matches('"')),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_spec_example() {
        let src = r#"
const REDIS = 6379;
set web = {80, 443, 8000..8099};
set lan = {10.0.0.0/8, 192.168.0.0/16, fd00::/8};
count big_writes if len > 64KiB;
drop if port == REDIS and len > 4096;
drop if remote.ip in lan and payload[0..4] == "SET ";
redirect to sock 3 if remote.port in web and payload starts with "GET ";
redirect ingress to sock 0 if local.port == 9000;
redirect to peer if remote.ip == 127.0.0.1;
pass for 1MiB if remote.port == 443;
cork 16 if len < 16 and remote.port == 5432;
log if uid != 0 and port == 22;
default pass;
test "redis" { remote.port = 6379; len = 5000; expect drop; }
"#;
        let (p, d) = parse(src);
        assert!(d.is_empty(), "{d:?}");
        assert_eq!(p.items.len(), 14);
    }

    #[test]
    fn recovers_at_semicolons() {
        let (p, d) = parse("drop if == 1;\npass;\ndrop if len >;\n");
        assert_eq!(d.len(), 2, "{d:?}");
        assert_eq!(p.items.len(), 1);
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let src = format!(
            "drop if {}len > 1{};",
            "(".repeat(10_000),
            ")".repeat(10_000)
        );
        let (_, d) = parse(&src);
        assert_eq!(d[0].code, "E0006");
        let src = format!("drop if {} len > 1;", "not ".repeat(10_000));
        assert_eq!(parse(&src).1[0].code, "E0006");
    }

    #[test]
    fn long_flat_chains_are_fine() {
        let src = format!("drop if {};", vec!["port == 1"; 20_000].join(" or "));
        let (p, d) = parse(&src);
        assert!(d.is_empty());
        assert_eq!(p.items.len(), 1);
    }
}
