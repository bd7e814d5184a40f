//! Differential testing of protocol-field rules in the rule index
//! (compiler/lower/text_index.rs): random segments of hundreds of `drop` rules that
//! compare protocol fields with strings (`==`, `starts with`, `ends with`, sets of them,
//! `or`s of two fields), their strings cut from the fields of random protocol messages
//! (policygen::proto) so that many match, often several rules at once (equal strings,
//! nested prefixes and suffixes); between them rules of code (another conjunct, a
//! string no map keys, a port); after them `pass` rules on the same fields and a
//! default. Messages: the pool's, mutated, or fresh. Each policy is compiled with and
//! without counters and with every set as a map (`set_maps_above: Some(0)`); the VM runs
//! each program and must agree with the reference evaluator on the decision and on every
//! counter (the first matching rule counts, and only it).
//!
//! The kernel leg loads a sample of such policies with the runtime (it fills the
//! groups' maps) and sends the messages over loopback TCP (port 47201): each send's
//! result, the bytes that arrive and the counters that move must be the evaluator's.
//! Root only (skipped otherwise; SKP_REQUIRE_KERNEL=1 makes that a failure).
//!
//! `SKP_SEED` changes the seed; `SKP_TEXT_POLICIES` (VM) and `SKP_KERNEL_TEXT_POLICIES`
//! the numbers of policies.

mod common;
mod e2e_support;
mod policygen;

use std::net::{TcpListener, TcpStream};

use e2e_support::EACCES;

use policygen::proto::{message, payload};
use policygen::{quote, Rng};
use skpc::compile::compile_with;
use skpc::eval::{eval, proto::parse_message};
use skpc::fields::{Case, Proto, Text};
use skpc::hir::{Message, TextOp, Verdict};
use skpc::lower::Options;
use skpc::vm::{RunConfig, Vm};

const DEFAULT_SEED: u64 = 0x7e87_0001;
const MESSAGES_PER_POLICY: usize = 120;

/// `s` as a literal of `field`: in its case, cut to its bound, never empty.
fn literal(field: Text, s: &[u8]) -> Vec<u8> {
    let mut v = match field.case() {
        Case::Exact => s.to_vec(),
        Case::Upper => s.to_ascii_uppercase(),
        Case::Lower => s.to_ascii_lowercase(),
    };
    v.truncate(field.max_len() as usize);
    if v.is_empty() {
        v.push(b'x');
    }
    v
}

fn op_text(op: TextOp, set: bool) -> &'static str {
    match op {
        TextOp::Eq if set => "in",
        TextOp::Eq => "==",
        TextOp::StartsWith => "starts with",
        TextOp::EndsWith => "ends with",
    }
}

struct PolicyGen<'a> {
    rng: &'a mut Rng,
    /// The text fields of the pool's messages.
    values: Vec<(Text, Vec<u8>)>,
}

impl PolicyGen<'_> {
    /// A string for `field` and `op`: mostly a value of the pool, whole or the start
    /// (end) of it, else a short word.
    fn string(&mut self, field: Text, op: TextOp) -> Vec<u8> {
        let held: Vec<&Vec<u8>> = self
            .values
            .iter()
            .filter(|(f, _)| *f == field)
            .map(|(_, v)| v)
            .collect();
        if held.is_empty() || self.rng.pct(25) {
            let n = self.rng.range(1, 10) as usize;
            let s: Vec<u8> = (0..n).map(|_| self.rng.pick(b"ab.:x1")).collect();
            return literal(field, &s);
        }
        let v = self.rng.pick(&held).clone();
        let k = self.rng.range(1, v.len() as u64) as usize;
        literal(
            field,
            match op {
                TextOp::Eq => &v,
                TextOp::StartsWith => &v[..k],
                TextOp::EndsWith => &v[v.len() - k..],
            },
        )
    }

    /// `FIELD OP "string"`.
    fn test(&mut self, field: Text, op: TextOp) -> String {
        let s = self.string(field, op);
        format!("{} {} {}", field.name(), op_text(op, false), quote(&s))
    }
}

/// A policy and the messages it is tested with.
fn gen_policy(rng: &mut Rng) -> (String, Vec<Vec<u8>>) {
    let pool: Vec<Vec<u8>> = (0..60)
        .map(|_| {
            let p = rng.pick(&Proto::ALL);
            message(rng, p)
        })
        .collect();
    let mut values = Vec::new();
    for m in &pool {
        for p in Proto::ALL {
            let Some(parsed) = parse_message(p, m, m.len() as u32) else {
                continue;
            };
            for f in Text::ALL.iter().filter(|f| f.proto() == p) {
                if let Some(v) = parsed.text(*f).filter(|v| !v.is_empty()) {
                    values.push((*f, v.to_vec()));
                }
            }
        }
    }
    let mut g = PolicyGen { rng, values };
    let ops = [TextOp::Eq, TextOp::StartsWith, TextOp::EndsWith];
    let groups: Vec<(Text, TextOp)> = (0..g.rng.range(1, 4))
        .map(|_| {
            let f = if g.values.is_empty() || g.rng.pct(20) {
                g.rng.pick(&Text::ALL)
            } else {
                let k = g.rng.below(g.values.len() as u64) as usize;
                g.values[k].0
            };
            (f, g.rng.pick(&ops))
        })
        .collect();
    let n = g.rng.range(130, 400);
    let mut src = String::new();
    for _ in 0..n {
        let (f, op) = g.rng.pick(&groups);
        let rule = match g.rng.below(100) {
            0..=79 => g.test(f, op),
            80..=84 => {
                let (a, b) = (g.string(f, op), g.string(f, op));
                let mut alts = vec![quote(&a)];
                if a != b {
                    alts.push(quote(&b));
                }
                format!(
                    "{} {} {{ {} }}",
                    f.name(),
                    op_text(op, true),
                    alts.join(", ")
                )
            }
            85..=89 => {
                let (f2, op2) = g.rng.pick(&groups);
                format!("{} or {}", g.test(f, op), g.test(f2, op2))
            }
            90..=94 => format!("{} and len > {}", g.test(f, op), g.rng.below(300)),
            95..=96 if f.max_len() > 160 && op != TextOp::Eq => {
                // Longer than a map keys: code.
                let s = vec![b'k'; 160];
                format!("{} {} {}", f.name(), op_text(op, false), quote(&s))
            }
            _ => format!("local.port == {}", if g.rng.pct(10) { 40000 } else { 3000 }),
        };
        src.push_str(&format!("drop if {rule};\n"));
    }
    for _ in 0..g.rng.below(4) {
        let (f, op) = g.rng.pick(&groups);
        src.push_str(&format!("pass if {};\n", g.test(f, op)));
    }
    src.push_str(if g.rng.pct(50) {
        "default drop;\n"
    } else {
        "default pass;\n"
    });
    (src, pool)
}

#[test]
fn the_vm_and_the_evaluator_agree_on_indexed_protocol_field_rules() {
    let seed = policygen::seed(DEFAULT_SEED);
    let policies = policygen::env_usize("SKP_TEXT_POLICIES", 24);
    let mut rng = Rng::new(seed);
    let (mut with_groups, mut by_rule, mut refused) = (0, 0, 0);
    for k in 0..policies {
        let (src, pool) = gen_policy(&mut rng);
        let compilations = [(true, None), (false, None), (true, Some(0))];
        let mut messages: Vec<Message> = (0..MESSAGES_PER_POLICY)
            .map(|_| {
                let p = payload(&mut rng, &pool);
                Message {
                    len: p.len() as u32,
                    payload: p,
                    local_port: if rng.pct(3) { 40000 } else { 41000 },
                    ..Message::default()
                }
            })
            .collect();
        messages.extend(pool.iter().map(|p| Message {
            len: p.len() as u32,
            payload: p.clone(),
            ..Message::default()
        }));
        for (counters, set_maps_above) in compilations {
            let c = match compile_with(
                "text.skp",
                &src,
                Options {
                    counters,
                    set_maps_above,
                    ..Options::default()
                },
            ) {
                Ok(c) => c,
                // Rules of code over four parsers can be over the verifier's budget, and
                // with every set a map, over the kernel's 64 maps per program.
                Err(d) if d.iter().all(|d| d.code == "E0401") => {
                    if set_maps_above.is_none() {
                        refused += 1;
                    }
                    continue;
                }
                Err(d) => panic!("policy {k} (seed {seed:#x}): {d:?}\n{src}"),
            };
            if counters
                && set_maps_above.is_none()
                && c.lowered
                    .index_summary
                    .iter()
                    .any(|s| s.contains("-byte keys)"))
            {
                with_groups += 1;
            }
            let vm = Vm::new(&c.lowered).expect("the VM models the maps");
            for m in &messages {
                let out = vm.run(m, &RunConfig::default()).expect("runs");
                let want = eval(&c.policy, m);
                let at = || {
                    format!(
                        "policy {k} (seed {seed:#x}, counters {counters}, set maps above {set_maps_above:?}), message {m:?}\n{}\n{src}",
                        c.lowered.index_summary.join("\n")
                    )
                };
                assert_eq!(out.decision, want.decision, "{}", at());
                if counters {
                    assert_eq!(out.counters, want.counters, "{}", at());
                    if set_maps_above.is_none() && want.counters[c.policy.default.counter].0 == 0 {
                        by_rule += 1;
                    }
                }
            }
        }
    }
    println!(
        "{policies} policies, {with_groups} with text groups, {refused} compilations refused (E0401); {by_rule} messages decided by a rule"
    );
    // The generator reaches what it is for: groups in most policies, matches.
    assert!(
        with_groups * 4 >= policies * 3,
        "{with_groups} of {policies}"
    );
    assert!(refused * 10 <= policies, "{refused} refused");
    assert!(by_rule * 5 >= policies * MESSAGES_PER_POLICY, "{by_rule}");
}

/// The loopback port of the kernel leg's listener.
const KERNEL_PORT: u16 = 47201;

#[test]
fn the_kernel_agrees_with_the_evaluator_on_indexed_protocol_field_rules() {
    let name = "the_kernel_agrees_with_the_evaluator_on_indexed_protocol_field_rules";
    if !common::kernel_or_skip(name) {
        return;
    }
    let seed = policygen::seed(DEFAULT_SEED) ^ 0x6b;
    let policies = policygen::env_usize("SKP_KERNEL_TEXT_POLICIES", 6);
    let listener = TcpListener::bind(("127.0.0.1", KERNEL_PORT))
        .unwrap_or_else(|e| panic!("listen on 127.0.0.1:{KERNEL_PORT}: {e}"));
    let mut rng = Rng::new(seed);
    let (mut sent, mut dropped, mut groups, mut by_rule) = (0, 0, 0, 0);
    for k in 0..policies {
        let (src, pool) = gen_policy(&mut rng);
        let c = match compile_with("text.skp", &src, Options::default()) {
            Ok(c) => c,
            Err(d) if d.iter().all(|d| d.code == "E0401") => continue,
            Err(d) => panic!("policy {k} (seed {seed:#x}): {d:?}\n{src}"),
        };
        groups += c
            .lowered
            .sets
            .iter()
            .filter(|s| s.describe.contains("to the first rule of each"))
            .count();
        let policy = e2e_support::runtime_policy(&c, "text.skp", &src);
        let mut enf = skpc_runtime::Enforcement::new(&policy)
            .unwrap_or_else(|e| panic!("policy {k} (seed {seed:#x}) does not load: {e}\n{src}"));
        for _ in 0..40 {
            let mut payload = payload(&mut rng, &pool);
            if payload.is_empty() {
                payload.push(b'x');
            }
            let client = TcpStream::connect(("127.0.0.1", KERNEL_PORT)).expect("connect");
            let (mut server, _) = listener.accept().expect("accept");
            client.set_nodelay(true).expect("nodelay");
            let m = e2e_support::loopback_message(&client, &payload);
            let want = eval(&c.policy, &m);
            let before = enf.counters().expect("counters");
            let (got, arrived) =
                e2e_support::send_once_enforced(&mut enf, &client, &mut server, &payload);
            let after = enf.counters().expect("counters");
            let moved = e2e_support::counter_delta(&after, &before);
            let what = format!(
                "policy {k} (seed {seed:#x}), {m:?}, evaluator {:?}\n{}\n{src}",
                want.decision,
                c.lowered.index_summary.join("\n")
            );
            match want.decision.verdict {
                Verdict::Drop => {
                    assert_eq!(got, Err(EACCES), "{what}");
                    dropped += 1;
                }
                _ => {
                    assert_eq!(got, Ok(payload.len()), "{what}");
                    assert!(arrived == payload, "{what}: {} B arrived", arrived.len());
                }
            }
            assert_eq!(moved, want.counters, "{what}");
            sent += 1;
            by_rule += usize::from(want.counters[c.policy.default.counter].0 == 0);
        }
        drop(enf);
    }
    eprintln!(
        "{policies} policies on the kernel, {groups} text groups, {sent} sends, {dropped} dropped, {by_rule} decided by a rule"
    );
    assert!(groups >= policies, "{groups} text groups");
    assert!(by_rule * 5 >= sent, "{by_rule} of {sent} decided by a rule");
    assert!(dropped > 0 && dropped < sent, "{dropped} of {sent} dropped");
}
