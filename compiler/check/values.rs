//! Expressions and compile-time values: literals, ranges, sets, payload indexing and
//! slicing, and what a name or a field path denotes (an `Operand`).

use super::Checker;
use super::{MAX_PAYLOAD_END, MAX_SLICE_LEN};
use crate::diag::{Code, Diag};
use crate::hir::IntField;
use crate::syntax::ast::{self, ExprKind};
use crate::syntax::lexer::IpLit;
use crate::syntax::Span;

/// A compile-time value.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Val {
    Int(u64),
    Bool(bool),
    Family(u32),
    Ip(IpLit),
    Str(Vec<u8>),
    Range(u64, u64),
    Set(Vec<(Val, Span)>),
    /// A set read from a file: index in `Checker::loaded_sets` (and the policy's
    /// `file_sets`).
    FileSet(usize),
}

impl Val {
    pub(super) fn kind(&self) -> &'static str {
        match self {
            Val::Int(_) => "an integer",
            Val::Bool(_) => "a boolean",
            Val::Family(_) => "an address family",
            Val::Ip(IpLit::V4(_, None)) => "an IPv4 address",
            Val::Ip(IpLit::V6(_, None)) => "an IPv6 address",
            Val::Ip(IpLit::V4(_, Some(_))) => "an IPv4 prefix",
            Val::Ip(IpLit::V6(_, Some(_))) => "an IPv6 prefix",
            Val::Str(_) => "a string",
            Val::Range(..) => "a range",
            Val::Set(_) => "a set",
            Val::FileSet(_) => "a set read from a file",
        }
    }
}

/// What a field reference denotes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum FieldRef {
    Int(IntField),
    /// `port`: either end.
    EitherPort,
    Family,
    /// `local.ip`, `remote.ip` (`ends` has one end) or `ip` (both). `v4`/`v6` say which
    /// literal families the field takes; `mapped` whether v4 also matches v4-mapped v6.
    Addr {
        local: bool,
        remote: bool,
        v4: bool,
        v6: bool,
        mapped: bool,
    },
    /// `payload` without an index.
    Payload,
    /// `payload[i..j]`
    PayloadSlice {
        offset: u32,
        len: u32,
    },
    Comm,
    /// `http`: whether the message is of the protocol.
    Proto(crate::fields::Proto),
    /// `http.host`: a protocol's string field.
    Text(crate::fields::Text),
}

impl FieldRef {
    pub(super) fn kind(&self) -> String {
        match self {
            FieldRef::Int(IntField::LocalPort | IntField::RemotePort) | FieldRef::EitherPort => {
                "a port (0..=65535)".into()
            }
            FieldRef::Int(IntField::PayloadByte(_)) => "a byte (0..=255)".into(),
            FieldRef::Int(f) => format!("an integer (0..={})", f.max_value()),
            FieldRef::Family => "an address family (`inet` or `inet6`)".into(),
            FieldRef::Addr {
                v4: true,
                v6: false,
                ..
            } => "an IPv4 address".into(),
            FieldRef::Addr {
                v4: false,
                v6: true,
                ..
            } => "an IPv6 address".into(),
            FieldRef::Addr { .. } => "an IP address".into(),
            FieldRef::Payload => "the payload".into(),
            FieldRef::PayloadSlice { len, .. } => format!("{len} payload bytes"),
            FieldRef::Comm => "a process name (string)".into(),
            FieldRef::Proto(_) => "a boolean".into(),
            FieldRef::Text(t) => format!("a {} field (string)", t.proto().name()),
        }
    }
}

#[derive(Clone, Debug)]
pub(super) enum Operand {
    Const(Val),
    Field(FieldRef),
}

pub(super) fn operand_kind(o: &Operand) -> String {
    match o {
        Operand::Const(v) => v.kind().to_string(),
        Operand::Field(f) => f.kind(),
    }
}

/// The spans of a set literal's elements so far, to drop repeats: a list while short
/// (most sets have a few elements), hashed beyond.
#[derive(Default)]
struct SeenSpans {
    list: Vec<Span>,
    hashed: Option<std::collections::HashSet<Span>>,
}

impl SeenSpans {
    /// Adds `span`; false if it was there already.
    fn insert(&mut self, span: Span) -> bool {
        if let Some(h) = &mut self.hashed {
            return h.insert(span);
        }
        if self.list.contains(&span) {
            return false;
        }
        self.list.push(span);
        if self.list.len() > 16 {
            self.hashed = Some(std::mem::take(&mut self.list).into_iter().collect());
        }
        true
    }
}

impl Checker {
    pub(super) fn expr(&mut self, e: &ast::Expr) -> Option<Operand> {
        match &e.kind {
            ExprKind::Int { value, unit } => match unit {
                None => Some(Operand::Const(Val::Int(*value))),
                Some(u) => match value.checked_mul(*u) {
                    Some(v) => Some(Operand::Const(Val::Int(v))),
                    None => {
                        self.err(
                            Diag::new(
                                Code::SizeOverflow,
                                "the size does not fit in 64 bits",
                                e.span,
                            )
                            .label("overflows")
                            .help("use a smaller number or unit"),
                        );
                        None
                    }
                },
            },
            ExprKind::Bool(b) => Some(Operand::Const(Val::Bool(*b))),
            ExprKind::Ip(ip) => Some(Operand::Const(Val::Ip(*ip))),
            ExprKind::Str(s) => Some(Operand::Const(Val::Str(s.clone()))),
            ExprKind::Path(path) => self.path(path, e.span),
            ExprKind::Range { lo, hi } => {
                let (l, h) = (self.const_int(lo), self.const_int(hi));
                let (l, h) = (l?, h?);
                if l > h {
                    self.err(
                        Diag::new(
                            Code::ReversedRange,
                            format!("the range {l}..{h} is reversed"),
                            e.span,
                        )
                        .label("the start is above the end")
                        .help(format!("write `{h}..{l}` (ranges include both ends)")),
                    );
                    return None;
                }
                Some(Operand::Const(Val::Range(l, h)))
            }
            ExprKind::Set(items) => {
                let mut out = Vec::with_capacity(items.len());
                let mut seen = SeenSpans::default();
                let mut ok = true;
                for item in items {
                    match self.expr(item) {
                        // An element's span names the literal it came from: dropping repeats
                        // keeps `{s, s}` from doubling (sets of sets would grow exponentially).
                        Some(Operand::Const(Val::Set(inner))) => {
                            out.extend(inner.into_iter().filter(|(_, s)| seen.insert(*s)))
                        }
                        Some(Operand::Const(Val::FileSet(_))) => {
                            self.err(
                                Diag::new(
                                    Code::FileSetMisuse,
                                    "a set read from a file cannot be part of another set",
                                    item.span,
                                )
                                .label("read from a file")
                                .help(
                                    "test it on its own: `remote.ip in NAME or remote.ip in {...}`",
                                ),
                            );
                            ok = false;
                        }
                        Some(Operand::Const(v)) => {
                            if seen.insert(item.span) {
                                out.push((v, item.span));
                            }
                        }
                        Some(Operand::Field(f)) => {
                            self.err(
                                Diag::new(
                                    Code::FieldNotConstant,
                                    "set elements must be constants",
                                    item.span,
                                )
                                .label(format!("this is a field of the message: {}", f.kind()))
                                .help("list literal values or declared names"),
                            );
                            ok = false;
                        }
                        None => ok = false,
                    }
                }
                ok.then_some(Operand::Const(Val::Set(out)))
            }
            ExprKind::File(_) => {
                // The grammar only has `file "..."` as a `set`'s value (`Checker::declare`).
                self.err(
                    Diag::new(
                        Code::FileSetMisuse,
                        "`file \"...\"` is the value of a `set` declaration",
                        e.span,
                    )
                    .label("here")
                    .help("write `set NAME = file \"...\";` and use `FIELD in NAME`"),
                );
                None
            }
            ExprKind::Index { base, index } => {
                self.payload_base(base)?;
                let i = self.const_int(index)?;
                if i >= MAX_PAYLOAD_END as u64 {
                    self.err(
                        Diag::new(
                            Code::PayloadTooFar,
                            format!("payload[{i}] is beyond the supported window"),
                            e.span,
                        )
                        .label(format!(
                            "rules may look at the first {MAX_PAYLOAD_END} bytes"
                        ))
                        .help(format!("use an offset below {MAX_PAYLOAD_END}")),
                    );
                    return None;
                }
                Some(Operand::Field(FieldRef::Int(IntField::PayloadByte(
                    i as u32,
                ))))
            }
            ExprKind::Slice { base, start, end } => {
                self.payload_base(base)?;
                let (s, t) = (self.const_int(start), self.const_int(end));
                let (s, t) = (s?, t?);
                if s >= t {
                    let what = if s == t { "empty" } else { "reversed" };
                    self.err(
                        Diag::new(
                            Code::EmptySlice,
                            format!("the payload slice [{s}..{t}] is {what}"),
                            e.span,
                        )
                        .label("slices are half-open: [start..end) with start < end")
                        .help(if s == t {
                            format!(
                                "a slice needs at least one byte: `payload[{s}..{}]`",
                                s.saturating_add(1)
                            )
                        } else {
                            format!("write the smaller offset first: `payload[{t}..{s}]`")
                        }),
                    );
                    return None;
                }
                if t > MAX_PAYLOAD_END as u64 || t - s > MAX_SLICE_LEN as u64 {
                    self.err(
                        Diag::new(
                            Code::PayloadTooFar,
                            format!("the payload slice [{s}..{t}] is too long or too far"),
                            e.span,
                        )
                        .label(format!(
                            "at most {MAX_SLICE_LEN} bytes, ending by byte {MAX_PAYLOAD_END}"
                        ))
                        .help("split it into several slices joined with `and`"),
                    );
                    return None;
                }
                Some(Operand::Field(FieldRef::PayloadSlice {
                    offset: s as u32,
                    len: (t - s) as u32,
                }))
            }
        }
    }

    fn payload_base(&mut self, base: &ast::Expr) -> Option<()> {
        match self.expr(base)? {
            Operand::Field(FieldRef::Payload) => Some(()),
            other => {
                let kind = operand_kind(&other);
                self.err(
                    Diag::new(
                        Code::TypeMismatch,
                        format!("only `payload` can be indexed, not {kind}"),
                        base.span,
                    )
                    .label("not indexable")
                    .help("write `payload[i]` or `payload[i..j]`"),
                );
                None
            }
        }
    }

    fn const_int(&mut self, e: &ast::Expr) -> Option<u64> {
        match self.expr(e)? {
            Operand::Const(Val::Int(n)) => Some(n),
            other => {
                let kind = match &other {
                    Operand::Field(f) => format!("a field of the message ({})", f.kind()),
                    Operand::Const(v) => v.kind().to_string(),
                };
                self.err(
                    Diag::new(
                        Code::TypeMismatch,
                        format!("expected a constant integer, found {kind}"),
                        e.span,
                    )
                    .label("not a constant integer")
                    .help("write a number or the name of an integer `const`"),
                );
                None
            }
        }
    }
}
