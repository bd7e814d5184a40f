//! The `skpc check` command line: exit codes, diagnostics on stderr, `-e`, `--color`,
//! and one clear sentence (no panic, no backtrace) for a missing file.

mod json_contract;
use json_contract::{documented_fields, keys};

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

// `-j/--json` (docs/json.md): documents a script can rely on.

/// Parses `stdout` as one JSON document, with serde_json and with `python3 -m json.tool`
/// (what a shell script would use), and returns it.
fn json_doc(stdout: &[u8]) -> serde_json::Value {
    use std::io::Write;
    use std::process::Stdio;
    let mut tool = Command::new("python3")
        .args(["-m", "json.tool"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs (.ci/setup installs it)");
    tool.stdin
        .take()
        .expect("piped stdin")
        .write_all(stdout)
        .expect("python3 reads the document");
    let checked = tool.wait_with_output().expect("python3 finishes");
    assert!(
        checked.status.success(),
        "python3 -m json.tool: {}\n{}",
        text(&checked.stderr),
        text(stdout)
    );
    assert_eq!(
        text(stdout).trim_end().lines().count(),
        1,
        "one line: {}",
        text(stdout)
    );
    serde_json::from_slice(stdout).unwrap_or_else(|e| panic!("{e}: {}", text(stdout)))
}

/// A policy file in a fresh directory; removed with the directory by the caller.
fn policy_file(tag: &str, text: &str) -> (std::path::PathBuf, String) {
    let dir = std::env::temp_dir().join(format!("skpc-cli-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("policy.skp");
    std::fs::write(&file, text).unwrap();
    let name = file.to_str().unwrap().to_string();
    (dir, name)
}

#[test]
fn check_json_reports_codes_lines_and_columns() {
    // Errors on lines 2 and 4; `é` (two bytes, one column) before the second shows
    // that columns count characters.
    let (dir, file) = policy_file(
        "json-bad",
        "# a typo and a port out of range\ndrop if remtoe.port == 6379;\n\n/* é */ drop if port == 70000;\n",
    );
    let out = skpc(&["check", "-j", &file]);
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(text(&out.stderr), "", "no human diagnostics in JSON mode");
    let doc = json_doc(&out.stdout);
    assert_eq!(doc["file"], file.as_str());
    assert_eq!(doc["ok"], false);
    let diags = doc["diagnostics"].as_array().expect("an array");
    let find = |code: &str| {
        diags
            .iter()
            .find(|d| d["code"] == code)
            .unwrap_or_else(|| panic!("no {code}: {doc}"))
    };
    let unknown = find("E0101");
    assert_eq!(unknown["severity"], "error");
    assert_eq!(unknown["message"], "unknown field `remtoe.port`");
    assert_eq!(unknown["file"], file.as_str());
    assert_eq!(
        (&unknown["line"], &unknown["column"]),
        (&2.into(), &9.into())
    );
    assert_eq!(
        (&unknown["end_line"], &unknown["end_column"]),
        (&2.into(), &20.into()),
        "end is just past `remtoe.port`"
    );
    assert_eq!(unknown["help"], "did you mean `remote.port`?");
    assert!(unknown["label"].is_string() && unknown["notes"].is_array());
    assert!(unknown["secondary"].is_array());
    let range = find("E0202");
    assert_eq!(range["severity"], "error");
    assert_eq!((&range["line"], &range["column"]), (&4.into(), &25.into()));
}

#[test]
fn check_json_of_a_clean_policy_and_of_warnings() {
    let out = skpc(&["check", "--json", &example("redis_guard.skp")]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(text(&out.stderr), "");
    let doc = json_doc(&out.stdout);
    assert_eq!(doc["ok"], true);
    assert_eq!(doc["diagnostics"], serde_json::json!([]));

    let out = skpc(&["check", "-j", "-e", "drop;\npass if port == 80;"]);
    assert_eq!(out.status.code(), Some(0), "warnings only");
    assert_eq!(text(&out.stderr), "");
    let doc = json_doc(&out.stdout);
    assert_eq!(doc["file"], "<-e>");
    assert_eq!(doc["ok"], true);
    let w = &doc["diagnostics"][0];
    assert_eq!(w["severity"], "warning");
    assert_eq!(w["code"], "W0002");
    assert_eq!((&w["line"], &w["column"]), (&2.into(), &1.into()));
    assert!(w["help"].is_string());
    let first = &w["secondary"][0];
    assert_eq!((&first["line"], &first["column"]), (&1.into(), &1.into()));
    assert!(first["label"].is_string());
}

#[test]
fn build_json_of_a_broken_policy_is_its_diagnostics() {
    let out = skpc(&["build", "--emit", "asm", "-j", "-e", "drop if prot == 1;"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(text(&out.stderr), "");
    let doc = json_doc(&out.stdout);
    assert_eq!(doc["ok"], false);
    assert_eq!(doc["diagnostics"][0]["code"], "E0102");
    assert!(doc.get("programs").is_none());
}

#[test]
fn build_asm_json_points_each_instruction_at_its_rule() {
    let policy = "# two rules and an explicit default\npass if port == 22;\n\ndrop if len > 100;  # big\ndefault pass;\n";
    let (dir, file) = policy_file("json-asm", policy);
    let json = skpc(&["build", &file, "--emit", "asm", "-j"]);
    let listing = skpc(&["build", &file, "--emit", "asm"]);
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(json.status.code(), Some(0), "{}", text(&json.stderr));
    assert_eq!(text(&json.stderr), "");
    let doc = json_doc(&json.stdout);
    assert_eq!(doc["ok"], true);
    let programs = doc["programs"].as_array().expect("programs");
    let names: Vec<&str> = programs.iter().filter_map(|p| p["name"].as_str()).collect();
    assert_eq!(names, ["skp_verdict", "skp_entry", "skp_sockops"]);
    assert_eq!(programs[0]["section"], "sk_msg");
    assert_eq!(programs[2]["section"], "sockops");
    let maps = doc["maps"].as_array().expect("maps");
    assert!(
        maps.iter().any(|m| m["name"] == ".data.counters"
            && m["type"].is_u64()
            && m["key_size"].is_u64()
            && m["value_size"].is_u64()
            && m["max_entries"].is_u64()),
        "{maps:?}"
    );

    let insns = programs[0]["instructions"]
        .as_array()
        .expect("instructions");
    let source_lines: Vec<&str> = policy.lines().collect();
    for i in insns {
        match i["rule_line"].as_u64() {
            Some(l) => {
                assert!([2, 4, 5].contains(&l), "{i}");
                assert_eq!(i["source"], source_lines[l as usize - 1].trim(), "{i}");
            }
            None => assert!(i["source"].is_null(), "{i}"),
        }
    }
    for l in [2, 4] {
        assert!(
            insns.iter().any(|i| i["rule_line"] == l),
            "rule on line {l}"
        );
    }
    // The same numbers, texts and lines as the text listing: each instruction of the
    // policy program sits under the `; line N:` header of its rule.
    let text_listing = text(&listing.stdout);
    let mut header: Option<u64> = None;
    let mut rows = Vec::new();
    for line in text_listing.lines() {
        if line.starts_with("; section") && !rows.is_empty() {
            break; // the next program
        }
        if let Some(rest) = line.strip_prefix("; line ") {
            header = rest.split(':').next().and_then(|n| n.parse().ok());
        } else if line.starts_with(';') {
            header = None;
        } else if let Some((slot, insn)) = line.split_once(": ") {
            rows.push((slot.trim().parse::<u64>().expect("a slot"), insn, header));
        }
    }
    assert_eq!(rows.len(), insns.len(), "{text_listing}");
    for ((slot, insn, line), j) in rows.iter().zip(insns) {
        assert_eq!(j["index"], *slot);
        assert_eq!(j["text"], *insn);
        assert_eq!(j["rule_line"].as_u64(), *line, "{j}");
    }
}

#[test]
fn docs_json_lists_exactly_the_fields_of_check_and_listing_documents() {
    let check = json_doc(&skpc(&["check", "-j", "-e", "drop;\npass if port == 80;"]).stdout);
    assert_eq!(keys(&check), documented_fields("Check document"));
    let diag = &check["diagnostics"][0];
    assert_eq!(keys(diag), documented_fields("Diagnostic"));
    assert_eq!(
        keys(&diag["secondary"][0]),
        documented_fields("Secondary span")
    );

    let listing =
        json_doc(&skpc(&["build", "-j", "--emit", "asm", &example("redis_guard.skp")]).stdout);
    let mut listing_fields = documented_fields("Check document");
    listing_fields.extend(documented_fields("Listing document"));
    assert_eq!(keys(&listing), listing_fields);
    let program = &listing["programs"][0];
    assert_eq!(keys(program), documented_fields("Program"));
    assert_eq!(
        keys(&program["instructions"][0]),
        documented_fields("Instruction")
    );
    assert_eq!(keys(&listing["maps"][0]), documented_fields("Map"));
    assert_eq!(
        keys(&listing["verifier"]),
        documented_fields("Verifier budget")
    );
    assert_eq!(
        keys(&listing["verifier"]["costliest"][0]),
        documented_fields("Rule cost")
    );
}

#[test]
fn check_and_build_refuse_a_policy_over_the_verifiers_budget() {
    // 3000 rules of code (a `cgroup` range is no index key, nor a residual: a u64): a
    // path through them leaves 12,003 branches pending, over the verifier's 8192.
    let policy: String = (0..3000)
        .map(|i| {
            format!(
                "drop if cgroup >= {} and payload[3] == {};\n",
                1000 + i,
                i % 256
            )
        })
        .collect();
    let (dir, file) = policy_file("budget", &policy);
    let obj = format!("{}/p.o", dir.display());
    let check = skpc(&["check", &file]);
    let build = skpc(&["build", "-j", "-o", &obj, &file]);
    let built = std::path::Path::new(&obj).exists();
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(check.status.code(), Some(1));
    let stderr = text(&check.stderr);
    assert!(stderr.contains("error[E0401]"), "{stderr}");
    assert!(stderr.contains("8192"), "{stderr}");
    assert_eq!(build.status.code(), Some(1));
    assert!(!built, "no object for a refused policy");
    let doc = json_doc(&build.stdout);
    assert_eq!(doc["ok"], false);
    assert_eq!(doc["diagnostics"][0]["code"], "E0401");
    assert_eq!(doc["diagnostics"][0]["line"], 1, "the first rule of code");
}

#[test]
fn build_reports_the_verifier_estimate_in_json_and_the_listing_header() {
    let (dir, file) = policy_file("budget-ok", "drop if port == 6379 and len > 4096;\n");
    let obj = format!("{}/p.o", dir.display());
    let build = skpc(&["build", "-j", "-o", &obj, &file]);
    let listing = skpc(&["build", "--emit", "asm", &file]);
    std::fs::remove_dir_all(&dir).ok();
    let doc = json_doc(&build.stdout);
    let estimate = doc["verifier"]["estimate"].as_u64().expect("an estimate");
    assert!(estimate > 0 && estimate < doc["verifier"]["refused_above"].as_u64().unwrap());
    assert_eq!(doc["verifier"]["kernel_limit"], 1_000_000);
    let costliest = doc["verifier"]["costliest"].as_array().expect("costliest");
    assert!(
        costliest.iter().any(|r| r["rule_line"] == 1),
        "the rule on line 1 is among the costs: {costliest:?}"
    );
    let header = format!("; verifier budget: at most {estimate} processed instructions");
    assert!(
        text(&listing.stdout).contains(&header),
        "{}",
        text(&listing.stdout)
    );
}

#[test]
fn build_notes_that_a_replying_policy_needs_the_senders_in_the_sockhash() {
    let dir = std::env::temp_dir().join(format!("skpc-cli-reply-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let obj = dir.join("p.o");
    let obj = obj.to_str().unwrap();
    let out = skpc(&[
        "build",
        "-o",
        obj,
        "-e",
        "reply \"-ERR no\\r\\n\" if len > 1;",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("note: ") && stderr.contains("skp_peers under its own 4-tuple"),
        "{stderr}"
    );
    // A policy that does not reply builds silently; `-j` keeps stderr empty.
    let out = skpc(&["build", "-o", obj, "-e", "drop if len > 1;"]);
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "{}",
        text(&out.stderr)
    );
    let out = skpc(&["build", "-j", "-o", obj, "-e", "reply \"x\";"]);
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "{}",
        text(&out.stderr)
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
