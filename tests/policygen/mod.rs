//! Random well-typed policies (as .skp source, so the checker is exercised too) and
//! random messages aimed at them, plus shrinking, for the differential tests
//! (tests/differential.rs: evaluator vs VM; tests/differential_kernel.rs: the kernel).
//! Deterministic for a seed: `SKP_SEED` overrides the tests' fixed seed.
#![allow(dead_code)]

pub mod proto;

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use skpc::fields::{Proto, Text};
use skpc::hir::{Decision, IntField, Message, SockSlot, Target, TextOp, Verdict};
use skpc_abi::{AF_INET, AF_INET6};

// ------------------------------------------------------------------ rng

/// splitmix64: small, fast, good enough, and the same everywhere.
#[derive(Clone, Debug)]
pub struct Rng(pub u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9e37_79b9_7f4a_7c15)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in 0..n (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }

    /// Uniform in lo..=hi.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        if hi == u64::MAX && lo == 0 {
            return self.next();
        }
        lo + self.below(hi - lo + 1)
    }

    /// True with probability pct/100.
    pub fn pct(&mut self, pct: u64) -> bool {
        self.below(100) < pct
    }

    pub fn pick<T: Clone>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len() as u64) as usize].clone()
    }
}

/// A test's size from the environment variable `name` (a number), or `default`.
pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The seed of a test run: `SKP_SEED` (decimal or 0x hex) or `default`.
pub fn seed(default: u64) -> u64 {
    match std::env::var("SKP_SEED") {
        Ok(s) => {
            let s = s.trim();
            let v = if let Some(h) = s.strip_prefix("0x") {
                u64::from_str_radix(h, 16)
            } else {
                s.parse()
            };
            v.unwrap_or_else(|_| panic!("SKP_SEED={s} is not a number"))
        }
        Err(_) => default,
    }
}

// ------------------------------------------------------------------ policies

/// What an atom means, straight from the source (independent of the checker): the
/// generator's own account of each condition, evaluated by [`source_eval`].
#[derive(Clone, Debug, PartialEq)]
pub enum Sem {
    Const(bool),
    /// `field` in ranges (the field read from the message; `None` = payload too short,
    /// which makes the test false before `negate`).
    Int {
        field: F,
        ranges: Vec<(u64, u64)>,
        negate: bool,
    },
    /// Either port in ranges.
    EitherPort {
        ranges: Vec<(u64, u64)>,
        negate: bool,
    },
    Addr {
        local: bool,
        remote: bool,
        mapped: bool,
        nets: Vec<(IpAddr, u8)>,
        negate: bool,
    },
    /// The payload at `offset` starts with one of `alts` (lengths may differ).
    Payload {
        offset: u32,
        alts: Vec<Vec<u8>>,
        negate: bool,
    },
    Comm {
        alts: Vec<Vec<u8>>,
        prefix: bool,
        negate: bool,
    },
    /// The payload is of the protocol (by the reference parsers, `eval::proto`).
    Proto {
        proto: Proto,
        negate: bool,
    },
    /// A protocol field has a value that `op` matches against one of `alts`.
    Text {
        field: Text,
        op: TextOp,
        alts: Vec<Vec<u8>>,
        negate: bool,
    },
}

/// An integer field as the source names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum F {
    Len,
    Family,
    LocalPort,
    RemotePort,
    Uid,
    Gid,
    Pid,
    Cgroup,
    Byte(u32),
}

impl F {
    fn parse(name: &str) -> F {
        match name {
            "len" => F::Len,
            "local.port" => F::LocalPort,
            "remote.port" => F::RemotePort,
            "uid" => F::Uid,
            "gid" => F::Gid,
            "pid" => F::Pid,
            "cgroup" => F::Cgroup,
            other => panic!("not an int field: {other}"),
        }
    }

    fn value(self, m: &Message) -> Option<u64> {
        Some(match self {
            F::Len => m.len as u64,
            F::Family => m.family as u64,
            F::LocalPort => m.local_port as u64,
            F::RemotePort => m.remote_port as u64,
            F::Uid => m.uid as u64,
            F::Gid => m.gid as u64,
            F::Pid => m.pid as u64,
            F::Cgroup => m.cgroup,
            F::Byte(i) => {
                // Bytes past the given payload cannot be seen (docs/language.md).
                if i as u64 >= m.len as u64 {
                    return None;
                }
                *m.payload.get(i as usize)? as u64
            }
        })
    }
}

/// A condition tree; atoms are source text with their meaning.
#[derive(Clone, Debug, PartialEq)]
pub enum GCond {
    Atom(String, Sem),
    And(Vec<GCond>),
    Or(Vec<GCond>),
    Not(Box<GCond>),
}

impl GCond {
    fn render(&self, out: &mut String, paren_or: bool) {
        match self {
            GCond::Atom(a, _) => out.push_str(a),
            GCond::Not(c) => {
                out.push_str("not ");
                match **c {
                    GCond::Atom(..) | GCond::Not(_) => c.render(out, true),
                    _ => {
                        out.push('(');
                        c.render(out, false);
                        out.push(')');
                    }
                }
            }
            GCond::And(cs) => {
                for (i, c) in cs.iter().enumerate() {
                    if i > 0 {
                        out.push_str(" and ");
                    }
                    if matches!(c, GCond::Or(_) | GCond::And(_)) {
                        out.push('(');
                        c.render(out, false);
                        out.push(')');
                    } else {
                        c.render(out, true);
                    }
                }
            }
            GCond::Or(cs) => {
                if paren_or {
                    out.push('(');
                }
                for (i, c) in cs.iter().enumerate() {
                    if i > 0 {
                        out.push_str(" or ");
                    }
                    if matches!(c, GCond::Or(_)) {
                        out.push('(');
                        c.render(out, false);
                        out.push(')');
                    } else {
                        c.render(out, true);
                    }
                }
                if paren_or {
                    out.push(')');
                }
            }
        }
    }

    /// Simpler conditions: each child in place of a junction or `not`, a junction
    /// without one of its children, and so on recursively.
    fn shrinks(&self) -> Vec<GCond> {
        let mut out = Vec::new();
        match self {
            GCond::Atom(..) => {}
            GCond::Not(c) => {
                out.push((**c).clone());
                for s in c.shrinks() {
                    out.push(GCond::Not(Box::new(s)));
                }
            }
            GCond::And(cs) | GCond::Or(cs) => {
                let rebuild = |v: Vec<GCond>| -> GCond {
                    if v.len() == 1 {
                        v.into_iter().next().unwrap()
                    } else if matches!(self, GCond::And(_)) {
                        GCond::And(v)
                    } else {
                        GCond::Or(v)
                    }
                };
                for c in cs {
                    out.push(c.clone());
                }
                for i in 0..cs.len() {
                    let mut v = cs.clone();
                    v.remove(i);
                    out.push(rebuild(v));
                }
                for i in 0..cs.len() {
                    for s in cs[i].shrinks() {
                        let mut v = cs.clone();
                        v[i] = s;
                        out.push(rebuild(v));
                    }
                }
            }
        }
        out
    }

    /// Does the condition hold, by the source-level meaning?
    pub fn holds(&self, m: &Message) -> bool {
        match self {
            GCond::Atom(_, s) => sem_holds(s, m),
            GCond::And(cs) => cs.iter().all(|c| c.holds(m)),
            GCond::Or(cs) => cs.iter().any(|c| c.holds(m)),
            GCond::Not(c) => !c.holds(m),
        }
    }
}

fn in_ranges(v: u64, ranges: &[(u64, u64)]) -> bool {
    ranges.iter().any(|&(lo, hi)| lo <= v && v <= hi)
}

fn net_has(net: &(IpAddr, u8), ip: IpAddr, family: u32, mapped: bool) -> bool {
    let (a, p) = *net;
    match (a, ip) {
        (IpAddr::V4(n), IpAddr::V4(x)) if family == AF_INET => {
            p == 0 || (u32::from(n) >> (32 - p as u32)) == (u32::from(x) >> (32 - p as u32))
        }
        (IpAddr::V4(n), IpAddr::V6(x)) if family == AF_INET6 && mapped => {
            match x.to_ipv4_mapped() {
                Some(x) => net_has(&(IpAddr::V4(n), p), IpAddr::V4(x), AF_INET, false),
                None => false,
            }
        }
        (IpAddr::V6(n), IpAddr::V6(x)) if family == AF_INET6 => {
            p == 0 || (u128::from(n) >> (128 - p as u32)) == (u128::from(x) >> (128 - p as u32))
        }
        _ => false,
    }
}

pub fn sem_holds(s: &Sem, m: &Message) -> bool {
    match s {
        Sem::Const(b) => *b,
        Sem::Int {
            field,
            ranges,
            negate,
        } => field.value(m).is_some_and(|v| in_ranges(v, ranges)) != *negate,
        Sem::EitherPort { ranges, negate } => {
            (in_ranges(m.local_port as u64, ranges) || in_ranges(m.remote_port as u64, ranges))
                != *negate
        }
        Sem::Addr {
            local,
            remote,
            mapped,
            nets,
            negate,
        } => {
            let mut hit = false;
            for (on, ip) in [(*local, m.local_ip), (*remote, m.remote_ip)] {
                hit |= on && nets.iter().any(|n| net_has(n, ip, m.family, *mapped));
            }
            hit != *negate
        }
        Sem::Payload {
            offset,
            alts,
            negate,
        } => {
            let hit = alts.iter().any(|a| {
                let end = *offset as u64 + a.len() as u64;
                end <= m.len as u64
                    && end <= m.payload.len() as u64
                    && m.payload[*offset as usize..end as usize] == a[..]
            });
            hit != *negate
        }
        Sem::Comm {
            alts,
            prefix,
            negate,
        } => {
            let hit = alts.iter().any(|a| {
                if *prefix {
                    m.comm.starts_with(a)
                } else {
                    m.comm == *a
                }
            });
            hit != *negate
        }
        Sem::Proto { proto, negate } => {
            skpc::eval::proto::parse_message(*proto, &m.payload, m.len).is_some() != *negate
        }
        Sem::Text {
            field,
            op,
            alts,
            negate,
        } => proto::text_holds(*field, *op, alts, &m.payload, m.len) != *negate,
    }
}

/// What an action does, from the source.
#[derive(Clone, Debug, PartialEq)]
pub enum ASem {
    Decide(Decision),
    Count,
    Log,
}

#[derive(Clone, Debug, PartialEq)]
pub struct GRule {
    pub action: String,
    pub sem: ASem,
    pub cond: Option<GCond>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct GenPolicy {
    /// `const`/`set` lines, with the name each declares.
    pub decls: Vec<(String, String)>,
    pub rules: Vec<GRule>,
    /// The action of `default`, if any.
    pub default: Option<(String, Decision)>,
}

fn simple(verdict: Verdict) -> ASem {
    ASem::Decide(Decision {
        verdict,
        apply_bytes: None,
    })
}

/// The verdict the kernel gives for a decision on `m` (field slots resolved).
fn resolve(d: &Decision, m: &Message) -> Decision {
    let verdict = match &d.verdict {
        Verdict::Redirect {
            ingress,
            target: Target::Sock(SockSlot::Field(f)),
        } => {
            let v = match f {
                IntField::Uid => m.uid as u64,
                IntField::Gid => m.gid as u64,
                IntField::Pid => m.pid as u64,
                IntField::Cgroup => m.cgroup,
                IntField::Len => m.len as u64,
                IntField::LocalPort => m.local_port as u64,
                IntField::RemotePort => m.remote_port as u64,
                other => panic!("slot field {other:?}"),
            } as u32;
            if v < skpc_abi::SOCKMAP_SLOTS {
                Verdict::Redirect {
                    ingress: *ingress,
                    target: Target::Sock(SockSlot::Const(v)),
                }
            } else {
                Verdict::Drop
            }
        }
        other => other.clone(),
    };
    Decision {
        verdict,
        apply_bytes: d.apply_bytes,
    }
}

/// The source-level meaning of the policy on `m`: the decision (as
/// `skpc::eval::eval` reports it) and the deciding rule (`None`: the default), and the
/// rules that logged.
pub fn source_eval(p: &GenPolicy, m: &Message) -> (Decision, Option<usize>, Vec<usize>) {
    let mut logged = Vec::new();
    for (i, r) in p.rules.iter().enumerate() {
        if !r.cond.as_ref().map_or(true, |c| c.holds(m)) {
            continue;
        }
        match &r.sem {
            ASem::Decide(d) => return (resolve(d, m), Some(i), logged),
            ASem::Log => logged.push(i),
            ASem::Count => {}
        }
    }
    let d = p
        .default
        .as_ref()
        .map(|(_, d)| d.clone())
        .unwrap_or(Decision {
            verdict: Verdict::Pass,
            apply_bytes: None,
        });
    (resolve(&d, m), None, logged)
}

impl GenPolicy {
    pub fn source(&self) -> String {
        let mut s = String::new();
        for (_, d) in &self.decls {
            s.push_str(d);
            s.push('\n');
        }
        for r in &self.rules {
            s.push_str(&r.action);
            if let Some(c) = &r.cond {
                s.push_str(" if ");
                c.render(&mut s, false);
            }
            s.push_str(";\n");
        }
        if let Some((d, _)) = &self.default {
            let _ = writeln!(s, "default {d};");
        }
        s
    }

    /// Smaller policies, roughly most promising first.
    pub fn shrinks(&self) -> Vec<GenPolicy> {
        let mut out = Vec::new();
        // Long policies: whole chunks of rules first (halves, quarters, ...), so that a
        // few hundred rules shrink in a logarithmic number of steps, not one at a time.
        let n = self.rules.len();
        let mut chunk = n / 2;
        while n > 8 && chunk >= 2 {
            for start in (0..n).step_by(chunk) {
                let mut p = self.clone();
                p.rules.drain(start..(start + chunk).min(n));
                out.push(p);
            }
            chunk /= 2;
        }
        for i in 0..self.rules.len() {
            let mut p = self.clone();
            p.rules.remove(i);
            out.push(p);
        }
        // A rule replaced by a plain one-port rule: the policy keeps its length (an
        // indexed block needs 64 rules) while the rules that matter stand out.
        let filler = GCond::Atom(
            "remote.port == 1".into(),
            Sem::Int {
                field: F::RemotePort,
                ranges: vec![(1, 1)],
                negate: false,
            },
        );
        for i in 0..self.rules.len() {
            if self.rules[i].cond.as_ref() != Some(&filler) {
                let mut p = self.clone();
                p.rules[i].cond = Some(filler.clone());
                out.push(p);
            }
        }
        if self.default.is_some() {
            let mut p = self.clone();
            p.default = None;
            out.push(p);
        }
        for i in 0..self.rules.len() {
            if let Some(c) = &self.rules[i].cond {
                let mut p = self.clone();
                p.rules[i].cond = None;
                out.push(p);
                for s in c.shrinks() {
                    let mut p = self.clone();
                    p.rules[i].cond = Some(s);
                    out.push(p);
                }
            }
            for (text, v) in [("pass", Verdict::Pass), ("drop", Verdict::Drop)] {
                if self.rules[i].action != text {
                    let mut p = self.clone();
                    p.rules[i].action = text.to_string();
                    p.rules[i].sem = simple(v);
                    out.push(p);
                }
            }
        }
        // Unused declarations.
        let body: String = {
            let mut p = self.clone();
            p.decls.clear();
            p.source()
        };
        let words: Vec<&str> = body
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .collect();
        let used: Vec<(String, String)> = self
            .decls
            .iter()
            .filter(|(n, _)| words.contains(&n.as_str()))
            .cloned()
            .collect();
        if used.len() < self.decls.len() {
            // Declarations only refer to literals, so the unused ones can all go at once.
            let mut p = self.clone();
            p.decls = used;
            out.insert(0, p);
        }
        out
    }
}

/// Values a policy mentions, for aiming messages at it.
#[derive(Clone, Debug, Default)]
pub struct Pool {
    pub ports: Vec<u64>,
    pub lens: Vec<u64>,
    pub ids: Vec<u64>,
    pub cgroups: Vec<u64>,
    pub nets: Vec<(IpAddr, u8)>,
    /// (offset, bytes): payload slices, prefixes, bytes.
    pub strings: Vec<(u32, Vec<u8>)>,
    pub comms: Vec<Vec<u8>>,
    /// Protocol messages the policy's protocol conditions were aimed at.
    pub protos: Vec<Vec<u8>>,
    /// Per port/address rule of [`gen_indexed_policy`]: the ways to match it (see
    /// [`gen_indexed_message`]).
    pub targets: Vec<Vec<Hit>>,
}

const PORT_EDGES: &[u64] = &[
    0, 1, 22, 80, 443, 1023, 1024, 5432, 6379, 8080, 32768, 65534, 65535,
];
const LEN_EDGES: &[u64] = &[
    0,
    1,
    15,
    16,
    17,
    64,
    100,
    1000,
    4095,
    4096,
    4097,
    16383,
    16384,
    16385,
    65535,
    65536,
    1 << 20,
    u32::MAX as u64,
];
const ID_EDGES: &[u64] = &[
    0,
    1,
    2,
    999,
    1000,
    1001,
    65534,
    65535,
    65536,
    0x7fff_ffff,
    0x8000_0000,
    u32::MAX as u64 - 1,
    u32::MAX as u64,
];
const CGROUP_EDGES: &[u64] = &[
    0,
    1,
    2,
    4242,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    0x1_0000_0000,
    0x1_0000_0001,
    1 << 63,
    u64::MAX - 1,
    u64::MAX,
];
const OFFSETS: &[u32] = &[
    0, 0, 0, 1, 2, 3, 4, 7, 8, 15, 16, 31, 63, 64, 100, 1000, 4000,
];
const COMMS: &[&[u8]] = &[
    b"client",
    b"curl",
    b"redis-server",
    b"nginx",
    b"python3",
    b"a",
    b"ssh",
    b"sshd",
    b"exactly15bytes!",
    b"psql",
];

struct Gen<'r> {
    rng: &'r mut Rng,
    pool: Pool,
    decls: Vec<(String, String)>,
    counters: Vec<String>,
}

/// A random policy and the values it mentions.
pub fn gen_policy(rng: &mut Rng) -> (GenPolicy, Pool) {
    let n = match rng.below(20) {
        0 => rng.range(20, 60),
        1..=4 => 1,
        _ => rng.range(2, 12),
    };
    gen_policy_with(rng, n as usize)
}

/// A random policy of `n` rules (large ones take the backend's other code shape).
/// Unconditional rules are rare in long policies (they would end it early).
pub fn gen_policy_with(rng: &mut Rng, n: usize) -> (GenPolicy, Pool) {
    let mut g = Gen {
        rng,
        pool: Pool::default(),
        decls: Vec::new(),
        counters: Vec::new(),
    };
    let always = if n > 100 { 0 } else { 8 };
    let mut rules = Vec::new();
    for _ in 0..n {
        let (action, sem) = g.action();
        let cond = if g.rng.pct(always) {
            None
        } else {
            Some(g.cond(0))
        };
        rules.push(GRule { action, sem, cond });
    }
    let default = if g.rng.pct(45) {
        None
    } else {
        Some(g.decision())
    };
    let p = GenPolicy {
        decls: g.decls,
        rules,
        default,
    };
    (p, g.pool)
}

fn cmp_ranges(op: &str, v: u64, max: u64) -> (Vec<(u64, u64)>, bool) {
    match op {
        "==" => (vec![(v, v)], false),
        "!=" => (vec![(v, v)], true),
        "<" => (
            if v == 0 {
                vec![]
            } else {
                vec![(0, (v - 1).min(max))]
            },
            false,
        ),
        "<=" => (vec![(0, v.min(max))], false),
        ">" => (if v >= max { vec![] } else { vec![(v + 1, max)] }, false),
        ">=" => (if v > max { vec![] } else { vec![(v, max)] }, false),
        _ => unreachable!(),
    }
}

impl Gen<'_> {
    fn action(&mut self) -> (String, ASem) {
        match self.rng.below(100) {
            0..=14 => (self.counter(), ASem::Count),
            15..=24 => ("log".into(), ASem::Log),
            _ => {
                let (t, d) = self.decision();
                (t, ASem::Decide(d))
            }
        }
    }

    fn counter(&mut self) -> String {
        let name = if !self.counters.is_empty() && self.rng.pct(40) {
            self.rng.pick(&self.counters)
        } else {
            let n = format!("n{}", self.counters.len());
            self.counters.push(n.clone());
            n
        };
        format!("count {name}")
    }

    fn bytes_count(&mut self) -> (String, u32) {
        match self.rng.below(8) {
            0 => ("1".into(), 1),
            1 => ("16".into(), 16),
            2 => ("4KiB".into(), 4096),
            3 => ("1MiB".into(), 1 << 20),
            4 => ("4294967295".into(), u32::MAX),
            5 => ("0xffff_ffff".into(), u32::MAX),
            _ => {
                let v = self.rng.range(1, 100_000);
                (int_text(self.rng, v), v as u32)
            }
        }
    }

    fn decision(&mut self) -> (String, Decision) {
        let (base, verdict) = match self.rng.below(100) {
            0..=24 => ("pass".to_string(), Verdict::Pass),
            25..=48 => ("drop".to_string(), Verdict::Drop),
            49..=51 => {
                // `reply` takes no `for N` (E0233); 1 to 4096 bytes (a few past 8, so
                // that the program writes double words, a few long).
                let len = match self.rng.below(8) {
                    0 => 1,
                    1 => 4096,
                    2 => self.rng.range(64, 4096) as usize,
                    _ => self.rng.range(1, 40) as usize,
                };
                let bytes = self.string(len);
                return (
                    format!("reply {}", quote(&bytes)),
                    Decision {
                        verdict: Verdict::Reply(bytes),
                        apply_bytes: None,
                    },
                );
            }
            52..=54 => {
                // `discard` takes no `for N` (E0221).
                return (
                    "discard".to_string(),
                    Decision {
                        verdict: Verdict::Discard,
                        apply_bytes: None,
                    },
                );
            }
            55..=69 => {
                let ingress = self.rng.pct(40);
                let (slot, s) = match self.rng.below(10) {
                    0..=5 => {
                        let v = self.rng.pick(&[0u64, 1, 3, 63, 7]);
                        (int_text(self.rng, v), SockSlot::Const(v as u32))
                    }
                    6 => {
                        let v = self.rng.range(0, 63);
                        (self.named_int(v), SockSlot::Const(v as u32))
                    }
                    _ => {
                        let (name, f) = self.rng.pick(&[
                            ("uid", IntField::Uid),
                            ("gid", IntField::Gid),
                            ("pid", IntField::Pid),
                            ("cgroup", IntField::Cgroup),
                            ("len", IntField::Len),
                            ("local.port", IntField::LocalPort),
                            ("remote.port", IntField::RemotePort),
                        ]);
                        (name.to_string(), SockSlot::Field(f))
                    }
                };
                (
                    format!(
                        "redirect {}to sock {slot}",
                        if ingress { "ingress " } else { "" }
                    ),
                    Verdict::Redirect {
                        ingress,
                        target: Target::Sock(s),
                    },
                )
            }
            70..=84 => {
                let ingress = self.rng.pct(50);
                (
                    format!("redirect {}to peer", if ingress { "ingress " } else { "" }),
                    Verdict::Redirect {
                        ingress,
                        target: Target::Peer,
                    },
                )
            }
            _ => {
                let (t, n) = self.bytes_count();
                return (
                    format!("cork {t}"),
                    Decision {
                        verdict: Verdict::Cork(n),
                        apply_bytes: None,
                    },
                );
            }
        };
        if self.rng.pct(15) {
            let (t, n) = self.bytes_count();
            (
                format!("{base} for {t}"),
                Decision {
                    verdict,
                    apply_bytes: Some(n),
                },
            )
        } else {
            (
                base,
                Decision {
                    verdict,
                    apply_bytes: None,
                },
            )
        }
    }

    /// Declares `const cN = text;` (or `set sN`) and returns the name.
    fn declare(&mut self, is_set: bool, text: String) -> String {
        let name = format!("{}{}", if is_set { "s" } else { "c" }, self.decls.len());
        let kw = if is_set { "set" } else { "const" };
        self.decls
            .push((name.clone(), format!("{kw} {name} = {text};")));
        name
    }

    fn named_int(&mut self, v: u64) -> String {
        let t = int_text(self.rng, v);
        self.declare(false, t)
    }

    fn cond(&mut self, depth: u32) -> GCond {
        let leaf = depth >= 3 || self.rng.pct(if depth == 0 { 35 } else { 55 });
        if leaf {
            let (t, s) = self.atom();
            return GCond::Atom(t, s);
        }
        match self.rng.below(10) {
            0..=3 => GCond::And(
                (0..self.rng.range(2, 4))
                    .map(|_| self.cond(depth + 1))
                    .collect(),
            ),
            4..=7 => GCond::Or(
                (0..self.rng.range(2, 4))
                    .map(|_| self.cond(depth + 1))
                    .collect(),
            ),
            _ => GCond::Not(Box::new(self.cond(depth + 1))),
        }
    }

    fn atom(&mut self) -> (String, Sem) {
        if self.rng.pct(15) {
            return self.proto_atom();
        }
        match self.rng.below(100) {
            0..=2 => {
                let b = self.rng.pct(50);
                (b.to_string(), Sem::Const(b))
            }
            3..=12 => self.int_atom("len", LEN_EDGES, u32::MAX as u64, Kind::Len),
            13..=27 => {
                let f = self.rng.pick(&["port", "local.port", "remote.port"]);
                self.int_atom(f, PORT_EDGES, 65535, Kind::Port)
            }
            28..=33 => {
                let f = self.rng.pick(&["uid", "gid", "pid"]);
                self.int_atom(f, ID_EDGES, u32::MAX as u64, Kind::Id)
            }
            34..=37 => self.int_atom("cgroup", CGROUP_EDGES, u64::MAX, Kind::Cgroup),
            38..=41 => self.family_atom(),
            42..=57 => self.addr_atom(),
            58..=67 => self.byte_atom(),
            68..=79 => self.slice_atom(),
            80..=89 => self.starts_atom(),
            _ => self.comm_atom(),
        }
    }

    fn remember(&mut self, kind: Kind, v: u64) {
        match kind {
            Kind::Len => self.pool.lens.push(v),
            Kind::Port => self.pool.ports.push(v),
            Kind::Id => self.pool.ids.push(v),
            Kind::Cgroup => self.pool.cgroups.push(v),
            Kind::Byte(i) => self.pool.strings.push((i, vec![v as u8])),
        }
    }

    fn value(&mut self, edges: &[u64], max: u64, kind: Kind) -> u64 {
        let v = match self.rng.below(10) {
            0..=5 => self.rng.pick(edges),
            6 => self.rng.range(0, max.min(100)),
            _ => self.rng.range(0, max),
        };
        let v = v.min(max);
        self.remember(kind, v);
        v
    }

    fn int_sem(field: &str, kind: Kind, ranges: Vec<(u64, u64)>, negate: bool) -> Sem {
        match (field, kind) {
            ("port", _) => Sem::EitherPort { ranges, negate },
            (_, Kind::Byte(i)) => Sem::Int {
                field: F::Byte(i),
                ranges,
                negate,
            },
            (f, _) => Sem::Int {
                field: F::parse(f),
                ranges,
                negate,
            },
        }
    }

    fn int_atom(&mut self, field: &str, edges: &[u64], max: u64, kind: Kind) -> (String, Sem) {
        match self.rng.below(10) {
            0..=5 => {
                let op = self.rng.pick(&["==", "!=", "<", "<=", ">", ">="]);
                let mut v = self.value(edges, max, kind);
                if matches!(op, "<" | "<=" | ">" | ">=") && max < u64::MAX && self.rng.pct(5) {
                    // A bound beyond the field's range folds.
                    v = max + self.rng.range(1, 1000);
                }
                let (ranges, negate) = cmp_ranges(op, v, max);
                let t = if self.rng.pct(10) {
                    self.named_int(v)
                } else {
                    int_text(self.rng, v)
                };
                let text = if self.rng.pct(10) && matches!(op, "==" | "!=") {
                    format!("{t} {op} {field}")
                } else {
                    format!("{field} {op} {t}")
                };
                (text, Self::int_sem(field, kind, ranges, negate))
            }
            6 => {
                let (lo, hi) = self.range_of(edges, max, kind);
                let text = format!(
                    "{field} in {}..{}",
                    int_text(self.rng, lo),
                    int_text(self.rng, hi)
                );
                (text, Self::int_sem(field, kind, vec![(lo, hi)], false))
            }
            _ => {
                let n = if self.rng.pct(15) {
                    self.rng.range(5, 40)
                } else {
                    self.rng.range(2, 5)
                };
                let mut elems = Vec::new();
                let mut ranges = Vec::new();
                for _ in 0..n {
                    if self.rng.pct(30) {
                        let (lo, hi) = self.range_of(edges, max, kind);
                        elems.push(format!(
                            "{}..{}",
                            int_text(self.rng, lo),
                            int_text(self.rng, hi)
                        ));
                        ranges.push((lo, hi));
                    } else {
                        let v = self.value(edges, max, kind);
                        elems.push(int_text(self.rng, v));
                        ranges.push((v, v));
                    }
                }
                let set = format!("{{{}}}", elems.join(", "));
                let text = if self.rng.pct(30) {
                    let name = self.declare(true, set);
                    format!("{field} in {name}")
                } else {
                    format!("{field} in {set}")
                };
                (text, Self::int_sem(field, kind, ranges, false))
            }
        }
    }

    fn range_of(&mut self, edges: &[u64], max: u64, kind: Kind) -> (u64, u64) {
        let a = self.value(edges, max, kind);
        let b = if self.rng.pct(50) {
            a.saturating_add(self.rng.range(0, 10)).min(max)
        } else {
            self.value(edges, max, kind)
        };
        let (lo, hi) = (a.min(b), a.max(b));
        self.remember(kind, hi.saturating_add(1).min(max));
        self.remember(kind, lo.saturating_sub(1));
        (lo, hi)
    }

    fn family_atom(&mut self) -> (String, Sem) {
        let (i4, i6) = (AF_INET as u64, AF_INET6 as u64);
        let fam = |ranges: Vec<(u64, u64)>, negate| Sem::Int {
            field: F::Family,
            ranges,
            negate,
        };
        match self.rng.below(6) {
            0 => ("family == inet".into(), fam(vec![(i4, i4)], false)),
            1 => ("family == inet6".into(), fam(vec![(i6, i6)], false)),
            2 => ("family != inet".into(), fam(vec![(i4, i4)], true)),
            3 => (
                "family in {inet, inet6}".into(),
                fam(vec![(i4, i4), (i6, i6)], false),
            ),
            4 => ("family in {inet6}".into(), fam(vec![(i6, i6)], false)),
            _ => ("inet6 == family".into(), fam(vec![(i6, i6)], false)),
        }
    }

    fn net(&mut self, v4: bool, host: bool) -> (IpAddr, u8) {
        if v4 {
            let base: Ipv4Addr = match self.rng.below(8) {
                0 => Ipv4Addr::new(127, 0, 0, 1),
                1 => Ipv4Addr::new(10, 1, 2, 3),
                2 => Ipv4Addr::new(192, 168, 1, 77),
                3 => Ipv4Addr::new(0, 0, 0, 0),
                4 => Ipv4Addr::new(255, 255, 255, 255),
                5 => Ipv4Addr::new(172, 16, 5, 4),
                _ => Ipv4Addr::from(self.rng.next() as u32),
            };
            let any = self.rng.range(0, 32) as u8;
            let prefix = if host {
                32
            } else {
                self.rng.pick(&[0u8, 1, 7, 8, 12, 16, 24, 31, 32, any])
            };
            let addr = Ipv4Addr::from(u32::from(base) & skpc::hir::mask32(prefix));
            (IpAddr::V4(addr), prefix)
        } else {
            let base: Ipv6Addr = match self.rng.below(9) {
                0 => Ipv6Addr::LOCALHOST,
                1 => Ipv6Addr::UNSPECIFIED,
                2 => "fd00::1234".parse().unwrap(),
                3 => "2001:db8::1".parse().unwrap(),
                4 => "fe80::1".parse().unwrap(),
                5 => Ipv4Addr::new(10, 1, 2, 3).to_ipv6_mapped(),
                6 => Ipv4Addr::new(127, 0, 0, 1).to_ipv6_mapped(),
                7 => Ipv6Addr::from(u128::MAX),
                _ => Ipv6Addr::from(((self.rng.next() as u128) << 64) | self.rng.next() as u128),
            };
            let any = self.rng.range(0, 128) as u8;
            let prefix = if host {
                128
            } else {
                self.rng.pick(&[
                    0u8, 1, 8, 10, 16, 32, 48, 64, 95, 96, 97, 120, 127, 128, any,
                ])
            };
            let addr = Ipv6Addr::from(u128::from(base) & skpc::hir::mask128(prefix));
            (IpAddr::V6(addr), prefix)
        }
    }

    fn addr_atom(&mut self) -> (String, Sem) {
        let field = self.rng.pick(&[
            "ip",
            "ip",
            "local.ip",
            "remote.ip",
            "remote.ip",
            "local.ip4",
            "remote.ip4",
            "local.ip6",
            "remote.ip6",
        ]);
        let v4_ok = !field.ends_with("ip6");
        let v6_ok = !field.ends_with("ip4");
        let pick_v4 = |rng: &mut Rng| if v4_ok && v6_ok { rng.pct(60) } else { v4_ok };
        let local = field == "ip" || field.starts_with("local");
        let remote = field == "ip" || field.starts_with("remote");
        // `ip`, `local.ip`, `remote.ip` also match IPv4-mapped addresses of IPv6 sockets.
        let mapped = v4_ok && v6_ok;
        let sem = |nets: Vec<(IpAddr, u8)>, negate| Sem::Addr {
            local,
            remote,
            mapped,
            nets,
            negate,
        };
        match self.rng.below(10) {
            0..=3 => {
                let v4 = pick_v4(self.rng);
                let (a, p) = self.net(v4, true);
                self.pool.nets.push((a, p));
                let op = self.rng.pick(&["==", "!="]);
                (format!("{field} {op} {a}"), sem(vec![(a, p)], op == "!="))
            }
            4..=6 => {
                let v4 = pick_v4(self.rng);
                let (a, p) = self.net(v4, false);
                self.pool.nets.push((a, p));
                (format!("{field} in {a}/{p}"), sem(vec![(a, p)], false))
            }
            _ => {
                let n = self.rng.range(2, 6);
                let mut elems = Vec::new();
                let mut nets = Vec::new();
                for _ in 0..n {
                    let v4 = pick_v4(self.rng);
                    let host = self.rng.pct(25);
                    let (a, p) = self.net(v4, host);
                    self.pool.nets.push((a, p));
                    nets.push((a, p));
                    let full = if v4 { 32 } else { 128 };
                    elems.push(if p == full && self.rng.pct(50) {
                        a.to_string()
                    } else {
                        format!("{a}/{p}")
                    });
                }
                let set = format!("{{{}}}", elems.join(", "));
                let text = if self.rng.pct(30) {
                    let name = self.declare(true, set);
                    format!("{field} in {name}")
                } else {
                    format!("{field} in {set}")
                };
                (text, sem(nets, false))
            }
        }
    }

    fn offset(&mut self, len: u32) -> u32 {
        let max = 4096 - len;
        match self.rng.below(10) {
            0..=6 => self.rng.pick(OFFSETS).min(max),
            7 => max,
            _ => self.rng.range(0, max as u64) as u32,
        }
    }

    fn byte_atom(&mut self) -> (String, Sem) {
        let i = match self.rng.below(10) {
            0..=7 => self.offset(1),
            8 => 4095,
            _ => self.rng.range(0, 4095) as u32,
        };
        let edges = [
            0u64,
            1,
            0x20,
            b'A' as u64,
            b'G' as u64,
            0x7f,
            0x80,
            0xfe,
            0xff,
        ];
        let field = format!("payload[{i}]");
        self.int_atom(&field, &edges, 255, Kind::Byte(i))
    }

    fn string(&mut self, len: usize) -> Vec<u8> {
        let alphabet: &[u8] = match self.rng.below(4) {
            0 => b"GET POST/ HTTP1.\r\n",
            1 => b"ab",
            2 => b"\x00\x01\x7f\x80\xff\"\\\t",
            _ => b"SETPINGabcxyz0123456789 *$\r\n",
        };
        (0..len).map(|_| self.rng.pick(alphabet)).collect()
    }

    fn slice_atom(&mut self) -> (String, Sem) {
        let len = match self.rng.below(10) {
            0..=5 => self
                .rng
                .pick(&[1u32, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64]),
            _ => self.rng.range(1, 64) as u32,
        };
        let off = self.offset(len);
        let end = off + len;
        let n = if self.rng.pct(30) {
            self.rng.range(2, 4)
        } else {
            1
        };
        let strs: Vec<Vec<u8>> = (0..n).map(|_| self.string(len as usize)).collect();
        for s in &strs {
            self.pool.strings.push((off, s.clone()));
        }
        let field = format!(
            "payload[{}..{}]",
            int_text(self.rng, off as u64),
            int_text(self.rng, end as u64)
        );
        if n == 1 {
            let op = self.rng.pick(&["==", "!="]);
            let s = quote(&strs[0]);
            let s = if self.rng.pct(10) {
                self.declare(false, s)
            } else {
                s
            };
            (
                format!("{field} {op} {s}"),
                Sem::Payload {
                    offset: off,
                    alts: strs,
                    negate: op == "!=",
                },
            )
        } else {
            let set = format!(
                "{{{}}}",
                strs.iter().map(|s| quote(s)).collect::<Vec<_>>().join(", ")
            );
            (
                format!("{field} in {set}"),
                Sem::Payload {
                    offset: off,
                    alts: strs,
                    negate: false,
                },
            )
        }
    }

    fn starts_atom(&mut self) -> (String, Sem) {
        let n = if self.rng.pct(25) {
            self.rng.range(2, 4)
        } else {
            1
        };
        let mut strs = Vec::new();
        for _ in 0..n {
            let len = match self.rng.below(12) {
                0 => 0,
                1 => 64,
                _ => self.rng.range(1, 12) as usize,
            };
            let s = self.string(len);
            self.pool.strings.push((0, s.clone()));
            strs.push(s);
        }
        let text = if n == 1 {
            format!("payload starts with {}", quote(&strs[0]))
        } else {
            let set = format!(
                "{{{}}}",
                strs.iter().map(|s| quote(s)).collect::<Vec<_>>().join(", ")
            );
            if self.rng.pct(30) {
                let name = self.declare(true, set);
                format!("payload starts with {name}")
            } else {
                format!("payload starts with {set}")
            }
        };
        (
            text,
            Sem::Payload {
                offset: 0,
                alts: strs,
                negate: false,
            },
        )
    }

    fn comm(&mut self) -> Vec<u8> {
        let c = if self.rng.pct(80) {
            self.rng.pick(COMMS).to_vec()
        } else {
            let len = self.rng.range(1, 15) as usize;
            (0..len).map(|_| self.rng.pick(b"abcxyz-_.0189")).collect()
        };
        self.pool.comms.push(c.clone());
        c
    }

    fn comm_atom(&mut self) -> (String, Sem) {
        match self.rng.below(5) {
            0 | 1 => {
                let c = self.comm();
                let op = self.rng.pick(&["==", "!="]);
                (
                    format!("comm {op} {}", quote(&c)),
                    Sem::Comm {
                        alts: vec![c],
                        prefix: false,
                        negate: op == "!=",
                    },
                )
            }
            2 => {
                let n = self.rng.range(2, 4);
                let cs: Vec<Vec<u8>> = (0..n).map(|_| self.comm()).collect();
                let text = format!(
                    "comm in {{{}}}",
                    cs.iter().map(|c| quote(c)).collect::<Vec<_>>().join(", ")
                );
                (
                    text,
                    Sem::Comm {
                        alts: cs,
                        prefix: false,
                        negate: false,
                    },
                )
            }
            _ => {
                let c = self.comm();
                let cut = self.rng.range(0, c.len() as u64) as usize;
                let keep = cut.max(if self.rng.pct(90) { 1 } else { 0 });
                let p = c[..keep].to_vec();
                (
                    format!("comm starts with {}", quote(&p)),
                    Sem::Comm {
                        alts: vec![p],
                        prefix: true,
                        negate: false,
                    },
                )
            }
        }
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Len,
    Port,
    Id,
    Cgroup,
    Byte(u32),
}

/// An integer literal in one of the spellings the lexer takes.
pub fn int_text(rng: &mut Rng, v: u64) -> String {
    match rng.below(10) {
        0 if v >= 1 << 10 && v % (1 << 10) == 0 => {
            let (n, unit) = if v % (1 << 30) == 0 {
                (v >> 30, "GiB")
            } else if v % (1 << 20) == 0 {
                (v >> 20, "MiB")
            } else {
                (v >> 10, "KiB")
            };
            format!("{n}{unit}")
        }
        1 => format!("{v:#x}"),
        2 if v >= 10_000 => {
            let s = v.to_string();
            let mut out = String::new();
            for (i, c) in s.chars().enumerate() {
                if i > 0 && (s.len() - i) % 3 == 0 {
                    out.push('_');
                }
                out.push(c);
            }
            out
        }
        _ => v.to_string(),
    }
}

/// A string literal with escapes for everything but plain printable ASCII.
pub fn quote(s: &[u8]) -> String {
    let mut out = String::from("\"");
    for &b in s {
        match b {
            b'\r' => out.push_str("\\r"),
            b'\n' => out.push_str("\\n"),
            b'\t' => out.push_str("\\t"),
            b'\\' => out.push_str("\\\\"),
            b'"' => out.push_str("\\\""),
            0x20..=0x7e => out.push(b as char),
            _ => {
                let _ = write!(out, "\\x{b:02x}");
            }
        }
    }
    out.push('"');
    out
}

// ------------------------------------------------------------------ messages

/// A message with the initial data window it is sent with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sent {
    pub msg: Message,
    pub window: u32,
}

fn pool_or(rng: &mut Rng, pool: &[u64], edges: &[u64], max: u64) -> u64 {
    let v = if !pool.is_empty() && rng.pct(60) {
        let v = rng.pick(pool);
        match rng.below(4) {
            0 => v.saturating_sub(1),
            1 => v.saturating_add(1),
            _ => v,
        }
    } else if rng.pct(70) {
        rng.pick(edges)
    } else {
        rng.range(0, max)
    };
    v.min(max)
}

fn addr_near(rng: &mut Rng, pool: &Pool, v6: bool) -> IpAddr {
    let cands: Vec<(IpAddr, u8)> = pool
        .nets
        .iter()
        .filter(|(a, _)| a.is_ipv6() == v6)
        .cloned()
        .collect();
    if !cands.is_empty() && rng.pct(75) {
        let (a, p) = rng.pick(&cands);
        match a {
            IpAddr::V4(a) => {
                let base = u32::from(a);
                let host = !skpc::hir::mask32(p);
                let v = match rng.below(5) {
                    0 => base,
                    1 => base | host,
                    2 => base | (rng.next() as u32 & host),
                    3 => base.wrapping_sub(1),
                    _ => (base | host).wrapping_add(1),
                };
                IpAddr::V4(Ipv4Addr::from(v))
            }
            IpAddr::V6(a) => {
                let base = u128::from(a);
                let host = !skpc::hir::mask128(p);
                let r = ((rng.next() as u128) << 64) | rng.next() as u128;
                let v = match rng.below(5) {
                    0 => base,
                    1 => base | host,
                    2 => base | (r & host),
                    3 => base.wrapping_sub(1),
                    _ => (base | host).wrapping_add(1),
                };
                IpAddr::V6(Ipv6Addr::from(v))
            }
        }
    } else if v6 {
        let r = rng.next() as u128 * 0x1_0000_0001;
        rng.pick(&[
            IpAddr::V6(Ipv6Addr::LOCALHOST),
            IpAddr::V6("fd00::1".parse().unwrap()),
            IpAddr::V6(Ipv6Addr::from(r)),
        ])
    } else {
        let r = rng.next() as u32;
        rng.pick(&[
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
            IpAddr::V4(Ipv4Addr::from(r)),
        ])
    }
}

/// A random message aimed at the values in `pool`.
pub fn gen_message(rng: &mut Rng, pool: &Pool) -> Sent {
    let mut m = Message::default();
    let v6 = rng.pct(45);
    if v6 {
        m.family = AF_INET6;
        let one = |rng: &mut Rng| {
            if rng.pct(35) {
                // IPv4-mapped: a dual-stack socket talking to an IPv4 peer.
                match addr_near(rng, pool, false) {
                    IpAddr::V4(a) => IpAddr::V6(a.to_ipv6_mapped()),
                    other => other,
                }
            } else {
                addr_near(rng, pool, true)
            }
        };
        m.local_ip = one(rng);
        m.remote_ip = one(rng);
    } else {
        m.family = AF_INET;
        m.local_ip = addr_near(rng, pool, false);
        m.remote_ip = addr_near(rng, pool, false);
    }
    m.local_port = pool_or(rng, &pool.ports, PORT_EDGES, 65535) as u16;
    m.remote_port = pool_or(rng, &pool.ports, PORT_EDGES, 65535) as u16;
    m.uid = pool_or(rng, &pool.ids, ID_EDGES, u32::MAX as u64) as u32;
    m.gid = pool_or(rng, &pool.ids, ID_EDGES, u32::MAX as u64) as u32;
    m.pid = pool_or(rng, &pool.ids, ID_EDGES, u32::MAX as u64) as u32;
    m.cgroup = pool_or(rng, &pool.cgroups, CGROUP_EDGES, u64::MAX);
    m.comm = if !pool.comms.is_empty() && rng.pct(70) {
        let mut c = rng.pick(&pool.comms);
        match rng.below(4) {
            0 => {
                c.truncate(rng.below(c.len() as u64 + 1) as usize);
            }
            1 => c.extend_from_slice(b"-x"),
            _ => {}
        }
        c.truncate(15);
        c
    } else {
        rng.pick(COMMS).to_vec()
    };

    // The payload: sized around what the policy looks at, filled with its strings.
    let ends: Vec<u64> = pool
        .strings
        .iter()
        .map(|(o, s)| *o as u64 + s.len() as u64)
        .collect();
    let size = match rng.below(12) {
        0 => 0,
        1 => rng.range(1, 8),
        2..=5 if !ends.is_empty() => {
            let e = rng.pick(&ends);
            match rng.below(3) {
                0 => e.saturating_sub(1),
                1 => e,
                _ => e + rng.range(0, 32),
            }
        }
        6 => rng.pick(&[4095, 4096, 4097, 16383, 16384, 16385, 20000]),
        7 if rng.pct(10) => 70_000,
        _ => rng.range(0, 200),
    } as usize;
    let filler: &[u8] = rng.pick(&[
        &b"\0"[..],
        b"ab",
        b"GET POST/ HTTP1.\r\n",
        b"\x00\xff\x7f\x80 ",
    ]);
    let mut payload: Vec<u8> = (0..size).map(|_| rng.pick(filler)).collect();
    for (off, s) in &pool.strings {
        if !rng.pct(50) {
            continue;
        }
        let off = *off as usize;
        if off >= payload.len() {
            continue;
        }
        let n = s.len().min(payload.len() - off);
        payload[off..off + n].copy_from_slice(&s[..n]);
        if n > 0 && rng.pct(25) {
            let i = off + rng.below(n as u64) as usize;
            payload[i] ^= 1 << rng.below(8);
        }
    }
    if (!pool.protos.is_empty() && rng.pct(75)) || rng.pct(5) {
        // A protocol message: one the policy's protocol conditions were aimed at.
        payload = proto::payload(rng, &pool.protos);
    }
    m.len = payload.len() as u32;
    if rng.pct(15) {
        let extra = match rng.below(4) {
            0 => 1,
            1 => rng.range(1, 5000),
            2 => pool
                .lens
                .first()
                .copied()
                .unwrap_or(100)
                .saturating_sub(m.len as u64)
                .max(1),
            _ => u32::MAX as u64 - m.len as u64,
        };
        m.len = (m.len as u64 + extra).min(u32::MAX as u64) as u32;
    } else if !pool.lens.is_empty() && rng.pct(20) {
        // Only `len` matters to this policy: a length it mentions, with the bytes unseen.
        let l = pool_or(rng, &pool.lens, LEN_EDGES, u32::MAX as u64) as u32;
        if l as usize >= payload.len() {
            m.len = l;
        }
    }
    m.payload = payload;
    let window = match rng.below(20) {
        0..=9 => 16 * 1024,
        10..=13 => 0,
        14..=16 => rng.range(0, m.len.min(20_000) as u64) as u32,
        _ => rng.pick(&[1, 3000, 12_216, 32_768, u32::MAX]),
    };
    Sent { msg: m, window }
}

/// Simpler versions of a message, for shrinking.
pub fn shrink_message(s: &Sent) -> Vec<Sent> {
    let mut out = Vec::new();
    let d = Message::default();
    let m = &s.msg;
    let mut push = |f: &dyn Fn(&mut Sent)| {
        let mut c = s.clone();
        f(&mut c);
        if c != *s {
            out.push(c);
        }
    };
    push(&|c| c.window = 16 * 1024);
    push(&|c| c.msg.len = c.msg.payload.len() as u32);
    for cut in [0, m.payload.len() / 2, m.payload.len().saturating_sub(1)] {
        push(&|c| {
            c.msg.payload.truncate(cut);
            c.msg.len = c.msg.len.min(cut as u32).max(c.msg.payload.len() as u32);
        });
        push(&|c| c.msg.payload.truncate(cut));
    }
    // Trailing zero bytes are implicit (the message is `len` bytes, zero past the payload).
    let nonzero = m.payload.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    push(&|c| c.msg.payload.truncate(nonzero));
    push(&|c| c.msg.uid = d.uid);
    push(&|c| c.msg.gid = d.gid);
    push(&|c| c.msg.pid = d.pid);
    push(&|c| c.msg.cgroup = d.cgroup);
    push(&|c| c.msg.comm = d.comm.clone());
    push(&|c| c.msg.local_port = d.local_port);
    push(&|c| c.msg.remote_port = d.remote_port);
    let lo = if m.family == AF_INET6 {
        IpAddr::V6(Ipv6Addr::LOCALHOST)
    } else {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    };
    push(&|c| c.msg.local_ip = lo);
    push(&|c| c.msg.remote_ip = lo);
    // Payload bytes to a plain filler, from the end.
    if let Some(i) = m.payload.iter().rposition(|&b| b != b'x') {
        push(&|c| c.msg.payload[i] = b'x');
    }
    out
}

/// The message as a `test` block (the window is not expressible: it goes in a comment).
pub fn test_case(name: &str, s: &Sent, expect: &Decision) -> String {
    let m = &s.msg;
    let mut t = String::new();
    let _ = writeln!(
        t,
        "# sent with an initial data window of {} bytes",
        s.window
    );
    let _ = writeln!(t, "test \"{name}\" {{");
    let _ = writeln!(
        t,
        "    family = {};",
        if m.family == AF_INET6 {
            "inet6"
        } else {
            "inet"
        }
    );
    let _ = writeln!(t, "    local.ip = {};", m.local_ip);
    let _ = writeln!(t, "    remote.ip = {};", m.remote_ip);
    let _ = writeln!(t, "    local.port = {};", m.local_port);
    let _ = writeln!(t, "    remote.port = {};", m.remote_port);
    let _ = writeln!(t, "    payload = {};", quote(&m.payload));
    let _ = writeln!(t, "    len = {};", m.len);
    let _ = writeln!(t, "    uid = {};", m.uid);
    let _ = writeln!(t, "    gid = {};", m.gid);
    let _ = writeln!(t, "    pid = {};", m.pid);
    let _ = writeln!(t, "    cgroup = {};", m.cgroup);
    let _ = writeln!(t, "    comm = {};", quote(&m.comm));
    let _ = writeln!(t, "    expect {};", skpc::eval::describe(expect));
    t.push_str("}\n");
    t
}

/// Greedy shrinking: keeps the first simpler (policy, message) for which `fails` still
/// holds, until none does (or a step budget runs out).
pub fn shrink(
    p: &GenPolicy,
    s: &Sent,
    fails: &mut dyn FnMut(&GenPolicy, &Sent) -> bool,
) -> (GenPolicy, Sent) {
    let (mut p, mut s) = (p.clone(), s.clone());
    let mut budget = 20_000;
    'outer: loop {
        for cand in p.shrinks() {
            budget -= 1;
            if budget == 0 {
                break 'outer;
            }
            if fails(&cand, &s) {
                p = cand;
                continue 'outer;
            }
        }
        for cand in shrink_message(&s) {
            budget -= 1;
            if budget == 0 {
                break 'outer;
            }
            if fails(&p, &cand) {
                s = cand;
                continue 'outer;
            }
        }
        break;
    }
    (p, s)
}

// ------------------------------------------------------------------ indexed blocks

/// One end's address inside a network, to aim a message at a rule.
#[derive(Clone, Debug, PartialEq)]
pub struct Aim {
    pub local: bool,
    pub net: (IpAddr, u8),
}

/// Field values that make one term of a port/address rule hold.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Hit {
    pub local_port: Option<u16>,
    pub remote_port: Option<u16>,
    pub addrs: Vec<Aim>,
    /// Payload bytes at an offset (a payload-slice key).
    pub payload: Option<(u32, Vec<u8>)>,
    /// A `len` range (inclusive) the rule checks after the lookup.
    pub len: Option<(u64, u64)>,
    /// The sender's fields (keys of their own).
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub pid: Option<u32>,
    pub cgroup: Option<u64>,
    pub comm: Option<Vec<u8>>,
}

impl Hit {
    /// Both at once (an `and` of two tests); `None` if they set one field twice.
    fn and(&self, o: &Hit) -> Option<Hit> {
        let port = |a: Option<u16>, b: Option<u16>| match (a, b) {
            (Some(_), Some(_)) => Err(()),
            (a, b) => Ok(a.or(b)),
        };
        let local_port = port(self.local_port, o.local_port).ok()?;
        let remote_port = port(self.remote_port, o.remote_port).ok()?;
        if self
            .addrs
            .iter()
            .any(|a| o.addrs.iter().any(|b| a.local == b.local))
        {
            return None;
        }
        if (self.payload.is_some() && o.payload.is_some())
            || (self.len.is_some() && o.len.is_some())
            || (self.uid.is_some() && o.uid.is_some())
            || (self.gid.is_some() && o.gid.is_some())
            || (self.pid.is_some() && o.pid.is_some())
            || (self.cgroup.is_some() && o.cgroup.is_some())
            || (self.comm.is_some() && o.comm.is_some())
        {
            return None;
        }
        let mut addrs = self.addrs.clone();
        addrs.extend(o.addrs.iter().cloned());
        Some(Hit {
            local_port,
            remote_port,
            addrs,
            payload: self.payload.clone().or_else(|| o.payload.clone()),
            len: self.len.or(o.len),
            uid: self.uid.or(o.uid),
            gid: self.gid.or(o.gid),
            pid: self.pid.or(o.pid),
            cgroup: self.cgroup.or(o.cgroup),
            comm: self.comm.clone().or_else(|| o.comm.clone()),
        })
    }
}

/// The fields and prefix lengths the port/address rules of one segment use: few of
/// them, so that the segment fits the backend's tuple limit; sometimes many (`wild`),
/// so that rules past it stay code.
struct Shape {
    addr_fields: Vec<&'static str>,
    port_fields: Vec<&'static str>,
    v4_prefixes: Vec<u8>,
    v6_prefixes: Vec<u8>,
    /// (offset, length) of payload-slice keys.
    payloads: Vec<(u32, usize)>,
    /// The sender's fields (and payload bytes) keyed: `IX_SENDER_FIELDS`.
    senders: Vec<&'static str>,
}

/// A few payload slices, (offset, length).
fn ix_payloads(rng: &mut Rng) -> Vec<(u32, usize)> {
    let one = |rng: &mut Rng| {
        (
            rng.pick(&[0u32, 0, 0, 1, 2, 4, 9]),
            rng.pick(&[1usize, 2, 3, 4, 4, 5, 7, 8, 8, 12, 16]),
        )
    };
    // One slice per segment mostly: each (offset, length) is a tuple of its own.
    if rng.pct(25) {
        vec![one(rng), one(rng)]
    } else {
        vec![one(rng)]
    }
}

const IX_ADDR_FIELDS: &[&str] = &[
    "ip",
    "local.ip",
    "remote.ip",
    "local.ip4",
    "remote.ip4",
    "local.ip6",
    "remote.ip6",
];
const IX_PORT_FIELDS: &[&str] = &["port", "local.port", "remote.port"];
/// Exact tests of the sender and of payload bytes (`byte`: `payload[i] == b`).
const IX_SENDER_FIELDS: &[&str] = &["uid", "gid", "pid", "cgroup", "comm", "byte"];

/// A random policy with long runs of same-decision port, address, payload and sender
/// (`uid == N`, `comm == "..."`, ...) rules (segments of 63 to 160 rules, most of them
/// indexable, some that stay code: ranges, `not`, `comm starts with`, ...), count/log
/// rules and other decisions between them, for the indexed blocks
/// of the backend (compiler/lower/index.rs). `Pool::targets` says how to match each
/// port/address rule.
pub fn gen_indexed_policy(rng: &mut Rng) -> (GenPolicy, Pool) {
    let mut g = Gen {
        rng,
        pool: Pool::default(),
        decls: Vec::new(),
        counters: Vec::new(),
    };
    let mut rules = Vec::new();
    for _ in 0..g.rng.below(4) {
        rules.push(g.between_rule());
    }
    let segments = match g.rng.below(10) {
        0..=4 => 1,
        5..=8 => 2,
        _ => 3,
    };
    for s in 0..segments {
        if s > 0 {
            // At least one rule that is not the segment's decision between two segments.
            let count = g.counter();
            let shape = Shape::any(g.rng);
            let (c, _) = g.ix_cond(&shape);
            rules.push(GRule {
                action: count,
                sem: ASem::Count,
                cond: Some(c),
            });
            for _ in 0..g.rng.below(3) {
                rules.push(g.between_rule());
            }
        }
        g.segment(&mut rules);
    }
    for _ in 0..g.rng.below(4) {
        rules.push(g.between_rule());
    }
    let default = if g.rng.pct(40) {
        None
    } else {
        Some(g.decision())
    };
    let p = GenPolicy {
        decls: g.decls,
        rules,
        default,
    };
    (p, g.pool)
}

impl Shape {
    fn any(rng: &mut Rng) -> Shape {
        Shape {
            addr_fields: IX_ADDR_FIELDS.to_vec(),
            port_fields: IX_PORT_FIELDS.to_vec(),
            v4_prefixes: vec![32, rng.pick(&[0u8, 1, 8, 16, 24, 28, 31])],
            v6_prefixes: vec![128, rng.pick(&[0u8, 1, 48, 64, 96, 120, 127])],
            payloads: ix_payloads(rng),
            senders: IX_SENDER_FIELDS.to_vec(),
        }
    }

    fn new(rng: &mut Rng) -> Shape {
        if rng.pct(15) {
            // Many fields and prefix lengths: more tuples than one block may have.
            return Shape {
                addr_fields: IX_ADDR_FIELDS.to_vec(),
                port_fields: IX_PORT_FIELDS.to_vec(),
                v4_prefixes: vec![32, 31, 28, 24, 16, 8, 1, 0],
                v6_prefixes: vec![128, 127, 120, 96, 64, 48, 1],
                payloads: ix_payloads(rng),
                senders: IX_SENDER_FIELDS.to_vec(),
            };
        }
        let mut pick_some = |from: &[&'static str], n: u64| -> Vec<&'static str> {
            let mut out: Vec<&'static str> = Vec::new();
            for _ in 0..n {
                let f = rng.pick(from);
                if !out.contains(&f) {
                    out.push(f);
                }
            }
            out
        };
        let addr_fields = pick_some(IX_ADDR_FIELDS, 2);
        let port_fields = pick_some(IX_PORT_FIELDS, 2);
        // One field of the sender: each adds tuples of its own (alone, with a port, with
        // a slice), and a segment has at most 16.
        let senders = pick_some(IX_SENDER_FIELDS, 1);
        let mut prefixes = |full: u8, other: &[u8]| {
            let p = rng.pick(other);
            match rng.below(10) {
                0..=3 => vec![full],
                4..=6 => vec![p],
                _ => vec![full, p],
            }
        };
        let v4_prefixes = prefixes(32, &[0, 1, 8, 16, 24, 28, 28, 31]);
        let v6_prefixes = prefixes(128, &[0, 1, 48, 64, 64, 96, 120, 127]);
        Shape {
            addr_fields,
            port_fields,
            v4_prefixes,
            v6_prefixes,
            payloads: ix_payloads(rng),
            senders,
        }
    }

    /// The fields an `and` of a port and an address test uses (the first of each). A
    /// port and an IPv6 address are five key words, one more than a key has: such rules
    /// stay code, so with `v4` the address is an IPv4 one.
    fn and_shape(&self, v4: bool) -> Shape {
        let addr = match self.addr_fields[0] {
            "local.ip6" if v4 => "local.ip4",
            "remote.ip6" if v4 => "remote.ip4",
            f => f,
        };
        Shape {
            addr_fields: vec![addr],
            port_fields: self.port_fields[..1].to_vec(),
            v4_prefixes: self.v4_prefixes.clone(),
            v6_prefixes: if v4 {
                Vec::new()
            } else {
                self.v6_prefixes.clone()
            },
            payloads: self.payloads.clone(),
            senders: self.senders.clone(),
        }
    }
}

impl Gen<'_> {
    /// One segment: a decision and its rules.
    fn segment(&mut self, rules: &mut Vec<GRule>) {
        let shape = Shape::new(self.rng);
        let (action, d) = self.decision();
        // Sometimes a run of `count` rules (and a `log` or two) instead: the index's
        // blocks where every matching rule acts.
        let effects = self.rng.pct(20);
        // Sometimes rules of two or three decisions, `count`s and a `log` or two in
        // turn: one block of several decisions (`index::mixed_block`).
        let mixed = !effects && self.rng.pct(35);
        let others: Vec<(String, Decision)> = if mixed {
            (0..self.rng.range(1, 3)).map(|_| self.decision()).collect()
        } else {
            Vec::new()
        };
        let act = |g: &mut Gen| {
            if mixed {
                match g.rng.below(100) {
                    0..=39 => (action.clone(), ASem::Decide(d.clone())),
                    40..=79 => {
                        let (a, d) = g.rng.pick(&others);
                        (a, ASem::Decide(d))
                    }
                    80..=98 => (g.counter(), ASem::Count),
                    _ => ("log".to_string(), ASem::Log),
                }
            } else if !effects {
                (action.clone(), ASem::Decide(d.clone()))
            } else if g.rng.pct(2) {
                ("log".to_string(), ASem::Log)
            } else {
                (g.counter(), ASem::Count)
            }
        };
        // Port/address rules: just under the threshold sometimes, at it, or well over.
        let n = match self.rng.below(12) {
            0 => 63,
            1 => 64,
            2 => self.rng.range(100, 160),
            _ => self.rng.range(65, 100),
        };
        // A rule of `count`s keyed in two tuples (`port == N`, an `or` of two fields)
        // could match twice: code. More rules, so that 64 are keyed often enough.
        let n = if effects || mixed { n + n / 2 } else { n };
        let mut seg: Vec<GRule> = Vec::new();
        let mut keyed: Vec<(GCond, Vec<Hit>)> = Vec::new();
        while keyed.len() < n as usize {
            // A block of several decisions takes at most one rule of code per 8.
            if self.rng.pct(if mixed { 3 } else { 12 }) {
                // A rule the index cannot hold: it stays code, in its place.
                let c = self.code_cond(&shape);
                let (action, sem) = act(self);
                seg.push(GRule {
                    action,
                    sem,
                    cond: Some(c),
                });
                continue;
            }
            let (c, t) = if !keyed.is_empty() && self.rng.pct(8) {
                // The same keys as an earlier rule: the first of the two decides.
                self.rng.pick(&keyed)
            } else {
                self.ix_cond(&shape)
            };
            self.pool.targets.push(t.clone());
            keyed.push((c.clone(), t));
            let (action, sem) = act(self);
            seg.push(GRule {
                action,
                sem,
                cond: Some(c),
            });
        }
        if self.rng.pct(4) {
            // An unconditional rule inside the block: the rest of the policy is dead.
            let at = self.rng.below(seg.len() as u64 + 1) as usize;
            let (action, sem) = act(self);
            seg.insert(
                at,
                GRule {
                    action,
                    sem,
                    cond: None,
                },
            );
        }
        rules.extend(seg);
    }

    /// A rule between segments: counts and logs of port/address conditions, other
    /// decisions, anything.
    fn between_rule(&mut self) -> GRule {
        let shape = Shape::any(self.rng);
        match self.rng.below(10) {
            0..=3 => {
                let (c, t) = self.ix_cond(&shape);
                self.pool.targets.push(t);
                GRule {
                    action: self.counter(),
                    sem: ASem::Count,
                    cond: Some(c),
                }
            }
            4 | 5 => {
                let (c, t) = self.ix_cond(&shape);
                self.pool.targets.push(t);
                GRule {
                    action: "log".into(),
                    sem: ASem::Log,
                    cond: Some(c),
                }
            }
            6..=8 => {
                let (c, t) = self.ix_cond(&shape);
                self.pool.targets.push(t);
                let (action, d) = self.decision();
                GRule {
                    action,
                    sem: ASem::Decide(d),
                    cond: Some(c),
                }
            }
            _ => {
                let (action, sem) = self.action();
                GRule {
                    action,
                    sem,
                    cond: Some(self.cond(0)),
                }
            }
        }
    }

    /// A condition the index can hold: a port, address, payload or sender test, an `and`
    /// of a port test and an address test (or of both ports, or of the sender and a port),
    /// an `or` of two such.
    fn ix_cond(&mut self, shape: &Shape) -> (GCond, Vec<Hit>) {
        match self.rng.below(30) {
            26 | 27 => self.ix_sender(shape),
            28 => {
                // The sender and a port, or a payload slice (one key of both).
                let (a, ta) = self.ix_sender(shape);
                let (b, tb) = if self.rng.pct(90) {
                    self.ix_port(&shape.and_shape(true))
                } else {
                    self.ix_payload(shape)
                };
                let ts = ta.iter().flat_map(|x| tb.iter().filter_map(|y| x.and(y)));
                let both = if self.rng.pct(50) {
                    vec![a, b]
                } else {
                    vec![b, a]
                };
                (GCond::And(both), ts.collect())
            }
            29 => {
                // The sender and a `len` test: the residual.
                let (a, ta) = self.ix_sender(shape);
                let (b, range) = self.ix_len();
                let ts = ta.into_iter().map(|t| Hit {
                    len: Some(range),
                    ..t
                });
                (GCond::And(vec![a, b]), ts.collect())
            }
            20..=22 => {
                // A payload slice (a key of its own), sometimes with a port.
                let (a, ta) = self.ix_payload(shape);
                if self.rng.pct(50) {
                    return (a, ta);
                }
                let (b, tb) = self.ix_port(&shape.and_shape(true));
                let ts = ta.iter().flat_map(|x| tb.iter().filter_map(|y| x.and(y)));
                (GCond::And(vec![b, a]), ts.collect())
            }
            23..=25 => {
                // A key and a `len` test, or a range of the sender's ids or of a port
                // that is not the key: the residual checked after the lookup.
                let key = self.rng.below(3);
                let (a, ta) = match key {
                    0 => self.ix_port(shape),
                    1 => self.ix_addr(shape),
                    _ => self.ix_payload(shape),
                };
                if self.rng.pct(25) {
                    let (b, h) = self.ix_range(key != 0);
                    let ts = ta.iter().filter_map(|t| t.and(&h));
                    return (GCond::And(vec![a, b]), ts.collect());
                }
                let (b, range) = self.ix_len();
                let ts = ta.into_iter().map(|t| Hit {
                    len: Some(range),
                    ..t
                });
                (GCond::And(vec![a, b]), ts.collect())
            }
            0..=6 => self.ix_port(shape),
            7..=13 => self.ix_addr(shape),
            14..=17 => {
                let narrow = shape.and_shape(self.rng.pct(85));
                let ((a, ta), (b, tb)) = if self.rng.pct(85) {
                    (self.ix_port(&narrow), self.ix_addr(&narrow))
                } else {
                    // Both ports (one key word each).
                    let one = |f: &'static str| Shape {
                        port_fields: vec![f],
                        ..shape.and_shape(true)
                    };
                    (
                        self.ix_port(&one("local.port")),
                        self.ix_port(&one("remote.port")),
                    )
                };
                let mut ts = Vec::new();
                for x in &ta {
                    for y in &tb {
                        ts.extend(x.and(y));
                    }
                }
                let both = if self.rng.pct(50) {
                    vec![a, b]
                } else {
                    vec![b, a]
                };
                (GCond::And(both), ts)
            }
            _ => {
                let (a, mut ta) = self.ix_port(shape);
                let (b, tb) = if self.rng.pct(50) {
                    self.ix_addr(shape)
                } else {
                    self.ix_port(shape)
                };
                ta.extend(tb);
                (GCond::Or(vec![a, b]), ta)
            }
        }
    }

    /// `payload[o..o+n] == "..."` or `payload starts with "..."`: few strings, so that
    /// rules share keys.
    fn ix_payload(&mut self, shape: &Shape) -> (GCond, Vec<Hit>) {
        let (offset, len) = self.rng.pick(&shape.payloads);
        let pick = self.rng.below(4) as u8;
        let bytes: Vec<u8> = (0..len).map(|i| b'a' + (pick + i as u8) % 3).collect();
        self.pool.strings.push((offset, bytes.clone()));
        let text = if offset == 0 && self.rng.pct(50) {
            format!("payload starts with {}", quote(&bytes))
        } else {
            format!(
                "payload[{offset}..{}] == {}",
                offset as usize + len,
                quote(&bytes)
            )
        };
        let sem = Sem::Payload {
            offset,
            alts: vec![bytes.clone()],
            negate: false,
        };
        let hit = Hit {
            payload: Some((offset, bytes)),
            ..Hit::default()
        };
        (GCond::Atom(text, sem), vec![hit])
    }

    /// An exact test of a field of the sender (`uid == 1003`, `gid in {5, 1001}`,
    /// `cgroup == 4294967298`, `comm == "nginx"`) or of a payload byte, with values
    /// few enough that rules share keys.
    fn ix_sender(&mut self, shape: &Shape) -> (GCond, Vec<Hit>) {
        let field = self.rng.pick(&shape.senders);
        let n = if self.rng.pct(20) { 2 } else { 1 };
        let set = |vs: Vec<String>| {
            if vs.len() == 1 {
                format!("== {}", vs[0])
            } else {
                format!("in {{{}}}", vs.join(", "))
            }
        };
        match field {
            "comm" => {
                let cs: Vec<Vec<u8>> = (0..n).map(|_| self.comm()).collect();
                let text = format!("comm {}", set(cs.iter().map(|c| quote(c)).collect()));
                let hits = cs
                    .iter()
                    .map(|c| Hit {
                        comm: Some(c.clone()),
                        ..Hit::default()
                    })
                    .collect();
                let sem = Sem::Comm {
                    alts: cs,
                    prefix: false,
                    negate: false,
                };
                (GCond::Atom(text, sem), hits)
            }
            "byte" => {
                let i = self.rng.pick(&[0u32, 1, 3, 7]);
                let vs: Vec<u8> = (0..n).map(|_| self.rng.pick(b"abc\x00\xff")).collect();
                for &v in &vs {
                    self.pool.strings.push((i, vec![v]));
                }
                let text = format!(
                    "payload[{i}] {}",
                    set(vs.iter().map(|v| v.to_string()).collect())
                );
                let hits = vs
                    .iter()
                    .map(|&v| Hit {
                        payload: Some((i, vec![v])),
                        ..Hit::default()
                    })
                    .collect();
                let sem = Sem::Int {
                    field: F::Byte(i),
                    ranges: sorted_points(vs.iter().map(|&v| v as u64)),
                    negate: false,
                };
                (GCond::Atom(text, sem), hits)
            }
            _ => {
                let cgroup = field == "cgroup";
                let vs: Vec<u64> = (0..n)
                    .map(|_| match (self.rng.below(10), cgroup) {
                        (0, false) => self.rng.pick(ID_EDGES),
                        (0, true) => self.rng.pick(&[1u64, 0x1_0000_0002, u64::MAX]),
                        _ => 1000 + self.rng.below(40),
                    })
                    .collect();
                for &v in &vs {
                    self.remember(if cgroup { Kind::Cgroup } else { Kind::Id }, v);
                }
                let text = format!(
                    "{field} {}",
                    set(vs.iter().map(|&v| int_text(self.rng, v)).collect())
                );
                let hits = vs
                    .iter()
                    .map(|&v| {
                        let mut h = Hit::default();
                        match field {
                            "uid" => h.uid = Some(v as u32),
                            "gid" => h.gid = Some(v as u32),
                            "pid" => h.pid = Some(v as u32),
                            _ => h.cgroup = Some(v),
                        }
                        h
                    })
                    .collect();
                let sem = Sem::Int {
                    field: F::parse(field),
                    ranges: sorted_points(vs.iter().copied()),
                    negate: false,
                };
                (GCond::Atom(text, sem), hits)
            }
        }
    }

    /// A range test of `uid`, `gid`, `pid` (or, with `ports`, of a port) too wide to be
    /// keyed (a residual), and a value that makes it hold.
    fn ix_range(&mut self, ports: bool) -> (GCond, Hit) {
        // Mostly `uid`: each field is a tuple of its own per key shape, and a block has
        // room for 16 hashed ones.
        let fields: &[&'static str] = match (ports, self.rng.pct(70)) {
            (_, true) => &["uid"],
            (true, false) => &["gid", "pid", "local.port", "remote.port"],
            (false, false) => &["gid", "pid"],
        };
        let field = self.rng.pick(fields);
        let port = field.ends_with("port");
        let n = if port {
            1024 + self.rng.below(40)
        } else {
            1000 + self.rng.below(40)
        };
        self.remember(if port { Kind::Port } else { Kind::Id }, n);
        let max = if port { 65535 } else { u32::MAX as u64 };
        let near = self.rng.below(5);
        let atom = |text: String, lo: u64, hi: u64| {
            let sem = Sem::Int {
                field: F::parse(field),
                ranges: vec![(lo, hi)],
                negate: false,
            };
            GCond::Atom(text, sem)
        };
        let (cond, v) = match self.rng.below(4) {
            0 => (atom(format!("{field} > {n}"), n + 1, max), n + 1 + near),
            1 => (atom(format!("{field} >= {n}"), n, max), n + near),
            2 => (atom(format!("{field} < {n}"), 0, n - 1), n - 1 - near),
            _ => {
                let hi = n + 500;
                let both = GCond::And(vec![
                    atom(format!("{field} >= {n}"), n, max),
                    atom(format!("{field} <= {hi}"), 0, hi),
                ]);
                (both, hi - near)
            }
        };
        let mut h = Hit::default();
        match field {
            "uid" => h.uid = Some(v as u32),
            "gid" => h.gid = Some(v as u32),
            "pid" => h.pid = Some(v as u32),
            "local.port" => h.local_port = Some(v as u16),
            _ => h.remote_port = Some(v as u16),
        }
        (cond, h)
    }

    /// A `len` test of one range (or two tests that make one).
    fn ix_len(&mut self) -> (GCond, (u64, u64)) {
        let n = self.rng.pick(&[0u64, 3, 8, 10, 20, 64, 100, 1000]);
        self.pool.lens.push(n);
        let atom = |text: String, lo: u64, hi: u64| {
            let sem = Sem::Int {
                field: F::Len,
                ranges: vec![(lo, hi)],
                negate: false,
            };
            GCond::Atom(text, sem)
        };
        let max = u32::MAX as u64;
        match self.rng.below(4) {
            0 => (atom(format!("len > {n}"), n + 1, max), (n + 1, max)),
            1 => (atom(format!("len >= {n}"), n, max), (n, max)),
            2 => {
                let hi = n + 30;
                let both = GCond::And(vec![
                    atom(format!("len >= {n}"), n, max),
                    atom(format!("len <= {hi}"), 0, hi),
                ]);
                (both, (n, hi))
            }
            _ if n > 0 => (atom(format!("len < {n}"), 0, n - 1), (0, n - 1)),
            _ => (atom("len == 0".into(), 0, 0), (0, 0)),
        }
    }

    fn ix_port_value(&mut self) -> u16 {
        let v = match self.rng.below(20) {
            0 => self.rng.pick(&[0u16, 1, 80, 443, 65535]),
            _ => 1000 + self.rng.below(150) as u16,
        };
        self.pool.ports.push(v as u64);
        v
    }

    fn ix_port(&mut self, shape: &Shape) -> (GCond, Vec<Hit>) {
        let field = self.rng.pick(&shape.port_fields);
        let (text, ranges) = match self.rng.below(10) {
            0..=6 => {
                let v = self.ix_port_value();
                let t = int_text(self.rng, v as u64);
                let text = if self.rng.pct(10) {
                    format!("{t} == {field}")
                } else {
                    format!("{field} == {t}")
                };
                (text, vec![(v as u64, v as u64)])
            }
            7 | 8 => {
                let n = self.rng.range(2, 4);
                let vs: Vec<u16> = (0..n).map(|_| self.ix_port_value()).collect();
                let set = format!(
                    "{{{}}}",
                    vs.iter()
                        .map(|v| v.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                let set = if self.rng.pct(25) {
                    self.declare(true, set)
                } else {
                    set
                };
                (
                    format!("{field} in {set}"),
                    vs.iter().map(|&v| (v as u64, v as u64)).collect(),
                )
            }
            _ => {
                let lo = self.ix_port_value();
                let hi = lo.saturating_add(self.rng.range(1, 4) as u16);
                self.pool.ports.push(hi as u64);
                (
                    format!("{field} in {lo}..{hi}"),
                    vec![(lo as u64, hi as u64)],
                )
            }
        };
        let mut targets = Vec::new();
        for &(lo, hi) in &ranges {
            for v in lo..=hi {
                let v = v as u16;
                if field != "remote.port" {
                    targets.push(Hit {
                        local_port: Some(v),
                        ..Hit::default()
                    });
                }
                if field != "local.port" {
                    targets.push(Hit {
                        remote_port: Some(v),
                        ..Hit::default()
                    });
                }
            }
        }
        let sem = if field == "port" {
            Sem::EitherPort {
                ranges,
                negate: false,
            }
        } else {
            Sem::Int {
                field: F::parse(field),
                ranges,
                negate: false,
            }
        };
        (GCond::Atom(text, sem), targets)
    }

    /// An address near the others of the policy, masked to `prefix`.
    fn ix_net(&mut self, v4: bool, prefix: u8) -> (IpAddr, u8) {
        let net = if v4 {
            let base = match self.rng.below(10) {
                0..=4 => Ipv4Addr::new(10, 0, self.rng.below(3) as u8, self.rng.below(40) as u8),
                5..=7 => Ipv4Addr::new(
                    192,
                    168,
                    self.rng.below(3) as u8,
                    16 * self.rng.below(16) as u8 + self.rng.below(3) as u8,
                ),
                8 => Ipv4Addr::new(127, 0, 0, 1),
                _ => self
                    .rng
                    .pick(&[Ipv4Addr::new(0, 0, 0, 0), Ipv4Addr::BROADCAST]),
            };
            let a = Ipv4Addr::from(u32::from(base) & skpc::hir::mask32(prefix));
            (IpAddr::V4(a), prefix)
        } else {
            let base: Ipv6Addr = match self.rng.below(10) {
                0..=4 => Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, self.rng.below(40) as u16),
                5 | 6 => Ipv6Addr::new(
                    0x2001,
                    0xdb8,
                    self.rng.below(3) as u16,
                    0,
                    0,
                    0,
                    0,
                    self.rng.below(8) as u16,
                ),
                // IPv4-mapped, written as IPv6: matches a mapped IPv6 socket address.
                7 | 8 => Ipv4Addr::new(10, 0, 0, self.rng.below(40) as u8).to_ipv6_mapped(),
                _ => self
                    .rng
                    .pick(&[Ipv6Addr::LOCALHOST, "fe80::1".parse().unwrap()]),
            };
            let a = Ipv6Addr::from(u128::from(base) & skpc::hir::mask128(prefix));
            (IpAddr::V6(a), prefix)
        };
        self.pool.nets.push(net);
        net
    }

    fn ix_addr(&mut self, shape: &Shape) -> (GCond, Vec<Hit>) {
        let field = self.rng.pick(&shape.addr_fields);
        let v4_ok = !field.ends_with("ip6");
        let v6_ok = !field.ends_with("ip4");
        let local = field == "ip" || field.starts_with("local");
        let remote = field == "ip" || field.starts_with("remote");
        let mapped = v4_ok && v6_ok;
        let pick_net = |g: &mut Self, full: bool| {
            let v4 = if v4_ok && v6_ok && !shape.v6_prefixes.is_empty() {
                g.rng.pct(65)
            } else {
                v4_ok
            };
            let prefix = match (full, v4) {
                (true, true) => 32,
                (true, false) => 128,
                (false, true) => g.rng.pick(&shape.v4_prefixes),
                (false, false) => g.rng.pick(&shape.v6_prefixes),
            };
            g.ix_net(v4, prefix)
        };
        let (text, nets) = match self.rng.below(20) {
            0..=9 => {
                let (a, p) = pick_net(self, true);
                (format!("{field} == {a}"), vec![(a, p)])
            }
            10..=16 => {
                let (a, p) = pick_net(self, false);
                (format!("{field} in {a}/{p}"), vec![(a, p)])
            }
            _ => {
                let n = self.rng.range(2, 3);
                let mut elems = Vec::new();
                let mut nets = Vec::new();
                for _ in 0..n {
                    let full = self.rng.pct(50);
                    let (a, p) = pick_net(self, full);
                    nets.push((a, p));
                    elems.push(if full {
                        a.to_string()
                    } else {
                        format!("{a}/{p}")
                    });
                }
                let set = format!("{{{}}}", elems.join(", "));
                let set = if self.rng.pct(25) {
                    self.declare(true, set)
                } else {
                    set
                };
                (format!("{field} in {set}"), nets)
            }
        };
        let mut targets = Vec::new();
        for net in &nets {
            for (on, is_local) in [(local, true), (remote, false)] {
                if on {
                    targets.push(Hit {
                        addrs: vec![Aim {
                            local: is_local,
                            net: *net,
                        }],
                        ..Hit::default()
                    });
                }
            }
        }
        let sem = Sem::Addr {
            local,
            remote,
            mapped,
            nets,
            negate: false,
        };
        (GCond::Atom(text, sem), targets)
    }

    /// A condition the index cannot hold (the rule stays code), often next to port and
    /// address tests.
    fn code_cond(&mut self, shape: &Shape) -> GCond {
        let (t, s) = match self.rng.below(6) {
            0 => self.starts_atom(),
            1 => self.int_atom("len", LEN_EDGES, u32::MAX as u64, Kind::Len),
            2 => {
                let f = self.rng.pick(&["uid", "gid", "pid"]);
                self.int_atom(f, ID_EDGES, u32::MAX as u64, Kind::Id)
            }
            3 => self.comm_atom(),
            4 => self.slice_atom(),
            _ => self.byte_atom(),
        };
        let other = GCond::Atom(t, s);
        match self.rng.below(10) {
            0..=2 => other,
            3..=5 => {
                let (c, _) = self.ix_cond(shape);
                GCond::And(vec![c, other])
            }
            6 | 7 => {
                // `not` of a port or address test, with a port or address test.
                let (a, _) = self.ix_cond(shape);
                let (b, _) = self.ix_cond(shape);
                GCond::And(vec![a, GCond::Not(Box::new(b))])
            }
            8 => {
                // Two tests of one field in one term.
                let (a, _) = self.ix_port(shape);
                let (b, _) = self.ix_port(shape);
                GCond::And(vec![a, b])
            }
            _ => self.cond(1),
        }
    }
}

/// A message aimed at the port/address rules of a [`gen_indexed_policy`] policy: mostly
/// one rule's keys (some through an IPv4-mapped address of an IPv6 socket), often two
/// rules' at once (the first must decide), sometimes just near them.
pub fn gen_indexed_message(rng: &mut Rng, pool: &Pool) -> Sent {
    let mut s = gen_message(rng, pool);
    let alts: Vec<&Vec<Hit>> = pool.targets.iter().filter(|t| !t.is_empty()).collect();
    if alts.is_empty() || rng.pct(20) {
        return s;
    }
    let mut chosen = Vec::new();
    for _ in 0..if rng.pct(35) { 2 } else { 1 } {
        let rule = rng.pick(&alts);
        chosen.push(rng.pick(rule));
    }
    aim(rng, pool, &mut s.msg, &chosen);
    s
}

/// Sets the fields of `m` so that the targets hold (a later one that needs another
/// family is left out), then makes the other address fit the family.
fn aim(rng: &mut Rng, pool: &Pool, m: &mut Message, targets: &[Hit]) {
    let family = targets
        .iter()
        .flat_map(|t| t.addrs.first())
        .next()
        .map(|a| {
            if a.net.0.is_ipv6() || rng.pct(35) {
                AF_INET6
            } else {
                AF_INET
            }
        });
    if let Some(f) = family {
        m.family = f;
    }
    let mut set = [false, false];
    for t in targets {
        if t.addrs
            .iter()
            .any(|a| a.net.0.is_ipv6() && m.family != AF_INET6)
        {
            continue;
        }
        if let Some(p) = t.local_port {
            m.local_port = p;
        }
        if let Some(p) = t.remote_port {
            m.remote_port = p;
        }
        if let Some((lo, hi)) = t.len {
            // A length in the range, the bytes up to it seen (when it is small).
            let l = rng.range(lo, hi.min(lo + 40)).min(u32::MAX as u64) as u32;
            m.len = l;
            m.payload.resize((l as usize).min(4096), b'x');
        }
        m.uid = t.uid.unwrap_or(m.uid);
        m.gid = t.gid.unwrap_or(m.gid);
        m.pid = t.pid.unwrap_or(m.pid);
        m.cgroup = t.cgroup.unwrap_or(m.cgroup);
        if let Some(c) = &t.comm {
            m.comm = c.clone();
        }
        if let Some((offset, bytes)) = &t.payload {
            let end = *offset as usize + bytes.len();
            if m.payload.len() < end {
                m.payload.resize(end, b'x');
            }
            m.payload[*offset as usize..end].copy_from_slice(bytes);
            m.len = m.len.max(m.payload.len() as u32);
        }
        for a in &t.addrs {
            let ip = host_in(rng, a.net);
            let ip = match (ip, m.family) {
                (IpAddr::V4(v4), f) if f == AF_INET6 => IpAddr::V6(v4.to_ipv6_mapped()),
                (ip, _) => ip,
            };
            if a.local {
                m.local_ip = ip;
                set[0] = true;
            } else {
                m.remote_ip = ip;
                set[1] = true;
            }
        }
    }
    for (i, ip) in [&mut m.local_ip, &mut m.remote_ip].into_iter().enumerate() {
        if set[i] {
            continue;
        }
        *ip = match (*ip, m.family == AF_INET6) {
            (IpAddr::V4(a), true) if rng.pct(50) => IpAddr::V6(a.to_ipv6_mapped()),
            (IpAddr::V6(a), false) if a.to_ipv4_mapped().is_some() => {
                IpAddr::V4(a.to_ipv4_mapped().unwrap_or(Ipv4Addr::LOCALHOST))
            }
            (IpAddr::V4(_), true) | (IpAddr::V6(_), false) => {
                let v6 = m.family == AF_INET6;
                addr_near(rng, pool, v6)
            }
            (ip, _) => ip,
        };
    }
}

/// Values as the sorted, distinct point ranges of `Sem::Int`.
fn sorted_points(vs: impl Iterator<Item = u64>) -> Vec<(u64, u64)> {
    let set: std::collections::BTreeSet<u64> = vs.collect();
    set.into_iter().map(|v| (v, v)).collect()
}

/// An address inside `net`: its first, its last, or a random one.
fn host_in(rng: &mut Rng, (a, p): (IpAddr, u8)) -> IpAddr {
    match a {
        IpAddr::V4(a) => {
            let host = !skpc::hir::mask32(p);
            let base = u32::from(a);
            let v = match rng.below(3) {
                0 => base,
                1 => base | host,
                _ => base | (rng.next() as u32 & host),
            };
            IpAddr::V4(Ipv4Addr::from(v))
        }
        IpAddr::V6(a) => {
            let host = !skpc::hir::mask128(p);
            let base = u128::from(a);
            let r = ((rng.next() as u128) << 64) | rng.next() as u128;
            let v = match rng.below(3) {
                0 => base,
                1 => base | host,
                _ => base | (r & host),
            };
            IpAddr::V6(Ipv6Addr::from(v))
        }
    }
}
