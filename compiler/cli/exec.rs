//! `skpc exec FILE -- CMD [ARGS]`: run CMD in a fresh cgroup with the policy enforced
//! on every TCP socket it and its children open; exit with CMD's status; print the
//! per-rule counters at the end. Also the helpers `skpc run` shares (loading a policy
//! for the runtime, the counters table, log lines).

use std::ffi::OsString;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::process::{Command, ExitCode};
use std::time::Duration;

use clap::Args;

use skpc::diag::ColorChoice;
use skpc::hir::{CounterInfo, CounterKind};
use skpc_runtime::process::{self, sig, Signals};
use skpc_runtime::{CounterValue, Enforcement, LogRecord, Policy, TempCgroup};

use crate::{json, Input};

#[derive(Args)]
pub struct ExecArgs {
    #[command(flatten)]
    pub input: Input,
    /// JSON output (docs/json.md): the counters as one JSON line on stdout at the end
    /// (instead of a table on stderr); diagnostics and `log` records as JSON lines on
    /// stderr.
    #[arg(short = 'j', long)]
    pub json: bool,
    /// Print every `log` record on stderr as it happens.
    #[arg(long)]
    pub events: bool,
    /// The command to run and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<OsString>,
}

/// A compiled policy ready for the runtime, with what the counters table needs.
pub(crate) struct Loaded {
    pub name: String,
    pub source: String,
    pub counters: Vec<CounterInfo>,
    pub policy: Policy,
    /// The sets read from files: their files, and their contents as the runtime takes
    /// them (`skpc run` swaps them in when a file changes).
    pub set_files: super::set_files::SetFiles,
    /// The connections the policy takes (`hir::conn::describe`).
    pub connections: String,
}

/// Reads and compiles the input; diagnostics go to stderr (as one JSON line when
/// `json`). `Ok(None)`: it did not compile (the diagnostics say why).
pub(crate) fn load(
    input: &Input,
    color: ColorChoice,
    json: bool,
    select_connections: bool,
) -> anyhow::Result<Option<Loaded>> {
    let src = input.read()?;
    let options = skpc::lower::Options {
        select_connections,
        ..skpc::lower::Options::default()
    };
    let compiled = if json {
        let result = skpc::compile::compile_with(&src.name, &src.text, options);
        let diags = match &result {
            Ok(compiled) => &compiled.warnings,
            Err(diags) => diags,
        };
        if !diags.is_empty() {
            eprintln!(
                "{}",
                json::line(&json::check_doc(&src.name, &src.text, diags))
            );
        }
        result.ok()
    } else {
        skpc::report::compile(&src.name, &src.text, options, color)
    };
    let Some(compiled) = compiled else {
        return Ok(None);
    };
    let object = skpc::compile::runtime_object(&compiled, &src.name, &src.text);
    let counters = compiled.policy.counters.clone();
    // The exact condition (not `describe`, which shortens long sets) tells `skpc run`'s
    // reloads whether the SOCK_OPS program must change.
    let policy = Policy::new(object, counters.iter().map(|c| c.name.clone()).collect())
        .with_connections(format!("{:?}", compiled.lowered.connections));
    Ok(Some(Loaded {
        name: src.name,
        source: src.text,
        counters,
        policy,
        set_files: super::set_files::SetFiles::of(&compiled),
        connections: skpc::hir::conn::describe(&compiled.lowered.connections),
    }))
}

/// Removes what a killed skpc left behind, saying so.
pub(crate) fn cleanup_stale() {
    let stale = skpc_runtime::cleanup_stale();
    for p in stale.cgroups.iter().chain(&stale.pin_dirs) {
        eprintln!(
            "skpc: removed {} left behind by a skpc that was killed",
            p.display()
        );
    }
}

/// What a counter row describes: the rule's source text, the named counter, or the
/// default.
/// A counter's line and rule text; `lines` are the source's lines (split once by the
/// caller: a policy of 100,000 rules has as many counters).
pub(crate) fn describe(info: Option<&CounterInfo>, name: &str, lines: &[&str]) -> (String, String) {
    let Some(info) = info else {
        return ("-".into(), name.to_string());
    };
    let line = if info.line > 0 {
        info.line.to_string()
    } else {
        "-".into()
    };
    let text = match info.kind {
        CounterKind::Named => format!("count {}", info.name),
        CounterKind::Default if info.line == 0 => "default pass (implicit)".to_string(),
        _ => lines
            .get(info.line.saturating_sub(1) as usize)
            .map(|l| strip_comment(l).trim().to_string())
            .unwrap_or_else(|| name.to_string()),
    };
    (line, text)
}

fn strip_comment(line: &str) -> &str {
    // A '#' or '//' outside a string starts a comment.
    let b = line.as_bytes();
    let mut in_str = false;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\\' if in_str => i += 1,
            b'"' => in_str = !in_str,
            b'#' if !in_str => return &line[..i],
            b'/' if !in_str && b.get(i + 1) == Some(&b'/') => return &line[..i],
            _ => {}
        }
        i += 1;
    }
    line
}

fn human_bytes(n: u64) -> String {
    match n {
        0..=9_999 => format!("{n} B"),
        10_000..=9_999_999 => format!("{:.1} KiB", n as f64 / 1024.0),
        10_000_000..=9_999_999_999 => format!("{:.1} MiB", n as f64 / 1048576.0),
        _ => format!("{:.1} GiB", n as f64 / 1073741824.0),
    }
}

/// The counters as a table, one row per rule/count/default.
pub(crate) fn counters_table(l: &Loaded, values: &[CounterValue]) -> String {
    let lines: Vec<&str> = l.source.lines().collect();
    let rows: Vec<(String, String, String, String)> = values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let (line, text) = describe(l.counters.get(i), &v.name, &lines);
            (line, text, v.messages.to_string(), human_bytes(v.bytes))
        })
        .collect();
    let w_line = rows.iter().map(|r| r.0.len()).max().unwrap_or(0).max(4);
    let w_text = rows
        .iter()
        .map(|r| r.1.chars().count())
        .max()
        .unwrap_or(0)
        .clamp(4, 60);
    let w_msg = rows.iter().map(|r| r.2.len()).max().unwrap_or(0).max(8);
    let w_b = rows.iter().map(|r| r.3.len()).max().unwrap_or(0).max(5);
    let mut out = format!(
        "{:>w_line$}  {:<w_text$}  {:>w_msg$}  {:>w_b$}\n",
        "line", "rule", "messages", "bytes"
    );
    for (line, text, m, b) in rows {
        let text: String = if text.chars().count() > w_text {
            text.chars().take(w_text - 1).chain(['…']).collect()
        } else {
            text
        };
        out.push_str(&format!(
            "{line:>w_line$}  {text:<w_text$}  {m:>w_msg$}  {b:>w_b$}\n"
        ));
    }
    out
}

/// The address of a log record's words (network order, IPv4 in the first).
pub(crate) fn ip_of(family: u32, ip: [u32; 4]) -> IpAddr {
    if family == skpc_abi::AF_INET6 {
        let mut b = [0u8; 16];
        for (i, w) in ip.iter().enumerate() {
            b[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
        }
        IpAddr::V6(Ipv6Addr::from(b))
    } else {
        IpAddr::V4(Ipv4Addr::from(ip[0].to_ne_bytes()))
    }
}

fn addr(family: u32, ip: [u32; 4], port: u32) -> String {
    match ip_of(family, ip) {
        IpAddr::V6(v6) => format!("[{v6}]:{port}"),
        v4 => format!("{v4}:{port}"),
    }
}

/// One `log` record as a line: a JSON line when `json`.
pub(crate) fn log_line(l: &Loaded, r: &LogRecord, json: bool) -> String {
    if json {
        return json::line(&json::log_record(l, r));
    }
    let comm_len = r.comm.iter().position(|&c| c == 0).unwrap_or(16);
    let comm = String::from_utf8_lossy(&r.comm[..comm_len]);
    let line = l.counters.get(r.rule as usize).map(|c| c.line).unwrap_or(0);
    format!(
        "skpc: log line {line}: {comm} pid {} uid {} gid {} {} -> {} len {}",
        r.pid,
        r.uid,
        r.gid,
        addr(r.family, r.local_ip, r.local_port),
        addr(r.family, r.remote_ip, r.remote_port),
        r.size
    )
}

pub fn run(args: ExecArgs, color: ColorChoice) -> anyhow::Result<ExitCode> {
    // No reload here: the SOCK_OPS program can leave out what this policy cannot touch.
    let Some(loaded) = load(&args.input, color, args.json, true)? else {
        return Ok(ExitCode::from(1));
    };
    // Catch signals before anything enters the kernel, so every ending cleans up.
    let signals = Signals::install(&[sig::SIGINT, sig::SIGTERM, sig::SIGHUP, sig::SIGQUIT])?;
    cleanup_stale();
    let mut enf = Enforcement::new(&loaded.policy)?;
    let cgroup = TempCgroup::create()?;
    enf.attach_cgroup(cgroup.path())?;

    let mut cmd = Command::new(&args.command[0]);
    cmd.args(&args.command[1..]);
    let mut child = process::spawn_in_cgroup(&mut cmd, cgroup.path())?;
    let pid = child.id();

    let status = loop {
        let mut fds = vec![signals.fd()];
        if args.events {
            fds.extend(enf.events_fd());
        }
        process::poll_readable(&fds, Duration::from_millis(50));
        for caught in signals.pending() {
            // A terminal's Ctrl-C reached the command too; a kill(1) reached only us.
            if caught.from_process {
                process::send_signal(pid, caught.signal);
            }
        }
        if args.events {
            for r in enf.drain_events() {
                eprintln!("{}", log_line(&loaded, &r, args.json));
            }
        }
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => {}
            Err(e) => anyhow::bail!("waiting for the command failed: {e}"),
        }
    };
    let code = process::exit_code(status);
    if args.events {
        for r in enf.drain_events() {
            eprintln!("{}", log_line(&loaded, &r, args.json));
        }
    }
    let values = enf.counters()?;
    let untouched = enf.untouched_sockets()?;
    drop(enf);
    drop(cgroup);
    drop(signals);
    if args.json {
        let doc = json::CountersDoc {
            exit_status: Some(code),
            untouched_sockets: Some(untouched),
            ..json::counters_doc(&loaded, &values)
        };
        // Through write_stdout: a closed pipe (`| head`) is no panic.
        crate::write_stdout(&(json::line(&doc) + "\n"))?;
    } else {
        eprint!(
            "skpc: counters of {}:\n{}",
            loaded.name,
            counters_table(&loaded, &values)
        );
        eprintln!(
            "skpc: connections the policy took: {}; the others never entered the sockmaps: {untouched} untouched socket{} (in no counter)",
            loaded.connections,
            if untouched == 1 { "" } else { "s" }
        );
    }
    Ok(ExitCode::from(code))
}
