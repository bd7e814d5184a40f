//! Protocol fields: `http` as a condition, and `http.host == S`, `in {...}`,
//! `starts with S`, `ends with S` on the protocols' string fields, with a warning for a
//! string the field can never hold (longer than the parser's bound, or in the wrong case
//! of a case-folded field).

use super::values::{operand_kind, FieldRef, Operand, Val};
use super::Checker;
use crate::diag::{Code, Diag};
use crate::fields::{Case, Text};
use crate::hir::{Cond, Test, TextOp};
use crate::syntax::Span;

impl Checker {
    /// `field OP alts` for a protocol string field. Strings the field can never hold are
    /// warned about and dropped; none left is `false`.
    pub(super) fn text_test(
        &mut self,
        field: Text,
        fs: Span,
        op: TextOp,
        alts: Vec<(Vec<u8>, Span)>,
    ) -> Option<Cond> {
        let mut out = Vec::with_capacity(alts.len());
        let mut ok = true;
        for (s, span) in alts {
            if s.is_empty() {
                let help = match op {
                    TextOp::Eq => format!("a field with a value is never empty; to test that the message is of the protocol, write `{}`", field.proto().name()),
                    TextOp::StartsWith | TextOp::EndsWith => format!("every value starts and ends with the empty string; write `{}` to test that the message is of the protocol", field.proto().name()),
                };
                self.err(
                    Diag::new(
                        Code::EmptyText,
                        format!("`{}` is never compared with an empty string", field.name()),
                        span,
                    )
                    .label("empty")
                    .help(help),
                );
                ok = false;
                continue;
            }
            if s.len() as u32 > field.max_len() {
                self.err(
                    Diag::new(
                        Code::TextNeverFits,
                        format!(
                            "`{}` holds at most {} bytes; this {}-byte string never matches",
                            field.name(),
                            field.max_len(),
                            s.len()
                        ),
                        span,
                    )
                    .label("too long for the parser")
                    .secondary(
                        fs,
                        "parsed within documented bounds (docs/language.md, Protocols)",
                    )
                    .help(format!(
                        "shorten it to at most {} bytes, e.g. test a prefix with `starts with`",
                        field.max_len()
                    )),
                );
                continue;
            }
            let wrong_case = match field.case() {
                Case::Exact => false,
                Case::Upper => s.iter().any(u8::is_ascii_lowercase),
                Case::Lower => s.iter().any(u8::is_ascii_uppercase),
            };
            if wrong_case {
                let (which, fixed) = match field.case() {
                    Case::Upper => ("upper-cased", s.to_ascii_uppercase()),
                    _ => ("lower-cased", s.to_ascii_lowercase()),
                };
                self.err(
                    Diag::new(
                        Code::TextNeverFits,
                        format!("`{}` is {which}: this string never matches", field.name()),
                        span,
                    )
                    .label(format!("not {which}"))
                    .secondary(
                        fs,
                        format!("compared {which}, whatever case the message uses"),
                    )
                    .help(format!("write {}", quote(&fixed))),
                );
                continue;
            }
            out.push(s);
        }
        if !ok {
            return None;
        }
        out.sort();
        out.dedup();
        if out.is_empty() {
            return Some(Cond::Const(false));
        }
        Some(Cond::Test(Test::Text {
            field,
            op,
            alts: out,
        }))
    }

    /// `field == val` (and the right side of `!=`) for a protocol field.
    pub(super) fn text_compare(
        &mut self,
        field: FieldRef,
        fs: Span,
        val: Val,
        vs: Span,
    ) -> Option<Cond> {
        match (field, val) {
            (FieldRef::Text(t), Val::Str(s)) => self.text_test(t, fs, TextOp::Eq, vec![(s, vs)]),
            (FieldRef::Proto(p), Val::Bool(b)) => {
                let test = Cond::Test(Test::Proto(p));
                Some(if b { test } else { Cond::Not(Box::new(test)) })
            }
            (FieldRef::Text(t), other) => self.mismatch(
                &field,
                fs,
                &other,
                vs,
                &format!(
                    "compare with a string, e.g. `{} == \"{}\"`",
                    t.name(),
                    example(t)
                ),
            ),
            (_, other) => self.mismatch(
                &field,
                fs,
                &other,
                vs,
                "use it as a condition on its own, e.g. `drop if http and ...`",
            ),
        }
    }

    /// `lhs ends with rhs`.
    pub(super) fn ends_with(&mut self, l: Operand, ls: Span, r: Operand, rs: Span) -> Option<Cond> {
        let suffixes = self.string_alts(r, rs, "ends with")?;
        match l {
            Operand::Field(FieldRef::Text(t)) => self.text_test(t, ls, TextOp::EndsWith, suffixes),
            other => {
                let kind = operand_kind(&other);
                self.err(
                    Diag::new(
                        Code::EndsWithNotApplicable,
                        format!("`ends with` does not apply to {kind}"),
                        ls,
                    )
                    .label("not a protocol string field")
                    .help("`ends with` tests a protocol's string field, e.g. `tls.sni ends with \".example.com\"`"),
                );
                None
            }
        }
    }

    /// The right side of `starts with`/`ends with`: a string or a set of strings.
    pub(super) fn string_alts(
        &mut self,
        r: Operand,
        rs: Span,
        what: &str,
    ) -> Option<Vec<(Vec<u8>, Span)>> {
        match r {
            Operand::Const(Val::Str(s)) => Some(vec![(s, rs)]),
            Operand::Const(Val::Set(items))
                if items.iter().all(|(v, _)| matches!(v, Val::Str(_))) =>
            {
                Some(
                    items
                        .into_iter()
                        .filter_map(|(v, s)| match v {
                            Val::Str(b) => Some((b, s)),
                            _ => None,
                        })
                        .collect(),
                )
            }
            other => {
                let kind = operand_kind(&other);
                self.err(
                    Diag::new(Code::TypeMismatch, format!("`{what}` needs a string"), rs)
                        .label(format!("this is {kind}"))
                        .help(format!(
                            "write e.g. `payload {what} \"GET \"` or a set of strings"
                        )),
                );
                None
            }
        }
    }
}

/// A value of the field for help texts.
fn example(t: Text) -> &'static str {
    match t {
        Text::HttpMethod => "DELETE",
        Text::HttpPath => "/admin",
        Text::HttpHost | Text::TlsSni => "api.example.com",
        Text::RedisCommand => "FLUSHALL",
        Text::RedisKey => "session:1",
        Text::PgUser => "postgres",
        Text::PgDatabase => "billing",
    }
}

/// A string as a policy writes it.
fn quote(s: &[u8]) -> String {
    format!("\"{}\"", crate::syntax::lexer::escape(s))
}
