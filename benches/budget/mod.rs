//! Part `budget` of the kernel bench: skpc's verifier budget (`lower::budget`, E0401)
//! against the kernel, for policies of every shape (tests/budget_shapes) up to a million
//! elements: build time, program size, skpc's estimate, and what the kernel makes of the
//! object: `verified_insns` and the load time when skpc builds it; when skpc refuses it,
//! the object is built anyway (without the budget) and loaded to show whether the
//! refusal was needed. The property test (tests/kernel_budget.rs) asserts the same at
//! the sizes CI affords.
//!
//! Settings: SKPC_BENCH_BUDGET_SIZES (1000,10000,100000,1000000; each shape up to its
//! own largest size below), SKPC_BENCH_BUDGET_SHAPES (all), SKPC_BENCH_BUDGET_LOAD_SLOTS
//! (300000: refused objects up to this many slots are loaded anyway; a rejected load of
//! a large one takes the kernel minutes). `SKPC_BENCH_ONLY=budget` runs this part alone.

#[path = "../../tests/budget_shapes/mod.rs"]
mod shapes;

use std::time::Instant;

use super::{env_list, env_or, report};
use shapes::{kernel_reason, load_verified, unchecked_object, SHAPES};

/// The largest size of each shape the bench builds: a million rules of code would take
/// gigabytes to lower; the sets go to a million elements.
fn bench_max(shape: &str) -> usize {
    match shape {
        "ip4_prefix_set" | "ip6_prefix_set" | "uid_set" | "payload_string_set" => 1_000_000,
        "port_set" => 21_845,
        _ => 100_000,
    }
}

pub fn part_budget() -> String {
    let sizes = env_list(
        "SKPC_BENCH_BUDGET_SIZES",
        &[1000, 10_000, 100_000, 1_000_000],
    );
    let only = std::env::var("SKPC_BENCH_BUDGET_SHAPES").unwrap_or_default();
    let load_slots: u64 = env_or("SKPC_BENCH_BUDGET_LOAD_SLOTS", 300_000);
    let started = Instant::now();
    let mut out = String::from(
        "| shape | size | build | slots | estimate | skpc | kernel | kernel / estimate |\n\
         | --- | --: | --: | --: | --: | --- | --- | --: |\n",
    );
    for &(name, shape, _) in SHAPES
        .iter()
        .filter(|(n, _, _)| only.is_empty() || only.split(',').any(|o| o == *n))
    {
        for &n in sizes.iter().filter(|&&n| n <= bench_max(name)) {
            let src = shape(n);
            let t = Instant::now();
            let built = skpc::compile::compile(name, &src);
            let build = report::dur(t.elapsed().as_nanos() as f64);
            let row = match built {
                Ok(c) => {
                    let t = Instant::now();
                    let kernel = load_verified(&c.object);
                    let load = report::dur(t.elapsed().as_nanos() as f64);
                    let (said, ratio) = match kernel {
                        Ok(v) => (
                            format!("loads: {v} processed in {load}"),
                            format!("{:.2}", v as f64 / c.budget.estimate.max(1) as f64),
                        ),
                        Err(e) => (
                            format!("**rejects** ({}): {}", load, kernel_reason(&e)),
                            "-".to_string(),
                        ),
                    };
                    format!(
                        "| {name} | {n} | {build} | {} | {} | builds | {said} | {ratio} |",
                        c.budget.slots, c.budget.estimate
                    )
                }
                Err(diags) => {
                    let why = diags
                        .iter()
                        .find(|d| d.code == skpc::diag::Code::VerifierBudget)
                        .map_or_else(
                            || "does not compile".to_string(),
                            |d| format!("E0401: {}", d.message),
                        );
                    let (slots, estimate, said) = match unchecked_object(&src) {
                        Some((object, estimate)) => {
                            let slots = object_slots(&src);
                            let said = if slots <= load_slots {
                                let t = Instant::now();
                                let r = load_verified(&object);
                                let load = report::dur(t.elapsed().as_nanos() as f64);
                                match r {
                                    Ok(v) => format!("loads anyway: {v} processed in {load}"),
                                    Err(e) => format!("rejects ({load}): {}", kernel_reason(&e)),
                                }
                            } else {
                                "not loaded (too large to try)".to_string()
                            };
                            (slots.to_string(), estimate.to_string(), said)
                        }
                        None => ("-".into(), "-".into(), "-".into()),
                    };
                    format!(
                        "| {name} | {n} | {build} | {slots} | {estimate} | refused ({why}) | {} | - |",
                        said.replace('\n', " ")
                    )
                }
            };
            println!("{row}");
            out.push_str(&row);
            out.push('\n');
        }
    }
    out.push_str(&format!(
        "\nShapes: tests/budget_shapes (one set of N values in one rule, or N rules). \
         skpc refuses above {} (the kernel's limit of {} processed instructions less {}%). \
         A refused object is built without the budget and loaded when it has at most \
         {load_slots} slots. Command: `{}SKPC_BENCH_ONLY=budget cargo bench --bench kernel` ({:.0} s). {}\n",
        skpc::lower::budget::refused_above(),
        skpc::lower::budget::BPF_COMPLEXITY_LIMIT_INSNS,
        100 - skpc::lower::budget::MARGIN_PERCENT,
        settings(),
        started.elapsed().as_secs_f64(),
        report::machine()
    ));
    out
}

/// The policy program's slots when built without the budget.
fn object_slots(src: &str) -> u64 {
    skpc::check::check(src)
        .0
        .map(|p| skpc::lower::lower(&p).verdict.marks.len() as u64)
        .unwrap_or(0)
}

fn settings() -> String {
    [
        "SKPC_BENCH_BUDGET_SIZES",
        "SKPC_BENCH_BUDGET_SHAPES",
        "SKPC_BENCH_BUDGET_LOAD_SLOTS",
    ]
    .iter()
    .filter_map(|k| std::env::var(k).ok().map(|v| format!("{k}={v} ")))
    .collect()
}
