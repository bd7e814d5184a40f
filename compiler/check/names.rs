//! Declarations (`const`, `set`) and name resolution: what a name or a dotted path
//! refers to, with did-you-mean suggestions for unknown ones.

use super::values::{FieldRef, Operand, Val};
use super::Checker;
use crate::diag::{did_you_mean, Code, Diag};
use crate::fields::{self, Field, Type};
use crate::hir::IntField;
use crate::syntax::ast;
use crate::syntax::Span;

pub(super) struct Binding {
    val: Val,
    span: Span,
    is_set: bool,
}

impl Checker {
    pub(super) fn declare(
        &mut self,
        name: &ast::Ident,
        value: &ast::Expr,
        span: Span,
        is_set: bool,
    ) {
        if fields::is_reserved(&name.node) {
            self.err(
                Diag::new(
                    Code::FieldDeclared,
                    format!("`{}` is a field name and cannot be declared", name.node),
                    name.span,
                )
                .label("reserved")
                .help(format!(
                    "pick another name, e.g. `{}_{}`",
                    name.node,
                    if is_set { "set" } else { "value" }
                )),
            );
            return;
        }
        if let Some(prev) = self.names.get(&*name.node) {
            let prev = prev.span;
            self.err(
                Diag::new(
                    Code::DuplicateName,
                    format!("`{}` is declared twice", name.node),
                    name.span,
                )
                .label("second declaration")
                .secondary(prev, "first declared here")
                .help("rename one of them; names are global to the policy"),
            );
            return;
        }
        let op = match (&value.kind, is_set) {
            (ast::ExprKind::File(path), true) => {
                let Some(v) = self.file_set(name, path, value.span) else {
                    return;
                };
                Operand::Const(v)
            }
            _ => match self.expr(value) {
                Some(op) => op,
                None => return,
            },
        };
        let val = match op {
            Operand::Const(v) => v,
            Operand::Field(f) => {
                self.err(
                    Diag::new(
                        Code::FieldNotConstant,
                        "a declaration needs a constant value",
                        value.span,
                    )
                    .label(format!("this is a field of the message: {}", f.kind()))
                    .help("declarations name literals: numbers, addresses, strings, ranges, sets"),
                );
                return;
            }
        };
        match (&val, is_set) {
            (Val::Set(_), false) => {
                self.err(
                    Diag::new(
                        Code::WrongDeclaration,
                        "a set is declared with `set`, not `const`",
                        span,
                    )
                    .label("this is a set")
                    .help(format!("write `set {} = {{...}};`", name.node)),
                );
                return;
            }
            (v, true) if !matches!(v, Val::Set(_) | Val::FileSet(_)) => {
                let kind = v.kind();
                self.err(
                    Diag::new(
                        Code::WrongDeclaration,
                        "a `set` declaration needs a set `{...}`",
                        value.span,
                    )
                    .label(format!("this is {kind}"))
                    .help(format!(
                        "write `const {} = ...;` for one value, or wrap it in braces",
                        name.node
                    )),
                );
                return;
            }
            _ => {}
        }
        self.names.insert(
            name.node.to_string(),
            Binding {
                val,
                span: name.span,
                is_set,
            },
        );
    }
}

impl Checker {
    pub(super) fn path(&mut self, path: &[ast::Ident], span: Span) -> Option<Operand> {
        // Paths are one or two names: look at them without building a list.
        let mut short = [""; 2];
        let long: Vec<&str>;
        let names: &[&str] = if path.len() <= short.len() {
            for (n, i) in short.iter_mut().zip(path) {
                *n = &i.node;
            }
            &short[..path.len()]
        } else {
            long = path.iter().map(|i| &*i.node).collect();
            &long
        };
        if let Some(f) = fields::by_path(names) {
            return match field_ref(f) {
                Some(field) => Some(Operand::Field(field)),
                None => self.unknown_field(names, span),
            };
        }
        match names {
            [name] => {
                if let Some((_, family)) = fields::FAMILIES.iter().find(|(n, _)| n == name) {
                    return Some(Operand::Const(Val::Family(*family)));
                }
                match self.names.get(*name) {
                    Some(b) => Some(Operand::Const(b.val.clone())),
                    None => {
                        let mut cands: Vec<&str> = self.names.keys().map(|s| s.as_str()).collect();
                        // Pushed one by one: `extend` would make the names' lifetime 'static.
                        for f in fields::FIELDS {
                            cands.push(f.name);
                        }
                        for (n, _) in fields::FAMILIES {
                            cands.push(n);
                        }
                        cands.sort();
                        let suggestion =
                            did_you_mean(name, cands.iter().copied()).map(str::to_string);
                        let is_set_like = self.names.values().any(|b| b.is_set);
                        let mut d =
                            Diag::new(Code::UnknownName, format!("unknown name `{name}`"), span)
                                .label("not a field or a declared name");
                        d = match suggestion {
                            Some(s) => d.help(format!("did you mean `{s}`?")),
                            None if is_set_like => d.help("declare it first with `const` or `set`; the fields are listed in docs/language.md"),
                            None => d.help(format!("declare it with `const {name} = ...;` before its first use, or use a field: {}", field_list())),
                        };
                        self.err(d);
                        None
                    }
                }
            }
            _ => self.unknown_field(names, span),
        }
    }

    fn unknown_field(&mut self, names: &[&str], span: Span) -> Option<Operand> {
        let joined = names.join(".");
        let mut d = Diag::new(
            Code::UnknownField,
            format!("unknown field `{joined}`"),
            span,
        )
        .label("no such field");
        d = match did_you_mean(&joined, fields::names()) {
            Some(s) => d.help(format!("did you mean `{s}`?")),
            None => d.help(format!("the fields are: {}", field_list())),
        };
        self.err(d);
        None
    }
}

/// What a field of the registry denotes in a condition; none for a row the checker has
/// no comparisons for.
fn field_ref(f: &Field) -> Option<FieldRef> {
    Some(match f.ty {
        Type::Port {
            ends: fields::Ends::Both,
        } => FieldRef::EitherPort,
        Type::Int { .. } | Type::Port { .. } | Type::Family => match IntField::of(f.id)? {
            IntField::Family => FieldRef::Family,
            int => FieldRef::Int(int),
        },
        Type::Addr {
            ends,
            v4,
            v6,
            mapped,
        } => FieldRef::Addr {
            local: ends.local(),
            remote: ends.remote(),
            v4,
            v6,
            mapped,
        },
        Type::Payload => FieldRef::Payload,
        Type::Comm => FieldRef::Comm,
        Type::Proto(p) => FieldRef::Proto(p),
        Type::Text(t) => FieldRef::Text(t),
    })
}

/// "len, family, port, ...": every field, for help texts.
fn field_list() -> String {
    fields::names().collect::<Vec<_>>().join(", ")
}
