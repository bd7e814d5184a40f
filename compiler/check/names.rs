//! Declarations (`const`, `set`) and name resolution: what a name or a dotted path
//! refers to, with did-you-mean suggestions for unknown ones.

use super::values::{FieldRef, Operand, Val};
use super::Checker;
use crate::diag::{did_you_mean, Code, Diag};
use crate::hir::IntField;
use crate::syntax::ast;
use crate::syntax::Span;

pub(super) struct Binding {
    val: Val,
    span: Span,
    is_set: bool,
}

pub(super) const FIELDS: &[&str] = &[
    "len",
    "family",
    "port",
    "ip",
    "uid",
    "gid",
    "pid",
    "cgroup",
    "comm",
    "payload",
    "local.ip",
    "local.port",
    "local.ip4",
    "local.ip6",
    "remote.ip",
    "remote.port",
    "remote.ip4",
    "remote.ip6",
];

impl Checker {
    pub(super) fn declare(
        &mut self,
        name: &ast::Ident,
        value: &ast::Expr,
        span: Span,
        is_set: bool,
    ) {
        if FIELDS.contains(&&*name.node)
            || ["local", "remote", "inet", "inet6"].contains(&&*name.node)
        {
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
        let Some(op) = self.expr(value) else { return };
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
            (v, true) if !matches!(v, Val::Set(_)) => {
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
        let any = FieldRef::Addr {
            local: true,
            remote: true,
            v4: true,
            v6: true,
            mapped: true,
        };
        let field = match names {
            ["len"] => FieldRef::Int(IntField::Len),
            ["family"] => FieldRef::Family,
            ["port"] => FieldRef::EitherPort,
            ["ip"] => any,
            ["uid"] => FieldRef::Int(IntField::Uid),
            ["gid"] => FieldRef::Int(IntField::Gid),
            ["pid"] => FieldRef::Int(IntField::Pid),
            ["cgroup"] => FieldRef::Int(IntField::Cgroup),
            ["comm"] => FieldRef::Comm,
            ["payload"] => FieldRef::Payload,
            ["inet"] => return Some(Operand::Const(Val::Family(skpc_abi::AF_INET))),
            ["inet6"] => return Some(Operand::Const(Val::Family(skpc_abi::AF_INET6))),
            [end @ ("local" | "remote"), what] => {
                let local = *end == "local";
                let ends = FieldRef::Addr {
                    local,
                    remote: !local,
                    v4: true,
                    v6: true,
                    mapped: true,
                };
                match *what {
                    "ip" => ends,
                    "ip4" => FieldRef::Addr {
                        local,
                        remote: !local,
                        v4: true,
                        v6: false,
                        mapped: false,
                    },
                    "ip6" => FieldRef::Addr {
                        local,
                        remote: !local,
                        v4: false,
                        v6: true,
                        mapped: false,
                    },
                    "port" => FieldRef::Int(if local {
                        IntField::LocalPort
                    } else {
                        IntField::RemotePort
                    }),
                    _ => return self.unknown_field(names, span),
                }
            }
            [name] => {
                return match self.names.get(*name) {
                    Some(b) => Some(Operand::Const(b.val.clone())),
                    None => {
                        let mut cands: Vec<&str> = self.names.keys().map(|s| s.as_str()).collect();
                        cands.extend(FIELDS.iter().copied());
                        cands.extend(["inet", "inet6"]);
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
                            None => d.help(format!("declare it with `const {name} = ...;` before its first use, or use a field: {}", FIELDS.join(", "))),
                        };
                        self.err(d);
                        None
                    }
                };
            }
            _ => return self.unknown_field(names, span),
        };
        Some(Operand::Field(field))
    }

    pub(super) fn unknown_field(&mut self, names: &[&str], span: Span) -> Option<Operand> {
        let joined = names.join(".");
        let mut d = Diag::new(
            Code::UnknownField,
            format!("unknown field `{joined}`"),
            span,
        )
        .label("no such field");
        d = match did_you_mean(&joined, FIELDS.iter().copied()) {
            Some(s) => d.help(format!("did you mean `{s}`?")),
            None => d.help(format!("the fields are: {}", FIELDS.join(", "))),
        };
        self.err(d);
        None
    }
}
