//! `skpc top --metrics ADDR --once` against a tiny HTTP server in the test that serves
//! skpc's exposition, first with one set of counter values and then with another (no
//! kernel needed): the rates and totals it prints, text and `-j`, and its errors.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::Command;

mod json_contract;
use json_contract::{documented_fields, keys};

fn exposition(version: u32, drop_messages: u64, drop_bytes: u64, default_messages: u64) -> String {
    format!(
        "# HELP skpc_policy_info The policy in force.\n\
         # TYPE skpc_policy_info gauge\n\
         skpc_policy_info{{hash=\"abcd{version}\",policy=\"guard.skp\",version=\"{version}\"}} 1\n\
         # TYPE skpc_policy_reloads_total counter\n\
         skpc_policy_reloads_total{{result=\"error\"}} 1\n\
         skpc_policy_reloads_total{{result=\"ok\"}} {ok}\n\
         # TYPE skpc_rule_bytes_total counter\n\
         skpc_rule_bytes_total{{action=\"drop\",line=\"2\",policy=\"guard.skp\",rule=\"drop if payload starts with \\\"x\\\";\"}} {drop_bytes}\n\
         skpc_rule_bytes_total{{action=\"pass\",line=\"0\",policy=\"guard.skp\",rule=\"default pass (implicit)\"}} {db}\n\
         # TYPE skpc_rule_messages_total counter\n\
         skpc_rule_messages_total{{action=\"drop\",line=\"2\",policy=\"guard.skp\",rule=\"drop if payload starts with \\\"x\\\";\"}} {drop_messages}\n\
         skpc_rule_messages_total{{action=\"pass\",line=\"0\",policy=\"guard.skp\",rule=\"default pass (implicit)\"}} {default_messages}\n\
         # TYPE skpc_sockets gauge\n\
         skpc_sockets 4\n\
         # TYPE skpc_untouched_sockets_total counter\n\
         skpc_untouched_sockets_total 2\n",
        ok = version - 1,
        db = default_messages * 10,
    )
}

/// Serves `bodies[0]` to the first request, `bodies[1]` to every later one; returns
/// the address.
fn serve(bodies: [String; 2]) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for (n, stream) in listener.incoming().enumerate() {
            let Ok(mut stream) = stream else { continue };
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(k) => request.extend_from_slice(&buf[..k]),
                }
            }
            assert!(request.starts_with(b"GET /metrics "));
            let body = &bodies[n.min(1)];
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    addr
}

fn top(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_skpc"))
        .arg("top")
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn top_once_prints_the_rates_and_totals_as_json() {
    let addr = serve([exposition(1, 10, 1000, 5), exposition(1, 30, 3000, 5)]);
    let out = top(&["--metrics", &addr, "--once", "--interval", "0.2", "-j"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    let doc: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(keys(&doc), documented_fields("Top document"));
    assert_eq!(keys(&doc["reloads"]), documented_fields("Reloads"));
    assert_eq!(doc["policy"], "guard.skp");
    assert_eq!(doc["version"], 1);
    assert_eq!(doc["sockets"], 4);
    assert_eq!(doc["untouched_sockets"], 2);
    assert_eq!(doc["reset"], false);
    assert_eq!(doc["reloads"]["error"], 1);
    let secs = doc["interval_seconds"].as_f64().unwrap();
    assert!((0.2..2.0).contains(&secs), "{secs}");
    let rules = doc["rules"].as_array().unwrap();
    assert_eq!(rules.len(), 2);
    let drop = &rules[0];
    assert_eq!(keys(drop), documented_fields("Top rule"));
    assert_eq!(drop["line"], 2);
    assert_eq!(drop["action"], "drop");
    assert_eq!(drop["rule"], "drop if payload starts with \"x\";");
    assert_eq!(
        (drop["messages"].as_u64(), drop["bytes"].as_u64()),
        (Some(30), Some(3000))
    );
    let rate = drop["messages_per_second"].as_f64().unwrap();
    assert!((rate * secs - 20.0).abs() < 1e-6, "{rate} over {secs}");
    let rate = drop["bytes_per_second"].as_f64().unwrap();
    assert!((rate * secs - 2000.0).abs() < 1e-3, "{rate} over {secs}");
    assert_eq!(rules[1]["line"], 0, "the default last");
    assert_eq!(rules[1]["messages_per_second"].as_f64(), Some(0.0));
}

#[test]
fn top_once_counts_from_zero_after_a_reload() {
    // Version 2 started its counters from zero: 3 messages since, not 3 - 30.
    let addr = serve([exposition(1, 30, 3000, 50), exposition(2, 3, 300, 7)]);
    let out = top(&["--metrics", &addr, "--once", "--interval", "0.2", "-j"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (doc["version"].as_u64(), doc["reset"].as_bool()),
        (Some(2), Some(true))
    );
    let secs = doc["interval_seconds"].as_f64().unwrap();
    let drop = &doc["rules"][0];
    assert!((drop["messages_per_second"].as_f64().unwrap() * secs - 3.0).abs() < 1e-6);
    let default = &doc["rules"][1];
    assert!((default["messages_per_second"].as_f64().unwrap() * secs - 7.0).abs() < 1e-6);
}

#[test]
fn top_prints_a_text_table_when_stdout_is_not_a_terminal() {
    let addr = serve([exposition(1, 10, 1000, 5), exposition(1, 30, 3000, 5)]);
    // No --once: stdout is a pipe, so it prints once and exits.
    let out = top(&["--metrics", &addr, "--interval", "0.2"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{stdout}");
    assert!(
        lines[0].starts_with(
            "policy guard.skp  version 1 (abcd1)  sockets 4 (2 untouched)  reloads 0 ok, 1 error"
        ),
        "{stdout}"
    );
    let header: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(
        header,
        ["LINE", "ACTION", "MSGS/S", "BYTES/S", "MESSAGES", "BYTES", "RULE"]
    );
    let drop: Vec<&str> = lines[2].split_whitespace().collect();
    assert_eq!(drop[..2], ["2", "drop"]);
    let rate: f64 = drop[2].parse().unwrap();
    assert!(
        rate > 0.0 && rate <= 100.0,
        "20 messages over at least 0.2 s: {stdout}"
    );
    assert_eq!(drop[4..6], ["30", "3000"]);
    assert!(lines[2].ends_with("drop if payload starts with \"x\";"));
    assert!(lines[3].split_whitespace().eq([
        "0",
        "pass",
        "0.0",
        "0.0",
        "5",
        "50",
        "default",
        "pass",
        "(implicit)"
    ]));
}

#[test]
fn nothing_listening_is_one_sentence_with_the_fix() {
    let addr = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let out = top(&["--metrics", &addr, "--once"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains(&format!("is `skpc run --metrics {addr}` running?")),
        "{stderr}"
    );
}

#[test]
fn a_server_that_is_not_skpc_is_named() {
    let addr = serve(["up 1\n".to_string(), "up 1\n".to_string()]);
    let out = top(&["--metrics", &addr, "--once"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("skpc run --metrics"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
