//! The reference evaluator: what a policy means, written straight from the language
//! definition (docs/language.md) on the typed policy. It shares no code
//! with the code generator (`lower`); the differential tests hold the two against each
//! other, and `skpc test` uses it to tell a compiler bug from a wrong expectation.
//!
//! The semantics, as implemented here:
//! - Rules run top to bottom. A non-terminal rule (`count`, `log`) whose condition holds
//!   bumps its counters (and sends a log record) and evaluation goes on; the first
//!   terminal rule whose condition holds decides; else `default` (pass if absent).
//! - Every matching rule counts one message and `len` bytes in its own counter; a
//!   `count NAME` rule also in NAME's; the default counts when it decides.
//! - The rules see the payload the message gives; `len` may be larger (a test case's
//!   `len = 5000` with a short payload: bytes the rules cannot see). A payload test that
//!   reaches beyond the given bytes is false (so its `not` is true), as is one beyond
//!   `len` in the kernel.
//! - Addresses: an IPv4 prefix matches an IPv4 socket's address and, where the field
//!   allows it (`mapped`), the IPv4-mapped address (`::ffff:a.b.c.d`) of an IPv6 socket;
//!   an IPv6 prefix matches IPv6 sockets only.
//! - `redirect to sock FIELD` goes to the slot the field's value names (truncated to 32
//!   bits, as the helper takes a u32); a slot past the sockmap's end holds no socket, and
//!   the kernel drops the message.
//! - `discard` is its own verdict: the kernel pops the whole message and passes nothing,
//!   which user space sees as a send that succeeded and a peer that got nothing.
//! - `reply STRING` is its own verdict too, carrying its bytes: the kernel rewrites the
//!   message to exactly those bytes and redirects it to the sender's own receive queue,
//!   which user space sees as a send that succeeded, a peer that got nothing and a sender
//!   that reads STRING. It does not depend on the message's bytes (not even unseen ones,
//!   past the payload a message gives: the reply overwrites them).
//! - `redirect [ingress] to peer` redirects to the other end of a local connection (found
//!   by the swapped 4-tuple), to its receive queue with `ingress`, else out of it.

pub mod proto;

use std::net::IpAddr;

use skpc_abi::{LogRecord, SockKey, AF_INET, AF_INET6, SOCKMAP_SLOTS};

use crate::fields;
use crate::hir::{
    Action, Cond, Decision, End, IntField, Message, Net, Policy, SockSlot, Target, Test, TextOp,
    Verdict,
};

/// Which rule decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Fired {
    /// Rule index (== its counter slot).
    Rule(usize),
    Default,
}

/// What a policy does with one message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EvalOutcome {
    /// A field redirect resolved to its slot (or a drop, past the sockmap's end).
    pub decision: Decision,
    pub fired: Fired,
    /// Per counter slot: (messages, bytes).
    pub counters: Vec<(u64, u64)>,
    /// The records `log` rules send, in order.
    pub events: Vec<LogRecord>,
    /// For a peer redirect: the sockhash key looked up (the swapped 4-tuple).
    pub peer_key: Option<SockKey>,
}

/// Evaluates `policy` on `msg`.
pub fn eval(policy: &Policy, msg: &Message) -> EvalOutcome {
    let mut counters = vec![(0u64, 0u64); policy.counters.len()];
    let mut events = Vec::new();
    let bump = |counters: &mut Vec<(u64, u64)>, slot: usize| {
        if let Some(c) = counters.get_mut(slot) {
            c.0 += 1;
            c.1 += msg.len as u64;
        }
    };
    for (i, rule) in policy.rules.iter().enumerate() {
        if !holds(&rule.cond, msg) {
            continue;
        }
        bump(&mut counters, rule.counter);
        match &rule.action {
            Action::Count { counter } => bump(&mut counters, *counter),
            Action::Log => events.push(log_record(rule.counter as u32, msg)),
            Action::Decide(d) => {
                let (decision, peer_key) = resolve(d, msg);
                return EvalOutcome {
                    decision,
                    fired: Fired::Rule(i),
                    counters,
                    events,
                    peer_key,
                };
            }
        }
    }
    bump(&mut counters, policy.default.counter);
    let (decision, peer_key) = resolve(&policy.default.decision, msg);
    EvalOutcome {
        decision,
        fired: Fired::Default,
        counters,
        events,
        peer_key,
    }
}

/// What the kernel does for `d` on `msg`: field slots resolved (a slot past the end drops).
fn resolve(d: &Decision, msg: &Message) -> (Decision, Option<SockKey>) {
    match &d.verdict {
        Verdict::Redirect {
            ingress,
            target: Target::Sock(slot),
        } => {
            let key = match slot {
                SockSlot::Const(k) => *k,
                SockSlot::Field(f) => field_value(*f, msg).unwrap_or(0) as u32,
            };
            let verdict = if key < SOCKMAP_SLOTS {
                Verdict::Redirect {
                    ingress: *ingress,
                    target: Target::Sock(SockSlot::Const(key)),
                }
            } else {
                Verdict::Drop
            };
            (
                Decision {
                    verdict,
                    apply_bytes: d.apply_bytes,
                },
                None,
            )
        }
        Verdict::Redirect {
            target: Target::Peer,
            ..
        } => (d.clone(), Some(peer_key(msg))),
        _ => (d.clone(), None),
    }
}

/// Does `c` hold for `msg`?
pub fn holds(c: &Cond, msg: &Message) -> bool {
    match c {
        Cond::Const(b) => *b,
        Cond::And(cs) => cs.iter().all(|c| holds(c, msg)),
        Cond::Or(cs) => cs.iter().any(|c| holds(c, msg)),
        Cond::Not(c) => !holds(c, msg),
        Cond::Test(t) => test(t, msg),
    }
}

fn test(t: &Test, msg: &Message) -> bool {
    match t {
        // The set's elements as checked: what the runtime fills the map with first.
        Test::InFile { of, .. } => test(of, msg),
        Test::Int { field, ranges } => match field_value(*field, msg) {
            Some(v) => ranges.iter().any(|&(lo, hi)| lo <= v && v <= hi),
            None => false,
        },
        Test::Addr { end, nets, mapped } => {
            let ip = match end {
                End::Local => msg.local_ip,
                End::Remote => msg.remote_ip,
            };
            nets.iter().any(|n| net_matches(n, ip, msg.family, *mapped))
        }
        Test::Payload { offset, alts } => {
            alts.iter()
                .any(|alt| match payload(msg, *offset, alt.len()) {
                    Some(bytes) => bytes == *alt,
                    None => false,
                })
        }
        Test::Proto(p) => proto::parse_message(*p, &msg.payload, msg.len).is_some(),
        Test::Text { field, op, alts } => {
            match proto::parse_message(field.proto(), &msg.payload, msg.len)
                .and_then(|parsed| parsed.text(*field).map(<[u8]>::to_vec))
            {
                Some(value) => alts.iter().any(|a| match op {
                    TextOp::Eq => value == a.as_slice(),
                    TextOp::StartsWith => value.starts_with(a),
                    TextOp::EndsWith => value.ends_with(a),
                }),
                None => false,
            }
        }
        Test::Comm { alts, prefix } => {
            // The kernel keeps at most 15 bytes of the name.
            let comm = &msg.comm[..msg.comm.len().min(15)];
            alts.iter().any(|a| {
                if *prefix {
                    comm.starts_with(a)
                } else {
                    comm == a.as_slice()
                }
            })
        }
    }
}

fn net_matches(net: &Net, ip: IpAddr, family: u32, mapped: bool) -> bool {
    match (net, ip) {
        (Net::V4 { addr, prefix }, IpAddr::V4(a)) if family == AF_INET => {
            in_prefix(u32::from(a) as u128, *addr as u128, *prefix, 32)
        }
        (Net::V4 { addr, prefix }, IpAddr::V6(a)) if family == AF_INET6 && mapped => {
            match a.to_ipv4_mapped() {
                Some(v4) => in_prefix(u32::from(v4) as u128, *addr as u128, *prefix, 32),
                None => false,
            }
        }
        (Net::V6 { addr, prefix }, IpAddr::V6(a)) if family == AF_INET6 => {
            in_prefix(u128::from(a), *addr, *prefix, 128)
        }
        _ => false,
    }
}

/// Is `a` in `net/prefix`, for `bits`-bit addresses? (Compares the leading bits one by one.)
fn in_prefix(a: u128, net: u128, prefix: u8, bits: u32) -> bool {
    (0..prefix as u32).all(|i| {
        let bit = bits - 1 - i;
        (a >> bit) & 1 == (net >> bit) & 1
    })
}

/// The value of an integer field; `None` for a payload byte past the message's end.
pub fn field_value(f: IntField, msg: &Message) -> Option<u64> {
    match f {
        IntField::PayloadByte(i) => Some(payload(msg, i, 1)?[0] as u64),
        f => msg.int(fields::get(f.id()?).member?),
    }
}

/// `n` bytes of the message at `offset`, or `None` if the rules cannot see that far:
/// the message is shorter than `offset + n`, or those bytes are past the given payload.
pub fn payload(msg: &Message, offset: u32, n: usize) -> Option<Vec<u8>> {
    let end = offset as u64 + n as u64;
    if end > msg.len as u64 || end > msg.payload.len() as u64 {
        return None;
    }
    Some(msg.payload[offset as usize..end as usize].to_vec())
}

/// Addresses as the kernel stores them: network-order words; IPv4 in word 0.
fn ip_words(ip: IpAddr) -> [u32; 4] {
    let mut w = [0u32; 4];
    match ip {
        IpAddr::V4(a) => w[0] = u32::from_ne_bytes(a.octets()),
        IpAddr::V6(a) => {
            let o = a.octets();
            for (i, word) in w.iter_mut().enumerate() {
                *word = u32::from_ne_bytes([o[i * 4], o[i * 4 + 1], o[i * 4 + 2], o[i * 4 + 3]]);
            }
        }
    }
    w
}

/// The record a `log` rule (counter slot `rule`) sends for `msg`.
pub fn log_record(rule: u32, msg: &Message) -> LogRecord {
    let mut comm = [0u8; 16];
    let n = msg.comm.len().min(15);
    comm[..n].copy_from_slice(&msg.comm[..n]);
    LogRecord {
        rule,
        family: msg.family,
        local_ip: ip_words(msg.local_ip),
        remote_ip: ip_words(msg.remote_ip),
        local_port: msg.local_port as u32,
        remote_port: msg.remote_port as u32,
        size: msg.len,
        pid: msg.pid,
        uid: msg.uid,
        gid: msg.gid,
        comm,
    }
}

/// The sockhash key of the other end of `msg`'s connection. A socket whose two
/// addresses are IPv4-mapped is keyed as AF_INET (a dual-stack server talking to an
/// IPv4 client), as the SOCK_OPS program stores it.
pub fn peer_key(msg: &Message) -> SockKey {
    let unmap = |ip: IpAddr| match ip {
        IpAddr::V6(a) => a.to_ipv4_mapped().map(IpAddr::V4),
        v4 => Some(v4),
    };
    let (family, local, remote) = match (msg.family, unmap(msg.local_ip), unmap(msg.remote_ip)) {
        (f, Some(l), Some(r)) if f == AF_INET6 => (AF_INET, l, r),
        (f, _, _) => (f, msg.local_ip, msg.remote_ip),
    };
    let own = SockKey {
        family,
        local_ip: ip_words(local),
        remote_ip: ip_words(remote),
        local_port: msg.local_port as u32,
        remote_port: msg.remote_port as u32,
    };
    own.peer()
}

/// A decision as policy text: `pass`, `drop for 4096`, `redirect ingress to sock 3`,
/// `cork 16` ... (fields of a field redirect by name).
pub fn describe(d: &Decision) -> String {
    let mut s = match &d.verdict {
        Verdict::Pass => "pass".to_string(),
        Verdict::Drop => "drop".to_string(),
        Verdict::Discard => "discard".to_string(),
        Verdict::Reply(bytes) => format!("reply \"{}\"", crate::syntax::lexer::escape(bytes)),
        Verdict::Cork(n) => format!("cork {n}"),
        Verdict::Redirect { ingress, target } => {
            let target = match target {
                Target::Peer => "peer".to_string(),
                Target::Sock(SockSlot::Const(k)) => format!("sock {k}"),
                Target::Sock(SockSlot::Field(f)) => format!("sock {}", f.name()),
            };
            format!(
                "redirect {}to {target}",
                if *ingress { "ingress " } else { "" }
            )
        }
    };
    if let Some(n) = d.apply_bytes {
        s.push_str(&format!(" for {n}"));
    }
    s
}
