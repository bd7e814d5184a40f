//! Differential testing of large sets (compiler/lower/sets.rs): random policies whose
//! `in` tests hold hundreds of elements of every kind a set map takes (IPv4 and IPv6
//! prefixes of either end, ports, uid/gid/pid/cgroup values, `len` ranges, payload
//! slices, `payload starts with` strings of one or two lengths, `http.host` and
//! `redis.key` strings, `comm` names), and messages aimed at them: a listed value (a
//! host in another case), an address inside a listed prefix, the IPv4-mapped IPv6 form of
//! a listed IPv4 address, the value or address just outside, a payload one byte off or
//! too short, anything. Each policy is compiled three times: with the default threshold,
//! with every set as a map (`set_maps_above: Some(0)`) and with every set as code
//! (`set_maps_above: Some(usize::MAX)`); the VM runs each program's bytes (filling the set maps
//! as the runtime does) and must agree with the reference evaluator, whose decision
//! must agree with the test's own membership model of the source.
//!
//! The kernel leg runs a sample of such policies through the runtime (it fills the set
//! maps) on real loopback connections, with elements the loopback can reach (127/8
//! prefixes, ::1, the listener's port, the test's uid, payloads), and compares each
//! send's result with the evaluator. Root only (skipped otherwise; SKP_REQUIRE_KERNEL=1
//! makes that a failure).
//!
//! `SKP_SEED` changes the seed; `SKP_SET_POLICIES` the number of policies (VM leg).

mod common;
mod e2e_support;
mod policygen;

use std::collections::BTreeMap;
use std::fmt::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::time::Instant;

use e2e_support::EACCES;
use policygen::{quote, Rng};
use skpc::compile::{compile_with, Compiled};
use skpc::eval::eval;
use skpc::hir::{Message, Verdict};
use skpc::lower::Options;
use skpc::vm::{RunConfig, Vm};

const DEFAULT_SEED: u64 = 0x5e75_0001;
const MESSAGES_PER_POLICY: usize = 40;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum IntF {
    RemotePort,
    LocalPort,
    Uid,
    Gid,
    Pid,
    Cgroup,
    Len,
}

impl IntF {
    fn name(self) -> &'static str {
        match self {
            IntF::RemotePort => "remote.port",
            IntF::LocalPort => "local.port",
            IntF::Uid => "uid",
            IntF::Gid => "gid",
            IntF::Pid => "pid",
            IntF::Cgroup => "cgroup",
            IntF::Len => "len",
        }
    }

    fn top(self) -> u64 {
        match self {
            IntF::RemotePort | IntF::LocalPort => u16::MAX as u64,
            IntF::Cgroup => u64::MAX,
            _ => u32::MAX as u64,
        }
    }

    fn get(self, m: &Message) -> u64 {
        match self {
            IntF::RemotePort => m.remote_port as u64,
            IntF::LocalPort => m.local_port as u64,
            IntF::Uid => m.uid as u64,
            IntF::Gid => m.gid as u64,
            IntF::Pid => m.pid as u64,
            IntF::Cgroup => m.cgroup,
            IntF::Len => m.len as u64,
        }
    }

    fn set(self, m: &mut Message, v: u64) {
        match self {
            IntF::RemotePort => m.remote_port = v as u16,
            IntF::LocalPort => m.local_port = v as u16,
            IntF::Uid => m.uid = v as u32,
            IntF::Gid => m.gid = v as u32,
            IntF::Pid => m.pid = v as u32,
            IntF::Cgroup => m.cgroup = v,
            IntF::Len => {
                m.len = v as u32;
                m.payload.truncate(v as usize);
            }
        }
    }
}

/// One large test of a generated policy.
#[derive(Clone, Debug)]
enum GSet {
    /// `remote.ip` (or `local.ip`) in IPv4 and/or IPv6 prefixes (host bits zero).
    Addr {
        remote: bool,
        v4: Vec<(u32, u8)>,
        v6: Vec<(u128, u8)>,
    },
    /// An integer field in values and ranges (sorted, disjoint).
    Int {
        field: IntF,
        ranges: Vec<(u64, u64)>,
    },
    /// `payload[offset..offset + len] in {...}`.
    Slice {
        offset: usize,
        strings: Vec<Vec<u8>>,
    },
    /// `payload starts with {...}`.
    Starts { strings: Vec<Vec<u8>> },
    /// `http.host in` (`starts with`, `ends with`) `{...}`: lower-cased hosts, compared
    /// in any case.
    Host { strings: Vec<Vec<u8>>, op: SOp },
    /// `redis.key in` (`starts with`, `ends with`) `{...}`: any bytes, some longer than
    /// a set map keys.
    RedisKey { strings: Vec<Vec<u8>>, op: SOp },
    /// `comm in` (`starts with`) `{...}`.
    Comm { strings: Vec<Vec<u8>>, op: SOp },
}

/// How a string field meets a set of strings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SOp {
    In,
    Starts,
    Ends,
}

impl SOp {
    fn holds(self, value: &[u8], strings: &[Vec<u8>]) -> bool {
        match self {
            SOp::In => strings.iter().any(|s| s[..] == *value),
            SOp::Starts => strings.iter().any(|s| value.starts_with(s)),
            SOp::Ends => strings.iter().any(|s| value.ends_with(s)),
        }
    }

    fn pick(rng: &mut Rng, ends: bool) -> SOp {
        *[SOp::In, SOp::Starts, SOp::Ends]
            .get(rng.below(if ends { 3 } else { 2 }) as usize)
            .unwrap_or(&SOp::In)
    }

    /// The message's value from a listed string: itself (nearly), or for a prefix
    /// (suffix) with more bytes after (before) it.
    fn value(self, rng: &mut Rng, near_listed: Vec<u8>, alphabet: &[u8]) -> Vec<u8> {
        let more: Vec<u8> = (0..rng.below(6)).map(|_| rng.pick(alphabet)).collect();
        match self {
            SOp::Starts if rng.pct(60) => [near_listed, more].concat(),
            SOp::Ends if rng.pct(60) => [more, near_listed].concat(),
            _ => near_listed,
        }
    }
}

impl GSet {
    fn kind(&self) -> &'static str {
        match self {
            GSet::Addr { v6, .. } if v6.is_empty() => "IPv4 prefixes",
            GSet::Addr { v4, .. } if v4.is_empty() => "IPv6 prefixes",
            GSet::Addr { .. } => "IPv4 and IPv6 prefixes",
            GSet::Int { field, ranges } => match field {
                IntF::RemotePort | IntF::LocalPort => "ports",
                _ if ranges.iter().all(|(lo, hi)| lo == hi) => "integer values",
                _ => "integer ranges",
            },
            GSet::Slice { .. } => "payload slices",
            GSet::Starts { .. } => "payload starts with",
            GSet::Host { op: SOp::In, .. } => "http.host strings",
            GSet::Host { .. } => "http.host prefixes or suffixes",
            GSet::RedisKey { op: SOp::In, .. } => "redis.key strings",
            GSet::RedisKey { .. } => "redis.key prefixes or suffixes",
            GSet::Comm { op: SOp::In, .. } => "comm names",
            GSet::Comm { .. } => "comm prefixes",
        }
    }

    /// The test as source text; the set in `decl` when it can be declared.
    fn source(&self, name: &str, decl: &mut String) -> String {
        let list = |items: Vec<String>| format!("{{ {} }}", items.join(", "));
        match self {
            GSet::Addr { remote, v4, v6 } => {
                let mut items: Vec<String> = v4
                    .iter()
                    .map(|&(a, p)| format!("{}/{p}", Ipv4Addr::from(a)))
                    .collect();
                items.extend(
                    v6.iter()
                        .map(|&(a, p)| format!("{}/{p}", Ipv6Addr::from(a))),
                );
                let _ = writeln!(decl, "set {name} = {};", list(items));
                let end = if *remote { "remote" } else { "local" };
                format!("{end}.ip in {name}")
            }
            GSet::Int { field, ranges } => {
                let items = ranges
                    .iter()
                    .map(|&(lo, hi)| {
                        if lo == hi {
                            lo.to_string()
                        } else {
                            format!("{lo}..{hi}")
                        }
                    })
                    .collect();
                let _ = writeln!(decl, "set {name} = {};", list(items));
                format!("{} in {name}", field.name())
            }
            GSet::Slice { offset, strings } => {
                let n = strings[0].len();
                format!(
                    "payload[{offset}..{}] in {}",
                    offset + n,
                    list(strings.iter().map(|s| quote(s)).collect())
                )
            }
            GSet::Starts { strings } => format!(
                "payload starts with {}",
                list(strings.iter().map(|s| quote(s)).collect())
            ),
            GSet::Host { strings, op }
            | GSet::RedisKey { strings, op }
            | GSet::Comm { strings, op }
                if *op != SOp::In =>
            {
                let field = match self {
                    GSet::Host { .. } => "http.host",
                    GSet::RedisKey { .. } => "redis.key",
                    _ => "comm",
                };
                let op = if *op == SOp::Starts {
                    "starts with"
                } else {
                    "ends with"
                };
                format!(
                    "{field} {op} {}",
                    list(strings.iter().map(|s| quote(s)).collect())
                )
            }
            GSet::Host { strings, .. }
            | GSet::RedisKey { strings, .. }
            | GSet::Comm { strings, .. } => {
                let field = match self {
                    GSet::Host { .. } => "http.host",
                    GSet::RedisKey { .. } => "redis.key",
                    _ => "comm",
                };
                let _ = writeln!(
                    decl,
                    "set {name} = {};",
                    list(strings.iter().map(|s| quote(s)).collect())
                );
                format!("{field} in {name}")
            }
        }
    }

    /// The test's meaning on `m`, from the source alone.
    fn holds(&self, m: &Message) -> bool {
        match self {
            GSet::Addr { remote, v4, v6 } => {
                let ip = if *remote { m.remote_ip } else { m.local_ip };
                let in4 = |a: Ipv4Addr| {
                    let a = u32::from(a);
                    v4.iter().any(|&(n, p)| a & mask4(p) == n)
                };
                match ip {
                    IpAddr::V4(a) => m.family == skpc_abi::AF_INET && in4(a),
                    IpAddr::V6(a) if m.family == skpc_abi::AF_INET6 => {
                        let x = u128::from(a);
                        v6.iter().any(|&(n, p)| x & mask6(p) == n)
                            || a.to_ipv4_mapped().is_some_and(in4)
                    }
                    IpAddr::V6(_) => false,
                }
            }
            GSet::Int { field, ranges } => {
                let v = field.get(m);
                ranges.iter().any(|&(lo, hi)| (lo..=hi).contains(&v))
            }
            GSet::Slice { offset, strings } => {
                let n = strings[0].len();
                m.payload.len() >= offset + n
                    && strings
                        .iter()
                        .any(|s| s[..] == m.payload[*offset..offset + n])
            }
            GSet::Starts { strings } => strings.iter().any(|s| m.payload.starts_with(s)),
            GSet::Host { strings, op } => {
                model_host(&m.payload).is_some_and(|h| op.holds(&h, strings))
            }
            GSet::RedisKey { strings, op } => {
                model_redis_key(&m.payload).is_some_and(|k| op.holds(&k, strings))
            }
            GSet::Comm { strings, op } => op.holds(&m.comm, strings),
        }
    }
}

/// The request line every generated HTTP message starts with, and its Host header.
const HTTP_HEAD: &[u8] = b"GET / HTTP/1.1\r\nHost: ";
/// The command every generated Redis message holds, before its key's length.
const REDIS_HEAD: &[u8] = b"*2\r\n$3\r\nGET\r\n$";

/// The host of a generated HTTP message (docs/language.md, Protocols): up to the first
/// `:`, space, tab, CR or LF, 1 to 128 bytes inside the parser's 256-byte window,
/// lower-cased.
fn model_host(p: &[u8]) -> Option<Vec<u8>> {
    let rest = p.strip_prefix(HTTP_HEAD)?;
    let end = rest.iter().position(|b| b": \t\r\n".contains(b))?;
    let fits = (1..=128).contains(&end) && HTTP_HEAD.len() + end <= 256;
    fits.then(|| rest[..end].to_ascii_lowercase())
}

/// The key of a generated Redis message: `$N\r\n`, N bytes, CR LF, N 1 to 255, inside
/// the parser's 512-byte window. A message that starts with a letter (the HTTP ones) is
/// an inline command: its key is the word after the command and up to 8 spaces.
fn model_redis_key(p: &[u8]) -> Option<Vec<u8>> {
    let w = &p[..p.len().min(512)];
    if w.first().is_some_and(u8::is_ascii_alphabetic) {
        let word_end = |from: usize| {
            w[from..]
                .iter()
                .position(|b| b" \r\n".contains(b))
                .map(|n| from + n)
        };
        let e = word_end(0)?;
        if e > 32 || w[e] != b' ' {
            return None;
        }
        let spaces = w[e..].iter().take_while(|&&b| b == b' ').count();
        let start = e + spaces;
        let end = word_end(start)?;
        let ok = spaces <= 8 && (1..=255).contains(&(end - start));
        return ok.then(|| w[start..end].to_vec());
    }
    let rest = p.strip_prefix(REDIS_HEAD)?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits > 3 {
        return None;
    }
    let n: usize = std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()?;
    let key = rest.get(digits + 2..digits + 2 + n)?;
    let ok = rest.get(digits..digits + 2) == Some(b"\r\n")
        && rest.get(digits + 2 + n..digits + 4 + n) == Some(b"\r\n")
        && (1..=255).contains(&n)
        && REDIS_HEAD.len() + digits + 4 + n <= 512;
    ok.then(|| key.to_vec())
}

/// The name the kernel gives this thread's messages (`comm`): the test harness names
/// its threads.
fn own_comm() -> Vec<u8> {
    let mut c = std::fs::read("/proc/thread-self/comm").unwrap_or_default();
    while c.last() == Some(&b'\n') {
        c.pop();
    }
    c
}

fn mask4(p: u8) -> u32 {
    if p == 0 {
        0
    } else {
        u32::MAX << (32 - p)
    }
}

fn mask6(p: u8) -> u128 {
    if p == 0 {
        0
    } else {
        u128::MAX << (128 - p)
    }
}

/// A rule: `VERDICT if [not] TEST;`.
#[derive(Clone, Debug)]
struct GRule {
    set: GSet,
    negated: bool,
    verdict: Verdict,
}

#[derive(Clone, Debug)]
struct GPolicy {
    rules: Vec<GRule>,
}

impl GPolicy {
    fn source(&self) -> String {
        let mut decl = String::new();
        let mut rules = String::new();
        for (i, r) in self.rules.iter().enumerate() {
            let test = r.set.source(&format!("s{i}"), &mut decl);
            let verdict = match r.verdict {
                Verdict::Drop => "drop",
                Verdict::Discard => "discard",
                _ => "pass",
            };
            let cond = if r.negated {
                format!("not ({test})")
            } else {
                test
            };
            let _ = writeln!(rules, "{verdict} if {cond};");
        }
        decl + &rules
    }

    /// The verdict from the source alone: the first rule that holds, else pass.
    fn verdict(&self, m: &Message) -> Verdict {
        self.rules
            .iter()
            .find(|r| r.set.holds(m) != r.negated)
            .map_or(Verdict::Pass, |r| r.verdict.clone())
    }
}

/// What the elements of a generated set may be: anything, or (for the kernel) some of
/// them reachable over loopback.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Reach {
    Any,
    Loopback,
}

fn gen_v4(rng: &mut Rng) -> (u32, u8) {
    gen_v4_of(rng, &[8, 16, 20, 24, 24, 24, 28, 32, 32])
}

/// The prefix lengths of a set's IPv4 prefixes, so that each layout of the set maps
/// occurs: many lengths (a trie), one byte-wide band (a feed of /24s and /32s: one
/// block hash of bitmaps), two bands (two block hashes), one or two lengths a band
/// apart (a hash per length).
const V4_PALETTES: [&[u8]; 5] = [
    &[8, 16, 20, 24, 24, 24, 28, 32, 32],
    &[24, 24, 24, 32],
    &[16, 20, 24, 26, 28, 32],
    &[24],
    &[16, 32],
];

fn gen_v4_of(rng: &mut Rng, lengths: &[u8]) -> (u32, u8) {
    let p = rng.pick(lengths);
    let a = rng.next() as u32;
    (a & mask4(p), p)
}

fn gen_v6(rng: &mut Rng) -> (u128, u8) {
    let p = *[16u8, 32, 48, 64, 64, 64, 96, 128]
        .get(rng.below(8) as usize)
        .unwrap_or(&64);
    // fd00::/8 and 2001:db8::/32: never the IPv4-mapped range.
    let a = if rng.pct(50) {
        (0xfdu128 << 120) | (((rng.next() as u128) << 64 | rng.next() as u128) >> 8)
    } else {
        (0x2001_0db8u128 << 96) | ((rng.next() as u128) << 32)
    };
    (a & mask6(p), p)
}

/// `n` sorted, disjoint ranges (or values) below `max`.
fn gen_ranges(rng: &mut Rng, n: usize, max: u64, points: bool) -> Vec<(u64, u64)> {
    let mut v: Vec<(u64, u64)> = (0..n)
        .map(|_| {
            let lo = rng.range(0, max);
            let hi = if points {
                lo
            } else {
                lo.saturating_add(rng.below(40)).min(max)
            };
            (lo, hi)
        })
        .collect();
    v.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (lo, hi) in v {
        match out.last() {
            // Keep them apart, so that the near misses miss.
            Some(&(_, h)) if lo <= h.saturating_add(1) => {}
            _ => out.push((lo, hi)),
        }
    }
    out
}

/// `n` words of 1 to `longest` bytes of `alphabet` (host names, process names).
fn gen_words(rng: &mut Rng, n: usize, longest: u64, alphabet: &[u8]) -> Vec<Vec<u8>> {
    (0..n)
        .map(|_| {
            let len = rng.range(1, longest) as usize;
            (0..len).map(|_| rng.pick(alphabet)).collect()
        })
        .collect()
}

fn gen_strings(rng: &mut Rng, n: usize, len: usize) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = (0..n)
        .map(|_| {
            (0..len)
                .map(|_| {
                    if rng.pct(80) {
                        b'a' + rng.below(26) as u8
                    } else {
                        rng.below(256) as u8
                    }
                })
                .collect()
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

fn gen_set(rng: &mut Rng, reach: Reach) -> GSet {
    let n = rng.range(20, 700) as usize;
    match rng.below(10) {
        0 | 1 => {
            let which = rng.below(3);
            let palette = rng.pick(&V4_PALETTES);
            let mut v4: Vec<(u32, u8)> = if which != 1 {
                (0..n).map(|_| gen_v4_of(rng, palette)).collect()
            } else {
                Vec::new()
            };
            let mut v6: Vec<(u128, u8)> = if which != 0 {
                (0..n).map(|_| gen_v6(rng)).collect()
            } else {
                Vec::new()
            };
            if reach == Reach::Loopback {
                // Loopback addresses the kernel leg connects from and to.
                if which != 1 {
                    for _ in 0..4 {
                        let p = rng.pick(&[24u8, 30, 32]);
                        let a = u32::from(Ipv4Addr::new(127, 0, rng.below(4) as u8, 0))
                            | rng.below(256) as u32;
                        v4.push((a & mask4(p), p));
                    }
                }
                if which != 0 && rng.pct(50) {
                    v6.push((1, 128));
                }
            }
            v4.sort_unstable();
            v4.dedup();
            v6.sort_unstable();
            v6.dedup();
            GSet::Addr {
                remote: rng.pct(60),
                v4,
                v6,
            }
        }
        2 => {
            let field = rng.pick(&[IntF::RemotePort, IntF::LocalPort]);
            let points = rng.pct(60);
            let mut ranges = gen_ranges(rng, n, field.top(), points);
            if reach == Reach::Loopback {
                // The kernel leg listens on / connects from ports in 20000..20100.
                ranges.retain(|&(lo, hi)| hi < 20_000 || lo > 20_100);
                for p in (20_000..20_100).step_by(7) {
                    ranges.push((p, p + rng.below(2)));
                }
                ranges.sort_unstable();
            }
            GSet::Int { field, ranges }
        }
        3 | 4 => {
            let field = rng.pick(&[
                IntF::Uid,
                IntF::Gid,
                IntF::Pid,
                IntF::Cgroup,
                IntF::Len,
                IntF::Len,
            ]);
            let field = if reach == Reach::Loopback {
                rng.pick(&[IntF::Uid, IntF::Len])
            } else {
                field
            };
            let max = if field == IntF::Len {
                70_000
            } else {
                field.top()
            };
            let points = rng.pct(50);
            let mut ranges = gen_ranges(rng, n, max, points);
            if reach == Reach::Loopback && field == IntF::Uid && rng.pct(50) {
                // The test's own uid (the kernel leg runs as root).
                // SAFETY: no preconditions.
                let uid = unsafe { libc::getuid() } as u64;
                ranges.retain(|&(lo, _)| lo > uid + 1);
                ranges.insert(0, (uid, uid));
            }
            GSet::Int { field, ranges }
        }
        5 => {
            let len = rng.range(1, 16) as usize;
            GSet::Slice {
                offset: rng.range(0, 40) as usize,
                strings: gen_strings(rng, n, len),
            }
        }
        // Strings compared in code take about 5 instructions a word: up to 300 of them
        // (the threshold is 128) keeps a policy of three such sets as code inside the
        // VM's 32K slots.
        7 => {
            let n = n.min(300);
            let mut strings = gen_words(rng, n, 40, b"abcdefghijklmnopqrstuvwxyz0123456789.-");
            if rng.pct(20) {
                // Up to the field's bound (128) and the map's key (152).
                strings.push(vec![b'x'; rng.range(100, 128) as usize]);
            }
            strings.sort();
            strings.dedup();
            let op = SOp::pick(rng, true);
            GSet::Host { strings, op }
        }
        8 => {
            let n = n.min(300);
            let mut strings: Vec<Vec<u8>> = (0..n)
                .map(|_| {
                    let len = rng.range(1, 24) as usize;
                    gen_strings(rng, 1, len).remove(0)
                })
                .collect();
            // Longer than a set map keys (152): compared in code after the lookup.
            for _ in 0..rng.below(3) {
                let len = rng.range(150, 220) as usize;
                strings.push(gen_strings(rng, 1, len).remove(0));
            }
            strings.sort();
            strings.dedup();
            let op = SOp::pick(rng, true);
            GSet::RedisKey { strings, op }
        }
        9 => {
            let mut strings = gen_words(rng, n, 15, b"abcdefghijklmnopqrstuvwxyz0123456789-_:/");
            if reach == Reach::Loopback && rng.pct(50) {
                strings.push(own_comm());
            }
            strings.sort();
            strings.dedup();
            let op = SOp::pick(rng, false);
            GSet::Comm { strings, op }
        }
        _ => {
            let len = rng.range(2, 12) as usize;
            let mut strings = gen_strings(rng, n, len);
            if rng.pct(30) {
                // A second length: one test per length.
                strings.extend(gen_strings(rng, n / 2, len + 3));
            }
            GSet::Starts { strings }
        }
    }
}

fn gen_policy(rng: &mut Rng, reach: Reach) -> GPolicy {
    let n = rng.range(1, 3) as usize;
    GPolicy {
        rules: (0..n)
            .map(|_| GRule {
                set: gen_set(rng, reach),
                negated: rng.pct(15),
                verdict: rng.pick(&[Verdict::Drop, Verdict::Discard, Verdict::Pass]),
            })
            .collect(),
    }
}

fn random_payload(rng: &mut Rng, len: usize) -> Vec<u8> {
    (0..len)
        .map(|_| {
            if rng.pct(70) {
                b'a' + rng.below(26) as u8
            } else {
                rng.below(256) as u8
            }
        })
        .collect()
}

/// A message aimed at `set`: a member, a near miss, or anything.
fn gen_message(rng: &mut Rng, set: &GSet) -> Message {
    let mut m = Message::default();
    let plen = rng.range(0, 80) as usize;
    m.payload = random_payload(rng, plen);
    m.len = plen as u32;
    m.uid = rng.range(0, 5000) as u32;
    m.remote_port = rng.range(1, 65535) as u16;
    m.local_port = rng.range(1024, 65535) as u16;
    match set {
        GSet::Addr { remote, v4, v6 } => {
            let aim = rng.below(8);
            let ip: IpAddr = if (!v4.is_empty() && (v6.is_empty() || rng.pct(50))) || aim == 7 {
                let (a, p) = if v4.is_empty() {
                    gen_v4(rng)
                } else {
                    rng.pick(v4)
                };
                let host = !mask4(p);
                let x = match aim {
                    0 => a,
                    1 | 6 => a | (rng.next() as u32 & host),
                    2 => a | host,
                    3 => a.wrapping_sub(1),
                    4 => (a | host).wrapping_add(1),
                    _ => rng.next() as u32,
                };
                let x = Ipv4Addr::from(x);
                if aim == 6 || rng.pct(15) {
                    IpAddr::V6(x.to_ipv6_mapped())
                } else {
                    IpAddr::V4(x)
                }
            } else {
                let (a, p) = if v6.is_empty() {
                    gen_v6(rng)
                } else {
                    rng.pick(v6)
                };
                let host = !mask6(p);
                let r = (rng.next() as u128) << 64 | rng.next() as u128;
                IpAddr::V6(Ipv6Addr::from(match aim {
                    0 => a,
                    1 => a | (r & host),
                    2 => a | host,
                    3 => a.wrapping_sub(1),
                    4 => (a | host).wrapping_add(1),
                    _ => r,
                }))
            };
            let other: IpAddr = match ip {
                IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::from(rng.next() as u32)),
                IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
            };
            m.family = if ip.is_ipv4() {
                skpc_abi::AF_INET
            } else {
                skpc_abi::AF_INET6
            };
            if *remote {
                (m.remote_ip, m.local_ip) = (ip, other);
            } else {
                (m.local_ip, m.remote_ip) = (ip, other);
            }
        }
        GSet::Int { field, ranges } => {
            let (lo, hi) = rng.pick(ranges);
            let v = match rng.below(6) {
                0 => lo,
                1 => hi,
                2 => rng.range(lo, hi),
                3 => lo.saturating_sub(1),
                4 => hi.saturating_add(1).min(field.top()),
                _ => rng.range(0, field.top().min(100_000)),
            };
            field.set(&mut m, v);
        }
        GSet::Slice { offset, strings } => {
            let s = rng.pick(strings);
            let mut p = random_payload(rng, *offset);
            p.extend_from_slice(&s);
            let tail = rng.below(20) as usize;
            p.extend(random_payload(rng, tail));
            match rng.below(5) {
                // One byte off.
                0 => {
                    let i = offset + rng.below(s.len() as u64) as usize;
                    p[i] ^= 1 << rng.below(8);
                }
                // Too short by one byte or more.
                1 => p.truncate(offset + s.len() - 1 - rng.below(s.len() as u64) as usize),
                2 => p = random_payload(rng, p.len()),
                _ => {}
            }
            m.len = p.len() as u32;
            m.payload = p;
        }
        GSet::Host { strings, op } => {
            let alphabet = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-";
            let listed = rng.pick(strings);
            let near_listed = near(rng, &listed, alphabet);
            let mut h = op.value(rng, near_listed, alphabet);
            if rng.pct(50) {
                // The same host in another case.
                for b in &mut h {
                    if rng.pct(50) {
                        *b = b.to_ascii_uppercase();
                    }
                }
            }
            let mut p = HTTP_HEAD.to_vec();
            p.extend_from_slice(&h);
            p.extend_from_slice(rng.pick(&[&b"\r\n\r\n"[..], b":8080\r\n\r\n", b"\r\n"]));
            if rng.pct(10) {
                // Cut inside the host: no value.
                p.truncate(HTTP_HEAD.len() + h.len() - 1 - rng.below(h.len() as u64) as usize);
            }
            m.len = p.len() as u32;
            m.payload = p;
        }
        GSet::RedisKey { strings, op } => {
            let k = rng.pick(strings);
            let alphabet: Vec<u8> = (0..=255).collect();
            let k = if rng.pct(30) {
                k
            } else {
                near(rng, &k, &alphabet)
            };
            let k = op.value(rng, k, &alphabet);
            let mut p = REDIS_HEAD.to_vec();
            p.extend_from_slice(format!("{}\r\n", k.len()).as_bytes());
            p.extend_from_slice(&k);
            p.extend_from_slice(b"\r\n");
            m.len = p.len() as u32;
            m.payload = p;
        }
        GSet::Comm { strings, op } => {
            let listed = rng.pick(strings);
            let alphabet = b"abcdefghijklmnopqrstuvwxyz0123456789";
            let near_listed = near(rng, &listed, alphabet);
            let c = op.value(rng, near_listed, alphabet);
            m.comm = c[..c.len().min(15)].to_vec();
        }
        GSet::Starts { strings } => {
            let s = rng.pick(strings);
            let mut p = s.clone();
            let tail = rng.below(30) as usize;
            p.extend(random_payload(rng, tail));
            match rng.below(5) {
                0 => {
                    let i = rng.below(s.len() as u64) as usize;
                    p[i] ^= 1 << rng.below(8);
                }
                1 => p.truncate(s.len() - 1),
                2 => p = random_payload(rng, p.len()),
                _ => {}
            }
            m.len = p.len() as u32;
            m.payload = p;
        }
    }
    m
}

/// `s` (a listed string) one byte off, one byte short, one byte longer, or random.
fn near(rng: &mut Rng, s: &[u8], alphabet: &[u8]) -> Vec<u8> {
    let mut v = s.to_vec();
    match rng.below(6) {
        0 => {
            let i = rng.below(v.len() as u64) as usize;
            v[i] = rng.pick(alphabet);
        }
        1 if v.len() > 1 => {
            v.pop();
        }
        2 => v.push(rng.pick(alphabet)),
        3 => {
            let len = rng.range(1, 30) as usize;
            v = (0..len).map(|_| rng.pick(alphabet)).collect();
        }
        _ => {}
    }
    v
}

/// The three compilations of a policy: default threshold, all maps, all code.
fn compilations(src: &str) -> Vec<(&'static str, Compiled)> {
    [
        ("default", Options::default()),
        (
            "maps",
            Options {
                set_maps_above: Some(0),
                ..Options::default()
            },
        ),
        (
            "code",
            Options {
                set_maps_above: Some(usize::MAX),
                ..Options::default()
            },
        ),
    ]
    .into_iter()
    .map(|(name, o)| {
        let c = compile_with("sets.skp", src, o)
            .unwrap_or_else(|d| panic!("does not compile ({name}): {d:?}\n{src}"));
        (name, c)
    })
    .collect()
}

#[test]
fn evaluator_and_vm_agree_on_large_sets_as_maps_and_as_code() {
    let seed = policygen::seed(DEFAULT_SEED);
    let policies = policygen::env_usize("SKP_SET_POLICIES", 60);
    let mut rng = Rng::new(seed);
    let start = Instant::now();
    // Per kind of set: (messages in it, messages not in it).
    let mut seen: BTreeMap<&'static str, (usize, usize)> = BTreeMap::new();
    let mut mapped_hits = 0;
    // Set maps per layout, over the policies compiled with every set a map.
    let mut layouts: BTreeMap<&'static str, usize> = BTreeMap::new();
    for i in 0..policies {
        let p = gen_policy(&mut rng, Reach::Any);
        let src = p.source();
        let compiled = compilations(&src);
        let maps = &compiled[1].1;
        assert!(
            !maps.lowered.sets.is_empty(),
            "policy {i}: no set map with set_maps_above 0\n{src}"
        );
        for set in &maps.lowered.sets {
            *layouts
                .entry(if set.describe.contains("bitmaps") {
                    "IPv4 block hash"
                } else if set.describe.contains("LPM_TRIE") {
                    "trie"
                } else {
                    "hash or array"
                })
                .or_default() += 1;
        }
        let vms: Vec<(&str, Vm)> = compiled
            .iter()
            .map(|(name, c)| {
                let vm = Vm::new(&c.lowered)
                    .unwrap_or_else(|e| panic!("VM cannot load ({name}): {e}\n{src}"));
                (*name, vm)
            })
            .collect();
        for _ in 0..MESSAGES_PER_POLICY {
            let r = rng.below(p.rules.len() as u64) as usize;
            let m = gen_message(&mut rng, &p.rules[r].set);
            let hit = p.rules[r].set.holds(&m);
            let e = seen.entry(p.rules[r].set.kind()).or_default();
            if hit {
                e.0 += 1;
            } else {
                e.1 += 1;
            }
            if hit && m.family == skpc_abi::AF_INET6 {
                let ip = [m.remote_ip, m.local_ip];
                mapped_hits += usize::from(
                    ip.iter()
                        .any(|a| matches!(a, IpAddr::V6(v) if v.to_ipv4_mapped().is_some())),
                );
            }
            let ev = eval(&compiled[0].1.policy, &m);
            assert_eq!(
                ev.decision.verdict,
                p.verdict(&m),
                "seed {seed:#x} policy {i}: evaluator vs the source's meaning\n{src}\n{m:?}"
            );
            let window = rng.pick(&[RunConfig::default().window, 0, 8]);
            for (name, vm) in &vms {
                let out = vm
                    .run(&m, &RunConfig { window })
                    .unwrap_or_else(|e| panic!("VM error ({name}): {e}\n{src}\n{m:?}"));
                assert_eq!(
                    (&out.decision, &out.counters),
                    (&ev.decision, &ev.counters),
                    "seed {seed:#x} policy {i}: VM ({name}, window {window}) vs evaluator \
                     (decision, counters)\n{src}\n{m:?}"
                );
            }
        }
    }
    eprintln!(
        "large sets (seed {seed:#x}): {policies} policies x {MESSAGES_PER_POLICY} messages in \
         {:.1?}; (in, not in) per kind: {seen:?}; {mapped_hits} IPv4-mapped hits; set maps per \
         layout: {layouts:?}",
        start.elapsed()
    );
    if policies >= 30 {
        for (kind, (hits, misses)) in &seen {
            assert!(
                *hits > 0 && *misses > 0,
                "{kind}: {hits} messages in the set, {misses} not"
            );
        }
        assert!(seen.len() >= 10, "kinds covered: {:?}", seen.keys());
        assert!(mapped_hits > 0, "no IPv4-mapped address hit an IPv4 prefix");
        assert_eq!(layouts.len(), 3, "set map layouts covered: {layouts:?}");
    }
}

/// An IPv4 loopback address for a set test: inside a listed 127/8 prefix, next to one,
/// or 127.0.0.1; never a network or broadcast address of 127/8.
fn loopback_v4_for(rng: &mut Rng, set: &GSet, this_end: bool) -> Ipv4Addr {
    let listed: Vec<(u32, u8)> = match set {
        GSet::Addr { v4, .. } if this_end => v4
            .iter()
            .copied()
            .filter(|&(a, _)| a >> 24 == 127)
            .collect(),
        _ => Vec::new(),
    };
    if listed.is_empty() || rng.pct(20) {
        return Ipv4Addr::new(127, 0, 0, 1);
    }
    let (a, p) = rng.pick(&listed);
    let host = !mask4(p);
    let x = match rng.below(4) {
        0 => a | (rng.next() as u32 & host),
        1 => a.wrapping_sub(1),
        2 => (a | host).wrapping_add(1),
        _ => a | host.min(1),
    };
    let last = x & 255;
    if last == 0 || last == 255 {
        Ipv4Addr::new(127, 0, 0, 1)
    } else {
        Ipv4Addr::from(x)
    }
}

/// A loopback connection and a payload for one send aimed at `set`: addresses in or
/// next to its 127/8 prefixes (over IPv4, IPv6 ::1 or IPv4-mapped IPv6), ports in
/// 20000..20100 where free, payloads and lengths from the VM leg's messages.
fn loopback_send(rng: &mut Rng, set: &GSet) -> (TcpStream, TcpStream, Vec<u8>) {
    let (remote, v4_only, v6_only) = match set {
        GSet::Addr { remote, v4, v6 } => (Some(*remote), v6.is_empty(), v4.is_empty()),
        _ => (None, false, false),
    };
    // 0: IPv4, 1: IPv6 ::1, 2: IPv4-mapped IPv6.
    let kind = if v6_only {
        1
    } else if v4_only {
        rng.pick(&[0, 0, 2])
    } else {
        rng.below(3)
    };
    let server_v4 = loopback_v4_for(rng, set, remote == Some(true));
    let client_v4 = loopback_v4_for(rng, set, remote == Some(false));
    let (server_ip, client_ip): (IpAddr, IpAddr) = match kind {
        0 => (server_v4.into(), client_v4.into()),
        1 => (Ipv6Addr::LOCALHOST.into(), Ipv6Addr::LOCALHOST.into()),
        _ => (
            server_v4.to_ipv6_mapped().into(),
            client_v4.to_ipv6_mapped().into(),
        ),
    };
    let port = |rng: &mut Rng| {
        if rng.pct(70) {
            rng.range(20_000, 20_100) as u16
        } else {
            0
        }
    };
    let l = TcpListener::bind(SocketAddr::new(server_ip, port(rng)))
        .or_else(|_| TcpListener::bind(SocketAddr::new(server_ip, 0)))
        .expect("listen on loopback");
    let server_addr = l.local_addr().expect("listener address");
    let client =
        skpc_runtime::net::connect_from(SocketAddr::new(client_ip, port(rng)), server_addr)
            .or_else(|_| {
                skpc_runtime::net::connect_from(SocketAddr::new(client_ip, 0), server_addr)
            })
            .expect("connect on loopback");
    let (server, _) = l.accept().expect("accept");
    for s in [&client, &server] {
        s.set_nodelay(true).expect("nodelay");
    }
    let g = gen_message(rng, set);
    // One program run per send: 1 byte to 16 KiB.
    let mut payload = g.payload;
    if let GSet::Int {
        field: IntF::Len, ..
    } = set
    {
        payload.resize((g.len as usize).clamp(1, 16 * 1024), b'x');
    }
    if payload.is_empty() {
        payload.push(b'x');
    }
    (client, server, payload)
}

#[test]
fn kernel_agrees_with_the_evaluator_on_large_sets() {
    let name = "kernel_agrees_with_the_evaluator_on_large_sets";
    if !common::kernel_or_skip(name) {
        return;
    }
    let seed = policygen::seed(DEFAULT_SEED) ^ 0x6b;
    let policies = policygen::env_usize("SKP_KERNEL_SET_POLICIES", 12);
    let mut rng = Rng::new(seed);
    let start = Instant::now();
    let (mut sent, mut hits, mut maps, mut blocks) = (0usize, 0usize, 0usize, 0usize);
    for i in 0..policies {
        let mut p = gen_policy(&mut rng, Reach::Loopback);
        if i == 0 {
            // A feed of /24s and /32s in 127.0.0.0/22: one IPv4 block hash of bitmaps.
            let v4 = (0..30)
                .map(|_| {
                    let p = rng.pick(&[24u8, 32]);
                    let a = Ipv4Addr::new(127, 0, rng.below(4) as u8, rng.below(256) as u8);
                    (u32::from(a) & mask4(p), p)
                })
                .collect();
            p.rules.insert(
                0,
                GRule {
                    set: GSet::Addr {
                        remote: true,
                        v4,
                        v6: Vec::new(),
                    },
                    negated: false,
                    verdict: Verdict::Drop,
                },
            );
        }
        // A drop or a pass: what a send shows at once (a discard needs a wait).
        for r in &mut p.rules {
            if r.verdict == Verdict::Discard {
                r.verdict = Verdict::Drop;
            }
        }
        let src = p.source();
        // Most of them with every set a map; every third with the default threshold.
        let options = if i % 3 == 2 {
            Options::default()
        } else {
            Options {
                set_maps_above: Some(0),
                ..Options::default()
            }
        };
        let c = compile_with("sets.skp", &src, options)
            .unwrap_or_else(|d| panic!("does not compile: {d:?}\n{src}"));
        maps += c.lowered.sets.len();
        blocks += c
            .lowered
            .sets
            .iter()
            .filter(|s| s.describe.contains("bitmaps"))
            .count();
        let policy = e2e_support::runtime_policy(&c, "sets.skp", &src);
        let mut enf = skpc_runtime::Enforcement::new(&policy)
            .unwrap_or_else(|e| panic!("seed {seed:#x} policy {i} does not load: {e}\n{src}"));
        for _ in 0..10 {
            let r = rng.below(p.rules.len() as u64) as usize;
            let (client, mut server, payload) = loopback_send(&mut rng, &p.rules[r].set);
            let mut m = e2e_support::loopback_message(&client, &payload);
            // SAFETY: no preconditions.
            unsafe {
                m.uid = libc::getuid();
                m.gid = libc::getgid();
                m.pid = libc::getpid() as u32;
            }
            m.comm = own_comm();
            hits += usize::from(p.rules.iter().any(|r| r.set.holds(&m)));
            let want = eval(&c.policy, &m).decision.verdict;
            assert_eq!(
                want,
                p.verdict(&m),
                "seed {seed:#x} policy {i}: evaluator vs the source's meaning\n{src}\n{m:?}"
            );
            let (got, arrived) =
                e2e_support::send_once_enforced(&mut enf, &client, &mut server, &payload);
            let what = format!(
                "seed {seed:#x} policy {i}: {} B from {:?} to {:?}, evaluator {want:?}\n{src}",
                payload.len(),
                client.local_addr().ok(),
                client.peer_addr().ok()
            );
            match want {
                Verdict::Drop => assert_eq!(got, Err(EACCES), "{what}"),
                _ => {
                    assert_eq!(got, Ok(payload.len()), "{what}");
                    assert!(arrived == payload, "{what}: {} B arrived", arrived.len());
                }
            }
            sent += 1;
        }
        // Dropping the enforcement unloads its programs and maps.
        drop(enf);
    }
    eprintln!(
        "large sets on the kernel (seed {seed:#x}): {policies} policies ({maps} set maps, \
         {blocks} of them IPv4 block hashes), {sent} sends, {hits} in a set, in {:.1?}",
        start.elapsed()
    );
    if policies >= 6 {
        assert!(maps > 0, "no set map loaded");
        assert!(blocks > 0, "no IPv4 block hash loaded");
        assert!(hits > 0 && hits < sent, "{hits} of {sent} sends in a set");
    }
}
