//! The examples check cleanly (no errors, no warnings) and their in-file test cases hold
//! under a small reference evaluation of the HIR; and one test per construct of the
//! language (docs/language.md), asserting the HIR shape a user would expect.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use skpc::check::check;
use skpc::diag::render_plain;
use skpc::hir::{
    Action, Cond, Decision, End, IntField, Message, Net, Policy, SockSlot, Target, Test, TextOp,
    Verdict,
};

// ------------------------------------------------------------------------- helpers

/// Checks `src`, failing with the rendered diagnostics on any error or warning.
fn policy(src: &str) -> Policy {
    let (p, diags) = check(src);
    assert!(
        diags.is_empty(),
        "unexpected diagnostics:\n{}",
        render_plain("policy.skp", src, &diags)
    );
    p.expect("no diagnostics means a policy")
}

/// The HIR condition of `drop if COND;`.
fn cond(c: &str) -> Cond {
    let p = policy(&format!("drop if {c};"));
    assert_eq!(p.rules.len(), 1);
    p.rules[0].cond.clone()
}

fn int(field: IntField, ranges: &[(u64, u64)]) -> Cond {
    Cond::Test(Test::Int {
        field,
        ranges: ranges.to_vec(),
    })
}

fn addr(end: End, nets: &[Net], mapped: bool) -> Cond {
    Cond::Test(Test::Addr {
        end,
        nets: nets.to_vec(),
        mapped,
    })
}

fn v4(a: [u8; 4], prefix: u8) -> Net {
    Net::V4 {
        addr: u32::from(Ipv4Addr::from(a)),
        prefix,
    }
}

fn v6(a: &str, prefix: u8) -> Net {
    Net::V6 {
        addr: u128::from(a.parse::<Ipv6Addr>().unwrap()),
        prefix,
    }
}

fn payload(offset: u32, alts: &[&[u8]]) -> Cond {
    Cond::Test(Test::Payload {
        offset,
        alts: alts.iter().map(|a| a.to_vec()).collect(),
    })
}

fn decision(verdict: Verdict, apply_bytes: Option<u32>) -> Decision {
    Decision {
        verdict,
        apply_bytes,
    }
}

/// The decision of the single rule of a policy.
fn decide(src: &str) -> Decision {
    let p = policy(src);
    match &p.rules[0].action {
        Action::Decide(d) => d.clone(),
        other => panic!("not a verdict: {other:?}"),
    }
}

// ------------------------------------------------------------- reference evaluation

fn int_field(f: IntField, m: &Message) -> Option<u64> {
    Some(match f {
        IntField::Len => m.len as u64,
        IntField::Family => m.family as u64,
        IntField::LocalPort => m.local_port as u64,
        IntField::RemotePort => m.remote_port as u64,
        IntField::Uid => m.uid as u64,
        IntField::Gid => m.gid as u64,
        IntField::Pid => m.pid as u64,
        IntField::Cgroup => m.cgroup,
        IntField::PayloadByte(i) => *m.payload.get(i as usize)? as u64,
    })
}

fn eval_test(t: &Test, m: &Message) -> bool {
    match t {
        Test::InFile { of, .. } => eval_test(of, m),
        Test::Int { field, ranges } => match int_field(*field, m) {
            Some(v) => ranges.iter().any(|&(lo, hi)| lo <= v && v <= hi),
            None => false,
        },
        Test::Addr { end, nets, mapped } => {
            let ip = match end {
                End::Local => m.local_ip,
                End::Remote => m.remote_ip,
            };
            let as_v4 = match ip {
                IpAddr::V6(a) if *mapped => a.to_ipv4_mapped().map(IpAddr::V4),
                _ => None,
            };
            nets.iter()
                .any(|n| n.contains(&ip) || as_v4.is_some_and(|a| n.contains(&a)))
        }
        Test::Payload { offset, alts } => alts.iter().any(|a| {
            let o = *offset as usize;
            m.payload.get(o..o + a.len()) == Some(a.as_slice())
        }),
        Test::Comm { alts, prefix } => alts.iter().any(|a| {
            if *prefix {
                m.comm.starts_with(a)
            } else {
                m.comm == *a
            }
        }),
        // The protocol parsers are the spec (docs/language.md, Protocols): use them.
        Test::Proto(p) => skpc::eval::proto::parse_message(*p, &m.payload, m.len).is_some(),
        Test::Text { field, op, alts } => {
            let parsed = skpc::eval::proto::parse_message(field.proto(), &m.payload, m.len);
            let Some(v) = parsed.as_ref().and_then(|p| p.text(*field)) else {
                return false;
            };
            alts.iter().any(|a| match op {
                TextOp::Eq => v == a.as_slice(),
                TextOp::StartsWith => v.starts_with(a),
                TextOp::EndsWith => v.ends_with(a),
            })
        }
    }
}

fn eval_cond(c: &Cond, m: &Message) -> bool {
    match c {
        Cond::Const(b) => *b,
        Cond::And(cs) => cs.iter().all(|c| eval_cond(c, m)),
        Cond::Or(cs) => cs.iter().any(|c| eval_cond(c, m)),
        Cond::Not(c) => !eval_cond(c, m),
        Cond::Test(t) => eval_test(t, m),
    }
}

/// What the policy decides for `m`: the first matching terminal rule, else the default.
fn evaluate(p: &Policy, m: &Message) -> Decision {
    for r in &p.rules {
        if let Action::Decide(d) = &r.action {
            if eval_cond(&r.cond, m) {
                let mut d = d.clone();
                if let Verdict::Redirect {
                    target: Target::Sock(SockSlot::Field(f)),
                    ingress,
                } = d.verdict
                {
                    let slot = int_field(f, m).unwrap_or(u64::MAX) as u32;
                    d.verdict = Verdict::Redirect {
                        ingress,
                        target: Target::Sock(SockSlot::Const(slot)),
                    };
                }
                return d;
            }
        }
    }
    p.default.decision.clone()
}

fn example_files() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("examples/ exists")
        .map(|e| e.expect("readable directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "skp"))
        .collect();
    files.sort();
    files
}

// ------------------------------------------------------------------------ examples

#[test]
fn every_example_checks_without_errors_or_warnings() {
    let files = example_files();
    assert!(
        files.len() >= 10,
        "expected at least 10 examples, found {}",
        files.len()
    );
    for f in files {
        let src = std::fs::read_to_string(&f).unwrap();
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        let (p, diags) = check(&src);
        assert!(
            diags.is_empty(),
            "{name}:\n{}",
            render_plain(&name, &src, &diags)
        );
        let p = p.unwrap_or_else(|| panic!("{name}: no policy"));
        assert!(src.starts_with('#'), "{name}: starts with a comment header");
        assert!(p.tests.len() >= 3, "{name}: has several test cases");
        let plain_pass = decision(Verdict::Pass, None);
        assert!(
            p.tests.iter().any(|t| t.expect == plain_pass),
            "{name}: a test case where the message passes"
        );
        assert!(
            p.tests.iter().any(|t| t.expect != plain_pass),
            "{name}: a test case where the policy acts"
        );
    }
}

#[test]
fn example_test_cases_hold_under_reference_evaluation() {
    for f in example_files() {
        let src = std::fs::read_to_string(&f).unwrap();
        let p = check(&src).0.unwrap();
        for t in &p.tests {
            assert_eq!(
                evaluate(&p, &t.message),
                t.expect,
                "{}: test case {:?} (line {})",
                f.display(),
                t.name,
                t.line
            );
        }
    }
}

// -------------------------------------------------------------------- actions

#[test]
fn action_pass() {
    assert_eq!(decide("pass;"), decision(Verdict::Pass, None));
}

#[test]
fn action_drop() {
    assert_eq!(decide("drop;"), decision(Verdict::Drop, None));
}

#[test]
fn action_redirect_to_sock() {
    let sock = |ingress, n| Verdict::Redirect {
        ingress,
        target: Target::Sock(SockSlot::Const(n)),
    };
    assert_eq!(
        decide("redirect to sock 3;"),
        decision(sock(false, 3), None)
    );
    assert_eq!(
        decide("redirect ingress to sock 0;"),
        decision(sock(true, 0), None)
    );
    assert_eq!(
        decide("const BACKEND = 63; redirect to sock BACKEND;"),
        decision(sock(false, 63), None)
    );
    // The key may be an integer field of the message.
    assert_eq!(
        decide("redirect to sock uid;").verdict,
        Verdict::Redirect {
            ingress: false,
            target: Target::Sock(SockSlot::Field(IntField::Uid))
        }
    );
}

#[test]
fn action_redirect_to_peer() {
    // Egress to the peer is legal but sends the bytes back to the sender: a warning.
    let (p, diags) = check("redirect to peer;");
    assert_eq!(
        diags.iter().map(|d| d.code).collect::<Vec<_>>(),
        vec!["W0004"]
    );
    let Action::Decide(d) = &p.expect("warnings only").rules[0].action else {
        panic!("not a verdict")
    };
    assert_eq!(
        d.verdict,
        Verdict::Redirect {
            ingress: false,
            target: Target::Peer
        }
    );
    assert_eq!(
        decide("redirect ingress to peer;").verdict,
        Verdict::Redirect {
            ingress: true,
            target: Target::Peer
        }
    );
}

#[test]
fn action_for_n_is_apply_bytes() {
    assert_eq!(
        decide("pass for 1MiB;"),
        decision(Verdict::Pass, Some(1 << 20))
    );
    assert_eq!(decide("drop for 100;"), decision(Verdict::Drop, Some(100)));
    assert_eq!(
        decide("redirect to sock 1 for 4096;").apply_bytes,
        Some(4096)
    );
    assert_eq!(decide("pass for 4294967295;").apply_bytes, Some(u32::MAX));
}

#[test]
fn action_cork() {
    assert_eq!(decide("cork 16;"), decision(Verdict::Cork(16), None));
    assert_eq!(decide("cork 1KiB;").verdict, Verdict::Cork(1024));
}

#[test]
fn action_discard() {
    assert_eq!(decide("discard;"), decision(Verdict::Discard, None));
    let p = policy("discard if payload starts with \"PING\";");
    assert!(p.rules[0].action.is_terminal());
    assert_ne!(p.rules[0].cond, Cond::Const(true));
    let p = policy("pass if remote.port == 443;\ndefault discard;");
    assert_eq!(p.default.decision, decision(Verdict::Discard, None));
    let p = policy("discard;\ntest \"t\" { expect discard; }");
    assert_eq!(p.tests[0].expect, decision(Verdict::Discard, None));
}

#[test]
fn action_discard_refuses_for_n() {
    // apply_bytes is not combined with a rewrite of the message: E0221, in a rule, the
    // default and an expectation alike.
    for src in [
        "discard for 10;",
        "discard for 1KiB if len > 5;",
        "default discard for 10;",
        "test \"t\" { expect discard for 10; }",
    ] {
        let (p, diags) = check(src);
        assert!(p.is_none(), "{src}");
        assert_eq!(
            diags.iter().map(|d| d.code).collect::<Vec<_>>(),
            vec!["E0221"],
            "{src}"
        );
    }
}

#[test]
fn action_count_is_a_named_non_terminal_counter() {
    let p = policy("count big if len > 100; count big if len > 1000; count small if len < 10;");
    // Three rules, then the two distinct names, then the default.
    assert_eq!(p.counters.len(), 3 + 2 + 1);
    assert_eq!(p.rules[0].action, Action::Count { counter: 3 });
    assert_eq!(p.rules[1].action, Action::Count { counter: 3 });
    assert_eq!(p.rules[2].action, Action::Count { counter: 4 });
    assert_eq!(p.counters[3].name, "big");
    assert_eq!(p.counters[4].name, "small");
    assert!(!p.rules[0].action.is_terminal());
}

#[test]
fn action_log_is_non_terminal() {
    let p = policy("log if port == 22;");
    assert_eq!(p.rules[0].action, Action::Log);
    assert!(!p.rules[0].action.is_terminal());
    assert_eq!(p.default.decision, decision(Verdict::Pass, None));
}

#[test]
fn action_without_if_always_applies() {
    assert_eq!(policy("drop;").rules[0].cond, Cond::Const(true));
}

#[test]
fn default_decides_when_no_rule_matches() {
    let p = policy("drop if len > 10;\ndefault drop for 8;");
    assert_eq!(p.default.decision, decision(Verdict::Drop, Some(8)));
    assert!(p.default.span.is_some());
    // Absent, the default is `pass`.
    let p = policy("drop if len > 10;");
    assert_eq!(p.default.decision, decision(Verdict::Pass, None));
    assert!(p.default.span.is_none());
}

#[test]
fn first_matching_terminal_rule_decides() {
    let p = policy(
        "count seen; pass if port == 80; drop if len > 10;\n\
         test \"80\" { remote.port = 80; len = 100; expect pass; }\n\
         test \"other\" { remote.port = 81; len = 100; expect drop; }",
    );
    assert_eq!(p.rules.len(), 3);
    for t in &p.tests {
        assert_eq!(evaluate(&p, &t.message), t.expect, "{}", t.name);
    }
    // Rule i owns counter slot i; lines are recorded.
    assert!(p.rules.iter().enumerate().all(|(i, r)| r.counter == i));
    assert_eq!(p.rules[2].line, 1);
}

// --------------------------------------------------------------------- fields

#[test]
fn field_len() {
    assert_eq!(
        cond("len > 4096"),
        int(IntField::Len, &[(4097, u32::MAX as u64)])
    );
}

#[test]
fn field_family() {
    assert_eq!(cond("family == inet"), int(IntField::Family, &[(2, 2)]));
    assert_eq!(cond("family == inet6"), int(IntField::Family, &[(10, 10)]));
    assert_eq!(
        cond("family in {inet, inet6}"),
        int(IntField::Family, &[(2, 2), (10, 10)])
    );
}

#[test]
fn field_local_and_remote_port() {
    assert_eq!(
        cond("local.port == 9000"),
        int(IntField::LocalPort, &[(9000, 9000)])
    );
    assert_eq!(
        cond("remote.port == 443"),
        int(IntField::RemotePort, &[(443, 443)])
    );
}

#[test]
fn field_port_means_either_end() {
    let either = Cond::Or(vec![
        int(IntField::LocalPort, &[(80, 80)]),
        int(IntField::RemotePort, &[(80, 80)]),
    ]);
    assert_eq!(cond("port == 80"), either);
    // `port != 80` is `not (port == 80)`: neither end is 80.
    assert_eq!(cond("port != 80"), Cond::Not(Box::new(either)));
}

#[test]
fn field_local_and_remote_ip() {
    assert_eq!(
        cond("local.ip == 10.0.0.1"),
        addr(End::Local, &[v4([10, 0, 0, 1], 32)], true)
    );
    assert_eq!(
        cond("remote.ip == ::1"),
        addr(End::Remote, &[v6("::1", 128)], true)
    );
}

#[test]
fn field_ip_means_either_end() {
    assert_eq!(
        cond("ip == 127.0.0.1"),
        Cond::Or(vec![
            addr(End::Local, &[v4([127, 0, 0, 1], 32)], true),
            addr(End::Remote, &[v4([127, 0, 0, 1], 32)], true),
        ])
    );
}

#[test]
fn field_family_specific_address_views() {
    // ip4/ip6 views do not match IPv4-mapped addresses.
    assert_eq!(
        cond("remote.ip4 in 10.0.0.0/8"),
        addr(End::Remote, &[v4([10, 0, 0, 0], 8)], false)
    );
    assert_eq!(
        cond("local.ip6 == fe80::1"),
        addr(End::Local, &[v6("fe80::1", 128)], false)
    );
}

#[test]
fn ipv4_literals_match_ipv4_mapped_addresses() {
    let p = policy(
        "drop if remote.ip == 10.1.2.3;\n\
         test \"v4\" { remote.ip = 10.1.2.3; expect drop; }\n\
         test \"mapped\" { family = inet6; remote.ip = 10.1.2.3; expect drop; }\n\
         test \"mapped literal\" { remote.ip = ::ffff:10.1.2.3; expect drop; }\n\
         test \"other\" { remote.ip = 10.1.2.4; expect pass; }",
    );
    assert_eq!(
        p.tests[1].message.remote_ip,
        IpAddr::V6(Ipv4Addr::new(10, 1, 2, 3).to_ipv6_mapped())
    );
    for t in &p.tests {
        assert_eq!(evaluate(&p, &t.message), t.expect, "{}", t.name);
    }
    // The family-specific view does not see the mapped form.
    let p = policy(
        "drop if remote.ip4 == 10.1.2.3;\n\
         test \"mapped\" { family = inet6; remote.ip = 10.1.2.3; expect pass; }",
    );
    assert_eq!(evaluate(&p, &p.tests[0].message), p.tests[0].expect);
}

#[test]
fn field_payload_byte() {
    assert_eq!(
        cond("payload[3] == 0x41"),
        int(IntField::PayloadByte(3), &[(0x41, 0x41)])
    );
}

#[test]
fn field_payload_slice_is_half_open() {
    assert_eq!(cond("payload[0..4] == \"SET \""), payload(0, &[b"SET "]));
    assert_eq!(cond("payload[2..3] == \"x\""), payload(2, &[b"x"]));
    assert_eq!(
        cond("payload[4..8] in {\"abcd\", \"wxyz\"}"),
        payload(4, &[b"abcd", b"wxyz"])
    );
}

#[test]
fn field_payload_starts_with() {
    assert_eq!(cond("payload starts with \"GET \""), payload(0, &[b"GET "]));
    assert_eq!(
        cond("payload starts with {\"GET \", \"HEAD \"}"),
        Cond::Or(vec![payload(0, &[b"GET "]), payload(0, &[b"HEAD "])])
    );
}

#[test]
fn field_uid_gid_pid_cgroup() {
    assert_eq!(
        cond("uid != 0"),
        Cond::Not(Box::new(int(IntField::Uid, &[(0, 0)])))
    );
    assert_eq!(cond("gid == 100"), int(IntField::Gid, &[(100, 100)]));
    assert_eq!(cond("pid < 300"), int(IntField::Pid, &[(0, 299)]));
    assert_eq!(
        cond("cgroup >= 18446744073709551615"),
        int(IntField::Cgroup, &[(u64::MAX, u64::MAX)])
    );
}

#[test]
fn field_comm() {
    assert_eq!(
        cond("comm == \"curl\""),
        Cond::Test(Test::Comm {
            alts: vec![b"curl".to_vec()],
            prefix: false
        })
    );
    assert_eq!(
        cond("comm starts with \"python\""),
        Cond::Test(Test::Comm {
            alts: vec![b"python".to_vec()],
            prefix: true
        })
    );
    assert_eq!(
        cond("comm in {\"psql\", \"pg_dump\"}"),
        Cond::Test(Test::Comm {
            alts: vec![b"pg_dump".to_vec(), b"psql".to_vec()],
            prefix: false
        })
    );
}

// ------------------------------------------------------------------- literals

#[test]
fn literal_decimal_hex_and_separators() {
    assert_eq!(
        cond("len == 1_000_000"),
        int(IntField::Len, &[(1_000_000, 1_000_000)])
    );
    assert_eq!(cond("len == 0x1F"), int(IntField::Len, &[(31, 31)]));
    assert_eq!(
        cond("len == 0xffff_ffff"),
        int(IntField::Len, &[(u32::MAX as u64, u32::MAX as u64)])
    );
}

#[test]
fn literal_size_suffixes() {
    assert_eq!(cond("len == 64KiB"), int(IntField::Len, &[(65536, 65536)]));
    assert_eq!(
        cond("len == 1MiB"),
        int(IntField::Len, &[(1 << 20, 1 << 20)])
    );
    assert_eq!(
        cond("len == 2GiB"),
        int(IntField::Len, &[(2 << 30, 2 << 30)])
    );
}

#[test]
fn literal_ipv4_and_ipv6_addresses() {
    assert_eq!(
        cond("remote.ip == 192.168.1.1"),
        addr(End::Remote, &[v4([192, 168, 1, 1], 32)], true)
    );
    assert_eq!(
        cond("remote.ip == 2001:db8::1"),
        addr(End::Remote, &[v6("2001:db8::1", 128)], true)
    );
}

#[test]
fn literal_cidr_prefixes() {
    assert_eq!(
        cond("remote.ip in 10.0.0.0/8"),
        addr(End::Remote, &[v4([10, 0, 0, 0], 8)], true)
    );
    assert_eq!(
        cond("remote.ip in fd00::/8"),
        addr(End::Remote, &[v6("fd00::", 8)], true)
    );
    assert_eq!(
        cond("remote.ip in 0.0.0.0/0"),
        addr(End::Remote, &[v4([0, 0, 0, 0], 0)], true)
    );
}

#[test]
fn literal_strings_with_escapes() {
    assert_eq!(
        cond(r#"payload[0..9] == "\r\n\t\\\"\x00\xff\0A""#),
        payload(0, &[b"\r\n\t\\\"\x00\xff\x00A"])
    );
}

#[test]
fn literal_ranges_are_inclusive() {
    assert_eq!(
        cond("remote.port in 8000..8099"),
        int(IntField::RemotePort, &[(8000, 8099)])
    );
    assert_eq!(
        cond("len in 1KiB..2KiB"),
        int(IntField::Len, &[(1024, 2048)])
    );
    assert_eq!(
        cond("payload[0] in 0x14..0x17"),
        int(IntField::PayloadByte(0), &[(0x14, 0x17)])
    );
}

#[test]
fn literal_sets_of_every_kind() {
    // Integers and ranges: sorted, merged (adjacent too).
    assert_eq!(
        cond("remote.port in {443, 80, 8000..8099, 8100}"),
        int(IntField::RemotePort, &[(80, 80), (443, 443), (8000, 8100)])
    );
    // Addresses and prefixes of both families.
    assert_eq!(
        cond("remote.ip in {10.0.0.0/8, ::1, 192.168.0.0/16, fd00::/8}"),
        addr(
            End::Remote,
            &[
                v4([10, 0, 0, 0], 8),
                v4([192, 168, 0, 0], 16),
                v6("::1", 128),
                v6("fd00::", 8)
            ],
            true
        )
    );
    // Strings (see field_payload_slice_is_half_open and field_comm).
    assert_eq!(cond("payload[0..2] in {\"ab\"}"), payload(0, &[b"ab"]));
    // The empty set matches nothing (and the HIR is folded: the `or` keeps one side).
    assert_eq!(
        cond("remote.port in {} or len == 1"),
        int(IntField::Len, &[(1, 1)])
    );
}

#[test]
fn named_const_and_set_declarations() {
    let p = policy(
        "const REDIS = 6379;\n\
         const DB = 10.0.0.5;\n\
         const GREETING = \"HELO\";\n\
         set web = {80, 443, 8000..8099};\n\
         set lan = {10.0.0.0/8, fd00::/8};\n\
         set more_web = {web, 8443};\n\
         drop if port == REDIS;\n\
         drop if remote.ip == DB;\n\
         drop if payload[0..4] == GREETING;\n\
         drop if remote.port in web;\n\
         drop if remote.ip in lan;\n\
         drop if remote.port in more_web;",
    );
    let c: Vec<&Cond> = p.rules.iter().map(|r| &r.cond).collect();
    assert_eq!(
        c[0],
        &Cond::Or(vec![
            int(IntField::LocalPort, &[(6379, 6379)]),
            int(IntField::RemotePort, &[(6379, 6379)])
        ])
    );
    assert_eq!(c[1], &addr(End::Remote, &[v4([10, 0, 0, 5], 32)], true));
    assert_eq!(c[2], &payload(0, &[b"HELO"]));
    assert_eq!(
        c[3],
        &int(IntField::RemotePort, &[(80, 80), (443, 443), (8000, 8099)])
    );
    assert_eq!(
        c[4],
        &addr(End::Remote, &[v4([10, 0, 0, 0], 8), v6("fd00::", 8)], true)
    );
    assert_eq!(
        c[5],
        &int(
            IntField::RemotePort,
            &[(80, 80), (443, 443), (8000, 8099), (8443, 8443)]
        )
    );
}

// ------------------------------------------------------------------ operators

#[test]
fn operators_comparisons() {
    let max = u32::MAX as u64;
    assert_eq!(cond("len == 5"), int(IntField::Len, &[(5, 5)]));
    assert_eq!(
        cond("len != 5"),
        Cond::Not(Box::new(int(IntField::Len, &[(5, 5)])))
    );
    assert_eq!(cond("len < 5"), int(IntField::Len, &[(0, 4)]));
    assert_eq!(cond("len <= 5"), int(IntField::Len, &[(0, 5)]));
    assert_eq!(cond("len > 5"), int(IntField::Len, &[(6, max)]));
    assert_eq!(cond("len >= 5"), int(IntField::Len, &[(5, max)]));
    // A constant on the left is mirrored.
    assert_eq!(cond("5 < len"), int(IntField::Len, &[(6, max)]));
}

#[test]
fn operators_in_set_range_and_cidr() {
    assert_eq!(
        cond("uid in {0, 1000}"),
        int(IntField::Uid, &[(0, 0), (1000, 1000)])
    );
    assert_eq!(
        cond("uid in 1000..1999"),
        int(IntField::Uid, &[(1000, 1999)])
    );
    assert_eq!(
        cond("local.ip in 127.0.0.0/8"),
        addr(End::Local, &[v4([127, 0, 0, 0], 8)], true)
    );
}

#[test]
fn operators_and_or_not_and_parentheses() {
    let a = int(IntField::Len, &[(6, u32::MAX as u64)]);
    let b = int(IntField::Uid, &[(0, 0)]);
    let c = int(IntField::Gid, &[(0, 0)]);
    assert_eq!(
        cond("len > 5 and uid == 0"),
        Cond::And(vec![a.clone(), b.clone()])
    );
    assert_eq!(
        cond("len > 5 or uid == 0"),
        Cond::Or(vec![a.clone(), b.clone()])
    );
    assert_eq!(cond("not len > 5"), Cond::Not(Box::new(a.clone())));
    // `and` binds tighter than `or`; parentheses override.
    assert_eq!(
        cond("len > 5 or uid == 0 and gid == 0"),
        Cond::Or(vec![a.clone(), Cond::And(vec![b.clone(), c.clone()])])
    );
    assert_eq!(
        cond("(len > 5 or uid == 0) and gid == 0"),
        Cond::And(vec![Cond::Or(vec![a.clone(), b.clone()]), c.clone()])
    );
    // `not` applies to the next atom.
    assert_eq!(
        cond("not len > 5 and uid == 0"),
        Cond::And(vec![Cond::Not(Box::new(a)), b])
    );
}

#[test]
fn boolean_constants() {
    // The HIR's conditions are folded: no pass after the checker folds again.
    assert_eq!(cond("true or len > 1"), Cond::Const(true));
    assert_eq!(
        cond("false or len > 1"),
        int(IntField::Len, &[(2, u32::MAX as u64)])
    );
    assert_eq!(cond("not not len > 1 and true"), cond("len > 1"));
}

// ------------------------------------------------------------ comments, tests

#[test]
fn comments_hash_and_double_slash() {
    let p = policy("# a comment\ndrop if len > 1; // another\n// pass;\n# pass;\n");
    assert_eq!(p.rules.len(), 1);
    assert_eq!(p.rules[0].line, 2);
}

#[test]
fn test_cases_and_their_defaults() {
    let p = policy(
        "drop if port == 6379 and len > 4096;\n\
         test \"defaults\" { expect pass; }\n\
         test \"big redis write is dropped\" {\n\
             remote.port = 6379; len = 5000; payload = \"*3\\r\\n$3\\r\\nSET\\r\\n\";\n\
             uid = 0; gid = 5; pid = 77; cgroup = 9; comm = \"redis-cli\"; local.port = 1234;\n\
             expect drop;\n\
         }\n\
         test \"v6\" { remote.ip = fd00::1; expect pass for 10; }\n\
         test \"redirect\" { expect redirect ingress to sock 3; }\n\
         test \"cork\" { expect cork 8; }\n",
    );
    assert_eq!(p.tests.len(), 5);
    let d = &p.tests[0].message;
    assert_eq!(*d, Message::default());
    assert_eq!(d.family, 2);
    assert_eq!(d.local_ip, IpAddr::V4(Ipv4Addr::LOCALHOST));
    assert_eq!(d.remote_ip, IpAddr::V4(Ipv4Addr::LOCALHOST));
    assert_eq!((d.local_port, d.remote_port), (40000, 8080));
    assert_eq!((d.uid, d.gid, d.pid, d.cgroup), (1000, 1000, 4242, 1));
    assert_eq!(d.comm, b"client");
    assert_eq!((d.len, d.payload.len()), (0, 0));
    assert_eq!(p.tests[0].name, "defaults");
    assert_eq!(p.tests[0].expect, decision(Verdict::Pass, None));

    let t = &p.tests[1];
    assert_eq!(t.name, "big redis write is dropped");
    assert_eq!(t.line, 3);
    let m = &t.message;
    assert_eq!((m.remote_port, m.local_port, m.len), (6379, 1234, 5000));
    assert_eq!(m.payload, b"*3\r\n$3\r\nSET\r\n");
    assert_eq!((m.uid, m.gid, m.pid, m.cgroup), (0, 5, 77, 9));
    assert_eq!(m.comm, b"redis-cli");
    assert_eq!(t.expect, decision(Verdict::Drop, None));
    assert_eq!(evaluate(&p, m), t.expect);

    // An IPv6 address makes the case inet6; the unset address becomes ::1.
    let m = &p.tests[2].message;
    assert_eq!(m.family, 10);
    assert_eq!(m.local_ip, IpAddr::V6(Ipv6Addr::LOCALHOST));
    assert_eq!(m.remote_ip, "fd00::1".parse::<IpAddr>().unwrap());
    assert_eq!(p.tests[2].expect, decision(Verdict::Pass, Some(10)));

    assert_eq!(
        p.tests[3].expect.verdict,
        Verdict::Redirect {
            ingress: true,
            target: Target::Sock(SockSlot::Const(3))
        }
    );
    assert_eq!(p.tests[4].expect.verdict, Verdict::Cork(8));
}

#[test]
fn test_case_len_defaults_to_the_payload_length() {
    let p = policy("test \"t\" { payload = \"hello\"; expect pass; }");
    assert_eq!(p.tests[0].message.len, 5);
}
