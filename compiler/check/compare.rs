//! Conditions and comparisons: `and`/`or`/`not`, `==`, `!=` and orderings of a field
//! with a constant, with the field's range and type checked.

use super::values::{operand_kind, FieldRef, Operand, Val};
use super::Checker;
use super::MAX_SLICE_LEN;
use crate::diag::{Code, Diag};
use crate::hir::{Cond, IntField, Test};
use crate::syntax::ast::{self, CmpOp, CondKind};
use crate::syntax::lexer::IpLit;
use crate::syntax::{Span, Spanned};

impl Checker {
    pub(super) fn cond(&mut self, c: &ast::Cond) -> Option<Cond> {
        match &c.kind {
            CondKind::Or(cs) => Some(Cond::Or(self.conds(cs)?)),
            CondKind::And(cs) => Some(Cond::And(self.conds(cs)?)),
            CondKind::Not(c) => Some(Cond::Not(Box::new(self.cond(c)?))),
            CondKind::Value(e) => match self.expr(e)? {
                Operand::Const(Val::Bool(b)) => Some(Cond::Const(b)),
                Operand::Field(FieldRef::Proto(p)) => Some(Cond::Test(Test::Proto(p))),
                other => {
                    let kind = operand_kind(&other);
                    self.err(
                        Diag::new(Code::NotACondition, "this is not a condition", e.span)
                            .label(format!("this is {kind}, not true or false"))
                            .help("compare it with something, e.g. `len > 100`, `port == 80`, `remote.ip in 10.0.0.0/8`"),
                    );
                    None
                }
            },
            CondKind::Cmp { lhs, op, rhs } => {
                let l = self.expr(lhs);
                let r = self.expr(rhs);
                let (l, r) = (l?, r?);
                self.compare(
                    Spanned::new(l, lhs.span),
                    op.clone(),
                    Spanned::new(r, rhs.span),
                    c.span,
                )
            }
            CondKind::In { lhs, rhs } => {
                let l = self.expr(lhs);
                let r = self.expr(rhs);
                let (l, r) = (l?, r?);
                self.membership(l, lhs.span, r, rhs.span)
            }
            CondKind::StartsWith { lhs, rhs } => {
                let l = self.expr(lhs);
                let r = self.expr(rhs);
                let (l, r) = (l?, r?);
                self.starts_with(l, lhs.span, r, rhs.span)
            }
            CondKind::EndsWith { lhs, rhs } => {
                let l = self.expr(lhs);
                let r = self.expr(rhs);
                let (l, r) = (l?, r?);
                self.ends_with(l, lhs.span, r, rhs.span)
            }
        }
    }

    /// The operands of an `and`/`or`: all of them are checked (every error reported),
    /// `None` if any failed.
    fn conds(&mut self, cs: &[ast::Cond]) -> Option<Vec<Cond>> {
        let mut out = Vec::with_capacity(cs.len());
        let mut ok = true;
        for c in cs {
            match self.cond(c) {
                Some(c) if ok => out.push(c),
                Some(_) => {}
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    /// `l op r`: one side a field, the other a constant (mirrored onto the right).
    pub(super) fn compare(
        &mut self,
        l: Spanned<Operand>,
        op: Spanned<CmpOp>,
        r: Spanned<Operand>,
        whole: Span,
    ) -> Option<Cond> {
        let (field, val, op) = match (l.node, r.node) {
            (Operand::Field(f), Operand::Const(v)) => {
                (Spanned::new(f, l.span), Spanned::new(v, r.span), op)
            }
            (Operand::Const(v), Operand::Field(f)) => (
                Spanned::new(f, r.span),
                Spanned::new(v, l.span),
                Spanned::new(mirror(op.node), op.span),
            ),
            (Operand::Field(_), Operand::Field(_)) => {
                self.err(
                    Diag::new(
                        Code::TwoFields,
                        "comparing two fields is not supported",
                        whole,
                    )
                    .label("both sides are fields of the message")
                    .help("compare a field with a constant, e.g. `local.port == 80`"),
                );
                return None;
            }
            (Operand::Const(a), Operand::Const(b)) => {
                return match const_compare(&a, op.node, &b) {
                    Some(x) => Some(Cond::Const(x)),
                    None => {
                        self.err(
                            Diag::new(
                                Code::TypeMismatch,
                                format!("cannot compare {} with {}", a.kind(), b.kind()),
                                whole,
                            )
                            .label("mismatched types")
                            .help("compare values of the same kind"),
                        );
                        None
                    }
                };
            }
        };
        if !matches!(op.node, CmpOp::Eq | CmpOp::Ne)
            && !matches!(field.node, FieldRef::Int(_) | FieldRef::EitherPort)
        {
            self.err(
                Diag::new(
                    Code::OperatorNotApplicable,
                    format!(
                        "`{}` does not apply to {}",
                        op.node.as_str(),
                        field.node.kind()
                    ),
                    op.span,
                )
                .label("only `==` and `!=` here")
                .help("use `==`, `!=`, or `in` with a set or prefix"),
            );
            return None;
        }
        if op.node == CmpOp::Ne {
            let eq = self.field_compare(field, Spanned::new(CmpOp::Eq, op.span), val)?;
            return Some(Cond::Not(Box::new(eq)));
        }
        self.field_compare(field, op, val)
    }

    /// `field op val` for an operator that applies to the field (`!=` is `not ==`).
    fn field_compare(
        &mut self,
        field: Spanned<FieldRef>,
        op: Spanned<CmpOp>,
        val: Spanned<Val>,
    ) -> Option<Cond> {
        let (fs, vs, ops) = (field.span, val.span, op.span);
        let (field, val, op) = (field.node, val.node, op.node);
        match field {
            FieldRef::EitherPort => {
                let a = self.int_compare(IntField::LocalPort, fs, op, &val, vs)?;
                let b = self.int_compare(IntField::RemotePort, fs, op, &val, vs)?;
                Some(Cond::Or(vec![a, b]))
            }
            FieldRef::Int(f) => self.int_compare(f, fs, op, &val, vs),
            FieldRef::Family => match val {
                Val::Family(fam) => Some(Cond::Test(Test::Int {
                    field: IntField::Family,
                    ranges: vec![(fam as u64, fam as u64)],
                })),
                other => self.mismatch(
                    &field,
                    fs,
                    &other,
                    vs,
                    "write `family == inet` or `family == inet6`",
                ),
            },
            FieldRef::Addr { .. } => match val {
                Val::Ip(ip @ (IpLit::V4(_, None) | IpLit::V6(_, None))) => {
                    self.addr_test(field, fs, &[(ip, vs)])
                }
                Val::Ip(_) => {
                    self.err(
                        Diag::new(
                            Code::OperatorNotApplicable,
                            "`==` compares with one address, not a prefix",
                            ops,
                        )
                        .label("this is a prefix on the other side")
                        .help("test membership with `in`, e.g. `remote.ip in 10.0.0.0/8`"),
                    );
                    None
                }
                other => self.mismatch(
                    &field,
                    fs,
                    &other,
                    vs,
                    "compare with an address such as `127.0.0.1` or `::1`",
                ),
            },
            FieldRef::PayloadSlice { offset, len } => match val {
                Val::Str(s) => self.payload_alts(offset, len, vec![(s, vs)]),
                other => self.mismatch(
                    &field,
                    fs,
                    &other,
                    vs,
                    "compare payload slices with a string, e.g. `payload[0..4] == \"GET \"`",
                ),
            },
            FieldRef::Comm => match val {
                Val::Str(s) => self.comm_test(vec![(s, vs)], false),
                other => self.mismatch(
                    &field,
                    fs,
                    &other,
                    vs,
                    "compare with a string, e.g. `comm == \"curl\"`",
                ),
            },
            FieldRef::Proto(_) | FieldRef::Text(_) => self.text_compare(field, fs, val, vs),
            FieldRef::Payload => {
                let help = match &val {
                    Val::Str(s) if !s.is_empty() && s.len() <= MAX_SLICE_LEN as usize => format!(
                        "compare a slice of the string's length (`payload[0..{}] == ...`) or test a prefix (`payload starts with ...`)",
                        s.len()
                    ),
                    _ => "compare a slice (`payload[0..4] == \"GET \"`) or test a prefix (`payload starts with \"GET \"`)".to_string(),
                };
                self.err(
                    Diag::new(
                        Code::WholePayload,
                        "the whole payload cannot be compared",
                        fs,
                    )
                    .label("unbounded")
                    .help(help),
                );
                None
            }
        }
    }

    pub(super) fn mismatch(
        &mut self,
        field: &FieldRef,
        fs: Span,
        val: &Val,
        vs: Span,
        help: &str,
    ) -> Option<Cond> {
        let mut d = Diag::new(
            Code::TypeMismatch,
            format!("cannot compare {} with {}", field.kind(), val.kind()),
            vs,
        )
        .label(format!("this is {}", val.kind()))
        .secondary(fs, format!("this is {}", field.kind()))
        .help(help);
        if let (
            FieldRef::Addr {
                v4: true,
                v6: false,
                ..
            },
            Val::Ip(IpLit::V6(..)),
        ) = (field, val)
        {
            d.code = Code::WrongFamily;
        }
        self.err(d);
        None
    }

    pub(super) fn int_value(
        &mut self,
        field: IntField,
        fs: Span,
        v: &Val,
        vs: Span,
    ) -> Option<u64> {
        match v {
            Val::Int(n) if *n <= field.max_value() => Some(*n),
            Val::Int(n) => {
                let what = match field {
                    IntField::LocalPort | IntField::RemotePort => "a port",
                    IntField::PayloadByte(_) => "a byte",
                    f => return self.out_of_range(f, fs, *n, vs),
                };
                let holder = match field {
                    IntField::LocalPort | IntField::RemotePort => "ports are".to_string(),
                    f => format!("`{}` holds", f.name()),
                };
                self.err(
                    Diag::new(
                        Code::OutOfRange,
                        format!("{n} is out of range for {what}"),
                        vs,
                    )
                    .label(format!("{holder} 0..={}", field.max_value()))
                    .secondary(fs, "this field")
                    .help(format!("use a value from 0 to {}", field.max_value())),
                );
                None
            }
            other => {
                let help = match (field, other) {
                    (IntField::LocalPort | IntField::RemotePort, Val::Ip(_)) => {
                        "a port is a number such as `80`; to test an address use `ip`, `local.ip` or `remote.ip`".to_string()
                    }
                    (IntField::PayloadByte(_), Val::Str(_)) => {
                        "`payload[i]` is one byte: compare it with a number (`0x2a`), or compare a slice `payload[i..j]` with a string".to_string()
                    }
                    _ => "compare it with a number, a range `a..b` or a set of numbers".to_string(),
                };
                self.mismatch(&FieldRef::Int(field), fs, &other.clone(), vs, &help);
                None
            }
        }
    }

    fn out_of_range(&mut self, field: IntField, fs: Span, n: u64, vs: Span) -> Option<u64> {
        self.err(
            Diag::new(
                Code::OutOfRange,
                format!("{n} is out of range for `{}`", field.name()),
                vs,
            )
            .label(format!(
                "`{}` holds 0..={}",
                field.name(),
                field.max_value()
            ))
            .secondary(fs, "this field")
            .help(format!("use a value from 0 to {}", field.max_value())),
        );
        None
    }

    fn int_compare(
        &mut self,
        field: IntField,
        fs: Span,
        op: CmpOp,
        v: &Val,
        vs: Span,
    ) -> Option<Cond> {
        let n = match (op, v) {
            // A bound beyond the field's range is legal for < and >: it folds.
            (CmpOp::Lt | CmpOp::Le | CmpOp::Gt | CmpOp::Ge, Val::Int(n)) => *n,
            _ => self.int_value(field, fs, v, vs)?,
        };
        let max = field.max_value();
        let ranges = match op {
            CmpOp::Eq => vec![(n, n)],
            CmpOp::Lt if n == 0 => vec![],
            CmpOp::Lt => vec![(0, (n - 1).min(max))],
            CmpOp::Le => vec![(0, n.min(max))],
            CmpOp::Gt if n >= max => vec![],
            CmpOp::Gt => vec![(n + 1, max)],
            CmpOp::Ge if n > max => vec![],
            CmpOp::Ge => vec![(n, max)],
            CmpOp::Ne => {
                return Some(Cond::Not(Box::new(Cond::Test(Test::Int {
                    field,
                    ranges: vec![(n, n)],
                }))))
            }
        };
        Some(Cond::Test(Test::Int { field, ranges }))
    }
}

fn mirror(op: CmpOp) -> CmpOp {
    match op {
        CmpOp::Lt => CmpOp::Gt,
        CmpOp::Le => CmpOp::Ge,
        CmpOp::Gt => CmpOp::Lt,
        CmpOp::Ge => CmpOp::Le,
        other => other,
    }
}

fn const_compare(a: &Val, op: CmpOp, b: &Val) -> Option<bool> {
    use std::cmp::Ordering;
    let ord: Ordering = match (a, b) {
        (Val::Int(x), Val::Int(y)) => x.cmp(y),
        _ if std::mem::discriminant(a) == std::mem::discriminant(b)
            && matches!(op, CmpOp::Eq | CmpOp::Ne) =>
        {
            return Some((a == b) == (op == CmpOp::Eq));
        }
        _ => return None,
    };
    Some(match op {
        CmpOp::Eq => ord.is_eq(),
        CmpOp::Ne => ord.is_ne(),
        CmpOp::Lt => ord.is_lt(),
        CmpOp::Le => ord.is_le(),
        CmpOp::Gt => ord.is_gt(),
        CmpOp::Ge => ord.is_ge(),
    })
}
