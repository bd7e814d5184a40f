//! Part s of the kernel bench: large sets (compiler/lower/sets.rs).
//!
//! s1. Crossover: for each kind of set (IPv4 /24 prefixes, IPv6 /64 prefixes,
//!     `remote.port` values, `uid` values, `len` values, `len` ranges, 8-byte `payload starts with`
//!     strings, `http.host` strings of 6 to 28 bytes, `comm` names) and size (16 .. 4096 elements), one policy `drop if FIELD in SET;`
//!     compiled twice: as code (`set_maps_above: Some(usize::MAX)`) and as a map lookup
//!     (`set_maps_above: Some(0)`). Each attached directly to a sockmap, counters off; 64-byte
//!     messages that miss the set (the common case of a blocklist) over loopback TCP
//!     (IPv6 for the IPv6 kind; an HTTP request whose host is not listed for `http.host`), interleaved (round, then policy); the program's run time
//!     per message from the kernel's BPF stats, median of the rounds.
//! s2. Scale: blocklists of 10k, 100k and 1M random /24 prefixes (IPv4) and 100k random
//!     /64 prefixes (IPv6), next to the 10-rule policy `port_addr_10` (benches/gen):
//!     build time (in-process `skpc::compile`, default options, as `skpc build`), object
//!     size, verified_insns, load and fill wall times, a listed address dropped and an
//!     unlisted one passed, and the run time per message at 64 B, 1 KiB and 16 KiB
//!     (ratio to the 10-rule policy on the same family).
//!
//! Settings: SKPC_BENCH_ROUNDS (5), SKPC_BENCH_SETS_SECS (0.2 s per case and round),
//! SKPC_BENCH_SET_SIZES (16,64,256,1024,4096), SKPC_BENCH_BLOCKLISTS
//! (10000,100000,1000000: IPv4 sizes; the IPv6 list has 100k). `SKPC_BENCH_ONLY=sets`
//! runs this part alone.

use std::collections::BTreeSet;
use std::fmt::Write;
use std::net::{TcpListener, TcpStream};
use std::time::Instant;

use skpc::lower::Options;

use super::{
    attach_direct, bpf_stats_sysctl, env_list, env_or, gen, load_failure, load_program, report,
    run_case_at, run_case_msg, slots, Attach, Run,
};

/// The addresses the messages travel over (a listener is bound to each).
const V4_BIND: &str = "127.0.0.1:0";
const V6_BIND: &str = "[::1]:0";
/// The listed address of the scale part's enforcement check: in every IPv4 list as a
/// /32, and as its IPv4-mapped IPv6 /128 in the IPv6 list (an IPv6 socket to it).
const LISTED_V4: [u8; 4] = [127, 0, 0, 2];

/// The kinds of set of the crossover.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    V4,
    V6,
    Port,
    Uid,
    LenPoints,
    Len,
    Payload,
    Host,
    Comm,
}

const KINDS: [Kind; 9] = [
    Kind::V4,
    Kind::V6,
    Kind::Port,
    Kind::Uid,
    Kind::LenPoints,
    Kind::Len,
    Kind::Payload,
    Kind::Host,
    Kind::Comm,
];

/// The message of the `http.host` kind: 64 bytes, a request whose host (21 bytes) no set
/// lists.
fn http_message() -> Vec<u8> {
    let mut m = b"GET / HTTP/1.1\r\nHost: www.unlisted-site.com\r\nX: ".to_vec();
    m.resize(60, b'x');
    m.extend_from_slice(b"\r\n\r\n");
    m
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::V4 => "remote.ip, IPv4 /24",
            Kind::V6 => "remote.ip, IPv6 /64",
            Kind::Port => "remote.port values",
            Kind::Uid => "uid values",
            Kind::LenPoints => "len values",
            Kind::Len => "len ranges",
            Kind::Payload => "payload starts with, 8 B",
            Kind::Host => "http.host, 6-28 B",
            Kind::Comm => "comm names",
        }
    }

    /// The bytes of every message, when not `x`s.
    fn message(self) -> Option<Vec<u8>> {
        (self == Kind::Host).then(http_message)
    }

    fn bind(self) -> &'static str {
        if self == Kind::V6 {
            V6_BIND
        } else {
            V4_BIND
        }
    }
}

/// xorshift64*: the same sets in every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// `n` distinct random elements from `make`.
fn distinct(n: usize, rng: &mut Rng, make: impl Fn(u64) -> Option<String>) -> Vec<String> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        if let Some(e) = make(rng.next()) {
            if seen.insert(e.clone()) {
                out.push(e);
            }
        }
    }
    out
}

/// `n` random /24 prefixes outside 127/8 (the messages come from 127.0.0.1).
fn v4_prefixes(n: usize, rng: &mut Rng) -> Vec<String> {
    distinct(n, rng, |x| {
        let a = (x >> 40) as u32;
        (a >> 16 != 127).then(|| format!("{}.{}.{}.0/24", a >> 16, (a >> 8) & 255, a & 255))
    })
}

/// `n` random /64 prefixes in fd00::/8 (the messages come from ::1).
fn v6_prefixes(n: usize, rng: &mut Rng) -> Vec<String> {
    distinct(n, rng, |x| {
        Some(format!(
            "fd{:02x}:{:x}:{:x}:{:x}::/64",
            (x >> 56) & 255,
            (x >> 40) & 0xffff,
            (x >> 24) & 0xffff,
            (x >> 8) & 0xffff
        ))
    })
}

/// The policy of one crossover case: `drop if FIELD in SET;` with `n` elements the
/// messages (64 `x`s from the bench, root, from 127.0.0.1 or ::1 to an ephemeral port)
/// never match.
fn crossover_policy(kind: Kind, n: usize) -> String {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (n as u64) << 8 ^ kind as u64);
    let (field, elements) = match kind {
        Kind::V4 => ("remote.ip", v4_prefixes(n, &mut rng)),
        Kind::V6 => ("remote.ip", v6_prefixes(n, &mut rng)),
        // Below the ephemeral range the listener's port comes from.
        Kind::Port => (
            "remote.port",
            distinct(n, &mut rng, |x| Some((1 + (x >> 33) % 32_000).to_string())),
        ),
        // Never 0: the bench runs as root.
        Kind::Uid => (
            "uid",
            distinct(n, &mut rng, |x| {
                Some((1000 + (x >> 33) % 4_000_000_000).to_string())
            }),
        ),
        // A HASH lookup of a context field (no helper call, unlike uid).
        Kind::LenPoints => (
            "len",
            distinct(n, &mut rng, |x| {
                Some((20_000 + (x >> 33) % 4_000_000_000).to_string())
            }),
        ),
        // Disjoint ranges of 1..=64 values above 16 KiB, one per 16 Ki slot.
        Kind::Len => ("len", {
            (0..n)
                .map(|i| {
                    let lo = 20_000 + i as u64 * 16_384 + rng.next() % 8_192;
                    format!("{lo}..{}", lo + rng.next() % 64)
                })
                .collect()
        }),
        // Upper-case letters: the messages are `x`s.
        Kind::Payload => (
            "payload starts with",
            distinct(n, &mut rng, |x| {
                let s: String = (0..8)
                    .map(|k| (b'A' + ((x >> (k * 5 + 20)) % 26) as u8) as char)
                    .collect();
                Some(format!("\"{s}\""))
            }),
        ),
        // Lower-case host names (the message's is not one of them).
        Kind::Host => (
            "http.host",
            distinct(n, &mut rng, |x| {
                let len = 2 + (x % 21) as usize;
                let s: String = (0..len)
                    .map(|k| (b'a' + ((x >> (k * 2 + 8)) % 26) as u8) as char)
                    .collect();
                Some(format!("\"{s}.com\""))
            }),
        ),
        // Names the bench's threads never have (upper-case letters).
        Kind::Comm => (
            "comm",
            distinct(n, &mut rng, |x| {
                let len = 3 + (x % 12) as usize;
                let s: String = (0..len)
                    .map(|k| (b'A' + ((x >> (k * 4 + 8)) % 26) as u8) as char)
                    .collect();
                Some(format!("\"{s}\""))
            }),
        ),
    };
    let op = if kind == Kind::Payload { "" } else { " in" };
    format!(
        "set s = {{ {} }};\ndrop if {field}{op} s;\n",
        elements.join(", ")
    )
}

/// A policy loaded and attached, with its numbers.
struct Case {
    verified: u32,
    load_ms: f64,
    fill_ms: f64,
    attach: Result<Bound, String>,
}

/// An attached program and the listener address its messages go to.
struct Bound {
    attach: Attach,
    bind: &'static str,
    /// The bytes of every message (`Kind::message`), else `x`s of the run's size.
    msg: Option<Vec<u8>>,
}

fn compile_as(name: &str, src: &str, options: Options) -> Result<skpc::compile::Compiled, String> {
    skpc::compile::compile_with(name, src, options).map_err(|d| {
        format!(
            "does not compile: {}",
            d.first()
                .map(|d| format!("{:?}: {}", d.code, d.message))
                .unwrap_or_default()
        )
    })
}

/// Loads `c`'s verdict program, fills its sets (and index), attaches it to a sockmap.
fn prepare(c: &skpc::compile::Compiled, bind: &'static str) -> Case {
    let failed = |e: String| Case {
        verified: 0,
        load_ms: f64::NAN,
        fill_ms: f64::NAN,
        attach: Err(e.replace('|', "/")),
    };
    let loaded = match load_program(&c.object, "skp_verdict", slots(c)) {
        Ok(l) => l,
        Err(e) => return failed(load_failure(c, &e)),
    };
    let t = Instant::now();
    let filled = skpc_runtime::fill_sets(&loaded.ebpf, &c.object)
        .and_then(|_| skpc_runtime::fill_index(&loaded.ebpf, &c.object));
    let fill_ms = t.elapsed().as_secs_f64() * 1e3;
    if let Err(e) = filled {
        return failed(format!("fill failed: {e}"));
    }
    let (verified, load_ms) = (loaded.info.verified, loaded.info.load_ms);
    Case {
        verified,
        load_ms,
        fill_ms,
        attach: attach_direct(loaded, "skp_socks").map(|attach| Bound {
            attach,
            bind,
            msg: None,
        }),
    }
}

/// The median run time per message (ns) of a case's rounds.
fn ns_per_run(runs: Option<&Result<Vec<Run>, String>>) -> Result<f64, String> {
    match runs {
        Some(Ok(r)) if !r.is_empty() && r.iter().all(|x| x.runs > 0) => {
            let mut v: Vec<f64> = r.iter().map(|x| x.run_ns as f64 / x.runs as f64).collect();
            Ok(report::median(&mut v))
        }
        Some(Err(e)) => Err(e.clone()),
        _ => Err("no runs (BPF stats off?)".into()),
    }
}

/// Runs part s and returns its markdown.
pub fn part_s() -> String {
    let started = Instant::now();
    let sysctl_before = bpf_stats_sysctl();
    let stats_fd = aya::sys::enable_stats(aya::sys::Stats::RunTime);
    if let Err(e) = &stats_fd {
        eprintln!("BPF_ENABLE_STATS failed ({e}); run times will be missing");
    }
    let mut s = crossover();
    s.push('\n');
    s.push_str(&scale());
    drop(stats_fd);
    let _ = write!(
        s,
        "\nkernel.bpf_stats_enabled was {sysctl_before} before and {} after. Command: \
         `{}cargo bench --bench kernel` (this part: {:.0} s). {}\n",
        bpf_stats_sysctl(),
        settings(),
        started.elapsed().as_secs_f64(),
        report::machine()
    );
    s
}

/// s1: code against map, per kind and size.
fn crossover() -> String {
    let rounds: usize = env_or("SKPC_BENCH_ROUNDS", 5);
    let secs: f64 = env_or("SKPC_BENCH_SETS_SECS", 0.2);
    let sizes = env_list("SKPC_BENCH_SET_SIZES", &[16, 64, 256, 1024, 4096]);
    let as_code = Options {
        counters: false,
        set_maps_above: Some(usize::MAX),
        ..Options::default()
    };
    let as_map = Options {
        counters: false,
        set_maps_above: Some(0),
        ..Options::default()
    };
    // (kind, size) -> index of the code case; the map case follows it.
    let mut cells = Vec::new();
    let mut cases = Vec::new();
    for &kind in &KINDS {
        for &n in &sizes {
            let src = crossover_policy(kind, n);
            cells.push((kind, n, cases.len()));
            for options in [as_code, as_map] {
                eprintln!(
                    "s. loading {} x {n} as {}",
                    kind.label(),
                    if options.set_maps_above == Some(0) {
                        "map"
                    } else {
                        "code"
                    }
                );
                cases.push(match compile_as("set.skp", &src, options) {
                    Ok(c) => {
                        let mut case = prepare(&c, kind.bind());
                        if let Ok(b) = &mut case.attach {
                            b.msg = kind.message();
                        }
                        case
                    }
                    Err(e) => Case {
                        verified: 0,
                        load_ms: f64::NAN,
                        fill_ms: f64::NAN,
                        attach: Err(e),
                    },
                });
            }
        }
    }
    let results = super::interleaved(
        "s1",
        rounds,
        &[64usize],
        &mut cases,
        |c| &mut c.attach,
        |b, size| match &b.msg {
            Some(m) => run_case_msg(&mut b.attach, m, secs, b.bind),
            None => run_case_at(&mut b.attach, size, secs, b.bind),
        },
    );
    let mut s = format!(
        "### s1. Large sets: code or map (run time per message, BPF stats)\n\n\
         One policy `drop if FIELD in SET;` per kind and size, compiled as code \
         (`set_maps_above: Some(usize::MAX)`: a binary search over ranges, compares of payload \
         words) and as a map lookup (`set_maps_above: Some(0)`, compiler/lower/sets.rs), counters \
         off, attached directly to a sockmap. 64-byte messages that miss the set (the \
         common case for a blocklist), {secs} s per case and round, {rounds} rounds \
         interleaved; run_time_ns / run_cnt of prog info, median. Cells: ns per message \
         code / map, and verified_insns code / map. **bold**: the faster one.\n\n\
         | kind |"
    );
    for n in &sizes {
        let _ = write!(s, " {n} |");
    }
    s.push_str("\n|---|");
    for _ in &sizes {
        s.push_str("---:|");
    }
    s.push('\n');
    for &kind in &KINDS {
        let _ = write!(s, "| {} |", kind.label());
        for &(k, _, i) in cells.iter().filter(|(k, _, _)| *k == kind) {
            let _ = k;
            let code = ns_per_run(results.get(&(i, 64)));
            let map = ns_per_run(results.get(&(i + 1, 64)));
            let cell = match (&code, &map) {
                (Ok(c), Ok(m)) if c <= m => format!(
                    "**{c:.0}** / {m:.0} ({} / {} insns)",
                    cases[i].verified,
                    cases[i + 1].verified
                ),
                (Ok(c), Ok(m)) => format!(
                    "{c:.0} / **{m:.0}** ({} / {} insns)",
                    cases[i].verified,
                    cases[i + 1].verified
                ),
                (Err(e), Ok(m)) => format!("code: {e} / {m:.0}"),
                (Ok(c), Err(e)) => format!("{c:.0} / map: {e}"),
                (Err(e), Err(_)) => e.clone(),
            };
            let _ = write!(s, " {cell} |");
        }
        s.push('\n');
    }
    s
}

/// One policy of the scale part.
struct ScaleCase {
    name: String,
    elements: usize,
    build_ms: f64,
    object_bytes: usize,
    case: Case,
    /// A listed address's message was dropped (None: the policy lists none).
    listed_dropped: Option<Result<(), String>>,
}

/// A blocklist of `n` prefixes (IPv4 /24, or IPv6 /64) and the listed loopback address.
fn blocklist(v6: bool, n: usize) -> String {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d ^ n as u64);
    let [a, b, c, d] = LISTED_V4;
    let mut elements = if v6 {
        let mut e = v6_prefixes(n - 1, &mut rng);
        e.push(format!("::ffff:{a}.{b}.{c}.{d}/128"));
        e
    } else {
        let mut e = v4_prefixes(n - 1, &mut rng);
        e.push(format!("{a}.{b}.{c}.{d}/32"));
        e
    };
    elements.rotate_right(n / 2);
    let mut s = String::with_capacity(n * 24);
    s.push_str("set blocklist = {\n");
    for e in &elements {
        s.push_str(e);
        s.push_str(",\n");
    }
    s.push_str("};\ndrop if remote.ip in blocklist;\n");
    s
}

/// A message to the listed address (127.0.0.2, over IPv6 as ::ffff:127.0.0.2) must fail
/// with EACCES: the policy dropped it.
fn listed_is_dropped(b: &mut Bound) -> Result<(), String> {
    let [a, bb, c, d] = LISTED_V4;
    let (bind, connect) = if b.bind == V6_BIND {
        ("[::]:0", format!("[::ffff:{a}.{bb}.{c}.{d}]"))
    } else {
        ("127.0.0.2:0", format!("{a}.{bb}.{c}.{d}"))
    };
    let l = TcpListener::bind(bind).map_err(|e| e.to_string())?;
    let port = l.local_addr().map_err(|e| e.to_string())?.port();
    let client = TcpStream::connect(format!("{connect}:{port}")).map_err(|e| e.to_string())?;
    b.attach.insert(&client)?;
    let sent = std::io::Write::write(&mut &client, b"hello");
    b.attach.remove();
    match sent {
        Err(e) if e.raw_os_error() == Some(libc::EACCES) => Ok(()),
        Err(e) => Err(format!("send failed with {e}, not EACCES")),
        Ok(_) => Err("a listed address passed".into()),
    }
}

fn scale_case(name: String, elements: usize, src: &str, bind: &'static str) -> ScaleCase {
    eprintln!("s. building {name}");
    let t = Instant::now();
    let compiled = compile_as(&format!("{name}.skp"), src, Options::default());
    let build_ms = t.elapsed().as_secs_f64() * 1e3;
    let (object_bytes, mut case) = match &compiled {
        Ok(c) => {
            eprintln!("s. loading {name}");
            (c.object.len(), prepare(c, bind))
        }
        Err(e) => (
            0,
            Case {
                verified: 0,
                load_ms: f64::NAN,
                fill_ms: f64::NAN,
                attach: Err(e.clone()),
            },
        ),
    };
    let listed_dropped = (elements > 0).then(|| match &mut case.attach {
        Ok(b) => listed_is_dropped(b),
        Err(e) => Err(e.clone()),
    });
    ScaleCase {
        name,
        elements,
        build_ms,
        object_bytes,
        case,
        listed_dropped,
    }
}

/// s2: blocklists of 10k .. 1M prefixes against the 10-rule policy.
fn scale() -> String {
    let rounds: usize = env_or("SKPC_BENCH_ROUNDS", 5);
    let secs: f64 = env_or("SKPC_BENCH_SETS_SECS", 0.2);
    let v4_sizes = env_list("SKPC_BENCH_BLOCKLISTS", &[10_000, 100_000, 1_000_000]);
    let ten = gen::port_addr(10);
    let mut cases = vec![
        scale_case("port_addr_10 (IPv4)".into(), 0, &ten, V4_BIND),
        scale_case("port_addr_10 (IPv6)".into(), 0, &ten, V6_BIND),
    ];
    for &n in &v4_sizes {
        cases.push(scale_case(
            format!("blocklist IPv4 {n}"),
            n,
            &blocklist(false, n),
            V4_BIND,
        ));
    }
    cases.push(scale_case(
        "blocklist IPv6 100000".into(),
        100_000,
        &blocklist(true, 100_000),
        V6_BIND,
    ));
    let sizes = [64usize, 1024, 16384];
    let results = super::interleaved(
        "s2",
        rounds,
        &sizes,
        &mut cases,
        |c| &mut c.case.attach,
        |b, size| run_case_at(&mut b.attach, size, secs, b.bind),
    );
    let mut s = format!(
        "### s2. Large sets: blocklists of 10k to 1M prefixes\n\n\
         `set blocklist = {{ N prefixes }}; drop if remote.ip in blocklist;` with random /24 \
         prefixes (IPv4) or /64 prefixes in fd00::/8 (IPv6), one of them 127.0.0.2/32 \
         (IPv6: ::ffff:127.0.0.2/128), next to the 10-rule policy `port_addr_10` \
         (benches/gen). Build: in-process `skpc::compile` with the default options (what \
         `skpc build` runs, release); object: its bytes; verified: verified_insns of \
         skp_verdict; load: the program's load (verification); fill: `fill_sets` and \
         `fill_index` (the keys into the maps); listed: a message to 127.0.0.2 (IPv6: \
         ::ffff:127.0.0.2) fails with EACCES. Run time: the program (counters on, attached \
         directly) per message of 64 B / 1 KiB / 16 KiB from 127.0.0.1 (IPv6: ::1), which \
         no list holds; {secs} s per case and round, {rounds} rounds interleaved, median; \
         in brackets the ratio to port_addr_10 over the same family.\n\n\
         | policy | build | object | verified | load | fill | listed | 64 B | 1 KiB | 16 KiB |\n\
         |---|---:|---:|---:|---:|---:|---|---:|---:|---:|\n"
    );
    for (i, c) in cases.iter().enumerate() {
        // The baseline of the same family: cases 0 (IPv4) and 1 (IPv6).
        let base = usize::from(c.name.contains("IPv6"));
        let _ = write!(
            s,
            "| {} | {} | {:.1} MB | {} | {} | {} | {} |",
            c.name,
            report::dur(c.build_ms * 1e6),
            c.object_bytes as f64 / 1e6,
            c.case.verified,
            report::dur(c.case.load_ms * 1e6),
            report::dur(c.case.fill_ms * 1e6),
            match &c.listed_dropped {
                None => "-".to_string(),
                Some(Ok(())) => "dropped".to_string(),
                Some(Err(e)) => e.replace('|', "/"),
            }
        );
        for &size in &sizes {
            let cell = match (
                ns_per_run(results.get(&(i, size))),
                ns_per_run(results.get(&(base, size))),
            ) {
                (Ok(v), Ok(b)) if i != base => format!("{v:.0} ({:.2}x)", v / b),
                (Ok(v), _) => format!("{v:.0}"),
                (Err(e), _) => e,
            };
            let _ = write!(s, " {cell} |");
        }
        s.push('\n');
    }
    let _ = write!(
        s,
        "\nPer 100k elements: {}.\n",
        cases
            .iter()
            .filter(|c| c.elements > 0)
            .map(|c| format!(
                "{}: build {} , load + fill {}",
                c.name,
                report::dur(c.build_ms * 1e6 * 1e5 / c.elements as f64),
                report::dur((c.case.load_ms + c.case.fill_ms) * 1e6 * 1e5 / c.elements as f64)
            ))
            .collect::<Vec<_>>()
            .join("; ")
    );
    s
}

fn settings() -> String {
    [
        "SKPC_BENCH_ONLY",
        "SKPC_BENCH_ROUNDS",
        "SKPC_BENCH_SETS_SECS",
        "SKPC_BENCH_SET_SIZES",
        "SKPC_BENCH_BLOCKLISTS",
    ]
    .iter()
    .filter_map(|k| std::env::var(k).ok().map(|v| format!("{k}={v} ")))
    .collect()
}
