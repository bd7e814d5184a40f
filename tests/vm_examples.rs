//! What `skpc test` prints: one line per case, the failures in detail (expectations
//! that are wrong must fail, saying why), the summary, the exit code. The runner's
//! logic (skpc::cases) is tested in cases.rs.

use std::process::{Command, Output};

fn skpc(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_skpc"))
        .args(args)
        .output()
        .expect("runs skpc")
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// The `N passed, N failed` line, parsed.
fn summary(stdout: &str) -> (usize, usize) {
    let line = stdout
        .lines()
        .find(|l| l.ends_with(" failed") && l.contains(" passed, "))
        .unwrap_or_else(|| panic!("no summary line in:\n{stdout}"));
    let nums: Vec<usize> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect();
    assert_eq!(
        line,
        format!("{} passed, {} failed", nums[0], nums[1]),
        "summary line is exactly `N passed, N failed`"
    );
    (nums[0], nums[1])
}

/// A policy whose test cases expect the wrong verdicts (two of three).
const WRONG: &str = include_str!("fixtures/wrong_expectations.skp");

#[test]
fn a_wrong_expectation_fails_with_a_useful_report() {
    let o = skpc(&["test", "-e", WRONG]);
    let (out, err) = text(&o);
    assert_eq!(
        o.status.code(),
        Some(1),
        "exit 1 on a failing case:\n{out}\n{err}"
    );
    assert_eq!(summary(&out), (1, 2), "{out}");
    assert!(out.contains("test a small GET passes ... ok"), "{out}");
    assert!(
        out.contains("test big redis writes pass (wrong) ... FAILED"),
        "{out}"
    );
    assert!(
        out.contains("test other ports pass (wrong: the default drops) ... FAILED"),
        "{out}"
    );
    // Expected vs actual, the rule that decided (line and text), the counters.
    assert!(out.contains("expected: pass\n"), "{out}");
    assert!(out.contains("actual:   drop\n"), "{out}");
    assert!(
        out.contains("decided by: line 3: drop if port == 6379 and len > 4096;"),
        "{out}"
    );
    assert!(out.contains("decided by: line 5: default drop;"), "{out}");
    assert!(
        out.contains("expected: redirect ingress to sock 3"),
        "{out}"
    );
    assert!(out.contains("count big"), "{out}");
    assert!(out.contains("5000"), "the counters show the bytes:\n{out}");
    assert!(!out.contains("BUG"), "{out}");
    insta::assert_snapshot!("skpc_test_failure_report", out);
}

#[test]
fn passing_policy_exits_zero_and_prints_one_line_per_case() {
    let o = skpc(&["test", "-e", "drop if len > 10;\ntest \"short\" { payload = \"abc\"; expect pass; }\ntest \"long\" { len = 11; expect drop; }"]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    assert!(
        out.contains("test short ... ok\ntest long ... ok\n"),
        "{out}"
    );
    assert_eq!(summary(&out), (2, 0));
}

#[test]
fn a_policy_that_does_not_compile_fails_with_diagnostics() {
    let o = skpc(&["test", "-e", "drop if port == 70000;"]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1));
    assert!(err.contains("out of range"), "{err}");
}

#[test]
fn no_test_cases_is_not_a_failure() {
    let o = skpc(&["test", "-e", "pass;"]);
    let (out, _) = text(&o);
    assert!(o.status.success());
    assert!(out.contains("no test cases"), "{out}");
    assert_eq!(summary(&out), (0, 0));
}

#[test]
fn a_failure_says_which_window_it_ran_with() {
    let policy = "drop if len > 10;\ntest \"long\" { len = 11; expect pass; }";
    let o = skpc(&["test", "--window", "0", "-e", policy]);
    let (out, _) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(
        out.contains("  at line 2 (initial data window 0 bytes)\n"),
        "{out}"
    );
}
