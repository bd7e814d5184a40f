//! End-to-end tests of `skpc exec` and `skpc run` (the binary), around real programs:
//! redis-cli against a redis-server on a unique loopback port (Debian packages
//! redis-server and redis-tools), python3 clients, sh. Every test checks that the skpc
//! process left no pin directory and no cgroup behind.

mod common;
use common::tool_or_skip;

mod e2e_support;
use e2e_support::{
    guard_ports, leftovers, send_from_cgroup, skpc, skpc_bin, text, wait_until, CliSession, Lines,
    Redis,
};

mod json_contract;
use json_contract::{documented_fields, keys};

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `skpc run [FLAGS] POLICY --cgroup CGROUP --interval SECONDS`, stdout and stderr piped.
fn spawn_run(flags: &[&str], policy: &Path, cgroup: &Path, interval: &str) -> Child {
    Command::new(skpc_bin())
        .arg("run")
        .args(flags)
        .arg(policy)
        .arg("--cgroup")
        .arg(cgroup)
        .args(["--interval", interval])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("skpc run starts")
}

#[test]
fn exec_redis_cli_gets_permission_denied_for_big_writes() {
    let name = "exec_redis_cli_gets_permission_denied_for_big_writes";
    if !common::kernel_or_skip(name) {
        return;
    }
    let Some(redis) = Redis::start_or_skip(name) else {
        return;
    };
    let cli = redis.cli.clone();
    let port = redis.port.to_string();
    let policy = format!("drop if port == {port} and len > 4096;");
    let big = "v".repeat(10240);
    let cli_s = cli.to_str().unwrap();

    let out = skpc(&[
        "exec", "-e", &policy, "--", cli_s, "-p", &port, "SET", "big", &big,
    ]);
    let all = text(&out.stdout) + &text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains("Error: Permission denied"), "{all}");
    // The counters table on stderr: the drop rule matched the one 10 KiB write.
    let row = text(&out.stderr)
        .lines()
        .find(|l| l.contains("drop if port"))
        .unwrap_or_default()
        .to_string();
    assert!(
        row.split_whitespace().rev().nth(2) == Some("1"),
        "counters row: {row}\n{all}"
    );
    assert_eq!(
        redis.cli(&["STRLEN", "big"]),
        ("0".into(), 0),
        "the server never got the value"
    );

    // -j: the counters as one JSON line at the end of stdout (after the command's own
    // output); --json is the same flag.
    for flag in ["-j", "--json"] {
        let out = skpc(&[
            "exec", flag, "-e", &policy, "--", cli_s, "-p", &port, "SET", "small", "hello",
        ]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        let stdout = text(&out.stdout);
        assert!(stdout.starts_with("OK\n"), "{stdout}");
        let last = stdout.lines().last().unwrap_or_default();
        let doc: serde_json::Value =
            serde_json::from_str(last).unwrap_or_else(|e| panic!("{e}: {stdout}"));
        assert_eq!(doc["policy"], "<-e>");
        assert_eq!(doc["exit_status"], 0);
        let counters = doc["counters"].as_array().expect("counters");
        let rule = counters
            .iter()
            .find(|c| c["kind"] == "rule")
            .unwrap_or_else(|| panic!("a rule row: {doc}"));
        assert_eq!(rule["line"], 1);
        assert_eq!(rule["rule"], policy.as_str());
        assert_eq!(rule["messages"], 0, "the small SET did not match: {doc}");
        assert!(rule["name"].is_string() && rule["bytes"].is_u64());
        let default = counters
            .iter()
            .find(|c| c["kind"] == "default")
            .unwrap_or_else(|| panic!("the default row: {doc}"));
        assert!(default["messages"].as_u64() >= Some(1), "{doc}");
        assert_eq!(default["line"], 0);
        // The JSON document is the last line: the compact form the first --json had.
        assert!(last.contains("\"exit_status\":0"), "{last}");
    }
    assert_eq!(redis.cli(&["GET", "small"]), ("hello".into(), 0));

    // The same big SET outside skpc goes through: the policy is scoped to the cgroup.
    assert_eq!(redis.cli(&["SET", "big", &big]), ("OK".into(), 0));

    // --events: a log rule reports redis-cli's writes as they happen.
    let out = skpc(&[
        "exec",
        "--events",
        "-e",
        &format!("log if remote.port == {port};"),
        "--",
        cli_s,
        "-p",
        &port,
        "PING",
    ]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    let log = err
        .lines()
        .find(|l| l.starts_with("skpc: log line 1: redis-cli pid"))
        .unwrap_or_else(|| panic!("{err}"));
    assert!(
        log.contains(&format!("-> 127.0.0.1:{port} len 14")),
        "{log}"
    );

    // --events -j: the same record as a JSON line on stderr.
    let out = skpc(&[
        "exec",
        "--events",
        "-j",
        "-e",
        &format!("log if remote.port == {port};"),
        "--",
        cli_s,
        "-p",
        &port,
        "PING",
    ]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    let record: serde_json::Value = err
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|r| r["event"] == "log")
        .unwrap_or_else(|| panic!("a log record: {err}"));
    assert_eq!(record["line"], 1);
    assert_eq!(record["comm"], "redis-cli");
    assert_eq!(record["family"], "ipv4");
    assert_eq!(record["remote_ip"], "127.0.0.1");
    assert_eq!(record["remote_port"], u64::from(redis.port));
    assert_eq!(record["local_ip"], "127.0.0.1");
    assert_eq!(record["len"], 14);
    assert!(record["pid"].is_u64() && record["uid"].is_u64() && record["gid"].is_u64());
    assert!(record["local_port"].is_u64());
    assert!(!err.contains("skpc: log line"), "no text records: {err}");
    assert_eq!(keys(&record), documented_fields("Log record"));
}

/// The untouched figure of `skpc exec`: a redis-cli session to a port the policy does
/// not name is left out of the sockmaps and counted (summary line and JSON), one to the
/// port it names is taken and not counted.
#[test]
fn exec_counts_the_sockets_it_left_out_as_untouched() {
    let name = "exec_counts_the_sockets_it_left_out_as_untouched";
    if !common::kernel_or_skip(name) {
        return;
    }
    let Some(redis) = Redis::start_or_skip(name) else {
        return;
    };
    let cli = redis.cli.to_str().unwrap().to_string();
    let port = redis.port.to_string();
    // 28201: a port of this test's own range, never the redis-server's.
    let elsewhere = if redis.port == 28201 {
        "28202"
    } else {
        "28201"
    };
    for (guarded, untouched) in [(elsewhere, 1), (port.as_str(), 0)] {
        let policy = format!("drop if port == {guarded} and len > 4096;");
        let out = skpc(&["exec", "-e", &policy, "--", &cli, "-p", &port, "PING"]);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{err}");
        let plural = if untouched == 1 { "" } else { "s" };
        assert!(
            err.contains(&format!(
                "never entered the sockmaps: {untouched} untouched socket{plural} (in no counter)"
            )),
            "{policy}: {err}"
        );
        let out = skpc(&["exec", "-j", "-e", &policy, "--", &cli, "-p", &port, "PING"]);
        let last = text(&out.stdout)
            .lines()
            .last()
            .unwrap_or_default()
            .to_string();
        let doc: serde_json::Value = serde_json::from_str(&last).unwrap();
        assert_eq!(doc["untouched_sockets"], untouched, "{policy}: {doc}");
    }
}

/// `reply` with a real client and server: in ONE redis-cli session (commands fed on
/// stdin, one connection), FLUSHALL is answered with an error by the policy while the
/// server never runs it, and the session goes on.
#[test]
fn exec_redis_cli_reads_a_reply_and_its_session_goes_on() {
    let name = "exec_redis_cli_reads_a_reply_and_its_session_goes_on";
    if !common::kernel_or_skip(name) {
        return;
    }
    let Some(redis) = Redis::start_or_skip(name) else {
        return;
    };
    let cli = redis.cli.clone();
    let port = redis.port.to_string();
    for (k, v) in [("k1", "v1"), ("k2", "v2"), ("k3", "v3")] {
        assert_eq!(redis.cli(&["SET", k, v]), ("OK".into(), 0));
    }
    // redis-cli sends a command as typed: `flushall` is `*1\r\n$8\r\nflushall`.
    let policy = format!(
        "reply \"-ERR FLUSHALL is disabled here\\r\\n\" if remote.port == {port} and \
         payload starts with {{\"*1\\r\\n$8\\r\\nFLUSHALL\", \"*1\\r\\n$8\\r\\nflushall\"}};"
    );
    let mut child = Command::new(skpc_bin())
        .args([
            "exec",
            "-e",
            &policy,
            "--",
            cli.to_str().unwrap(),
            "-p",
            &port,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"PING\nFLUSHALL\nPING\nflushall\nDBSIZE\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        leftovers(pid),
        Vec::<PathBuf>::new(),
        "skpc exec left these behind"
    );
    let stdout = text(&out.stdout);
    let all = stdout.clone() + &text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{all}");
    // Without a terminal redis-cli prints an error reply and then an empty line.
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines,
        [
            "PONG",
            "ERR FLUSHALL is disabled here",
            "",
            "PONG",
            "ERR FLUSHALL is disabled here",
            "",
            "3"
        ],
        "{all}"
    );
    // The counters table: the reply rule matched the two flushes.
    let row = text(&out.stderr)
        .lines()
        .find(|l| l.contains("reply \"-ERR"))
        .unwrap_or_default()
        .to_string();
    assert!(
        row.split_whitespace().rev().nth(2) == Some("2"),
        "counters row: {row}\n{all}"
    );
    // The server never ran a FLUSHALL, and the keys are all there.
    let (stats, code) = redis.cli(&["INFO", "commandstats"]);
    assert_eq!(code, 0);
    assert!(!stats.contains("cmdstat_flushall"), "{stats}");
    assert!(stats.contains("cmdstat_dbsize"), "{stats}");
    assert_eq!(redis.cli(&["DBSIZE"]), ("3".into(), 0));
}

#[test]
fn exec_returns_the_command_status_and_cleans_up_on_every_ending() {
    if !common::kernel_or_skip("exec_returns_the_command_status_and_cleans_up_on_every_ending") {
        return;
    }
    let out = skpc(&["exec", "-e", "pass;", "--", "sh", "-c", "exit 7"]);
    assert_eq!(out.status.code(), Some(7));
    let out = skpc(&["exec", "-e", "pass;", "--", "sh", "-c", "kill -SEGV $$"]);
    assert_eq!(
        out.status.code(),
        Some(128 + 11),
        "a crashing command: 128 + signal"
    );
    let out = skpc(&["exec", "-e", "pass;", "--", "/nonexistent/command"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("command not found"),
        "{}",
        text(&out.stderr)
    );
    let out = skpc(&["exec", "-e", "drop if;", "--", "true"]);
    assert_eq!(out.status.code(), Some(1), "a policy that does not compile");

    // SIGTERM to skpc reaches the command; skpc still cleans up.
    let child = Command::new(skpc_bin())
        .args(["exec", "-e", "pass;", "--", "sleep", "30"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    std::thread::sleep(Duration::from_millis(500));
    skpc_runtime::process::send_signal(pid, skpc_runtime::process::sig::SIGTERM);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(128 + 15), "{}", text(&out.stderr));
    assert_eq!(leftovers(pid), Vec::<PathBuf>::new());
}

#[test]
fn a_killed_skpc_is_cleaned_up_by_the_next_run() {
    if !common::kernel_or_skip("a_killed_skpc_is_cleaned_up_by_the_next_run") {
        return;
    }
    let mut child = Command::new(skpc_bin())
        .args(["exec", "-e", "pass;", "--", "sleep", "30"])
        .spawn()
        .unwrap();
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(5);
    while leftovers(pid).len() < 2 {
        assert!(Instant::now() < deadline, "skpc did not set up");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
    skpc_runtime::process::send_signal(pid, skpc_runtime::process::sig::SIGKILL);
    child.wait().unwrap();
    let left = leftovers(pid);
    assert_eq!(
        left.len(),
        2,
        "a SIGKILLed skpc leaves its cgroup and pins: {left:?}"
    );
    let cgroup = left
        .iter()
        .find(|p| p.join("cgroup.procs").exists())
        .unwrap()
        .clone();
    let sleepers: Vec<i32> = std::fs::read_to_string(cgroup.join("cgroup.procs"))
        .unwrap()
        .lines()
        .filter_map(|l| l.parse().ok())
        .collect();
    let out = skpc(&["exec", "-e", "pass;", "--", "true"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        leftovers(pid),
        Vec::<PathBuf>::new(),
        "{}",
        text(&out.stderr)
    );
    assert!(
        text(&out.stderr).contains("left behind by a skpc that was killed"),
        "{}",
        text(&out.stderr)
    );
    for p in sleepers {
        skpc_runtime::process::send_signal(p as u32, skpc_runtime::process::sig::SIGKILL);
    }
}

#[test]
fn run_enforces_on_a_cgroup_reloads_on_sighup_and_stops_on_sigterm() {
    let name = "run_enforces_on_a_cgroup_reloads_on_sighup_and_stops_on_sigterm";
    if !common::kernel_or_skip(name) {
        return;
    }
    let Some(python) = tool_or_skip(name, "python3", "python3") else {
        return;
    };
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let file = common::TempFile::with_contents(
        "skpc_run",
        "skp",
        format!("drop if remote.port == {port} and payload starts with \"BAD\";").as_bytes(),
    );
    let cg = skpc_runtime::TempCgroup::create().unwrap();
    // SIGHUP alone here; watching the file is the next test's.
    let mut run = spawn_run(&["--no-watch"], &file.path, cg.path(), "0.2");
    let pid = run.id();
    let stderr = Lines::of(run.stderr.take().unwrap());
    let stdout = run.stdout.take().unwrap();
    let lines =
        std::thread::spawn(move || BufReader::new(stdout).lines().map_while(Result::ok).count());
    let expect = |what: &str| stderr.expect(what);
    expect("enforcing");
    let acceptor = std::thread::spawn(move || {
        for _ in 0..3 {
            let _ = listener.accept();
        }
    });
    let send_from_cgroup = |msg: &str| send_from_cgroup(&python, port, cg.path(), msg);
    assert_eq!(send_from_cgroup("BAD one"), "EACCES");
    // A broken policy: the old one stays.
    std::fs::write(&file.path, "drop if remote.port == ;").unwrap();
    skpc_runtime::process::send_signal(pid, skpc_runtime::process::sig::SIGHUP);
    expect("reload failed");
    // A new one: applies from now on.
    std::fs::write(
        &file.path,
        format!("drop if remote.port == {port} and payload starts with \"NEW\";"),
    )
    .unwrap();
    skpc_runtime::process::send_signal(pid, skpc_runtime::process::sig::SIGHUP);
    expect("version 2 now enforced");
    assert_eq!(send_from_cgroup("BAD two"), "ok");
    assert_eq!(send_from_cgroup("NEW one"), "EACCES");
    // Let at least three 0.2 s intervals pass so the periodic view has printed.
    std::thread::sleep(Duration::from_millis(800));
    skpc_runtime::process::send_signal(pid, skpc_runtime::process::sig::SIGTERM);
    let status = run.wait().unwrap();
    let all = stderr.all();
    assert_eq!(status.code(), Some(0), "{all}");
    assert!(all.contains("stopped; counters"), "{all}");
    assert!(
        lines.join().unwrap() >= 2,
        "periodic counter lines on a non-terminal stdout"
    );
    assert_eq!(leftovers(pid), Vec::<PathBuf>::new());
    acceptor.join().unwrap();
    let _ = std::io::stdout().flush();
}

#[test]
fn run_follows_edits_of_the_policy_file_configmap_swap_rename_and_in_place() {
    let name = "run_follows_edits_of_the_policy_file_configmap_swap_rename_and_in_place";
    if !common::kernel_or_skip(name) {
        return;
    }
    let Some(python) = tool_or_skip(name, "python3", "python3") else {
        return;
    };
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let policy =
        |word: &str| format!("drop if remote.port == {port} and payload starts with \"{word}\";");
    // A ConfigMap volume as the kubelet lays it out: policy.skp -> ..data/policy.skp,
    // ..data -> ..<timestamp>.
    let dir = common::TempDir::new("skpc_watch");
    let (v1, v2) = (dir.join("..2026_12_01_v1"), dir.join("..2026_12_01_v2"));
    std::fs::create_dir_all(&v1).unwrap();
    std::fs::create_dir_all(&v2).unwrap();
    std::fs::write(v1.join("policy.skp"), policy("ONE")).unwrap();
    std::fs::write(v2.join("policy.skp"), policy("TWO")).unwrap();
    std::os::unix::fs::symlink("..2026_12_01_v1", dir.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/policy.skp", dir.join("policy.skp")).unwrap();
    let cg = skpc_runtime::TempCgroup::create().unwrap();
    let mut run = spawn_run(&["-j"], &dir.join("policy.skp"), cg.path(), "0.2");
    let pid = run.id();
    let stderr = Lines::of(run.stderr.take().unwrap());
    let stdout = run.stdout.take().unwrap();
    let last_doc = std::thread::spawn(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .last()
            .unwrap_or_default()
    });
    let expect = |what: &str| stderr.expect(what);
    expect("a change of the file or SIGHUP");
    let acceptor = std::thread::spawn(move || {
        for _ in 0..64 {
            if listener.accept().is_err() {
                break;
            }
        }
    });
    let send_from_cgroup = |msg: &str| send_from_cgroup(&python, port, cg.path(), msg);
    // Enforcement follows the file: `word` is dropped (and `old`, no more) once the
    // change is seen. Returns how long that took.
    let follows = |word: &str, old: &str| -> Duration {
        let t = Instant::now();
        while send_from_cgroup(&format!("{word} x")) != "EACCES" {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "{word} never enforced"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(send_from_cgroup(&format!("{old} x")), "ok");
        t.elapsed()
    };
    assert_eq!(send_from_cgroup("ONE x"), "EACCES");
    // The kubelet's update: a new ..data link renamed over the old one.
    std::os::unix::fs::symlink("..2026_12_01_v2", dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    let swap = follows("TWO", "ONE");
    // An editor that writes a new file and renames it over the old one.
    let target = v2.join("policy.skp");
    std::fs::write(v2.join(".policy.skp.swp"), policy("THREE")).unwrap();
    std::fs::rename(v2.join(".policy.skp.swp"), &target).unwrap();
    let rename = follows("THREE", "TWO");
    // In place.
    std::fs::write(&target, policy("FOUR")).unwrap();
    let in_place = follows("FOUR", "THREE");
    // A broken edit: the running version stays.
    std::fs::write(&target, "drop if remote.port == ;").unwrap();
    expect("reload failed");
    assert_eq!(send_from_cgroup("FOUR x"), "EACCES");
    eprintln!("{name}: enforced after {swap:?} (ConfigMap swap), {rename:?} (rename), {in_place:?} (in place)");
    skpc_runtime::process::send_signal(pid, skpc_runtime::process::sig::SIGTERM);
    let status = run.wait().unwrap();
    let all = stderr.all();
    assert_eq!(status.code(), Some(0), "{all}");
    let doc: serde_json::Value = serde_json::from_str(&last_doc.join().unwrap()).unwrap();
    assert_eq!(doc["version"], 4, "{doc}");
    assert_eq!(doc["reloads"]["ok"], 3, "{doc}");
    assert_eq!(doc["reloads"]["error"], 1, "{doc}");
    assert_eq!(leftovers(pid), Vec::<PathBuf>::new());
    drop(acceptor);
}

#[test]
fn run_json_prints_a_counters_document_per_interval_and_at_the_end() {
    let name = "run_json_prints_a_counters_document_per_interval_and_at_the_end";
    if !common::kernel_or_skip(name) {
        return;
    }
    // A warning (W0002) so that stderr carries a diagnostics document.
    let file = common::TempFile::with_contents(
        "skpc_run_json",
        "skp",
        b"pass if port == 1;\ncount probes if port == 2;\npass;\ndrop if port == 3;\n",
    );
    let cg = skpc_runtime::TempCgroup::create().unwrap();
    let run = spawn_run(&["-j"], &file.path, cg.path(), "0.1");
    let pid = run.id();
    // Three 0.1 s intervals at least (the program loads first).
    std::thread::sleep(Duration::from_millis(1000));
    skpc_runtime::process::send_signal(pid, skpc_runtime::process::sig::SIGTERM);
    let out = run.wait_with_output().unwrap();
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(leftovers(pid), Vec::<PathBuf>::new());

    let docs: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}\n{stdout}")))
        .collect();
    assert!(docs.len() >= 2, "periodic documents and the last: {stdout}");
    for doc in &docs {
        assert_eq!(doc["policy"], file.path.to_str().unwrap());
        assert_eq!(doc["version"], 1);
        assert!(doc["elapsed_seconds"].is_f64(), "{doc}");
        assert!(doc.get("exit_status").is_none(), "{doc}");
        let mut fields = keys(doc);
        fields.insert("exit_status".into()); // exec's
        assert_eq!(fields, documented_fields("Counters document"));
        for row in doc["counters"].as_array().into_iter().flatten() {
            assert_eq!(keys(row), documented_fields("Counter"));
        }
        let rows = doc["counters"].as_array().expect("counters");
        let lines: Vec<(&str, u64)> = rows
            .iter()
            .filter_map(|r| Some((r["kind"].as_str()?, r["line"].as_u64()?)))
            .collect();
        assert_eq!(
            lines,
            [
                ("rule", 1),
                ("rule", 2),
                ("rule", 3),
                ("rule", 4),
                ("count", 2),
                ("default", 0)
            ],
            "{doc}"
        );
    }
    let warning = stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|d| d["diagnostics"].is_array())
        .unwrap_or_else(|| panic!("a diagnostics document on stderr: {stderr}"));
    assert_eq!(warning["ok"], true);
    assert_eq!(warning["diagnostics"][0]["code"], "W0002");
    assert_eq!(warning["diagnostics"][0]["line"], 4);
    assert!(
        !stderr.contains("warning["),
        "no human diagnostics: {stderr}"
    );
}

/// The value of the unlabelled metric `name` that `skpc run --metrics` serves at `addr`.
fn metric(addr: &str, name: &str) -> Option<u64> {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    write!(s, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut all = String::new();
    s.read_to_string(&mut all).ok()?;
    all.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// `skpc run` inserts selectively, and a reload follows the policy: with a policy on one
/// redis port, a real redis-cli session to another port stays out of skp_peers (the
/// `skpc_sockets` metric) and is counted untouched, while the guarded port is enforced;
/// after the policy file is edited to guard the other port too, a new session to it is
/// inserted and enforced, and the session opened before goes on untouched, as the
/// reload line says.
#[test]
fn run_inserts_only_what_the_policy_takes_and_a_reload_takes_the_new_port() {
    let name = "run_inserts_only_what_the_policy_takes_and_a_reload_takes_the_new_port";
    if !common::kernel_or_skip(name) {
        return;
    }
    let (Some(guarded), Some(other)) = (Redis::start_or_skip(name), Redis::start_or_skip(name))
    else {
        return;
    };
    let file = common::TempFile::with_contents(
        "skpc_runops",
        "skp",
        guard_ports(&[guarded.port]).as_bytes(),
    );
    let cg = skpc_runtime::TempCgroup::create().unwrap();
    let (mut run, stderr, addr) = e2e_support::run_with_metrics(&file.path, cg.path());
    let pid = run.id();
    let start = stderr.expect("enforcing");
    assert!(
        start.contains(&format!(
            "connections taken: local.port == {0} or remote.port == {0}",
            guarded.port
        )),
        "{start}"
    );
    let metrics_say = |what: &str, want: u64| {
        wait_until(&format!("{what} {want}"), 10, || {
            metric(&addr, what) == Some(want)
        })
    };

    let mut plain = CliSession::open(&other, &cg);
    assert_eq!(plain.say("PING", "PONG"), "PONG");
    metrics_say("skpc_untouched_sockets_total", 1);
    metrics_say("skpc_sockets", 0);
    let mut held = CliSession::open(&guarded, &cg);
    assert_eq!(held.say("PING", "PONG"), "PONG");
    assert_eq!(held.say("SET held yes", "guarded"), "ERR guarded by skpc");
    metrics_say("skpc_sockets", 1);

    // Guard the other port too; the file is watched.
    std::fs::write(&file.path, guard_ports(&[guarded.port, other.port])).unwrap();
    let reloaded = stderr.expect("reloaded");
    for want in [
        "version 2 now enforced",
        "connections taken now",
        &other.port.to_string(),
        "those left out stay out until they reconnect",
    ] {
        assert!(reloaded.contains(want), "{want:?} in {reloaded}");
    }
    // Opened before the reload: still out.
    assert_eq!(plain.say("SET plain yes", "OK"), "OK");
    // A new session to the newly guarded port: taken and enforced.
    let mut fresh = CliSession::open(&other, &cg);
    assert_eq!(fresh.say("PING", "PONG"), "PONG");
    assert_eq!(fresh.say("SET fresh yes", "guarded"), "ERR guarded by skpc");
    metrics_say("skpc_sockets", 2);
    metrics_say("skpc_untouched_sockets_total", 1);
    plain.close();
    held.close();
    fresh.close();

    skpc_runtime::process::send_signal(pid, skpc_runtime::process::sig::SIGTERM);
    let status = run.wait().unwrap();
    let all = stderr.all();
    assert_eq!(status.code(), Some(0), "{all}");
    assert!(all.contains("1 untouched socket "), "{all}");
    assert_eq!(leftovers(pid), Vec::<std::path::PathBuf>::new());
    assert_eq!(other.cli(&["GET", "plain"]), ("yes".into(), 0));
    assert_eq!(other.cli(&["EXISTS", "fresh"]), ("0".into(), 0));
    assert_eq!(guarded.cli(&["EXISTS", "held"]), ("0".into(), 0));
}
