//! Part p of the kernel bench: what each protocol parser costs per message.
//!
//! For each protocol, a policy that reads the protocol's fields, the same check
//! hand-written as payload bytes (as a user would write it without the parsers), and the
//! pass-only program; plus one policy that reads all twelve fields at once (the verifier
//! budget). Each is compiled without counters and attached directly to a sockmap (the
//! policy's own cost, as in part b's "skpc direct"); the sends run it with `discard` in
//! place of `drop`, since a drop sticks to the socket. Real protocol messages are sent over
//! loopback TCP, one message per send call, interleaved (round, then message, then
//! policy); the program's run time per message comes from the kernel's BPF stats
//! (run_time_ns / run_cnt deltas), median of the rounds.
//!
//! Settings: SKPC_BENCH_ROUNDS (5), SKPC_BENCH_PROTO_SECS (0.15 s per case and round).
//! `SKPC_BENCH_ONLY=protocols` runs this part alone.

use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use super::{
    attach_direct, bpf_stats_sysctl, compile, env_or, err_chain, load_failure, loader, report,
    sk_msg, slots, Attach, Loaded, Sizes, Skp,
};

/// What a policy of this part stands for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Pass,
    /// Matches everything: what the verdict of a matching message costs.
    Drop,
    /// Reads protocol fields.
    Field,
    /// The same check as payload bytes.
    Bytes,
    /// All twelve fields.
    All,
}

struct ProtoPolicy {
    /// The protocol (or check) it belongs to: pairs a field policy with its byte policy.
    group: &'static str,
    kind: Kind,
    src: &'static str,
}

const POLICIES: &[ProtoPolicy] = &[
    ProtoPolicy {
        group: "-",
        kind: Kind::Pass,
        src: "pass;",
    },
    ProtoPolicy {
        group: "-",
        kind: Kind::Drop,
        src: "drop;",
    },
    ProtoPolicy {
        group: "redis",
        kind: Kind::Field,
        src: r#"drop if redis.command == "FLUSHALL";"#,
    },
    ProtoPolicy {
        group: "redis",
        kind: Kind::Bytes,
        src: r#"drop if payload starts with "*1\r\n$8\r\nFLUSHALL";"#,
    },
    ProtoPolicy {
        group: "http method+path",
        kind: Kind::Field,
        src: r#"drop if http.method == "DELETE" and http.path starts with "/admin";"#,
    },
    ProtoPolicy {
        group: "http method+path",
        kind: Kind::Bytes,
        src: r#"drop if payload starts with "DELETE /admin";"#,
    },
    ProtoPolicy {
        group: "http host",
        kind: Kind::Field,
        src: r#"drop if http.host == "evil.example";"#,
    },
    ProtoPolicy {
        group: "http host",
        kind: Kind::Bytes,
        src: r#"drop if payload[26..46] == "Host: evil.example\r\n";"#,
    },
    ProtoPolicy {
        group: "pg",
        kind: Kind::Field,
        src: r#"drop if pg.user == "postgres";"#,
    },
    ProtoPolicy {
        group: "pg",
        kind: Kind::Bytes,
        src: r#"drop if payload[8..22] == "user\x00postgres\x00";"#,
    },
    ProtoPolicy {
        group: "tls",
        kind: Kind::Field,
        src: r#"drop if tls.sni ends with ".internal.example";"#,
    },
    ProtoPolicy {
        group: "tls",
        kind: Kind::Bytes,
        src: r#"drop if payload[151..168] == ".internal.example";"#,
    },
    ProtoPolicy {
        group: "all 12 fields",
        kind: Kind::All,
        src: "drop if http and http.method == \"DELETE\" and http.path starts with \"/admin\"; \
              drop if http and http.host == \"evil.example\"; \
              drop if redis and (redis.command == \"FLUSHALL\" or redis.key starts with \"session:\"); \
              drop if pg and pg.user == \"postgres\" and pg.database == \"prod\"; \
              drop if tls and tls.sni ends with \".internal.example\";",
    },
];

/// The messages: (name, bytes).
fn messages() -> Vec<(&'static str, Vec<u8>)> {
    // curl 8.5's request line and headers (88 B); Host at byte 26.
    let http = b"GET /index.html HTTP/1.1\r\nHost: www.example.com\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n\r\n".to_vec();
    // redis-cli's `flushall`, as typed (lower case).
    let redis = b"*1\r\n$8\r\nflushall\r\n".to_vec();
    // psql's StartupMessage: length, protocol 3.0, parameters in libpq's order.
    let mut params = Vec::new();
    for (k, v) in [
        ("user", "postgres"),
        ("database", "postgres"),
        ("application_name", "psql"),
        ("client_encoding", "UTF8"),
    ] {
        params.extend_from_slice(k.as_bytes());
        params.push(0);
        params.extend_from_slice(v.as_bytes());
        params.push(0);
    }
    params.push(0);
    let mut pg = ((8 + params.len()) as u32).to_be_bytes().to_vec();
    pg.extend_from_slice(&0x0003_0000u32.to_be_bytes());
    pg.extend_from_slice(&params);
    // A TLS 1.3 ClientHello (curl/OpenSSL, server_name Api.Example.COM at 153..168).
    let tls = include_bytes!("../../tests/fixtures/clienthello_api_example_com.bin").to_vec();
    // 64 bytes of no protocol: first byte 0x8a (not a letter, `*`, 0x00 or 0x16).
    let other: Vec<u8> = (0..64u32).map(|i| (0x8a + i * 37) as u8).collect();
    vec![
        ("HTTP GET", http),
        ("redis-cli flushall", redis),
        ("psql startup", pg),
        ("TLS ClientHello", tls),
        ("other 64 B", other),
    ]
}

struct Prepared {
    sizes: Result<Sizes, String>,
    attach: Result<Attach, String>,
}

/// The policy the sends run: `drop` sticks (after one drop the kernel fails every later
/// send on the socket without running the program, docs/runtime.md), so the sends use
/// `discard`, which judges every message and keeps the connection.
fn discarding(src: &str) -> String {
    src.replace("drop if", "discard if")
        .replace("drop;", "discard;")
}

/// The last lines of an error (a verifier log ends with its reason and its stats).
fn last_lines(msg: &str, n: usize) -> String {
    let lines: Vec<&str> = msg
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    lines[lines.len().saturating_sub(n)..]
        .join(" / ")
        .replace('|', "/")
}

fn prepare(src: &str) -> Prepared {
    let skp = Skp {
        name: "protocols".into(),
        src: src.into(),
    };
    let c = match compile(&skp, false) {
        Ok(c) => c,
        Err(e) => {
            return Prepared {
                sizes: Err(e.clone()),
                attach: Err(e),
            }
        }
    };
    let n = slots(&c);
    let loaded = (|| {
        let mut ebpf = loader()
            .load(&c.object)
            .map_err(|e| last_lines(&err_chain(&e), 8))?;
        let p = sk_msg(&mut ebpf, "skp_verdict")?;
        let t = Instant::now();
        p.load().map_err(|e| last_lines(&err_chain(&e), 8))?;
        let load_ms = t.elapsed().as_secs_f64() * 1e3;
        let i = p.info().map_err(|e| e.to_string())?;
        Ok::<_, String>(Loaded {
            ebpf,
            prog: "skp_verdict".into(),
            info: Sizes {
                slots: n,
                xlated: i.size_translated().unwrap_or(0) / 8,
                jited: i.size_jitted(),
                verified: i.verified_instruction_count().unwrap_or(0),
                load_ms,
            },
        })
    })();
    match loaded {
        Ok(l) => {
            let sizes = Ok(l.info);
            let attach = skpc_runtime::fill_index(&l.ebpf, &c.object)
                .map_err(|e| e.to_string())
                .and_then(|_| attach_direct(l, "skp_socks"));
            Prepared { sizes, attach }
        }
        Err(e) => {
            let e = load_failure(&c, &e);
            Prepared {
                sizes: Err(e.clone()),
                attach: Err(e),
            }
        }
    }
}

#[derive(Clone, Copy)]
struct Run {
    sends: u64,
    matched: u64,
    run_ns: u64,
    runs: u64,
}

/// One case: a fresh loopback connection in the policy's sockmap, `msg` sent whole by
/// one blocking send call at a time for `secs`. A receiver thread reads until EOF; a
/// message that did not arrive was discarded (the policy matched).
fn run_msg(attach: &mut Attach, msg: &[u8], secs: f64) -> Result<Run, String> {
    let (client, rx) = super::connected(attach)?;
    let (t0, c0) = attach.stats();
    let fd = client.as_raw_fd();
    let limit = Duration::from_secs_f64(secs);
    let start = Instant::now();
    let (mut sends, mut tx) = (0u64, 0u64);
    let mut error = None;
    'send: while start.elapsed() < limit {
        for _ in 0..64 {
            // SAFETY: the buffer outlives the call; fd is the client's socket.
            let n = unsafe { libc::send(fd, msg.as_ptr().cast(), msg.len(), libc::MSG_NOSIGNAL) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                error = Some(format!("send failed after {sends} messages: {e}"));
                break 'send;
            }
            sends += 1;
            if n as usize != msg.len() {
                error = Some(format!("short send: {n} of {} bytes", msg.len()));
                break 'send;
            } else {
                tx += n as u64;
            }
        }
    }
    let _ = client.shutdown(Shutdown::Write);
    let (rx_bytes, _) = rx.join().map_err(|_| "receiver panicked".to_string())?;
    let (t1, c1) = attach.stats();
    attach.remove();
    drop(client);
    if let Some(e) = error {
        return Err(e);
    }
    let missing = tx.saturating_sub(rx_bytes);
    if rx_bytes > tx || missing % msg.len() as u64 != 0 {
        return Err(format!("received {rx_bytes} bytes of {tx} sent"));
    }
    let matched = missing / msg.len() as u64;
    Ok(Run {
        sends,
        matched,
        run_ns: t1 - t0,
        runs: c1 - c0,
    })
}

fn kind_label(k: Kind) -> &'static str {
    match k {
        Kind::Pass => "pass-only",
        Kind::Drop => "match-all",
        Kind::Field => "field",
        Kind::Bytes => "bytes",
        Kind::All => "all fields",
    }
}

/// Runs part p and returns its markdown.
pub fn part_p() -> String {
    let rounds: usize = env_or("SKPC_BENCH_ROUNDS", 5);
    let secs: f64 = env_or("SKPC_BENCH_PROTO_SECS", 0.15);
    let msgs = messages();
    let started = Instant::now();

    let mut prepared: Vec<Prepared> = POLICIES
        .iter()
        .map(|p| {
            eprintln!("p. loading {}", p.src);
            let sizes = prepare(p.src).sizes;
            let attach = prepare(&discarding(p.src)).attach;
            Prepared { sizes, attach }
        })
        .collect();

    let sysctl_before = bpf_stats_sysctl();
    let stats_fd = aya::sys::enable_stats(aya::sys::Stats::RunTime);
    if let Err(e) = &stats_fd {
        eprintln!("BPF_ENABLE_STATS failed ({e}); run times will be missing");
    }
    // (policy, message) -> one Run per round, or the error.
    let message_indices: Vec<usize> = (0..msgs.len()).collect();
    let results = super::interleaved(
        "p",
        rounds,
        &message_indices,
        &mut prepared,
        |p| &mut p.attach,
        |a, m| run_msg(a, &msgs[m].1, secs),
    );
    drop(stats_fd);
    let sysctl_after = bpf_stats_sysctl();

    let ns = |i: usize, m: usize| -> Option<f64> {
        match results.get(&(i, m))? {
            Ok(r) if !r.is_empty() && r.iter().all(|x| x.runs > 0) => {
                let mut v: Vec<f64> = r.iter().map(|x| x.run_ns as f64 / x.runs as f64).collect();
                Some(report::median(&mut v))
            }
            _ => None,
        }
    };
    let matched = |i: usize, m: usize| -> bool {
        matches!(results.get(&(i, m)), Some(Ok(r)) if r.iter().any(|x| x.matched * 2 > x.sends))
    };

    let mut s = format!(
        "### p. Protocol parsers: run time per message (BPF stats)\n\n\
         Each policy compiled without counters and attached directly to a sockmap; one \
         message per blocking `send()` over 127.0.0.1 TCP for {secs} s per case and round; \
         run_time_ns / run_cnt deltas of prog info (BPF_ENABLE_STATS, about 45 ns of it \
         accounting), median of {rounds} rounds run interleaved (round, then message, then \
         policy). The sends run each policy with `discard` for `drop`: a drop sticks (the \
         kernel fails every later send on the socket without running the program), a \
         discard judges every message. Cells: ns per message, and the ratio to pass-only \
         on the same message; **match** = the policy matched the message (it was \
         discarded, so the cell includes the discard: compare with match-all). \"field\" reads \
         the protocol's fields, \"bytes\" is the same check hand-written as payload bytes \
         (for `http.host`, `pg.user` and `tls.sni` there is none: the closest fixed-offset \
         test for the message sent here, which would miss the same value elsewhere).\n\n"
    );
    s.push_str("| check | policy | source |");
    for (name, msg) in &msgs {
        s.push_str(&format!(" {name} ({} B) |", msg.len()));
    }
    s.push_str("\n|---|---|---|");
    for _ in &msgs {
        s.push_str("---:|");
    }
    s.push('\n');
    for (i, p) in POLICIES.iter().enumerate() {
        let src = if p.kind == Kind::All {
            "(below)".to_string()
        } else {
            format!("`{}`", p.src.replace('|', "\\|"))
        };
        s.push_str(&format!("| {} | {} | {src} |", p.group, kind_label(p.kind)));
        for m in 0..msgs.len() {
            let cell = match (results.get(&(i, m)), ns(i, m), ns(0, m)) {
                (Some(Err(e)), _, _) => e.replace('|', "/"),
                (_, Some(v), Some(base)) if i > 0 => format!(
                    "{v:.0} ({:.2}x){}",
                    v / base,
                    if matched(i, m) { " **match**" } else { "" }
                ),
                (_, Some(v), _) => format!("{v:.0}"),
                _ => "-".into(),
            };
            s.push_str(&format!(" {cell} |"));
        }
        s.push('\n');
    }

    s.push_str(
        "\nThe parser over the byte check, per message: (field − pass-only) − (bytes − \
         pass-only) in ns, i.e. what reading the fields costs more than the hand-written \
         bytes.\n\n| check |",
    );
    for (name, _) in &msgs {
        s.push_str(&format!(" {name} |"));
    }
    s.push_str("\n|---|");
    for _ in &msgs {
        s.push_str("---:|");
    }
    s.push('\n');
    for (i, p) in POLICIES.iter().enumerate() {
        if p.kind != Kind::Field {
            continue;
        }
        let Some(j) = POLICIES
            .iter()
            .position(|q| q.group == p.group && q.kind == Kind::Bytes)
        else {
            continue;
        };
        s.push_str(&format!("| {} |", p.group));
        for m in 0..msgs.len() {
            match (ns(i, m), ns(j, m)) {
                (Some(a), Some(b)) => s.push_str(&format!(" {:+.0} |", a - b)),
                _ => s.push_str(" - |"),
            }
        }
        s.push('\n');
    }

    s.push_str(
        "\n### p. Protocol parsers: code size and verifier cost\n\n\
         The same programs (counters off): emitted slots, xlated_prog_len / 8, JIT bytes, \
         the verifier's processed instructions (verified_insns, and their share of the \
         1,000,000 the verifier allows) and the load's wall time; \
         \"all fields\" reads all twelve protocol fields at once. These are the policies as \
         written, with `drop`.\n\n\
         | check | policy | slots | xlated | jited B | verified | load |\n\
         |---|---|---:|---:|---:|---:|---:|\n",
    );
    for (p, q) in POLICIES.iter().zip(&prepared) {
        match &q.sizes {
            Ok(z) => s.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} ({:.1} %) | {:.1} ms |\n",
                p.group,
                kind_label(p.kind),
                z.slots,
                z.xlated,
                z.jited,
                z.verified,
                z.verified as f64 / super::MAX_INSNS as f64 * 100.0,
                z.load_ms
            )),
            Err(e) => s.push_str(&format!(
                "| {} | {} | {} | | | | |\n",
                p.group,
                kind_label(p.kind),
                e.replace('|', "/")
            )),
        }
    }
    if let Some(all) = POLICIES.iter().position(|p| p.kind == Kind::All) {
        s.push_str(&format!(
            "\nThe all-fields policy: `{}`\n",
            POLICIES[all].src.replace("; ", ";` `")
        ));
    }
    s.push_str(&format!(
        "\nkernel.bpf_stats_enabled was {sysctl_before} before and {sysctl_after} after. \
         Command: `{}cargo bench --bench kernel` (this part: {:.0} s). {}\n",
        settings(),
        started.elapsed().as_secs_f64(),
        report::machine()
    ));
    s
}

fn settings() -> String {
    [
        "SKPC_BENCH_ONLY",
        "SKPC_BENCH_ROUNDS",
        "SKPC_BENCH_PROTO_SECS",
    ]
    .iter()
    .filter_map(|k| std::env::var(k).ok().map(|v| format!("{k}={v} ")))
    .collect()
}
