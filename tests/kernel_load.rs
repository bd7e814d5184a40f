//! The kernel verifier accepts what skpc emits: every example and one policy per
//! construct, with and without counters, through aya and through libbpf (bpftool);
//! and a 10,000-rule generated policy. Runs as root (SKP_REQUIRE_KERNEL=1 in CI makes
//! a missing capability a failure).

mod common;
mod constructs;

use std::path::Path;
use std::process::Command;

use aya::programs::{SkMsg, SockOps};
use skpc::lower::Options;

/// Loads all three programs of an object through aya; returns the verifier's processed
/// instruction count of the policy program.
fn load_with_aya(name: &str, object: &[u8]) -> u32 {
    // STATS only: aya's default (DEBUG) makes the kernel log every instruction, which
    // takes minutes for the 10k-rule policy.
    let mut ebpf = aya::EbpfLoader::new()
        .verifier_log_level(aya::VerifierLogLevel::STATS)
        .load(object)
        .unwrap_or_else(|e| panic!("{name}: aya rejected the object: {e}"));
    for prog in ["skp_verdict", "skp_entry"] {
        let p: &mut SkMsg = ebpf
            .program_mut(prog)
            .unwrap_or_else(|| panic!("{name}: no program {prog}"))
            .try_into()
            .unwrap_or_else(|e| panic!("{name}: {prog} is not sk_msg: {e}"));
        p.load()
            .unwrap_or_else(|e| panic!("{name}: the verifier rejected {prog}: {e:#?}"));
    }
    let s: &mut SockOps = ebpf
        .program_mut("skp_sockops")
        .expect("skp_sockops")
        .try_into()
        .expect("sock_ops");
    s.load()
        .unwrap_or_else(|e| panic!("{name}: the verifier rejected skp_sockops: {e:#?}"));
    let p: &SkMsg = ebpf
        .program("skp_verdict")
        .expect("skp_verdict")
        .try_into()
        .expect("sk_msg");
    p.info()
        .expect("prog info")
        .verified_instruction_count()
        .unwrap_or(0)
}

fn load_with_bpftool(bpftool: &Path, name: &str, object: &[u8]) {
    let file = common::TempFile::with_contents("skpc_load", "o", object);
    let pins = common::PinDir::new("skpc_load");
    let out = Command::new(bpftool)
        .args(["prog", "loadall"])
        .arg(&file.path)
        .arg(&pins.path)
        .output()
        .expect("running bpftool");
    assert!(
        out.status.success(),
        "{name}: bpftool prog loadall failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for prog in ["skp_verdict", "skp_entry", "skp_sockops"] {
        assert!(
            pins.join(prog).exists(),
            "{name}: bpftool did not pin {prog}"
        );
    }
}

fn all_policies() -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = constructs::CONSTRUCTS
        .iter()
        .map(|(n, s)| (format!("construct {n}"), s.to_string()))
        .collect();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("examples/")
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    for f in files
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "skp"))
    {
        out.push((
            f.display().to_string(),
            std::fs::read_to_string(f).expect("example"),
        ));
    }
    out
}

#[test]
fn every_example_and_construct_loads_with_aya() {
    if !common::kernel_or_skip("every_example_and_construct_loads_with_aya") {
        return;
    }
    for (name, src) in all_policies() {
        for counters in [true, false] {
            let c = skpc::compile::compile_with(
                &name,
                &src,
                Options {
                    counters,
                    ..Options::default()
                },
            )
            .expect("compiles");
            let processed = load_with_aya(&name, &c.object);
            assert!(processed > 0, "{name}: no verifier statistics");
        }
    }
}

#[test]
fn every_example_and_construct_loads_with_bpftool() {
    let Some(bpftool) = common::bpftool_or_skip("every_example_and_construct_loads_with_bpftool")
    else {
        return;
    };
    for (name, src) in all_policies() {
        let c = skpc::compile::compile(&name, &src).expect("compiles");
        load_with_bpftool(&bpftool, &name, &c.object);
    }
}

#[test]
fn ten_thousand_rules_build_and_load() {
    if !common::kernel_or_skip("ten_thousand_rules_build_and_load") {
        return;
    }
    // Port and address rules: all in the rule index, the program stays small.
    let src = constructs::generated_policy(10_000);
    let c = skpc::compile::compile("rules_10k.skp", &src).expect("compiles");
    assert!(
        c.lowered.verdict.insns.len() < 1_000,
        "10k indexed rules: {} instructions",
        c.lowered.verdict.insns.len()
    );
    assert!(c.lowered.index.len() + c.lowered.port_index.len() >= 10_000);
    let processed = load_with_aya("rules_10k", &c.object);
    assert!(
        processed < 10_000,
        "10k indexed rules: {processed} processed"
    );

    // The same rules with a test the index cannot hold (`len`): 10k rules of code,
    // branch-free above 1000. One load (with counters): the kernel takes ~30 s for a
    // program this size, most of it in its stack-liveness analysis.
    let src: String = src
        .lines()
        .map(|l| match l.strip_suffix(';') {
            Some(rule) if rule.starts_with("drop") => format!("{rule} and len > 7;\n"),
            _ => format!("{l}\n"),
        })
        .collect();
    let c = skpc::compile::compile("rules_10k_code.skp", &src).expect("compiles");
    assert!(c.lowered.index.is_empty() && c.lowered.port_index.is_empty());
    assert!(c.lowered.verdict.insns.len() > 10_000);
    let processed = load_with_aya("rules_10k_code", &c.object);
    assert!(
        processed < 1_000_000,
        "10k rules of code: {processed} processed instructions"
    );
}

#[test]
fn runs_followed_by_rules_on_the_same_fields_load() {
    if !common::kernel_or_skip("runs_followed_by_rules_on_the_same_fields_load") {
        return;
    }
    // 1000 rules in four runs: once over the verifier's 1M limit.
    let src = constructs::grouped_policy(1000);
    for counters in [true, false] {
        let c = skpc::compile::compile_with(
            "grouped.skp",
            &src,
            Options {
                counters,
                ..Options::default()
            },
        )
        .expect("compiles");
        let processed = load_with_aya("grouped_1000", &c.object);
        assert!(
            processed < 100_000,
            "grouped 1000 rules: {processed} processed instructions"
        );
    }
}
