//! The lexer (logos): source text to tokens with byte spans.
//!
//! Literals are decoded here (integers, addresses, CIDR prefixes, strings with escapes),
//! so that a malformed literal is reported once, at its own span, with the fix.

use std::net::{Ipv4Addr, Ipv6Addr};

use logos::Logos;

use super::ast::Name;
use super::span::Span;

/// Why a piece of the source is not a token.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum LexError {
    #[default]
    UnexpectedChar,
    IntTooLarge,
    BadAddress(String),
    BadPrefix {
        max: u8,
    },
    BadEscape(String),
    UnterminatedString,
}

/// A CIDR prefix literal `ADDR/LEN` as written (host bits are checked later).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IpLit {
    V4(Ipv4Addr, Option<u8>),
    V6(Ipv6Addr, Option<u8>),
}

#[derive(Logos, Clone, Debug, PartialEq, Eq)]
#[logos(error = LexError)]
#[logos(skip r"[ \t\r\n\f]+")]
#[logos(skip(r"(#|//)[^\n]*", allow_greedy = true))]
pub enum Tok {
    // Keywords.
    #[token("const")]
    Const,
    #[token("set")]
    Set,
    #[token("file")]
    File,
    #[token("test")]
    Test,
    #[token("expect")]
    Expect,
    #[token("pass")]
    Pass,
    #[token("drop")]
    Drop,
    #[token("discard")]
    Discard,
    #[token("reply")]
    Reply,
    #[token("redirect")]
    Redirect,
    #[token("ingress")]
    Ingress,
    #[token("to")]
    To,
    #[token("sock")]
    Sock,
    #[token("peer")]
    Peer,
    #[token("for")]
    For,
    #[token("cork")]
    Cork,
    #[token("count")]
    Count,
    #[token("log")]
    Log,
    #[token("default")]
    Default,
    #[token("if")]
    If,
    #[token("and")]
    And,
    #[token("or")]
    Or,
    #[token("not")]
    Not,
    #[token("in")]
    In,
    #[token("starts")]
    Starts,
    #[token("ends")]
    Ends,
    #[token("with")]
    With,
    #[token("true")]
    True,
    #[token("false")]
    False,

    // Punctuation.
    #[token(";")]
    Semi,
    #[token(",")]
    Comma,
    #[token("{")]
    LBrace,
    #[token("}")]
    RBrace,
    #[token("(")]
    LParen,
    #[token(")")]
    RParen,
    #[token("[")]
    LBracket,
    #[token("]")]
    RBracket,
    #[token(".")]
    Dot,
    #[token("..")]
    DotDot,
    #[token("==")]
    EqEq,
    #[token("!=")]
    Ne,
    #[token("<")]
    Lt,
    #[token("<=")]
    Le,
    #[token(">")]
    Gt,
    #[token(">=")]
    Ge,
    #[token("=")]
    Assign,

    // Literals.
    #[regex(r"[0-9][0-9_]*", decimal)]
    #[regex(r"0[xX][0-9a-fA-F_]+", hexadecimal)]
    Int(u64),
    /// `KiB`, `MiB`, `GiB`: the multiplier.
    #[token("KiB", |_| 1u64 << 10)]
    #[token("MiB", |_| 1u64 << 20)]
    #[token("GiB", |_| 1u64 << 30)]
    Unit(u64),
    #[regex(r"[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+(/[0-9]+)?", ipv4)]
    #[regex(
        r"[0-9a-fA-F]*:[0-9a-fA-F:]*([0-9]+\.[0-9]+\.[0-9]+\.[0-9]+)?(/[0-9]+)?",
        ipv6
    )]
    Ip(IpLit),
    #[regex(r#""([^"\\\n]|\\.)*""#, string)]
    #[regex(r#""([^"\\\n]|\\.)*"#, |_| Err(LexError::UnterminatedString))]
    Str(Vec<u8>),
    #[regex(r"[A-Za-z_][A-Za-z0-9_]*", ident)]
    Ident(Name),
}

/// Names that policies use all the time (the parts of the fields' names and the family
/// constants) are kept as static strings.
fn ident(lex: &mut logos::Lexer<Tok>) -> Name {
    let text = lex.slice();
    match crate::fields::interned(text) {
        Some(n) => Name::Borrowed(n),
        None => Name::Owned(text.to_string()),
    }
}

fn decimal(lex: &mut logos::Lexer<Tok>) -> Result<u64, LexError> {
    parse_digits(lex.slice(), 10)
}

fn hexadecimal(lex: &mut logos::Lexer<Tok>) -> Result<u64, LexError> {
    parse_digits(&lex.slice()[2..], 16)
}

fn parse_digits(text: &str, radix: u32) -> Result<u64, LexError> {
    let mut value: u64 = 0;
    for c in text.chars().filter(|&c| c != '_') {
        let d = c.to_digit(radix).ok_or(LexError::UnexpectedChar)? as u64;
        value = value
            .checked_mul(radix as u64)
            .and_then(|v| v.checked_add(d))
            .ok_or(LexError::IntTooLarge)?;
    }
    Ok(value)
}

fn split_prefix(text: &str, max: u8) -> Result<(&str, Option<u8>), LexError> {
    match text.split_once('/') {
        None => Ok((text, None)),
        Some((addr, len)) => match len.parse::<u8>() {
            Ok(n) if n <= max => Ok((addr, Some(n))),
            _ => Err(LexError::BadPrefix { max }),
        },
    }
}

fn ipv4(lex: &mut logos::Lexer<Tok>) -> Result<IpLit, LexError> {
    let (addr, prefix) = split_prefix(lex.slice(), 32)?;
    let a = addr
        .parse::<Ipv4Addr>()
        .map_err(|_| LexError::BadAddress(addr.to_string()))?;
    Ok(IpLit::V4(a, prefix))
}

fn ipv6(lex: &mut logos::Lexer<Tok>) -> Result<IpLit, LexError> {
    let (addr, prefix) = split_prefix(lex.slice(), 128)?;
    let a = addr
        .parse::<Ipv6Addr>()
        .map_err(|_| LexError::BadAddress(addr.to_string()))?;
    Ok(IpLit::V6(a, prefix))
}

fn string(lex: &mut logos::Lexer<Tok>) -> Result<Vec<u8>, LexError> {
    let s = lex.slice();
    unescape(&s[1..s.len() - 1])
}

/// The inverse of [`unescape`]: `bytes` as the body of a string literal, with `\r \n \t
/// \\ \"` and `\xNN` for every other byte outside printable ASCII.
pub fn escape(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        match b {
            b'\r' => out.push_str("\\r"),
            b'\n' => out.push_str("\\n"),
            b'\t' => out.push_str("\\t"),
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            0x20..=0x7e => out.push(b as char),
            _ => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    out
}

/// Decodes `\r \n \t \0 \\ \" \xNN`; any other escape is an error naming it.
pub fn unescape(body: &str) -> Result<Vec<u8>, LexError> {
    let mut out = Vec::with_capacity(body.len());
    let mut bytes = body.bytes();
    while let Some(b) = bytes.next() {
        if b != b'\\' {
            out.push(b);
            continue;
        }
        match bytes.next() {
            Some(b'r') => out.push(b'\r'),
            Some(b'n') => out.push(b'\n'),
            Some(b't') => out.push(b'\t'),
            Some(b'0') => out.push(0),
            Some(b'\\') => out.push(b'\\'),
            Some(b'"') => out.push(b'"'),
            Some(b'x') => {
                let hi = bytes.next();
                let lo = bytes.next();
                let hex = |c: Option<u8>| c.and_then(|c| (c as char).to_digit(16));
                match (hex(hi), hex(lo)) {
                    (Some(h), Some(l)) => out.push((h * 16 + l) as u8),
                    _ => return Err(LexError::BadEscape("\\x".to_string())),
                }
            }
            Some(other) => {
                return Err(LexError::BadEscape(format!(
                    "\\{}",
                    String::from_utf8_lossy(&[other])
                )))
            }
            None => return Err(LexError::BadEscape("\\".to_string())),
        }
    }
    Ok(out)
}

/// Tokens with their start and end byte offsets, as the parser takes them.
pub type Tokens = Vec<(usize, Tok, usize)>;
/// Lexer errors with their spans.
pub type LexErrors = Vec<(Span, LexError)>;

/// Lexes the whole source: the tokens, and every error with its span.
pub fn lex(source: &str) -> (Tokens, LexErrors) {
    let mut stream = TokenStream::new(source);
    let tokens = stream.by_ref().collect();
    (tokens, stream.errors)
}

/// The tokens of a source one at a time, as the parser takes them (a policy of 100k
/// rules has over a million tokens: no list of them is built); the errors are kept
/// aside in [`TokenStream::errors`], in source order.
pub struct TokenStream<'s> {
    lexer: logos::Lexer<'s, Tok>,
    /// Every error so far, with its span.
    pub errors: LexErrors,
}

impl<'s> TokenStream<'s> {
    pub fn new(source: &'s str) -> TokenStream<'s> {
        TokenStream {
            lexer: Tok::lexer(source),
            errors: Vec::new(),
        }
    }
}

impl Iterator for TokenStream<'_> {
    type Item = (usize, Tok, usize);

    fn next(&mut self) -> Option<(usize, Tok, usize)> {
        loop {
            let result = self.lexer.next()?;
            let r = self.lexer.span();
            let e = match result {
                Ok(tok) => return Some((r.start, tok, r.end)),
                Err(e) => e,
            };
            // A malformed literal still stands where it was, as a placeholder of its
            // kind, so that the parser does not report the gap as a second error.
            let text = self.lexer.slice();
            let placeholder = match &e {
                LexError::IntTooLarge => Some(Tok::Int(0)),
                LexError::BadAddress(_) | LexError::BadPrefix { .. } => {
                    let prefix = text.contains('/').then_some(0);
                    Some(Tok::Ip(if text.contains(':') {
                        IpLit::V6(Ipv6Addr::UNSPECIFIED, prefix)
                    } else {
                        IpLit::V4(Ipv4Addr::UNSPECIFIED, prefix)
                    }))
                }
                LexError::BadEscape(_) | LexError::UnterminatedString => Some(Tok::Str(Vec::new())),
                LexError::UnexpectedChar => None,
            };
            // A run of unexpected characters (binary junk) is one error, not one per byte.
            let merged = match (&e, self.errors.last_mut()) {
                (LexError::UnexpectedChar, Some((last, LexError::UnexpectedChar)))
                    if last.end == r.start =>
                {
                    last.end = r.end;
                    true
                }
                _ => false,
            };
            if !merged {
                self.errors.push((Span::new(r.start, r.end), e));
            }
            if let Some(tok) = placeholder {
                return Some((r.start, tok, r.end));
            }
        }
    }
}

impl std::fmt::Display for Tok {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self {
            Tok::Int(v) => return write!(f, "integer `{v}`"),
            Tok::Unit(_) => "unit suffix",
            Tok::Ip(_) => "address",
            Tok::Str(_) => "string",
            Tok::Ident(name) => return write!(f, "`{name}`"),
            other => return write!(f, "`{}`", other.text()),
        };
        f.write_str(s)
    }
}

impl Tok {
    /// The fixed text of a keyword or punctuation token.
    pub fn text(&self) -> &'static str {
        match self {
            Tok::Const => "const",
            Tok::Set => "set",
            Tok::File => "file",
            Tok::Test => "test",
            Tok::Expect => "expect",
            Tok::Pass => "pass",
            Tok::Drop => "drop",
            Tok::Discard => "discard",
            Tok::Reply => "reply",
            Tok::Redirect => "redirect",
            Tok::Ingress => "ingress",
            Tok::To => "to",
            Tok::Sock => "sock",
            Tok::Peer => "peer",
            Tok::For => "for",
            Tok::Cork => "cork",
            Tok::Count => "count",
            Tok::Log => "log",
            Tok::Default => "default",
            Tok::If => "if",
            Tok::And => "and",
            Tok::Or => "or",
            Tok::Not => "not",
            Tok::In => "in",
            Tok::Starts => "starts",
            Tok::Ends => "ends",
            Tok::With => "with",
            Tok::True => "true",
            Tok::False => "false",
            Tok::Semi => ";",
            Tok::Comma => ",",
            Tok::LBrace => "{",
            Tok::RBrace => "}",
            Tok::LParen => "(",
            Tok::RParen => ")",
            Tok::LBracket => "[",
            Tok::RBracket => "]",
            Tok::Dot => ".",
            Tok::DotDot => "..",
            Tok::EqEq => "==",
            Tok::Ne => "!=",
            Tok::Lt => "<",
            Tok::Le => "<=",
            Tok::Gt => ">",
            Tok::Ge => ">=",
            Tok::Assign => "=",
            Tok::Int(_) | Tok::Unit(_) | Tok::Ip(_) | Tok::Str(_) | Tok::Ident(_) => "",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(s: &str) -> Vec<Tok> {
        let (t, e) = lex(s);
        assert!(e.is_empty(), "{e:?}");
        t.into_iter().map(|(_, t, _)| t).collect()
    }

    #[test]
    fn integers_with_separators_and_units() {
        assert_eq!(
            toks("1_000 0x1F 64KiB"),
            vec![Tok::Int(1000), Tok::Int(31), Tok::Int(64), Tok::Unit(1024)]
        );
        assert_eq!(lex("99999999999999999999").1[0].1, LexError::IntTooLarge);
    }

    #[test]
    fn addresses_and_prefixes() {
        assert_eq!(
            toks("10.0.0.0/8"),
            vec![Tok::Ip(IpLit::V4(Ipv4Addr::new(10, 0, 0, 0), Some(8)))]
        );
        assert_eq!(
            toks("::1"),
            vec![Tok::Ip(IpLit::V6(Ipv6Addr::LOCALHOST, None))]
        );
        assert_eq!(
            toks("fd00::/8"),
            vec![Tok::Ip(IpLit::V6("fd00::".parse().unwrap(), Some(8)))]
        );
        assert_eq!(
            toks("::ffff:1.2.3.4"),
            vec![Tok::Ip(IpLit::V6("::ffff:1.2.3.4".parse().unwrap(), None))]
        );
        assert_eq!(lex("10.0.0.0/33").1[0].1, LexError::BadPrefix { max: 32 });
        assert!(matches!(lex("300.1.1.1").1[0].1, LexError::BadAddress(_)));
    }

    #[test]
    fn ranges_are_not_addresses() {
        assert_eq!(toks("1..5"), vec![Tok::Int(1), Tok::DotDot, Tok::Int(5)]);
        assert_eq!(
            toks("payload[0..4]"),
            vec![
                Tok::Ident("payload".into()),
                Tok::LBracket,
                Tok::Int(0),
                Tok::DotDot,
                Tok::Int(4),
                Tok::RBracket
            ]
        );
    }

    #[test]
    fn strings_and_escapes() {
        assert_eq!(
            toks(r#""a\r\n\t\\\"\x41""#),
            vec![Tok::Str(b"a\r\n\t\\\"A".to_vec())]
        );
        assert!(matches!(lex(r#""\q""#).1[0].1, LexError::BadEscape(_)));
        assert_eq!(lex("\"abc").1[0].1, LexError::UnterminatedString);
    }

    #[test]
    fn comments_and_keywords() {
        assert_eq!(toks("drop # x\n// y\nif"), vec![Tok::Drop, Tok::If]);
        assert_eq!(
            toks("remote.port"),
            vec![
                Tok::Ident("remote".into()),
                Tok::Dot,
                Tok::Ident("port".into())
            ]
        );
    }
}
