//! `skpc test`: run a policy's test cases on the compiled bytecode in the user-space VM
//! and the reference evaluator (`skpc::cases`), and print the results the way
//! `cargo test` reports: one line per case, the failures in detail, then
//! `N passed, N failed`. Exit 1 when a case fails.

use std::fmt::Write as _;
use std::process::ExitCode;

use clap::Args;

use skpc::cases::{self, CaseResult, Delivery, Outcome};
use skpc::diag::ColorChoice;
use skpc::eval::describe;
use skpc::hir::{self, Action, CounterKind, Policy};
use skpc::vm::{VmOutcome, DEFAULT_WINDOW};

use crate::Input;

#[derive(Args)]
pub struct TestArgs {
    #[command(flatten)]
    pub input: Input,
    /// Run only the test cases whose name contains this text.
    #[arg(long, value_name = "TEXT")]
    pub filter: Option<String>,
    /// Bytes readable before the program pulls data (the first scatterlist element).
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_WINDOW)]
    pub window: u32,
    /// Also run the cases on the real kernel over loopback TCP (needs root): a pass must
    /// deliver the bytes, a drop must fail the send with EACCES, a discard must succeed
    /// while the peer receives nothing, a reply must succeed while the peer receives
    /// nothing and the client reads the reply.
    #[arg(long)]
    pub kernel: bool,
}

pub fn run(args: TestArgs, color: ColorChoice) -> anyhow::Result<ExitCode> {
    let src = args.input.read()?;
    let options = skpc::lower::Options::default();
    let Some(compiled) = skpc::report::compile(&src.name, &src.text, options, color) else {
        return Ok(ExitCode::from(1));
    };
    let cases = cases::select(&compiled.policy, args.filter.as_deref());
    let results = cases::run(&compiled, &cases, args.window)
        .map_err(|e| anyhow::anyhow!("cannot run {} in the VM: {e}", src.name))?;

    if compiled.policy.tests.is_empty() {
        println!(
            "{}: no test cases (add `test \"name\" {{ ...; expect pass; }}` blocks)",
            src.name
        );
    }
    println!(
        "\nrunning {} test{}",
        cases.len(),
        if cases.len() == 1 { "" } else { "s" }
    );
    let mut failures: Vec<(&str, String)> = Vec::new();
    for result in &results {
        if result.passed() {
            println!("test {} ... ok", result.name());
        } else {
            println!("test {} ... FAILED", result.name());
            failures.push((
                result.name(),
                failure_report(&compiled.policy, &src.text, result),
            ));
        }
    }
    if !failures.is_empty() {
        println!("\nfailures:");
        for (name, report) in &failures {
            println!("\n---- {name} ----\n{report}");
        }
        println!("failures:");
        for (name, _) in &failures {
            println!("    {name}");
        }
    }
    let mut failed = failures.len();
    let mut passed = cases.len() - failed;
    let mut skipped = 0;
    if args.kernel {
        println!(
            "\nrunning {} test{} on the kernel (loopback TCP)",
            cases.len(),
            if cases.len() == 1 { "" } else { "s" }
        );
        let outcomes = crate::test_kernel::run(&compiled, &src.name, &src.text, &cases)?;
        for (case, outcome) in cases.iter().zip(outcomes) {
            match outcome {
                crate::test_kernel::Outcome::Ok => {
                    println!("test {} (kernel) ... ok", case.name);
                    passed += 1;
                }
                crate::test_kernel::Outcome::Failed(why) => {
                    println!("test {} (kernel) ... FAILED: {why}", case.name);
                    failed += 1;
                }
                crate::test_kernel::Outcome::Skipped(why) => {
                    println!("test {} (kernel) ... skipped: {why}", case.name);
                    skipped += 1;
                }
            }
        }
    }
    if args.kernel {
        println!("\n{passed} passed, {failed} failed, {skipped} skipped");
    } else {
        println!("\n{passed} passed, {failed} failed");
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The detail of a failed case: where, how it was sent, expected against actual, the
/// rule that decided, the message, the counters and log records.
fn failure_report(p: &Policy, source: &str, result: &CaseResult) -> String {
    let how = match result.delivery {
        Delivery::Sendfile => {
            " (sent with sendfile: no bytes readable before the program pulls them)".to_string()
        }
        Delivery::Send { window } if window != DEFAULT_WINDOW => {
            format!(" (initial data window {window} bytes)")
        }
        Delivery::Send { .. } => String::new(),
    };
    let mut r = String::new();
    let (out, reference) = match &result.outcome {
        Outcome::Ran { vm, reference } => (vm, reference),
        Outcome::VmFailed(e) => {
            let _ = writeln!(r, "  at line {}", result.line());
            let _ = writeln!(r, "  the compiled program failed in the VM{how}: {e}");
            let _ = writeln!(
                r,
                "  this is a bug in skpc: please report it with the policy"
            );
            return r;
        }
    };
    let _ = writeln!(r, "  at line {}{how}", result.line());
    let _ = writeln!(r, "  expected: {}", describe(result.expected()));
    let _ = writeln!(r, "  actual:   {}", describe(&out.decision));
    let _ = writeln!(r, "  decided by: {}", fired(p, source, out));
    let _ = writeln!(r, "  message: {}", message(&result.case.message));
    let _ = write!(r, "{}", counters(p, source, out));
    for e in &out.events {
        let _ = writeln!(
            r,
            "  logged by rule {} ({})",
            e.rule,
            rule_text(p, source, e.rule as usize)
        );
    }
    if !result.agree() {
        let _ = writeln!(
            r,
            "  BUG in skpc: the compiled program and the reference evaluator disagree (evaluator: {}, counters {:?}); please report it with the policy",
            describe(&reference.decision),
            reference.counters
        );
    }
    r
}

/// Which rule decided, from the counters: the terminal rule whose counter moved, or the
/// default's.
fn fired(p: &Policy, source: &str, out: &VmOutcome) -> String {
    for (i, rule) in p.rules.iter().enumerate() {
        if rule.action.is_terminal() && out.counters.get(rule.counter).is_some_and(|c| c.0 > 0) {
            return format!("line {}: {}", rule.line, rule_text(p, source, i));
        }
    }
    if out.counters.get(p.default.counter).is_some_and(|c| c.0 > 0) {
        return match p.default.span {
            Some(s) => format!(
                "line {}: {}",
                p.counters[p.default.counter].line,
                one_line(&source[s.range()])
            ),
            None => "the implicit `default pass;` (no rule matched)".to_string(),
        };
    }
    "no counter moved (the program decided without counting)".to_string()
}

fn rule_text(p: &Policy, source: &str, i: usize) -> String {
    match p.rules.get(i) {
        Some(r) => one_line(source.get(r.span.range()).unwrap_or("")),
        None => format!("rule {i}"),
    }
}

fn one_line(s: &str) -> String {
    let s = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if s.chars().count() > 100 {
        format!("{}...", s.chars().take(97).collect::<String>())
    } else {
        s
    }
}

fn counters(p: &Policy, source: &str, out: &VmOutcome) -> String {
    let mut s = String::from("  counters that moved (messages, bytes):\n");
    let mut any = false;
    for (slot, info) in p.counters.iter().enumerate() {
        let Some(&(m, b)) = out.counters.get(slot) else {
            continue;
        };
        if m == 0 && b == 0 {
            continue;
        }
        any = true;
        let what = match info.kind {
            CounterKind::Rule => {
                let i = p
                    .rules
                    .iter()
                    .position(|r| r.counter == slot)
                    .unwrap_or(slot);
                let kind = match p.rules.get(i).map(|r| &r.action) {
                    Some(Action::Count { .. }) => "count",
                    Some(Action::Log) => "log",
                    _ => "verdict",
                };
                format!("line {} ({kind}) {}", info.line, rule_text(p, source, i))
            }
            CounterKind::Named => format!("count {}", info.name),
            CounterKind::Default => "default".to_string(),
        };
        let _ = writeln!(s, "    {m:>6} {b:>12}  {what}");
    }
    if !any {
        s.push_str("    (none)\n");
    }
    s
}

fn message(m: &hir::Message) -> String {
    let fam = if m.family == skpc_abi::AF_INET6 {
        "inet6"
    } else {
        "inet"
    };
    let mut payload = skpc::syntax::lexer::escape(&m.payload[..m.payload.len().min(64)]);
    if m.payload.len() > 64 {
        payload.push_str("...");
    }
    format!(
        "family {fam}, {}:{} -> {}:{}, len {}, payload \"{payload}\", uid {}, gid {}, pid {}, cgroup {}, comm \"{}\"",
        m.local_ip,
        m.local_port,
        m.remote_ip,
        m.remote_port,
        m.len,
        m.uid,
        m.gid,
        m.pid,
        m.cgroup,
        String::from_utf8_lossy(&m.comm)
    )
}
