//! Name resolution and type checking: AST to the typed HIR (`hir`), with a
//! codespan diagnostic for every ill-typed construct and warnings for dead rules.
//!
//! The checker never panics and never stops at the first error: it reports every
//! problem it can find, then returns the HIR only if there was no error.

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::diag::{did_you_mean, Diag};
use crate::hir::fold::fold;
use crate::hir::ranges::{complement, intersect, normalize};
use crate::hir::{
    self, Action, Cond, CounterInfo, CounterKind, Decision, End, IntField, Net, SockSlot, Target,
    Test, Verdict,
};
use crate::syntax::ast::{self, ActionKind, CmpOp, CondKind, ExprKind};
use crate::syntax::lexer::IpLit;
use crate::syntax::{parse, Span};

/// The farthest payload byte a rule may look at (`payload[i..j]` needs `j <= MAX_PAYLOAD_END`).
/// The program pulls at most this many bytes into the data window.
pub const MAX_PAYLOAD_END: u32 = 4096;
/// The longest payload slice or `starts with` string.
pub const MAX_SLICE_LEN: u32 = 64;
/// The longest string `comm` can equal (TASK_COMM_LEN 16 including the NUL).
pub const MAX_COMM_LEN: usize = 15;

/// Parses and checks a policy. `Some(policy)` when there is no error; the diagnostics
/// (errors and warnings) either way.
pub fn check(source: &str) -> (Option<hir::Policy>, Vec<Diag>) {
    let (ast, mut diags) = parse(source);
    let syntax_ok = diags.iter().all(|d| !d.is_error());
    let (policy, check_diags) = check_ast(source, &ast);
    // A malformed literal stands in the AST as a placeholder (see `syntax::lexer::lex`);
    // whatever the checker says about it would only repeat the lexer's error.
    let bad_literals: Vec<Span> = diags
        .iter()
        .filter(|d| matches!(d.code, "E0002" | "E0003" | "E0004"))
        .map(|d| d.span)
        .collect();
    // The lexer's spans are disjoint and in source order: binary search for the first
    // one ending after the diagnostic's start, and see whether it starts before its end.
    let hides = |d: &Diag| {
        let (start, end) = (d.span.start, d.span.end.max(d.span.start + 1));
        let i = bad_literals.partition_point(|s| s.end.max(s.start + 1) <= start);
        bad_literals.get(i).is_some_and(|s| s.start < end)
    };
    diags.extend(check_diags.into_iter().filter(|d| !hides(d)));
    let ok = syntax_ok && diags.iter().all(|d| !d.is_error());
    (if ok { Some(policy) } else { None }, diags)
}

/// Checks a parsed policy. The HIR is only meaningful when no error was reported.
pub fn check_ast(source: &str, policy: &ast::Policy) -> (hir::Policy, Vec<Diag>) {
    let mut c = Checker::new(source);
    let p = c.policy(policy);
    (p, c.diags)
}

/// A compile-time value.
#[derive(Clone, Debug, PartialEq)]
enum Val {
    Int(u64),
    Bool(bool),
    Family(u32),
    Ip(IpLit),
    Str(Vec<u8>),
    Range(u64, u64),
    Set(Vec<(Val, Span)>),
}

impl Val {
    fn kind(&self) -> &'static str {
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
        }
    }
}

/// What a field reference denotes.
#[derive(Clone, Copy, Debug, PartialEq)]
enum FieldRef {
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
}

impl FieldRef {
    fn kind(&self) -> String {
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
        }
    }
}

#[derive(Clone, Debug)]
enum Operand {
    Const(Val),
    Field(FieldRef),
}

struct Binding {
    val: Val,
    span: Span,
    is_set: bool,
}

const FIELDS: &[&str] = &[
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

struct Checker {
    line_starts: Vec<usize>,
    diags: Vec<Diag>,
    names: HashMap<String, Binding>,
    named_counters: HashMap<String, usize>,
    named_order: Vec<(String, u32)>,
}

impl Checker {
    fn new(source: &str) -> Checker {
        let line_starts = std::iter::once(0)
            .chain(source.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Checker {
            line_starts,
            diags: Vec::new(),
            names: HashMap::new(),
            named_counters: HashMap::new(),
            named_order: Vec::new(),
        }
    }

    fn line(&self, span: Span) -> u32 {
        let idx = match self.line_starts.binary_search(&span.start) {
            Ok(i) => i,
            Err(i) => i.saturating_sub(1),
        };
        idx as u32 + 1
    }

    fn err(&mut self, d: Diag) {
        self.diags.push(d);
    }

    // ------------------------------------------------------------------ items

    fn policy(&mut self, p: &ast::Policy) -> hir::Policy {
        let mut rules = Vec::with_capacity(p.items.len());
        let mut default: Option<(Decision, Span)> = None;
        let mut tests_ast = Vec::new();
        let mut last_rule_or_default = 0usize;
        let mut default_index = None;
        for (i, item) in p.items.iter().enumerate() {
            match item {
                ast::Item::Const { name, value, span } => self.declare(name, value, *span, false),
                ast::Item::Set { name, value, span } => self.declare(name, value, *span, true),
                ast::Item::Rule(r) => {
                    last_rule_or_default = i;
                    if let Some(rule) = self.rule(r, rules.len()) {
                        rules.push(rule);
                    }
                }
                ast::Item::Default { action, span } => {
                    if let Some((_, first)) = default_index {
                        self.err(
                            Diag::error("E0302", "a second `default`", *span)
                                .label("second default here")
                                .secondary(first, "first default here")
                                .help("keep one `default` line"),
                        );
                        continue;
                    }
                    last_rule_or_default = i;
                    default_index = Some((i, *span));
                    match self.action(action) {
                        Some(Action::Decide(d)) => default = Some((d, *span)),
                        Some(_) => self.err(
                            Diag::error("E0301", "`default` needs a verdict", action.span)
                                .label("not a verdict")
                                .help("write `default pass;` or `default drop;` (count and log go in rules)"),
                        ),
                        None => {}
                    }
                }
                ast::Item::Test(t) => tests_ast.push(t),
            }
        }
        if let Some((i, span)) = default_index {
            if i < last_rule_or_default {
                self.diags.push(
                    Diag::warning("W0003", "`default` is not the last rule", span)
                        .label("rules after this line are still evaluated before the default")
                        .help("move `default` to the end of the policy, where it takes effect"),
                );
            }
        }
        self.dead_rule_warnings(&rules, default.as_ref().map(|d| d.1));

        let mut counters: Vec<CounterInfo> =
            Vec::with_capacity(rules.len() + self.named_order.len() + 1);
        counters.extend(rules.iter().map(|r: &hir::Rule| CounterInfo {
            name: rule_counter_name(r.counter),
            kind: CounterKind::Rule,
            line: r.line,
        }));
        // Named counters come after the rules: renumber the provisional slots.
        let base = counters.len();
        for r in &mut rules {
            if let Action::Count { counter } = &mut r.action {
                *counter += base;
            }
        }
        for (name, line) in &self.named_order {
            counters.push(CounterInfo {
                name: name.clone(),
                kind: CounterKind::Named,
                line: *line,
            });
        }
        let default_counter = counters.len();
        let (decision, span) = match default {
            Some((d, s)) => (d, Some(s)),
            None => (
                Decision {
                    verdict: Verdict::Pass,
                    apply_bytes: None,
                },
                None,
            ),
        };
        counters.push(CounterInfo {
            name: "default".into(),
            kind: CounterKind::Default,
            line: span.map(|s| self.line(s)).unwrap_or(0),
        });
        let tests = self.tests(&tests_ast);
        hir::Policy {
            rules,
            default: hir::DefaultRule {
                decision,
                span,
                counter: default_counter,
            },
            counters,
            tests,
        }
    }

    fn dead_rule_warnings(&mut self, rules: &[hir::Rule], default: Option<Span>) {
        let mut shadow: Option<&hir::Rule> = None;
        for r in rules {
            if let Some(s) = shadow {
                self.diags.push(
                    Diag::warning("W0002", "this rule is never reached", r.span)
                        .label("unreachable")
                        .secondary(s.span, "every message is decided here first")
                        .help(
                            "move this rule above the unconditional one, or give that one an `if`",
                        ),
                );
                continue;
            }
            let cond = &r.cond;
            if never_true(cond) {
                self.diags.push(
                    Diag::warning("W0001", "this rule can never match", r.span)
                        .label("its condition is always false")
                        .help("check the values against the fields' ranges, or remove the rule"),
                );
            } else if r.action.is_terminal() && *cond == Cond::Const(true) {
                shadow = Some(r);
            }
        }
        if let (Some(s), Some(d)) = (shadow, default) {
            self.diags.push(
                Diag::warning("W0002", "the `default` is never reached", d)
                    .label("unreachable")
                    .secondary(s.span, "every message is decided here first")
                    .help("give the unconditional rule an `if`, or remove the default"),
            );
        }
    }

    fn declare(&mut self, name: &ast::Ident, value: &ast::Expr, span: Span, is_set: bool) {
        if FIELDS.contains(&&*name.node)
            || ["local", "remote", "inet", "inet6"].contains(&&*name.node)
        {
            self.err(
                Diag::error(
                    "E0104",
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
                Diag::error(
                    "E0103",
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
                    Diag::error("E0105", "a declaration needs a constant value", value.span)
                        .label(format!("this is a field of the message: {}", f.kind()))
                        .help(
                            "declarations name literals: numbers, addresses, strings, ranges, sets",
                        ),
                );
                return;
            }
        };
        match (&val, is_set) {
            (Val::Set(_), false) => {
                self.err(
                    Diag::error("E0214", "a set is declared with `set`, not `const`", span)
                        .label("this is a set")
                        .help(format!("write `set {} = {{...}};`", name.node)),
                );
                return;
            }
            (v, true) if !matches!(v, Val::Set(_)) => {
                let kind = v.kind();
                self.err(
                    Diag::error(
                        "E0214",
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

    // ------------------------------------------------------------------ rules

    fn rule(&mut self, r: &ast::Rule, index: usize) -> Option<hir::Rule> {
        let action = self.action(&r.action);
        if let Some(Action::Decide(Decision {
            verdict:
                Verdict::Redirect {
                    ingress: false,
                    target: Target::Peer,
                },
            ..
        })) = &action
        {
            self.diags.push(
                Diag::warning("W0004", "an egress redirect to the peer sends the bytes back to the sender", r.action.span)
                    .label("egress: out of the peer socket, to its own peer (this socket)")
                    .help("write `redirect ingress to peer` to hand the bytes to the peer's receive queue (a local bypass)"),
            );
        }
        let cond = match &r.cond {
            None => Some(Cond::Const(true)),
            Some(c) => self.cond(c),
        };
        // The HIR promises folded conditions (see `hir::fold`): later passes never fold.
        let cond = fold(cond?);
        Some(hir::Rule {
            counter: index,
            action: action?,
            cond,
            span: r.span,
            line: self.line(r.span),
        })
    }

    fn action(&mut self, a: &ast::Action) -> Option<Action> {
        let apply_bytes = match &a.apply_bytes {
            None => None,
            Some(e) => {
                if matches!(
                    a.kind,
                    ActionKind::Cork(_) | ActionKind::Count(_) | ActionKind::Log
                ) {
                    self.err(
                        Diag::error(
                            "E0211",
                            "only `pass`, `drop` and `redirect` take `for N`",
                            e.span,
                        )
                        .label("not allowed here")
                        .help("remove `for N`; it sets how many bytes a verdict covers"),
                    );
                    return None;
                }
                Some(self.byte_count(e, "for")?)
            }
        };
        let verdict = match &a.kind {
            ActionKind::Pass => Verdict::Pass,
            ActionKind::Drop => Verdict::Drop,
            ActionKind::Redirect { ingress, target } => {
                let target = match target {
                    ast::Target::Peer(_) => Target::Peer,
                    ast::Target::Sock(e) => Target::Sock(self.sock_slot(e)?),
                };
                Verdict::Redirect {
                    ingress: *ingress,
                    target,
                }
            }
            ActionKind::Cork(e) => Verdict::Cork(self.byte_count(e, "cork")?),
            ActionKind::Count(name) => {
                let slot = match self.named_counters.get(&*name.node) {
                    Some(&slot) => slot,
                    None => {
                        let slot = self.named_counters.len();
                        let line = self.line(name.span);
                        self.named_counters.insert(name.node.to_string(), slot);
                        self.named_order.push((name.node.to_string(), line));
                        slot
                    }
                };
                return Some(Action::Count { counter: slot });
            }
            ActionKind::Log => return Some(Action::Log),
        };
        Some(Action::Decide(Decision {
            verdict,
            apply_bytes,
        }))
    }

    fn byte_count(&mut self, e: &ast::Expr, what: &str) -> Option<u32> {
        match self.expr(e)? {
            Operand::Const(Val::Int(n)) if n >= 1 && n <= u32::MAX as u64 => Some(n as u32),
            Operand::Const(Val::Int(n)) => {
                self.err(
                    Diag::error(
                        "E0210",
                        format!("`{what}` needs 1 to 4294967295 bytes"),
                        e.span,
                    )
                    .label(format!("{n} is out of range"))
                    .help("give a byte count between 1 and 4GiB - 1 (e.g. `1MiB`)"),
                );
                None
            }
            other => {
                let kind = operand_kind(&other);
                self.err(
                    Diag::error("E0201", format!("`{what}` needs a byte count"), e.span)
                        .label(format!("this is {kind}"))
                        .help("write a constant number of bytes, e.g. `16` or `1MiB`"),
                );
                None
            }
        }
    }

    fn sock_slot(&mut self, e: &ast::Expr) -> Option<SockSlot> {
        match self.expr(e)? {
            Operand::Const(Val::Int(n)) if n < skpc_abi::SOCKMAP_SLOTS as u64 => {
                Some(SockSlot::Const(n as u32))
            }
            Operand::Const(Val::Int(n)) => {
                self.err(
                    Diag::error("E0209", format!("sockmap slot {n} does not exist"), e.span)
                        .label(format!(
                            "the policy's sockmap has slots 0..{}",
                            skpc_abi::SOCKMAP_SLOTS - 1
                        ))
                        .help(format!("use a slot below {}", skpc_abi::SOCKMAP_SLOTS)),
                );
                None
            }
            Operand::Field(FieldRef::Int(f)) if !matches!(f, IntField::PayloadByte(_)) => {
                Some(SockSlot::Field(f))
            }
            other => {
                let kind = operand_kind(&other);
                self.err(
                    Diag::error("E0208", "the redirect key must be an integer", e.span)
                        .label(format!("this is {kind}"))
                        .help("write a sockmap slot number (`sock 3`), a `const`, or an integer field such as `uid`"),
                );
                None
            }
        }
    }

    // ------------------------------------------------------------------ conditions

    fn cond(&mut self, c: &ast::Cond) -> Option<Cond> {
        match &c.kind {
            CondKind::Or(cs) => Some(Cond::Or(self.conds(cs)?)),
            CondKind::And(cs) => Some(Cond::And(self.conds(cs)?)),
            CondKind::Not(c) => Some(Cond::Not(Box::new(self.cond(c)?))),
            CondKind::Value(e) => match self.expr(e)? {
                Operand::Const(Val::Bool(b)) => Some(Cond::Const(b)),
                other => {
                    let kind = operand_kind(&other);
                    self.err(
                        Diag::error("E0213", "this is not a condition", e.span)
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
                self.compare(l, lhs.span, op.node, op.span, r, rhs.span, c.span)
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

    #[allow(clippy::too_many_arguments)]
    fn compare(
        &mut self,
        l: Operand,
        ls: Span,
        op: CmpOp,
        ops: Span,
        r: Operand,
        rs: Span,
        whole: Span,
    ) -> Option<Cond> {
        let (field, fs, val, vs, op) = match (l, r) {
            (Operand::Field(f), Operand::Const(v)) => (f, ls, v, rs, op),
            (Operand::Const(v), Operand::Field(f)) => (f, rs, v, ls, mirror(op)),
            (Operand::Field(_), Operand::Field(_)) => {
                self.err(
                    Diag::error("E0217", "comparing two fields is not supported", whole)
                        .label("both sides are fields of the message")
                        .help("compare a field with a constant, e.g. `local.port == 80`"),
                );
                return None;
            }
            (Operand::Const(a), Operand::Const(b)) => {
                return match const_compare(&a, op, &b) {
                    Some(x) => Some(Cond::Const(x)),
                    None => {
                        self.err(
                            Diag::error(
                                "E0201",
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
        if !matches!(op, CmpOp::Eq | CmpOp::Ne)
            && !matches!(field, FieldRef::Int(_) | FieldRef::EitherPort)
        {
            self.err(
                Diag::error(
                    "E0204",
                    format!("`{}` does not apply to {}", op.as_str(), field.kind()),
                    ops,
                )
                .label("only `==` and `!=` here")
                .help("use `==`, `!=`, or `in` with a set or prefix"),
            );
            return None;
        }
        if op == CmpOp::Ne {
            let eq = self.compare(
                Operand::Field(field),
                fs,
                CmpOp::Eq,
                ops,
                Operand::Const(val),
                vs,
                whole,
            )?;
            return Some(Cond::Not(Box::new(eq)));
        }
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
                        Diag::error("E0204", "`==` compares with one address, not a prefix", ops)
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
            FieldRef::Payload => {
                let help = match &val {
                    Val::Str(s) if !s.is_empty() && s.len() <= MAX_SLICE_LEN as usize => format!(
                        "compare a slice of the string's length (`payload[0..{}] == ...`) or test a prefix (`payload starts with ...`)",
                        s.len()
                    ),
                    _ => "compare a slice (`payload[0..4] == \"GET \"`) or test a prefix (`payload starts with \"GET \"`)".to_string(),
                };
                self.err(
                    Diag::error("E0220", "the whole payload cannot be compared", fs)
                        .label("unbounded")
                        .help(help),
                );
                None
            }
        }
    }

    fn mismatch(
        &mut self,
        field: &FieldRef,
        fs: Span,
        val: &Val,
        vs: Span,
        help: &str,
    ) -> Option<Cond> {
        let mut d = Diag::error(
            "E0201",
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
            d.code = "E0203";
        }
        self.err(d);
        None
    }

    fn int_value(&mut self, field: IntField, fs: Span, v: &Val, vs: Span) -> Option<u64> {
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
                    Diag::error("E0202", format!("{n} is out of range for {what}"), vs)
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
            Diag::error(
                "E0202",
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

    fn addr_test(&mut self, field: FieldRef, fs: Span, ips: &[(IpLit, Span)]) -> Option<Cond> {
        let FieldRef::Addr {
            local,
            remote,
            v4,
            v6,
            mapped,
        } = field
        else {
            return None;
        };
        let mut nets = Vec::new();
        let mut ok = true;
        for (ip, span) in ips {
            let net = match *ip {
                IpLit::V4(a, p) => {
                    if !v4 {
                        self.err(
                            Diag::error(
                                "E0203",
                                "an IPv4 address against an IPv6-only field",
                                *span,
                            )
                            .label("IPv4")
                            .secondary(fs, "this field holds IPv6 addresses")
                            .help("use `local.ip`/`remote.ip` (both families) or an IPv6 address"),
                        );
                        ok = false;
                        continue;
                    }
                    let prefix = p.unwrap_or(32);
                    let addr = u32::from(a);
                    if addr & !hir::mask32(prefix) != 0 {
                        self.host_bits_error(
                            *span,
                            &IpAddr::V4(Ipv4Addr::from(addr & hir::mask32(prefix))),
                            prefix,
                        );
                        ok = false;
                        continue;
                    }
                    Net::V4 { addr, prefix }
                }
                IpLit::V6(a, p) => {
                    if !v6 {
                        self.err(
                            Diag::error("E0203", "an IPv6 address or prefix against an IPv4-only field", *span)
                                .label("IPv6")
                                .secondary(fs, "this field holds IPv4 addresses")
                                .help("use `local.ip`/`remote.ip` (both families), or an IPv4 address or prefix"),
                        );
                        ok = false;
                        continue;
                    }
                    let prefix = p.unwrap_or(128);
                    let addr = u128::from(a);
                    if addr & !hir::mask128(prefix) != 0 {
                        self.host_bits_error(
                            *span,
                            &IpAddr::V6(Ipv6Addr::from(addr & hir::mask128(prefix))),
                            prefix,
                        );
                        ok = false;
                        continue;
                    }
                    Net::V6 { addr, prefix }
                }
            };
            nets.push(net);
        }
        if !ok {
            return None;
        }
        nets.sort();
        nets.dedup();
        let test = |end, nets| Cond::Test(Test::Addr { end, nets, mapped });
        Some(match (local, remote) {
            (true, false) => test(End::Local, nets),
            (false, true) => test(End::Remote, nets),
            (true, true) => Cond::Or(vec![
                test(End::Local, nets.clone()),
                test(End::Remote, nets),
            ]),
            (false, false) => Cond::Or(Vec::new()),
        })
    }

    fn host_bits_error(&mut self, span: Span, net: &IpAddr, prefix: u8) {
        self.err(
            Diag::error("E0215", "the prefix has host bits set", span)
                .label("bits beyond the prefix length are not zero")
                .help(format!("did you mean `{net}/{prefix}`?")),
        );
    }

    fn payload_alts(&mut self, offset: u32, len: u32, alts: Vec<(Vec<u8>, Span)>) -> Option<Cond> {
        let mut out = Vec::new();
        for (s, span) in alts {
            if s.len() as u32 != len {
                self.err(
                    Diag::error(
                        "E0207",
                        format!(
                            "a {}-byte string against a {len}-byte payload slice",
                            s.len()
                        ),
                        span,
                    )
                    .label(format!("{} bytes", s.len()))
                    .help(format!(
                        "make the slice `payload[{offset}..{}]` or the string {len} bytes long",
                        offset as u64 + s.len() as u64
                    )),
                );
                return None;
            }
            out.push(s);
        }
        out.sort();
        out.dedup();
        Some(Cond::Test(Test::Payload { offset, alts: out }))
    }

    fn comm_test(&mut self, alts: Vec<(Vec<u8>, Span)>, prefix: bool) -> Option<Cond> {
        let mut out = Vec::new();
        for (s, span) in alts {
            if s.len() > MAX_COMM_LEN || s.contains(&0) {
                self.err(
                    Diag::error("E0216", "a process name has at most 15 bytes and no NUL", span)
                        .label(format!("{} bytes", s.len()))
                        .help("the kernel keeps the first 15 bytes of the name: shorten it (use `starts with` for a prefix)"),
                );
                return None;
            }
            out.push(s);
        }
        out.sort();
        out.dedup();
        Some(Cond::Test(Test::Comm { alts: out, prefix }))
    }

    fn membership(&mut self, l: Operand, ls: Span, r: Operand, rs: Span) -> Option<Cond> {
        let field = match l {
            Operand::Field(f) => f,
            Operand::Const(v) => {
                self.err(
                    Diag::error(
                        "E0201",
                        format!("`in` needs a field on the left, not {}", v.kind()),
                        ls,
                    )
                    .label("a constant")
                    .help("write `FIELD in SET`, e.g. `remote.port in {80, 443}`"),
                );
                return None;
            }
        };
        let elems: Vec<(Val, Span)> = match r {
            Operand::Const(Val::Set(items)) => items,
            Operand::Const(v @ (Val::Range(..) | Val::Ip(_))) => vec![(v, rs)],
            Operand::Const(other) => {
                self.err(
                    Diag::error("E0201", format!("`in` needs a set, range or prefix, not {}", other.kind()), rs)
                        .label(format!("this is {}", other.kind()))
                        .help("write a set `{80, 443}`, a range `8000..8099` or a prefix `10.0.0.0/8`; for one value use `==`"),
                );
                return None;
            }
            Operand::Field(_) => {
                self.err(
                    Diag::error("E0217", "`in` needs a constant set on the right", rs)
                        .label("this is a field")
                        .help("write a set `{...}`, a range or a prefix"),
                );
                return None;
            }
        };
        match field {
            FieldRef::EitherPort => {
                let a = self.int_membership(IntField::LocalPort, ls, &elems)?;
                let b = self.int_membership(IntField::RemotePort, ls, &elems)?;
                Some(Cond::Or(vec![a, b]))
            }
            FieldRef::Int(f) => self.int_membership(f, ls, &elems),
            FieldRef::Family => {
                let mut ranges = Vec::new();
                for (v, s) in &elems {
                    match v {
                        Val::Family(f) => ranges.push((*f as u64, *f as u64)),
                        other => {
                            return self.mismatch(
                                &field,
                                ls,
                                &other.clone(),
                                *s,
                                "list families: `{inet, inet6}`",
                            )
                        }
                    }
                }
                Some(Cond::Test(Test::Int {
                    field: IntField::Family,
                    ranges: normalize(ranges),
                }))
            }
            FieldRef::Addr { .. } => {
                let mut ips = Vec::new();
                for (v, s) in &elems {
                    match v {
                        Val::Ip(ip) => ips.push((*ip, *s)),
                        other => {
                            return self.mismatch(
                                &field,
                                ls,
                                &other.clone(),
                                *s,
                                "list addresses or prefixes: `{10.0.0.0/8, ::1}`",
                            )
                        }
                    }
                }
                if ips.is_empty() {
                    return Some(Cond::Const(false));
                }
                self.addr_test(field, ls, &ips)
            }
            FieldRef::PayloadSlice { offset, len } => {
                let strs = self.strings(&field, ls, &elems)?;
                if strs.is_empty() {
                    return Some(Cond::Const(false));
                }
                self.payload_alts(offset, len, strs)
            }
            FieldRef::Comm => {
                let strs = self.strings(&field, ls, &elems)?;
                if strs.is_empty() {
                    return Some(Cond::Const(false));
                }
                self.comm_test(strs, false)
            }
            FieldRef::Payload => {
                self.err(
                    Diag::error("E0220", "the whole payload cannot be tested with `in`", ls)
                        .label("unbounded")
                        .help("take a slice first: `payload[0..4] in {\"GET \", \"PUT \"}`"),
                );
                None
            }
        }
    }

    fn strings(
        &mut self,
        field: &FieldRef,
        fs: Span,
        elems: &[(Val, Span)],
    ) -> Option<Vec<(Vec<u8>, Span)>> {
        let mut out = Vec::new();
        for (v, s) in elems {
            match v {
                Val::Str(b) => out.push((b.clone(), *s)),
                other => {
                    self.mismatch(
                        field,
                        fs,
                        &other.clone(),
                        *s,
                        "list strings: `{\"GET \", \"PUT \"}`",
                    );
                    return None;
                }
            }
        }
        Some(out)
    }

    fn int_membership(&mut self, field: IntField, fs: Span, elems: &[(Val, Span)]) -> Option<Cond> {
        let mut ranges = Vec::new();
        for (v, s) in elems {
            match v {
                Val::Range(lo, hi) => {
                    let lo = self.int_value(field, fs, &Val::Int(*lo), *s)?;
                    let hi = self.int_value(field, fs, &Val::Int(*hi), *s)?;
                    ranges.push((lo, hi));
                }
                other => {
                    let n = self.int_value(field, fs, other, *s)?;
                    ranges.push((n, n));
                }
            }
        }
        Some(Cond::Test(Test::Int {
            field,
            ranges: normalize(ranges),
        }))
    }

    fn starts_with(&mut self, l: Operand, ls: Span, r: Operand, rs: Span) -> Option<Cond> {
        let prefixes: Vec<(Vec<u8>, Span)> = match r {
            Operand::Const(Val::Str(s)) => vec![(s, rs)],
            Operand::Const(Val::Set(items))
                if items.iter().all(|(v, _)| matches!(v, Val::Str(_))) =>
            {
                items
                    .into_iter()
                    .filter_map(|(v, s)| {
                        if let Val::Str(b) = v {
                            Some((b, s))
                        } else {
                            None
                        }
                    })
                    .collect()
            }
            other => {
                let kind = operand_kind(&other);
                self.err(
                    Diag::error("E0201", "`starts with` needs a string", rs)
                        .label(format!("this is {kind}"))
                        .help("write `payload starts with \"GET \"`"),
                );
                return None;
            }
        };
        match l {
            Operand::Field(FieldRef::Payload) => {
                let mut alts = Vec::new();
                for (p, span) in prefixes {
                    if p.len() as u32 > MAX_SLICE_LEN {
                        self.err(
                            Diag::error("E0206", format!("a {}-byte prefix is longer than the supported {MAX_SLICE_LEN}", p.len()), span)
                                .label("too long")
                                .help(format!("test at most {MAX_SLICE_LEN} bytes at a time; split it into slices joined with `and`")),
                        );
                        return None;
                    }
                    alts.push(Cond::Test(Test::Payload {
                        offset: 0,
                        alts: vec![p],
                    }));
                }
                Some(if alts.len() == 1 {
                    alts.pop()?
                } else {
                    Cond::Or(alts)
                })
            }
            Operand::Field(FieldRef::Comm) => self.comm_test(prefixes, true),
            other => {
                let kind = operand_kind(&other);
                self.err(
                    Diag::error(
                        "E0219",
                        format!("`starts with` does not apply to {kind}"),
                        ls,
                    )
                    .label("not a byte string")
                    .help("`starts with` tests `payload` or `comm`"),
                );
                None
            }
        }
    }

    // ------------------------------------------------------------------ expressions

    fn expr(&mut self, e: &ast::Expr) -> Option<Operand> {
        match &e.kind {
            ExprKind::Int { value, unit } => match unit {
                None => Some(Operand::Const(Val::Int(*value))),
                Some(u) => match value.checked_mul(*u) {
                    Some(v) => Some(Operand::Const(Val::Int(v))),
                    None => {
                        self.err(
                            Diag::error("E0218", "the size does not fit in 64 bits", e.span)
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
                        Diag::error("E0212", format!("the range {l}..{h} is reversed"), e.span)
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
                        Some(Operand::Const(v)) => {
                            if seen.insert(item.span) {
                                out.push((v, item.span));
                            }
                        }
                        Some(Operand::Field(f)) => {
                            self.err(
                                Diag::error("E0105", "set elements must be constants", item.span)
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
            ExprKind::Index { base, index } => {
                self.payload_base(base)?;
                let i = self.const_int(index)?;
                if i >= MAX_PAYLOAD_END as u64 {
                    self.err(
                        Diag::error(
                            "E0206",
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
                        Diag::error(
                            "E0205",
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
                        Diag::error(
                            "E0206",
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
                    Diag::error(
                        "E0201",
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
                    Diag::error(
                        "E0201",
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

    fn path(&mut self, path: &[ast::Ident], span: Span) -> Option<Operand> {
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
                        let mut d = Diag::error("E0102", format!("unknown name `{name}`"), span)
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

    fn unknown_field(&mut self, names: &[&str], span: Span) -> Option<Operand> {
        let joined = names.join(".");
        let mut d =
            Diag::error("E0101", format!("unknown field `{joined}`"), span).label("no such field");
        d = match did_you_mean(&joined, FIELDS.iter().copied()) {
            Some(s) => d.help(format!("did you mean `{s}`?")),
            None => d.help(format!("the fields are: {}", FIELDS.join(", "))),
        };
        self.err(d);
        None
    }

    // ------------------------------------------------------------------ tests

    fn tests(&mut self, tests: &[&ast::TestCase]) -> Vec<hir::TestCase> {
        let mut out = Vec::new();
        let mut seen: HashMap<Vec<u8>, Span> = HashMap::new();
        for t in tests {
            if let Some(prev) = seen.get(&t.name.node) {
                let prev = *prev;
                self.err(
                    Diag::error("E0303", "two test cases have the same name", t.name.span)
                        .label("second")
                        .secondary(prev, "first")
                        .help("give each test case its own name"),
                );
                continue;
            }
            seen.insert(t.name.node.clone(), t.name.span);
            if let Some(tc) = self.test_case(t) {
                out.push(tc);
            }
        }
        out
    }

    fn test_case(&mut self, t: &ast::TestCase) -> Option<hir::TestCase> {
        let mut m = hir::Message::default();
        let mut expect: Option<(Decision, Span)> = None;
        let mut expect_seen: Option<Span> = None;
        let mut assigned: HashMap<String, Span> = HashMap::new();
        let mut ok = true;
        let mut explicit_family: Option<u32> = None;
        let mut explicit_len: Option<(u64, Span)> = None;
        let mut addrs: Vec<(bool, IpAddr, Span)> = Vec::new();
        for s in &t.stmts {
            match s {
                ast::TestStmt::Expect { action, span } => {
                    if let Some(prev) = expect_seen {
                        self.err(
                            Diag::error("E0303", "a test case with two `expect`s", *span)
                                .label("second")
                                .secondary(prev, "first")
                                .help("one test case checks one message; add another test case"),
                        );
                        ok = false;
                        continue;
                    }
                    expect_seen = Some(*span);
                    match self.action(action) {
                        Some(Action::Decide(d)) => {
                            if let Verdict::Redirect {
                                target: Target::Sock(SockSlot::Field(_)),
                                ..
                            } = d.verdict
                            {
                                self.err(
                                    Diag::error("E0304", "a test expects a constant sockmap slot", action.span)
                                        .label("a field here")
                                        .help("write the slot number the message should go to, e.g. `expect redirect to sock 3;`"),
                                );
                                ok = false;
                            }
                            expect = Some((d, *span));
                        }
                        Some(_) => {
                            self.err(
                                Diag::error("E0304", "a test expects a verdict", action.span)
                                    .label("not a verdict")
                                    .help("write `expect pass;`, `expect drop;`, `expect redirect to sock N;` or `expect cork N;`"),
                            );
                            ok = false;
                        }
                        None => ok = false,
                    }
                }
                ast::TestStmt::Assign { field, value, span } => {
                    let name = field.iter().map(|i| &*i.node).collect::<Vec<_>>().join(".");
                    let fspan = field[0].span.to(field[field.len() - 1].span);
                    if let Some(prev) = assigned.get(&name) {
                        let prev = *prev;
                        self.err(
                            Diag::error(
                                "E0303",
                                format!("`{name}` is set twice in this test case"),
                                *span,
                            )
                            .label("second")
                            .secondary(prev, "first")
                            .help("set each field once"),
                        );
                        ok = false;
                        continue;
                    }
                    assigned.insert(name.clone(), *span);
                    let reported = self.diags.len();
                    let Some(Operand::Const(v)) = self.expr(value) else {
                        if !self.diags[reported..].iter().any(|d| d.is_error()) {
                            self.err(
                                Diag::error(
                                    "E0303",
                                    "a test case field needs a constant value",
                                    value.span,
                                )
                                .label("not a constant")
                                .help("write a literal such as `80`, `10.0.0.1` or `\"GET /\"`"),
                            );
                        }
                        ok = false;
                        continue;
                    };
                    if !self.test_assign(
                        &mut m,
                        &name,
                        fspan,
                        v,
                        value.span,
                        &mut explicit_family,
                        &mut explicit_len,
                        &mut addrs,
                    ) {
                        ok = false;
                    }
                }
            }
        }
        // Resolve the family and the addresses.
        let family = explicit_family.unwrap_or(if addrs.iter().any(|(_, a, _)| a.is_ipv6()) {
            skpc_abi::AF_INET6
        } else {
            skpc_abi::AF_INET
        });
        m.family = family;
        if family == skpc_abi::AF_INET6 {
            m.local_ip = IpAddr::V6(Ipv6Addr::LOCALHOST);
            m.remote_ip = IpAddr::V6(Ipv6Addr::LOCALHOST);
        }
        for (local, a, span) in addrs {
            let a = match (family, a) {
                (skpc_abi::AF_INET6, IpAddr::V4(v4)) => IpAddr::V6(v4.to_ipv6_mapped()),
                (skpc_abi::AF_INET, IpAddr::V6(_)) => {
                    self.err(
                        Diag::error("E0303", "an IPv6 address in an IPv4 test case", span)
                            .label("IPv6")
                            .help("remove `family = inet;` or use an IPv4 address"),
                    );
                    ok = false;
                    continue;
                }
                (_, a) => a,
            };
            if local {
                m.local_ip = a;
            } else {
                m.remote_ip = a;
            }
        }
        m.len = m.payload.len() as u32;
        if let Some((len, span)) = explicit_len {
            if len < m.payload.len() as u64 || len > u32::MAX as u64 {
                self.err(
                    Diag::error("E0303", "`len` is shorter than the payload", span)
                        .label(format!("the payload has {} bytes", m.payload.len()))
                        .help("leave `len` out (it defaults to the payload's length) or make it at least that"),
                );
                ok = false;
            } else {
                m.len = len as u32;
            }
        }
        let Some((expect, _)) = expect else {
            if expect_seen.is_some() {
                // The `expect` is there but wrong; that has been reported.
                return None;
            }
            self.err(
                Diag::error("E0303", "a test case without `expect`", t.span)
                    .label("what should happen to this message?")
                    .help("add `expect pass;` (or drop, redirect ..., cork N) to the block"),
            );
            return None;
        };
        ok.then(|| hir::TestCase {
            name: String::from_utf8_lossy(&t.name.node).into_owned(),
            span: t.span,
            line: self.line(t.span),
            message: m,
            expect,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn test_assign(
        &mut self,
        m: &mut hir::Message,
        name: &str,
        fspan: Span,
        v: Val,
        vspan: Span,
        family: &mut Option<u32>,
        len: &mut Option<(u64, Span)>,
        addrs: &mut Vec<(bool, IpAddr, Span)>,
    ) -> bool {
        let bad = |c: &mut Self, what: &str| {
            c.err(
                Diag::error("E0303", format!("`{name}` takes {what}"), vspan)
                    .label(format!("this is {}", v.kind()))
                    .help(format!("write e.g. `{name} = {};`", example_for(name))),
            );
            false
        };
        let int = |c: &mut Self, max: u64| -> Option<u64> {
            match v {
                Val::Int(n) if n <= max => Some(n),
                _ => {
                    c.err(
                        Diag::error(
                            "E0303",
                            format!("`{name}` takes an integer up to {max}"),
                            vspan,
                        )
                        .label(format!(
                            "this is {}",
                            if matches!(v, Val::Int(_)) {
                                "too large"
                            } else {
                                v.kind()
                            }
                        ))
                        .help(format!("write e.g. `{name} = {};`", example_for(name))),
                    );
                    None
                }
            }
        };
        match name {
            "family" => match v {
                Val::Family(f) => *family = Some(f),
                _ => return bad(self, "`inet` or `inet6`"),
            },
            "local.ip" | "remote.ip" => match v {
                Val::Ip(IpLit::V4(a, None)) => {
                    addrs.push((name == "local.ip", IpAddr::V4(a), vspan))
                }
                Val::Ip(IpLit::V6(a, None)) => {
                    addrs.push((name == "local.ip", IpAddr::V6(a), vspan))
                }
                _ => return bad(self, "one address"),
            },
            "local.port" => match int(self, 65535) {
                Some(n) => m.local_port = n as u16,
                None => return false,
            },
            "remote.port" => match int(self, 65535) {
                Some(n) => m.remote_port = n as u16,
                None => return false,
            },
            "len" => match int(self, u32::MAX as u64) {
                Some(n) => *len = Some((n, vspan)),
                None => return false,
            },
            "uid" | "gid" | "pid" => match int(self, u32::MAX as u64) {
                Some(n) => {
                    let n = n as u32;
                    match name {
                        "uid" => m.uid = n,
                        "gid" => m.gid = n,
                        _ => m.pid = n,
                    }
                }
                None => return false,
            },
            "cgroup" => match int(self, u64::MAX) {
                Some(n) => m.cgroup = n,
                None => return false,
            },
            "payload" => match v {
                Val::Str(s) => m.payload = s,
                _ => return bad(self, "a string"),
            },
            "comm" => match v {
                Val::Str(s) if s.len() <= MAX_COMM_LEN && !s.contains(&0) => m.comm = s,
                Val::Str(s) => {
                    self.err(
                        Diag::error(
                            "E0303",
                            "`comm` takes a string of at most 15 bytes and no NUL",
                            vspan,
                        )
                        .label(format!(
                            "{} bytes{}",
                            s.len(),
                            if s.contains(&0) { ", with a NUL" } else { "" }
                        ))
                        .help("the kernel keeps the first 15 bytes of a process name: shorten it"),
                    );
                    return false;
                }
                _ => return bad(self, "a string of at most 15 bytes"),
            },
            _ => {
                let mut d = Diag::error("E0303", format!("a test case cannot set `{name}`"), fspan)
                    .label("not a message field");
                d = match did_you_mean(name, TEST_FIELDS.iter().copied()) {
                    _ if name == "port" || name == "ip" => d.help(format!(
                        "a message has two ends: set `remote.{name}` or `local.{name}` (or both)"
                    )),
                    Some(s) => d.help(format!("did you mean `{s}`?")),
                    None => d.help(format!("test cases set: {}", TEST_FIELDS.join(", "))),
                };
                self.err(d);
                return false;
            }
        }
        true
    }
}

const TEST_FIELDS: &[&str] = &[
    "family",
    "local.ip",
    "remote.ip",
    "local.port",
    "remote.port",
    "len",
    "payload",
    "uid",
    "gid",
    "pid",
    "cgroup",
    "comm",
];

fn example_for(name: &str) -> &'static str {
    match name {
        "family" => "inet6",
        "local.ip" | "remote.ip" => "10.0.0.1",
        "payload" => "\"GET / HTTP/1.1\\r\\n\"",
        "comm" => "\"curl\"",
        _ => "80",
    }
}

fn operand_kind(o: &Operand) -> String {
    match o {
        Operand::Const(v) => v.kind().to_string(),
        Operand::Field(f) => f.kind(),
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

/// `rule{index}`, the name of a rule's counter (one per rule: without the formatting
/// machinery).
fn rule_counter_name(index: usize) -> String {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    let mut n = index;
    loop {
        start -= 1;
        digits[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let mut s = String::with_capacity(4 + digits.len() - start);
    s.push_str("rule");
    s.extend(digits[start..].iter().map(|&d| char::from(d)));
    s
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

/// Whether a simplified condition can never hold: constant false, or an `and` whose
/// integer tests of one field leave no value (`len > 5000 and len < 10`). Only for the
/// W0001 warning: it does not change the HIR.
fn never_true(c: &Cond) -> bool {
    match c {
        Cond::Const(b) => !b,
        Cond::Or(cs) => cs.iter().all(never_true),
        Cond::And(cs) => {
            if cs.iter().any(never_true) {
                return true;
            }
            // The values each field may still take; an `and` tests a few fields, so a
            // list, and a field's first test's own ranges where they are the answer.
            let mut per_field: Vec<(IntField, Ranges)> = Vec::new();
            for c in cs {
                let (field, ranges): (IntField, Ranges) = match c {
                    Cond::Test(Test::Int { field, ranges }) => (*field, Cow::Borrowed(ranges)),
                    // `not payload[i] ...` also holds for a message too short to have byte
                    // i, so only the other fields' negations are complements.
                    Cond::Not(inner) => match &**inner {
                        Cond::Test(Test::Int { field, ranges })
                            if !matches!(field, IntField::PayloadByte(_)) =>
                        {
                            (*field, Cow::Owned(complement(ranges, field.max_value())))
                        }
                        _ => continue,
                    },
                    _ => continue,
                };
                let all = match per_field.iter_mut().find(|(f, _)| *f == field) {
                    Some((_, all)) => {
                        *all = Cow::Owned(intersect(all, &ranges));
                        &**all
                    }
                    None => {
                        // Sorted, disjoint ranges within 0..=max are their own
                        // intersection with 0..=max.
                        let max = field.max_value();
                        let all = if ranges.last().map_or(true, |r| r.1 <= max) {
                            ranges
                        } else {
                            Cow::Owned(intersect(&[(0, max)], &ranges))
                        };
                        per_field.push((field, all));
                        &*per_field[per_field.len() - 1].1
                    }
                };
                if all.is_empty() {
                    return true;
                }
            }
            false
        }
        _ => false,
    }
}

/// Sorted, disjoint inclusive ranges, borrowed from a test or computed.
type Ranges<'a> = Cow<'a, [(u64, u64)]>;
