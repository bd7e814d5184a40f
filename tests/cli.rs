//! The `skpc check` command line: exit codes, diagnostics on stderr, `-e`, `--color`,
//! and one clear sentence (no panic, no backtrace) for a missing file.

use std::process::{Command, Output};

fn skpc(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_skpc"))
        .args(args)
        .env("RUST_BACKTRACE", "1")
        .output()
        .expect("the skpc binary runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn example(name: &str) -> String {
    format!("{}/../../examples/{name}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn check_accepts_an_example() {
    let out = skpc(&["check", &example("redis_guard.skp")]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stderr), "", "no diagnostics for a clean example");
}

#[test]
fn check_rejects_a_bad_policy_with_the_diagnostic_on_stderr() {
    let dir = std::env::temp_dir().join(format!("skpc-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bad.skp");
    std::fs::write(&file, "# a typo\ndrop if remtoe.port == 6379;\n").unwrap();
    let out = skpc(&["check", "--color", "never", file.to_str().unwrap()]);
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("error[E0101]: unknown field `remtoe.port`"),
        "{err}"
    );
    assert!(err.contains("bad.skp:2:9"), "file, line and column: {err}");
    assert!(
        err.contains("drop if remtoe.port == 6379;"),
        "the source line: {err}"
    );
    assert!(err.contains("^^^^^^^^^^^"), "the span underlined: {err}");
    assert!(err.contains("did you mean `remote.port`?"), "{err}");
    assert_eq!(text(&out.stdout), "");
}

#[test]
fn check_with_warnings_only_exits_zero() {
    let out = skpc(&[
        "check",
        "--color",
        "never",
        "-e",
        "drop;\npass if port == 80;",
    ]);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        text(&out.stderr).contains("warning[W0002]"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn check_dash_e_takes_policy_text() {
    let out = skpc(&["check", "-e", "drop if port == 6379 and len > 4096;"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));

    let out = skpc(&["check", "--color", "never", "-e", "drop if port == 70000;"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("error[E0202]"), "{err}");
    assert!(err.contains("<-e>:1:17"), "{err}");
}

#[test]
fn color_never_and_always() {
    let bad = "drop if prot == 1;";
    let never = skpc(&["check", "--color", "never", "-e", bad]);
    assert!(
        !never.stderr.contains(&0x1b),
        "no escapes: {}",
        text(&never.stderr)
    );
    let always = skpc(&["check", "--color", "always", "-e", bad]);
    assert!(
        always.stderr.contains(&0x1b),
        "ANSI escapes: {}",
        text(&always.stderr)
    );
    assert_eq!(always.status.code(), Some(1));
    // Not a terminal: auto means no color.
    let auto = skpc(&["check", "-e", bad]);
    assert!(!auto.stderr.contains(&0x1b));
    // The option also goes after the subcommand's arguments.
    let after = skpc(&["check", "-e", bad, "--color=always"]);
    assert!(after.stderr.contains(&0x1b));
}

#[test]
fn missing_file_is_one_clear_sentence() {
    let out = skpc(&["check", "/nonexistent/dir/policy.skp"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.starts_with("skpc: "), "{err}");
    assert!(
        err.contains("/nonexistent/dir/policy.skp"),
        "names the file: {err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(
        !err.contains("panicked") && !err.contains("backtrace"),
        "{err}"
    );
}

#[test]
fn non_utf8_file_is_one_clear_sentence() {
    let dir = std::env::temp_dir().join(format!("skpc-cli-utf8-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("latin1.skp");
    std::fs::write(&file, b"drop if comm == \"caf\xe9\";\n").unwrap();
    let out = skpc(&["check", file.to_str().unwrap()]);
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("UTF-8"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn no_policy_at_all_is_a_usage_error() {
    let out = skpc(&["check"]);
    assert_ne!(out.status.code(), Some(0));
    assert!(!text(&out.stderr).contains("panicked"));
}
