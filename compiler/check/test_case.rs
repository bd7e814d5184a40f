//! In-file test cases: the message each one describes and the verdict it expects.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};

use super::values::{Operand, Val};
use super::Checker;
use super::MAX_COMM_LEN;
use crate::diag::{did_you_mean, Code, Diag};
use crate::fields::{self, Member, TestValue};
use crate::hir::{self, Action, Decision, SockSlot, Target, Verdict};
use crate::syntax::ast;
use crate::syntax::lexer::IpLit;
use crate::syntax::Span;

/// A test case's message while its statements are read. The family decides how the
/// addresses are stored and `len` defaults to the payload's length, so those are
/// resolved once every statement has been seen.
#[derive(Default)]
struct Draft {
    message: hir::Message,
    /// `family = ...`, if the case sets it.
    family: Option<u32>,
    /// `len = ...` and where it is written.
    len: Option<(u64, Span)>,
    /// `local.ip`/`remote.ip` settings: (local end?, address, where it is written).
    addrs: Vec<(bool, IpAddr, Span)>,
}

impl Checker {
    pub(super) fn tests(&mut self, tests: &[&ast::TestCase]) -> Vec<hir::TestCase> {
        let mut out = Vec::new();
        let mut seen: HashMap<Vec<u8>, Span> = HashMap::new();
        for t in tests {
            if let Some(prev) = seen.get(&t.name.node) {
                let prev = *prev;
                self.err(
                    Diag::new(
                        Code::DuplicateTestName,
                        "two test cases have the same name",
                        t.name.span,
                    )
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

    pub(super) fn test_case(&mut self, t: &ast::TestCase) -> Option<hir::TestCase> {
        let mut draft = Draft::default();
        let mut expect: Option<(Decision, Span)> = None;
        let mut expect_seen: Option<Span> = None;
        let mut assigned: HashMap<String, Span> = HashMap::new();
        let mut ok = true;
        for s in &t.stmts {
            match s {
                ast::TestStmt::Expect { action, span } => {
                    if let Some(prev) = expect_seen {
                        self.err(
                            Diag::new(Code::TwoExpects, "a test case with two `expect`s", *span)
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
                                    Diag::new(Code::ExpectNotVerdict, "a test expects a constant sockmap slot", action.span)
                                        .label("a field here")
                                        .help("write the slot number the message should go to, e.g. `expect redirect to sock 3;`"),
                                );
                                ok = false;
                            }
                            expect = Some((d, *span));
                        }
                        Some(_) => {
                            self.err(
                                Diag::new(Code::ExpectNotVerdict, "a test expects a verdict", action.span)
                                    .label("not a verdict")
                                    .help("write `expect pass;`, `expect drop;`, `expect discard;`, `expect reply \"...\";`, `expect redirect to sock N;` or `expect cork N;`"),
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
                            Diag::new(
                                Code::TestFieldSetTwice,
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
                                Diag::new(
                                    Code::TestValueNotConstant,
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
                    if !self.test_assign(&mut draft, &name, fspan, v, value.span) {
                        ok = false;
                    }
                }
            }
        }
        let Draft {
            message: mut m,
            family: explicit_family,
            len: explicit_len,
            addrs,
        } = draft;
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
                        Diag::new(
                            Code::TestIpv6InInet,
                            "an IPv6 address in an IPv4 test case",
                            span,
                        )
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
                    Diag::new(Code::TestLenBelowPayload, "`len` is shorter than the payload", span)
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
                Diag::new(Code::NoExpect, "a test case without `expect`", t.span)
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

    /// `name = v;` in a test case: records the setting in `draft`, or reports why it
    /// cannot be made. False on an error.
    fn test_assign(
        &mut self,
        draft: &mut Draft,
        name: &str,
        fspan: Span,
        v: Val,
        vspan: Span,
    ) -> bool {
        let settable = fields::by_name(name).and_then(|f| Some((f.member?, f.test?)));
        let Some((member, setting)) = settable else {
            self.unknown_test_field(name, fspan);
            return false;
        };
        let wrong = |c: &mut Self, code: Code, label: &str| {
            c.err(
                Diag::new(
                    code,
                    format!("`{name}` takes {}", setting.value.takes()),
                    vspan,
                )
                .label(format!("this is {label}"))
                .help(format!("write e.g. `{name} = {};`", setting.example)),
            );
            false
        };
        match (setting.value, v) {
            (TestValue::Family, Val::Family(f)) => draft.family = Some(f),
            (TestValue::Addr, Val::Ip(IpLit::V4(a, None))) => {
                draft
                    .addrs
                    .push((member == Member::LocalIp, IpAddr::V4(a), vspan))
            }
            (TestValue::Addr, Val::Ip(IpLit::V6(a, None))) => {
                draft
                    .addrs
                    .push((member == Member::LocalIp, IpAddr::V6(a), vspan))
            }
            (TestValue::Int { max }, Val::Int(n)) if n <= max => draft.set_int(member, n, vspan),
            (TestValue::Int { .. }, Val::Int(_)) => {
                return wrong(self, Code::TestIntTooLarge, "too large")
            }
            (TestValue::Bytes, Val::Str(s)) => draft.message.payload = s,
            (TestValue::Comm, Val::Str(s)) if s.len() <= MAX_COMM_LEN && !s.contains(&0) => {
                draft.message.comm = s
            }
            (TestValue::Comm, Val::Str(s)) => {
                self.err(
                    Diag::new(
                        Code::TestCommTooLong,
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
            (_, v) => return wrong(self, Code::TestValueWrongKind, v.kind()),
        }
        true
    }

    fn unknown_test_field(&mut self, name: &str, fspan: Span) {
        let settable = fields::settable();
        let names = || settable.iter().map(|f| f.name);
        let mut d = Diag::new(
            Code::TestFieldUnknown,
            format!("a test case cannot set `{name}`"),
            fspan,
        )
        .label("not a message field");
        d = match did_you_mean(name, names()) {
            _ if name == "port" || name == "ip" => d.help(format!(
                "a message has two ends: set `remote.{name}` or `local.{name}` (or both)"
            )),
            Some(s) => d.help(format!("did you mean `{s}`?")),
            None => d.help(format!(
                "test cases set: {}",
                names().collect::<Vec<_>>().join(", ")
            )),
        };
        self.err(d);
    }
}

impl Draft {
    /// Sets an integer member (`len` is kept aside: it is checked against the payload
    /// once every statement has been read).
    fn set_int(&mut self, member: Member, n: u64, span: Span) {
        let m = &mut self.message;
        match member {
            Member::Len => self.len = Some((n, span)),
            // The registry's ranges keep these within their members' widths.
            Member::LocalPort => m.local_port = n as u16,
            Member::RemotePort => m.remote_port = n as u16,
            Member::Uid => m.uid = n as u32,
            Member::Gid => m.gid = n as u32,
            Member::Pid => m.pid = n as u32,
            Member::Cgroup => m.cgroup = n,
            Member::Family => self.family = Some(n as u32),
            Member::LocalIp | Member::RemoteIp | Member::Payload | Member::Comm => {}
        }
    }
}
