//! r. Real tools under skpc (issue 13): iperf3 and redis-benchmark, each as a ratio to
//! the same tool without skpc, measured in one run (median of interleaved rounds).
//!
//! 1. Untouched traffic: `examples/redis_guard.skp` enforced on a cgroup as `skpc exec`
//!    does it (compiled with the default options, so its SOCK_OPS program takes only
//!    connections with 6379 at either end), and iperf3 (1 KiB and 128 KiB writes) and
//!    redis-benchmark run in that cgroup against servers on other ports. The target:
//!    >= 0.98x of plain TCP for iperf3 with 1 KiB writes.
//! 2. The local peer bypass: `examples/peer_bypass.skp` (`redirect ingress to peer` for
//!    its local services, with the ports replaced by the bench's free ports) with both
//!    the servers and the clients in the cgroup, against both outside it: iperf3
//!    throughput and redis-benchmark requests/s with p50/p99 latency. The target: >= 1.4x
//!    requests/s and <= 0.75x p50.
//!
//! Settings: SKPC_BENCH_ROUNDS (5), SKPC_BENCH_TOOLS_SECS (2 s per iperf3 run),
//! SKPC_BENCH_TOOLS_REQUESTS (100000 per redis-benchmark run). The tools come from the
//! Debian packages iperf3, redis-server and redis-tools (`.ci/setup` installs them).

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use skpc_runtime::{Enforcement, Policy, TempCgroup};

use crate::report;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

fn tool(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// A policy enforced on a temporary cgroup, as `skpc exec` sets it up.
struct Enforced {
    cg: TempCgroup,
    // Dropped after the cgroup's processes are gone (field order).
    _enf: Enforcement,
}

impl Enforced {
    fn new(name: &str, src: &str) -> Result<Enforced, String> {
        let c = skpc::compile::compile(name, src).map_err(|d| format!("{d:?}"))?;
        let object = skpc::compile::runtime_object(&c, name, src);
        let names = c.policy.counters.iter().map(|c| c.name.clone()).collect();
        let mut enf = Enforcement::new(&Policy::new(object, names)).map_err(|e| e.to_string())?;
        let cg = TempCgroup::create().map_err(|e| e.to_string())?;
        enf.attach_cgroup(cg.path()).map_err(|e| e.to_string())?;
        Ok(Enforced { cg, _enf: enf })
    }

    fn join(&self, cmd: &mut Command) -> Result<(), String> {
        skpc_runtime::process::join_cgroup_on_exec(cmd, self.cg.path()).map_err(|e| e.to_string())
    }
}

/// A server process, killed on drop.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_server(mut cmd: Command, port: u16, cg: Option<&Enforced>) -> Result<Server, String> {
    if let Some(e) = cg {
        e.join(&mut cmd)?;
    }
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| e.to_string())?;
    let server = Server(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return Err(format!("the server on port {port} did not start"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(server)
}

fn iperf3_server(iperf3: &Path, port: u16, cg: Option<&Enforced>) -> Result<Server, String> {
    let mut cmd = Command::new(iperf3);
    cmd.args(["-s", "-p", &port.to_string()]);
    start_server(cmd, port, cg)
}

fn redis_server(server: &Path, port: u16, cg: Option<&Enforced>) -> Result<Server, String> {
    let mut cmd = Command::new(server);
    cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no", "--dir", "/tmp"]);
    start_server(cmd, port, cg)
}

fn output(mut cmd: Command, cg: Option<&Enforced>) -> Result<String, String> {
    if let Some(e) = cg {
        e.join(&mut cmd)?;
    }
    let out = cmd
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "exit {:?}: {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// One iperf3 run: bits per second the receiver got.
fn iperf3_run(
    iperf3: &Path,
    port: u16,
    write: &str,
    secs: f64,
    cg: Option<&Enforced>,
) -> Result<f64, String> {
    let mut cmd = Command::new(iperf3);
    cmd.args([
        "-c",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-J",
        "-l",
        write,
    ])
    .args(["-t", &format!("{secs}")]);
    let json = output(cmd, cg)?;
    // The receiver's total: the "bits_per_second" after "sum_received".
    let at = json
        .rfind("\"sum_received\"")
        .ok_or_else(|| format!("no sum_received in iperf3's output: {json}"))?;
    number_after(&json[at..], "\"bits_per_second\":")
        .ok_or_else(|| "no bits_per_second in iperf3's output".to_string())
}

fn number_after(text: &str, key: &str) -> Option<f64> {
    let rest = text[text.find(key)? + key.len()..].trim_start();
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || ".eE+-".contains(c)))
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// redis-benchmark's numbers for one test: requests/s, p50 and p99 in ms.
#[derive(Clone, Copy)]
struct Bench {
    rps: f64,
    p50: f64,
    p99: f64,
}

/// One redis-benchmark run: SET and GET, 64 B values, 20 clients; the two tests' mean.
fn redis_run(
    bench: &Path,
    port: u16,
    requests: u32,
    cg: Option<&Enforced>,
) -> Result<Bench, String> {
    let mut cmd = Command::new(bench);
    cmd.args([
        "-p",
        &port.to_string(),
        "-t",
        "set,get",
        "-d",
        "64",
        "-c",
        "20",
    ])
    .args(["-n", &requests.to_string(), "--csv"]);
    let csv = output(cmd, cg)?;
    let mut header: Vec<String> = Vec::new();
    let mut rows: Vec<Bench> = Vec::new();
    for line in csv.lines() {
        let cells: Vec<String> = line
            .split(',')
            .map(|c| c.trim_matches('"').to_string())
            .collect();
        if cells.first().map(String::as_str) == Some("test") {
            header = cells;
            continue;
        }
        let col = |name: &str| -> Option<f64> {
            let i = header.iter().position(|h| h == name)?;
            cells.get(i)?.parse().ok()
        };
        if let (Some(rps), Some(p50), Some(p99)) =
            (col("rps"), col("p50_latency_ms"), col("p99_latency_ms"))
        {
            rows.push(Bench { rps, p50, p99 });
        }
    }
    if rows.is_empty() {
        return Err(format!("no results in redis-benchmark's output: {csv}"));
    }
    let n = rows.len() as f64;
    Ok(Bench {
        rps: rows.iter().map(|r| r.rps).sum::<f64>() / n,
        p50: rows.iter().map(|r| r.p50).sum::<f64>() / n,
        p99: rows.iter().map(|r| r.p99).sum::<f64>() / n,
    })
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    report::median(&mut v)
}

fn each(v: &[f64], scale: f64, digits: usize) -> String {
    v.iter()
        .map(|x| format!("{:.*}", digits, x / scale))
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn part_r() -> String {
    let rounds: usize = env_or("SKPC_BENCH_ROUNDS", 5);
    let secs: f64 = env_or("SKPC_BENCH_TOOLS_SECS", 2.0);
    let requests: u32 = env_or("SKPC_BENCH_TOOLS_REQUESTS", 100_000);
    let mut s = String::from("### r. Real tools: untouched traffic and the peer bypass\n\n");
    let (Some(iperf3), Some(server), Some(bench)) = (
        tool("iperf3"),
        tool("redis-server"),
        tool("redis-benchmark"),
    ) else {
        s.push_str(
            "Not run: iperf3, redis-server or redis-benchmark is missing (Debian packages \
             iperf3, redis-server, redis-tools; `.ci/setup` installs them).\n",
        );
        return s;
    };
    match untouched(&iperf3, &server, &bench, rounds, secs, requests) {
        Ok(t) => s.push_str(&t),
        Err(e) => s.push_str(&format!("Untouched traffic: not measured: {e}\n\n")),
    }
    match bypass(&iperf3, &server, &bench, rounds, secs, requests) {
        Ok(t) => s.push_str(&t),
        Err(e) => s.push_str(&format!("Peer bypass: not measured: {e}\n\n")),
    }
    s.push_str(&format!(
        "\nCommand: `SKPC_BENCH_ONLY=tools cargo bench --bench kernel` (SKPC_BENCH_ROUNDS={rounds}, \
         SKPC_BENCH_TOOLS_SECS={secs}, SKPC_BENCH_TOOLS_REQUESTS={requests}). {}\n",
        report::machine()
    ));
    s
}

const WRITES: [&str; 2] = ["1K", "128K"];

/// Part 1: a policy about port 6379, tools on other ports, in its cgroup and outside.
fn untouched(
    iperf3: &Path,
    server: &Path,
    bench: &Path,
    rounds: usize,
    secs: f64,
    requests: u32,
) -> Result<String, String> {
    let repo = report::repo();
    let src = std::fs::read_to_string(repo.join("examples/redis_guard.skp"))
        .map_err(|e| e.to_string())?;
    let enforced = Enforced::new("examples/redis_guard.skp", &src)?;
    let (ip, rp) = (free_port(), free_port());
    let _iperf = iperf3_server(iperf3, ip, None)?;
    let _redis = redis_server(server, rp, None)?;
    // [write][plain, skpc] bits/s per round; redis [plain, skpc] per round.
    let mut iperf: Vec<[Vec<f64>; 2]> = vec![[Vec::new(), Vec::new()], [Vec::new(), Vec::new()]];
    let mut redis: [Vec<Bench>; 2] = [Vec::new(), Vec::new()];
    for round in 0..rounds {
        eprintln!("r. untouched, round {}/{rounds}", round + 1);
        for (w, write) in WRITES.iter().enumerate() {
            for (k, cg) in [None, Some(&enforced)].into_iter().enumerate() {
                iperf[w][k].push(iperf3_run(iperf3, ip, write, secs, cg)?);
            }
        }
        for (k, cg) in [None, Some(&enforced)].into_iter().enumerate() {
            redis[k].push(redis_run(bench, rp, requests, cg)?);
        }
    }
    let mut t = format!(
        "**Untouched traffic.** `examples/redis_guard.skp` (`drop if port == 6379 and len > \
         4096;`) enforced on a cgroup as `skpc exec` does it; its SOCK_OPS program takes only \
         connections with 6379 at either end. iperf3 (`-l 1K` / `-l 128K`, {secs} s) and \
         redis-benchmark (SET and GET, 64 B values, 20 clients, {requests} requests, the two \
         tests' mean) run in the cgroup against servers on other ports, outside it; \"plain\" \
         is the same without the policy. Median of {rounds} interleaved rounds; ratio = skpc / \
         plain (target: >= 0.98 for iperf3 1 KiB).\n\n\
         | tool | plain | under redis_guard.skp | ratio | plain, each round | skpc, each round |\n\
         |---|---:|---:|---:|---|---|\n"
    );
    for (w, write) in WRITES.iter().enumerate() {
        let (a, b) = (median(&iperf[w][0]), median(&iperf[w][1]));
        t.push_str(&format!(
            "| iperf3 -l {write} | {:.2} Gbit/s | {:.2} Gbit/s | {:.3} | {} | {} |\n",
            a / 1e9,
            b / 1e9,
            b / a,
            each(&iperf[w][0], 1e9, 2),
            each(&iperf[w][1], 1e9, 2)
        ));
    }
    let rps = |k: usize| redis[k].iter().map(|b| b.rps).collect::<Vec<_>>();
    let (a, b) = (median(&rps(0)), median(&rps(1)));
    t.push_str(&format!(
        "| redis-benchmark | {a:.0} req/s | {b:.0} req/s | {:.3} | {} | {} |\n\n",
        b / a,
        each(&rps(0), 1.0, 0),
        each(&rps(1), 1.0, 0)
    ));
    Ok(t)
}

/// Part 2: servers and clients all in the cgroup of peer_bypass.skp, against all outside.
fn bypass(
    iperf3: &Path,
    server: &Path,
    bench: &Path,
    rounds: usize,
    secs: f64,
    requests: u32,
) -> Result<String, String> {
    let repo = report::repo();
    let example = std::fs::read_to_string(repo.join("examples/peer_bypass.skp"))
        .map_err(|e| e.to_string())?;
    let (ip, rp) = (free_port(), free_port());
    // The example's local services, with the bench's ports for redis and the HTTP agent.
    let src = example
        .replace("6379", &rp.to_string())
        .replace("8080", &ip.to_string());
    let enforced = Enforced::new("examples/peer_bypass.skp", &src)?;
    let (ip_plain, rp_plain) = (free_port(), free_port());
    let _iperf_in = iperf3_server(iperf3, ip, Some(&enforced))?;
    let _redis_in = redis_server(server, rp, Some(&enforced))?;
    let _iperf_out = iperf3_server(iperf3, ip_plain, None)?;
    let _redis_out = redis_server(server, rp_plain, None)?;
    let mut iperf: Vec<[Vec<f64>; 2]> = vec![[Vec::new(), Vec::new()], [Vec::new(), Vec::new()]];
    let mut redis: [Vec<Bench>; 2] = [Vec::new(), Vec::new()];
    for round in 0..rounds {
        eprintln!("r. peer bypass, round {}/{rounds}", round + 1);
        for (k, (cg, rport)) in [(None, rp_plain), (Some(&enforced), rp)]
            .into_iter()
            .enumerate()
        {
            redis[k].push(redis_run(bench, rport, requests, cg)?);
        }
        for (w, write) in WRITES.iter().enumerate() {
            for (k, (cg, iport)) in [(None, ip_plain), (Some(&enforced), ip)]
                .into_iter()
                .enumerate()
            {
                iperf[w][k].push(iperf3_run(iperf3, iport, write, secs, cg)?);
            }
        }
    }
    let col = |k: usize, f: &dyn Fn(&Bench) -> f64| redis[k].iter().map(f).collect::<Vec<_>>();
    let mut t = format!(
        "**The local peer bypass.** `examples/peer_bypass.skp` (`redirect ingress to peer if \
         remote.ip in loopback and port in local_services;`, with the bench's ports as the \
         redis and HTTP-agent services) with the servers and the clients in its cgroup, \
         against both outside it (plain loopback TCP). redis-benchmark: SET and GET, 64 B \
         values, 20 clients, {requests} requests, the two tests' mean; iperf3 `-l 1K` / `-l \
         128K`, {secs} s. Median of {rounds} interleaved rounds (targets: >= 1.4x \
         requests/s, <= 0.75x p50).\n\n\
         | measure | plain loopback TCP | peer bypass | ratio | plain, each round | bypass, each round |\n\
         |---|---:|---:|---:|---|---|\n"
    );
    for (label, f, unit, digits) in [
        (
            "redis-benchmark requests/s",
            (|b: &Bench| b.rps) as fn(&Bench) -> f64,
            "",
            0,
        ),
        ("redis-benchmark p50 latency", |b: &Bench| b.p50, " ms", 3),
        ("redis-benchmark p99 latency", |b: &Bench| b.p99, " ms", 3),
    ] {
        let (a, b) = (median(&col(0, &f)), median(&col(1, &f)));
        t.push_str(&format!(
            "| {label} | {a:.digits$}{unit} | {b:.digits$}{unit} | {:.2} | {} | {} |\n",
            b / a,
            each(&col(0, &f), 1.0, digits),
            each(&col(1, &f), 1.0, digits)
        ));
    }
    for (w, write) in WRITES.iter().enumerate() {
        let (a, b) = (median(&iperf[w][0]), median(&iperf[w][1]));
        t.push_str(&format!(
            "| iperf3 -l {write} | {:.2} Gbit/s | {:.2} Gbit/s | {:.2} | {} | {} |\n",
            a / 1e9,
            b / 1e9,
            b / a,
            each(&iperf[w][0], 1e9, 2),
            each(&iperf[w][1], 1e9, 2)
        ));
    }
    t.push('\n');
    Ok(t)
}
