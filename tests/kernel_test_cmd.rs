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
