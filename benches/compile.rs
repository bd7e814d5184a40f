//! Compile time against rule count: source text to object bytes
//! (`skpc::compile::compile`, what `skpc build` does: check, lower, assemble, write the
//! ELF with BTF and line info), for generated policies of 10 .. 100k rules that mix
//! port, address, set and payload rules, and for the C anchor's port chains rules_N.
//! Where `clang` is on PATH (or `SKPC_CLANG` names one), the same port chains are also
//! written as the anchor's C (gen_rules.sh) and compiled with `clang -O2 -g -target bpf`,
//! the anchor's Makefile flags, in the same run.
//!
//! Then `skpc build` itself (the release binary, built by the bench) on the mixed
//! policy of 100k and 1M rules: wall and CPU time and peak memory of the whole command,
//! reading the source and writing the object, three runs each (issue 11's bar: under 1 s
//! per 100k rules).
//!
//! `cargo bench --bench compile`. The table (medians of criterion's samples, and
//! ratios) is printed, written to target/skpc-bench/compile.md and, for a run without a
//! filter, into docs/performance.md.

mod gen;
mod report;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use criterion::{black_box, BenchmarkId, Criterion, SamplingMode, Throughput};

// What the `skpc` binary allocates with (see compiler/cli/Cargo.toml).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Sizes of the mixed policies.
const MIXED: [usize; 5] = [10, 100, 1_000, 10_000, 100_000];
/// Sizes of the mixed policies `skpc build` compiles from the command line.
const COMMAND_LINE: [usize; 2] = [100_000, 1_000_000];
/// Runs of each.
const COMMAND_LINE_RUNS: usize = 3;
/// The anchor's port chains (rules_10, rules_100, rules_1000).
const CHAINS: [usize; 3] = [10, 100, 1_000];

/// Per-iteration nanoseconds of every `iter_custom` call, by benchmark id. Criterion's
/// measurement samples are the last `sample_size` calls (the earlier ones are warm-up).
static SAMPLES: Mutex<BTreeMap<String, Vec<f64>>> = Mutex::new(BTreeMap::new());

fn record(id: &str, iters: u64, d: Duration) -> Duration {
    SAMPLES
        .lock()
        .unwrap()
        .entry(id.to_string())
        .or_default()
        .push(d.as_nanos() as f64 / iters.max(1) as f64);
    d
}

fn sample_size(n: usize) -> usize {
    if n >= 10_000 {
        10
    } else {
        20
    }
}

/// The median of criterion's measurement samples of `id`, in ns per compile.
fn measured(id: &str, n: usize) -> Option<f64> {
    let all = SAMPLES.lock().unwrap();
    let v = all.get(id)?;
    let k = sample_size(n).min(v.len());
    let mut last = v[v.len() - k..].to_vec();
    Some(report::median(&mut last))
}

/// What an skpc compile produces, for the table.
struct Output {
    /// None: skpc refuses the policy over the verifier's budget (E0401), so the timed
    /// compile ends after the estimate, without writing an object.
    object_bytes: Option<usize>,
    slots: usize,
}

impl Output {
    fn object_cell(&self) -> String {
        self.object_bytes
            .map_or("refused (E0401)".to_string(), |b| b.to_string())
    }
}

fn compile(name: &str, src: &str) -> Output {
    match skpc::compile::compile(name, src) {
        Ok(c) => Output {
            object_bytes: Some(c.object.len()),
            slots: c.lowered.verdict.insns.iter().map(|i| i.slots()).sum(),
        },
        Err(d) if d.iter().any(|d| d.code == skpc::diag::Code::VerifierBudget) => {
            let policy = skpc::check::check(src).0.expect("checked");
            Output {
                object_bytes: None,
                slots: skpc::lower::lower(&policy).verdict.marks.len(),
            }
        }
        Err(d) => panic!(
            "{name} does not compile: {:?}",
            d.iter().map(|d| format!("{d:?}")).collect::<Vec<_>>()
        ),
    }
}

/// The clang to compare with: `SKPC_CLANG` or `clang`, if it runs.
fn clang() -> Option<String> {
    let cmd = std::env::var("SKPC_CLANG").unwrap_or_else(|_| "clang".to_string());
    let ok = Command::new(&cmd)
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    ok.then_some(cmd)
}

fn clang_version(cmd: &str) -> String {
    Command::new(cmd)
        .arg("--version")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .to_string()
        })
        .unwrap_or_default()
}

/// One clang compile of `c_file` to `obj`, with the anchor Makefile's BPF_CFLAGS.
fn clang_compile(cmd: &str, c_file: &Path, obj: &Path) {
    let inc = format!("-I/usr/include/{}-linux-gnu", std::env::consts::ARCH);
    let out = Command::new(cmd)
        .args(["-O2", "-g", "-target", "bpf", "-Wall", &inc, "-c"])
        .arg(c_file)
        .arg("-o")
        .arg(obj)
        .output()
        .expect("running clang");
    assert!(
        out.status.success(),
        "clang failed on {}: {}",
        c_file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn temp_dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("skpc-bench-compile-{}", std::process::id()));
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

fn main() {
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .configure_from_args();
    let clang = clang();
    let tmp = temp_dir();
    let mut outputs: BTreeMap<String, Output> = BTreeMap::new();

    let mut group = c.benchmark_group("mixed");
    for n in MIXED {
        let src = gen::mixed(n);
        outputs.insert(format!("mixed/{n}"), compile("mixed.skp", &src));
        group.sample_size(sample_size(n));
        group.sampling_mode(if n >= 10_000 {
            SamplingMode::Flat
        } else {
            SamplingMode::Auto
        });
        group.measurement_time(Duration::from_secs(if n >= 10_000 { 10 } else { 3 }));
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::new("skpc", n), &src, |b, src| {
            let id = format!("mixed/skpc/{n}");
            b.iter_custom(|iters| {
                let t = Instant::now();
                for _ in 0..iters {
                    black_box(skpc::compile::compile("mixed.skp", black_box(src)).is_ok());
                }
                record(&id, iters, t.elapsed())
            })
        });
    }
    group.finish();

    let mut group = c.benchmark_group("port_chain");
    for n in CHAINS {
        let src = gen::port_chain(n);
        outputs.insert(format!("chain/{n}"), compile("rules.skp", &src));
        group.sample_size(sample_size(n));
        group.measurement_time(Duration::from_secs(3));
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::new("skpc", n), &src, |b, src| {
            let id = format!("port_chain/skpc/{n}");
            b.iter_custom(|iters| {
                let t = Instant::now();
                for _ in 0..iters {
                    black_box(skpc::compile::compile("rules.skp", black_box(src)).is_ok());
                }
                record(&id, iters, t.elapsed())
            })
        });
        if let Some(cmd) = &clang {
            let c_file = tmp.join(format!("rules_{n}.bpf.c"));
            let obj = tmp.join(format!("rules_{n}.bpf.o"));
            std::fs::write(&c_file, gen::port_chain_c(n)).expect("writing the C");
            clang_compile(cmd, &c_file, &obj);
            group.bench_function(BenchmarkId::new("clang -O2", n), |b| {
                let id = format!("port_chain/clang/{n}");
                b.iter_custom(|iters| {
                    let t = Instant::now();
                    for _ in 0..iters {
                        clang_compile(cmd, &c_file, &obj);
                    }
                    record(&id, iters, t.elapsed())
                })
            });
        }
    }
    group.finish();
    c.final_summary();
    let command_line = command_line_builds(&tmp);
    let _ = std::fs::remove_dir_all(&tmp);

    if !report::bench_mode() {
        return;
    }
    let filtered = std::env::args()
        .skip(1)
        .any(|a| !a.starts_with('-') && !a.is_empty());
    let body = table(&outputs, clang.as_deref(), &command_line);
    report::publish("compile", &body, !filtered);
}

/// One run of `skpc build` from the command line.
struct CommandRun {
    wall: Duration,
    /// User plus system CPU time of the child.
    cpu: Duration,
    /// Peak resident memory of the child, in KiB.
    max_rss_kib: i64,
}

/// `skpc build` of the mixed policies of COMMAND_LINE sizes, COMMAND_LINE_RUNS times
/// each (release binary, built here first): what a user waits for. Skipped (empty)
/// when a filter excludes `mixed`.
fn command_line_builds(tmp: &Path) -> Vec<(usize, Vec<CommandRun>)> {
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-') && !a.is_empty())
        .collect();
    if !filter.is_empty()
        && !filter
            .iter()
            .any(|f| "mixed/skpc_build".contains(f.as_str()))
    {
        return Vec::new();
    }
    let built = Command::new(env!("CARGO"))
        .args([
            "build",
            "--release",
            "--quiet",
            "-p",
            "skpc-cli",
            "--bin",
            "skpc",
        ])
        .current_dir(report::repo())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    let skpc = report::repo().join("target/release/skpc");
    if !built || !skpc.exists() {
        eprintln!("compile bench: could not build target/release/skpc; skipping `skpc build`");
        return Vec::new();
    }
    let mut out = Vec::new();
    for n in COMMAND_LINE {
        let src = tmp.join(format!("mixed_{n}.skp"));
        std::fs::write(&src, gen::mixed(n)).expect("writing the policy");
        let obj = tmp.join(format!("mixed_{n}.o"));
        let runs = (0..COMMAND_LINE_RUNS)
            .map(|_| {
                timed_child(
                    Command::new(&skpc)
                        .arg("build")
                        .arg(&src)
                        .arg("-o")
                        .arg(&obj),
                )
            })
            .collect();
        let _ = std::fs::remove_file(&src);
        let _ = std::fs::remove_file(&obj);
        out.push((n, runs));
    }
    out
}

/// Runs `cmd` to completion; its wall time and, from wait4's rusage, its CPU time and
/// peak memory.
#[allow(clippy::zombie_processes)] // reaped by wait4, which also gives the rusage
fn timed_child(cmd: &mut Command) -> CommandRun {
    let t = Instant::now();
    let child = cmd.spawn().expect("starting skpc build");
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: rusage is plain data the kernel fills; pid is our own child, reaped once
    // here (the Child handle is dropped without waiting).
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let reaped = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let wall = t.elapsed();
    assert!(
        reaped == pid && libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "skpc build failed (status {status})"
    );
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    CommandRun {
        wall,
        cpu: tv(usage.ru_utime) + tv(usage.ru_stime),
        max_rss_kib: usage.ru_maxrss,
    }
}

fn table(
    outputs: &BTreeMap<String, Output>,
    clang: Option<&str>,
    command_line: &[(usize, Vec<CommandRun>)],
) -> String {
    let mut s = String::new();
    s.push_str(
        "### Compile time, source text to object bytes\n\n\
         `skpc::compile::compile` (check, lower, assemble, ELF with BTF and line info; \
         counters on, as `skpc build`), one thread. Time = median of criterion's samples. \
         \"per rule\" = time / rules; \"vs 10x fewer\" = this row's time per rule divided \
         by the previous row's (1.00 = linear).\n\n",
    );
    s.push_str("| policy | rules | time | per rule | vs 10x fewer (per rule) | object bytes | verdict slots |\n");
    s.push_str("|---|---:|---:|---:|---:|---:|---:|\n");
    let mut prev: Option<f64> = None;
    for n in MIXED {
        let Some(t) = measured(&format!("mixed/skpc/{n}"), n) else {
            continue;
        };
        let o = &outputs[&format!("mixed/{n}")];
        let per = t / n as f64;
        let growth = prev
            .map(|p| format!("{:.2}", per / p))
            .unwrap_or("-".into());
        prev = Some(per);
        s.push_str(&format!(
            "| mixed | {n} | {} | {} | {growth} | {} | {} |\n",
            report::dur(t),
            report::dur(per),
            o.object_cell(),
            o.slots
        ));
    }
    if !command_line.is_empty() {
        s.push_str(&format!(
            "\n`skpc build` from the command line (release binary, reading the source and \
             writing the object; {COMMAND_LINE_RUNS} runs: median, and the range): \n\n\
             | policy | rules | wall | wall per 100k rules | CPU (user + system) | peak memory |\n\
             |---|---:|---:|---:|---:|---:|\n"
        ));
        for (n, runs) in command_line {
            let secs = |f: fn(&CommandRun) -> Duration| {
                let mut v: Vec<f64> = runs.iter().map(|r| f(r).as_secs_f64()).collect();
                let (lo, hi) = v
                    .iter()
                    .fold((f64::MAX, 0f64), |(lo, hi), x| (lo.min(*x), hi.max(*x)));
                (report::median(&mut v), lo, hi)
            };
            let (wall, lo, hi) = secs(|r| r.wall);
            let (cpu, clo, chi) = secs(|r| r.cpu);
            let rss = runs.iter().map(|r| r.max_rss_kib).max().unwrap_or(0);
            s.push_str(&format!(
                "| mixed | {n} | {wall:.2} s ({lo:.2}-{hi:.2}) | {:.2} s | {cpu:.2} s ({clo:.2}-{chi:.2}) | {} MB |\n",
                wall * 100_000.0 / *n as f64,
                rss / 1024
            ));
        }
    }
    s.push_str(
        "\nThe anchor's port chains (`rules_N`: `drop if port == P;` N times, the ports of \
         gen_rules.sh), skpc against clang -O2 compiling the same rules written as the \
         anchor's C (gen_rules.sh), with the anchor Makefile's flags \
         (`-O2 -g -target bpf -Wall`), one process per compile.\n\n",
    );
    match clang {
        Some(cmd) => s.push_str(&format!("clang: `{}`.\n\n", clang_version(cmd))),
        None => s.push_str(
            "**clang is not installed on this machine (`clang` is not on PATH): the clang \
             column is skipped.** The bench writes the anchor's C and times \
             `clang -O2` on it wherever clang is present (or `SKPC_CLANG=/path/to/clang`).\n\n",
        ),
    }
    s.push_str("| policy | rules | skpc | per rule | clang -O2 | clang / skpc | skpc object bytes | verdict slots |\n");
    s.push_str("|---|---:|---:|---:|---:|---:|---:|---:|\n");
    for n in CHAINS {
        let Some(t) = measured(&format!("port_chain/skpc/{n}"), n) else {
            continue;
        };
        let o = &outputs[&format!("chain/{n}")];
        let (ct, ratio) = match measured(&format!("port_chain/clang/{n}"), n) {
            Some(ct) => (report::dur(ct), format!("{:.1}x", ct / t)),
            None => ("skipped".into(), "-".into()),
        };
        s.push_str(&format!(
            "| rules_{n} | {n} | {} | {} | {ct} | {ratio} | {} | {} |\n",
            report::dur(t),
            report::dur(t / n as f64),
            o.object_cell(),
            o.slots
        ));
    }
    s.push_str(&format!(
        "\nCommand: `cargo bench --bench compile`. {}\n",
        report::machine()
    ));
    s
}
