//! Which connections a policy can act on, decided from what a connection has from its
//! start: its family, both addresses and both ports. The SOCK_OPS program puts only
//! those connections into the sockhash; every other one keeps the kernel's plain TCP
//! path and never runs the verdict program (a sockmap costs every send of a socket in
//! it some 360-400 ns, whatever the program does).
//!
//! A connection is *taken* when some message on it could meet a rule that acts:
//! - a rule with `count` or `log`, or deciding anything but a plain `pass` (a `pass`,
//!   with or without `for N`, is what the kernel does anyway);
//! - the default, unless it is a plain `pass`;
//! - the peer of a connection a `redirect … to peer` rule may act on (the redirect
//!   looks the peer up in the sockhash).
//!
//! Every condition is bounded from both sides at connection level ([`bounds`]): *may*
//! (true for some message on the connection) and *must* (true for every message). Tests
//! of per-send fields (len, payload, comm, uid, gid, pid, cgroup, protocol fields) are
//! unknown at connection level: may = true, must = false. A rule is reached only where
//! no earlier plain `pass` rule must match (an earlier acting rule takes the connection
//! itself, so it does not need to shadow later ones). The result is an over-approximation:
//! a connection it leaves out is one no rule could act on; one it takes may still see
//! only passes. It is a pure function of the policy.

use std::net::{Ipv4Addr, Ipv6Addr};

use super::Verdict;
use super::{fold, ranges, Action, Cond, Decision, End, IntField, Net, Policy, Target, Test};

/// Above this many ranges and prefixes in the condition, every connection is taken:
/// the SOCK_OPS program stays small, and such a policy names most of its traffic anyway.
pub const MAX_CONNECTION_TERMS: usize = 4096;
/// The plain `pass` rules remembered as shadowing later rules (more only make the
/// condition larger; leaving them out takes more connections, never fewer).
const MAX_SHADOWING_PASSES: usize = 64;

/// The connections `policy` takes, as a condition over connection fields only (family,
/// `local.port`, `remote.port`, local and remote addresses), folded: `Const(true)` is
/// every connection, `Const(false)` none.
pub fn taken(policy: &Policy) -> Cond {
    let mut takes = Vec::new();
    let mut passes: Vec<Cond> = Vec::new();
    let mut decided: Vec<Cond> = Vec::new();
    for rule in &policy.rules {
        let (may, must) = bounds(&rule.cond);
        if acts(&rule.action) {
            takes.push(if passes.is_empty() {
                may.clone()
            } else {
                Cond::And(vec![may.clone(), not(Cond::Or(passes.clone()))])
            });
        }
        if let Action::Decide(d) = &rule.action {
            if is_peer_redirect(d) {
                takes.push(mirror(&may));
            }
            if !decision_acts(d) && passes.len() < MAX_SHADOWING_PASSES && must != FALSE {
                passes.push(must.clone());
            }
            if must != FALSE {
                decided.push(must);
            }
        }
    }
    if decision_acts(&policy.default.decision) {
        takes.push(not(Cond::Or(decided)));
    }
    let c = tidy(&Cond::Or(takes));
    if terms(&c) > MAX_CONNECTION_TERMS {
        Cond::Const(true)
    } else {
        c
    }
}

const FALSE: Cond = Cond::Const(false);

fn not(c: Cond) -> Cond {
    Cond::Not(Box::new(c))
}

/// Whether a rule's action has an effect beyond what the kernel does without the policy.
fn acts(action: &Action) -> bool {
    match action {
        Action::Decide(d) => decision_acts(d),
        Action::Count { .. } | Action::Log => true,
    }
}

/// Everything but a plain `pass` (`for N` only changes how often a pass is judged).
fn decision_acts(d: &Decision) -> bool {
    d.verdict != Verdict::Pass
}

fn is_peer_redirect(d: &Decision) -> bool {
    matches!(
        d.verdict,
        Verdict::Redirect {
            target: Target::Peer,
            ..
        }
    )
}

/// Whether the test reads only what the connection has from its start.
pub fn per_connection(t: &Test) -> bool {
    match t {
        Test::Int { field, .. } => matches!(
            field,
            IntField::Family | IntField::LocalPort | IntField::RemotePort
        ),
        Test::Addr { .. } => true,
        // A set read from a file changes while connections live: the SOCK_OPS program
        // cannot decide by the contents it was built with.
        Test::Payload { .. }
        | Test::Comm { .. }
        | Test::Proto(_)
        | Test::Text { .. }
        | Test::InFile { .. } => false,
    }
}

/// (may, must): connection conditions true for some message on the connection when `c`
/// is, and true only where `c` holds for every message.
pub fn bounds(c: &Cond) -> (Cond, Cond) {
    match c {
        Cond::Const(b) => (Cond::Const(*b), Cond::Const(*b)),
        Cond::Test(t) if per_connection(t) => (c.clone(), c.clone()),
        Cond::Test(_) => (Cond::Const(true), FALSE),
        Cond::Not(x) => {
            let (may, must) = bounds(x);
            (not(must), not(may))
        }
        Cond::And(cs) | Cond::Or(cs) => {
            let (may, must): (Vec<Cond>, Vec<Cond>) = cs.iter().map(bounds).unzip();
            let (may, must) = if matches!(c, Cond::And(_)) {
                (Cond::And(may), Cond::And(must))
            } else {
                (Cond::Or(may), Cond::Or(must))
            };
            (fold::simplify(&may), fold::simplify(&must))
        }
    }
}

/// The condition seen from the other end of the connection: local and remote swapped.
pub fn mirror(c: &Cond) -> Cond {
    let swap = |e: End| match e {
        End::Local => End::Remote,
        End::Remote => End::Local,
    };
    match c {
        Cond::Const(b) => Cond::Const(*b),
        Cond::Not(x) => not(mirror(x)),
        Cond::And(cs) => Cond::And(cs.iter().map(mirror).collect()),
        Cond::Or(cs) => Cond::Or(cs.iter().map(mirror).collect()),
        Cond::Test(Test::Int { field, ranges }) => Cond::Test(Test::Int {
            field: match field {
                IntField::LocalPort => IntField::RemotePort,
                IntField::RemotePort => IntField::LocalPort,
                other => *other,
            },
            ranges: ranges.clone(),
        }),
        Cond::Test(Test::Addr { end, nets, mapped }) => Cond::Test(Test::Addr {
            end: swap(*end),
            nets: nets.clone(),
            mapped: *mapped,
        }),
        Cond::Test(t) => Cond::Test(t.clone()),
    }
}

/// Folds, and merges what one test can say: within an `or`, the integer tests of one
/// field (their ranges' union) and the address tests of one end (their prefixes);
/// within an `and`, the integer tests of one field (the intersection); `not` of an
/// integer test becomes the complement. A port named by thirty rules is one test.
pub fn tidy(c: &Cond) -> Cond {
    match fold::simplify(c) {
        Cond::Not(x) => match tidy(&x) {
            Cond::Test(Test::Int { field, ranges }) => {
                int_test(field, ranges::complement(&ranges, field.max_value()))
            }
            other => fold::simplify(&not(other)),
        },
        Cond::And(cs) => junction(cs.iter().map(tidy).collect(), true),
        Cond::Or(cs) => junction(cs.iter().map(tidy).collect(), false),
        other => other,
    }
}

fn int_test(field: IntField, ranges: Vec<(u64, u64)>) -> Cond {
    fold::simplify(&Cond::Test(Test::Int { field, ranges }))
}

/// One `and` (`is_and`) or `or` of tidied operands, with the tests merged.
fn junction(cs: Vec<Cond>, is_and: bool) -> Cond {
    let flat = fold::simplify(&if is_and { Cond::And(cs) } else { Cond::Or(cs) });
    let operands = match flat {
        Cond::And(cs) if is_and => cs,
        Cond::Or(cs) if !is_and => cs,
        other => return other,
    };
    let mut ints: Vec<(IntField, Vec<(u64, u64)>)> = Vec::new();
    let mut addrs: Vec<(End, bool, Vec<Net>)> = Vec::new();
    let mut rest = Vec::new();
    for c in operands {
        match c {
            Cond::Test(Test::Int { field, ranges: r }) => {
                match ints.iter_mut().find(|(f, _)| *f == field) {
                    Some((_, have)) if is_and => *have = ranges::intersect(have, &r),
                    // The union is normalized once, below: an `or` over every rule of a
                    // 100k-rule policy would otherwise sort a growing list each time.
                    Some((_, have)) => have.extend(r),
                    None => ints.push((field, r)),
                }
            }
            Cond::Test(Test::Addr { end, nets, mapped }) if !is_and => {
                match addrs.iter_mut().find(|(e, m, _)| *e == end && *m == mapped) {
                    Some((_, _, have)) => have.extend(nets),
                    None => addrs.push((end, mapped, nets)),
                }
            }
            other => rest.push(other),
        }
    }
    if !is_and {
        for (_, have) in &mut ints {
            *have = ranges::normalize(std::mem::take(have));
        }
        for (_, _, have) in &mut addrs {
            have.sort();
            have.dedup();
        }
    }
    let mut out: Vec<Cond> = ints
        .into_iter()
        .map(|(field, ranges)| int_test(field, ranges))
        .collect();
    out.extend(
        addrs
            .into_iter()
            .map(|(end, mapped, nets)| Cond::Test(Test::Addr { end, nets, mapped })),
    );
    out.extend(rest);
    fold::simplify(&if is_and {
        Cond::And(out)
    } else {
        Cond::Or(out)
    })
}

/// The ranges and prefixes of the condition: what its code's size grows with.
pub fn terms(c: &Cond) -> usize {
    c.tests()
        .map(|t| match t {
            Test::Int { ranges, .. } => ranges.len(),
            Test::Addr { nets, .. } => nets.len(),
            _ => 1,
        })
        .sum()
}

/// The condition in the policy language's words, for listings and summaries; sets
/// longer than a few values are cut short (`… N more`).
pub fn describe(c: &Cond) -> String {
    match c {
        Cond::Const(true) => "every connection".into(),
        Cond::Const(false) => "no connection".into(),
        _ => text(c, false),
    }
}

/// Values shown of a long set.
const SHOWN: usize = 6;

fn text(c: &Cond, nested: bool) -> String {
    let join = |cs: &[Cond], op: &str| {
        let s = cs
            .iter()
            .map(|c| text(c, true))
            .collect::<Vec<_>>()
            .join(op);
        if nested {
            format!("({s})")
        } else {
            s
        }
    };
    match c {
        Cond::Const(b) => b.to_string(),
        Cond::And(cs) => join(cs, " and "),
        Cond::Or(cs) => join(cs, " or "),
        Cond::Not(x) => format!("not {}", text(x, true)),
        Cond::Test(Test::Int { field, ranges }) => {
            let one = |(lo, hi): &(u64, u64)| {
                if lo == hi {
                    lo.to_string()
                } else {
                    format!("{lo}..{hi}")
                }
            };
            match ranges.as_slice() {
                [(lo, hi)] if lo == hi => format!("{} == {lo}", field.name()),
                _ => format!("{} in {}", field.name(), set(ranges.iter().map(one))),
            }
        }
        Cond::Test(Test::Addr { end, nets, mapped }) => {
            let name = match (end, mapped) {
                (End::Local, true) => "local.ip",
                (End::Local, false) => "local.ip4/ip6",
                (End::Remote, true) => "remote.ip",
                (End::Remote, false) => "remote.ip4/ip6",
            };
            format!("{name} in {}", set(nets.iter().map(net)))
        }
        Cond::Test(_) => "(a per-message test)".into(),
    }
}

fn set(items: impl ExactSizeIterator<Item = String>) -> String {
    let n = items.len();
    let mut shown: Vec<String> = items.take(SHOWN).collect();
    if n > SHOWN {
        shown.push(format!("… {} more", n - SHOWN));
    }
    format!("{{{}}}", shown.join(", "))
}

fn net(n: &Net) -> String {
    match n {
        Net::V4 { addr, prefix } => format!("{}/{prefix}", Ipv4Addr::from(*addr)),
        Net::V6 { addr, prefix } => format!("{}/{prefix}", Ipv6Addr::from(*addr)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::check;

    fn policy(src: &str) -> Policy {
        match check(src) {
            (Some(p), _) => p,
            (None, diags) => panic!("{src}: {diags:?}"),
        }
    }

    fn takes(src: &str) -> String {
        describe(&taken(&policy(src)))
    }

    #[test]
    fn a_port_rule_takes_that_port_at_either_end() {
        assert_eq!(
            takes("drop if port == 6379 and len > 4096;"),
            "local.port == 6379 or remote.port == 6379"
        );
        assert_eq!(takes("drop if remote.port == 5432;"), "remote.port == 5432");
    }

    #[test]
    fn per_send_fields_cannot_exclude_a_connection() {
        for src in [
            "drop if len > 100;",
            "drop if payload[0..4] == \"SET \";",
            "drop if uid == 0;",
            "drop if comm == \"curl\";",
            "discard if pid == 1;",
            "drop if cgroup == 7;",
        ] {
            assert_eq!(takes(src), "every connection", "{src}");
        }
    }

    #[test]
    fn every_acting_kind_takes_and_pass_does_not() {
        let acting = [
            "drop if local.port == 80;",
            "discard if local.port == 80;",
            "reply \"-ERR\\r\\n\" if local.port == 80;",
            "cork 100 if local.port == 80;",
            "redirect to sock 1 if local.port == 80;",
            "count hits if local.port == 80;",
            "log if local.port == 80;",
        ];
        for src in acting {
            assert_eq!(takes(src), "local.port == 80", "{src}");
        }
        assert_eq!(takes("pass if local.port == 80;"), "no connection");
        assert_eq!(takes("pass for 100 if local.port == 80;"), "no connection");
        assert_eq!(takes("pass;"), "no connection");
    }

    #[test]
    fn rules_on_ports_merge_into_one_set() {
        assert_eq!(
            takes("drop if local.port == 80;\ndrop if local.port == 81;\nlog if local.port in 1000..2000;"),
            "local.port in {80..81, 1000..2000}"
        );
    }

    #[test]
    fn negations_and_or() {
        // `not` of a connection test is its complement.
        assert_eq!(
            takes("drop if not local.port == 80;"),
            "local.port in {0..79, 81..65535}"
        );
        // `not` of a per-send test says nothing about the connection.
        assert_eq!(
            takes("drop if local.port == 80 and not len > 10;"),
            "local.port == 80"
        );
        // An `or` with a per-send test can match anywhere.
        assert_eq!(
            takes("drop if local.port == 80 or len > 10;"),
            "every connection"
        );
        assert_eq!(
            takes("drop if local.port == 80 or remote.ip in 10.0.0.0/8;"),
            "local.port == 80 or remote.ip in {10.0.0.0/8}"
        );
    }

    #[test]
    fn defaults() {
        // A default other than pass takes every connection no earlier rule decides for all
        // of its messages.
        assert_eq!(takes("default drop;"), "every connection");
        assert_eq!(takes("pass if len > 0;\ndefault drop;"), "every connection");
        assert_eq!(
            takes("pass if local.port == 22;\ndefault drop;"),
            "local.port in {0..21, 23..65535}"
        );
        assert_eq!(
            takes("default pass;\ndrop if local.port == 1;"),
            "local.port == 1"
        );
    }

    #[test]
    fn an_earlier_pass_shadows_later_rules() {
        assert_eq!(
            takes("pass if local.port == 22;\ndrop if len > 10;"),
            "local.port in {0..21, 23..65535}"
        );
        // Only where the pass decides every message.
        assert_eq!(
            takes("pass if local.port == 22 and len < 5;\ndrop if len > 10;"),
            "every connection"
        );
    }

    #[test]
    fn a_peer_redirect_takes_the_peer_too() {
        assert_eq!(
            takes("redirect ingress to peer if remote.port == 6379;"),
            "remote.port == 6379 or local.port == 6379"
        );
        assert_eq!(
            takes("redirect ingress to peer if local.ip in 10.0.0.0/8 and remote.port == 80;"),
            "(remote.port == 80 and local.ip in {10.0.0.0/8}) or (local.port == 80 and remote.ip in {10.0.0.0/8})"
        );
    }

    #[test]
    fn the_evaluator_agrees_that_untaken_connections_meet_no_acting_rule() {
        use crate::eval::{eval, holds, Fired};
        use crate::hir::Message;
        let src = "pass if local.port == 22;\n\
                   drop if remote.port in 1..1000 and len > 3;\n\
                   log if family == inet6 and payload[0..1] == \"x\";\n\
                   count c if not remote.ip in 10.0.0.0/8 and uid == 0;\n\
                   pass if remote.port == 7;\n\
                   discard if local.port in 5000..6000 or remote.port == 5;\n\
                   default pass;";
        let p = policy(src);
        let c = taken(&p);
        let mut left_out = 0;
        for (i, (lport, rport)) in [22u16, 80, 5001, 6001, 7, 40000]
            .into_iter()
            .flat_map(|l| [1u16, 5, 7, 999, 1000, 8080].map(move |r| (l, r)))
            .enumerate()
        {
            for (family, ip) in [
                (skpc_abi::AF_INET, "10.1.2.3"),
                (skpc_abi::AF_INET, "192.168.0.1"),
                (skpc_abi::AF_INET6, "fe80::1"),
            ] {
                let conn = Message {
                    family,
                    local_port: lport,
                    remote_port: rport,
                    remote_ip: ip.parse().expect("an address"),
                    ..Message::default()
                };
                if holds(&c, &conn) {
                    continue;
                }
                left_out += 1;
                for (len, payload, uid) in [(0, &b""[..], 1000), (10, b"xyz", 0), (3, b"x", 0)] {
                    let msg = Message {
                        len,
                        payload: payload.to_vec(),
                        uid,
                        ..conn.clone()
                    };
                    let out = eval(&p, &msg);
                    let acted = match out.fired {
                        Fired::Default => false,
                        Fired::Rule(r) => acts(&p.rules[r].action),
                    } || out.counters.iter().enumerate().any(|(slot, n)| {
                        n.0 > 0
                            && slot != p.default.counter
                            && !matches!(out.fired, Fired::Rule(r) if r == slot)
                    }) || !out.events.is_empty();
                    assert!(!acted, "case {i}: {msg:?} is not taken but {out:?}");
                }
            }
        }
        assert!(left_out > 0, "the condition leaves some connection out");
    }

    #[test]
    fn huge_conditions_take_everything() {
        let src: String = (0..MAX_CONNECTION_TERMS + 1)
            .map(|i| format!("drop if local.port == {};\n", 2 * i + 1))
            .collect();
        assert_eq!(takes(&src), "every connection");
    }
}
