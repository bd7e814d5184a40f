//! `skpc run FILE --cgroup PATH`: enforce the policy on every TCP socket that the
//! processes of a cgroup v2 establish, until SIGINT/SIGTERM; live counters on a
//! terminal (periodic plain lines otherwise). A change of FILE (seen by `watch`) or
//! SIGHUP re-reads it and swaps the new policy in for the live sockets; a policy that
//! fails keeps the old one in force and counts as a failed reload.
//!
//! Selective insertion (`hir::conn`) as in `skpc exec`: only the connections some rule
//! can act on enter the sockmaps. A reload whose policy takes other connections also
//! replaces the SOCK_OPS program on the cgroup (`Enforcement::reload`); the reload line
//! says what that means for the connections open at that moment.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;

use skpc::diag::ColorChoice;
use skpc_runtime::process::{self, sig, Signals};
use skpc_runtime::Enforcement;

use super::exec::{cleanup_stale, counters_table, load, log_line, Loaded};
use super::metrics::{self, Metrics};
use super::set_files;
use super::watch::{Change, Watch};
use crate::{json, Input};

#[derive(Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub input: Input,
    /// The cgroup v2 directory to enforce on (absolute, or relative to the cgroup2 mount).
    #[arg(long, value_name = "PATH")]
    pub cgroup: PathBuf,
    /// Print every `log` record on stderr as it happens.
    #[arg(long)]
    pub events: bool,
    /// Seconds between counter updates (the live view on a terminal, lines otherwise).
    #[arg(long, value_name = "SECS", default_value_t = 1.0)]
    pub interval: f64,
    /// JSON output (docs/json.md): the counters as a JSON line on stdout every interval
    /// and at the end (instead of the live view and a table on stderr); diagnostics and
    /// `log` records as JSON lines on stderr.
    #[arg(short = 'j', long)]
    pub json: bool,
    /// Do not watch FILE for changes (reload on SIGHUP only).
    #[arg(long)]
    pub no_watch: bool,
    /// Serve Prometheus metrics on http://ADDR/metrics (e.g. 127.0.0.1:9464; port 0
    /// picks a free one). docs/operations.md lists them.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<String>,
}

fn resolve_cgroup(p: &Path) -> anyhow::Result<PathBuf> {
    if p.is_absolute() || p.exists() {
        return Ok(p.to_path_buf());
    }
    Ok(skpc_runtime::cgroup2_mount()?.join(p))
}

pub fn run(args: RunArgs, color: ColorChoice) -> anyhow::Result<ExitCode> {
    // Selective: a reload whose policy takes other connections replaces the SOCK_OPS
    // program too.
    let Some(mut loaded) = load(&args.input, color, args.json, true)? else {
        return Ok(ExitCode::from(1));
    };
    let cgroup = resolve_cgroup(&args.cgroup)?;
    let signals = Signals::install(&[sig::SIGINT, sig::SIGTERM, sig::SIGHUP])?;
    cleanup_stale();
    let mut enf = Enforcement::new(&loaded.policy)?;
    enf.attach_cgroup(&cgroup)?;

    let mut watch = match (&args.input.file, args.no_watch) {
        (Some(path), false) => Some(Watch::new(path.clone())),
        _ => None,
    };
    // The sets read from files are followed whenever the policy is.
    let mut set_watches = match watch {
        Some(_) => loaded.set_files.watches(),
        None => Vec::new(),
    };
    let mut reloads = json::ReloadsJson::default();
    let metrics = match &args.metrics {
        Some(addr) => {
            let m = Metrics::start(addr)?;
            eprintln!("skpc: metrics on http://{}/metrics", m.addr);
            Some(m)
        }
        None => None,
    };
    let tty = process::is_tty(1);
    let interval = Duration::from_secs_f64(args.interval.max(0.05));
    let start = Instant::now();
    let mut next = start + interval;
    eprintln!(
        "skpc: enforcing {} on {} (sockets established from now on; connections taken: {}); Ctrl-C or SIGTERM to stop, {} to reload",
        loaded.name,
        cgroup.display(),
        loaded.connections,
        if watch.is_some() {
            "a change of the file or SIGHUP"
        } else {
            "SIGHUP"
        }
    );
    loop {
        let mut fds = vec![signals.fd()];
        if args.events {
            fds.extend(enf.events_fd());
        }
        let wait = next
            .saturating_duration_since(Instant::now())
            .min(Duration::from_millis(200));
        process::poll_readable(&fds, wait);
        let mut stop = false;
        for caught in signals.pending() {
            match caught.signal {
                sig::SIGHUP => {
                    count(&mut reloads, reload(&args, color, &mut enf, &mut loaded));
                    if let Some(w) = &mut watch {
                        w.acted_on_current();
                        set_watches = loaded.set_files.watches();
                    }
                }
                _ => stop = true,
            }
        }
        if let Some(w) = &mut watch {
            match w.poll() {
                Change::Changed => {
                    eprintln!("skpc: {} changed; reloading", loaded.name);
                    count(&mut reloads, reload(&args, color, &mut enf, &mut loaded));
                    set_watches = loaded.set_files.watches();
                }
                Change::Missing => eprintln!(
                    "skpc: {} is missing; still enforcing version {}",
                    loaded.name,
                    enf.version()
                ),
                Change::None => {}
            }
        }
        if set_files::poll(&mut set_watches) {
            eprintln!(
                "skpc: a set file of {} changed; swapping its contents",
                loaded.name
            );
            count(
                &mut reloads,
                refresh_sets(&args, color, &mut enf, &mut loaded),
            );
        }
        if args.events {
            for r in enf.drain_events() {
                eprintln!("{}", log_line(&loaded, &r, args.json));
            }
        }
        if let Some(m) = &metrics {
            m.update(snapshot(&enf, &loaded, reloads));
        }
        if stop {
            break;
        }
        if Instant::now() >= next {
            next += interval;
            show(
                &enf,
                &loaded,
                View {
                    tty: tty && !args.json,
                    json: args.json,
                    elapsed: start.elapsed(),
                    cgroup: &cgroup,
                    reloads,
                },
            );
        }
    }
    if args.events {
        for r in enf.drain_events() {
            eprintln!("{}", log_line(&loaded, &r, args.json));
        }
    }
    let values = enf.counters()?;
    let version = enf.version();
    let untouched = enf.untouched_sockets()?;
    drop(metrics);
    drop(enf);
    drop(signals);
    if args.json {
        let doc = json::CountersDoc {
            version: Some(version),
            elapsed_seconds: Some(start.elapsed().as_secs_f64()),
            reloads: Some(reloads),
            untouched_sockets: Some(untouched),
            ..json::counters_doc(&loaded, &values)
        };
        // Through write_stdout: a closed pipe (`| head`) is no panic.
        crate::write_stdout(&(json::line(&doc) + "\n"))?;
    } else {
        eprint!(
            "skpc: stopped; counters of {}:\n{}skpc: {untouched} untouched socket{} (left out of the sockmaps: no rule could act on them; in no counter)\n",
            loaded.name,
            counters_table(&loaded, &values),
            if untouched == 1 { "" } else { "s" }
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// What the metrics report now.
fn snapshot(enf: &Enforcement, loaded: &Loaded, reloads: json::ReloadsJson) -> metrics::Snapshot {
    let values = enf.counters().unwrap_or_default();
    let doc = json::counters_doc(loaded, &values);
    let stats = enf.program_stats().unwrap_or_default();
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    std::hash::Hash::hash(&loaded.source, &mut hasher);
    metrics::Snapshot {
        policy: loaded.name.clone(),
        version: enf.version(),
        hash: format!("{:016x}", std::hash::Hasher::finish(&hasher)),
        reloads,
        sockets: enf.sockets(),
        untouched_sockets: enf.untouched_sockets().unwrap_or(0),
        run_seconds: stats.0.as_secs_f64(),
        runs: stats.1,
        counters: doc
            .counters
            .iter()
            .map(metrics::Counter::from_json)
            .collect(),
    }
}

fn count(reloads: &mut json::ReloadsJson, ok: bool) {
    if ok {
        reloads.ok += 1;
    } else {
        reloads.error += 1;
    }
}

/// Re-reads and recompiles the input and swaps it in (the new version is loaded and
/// verified beside the old one first); keeps the old one on failure. True if swapped.
fn reload(args: &RunArgs, color: ColorChoice, enf: &mut Enforcement, loaded: &mut Loaded) -> bool {
    match rebuild(args, color, enf) {
        Some(new) => swap_version(enf, loaded, new),
        None => false,
    }
}

/// Re-reads and recompiles the input (and its set files); none if that failed (said).
fn rebuild(args: &RunArgs, color: ColorChoice, enf: &Enforcement) -> Option<Loaded> {
    match load(&args.input, color, args.json, true) {
        Ok(Some(l)) => Some(l),
        Ok(None) => {
            eprintln!("skpc: reload failed: the policy does not compile (see above); still enforcing version {}", enf.version());
            None
        }
        Err(e) => {
            eprintln!(
                "skpc: reload failed: {e:#}; still enforcing version {}",
                enf.version()
            );
            None
        }
    }
}

/// A set file changed: its new contents go into the running program's set maps (no
/// program loaded, no socket touched), or, if the new build's program differs (the
/// policy file changed too), the whole policy is reloaded. True if swapped.
fn refresh_sets(
    args: &RunArgs,
    color: ColorChoice,
    enf: &mut Enforcement,
    loaded: &mut Loaded,
) -> bool {
    let Some(new) = rebuild(args, color, enf) else {
        return false;
    };
    if new.source != loaded.source || !loaded.set_files.same_program(&new.set_files) {
        return swap_version(enf, loaded, new);
    }
    match new.set_files.swap_into(enf) {
        Ok(keys) => {
            let names: Vec<&str> = new
                .set_files
                .files
                .iter()
                .map(|(n, _)| n.as_str())
                .collect();
            eprintln!(
                "skpc: sets {} swapped in: {keys} keys live in version {} (no program loaded, no socket touched)",
                names.join(", "),
                enf.version()
            );
            *loaded = new;
            true
        }
        Err(e) => {
            eprintln!(
                "skpc: swapping the set contents failed: {e:#}; the sets in force are unchanged (version {})",
                enf.version()
            );
            false
        }
    }
}

/// Swaps a new build in as a new version of the program.
fn swap_version(enf: &mut Enforcement, loaded: &mut Loaded, new: Loaded) -> bool {
    match enf.reload(&new.policy) {
        Ok(r) => {
            let connections = if r.sock_ops_replaced {
                format!(
                    "connections taken now: {} (before: {}); new connections follow the new condition, connections open before this reload stay as they were: those in the sockmaps stay in (judged by version {v}), those left out stay out until they reconnect",
                    new.connections,
                    loaded.connections,
                    v = enf.version()
                )
            } else {
                format!("connections taken: {} (unchanged)", new.connections)
            };
            eprintln!(
                "skpc: reloaded {}: version {} now enforced on every socket in the sockmaps; {connections}",
                new.name,
                enf.version()
            );
            *loaded = new;
            true
        }
        Err(e) => {
            eprintln!(
                "skpc: reload failed: {:#}; still enforcing version {}",
                anyhow::Error::from(e),
                enf.version()
            );
            false
        }
    }
}

/// How one counters update is shown.
struct View<'a> {
    tty: bool,
    json: bool,
    elapsed: Duration,
    cgroup: &'a Path,
    reloads: json::ReloadsJson,
}

/// One counters update: the live view on a terminal, a JSON line in JSON mode, a plain
/// line otherwise.
fn show(enf: &Enforcement, loaded: &Loaded, view: View) {
    let View {
        tty,
        json,
        elapsed,
        cgroup,
        reloads,
    } = view;
    let Ok(values) = enf.counters() else { return };
    let untouched = enf.untouched_sockets().unwrap_or(0);
    let mut out = std::io::stdout().lock();
    if json {
        let doc = json::CountersDoc {
            version: Some(enf.version()),
            elapsed_seconds: Some(elapsed.as_secs_f64()),
            reloads: Some(reloads),
            untouched_sockets: Some(untouched),
            ..json::counters_doc(loaded, &values)
        };
        let _ = writeln!(out, "{}", json::line(&doc));
    } else if tty {
        // Redraw in place: home, clear screen.
        let _ = write!(
            out,
            "\x1b[H\x1b[2J skpc run: {} on {} — version {}, {}s, {} untouched sockets\n\n{}",
            loaded.name,
            cgroup.display(),
            enf.version(),
            elapsed.as_secs(),
            untouched,
            counters_table(loaded, &values)
        );
    } else {
        let parts: Vec<String> = values
            .iter()
            .map(|v| format!("{}={}/{}B", v.name, v.messages, v.bytes))
            .collect();
        let _ = writeln!(
            out,
            "{:.0}s v{} {} untouched={untouched}",
            elapsed.as_secs_f64(),
            enf.version(),
            parts.join(" ")
        );
    }
    let _ = out.flush();
}
