//! The test-case runner (`skpc::cases`, what `skpc test` prints): every shipped example
//! passes its own cases, and wrong expectations fail with the VM's and the evaluator's
//! decisions. What the command prints is tested in vm_examples.rs.

use std::path::Path;

use skpc::cases::{self, Delivery};
use skpc::compile::{compile, Compiled};
use skpc::eval::describe;
use skpc::vm::DEFAULT_WINDOW;

fn compiled(name: &str, source: &str) -> Compiled {
    compile(name, source).unwrap_or_else(|diags| {
        panic!(
            "{name} does not compile:\n{}",
            skpc::diag::render_plain(name, source, &diags)
        )
    })
}

#[test]
fn every_example_passes_its_tests() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("examples/")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "skp"))
        .collect();
    files.sort();
    assert!(files.len() >= 5, "examples/ has {} policies", files.len());
    for f in files {
        let name = f.display().to_string();
        let source = std::fs::read_to_string(&f).expect("an example is UTF-8 text");
        let c = compiled(&name, &source);
        let selected = cases::select(&c.policy, None);
        assert!(!selected.is_empty(), "{name} has no test cases");
        let results = cases::run(&c, &selected, DEFAULT_WINDOW).expect("runs in the VM");
        assert_eq!(results.len(), selected.len());
        for r in &results {
            assert!(
                r.passed(),
                "{name}: case {:?} (line {}) failed: {:?}",
                r.name(),
                r.line(),
                r.outcome
            );
            // Both runs passed: the result is the last one, the sendfile.
            assert_eq!(r.delivery, Delivery::Sendfile, "{name}: {}", r.name());
        }
    }
}

/// A policy whose test cases expect the wrong verdicts (two of three).
const WRONG: &str = include_str!("fixtures/wrong_expectations.skp");

#[test]
fn a_wrong_expectation_fails_with_both_decisions() {
    let c = compiled("wrong.skp", WRONG);
    let selected = cases::select(&c.policy, None);
    let results = cases::run(&c, &selected, DEFAULT_WINDOW).expect("runs in the VM");
    let summary: Vec<(&str, u32, bool)> = results
        .iter()
        .map(|r| (r.name(), r.line(), r.passed()))
        .collect();
    assert_eq!(
        summary,
        [
            ("a small GET passes", 7, true),
            ("big redis writes pass (wrong)", 13, false),
            ("other ports pass (wrong: the default drops)", 19, false),
        ]
    );
    for r in &results[1..] {
        // The policy is wrong, not skpc: the VM and the evaluator agree on the drop,
        // and the first run (a plain send) already shows it.
        assert!(r.agree(), "{:?}", r.outcome);
        assert!(r.error().is_none(), "{:?}", r.error());
        assert_eq!(r.vm_decision().map(describe).as_deref(), Some("drop"));
        assert_eq!(r.reference_decision(), r.vm_decision());
        assert_eq!(
            r.delivery,
            Delivery::Send {
                window: DEFAULT_WINDOW
            }
        );
    }
    assert_eq!(describe(results[1].expected()), "pass");
    assert_eq!(
        describe(results[2].expected()),
        "redirect ingress to sock 3"
    );
}

#[test]
fn payload_rules_see_sendfile_data() {
    // With an empty initial window (sendfile) the program must pull the bytes.
    let policy = format!(
        "drop if payload[100..104] == \"EVIL\";\ntest \"far bytes\" {{ payload = \"{}EVIL\"; expect drop; }}",
        "\\x00".repeat(100)
    );
    let c = compiled("<-e>", &policy);
    let selected = cases::select(&c.policy, None);
    let results = cases::run(&c, &selected, 0).expect("runs in the VM");
    assert_eq!(results.len(), 1);
    assert!(results[0].passed(), "{:?}", results[0].outcome);
    // A window of 0 is a sendfile already: one run, no second.
    assert_eq!(results[0].delivery, Delivery::Send { window: 0 });
}

#[test]
fn the_filter_selects_cases_by_name() {
    let c = compiled("wrong.skp", WRONG);
    let names = |filter| -> Vec<String> {
        cases::select(&c.policy, filter)
            .iter()
            .map(|t| t.name.clone())
            .collect()
    };
    assert_eq!(names(None).len(), 3);
    assert_eq!(
        names(Some("(wrong")),
        [
            "big redis writes pass (wrong)",
            "other ports pass (wrong: the default drops)"
        ]
    );
    assert!(names(Some("nothing like it")).is_empty());
}

/// `expect reply "..."` compares the bytes: the right ones pass (shorter, as long as and
/// longer than the message, with unseen bytes past the payload), other bytes fail with
/// both decisions shown, and VM and evaluator agree throughout.
#[test]
fn a_reply_expectation_compares_the_bytes() {
    let src = r#"const DENIED = "-ERR denied\r\n";
reply DENIED if payload starts with "FLUSH";
test "shorter" { payload = "FLUSHALL and more than thirteen bytes"; expect reply DENIED; }
test "as long" { payload = "FLUSH"; len = 13; expect reply "-ERR denied\r\n"; }
test "longer" { payload = "FLUSH"; expect reply "-ERR denied\r\n"; }
test "other bytes" { payload = "FLUSH"; expect reply "-ERR denied"; }
test "not a reply" { payload = "FLUSH"; expect discard; }
"#;
    let c = compiled("reply.skp", src);
    let selected = cases::select(&c.policy, None);
    let results = cases::run(&c, &selected, DEFAULT_WINDOW).expect("runs in the VM");
    let passed: Vec<bool> = results.iter().map(|r| r.passed()).collect();
    assert_eq!(passed, [true, true, true, false, false]);
    for r in &results {
        assert!(r.agree(), "{}: {:?}", r.name(), r.outcome);
        assert_eq!(
            r.vm_decision().map(describe).as_deref(),
            Some(r#"reply "-ERR denied\r\n""#),
            "{}",
            r.name()
        );
    }
}
