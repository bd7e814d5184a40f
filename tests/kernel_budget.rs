//! The verifier's budget holds (issue 11: never an object the kernel rejects): for
//! policies of every shape (tests/budget_shapes) at sizes spread up to what CI affords,
//! and every construct, either `skpc build` refuses the policy with E0401, or the kernel
//! loads it and its verified_insns are at most skpc's estimate. Prints a table of
//! (shape, size, estimate, verified_insns) for calibration; the sizes up to 1M are the
//! bench's `budget` part. Runs as root (SKP_REQUIRE_KERNEL=1 in CI makes a missing
//! capability a failure). SKPC_BUDGET_SIZES (1,10,100,300,1000,3000, each shape up to its CI
//! size) overrides the sizes,
//! SKPC_BUDGET_SHAPES (all) names the shapes to run, SKPC_BUDGET_LOAD_REFUSED=1 loads the
//! objects skpc refuses anyway and says what the kernel makes of them.

mod budget_shapes;
mod common;
mod constructs;

use budget_shapes::{
    comm_prefix_set, comm_set, comm_sets, http_host_set, kernel_reason, load_verified,
    sni_suffix_set, tail, unchecked_object, SHAPES,
};
use skpc::lower::Options;

/// Sizes up to which every shape's policy must build (an ordinary policy is never
/// refused).
const ALWAYS_BUILDS_UP_TO: usize = 100;

fn sizes() -> Vec<usize> {
    std::env::var("SKPC_BUDGET_SIZES")
        .ok()
        .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 10, 100, 300, 1000, 3000])
}

/// One policy: refused by skpc (with E0401 and the estimate), or loaded by the kernel
/// within the estimate. Returns the table row, which says "OVER THE ESTIMATE" when the
/// kernel processed more than the estimate (`table_holds` fails then).
fn holds(name: &str, size: usize, src: &str, counters: bool) -> String {
    let started = std::time::Instant::now();
    let c = match skpc::compile::compile_with(
        name,
        src,
        Options {
            counters,
            ..Options::default()
        },
    ) {
        Ok(c) => c,
        Err(diags) => {
            let refusal = diags
                .iter()
                .find(|d| d.code == "E0401")
                .unwrap_or_else(|| panic!("{name} ({size}): does not compile: {diags:?}"));
            assert!(
                size > ALWAYS_BUILDS_UP_TO,
                "{name} ({size}): an ordinary policy refused: {}",
                refusal.message
            );
            // Calibration: what the kernel says of the refused object.
            let kernel = match std::env::var("SKPC_BUDGET_LOAD_REFUSED").as_deref() {
                Ok("1") => match unchecked_object(src) {
                    Some((object, _)) => match load_verified(&object) {
                        Ok(n) => format!("the kernel loads it: {n} processed"),
                        Err(e) => format!("the kernel rejects it: {}", kernel_reason(&e)),
                    },
                    None => "no object".to_string(),
                },
                _ => "-".to_string(),
            };
            return format!(
                "| {name} | {size} | {counters} | refused | {kernel} | {} |",
                refusal.message
            );
        }
    };
    let build = started.elapsed();
    let estimate = c.budget.estimate;
    let actual = load_verified(&c.object).unwrap_or_else(|e| {
        panic!(
            "{name} ({size}): skpc built it (estimate {estimate}) but the kernel rejects it: {}",
            tail(&e, 400)
        )
    });
    let over = if u64::from(actual) > estimate {
        "OVER THE ESTIMATE"
    } else {
        ""
    };
    format!(
        "| {name} | {size} | {counters} | {estimate} | {actual} | {} slots, built in {:.0} ms {over}|",
        c.budget.slots,
        build.as_secs_f64() * 1000.0
    )
}

#[test]
fn every_shape_is_refused_or_loads_within_the_estimate() {
    if !common::kernel_or_skip("every_shape_is_refused_or_loads_within_the_estimate") {
        return;
    }
    let mut rows = vec![
        "| shape | size | counters | estimate | verified_insns | |".to_string(),
        "| --- | --: | --- | --: | --: | --- |".to_string(),
    ];
    let only = std::env::var("SKPC_BUDGET_SHAPES").unwrap_or_default();
    let explicit_sizes = std::env::var_os("SKPC_BUDGET_SIZES").is_some();
    for &(name, shape, ci_max) in SHAPES
        .iter()
        .filter(|(name, _, _)| only.is_empty() || only.split(',').any(|o| o == *name))
    {
        for n in sizes()
            .into_iter()
            .filter(|&n| explicit_sizes || n <= ci_max)
        {
            rows.push(holds(name, n, &shape(n), n % 2 == 0));
        }
    }
    table_holds(&rows);
}

/// Prints the table, then fails if a row is over its estimate.
fn table_holds(rows: &[String]) {
    println!("{}", rows.join("\n"));
    let over: Vec<&String> = rows
        .iter()
        .filter(|r| r.contains("OVER THE ESTIMATE"))
        .collect();
    assert!(
        over.is_empty(),
        "the kernel processed more instructions than skpc's estimate:\n{}",
        over.iter()
            .map(|r| r.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// Sets of strings are maps (issue 11): `http.host in {N hosts}`, `comm in {N names}`,
/// `tls.sni ends with {N suffixes}` and `comm starts with {N prefixes}` at 100k and 1M
/// elements build (no E0401) and load within the estimate.
#[test]
fn string_sets_of_a_million_build_and_load_within_the_estimate() {
    if !common::kernel_or_skip("string_sets_of_a_million_build_and_load_within_the_estimate") {
        return;
    }
    let mut rows = Vec::new();
    for n in [100_000, 1_000_000] {
        rows.push(holds("http_host_set", n, &http_host_set(n), false));
        rows.push(holds("comm_set", n, &comm_set(n), false));
        rows.push(holds("sni_suffix_set", n, &sni_suffix_set(n), false));
        rows.push(holds("comm_prefix_set", n, &comm_prefix_set(n), false));
    }
    let refused: Vec<&String> = rows.iter().filter(|r| r.contains("| refused |")).collect();
    assert!(refused.is_empty(), "refused: {refused:?}");
    table_holds(&rows);
}

/// Rules of protocol fields are rule-index data (issue 11, compiler/lower/text_index.rs):
/// `proto_field_rules` (`http.host ==`, `redis.key starts with`, `pg.user ==`,
/// `tls.sni ends with`, in turn) at 100k and 1M rules build, load within the estimate,
/// and cost the verifier at most the 100,000 instructions (the four parsers are
/// about 89,500 of them).
#[test]
fn protocol_field_rules_of_a_million_load_under_100k_verified_instructions() {
    let name = "protocol_field_rules_of_a_million_load_under_100k_verified_instructions";
    if !common::kernel_or_skip(name) {
        return;
    }
    let mut rows = Vec::new();
    for (n, counters) in [(100_000, false), (1_000_000, true)] {
        let src = budget_shapes::proto_field_rules(n);
        let row = holds("proto_field_rules", n, &src, counters);
        let verified: u64 = row
            .split('|')
            .nth(5)
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("not loaded: {row}"));
        assert!(verified <= 100_000, "{row}");
        rows.push(row);
    }
    table_holds(&rows);
}

/// The kernel's 64 maps per program (`MAX_USED_MAPS`; issue 11: never an object the
/// kernel rejects): a policy of sets that are each a map builds and loads with 64 maps,
/// one more set is refused (E0401), and its object, written anyway, is one the kernel
/// rejects for that reason.
#[test]
fn a_policy_over_the_kernels_64_maps_is_refused_and_one_at_64_loads() {
    let name = "a_policy_over_the_kernels_64_maps_is_refused_and_one_at_64_loads";
    if !common::kernel_or_skip(name) {
        return;
    }
    let mut sets = 56;
    let last_built = loop {
        match skpc::compile::compile("sets.skp", &comm_sets(sets + 1)) {
            Ok(c) => {
                assert!(c.budget.maps <= 64, "{} maps built", c.budget.maps);
                sets += 1;
            }
            Err(d) => {
                let refusal = d.iter().find(|d| d.code == "E0401").expect("E0401");
                assert!(
                    refusal
                        .message
                        .contains("over the kernel's limit of 64 per program"),
                    "{}",
                    refusal.message
                );
                break skpc::compile::compile("sets.skp", &comm_sets(sets)).expect("builds");
            }
        }
        assert!(sets < 70, "more than 64 maps never refused");
    };
    assert_eq!(
        last_built.budget.maps, 64,
        "the last policy built is at the limit"
    );
    load_verified(&last_built.object).unwrap_or_else(|e| panic!("{sets} sets: {e}"));
    let (over, _) = unchecked_object(&comm_sets(sets + 1)).expect("checks");
    let rejected = load_verified(&over).expect_err("the kernel loads 65 maps");
    assert_eq!(
        kernel_reason(&rejected),
        "The total number of maps per program has reached the limit of 64"
    );
}

#[test]
fn every_construct_loads_within_the_estimate() {
    if !common::kernel_or_skip("every_construct_loads_within_the_estimate") {
        return;
    }
    let mut rows = Vec::new();
    for (name, src) in constructs::CONSTRUCTS {
        for counters in [true, false] {
            rows.push(holds(name, 1, src, counters));
        }
    }
    table_holds(&rows);
}
