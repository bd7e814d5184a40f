//! `skpc test --kernel`: the policy's test cases run on the real kernel over loopback
//! (root), next to the VM. Unique ports per test so that kernel tests can run in parallel.

mod common;

use std::process::Command;

fn skpc_test_kernel(policy: &str) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_skpc"))
        .args(["test", "--kernel", "-e", policy])
        .output()
        .expect("running skpc");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn kernel_and_vm_agree_on_pass_and_drop_cases() {
    if !common::kernel_or_skip("kernel_and_vm_agree_on_pass_and_drop_cases") {
        return;
    }
    let policy = r#"
drop if remote.port == 47311 and len > 10;
test "short passes" { local.port = 47312; remote.port = 47311; payload = "hello"; expect pass; }
test "long drops" { local.port = 47313; remote.port = 47311; payload = "0123456789abcdef"; expect drop; }
test "other port passes" { family = inet6; local.port = 47314; remote.port = 47315; payload = "0123456789abcdef"; expect pass; }
test "off loopback" { remote.ip = 10.1.2.3; expect pass; }
"#;
    let (ok, out) = skpc_test_kernel(policy);
    assert!(ok, "{out}");
    for name in ["short passes", "long drops", "other port passes"] {
        assert!(
            out.contains(&format!("test {name} (kernel) ... ok")),
            "{out}"
        );
    }
    assert!(out.contains("test off loopback (kernel) ... skipped: 127.0.0.1 -> 10.1.2.3 is not a loopback connection"), "{out}");
    assert!(out.contains("7 passed, 0 failed, 1 skipped"), "{out}");
}

#[test]
fn a_wrong_expectation_fails_on_the_kernel_too() {
    if !common::kernel_or_skip("a_wrong_expectation_fails_on_the_kernel_too") {
        return;
    }
    let policy = r#"
drop if remote.port == 47321 and len > 10;
test "wrong" { local.port = 47322; remote.port = 47321; payload = "0123456789abcdef"; expect pass; }
"#;
    let (ok, out) = skpc_test_kernel(policy);
    assert!(!ok, "{out}");
    assert!(
        out.contains("test wrong (kernel) ... FAILED: expected a pass, the send failed"),
        "{out}"
    );
    assert!(out.contains("0 passed, 2 failed, 0 skipped"), "{out}");
}

#[test]
fn an_indexed_policy_runs_its_cases_on_the_kernel() {
    if !common::kernel_or_skip("an_indexed_policy_runs_its_cases_on_the_kernel") {
        return;
    }
    // 121 port and address rules with one decision: the compiler puts them into the
    // skp_index maps, which the runtime fills before the cases run. Ports 27400..27499: below the
    // ephemeral range (32768-60999), so no other test's connection holds one of them.
    let mut policy = String::new();
    for i in 0..120u16 {
        policy.push_str(&match i % 3 {
            0 => format!("drop if remote.port == {};\n", 27400 + i / 3),
            1 => format!("drop if local.port == {};\n", 27440 + i / 3),
            _ => format!("drop if remote.ip == 10.0.0.{};\n", i),
        });
    }
    policy.push_str("drop if remote.ip == ::1;\n");
    policy.push_str(
        r#"
test "indexed remote.port" { local.port = 27480; remote.port = 27405; payload = "x"; expect drop; }
test "indexed local.port" { local.port = 27450; remote.port = 27481; payload = "x"; expect drop; }
test "indexed IPv6 address" { family = inet6; local.port = 27482; remote.port = 27483; payload = "x"; expect drop; }
test "nothing indexed matches" { local.port = 27484; remote.port = 27485; payload = "hello"; expect pass; }
"#,
    );
    let c = skpc::compile::compile("indexed.skp", &policy).expect("compiles");
    // Port rules go to the port array, address rules to the hash map; the two address
    // tuples' gates have one slot each (10.0 and ::/16 of ::1, their first 16 bits).
    assert_eq!(c.lowered.port_index.len(), 80 + 2, "port rules are indexed");
    assert_eq!(c.lowered.index.len(), 41, "address rules are indexed");
    let (ok, out) = skpc_test_kernel(&policy);
    assert!(ok, "{out}");
    for name in [
        "indexed remote.port",
        "indexed local.port",
        "indexed IPv6 address",
        "nothing indexed matches",
    ] {
        assert!(
            out.contains(&format!("test {name} (kernel) ... ok")),
            "{out}"
        );
    }
    assert!(out.contains("8 passed, 0 failed, 0 skipped"), "{out}");
}

#[test]
fn discard_cases_run_on_the_kernel() {
    if !common::kernel_or_skip("discard_cases_run_on_the_kernel") {
        return;
    }
    // A discard: the send succeeds and the peer gets nothing. The wrong expectations
    // show that both halves are checked: a pass expected where the kernel discards (the
    // peer waits in vain), a discard expected where the kernel passes (bytes arrive).
    let policy = r#"
discard if remote.port == 47331 and payload starts with "NOISE";
test "noise is discarded" { local.port = 47332; remote.port = 47331; payload = "NOISE 1"; expect discard; }
test "signal passes" { local.port = 47333; remote.port = 47331; payload = "SIGNAL"; expect pass; }
test "wrong pass" { local.port = 47334; remote.port = 47331; payload = "NOISE 2"; expect pass; }
test "wrong discard" { local.port = 47335; remote.port = 47331; payload = "SIGNAL"; expect discard; }
"#;
    let (ok, out) = skpc_test_kernel(policy);
    assert!(!ok, "{out}");
    for name in ["noise is discarded", "signal passes"] {
        assert!(
            out.contains(&format!("test {name} (kernel) ... ok")),
            "{out}"
        );
    }
    assert!(
        out.contains("test wrong pass (kernel) ... FAILED: the send passed but the peer did not receive the bytes"),
        "{out}"
    );
    assert!(
        out.contains(
            "test wrong discard (kernel) ... FAILED: expected a discard, the peer received 6 bytes"
        ),
        "{out}"
    );
    assert!(out.contains("4 passed, 4 failed, 0 skipped"), "{out}");
}
