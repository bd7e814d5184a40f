//! Kernel cost of skpc's programs next to the hand-written C anchor
//! (shared/anchors/sk_msg_c: policy.bpf.c compiled with clang -O2 into policy.bpf.o),
//! all in one run. Needs root: `sudo -E cargo bench --bench kernel`.
//!
//! a. Code size and verifier cost: for every example and every anchor policy's skpc
//!    equivalent (benches/anchors/*.skp), with counters and without: emitted slots,
//!    xlated_prog_len / 8, jited bytes and verified_insns from prog info after loading,
//!    next to the clang program of policy.bpf.o loaded in the same run.
//! b. Per-message cost: send throughput over 127.0.0.1 TCP (64 B, 1 KiB, 16 KiB) with no
//!    sockmap, the pass-only program, the policy compiled by skpc (through the runtime:
//!    entry program + tail call, as `skpc exec` runs it; and attached directly without
//!    counters, the C's shape), and the anchor's clang program; interleaved, median of
//!    rounds. Plus the program's own run time per message from the kernel's BPF stats
//!    (BPF_ENABLE_STATS), the low-noise number. Also generated port/address policies of
//!    10 .. 100k rules (skpc only).
//! c. One markdown table per part: printed, written to target/skpc-bench/kernel.md and
//!    into docs/performance.md.
//! p. Protocol parsers (benches/protocols): per-message run time of policies reading
//!    the protocol fields, of the same checks written as payload bytes, and of the
//!    pass-only program, on real HTTP, Redis, PostgreSQL and TLS messages; code size and
//!    verifier cost, with one policy reading all twelve fields. Written to
//!    target/skpc-bench/kernel-protocols.md and its own section of docs/performance.md.
//! s. Large sets (benches/sets): code against map per kind and size (the crossover), and
//!    blocklists of 10k to 1M prefixes (build, load, fill, run time against 10 rules).
//!    Written to target/skpc-bench/kernel-sets.md and its own section of
//!    docs/performance.md.
//!
//! Settings (environment): SKPC_BENCH_ROUNDS (5), SKPC_BENCH_SECS (1 s per case and
//! round), SKPC_BENCH_SIZES (64,1024,16384), SKPC_BENCH_RULES (10,1000,10000,100000),
//! SKPC_ANCHOR_DIR (../shared/anchors/sk_msg_c), SKPC_BENCH_NO_DOCS=1 (leave
//! docs/performance.md alone), SKPC_BENCH_PROTO_SECS (0.15 s per case and round in part
//! p), SKPC_BENCH_ONLY=protocols (part p alone, about a minute), SKPC_BENCH_ONLY=sets (part s
//! alone, see benches/sets for its settings), SKPC_BENCH_ONLY=rules (parts a and b for the
//! generated policies of 10 to 1M rules alone), SKPC_BENCH_ONLY=budget (the verifier budget
//! against the kernel up to a million elements, benches/budget; only run alone).

mod budget;
mod gen;
mod protocols;
mod report;
mod sets;
mod tools;

use std::collections::BTreeMap;
use std::io::Read;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd};
use std::path::Path;
use std::time::{Duration, Instant};

use aya::maps::{MapData, SockMap};
use aya::programs::{ProgramInfo, SkMsg};
use aya::{Ebpf, EbpfLoader, VerifierLogLevel};
use skpc::lower::Options;
use skpc_runtime::{Enforcement, Policy};

/// The anchor's policies that have an skpc equivalent in benches/anchors/.
const ANCHORS: [&str; 7] = [
    "pass_all",
    "redis_guard",
    "redirect_prog",
    "payload_match",
    "rules_10",
    "rules_100",
    "rules_1000",
];
/// The anchor policies whose per-message cost is measured (pass_all is the baseline).
const SEND_ANCHORS: [&str; 4] = ["pass_all", "redis_guard", "payload_match", "rules_1000"];

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

fn env_list(name: &str, default: &[usize]) -> Vec<usize> {
    match std::env::var(name) {
        Ok(v) => v
            .split(',')
            .filter_map(|x| x.trim().replace('_', "").parse().ok())
            .collect(),
        Err(_) => default.to_vec(),
    }
}

/// A one-line reason from an error message (verifier logs are long).
fn reason(msg: &str) -> String {
    let lines: Vec<&str> = msg
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    // The most telling line of a verifier log, in this order of preference.
    let key = [
        "too large",
        "too complex",
        "processed",
        "E2BIG",
        "os error",
        "limit",
    ]
    .iter()
    .find_map(|k| lines.iter().find(|l| l.contains(k)));
    let first = lines.first().copied().unwrap_or("unknown error");
    // aya: "... failed. Verifier output:" and the runtime's "... report it with the
    // policy and this log:" introduce a log that is not here.
    let first = first
        .trim_end_matches(':')
        .trim_end_matches(" Verifier output")
        .trim_end_matches(
            "; this is a compiler bug, please report it with the policy and this log",
        );
    let mut s = first.to_string();
    if let Some(k) = key {
        if !s.contains(*k) && !k.contains(s.as_str()) {
            s = format!("{s}: {k}");
        }
    }
    let s = s.replace('|', "/");
    if s.chars().count() > 240 {
        format!("{}…", s.chars().take(240).collect::<String>())
    } else {
        s
    }
}

fn err_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(&format!("\n{c}"));
        cur = c.source();
    }
    s
}

// ---------------------------------------------------------------- loading

fn loader() -> EbpfLoader<'static> {
    let mut l = EbpfLoader::new();
    // STATS: without it aya asks for a full verifier log, which takes minutes for
    // 10k-rule programs.
    l.verifier_log_level(VerifierLogLevel::STATS);
    l
}

/// An sk_msg program of an object, loaded (verified), with what prog info says.
struct Loaded {
    ebpf: Ebpf,
    prog: String,
    info: Sizes,
}

#[derive(Clone, Copy, Default)]
struct Sizes {
    slots: usize,
    xlated: u32,
    jited: u32,
    verified: u32,
    load_ms: f64,
}

fn sk_msg<'a>(ebpf: &'a mut Ebpf, prog: &str) -> Result<&'a mut SkMsg, String> {
    ebpf.program_mut(prog)
        .ok_or_else(|| format!("the object has no program {prog}"))?
        .try_into()
        .map_err(|e| format!("{prog} is not sk_msg: {e}"))
}

fn load_program(object: &[u8], prog: &str, slots: usize) -> Result<Loaded, String> {
    let mut ebpf = loader().load(object).map_err(|e| reason(&err_chain(&e)))?;
    let p = sk_msg(&mut ebpf, prog)?;
    let t = Instant::now();
    p.load().map_err(|e| reason(&err_chain(&e)))?;
    let load_ms = t.elapsed().as_secs_f64() * 1e3;
    let i = p.info().map_err(|e| e.to_string())?;
    let info = Sizes {
        slots,
        xlated: i.size_translated().unwrap_or(0) / 8,
        jited: i.size_jitted(),
        verified: i.verified_instruction_count().unwrap_or(0),
        load_ms,
    };
    Ok(Loaded {
        ebpf,
        prog: prog.to_string(),
        info,
    })
}

/// Program size in 8-byte slots in an ELF object: its symbol's size / 8.
fn object_slots(object: &[u8], prog: &str) -> Option<usize> {
    use object::{Object, ObjectSymbol};
    let file = object::File::parse(object).ok()?;
    let sym = file.symbols().find(|s| s.name() == Ok(prog))?;
    Some(sym.size() as usize / 8)
}

/// The anchor's numbers from out/stats.txt (the fallback when a program will not load
/// here): obj_insns, xlated, jited bytes, verified.
fn stats_txt(prog: &str) -> Option<Sizes> {
    let text = std::fs::read_to_string(report::anchor_dir().join("out/stats.txt")).ok()?;
    let line = text
        .lines()
        .find(|l| l.split_whitespace().next() == Some(prog))?;
    let f: Vec<u32> = line
        .split_whitespace()
        .skip(1)
        .take(4)
        .filter_map(|x| x.parse().ok())
        .collect();
    (f.len() == 4).then(|| Sizes {
        slots: f[0] as usize,
        xlated: f[1],
        jited: f[2],
        verified: f[3],
        load_ms: f64::NAN,
    })
}

struct Skp {
    name: String,
    src: String,
}

fn compile(p: &Skp, counters: bool) -> Result<skpc::compile::Compiled, String> {
    skpc::compile::compile_with(
        &p.name,
        &p.src,
        Options {
            counters,
            ..Options::default()
        },
    )
    .map_err(|d| {
        format!(
            "does not compile: {}",
            d.first().map(|d| format!("{d:?}")).unwrap_or_default()
        )
    })
}

fn slots(c: &skpc::compile::Compiled) -> usize {
    c.lowered.verdict.insns.iter().map(|i| i.slots()).sum()
}

/// The kernel's limit on a program's instructions (BPF_COMPLEXITY_LIMIT_INSNS).
const MAX_INSNS: usize = 1_000_000;

/// Why `c` did not load: the verifier's reason, or the size limit when it is over it.
fn load_failure(c: &skpc::compile::Compiled, e: &str) -> String {
    let n = slots(c);
    if n > MAX_INSNS {
        format!("does not load: {n} instructions, over the kernel's limit of {MAX_INSNS} (E2BIG)")
    } else {
        format!("does not load: {e}")
    }
}

/// Loads skpc's skp_verdict (of `skpc build`'s object) for its sizes.
fn skpc_sizes(p: &Skp, counters: bool) -> Result<Sizes, String> {
    let c = compile(p, counters)?;
    load_program(&c.object, "skp_verdict", slots(&c))
        .map(|l| l.info)
        .map_err(|e| load_failure(&c, &e))
}

// ---------------------------------------------------------------- part a

fn part_a(
    anchor_obj: Option<&[u8]>,
    examples: &[Skp],
    anchors: &[Skp],
    generated: &[Skp],
) -> String {
    let mut s = String::from(
        "### a. Code size and verifier cost\n\n\
         skpc's `skp_verdict`, loaded with aya in this run: emitted 8-byte slots (an \
         `ld_imm64` is 2), `xlated` = xlated_prog_len / 8 (after the kernel's context \
         rewrites), JIT bytes, and the verifier's processed instructions (verified_insns), \
         each as **counters on / off** (`--no-counters`). The C programs count nothing, so \
         the fair comparison is the second number. clang columns: the same program of \
         policy.bpf.o (clang -O2) loaded in this run (numbers marked * come from the \
         anchor's out/stats.txt because the program did not load here). Ratios: skpc \
         without counters / clang. load = wall time of the BPF_PROG_LOAD (verification + \
         JIT), counters off.\n\n",
    );
    s.push_str("| policy | slots | xlated | jited B | verified | load | clang slots | clang xlated | clang jited B | clang verified | clang load | xlated skpc/clang | jited skpc/clang | verified skpc/clang |\n");
    s.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    let rows = examples
        .iter()
        .map(|p| (p, false))
        .chain(anchors.iter().map(|p| (p, true)))
        .chain(generated.iter().map(|p| (p, false)));
    for (p, is_anchor) in rows {
        eprintln!("a. loading {}", p.name);
        let on = skpc_sizes(p, true);
        let off = skpc_sizes(p, false);
        let pair = |f: &dyn Fn(&Sizes) -> String| match (&on, &off) {
            (Ok(a), Ok(b)) => format!("{} / {}", f(a), f(b)),
            (Err(e), Ok(b)) => format!("({e}) / {}", f(b)),
            (Ok(a), Err(e)) => format!("{} / ({e})", f(a)),
            (Err(e), Err(_)) => e.clone(),
        };
        let mut row = format!(
            "| {} | {} | {} | {} | {} | {} |",
            p.name,
            pair(&|x| x.slots.to_string()),
            pair(&|x| x.xlated.to_string()),
            pair(&|x| x.jited.to_string()),
            pair(&|x| x.verified.to_string()),
            off.as_ref()
                .map(|x| format!("{:.2} ms", x.load_ms))
                .unwrap_or_else(|_| "-".into()),
        );
        let prog = p.name.trim_end_matches(".skp");
        let clang = if is_anchor {
            let loaded = anchor_obj
                .map(|o| load_program(o, prog, object_slots(o, prog).unwrap_or(0)).map(|l| l.info));
            match loaded {
                Some(Ok(c)) => Some((c, false)),
                other => {
                    if let Some(Err(e)) = other {
                        eprintln!("clang {prog} did not load ({e}); using out/stats.txt");
                    }
                    stats_txt(prog).map(|c| (c, true))
                }
            }
        } else {
            None
        };
        match clang {
            Some((c, from_file)) => {
                let star = if from_file { "*" } else { "" };
                let ratio = |a: f64, b: f64| format!("{:.2}", a / b);
                let (rx, rj, rv) = match &off {
                    Ok(o) => (
                        ratio(o.xlated as f64, c.xlated as f64),
                        ratio(o.jited as f64, c.jited as f64),
                        ratio(o.verified as f64, c.verified as f64),
                    ),
                    Err(_) => ("-".into(), "-".into(), "-".into()),
                };
                row.push_str(&format!(
                    " {}{star} | {}{star} | {}{star} | {}{star} | {} | {rx} | {rj} | {rv} |",
                    c.slots,
                    c.xlated,
                    c.jited,
                    c.verified,
                    if c.load_ms.is_nan() {
                        "-".to_string()
                    } else {
                        format!("{:.2} ms", c.load_ms)
                    }
                ));
            }
            None => row.push_str(" - | - | - | - | - | - | - | - |"),
        }
        s.push_str(&row);
        s.push('\n');
    }
    s
}

// ---------------------------------------------------------------- part c

/// c. What counters cost: for every anchor policy, skp_verdict with counters and
/// without, attached directly (no entry program): slots and xlated instructions, and
/// the run time per message from BPF stats, interleaved rounds (SKPC_BENCH_ONLY=counters
/// runs this part alone).
fn part_counters(anchors: &[Skp]) -> String {
    let rounds: usize = env_or("SKPC_BENCH_ROUNDS", 5);
    let secs: f64 = env_or("SKPC_BENCH_SECS", 1.0);
    let size = 64usize;
    let mut s = format!(
        "### c. What counters cost\n\n\
         Each anchor policy's skp_verdict with counters (the default) and with \
         `--no-counters`, both attached directly to a sockmap: emitted slots (an \
         `ld_imm64` is 2), xlated instructions, and (for the policies whose traffic passes) \
         the program's run time per {size} B message from BPF stats (run_time_ns / \
         run_cnt, about 45 ns of it accounting; median of {rounds} interleaved rounds of \
         {secs} s). The target (issue 13): at most 8 instructions and 10 ns over \
         `--no-counters`.\n\n\
         | policy | slots on / off | over | xlated on / off | over | ns/msg on / off | over |\n\
         |---|---:|---:|---:|---:|---:|---:|\n"
    );
    let mut cases: Vec<(String, bool, Result<Attach, String>)> = Vec::new();
    // Per anchor: (counters on, counters off), or why it did not load.
    type OnOff = Result<(Sizes, Sizes), String>;
    let mut sizes: Vec<(String, OnOff)> = Vec::new();
    for name in ANCHORS {
        let Some(p) = anchors.iter().find(|p| p.name == format!("{name}.skp")) else {
            continue;
        };
        eprintln!("c. loading {name}");
        sizes.push((
            name.to_string(),
            skpc_sizes(p, true).and_then(|on| skpc_sizes(p, false).map(|off| (on, off))),
        ));
        if SEND_ANCHORS.contains(&name) {
            for counters in [true, false] {
                cases.push((name.to_string(), counters, direct_attach_with(p, counters)));
            }
        }
    }
    let stats_fd = aya::sys::enable_stats(aya::sys::Stats::RunTime);
    let results = interleaved(
        "c",
        rounds,
        &[size],
        &mut cases,
        |c| &mut c.2,
        |a, size| run_case(a, size, secs),
    );
    drop(stats_fd);
    let ns = |name: &str, counters: bool| -> Option<f64> {
        let i = cases
            .iter()
            .position(|(n, c, _)| n == name && *c == counters)?;
        match results.get(&(i, size))? {
            Ok(r) if !r.is_empty() && r.iter().all(|x| x.runs > 0) => {
                let mut v: Vec<f64> = r.iter().map(|x| x.run_ns as f64 / x.runs as f64).collect();
                Some(report::median(&mut v))
            }
            _ => None,
        }
    };
    for (name, sz) in &sizes {
        let (size_cells, over_slots, over_x) = match sz {
            Ok((on, off)) => (
                (
                    format!("{} / {}", on.slots, off.slots),
                    format!("{} / {}", on.xlated, off.xlated),
                ),
                format!("{:+}", on.slots as i64 - off.slots as i64),
                format!("{:+}", on.xlated as i64 - off.xlated as i64),
            ),
            Err(e) => ((e.clone(), "-".into()), "-".into(), "-".into()),
        };
        let (time, over_t) = match (ns(name, true), ns(name, false)) {
            (Some(a), Some(b)) => (format!("{a:.0} / {b:.0}"), format!("{:+.0}", a - b)),
            _ => ("-".into(), "-".into()),
        };
        s.push_str(&format!(
            "| {name} | {} | {over_slots} | {} | {over_x} | {time} | {over_t} |\n",
            size_cells.0, size_cells.1
        ));
    }
    s.push_str(&format!(
        "\nCommand: `{}SKPC_BENCH_ONLY=counters cargo bench --bench kernel`. {}\n",
        settings(),
        report::machine()
    ));
    s
}

// ---------------------------------------------------------------- part b

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Mode {
    None,
    /// skpc through the runtime (Enforcement): entry program + tail call + the policy,
    /// counters on: what `skpc exec` runs.
    Skpc,
    /// skpc's skp_verdict, counters off, attached directly to its sockmap (the C's shape).
    SkpcDirect,
    Clang,
}

impl Mode {
    fn label(self) -> &'static str {
        match self {
            Mode::None => "no sockmap",
            Mode::Skpc => "skpc (runtime)",
            Mode::SkpcDirect => "skpc direct, no counters",
            Mode::Clang => "clang -O2",
        }
    }
}

enum Attach {
    None,
    Runtime {
        enf: Box<Enforcement>,
        entry_id: u32,
    },
    Direct {
        loaded: Box<Loaded>,
        map: SockMap<MapData>,
    },
}

struct Case {
    policy: String,
    mode: Mode,
    attach: Result<Attach, String>,
}

fn prog_info_by_id(id: u32) -> Option<ProgramInfo> {
    aya::programs::loaded_programs()
        .flatten()
        .find(|p| p.id() == id)
}

impl Attach {
    fn insert(&mut self, sock: &TcpStream) -> Result<(), String> {
        match self {
            Attach::None => Ok(()),
            Attach::Runtime { enf, .. } => {
                enf.insert_sock(0, sock.as_fd()).map_err(|e| e.to_string())
            }
            Attach::Direct { map, .. } => map.set(0, sock, 0).map_err(|e| e.to_string()),
        }
    }

    fn remove(&mut self) {
        match self {
            Attach::None => {}
            Attach::Runtime { enf, .. } => {
                let _ = enf.remove_sock(0);
            }
            Attach::Direct { map, .. } => {
                let _ = map.clear_index(&0);
            }
        }
    }

    /// (run_time_ns, run_cnt) of the attached program (for the runtime: the entry
    /// program; a tail call runs inside its caller's accounting).
    fn stats(&self) -> (u64, u64) {
        let info = match self {
            Attach::None => return (0, 0),
            Attach::Runtime { entry_id, .. } => prog_info_by_id(*entry_id),
            Attach::Direct { loaded, .. } => loaded
                .ebpf
                .program(&loaded.prog)
                .and_then(|p| <&SkMsg>::try_from(p).ok())
                .and_then(|p| p.info().ok()),
        };
        info.map(|i| (i.run_time().as_nanos() as u64, i.run_count()))
            .unwrap_or((0, 0))
    }
}

fn attach_direct(mut loaded: Loaded, map_name: &str) -> Result<Attach, String> {
    let map = loaded
        .ebpf
        .take_map(map_name)
        .ok_or_else(|| format!("no map {map_name}"))?;
    let map = SockMap::try_from(map).map_err(|e| e.to_string())?;
    let p = sk_msg(&mut loaded.ebpf, &loaded.prog.clone())?;
    p.attach(map.fd()).map_err(|e| reason(&err_chain(&e)))?;
    Ok(Attach::Direct {
        loaded: Box::new(loaded),
        map,
    })
}

fn runtime_attach(p: &Skp) -> Result<Attach, String> {
    let c = compile(p, true)?;
    let object = skpc::compile::runtime_object(&c, &p.name, &p.src);
    let names = c.policy.counters.iter().map(|c| c.name.clone()).collect();
    let enf = Enforcement::new(&Policy::new(object, names))
        .map_err(|e| load_failure(&c, &reason(&e.to_string())))?;
    let entry_id = *enf
        .kernel_ids()
        .programs
        .get(1)
        .ok_or("the runtime reports no entry program")?;
    Ok(Attach::Runtime {
        enf: Box::new(enf),
        entry_id,
    })
}

fn direct_attach(p: &Skp) -> Result<Attach, String> {
    direct_attach_with(p, false)
}

/// skp_verdict attached directly to its sockmap, with or without counters.
fn direct_attach_with(p: &Skp, counters: bool) -> Result<Attach, String> {
    let c = compile(p, counters)?;
    let loaded =
        load_program(&c.object, "skp_verdict", slots(&c)).map_err(|e| load_failure(&c, &e))?;
    // An indexed policy drops everything until its index is filled (as the runtime does).
    skpc_runtime::fill_sets(&loaded.ebpf, &c.object).map_err(|e| e.to_string())?;
    skpc_runtime::fill_index(&loaded.ebpf, &c.object).map_err(|e| e.to_string())?;
    attach_direct(loaded, "skp_socks")
}

fn clang_attach(object: Option<&[u8]>, prog: &str) -> Result<Attach, String> {
    let object = object.ok_or("the anchor's policy.bpf.o was not found")?;
    let loaded = load_program(object, prog, 0).map_err(|e| format!("does not load: {e}"))?;
    attach_direct(loaded, "sock_map")
}

#[derive(Clone, Copy, Default)]
struct Run {
    msgs: u64,
    msg_per_s: f64,
    cpu_ns_per_msg: f64,
    run_ns: u64,
    runs: u64,
}

fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// One case: a fresh loopback connection, the client in the policy's sockmap, blocking
/// sends of `size` bytes of 'x' for `secs`, a receiver thread reading until EOF.
/// Runs every (case, key) once per round, keys outer, cases inner: interleaved, so that
/// a noisy machine spreads its noise over all of them. (case index, key) -> one Run per
/// round, or the first error (a case that failed to attach fails for every key).
fn interleaved<C, A, K: Copy + Ord, R>(
    part: &str,
    rounds: usize,
    keys: &[K],
    cases: &mut [C],
    attach_of: impl Fn(&mut C) -> &mut Result<A, String>,
    run: impl Fn(&mut A, K) -> Result<R, String>,
) -> BTreeMap<(usize, K), Result<Vec<R>, String>> {
    let mut results: BTreeMap<(usize, K), Result<Vec<R>, String>> = BTreeMap::new();
    for round in 0..rounds {
        eprintln!("{part}. round {}/{rounds}", round + 1);
        for &key in keys {
            for (i, case) in cases.iter_mut().enumerate() {
                let entry = results.entry((i, key)).or_insert(Ok(Vec::new()));
                let Ok(runs) = entry else { continue };
                let attach = match attach_of(case) {
                    Ok(a) => a,
                    Err(e) => {
                        *entry = Err(e.clone());
                        continue;
                    }
                };
                match run(attach, key) {
                    Ok(r) => runs.push(r),
                    Err(e) => *entry = Err(e),
                }
            }
        }
    }
    results
}

/// A loopback connection whose client is under `attach`, and a thread reading the
/// server end until EOF: (bytes received, when the last arrived).
fn connected(
    attach: &mut Attach,
) -> Result<(TcpStream, std::thread::JoinHandle<(u64, Instant)>), String> {
    connected_at(attach, "127.0.0.1:0")
}

/// [`connected`] over a listener bound to `bind` (`[::1]:0` for IPv6).
fn connected_at(
    attach: &mut Attach,
    bind: &str,
) -> Result<(TcpStream, std::thread::JoinHandle<(u64, Instant)>), String> {
    let l = TcpListener::bind(bind).map_err(|e| e.to_string())?;
    let client = TcpStream::connect(l.local_addr().map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())?;
    let (mut server, _) = l.accept().map_err(|e| e.to_string())?;
    attach.insert(&client)?;
    let rx = std::thread::spawn(move || {
        let mut buf = vec![0u8; 256 << 10];
        let mut total = 0u64;
        loop {
            match server.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => total += n as u64,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        (total, Instant::now())
    });
    Ok((client, rx))
}

fn run_case(attach: &mut Attach, size: usize, secs: f64) -> Result<Run, String> {
    run_case_at(attach, size, secs, "127.0.0.1:0")
}

/// [`run_case`] over a listener bound to `bind`.
fn run_case_at(attach: &mut Attach, size: usize, secs: f64, bind: &str) -> Result<Run, String> {
    run_case_msg(attach, &vec![b'x'; size], secs, bind)
}

/// [`run_case_at`] with messages of the bytes `msg` (a request a protocol parser reads).
fn run_case_msg(attach: &mut Attach, msg: &[u8], secs: f64, bind: &str) -> Result<Run, String> {
    let (client, rx) = connected_at(attach, bind)?;
    let (t0, c0) = attach.stats();
    let size = msg.len();
    let fd = client.as_raw_fd();
    let limit = Duration::from_secs_f64(secs);
    let start = Instant::now();
    let cpu0 = thread_cpu_ns();
    let (mut msgs, mut tx) = (0u64, 0u64);
    let mut error = None;
    'send: loop {
        for _ in 0..16 {
            let mut off = 0;
            while off < size {
                // SAFETY: the buffer outlives the call; fd is the client's socket.
                let n = unsafe {
                    libc::send(
                        fd,
                        msg[off..].as_ptr().cast(),
                        size - off,
                        libc::MSG_NOSIGNAL,
                    )
                };
                if n < 0 {
                    let e = std::io::Error::last_os_error();
                    if e.kind() == std::io::ErrorKind::Interrupted {
                        continue;
                    }
                    error = Some(format!("send failed after {msgs} messages: {e}"));
                    break 'send;
                }
                off += n as usize;
                tx += n as u64;
            }
            msgs += 1;
        }
        if start.elapsed() >= limit {
            break;
        }
    }
    let cpu = thread_cpu_ns() - cpu0;
    let _ = client.shutdown(Shutdown::Write);
    let (rx_bytes, end) = rx.join().map_err(|_| "receiver panicked".to_string())?;
    let (t1, c1) = attach.stats();
    attach.remove();
    drop(client);
    if let Some(e) = error {
        return Err(e);
    }
    if rx_bytes != tx {
        return Err(format!("received {rx_bytes} bytes of {tx} sent"));
    }
    let elapsed = end.duration_since(start).as_secs_f64();
    Ok(Run {
        msgs,
        msg_per_s: msgs as f64 / elapsed,
        cpu_ns_per_msg: cpu as f64 / msgs as f64,
        run_ns: t1 - t0,
        runs: c1 - c0,
    })
}

fn bpf_stats_sysctl() -> String {
    std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into())
}

struct PartB {
    throughput: String,
    runtime: String,
}

fn part_b(
    anchor_obj: Option<&[u8]>,
    anchors: &[Skp],
    examples: &[Skp],
    generated: &[Skp],
) -> PartB {
    let rounds: usize = env_or("SKPC_BENCH_ROUNDS", 5);
    let secs: f64 = env_or("SKPC_BENCH_SECS", 1.0);
    let sizes = env_list("SKPC_BENCH_SIZES", &[64, 1024, 16384]);

    let mut cases = vec![Case {
        policy: "-".into(),
        mode: Mode::None,
        attach: Ok(Attach::None),
    }];
    for name in SEND_ANCHORS {
        let p = anchors
            .iter()
            .find(|p| p.name == format!("{name}.skp"))
            .expect("anchor .skp");
        eprintln!("b. loading {name}");
        cases.push(Case {
            policy: name.into(),
            mode: Mode::Skpc,
            attach: runtime_attach(p),
        });
        cases.push(Case {
            policy: name.into(),
            mode: Mode::SkpcDirect,
            attach: direct_attach(p),
        });
        cases.push(Case {
            policy: name.into(),
            mode: Mode::Clang,
            attach: clang_attach(anchor_obj, name),
        });
    }
    // The examples as `skpc exec` runs them (their rules do not match the bench's
    // traffic: ephemeral loopback ports, `x` bytes; a case that drops says so).
    for p in examples.iter().chain(generated) {
        eprintln!("b. loading {}", p.name);
        let t = Instant::now();
        let attach = runtime_attach(p);
        eprintln!(
            "   {} in {:.1} s",
            if attach.is_ok() { "loaded" } else { "failed" },
            t.elapsed().as_secs_f64()
        );
        cases.push(Case {
            policy: p.name.clone(),
            mode: Mode::Skpc,
            attach,
        });
    }

    let sysctl_before = bpf_stats_sysctl();
    let stats_fd = aya::sys::enable_stats(aya::sys::Stats::RunTime);
    if let Err(e) = &stats_fd {
        eprintln!("BPF_ENABLE_STATS failed ({e}); run times will be missing");
    }
    let total = Instant::now();
    let results = interleaved(
        "b",
        rounds,
        &sizes,
        &mut cases,
        |c| &mut c.attach,
        |a, size| run_case(a, size, secs),
    );
    drop(stats_fd);
    let sysctl_after = bpf_stats_sysctl();
    eprintln!(
        "b. {:.0} s of sends; kernel.bpf_stats_enabled {sysctl_before} before, {sysctl_after} after",
        total.elapsed().as_secs_f64()
    );

    let median_of = |runs: &[Run], f: &dyn Fn(&Run) -> f64| {
        let mut v: Vec<f64> = runs.iter().map(f).collect();
        report::median(&mut v)
    };
    let find = |policy: &str, mode: Mode| {
        cases
            .iter()
            .position(|c| c.policy == policy && c.mode == mode)
    };
    let rate = |i: Option<usize>, size: usize| -> Option<f64> {
        match results.get(&(i?, size))? {
            Ok(r) if !r.is_empty() => Some(median_of(r, &|x| x.msg_per_s)),
            _ => None,
        }
    };
    let run_ns = |i: Option<usize>, size: usize| -> Option<f64> {
        match results.get(&(i?, size))? {
            Ok(r) if r.iter().all(|x| x.runs > 0) && !r.is_empty() => {
                Some(median_of(r, &|x| x.run_ns as f64 / x.runs as f64))
            }
            _ => None,
        }
    };

    // Throughput table.
    let mut t = format!(
        "### b. Throughput: messages per second over 127.0.0.1 TCP\n\n\
         Blocking `send()` of SIZE bytes of `x` for {secs} s per case, a receiver thread \
         reading 256 KiB at a time until EOF; rate = messages / time until the receiver saw \
         EOF; every case checked rx bytes == tx bytes (no message matched a drop rule). \
         Median of {rounds} rounds; the cases run interleaved (round, then size, then case). \
         BPF run-time stats are on during all cases (they add about 45 ns per program run). \
         \"vs none\" = msg/s / msg/s with no sockmap; \"vs pass_all\" = msg/s / msg/s of the \
         pass-only program of the same kind. sender CPU = the sending thread's CPU time per \
         message (the whole send path, including the loopback delivery done in its context).\n\n"
    );
    t.push_str("| policy | program | size | msg/s | vs none | vs pass_all | sender CPU ns/msg | msg/s of each round |\n");
    t.push_str("|---|---|---:|---:|---:|---:|---:|---|\n");
    for &size in &sizes {
        let none = rate(find("-", Mode::None), size);
        for (i, case) in cases.iter().enumerate() {
            let res = results.get(&(i, size));
            let row_head = format!("| {} | {} | {size} |", case.policy, case.mode.label());
            match res {
                Some(Ok(r)) if !r.is_empty() => {
                    let m = median_of(r, &|x| x.msg_per_s);
                    let pass = match case.mode {
                        Mode::None => None,
                        Mode::Skpc | Mode::SkpcDirect | Mode::Clang => {
                            rate(find("pass_all", case.mode), size)
                        }
                    };
                    let ratio =
                        |b: Option<f64>| b.map(|b| format!("{:.2}", m / b)).unwrap_or("-".into());
                    let each: Vec<String> =
                        r.iter().map(|x| format!("{:.0}", x.msg_per_s)).collect();
                    t.push_str(&format!(
                        "{row_head} {m:.0} | {} | {} | {:.0} | {} |\n",
                        ratio(none),
                        ratio(pass),
                        median_of(r, &|x| x.cpu_ns_per_msg),
                        each.join(" ")
                    ));
                }
                Some(Err(e)) => t.push_str(&format!("{row_head} {e} | | | | |\n")),
                _ => t.push_str(&format!("{row_head} - | | | | |\n")),
            }
        }
    }

    // Run-time table.
    let mut r = String::from(
        "### b. The program's own run time per message (BPF stats)\n\n\
         run_time_ns / run_cnt deltas of prog info over each case (BPF_ENABLE_STATS, \
         BPF_STATS_RUN_TIME), median over the rounds, in ns per program run; the numbers \
         include the accounting's own cost (two clock reads, about 45 ns here). skpc \
         (runtime) is the runtime's entry program, which tail-calls the policy (counters \
         on); a tail-called program runs inside its caller's accounting. \"skpc direct\" is \
         skp_verdict without counters attached directly, like the C. \"over pass_all\" = \
         minus the pass-only program of the same kind: the policy's own cost. \
         runs/send: program runs per send call.\n\n",
    );
    r.push_str("| policy | size | skpc (runtime) | skpc direct, no counters | clang -O2 | direct / clang | over pass_all: skpc (runtime) / direct / clang | runs/send |\n");
    r.push_str("|---|---:|---:|---:|---:|---:|---|---:|\n");
    let policies: Vec<String> = SEND_ANCHORS
        .iter()
        .map(|s| s.to_string())
        .chain(examples.iter().chain(generated).map(|p| p.name.clone()))
        .collect();
    for policy in &policies {
        for &size in &sizes {
            let cell = |mode: Mode| -> String {
                let Some(i) = find(policy, mode) else {
                    return "-".into();
                };
                match results.get(&(i, size)) {
                    Some(Err(e)) => e.clone(),
                    _ => run_ns(Some(i), size)
                        .map(|v| format!("{v:.0}"))
                        .unwrap_or("-".into()),
                }
            };
            let d = run_ns(find(policy, Mode::SkpcDirect), size);
            let c = run_ns(find(policy, Mode::Clang), size);
            let ratio = match (d, c) {
                (Some(d), Some(c)) => format!("{:.2}", d / c),
                _ => "-".into(),
            };
            let over = [Mode::Skpc, Mode::SkpcDirect, Mode::Clang]
                .iter()
                .map(|&m| {
                    match (
                        run_ns(find(policy, m), size),
                        run_ns(find("pass_all", m), size),
                    ) {
                        (Some(a), Some(b)) => format!("{:+.0}", a - b),
                        _ => "-".into(),
                    }
                })
                .collect::<Vec<_>>()
                .join(" / ");
            let runs_per_send = [Mode::Skpc, Mode::SkpcDirect, Mode::Clang]
                .iter()
                .find_map(|&m| match results.get(&(find(policy, m)?, size)) {
                    Some(Ok(r)) if !r.is_empty() => Some(
                        r.iter().map(|x| x.runs).sum::<u64>() as f64
                            / r.iter().map(|x| x.msgs).sum::<u64>() as f64,
                    ),
                    _ => None,
                })
                .map(|v| format!("{v:.2}"))
                .unwrap_or("-".into());
            r.push_str(&format!(
                "| {policy} | {size} | {} | {} | {} | {ratio} | {over} | {runs_per_send} |\n",
                cell(Mode::Skpc),
                cell(Mode::SkpcDirect),
                cell(Mode::Clang)
            ));
        }
    }
    r.push_str(&format!(
        "\nkernel.bpf_stats_enabled was {sysctl_before} before and {sysctl_after} after the \
         run (stats were on only while the BPF_ENABLE_STATS descriptor was open).\n"
    ));
    PartB {
        throughput: t,
        runtime: r,
    }
}

// ---------------------------------------------------------------- main

/// The .skp files of `dir`, named `prefix` + file name.
fn read_skp(dir: &Path, prefix: &str) -> Vec<Skp> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "skp"))
        .collect();
    files.sort();
    files
        .iter()
        .map(|f| Skp {
            name: format!("{prefix}{}", f.file_name().unwrap().to_string_lossy()),
            src: std::fs::read_to_string(f).unwrap(),
        })
        .collect()
}

fn main() {
    if !report::bench_mode() {
        // `cargo test --benches` runs bench targets without --bench: nothing to test here.
        println!("benches/kernel.rs: run it with `cargo bench --bench kernel` (as root)");
        return;
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!(
            "The kernel bench loads BPF programs and attaches them to sockets, so it must run as root (sudo -E cargo bench --bench kernel)."
        );
        std::process::exit(1);
    }
    let to_docs = std::env::var_os("SKPC_BENCH_NO_DOCS").is_none();
    let only = std::env::var("SKPC_BENCH_ONLY").unwrap_or_default();
    match only.trim() {
        "" => {}
        "protocols" => {
            report::publish("kernel-protocols", &protocols::part_p(), to_docs);
            return;
        }
        "sets" => {
            report::publish("kernel-sets", &sets::part_s(), to_docs);
            return;
        }
        "budget" => {
            report::publish("kernel-budget", &budget::part_budget(), to_docs);
            return;
        }
        "counters" => {
            let anchors = read_skp(&report::repo().join("benches/anchors"), "");
            report::publish("kernel-counters", &part_counters(&anchors), to_docs);
            return;
        }
        "tools" => {
            report::publish("kernel-tools", &tools::part_r(), to_docs);
            return;
        }
        "rules" => {
            report::publish("kernel-rules", &part_rules(), to_docs);
            return;
        }
        other => {
            eprintln!(
                "SKPC_BENCH_ONLY={other}: the parts that run alone are `protocols`, `sets`, `budget`, `counters`, `tools` and `rules`"
            );
            std::process::exit(1);
        }
    }
    let started = Instant::now();
    let repo = report::repo();
    let anchor_path = report::anchor_dir().join("policy.bpf.o");
    let anchor_obj = std::fs::read(&anchor_path).ok();
    if anchor_obj.is_none() {
        eprintln!(
            "{} not found (SKPC_ANCHOR_DIR): the clang columns fall back to out/stats.txt or stay empty",
            anchor_path.display()
        );
    }
    let examples = read_skp(&repo.join("examples"), "examples/");
    let mut anchors = read_skp(&repo.join("benches/anchors"), "");
    anchors.sort_by_key(|p| {
        ANCHORS
            .iter()
            .position(|a| p.name == format!("{a}.skp"))
            .unwrap_or(usize::MAX)
    });
    let rule_counts = env_list("SKPC_BENCH_RULES", &[10, 1000, 10_000, 100_000]);
    let mut generated: Vec<Skp> = Vec::new();
    for &n in &rule_counts {
        generated.push(Skp {
            name: format!("port_addr_{n}"),
            src: gen::port_addr(n),
        });
    }
    for &n in &rule_counts {
        generated.push(Skp {
            name: format!("grouped_{n}"),
            src: gen::port_addr_grouped(n),
        });
    }
    for &n in &rule_counts {
        generated.push(Skp {
            name: format!("mixed_{n}"),
            src: gen::mixed(n),
        });
    }

    let a = part_a(anchor_obj.as_deref(), &examples, &anchors, &generated);
    println!("\n{a}");
    let b = part_b(anchor_obj.as_deref(), &anchors, &examples, &generated);

    let mut body = String::new();
    body.push_str(&a);
    body.push('\n');
    body.push_str(&b.throughput);
    body.push('\n');
    body.push_str(&b.runtime);
    body.push_str(&format!(
        "\nGenerated policies `port_addr_N`: N rules, in turn `drop if port == P;`, \
         `drop if remote.ip == 10.a.b.c;`, `drop if remote.ip in 192.168.x.y/28 and local.port == P;`, \
         `drop if remote.port == P;` (benches/gen/mod.rs; P from the anchor's permutation, \
         below the ephemeral ports). `grouped_N`: the same N rules grouped by kind (all \
         `port ==` rules first, then all `remote.ip ==`, ...). `mixed_N`: N rules of the \
         eight kinds of `gen::mixed` in turn (ports, addresses, prefixes with ports, port \
         sets, payload prefixes, `remote.port in web and payload[0..4] == ...`, \
         `remote.ip in lan and remote.port == P and len > N`, IPv6 addresses).\n\n\
         Command: `{}cargo bench --bench kernel` ({:.0} s). {} Anchor object: {}.\n",
        settings(),
        started.elapsed().as_secs_f64(),
        report::machine(),
        if anchor_obj.is_some() {
            "`shared/anchors/sk_msg_c/policy.bpf.o` (clang 14.0.6 -O2)"
        } else {
            "not found"
        }
    ));
    report::publish("kernel", &body, to_docs);
    report::publish("kernel-counters", &part_counters(&anchors), to_docs);
    report::publish("kernel-protocols", &protocols::part_p(), to_docs);
    report::publish("kernel-sets", &sets::part_s(), to_docs);
    report::publish("kernel-tools", &tools::part_r(), to_docs);
}

/// Parts a and b for the generated policies alone (issue 11: a policy of up to 1M rules
/// costs a message at most 2x what a 10-rule one does), beside the anchors and without
/// the examples: `port_addr_N` and `mixed_N` for SKPC_BENCH_RULES (10, 10k, 100k, 1M).
fn part_rules() -> String {
    let started = Instant::now();
    let anchors = read_skp(&report::repo().join("benches/anchors"), "");
    let rule_counts = env_list("SKPC_BENCH_RULES", &[10, 10_000, 100_000, 1_000_000]);
    let mut generated: Vec<Skp> = Vec::new();
    for &n in &rule_counts {
        generated.push(Skp {
            name: format!("port_addr_{n}"),
            src: gen::port_addr(n),
        });
        generated.push(Skp {
            name: format!("mixed_{n}"),
            src: gen::mixed(n),
        });
    }
    let anchor_obj = std::fs::read(report::anchor_dir().join("policy.bpf.o")).ok();
    let a = part_a(anchor_obj.as_deref(), &[], &[], &generated);
    let b = part_b(anchor_obj.as_deref(), &anchors, &[], &generated);
    format!(
        "## Rules: large generated policies alone

{a}
{}
{}
         `port_addr_N` and `mixed_N` as in part a above (benches/gen/mod.rs).

         Command: `{}SKPC_BENCH_ONLY=rules cargo bench --bench kernel` ({:.0} s). {}\n",
        b.throughput,
        b.runtime,
        settings(),
        started.elapsed().as_secs_f64(),
        report::machine()
    )
}

/// The settings given in the environment, as they would be typed.
fn settings() -> String {
    [
        "SKPC_BENCH_ROUNDS",
        "SKPC_BENCH_SECS",
        "SKPC_BENCH_SIZES",
        "SKPC_BENCH_RULES",
    ]
    .iter()
    .filter_map(|k| std::env::var(k).ok().map(|v| format!("{k}={v} ")))
    .collect()
}
